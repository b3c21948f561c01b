//! Deliberately broken backends ("mutants"), to show that the suite's
//! verdicts can fail: each [`Mutation`] wraps a real connected backend and
//! breaks one thing the guarantees rest on (the release, the revoke, the
//! fence, the server-side guard, exclusion itself). `tests/mutants.rs` runs
//! the suite against each mutant and requires the cases listed in
//! [`Mutation::caught_by`] to fail; the list is in `docs/architecture.md`.
//!
//! A mutation is chosen for a whole process by the environment variable
//! [`ENV`], which agent processes inherit, so a holder in another process
//! is broken the same way. Every connection the suite makes goes through
//! [`crate::connect`], which applies it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quorate::loss::LossNotifier;
use quorate::spi::{
    Acquire, Acquired, AfterWrite, Backend, HeldLeadership, HeldLock, HeldMembership,
    RawGroupWatch, RawObserve, SessionBackend,
};
use quorate::LockKind;
use quorate::{Capabilities, Coordinator, FencingToken, Leader, Member, Result};

/// The environment variable naming the mutation of this process.
pub const ENV: &str = "QUORATE_CONFORMANCE_MUTATION";

/// One deliberate defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// `release()` of a lock reports success and releases nothing.
    SkipRelease,
    /// Revoking (closing) a session does nothing on the backend.
    SkipRevoke,
    /// Every lock grant reports the same fence.
    ConstantFence,
    /// A guarded write the backend refused is reported as applied.
    GuardedWriteLies,
    /// A lock held elsewhere is granted anyway: no exclusion.
    NoExclusion,
    /// A campaign not elected within 20 ms is told it leads anyway: two
    /// leaders at once.
    TwoLeaders,
    /// A group watch's listing omits every member (a watch whose snapshot
    /// and later changes disagree, as a Redis group watch once did).
    GroupSnapshotLies,
    /// The lock listing (`Coordinator::locks`) omits every waiter.
    LockListingLies,
    /// Nobody is ever told of a loss: the backend's loss notices (of
    /// sessions and of grants) go nowhere, and a failed keep-alive is
    /// reported a success, so core's own deadline never fires either (the
    /// defect tooz has: a holder is never told its lock expired).
    SilentLoss,
    /// A waiting `lock()` never queues: it polls with try-locks, its
    /// back-off doubling from 1 ms (tooz's way, or an unfair spin lock's):
    /// no arrival order, and a waiting writer holds no reader back.
    PollingLock,
    /// A keep-alive reports success 1 ms after it is sent, whatever the
    /// server answers, or whether it answers at all (a renewal sent
    /// fire-and-forget): core's deadline is extended by renewals the
    /// server never made.
    KeepAliveLies,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 11] = [
        Mutation::SkipRelease,
        Mutation::SkipRevoke,
        Mutation::ConstantFence,
        Mutation::GuardedWriteLies,
        Mutation::NoExclusion,
        Mutation::TwoLeaders,
        Mutation::GroupSnapshotLies,
        Mutation::LockListingLies,
        Mutation::SilentLoss,
        Mutation::PollingLock,
        Mutation::KeepAliveLies,
    ];

    /// Its name (the value of [`ENV`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Mutation::SkipRelease => "skip-release",
            Mutation::SkipRevoke => "skip-revoke",
            Mutation::ConstantFence => "constant-fence",
            Mutation::GuardedWriteLies => "guarded-write-lies",
            Mutation::NoExclusion => "no-exclusion",
            Mutation::TwoLeaders => "two-leaders",
            Mutation::GroupSnapshotLies => "group-snapshot-lies",
            Mutation::LockListingLies => "lock-listing-lies",
            Mutation::SilentLoss => "silent-loss",
            Mutation::PollingLock => "polling-lock",
            Mutation::KeepAliveLies => "keep-alive-lies",
        }
    }

    /// The mutation named `s`.
    pub fn parse(s: &str) -> Option<Mutation> {
        Mutation::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The mutation of this process, if any.
    pub fn from_env() -> Option<Mutation> {
        std::env::var(ENV).ok().as_deref().and_then(Mutation::parse)
    }

    /// The cases that must fail against this mutant (on a backend where
    /// they apply): each is a check shown able to fail.
    pub fn caught_by(self) -> &'static [&'static str] {
        match self {
            Mutation::SkipRelease => &["try_and_timeout", "cancel_safety"],
            Mutation::SkipRevoke => &["close_releases_everything"],
            Mutation::ConstantFence => &[
                "mutual_exclusion",
                "fencing_monotonic",
                "holder_pause",
                "nemesis",
            ],
            Mutation::GuardedWriteLies => &["guarded_writes", "holder_pause"],
            Mutation::NoExclusion => &["mutual_exclusion", "try_and_timeout", "nemesis"],
            Mutation::TwoLeaders => &["election_handover", "nemesis"],
            Mutation::GroupSnapshotLies => &["membership_events", "membership_view_consistent"],
            Mutation::LockListingLies => &["locks_listing"],
            // Not `holder_pause`: a resumed holder is told by core's own
            // deadline (monotonic, past while it was stopped), which fires
            // before the lying keep-alive runs; that path needs no backend.
            Mutation::SilentLoss => &["revoke_from_outside"],
            Mutation::PollingLock => &[
                "fifo_order",
                "mutex_is_rwlock_write_side",
                "rwlock_queued_writer_blocks_readers",
            ],
            // Needs the controller: a server that stops answering while
            // the holder, not probing, relies on its keep-alive alone.
            Mutation::KeepAliveLies => &["server_pause"],
        }
    }
}

