//! `Coordinator::locks` for ZooKeeper: after a `sync`, the children of
//! `<ns>/lock/` (one directory per name) and the contender nodes in each,
//! in sequence order. The holders are the nodes the queue rule grants
//! (the first node, or every `__rlock__` node before the first `__lock__`
//! node), as kazoo's recipes and quorate's waiters decide it. Session: the
//! node's ephemeral owner (`0x…`, as `Session::id` writes it). Fence: the
//! node's czxid. A node records when it was *created* (queued), not when
//! it was granted, so `since` is `None`.

use quorate_core::inspect::{finish_listing, lock_from_fifo_queue, QueuedEntry};
use quorate_core::name::{decode, Space};
use quorate_core::{FencingToken, LockMode, LockState, Result};
use zookeeper_client::Client;

use crate::node::{children, sync, zk_error, Layout};
use crate::queue::{sequence, EXCLUSIVE, SHARED};

/// Every lock under the namespace whose name starts with `prefix`.
pub(crate) async fn locks(
    client: &Client,
    layout: &Layout,
    prefix: &str,
) -> Result<Vec<LockState>> {
    sync(client, layout.base()).await?;
    let root = format!("{}/{}", layout.base(), Space::Mutex.as_str());
    let mut out = Vec::new();
    for enc in children(client, &root).await? {
        let Some(name) = decode(&enc) else {
            tracing::debug!(%enc, "not a quorate lock directory: skipped");
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        let dir = format!("{root}/{enc}");
        let mut queue = Vec::new();
        for child in children(client, &dir).await? {
            let (mode, seq) = match (sequence(&child, &[SHARED]), sequence(&child, &[EXCLUSIVE])) {
                (Some(seq), _) => (LockMode::Shared, seq),
                (None, Some(seq)) => (LockMode::Exclusive, seq),
                (None, None) => continue,
            };
            let path = format!("{dir}/{child}");
            let stat = match client.check_stat(&path).await {
                Ok(Some(stat)) => stat,
                Ok(None) => continue,
                Err(e) => return Err(zk_error("exists", &path, e)),
            };
            let entry = QueuedEntry {
                session: format!("{:#x}", stat.ephemeral_owner),
                fence: FencingToken::try_from(stat.czxid).ok(),
            };
            queue.push((seq, mode, entry));
        }
        queue.sort_by_key(|(seq, _, _)| *seq);
        let queue = queue.into_iter().map(|(_, m, e)| (m, e)).collect();
        out.push(lock_from_fifo_queue(name, queue));
    }
    Ok(finish_listing(out, prefix))
}
