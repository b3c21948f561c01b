//! quorate-etcd: the etcd v3 backend of quorate (`etcd://`, `etcds://`).
//!
//! # URL
//!
//! `etcd://[user:password@]host:port[,host:port...][/namespace]?ttl=10s&connect_timeout=5s`
//!
//! - `etcds://` connects with TLS; it needs `ca=/path/ca.pem` (the CA that
//!   signed the servers' certificates) and takes `cert=` and `key=` (PEM
//!   files, both or neither) for client-certificate authentication.
//! - The namespace (default `quorate`) prefixes every key. Namespaces never
//!   nest: one whose segment after the first is `session`, `lock`,
//!   `election`, `group` or `data` is refused (`InvalidConfig`), as its keys
//!   would lie inside a shorter namespace's locks, elections or groups.
//! - The user name and password come from the URL's userinfo.
//! - Any other option is rejected.
//!
//! # Layout
//!
//! A session is one etcd lease, kept alive by quorate-core through
//! [`quorate_core::spi::SessionBackend::keep_alive`]. Every lock, candidacy
//! and membership is a key attached to that lease (see `keys.rs` for the
//! full table). Mutexes and elections use exactly the layout of etcd's Go
//! `concurrency.Mutex` and `concurrency.Election`, so `etcdctl lock
//! <ns>/lock/<name>` and `etcdctl elect <ns>/election/<name>` interoperate
//! with quorate. Fencing tokens are the create revisions of the holders'
//! keys; waiters watch only their immediate predecessor.
#![warn(missing_docs)]

mod client;
mod deletions;
mod election;
mod error;
mod group;
mod inspect;
mod keys;
mod mutex;
mod owned;
mod queue;
mod rwlock;
mod session;
mod watch;

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "tls")]
use etcd_client::{Certificate, Identity, TlsOptions};
use etcd_client::{ConnectOptions, GetOptions, Txn, TxnOp};
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{
    Acquire, Acquired, Backend, HeldLeadership, HeldMembership, RawGroupWatch, RawObserve,
    SessionBackend,
};
use quorate_core::{
    Capabilities, Config, Coordinator, Error, ErrorKind, FailureDetection, Primitives, Result,
    RwOrdering, Scope,
};
use quorate_core::{Leader, LockKind, Member};

use client::Shared;
use keys::Layout;
use session::EtcdSession;

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["etcd", "etcds"];

/// The namespace used when the URL has no path.
pub const DEFAULT_NAMESPACE: &str = "quorate";

/// The etcd port used for an endpoint given without one.
const DEFAULT_PORT: u16 = 2379;

/// Options this backend understands besides the generic ones.
const OPTIONS: &[&str] = &["ca", "cert", "key"];

/// What etcd declares: a Raft-replicated store with leases, so locks
/// survive the failover of a cluster member, and a paused holder loses its
/// locks after the lease TTL.
pub fn capabilities() -> Capabilities {
    let mut c = Capabilities::new("etcd", Scope::Hosts, FailureDetection::LeaseTtl);
    c.fencing = true;
    c.fifo = true;
    c.rwlock_ordering = RwOrdering::Fifo;
    c.push_wakeups = true;
    c.exclusive_under_pause = false;
    c.survives_failover = true;
    c.exclusive_across_failover = true;
    // But not a *stalled* leader's failover: etcd 3.4.23 (Debian 12's) has
    // etcd issue 15247. A leader stopped past the TTL wakes with every
    // lease expired by its own clock (keep-alives went to the new leader)
    // and proposes their revocation; once it has stepped down its
    // proposals are forwarded to the new leader and commit, deleting locks
    // whose holders were kept alive. Measured: `server_pause` granted the
    // lock to another client 6038 ms after the pause began, the holder
    // never told; scripts/etcd-stale-leader-revoke shows it without
    // quorate. Fixed (a window remains) in 3.4.28 and 3.5.11.
    c.exclusive_across_leader_stalls = false;
    // Leases expire by the leader's monotonic clock (Go's time.Now carries
    // a monotonic reading), so a wall-clock step expires nothing. The suite
    // cannot step etcd's clock (Go reads it through the vDSO, past
    // libfaketime): `server_clock_step` is unverified there.
    c.exclusive_across_clock_steps = true;
    // A member set restarted without its data forgets every lease and key,
    // and revisions (fences) start again at 1.
    c.exclusive_across_data_loss = false;
    c.external_revoke = true;
    c.primitives = Primitives::ALL;
    c
}

