//! The FIFO grant queue behind mutexes, read/write locks and elections.
//!
//! Entries are granted strictly in arrival order: an exclusive entry only at
//! the head of the queue, a shared entry when no exclusive entry is ahead of
//! it. So a waiting writer blocks every later reader, and removing any entry
//! (release, timeout, dropped waiter) re-evaluates the queue at once.

use std::collections::VecDeque;

use quorate_core::loss::LossNotifier;
use quorate_core::Leader;
use quorate_core::{Error, FencingToken, Result};
use tokio::sync::oneshot;

use crate::state::{check_alive, Inner, SessionId, Space, State};

pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) session: SessionId,
    pub(crate) exclusive: bool,
    /// `Some` once granted.
    pub(crate) fence: Option<u64>,
    /// The wall-clock time of the grant (for `Coordinator::locks`).
    pub(crate) granted_at: Option<std::time::SystemTime>,
    pub(crate) loss: LossNotifier,
    /// Told the fence when granted while waiting.
    pub(crate) notify: Option<oneshot::Sender<u64>>,
}

#[derive(Default)]
pub(crate) struct LockQueue {
    pub(crate) entries: VecDeque<Entry>,
}

impl LockQueue {
    /// Whether a new entry could be granted right now.
    pub(crate) fn free_for(&self, exclusive: bool) -> bool {
        if exclusive {
            self.entries.is_empty()
        } else {
            self.entries.iter().all(|e| !e.exclusive)
        }
    }

    pub(crate) fn is_granted(&self, id: u64) -> bool {
        self.entries.iter().any(|e| e.id == id && e.fence.is_some())
    }
}

/// After any change to the queue of `(space, name)`: grant what may now be
/// granted, and tell election observers about a new leader.
pub(crate) fn changed(inner: &mut Inner, space: Space, name: &str) {
    regrant(inner, space, name);
    if space == Space::Election {
        publish_leader(inner, name);
    }
}

/// Grant every entry of `(space, name)` that may now be granted, in order.
fn regrant(inner: &mut Inner, space: Space, name: &str) {
    let key = (space, name.to_owned());
    let Some(queue) = inner.queues.get(&key) else {
        return;
    };
    let mut to_grant = Vec::new();
    for (i, e) in queue.entries.iter().enumerate() {
        let grantable = if e.exclusive {
            i == 0
        } else {
            queue.entries.iter().take(i).all(|x| !x.exclusive)
        };
        if !grantable {
            break;
        }
        if e.fence.is_none() {
            to_grant.push(e.id);
        }
    }
    for id in to_grant {
        let fence = inner.next_fence(space, name);
        let queue = inner.queues.get_mut(&key).expect("queue exists");
        let e = queue
            .entries
            .iter_mut()
            .find(|e| e.id == id)
            .expect("entry exists");
        e.fence = Some(fence);
        e.granted_at = Some(std::time::SystemTime::now());
        if let Some(tx) = e.notify.take() {
            // A closed receiver means the waiter was dropped; its drop guard
            // removes the entry right after, under the same lock order.
            let _ = tx.send(fence);
        }
    }
}

/// Remove entry `id`; returns whether it was there. Re-grants the queue.
pub(crate) fn remove(inner: &mut Inner, space: Space, name: &str, id: u64) -> bool {
    let key = (space, name.to_owned());
    let Some(queue) = inner.queues.get_mut(&key) else {
        return false;
    };
    let before = queue.entries.len();
    queue.entries.retain(|e| e.id != id);
    let removed = queue.entries.len() != before;
    if queue.entries.is_empty() {
        inner.queues.remove(&key);
    }
    if removed {
        changed(inner, space, name);
    }
    removed
}

