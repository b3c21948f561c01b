//! Session (lease) cases.

pub mod close_releases_everything {
    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;

    /// A TTL far longer than every bound below: a `close()` that released
    /// nothing would leave the grants held for a whole minute, not merely
    /// until a short lease expired.
    const LONG_TTL: &str = "60s";

    pub async fn run(t: Target) -> CaseResult {
        let t = t.with_option("ttl", LONG_TTL);
        let (coord, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let caps = coord.capabilities();
        let m = sa.mutex("m").lock().await?;
        let rw = if caps.primitives.rwlock {
            Some(sa.rwlock("rw").write().await?)
        } else {
            None
        };
        let member = if caps.primitives.group {
            Some(
                sa.group("g")
                    .join("a", serde_json::json!({"slots": 1}))
                    .await?,
            )
        } else {
            None
        };
        let leader = if caps.primitives.election {
            Some(sa.election("e").campaign(b"a").await?)
        } else {
            None
        };
        sa.close().await?;
        within(5.0, "the mutex guard's lost() after close", m.lost()).await?;
        if let Some(rw) = &rw {
            within(5.0, "the rwlock guard's lost() after close", rw.lost()).await?;
        }
        if let Some(member) = &member {
            within(5.0, "the membership's lost() after close", member.lost()).await?;
        }
        if let Some(leader) = &leader {
            within(5.0, "the leadership's lost() after close", leader.lost()).await?;
        }
        let g = within(10.0, "another session gets the mutex", sb.mutex("m").lock()).await??;
        g.release().await?;
        if rw.is_some() {
            let g = within(
                10.0,
                "another session gets the rwlock",
                sb.rwlock("rw").write(),
            )
            .await??;
            g.release().await?;
        }
        if member.is_some() {
            ensure!(
                sb.group("g").members().await?.is_empty(),
                "the closed session's member is still listed"
            );
        }
        if leader.is_some() {
            let l = within(
                10.0,
                "another session is elected",
                sb.election("e").campaign(b"b"),
            )
            .await??;
            l.resign().await?;
        }
        ensure!(sa.is_lost(), "a closed session does not report itself lost");
        ensure!(
            sa.mutex("x").lock().await.is_err(),
            "a closed session still grants locks"
        );
        drop((m, rw, member, leader));
        sb.close().await?;
        Ok(Figures::new())
    }
}

pub mod revoke_from_outside {
    //! An operator revokes a holder's session. Where the backend excludes
    //! processes, the holder is another process (an agent), so the loss
    //! must travel through the backend, not through shared client state.

    use std::time::{Duration, Instant};

    use quorate::Scope;

    use crate::agent::AgentEvent;
    use crate::cases::client;
    use crate::cases::faults::agent_holding;
    use crate::outcome::{within, CaseError, CaseResult};
    use crate::target::Target;
    use crate::{ensure, fail};

    pub async fn run(t: Target) -> CaseResult {
        let (operator, sb) = client(&t).await?;
        let cross_process = operator.capabilities().scope != Scope::Threads;
        let start;
        let told_ms;
        if cross_process {
            let (mut agent, _fence) = agent_holding(t.url(), "m").await?;
            ensure!(
                sb.mutex("m").try_lock().await?.is_none(),
                "the agent's lock is free before the revoke"
            );
            start = Instant::now();
            operator.revoke_session(agent.session()).await?;
            match agent
                .next_event(Duration::from_secs(10))
                .await
                .map_err(CaseError::Fail)?
            {
                AgentEvent::Lost { .. } => {}
                other => {
                    fail!("the holder process was not told its session was revoked: {other:?}")
                }
            }
            told_ms = start.elapsed().as_secs_f64() * 1000.0;
            drop(agent);
        } else {
            let (_a, sa) = client(&t).await?;
            let g = sa.mutex("m").lock().await?;
            start = Instant::now();
            operator.revoke_session(sa.id()).await?;
            within(
                10.0,
                "the holder's lost() after its session was revoked",
                g.lost(),
            )
            .await?;
            told_ms = start.elapsed().as_secs_f64() * 1000.0;
            within(10.0, "the session's lost()", sa.lost()).await?;
        }
        let g2 = within(10.0, "another session gets the lock", sb.mutex("m").lock()).await??;
        let free_ms = start.elapsed().as_secs_f64() * 1000.0;
        g2.release().await?;
        sb.close().await?;
        let mut f = crate::outcome::Figures::new();
        f.insert("holder_told_ms".into(), told_ms);
        f.insert("lock_free_ms".into(), free_ms);
        f.insert(
            "holder_in_another_process".into(),
            if cross_process { 1.0 } else { 0.0 },
        );
        Ok(f)
    }
}

pub mod lease_expiry_without_keepalive {
    use std::time::{Duration, Instant};