/// Connect to etcd and check, within `connect_timeout`, that it answers and
/// accepts the credentials.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] for a bad URL or option (including TLS
/// files that cannot be read, and a namespace that would nest inside
/// another's keys), [`ErrorKind::Unavailable`] when no endpoint
/// answers within `connect_timeout` (at once, with each endpoint's error,
/// when every endpoint refuses the connection), [`ErrorKind::Unauthenticated`] when
/// etcd refuses the credentials (or needs some and got none).
pub async fn connect(config: &Config) -> Result<Coordinator> {
    let settings = Settings::from_config(config)?;
    let shown = config.redacted();
    let shared = match settings.connect().await {
        Ok(shared) => shared,
        Err(e) => {
            let hint = if config.scheme == "etcds"
                && config.option("cert").is_none()
                && e.kind() == ErrorKind::Unavailable
            {
                " (if the server requires client certificates, give `cert=` and `key=`)"
            } else {
                ""
            };
            return Err(
                Error::new(e.kind(), format!("{shown}: {}{hint}", e.message())).with_source(e),
            );
        }
    };
    tracing::debug!(url = %shown, "connected to etcd");
    Ok(Coordinator::new(
        EtcdBackend {
            shared: Arc::new(shared),
            deletions: Arc::default(),
        },
        config.clone(),
    ))
}

/// Direct access to the etcd cluster a URL names, for tools that use
/// `etcd-client` themselves beside quorate (the raw baseline of
/// `quorate bench`): endpoints, credentials, TLS files and namespace are
/// validated and applied exactly as [`connect`] does.
pub struct RawEtcd {
    endpoints: Vec<String>,
    namespace: String,
    options: ConnectOptions,
}

impl RawEtcd {
    /// The cluster and namespace of an `etcd://` or `etcds://` URL.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidConfig`] for a URL [`connect`] refuses as such
    /// (another scheme, no endpoint, an empty namespace segment or one that
    /// would nest inside another namespace's keys, unknown options, a user
    /// without a password or the reverse, TLS options on `etcd://`, TLS
    /// files that cannot be read).
    pub fn from_config(config: &Config) -> Result<RawEtcd> {
        let s = Settings::from_config(config)?;
        Ok(RawEtcd {
            endpoints: s.endpoints,
            namespace: s.namespace,
            options: s.options,
        })
    }

    /// The namespace every key of quorate's lives under, without a trailing
    /// `/`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A new client on the URL's endpoints, with its connect timeout,
    /// credentials and TLS files (and the backend's HTTP/2 keep-alive
    /// settings).
    ///
    /// # Errors
    ///
    /// The client library's, unmapped: the caller names the operation.
    pub async fn client(&self) -> std::result::Result<etcd_client::Client, etcd_client::Error> {
        etcd_client::Client::connect(&self.endpoints, Some(self.options.clone())).await
    }
}

/// The parsed, validated connection settings.
struct Settings {
    endpoints: Vec<String>,
    namespace: String,
    options: ConnectOptions,
    request_timeout: Duration,
}

