//! Group membership: one ephemeral node per member,
//! `<ns>/group/<enc(group)>/<enc(member)>`, holding the capabilities as
//! JSON.
//!
//! `watch` sets a persistent recursive watch on the group directory
//! *before* listing it, so no change after the snapshot can be missed.
//! Every event, and every reconnection (events during a disconnection are
//! not replayed, ZOOKEEPER-4698), is answered by reading the current state
//! and reporting the difference to what was reported so far: events are
//! never duplicated, and a member that left and came back between two looks
//! is reported as `Left` then `Joined` (its node's czxid changed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::backoff::Backoff;
use quorate_core::cleanup::{spawn_retrying, GiveUp};
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{GroupChange, HeldMembership, RawGroupWatch, SeenMember};
use quorate_core::watch::raw_changes;
use quorate_core::Member;
use quorate_core::{name, Error, Result};
use tokio::task::JoinHandle;
use zookeeper_client as zk;
use zookeeper_client::{Client, CreateMode, EventType, MultiReadResult, SessionState};

use crate::node::{create_with_parents, zk_error, SharedClient};
use crate::session::{is_session_gone, watch_own_node, SessionShared};

/// A member as listed, with the czxid that tells a change from a rejoin.
#[derive(Clone)]
pub(crate) struct Listed {
    /// The member.
    pub(crate) member: Member,
    czxid: i64,
}

/// The members of the group at `dir`, by id.
pub(crate) async fn list(client: &Client, dir: &str) -> Result<BTreeMap<String, Listed>> {
    let children = crate::node::children(client, dir).await?;
    let mut out = BTreeMap::new();
    if children.is_empty() {
        return Ok(out);
    }
    let mut reader = client.new_multi_reader();
    for child in &children {
        reader
            .add_get_data(&format!("{dir}/{child}"))
            .map_err(|e| zk_error("read member", dir, e))?;
    }
    let results = reader
        .commit()
        .await
        .map_err(|e| zk_error("read members of", dir, e))?;
    for (child, result) in children.iter().zip(results) {
        match result {
            MultiReadResult::Data { data, stat } => {
                if let Some(listed) = parse_member(child, &data, stat.czxid) {
                    out.insert(listed.member.id.clone(), listed);
                }
            }
            MultiReadResult::Error {
                err: zk::Error::NoNode,
            } => {} // left between the listing and the read
            MultiReadResult::Error { err } => return Err(zk_error("read member", child, err)),
            _ => {}
        }
    }
    Ok(out)
}

/// A member from its node name and data; `None` for nodes quorate did not
/// name.
fn parse_member(child: &str, data: &[u8], czxid: i64) -> Option<Listed> {
    let Some(id) = name::decode(child) else {
        tracing::debug!(node = child, "ignoring a group node quorate did not name");
        return None;
    };
    let capabilities = serde_json::from_slice(data).unwrap_or_else(|_| {
        tracing::debug!(node = child, "member data is not JSON; reporting null");
        serde_json::Value::Null
    });
    Some(Listed {
        member: Member { id, capabilities },
        czxid,
    })
}

/// Join `group` as `member`.
///
/// # Cancel safety
///
/// The `create` runs in its own task; if this future is dropped before the
/// membership is returned, a clean-up task waits for that create and
/// deletes the node if it was made. The node's name is the member id, so
/// the create of another session's member with the same id fails and is
/// never deleted by us.
pub(crate) async fn join(
    shared: &Arc<SessionShared>,
    group: &str,
    member: &str,
    capabilities: &serde_json::Value,
    loss: LossNotifier,
) -> Result<Box<dyn HeldMembership>> {
    let path = format!(
        "{}/{}",
        shared.layout.group_dir(group),
        name::encode(member)
    );
    let data = serde_json::to_vec(capabilities)
        .map_err(|e| Error::invalid_name(format!("capabilities are not serialisable: {e}")))?;
    let mut guard = DeleteOnDrop {
        shared: shared.clone(),
        path: path.clone(),
        create: Some(tokio::spawn(create_member(
            shared.clone(),
            path.clone(),
            data,
        ))),
    };
    let created = guard
        .create
        .as_mut()
        .expect("set above")
        .await
        .map_err(|e| Error::backend(format!("joining task failed: {e}")))?;
    guard.create = None;
    let stat = match created {
        Ok(Some(stat)) => stat,
        Ok(None) => {
            return Err(Error::already_held(format!(
                "member `{member}` is already in group `{group}`"
            )))
        }
        Err(e) => return Err(e),
    };
    drop(guard);
    watch_own_node(shared, path.as_str().into(), loss);
    Ok(Box::new(ZkMembership {
        shared: shared.clone(),
        path,
        czxid: stat.czxid,
        version: StdMutex::new(stat.version),
    }))
}

