//! Waiting for a queue key's deletion, on watch streams shared by all the
//! waiters of one coordinator: one stream per queue directory, opened by
//! the first waiter and kept while anyone waits there (and [`LINGER`]
//! after).
//!
//! Why not one watch per wait: etcd serves a new watch "from now" by
//! reading its current revision *before* it registers the watcher, so a
//! write committed in between makes the new watcher start in the past.
//! Such a watcher joins the "unsynced" group, which a loop catches up only
//! every 100 ms. Under contention (every hand-off is a write) that race is
//! frequent, and a FIFO queue stalls behind every waiter it hits: one lock
//! with 8 contenders did ~150 grants/s, almost all of its time in 50–100 ms
//! stalls. A stream that already stands delivers every later deletion as
//! it commits.
//!
//! A wait subscribes to the key, makes sure the directory's stream stands,
//! then reads the key: a deletion before that read is seen by the read,
//! one after it (at a higher revision) by the stream.
//!
//! A stream stays on the endpoint it was opened on. When the coordinator's
//! requests move elsewhere (its member failed a request or did not answer
//! in time), the stream is closed within a second and its waiters check
//! again and wait where requests go: a member cut off from its peers keeps
//! a stream open, and answers its progress requests, without ever seeing
//! another deletion.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, KeyValue, WatchFilterType, WatchOptions};
use quorate_core::backoff::Backoff;
use tokio::sync::watch as channel;

use crate::client::{revision, Shared};
use crate::watch::Watch;

/// How long a directory's stream stays open after its last waiter left (a
/// lock handed on at a steady pace keeps its stream).
const LINGER: Duration = Duration::from_secs(1);

/// What [`Deletions::wait`] learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// The awaited incarnation's deletion was seen: a delete event, or the
    /// key was absent or a later incarnation when read (both committed by
    /// the cluster), at `revision` or before.
    Seen {
        /// The revision of the deletion (or of the read that found the
        /// incarnation gone).
        revision: i64,
    },
    /// The wait ended without seeing it (fallback interval, broken watch).
    Unknown,
}

/// The shared deletion streams of one coordinator, by queue directory.
#[derive(Default)]
pub(crate) struct Deletions {
    hubs: StdMutex<HashMap<Vec<u8>, Arc<Hub>>>,
}

/// One directory's stream and the keys waited for under it.
struct Hub {
    /// The revision of the last deletion of each subscribed key, and how
    /// many subscriptions share it.
    keys: StdMutex<HashMap<Vec<u8>, KeyWatch>>,
    state: channel::Sender<HubState>,
    /// When the last subscription was taken or dropped.
    touched: StdMutex<Instant>,
    /// The endpoint the stream runs on (`usize::MAX` until it stands).
    endpoint: AtomicUsize,
}

impl Hub {
    /// Whether the coordinator's requests have moved to another endpoint
    /// since the stream was opened (its member failed a request or did
    /// not answer in time). A member cut off from its peers keeps the
    /// stream open and answers its progress requests, but sees no new
    /// deletion: such a stream is closed (its waiters check again and
    /// subscribe anew) and new waits open one where requests go.
    fn left_behind(&self, preferred: usize) -> bool {
        let endpoint = self.endpoint.load(Ordering::Relaxed);
        endpoint != usize::MAX && endpoint != preferred
    }
}

