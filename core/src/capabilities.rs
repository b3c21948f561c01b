//! What a backend declares it guarantees. The conformance suite measures
//! each of these and reports declared against measured.

use serde::Serialize;

/// Who can be excluded from one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Tasks and threads of one process.
    Threads,
    /// Processes of one host.
    Processes,
    /// Processes on any hosts that reach the same servers.
    Hosts,
}

/// How the death of a holder is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureDetection {
    /// The holder's process (the kernel releases on exit): immediate, and a
    /// paused process keeps its locks.
    ProcessLifetime,
    /// A lease with a TTL refreshed by the holder: a dead or paused holder
    /// loses its locks after the TTL.
    LeaseTtl,
    /// A server-side session with a timeout (ZooKeeper).
    Session,
}

/// The order in which a read/write lock grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RwOrdering {
    /// Strict arrival order; a waiting writer blocks later readers.
    Fifo,
    /// Waiting writers block new readers, but among waiters the order is
    /// not guaranteed.
    WriterPreferring,
}

/// Which primitives the backend implements. Non-exhaustive: start from
/// [`Primitives::ALL`] or [`Primitives::NONE`] (the `Default`) and set
/// fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct Primitives {
    /// `Mutex`.
    pub mutex: bool,
    /// `RwLock`.
    pub rwlock: bool,
    /// `Group` membership.
    pub group: bool,
    /// `Election`.
    pub election: bool,
    /// Guarded writes (`write_if_held`, `write_and_release`).
    pub guarded_writes: bool,
}

impl Primitives {
    /// Every primitive.
    pub const ALL: Primitives = Primitives {
        mutex: true,
        rwlock: true,
        group: true,
        election: true,
        guarded_writes: true,
    };

    /// No primitive.
    pub const NONE: Primitives = Primitives {
        mutex: false,
        rwlock: false,
        group: false,
        election: false,
        guarded_writes: false,
    };
}

/// The guarantees a backend declares. Every field is checked by the
/// conformance suite (see `docs/guarantees.md`).
///
/// Non-exhaustive, so that a new guarantee is not a breaking change: a
/// backend starts from [`Capabilities::new`], which declares nothing beyond
/// its name, scope and failure detection, and sets what it guarantees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name (`memory`, `file`, `etcd`, …).
    pub backend: &'static str,
    /// Who is excluded from whom.
    pub scope: Scope,
    /// How a dead holder is detected.
    pub failure_detection: FailureDetection,
    /// Every grant carries a strictly increasing fencing token.
    pub fencing: bool,
    /// Mutex waiters are granted in arrival order.
    pub fifo: bool,
    /// Read/write lock ordering.
    pub rwlock_ordering: RwOrdering,
    /// Waiters are woken by the backend, not by polling.
    pub push_wakeups: bool,
    /// Mutual exclusion holds while a holder's process is paused past the
    /// lease: `true` only where nobody else can acquire (file locks), at the
    /// price of liveness.
    pub exclusive_under_pause: bool,
    /// A lock stays held and exclusive across a server failover.
    pub survives_failover: bool,
    /// Across a server failover a holder may lose its lock, but it is told
    /// no later than another client is granted it, and fences never go
    /// backwards: never two holders. Implied by `survives_failover`; `false`
    /// where a failover can lose a grant silently (asynchronous
    /// replication) or where there is no server to fail over.
    pub exclusive_across_failover: bool,
    /// Where another server can take over, the leader or primary stopped
    /// past the TTL (a long GC or VM pause, a disk stuck in `fsync`) and
    /// then resumed never makes two holders: the holder is told no later
    /// than another client is granted its lock, and fences never go
    /// backwards. A stalled leader is a failover the leader itself does not
    /// see: it wakes believing it still leads, with every lease past its
    /// expiry by its own clock. `false` where a resumed leader can still
    /// expire sessions the new leader kept alive (etcd before 3.4.28 and
    /// 3.5.11, etcd issue 15247), where a failover can lose a grant
    /// (asynchronous replication), or where there is no server. On a single
    /// server nothing takes over, and a stop is a plain lease question
    /// (`failure_detection`).
    pub exclusive_across_leader_stalls: bool,
    /// A step of a server's wall clock (NTP, an operator, a resumed VM)
    /// never makes two holders: the holder keeps its lock, or is told no
    /// later than another client is granted it, and fences never go
    /// backwards. `true` where leases and sessions expire by the servers'
    /// monotonic clocks; `false` where they expire by a server's wall clock
    /// (Redis key TTLs) or where there is no server clock to step.
    pub exclusive_across_clock_steps: bool,
    /// Losing the backend's data (a server restarted without persistence,
    /// a wiped data directory, file:// lock files removed) never makes two
    /// holders: the holder is told no later than another client is
    /// granted its lock, and fences never go backwards. No backend
    /// declares it: a server that forgot every lock and lease, or a new
    /// lock file, can grant a lock at once, before the holder learns its
    /// grant is gone. `restart_without_persistence` and
    /// `lock_file_removed` measure how wide that window is.
    pub exclusive_across_data_loss: bool,
    /// A session can be revoked from outside (`Coordinator::revoke_session`).
    pub external_revoke: bool,
    /// Which primitives are implemented.
    pub primitives: Primitives,
}

impl Capabilities {
    /// The capabilities of backend `backend` with this scope and failure
    /// detection, declaring nothing else: no fencing, no FIFO order
    /// (`rwlock_ordering: WriterPreferring`), no push wake-ups, no
    /// exclusion under pause, no failover survival or exclusion, no
    /// exclusion across leader stalls, server clock steps or data loss, no
    /// external revoke, no primitive. Set the fields the backend guarantees.
    pub const fn new(
        backend: &'static str,
        scope: Scope,
        failure_detection: FailureDetection,
    ) -> Capabilities {
        Capabilities {
            backend,
            scope,
            failure_detection,
            fencing: false,
            fifo: false,
            rwlock_ordering: RwOrdering::WriterPreferring,
            push_wakeups: false,
            exclusive_under_pause: false,
            survives_failover: false,
            exclusive_across_failover: false,
            exclusive_across_leader_stalls: false,
            exclusive_across_clock_steps: false,
            exclusive_across_data_loss: false,
            external_revoke: false,
            primitives: Primitives::NONE,
        }
    }
}
