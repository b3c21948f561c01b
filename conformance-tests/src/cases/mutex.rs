//! Mutex cases.

pub mod mutual_exclusion {
    //! Mutual exclusion at the scope the backend declares. Always: tasks of
    //! one process. Where the backend declares `processes` or `hosts`:
    //! holder *processes* (agents), each connected through a different
    //! server of the deployment where it has several, holding for varied
    //! times and writing to a fenced register in its own server with the
    //! fence they were granted. Holds are timed on this process's clock
    //! from the grant's report to the release request (a sub-interval of
    //! the real hold, so any overlap seen is real).

    use std::sync::Arc;
    use std::time::Duration;

    use quorate::Scope;

    use crate::agent::{Agent, AgentEvent};
    use crate::cases::client;
    use crate::ensure;
    use crate::harness::fenced::FencedRegister;
    use crate::history::History;
    use crate::outcome::{joined, CaseError, CaseResult, Figures};
    use crate::target::Target;

    const CLIENTS: usize = 4;
    const ROUNDS: usize = 12;
    const PROCESSES: usize = 3;
    const PROCESS_ROUNDS: usize = 6;

    pub async fn run(t: Target) -> CaseResult {
        let mut f = in_one_process(&t).await?;
        let scope = t.connect().await?.capabilities().scope;
        if scope != Scope::Threads {
            f.extend(across_processes(&t).await?);
        }
        Ok(f)
    }

    fn check(history: &History, grants: usize, what: &str) -> Result<(), CaseError> {
        let v = history.check();
        ensure!(
            history.holds().len() == grants,
            "{what}: expected {grants} grants, recorded {}",
            history.holds().len()
        );
        ensure!(
            v.overlapping_holds == 0,
            "{what}: {} overlapping holds: two clients held the lock at once",
            v.overlapping_holds
        );
        ensure!(
            v.non_monotonic_fences == 0,
            "{what}: {} successive grants without a strictly greater fence",
            v.non_monotonic_fences
        );
        ensure!(
            v.stale_writes_accepted == 0 && v.stale_writes_rejected == 0,
            "{what}: the protected resource saw stale writes: {v:?}"
        );
        Ok(())
    }

    async fn in_one_process(t: &Target) -> CaseResult {
        let history = Arc::new(History::new());
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let t = t.clone();
            let history = history.clone();
            tasks.push(tokio::spawn(async move {
                let (_coord, session) = client(&t).await?;
                let name = format!("client-{c}");
                for _ in 0..ROUNDS {
                    let guard = session.mutex("shared").lock().await?;
                    let hold = history.acquired(&name, guard.fence().get());
                    history.write(&name, guard.fence().get());
                    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % 2000)).await;
                    history.released(hold);
                    guard.release().await?;
                }
                session.close().await?;
                Ok::<_, quorate::Error>(())
            }));
        }
        for task in tasks {
            joined(120.0, "all clients finish their rounds", task).await?
        }
        let elapsed = started.elapsed().as_secs_f64();
        check(&history, CLIENTS * ROUNDS, "tasks of one process")?;
        let mut f = Figures::new();
        f.insert("grants".into(), (CLIENTS * ROUNDS) as f64);
        f.insert("grants_per_s".into(), (CLIENTS * ROUNDS) as f64 / elapsed);
        Ok(f)
    }

    async fn across_processes(t: &Target) -> CaseResult {
        let register = FencedRegister::start()
            .await
            .map_err(|e| CaseError::Unverified(format!("starting the fenced register: {e}")))?;
        let history = register.history("shared");
        let reg = register.addr().to_string();
        let members = t.members();
        let mut agents = Vec::new();
        for i in 0..PROCESSES {
            let member = &members[i % members.len()];
            let (agent, _session) = Agent::start(member.url()).await.map_err(CaseError::Fail)?;
            agents.push(agent);
        }
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for (i, mut agent) in agents.into_iter().enumerate() {
            let history = history.clone();
            let reg = reg.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("process-{i}");
                for round in 0..PROCESS_ROUNDS {
                    agent.send("lock shared").await?;
                    let fence = match agent.next_event(Duration::from_secs(60)).await? {
                        AgentEvent::Granted { fence, .. } => fence,
                        other => return Err(format!("{name} was not granted: {other:?}")),
                    };
                    let hold = history.acquired(&name, fence);
                    agent
                        .send(&format!("fenced {reg} shared {name}-{round}"))
                        .await?;
                    match agent.next_event(Duration::from_secs(10)).await? {
                        AgentEvent::Fenced { .. } => {}
                        other => return Err(format!("{name}'s fenced write: {other:?}")),
                    }
                    // Varied holds, up to 30 ms.
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 30)).await;
                    history.released(hold);
                    agent.send("release").await?;
                    match agent.next_event(Duration::from_secs(10)).await? {
                        AgentEvent::Releasing { .. } => {}
                        other => return Err(format!("{name}'s release: {other:?}")),
                    }
                    match agent.next_event(Duration::from_secs(10)).await? {
                        AgentEvent::Released { .. } => {}
                        other => return Err(format!("{name}'s release: {other:?}")),
                    }
                }
                agent.exit(Duration::from_secs(10)).await
            }));
        }
        for task in tasks {
            match crate::outcome::within(120.0, "every holder process finishes its rounds", task)
                .await?
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CaseError::Fail(e)),
                Err(e) => return Err(CaseError::Fail(format!("a driver panicked: {e}"))),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        check(&history, PROCESSES * PROCESS_ROUNDS, "holder processes")?;
        let mut f = Figures::new();
        f.insert("process_grants".into(), (PROCESSES * PROCESS_ROUNDS) as f64);
        f.insert(
            "process_grants_per_s".into(),
            (PROCESSES * PROCESS_ROUNDS) as f64 / elapsed,
        );
        f.insert("servers_used".into(), members.len().min(PROCESSES) as f64);
        Ok(f)
    }
}