/// Create the member node; `Ok(None)` when the id is taken. A create
/// whose reply was lost with the connection is recognised by the node's
/// owner being this session. (Without a lost reply, a node of this session
/// is a dropped `join`'s that is being removed: the id counts as taken.)
async fn create_member(
    shared: Arc<SessionShared>,
    path: String,
    data: Vec<u8>,
) -> Result<Option<zk::Stat>> {
    let mut maybe_created = false;
    loop {
        let client = shared.client()?;
        match create_with_parents(&client, &shared.layout, &path, &data, CreateMode::Ephemeral)
            .await
        {
            Ok((stat, _)) => return Ok(Some(stat)),
            Err(e @ (zk::Error::NodeExists | zk::Error::ConnectionLoss)) => {
                maybe_created |= e == zk::Error::ConnectionLoss;
                match client.check_stat(&path).await {
                    Ok(Some(stat)) if maybe_created && stat.ephemeral_owner == shared.id => {
                        return Ok(Some(stat))
                    }
                    Ok(Some(_)) => return Ok(None),
                    Ok(None) | Err(zk::Error::ConnectionLoss) => continue,
                    Err(e) => return Err(zk_error("exists", &path, e)),
                }
            }
            Err(e) => return Err(zk_error("create member", &path, e)),
        }
    }
}

/// Deletes the member node of a dropped `join` once its create finished.
struct DeleteOnDrop {
    shared: Arc<SessionShared>,
    path: String,
    create: Option<JoinHandle<Result<Option<zk::Stat>>>>,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Some(create) = self.create.take() else {
            return;
        };
        let shared = self.shared.clone();
        let path = std::mem::take(&mut self.path);
        tokio::spawn(async move {
            let Ok(Ok(Some(stat))) = create.await else {
                return;
            };
            // Retried until done or the session is closed (`client()` is
            // then `Lost`, and the ephemeral node went with the session).
            spawn_retrying(
                "remove a dropped join's member node",
                GiveUp::WithSession,
                move || {
                    let (shared, path) = (shared.clone(), path.clone());
                    async move {
                        let client = shared.client()?;
                        match client.delete(&path, Some(stat.version)).await {
                            Ok(()) | Err(zk::Error::NoNode) => {
                                tracing::debug!(%path, "removed a dropped join's member node");
                                Ok(())
                            }
                            Err(e) if is_session_gone(&e) => Ok(()),
                            Err(e) => Err(zk_error("remove a dropped join's member", &path, e)),
                        }
                    }
                },
            );
        });
    }
}

struct ZkMembership {
    shared: Arc<SessionShared>,
    path: String,
    czxid: i64,
    version: StdMutex<i32>,
}

#[async_trait]
impl HeldMembership for ZkMembership {
    async fn update(&self, capabilities: &serde_json::Value) -> Result<()> {
        let data = serde_json::to_vec(capabilities)
            .map_err(|e| Error::invalid_name(format!("capabilities are not serialisable: {e}")))?;
        let client = self.shared.client()?;
        let version = *self.version.lock().unwrap();
        match client.set_data(&self.path, &data, Some(version)).await {
            Ok(stat) => {
                *self.version.lock().unwrap() = stat.version;
                Ok(())
            }
            Err(zk::Error::NoNode | zk::Error::BadVersion) => Err(Error::not_held(format!(
                "member node `{}` is gone or was replaced",
                self.path
            ))),
            Err(e) => Err(zk_error("update member", &self.path, e)),
        }
    }

    async fn leave(&self) -> Result<()> {
        let Ok(client) = self.shared.client() else {
            return Ok(()); // the session is closed: the node went with it
        };
        match client.check_stat(&self.path).await {
            Ok(Some(stat))
                if stat.czxid == self.czxid && stat.ephemeral_owner == self.shared.id =>
            {
                match client.delete(&self.path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                    Err(e) if is_session_gone(&e) => Ok(()),
                    Err(e) => Err(zk_error("leave", &self.path, e)),
                }
            }
            Ok(_) => Ok(()),
            Err(e) if is_session_gone(&e) => Ok(()),
            Err(e) => Err(zk_error("exists", &self.path, e)),
        }
    }
}

