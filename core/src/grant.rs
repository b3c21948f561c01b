//! The lifecycle of one grant (a lock of any kind, a leadership, a
//! membership), written once for every backend.
//!
//! A guard owns a [`Grant`]: the backend's handle, the session's claim on
//! the name, and the guard's loss view. Core keeps the handle until the
//! backend **confirms** that the grant was given back (released, resigned,
//! left). Every other ending hands the handle, with the claim, to the
//! session's background [`Cleanup`]:
//!
//! - the explicit give-back failed or found no answer within
//!   `connect_timeout` (a lost reply);
//! - the future of the explicit give-back was dropped;
//! - the guard was dropped.
//!
//! The clean-up retries with a [`Backoff`] until the backend confirms, or
//! the session ends (closed, lost, dropped), after which the lease (revoked
//! or expiring) frees whatever is left. The claim is kept meanwhile, so the
//! session cannot re-acquire the name while its old grant may still exist:
//! a waiting acquire or campaign of the same name waits for the
//! confirmation, a try-acquire finds the name busy, a join of the same
//! member id is `AlreadyHeld`.
//! Backends never release on drop themselves (see [`crate::spi`]): their
//! give-back calls are idempotent and address exactly one grant, so a retry
//! after a lost reply is harmless.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::error::{Error, ErrorKind, Result};
use crate::loss::{GuardLoss, LossNotifier, LossReason};
use crate::metrics;
use crate::session::{Claim, Session};
use crate::spi::{HeldLeadership, HeldLock, HeldMembership};

/// How a grant is given back, for logs, errors and loss reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveBack {
    /// A lock (mutex, read or write grant) is released.
    Release,
    /// A leadership is resigned.
    Resign,
    /// A membership is left.
    Leave,
}

impl GiveBack {
    fn op(self) -> &'static str {
        match self {
            GiveBack::Release => "release",
            GiveBack::Resign => "resign",
            GiveBack::Leave => "leave",
        }
    }

    fn done(self) -> &'static str {
        match self {
            GiveBack::Release => "released",
            GiveBack::Resign => "resigned",
            GiveBack::Leave => "left",
        }
    }

    /// What kind of grant this is, for metrics labels.
    fn grant(self) -> &'static str {
        match self {
            GiveBack::Release => "lock",
            GiveBack::Resign => "leadership",
            GiveBack::Leave => "membership",
        }
    }

    /// The loss reason of a guard given back this way.
    pub(crate) fn reason(self) -> LossReason {
        match self {
            GiveBack::Release => LossReason::Released,
            GiveBack::Resign => LossReason::Resigned,
            GiveBack::Leave => LossReason::Left,
        }
    }
}

/// A backend grant handle that core can give back.
pub(crate) trait Handle: Send + Sync + 'static {
    /// The backend's idempotent give-back (release, resign, leave).
    fn give_back(&self) -> BoxFuture<'_, Result<()>>;
}

impl Handle for std::sync::Arc<dyn HeldLock> {
    fn give_back(&self) -> BoxFuture<'_, Result<()>> {
        self.release()
    }
}

impl Handle for std::sync::Arc<dyn HeldLeadership> {
    fn give_back(&self) -> BoxFuture<'_, Result<()>> {
        self.resign()
    }
}

impl Handle for std::sync::Arc<dyn HeldMembership> {
    fn give_back(&self) -> BoxFuture<'_, Result<()>> {
        self.leave()
    }
}

/// One grant, owned by one guard. Dropping it hands an unconfirmed grant to
/// the session's clean-up.
pub(crate) struct Grant<H: Handle + Clone> {
    handle: Option<H>,
    claim: Option<Claim>,
    how: GiveBack,
    loss: GuardLoss,
    session: Session,
    /// When granted; taken once the grant ends (for the hold-time metric).
    granted_at: Option<metrics::Stopwatch>,
}

impl<H: Handle + Clone> Grant<H> {
    /// Take over a backend's grant, if it arrived in time: a grant that
    /// reaches the session once its lease's client-side deadline has passed
    /// (the process was paused with the grant already delivered, and stayed
    /// paused past the TTL) is not trusted, because the server may have
    /// expired the lease and granted the name to someone else meanwhile. It
    /// is given back in the background, like a dropped guard.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Lost`] for a grant that arrived too late.
    pub(crate) fn new(
        session: &Session,
        handle: H,
        claim: Claim,
        loss: GuardLoss,
        how: GiveBack,
    ) -> Result<Self> {
        let grant = Grant {
            handle: Some(handle),
            claim: Some(claim),
            how,
            loss,
            session: session.clone(),
            granted_at: Some(metrics::Stopwatch::start()),
        };
        grant.in_time()
    }

    /// `self`, unless the session's client-side deadline has passed (see
    /// [`Grant::new`]).
    fn in_time(self) -> Result<Self> {
        if !self.session.remaining().is_zero() {
            return Ok(self);
        }
        let error = if self.session.inner.loss.is_lost() {
            self.session.lost_error()
        } else {
            Error::lost(format!(
                "session {} is lost: granted after its lease's client-side deadline \
                 (was the process paused?); the grant is given back",
                self.session.id()
            ))
        };
        tracing::warn!(op = self.how.op(), error = %error, "a grant arrived too late");
        drop(self);
        Err(error)
    }

