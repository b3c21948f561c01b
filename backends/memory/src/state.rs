//! The shared in-process state behind every `memory://` coordinator of one
//! name, and the registry that lets coordinators share it.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use futures::stream::BoxStream;
use futures::StreamExt;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::GroupChange;
use quorate_core::Leader;
use quorate_core::Result;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::queue::LockQueue;

/// Which queue namespace a lock lives in (core's one definition).
pub(crate) use quorate_core::name::Space;

pub(crate) type SessionId = u64;

#[derive(Clone)]
pub(crate) struct SessionRecord {
    pub(crate) deadline: Instant,
    pub(crate) loss: LossNotifier,
}

pub(crate) struct MemberRecord {
    pub(crate) session: SessionId,
    pub(crate) capabilities: serde_json::Value,
    pub(crate) loss: LossNotifier,
    /// Which join of the group this membership is (see [`GroupState::joins`]).
    pub(crate) incarnation: i64,
}

#[derive(Default)]
pub(crate) struct GroupState {
    pub(crate) members: BTreeMap<String, MemberRecord>,
    /// Joins so far: each membership's incarnation, so a watcher that
    /// re-lists tells a member that left and joined again from an update.
    pub(crate) joins: i64,
    pub(crate) watchers: Vec<Feed<GroupChange>>,
}

impl GroupState {
    pub(crate) fn publish(&mut self, change: GroupChange) {
        self.watchers.retain(|w| w.send(change.clone()));
    }
}

/// How many raw changes a watcher's feed holds before it overflows.
const FEED_CAPACITY: usize = 64;

/// The sending side of one watcher's bounded feed of raw changes, sent
/// under the state lock. A full feed is not waited for: it is marked
/// overflowed, and its stream re-lists instead (a resync).
pub(crate) struct Feed<T> {
    tx: mpsc::Sender<T>,
    overflowed: Arc<AtomicBool>,
}

impl<T> Feed<T> {
    /// Send `change`; `false` once the watcher is gone.
    pub(crate) fn send(&self, change: T) -> bool {
        match self.tx.try_send(change) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed.store(true, Ordering::SeqCst);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether the watcher is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A new feed, and the stream of its changes: after an overflow, the
/// stream drops what the feed holds and yields `relist(state)` (taken
/// under the lock of `name`'s shard, so no change falls between the two).
pub(crate) fn feed<T: Send + 'static>(
    state: &State,
    name: &str,
    relist: impl Fn(&Inner) -> T + Send + Sync + 'static,
) -> (Feed<T>, BoxStream<'static, Result<T>>) {
    let (tx, rx) = mpsc::channel(FEED_CAPACITY);
    let overflowed = Arc::new(AtomicBool::new(false));
    let feed = Feed {
        tx,
        overflowed: overflowed.clone(),
    };
    let catch_up = {
        let state = state.clone();
        let name = name.to_owned();
        move |rx: &mut mpsc::Receiver<T>| {
            let inner = state.shard(&name).lock().unwrap();
            while rx.try_recv().is_ok() {}
            relist(&inner)
        }
    };
    let stream = futures::stream::unfold((rx, overflowed, catch_up), |mut s| async move {
        if s.1.swap(false, Ordering::SeqCst) {
            let listed = (s.2)(&mut s.0);
            return Some((Ok(listed), s));
        }
        let change = s.0.recv().await?;
        Some((Ok(change), s))
    })
    .boxed();
    (feed, stream)
}

#[derive(Default)]
pub(crate) struct ElectionState {
    /// The value of each candidate entry id.
    pub(crate) values: HashMap<u64, Vec<u8>>,
    pub(crate) observers: Vec<Feed<Option<Leader>>>,
    pub(crate) last_published: Option<Leader>,
}

/// One shard of a shared memory "server": the queues, fences, groups and
/// elections of the names that hash to it, and a copy of the session table
/// (every shard knows every live session, so that a grant checks its
/// session under the same lock as the queue it joins).
#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) sessions: HashMap<SessionId, SessionRecord>,
    pub(crate) queues: BTreeMap<(Space, String), LockQueue>,
    /// Persistent, documented: the last fencing token of each name.
    pub(crate) fences: HashMap<(Space, String), u64>,
    pub(crate) groups: BTreeMap<String, GroupState>,
    pub(crate) elections: HashMap<String, ElectionState>,
}