/// Watch the group at `dir`: a listing, then its raw changes.
pub(crate) async fn watch(reads: Arc<SharedClient>, dir: String) -> Result<RawGroupWatch> {
    let client = reads.client().await?;
    let watcher = crate::node::persistent_watch(&client, &dir).await?;
    crate::node::sync(&client, &dir).await?;
    let snapshot = seen(list(&client, &dir).await?);
    let follow = Follow {
        reads,
        dir,
        client,
        watcher,
        resync: false,
    };
    let changes = raw_changes(follow, |mut f| async move { (f.next().await, f) });
    Ok(RawGroupWatch { snapshot, changes })
}

/// The listed members, each with its node's czxid as its incarnation (a
/// member that left and came back between two looks has a new one).
fn seen(listed: BTreeMap<String, Listed>) -> Vec<SeenMember> {
    listed.into_values().map(Listed::seen).collect()
}

impl Listed {
    fn seen(self) -> SeenMember {
        SeenMember {
            member: self.member,
            incarnation: Some(self.czxid),
        }
    }
}

/// The watch's state: reacts to node events, re-lists after a
/// reconnection, starts over on a new session after expiry.
struct Follow {
    reads: Arc<SharedClient>,
    dir: String,
    client: Client,
    watcher: zk::PersistentWatcher,
    resync: bool,
}

impl Follow {
    /// The raw changes after the next event (often none).
    async fn next(&mut self) -> Vec<GroupChange> {
        let event = self.watcher.changed().await;
        let dir = &self.dir;
        tracing::trace!(%dir, ?event, "group watch event");
        let outcome = match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::Disconnected => {
                    self.resync = true;
                    Ok(vec![])
                }
                SessionState::SyncConnected | SessionState::ConnectedReadOnly if self.resync => {
                    // zookeeper-client 0.11.2 does not re-register persistent
                    // watches on reconnection (it sends SetWatches, not
                    // SetWatches2): add ours again before looking.
                    match crate::node::persistent_watch(&self.client, dir).await {
                        Ok(w) => {
                            self.watcher = w;
                            self.resync = false;
                            self.relist().await
                        }
                        Err(e) => Err(e),
                    }
                }
                s if s.is_terminated() => {
                    // A new session: new watch, full resync.
                    let mut backoff = Backoff::default();
                    loop {
                        match rewatch(&self.reads, dir).await {
                            Ok((c, w)) => {
                                self.client = c;
                                self.watcher = w;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(%dir, error = %e, "group watch: reconnecting");
                                backoff.wait().await;
                            }
                        }
                    }
                    self.relist().await
                }
                _ => Ok(vec![]),
            },
            EventType::NodeCreated | EventType::NodeDeleted | EventType::NodeDataChanged
                if crate::node::parent(&event.path) == *dir =>
            {
                reconcile_one(&self.client, &event.path).await
            }
            _ => Ok(vec![]),
        };
        match outcome {
            Ok(changes) => changes,
            Err(e) => {
                // A read failed (connection loss): look again once
                // reconnected. If the session stayed connected, retry now,
                // with the watch added again in case the failure came from
                // a reconnection.
                tracing::debug!(%dir, error = %e, "group watch: will resynchronise");
                self.resync = true;
                if self.client.state() == SessionState::SyncConnected {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Ok(w) = crate::node::persistent_watch(&self.client, &self.dir).await {
                        self.watcher = w;
                        if let Ok(changes) = self.relist().await {
                            self.resync = false;
                            return changes;
                        }
                    }
                }
                vec![]
            }
        }
    }

    /// List the whole group.
    async fn relist(&self) -> Result<Vec<GroupChange>> {
        let now = list(&self.client, &self.dir).await?;
        Ok(vec![GroupChange::Resync(seen(now))])
    }
}

async fn rewatch(reads: &SharedClient, dir: &str) -> Result<(Client, zk::PersistentWatcher)> {
    let client = reads.client().await?;
    let watcher = crate::node::persistent_watch(&client, dir).await?;
    Ok((client, watcher))
}

/// Re-read one member node: its raw change.
async fn reconcile_one(client: &Client, path: &str) -> Result<Vec<GroupChange>> {
    let child = path.rsplit_once('/').map_or(path, |(_, c)| c);
    let Some(id) = name::decode(child) else {
        return Ok(vec![]);
    };
    Ok(match client.get_data(path).await {
        Ok((data, stat)) => parse_member(child, &data, stat.czxid)
            .map(|l| GroupChange::Put(l.seen()))
            .into_iter()
            .collect(),
        Err(zk::Error::NoNode) => vec![GroupChange::Delete { id }],
        Err(e) => return Err(zk_error("read member", path, e)),
    })
}
