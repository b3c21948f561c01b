//! Guarded-write cases.

pub mod guarded_writes {
    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (operator, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let g = sa.mutex("cfg").lock().await?;
        ensure!(
            g.write_if_held("config", b"v1").await?,
            "write_if_held refused while the lock was held"
        );
        ensure!(
            sb.read("config").await? == Some(b"v1".to_vec()),
            "the guarded write is not readable"
        );
        ensure!(
            sb.read("never-written").await?.is_none(),
            "read of a missing key returned a value"
        );

        // Lose the lock: revoke from outside where the backend can (the
        // backend's own check must refuse), else close the session.
        if operator.capabilities().external_revoke {
            operator.revoke_session(sa.id()).await?;
        } else {
            sa.close().await?;
        }
        ensure!(
            !g.write_if_held("config", b"stale").await?,
            "write_if_held applied after the lock was lost"
        );
        within(5.0, "lost() after the session ended", g.lost()).await?;
        ensure!(
            sb.read("config").await? == Some(b"v1".to_vec()),
            "a refused guarded write changed the value"
        );
        drop(g);

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
        Ok(Figures::new())
    }
}
