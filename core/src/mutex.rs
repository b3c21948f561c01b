//! Mutual-exclusion locks and the guard shared by every lock kind.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::error::{Error, Result};
use crate::fence::FencingToken;
use crate::grant::{GiveBack, Grant};
use crate::loss::{GuardLoss, LossReason};
use crate::metrics::{self, AcquireOutcome};
use crate::name;
use crate::session::{ClaimKey, Session, WhileGivingBack};
use crate::spi::{Acquire, Acquired, AfterWrite, HeldLock};
use crate::LockKind;

/// A named mutual-exclusion lock owned by a [`Session`]. Waiters are
/// granted in arrival order where the backend declares `fifo`.
///
/// One name, one lock: the mutex of a name *is* the exclusive (write) side
/// of that name's [`crate::RwLock`], on every backend (one queue, one
/// fence counter), as `flock -x` and `flock -s` on one file. A mutex holder
/// excludes the name's readers and writers and the other way round.
#[derive(Debug, Clone)]
pub struct Mutex {
    session: Session,
    name: String,
}

impl Mutex {
    pub(crate) fn new(session: Session, name: &str) -> Self {
        Mutex {
            session,
            name: name.to_owned(),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait until the lock is granted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future at any point leaves no queue entry
    /// and no grant behind; the lock is never acquired "by itself" later.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::AlreadyHeld`] if this session holds or is
    /// acquiring it already (as a mutex or either side of the name's
    /// read/write lock); [`crate::ErrorKind::Lost`] if the session is
    /// lost while waiting; [`crate::ErrorKind::InvalidName`]; the backend's
    /// error.
    pub async fn lock(&self) -> Result<LockGuard> {
        wait_for(&self.session, &self.name, LockKind::Mutex).await
    }

    /// Take the lock only if it is free now (no mutex holder, reader or
    /// writer of the name holds it or waits for it).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Mutex::lock`].
    ///
    /// # Errors
    ///
    /// As [`Mutex::lock`]; `Ok(None)` when the lock is held by someone else.
    pub async fn try_lock(&self) -> Result<Option<LockGuard>> {
        acquire(&self.session, &self.name, LockKind::Mutex, Acquire::Try).await
    }

    /// Wait at most `timeout` for the lock.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Mutex::lock`]. A timed-out waiter leaves the queue
    /// at once, so the waiters behind it move up immediately.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Timeout`] when the time runs out, else as
    /// [`Mutex::lock`].
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        with_timeout(timeout, &self.name, self.lock()).await
    }
}

pub(crate) async fn with_timeout<T>(
    timeout: Duration,
    name: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!(
            "`{name}` was not granted within {timeout:?}"
        ))),
    }
}

/// [`acquire`] with [`Acquire::Wait`]: a grant, or an error.
pub(crate) async fn wait_for(
    session: &Session,
    lock_name: &str,
    kind: LockKind,
) -> Result<LockGuard> {
    acquire(session, lock_name, kind, Acquire::Wait)
        .await?
        .ok_or_else(|| {
            Error::backend(format!(
                "the backend answered `{lock_name}` is busy to a waiting acquire (a backend bug)"
            ))
        })
}

/// The acquisition path of every lock kind: validation, re-entrancy check,
/// loss wiring, waiting or bounded try, tracing. `None` only for
/// [`Acquire::Try`] when the lock is not free.
pub(crate) async fn acquire(
    session: &Session,
    lock_name: &str,
    kind: LockKind,
    mode: Acquire,
) -> Result<Option<LockGuard>> {
    name::validate("lock", lock_name)?;
    session.check_usable()?;
    // One name, one lock: the mutex is the write side of the name's
    // read/write lock, so a session holds at most one of them.
    let claim_key = ClaimKey::Lock(lock_name.to_owned());
    let pending = match mode {
        Acquire::Wait => WhileGivingBack::Wait,
        Acquire::Try => WhileGivingBack::Busy,
    };
    let Some(claim) = session.claim(claim_key, pending).await? else {
        return Ok(None);
    };
    let loss = GuardLoss::new(&session.inner.loss);
    let span = tracing::debug_span!("lock", name = lock_name, ?kind, ?mode);
    let request = session
        .inner
        .backend
        .lock(lock_name, kind, mode, loss.own.clone());
    let started = metrics::Stopwatch::start();
    let acquired = match mode {
        Acquire::Wait => session.wait_or_lost(request).instrument(span).await,
        Acquire::Try => {
            session
                .wait_or_lost(session.inner.coordinator.bounded("try lock", request))
                .instrument(span)
                .await
        }
    };
    // A grant that arrived after the session's deadline is given back and
    // counts as an error, like the `Lost` the caller gets.
    let result = acquired.and_then(|acquired| match acquired {
        Acquired::Busy => Ok(None),
        Acquired::Granted(held) => {
            let fence = held.fence();
            let held: Arc<dyn HeldLock> = Arc::from(held);
            let grant = Grant::new(session, held, claim, loss, GiveBack::Release)?;
            Ok(Some((grant, fence)))
        }
    });
    let outcome = match &result {
        Ok(Some(_)) => AcquireOutcome::Granted,
        Ok(None) => AcquireOutcome::Busy,
        Err(_) => AcquireOutcome::Error,
    };
    metrics::acquired(
        session.inner.backend_name,
        kind,
        mode,
        outcome,
        started.elapsed(),
    );
    Ok(result?.map(|(grant, fence)| {
        tracing::debug!(name = lock_name, ?kind, %fence, "granted");
        LockGuard {
            grant,
            name: lock_name.to_owned(),
            kind,
            fence,
        }
    }))
}

