//! The shared in-process state behind every `memory://` coordinator of one
//! name, and the registry that lets coordinators share it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use quorate_core::loss::LossNotifier;
use quorate_core::spi::{GroupEvent, Leader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::queue::LockQueue;

/// Which queue namespace a lock lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Space {
    /// Mutexes and read/write locks: one queue per name.
    Mutex,
    Election,
}

impl Space {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Space::Mutex => "lock",
            Space::Election => "election",
        }
    }
}

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
    pub(crate) watchers: Vec<mpsc::UnboundedSender<GroupEvent>>,
}

impl GroupState {
    pub(crate) fn publish(&mut self, event: GroupEvent) {
        self.watchers.retain(|w| w.send(event.clone()).is_ok());
    }
}

#[derive(Default)]
pub(crate) struct ElectionState {
    /// The value of each candidate entry id.
    pub(crate) values: HashMap<u64, Vec<u8>>,
    pub(crate) observers: Vec<mpsc::UnboundedSender<Option<Leader>>>,
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
