//! One name, one lock: the mutex of a name is the exclusive (write) side of
//! that name's read/write lock.

pub mod mutex_is_rwlock_write_side {
    //! A mutex holder excludes readers and writers of the same name and the
    //! other way round; mutex, write and read waiters of one name wait in
    //! one queue (granted in arrival order where the backend declares
    //! `fifo`), and fences strictly increase across mutex and read/write
    //! grants of the name.
    //!
    //! Exclusion is checked on a shared record of who holds: a grant is
    //! entered after the backend granted it and removed before the release
    //! is sent, so any overlap seen there is a real double grant.

    use std::sync::{Arc, Mutex as StdMutex};
    use std::time::{Duration, Instant};

    use quorate::{Coordinator, ErrorKind, LockGuard, Session};

    use crate::cases::client;
    use crate::outcome::{joined, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    const NAME: &str = "one";
    /// How long to look for a waiter's queue entry before settling for a
    /// pause (a backend whose waiters leave no visible entry).
    const SEEN_WITHIN: Duration = Duration::from_secs(2);
    /// How long each queued waiter holds its grant (so that a wrong grant
    /// would overlap another holder in the record).
    const HOLD: Duration = Duration::from_millis(50);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Side {
        Mutex,
        Read,
        Write,
    }

    impl Side {
        fn exclusive(self) -> bool {
            self != Side::Read
        }

        async fn acquire(self, s: &Session) -> quorate::Result<LockGuard> {
            match self {
                Side::Mutex => s.mutex(NAME).lock().await,
                Side::Read => s.rwlock(NAME).read().await,
                Side::Write => s.rwlock(NAME).write().await,
            }
        }

        async fn try_acquire(self, s: &Session) -> quorate::Result<Option<LockGuard>> {
            match self {
                Side::Mutex => s.mutex(NAME).try_lock().await,
                Side::Read => s.rwlock(NAME).try_read().await,
                Side::Write => s.rwlock(NAME).try_write().await,
            }
        }
    }

    /// Who holds the name now, every grant in order, and the overlaps seen.
    #[derive(Default)]
    struct Record {
        holding: Vec<(usize, Side)>,
        grants: Vec<(usize, Side, u64)>,
        overlaps: Vec<String>,
    }

    type Shared = Arc<StdMutex<Record>>;

    fn granted(rec: &Shared, who: usize, side: Side, fence: u64) {
        let mut r = rec.lock().unwrap();
        let clash = r
            .holding
            .iter()
            .any(|&(_, other)| side.exclusive() || other.exclusive());
        if clash {
            let msg = format!(
                "waiter {who} ({side:?}) was granted while {:?} held the name",
                r.holding
            );
            r.overlaps.push(msg);
        }
        r.holding.push((who, side));
        r.grants.push((who, side, fence));
    }

    fn releasing(rec: &Shared, who: usize) {
        rec.lock().unwrap().holding.retain(|&(w, _)| w != who);
    }

    /// Wait until the keeper sees one more entry of the namespace than
    /// `before` (the waiter is queued), or settle after `SEEN_WITHIN`.
    async fn seen_queued(keeper: &Coordinator, before: usize) -> quorate::Result<bool> {
        let start = Instant::now();
        loop {
            if keeper.leftovers().await?.len() > before {
                return Ok(true);
            }
            if start.elapsed() > SEEN_WITHIN {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn run(t: Target) -> CaseResult {
        let (keeper, sa) = client(&t).await?;
        let fifo = keeper.capabilities().fifo;
        let (_b, sb) = client(&t).await?;
        let rec: Shared = Arc::default();
        let mut f = Figures::new();

        // 1. Each exclusive side excludes every side, both ways; a reader
        //    excludes both exclusive sides and shares with readers.
        for holder_side in [Side::Mutex, Side::Write, Side::Read] {
            let g = holder_side.acquire(&sa).await?;
            for other in [Side::Mutex, Side::Write, Side::Read] {
                let got = other.try_acquire(&sb).await?;
                let both_read = holder_side == Side::Read && other == Side::Read;
                ensure!(
                    got.is_some() == both_read,
                    "while another session held the {holder_side:?} side of `{NAME}`, try {other:?} {}",
                    if got.is_some() { "was granted" } else { "was refused" }
                );
                if let Some(o) = got {
                    o.release().await?;
                }
                // The same session holds the name already: never a second
                // grant, never a self-deadlock.
                match other.try_acquire(&sa).await {
                    Err(e) if e.kind() == ErrorKind::AlreadyHeld => {}
                    Err(e) => fail!(
                        "a session holding {holder_side:?} of `{NAME}` asking {other:?}: {e}, expected AlreadyHeld"
                    ),
                    Ok(_) => fail!(
                        "a session holding {holder_side:?} of `{NAME}` was granted {other:?} as well"
                    ),
                }
            }
            let fence = g.fence().get();
            rec.lock().unwrap().grants.push((0, holder_side, fence));
            g.release().await?;
        }

        // 2. One queue: while a mutex is held, a reader, a writer, a reader
        //    and a mutex waiter arrive in that order (each seen queued
        //    before the next arrives).
        let arrivals = [Side::Read, Side::Write, Side::Read, Side::Mutex];
        let mut sessions = Vec::new();
        for _ in 0..arrivals.len() {
            sessions.push(client(&t).await?);
        }
        let holder = sa.mutex(NAME).lock().await?;
        granted(&rec, 0, Side::Mutex, holder.fence().get());
        let mut tasks = Vec::new();
        let mut seen = 0;
        for (i, (side, (c, s))) in arrivals.iter().copied().zip(sessions).enumerate() {
            let who = i + 1;
            let before = keeper.leftovers().await?.len();
            let rec = rec.clone();
            tasks.push(tokio::spawn(async move {
                let _keep = c;
                let g = side.acquire(&s).await?;
                granted(&rec, who, side, g.fence().get());
                tokio::time::sleep(HOLD).await;
                releasing(&rec, who);
                g.release().await?;
                s.close().await
            }));
            if seen_queued(&keeper, before).await? {
                seen += 1;
            }
        }
        let waited = {
            let r = rec.lock().unwrap();
            r.grants.iter().filter(|g| g.0 != 0).count()
        };
        ensure!(
            waited == 0,
            "{waited} waiter(s) of `{NAME}` were granted while a mutex held it"
        );
        let released = Instant::now();
        releasing(&rec, 0);
        holder.release().await?;
        for task in tasks {
            joined(60.0, "every waiter of the name is granted", task).await?;
        }
        let all_granted_ms = released.elapsed().as_secs_f64() * 1e3;

        check(&rec.lock().unwrap(), fifo, &arrivals)?;
        sa.close().await?;
        sb.close().await?;
        f.insert("arrivals_seen_queued".into(), seen as f64);
        f.insert("queue_drained_after_release_ms".into(), all_granted_ms);
        Ok(f)
    }

    /// No overlap; arrival order where FIFO is declared; fences increase.
    fn check(r: &Record, fifo: bool, arrivals: &[Side]) -> Result<(), crate::outcome::CaseError> {
        if let Some(o) = r.overlaps.first() {
            fail!("{o} (mutex and read/write lock of one name are one lock)");
        }
        let order: Vec<usize> = r.grants.iter().map(|g| g.0).skip(4).collect();
        if fifo {
            ensure!(
                order == [1, 2, 3, 4],
                "waiters arrived as {arrivals:?} (1..=4) but were granted in the order {order:?}"
            );
        }
        for w in r.grants.windows(2) {
            ensure!(
                w[1].2 > w[0].2,
                "fences do not strictly increase across the grants of `{NAME}`: {:?} ({}) then {:?} ({})",
                w[0].1,
                w[0].2,
                w[1].1,
                w[1].2
            );
        }
        Ok(())
    }
}

pub mod mutex_timeout_unblocks_readers {
    //! The mutex is the write side of the name's read/write lock, also for
    //! cancel safety: a mutex waiter queued behind a reader blocks the
    //! readers that arrive after it, and when it times out it leaves the
    //! queue at once, so they proceed while the first reader still holds.
    //! The same routine as `rwlock_writer_timeout_unblocks_readers`, with a
    //! mutex waiter.

    use std::time::Duration;

    use crate::cases::rwlock::rwlock_writer_timeout_unblocks_readers::{
        timed_out_waiter_unblocks_readers, Exclusive,
    };
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;

    /// How long the mutex waiter waits before it times out.
    const MUTEX_WAIT: Duration = Duration::from_secs(2);

    pub async fn run(t: Target) -> CaseResult {
        let delay_us =
            timed_out_waiter_unblocks_readers(&t, "one", Exclusive::Mutex, MUTEX_WAIT).await?;
        let mut f = Figures::new();
        f.insert("reader_unblock_after_mutex_timeout_us".into(), delay_us);
        Ok(f)
    }
}