pub mod try_and_timeout {
    use std::time::Duration;

    use quorate::ErrorKind;

    use crate::cases::client;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let held = sa.mutex("m").try_lock().await?;
        let Some(held) = held else {
            fail!("try_lock on a free lock returned None")
        };
        ensure!(
            sb.mutex("m").try_lock().await?.is_none(),
            "try_lock succeeded while another session held the lock"
        );
        match sb.mutex("m").lock_timeout(Duration::from_millis(200)).await {
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            Err(e) => fail!("lock_timeout on a held lock failed with {e}, expected Timeout"),
            Ok(_) => fail!("lock_timeout succeeded while another session held the lock"),
        }
        held.release().await?;
        let g = sb.mutex("m").lock_timeout(Duration::from_secs(10)).await?;
        ensure!(
            g.is_held().await?,
            "a fresh grant reports is_held() == false"
        );
        g.release().await?;
        let g = sa.mutex("m").try_lock().await?;
        ensure!(g.is_some(), "try_lock after every release returned None");
        drop(g);
        sa.close().await?;
        sb.close().await?;
        Ok(Figures::new())
    }
}

pub mod fencing_monotonic {
    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let mut fences = Vec::new();
        for round in 0..6 {
            let s = if round % 2 == 0 { &sa } else { &sb };
            let g = if round % 3 == 0 {
                s.mutex("f").try_lock().await?.expect("free")
            } else {
                s.mutex("f").lock().await?
            };
            fences.push(g.fence().get());
            g.release().await?;
        }
        // A brand-new coordinator continues the sequence.
        let (_c, sc) = client(&t).await?;
        let g = sc.mutex("f").lock().await?;
        fences.push(g.fence().get());
        g.release().await?;
        ensure!(
            fences.windows(2).all(|w| w[1] > w[0]),
            "fences did not strictly increase: {fences:?}"
        );
        // Another name has its own, independent sequence: just check it grants.
        let g = sa.mutex("other").lock().await?;
        g.release().await?;
        for s in [sa, sb, sc] {
            s.close().await?;
        }
        Ok(Figures::new())
    }
}

pub mod no_reentrancy {
    use quorate::ErrorKind;