/// `coord` with `m` applied to its backend.
pub fn wrap(coord: Coordinator, m: Mutation) -> Coordinator {
    let config = coord.config().clone();
    Coordinator::new(
        MutantBackend {
            inner: coord.backend_handle(),
            m,
        },
        config,
    )
}

struct MutantBackend {
    inner: Arc<dyn Backend>,
    m: Mutation,
}

#[async_trait]
impl Backend for MutantBackend {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>> {
        let inner = self.inner.open_session(ttl, silenced(self.m, loss)).await?;
        Ok(Box::new(MutantSession { inner, m: self.m }))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<()> {
        self.inner.revoke_session(session_id).await
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        self.inner.members(group).await
    }

    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch> {
        let mut raw = self.inner.watch_group(group).await?;
        if self.m == Mutation::GroupSnapshotLies {
            raw.snapshot.clear();
        }
        Ok(raw)
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        self.inner.leader(election).await
    }

    async fn observe(&self, election: &str) -> Result<RawObserve> {
        self.inner.observe(election).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.read(key).await
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        self.inner.leftovers().await
    }

    async fn locks(&self, prefix: &str) -> Result<Vec<quorate::LockState>> {
        let mut locks = self.inner.locks(prefix).await?;
        if self.m == Mutation::LockListingLies {
            for l in &mut locks {
                l.waiters.clear();
            }
            locks.retain(|l| !l.holders.is_empty());
        }
        Ok(locks)
    }
}

/// The notifier to hand the backend: `loss`, or for [`Mutation::SilentLoss`]
/// one nobody waits on.
fn silenced(m: Mutation, loss: LossNotifier) -> LossNotifier {
    match m {
        Mutation::SilentLoss => LossNotifier::new(),
        _ => loss,
    }
}

struct MutantSession {
    inner: Box<dyn SessionBackend>,
    m: Mutation,
}

#[async_trait]
impl SessionBackend for MutantSession {
    fn id(&self) -> String {
        self.inner.id()
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl()
    }

    async fn keep_alive(&self) -> Result<()> {
        match self.m {
            Mutation::SilentLoss => {
                let _ = self.inner.keep_alive().await;
                Ok(())
            }
            Mutation::KeepAliveLies => {
                let sent = self.inner.keep_alive();
                let _ = tokio::time::timeout(Duration::from_millis(1), sent).await;
                Ok(())
            }
            _ => self.inner.keep_alive().await,
        }
    }

