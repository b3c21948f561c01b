//! The FIFO grant queue behind mutexes, read/write locks and elections.
//!
//! Entries are granted strictly in arrival order: an exclusive entry only at
//! the head of the queue, a shared entry when no exclusive entry is ahead of
//! it. So a waiting writer blocks every later reader, and removing any entry
//! (release, timeout, dropped waiter) re-evaluates the queue at once.

use std::collections::VecDeque;

use quorate_core::loss::LossNotifier;
use tokio::sync::oneshot;

use crate::state::{Inner, SessionId, Space};

pub(crate) struct Entry {
    pub(crate) id: u64,
    pub(crate) session: SessionId,
    pub(crate) exclusive: bool,
    /// `Some` once granted.
    pub(crate) fence: Option<u64>,
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
        crate::election::publish_leader(inner, name);
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
