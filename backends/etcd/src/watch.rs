//! Watches: waiting for one key's deletion (queue waiters), and following a
//! prefix from a listed revision with no gap and no duplicate (group
//! events, election observers), across broken streams and compaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Event, EventType, GetOptions, KeyValue, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};
use quorate_core::backoff::Backoff;
use quorate_core::Result;

use crate::client::{revision, Shared};

/// Wait until `key` is deleted, or until `fallback` passes, or the watch
/// breaks (after a back-off): the caller checks the state again in every
/// case, so a missed or spurious wake-up costs one round trip, never
/// correctness.
///
/// The watch starts at the current revision, not at the revision the
/// caller saw: etcd serves a watch from a past revision from its "unsynced"
/// group, which a loop catches up only every 100 ms, and under contention
/// the revision has always moved on, so every hand-off would wait for that
/// loop. Instead, once the watch is created, the key is checked again: a
/// deletion before that check is seen by the check, one after it by the
/// watch.
pub(crate) async fn wait_deleted(
    shared: &Shared,
    key: Vec<u8>,
    fallback: Duration,
    backoff: &mut Backoff,
) -> Deleted {
    let options = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
    let wait = async {
        let mut watch = match Watch::open(shared, &key, options).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "watch failed; checking again");
                return None;
            }
        };
        loop {
            let resp = watch.next(shared).await?;
            if resp.canceled() {
                return None;
            }
            if resp.created() {
                let key = String::from_utf8_lossy(&key);
                let count_only = Some(GetOptions::new().with_count_only());
                match shared.get("check predecessor", &key, count_only).await {
                    Ok(r) if r.count() == 0 => return revision(r.header()).ok(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "checking the predecessor failed");
                        return None;
                    }
                }
            }
            if let Some(e) = resp
                .events()
                .iter()
                .find(|e| e.event_type() == EventType::Delete)
            {
                // A delete event's key carries the deletion's revision.
                return e.kv().map(|kv| kv.mod_revision());
            }
        }
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
            tracing::debug!("no event within the fallback interval; checking again");
            Deleted::Unknown
        }
    }
}

/// What [`wait_deleted`] learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deleted {
    /// The key's deletion was seen: a delete event, or the key was absent
    /// once the watch stood (both committed by the cluster), at
    /// `revision` or before.
    Seen {
        /// The revision of the deletion (or of the read that found the key
        /// absent).
        revision: i64,
    },
    /// The wait ended without seeing it (fallback interval, broken watch).
    Unknown,
}

/// How long a watch stream may stay quiet before its member is asked for
/// progress (a live member answers at once).
const QUIET: Duration = Duration::from_secs(5);

/// A watch stream and the endpoint it runs on.
struct Watch {
    endpoint: usize,
    stream: WatchStream,
}

impl Watch {
    async fn open(shared: &Shared, key: &[u8], options: WatchOptions) -> Result<Watch> {
        let (endpoint, stream) = shared.watch("watch", key, options).await?;
        Ok(Watch { endpoint, stream })
    }

    /// The next response, or `None` once the stream broke or its member
    /// stopped answering (that endpoint is then passed over, so the next
    /// watch opens elsewhere). A quiet stream is probed with a progress
    /// request rather than trusted for ever: a paused or partitioned
    /// member would otherwise hold a watcher until TCP gives up.
    async fn next(&mut self, shared: &Shared) -> Option<WatchResponse> {
        let message = match tokio::time::timeout(QUIET, self.stream.message()).await {
            Ok(m) => m,
            Err(_) => {
                if self.stream.request_progress().await.is_err() {
                    return None;
                }
                match tokio::time::timeout(shared.request_timeout, self.stream.message()).await {
                    Ok(m) => m,
                    Err(_) => {
                        tracing::debug!("the watch's member stopped answering; moving on");
                        shared.pass_over(self.endpoint);
                        return None;
                    }
                }
            }
        };
        match message {
            Ok(Some(resp)) => Some(resp),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "watch broke");
                None
            }
        }
    }
}

