//! `Coordinator::locks` for ZooKeeper: after a `sync`, the children of
//! `<ns>/lock/` (one directory per name) and the contender nodes in each,
//! in sequence order. The holders are the nodes the queue rule grants
//! (the first node, or every `__rlock__` node before the first `__lock__`
//! node), as kazoo's recipes and quorate's waiters decide it. Session: the
//! node's ephemeral owner (`0x…`, as `Session::id` writes it). Fence: the
//! node's czxid. A node records when it was *created* (queued), not when
//! it was granted, so `since` is `None`. The reads after the `sync` are
//! pipelined ([`IN_FLIGHT`] at a time): one session's requests are served
//! in order by one server, so every read still sees at least what the
//! `sync` made current, as when they were sent one by one.

use futures::stream::{self, StreamExt, TryStreamExt};
use quorate_core::inspect::{finish_listing, lock_from_fifo_queue, QueuedEntry};
use quorate_core::name::{decode, Space};
use quorate_core::{FencingToken, LockMode, LockState, Result};
use zookeeper_client::Client;

use crate::node::{children, sync, zk_error, Layout};
use crate::queue::{sequence, EXCLUSIVE, SHARED};

/// How many requests the listing keeps in flight on the connection: the
/// client pipelines them, so a listing costs about one round trip per this
/// many nodes instead of one per node.
const IN_FLIGHT: usize = 64;

/// Every lock under the namespace whose name starts with `prefix`.
pub(crate) async fn locks(
    client: &Client,
    layout: &Layout,
    prefix: &str,
) -> Result<Vec<LockState>> {
    sync(client, layout.base()).await?;
    let root = format!("{}/{}", layout.base(), Space::Mutex.as_str());
    let mut names = Vec::new();
    for enc in children(client, &root).await? {
        match decode(&enc) {
            Some(name) if name.starts_with(prefix) => names.push((name, format!("{root}/{enc}"))),
            Some(_) => {}
            None => tracing::debug!(%enc, "not a quorate lock directory: skipped"),
        }
    }
    let out: Vec<LockState> = stream::iter(names)
        .map(|(name, dir)| async move {
            let queue = queue_of(client, &dir).await?;
            Ok::<_, quorate_core::Error>(lock_from_fifo_queue(name, queue))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(finish_listing(out, prefix))
}

/// The contender nodes of one lock directory, in sequence order.
async fn queue_of(client: &Client, dir: &str) -> Result<Vec<(LockMode, QueuedEntry)>> {
    let mut nodes = Vec::new();
    for child in children(client, dir).await? {
        match (sequence(&child, &[SHARED]), sequence(&child, &[EXCLUSIVE])) {
            (Some(seq), _) => nodes.push((seq, LockMode::Shared, format!("{dir}/{child}"))),
            (None, Some(seq)) => nodes.push((seq, LockMode::Exclusive, format!("{dir}/{child}"))),
            (None, None) => {}
        }
    }
    nodes.sort_by_key(|(seq, _, _)| *seq);
    let stats: Vec<Option<(LockMode, QueuedEntry)>> = stream::iter(nodes)
        .map(|(_, mode, path)| async move {
            match client.check_stat(&path).await {
                Ok(Some(stat)) => Ok(Some((
                    mode,
                    QueuedEntry {
                        session: format!("{:#x}", stat.ephemeral_owner),
                        fence: FencingToken::try_from(stat.czxid).ok(),
                    },
                ))),
                Ok(None) => Ok(None),
                Err(e) => Err(zk_error("exists", &path, e)),
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(stats.into_iter().flatten().collect())
}
