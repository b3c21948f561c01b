//! Sessions (leases): the owner of every lock, membership and candidacy.
//!
//! One keep-alive per session, however many locks it holds. The client-side
//! deadline is conservative: the session (and every guard) is reported lost
//! once no keep-alive has succeeded for *TTL minus a safety margin*, counted
//! from when the last successful keep-alive was *sent*, on the monotonic
//! clock. The server cannot have expired the lease before then, so a holder
//! hears of the loss before anybody else can be granted its locks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::capabilities::FailureDetection;
use crate::coordinator::Coordinator;
use crate::election::Election;
use crate::error::{Error, ErrorKind, Result};
use crate::grant::Cleanup;
use crate::group::Group;
use crate::loss::{LossNotifier, LossReason};
use crate::metrics::{self, KeepAliveOutcome};
use crate::mutex::{LockGuard, Mutex};
use crate::name;
use crate::rwlock::RwLock;
use crate::spi::SessionBackend;

/// How a session's lease is kept alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeepAlive {
    /// A background task refreshes the lease every third of its TTL.
    #[default]
    Automatic,
    /// The caller calls [`Session::keep_alive`] itself (tooz-style
    /// heartbeats); the session is lost if it does not in time.
    Manual,
}

/// Options for [`Coordinator::session_with`].
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The lease TTL; the URL's `ttl` when `None`.
    pub ttl: Option<Duration>,
    /// Automatic or manual keep-alive.
    pub keep_alive: KeepAlive,
}

/// What a session may hold at most once (no re-entrancy).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClaimKey {
    /// A mutex or either side of a read/write lock: one lock per name.
    Lock(String),
    Member(String, String),
    Candidate(String),
}

/// A session: a lease kept alive in the background. Cheap to clone.
///
/// Dropping the last clone (and every guard made from it) revokes the lease
/// in the background; [`Session::close`] does so and waits.
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<SessionInner>,
}

pub(crate) struct SessionInner {
    pub(crate) coordinator: Coordinator,
    pub(crate) backend: Arc<dyn SessionBackend>,
    pub(crate) loss: LossNotifier,
    pub(crate) runtime: Handle,
    /// The backend's name, for metrics labels.
    pub(crate) backend_name: &'static str,
    id: String,
    ttl: Duration,
    clock: Arc<LeaseClock>,
    claims: Claims,
    /// Gives back, in the background, every grant whose give-back was not
    /// confirmed (see [`crate::grant`]).
    pub(crate) cleanup: Cleanup,
    lease_task: JoinHandle<()>,
    /// Whether the session is a lease with a client-side deadline (false
    /// for process-lifetime backends).
    leased: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("ttl", &self.ttl())
            .field("lost", &self.inner.loss.is_lost())
            .finish()
    }
}

/// The client-side lease deadline.
struct LeaseClock {
    ttl: Duration,
    margin: Duration,
    deadline: StdMutex<Instant>,
    changed: Notify,
}

impl LeaseClock {
    fn new(ttl: Duration, sent: Instant) -> Self {
        let margin = safety_margin(ttl);
        LeaseClock {
            ttl,
            margin,
            deadline: StdMutex::new(sent + ttl - margin),
            changed: Notify::new(),
        }
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap()
    }

    /// A keep-alive sent at `sent` succeeded.
    fn renewed(&self, sent: Instant) {
        let mut d = self.deadline.lock().unwrap();
        let new = sent + self.ttl - self.margin;
        if new > *d {
            *d = new;
        }
        drop(d);
        self.changed.notify_one();
    }
}

/// How much earlier than the TTL a session reports itself lost: a tenth of
/// the TTL, at least 50 ms, at most half the TTL. It covers clock-rate
/// differences and the scheduling delay of the watchdog.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(50)).min(ttl / 2)
}

