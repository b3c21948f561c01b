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

use quorate_core::backend::async_trait;
use quorate_core::backoff::Backoff;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{HeldLeadership, RawObserve};
use quorate_core::watch::raw_changes;
use quorate_core::Leader;
use quorate_core::{Error, FencingToken, Result};
use zookeeper_client as zk;
use zookeeper_client::{Client, EventType, SessionState};

use crate::node::{children, zk_error, SharedClient};
use crate::queue::{self, Spec, EXCLUSIVE};
use crate::session::{watch_own_node, SessionShared};

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
    let fence = FencingToken::try_from(grant.stat.czxid)?;
    watch_own_node(shared, grant.path.clone(), loss);
    Ok(Box::new(ZkLeadership {
        shared: shared.clone(),
        path: grant.path,
        czxid: grant.stat.czxid,
        fence,
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
                    fence: FencingToken::try_from(stat.czxid)?,
                }))
            }
            Err(zk::Error::NoNode) => continue, // resigned meanwhile: look again
            Err(e) => return Err(zk_error("read leader", &path, e)),
        }
    }
}

struct ZkLeadership {
    shared: Arc<SessionShared>,
    path: Arc<str>,
    czxid: i64,
    /// The leadership's token: `czxid`, checked.
    fence: FencingToken,
    version: StdMutex<i32>,
}

#[async_trait]
impl HeldLeadership for ZkLeadership {
    fn fence(&self) -> FencingToken {
        self.fence
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
        // Once the lowest, a node stays the lowest until deleted.
        queue::still_mine(&self.shared, &self.path, self.czxid).await
    }

    async fn resign(&self) -> Result<()> {
        queue::give_back(&self.shared, &self.path).await
    }
}

/// Observe the election at `dir`: the current leader, then the leader as
/// read after every change.
pub(crate) async fn observe(reads: Arc<SharedClient>, dir: String) -> Result<RawObserve> {
    let client = reads.client().await?;
    let watcher = crate::node::persistent_watch(&client, &dir).await?;
    crate::node::sync(&client, &dir).await?;
    let current = leader(&client, &dir).await?;
    let follow = Follow {
        reads,
        dir,
        client,
        watcher,
        disconnected: false,
    };
    let changes = raw_changes(follow, |mut f| async move { (f.next().await, f) });
    Ok(RawObserve {
        leader: current,
        changes,
    })
}

/// The observer's state.
struct Follow {
    reads: Arc<SharedClient>,
    dir: String,
    client: Client,
    watcher: zk::PersistentWatcher,
    disconnected: bool,
}

impl Follow {
    /// The leader as read after the next event, if that event called for a
    /// look and the read succeeded.
    async fn next(&mut self) -> Option<Option<Leader>> {
        let event = self.watcher.changed().await;
        let dir = &self.dir;
        let look = match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::Disconnected => {
                    self.disconnected = true;
                    false
                }
                SessionState::SyncConnected | SessionState::ConnectedReadOnly
                    if self.disconnected =>
                {
                    // zookeeper-client 0.11.2 does not re-register persistent
                    // watches on reconnection: add ours again before looking.
                    match crate::node::persistent_watch(&self.client, dir).await {
                        Ok(w) => {
                            self.watcher = w;
                            self.disconnected = false;
                            true
                        }
                        Err(e) => {
                            tracing::debug!(%dir, error = %e, "election observer: re-adding the watch");
                            false
                        }
                    }
                }
                s if s.is_terminated() => {
                    let mut backoff = Backoff::default();
                    loop {
                        let rewatched = async {
                            let c = self.reads.client().await?;
                            let w = crate::node::persistent_watch(&c, dir).await?;
                            Ok::<_, Error>((c, w))
                        };
                        match rewatched.await {
                            Ok((c, w)) => {
                                self.client = c;
                                self.watcher = w;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(%dir, error = %e, "election observer: reconnecting");
                                backoff.wait().await;
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
            return None;
        }
        // Retry reads that fail with the connection; the session's own
        // events end the wait otherwise.
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match leader(&self.client, dir).await {
                Ok(now) => return Some(now),
                Err(e) if e.kind() == quorate_core::ErrorKind::Unavailable => backoff.wait().await,
                Err(e) => {
                    tracing::debug!(%dir, error = %e, "election observer: read failed");
                    return None;
                }
            }
        }
    }
}
