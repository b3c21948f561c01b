//! The backend service-provider interface: the small, object-safe set of
//! traits each backend implements. Users never call these; they use the
//! concrete types of this crate ([`crate::Coordinator`], [`crate::Session`],
//! …), which add name validation, timeouts, re-entrancy checks, the grant
//! lifecycle (a grant is released until the backend confirms; see below)
//! and loss fan-out once for all backends.
//!
//! # Contract every implementation keeps
//!
//! - Names arrive validated ([`crate::name::validate`]); backends map them
//!   to keys with [`crate::name::encode`].
//! - **Cancel safety.** Every `async fn` here may be dropped at any await
//!   point. A dropped acquire (`lock`, `campaign`, `join`) must leave no
//!   queue entry, node, key or grant behind: clean up synchronously in a
//!   `Drop` guard, or spawn the clean-up from `Drop` with
//!   [`crate::cleanup::spawn_retrying`] (the clean-up must then be
//!   idempotent and must not release a grant that a *later* call made).
//! - A grant returned from `lock`/`campaign` must have been valid when
//!   returned; the backend fires the given [`LossNotifier`] when it learns
//!   the grant is gone (key deleted, session expired).
//! - **Core owns a grant's lifecycle; backends never release on drop.**
//!   Core keeps every grant handle ([`HeldLock`], [`HeldMembership`],
//!   [`HeldLeadership`]) until a call of its `release`/`leave`/`resign`
//!   returned `Ok`: that `Ok` is the backend's confirmation that the grant
//!   is gone. A give-back that errs, finds no answer within
//!   `connect_timeout`, or whose future is dropped, and a dropped guard,
//!   hand the handle to the session's background clean-up, which calls it
//!   again (with back-off) until confirmed or the session ends. So a
//!   handle's `Drop` must not release anything, and its give-back must be
//!   idempotent and address exactly its own grant (never a later grant of
//!   the same name by the same session), because it may run again after a
//!   lost reply. A handle dropped by core is either confirmed released or
//!   belongs to an ended session, whose lease frees it. (Dropped
//!   *acquisitions* are the backend's to clean up, as above: core never saw
//!   a handle for them.)
//! - Blocking waits are woken by the backend (watch, pub/sub, kernel);
//!   polling only as a bounded fallback.
//! - **Core owns the watch view; backends only observe.**
//!   [`Backend::watch_group`] returns a listing and a stream of raw
//!   [`GroupChange`]s, [`Backend::observe`] the leader and a stream of
//!   readings; core's [`crate::watch`] turns them into the user's events
//!   (exactly once, never a `Left` before its `Joined`, never a lower fence
//!   after a higher one), buffers them in a bounded channel, and re-opens a
//!   raw stream that errs or ends. A raw stream must not miss a change
//!   after its listing (repeats are harmless), is pulled promptly, and
//!   keeps no unbounded buffer of its own: where the platform pushes
//!   changes, buffer boundedly and report a [`GroupChange::Resync`] (or a
//!   fresh reading) after an overflow.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::fence::FencingToken;
use crate::inspect::LockState;
use crate::loss::LossNotifier;
use crate::model::{Leader, LockKind, Member};

/// How a [`SessionBackend::lock`] call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acquire {
    /// Wait in FIFO order until granted.
    Wait,
    /// Take the lock only if it is free now; never queue.
    Try,
}

impl Acquire {
    /// Whether this mode waits for the grant.
    pub fn waits(self) -> bool {
        self == Acquire::Wait
    }
}

/// The outcome of a [`SessionBackend::lock`] call.
pub enum Acquired {
    /// The lock was granted.
    Granted(Box<dyn HeldLock>),
    /// The lock is not free now (only for [`Acquire::Try`]).
    Busy,
}

impl std::fmt::Debug for Acquired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Acquired::Granted(held) => write!(f, "Granted(fence {})", held.fence()),
            Acquired::Busy => f.write_str("Busy"),
        }
    }
}