impl Session {
    pub(crate) async fn open(coordinator: Coordinator, options: SessionOptions) -> Result<Session> {
        let requested = options.ttl.unwrap_or(coordinator.config().ttl);
        let loss = LossNotifier::new();
        let sent = Instant::now();
        let backend: Arc<dyn SessionBackend> = coordinator
            .bounded(
                "open session",
                coordinator.backend().open_session(requested, loss.clone()),
            )
            .await?
            .into();
        let ttl = backend.ttl();
        let id = backend.id();
        // Where a dead holder is detected by its process ending (file
        // locks), there is no lease to run out: no client-side deadline.
        let leased =
            coordinator.capabilities().failure_detection != FailureDetection::ProcessLifetime;
        let clock = Arc::new(LeaseClock::new(ttl, sent));
        let backend_name = coordinator.capabilities().backend;
        let lease_task = tokio::spawn(lease_task(
            backend.clone(),
            backend_name,
            clock.clone(),
            loss.clone(),
            options.keep_alive,
            coordinator.backstop(),
            leased,
        ));
        let cleanup = Cleanup::start(id.clone(), loss.clone(), coordinator.backstop());
        tracing::debug!(session = %id, ?ttl, "session opened");
        Ok(Session {
            inner: Arc::new(SessionInner {
                coordinator,
                backend,
                loss,
                runtime: Handle::current(),
                backend_name,
                id,
                ttl,
                clock,
                claims: Claims::default(),
                cleanup,
                lease_task,
                leased,
            }),
        })
    }

    /// The session's id (lease id, ZooKeeper session id, …).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The lease's TTL as the backend granted it (which may differ from the
    /// one requested: etcd rounds to whole seconds, ZooKeeper clamps to the
    /// server's bounds): how long the backend keeps the session's grants
    /// after its last confirmed keep-alive.
    ///
    /// `None` where there is no lease: on backends whose failure detection
    /// is the process lifetime ([`FailureDetection::ProcessLifetime`],
    /// file://), the session lasts as long as the process holds it open (the
    /// kernel releases its locks when the process exits); nothing expires,
    /// and [`Session::remaining`] is `Duration::MAX`. The requested TTL there
    /// only paces the background check that the lock files are still there.
    pub fn ttl(&self) -> Option<Duration> {
        self.inner.leased.then_some(self.inner.ttl)
    }

    /// The coordinator this session belongs to.
    pub fn coordinator(&self) -> &Coordinator {
        &self.inner.coordinator
    }

    /// Time left before the client-side deadline at which the session will
    /// report itself lost unless a keep-alive succeeds. Zero once lost;
    /// `Duration::MAX` where failure detection is the process lifetime
    /// (no lease runs out).
    pub fn remaining(&self) -> Duration {
        if self.inner.loss.is_lost() {
            return Duration::ZERO;
        }
        if !self.inner.leased {
            return Duration::MAX;
        }
        self.inner
            .clock
            .deadline()
            .saturating_duration_since(Instant::now())
    }