    use quorate::{KeepAlive, SessionOptions};

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let coord = t.connect().await?;
        let (_b, sb) = client(&t).await?;
        let ttl = Duration::from_secs(2);
        let opened = Instant::now();
        let sa = coord
            .session_with(SessionOptions {
                ttl: Some(ttl),
                keep_alive: KeepAlive::Manual,
            })
            .await?;
        // No lease (file://): the requested TTL only bounds the waits.
        let granted_ttl = sa.ttl().unwrap_or(ttl);
        let g = sa.mutex("m").lock().await?;
        let reason = within(
            granted_ttl.as_secs_f64() + 10.0,
            "lost() of a session nobody keeps alive",
            g.lost(),
        )
        .await?;
        let told = opened.elapsed();
        // Lost must be reported before the backend can have expired the
        // lease, i.e. before another client can get the lock.
        let early = sb.mutex("m").try_lock().await?;
        let told_before_free = early.is_none();
        drop(early);
        let g2 = within(
            granted_ttl.as_secs_f64() + 20.0,
            "the lock becomes free after the lease expires",
            sb.mutex("m").lock(),
        )
        .await??;
        let free = opened.elapsed();
        g2.release().await?;
        // The safety ordering is the guarantee (told before the lock is
        // free); how early the holder was told is a figure, not asserted.
        ensure!(
            told_before_free,
            "the lock was already free when the holder was told it was lost ({reason})"
        );
        drop(g);
        sb.close().await?;
        let mut f = Figures::new();
        f.insert("ttl_ms".into(), granted_ttl.as_secs_f64() * 1000.0);
        f.insert("holder_told_ms".into(), told.as_secs_f64() * 1000.0);
        f.insert("lock_free_ms".into(), free.as_secs_f64() * 1000.0);
        Ok(f)
    }
}

pub mod manual_keepalive_keeps_session {
    use std::time::{Duration, Instant};

    use quorate::{KeepAlive, SessionOptions};

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let coord = t.connect().await?;
        let (_b, sb) = client(&t).await?;
        let sa = coord
            .session_with(SessionOptions {
                // The suite's lease TTL (2 s, as the fault cases use): at
                // 1 s (a 750 ms lease on ZooKeeper, whose keep-alive is a
                // `sync` through the leader) one keep-alive round trip on a
                // loaded 3-server ensemble outlasted the 675 ms window once,
                // and the session was reported lost (docs/backends.md).
                ttl: Some(Duration::from_secs(2)),
                keep_alive: KeepAlive::Manual,
            })
            .await?;
        // No lease (file://): keep-alives at the requested pace anyway.
        let ttl = sa.ttl().unwrap_or(Duration::from_secs(2));
        let g = sa.mutex("m").lock().await?;
        let start = Instant::now();
        while start.elapsed() < ttl * 3 {
            tokio::time::sleep(ttl / 4).await;
            sa.keep_alive().await?;
        }
        ensure!(
            !sa.is_lost() && !g.is_lost(),
            "the session was lost despite keep_alive() every TTL/4"
        );
        ensure!(
            g.is_held().await?,
            "the backend dropped the lock despite keep_alive()"
        );
        ensure!(
            sb.mutex("m").try_lock().await?.is_none(),
            "another session got the lock while the holder kept its session alive"
        );
        ensure!(
            sa.remaining() > Duration::ZERO,
            "remaining() is zero on a live session"
        );
        g.release().await?;
        sa.close().await?;
        sb.close().await?;
        Ok(Figures::new())
    }
}

pub mod unknown_option_rejected {
    use quorate::ErrorKind;

    use crate::fail;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        match t.connect_with_option("no_such_option", "1").await {
            Err(e)
                if e.kind() == ErrorKind::InvalidConfig
                    && e.to_string().contains("no_such_option") =>
            {
                Ok(Figures::new())
            }
            Err(e) => fail!("an unknown option gave `{e}`, expected InvalidConfig naming it"),
            Ok(_) => fail!("an unknown option was silently accepted"),
        }
    }
}