/// The revision of a key's last deletion, and how many subscriptions
/// share it.
type KeyWatch = (channel::Sender<i64>, usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HubState {
    /// The watch is being created.
    Opening,
    /// The watch stands: every deletion from now on is delivered.
    Open,
    /// The stream broke, could not be opened, or was retired: a waiter
    /// still subscribed checks again.
    Closed,
}

impl Deletions {
    /// Wait until the incarnation of `key` created at `create_revision`
    /// is deleted, or until `fallback` passes, or the stream breaks (after
    /// a back-off): the caller checks the state again in every case, so a
    /// missed or spurious wake-up costs one round trip, never correctness.
    ///
    /// The create revision matters: a queue key's name is the same every
    /// time its session enqueues, so the awaited entry may be gone and the
    /// same session's *next* entry, behind the caller in the queue, in its
    /// place; waiting for that one would wait for an entry that waits for
    /// the caller.
    pub(crate) async fn wait(
        self: &Arc<Self>,
        shared: &Arc<Shared>,
        key: &[u8],
        create_revision: i64,
        fallback: Duration,
        backoff: &mut Backoff,
    ) -> Deleted {
        let wait = async {
            let mut sub = self.subscribe(shared, key);
            if !sub.standing().await {
                tracing::debug!("deletion watch failed; checking again");
                return None;
            }
            let keys_only = Some(GetOptions::new().with_keys_only());
            let read = match shared
                .get(
                    "check predecessor",
                    &String::from_utf8_lossy(key),
                    keys_only,
                )
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "checking the predecessor failed");
                    return None;
                }
            };
            let read_at = revision(read.header()).ok()?;
            if read.kvs().first().map(KeyValue::create_revision) != Some(create_revision) {
                return Some(read_at);
            }
            sub.deleted_after(read_at).await
        };
        match tokio::time::timeout(fallback, wait).await {
            Ok(Some(revision)) => {
                backoff.reset();
                Deleted::Seen { revision }
            }
            Ok(None) => {
                backoff.wait().await;
                Deleted::Unknown
            }
            Err(_) => {
                tracing::debug!("no deletion within the fallback interval; checking again");
                Deleted::Unknown
            }
        }
    }

    /// Subscribe to the deletions of `key`, opening its directory's stream
    /// if nobody has.
    fn subscribe(self: &Arc<Self>, shared: &Arc<Shared>, key: &[u8]) -> Subscription {
        let dir = directory(key).to_vec();
        let mut hubs = self.hubs.lock().unwrap();
        let hub = match hubs.get(&dir) {
            Some(hub) if !hub.left_behind(shared.preferred()) => hub.clone(),
            // None, or one left behind (which its own task closes).
            _ => {
                let hub = Arc::new(Hub {
                    keys: StdMutex::new(HashMap::new()),
                    state: channel::Sender::new(HubState::Opening),
                    touched: StdMutex::new(Instant::now()),
                    endpoint: AtomicUsize::new(usize::MAX),
                });
                hubs.insert(dir.clone(), hub.clone());
                tokio::spawn(run(shared.clone(), self.clone(), dir, hub.clone()));
                hub
            }
        };
        // Registered under the directory lock, so that a retiring stream
        // (which checks for subscribers under it) cannot miss this one.
        let deleted = {
            let mut keys = hub.keys.lock().unwrap();
            let entry = keys
                .entry(key.to_vec())
                .or_insert_with(|| (channel::Sender::new(0), 0));
            entry.1 += 1;
            entry.0.subscribe()
        };
        *hub.touched.lock().unwrap() = Instant::now();
        drop(hubs);
        let state = hub.state.subscribe();
        Subscription {
            hub,
            key: key.to_vec(),
            deleted,
            state,
        }
    }

    /// Retire `hub` if nobody waits on it and nobody has for [`LINGER`].
    fn retire_if_idle(&self, dir: &[u8], hub: &Arc<Hub>) -> bool {
        let mut hubs = self.hubs.lock().unwrap();
        let idle =
            hub.keys.lock().unwrap().is_empty() && hub.touched.lock().unwrap().elapsed() >= LINGER;
        if idle {
            forget(&mut hubs, dir, hub);
        }
        idle
    }

    /// Take `hub` out (its stream ended), unless it was already replaced.
    fn remove(&self, dir: &[u8], hub: &Arc<Hub>) {
        forget(&mut self.hubs.lock().unwrap(), dir, hub);
    }
}

fn forget(hubs: &mut HashMap<Vec<u8>, Arc<Hub>>, dir: &[u8], hub: &Arc<Hub>) {
    if hubs.get(dir).is_some_and(|h| Arc::ptr_eq(h, hub)) {
        hubs.remove(dir);
    }
}

