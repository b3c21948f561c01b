//! quorate-zookeeper: the ZooKeeper backend of quorate (`zookeeper://`).
//!
//! URL: `zookeeper://[user:password@]host:port[,host:port…][/chroot]?session_timeout=10s&connect_timeout=5s[&namespace=quorate]`.
//!
//! - The chroot (the URL path) is a plain path prefix: quorate creates it
//!   (as container nodes) when needed, so it need not exist beforehand.
//! - Everything quorate writes lives under `<chroot>/<namespace>`
//!   (`namespace` defaults to `quorate`), called `<ns>` below.
//! - With credentials in the URL, every connection authenticates with the
//!   `digest` scheme as `user:password`, and every node quorate creates
//!   carries the ACL "creator: all, anyone: read", so only that identity
//!   can modify or delete it. A client of another identity that tries is
//!   refused with [`quorate_core::ErrorKind::Unauthenticated`].
//!
//! # Sessions
//!
//! A quorate session is one ZooKeeper session (one client connection of
//! its own); every lock node, member node and candidate node it creates is
//! ephemeral, so the server removes them when the session ends. The TTL is
//! the negotiated session timeout. `lost()` fires when the session expires,
//! is closed, or fails authentication, as the client library reports it.
//! A *disconnection* (Curator's SUSPENDED) does not fire loss by itself:
//! quorate-core's keep-alive deadline does, once no keep-alive round trip
//! (an `exists` on `<ns>`) has succeeded for the session timeout minus a
//! safety margin, counted from when the last successful one was sent, so
//! the holder hears of the loss before the server can expire the session
//! and grant its locks to someone else (Curator's LOST on its own clock).
//! When a session is lost for any reason the backend closes its ZooKeeper
//! session (or lets it expire if the server is unreachable), so a session
//! that reconnects after being declared lost cannot keep holding anything.
//!
//! # Layout (interoperable with kazoo, used by tooz)
//!
//! - Mutex `name`: `<ns>/lock/<enc(name)>/<uuidhex>__lock__<10-digit seq>`,
//!   ephemeral sequential: kazoo's `Lock` on the same path and quorate
//!   exclude each other.
//! - RwLock `name`: one lock per name, in the same directory: the mutex is
//!   the write side (`__lock__` nodes, kazoo's `WriteLock`), readers are
//!   `__rlock__` nodes (kazoo's `ReadLock`). kazoo's plain `Lock` ignores
//!   `__rlock__` nodes by design; its `WriteLock` does not.
//! - Election `name`: `<ns>/election/<enc(name)>/<uuidhex>__lock__<seq>`
//!   with the candidate's value as data (kazoo's `Election` can compete).
//! - Group `g`: ephemeral `<ns>/group/<enc(g)>/<enc(member)>` holding the
//!   capabilities as JSON.
//! - Guarded-write values: persistent `<ns>/data/<enc(key)>` (documented
//!   persistent state, not reported by `leftovers()`).
//! - Parents are CONTAINER nodes, which the server deletes once empty, so
//!   nothing is left behind.
//!
//! A waiter watches only its immediate predecessor (an exclusive waiter the
//! nearest earlier node of either kind, a reader the nearest earlier
//! `__lock__` node), so grants are FIFO and push-woken. The fencing token of
//! a grant is the czxid of the holder's node.
//!
//! # Reads, watches, revocation
//!
//! Session-less reads (`members`, `leader`, `read`, `leftovers`) go through
//! the coordinator's own ZooKeeper session and `sync` first, so they see
//! every write completed before they started even on another server.
//! `watch_group` and `observe` add a persistent recursive watch before
//! reading, and re-read and diff after every event and every reconnection;
//! they add the watch again after each reconnection because
//! zookeeper-client 0.11.2 does not re-register persistent watches itself.
//!
//! `revoke_session` closes a session of this process through its own
//! connection. ZooKeeper closes a session only for a client that knows its
//! password, so for a session of another process it deletes every node that
//! session owns under the namespace instead: its locks, memberships and
//! candidacies are freed and their guards report the loss, but that
//! process's session object learns nothing. `leftovers` lists the
//! session-owned nodes under the namespace and the live sessions this
//! process opened on it.
//!
//! # Known limits
//!
//! - Concurrent readers of a read/write lock carry the czxids of their own
//!   nodes as fences: strictly increasing across conflicting grants, not
//!   ordered among readers that hold together.
//! - A group snapshot is a listing followed by one multi-read of the
//!   members' data, not one atomic read; members that change in between are
//!   reported by the events that follow.
#![warn(missing_docs)]

