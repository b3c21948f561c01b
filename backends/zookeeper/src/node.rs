//! What every primitive shares: connection parameters, the node layout,
//! ACLs, error mapping, and small node helpers (create with container
//! parents, list children).

use std::time::Duration;

use quorate_core::name::Space;
use quorate_core::{name, Config, Error, Result, Secret};
use zookeeper_client as zk;
use zookeeper_client::{Acl, Acls, Client, CreateMode, CreateOptions, Permission, Stat};

/// How to reach the ensemble: endpoints, credentials, timeouts (raw-client
/// tools reach it through [`crate::RawZooKeeper`]).
#[derive(Clone)]
pub(crate) struct Server {
    /// `host:port,host:port` as the client library takes it.
    cluster: String,
    /// `user:password` for the `digest` scheme.
    digest: Option<Secret>,
    /// The requested session timeout (the URL's `session_timeout`/`ttl`).
    pub(crate) session_timeout: Duration,
    /// The time allowed to establish a session.
    pub(crate) connect_timeout: Duration,
    /// The redacted URL, for messages.
    pub(crate) shown: String,
}

impl Server {
    /// The endpoints and credentials of a URL.
    ///
    /// # Errors
    ///
    /// [`quorate_core::ErrorKind::InvalidConfig`] for no endpoint, an
    /// endpoint that is not `host:port`, or a user without a password.
    pub(crate) fn from_config(config: &Config) -> Result<Server> {
        if config.endpoints.is_empty() {
            return Err(Error::invalid_config(format!(
                "`{config}`: give at least one `host:port` (zookeeper://host:2181[,host:2181…][/chroot])"
            )));
        }
        for e in &config.endpoints {
            let port_ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(Error::invalid_config(format!(
                    "`{config}`: endpoint `{e}` is not `host:port`"
                )));
            }
        }
        let digest = match (&config.username, &config.password) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                if u.contains(':') {
                    return Err(Error::invalid_config(
                        "a ZooKeeper digest user name cannot contain `:`",
                    ));
                }
                Some(Secret::new(format!("{u}:{}", p.expose())))
            }
            _ => {
                return Err(Error::invalid_config(format!(
                    "`{config}`: digest authentication needs both a user and a password"
                )))
            }
        };
        Ok(Server {
            cluster: config.endpoints.join(","),
            digest,
            session_timeout: config.ttl,
            connect_timeout: config.connect_timeout,
            shown: config.redacted(),
        })
    }

    /// A connector with this server's credentials and the given session
    /// timeout.
    pub(crate) fn connector(&self, session_timeout: Duration) -> zk::Connector {
        let connector = Client::connector().with_session_timeout(session_timeout);
        match &self.digest {
            Some(d) => connector.with_auth("digest", d.expose().as_bytes()),
            None => connector,
        }
    }

    /// Establish a new ZooKeeper session, bounded by `connect_timeout`.
    ///
    /// # Errors
    ///
    /// `Unavailable` when no server answers in time.
    /// A new ZooKeeper session with this server's credentials, bounded by
    /// `connect_timeout`.
    ///
    /// # Errors
    ///
    /// [`quorate_core::ErrorKind::Unavailable`] when no server answers in time.
    pub(crate) async fn connect(&self, session_timeout: Duration) -> Result<Client> {
        self.connect_with(self.connector(session_timeout)).await
    }

    /// Run `connector` against this server, bounded by `connect_timeout`.
    pub(crate) async fn connect_with(&self, connector: zk::Connector) -> Result<Client> {
        let limit = self.connect_timeout;
        match tokio::time::timeout(limit, connector.connect(&self.cluster)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(zk_error("connect", &self.shown, e)),
            Err(_) => Err(Error::unavailable(format!(
                "no ZooKeeper server of `{}` answered within {limit:?} (connect_timeout)",
                self.shown
            ))),
        }
    }
}

/// A client kept for session-less reads and watches, re-established when
/// its session ends (expiry after a long outage).
pub(crate) struct SharedClient {
    server: Server,
    client: tokio::sync::Mutex<Client>,
}

