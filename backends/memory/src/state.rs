//! The shared in-process state behind every `memory://` coordinator of one
//! name, and the registry that lets coordinators share it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use futures::stream::BoxStream;
use futures::StreamExt;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{GroupChange, Leader};
use quorate_core::Result;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::queue::LockQueue;

/// Which queue namespace a lock lives in (core's one definition).
pub(crate) use quorate_core::name::Space;

pub(crate) type SessionId = u64;

pub(crate) struct SessionRecord {
    pub(crate) deadline: Instant,
    pub(crate) loss: LossNotifier,
}

pub(crate) struct MemberRecord {
    pub(crate) session: SessionId,
    pub(crate) capabilities: serde_json::Value,
    pub(crate) loss: LossNotifier,
}

#[derive(Default)]
pub(crate) struct GroupState {
    pub(crate) members: BTreeMap<String, MemberRecord>,
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
/// under the state lock, so no change falls between the two).
pub(crate) fn feed<T: Send + 'static>(
    state: &State,
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
        move |rx: &mut mpsc::Receiver<T>| {
            let inner = state.lock().unwrap();
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

/// Everything one shared memory "server" holds.
#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) next_id: u64,
    pub(crate) sessions: HashMap<SessionId, SessionRecord>,
    pub(crate) queues: BTreeMap<(Space, String), LockQueue>,
    /// Persistent, documented: the last fencing token of each name.
    pub(crate) fences: HashMap<(Space, String), u64>,
    pub(crate) groups: BTreeMap<String, GroupState>,
    pub(crate) elections: HashMap<String, ElectionState>,
    /// Persistent, documented: values of guarded writes.
    pub(crate) data: HashMap<String, Vec<u8>>,
}

impl Inner {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn next_fence(&mut self, space: Space, name: &str) -> u64 {
        let f = self.fences.entry((space, name.to_owned())).or_insert(0);
        *f += 1;
        *f
    }
}

/// The state, shared by `Arc` among coordinators of one name.
pub(crate) type State = Arc<Mutex<Inner>>;

static SHARED: LazyLock<Mutex<HashMap<String, Weak<Mutex<Inner>>>>> =
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