    use crate::cases::client;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    pub async fn run(t: Target) -> CaseResult {
        let (_a, s) = client(&t).await?;
        let g = s.mutex("r").lock().await?;
        match within(10.0, "re-lock returns", s.mutex("r").lock()).await? {
            Err(e) if e.kind() == ErrorKind::AlreadyHeld => {}
            Err(e) => fail!("re-lock failed with {e}, expected AlreadyHeld"),
            Ok(_) => fail!("re-lock by the holding session was granted a second time"),
        }
        match s.mutex("r").try_lock().await {
            Err(e) if e.kind() == ErrorKind::AlreadyHeld => {}
            other => fail!("try_lock by the holding session: {other:?}, expected AlreadyHeld"),
        }
        match s.lock_all(["q", "r"]).await {
            Err(e) if e.kind() == ErrorKind::AlreadyHeld => {}
            other => fail!("lock_all including a held lock: {other:?}, expected AlreadyHeld"),
        }
        ensure!(
            s.mutex("q").try_lock().await?.is_some(),
            "lock_all left `q` held after failing"
        );
        g.release().await?;
        let g = within(10.0, "lock after release", s.mutex("r").lock()).await??;
        g.release().await?;
        s.close().await?;
        Ok(Figures::new())
    }
}

pub mod fifo_order {
    //! Every session is created first, so session age cannot stand in for
    //! arrival order; the waiters then arrive in a shuffled order, each
    //! only once the previous one is seen queued on the backend (a new
    //! queue entry) where the backend shows its queue entries, else after
    //! a settle time (counted in the figures).

    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use rand::seq::SliceRandom;

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{joined, CaseResult, Figures};
    use crate::target::Target;

    const WAITERS: usize = 5;
    /// How long to look for a waiter's queue entry before settling for a
    /// pause (a backend whose waiters leave no visible entry).
    const SEEN_WITHIN: Duration = Duration::from_secs(2);

    pub async fn run(t: Target) -> CaseResult {
        let (keeper, holder) = client(&t).await?;
        let mut sessions = Vec::new();
        for _ in 0..WAITERS {
            sessions.push(client(&t).await?);
        }
        let guard = holder.mutex("fifo").lock().await?;
        let mut arrival: Vec<usize> = (0..WAITERS).collect();
        arrival.shuffle(&mut rand::rng());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut confirmed = 0;
        let mut sessions: Vec<Option<_>> = sessions.into_iter().map(Some).collect();
        for &i in &arrival {
            let before = keeper.leftovers().await?.len();
            let (c, s) = sessions[i].take().expect("each session arrives once");
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _keep = c;
                let g = s.mutex("fifo").lock().await?;
                order.lock().unwrap().push(i);
                g.release().await?;
                s.close().await
            }));
            let start = Instant::now();
            loop {
                if keeper.leftovers().await?.len() > before {
                    confirmed += 1;
                    break;
                }
                if start.elapsed() > SEEN_WITHIN {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        guard.release().await?;
        for task in tasks {
            joined(60.0, "every waiter is granted", task).await?
        }
        let order = order.lock().unwrap().clone();
        ensure!(
            order == arrival,
            "grant order {order:?} is not the arrival order {arrival:?}"
        );
        holder.close().await?;
        let mut f = Figures::new();
        f.insert("waiters".into(), WAITERS as f64);
        f.insert("arrivals_seen_queued".into(), confirmed as f64);
        Ok(f)
    }
}

pub mod cancel_safety {
    use std::time::{Duration, Instant};