impl SharedClient {
    pub(crate) async fn connect(server: Server) -> Result<SharedClient> {
        let client = server.connect(server.session_timeout).await?;
        Ok(SharedClient {
            server,
            client: tokio::sync::Mutex::new(client),
        })
    }

    /// A live client (cheap clone), reconnecting if the session ended.
    pub(crate) async fn client(&self) -> Result<Client> {
        let mut current = self.client.lock().await;
        if current.state().is_terminated() {
            tracing::info!(url = %self.server.shown, "re-establishing the coordinator's ZooKeeper session");
            *current = self.server.connect(self.server.session_timeout).await?;
        }
        Ok(current.clone())
    }
}

/// `<chroot>/<namespace>` of a URL: the znode under which quorate keeps
/// everything (the `namespace` option defaults to `quorate`).
///
/// # Errors
///
/// [`quorate_core::ErrorKind::InvalidConfig`] for `.`, `..` or NUL segments,
/// or a path that is empty or inside `/zookeeper`.
pub(crate) fn base_path(config: &Config) -> Result<String> {
    let namespace = config.option("namespace").unwrap_or("quorate");
    let mut base = String::new();
    for segment in config
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .chain(namespace.split('/').filter(|s| !s.is_empty()))
    {
        if segment == "." || segment == ".." || segment.contains('\0') {
            return Err(Error::invalid_config(format!(
                "`{config}`: the chroot and namespace cannot contain `.`, `..` or NUL segments"
            )));
        }
        base.push('/');
        base.push_str(segment);
    }
    if base.is_empty() || base == "/zookeeper" || base.starts_with("/zookeeper/") {
        return Err(Error::invalid_config(format!(
            "`{config}`: the namespace must be a non-empty path outside `/zookeeper`"
        )));
    }
    Ok(base)
}

/// Where things live: `<chroot>/<namespace>/…`, and which ACL nodes get.
#[derive(Clone)]
pub(crate) struct Layout {
    base: String,
    authenticated: bool,
}

/// ACL for nodes of an authenticated coordinator: the creator's identity
/// may do everything, anyone may read.
static CREATOR_ALL_ANYONE_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

impl Layout {
    /// The layout of a URL.
    ///
    /// # Errors
    ///
    /// As [`base_path`].
    pub(crate) fn from_config(config: &Config) -> Result<Layout> {
        let base = base_path(config)?;
        Ok(Layout {
            base,
            authenticated: config.username.is_some(),
        })
    }

    /// `<chroot>/<namespace>`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The ACL of every node quorate creates.
    pub(crate) fn acls(&self) -> Acls<'static> {
        if self.authenticated {
            Acls::new(&CREATOR_ALL_ANYONE_READ)
        } else {
            Acls::anyone_all()
        }
    }

    /// Options for a node of `mode` with this layout's ACL.
    pub(crate) fn options(&self, mode: CreateMode) -> CreateOptions<'static> {
        mode.with_acls(self.acls())
    }

    /// The contender directory of lock `name`: its mutex / writers
    /// (`__lock__`) and its readers (`__rlock__`).
    pub(crate) fn lock_dir(&self, name: &str) -> String {
        format!("{}/{}/{}", self.base, Space::Mutex, name::encode(name))
    }

    /// The candidate directory of election `name`.
    pub(crate) fn election_dir(&self, name: &str) -> String {
        format!("{}/{}/{}", self.base, Space::Election, name::encode(name))
    }

    /// The member directory of group `name`.
    pub(crate) fn group_dir(&self, name: &str) -> String {
        format!("{}/group/{}", self.base, name::encode(name))
    }

    /// The node of a guarded-write value.
    pub(crate) fn data_path(&self, key: &str) -> String {
        format!("{}/data/{}", self.base, name::encode(key))
    }
}

/// Map a client error to quorate's, naming the operation and the path.
pub(crate) fn zk_error(op: &str, path: &str, e: zk::Error) -> Error {
    let message = format!("ZooKeeper {op} `{path}`: {e}");
    let err = match &e {
        zk::Error::ConnectionLoss
        | zk::Error::Timeout
        | zk::Error::NoHosts
        | zk::Error::Throttled => Error::unavailable(message),
        zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::SessionMoved => {
            Error::lost(message)
        }
        zk::Error::AuthFailed | zk::Error::NoAuth => {
            Error::new(quorate_core::ErrorKind::Unauthenticated, message)
        }
        _ => Error::backend(message),
    };
    err.with_source(e)
}

