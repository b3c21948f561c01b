//! Loss notification: the one mechanism by which a session and every guard
//! tied to it learn that they can no longer be trusted.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

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
///
/// Every grant has one, so it is small (about 100 bytes, one allocation)
/// and firing it wakes only the futures waiting on it.
#[derive(Clone, Debug)]
pub struct LossNotifier {
    inner: Arc<Flag>,
}

/// The state a notifier's clones share.
#[derive(Debug, Default)]
struct Flag {
    /// Set once, by the first [`LossNotifier::fire`].
    reason: OnceLock<LossReason>,
    /// Wakes the [`LossNotifier::lost`] futures waiting when it is set.
    fired: Notify,
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
            inner: Arc::default(),
        }
    }

    /// Mark as lost. The first reason wins; later calls do nothing.
    /// Backends pass their own words (a `&str` or `String`, which become
    /// [`LossReason::Gone`]).
    pub fn fire(&self, reason: impl Into<LossReason>) {
        if self.inner.reason.set(reason.into()).is_ok() {
            if let Some(reason) = self.inner.reason.get() {
                tracing::debug!(%reason, "lost");
            }
            self.inner.fired.notify_waiters();
        }
    }

    /// Whether [`LossNotifier::fire`] was called.
    pub fn is_lost(&self) -> bool {
        self.inner.reason.get().is_some()
    }

    /// The reason, once lost.
    pub fn reason(&self) -> Option<LossReason> {
        self.inner.reason.get().cloned()
    }

    /// Resolves when fired (at once if already fired).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future only stops waiting.
    pub async fn lost(&self) -> LossReason {
        loop {
            let fired = self.inner.fired.notified();
            tokio::pin!(fired);
            // Registered before the look, so a `fire` between the look and
            // the wait still wakes this future.
            fired.as_mut().enable();
            if let Some(reason) = self.inner.reason.get() {
                return reason.clone();
            }
            fired.await;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_wakes_whenever_it_started_waiting() {
        // Waiters that start before, while and after the fire (on another
        // thread) all resolve, with the one reason.
        for _ in 0..200 {
            let n = LossNotifier::new();
            let early: Vec<_> = (0..4)
                .map(|_| {
                    let n = n.clone();
                    tokio::spawn(async move { n.lost().await })
                })
                .collect();
            let firing = tokio::spawn({
                let n = n.clone();
                async move { n.fire(LossReason::Released) }
            });
            let racing = tokio::spawn({
                let n = n.clone();
                async move { n.lost().await }
            });
            firing.await.unwrap();
            assert_eq!(n.lost().await, LossReason::Released);
            for w in early.into_iter().chain([racing]) {
                let got = tokio::time::timeout(Duration::from_secs(5), w)
                    .await
                    .expect("a waiter was not woken")
                    .unwrap();
                assert_eq!(got, LossReason::Released);
            }
        }
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
