//! quorate-etcd: the etcd v3 backend of quorate (`etcd://`, `etcds://`).
//!
//! # URL
//!
//! `etcd://[user:password@]host:port[,host:port...][/namespace]?ttl=10s&connect_timeout=5s`
//!
//! - `etcds://` connects with TLS; it needs `ca=/path/ca.pem` (the CA that
//!   signed the servers' certificates) and takes `cert=` and `key=` (PEM
//!   files, both or neither) for client-certificate authentication.
//! - The namespace (default `quorate`) prefixes every key.
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

mod election;
mod error;
mod group;
mod keys;
mod mutex;
mod rwlock;
mod session;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, GetResponse, Identity, KeyValue,
    ResponseHeader, TlsOptions, Txn, TxnOpResponse, TxnResponse, WatchOptions, WatchStream,
};
use futures::stream::BoxStream;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{Backend, GroupEvent, Leader, Member, SessionBackend};
use quorate_core::{
    Capabilities, Config, Coordinator, Error, ErrorKind, FailureDetection, Primitives, Result,
    RwOrdering, Scope,
};

use keys::Layout;

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
    Capabilities {
        backend: "etcd",
        scope: Scope::Hosts,
        failure_detection: FailureDetection::LeaseTtl,
        fencing: true,
        fifo: true,
        rwlock_ordering: RwOrdering::Fifo,
        push_wakeups: true,
        exclusive_under_pause: false,
        survives_failover: true,
        external_revoke: true,
        primitives: Primitives {
            mutex: true,
            rwlock: true,
            group: true,
            election: true,
            guarded_writes: true,
        },
    }
}

