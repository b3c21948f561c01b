//! Background clean-ups of what a dropped *acquisition* may have left on the
//! backend (a queue entry, a node or key whose create reply was lost), for
//! backends to call from their `Drop` guards. Grants that were returned to
//! core are not the backends' to clean up: core gives them back itself (see
//! [`crate::spi`]).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{ErrorKind, Result};

/// When a background clean-up stops trying, short of succeeding or of an
/// attempt failing with [`ErrorKind::Lost`] / [`ErrorKind::Closed`] (the
/// session is gone, and what it created with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// After this long, counted from the first attempt and bounding every
    /// attempt (e.g. the session's TTL: by then its lease frees what is
    /// left).
    After(Duration),
    /// Only when the session is gone.
    WithSession,
}

/// Run `attempt` in the background until it returns `Ok`, pausing with a
/// [`Backoff`] between attempts, or until `give_up` says stop. `attempt`
/// must be idempotent and remove only what the dropped acquisition created.
/// Each attempt should bound its own requests. Without a tokio runtime
/// (dropped outside one) nothing runs and the session's end is the
/// clean-up.
pub fn spawn_retrying<F, Fut>(what: &'static str, give_up: GiveUp, mut attempt: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            op = what,
            "no runtime to clean up in; the session's end will"
        );
        return;
    };
    runtime.spawn(async move {
        let started = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let outcome = match give_up {
                GiveUp::After(limit) => {
                    match tokio::time::timeout_at(started + limit, attempt()).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            tracing::warn!(op = what, ?limit, "clean-up gave up; the session's end frees what is left");
                            return;
                        }
                    }
                }
                GiveUp::WithSession => attempt().await,
            };
            let e = match outcome {
                Ok(()) => {
                    tracing::debug!(op = what, "clean-up done");
                    return;
                }
                Err(e) => e,
            };
            if matches!(e.kind(), ErrorKind::Lost | ErrorKind::Closed) {
                tracing::debug!(op = what, error = %e, "the session is gone, and what it created with it");
                return;
            }
            let pause = backoff.next_delay();
            if let GiveUp::After(limit) = give_up {
                if started.elapsed() + pause >= limit {
                    tracing::warn!(op = what, error = %e, "clean-up gave up; the session's end frees what is left");
                    return;
                }
            }
            tracing::debug!(op = what, error = %e, "clean-up failed; retrying");
            tokio::time::sleep(pause).await;
        }
    });
}