    /// The backend handle, while the grant has not been given back.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotHeld`] once given back.
    pub(crate) fn handle(&self, name: &str) -> Result<&H> {
        self.handle
            .as_ref()
            .ok_or_else(|| Error::not_held(format!("`{name}` was {}", self.how.done())))
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    pub(crate) fn loss(&self) -> &GuardLoss {
        &self.loss
    }

    /// Give the grant back and wait for the backend to confirm, bounded by
    /// `connect_timeout`. Anything but a confirmation (an error, no answer,
    /// this future dropped) leaves the grant to the session's clean-up.
    pub(crate) async fn give_back(mut self) -> Result<()> {
        self.ended();
        self.loss.own.fire(self.how.reason());
        let Some(handle) = self.handle.clone() else {
            return Ok(());
        };
        let result = self
            .session
            .inner
            .coordinator
            .bounded(self.how.op(), handle.give_back())
            .await;
        match &result {
            Ok(()) => self.settle(),
            Err(e) => tracing::warn!(
                op = self.how.op(),
                error = %e,
                "not confirmed; the session's clean-up retries it"
            ),
        }
        // On an error, dropping `self` hands the grant to the clean-up.
        result
    }

    /// The backend confirmed that the grant is gone (a guarded write that
    /// released it, or said it no longer stood): nothing to give back.
    pub(crate) fn settle(&mut self) {
        self.ended();
        self.handle = None;
        self.claim = None;
    }

    /// Record the hold time (and a loss before the give-back) once.
    fn ended(&mut self) {
        if let Some(at) = self.granted_at.take() {
            metrics::grant_ended(
                self.session.inner.backend_name,
                self.how.grant(),
                at.elapsed(),
                self.loss.reason().as_ref(),
            );
        }
    }
}

impl<H: Handle + Clone> Drop for Grant<H> {
    fn drop(&mut self) {
        self.ended();
        let Some(handle) = self.handle.take() else {
            return;
        };
        self.loss.own.fire(self.how.reason());
        if let Some(claim) = &self.claim {
            claim.giving_back();
        }
        self.session.inner.cleanup.hand_over(Pending {
            handle: Box::new(handle),
            _claim: self.claim.take(),
            how: self.how,
        });
    }
}

/// A grant waiting for the backend to confirm its give-back.
pub(crate) struct Pending {
    handle: Box<dyn Handle>,
    /// Kept (never read) until confirmed or the session ends, so the session
    /// cannot re-acquire the name meanwhile.
    _claim: Option<Claim>,
    how: GiveBack,
}

/// How many hand-overs may wait for the clean-up task at once. The task
/// takes them at once (it runs every pending give-back concurrently), so
/// this bounds a burst, not the number of pending grants.
const HAND_OVER_QUEUE: usize = 64;

/// The background clean-up of one session: one task, fed by a bounded
/// channel, that gives back every grant handed to it, retrying with a
/// [`Backoff`] until the backend confirms or the session ends.
///
/// Memory is proportional to the grants pending (each was already held by a
/// guard), never to time or to failed attempts.
pub(crate) struct Cleanup {
    tx: mpsc::Sender<Pending>,
    runtime: tokio::runtime::Handle,
}

impl Cleanup {
    /// Start the clean-up task of a session whose end is `loss`; one attempt
    /// is bounded by `limit` (core's backstop of `connect_timeout`).
    pub(crate) fn start(session: String, loss: LossNotifier, limit: Duration) -> Cleanup {
        let (tx, rx) = mpsc::channel(HAND_OVER_QUEUE);
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(run(session, rx, loss, limit));
        Cleanup { tx, runtime }
    }

    /// Hand a grant over ([`crate::inbox::hand_over`]). Never blocks: a
    /// full queue is waited on by a small task; a clean-up that ended (with
    /// its session) drops the grant, which the session's lease frees.
    pub(crate) fn hand_over(&self, pending: Pending) {
        crate::inbox::hand_over(&self.tx, pending, &self.runtime, |pending| {
            tracing::debug!(
                op = pending.how.op(),
                "the session ended: its lease frees the grant"
            );
        });
    }
}

async fn run(
    session: String,
    mut rx: mpsc::Receiver<Pending>,
    loss: LossNotifier,
    limit: Duration,
) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            _ = loss.lost() => {
                if !running.is_empty() {
                    tracing::debug!(
                        %session,
                        pending = running.len(),
                        "the session ended: its lease frees the grants still pending"
                    );
                }
                return;
            }
            p = rx.recv(), if open => match p {
                Some(p) => running.push(give_back(session.clone(), p, limit)),
                None => open = false,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

/// Give one grant back until the backend confirms. Ends early only when the
/// backend says the session (and so the grant) is gone.
async fn give_back(session: String, pending: Pending, limit: Duration) {
    let op = pending.how.op();
    let mut backoff = Backoff::default();
    let mut attempt = 1u32;
    loop {
        match tokio::time::timeout(limit, pending.handle.give_back()).await {
            Ok(Ok(())) => {
                tracing::debug!(%session, op, attempt, "background give-back confirmed");
                return;
            }
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::Lost | ErrorKind::Closed) => {
                tracing::debug!(%session, op, error = %e, "the session is gone, and the grant with it");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%session, op, attempt, error = %e, "background give-back failed; retrying");
            }
            Err(_) => {
                tracing::debug!(%session, op, attempt, "background give-back got no answer within connect_timeout; retrying");
            }
        }
        attempt = attempt.saturating_add(1);
        backoff.wait().await;
    }
}
