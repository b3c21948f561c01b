//! The raw baseline of `zookeeper://`: the `zookeeper-client` crate used
//! directly, on the same servers, chroot and namespace as the URL.
//!
//! Everything it writes lives under a scratch container node
//! `<chroot>/<namespace>/bench-raw-<random>` (the chroot and namespace are
//! joined as `quorate-zookeeper` does), one child container per key.
//! [`RawBaseline::close`] deletes the scratch node, its children, and the
//! ancestors the baseline had to create; as containers they would also be
//! reaped by the server once empty if the process died first.
//!
//! Each operation checks out a ZooKeeper session of its own from a small
//! pool (one per concurrent operation, [`super::TASKS`] opened up front), as
//! quorate's bench gives every task its own session: requests of one
//! session are applied in order, so sharing one across tasks would
//! understate the raw throughput.

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quorate::{Config, Error, Result};
use zookeeper_client as zk;
use zookeeper_client::{Client, CreateMode, CreateOptions, EventType};

use quorate_zookeeper::RawZooKeeper;

use super::{RawBaseline, Waiter, SETTLE, TASKS};

/// Options of a `zookeeper://` URL besides the generic ones (as the backend).
const OPTIONS: &[&str] = &["namespace"];

/// The prefix of the baseline's ephemeral-sequential contender nodes.
const NODE_PREFIX: &str = "lock-";

/// How often a create is retried after re-creating its parent container
/// (which the server may reap whenever it is empty).
const PARENT_RETRIES: usize = 8;

/// A client-library error, as the backend reports it.
fn zk_error(op: &str, path: &str, e: zk::Error) -> Error {
    RawZooKeeper::error(op, path, e)
}

/// The raw baseline of `zookeeper://`.
///
/// - acquire + release: create an ephemeral-sequential node, `getChildren`
///   of its parent, delete the node. When an earlier node exists (only in
///   the one-lock throughput scenario) it also waits, as a correct lock
///   must, on an exists-watch of its predecessor and lists again.
/// - hand-off: one client deletes a node that another client watches; the
///   figure is the time from sending the delete to the `NodeDeleted` event
///   reaching the watching client (one write plus one notification: the
///   same path length as one raw create, which the issue names).
pub struct ZooKeeperBaseline {
    /// Endpoints, credentials, timeouts, namespace and ACLs, exactly as the
    /// backend's.
    zk: RawZooKeeper,
    /// The redacted URL, for messages.
    shown: String,
    /// `<chroot>/<namespace>/bench-raw-<random>`.
    scratch: String,
    /// The scratch node and those of its ancestors that did not exist
    /// before, shallowest first: what [`RawBaseline::close`] removes.
    created: Vec<String>,
    /// Sessions not in use by an operation.
    idle: StdMutex<Vec<Client>>,
}

impl std::fmt::Debug for ZooKeeperBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperBaseline")
            .field("url", &self.shown)
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl ZooKeeperBaseline {
    /// Connect [`super::TASKS`] sessions to the URL's servers and create the
    /// scratch node under the URL's chroot and namespace.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for a URL the backend would refuse (no or malformed
    /// endpoints, a user without a password, unknown options, a bad chroot
    /// or namespace); `Unavailable` when no server answers within
    /// `connect_timeout`; a backend error when the scratch node cannot be
    /// created.
    pub async fn connect(config: &Config) -> Result<ZooKeeperBaseline> {
        config.reject_unknown_options(OPTIONS)?;
        let zk = RawZooKeeper::from_config(config)?;
        let scratch = format!("{}/bench-raw-{:016x}", zk.base(), rand::random::<u64>());
        let mut baseline = ZooKeeperBaseline {
            zk,
            shown: config.redacted(),
            scratch,
            created: Vec::new(),
            idle: StdMutex::new(Vec::new()),
        };
        let clients =
            futures::future::try_join_all((0..TASKS).map(|_| baseline.new_client())).await?;
        let client = &clients[0];
        let mut path = String::new();
        for segment in baseline.scratch.split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            path.push_str(segment);
            // Below the first missing ancestor, everything is ours.
            if baseline.created.is_empty() {
                let stat = client
                    .check_stat(&path)
                    .await
                    .map_err(|e| zk_error("exists", &path, e))?;
                if stat.is_some() {
                    continue;
                }
            }
            baseline.created.push(path.clone());
        }
        client
            .mkdir(&baseline.scratch, &baseline.options(CreateMode::Container))
            .await
            .map_err(|e| zk_error("create container", &baseline.scratch, e))?;
        tracing::debug!(url = %baseline.shown, scratch = %baseline.scratch, "ZooKeeper raw baseline connected");
        *baseline.idle.lock().unwrap() = clients;
        Ok(baseline)
    }

    /// A new ZooKeeper session, bounded by `connect_timeout`.
    async fn new_client(&self) -> Result<Client> {
        self.zk.session().await
    }

    /// A session for one operation: an idle one, or a new one when every
    /// pooled session is busy.
    async fn checkout(&self) -> Result<Pooled<'_>> {
        let idle = self.idle.lock().unwrap().pop();
        let client = match idle {
            Some(c) => c,
            None => self.new_client().await?,
        };
        Ok(Pooled {
            pool: &self.idle,
            client: Some(client),
        })
    }

    /// Create options of `mode` with the URL's ACL.
    fn options(&self, mode: CreateMode) -> CreateOptions<'static> {
        self.zk.create_options(mode)
    }

    /// The container of `key`'s nodes.
    fn key_dir(&self, key: &str) -> String {
        format!("{}/{}", self.scratch, quorate::name::encode(key))
    }

    /// Create an ephemeral-sequential node in `dir` (re-creating `dir` if
    /// the server reaped it); its name and sequence number.
    async fn create_node(&self, client: &Client, dir: &str) -> Result<(String, i64)> {
        let path = format!("{dir}/{NODE_PREFIX}");
        let options = self.options(CreateMode::EphemeralSequential);
        for _ in 0..PARENT_RETRIES {
            match client.create(&path, &[], &options).await {
                Ok((_, seq)) => return Ok((format!("{NODE_PREFIX}{seq}"), seq.into_i64())),
                Err(zk::Error::NoNode) => client
                    .mkdir(dir, &self.options(CreateMode::Container))
                    .await
                    .map_err(|e| zk_error("create container", dir, e))?,
                Err(e) => return Err(zk_error("create", &path, e)),
            }
        }
        Err(Error::backend(format!(
            "ZooKeeper create `{path}`: its parent kept disappearing"
        )))
    }
}

