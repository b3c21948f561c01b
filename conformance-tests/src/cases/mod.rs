//! The shared cases. Each is `async fn(Target) -> CaseResult`, runs on a
//! fresh namespace, and names the guarantee (and the declared capability)
//! it measures.

use futures::future::BoxFuture;
use quorate::{Capabilities, Coordinator, FailureDetection, Scope, Session};

use crate::outcome::{CaseResult, Figures};
use crate::target::{Fault, Target};

mod data_faults;
mod election;
mod faults;
mod group;
mod guarded;
mod inspect;
mod lifecycle;
mod member_faults;
mod mutex;
mod names;
mod nemesis_case;
mod onelock;
mod rwlock;
mod server_faults;
mod session;

use data_faults::*;
use election::*;
use faults::*;
use group::*;
use guarded::*;
use inspect::*;
use lifecycle::*;
use member_faults::*;
use mutex::*;
use names::*;
use onelock::*;
use rwlock::*;
use server_faults::*;
use session::*;

/// One conformance case.
pub struct Case {
    /// A stable identifier (used as the test name and the report key).
    pub name: &'static str,
    /// The guarantee it measures, in words.
    pub guarantee: &'static str,
    /// The `Capabilities` field whose declared value it checks, as a JSON
    /// path (`fifo`, `primitives.rwlock`), if any.
    pub capability: Option<&'static str>,
    /// Whether the case applies to a backend; `Err(reason)` if not.
    pub applies: fn(&Capabilities) -> Result<(), &'static str>,
    /// The server fault the case injects, if any: it applies only to a
    /// target whose fault controller supports it, and runs alone.
    pub needs: Option<Fault>,
    /// The case itself.
    pub run: fn(Target) -> BoxFuture<'static, CaseResult>,
    /// Whether the case shares the run with others or needs it alone
    /// (server fault cases always run alone).
    pub turn: Turn,
    /// Time the case spends by design (a nemesis's fault budget), added to
    /// the runner's limit for a hung case.
    pub budget: Option<fn() -> std::time::Duration>,
    /// For a case whose pass covers several real outcomes (a guarantee the
    /// backend does not declare, measured anyway): the outcome in words,
    /// derived from the figures so the two never disagree. It becomes the
    /// report's `detail` of a passing case.
    pub describe: Option<fn(&Figures) -> String>,
}

/// Whether a case may run beside others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// With the other cases (each on its own namespace).
    Shared,
    /// Alone: it disturbs servers or processes the others would notice.
    Alone,
}

impl Case {
    /// Whether the case runs alone.
    pub fn runs_alone(&self) -> bool {
        self.needs.is_some() || self.turn == Turn::Alone
    }

    /// Whether the case applies to `target` (whose backend declares
    /// `caps`); `Err(reason)` if not. Decided before running anything.
    pub fn applies_to(&self, caps: &Capabilities, target: &Target) -> Result<(), &'static str> {
        (self.applies)(caps)?;
        match self.needs {
            Some(fault) if !target.supports(fault) => Err(fault.missing()),
            _ => Ok(()),
        }
    }
}

macro_rules! case {
    ($name:ident, $guarantee:expr, $cap:expr, $applies:expr) => {
        case!($name, $guarantee, $cap, $applies, None, None)
    };
    ($name:ident, $guarantee:expr, $cap:expr, $applies:expr, $needs:expr, $describe:expr) => {
        Case {
            name: stringify!($name),
            guarantee: $guarantee,
            capability: $cap,
            applies: $applies,
            needs: $needs,
            run: |t| Box::pin($name::run(t)),
            turn: Turn::Shared,
            budget: None,
            describe: $describe,
        }
    };
}

fn always(_: &Capabilities) -> Result<(), &'static str> {
    Ok(())
}

fn needs_rwlock(c: &Capabilities) -> Result<(), &'static str> {
    c.primitives
        .rwlock
        .then_some(())
        .ok_or("the backend does not declare read/write locks")
}

fn needs_group(c: &Capabilities) -> Result<(), &'static str> {
    c.primitives
        .group
        .then_some(())
        .ok_or("the backend does not declare group membership")
}

fn needs_election(c: &Capabilities) -> Result<(), &'static str> {
    c.primitives
        .election
        .then_some(())
        .ok_or("the backend does not declare elections")
}