/// `Some` grant is [`Acquired::Granted`], `None` is [`Acquired::Busy`].
impl From<Option<Box<dyn HeldLock>>> for Acquired {
    fn from(held: Option<Box<dyn HeldLock>>) -> Self {
        held.map_or(Acquired::Busy, Acquired::Granted)
    }
}

/// What a guarded write ([`HeldLock::write_if_held`]) does with the grant
/// once the write applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterWrite {
    /// Keep holding the lock (`LockGuard::write_if_held`).
    Keep,
    /// Release the lock in the same atomic step
    /// (`LockGuard::write_and_release`).
    Release,
}

/// A member as a backend sees it in a raw change ([`GroupChange`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenMember {
    /// The member (id and capabilities).
    pub member: Member,
    /// Which incarnation of the member's record this is, where the backend
    /// can tell (ZooKeeper: the node's czxid): when it differs from the one
    /// seen before, the member left and joined again in between, and the
    /// view reports `Left` then `Joined`. `None` where it cannot tell.
    pub incarnation: Option<i64>,
}

impl SeenMember {
    /// A member whose incarnation the backend cannot tell.
    pub fn new(member: Member) -> Self {
        SeenMember {
            member,
            incarnation: None,
        }
    }
}

/// A raw change a backend reports for a group. Core's watch view
/// ([`crate::watch`]) turns these into [`crate::GroupEvent`]s; a backend never
/// builds `GroupEvent`s itself, and may report a change the view already
/// reflects (the view drops it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// The member's record exists now with these capabilities (created or
    /// changed).
    Put(SeenMember),
    /// The member's record is gone.
    Delete {
        /// The member id.
        id: String,
    },
    /// Every member now (after a re-list: a reconnection, compacted
    /// history, a gap in the backend's events, a bounded buffer that
    /// overflowed).
    Resync(Vec<SeenMember>),
}

/// What [`Backend::watch_group`] returns: a listing, and every raw change
/// after it (no change after the listing may be missed; repeats are
/// harmless).
pub struct RawGroupWatch {
    /// Every member at the moment the watch started.
    pub snapshot: Vec<SeenMember>,
    /// The changes after the snapshot. An `Err` item, or the end of the
    /// stream, means the watch broke and may have missed changes: core
    /// opens a new one (with back-off) and treats its snapshot as a
    /// [`GroupChange::Resync`].
    pub changes: BoxStream<'static, Result<GroupChange>>,
}

impl std::fmt::Debug for RawGroupWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawGroupWatch")
            .field("snapshot", &self.snapshot)
            .finish_non_exhaustive()
    }
}

/// What [`Backend::observe`] returns: the leader now, and the leader as
/// read after every change the backend noticed (readings may repeat, and
/// may be stale: core drops repeats and any leader with a lower fence than
/// one already seen).
pub struct RawObserve {
    /// The leader at the moment the observation started.
    pub leader: Option<Leader>,
    /// Later readings. An `Err` item, or the end of the stream, means the
    /// observation broke: core opens a new one (with back-off) and treats
    /// its first leader as one more reading.
    pub changes: BoxStream<'static, Result<Option<Leader>>>,
}

impl std::fmt::Debug for RawObserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawObserve")
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