/// Connect to etcd and check, within `connect_timeout`, that it answers and
/// accepts the credentials.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] for a bad URL or option (including TLS
/// files that cannot be read), [`ErrorKind::Unavailable`] when no endpoint
/// answers within `connect_timeout`, [`ErrorKind::Unauthenticated`] when
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
        },
        config.clone(),
    ))
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
        if namespace.is_empty() || namespace.split('/').any(str::is_empty) {
            return Err(Error::invalid_config(format!(
                "`{}`: the namespace `{}` has an empty path segment",
                config.redacted(),
                config.path
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
            options = options.with_tls(tls_options(tls_files)?);
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

    /// Build the client and make one round trip that needs the
    /// credentials (a read in the namespace).
    /// Build the client and make one round trip that needs the
    /// credentials (a read in the namespace), all within `connect_timeout`.
    async fn connect(self) -> Result<Shared> {
        let limit = self.request_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        // With credentials, building the client authenticates: a request
        // that may go to a member that is down, so it is retried like any.
        let client = send_until("connect", deadline, limit, || {
            Client::connect(self.endpoints.clone(), Some(self.options.clone()))
        })
        .await?;
        let layout = Layout::new(&self.namespace);
        let root = layout.root();
        send_until("first request", deadline, limit, || {
            let mut c = client.clone();
            let root = root.clone();
            async move { c.get(root, Some(GetOptions::new().with_count_only())).await }
        })
        .await?;
        Ok(Shared {
            client,
            layout,
            request_timeout: limit,
        })
    }
}

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

/// What every part of the backend shares: the client, the layout and the
/// limit on one request.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) layout: Layout,
    pub(crate) request_timeout: Duration,
}

impl Shared {
    /// Run one etcd request made by `make` from a client handle, bounded
    /// by the request timeout (`connect_timeout`), mapping its error; a
    /// request that never reached a server is sent again within that limit
    /// (see [`send_until`]).
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, mut make: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let client = &self.client;
        send_until(op, deadline, self.request_timeout, || make(client.clone())).await
    }

    /// Await one request future (or stream step), bounded by the request
    /// timeout, mapping its error. Never repeated.
    pub(crate) async fn call_once<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r.map_err(|e| error::map(op, e)),
            Err(_) => Err(timed_out(op, self.request_timeout, None)),
        }
    }

    /// One range request, bounded by the request timeout.
    pub(crate) async fn get(
        &self,
        op: &'static str,
        key: &str,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        self.call(op, |mut c| {
            let options = options.clone();
            async move { c.get(key, options).await }
        })
        .await
    }

    /// Open a watch stream (the request that creates it is bounded by the
    /// request timeout; the stream itself is not).
    pub(crate) async fn watch(
        &self,
        op: &'static str,
        key: &[u8],
        options: WatchOptions,
    ) -> Result<WatchStream> {
        self.call(op, |mut c| {
            let options = options.clone();
            async move { c.watch(key, Some(options)).await }
        })
        .await
    }

    /// One transaction, bounded by the request timeout.
    pub(crate) async fn txn(&self, op: &'static str, txn: Txn) -> Result<TxnResponse> {
        self.call(op, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// One transaction, retried on every retryable error (unavailable,
    /// leader changes, time-outs) with a capped back-off until it succeeds
    /// or fails for good. Only for transactions whose compares make a
    /// repeat harmless, inside waits and clean-ups, which are bounded
    /// elsewhere (the session's loss, the clean-up's time limit).
    pub(crate) async fn txn_retrying(&self, op: &'static str, txn: Txn) -> Result<TxnResponse> {
        let mut backoff = Backoff::new();
        loop {
            match self.txn(op, txn.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    tracing::debug!(op, error = %e, "retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Send the request `make` builds until `deadline`: a request that never
/// reached a server (the connection to the endpoint the client's balancer
/// picked was refused or could not be made, as when a cluster member is
/// down) is made again, and goes to another endpoint if the balancer picks
/// one. A request that may have reached a server is never repeated here.
async fn send_until<T, F, Fut>(
    op: &'static str,
    deadline: tokio::time::Instant,
    limit: Duration,
    mut make: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut pause = Duration::from_millis(5);
    let mut last_unsent = None;
    loop {
        match tokio::time::timeout_at(deadline, make()).await {
            Err(_) => return Err(timed_out(op, limit, last_unsent)),
            Ok(Err(e)) if error::never_sent(&e) => {
                tracing::debug!(op, error = ?e, "request not sent; trying again");
                last_unsent = Some(error::describe_unsent(&e));
                let wake = (tokio::time::Instant::now() + pause).min(deadline);
                tokio::time::sleep_until(wake).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Ok(r) => return r.map_err(|e| error::map(op, e)),
        }
    }
}

/// The error of a request that got no answer within `limit`;
/// `last_unsent` says why the last attempt could not even be sent, if so.
fn timed_out(op: &str, limit: Duration, last_unsent: Option<String>) -> Error {
    let mut message = format!("etcd {op}: no answer within {limit:?} (connect_timeout)");
    if let Some(last) = last_unsent {
        message.push_str("; last error: ");
        message.push_str(&last);
    }
    Error::unavailable(message)
}

/// The revision at which a response was served.
pub(crate) fn revision(header: Option<&ResponseHeader>) -> Result<i64> {
    header
        .map(ResponseHeader::revision)
        .ok_or_else(|| Error::backend("etcd answered without a response header"))
}

/// The key-values of the `i`-th operation of a transaction, when it was a
/// range (get).
pub(crate) fn txn_range(resp: &TxnResponse, i: usize) -> Vec<KeyValue> {
    match resp.op_responses().into_iter().nth(i) {
        Some(TxnOpResponse::Get(mut g)) => g.take_kvs(),
        _ => Vec::new(),
    }
}

/// A capped exponential back-off: 20 ms doubling to 1 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(Duration::from_millis(20))
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }

    pub(crate) fn reset(&mut self) {
        *self = Backoff::new();
    }
}

/// The connected etcd backend.
struct EtcdBackend {
    shared: Arc<Shared>,
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
            session::EtcdSession::open(self.shared.clone(), ttl, loss).await?,
        ))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<()> {
        session::revoke_by_id(&self.shared, session_id).await
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        group::members(&self.shared, group).await
    }

    async fn watch_group(&self, group: &str) -> Result<BoxStream<'static, Result<GroupEvent>>> {
        group::watch(self.shared.clone(), group).await
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        election::leader(&self.shared, election).await
    }

    async fn observe(&self, election: &str) -> Result<BoxStream<'static, Result<Option<Leader>>>> {
        election::observe(self.shared.clone(), election).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let data_key = self.shared.layout.data(key);
        let resp = self.shared.get("read", &data_key, None).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let layout = &self.shared.layout;
        let keys_only = GetOptions::new().with_prefix().with_keys_only();
        let resp = self
            .shared
            .get("list leftovers", &layout.root(), Some(keys_only))
            .await?;
        let data = layout.data_root();
        let mut out: Vec<String> = resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .filter(|k| !k.starts_with(&data))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Shorthand used by the primitives: a `NotHeld` error.
pub(crate) fn not_held(what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::NotHeld, what.to_string())
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