fn needs_guarded_writes(c: &Capabilities) -> Result<(), &'static str> {
    c.primitives
        .guarded_writes
        .then_some(())
        .ok_or("the backend does not declare guarded writes")
}

fn needs_fencing(c: &Capabilities) -> Result<(), &'static str> {
    c.fencing
        .then_some(())
        .ok_or("the backend does not declare fencing")
}

fn needs_fifo(c: &Capabilities) -> Result<(), &'static str> {
    c.fifo
        .then_some(())
        .ok_or("the backend does not declare FIFO granting")
}

fn needs_external_revoke(c: &Capabilities) -> Result<(), &'static str> {
    c.external_revoke
        .then_some(())
        .ok_or("the backend has no operator revoke of a session")
}

fn needs_lease(c: &Capabilities) -> Result<(), &'static str> {
    match c.failure_detection {
        FailureDetection::LeaseTtl | FailureDetection::Session => Ok(()),
        FailureDetection::ProcessLifetime => {
            Err("failure detection is the process lifetime: there is no lease to expire")
        }
    }
}

fn needs_lock_files(c: &Capabilities) -> Result<(), &'static str> {
    (c.backend == "file")
        .then_some(())
        .ok_or("the backend keeps no lock files in a directory")
}

fn needs_processes(c: &Capabilities) -> Result<(), &'static str> {
    match c.scope {
        Scope::Threads => Err("the backend excludes only threads of one process"),
        Scope::Processes | Scope::Hosts => Ok(()),
    }
}