/// Enqueue an entry; returns its id, the fence if granted at once, and the
/// receiver that learns the fence later otherwise. With `wait == false` and
/// the lock not free, nothing is enqueued and `None` is returned.
pub(crate) fn enqueue(
    inner: &mut Inner,
    space: Space,
    name: &str,
    session: SessionId,
    exclusive: bool,
    wait: bool,
    loss: LossNotifier,
) -> Option<(u64, Result<u64, oneshot::Receiver<u64>>)> {
    let key = (space, name.to_owned());
    let free = inner.queues.get(&key).is_none_or(|q| q.free_for(exclusive));
    if !free && !wait {
        return None;
    }
    let id = inner.next_id();
    let (tx, rx) = oneshot::channel();
    inner
        .queues
        .entry(key.clone())
        .or_default()
        .entries
        .push_back(Entry {
            id,
            session,
            exclusive,
            fence: None,
            granted_at: None,
            loss,
            notify: Some(tx),
        });
    changed(inner, space, name);
    let queue = &inner.queues[&key];
    let entry = queue
        .entries
        .iter()
        .find(|e| e.id == id)
        .expect("just pushed");
    Some((id, entry.fence.ok_or(rx)))
}

/// The leader of `name` now: the granted head of its queue.
pub(crate) fn current_leader(inner: &Inner, name: &str) -> Option<Leader> {
    let queue = inner.queues.get(&(Space::Election, name.to_owned()))?;
    let head = queue.entries.front()?;
    // Counters start at 1, so a granted head always has a token.
    let fence = FencingToken::new(head.fence?).ok()?;
    let value = inner.elections.get(name)?.values.get(&head.id)?.clone();
    Some(Leader { value, fence })
}

/// Tell observers if the leader (or its value) changed; forget the values
/// of candidates that are gone.
pub(crate) fn publish_leader(inner: &mut Inner, name: &str) {
    let leader = current_leader(inner, name);
    let live: Vec<u64> = inner
        .queues
        .get(&(Space::Election, name.to_owned()))
        .map(|q| q.entries.iter().map(|e| e.id).collect())
        .unwrap_or_default();
    let Some(state) = inner.elections.get_mut(name) else {
        return;
    };
    state.values.retain(|id, _| live.contains(id));
    if state.last_published != leader {
        state.last_published = leader.clone();
        state.observers.retain(|o| o.send(leader.clone()));
    }
    if state.values.is_empty() && state.observers.is_empty() {
        inner.elections.remove(name);
    }
}

/// Removes a queue entry when dropped while armed: the cancel-safety of a
/// dropped `lock()` (or `campaign()`) future.
pub(crate) struct DequeueOnDrop {
    pub(crate) state: State,
    pub(crate) space: Space,
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) armed: bool,
}

impl Drop for DequeueOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let mut inner = self.state.shard(&self.name).lock().unwrap();
            remove(&mut inner, self.space, &self.name, self.id);
        }
    }
}

/// Enqueue session `session` of `state` in `space`, then wait for the
/// grant; dropping the future at any point removes the entry.
pub(crate) async fn wait_for_grant(
    (state, session): (&State, SessionId),
    space: Space,
    name: &str,
    exclusive: bool,
    wait: bool,
    loss: LossNotifier,
    on_enqueue: impl FnOnce(&mut Inner, u64),
) -> Result<Option<(u64, FencingToken)>> {
    let (id, granted) = {
        let mut inner = state.shard(name).lock().unwrap();
        check_alive(&inner, session)?;
        match enqueue(&mut inner, space, name, session, exclusive, wait, loss) {
            None => return Ok(None),
            Some((id, granted)) => {
                on_enqueue(&mut inner, id);
                (id, granted)
            }
        }
    };
    let mut dequeue = DequeueOnDrop {
        state: state.clone(),
        space,
        name: name.to_owned(),
        id,
        armed: true,
    };
    let fence = match granted {
        Ok(f) => f,
        Err(rx) => rx
            .await
            .map_err(|_| Error::lost("the session ended while waiting"))?,
    };
    dequeue.armed = false;
    Ok(Some((id, FencingToken::new(fence)?)))
}
