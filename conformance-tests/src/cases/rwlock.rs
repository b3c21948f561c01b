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
    //! A writer queued behind a reader blocks the readers that arrive after
    //! it; when it times out it leaves the queue at once, so they proceed
    //! while the first reader still holds. The routine is shared with
    //! `mutex_timeout_unblocks_readers` (the mutex is the same write side).

    use std::time::{Duration, Instant};

    use quorate::{ErrorKind, LockGuard, Session};

    use crate::cases::client;
    use crate::outcome::{within, CaseError, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    /// How long the writer waits before it times out.
    const WRITER_WAIT: Duration = Duration::from_millis(600);

    /// The exclusive side a waiter asks for.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Exclusive {
        /// `Mutex::lock_timeout`.
        Mutex,
        /// `RwLock::write_timeout`.
        Write,
    }

    impl Exclusive {
        fn word(self) -> &'static str {
            match self {
                Exclusive::Mutex => "mutex waiter",
                Exclusive::Write => "writer",
            }
        }

        async fn wait(self, s: &Session, name: &str, d: Duration) -> quorate::Result<LockGuard> {
            match self {
                Exclusive::Mutex => s.mutex(name).lock_timeout(d).await,
                Exclusive::Write => s.rwlock(name).write_timeout(d).await,
            }
        }
    }

    pub async fn run(t: Target) -> CaseResult {
        let delay_us =
            timed_out_waiter_unblocks_readers(&t, "rw", Exclusive::Write, WRITER_WAIT).await?;
        let mut f = Figures::new();
        f.insert("reader_unblock_after_writer_timeout_us".into(), delay_us);
        Ok(f)
    }

    /// Reader 1 holds `name`; an exclusive waiter (`side`) queues behind it
    /// with timeout `wait`; a reader arriving after the waiter must be held
    /// back by it, then granted as soon as the waiter times out, while
    /// reader 1 still holds, with a larger fence. Returns the delay from the
    /// waiter's timeout to that grant, in µs.
    pub(crate) async fn timed_out_waiter_unblocks_readers(
        t: &Target,
        name: &str,
        side: Exclusive,
        wait: Duration,
    ) -> Result<f64, CaseError> {
        let who = side.word();
        let (_a, sa) = client(t).await?;
        let (_b, sb) = client(t).await?;
        let (_c, sc) = client(t).await?;
        let (_d, sd) = client(t).await?;
        let r1 = sa.rwlock(name).read().await?;
        let queued = Instant::now();
        let waiter = {
            let (sb, name) = (sb.clone(), name.to_owned());
            tokio::spawn(async move {
                let r = side.wait(&sb, &name, wait).await;
                (r.map(drop), Instant::now())
            })
        };
        // Until the waiter is queued, a reader may still pass: look until
        // the first refusal, which shows it queued. Readers granted through
        // the waiter's whole wait mean it never blocked them.
        loop {
            match sd.rwlock(name).try_read().await? {
                None => break,
                Some(g) => g.release().await?,
            }
            if waiter.is_finished() {
                fail!("readers arriving after a waiting {who} were granted throughout its {wait:?} wait (writer starvation)");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reader = {
            let (sc, name) = (sc.clone(), name.to_owned());
            tokio::spawn(async move {
                let r = sc.rwlock(&name).read().await;
                (r, Instant::now())
            })
        };
        let (wres, timed_out_at) =
            match within(10.0, "the exclusive waiter times out", waiter).await? {
                Ok(x) => x,
                Err(e) => fail!("{who} task panicked: {e}"),
            };
        match wres {
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            Err(e) => fail!("the {who} failed with {e}, expected Timeout"),
            Ok(()) => fail!("the {who} was granted while a reader held the name"),
        }
        let (r2, granted_at) = match within(
            10.0,
            "the reader behind the timed-out exclusive waiter is granted while the first reader still holds",
            reader,
        )
        .await?
        {
            Ok(x) => x,
            Err(e) => fail!("reader task panicked: {e}"),
        };
        let r2 = r2?;
        ensure!(
            granted_at >= queued + wait,
            "the reader was granted {:?} after the {who} queued, before its {wait:?} timeout: it was never blocked by it",
            granted_at.saturating_duration_since(queued)
        );
        ensure!(r1.is_held().await?, "the first reader lost its grant");
        ensure!(
            r2.fence() > r1.fence(),
            "the second read grant's fence {} is not above the first's {}",
            r2.fence(),
            r1.fence()
        );
        let delay_us = granted_at
            .saturating_duration_since(timed_out_at)
            .as_secs_f64()
            * 1e6;
        r2.release().await?;
        r1.release().await?;
        for s in [sa, sb, sc, sd] {
            s.close().await?;
        }
        Ok(delay_us)
    }
}