/// What a [`PrefixWatch`] reports next.
pub(crate) enum Batch {
    /// The events of one revision, in order.
    Changes(Vec<Event>),
    /// The history needed to resume was compacted away: every key of the
    /// prefix at a newer revision, to diff against.
    Resync(Vec<KeyValue>),
}

/// A prefix followed from a listed revision: [`PrefixWatch::start`] lists
/// the keys at revision R, then [`PrefixWatch::next`] reports every change
/// after R exactly once, resuming a broken watch from the last revision it
/// reported, and re-listing when that history was compacted.
pub(crate) struct PrefixWatch {
    shared: Arc<Shared>,
    prefix: String,
    /// Every change up to this revision has been reported.
    rev: i64,
    stream: Option<Watch>,
    pending: VecDeque<Vec<Event>>,
    backoff: Backoff,
}

impl PrefixWatch {
    /// List the prefix now; changes after that listing follow from
    /// [`PrefixWatch::next`].
    pub(crate) async fn start(
        shared: Arc<Shared>,
        prefix: String,
    ) -> Result<(PrefixWatch, Vec<KeyValue>)> {
        let (rev, kvs) = list(&shared, &prefix).await?;
        Ok((
            PrefixWatch {
                shared,
                prefix,
                rev,
                stream: None,
                pending: VecDeque::new(),
                backoff: Backoff::default(),
            },
            kvs,
        ))
    }

    /// The next change. Waits as long as needed; connection trouble is
    /// retried with back-off, never reported.
    pub(crate) async fn next(&mut self) -> Batch {
        loop {
            if let Some(events) = self.pending.pop_front() {
                return Batch::Changes(events);
            }
            let Some(watch) = self.stream.as_mut() else {
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(self.rev + 1);
                match Watch::open(&self.shared, self.prefix.as_bytes(), options).await {
                    Ok(w) => self.stream = Some(w),
                    Err(e) => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "watch failed; retrying");
                        self.backoff.wait().await;
                    }
                }
                continue;
            };
            match watch.next(&self.shared).await {
                Some(resp) if resp.canceled() => {
                    self.stream = None;
                    if resp.compact_revision() > 0 {
                        tracing::debug!(prefix = %self.prefix, "watch history compacted; re-listing");
                        match list(&self.shared, &self.prefix).await {
                            Ok((rev, kvs)) => {
                                self.rev = rev;
                                return Batch::Resync(kvs);
                            }
                            Err(e) => tracing::debug!(error = %e, "re-list failed; retrying"),
                        }
                    }
                    self.backoff.wait().await;
                }
                Some(resp) => {
                    self.backoff.reset();
                    // Skip what an earlier stream already reported (a
                    // resumed watch starts after it, so this is a guard).
                    let floor = self.rev;
                    for event in resp.events() {
                        let Some(rev) = event.kv().map(KeyValue::mod_revision) else {
                            continue;
                        };
                        if rev <= floor {
                            continue;
                        }
                        match self.pending.back_mut() {
                            Some(batch)
                                if batch
                                    .last()
                                    .and_then(|e| e.kv())
                                    .map(KeyValue::mod_revision)
                                    == Some(rev) =>
                            {
                                batch.push(event.clone());
                            }
                            _ => self.pending.push_back(vec![event.clone()]),
                        }
                        self.rev = rev;
                    }
                }
                None => {
                    tracing::debug!(prefix = %self.prefix, rev = self.rev, "watch broke; resuming");
                    self.stream = None;
                    self.backoff.wait().await;
                }
            }
        }
    }
}

/// Every key of `prefix` and the revision of that listing.
async fn list(shared: &Shared, prefix: &str) -> Result<(i64, Vec<KeyValue>)> {
    let mut resp = shared
        .get("list", prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = revision(resp.header())?;
    Ok((rev, resp.take_kvs()))
}