/// The directory of a queue key: everything up to its last `/`.
fn directory(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|b| *b == b'/') {
        Some(i) => &key[..=i],
        None => key,
    }
}

/// Runs a directory's stream: delivers deletions to subscribed keys until
/// the stream ends or the directory has been idle for [`LINGER`].
async fn run(shared: Arc<Shared>, deletions: Arc<Deletions>, dir: Vec<u8>, hub: Arc<Hub>) {
    let options = WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoPut]);
    let opened = match Watch::open(&shared, &dir, options).await {
        Ok(mut watch) => match watch.next(&shared).await {
            Some(resp) if resp.created() && !resp.canceled() => Some(watch),
            _ => None,
        },
        Err(e) => {
            tracing::debug!(error = %e, "opening a deletion watch failed");
            None
        }
    };
    let Some(mut watch) = opened else {
        deletions.remove(&dir, &hub);
        hub.state.send_replace(HubState::Closed);
        return;
    };
    hub.endpoint.store(watch.endpoint(), Ordering::Relaxed);
    hub.state.send_replace(HubState::Open);
    let mut idle = tokio::time::interval(LINGER);
    loop {
        // The pending `next` survives the idle ticks (its quiet-stream
        // probe keeps its own clock).
        let next = watch.next(&shared);
        tokio::pin!(next);
        let resp = loop {
            tokio::select! {
                resp = &mut next => break resp,
                _ = idle.tick() => {
                    if hub.left_behind(shared.preferred()) {
                        tracing::debug!(
                            dir = %String::from_utf8_lossy(&dir),
                            "requests moved to another endpoint; closing the deletion watch"
                        );
                        break None;
                    }
                    if deletions.retire_if_idle(&dir, &hub) {
                        hub.state.send_replace(HubState::Closed);
                        return;
                    }
                }
            }
        };
        let Some(resp) = resp.filter(|r| !r.canceled()) else {
            break;
        };
        let keys = hub.keys.lock().unwrap();
        for event in resp.events() {
            if event.event_type() != EventType::Delete {
                continue;
            }
            // A delete event's key carries the deletion's revision.
            if let Some((sender, _)) = event.kv().and_then(|kv| keys.get(kv.key())) {
                sender.send_replace(event.kv().map_or(0, KeyValue::mod_revision));
            }
        }
    }
    tracing::debug!(dir = %String::from_utf8_lossy(&dir), "deletion watch ended");
    deletions.remove(&dir, &hub);
    hub.state.send_replace(HubState::Closed);
}

/// One waiter's interest in one key's deletion.
struct Subscription {
    hub: Arc<Hub>,
    key: Vec<u8>,
    deleted: channel::Receiver<i64>,
    state: channel::Receiver<HubState>,
}

impl Subscription {
    /// Whether the directory's stream stands (waits while it opens).
    async fn standing(&mut self) -> bool {
        matches!(
            self.state
                .wait_for(|s| *s != HubState::Opening)
                .await
                .as_deref(),
            Ok(HubState::Open)
        )
    }

    /// The revision of the key's first deletion after `rev`; `None` if the
    /// stream ends first.
    async fn deleted_after(&mut self, rev: i64) -> Option<i64> {
        tokio::select! {
            deleted = self.deleted.wait_for(|d| *d > rev) => deleted.ok().map(|d| *d),
            _ = self.state.wait_for(|s| *s == HubState::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut keys = self.hub.keys.lock().unwrap();
        if let Some(entry) = keys.get_mut(&self.key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                keys.remove(&self.key);
            }
        }
        drop(keys);
        *self.hub.touched.lock().unwrap() = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::directory;

    #[test]
    fn a_queue_key_is_watched_through_its_directory() {
        assert_eq!(directory(b"ns/lock/a/0a1b"), b"ns/lock/a/");
        assert_eq!(directory(b"ns/lock/a//0a1b"), b"ns/lock/a//");
        assert_eq!(directory(b"plain"), b"plain");
    }
}