impl Settings {
    fn from_config(config: &Config) -> Result<Settings> {
        let tls = match config.scheme.as_str() {
            "etcd" => false,
            "etcds" => true,
            other => {
                return Err(Error::invalid_config(format!(
                    "the etcd backend serves {SCHEMES:?}, not `{other}://`"
                )))
            }
        };
        config.reject_unknown_options(OPTIONS)?;
        if config.endpoints.is_empty() {
            return Err(Error::invalid_config(format!(
                "`{}`: an etcd URL needs at least one host:port",
                config.redacted()
            )));
        }
        let namespace = if config.path.is_empty() {
            DEFAULT_NAMESPACE.to_owned()
        } else {
            config.path.trim_end_matches('/').to_owned()
        };
        if let Err(why) = keys::check_namespace(&namespace) {
            return Err(Error::invalid_config(format!(
                "`{}`: {why}",
                config.redacted()
            )));
        }
        let scheme = if tls { "https" } else { "http" };
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| {
                if e.contains(':') {
                    format!("{scheme}://{e}")
                } else {
                    format!("{scheme}://{e}:{DEFAULT_PORT}")
                }
            })
            .collect();

        // HTTP/2 pings detect a dead or paused server on open streams
        // (watches, keep-alive). etcd refuses pings more often than every
        // 5 s (`--grpc-keepalive-min-time`) and pings without open streams.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
            .with_keep_alive_while_idle(false);
        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                options = options
                    .with_user(user.clone(), password.expose().to_owned())
                    .with_auto_token_refresh(true);
            }
            (Some(user), None) => {
                return Err(Error::invalid_config(format!(
                    "`{}`: user `{user}` has no password; etcd needs both",
                    config.redacted()
                )))
            }
            (None, Some(_)) => {
                return Err(Error::invalid_config(format!(
                    "`{}`: a password without a user name",
                    config.redacted()
                )))
            }
            (None, None) => {}
        }
        let tls_files = ["ca", "cert", "key"].map(|k| config.option(k));
        if tls {
            #[cfg(feature = "tls")]
            {
                options = options.with_tls(tls_options(tls_files)?);
            }
            #[cfg(not(feature = "tls"))]
            {
                let _ = tls_files;
                return Err(Error::unsupported(
                    "etcds:// needs the `tls` feature of quorate-etcd (`etcd-tls` of quorate)",
                ));
            }
        } else if let Some(k) = OPTIONS.iter().find(|k| config.option(k).is_some()) {
            return Err(Error::invalid_config(format!(
                "option `{k}` is for TLS: use an `etcds://` URL"
            )));
        }
        Ok(Settings {
            endpoints,
            namespace,
            options,
            request_timeout: config.connect_timeout,
        })
    }

    /// Set up the endpoints and make one round trip that needs the
    /// credentials (a read in the namespace), within `connect_timeout`.
    /// Fails at once, with each endpoint's error, when every endpoint
    /// refuses the TCP connection ([`quorate_core::reach::refused_by_all`]).
    async fn connect(self) -> Result<Shared> {
        let addrs: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| {
                e.split_once("://")
                    .map_or(e.as_str(), |(_, a)| a)
                    .to_owned()
            })
            .collect();
        let connect = Shared::connect(
            self.endpoints,
            self.options,
            Layout::new(&self.namespace),
            self.request_timeout,
        );
        tokio::select! {
            r = connect => r,
            e = quorate_core::reach::refused_by_all("etcd", &addrs) => Err(e),
        }
    }
}

#[cfg(feature = "tls")]
fn tls_options([ca, cert, key]: [Option<&str>; 3]) -> Result<TlsOptions> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| {
            Error::invalid_config(format!("cannot read the {what} file `{path}`: {e}"))
        })
    };
    let ca = ca.ok_or_else(|| {
        Error::invalid_config(
            "an `etcds://` URL needs `ca=/path/to/ca.pem` (the CA of the servers)",
        )
    })?;
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
    match (cert, key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid_config(
                "give both `cert` and `key` (client certificate and its key), or neither",
            ))
        }
    }
    Ok(tls)
}

/// The connected etcd backend.
struct EtcdBackend {
    shared: Arc<Shared>,
    deletions: Arc<deletions::Deletions>,
}

