//! `Coordinator::locks`: the listing operators read.

pub mod locks_listing {
    use std::time::{Duration, Instant, SystemTime};

    use quorate::{FencingToken, LockMode, LockState, Session};

    use crate::cases::client;
    use crate::outcome::{joined, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    /// Who holds or waits, as the case expects it: (session, mode, fence).
    type Seen = (Option<String>, LockMode, Option<FencingToken>);

    fn holders(l: &LockState) -> Vec<Seen> {
        l.holders
            .iter()
            .map(|h| (h.session.clone(), h.mode, h.fence))
            .collect()
    }

    fn waiters(l: &LockState) -> Vec<(Option<String>, LockMode)> {
        l.waiters
            .iter()
            .map(|w| (w.session.clone(), w.mode))
            .collect()
    }

    fn find<'a>(locks: &'a [LockState], name: &str) -> Option<&'a LockState> {
        locks.iter().find(|l| l.name == name)
    }

    fn id(s: &Session) -> Option<String> {
        Some(s.id().to_owned())
    }

    /// Poll the listing until `done` holds for it (a waiter's queue entry
    /// is made by a spawned task), at most 10 s; returns the last listing.
    async fn settle(
        coord: &quorate::Coordinator,
        prefix: &str,
        done: impl Fn(&[LockState]) -> bool,
    ) -> quorate::Result<Vec<LockState>> {
        let start = Instant::now();
        loop {
            let locks = coord.locks(prefix).await?;
            if done(&locks) || start.elapsed() > Duration::from_secs(10) {
                return Ok(locks);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn run(t: Target) -> CaseResult {
        let started = SystemTime::now();
        let (coord, sa) = client(&t).await?;
        let caps = coord.capabilities();
        let (_b, sb) = client(&t).await?;
        let (_c, sc) = client(&t).await?;
        let (_d, sd) = client(&t).await?;
        let (_e, se) = client(&t).await?;

        // Nothing yet.
        let empty = coord.locks("").await?;
        ensure!(empty.is_empty(), "a fresh namespace lists locks: {empty:?}");

        // A mutex, a read lock held twice, another name, and an election
        // and a group whose names start like the locks' (not locks).
        let x = sa.mutex("jobs/x").lock().await?;
        let y = sa.mutex("other/y").lock().await?;
        let r1 = sb.rwlock("jobs/r").read().await?;
        let r2 = sc.rwlock("jobs/r").read().await?;
        let leadership = if caps.primitives.election {
            Some(sb.election("jobs/e").campaign(b"v").await?)
        } else {
            None
        };
        let membership = if caps.primitives.group {
            Some(
                sc.group("jobs/g")
                    .join("m", serde_json::Value::Null)
                    .await?,
            )
        } else {
            None
        };
        // Two waiters on `jobs/x`, in this order: a mutex, then a reader.
        let wd = {
            let sd = sd.clone();
            tokio::spawn(async move { sd.mutex("jobs/x").lock().await })
        };
        let settled = settle(&coord, "jobs/x", |l| {
            l.first().is_some_and(|l| l.waiters.len() == 1)
        })
        .await?;
        ensure!(
            settled.first().is_some_and(|l| l.waiters.len() == 1),
            "the mutex waiter of `jobs/x` is not listed: {settled:?}"
        );
        let we = {
            let se = se.clone();
            tokio::spawn(async move { se.rwlock("jobs/x").read().await })
        };
        let all = settle(&coord, "", |l| {
            find(l, "jobs/x").is_some_and(|l| l.waiters.len() == 2)
        })
        .await?;

        let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
        ensure!(
            names == ["jobs/r", "jobs/x", "other/y"],
            "the listing's names are {names:?}, expected the user's lock names [\"jobs/r\", \"jobs/x\", \"other/y\"] (sorted; no namespace, no election or group)"
        );
        let fenced = |f: FencingToken| caps.fencing.then_some(f);
        let lx = find(&all, "jobs/x").expect("listed");
        let want = vec![(id(&sa), LockMode::Exclusive, fenced(x.fence()))];
        ensure!(
            holders(lx) == want,
            "`jobs/x` holders are {:?}, expected {want:?}",
            holders(lx)
        );
        let got_waiters = waiters(lx);
        let want_waiters = vec![(id(&sd), LockMode::Exclusive), (id(&se), LockMode::Shared)];
        if caps.fifo {
            ensure!(
                got_waiters == want_waiters,
                "`jobs/x` waiters are {got_waiters:?}, expected in queue order {want_waiters:?}"
            );
        } else {
            let mut sorted = got_waiters.clone();
            sorted.sort();
            let mut want_sorted = want_waiters.clone();
            want_sorted.sort();
            ensure!(
                sorted == want_sorted,
                "`jobs/x` waiters are {got_waiters:?}, expected (in any order) {want_waiters:?}"
            );
        }
        let lr = find(&all, "jobs/r").expect("listed");
        let mut got = holders(lr);
        got.sort();
        let mut want = vec![
            (id(&sb), LockMode::Shared, fenced(r1.fence())),
            (id(&sc), LockMode::Shared, fenced(r2.fence())),
        ];
        want.sort();
        ensure!(
            got == want,
            "`jobs/r` holders are {got:?}, expected the two readers {want:?}"
        );
        ensure!(
            lr.waiters.is_empty(),
            "`jobs/r` lists waiters: {:?}",
            lr.waiters
        );
        let ly = find(&all, "other/y").expect("listed");
        let want = vec![(id(&sa), LockMode::Exclusive, fenced(y.fence()))];
        ensure!(
            holders(ly) == want,
            "`other/y` holders are {:?}, expected {want:?}",
            holders(ly)
        );
        // A grant time, where the backend records one, is the grant's.
        let late = SystemTime::now() + Duration::from_secs(60);
        let early = started - Duration::from_secs(60);
        for h in all.iter().flat_map(|l| &l.holders) {
            if let Some(since) = h.since {
                ensure!(
                    since >= early && since <= late,
                    "a holder's grant time {since:?} is outside the case's run"
                );
            }
        }

        // Prefix filtering.
        let jobs: Vec<String> = coord
            .locks("jobs/")
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        ensure!(
            jobs == ["jobs/r", "jobs/x"],
            "locks(\"jobs/\") lists {jobs:?}"
        );
        let r_only: Vec<String> = coord
            .locks("jobs/r")
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        ensure!(r_only == ["jobs/r"], "locks(\"jobs/r\") lists {r_only:?}");
        let none = coord.locks("nothing").await?;
        ensure!(none.is_empty(), "locks(\"nothing\") lists {none:?}");
        match coord
            .locks(&"x".repeat(quorate::name::MAX_NAME_LEN + 1))
            .await
        {
            Err(e) if e.kind() == quorate::ErrorKind::InvalidName => {}
            other => fail!("an over-long prefix was not refused with InvalidName: {other:?}"),
        }

        // Hand-offs show in the listing: sa releases, sd holds, se waits.
        x.release().await?;
        let xd = joined(10.0, "the mutex waiter granted", wd).await?;
        let l = settle(&coord, "jobs/x", |l| {
            l.first()
                .is_some_and(|l| l.holders.len() == 1 && l.holders[0].session == id(&sd))
        })
        .await?;
        let lx = l.first();
        let want = vec![(id(&sd), LockMode::Exclusive, fenced(xd.fence()))];
        ensure!(
            lx.map(holders) == Some(want.clone()),
            "after the hand-off `jobs/x` is {lx:?}, expected holders {want:?}"
        );
        ensure!(
            lx.map(waiters) == Some(vec![(id(&se), LockMode::Shared)]),
            "after the hand-off `jobs/x` waiters are {:?}, expected the reader",
            lx.map(waiters)
        );
        xd.release().await?;
        let xe = joined(10.0, "the read waiter granted", we).await?;

        // Everything released: nothing is listed.
        xe.release().await?;
        y.release().await?;
        r1.release().await?;
        r2.release().await?;
        if let Some(l) = leadership {
            l.resign().await?;
        }
        if let Some(m) = membership {
            m.leave().await?;
        }
        let after = coord.locks("").await?;
        ensure!(
            after.is_empty(),
            "locks are listed after every grant was released: {after:?}"
        );
        for s in [sa, sb, sc, sd, se] {
            s.close().await?;
        }
        Ok(Figures::new())
    }
}