/// A session checked out of the pool; returned to it on drop unless it
/// ended.
struct Pooled<'a> {
    pool: &'a StdMutex<Vec<Client>>,
    client: Option<Client>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.state().is_terminated() {
                self.pool.lock().unwrap().push(c);
            }
        }
    }
}

#[async_trait]
impl RawBaseline for ZooKeeperBaseline {
    fn describe(&self) -> String {
        "zookeeper-client: create ephemeral-sequential + getChildren + delete; \
         hand-off: delete by one session to the NodeDeleted watch event at another session, awaited in a task idle for 5 ms"
            .into()
    }

    async fn acquire_release(&self, key: &str) -> Result<()> {
        let client = self.checkout().await?;
        let dir = self.key_dir(key);
        let (name, seq) = self.create_node(&client, &dir).await?;
        loop {
            let children = client
                .list_children(&dir)
                .await
                .map_err(|e| zk_error("list children of", &dir, e))?;
            let predecessor = children
                .iter()
                .filter_map(|c| Some((c.strip_prefix(NODE_PREFIX)?.parse::<i64>().ok()?, c)))
                .filter(|(s, _)| *s < seq)
                .max_by_key(|(s, _)| *s);
            let Some((_, predecessor)) = predecessor else {
                break; // granted
            };
            let path = format!("{dir}/{predecessor}");
            let (stat, watcher) = client
                .check_and_watch_stat(&path)
                .await
                .map_err(|e| zk_error("watch", &path, e))?;
            if stat.is_some() {
                let event = watcher.changed().await;
                if event.event_type == EventType::Session && event.session_state.is_terminated() {
                    return Err(Error::lost(format!(
                        "the ZooKeeper session ended while waiting ({})",
                        event.session_state
                    )));
                }
            }
        }
        let path = format!("{dir}/{name}");
        client
            .delete(&path, None)
            .await
            .map_err(|e| zk_error("delete", &path, e))
    }

    async fn handoff(&self, key: &str) -> Result<Duration> {
        let holder = self.checkout().await?;
        let waiter = self.checkout().await?;
        let dir = self.key_dir(key);
        let (name, _) = self.create_node(&holder, &dir).await?;
        let path = format!("{dir}/{name}");
        let (stat, watcher) = waiter
            .check_and_watch_stat(&path)
            .await
            .map_err(|e| zk_error("watch", &path, e))?;
        if stat.is_none() {
            return Err(Error::backend(format!(
                "ZooKeeper node `{path}` vanished before the hand-off"
            )));
        }
        let watched = path.clone();
        let waiter = Waiter::spawn(async move {
            let event = watcher.changed().await;
            if event.event_type != EventType::NodeDeleted {
                return Err(Error::backend(format!(
                    "ZooKeeper watch of `{watched}`: expected NodeDeleted, got {:?} ({})",
                    event.event_type, event.session_state
                )));
            }
            Ok(Instant::now())
        });
        tokio::time::sleep(SETTLE).await;
        let sent = Instant::now();
        holder
            .delete(&path, None)
            .await
            .map_err(|e| zk_error("delete", &path, e))?;
        Ok(waiter.notified().await?.saturating_duration_since(sent))
    }

    async fn close(&self) -> Result<()> {
        let client = self.checkout().await?;
        let children = match client.list_children(&self.scratch).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(zk_error("list children of", &self.scratch, e)),
        };
        let own = children.iter().map(|c| format!("{}/{c}", self.scratch));
        for path in own.chain(self.created.iter().rev().cloned()) {
            match client.delete(&path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                // An ancestor someone else uses now (or a node of ours a
                // failed operation left): a container, reaped once empty.
                Err(zk::Error::NotEmpty) => {
                    tracing::debug!(%path, "not removed: not empty");
                }
                Err(e) => return Err(zk_error("delete", &path, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_joins_chroot_and_namespace_like_the_backend() {
        let base = |url: &str| {
            RawZooKeeper::from_config(&Config::parse(url).unwrap()).map(|zk| zk.base().to_owned())
        };
        assert_eq!(base("zookeeper://h:1").unwrap(), "/quorate");
        assert_eq!(base("zookeeper://h:1/a/b").unwrap(), "/a/b/quorate");
        assert_eq!(base("zookeeper://h:1/a?namespace=x/y").unwrap(), "/a/x/y");
        assert!(base("zookeeper://h:1/zookeeper?namespace=").is_err());
        assert!(base("zookeeper://h:1/a/../b").is_err());
    }
}
