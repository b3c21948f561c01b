//! `Coordinator::locks` for etcd: one linearizable range read of
//! `<ns>/lock/`. Each name's queue is its keys in create-revision order;
//! the holders are the keys the queue rule grants (the first key, or every
//! reader before the first exclusive key), exactly as a waiter decides it
//! holds. Session: the key's lease in hex (also the session id of an
//! `etcdctl lock` holder's lease). Fence: the key's create revision. etcd
//! records no wall-clock time, so `since` is `None`.

use std::collections::BTreeMap;

use etcd_client::GetOptions;
use quorate_core::inspect::{finish_listing, lock_from_fifo_queue, QueuedEntry};
use quorate_core::name::{decode, encode, Space};
use quorate_core::{FencingToken, LockMode, LockState, Result};

use crate::client::Shared;
use crate::keys::{lease_hex, prefix_end};

/// The reader marker between a name's prefix and the lease (`read/`).
const READ: &str = "read/";

/// Every lock under the namespace whose name starts with `prefix`.
pub(crate) async fn locks(shared: &Shared, prefix: &str) -> Result<Vec<LockState>> {
    let root = shared.layout.subspace(Space::Mutex.as_str());
    // `encode` works byte by byte, so the encoding of a prefix is a prefix
    // of the encoding of every name it starts, except for the names `.` and
    // `..`, which are encoded differently from the dots that start a name.
    let range = if prefix.is_empty() || prefix == "." || prefix == ".." {
        root.clone()
    } else {
        format!("{root}{}", encode(prefix))
    };
    let end = prefix_end(range.as_bytes());
    let resp = shared
        .get(
            "list locks",
            &range,
            Some(GetOptions::new().with_range(end).with_keys_only()),
        )
        .await?;
    let mut queues: BTreeMap<String, Vec<(i64, LockMode, QueuedEntry)>> = BTreeMap::new();
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let Some(rest) = key.strip_prefix(&root) else {
            continue;
        };
        let Some((enc, tail)) = rest.split_once('/') else {
            continue;
        };
        let Some(name) = decode(enc) else {
            tracing::debug!(%key, "not a quorate lock key: skipped");
            continue;
        };
        let (mode, lease) = match tail.strip_prefix(READ) {
            Some(lease) => (LockMode::Shared, lease),
            None => (LockMode::Exclusive, tail),
        };
        if lease.is_empty() || !lease.bytes().all(|b| b.is_ascii_hexdigit()) {
            tracing::debug!(%key, "not a queue entry: skipped");
            continue;
        }
        let session = if kv.lease() != 0 {
            lease_hex(kv.lease())
        } else {
            lease.to_owned()
        };
        let entry = QueuedEntry {
            session,
            fence: FencingToken::try_from(kv.create_revision()).ok(),
        };
        queues
            .entry(name)
            .or_default()
            .push((kv.create_revision(), mode, entry));
    }
    let mut out = Vec::with_capacity(queues.len());
    for (name, mut queue) in queues {
        queue.sort_by_key(|(rev, _, _)| *rev);
        let queue = queue.into_iter().map(|(_, m, e)| (m, e)).collect();
        out.push(lock_from_fifo_queue(name, queue));
    }
    Ok(finish_listing(out, prefix))
}