mod election;
mod group;
mod inspect;
mod mutex;
mod node;

use node::{zk_error, Layout, Server};
mod queue;
mod rwlock;
mod session;

use session::ZkSession;

use std::sync::Arc;
use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{
    Acquire, Acquired, Backend, HeldLeadership, HeldMembership, RawGroupWatch, RawObserve,
    SessionBackend,
};
use quorate_core::{
    Capabilities, Config, Coordinator, FailureDetection, Primitives, Result, RwOrdering, Scope,
};
use quorate_core::{Leader, LockKind, Member};

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["zookeeper"];

/// Options this backend understands besides the generic ones.
const OPTIONS: &[&str] = &["namespace"];

/// What `zookeeper://` declares.
pub fn capabilities() -> Capabilities {
    let mut c = Capabilities::new("zookeeper", Scope::Hosts, FailureDetection::Session);
    c.fencing = true;
    c.fifo = true;
    c.rwlock_ordering = RwOrdering::Fifo;
    c.push_wakeups = true;
    c.exclusive_under_pause = false;
    // A keep-alive is a sync only the leader completes, so while the
    // ensemble elects a new leader none succeeds; the client lease (¾ of
    // the session timeout) runs out first unless the election is
    // quicker. Measured (`leader_failover`, zookeeper-3, ttl 2 s): the
    // holder was told it lost the lock ~1.2 s after the leader kill, with
    // no double grant. Declared not kept; see docs/backends.md.
    c.survives_failover = false;
    // But never two holders: only the leader expires a session (a new
    // leader gives every session a fresh timeout), and the client lease
    // ends before it; zxids (fences) grow across leader epochs. A double
    // grant or a fence going backwards fails `leader_failover`, and the
    // nemesis kills leaders.
    c.exclusive_across_failover = true;
    // A stopped leader, too: the session expiries it makes on waking are
    // proposals of its old epoch, sent only to the followers connected to
    // it, which have gone over to the new leader; it loses its quorum and
    // drops leadership (unlike etcd, no path forwards them). Measured by
    // `server_pause` (zookeeper-3: the holder told ~1.2 s into a 6 s
    // pause, another client granted after the resume) and by the leader
    // pauses of the nemesis (42 in a 600 s run, no violation).
    c.exclusive_across_leader_stalls = true;
    // Sessions expire by the leader's monotonic clock (System.nanoTime),
    // so a wall-clock step expires nothing. Measured by
    // `server_clock_step` (+15 s, ttl 2 s): the holder kept its lock.
    c.exclusive_across_clock_steps = true;
    // An ensemble restarted without its data forgets every session and
    // node, and zxids (fences) start again.
    c.exclusive_across_data_loss = false;
    c.external_revoke = true;
    c.primitives = Primitives::ALL;
    c
}

/// Connect to a ZooKeeper ensemble.
///
/// Opens one ZooKeeper session for the coordinator's own reads (members,
/// leaders, watches, guarded-write values); every quorate session opens
/// another.
///
/// # Errors
///
/// [`quorate_core::ErrorKind::InvalidConfig`] for a bad URL (no endpoint, a
/// bad chroot or namespace, unknown options);
/// [`quorate_core::ErrorKind::Unavailable`] when no server answers within
/// `connect_timeout`, or at once, with each server's error, when every
/// server refuses the connection.
pub async fn connect(config: &Config) -> Result<Coordinator> {
    config.reject_unknown_options(OPTIONS)?;
    let layout = Layout::from_config(config)?;
    let server = Server::from_config(config)?;
    // The client retries refused connections until `connect_timeout`;
    // when every server refuses, fail at once with each server's error.
    let reads = tokio::select! {
        r = node::SharedClient::connect(server.clone()) => r?,
        e = quorate_core::reach::refused_by_all("ZooKeeper", &config.endpoints) => {
            return Err(quorate_core::Error::new(e.kind(), format!("{}: {}", config.redacted(), e.message())));
        }
    };
    tracing::debug!(url = %config, base = %layout.base(), "connected to ZooKeeper");
    Ok(Coordinator::new(
        ZkBackend {
            server,
            layout,
            reads: Arc::new(reads),
        },
        config.clone(),
    ))
}

/// The coordinator-level backend: connection parameters, the layout, and
/// one shared client for session-less reads and watches.
/// Direct access to the ensemble a `zookeeper://` URL names, for tools that
/// use `zookeeper-client` themselves beside quorate (the raw baseline of
/// `quorate bench`): endpoints, credentials, timeouts, chroot, namespace
/// and ACLs are validated and applied exactly as [`connect`] does.
#[derive(Clone)]
pub struct RawZooKeeper {
    server: Server,
    layout: Layout,
}

