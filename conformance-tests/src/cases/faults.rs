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
        AgentEvent::Granted { fence, .. } => Ok((agent, fence)),
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
    //! A holder process is paused (SIGSTOP, checked in /proc) past its TTL.
    //! Lease backends: another client acquires and writes; the paused
    //! holder's writes, queued while it is stopped so they are attempted
    //! as it resumes (before or as it learns of its loss), go to the
    //! *backend* (a guarded write asked of the backend itself) and to a
    //! *fenced register* in its own server, with the holder's old fence.
    //! Both must refuse them, and the case reads back what each holds.

    use std::time::{Duration, Instant};

    use super::{agent_holding, AGENT_TTL};
    use crate::agent::{Agent, AgentEvent};
    use crate::cases::client;
    use crate::harness::fenced::FencedRegister;
    use crate::outcome::{within, CaseError, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    const NAME: &str = "pause";
    const KEY: &str = "pause-data";

    pub async fn run(t: Target) -> CaseResult {
        let url = t.url_with("ttl", AGENT_TTL);
        let ttl = quorate::config::parse_duration("ttl", AGENT_TTL)?;
        let register = FencedRegister::start()
            .await
            .map_err(|e| CaseError::Unverified(format!("starting the fenced register: {e}")))?;
        let reg = register.addr().to_string();
        let history = register.history(NAME);
        let (mut agent, fence) = agent_holding(&url, NAME).await?;
        let agent_hold = history.acquired("agent", fence);
        let (coord, sb) = client(&t).await?;
        let exclusive = coord.capabilities().exclusive_under_pause;
        let guarded = coord.capabilities().primitives.guarded_writes;
        if guarded {
            ensure!(
                ask(&mut agent, &format!("guarded {KEY} agent-before-pause")).await?
                    == Reply::Guarded(true),
                "the holder's guarded write was refused while it held the lock"
            );
        }
        ensure!(
            ask(
                &mut agent,
                &format!("fenced {reg} {NAME} agent-before-pause")
            )
            .await?
                == Reply::Fenced(true),
            "the fenced register refused the holder's first write"
        );

        agent.pause().await.map_err(CaseError::Fail)?;
        let paused = Instant::now();
        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl.as_secs_f64() * 1000.0);
        // Wait well past the TTL.
        let window = ttl * 2 + Duration::from_secs(1);
        let attempt = tokio::time::timeout(window, sb.mutex(NAME).lock()).await;
        ensure!(
            agent.is_stopped(),
            "the holder process was not stopped for the whole pause"
        );
        if exclusive {
            // Declared safe under pause: nobody may get the lock.
            ensure!(attempt.is_err(), "another client acquired the lock while its holder was paused, though the backend declares exclusive_under_pause");
            agent.signal(libc::SIGCONT).map_err(CaseError::Fail)?;
            if guarded {
                ensure!(
                    ask(&mut agent, &format!("guarded {KEY} agent-after-pause")).await?
                        == Reply::Guarded(true),
                    "the resumed holder's guarded write was refused"
                );
                ensure!(
                    sb.read(KEY).await? == Some(b"agent-after-pause".to_vec()),
                    "the backend does not hold the resumed holder's write"
                );
            }
            ensure!(
                ask(
                    &mut agent,
                    &format!("fenced {reg} {NAME} agent-after-pause")
                )
                .await?
                    == Reply::Fenced(true),
                "the fenced register refused the resumed holder's write"
            );
            history.released(agent_hold);
            agent.send("release").await.map_err(CaseError::Fail)?;
            let g = within(
                10.0,
                "the lock after the resumed holder released",
                sb.mutex(NAME).lock(),
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
            let fb = g.fence().get();
            let new_hold = history.acquired("other", fb);
            ensure!(
                fb > fence,
                "the new holder's fence {fb} is not above the paused holder's {fence}"
            );
            if guarded {
                ensure!(
                    g.write_if_held(KEY, b"other").await?,
                    "the new holder's guarded write was refused"
                );
            }
            ensure!(
                register.write(NAME, fb, "other", "other"),
                "the fenced register refused the new holder's write"
            );
            // The paused holder's writes wait in its input while it is
            // stopped: it attempts them as soon as it runs again.
            if guarded {
                agent
                    .send(&format!("guarded {KEY} stale-agent"))
                    .await
                    .map_err(CaseError::Fail)?;
            }
            agent
                .send(&format!("fenced {reg} {NAME} stale-agent"))
                .await
                .map_err(CaseError::Fail)?;
            agent.signal(libc::SIGCONT).map_err(CaseError::Fail)?;
            let resumed = Instant::now();
            let mut told_ms = None;
            let mut stale_guarded = None;
            let mut stale_fenced = None;
            while told_ms.is_none()
                || (guarded && stale_guarded.is_none())
                || stale_fenced.is_none()
            {
                match agent
                    .next_event(Duration::from_secs(10))
                    .await
                    .map_err(CaseError::Fail)?
                {
                    AgentEvent::Lost { .. } => {
                        told_ms = Some(resumed.elapsed().as_secs_f64() * 1000.0);
                        history.released(agent_hold);
                    }
                    AgentEvent::Guarded {
                        applied,
                        lost_before,
                    } => stale_guarded = Some((Some(applied), lost_before)),
                    // The guarded write is answered first (commands run in
                    // order); an error leaves it unknown whether it applied:
                    // the read-back below decides.
                    AgentEvent::Error { message } if guarded && stale_guarded.is_none() => {
                        tracing::info!(%message, "the stale holder's guarded write failed");
                        stale_guarded = Some((None, true));
                    }
                    AgentEvent::Fenced {
                        accepted,
                        lost_before,
                        ..
                    } => stale_fenced = Some((accepted, lost_before)),
                    other => fail!("unexpected agent reply after resuming: {other:?}"),
                }
            }
            let (fenced_accepted, fenced_knew) = stale_fenced.unwrap_or((true, false));
            if let Some((applied, knew)) = stale_guarded {
                ensure!(
                    applied != Some(true),
                    "the backend applied the paused holder's guarded write after another client was granted the lock"
                );
                ensure!(
                    sb.read(KEY).await? == Some(b"other".to_vec()),
                    "the backend does not hold the new holder's value after the stale holder's write"
                );
                f.insert(
                    "guarded_write_refused_by_backend".into(),
                    flag(applied == Some(false)),
                );
                f.insert("holder_knew_before_guarded_write".into(), flag(knew));
            }
            ensure!(
                !fenced_accepted,
                "the fenced register accepted the paused holder's write with its old fence {fence}"
            );
            ensure!(
                register.value(NAME) == Some((fb, "other".to_owned())),
                "the fenced register does not hold the new holder's write: {:?}",
                register.value(NAME)
            );
            history.released(new_hold);
            g.release().await?;
            let v = history.check();
            ensure!(
                v.stale_writes_accepted == 0,
                "the protected resource accepted a stale write: {v:?}"
            );
            ensure!(v.non_monotonic_fences == 0, "fences went backwards: {v:?}");
            f.insert("acquired_by_other_after_ms".into(), taken_ms);
            f.insert(
                "holder_told_after_resume_ms".into(),
                told_ms.unwrap_or(f64::NAN),
            );
            f.insert("holder_knew_before_fenced_write".into(), flag(fenced_knew));
            // The paused holder believed it held the lock from the other's
            // grant until it was told: a pause is exactly this overlap, and
            // why the fence must protect the resource.
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

    #[derive(Debug, PartialEq)]
    enum Reply {
        Guarded(bool),
        Fenced(bool),
    }

    async fn ask(agent: &mut Agent, command: &str) -> Result<Reply, CaseError> {
        agent.send(command).await.map_err(CaseError::Fail)?;
        match agent
            .next_event(Duration::from_secs(10))
            .await
            .map_err(CaseError::Fail)?
        {
            AgentEvent::Guarded { applied, .. } => Ok(Reply::Guarded(applied)),
            AgentEvent::Fenced { accepted, .. } => Ok(Reply::Fenced(accepted)),
            other => Err(CaseError::Fail(format!(
                "unexpected agent reply to `{command}`: {other:?}"
            ))),
        }
    }

    fn flag(b: bool) -> f64 {
        if b {
            1.0
        } else {
            0.0
        }
    }
}

/// A lease backend whose clients can be separate processes.
pub(crate) fn needs_lease_and_processes(c: &quorate::Capabilities) -> Result<(), &'static str> {
    super::needs_lease(c)?;
    super::needs_processes(c)
}

pub mod waiter_pause {
    //! A *waiter* process is stopped (SIGSTOP) once it is queued, the holder
    //! releases (so the grant is on its way to the stopped waiter: a delete
    //! event or a published message in its socket), and it stays stopped
    //! past its TTL while another client is granted the lock and releases
    //! it. On resume the waiter must not report the lock granted: its lease
    //! ran out, and its grant (with the older fence) would follow a newer
    //! one. Found by the zookeeper-3 nemesis as one non-monotonic fence.

    use std::time::Duration;

    use super::AGENT_TTL;
    use crate::agent::{Agent, AgentEvent};
    use crate::cases::client;
    use crate::outcome::{within, CaseError, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    const NAME: &str = "waiter-pause";

    /// The number of holders and waiters `coord` lists for the lock.
    async fn entries(coord: &quorate::Coordinator) -> Result<usize, CaseError> {
        Ok(coord
            .locks(NAME)
            .await?
            .iter()
            .filter(|l| l.name == NAME)
            .map(|l| l.holders.len() + l.waiters.len())
            .sum())
    }

    pub async fn run(t: Target) -> CaseResult {
        let url = t.url_with("ttl", AGENT_TTL);
        let ttl = quorate::config::parse_duration("ttl", AGENT_TTL)?;
        let (coord, sa) = client(&t).await?;
        let held = sa.mutex(NAME).lock().await?;
        let (mut agent, _session) = Agent::start(&url).await.map_err(CaseError::Fail)?;
        agent
            .send(&format!("lock {NAME}"))
            .await
            .map_err(CaseError::Fail)?;
        within(20.0, "the waiter process is queued", async {
            while entries(&coord).await? < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<(), CaseError>(())
        })
        .await??;
        // Let its wait settle (a watch set, a subscription confirmed).
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent.pause().await.map_err(CaseError::Fail)?;
        let paused_fence = held.fence().get();
        held.release().await?;
        // The stopped waiter's lease runs out, and with it the grant made
        // on its behalf or its queue entry: another client gets the lock.
        let (_b, sb) = client(&t).await?;
        let window = ttl * 3 + Duration::from_secs(5);
        let g = match tokio::time::timeout(window, sb.mutex(NAME).lock()).await {
            Ok(r) => r?,
            Err(_) => fail!("nobody got the lock within {window:?} of stopping the waiter it was handed to ({ttl:?} lease)"),
        };
        ensure!(
            agent.is_stopped(),
            "the waiter process was not stopped until another client was granted the lock"
        );
        let meanwhile = g.fence().get();
        ensure!(
            meanwhile > paused_fence,
            "the new grant's fence {meanwhile} is not above the released one's {paused_fence}"
        );
        g.release().await?;
        agent.signal(libc::SIGCONT).map_err(CaseError::Fail)?;
        let answer = agent
            .next_event(Duration::from_secs(20))
            .await
            .map_err(CaseError::Fail)?;
        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl.as_secs_f64() * 1000.0);
        match answer {
            AgentEvent::Granted { fence, .. } => fail!(
                "the waiter stopped past its lease reported the lock granted on resume, with fence {fence} after {meanwhile} had been granted meanwhile"
            ),
            AgentEvent::Error { message } => {
                tracing::info!(%message, "the resumed waiter's acquire failed, as it should");
                f.insert(
                    "resumed_waiter_told_lost".into(),
                    if message.contains("lost") { 1.0 } else { 0.0 },
                );
            }
            other => fail!("unexpected reply of the resumed waiter: {other:?}"),
        }
        drop(agent);
        ensure!(
            entries(&coord).await? == 0,
            "the lock is still listed held or waited for after everything ended"
        );
        sa.close().await?;
        sb.close().await?;
        Ok(f)
    }
}
