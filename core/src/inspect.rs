//! What [`crate::Coordinator::locks`] reports: the locks held right now,
//! their holders and their waiters, as an operator sees them with
//! `etcdctl get --prefix`, ZooKeeper's `ls` or `quorate locks`.
//!
//! These are read-only snapshots, taken by one read (or a few) of the
//! backend: by the time the caller looks at one, it may have changed. Never
//! decide to act on a lock from a snapshot; acquire it.

use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::fence::FencingToken;
use crate::model::LockKind;

/// Which side of a name's lock a holder holds or a waiter waits for.
///
/// One name, one lock: a mutex and the write side of a read/write lock are
/// the same exclusive side, and no backend records which of the two a
/// caller used, so a listing reports only the side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LockMode {
    /// The exclusive side: a mutex, or a read/write lock's writer.
    Exclusive,
    /// The shared side: a read/write lock's reader.
    Shared,
}

impl LockMode {
    /// The word used in tables: `exclusive`, `shared`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<LockKind> for LockMode {
    fn from(kind: LockKind) -> Self {
        if kind.is_exclusive() {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        }
    }
}

/// One holder of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockHolder {
    /// The holder's session id ([`crate::Session::id`], `QUORATE_SESSION`),
    /// or `None` for a holder that is not a quorate session and whose
    /// session the backend cannot tell (a redis-py `Lock`, a Python
    /// `lockf` on a file:// lock file).
    pub session: Option<String>,
    /// Exclusive or shared.
    pub mode: LockMode,
    /// The grant's fencing token, where the backend can read it (see
    /// `docs/backends.md`); equal to the holder guard's
    /// [`crate::LockGuard::fence`].
    pub fence: Option<FencingToken>,
    /// When the lock was granted (wall clock), where the backend records
    /// it; `None` otherwise. Serialised as RFC 3339 (UTC, microseconds).
    #[serde(serialize_with = "serialize_since")]
    pub since: Option<SystemTime>,
}

impl LockHolder {
    /// A holder with no fence or time known; add them with
    /// [`LockHolder::with_fence`] and [`LockHolder::with_since`].
    pub fn new(session: Option<String>, mode: LockMode) -> Self {
        LockHolder {
            session,
            mode,
            fence: None,
            since: None,
        }
    }

    /// This holder with its fencing token.
    #[must_use]
    pub fn with_fence(mut self, fence: Option<FencingToken>) -> Self {
        self.fence = fence;
        self
    }

    /// This holder with the time it was granted.
    #[must_use]
    pub fn with_since(mut self, since: Option<SystemTime>) -> Self {
        self.since = since;
        self
    }
}

/// One waiter of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockWaiter {
    /// The waiter's session id, or `None` where the backend cannot tell
    /// (as for [`LockHolder::session`]).
    pub session: Option<String>,
    /// The side it waits for.
    pub mode: LockMode,
}

impl LockWaiter {
    /// A waiter of `session` for the `mode` side.
    pub fn new(session: Option<String>, mode: LockMode) -> Self {
        LockWaiter { session, mode }
    }
}

/// A lock that is held or waited for, as [`crate::Coordinator::locks`]
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LockState {
    /// The lock's name, as the user gave it (without the backend's
    /// namespace or encoding).
    pub name: String,
    /// Who holds it: one exclusive holder, or any number of shared ones.
    /// Empty only when the lock is waited for but not held at that instant
    /// (a hand-off in progress).
    pub holders: Vec<LockHolder>,
    /// Who waits for it, in the backend's queue order (arrival order on
    /// backends that declare `fifo`; see `docs/backends.md` for the
    /// others).
    pub waiters: Vec<LockWaiter>,
}

impl LockState {
    /// A lock with no holder and no waiter yet.
    pub fn new(name: impl Into<String>) -> Self {
        LockState {
            name: name.into(),
            holders: Vec::new(),
            waiters: Vec::new(),
        }
    }

    /// Whether nobody holds or waits for it (such entries are not listed).
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }
}