    async fn revoke(&self) -> Result<()> {
        match self.m {
            Mutation::SkipRevoke => Ok(()),
            _ => self.inner.revoke().await,
        }
    }

    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired> {
        if self.m == Mutation::PollingLock && mode.waits() {
            return poll(self, name, kind, loss).await;
        }
        let mode = match self.m {
            Mutation::NoExclusion => Acquire::Try,
            _ => mode,
        };
        match self
            .inner
            .lock(name, kind, mode, silenced(self.m, loss))
            .await?
        {
            Acquired::Granted(inner) => {
                Ok(Acquired::Granted(Box::new(MutantLock { inner, m: self.m })))
            }
            Acquired::Busy if self.m == Mutation::NoExclusion => {
                Ok(Acquired::Granted(Box::new(FakeGrant)))
            }
            Acquired::Busy => Ok(Acquired::Busy),
        }
    }

    async fn join(
        &self,
        group: &str,
        member: &str,
        capabilities: &serde_json::Value,
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldMembership>> {
        self.inner
            .join(group, member, capabilities, silenced(self.m, loss))
            .await
    }

    async fn campaign(
        &self,
        election: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>> {
        let loss = silenced(self.m, loss);
        if self.m != Mutation::TwoLeaders {
            return self.inner.campaign(election, value, loss).await;
        }
        let wait = self.inner.campaign(election, value, loss);
        match tokio::time::timeout(Duration::from_millis(20), wait).await {
            Ok(r) => r,
            Err(_) => Ok(Box::new(FakeLeadership)),
        }
    }
}

/// [`Mutation::PollingLock`]: try until granted, sleeping 1, 2, 4, … ms
/// between tries (the longest a waiter has waited, the longer it sleeps).
async fn poll(
    session: &MutantSession,
    name: &str,
    kind: LockKind,
    loss: LossNotifier,
) -> Result<Acquired> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Acquired::Granted(inner) = session
            .inner
            .lock(name, kind, Acquire::Try, loss.clone())
            .await?
        {
            return Ok(Acquired::Granted(Box::new(MutantLock {
                inner,
                m: session.m,
            })));
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

struct MutantLock {
    inner: Box<dyn HeldLock>,
    m: Mutation,
}

#[async_trait]
impl HeldLock for MutantLock {
    fn fence(&self) -> FencingToken {
        match self.m {
            Mutation::ConstantFence => FencingToken::FIRST,
            _ => self.inner.fence(),
        }
    }

    async fn is_held(&self) -> Result<bool> {
        self.inner.is_held().await
    }

    async fn release(&self) -> Result<()> {
        match self.m {
            Mutation::SkipRelease => Ok(()),
            _ => self.inner.release().await,
        }
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let applied = self.inner.write_if_held(key, value, then).await?;
        Ok(applied || self.m == Mutation::GuardedWriteLies)
    }
}

/// A grant of a lock that was not free (the no-exclusion mutant).
/// A leadership the backend never granted.
struct FakeLeadership;

#[async_trait]
impl HeldLeadership for FakeLeadership {
    fn fence(&self) -> FencingToken {
        FencingToken::FIRST
    }

    async fn proclaim(&self, _value: &[u8]) -> Result<()> {
        Ok(())
    }

    async fn is_leader(&self) -> Result<bool> {
        Ok(true)
    }

    async fn resign(&self) -> Result<()> {
        Ok(())
    }
}

struct FakeGrant;

#[async_trait]
impl HeldLock for FakeGrant {
    fn fence(&self) -> FencingToken {
        FencingToken::FIRST
    }

    async fn is_held(&self) -> Result<bool> {
        Ok(true)
    }

    async fn release(&self) -> Result<()> {
        Ok(())
    }

    async fn write_if_held(&self, _key: &str, _value: &[u8], _then: AfterWrite) -> Result<bool> {
        Ok(false)
    }
}