/// The children of `dir`; empty when it does not exist.
pub(crate) async fn children(client: &Client, dir: &str) -> Result<Vec<String>> {
    match client.list_children(dir).await {
        Ok(c) => Ok(c),
        Err(zk::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(zk_error("list children of", dir, e)),
    }
}

/// Create `dir` and its missing ancestors as CONTAINER nodes (the server
/// deletes a container once its last child is gone).
pub(crate) async fn ensure_dir(client: &Client, layout: &Layout, dir: &str) -> Result<()> {
    client
        .mkdir(dir, &layout.options(CreateMode::Container))
        .await
        .map_err(|e| zk_error("create container", dir, e))
}

/// The parent directory of a node path.
pub(crate) fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

/// How many times an operation that races the server's container reaper
/// (parent deleted between our `mkdir` and `create`) is retried.
pub(crate) const PARENT_RETRIES: usize = 8;

/// Create a node whose parent may be missing (or just reaped): retries
/// after creating the parent containers.
pub(crate) async fn create_with_parents(
    client: &Client,
    layout: &Layout,
    path: &str,
    data: &[u8],
    mode: CreateMode,
) -> std::result::Result<(Stat, zk::CreateSequence), zk::Error> {
    let options = layout.options(mode);
    let mut tries = 0;
    loop {
        match client.create(path, data, &options).await {
            Err(zk::Error::NoNode) if tries < PARENT_RETRIES => {
                tries += 1;
                match client
                    .mkdir(parent(path), &layout.options(CreateMode::Container))
                    .await
                {
                    Ok(()) | Err(zk::Error::NodeExists) => {}
                    Err(e) => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// Bring the client's server up to date with the leader before a read, so
/// that a session-less read (through the coordinator's own session, maybe
/// on another server than the writer's) sees every write completed before
/// it started.
pub(crate) async fn sync(client: &Client, path: &str) -> Result<()> {
    client
        .sync(path)
        .await
        .map_err(|e| zk_error("sync", path, e))
}

/// Add a persistent recursive watch on `dir`, retrying a few times across
/// connection losses (requests wait for the reconnection in the client).
///
/// Also used after every reconnection: zookeeper-client 0.11.2 does not
/// re-register persistent watches when it reconnects (it sends
/// `SetWatches`, not `SetWatches2`), so the watchers add theirs again.
pub(crate) async fn persistent_watch(client: &Client, dir: &str) -> Result<zk::PersistentWatcher> {
    let mut tries = 0;
    loop {
        match client
            .watch(dir, zk::AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(w) => return Ok(w),
            Err(e @ (zk::Error::ConnectionLoss | zk::Error::Timeout)) if tries < 20 => {
                tries += 1;
                tracing::debug!(%dir, error = %e, "adding a persistent watch: retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(zk_error("watch", dir, e)),
        }
    }
}

/// Every node under the namespace that belongs to a session: lock
/// contenders (mutex, writers, readers), election candidates, group members
/// (the grandchildren of `<ns>/{lock,election,group}`), with their stat.
pub(crate) async fn owned_nodes(client: &Client, layout: &Layout) -> Result<Vec<(String, Stat)>> {
    let mut out = Vec::new();
    let spaces = quorate_core::name::Space::ALL.map(|s| s.as_str());
    for kind in spaces.into_iter().chain(["group"]) {
        let dir = format!("{}/{kind}", layout.base());
        for name in children(client, &dir).await? {
            let sub = format!("{dir}/{name}");
            for child in children(client, &sub).await? {
                let path = format!("{sub}/{child}");
                match client.check_stat(&path).await {
                    Ok(Some(stat)) => out.push((path, stat)),
                    Ok(None) => {}
                    Err(e) => return Err(zk_error("exists", &path, e)),
                }
            }
        }
    }
    Ok(out)
}