/// A connected backend. One per [`crate::Coordinator`], shared by its clones.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// What this backend declares it guarantees.
    fn capabilities(&self) -> Capabilities;

    /// Open a session (lease) with the requested TTL. The backend fires
    /// `loss` when it learns the lease is gone (expired, revoked).
    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>>;

    /// Revoke a session by its id, from outside (an operator's action).
    /// Backends that cannot return [`crate::ErrorKind::Unsupported`].
    async fn revoke_session(&self, session_id: &str) -> Result<()>;

    /// The members of a group, sorted by id.
    async fn members(&self, group: &str) -> Result<Vec<Member>>;

    /// List a group and follow its raw changes from that listing. Core's
    /// watch view turns them into the user's [`crate::GroupEvent`]s.
    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch>;

    /// The current leader of an election, if any.
    async fn leader(&self, election: &str) -> Result<Option<Leader>>;

    /// Read the current leader and follow its changes as raw readings.
    /// Core de-duplicates them (never a lower fence after a higher one).
    async fn observe(&self, election: &str) -> Result<RawObserve>;

    /// Read a value stored by a guarded write.
    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Everything under this coordinator's namespace that a clean shutdown
    /// should have removed: held or queued locks, members, candidates,
    /// sessions. Documented persistent state (fence counters, guarded-write
    /// values) is not listed. Used by the conformance suite's leak check.
    async fn leftovers(&self) -> Result<Vec<String>>;

    /// The locks (mutexes and read/write locks; never elections or groups)
    /// whose name starts with `prefix` (empty: all) that are held or
    /// waited for now, with their holders and waiters, sorted by name
    /// ([`crate::inspect::finish_listing`]). Names are the user's names.
    /// A backend that cannot list locks returns
    /// [`crate::ErrorKind::Unsupported`] (the default); one that cannot
    /// know a field leaves it `None` and documents it.
    async fn locks(&self, prefix: &str) -> Result<Vec<LockState>> {
        let _ = prefix;
        Err(crate::Error::unsupported(
            "this backend cannot list its locks",
        ))
    }
}

/// One session (lease) of a backend.
#[async_trait]
pub trait SessionBackend: Send + Sync + 'static {
    /// A stable id of the session (the lease id, the ZK session id, …).
    fn id(&self) -> String;

    /// The TTL the backend really granted (may differ from the request).
    fn ttl(&self) -> Duration;

    /// One keep-alive round trip. [`crate::ErrorKind::Lost`] when the lease
    /// is already gone.
    async fn keep_alive(&self) -> Result<()>;

    /// Revoke the lease: every grant, membership and candidacy of this
    /// session is released.
    async fn revoke(&self) -> Result<()>;

    /// Acquire a lock. With [`Acquire::Try`] return [`Acquired::Busy`] at
    /// once if it is not free; with [`Acquire::Wait`] wait in FIFO order
    /// until granted (never `Busy`). `loss` is this grant's own notifier.
    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired>;

    /// Join a group as `member`. [`crate::ErrorKind::AlreadyHeld`] when the
    /// id is taken by a live member.
    async fn join(
        &self,
        group: &str,
        member: &str,
        capabilities: &serde_json::Value,
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldMembership>>;

    /// Campaign in an election; resolves once leader.
    async fn campaign(
        &self,
        election: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>>;
}

/// A granted lock.
#[async_trait]
pub trait HeldLock: Send + Sync + 'static {
    /// The grant's fencing token.
    fn fence(&self) -> FencingToken;
    /// Ask the backend whether the grant still stands.
    async fn is_held(&self) -> Result<bool>;
    /// Release the grant; `Ok` confirms it is gone. Idempotent: core calls
    /// it again after an error or a lost reply (see the module contract).
    async fn release(&self) -> Result<()>;
    /// Atomically store `value` under `key` if and only if the grant still
    /// stands, and then keep or release the grant in the same step
    /// (`then`). Returns whether the grant stood (and so whether the write
    /// applied).
    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool>;
}

/// A membership in a group.
#[async_trait]
pub trait HeldMembership: Send + Sync + 'static {
    /// Replace the member's capabilities.
    async fn update(&self, capabilities: &serde_json::Value) -> Result<()>;
    /// Leave the group; `Ok` confirms the member is gone. Idempotent (see
    /// the module contract).
    async fn leave(&self) -> Result<()>;
}

/// Leadership of an election.
#[async_trait]
pub trait HeldLeadership: Send + Sync + 'static {
    /// The leadership's fencing token.
    fn fence(&self) -> FencingToken;
    /// Publish a new value while leader.
    async fn proclaim(&self, value: &[u8]) -> Result<()>;
    /// Ask the backend whether this is still the leader.
    async fn is_leader(&self) -> Result<bool>;
    /// Give up leadership; `Ok` confirms the candidacy is gone. Idempotent
    /// (see the module contract).
    async fn resign(&self) -> Result<()>;
}
