//! Watches: a stream that notices a silent member (the deletion streams of
//! `deletions` run on it), and following a prefix from a listed revision
//! with no gap and no duplicate (group events, election observers), across
//! broken streams and compaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, GetOptions, KeyValue, WatchOptions, WatchResponse, WatchStream};
use quorate_core::backoff::Backoff;
use quorate_core::Result;

use crate::client::{revision, Shared};

/// How long a watch stream may stay quiet before its member is asked for
/// progress (a live member answers at once).
const QUIET: Duration = Duration::from_secs(5);

/// A watch stream and the endpoint it runs on.
pub(crate) struct Watch {
    endpoint: usize,
    stream: WatchStream,
}

impl Watch {
    /// Open a watch on `key` (a prefix or range as `options` say).
    ///
    /// # Errors
    ///
    /// Creating the stream failed on every endpoint.
    pub(crate) async fn open(shared: &Shared, key: &[u8], options: WatchOptions) -> Result<Watch> {
        let (endpoint, stream) = shared.watch("watch", key, options).await?;
        Ok(Watch { endpoint, stream })
    }

    /// The endpoint the stream runs on.
    pub(crate) fn endpoint(&self) -> usize {
        self.endpoint
    }

    /// The next response, or `None` once the stream broke or its member
    /// stopped answering (that endpoint is then passed over, so the next
    /// watch opens elsewhere). A quiet stream is probed with a progress
    /// request rather than trusted for ever: a paused or partitioned
    /// member would otherwise hold a watcher until TCP gives up.
    pub(crate) async fn next(&mut self, shared: &Shared) -> Option<WatchResponse> {
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