    /// Refresh the lease now (one round trip). Needed only with
    /// [`KeepAlive::Manual`]; harmless otherwise.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Lost`] if the session is already lost (the lease cannot
    /// be revived), or the backend's error.
    pub async fn keep_alive(&self) -> Result<()> {
        self.check_usable()?;
        let sent = Instant::now();
        match self
            .inner
            .coordinator
            .bounded("keep alive", self.inner.backend.keep_alive())
            .await
        {
            Ok(()) => {
                if self.inner.loss.is_lost() {
                    return Err(self.lost_error());
                }
                self.inner.clock.renewed(sent);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Lost => {
                self.inner.loss.fire(format!("lease gone: {e}"));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Resolves when the session is lost (lease expired or revoked,
    /// keep-alive failing past the deadline, closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) -> LossReason {
        self.inner.loss.lost().await
    }

    /// Whether the session is known to be lost (no round trip).
    pub fn is_lost(&self) -> bool {
        self.inner.loss.is_lost()
    }

    /// Revoke the lease and wait for the backend to confirm: every lock,
    /// membership and candidacy of this session is released, and every
    /// guard's `lost()` resolves.
    ///
    /// # Errors
    ///
    /// The backend's error; the session is unusable afterwards either way.
    pub async fn close(&self) -> Result<()> {
        self.inner.loss.fire(LossReason::Closed);
        self.inner.lease_task.abort();
        self.inner
            .coordinator
            .bounded("revoke session", self.inner.backend.revoke())
            .await
    }

    /// A mutex of this name, owned by this session.
    pub fn mutex(&self, name: &str) -> Mutex {
        Mutex::new(self.clone(), name)
    }

    /// A read/write lock of this name, owned by this session.
    pub fn rwlock(&self, name: &str) -> RwLock {
        RwLock::new(self.clone(), name)
    }

    /// A membership group of this name.
    pub fn group(&self, name: &str) -> Group {
        Group::new(self.clone(), name)
    }

    /// An election of this name.
    pub fn election(&self, name: &str) -> Election {
        Election::new(self.clone(), name)
    }

    /// Read a value stored by a guarded write.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidName`], or the backend's error.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.coordinator.read(key).await
    }

    /// Lock several mutexes at once, in one canonical order (sorted,
    /// duplicates removed) so that two callers can never deadlock, whatever
    /// order they name them in. All or nothing: on an error, the locks
    /// already taken are released before returning.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future releases the locks taken so far
    /// (in the background) and leaves no waiter queued.
    ///
    /// # Errors
    ///
    /// As [`Mutex::lock`] for any of the names.
    pub async fn lock_all<I, S>(&self, names: I) -> Result<Vec<LockGuard>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut sorted: Vec<String> = names.into_iter().map(|s| s.as_ref().to_owned()).collect();
        sorted.sort();
        sorted.dedup();
        for n in &sorted {
            name::validate("lock", n)?;
        }
        let mut held = Vec::with_capacity(sorted.len());
        for n in &sorted {
            match self.mutex(n).lock().await {
                Ok(g) => held.push(g),
                Err(e) => {
                    for g in held {
                        if let Err(re) = g.release().await {
                            tracing::warn!(error = %re, "lock_all: releasing after failure");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(held)
    }

    /// Fail with `Lost`/`Closed` if the session cannot be used.
    pub(crate) fn check_usable(&self) -> Result<()> {
        match self.inner.loss.reason() {
            None => Ok(()),
            Some(LossReason::Closed) => {
                Err(Error::new(ErrorKind::Closed, "the session was closed"))
            }
            Some(_) => Err(self.lost_error()),
        }
    }

    pub(crate) fn lost_error(&self) -> Error {
        let reason = self
            .inner
            .loss
            .reason()
            .map_or_else(|| "unknown".to_owned(), |r| r.to_string());
        Error::lost(format!("session {} is lost: {reason}", self.inner.id))
    }

    /// Register that this session holds (or is acquiring) `key`.
    /// [`ErrorKind::AlreadyHeld`] while a guard of this session holds it or
    /// an acquisition is under way; while its previous grant is still being
    /// given back in the background, do as `pending` says. `Ok(None)` only
    /// for [`WhileGivingBack::Busy`].
    ///
    /// Cancel safe: a dropped wait registers nothing.
    pub(crate) async fn claim(
        &self,
        key: ClaimKey,
        pending: WhileGivingBack,
    ) -> Result<Option<Claim>> {
        let set = &self.inner.claims;
        loop {
            let freed = set.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut entries = set.entries.lock().unwrap();
                match entries.get(&key) {
                    None => {
                        entries.insert(key.clone(), ClaimState::Held);
                        return Ok(Some(Claim {
                            claims: set.clone(),
                            key: Some(key),
                        }));
                    }
                    Some(ClaimState::Held) => {
                        return Err(Error::already_held(format!(
                            "this session already holds or is acquiring {key:?}; quorate locks are not re-entrant"
                        )))
                    }
                    Some(ClaimState::GivingBack) => match pending {
                        WhileGivingBack::Wait => {}
                        WhileGivingBack::Busy => return Ok(None),
                        WhileGivingBack::Refuse => {
                            return Err(Error::already_held(format!(
                                "this session's previous grant of {key:?} is still being given back in the background"
                            )))
                        }
                    },
                }
            }
            tokio::select! {
                () = &mut freed => {}
                _ = self.inner.loss.lost() => return Err(self.lost_error()),
            }
        }
    }

    /// Run a wait for a grant, ending it with `Lost` if the session is lost
    /// first (the wait's future is dropped, which the SPI requires to be
    /// cancel safe).
    pub(crate) async fn wait_or_lost<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = fut => r,
            _ = self.inner.loss.lost() => Err(self.lost_error()),
        }
    }
}

/// What a new claim does while the session's previous grant of the same
/// name is still being given back in the background (see
/// [`crate::grant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhileGivingBack {
    /// Wait until the backend confirmed the give-back (or the session
    /// ends): a waiting acquire or campaign.
    Wait,
    /// The name is busy now (`Ok(None)`): a try-acquire.
    Busy,
    /// [`ErrorKind::AlreadyHeld`] at once: a join (the old member is still
    /// in the group).
    Refuse,
}

/// Where a claimed name stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    /// A guard holds it, or an acquisition is under way.
    Held,
    /// Its grant is with the background clean-up, not yet confirmed gone.
    GivingBack,
}

/// The names a session holds or is acquiring. Shared with its [`Claim`]s
/// only (not the whole session), so a claim kept by the background clean-up
/// never keeps a dropped session alive.
#[derive(Default)]
pub(crate) struct ClaimSet {
    entries: StdMutex<HashMap<ClaimKey, ClaimState>>,
    /// Notified whenever a claim goes.
    freed: Notify,
}

type Claims = Arc<ClaimSet>;

/// An entry in the session's set of held names; removed on drop.
pub(crate) struct Claim {
    claims: Claims,
    key: Option<ClaimKey>,
}

impl Claim {
    /// The grant went to the background clean-up: a waiting acquire of the
    /// same name may wait for it instead of failing.
    pub(crate) fn giving_back(&self) {
        if let Some(k) = &self.key {
            if let Some(state) = self.claims.entries.lock().unwrap().get_mut(k) {
                *state = ClaimState::GivingBack;
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.claims.entries.lock().unwrap().remove(&k);
            self.claims.freed.notify_waiters();
        }
    }
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.lease_task.abort();
        if self.loss.is_lost() {
            return;
        }
        self.loss.fire(LossReason::Dropped);
        let backend = self.backend.clone();
        let limit = self.coordinator.backstop();
        let id = self.id.clone();
        self.runtime.spawn(async move {
            match tokio::time::timeout(limit, backend.revoke()).await {
                Ok(Ok(())) => tracing::debug!(session = %id, "dropped session revoked"),
                Ok(Err(e)) => tracing::warn!(session = %id, error = %e, "revoking dropped session"),
                Err(_) => tracing::warn!(session = %id, "revoking dropped session timed out"),
            }
        });
    }
}

/// Keeps the lease alive (when automatic) and fires the session's loss once
/// the client-side deadline passes without a successful keep-alive.
async fn lease_task(
    backend: Arc<dyn SessionBackend>,
    backend_name: &'static str,
    clock: Arc<LeaseClock>,
    loss: LossNotifier,
    mode: KeepAlive,
    backstop: Duration,
    leased: bool,
) {
    let ttl = clock.ttl;
    let mut next_refresh = Instant::now() + ttl / 3;
    loop {
        let deadline = clock.deadline();
        let refresh_due = mode == KeepAlive::Automatic;
        tokio::select! {
            // Biased: after a pause (SIGSTOP, a stalled runtime) a passed
            // deadline is reported before any late keep-alive can hide it.
            biased;
            _ = tokio::time::sleep_until(deadline), if leased => {
                if Instant::now() >= clock.deadline() {
                    loss.fire(LossReason::Deadline { ttl });
                    return;
                }
            }
            _ = loss.lost() => return,
            _ = clock.changed.notified(), if !refresh_due => {}
            _ = tokio::time::sleep_until(next_refresh), if refresh_due => {
                let sent = Instant::now();
                let attempt = tokio::time::timeout(backstop, backend.keep_alive());
                tokio::select! {
                    r = attempt => match r {
                        Ok(Ok(())) => {
                            metrics::keep_alive(backend_name, KeepAliveOutcome::Ok, sent.elapsed());
                            clock.renewed(sent);
                            next_refresh = sent + ttl / 3;
                        }
                        Ok(Err(e)) if e.kind() == ErrorKind::Lost => {
                            metrics::keep_alive(backend_name, KeepAliveOutcome::Lost, sent.elapsed());
                            loss.fire(format!("lease gone: {e}"));
                            return;
                        }
                        Ok(Err(e)) => {
                            metrics::keep_alive(backend_name, KeepAliveOutcome::Error, sent.elapsed());
                            tracing::warn!(error = %e, "keep-alive failed; retrying");
                            next_refresh = Instant::now() + (ttl / 10).max(Duration::from_millis(20));
                        }
                        Err(_) => {
                            metrics::keep_alive(backend_name, KeepAliveOutcome::Timeout, sent.elapsed());
                            tracing::warn!("keep-alive timed out; retrying");
                            next_refresh = Instant::now();
                        }
                    },
                    _ = tokio::time::sleep_until(deadline), if leased => {}
                    _ = loss.lost() => return,
                }
            }
        }
    }
}