    use crate::cases::client;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    /// Try every few ms for up to `secs` until `try_lock` from `s` succeeds.
    async fn acquire_soon(
        s: &quorate::Session,
        name: &str,
        secs: f64,
    ) -> Result<(quorate::LockGuard, f64), crate::outcome::CaseError> {
        let start = Instant::now();
        loop {
            if let Some(g) = s.mutex(name).try_lock().await? {
                return Ok((g, start.elapsed().as_secs_f64() * 1000.0));
            }
            if start.elapsed().as_secs_f64() > secs {
                fail!("`{name}` stayed unavailable for {secs} s after its holder released: a dropped waiter was left queued or holding");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_c, sc) = client(&t).await?;
        let mut worst_ms: f64 = 0.0;
        for (i, delay_ms) in [0u64, 1, 5, 20, 100].into_iter().enumerate() {
            let name = format!("cancel-{i}");
            let held = sa.mutex(&name).lock().await?;
            // B waits, and its future is dropped after `delay_ms`.
            let dropped =
                tokio::time::timeout(Duration::from_millis(delay_ms), sb.mutex(&name).lock()).await;
            ensure!(dropped.is_err(), "B acquired `{name}` while A held it");
            held.release().await?;
            // C must get the lock: B's dropped wait must not have left an
            // entry ahead of C nor acquired by itself.
            let (g, ms) = acquire_soon(&sc, &name, 5.0).await?;
            worst_ms = worst_ms.max(ms);
            // B's session can wait again (its claim was released) and gets
            // it once C releases.
            g.release().await?;
            let gb = within(
                10.0,
                "B re-acquires after its dropped attempt",
                sb.mutex(&name).lock(),
            )
            .await??;
            gb.release().await?;
        }
        // The same for a writer of a read/write lock.
        if t.connect().await?.capabilities().primitives.rwlock {
            let r = sa.rwlock("rw").read().await?;
            let dropped =
                tokio::time::timeout(Duration::from_millis(50), sb.rwlock("rw").write()).await;
            ensure!(
                dropped.is_err(),
                "a writer acquired while a reader held the lock"
            );
            // A later reader is not blocked by the dropped writer.
            let start = Instant::now();
            let mut granted = None;
            while start.elapsed() < Duration::from_secs(5) {
                if let Some(g) = sc.rwlock("rw").try_read().await? {
                    granted = Some(g);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let Some(g) = granted else {
                fail!("a reader stayed blocked by a dropped writer for 5 s")
            };
            worst_ms = worst_ms.max(start.elapsed().as_secs_f64() * 1000.0);
            g.release().await?;
            r.release().await?;
        }
        for s in [sa, sb, sc] {
            s.close().await?;
        }
        let mut f = Figures::new();
        f.insert("dropped_waiter_cleared_max_ms".into(), worst_ms);
        Ok(f)
    }
}

pub mod lock_all_no_deadlock {
    use std::time::Duration;

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{joined, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let mut tasks = Vec::new();
        for order in [["a", "b", "c"], ["c", "b", "a"]] {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let (_c, s) = client(&t).await?;
                for _ in 0..8 {
                    let guards = s.lock_all(order).await?;
                    let names: Vec<&str> = guards.iter().map(|g| g.name()).collect();
                    assert_eq!(
                        names,
                        ["a", "b", "c"],
                        "lock_all returns guards in canonical order"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    for g in guards {
                        g.release().await?;
                    }
                }
                s.close().await
            }));
        }
        for task in tasks {
            joined(60.0, "both lock_all loops finish (no deadlock)", task).await?
        }
        // All or nothing.
        let (_x, sx) = client(&t).await?;
        let (_y, sy) = client(&t).await?;
        let (_z, sz) = client(&t).await?;
        let b = sx.mutex("b").lock().await?;
        // lock_all takes `a` (first in canonical order), then waits for `b`.
        let attempt = {
            let sy = sy.clone();
            tokio::spawn(async move { sy.lock_all(["b", "a"]).await.map(drop) })
        };
        // Confirm it really took `a` before it is abandoned, so "releases
        // what it took" is about something taken.
        let start = std::time::Instant::now();
        let mut took_a = false;
        while start.elapsed() < Duration::from_secs(5) && !attempt.is_finished() {
            match sz.mutex("a").try_lock().await? {
                None => {
                    took_a = true;
                    break;
                }
                Some(g) => {
                    g.release().await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        ensure!(
            !attempt.is_finished(),
            "lock_all finished while another session held `b`"
        );
        ensure!(
            took_a,
            "lock_all never took `a` while waiting for `b` (nothing to release)"
        );
        attempt.abort();
        let _ = attempt.await;
        let start = std::time::Instant::now();
        let mut a = None;
        while start.elapsed() < Duration::from_secs(5) && a.is_none() {
            a = sx.mutex("a").try_lock().await?;
            if a.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ensure!(
            a.is_some(),
            "`a` stayed held after the lock_all that took it was dropped"
        );
        drop(a);
        b.release().await?;
        sx.close().await?;
        sy.close().await?;
        sz.close().await?;
        Ok(Figures::new())
    }
}