#[async_trait]
impl Backend for EtcdBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>> {
        Ok(Box::new(
            session::EtcdSession::open(self.shared.clone(), self.deletions.clone(), ttl, loss)
                .await?,
        ))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<()> {
        session::revoke_by_id(&self.shared, session_id).await
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        group::members(&self.shared, group).await
    }

    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch> {
        group::watch(self.shared.clone(), group).await
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        election::leader(&self.shared, election).await
    }

    async fn observe(&self, election: &str) -> Result<RawObserve> {
        election::observe(self.shared.clone(), election).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let data_key = self.shared.layout.data(key);
        let resp = self.shared.get("read", &data_key, None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        // Subspace by subspace in one (linearizable) transaction, never the
        // whole `<ns>/`: the keys of a longer namespace `<ns>/x/...` lie
        // there too and are not ours.
        let layout = &self.shared.layout;
        let subspaces: Vec<&str> = keys::SUBSPACES
            .into_iter()
            .filter(|s| layout.subspace(s) != layout.data_root())
            .collect();
        let gets = subspaces.iter().map(|s| {
            let prefix = layout.subspace(s);
            let end = keys::prefix_end(prefix.as_bytes());
            TxnOp::get(
                prefix,
                Some(GetOptions::new().with_range(end).with_keys_only()),
            )
        });
        let txn = Txn::new().and_then(gets.collect::<Vec<_>>());
        let resp = self.shared.txn("list leftovers", txn).await?;
        let mut out: Vec<String> = (0..subspaces.len())
            .flat_map(|i| client::txn_range(&resp, i))
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn locks(&self, prefix: &str) -> Result<Vec<quorate_core::LockState>> {
        inspect::locks(&self.shared, prefix).await
    }
}

/// Shorthand used by the primitives: a `NotHeld` error.
pub(crate) fn not_held(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::NotHeld, what.to_string())
}

#[async_trait]
impl SessionBackend for EtcdSession {
    fn id(&self) -> String {
        keys::lease_hex(self.lease)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn keep_alive(&self) -> Result<()> {
        EtcdSession::keep_alive(self).await
    }

    async fn revoke(&self) -> Result<()> {
        EtcdSession::revoke(self).await
    }

    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired> {
        let wait = mode.waits();
        crate::mutex::lock(self, name, kind, wait, loss)
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
        crate::group::join(self, group, member, capabilities, loss).await
    }

    async fn campaign(
        &self,
        election: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>> {
        crate::election::campaign(self, election, value, loss).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_config(&Config::parse(url).unwrap())
    }

    #[test]
    fn parses_endpoints_and_namespace() {
        let s = settings("etcd://h1:1,h2/app/locks?ttl=3s").unwrap();
        assert_eq!(s.endpoints, vec!["http://h1:1", "http://h2:2379"]);
        assert_eq!(s.namespace, "app/locks");
        let s = settings("etcd://h1:1").unwrap();
        assert_eq!(s.namespace, DEFAULT_NAMESPACE);
    }

    #[test]
    fn rejects_bad_configs_clearly() {
        for (url, needle) in [
            ("etcd://h:1?tll=3s", "unknown option `tll`"),
            ("etcd://h:1?ca=/x", "use an `etcds://` URL"),
            ("etcds://h:1", "needs `ca="),
            (
                "etcds://h:1?ca=/nonexistent/ca.pem",
                "cannot read the CA file",
            ),
            ("etcd:///ns", "at least one host:port"),
            ("etcd://h:1/a//b", "empty path segment"),
            (
                "etcd://h:1/nsq/lock/foo",
                "would nest inside namespace `nsq`",
            ),
            ("etcd://h:1/app/data", "would nest inside namespace `app`"),
            ("etcd://alice@h:1", "has no password"),
        ] {
            let e = settings(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
            assert!(e.to_string().contains(needle), "{url}: {e}");
        }
    }
}
