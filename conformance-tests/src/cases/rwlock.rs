//! Read/write lock cases.

pub mod rwlock_readers_share {
    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let ra = sa.rwlock("rw").read().await?;
        let rb = sb.rwlock("rw").try_read().await?;
        ensure!(
            rb.is_some(),
            "a second reader was refused while only a reader held the lock"
        );
        ensure!(
            ra.is_held().await?,
            "the first reader lost its grant when a second reader joined"
        );
        drop(rb);
        ra.release().await?;
        sa.close().await?;
        sb.close().await?;
        Ok(Figures::new())
    }
}

pub mod rwlock_writer_excludes {
    use std::time::Duration;

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let w = sa.rwlock("rw").write().await?;
        ensure!(
            sb.rwlock("rw").try_read().await?.is_none(),
            "a reader was granted while a writer held the lock"
        );
        ensure!(
            sb.rwlock("rw").try_write().await?.is_none(),
            "a second writer was granted while a writer held the lock"
        );
        ensure!(
            sb.rwlock("rw")
                .read_timeout(Duration::from_millis(150))
                .await
                .is_err(),
            "a waiting reader was granted while a writer held the lock"
        );
        let wf = w.fence();
        w.release().await?;
        let r = within(
            10.0,
            "reader granted after the writer released",
            sb.rwlock("rw").read(),
        )
        .await??;
        ensure!(
            r.fence() > wf,
            "the read grant's fence {} is not above the previous write grant's {}",
            r.fence(),
            wf
        );
        ensure!(
            sa.rwlock("rw").try_write().await?.is_none(),
            "a writer was granted while a reader held the lock"
        );
        r.release().await?;
        let w2 = within(
            10.0,
            "writer granted after the reader released",
            sa.rwlock("rw").write(),
        )
        .await??;
        ensure!(w2.fence() > wf, "write fences did not increase");
        w2.release().await?;
        sa.close().await?;
        sb.close().await?;
        Ok(Figures::new())
    }
}

pub mod rwlock_queued_writer_blocks_readers {
    use std::time::{Duration, Instant};

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{joined, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_c, sc) = client(&t).await?;
        let (_d, sd) = client(&t).await?;
        let r1 = sa.rwlock("rw").read().await?;
        let writer = {
            let sb = sb.clone();
            tokio::spawn(async move { sb.rwlock("rw").write().await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(
            !writer.is_finished(),
            "the writer was granted while a reader held the lock"
        );
        ensure!(sc.rwlock("rw").try_read().await?.is_none(), "a reader arriving after a waiting writer was granted before it (writer starvation possible)");
        let late_reader = {
            let sc = sc.clone();
            tokio::spawn(async move {
                let r = sc.rwlock("rw").read().await;
                r.map(|g| (g, Instant::now()))
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        ensure!(
            !late_reader.is_finished(),
            "a waiting reader overtook the waiting writer"
        );
        r1.release().await?;
        let w = joined(
            10.0,
            "the writer is granted once the first reader releases",
            writer,
        )
        .await?;
        // While the writer holds, no reader of any session is granted.
        ensure!(
            sd.rwlock("rw").try_read().await?.is_none(),
            "a reader was granted while the writer held the lock"
        );
        let writer_released = Instant::now();
        w.release().await?;
        let (r2, granted_at) = joined(
            10.0,
            "the late reader is granted after the writer",
            late_reader,
        )
        .await?;
        ensure!(
            granted_at >= writer_released,
            "the late reader was granted {:?} before the writer released",
            writer_released.saturating_duration_since(granted_at)
        );
        r2.release().await?;
        for s in [sa, sb, sc, sd] {
            s.close().await?;
        }
        Ok(Figures::new())
    }
}

pub mod rwlock_writer_timeout_unblocks_readers {
    use std::time::{Duration, Instant};

    use quorate::ErrorKind;

    use crate::cases::client;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    /// How long the writer waits before it times out.
    const WRITER_WAIT: Duration = Duration::from_millis(600);

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_c, sc) = client(&t).await?;
        let (_d, sd) = client(&t).await?;
        let r1 = sa.rwlock("rw").read().await?;
        let writer_started = Instant::now();
        let writer = {
            let sb = sb.clone();
            tokio::spawn(async move {
                let r = sb.rwlock("rw").write_timeout(WRITER_WAIT).await;
                (r.map(drop), Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The waiting writer blocks readers now: the reader below really
        // queues behind it.
        ensure!(
            sd.rwlock("rw").try_read().await?.is_none(),
            "a reader was granted while a writer waited (the reader would not be blocked)"
        );
        let reader = {
            let sc = sc.clone();
            tokio::spawn(async move {
                let r = sc.rwlock("rw").read().await;
                (r, Instant::now())
            })
        };
        let (wres, timed_out_at) = match within(10.0, "the writer times out", writer).await? {
            Ok(x) => x,
            Err(e) => fail!("writer task panicked: {e}"),
        };
        match wres {
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            Err(e) => fail!("the writer failed with {e}, expected Timeout"),
            Ok(()) => fail!("the writer was granted while a reader held the lock"),
        }
        // The first reader still holds: the queued reader must be granted now.
        let (r2, granted_at) = match within(
            10.0,
            "the reader behind the timed-out writer is granted while the first reader still holds",
            reader,
        )
        .await?
        {
            Ok(x) => x,
            Err(e) => fail!("reader task panicked: {e}"),
        };
        let r2 = r2?;
        ensure!(
            granted_at >= writer_started + WRITER_WAIT,
            "the reader was granted {:?} after the writer queued, before the writer's {WRITER_WAIT:?} timeout: it was never blocked by the writer",
            granted_at.saturating_duration_since(writer_started)
        );
        ensure!(r1.is_held().await?, "the first reader lost its grant");
        let delay_us = granted_at
            .saturating_duration_since(timed_out_at)
            .as_secs_f64()
            * 1e6;
        r2.release().await?;
        r1.release().await?;
        for s in [sa, sb, sc, sd] {
            s.close().await?;
        }
        let mut f = Figures::new();
        f.insert("reader_unblock_after_writer_timeout_us".into(), delay_us);
        Ok(f)
    }
}
