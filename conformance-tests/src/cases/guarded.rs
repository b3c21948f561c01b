//! Guarded-write cases.

pub mod guarded_writes {
    use std::time::Duration;

    use quorate::Scope;

    use crate::agent::{Agent, AgentEvent};
    use crate::cases::client;
    use crate::cases::faults::agent_holding;
    use crate::ensure;
    use crate::outcome::CaseError;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (operator, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let caps = operator.capabilities();
        let mut f = Figures::new();
        if caps.external_revoke && caps.scope != Scope::Threads {
            // The holder is another process whose session is revoked from
            // here: its guarded write is asked of the backend, which alone
            // must refuse it (the holder may not have heard of the loss).
            sa.close().await?;
            let (mut agent, _fence) = agent_holding(t.url(), "cfg").await?;
            let session = agent.session().to_owned();
            ensure!(
                ask_guarded(&mut agent, "config v1").await?.0,
                "write_if_held refused while the lock was held"
            );
            ensure!(
                sb.read("config").await? == Some(b"v1".to_vec()),
                "the guarded write is not readable"
            );
            operator.revoke_session(&session).await?;
            let (applied, knew) = ask_guarded(&mut agent, "config stale").await?;
            ensure!(
                !applied,
                "the backend applied a guarded write of a holder whose session was revoked"
            );
            f.insert(
                "holder_knew_before_write".into(),
                if knew { 1.0 } else { 0.0 },
            );
            drop(agent);
        } else {
            // One process (or no external revoke): the loss is the holder's
            // own session closing.
            let g = sa.mutex("cfg").lock().await?;
            ensure!(
                g.write_if_held("config", b"v1").await?,
                "write_if_held refused while the lock was held"
            );
            ensure!(
                sb.read("config").await? == Some(b"v1".to_vec()),
                "the guarded write is not readable"
            );
            sa.close().await?;
            ensure!(
                !g.write_if_held_at_backend("config", b"stale").await?,
                "the backend applied a guarded write after the holder's session was closed"
            );
            ensure!(
                !g.write_if_held("config", b"stale").await?,
                "write_if_held applied after the lock was lost"
            );
            within(5.0, "lost() after the session ended", g.lost()).await?;
        }
        ensure!(
            sb.read("never-written").await?.is_none(),
            "read of a missing key returned a value"
        );
        ensure!(
            sb.read("config").await? == Some(b"v1".to_vec()),
            "a refused guarded write changed the value"
        );

        let g = within(
            10.0,
            "another session takes the lock",
            sb.mutex("cfg").lock(),
        )
        .await??;
        ensure!(
            g.write_and_release("config", b"v2").await?,
            "write_and_release refused while held"
        );
        ensure!(
            sb.read("config").await? == Some(b"v2".to_vec()),
            "write_and_release did not store the value"
        );
        let (_c, sc) = client(&t).await?;
        let free = sc.mutex("cfg").try_lock().await?;
        ensure!(free.is_some(), "write_and_release did not release the lock");
        drop(free);
        sb.close().await?;
        sc.close().await?;
        Ok(f)
    }

    /// Ask the agent for a guarded write `KEY VALUE` at the backend; returns
    /// whether it applied and whether the agent already knew of a loss.
    async fn ask_guarded(agent: &mut Agent, kv: &str) -> Result<(bool, bool), CaseError> {
        agent
            .send(&format!("guarded {kv}"))
            .await
            .map_err(CaseError::Fail)?;
        loop {
            match agent
                .next_event(Duration::from_secs(10))
                .await
                .map_err(CaseError::Fail)?
            {
                AgentEvent::Guarded {
                    applied,
                    lost_before,
                } => return Ok((applied, lost_before)),
                // The loss may be reported first; the write's answer follows.
                AgentEvent::Lost { .. } => continue,
                other => {
                    return Err(CaseError::Fail(format!(
                        "unexpected agent reply to a guarded write: {other:?}"
                    )))
                }
            }
        }
    }
}
