//! Fault cases: a real client process holding a lock is killed or paused.

use std::time::Duration;

use crate::agent::{Agent, AgentEvent};
use crate::outcome::CaseError;

/// The TTL the agents use, short so that lease cases finish quickly.
pub(crate) const AGENT_TTL: &str = "2s";

pub(crate) async fn agent_holding(url: &str, name: &str) -> Result<(Agent, u64), CaseError> {
    let (mut agent, _session) = Agent::start(url).await.map_err(CaseError::Fail)?;
    agent
        .send(&format!("lock {name}"))
        .await
        .map_err(CaseError::Fail)?;
    match agent
        .next_event(Duration::from_secs(20))
        .await
        .map_err(CaseError::Fail)?
    {
        AgentEvent::Granted { fence } => Ok((agent, fence)),
        other => Err(CaseError::Fail(format!(
            "the agent did not get the lock: {other:?}"
        ))),
    }
}

pub mod holder_crash_frees_lock {
    use std::time::Instant;

    use super::{agent_holding, AGENT_TTL};
    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{within, CaseError, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let url = t.url_with("ttl", AGENT_TTL);
        let (agent, fence) = agent_holding(&url, "crash").await?;
        let (_b, sb) = client(&t).await?;
        ensure!(
            sb.mutex("crash").try_lock().await?.is_none(),
            "the lock held by the agent process is free for another process"
        );
        let killed = Instant::now();
        agent.kill().await.map_err(CaseError::Fail)?;
        let g = within(
            60.0,
            "the lock is free after its holder process was killed",
            sb.mutex("crash").lock(),
        )
        .await??;
        let free_ms = killed.elapsed().as_secs_f64() * 1000.0;
        ensure!(
            g.fence().get() > fence,
            "the new grant's fence {} is not above the killed holder's {fence}",
            g.fence()
        );
        g.release().await?;
        sb.close().await?;
        let mut f = Figures::new();
        f.insert("lock_free_after_kill_ms".into(), free_ms);
        Ok(f)
    }
}

pub mod holder_pause {
    use std::time::{Duration, Instant};

    use super::{agent_holding, AGENT_TTL};
    use crate::agent::AgentEvent;
    use crate::cases::client;
    use crate::history::History;
    use crate::outcome::{within, CaseError, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    pub async fn run(t: Target) -> CaseResult {
        let url = t.url_with("ttl", AGENT_TTL);
        let ttl = quorate::config::parse_duration("ttl", AGENT_TTL)?;
        let (mut agent, fence) = agent_holding(&url, "pause").await?;
        let history = History::new();
        let agent_hold = history.acquired("agent", fence);
        ensure!(
            history.write("agent", fence),
            "the resource refused the first holder's write"
        );
        let (coord, sb) = client(&t).await?;
        let exclusive = coord.capabilities().exclusive_under_pause;

        agent.signal(libc::SIGSTOP).map_err(CaseError::Fail)?;
        let paused = Instant::now();
        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl.as_secs_f64() * 1000.0);
        // Wait well past the TTL.
        let window = ttl * 2 + Duration::from_secs(1);
        let attempt = tokio::time::timeout(window, sb.mutex("pause").lock()).await;
        if exclusive {
            // Declared safe under pause: nobody may get the lock.
            ensure!(attempt.is_err(), "another client acquired the lock while its holder was paused, though the backend declares exclusive_under_pause");
            agent.signal(libc::SIGCONT).map_err(CaseError::Fail)?;
            agent.send("write").await.map_err(CaseError::Fail)?;
            match agent
                .next_event(Duration::from_secs(10))
                .await
                .map_err(CaseError::Fail)?
            {
                AgentEvent::Write {
                    fence: wf,
                    lost: false,
                } => {
                    ensure!(
                        history.write("agent", wf),
                        "the resumed holder's write was refused"
                    );
                }
                other => fail!("the resumed holder should still hold its lock, got {other:?}"),
            }
            history.released(agent_hold);
            agent.send("release").await.map_err(CaseError::Fail)?;
            let g = within(
                10.0,
                "the lock after the resumed holder released",
                sb.mutex("pause").lock(),
            )
            .await??;
            g.release().await?;
            f.insert("acquired_by_other_while_paused".into(), 0.0);
        } else {
            let g = match attempt {
                Ok(r) => r?,
                Err(_) => fail!("nobody got the lock within {window:?} of pausing a holder with a {ttl:?} lease"),
            };
            let taken_ms = paused.elapsed().as_secs_f64() * 1000.0;
            let new_hold = history.acquired("other", g.fence().get());
            ensure!(
                g.fence().get() > fence,
                "the new holder's fence {} is not above the paused holder's {fence}",
                g.fence()
            );
            ensure!(
                history.write("other", g.fence().get()),
                "the resource refused the new holder's write"
            );
            agent.signal(libc::SIGCONT).map_err(CaseError::Fail)?;
            let resumed = Instant::now();
            match agent
                .next_event(Duration::from_secs(10))
                .await
                .map_err(CaseError::Fail)?
            {
                AgentEvent::Lost { .. } => {}
                other => fail!("the resumed holder was not told it lost the lock: {other:?}"),
            }
            let told_ms = resumed.elapsed().as_secs_f64() * 1000.0;
            history.released(agent_hold);
            agent.send("write").await.map_err(CaseError::Fail)?;
            let stale = match agent
                .next_event(Duration::from_secs(10))
                .await
                .map_err(CaseError::Fail)?
            {
                AgentEvent::Write { fence: wf, lost } => {
                    ensure!(lost, "the resumed holder's guard does not report the loss");
                    wf
                }
                other => fail!("unexpected agent reply {other:?}"),
            };
            // The paused holder writes anyway (as a buggy client would): the
            // fenced resource must reject it.
            let accepted = history.write("agent", stale);
            history.released(new_hold);
            g.release().await?;
            let v = history.check();
            ensure!(
                !accepted && v.stale_writes_accepted == 0,
                "the protected resource accepted the paused holder's stale write: {v:?}"
            );
            ensure!(v.non_monotonic_fences == 0, "fences went backwards: {v:?}");
            f.insert("acquired_by_other_after_ms".into(), taken_ms);
            f.insert("holder_told_after_resume_ms".into(), told_ms);
            f.insert("overlapping_beliefs".into(), v.overlapping_holds as f64);
            f.insert(
                "stale_writes_rejected".into(),
                v.stale_writes_rejected as f64,
            );
        }
        drop(agent);
        sb.close().await?;
        Ok(f)
    }
}