/// Ids of sessions and queue entries: unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh id (see [`NEXT_ID`]).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed) + 1
}

impl Inner {
    pub(crate) fn next_id(&mut self) -> u64 {
        next_id()
    }

    pub(crate) fn next_fence(&mut self, space: Space, name: &str) -> u64 {
        let f = self.fences.entry((space, name.to_owned())).or_insert(0);
        *f += 1;
        *f
    }
}

/// Shards of one shared state: enough that tasks working on different
/// names rarely meet on one `std::sync::Mutex`.
const SHARDS: usize = 32;

/// Everything one shared memory "server" holds, sharded by name: the state
/// of a lock, read/write lock, election or group lives in the shard its
/// name hashes to, so operations on different names take different locks.
/// Session records are copied into every shard (opening and ending a
/// session visits each shard; see `session.rs`). Lock order: one shard at
/// a time, then (for guarded writes) `data`.
pub(crate) struct Shared {
    shards: Box<[Mutex<Inner>]>,
    /// Persistent, documented: values of guarded writes.
    pub(crate) data: Mutex<HashMap<String, Vec<u8>>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            data: Mutex::default(),
        }
    }
}

impl Shared {
    /// The shard holding the state of `name` (a lock, election or group
    /// name; every space of one name shares a shard).
    pub(crate) fn shard(&self, name: &str) -> &Mutex<Inner> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    /// Every shard, in a fixed order.
    pub(crate) fn shards(&self) -> impl Iterator<Item = &Mutex<Inner>> {
        self.shards.iter()
    }

    /// The shard whose session records are authoritative for deadlines.
    pub(crate) fn sessions(&self) -> &Mutex<Inner> {
        &self.shards[0]
    }
}

/// The state, shared by `Arc` among coordinators of one name.
pub(crate) type State = Arc<Shared>;

static SHARED: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The state of `memory://<name>`: shared while any coordinator of that name
/// lives; a fresh private one for an empty name.
pub(crate) fn shared_state(name: &str) -> State {
    if name.is_empty() {
        return State::default();
    }
    let mut shared = SHARED.lock().unwrap();
    shared.retain(|_, w| w.strong_count() > 0);
    if let Some(s) = shared.get(name).and_then(Weak::upgrade) {
        return s;
    }
    let s = State::default();
    shared.insert(name.to_owned(), Arc::downgrade(&s));
    s
}

/// `Lost` unless session `id` is live in this shard.
pub(crate) fn check_alive(inner: &Inner, id: SessionId) -> Result<()> {
    if inner.sessions.contains_key(&id) {
        Ok(())
    } else {
        Err(quorate_core::Error::lost(format!(
            "session {id} has expired or was revoked"
        )))
    }
}

/// Remove `member` if it belongs to `session`; publishes `Left`.
pub(crate) fn remove_member(inner: &mut Inner, group: &str, member: &str, session: u64) {
    let Some(g) = inner.groups.get_mut(group) else {
        return;
    };
    if g.members.get(member).is_some_and(|m| m.session == session) {
        if let Some(m) = g.members.remove(member) {
            m.loss.fire("left the group");
        }
        g.publish(GroupChange::Delete {
            id: member.to_owned(),
        });
    }
    drop_if_idle(inner, group);
}

/// Forget a group with no members and no watchers.
pub(crate) fn drop_if_idle(inner: &mut Inner, group: &str) {
    if inner
        .groups
        .get(group)
        .is_some_and(|g| g.members.is_empty() && g.watchers.iter().all(|w| w.is_closed()))
    {
        inner.groups.remove(group);
    }
}