/// Queue entries in arrival order, each with its side: what
/// [`split_fifo_queue`] takes and returns.
pub type Queue<T> = Vec<(LockMode, T)>;

/// Split a queue in arrival order into holders and waiters by the rule
/// every FIFO backend grants with: the head is granted; an exclusive entry
/// only at the head, a shared one while no exclusive entry is ahead of it.
/// For backends whose queue *is* the grant state (etcd, ZooKeeper).
pub fn split_fifo_queue<T>(queue: Queue<T>) -> (Queue<T>, Queue<T>) {
    let mut holders = Vec::new();
    let mut waiters = Vec::new();
    for (i, (mode, item)) in queue.into_iter().enumerate() {
        let granted = waiters.is_empty()
            && match mode {
                LockMode::Exclusive => i == 0,
                LockMode::Shared => holders
                    .iter()
                    .all(|(m, _): &(LockMode, T)| *m == LockMode::Shared),
            };
        if granted {
            holders.push((mode, item));
        } else {
            waiters.push((mode, item));
        }
    }
    (holders, waiters)
}

/// A queue entry of a backend whose queue *is* the grant state: its
/// session and, where known, the fence a grant to it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEntry {
    /// The entry's session id.
    pub session: String,
    /// The entry's fencing token (its create revision, czxid, …).
    pub fence: Option<FencingToken>,
}

/// The state of lock `name` from its queue in arrival order, split by
/// [`split_fifo_queue`]: holders with their fences, then the waiters.
pub fn lock_from_fifo_queue(name: impl Into<String>, queue: Queue<QueuedEntry>) -> LockState {
    let (holders, waiters) = split_fifo_queue(queue);
    let mut lock = LockState::new(name);
    lock.holders = holders
        .into_iter()
        .map(|(m, e)| LockHolder::new(Some(e.session), m).with_fence(e.fence))
        .collect();
    lock.waiters = waiters
        .into_iter()
        .map(|(m, e)| LockWaiter::new(Some(e.session), m))
        .collect();
    lock
}

/// Keep the listing's invariants: sorted by name, filtered by `prefix`,
/// without empty entries.
pub fn finish_listing(mut locks: Vec<LockState>, prefix: &str) -> Vec<LockState> {
    locks.retain(|l| !l.is_empty() && l.name.starts_with(prefix));
    locks.sort_by(|a, b| a.name.cmp(&b.name));
    locks
}

fn serialize_since<S: Serializer>(since: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match since {
        Some(t) => s.serialize_str(&humantime::format_rfc3339_micros(*t).to_string()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_split_grants_the_head_or_the_leading_readers() {
        use LockMode::{Exclusive as X, Shared as S};
        let names = |v: Vec<(LockMode, u32)>| v.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
        let (h, w) = split_fifo_queue(vec![(X, 1), (S, 2), (X, 3)]);
        assert_eq!((names(h), names(w)), (vec![1], vec![2, 3]));
        let (h, w) = split_fifo_queue(vec![(S, 1), (S, 2), (X, 3), (S, 4)]);
        assert_eq!((names(h), names(w)), (vec![1, 2], vec![3, 4]));
        let (h, w) = split_fifo_queue(vec![(X, 1), (X, 2)]);
        assert_eq!((names(h), names(w)), (vec![1], vec![2]));
        let (h, w) = split_fifo_queue::<u32>(vec![]);
        assert!(h.is_empty() && w.is_empty());
    }

    #[test]
    fn since_serialises_as_rfc3339() {
        let h = LockHolder::new(Some("s".into()), LockMode::Shared)
            .with_fence(Some(FencingToken::FIRST))
            .with_since(Some(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1),
            ));
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["since"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(v["mode"], "shared");
        assert_eq!(v["fence"], 1);
        let none = serde_json::to_value(LockHolder::new(None, LockMode::Exclusive)).unwrap();
        assert!(none["since"].is_null() && none["session"].is_null());
    }
}