impl RawZooKeeper {
    /// The ensemble and layout of a URL.
    ///
    /// # Errors
    ///
    /// [`quorate_core::ErrorKind::InvalidConfig`] where [`connect`] refuses
    /// the URL's endpoints, credentials, chroot or namespace.
    pub fn from_config(config: &Config) -> Result<RawZooKeeper> {
        let layout = Layout::from_config(config)?;
        let server = Server::from_config(config)?;
        Ok(RawZooKeeper { server, layout })
    }

    /// `<chroot>/<namespace>`: where quorate's nodes live.
    pub fn base(&self) -> &str {
        self.layout.base()
    }

    /// A new session with the URL's session timeout.
    ///
    /// # Errors
    ///
    /// [`quorate_core::ErrorKind::Unavailable`] when no server answers
    /// within `connect_timeout`.
    pub async fn session(&self) -> Result<zookeeper_client::Client> {
        self.server.connect(self.server.session_timeout).await
    }

    /// Options to create a node of `mode` with the ACL quorate's nodes get.
    pub fn create_options(
        &self,
        mode: zookeeper_client::CreateMode,
    ) -> zookeeper_client::CreateOptions<'static> {
        self.layout.options(mode)
    }

    /// A client-library error of `op` on `path`, as quorate reports it.
    pub fn error(op: &str, path: &str, e: zookeeper_client::Error) -> quorate_core::Error {
        zk_error(op, path, e)
    }
}

struct ZkBackend {
    server: Server,
    layout: Layout,
    reads: Arc<node::SharedClient>,
}

#[async_trait]
impl Backend for ZkBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>> {
        let session =
            session::ZkSession::open(&self.server, self.layout.clone(), ttl, loss).await?;
        Ok(Box::new(session))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<()> {
        let client = self.reads.client().await?;
        node::sync(&client, self.layout.base()).await?;
        session::revoke_by_id(&self.server, &self.layout, &client, session_id).await
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        let client = self.reads.client().await?;
        node::sync(&client, self.layout.base()).await?;
        let listed = group::list(&client, &self.layout.group_dir(group)).await?;
        Ok(listed.into_values().map(|m| m.member).collect())
    }

    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch> {
        group::watch(self.reads.clone(), self.layout.group_dir(group)).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        let client = self.reads.client().await?;
        node::sync(&client, self.layout.base()).await?;
        election::leader(&client, &self.layout.election_dir(name)).await
    }

    async fn observe(&self, name: &str) -> Result<RawObserve> {
        election::observe(self.reads.clone(), self.layout.election_dir(name)).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let client = self.reads.client().await?;
        node::sync(&client, self.layout.base()).await?;
        let path = self.layout.data_path(key);
        match client.get_data(&path).await {
            Ok((data, _)) => Ok(Some(data)),
            Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(node::zk_error("read", &path, e)),
        }
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let client = self.reads.client().await?;
        node::sync(&client, self.layout.base()).await?;
        let base_len = self.layout.base().len() + 1;
        let mut out: Vec<String> = node::owned_nodes(&client, &self.layout)
            .await?
            .into_iter()
            .map(|(path, _)| path[base_len..].to_owned())
            .collect();
        out.extend(
            session::live_sessions(&self.server, &self.layout)
                .into_iter()
                .map(|id| format!("session/{id}")),
        );
        out.sort();
        Ok(out)
    }

    async fn locks(&self, prefix: &str) -> Result<Vec<quorate_core::LockState>> {
        let client = self.reads.client().await?;
        inspect::locks(&client, &self.layout, prefix).await
    }
}

#[async_trait]
impl SessionBackend for ZkSession {
    fn id(&self) -> String {
        self.shared.id_string()
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    /// One leader-confirmed `sync` (see [`ZkSession::keep_alive`]).
    async fn keep_alive(&self) -> Result<()> {
        ZkSession::keep_alive(self).await
    }

    async fn revoke(&self) -> Result<()> {
        ZkSession::revoke(self).await
    }

    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired> {
        let wait = mode.waits();
        mutex::lock(&self.shared, name, kind, wait, loss)
            .await
            .map(Acquired::from)
    }

    async fn join(
        &self,
        group: &str,
        member: &str,
        capabilities: &serde_json::Value,
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldMembership>> {
        group::join(&self.shared, group, member, capabilities, loss).await
    }

    async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>> {
        election::campaign(&self.shared, name, value, loss).await
    }
}
