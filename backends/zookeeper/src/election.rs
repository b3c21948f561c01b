//! Leader election: candidates are ephemeral sequential nodes
//! `<ns>/election/<enc(name)>/<uuidhex>__lock__<seq>` holding the
//! candidate's value; the lowest is the leader, and every other candidate
//! watches its predecessor (the queue of [`crate::queue`], so kazoo's
//! `Election` recipe on the same path competes fairly). The fencing token
//! is the czxid of the leader's node.
//!
//! `observe` sets a persistent recursive watch on the election directory
//! before reading it, and after every event (and every reconnection)
//! recomputes the leader from the current state, reporting it when it
//! differs from the last one reported: never a stale leader after a newer
//! one, never the same leader twice in a row.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{HeldLeadership, Leader};
use quorate_core::{Error, FencingToken, Result};
use tokio::sync::mpsc;
use zookeeper_client as zk;
use zookeeper_client::{Client, EventType, SessionState};

use crate::node::{children, zk_error, SharedClient};
use crate::queue::{self, Spec, EXCLUSIVE};
use crate::session::{is_session_gone, watch_own_node, SessionShared};

/// Campaign and wait until elected.
///
/// # Cancel safety
///
/// As [`queue::acquire`]: a dropped campaign withdraws its node.
pub(crate) async fn campaign(
    shared: &Arc<SessionShared>,
    name: &str,
    value: &[u8],
    loss: LossNotifier,
) -> Result<Box<dyn HeldLeadership>> {
    let spec = Spec {
        dir: shared.layout.election_dir(name),
        marker: EXCLUSIVE,
        blocked_by: &[EXCLUSIVE],
    };
    let grant = queue::acquire(shared, &spec, value, true)
        .await?
        .ok_or_else(|| Error::backend("a waiting campaign returned without a grant"))?;
    watch_own_node(shared, grant.path.clone(), loss);
    Ok(Box::new(ZkLeadership {
        shared: shared.clone(),
        path: grant.path,
        czxid: grant.stat.czxid,
        version: StdMutex::new(grant.stat.version),
    }))
}

/// The current leader of the election at `dir`.
pub(crate) async fn leader(client: &Client, dir: &str) -> Result<Option<Leader>> {
    loop {
        let candidates = queue::in_order(&children(client, dir).await?, &[EXCLUSIVE]);
        let Some((_, first)) = candidates.first() else {
            return Ok(None);
        };
        let path = format!("{dir}/{first}");
        match client.get_data(&path).await {
            Ok((value, stat)) => {
                return Ok(Some(Leader {
                    value,
                    fence: FencingToken(stat.czxid as u64),
                }))
            }
            Err(zk::Error::NoNode) => continue, // resigned meanwhile: look again
            Err(e) => return Err(zk_error("read leader", &path, e)),
        }
    }
}

struct ZkLeadership {
    shared: Arc<SessionShared>,
    path: String,
    czxid: i64,
    version: StdMutex<i32>,
}

#[async_trait]
impl HeldLeadership for ZkLeadership {
    fn fence(&self) -> FencingToken {
        FencingToken(self.czxid as u64)
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let client = self.shared.client()?;
        let version = *self.version.lock().unwrap();
        match client.set_data(&self.path, value, Some(version)).await {
            Ok(stat) => {
                *self.version.lock().unwrap() = stat.version;
                Ok(())
            }
            Err(zk::Error::NoNode | zk::Error::BadVersion) => Err(Error::not_held(format!(
                "candidate node `{}` is gone: no longer leader",
                self.path
            ))),
            Err(e) => Err(zk_error("proclaim", &self.path, e)),
        }
    }

    async fn is_leader(&self) -> Result<bool> {
        let Ok(client) = self.shared.client() else {
            return Ok(false); // the session is closed, and its nodes with it
        };
        // Linearizable: a follower answers only once caught up with the
        // leader.
        if !crate::session::sync_with_leader(&client, &self.path).await? {
            return Ok(false);
        }
        match client.check_stat(&self.path).await {
            // Once the lowest, a node stays the lowest until deleted.
            Ok(Some(stat)) => {
                Ok(stat.czxid == self.czxid && stat.ephemeral_owner == self.shared.id)
            }
            Ok(None) => Ok(false),
            Err(e) if is_session_gone(&e) => Ok(false),
            Err(e) => Err(zk_error("exists", &self.path, e)),
        }
    }

    async fn resign(&self) -> Result<()> {
        let Ok(client) = self.shared.client() else {
            return Ok(()); // the session is closed: the node went with it
        };
        queue::delete_quietly(&client, &self.path).await
    }
}

type Leaders = mpsc::UnboundedSender<Result<Option<Leader>>>;

/// Observe the election at `dir`: the current leader, then every change.
pub(crate) async fn observe(
    reads: Arc<SharedClient>,
    dir: String,
) -> Result<BoxStream<'static, Result<Option<Leader>>>> {
    let client = reads.client().await?;
    let watcher = crate::node::persistent_watch(&client, &dir).await?;
    crate::node::sync(&client, &dir).await?;
    let current = leader(&client, &dir).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Ok(current.clone()));
    tokio::spawn(follow(reads, dir, client, watcher, current, tx));
    Ok(
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed(),
    )
}

/// The observer task; ends when the stream is dropped.
async fn follow(
    reads: Arc<SharedClient>,
    dir: String,
    mut client: Client,
    mut watcher: zk::PersistentWatcher,
    mut last: Option<Leader>,
    tx: Leaders,
) {
    let mut disconnected = false;
    loop {
        let event = tokio::select! {
            e = watcher.changed() => e,
            _ = tx.closed() => return,
        };
        let look = match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::Disconnected => {
                    disconnected = true;
                    false
                }
                SessionState::SyncConnected | SessionState::ConnectedReadOnly if disconnected => {
                    // zookeeper-client 0.11.2 does not re-register persistent
                    // watches on reconnection: add ours again before looking.
                    match crate::node::persistent_watch(&client, &dir).await {
                        Ok(w) => {
                            watcher = w;
                            disconnected = false;
                            true
                        }
                        Err(e) => {
                            tracing::debug!(%dir, error = %e, "election observer: re-adding the watch");
                            false
                        }
                    }
                }
                s if s.is_terminated() => {
                    loop {
                        let rewatched = async {
                            let c = reads.client().await?;
                            let w = crate::node::persistent_watch(&c, &dir).await?;
                            Ok::<_, Error>((c, w))
                        };
                        match rewatched.await {
                            Ok((c, w)) => {
                                client = c;
                                watcher = w;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(%dir, error = %e, "election observer: reconnecting");
                                tokio::select! {
                                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                                    _ = tx.closed() => return,
                                }
                            }
                        }
                    }
                    true
                }
                _ => false,
            },
            _ => true,
        };
        if !look {
            continue;
        }
        // Retry reads that fail with the connection; the session's own
        // events end the wait otherwise.
        loop {
            match leader(&client, &dir).await {
                Ok(now) => {
                    if now != last {
                        last = now.clone();
                        let _ = tx.send(Ok(now));
                    }
                    break;
                }
                Err(e) if e.kind() == quorate_core::ErrorKind::Unavailable => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = tx.closed() => return,
                    }
                }
                Err(e) => {
                    tracing::debug!(%dir, error = %e, "election observer: read failed");
                    break;
                }
            }
        }
    }
}