/// A held lock (mutex, read or write). Dropping it releases in the
/// background (the session's clean-up retries until the backend confirms);
/// [`LockGuard::release`] releases and waits.
///
/// Trust the guard only until [`LockGuard::lost`] resolves, and pass
/// [`LockGuard::fence`] to the resources you protect.
pub struct LockGuard {
    grant: Grant<Arc<dyn HeldLock>>,
    name: String,
    kind: LockKind,
    fence: FencingToken,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("fence", &self.fence)
            .field("lost", &self.grant.loss().is_lost())
            .finish()
    }
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which kind of lock this is.
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// The fencing token of this grant.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// Resolves when the lock can no longer be trusted: the session was
    /// lost, or the backend reported the grant gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) -> LossReason {
        self.grant.loss().lost().await
    }

    /// Whether the loss is already known (no round trip).
    pub fn is_lost(&self) -> bool {
        self.grant.loss().is_lost()
    }

    /// Ask the backend whether the grant still stands (one round trip).
    /// A `false` answer also resolves [`LockGuard::lost`].
    ///
    /// # Errors
    ///
    /// The backend's error (the answer is then unknown).
    pub async fn is_held(&self) -> Result<bool> {
        let loss = self.grant.loss();
        if loss.is_lost() {
            return Ok(false);
        }
        let held = self.grant.handle(&self.name)?;
        let answer = self
            .grant
            .session()
            .inner
            .coordinator
            .bounded("is held", held.is_held())
            .await?;
        if !answer {
            loss.own.fire("the backend no longer has the grant");
        }
        Ok(answer && !loss.is_lost())
    }

    /// Store `value` under `key` in one atomic backend step that applies
    /// only if this grant still stands. Returns whether it applied. Read it
    /// back with [`Session::read`].
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidName`] for a bad key; the backend's error
    /// (whether it applied is then unknown: read it back).
    pub async fn write_if_held(&self, key: &str, value: &[u8]) -> Result<bool> {
        self.guarded_write(key, value, AfterWrite::Keep).await
    }

    /// Like [`LockGuard::write_if_held`], and release the lock in the same
    /// atomic step. Retryable: if the reply is lost and you retry with the
    /// same guard's data, the retry reports `false` (not held) and cannot
    /// apply twice.
    ///
    /// # Errors
    ///
    /// As [`LockGuard::write_if_held`].
    pub async fn write_and_release(mut self, key: &str, value: &[u8]) -> Result<bool> {
        let applied = self.guarded_write(key, value, AfterWrite::Release).await?;
        // Applied: the same step released the grant. Not applied: the
        // backend no longer has it. Either way nothing is left to give back.
        self.grant.settle();
        Ok(applied)
    }

    /// The backend's guarded write, asked even when this guard already
    /// knows its grant is lost: for the conformance suite, which must
    /// exercise the backend's own atomic check as a stale holder that has
    /// not heard of its loss would. Applications use
    /// [`LockGuard::write_if_held`], which refuses locally first.
    ///
    /// # Errors
    ///
    /// As [`LockGuard::write_if_held`].
    #[doc(hidden)]
    pub async fn write_if_held_at_backend(&self, key: &str, value: &[u8]) -> Result<bool> {
        name::validate("key", key)?;
        let held = self.grant.handle(&self.name)?;
        self.grant
            .session()
            .inner
            .coordinator
            .bounded(
                "guarded write",
                held.write_if_held(key, value, AfterWrite::Keep),
            )
            .await
    }

    async fn guarded_write(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        name::validate("key", key)?;
        let loss = self.grant.loss();
        if loss.is_lost() {
            return Ok(false);
        }
        let held = self.grant.handle(&self.name)?;
        let applied = self
            .grant
            .session()
            .inner
            .coordinator
            .bounded("guarded write", held.write_if_held(key, value, then))
            .await?;
        if !applied {
            loss.own.fire("the backend no longer has the grant");
        } else if then == AfterWrite::Release {
            loss.own.fire(LossReason::Released);
        }
        Ok(applied)
    }

    /// Release the lock and wait for the backend to confirm.
    ///
    /// # Errors
    ///
    /// The backend's error, or [`crate::ErrorKind::Unavailable`] when it
    /// does not answer within `connect_timeout`. The release is then not
    /// confirmed, and the session's background clean-up retries it until
    /// the backend confirms or the session ends; meanwhile this session's
    /// `lock()` of the name waits for that confirmation and `try_lock()`
    /// finds it busy.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future hands the release to the session's
    /// background clean-up, as dropping the guard does.
    pub async fn release(self) -> Result<()> {
        self.grant.give_back().await
    }
}