/// Every case, in report order.
pub fn all() -> Vec<Case> {
    vec![
        case!(mutual_exclusion, "two holders never hold one mutex at once; fences strictly increase (N clients x M rounds, history checked)", Some("scope"), always),
        case!(try_and_timeout, "try_lock returns None while held; lock_timeout returns Timeout; both succeed once free", None, always),
        case!(fencing_monotonic, "fencing tokens strictly increase across successive grants of one name, across sessions and coordinators", Some("fencing"), needs_fencing),
        case!(no_reentrancy, "a session re-acquiring a lock it holds or awaits gets AlreadyHeld, never a deadlock or a second grant", None, always),
        case!(fifo_order, "waiters on a mutex are granted in arrival order", Some("fifo"), needs_fifo),
        case!(cancel_safety, "a dropped or timed-out lock()/write() future leaves nothing queued or held; it never acquires later by itself", None, always),
        case!(lock_all_no_deadlock, "lock_all in opposite orders never deadlocks; a failed lock_all releases what it took", None, always),
        case!(rwlock_readers_share, "read grants are shared between sessions", Some("primitives.rwlock"), needs_rwlock),
        case!(rwlock_writer_excludes, "a write grant excludes readers and writers; a read grant excludes writers", Some("primitives.rwlock"), needs_rwlock),
        case!(rwlock_queued_writer_blocks_readers, "a waiting writer blocks readers that arrive after it (no writer starvation)", Some("rwlock_ordering"), needs_rwlock),
        case!(rwlock_writer_timeout_unblocks_readers, "a writer that times out leaves the queue at once: readers queued behind it proceed while the first reader still holds", Some("rwlock_ordering"), needs_rwlock),
        case!(mutex_is_rwlock_write_side, "one name, one lock: a mutex holder excludes readers and writers of the same name and the other way round; mutex, read and write waiters share one queue (arrival order where fifo is declared) and fences strictly increase across mutex and read/write grants", Some("primitives.rwlock"), needs_rwlock),
        case!(mutex_timeout_unblocks_readers, "one name, one lock: a mutex waiter queued behind a reader blocks later readers, and when it times out it leaves the queue at once, so they proceed while the first reader still holds", Some("rwlock_ordering"), needs_rwlock),
        case!(locks_listing, "Coordinator::locks lists every held lock under the user's name (no namespace; no election or group) with its holders' sessions, sides and fences (the guards' fences where fencing is declared), the waiters (in queue order where fifo is declared), filters by name prefix, follows a hand-off, and lists nothing once everything is released", None, always),
        case!(close_releases_everything, "closing a session releases its locks, memberships and candidacies, and resolves every guard's lost()", None, always),
        case!(revoke_from_outside, "a session revoked from outside resolves its holder's lost() and frees the lock", Some("external_revoke"), needs_external_revoke),
        case!(lease_expiry_without_keepalive, "a session whose keep-alive stops is reported lost before its lease expires on the backend, and its locks become free", Some("failure_detection"), needs_lease),
        case!(manual_keepalive_keeps_session, "manual keep_alive() calls keep a session (and its lock) alive past its TTL", Some("failure_detection"), needs_lease),
        case!(unknown_option_rejected, "an unknown URL option is a clear InvalidConfig error, not a silent default", None, always),
        case!(membership_events, "watch() starts from a consistent snapshot, then reports join/update/leave/session end in order with no gap or duplicate", Some("primitives.group"), needs_group),
        case!(membership_view_consistent, "watchers started before and while members join, update, leave, rejoin and expire see a consistent stream (every Left after that member's Joined or snapshot entry, exactly once) and converge to members()", Some("primitives.group"), needs_group),
        case!(membership_duplicate_id, "a member id held by a live member cannot be joined again (AlreadyHeld)", Some("primitives.group"), needs_group),
        case!(election_handover, "one leader at a time; resign hands over to the next candidate; leadership fences increase", Some("primitives.election"), needs_election),
        case!(election_observe, "observe() reports the current leader, then every change and proclaimed value, never a stale leader after a newer one", Some("primitives.election"), needs_election),
        case!(guarded_writes, "write_if_held applies only while held; after loss it is refused and changes nothing; write_and_release releases atomically", Some("primitives.guarded_writes"), needs_guarded_writes),
        case!(hostile_names, "hostile names (.., /, NUL, 1 KiB, unicode, percent signs) work without colliding; empty and over-long names are InvalidName", None, always),
        case!(holder_crash_frees_lock, "a holder process killed with SIGKILL loses its lock; another process acquires (time measured)", Some("failure_detection"), needs_processes),
        case!(holder_pause, "a holder process paused (SIGSTOP) past its TTL: nobody else acquires (process-lifetime backends), or another client acquires, the paused holder is told on resume and its stale fenced write is rejected (lease backends)", Some("exclusive_under_pause"), needs_processes),
        case!(waiter_pause, "a waiter process paused (SIGSTOP) just as the lock is handed to it, and kept stopped past its TTL while another client is granted the lock and releases it, does not report the lock granted on resume (lease backends)", Some("failure_detection"), needs_lease_and_processes),
        case!(leader_failover, "the leader (Raft leader, ZooKeeper leader, Redis primary) is killed while a lock is held: no double grant and fences never go backwards (a failure wherever exclusive_across_failover is declared, even with survives_failover = false), and the holder keeps the lock (times until is_held answers and a guarded write applies again measured; with survives_failover = false the real outcome is reported)", Some("survives_failover"), needs_guarded_writes, Some(Fault::KillLeader), Some(leader_failover::describe)),
        case!(server_pause, "the server (the leader or primary where there are several) is stopped (SIGSTOP) for three TTLs while 8 clients each hold a lock (each its own session), then resumed: for every lock, nobody else is granted it before its holder is told, fences never go backwards (a failure on a single server; where another server can take over, wherever exclusive_across_leader_stalls is declared), and the lock is granted again within 60 s (the holder keeping it, or another client)", Some("failure_detection"), needs_guarded_writes, Some(Fault::ServerPause), Some(server_pause::describe)),
        case!(partition_loss_before_expiry, "a holder partitioned from its server (black-holed through a proxy) is told lost() before another client can acquire the lock", Some("failure_detection"), needs_lease, Some(Fault::Partition), None),
        case!(one_way_partition_loss_before_expiry, "a holder whose requests reach its server but whose replies are lost (a one-way partition through a proxy) is told lost() before another client is granted the lock, and another client is granted it within 30 s (requests that still arrive may renew the lease on the server, but must not keep it alive for good)", Some("failure_detection"), needs_lease, Some(Fault::Partition), None),
        case!(handoff_partition_loss_before_expiry, "a waiter granted by a hand-off (the previous holder's release) and black-holed at once is told lost() before another client can acquire the lock", Some("failure_detection"), needs_lease, Some(Fault::Partition), None),
        case!(member_partition_loss_before_regrant, "a holder connected only to a member cut off from its peers (its client port up) is told lost() no later than a client on the majority is granted the lock", Some("failure_detection"), needs_lease, Some(Fault::MemberPartition), None),
        case!(leader_partition_loss_before_regrant, "a holder connected only to the LEADER, cut off from its peers (its client port up), is told lost() no later than a client on the majority is granted the lock", Some("failure_detection"), needs_lease, Some(Fault::MemberPartition), None),
        case!(no_stale_reads, "is_held, is_leader, read and guarded writes asked on a member cut off from its peers never answer from its stale state after conflicting grants through the majority (an error, false, or the new value)", None, needs_external_revoke, Some(Fault::MemberPartition), None),
        case!(release_survives_lost_reply, "a release whose reply is lost (connection black-holed during release(), a dropped release() future, a dropped guard; then healed) frees the lock within a bounded time after the heal, while the session stays alive", None, needs_lease, Some(Fault::Partition), None),
        case!(resign_survives_lost_reply, "a resign whose reply is lost (connection black-holed, then healed) hands leadership over within a bounded time after the heal, while the session stays alive", Some("primitives.election"), needs_lease_and_election, Some(Fault::Partition), None),
        case!(leave_survives_lost_reply, "a leave whose reply is lost (connection black-holed, then healed) removes the member within a bounded time after the heal, while the session stays alive", Some("primitives.group"), needs_lease_and_group, Some(Fault::Partition), None),
        case!(eviction_refused, "a server configured to evict keys (maxmemory + volatile-lru) is refused at connect with an InvalidConfig naming the setting; with the explicit opt-in (allow_eviction=true), what eviction does to a held lock is measured", None, always, Some(Fault::Eviction), Some(eviction_refused::describe)),
        case!(server_clock_step, "the server's wall clock steps forward (+15 s) while a lock is held: the holder keeps the lock (nobody else is granted it for 5 TTLs, and is_held still answers true), or is told no later than another client is granted it; fences never go backwards (a failure wherever exclusive_across_clock_steps is declared)", Some("exclusive_across_clock_steps"), needs_lease, Some(Fault::ServerClockStep), Some(server_clock_step::describe)),
        case!(fence_after_lagging_failover, "the primary is killed and a replica that missed the last grant (its clock 5 s behind) is promoted: the next grant's fence is above every fence handed out before (measured as configured, and with the opt-in wait_replicas=1, which must keep it)", Some("exclusive_across_failover"), needs_fencing, Some(Fault::LaggingFailover), Some(fence_after_lagging_failover::describe)),
        case!(lock_file_removed, "the lock files (the whole root) are removed under a holder, and another client, connected beforehand, locks the name at once: the holder is told (lost()), and the grant made on the new file has a larger fence (fences never repeat); another client granted before the holder is told is two holders (a failure wherever exclusive_across_data_loss is declared)", Some("fencing"), needs_lock_files, None, Some(lock_file_removed::describe)),
        case!(restart_without_persistence, "the server restarts without its data while a lock is held: the holder is told it lost the lock no later than another client is granted it (no silent double grant; fences never go backwards)", Some("exclusive_across_data_loss"), always, Some(Fault::RestartWithoutPersistence), Some(restart_without_persistence::describe)),
        Case {
            name: "nemesis",
            guarantee: "under random faults (client pause/kill/partition and one-way partition, and the server faults whose guarantee is declared: member partitions, leader kills, server pauses on a single server or where exclusive_across_leader_stalls is declared) holder processes never believe they hold the lock at once, fences strictly increase, the fenced resource accepts no stale write, and every holder completes a round after the heal",
            capability: Some("failure_detection"),
            applies: needs_processes,
            needs: None,
            run: |t| Box::pin(nemesis_case::run(t)),
            turn: Turn::Alone,
            budget: Some(crate::nemesis::duration),
            describe: None,
        },
    ]
}

/// A coordinator and a session on the target.
pub(crate) async fn client(t: &Target) -> quorate::Result<(Coordinator, Session)> {
    let c = t.connect().await?;
    let s = c.session().await?;
    Ok((c, s))
}
