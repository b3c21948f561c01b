//! Loss notification: the one mechanism by which a session and every guard
//! tied to it learn that they can no longer be trusted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Why a session or a guard was lost. Match on the variant (keep a wildcard
/// arm: new reasons may be added); `Display` gives the words for messages.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// The session's owner closed it ([`crate::Session::close`]).
    Closed,
    /// The last handle to the session was dropped (its lease is revoked in
    /// the background).
    Dropped,
    /// No keep-alive succeeded within the TTL minus the safety margin: the
    /// client-side deadline passed.
    Deadline {
        /// The session's TTL.
        ttl: Duration,
    },
    /// The guard's lock was released by its owner.
    Released,
    /// The guard's leadership was resigned by its owner.
    Resigned,
    /// The guard's membership was left by its owner.
    Left,
    /// The backend said the lease, key or node is gone (expired, revoked,
    /// deleted, no longer granted); its words.
    Gone(Arc<str>),
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::Closed => f.write_str("session closed"),
            LossReason::Dropped => f.write_str("session dropped"),
            LossReason::Deadline { ttl } => write!(
                f,
                "no successful keep-alive within the TTL ({ttl:?}) minus the safety margin"
            ),
            LossReason::Released => f.write_str("released"),
            LossReason::Resigned => f.write_str("resigned"),
            LossReason::Left => f.write_str("left"),
            LossReason::Gone(words) => f.write_str(words),
        }
    }
}

/// A backend's own words: [`LossReason::Gone`].
impl From<&str> for LossReason {
    fn from(words: &str) -> Self {
        LossReason::Gone(words.into())
    }
}

/// A backend's own words: [`LossReason::Gone`].
impl From<String> for LossReason {
    fn from(words: String) -> Self {
        LossReason::Gone(words.into())
    }
}

/// A one-shot, cloneable "lost" flag with async waiting.
///
/// Backends receive one for each session and each grant and call
/// [`LossNotifier::fire`] when the backend says the lease/key/node is gone;
/// core fires the session's own when keep-alive misses its deadline.
#[derive(Clone, Debug)]
pub struct LossNotifier {
    tx: Arc<watch::Sender<Option<LossReason>>>,
}

impl Default for LossNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl LossNotifier {
    /// A new, not yet fired, notifier.
    pub fn new() -> Self {
        LossNotifier {
            tx: Arc::new(watch::channel(None).0),
        }
    }

    /// Mark as lost. The first reason wins; later calls do nothing.
    /// Backends pass their own words (a `&str` or `String`, which become
    /// [`LossReason::Gone`]).
    pub fn fire(&self, reason: impl Into<LossReason>) {
        let reason = reason.into();
        self.tx.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            tracing::debug!(%reason, "lost");
            *current = Some(reason);
            true
        });
    }

    /// Whether [`LossNotifier::fire`] was called.
    pub fn is_lost(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// The reason, once lost.
    pub fn reason(&self) -> Option<LossReason> {
        self.tx.borrow().clone()
    }

    /// Resolves when fired (at once if already fired).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops waiting.
    pub async fn lost(&self) -> LossReason {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen while we
                // borrow `self`; wait forever rather than report a false loss.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The loss view of one guard: its own notifier plus its session's.
///
/// A guard is lost when either fires; no task per guard is needed, so
/// 10 000 held locks cost nothing extra while nothing happens.
#[derive(Clone, Debug)]
pub(crate) struct GuardLoss {
    pub(crate) own: LossNotifier,
    pub(crate) session: LossNotifier,
}

impl GuardLoss {
    pub(crate) fn new(session: &LossNotifier) -> Self {
        GuardLoss {
            own: LossNotifier::new(),
            session: session.clone(),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.own.is_lost() || self.session.is_lost()
    }

    pub(crate) fn reason(&self) -> Option<LossReason> {
        self.own.reason().or_else(|| self.session.reason())
    }

    pub(crate) async fn lost(&self) -> LossReason {
        tokio::select! {
            r = self.own.lost() => r,
            r = self.session.lost() => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fire_wakes_waiters_and_first_reason_wins() {
        let n = LossNotifier::new();
        let waiter = tokio::spawn({
            let n = n.clone();
            async move { n.lost().await }
        });
        tokio::task::yield_now().await;
        assert!(!n.is_lost());
        n.fire("first");
        n.fire("second");
        assert_eq!(waiter.await.unwrap(), LossReason::Gone("first".into()));
        assert_eq!(n.lost().await.to_string(), "first");
    }

    #[tokio::test]
    async fn guard_loss_follows_session() {
        let session = LossNotifier::new();
        let g = GuardLoss::new(&session);
        assert!(!g.is_lost());
        session.fire(LossReason::Closed);
        assert!(g.is_lost());
        assert_eq!(g.lost().await, LossReason::Closed);
    }
}
