//! The raw baseline of `etcd://` and `etcds://`: the `etcd-client` crate
//! used directly, on the same endpoints, credentials, TLS files and
//! namespace as the URL.
//!
//! Everything it writes lives under a scratch prefix
//! `<namespace>/bench-raw-<random>/`, one key per lock name (encoded with
//! [`quorate::name::encode`], as the backend encodes names). Every
//! operation deletes the keys it wrote, so a run that succeeds leaves
//! nothing behind; [`RawBaseline::close`] deletes the whole prefix anyway,
//! for whatever a failed operation left. The keys have no lease: a process
//! that dies mid-run leaves them until someone deletes the prefix.
//!
//! The URL is validated as `quorate-etcd` validates it (that crate exposes
//! no helper for it): endpoints with the default port 2379, the namespace
//! (default `quorate`), `user:password@`, and for `etcds://` the `ca`,
//! `cert` and `key` files.
//!
//! All raw operations share one connection (one `etcd-client` client,
//! balanced over the URL's endpoints), as all of quorate's sessions in
//! `run` share one coordinator; the hand-off's watcher uses a second one.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, TlsOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchStream,
};
use quorate::{Config, Error, ErrorKind, Result};

use super::RawBaseline;

/// Options of an etcd URL besides the generic ones (as the backend).
const OPTIONS: &[&str] = &["ca", "cert", "key"];

/// The namespace of a URL without a path (as the backend).
const DEFAULT_NAMESPACE: &str = "quorate";

/// The port of an endpoint given without one (as the backend).
const DEFAULT_PORT: u16 = 2379;

/// The raw baseline of `etcd://` and `etcds://`.
///
/// - acquire + release: one txn `if create_revision(key) == 0 then
///   put(key)` and one delete. A contender that finds the key taken (only
///   in the one-lock throughput scenario) watches the key from the txn's
///   revision for its delete, then tries the txn again: it waits, never
///   spins. All waiters retry on a delete; one wins (no queue, no
///   fairness).
/// - hand-off: one connection deletes a key that another connection
///   watches; the figure is the time from sending the delete to the
///   watch's delete event reaching the watcher.
pub struct EtcdBaseline {
    /// Acquire/release, the hand-off's holder, the clean-up.
    client: Client,
    /// The hand-off's watcher: a connection of its own.
    watcher: Client,
    /// `<namespace>/bench-raw-<random>/`.
    scratch: String,
    /// The redacted URL, for messages.
    shown: String,
}

impl std::fmt::Debug for EtcdBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBaseline")
            .field("url", &self.shown)
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

impl EtcdBaseline {
    /// Open two connections to the URL's endpoints and check, within
    /// `connect_timeout`, that etcd answers and accepts the credentials.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for a URL the backend would refuse (another scheme,
    /// no endpoints, an empty namespace segment, a user without a password
    /// or the reverse, unknown options, TLS options on `etcd://`, TLS files
    /// that cannot be read); `Unavailable` when no endpoint answers within
    /// `connect_timeout`; `Unauthenticated` when etcd refuses the
    /// credentials.
    pub async fn connect(config: &Config) -> Result<EtcdBaseline> {
        let (endpoints, namespace, options) = settings(config)?;
        let shown = config.redacted();
        let limit = config.connect_timeout;
        let probe = format!("{namespace}/");
        let open = || async {
            let mut client = Client::connect(&endpoints, Some(options.clone()))
                .await
                .map_err(|e| etcd_error("connect to", &shown, e))?;
            client
                .get(probe.as_str(), Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| etcd_error("first read of", &probe, e))?;
            Ok::<_, Error>(client)
        };
        let both = async { futures::future::try_join(open(), open()).await };
        let (client, watcher) = match tokio::time::timeout(limit, both).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::unavailable(format!(
                    "no etcd endpoint of `{shown}` answered within {limit:?} (connect_timeout)"
                )))
            }
        };
        let scratch = format!("{namespace}/bench-raw-{:016x}/", rand::random::<u64>());
        tracing::debug!(url = %shown, %scratch, "etcd raw baseline connected");
        Ok(EtcdBaseline {
            client,
            watcher,
            scratch,
            shown,
        })
    }

    /// The key of lock `name` under the scratch prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{}", self.scratch, quorate::name::encode(name))
    }
}

#[async_trait]
impl RawBaseline for EtcdBaseline {
    fn describe(&self) -> String {
        "etcd-client: txn put-if-absent (create_revision == 0) + delete, a taken key \
         waits on a watch for its delete; hand-off: delete by one connection to the \
         watch event at another"
            .into()
    }

    async fn acquire_release(&self, name: &str) -> Result<()> {
        let key = self.key(name);
        let mut client = self.client.clone();
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), "", None)]);
            let resp = client
                .txn(txn)
                .await
                .map_err(|e| etcd_error("txn put-if-absent", &key, e))?;
            if resp.succeeded() {
                break;
            }
            let revision = resp.header().map(|h| h.revision()).ok_or_else(|| {
                Error::backend(format!("etcd txn `{key}`: a response without a header"))
            })?;
            wait_deleted(&mut client, &key, revision).await?;
        }
        client
            .delete(key.as_str(), None)
            .await
            .map_err(|e| etcd_error("delete", &key, e))?;
        Ok(())
    }

    async fn handoff(&self, name: &str) -> Result<Duration> {
        let key = self.key(name);
        let mut holder = self.client.clone();
        let put = holder
            .put(key.as_str(), "", None)
            .await
            .map_err(|e| etcd_error("put", &key, e))?;
        let revision = put.header().map(|h| h.revision()).ok_or_else(|| {
            Error::backend(format!("etcd put `{key}`: a response without a header"))
        })?;
        let mut stream = watch_deletes(&mut self.watcher.clone(), &key, revision).await?;
        // The client sends the request when `delete` is first polled,
        // right below.
        let sent = Instant::now();
        let deleted = async {
            holder
                .delete(key.as_str(), None)
                .await
                .map_err(|e| etcd_error("delete", &key, e))
        };
        let notified = async {
            next_delete(&mut stream, &key).await?;
            Ok(Instant::now())
        };
        let (_, at) = tokio::try_join!(deleted, notified)?;
        Ok(at.saturating_duration_since(sent))
    }

    async fn close(&self) -> Result<()> {
        let resp = self
            .client
            .clone()
            .delete(
                self.scratch.as_str(),
                Some(DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| etcd_error("delete prefix", &self.scratch, e))?;
        tracing::debug!(scratch = %self.scratch, deleted = resp.deleted(), "etcd raw baseline closed");
        Ok(())
    }
}

/// Wait until `key` is deleted after `revision` (or the history from there
/// was compacted away, when the caller must look again anyway).
async fn wait_deleted(client: &mut Client, key: &str, revision: i64) -> Result<()> {
    let mut stream = watch_deletes(client, key, revision).await?;
    next_delete(&mut stream, key).await
}

/// A watch of `key`'s deletes after `revision`, once etcd has created it.
async fn watch_deletes(client: &mut Client, key: &str, revision: i64) -> Result<WatchStream> {
    let options = WatchOptions::new()
        .with_start_revision(revision + 1)
        .with_filters([WatchFilterType::NoPut]);
    let mut stream = client
        .watch(key, Some(options))
        .await
        .map_err(|e| etcd_error("watch", key, e))?;
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|e| etcd_error("watch", key, e))?
            .ok_or_else(|| Error::unavailable(format!("etcd watch `{key}`: the stream ended")))?;
        if resp.canceled() {
            return Err(Error::backend(format!(
                "etcd watch `{key}`: cancelled at creation: {}",
                resp.cancel_reason()
            )));
        }
        if resp.created() {
            return Ok(stream);
        }
    }
}

/// The next delete event of a [`watch_deletes`] stream. A watch cancelled
/// because its start revision was compacted counts as one: the key may be
/// long gone, and the caller looks again.
async fn next_delete(stream: &mut WatchStream, key: &str) -> Result<()> {
    loop {
        let resp = stream
            .message()
            .await
            .map_err(|e| etcd_error("watch", key, e))?
            .ok_or_else(|| Error::unavailable(format!("etcd watch `{key}`: the stream ended")))?;
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Ok(());
            }
            return Err(Error::backend(format!(
                "etcd watch `{key}`: cancelled: {}",
                resp.cancel_reason()
            )));
        }
        if resp
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return Ok(());
        }
    }
}

/// The endpoints (`http[s]://host:port`), the namespace and the client
/// options of a URL, validated as `quorate-etcd` does.
fn settings(config: &Config) -> Result<(Vec<String>, String, ConnectOptions)> {
    let tls = match config.scheme.as_str() {
        "etcd" => false,
        "etcds" => true,
        other => {
            return Err(Error::invalid_config(format!(
                "the raw etcd baseline takes etcd:// and etcds:// URLs, not `{other}://`"
            )))
        }
    };
    config.reject_unknown_options(OPTIONS)?;
    if config.endpoints.is_empty() {
        return Err(Error::invalid_config(format!(
            "`{config}`: an etcd URL needs at least one host:port"
        )));
    }
    let namespace = if config.path.is_empty() {
        DEFAULT_NAMESPACE.to_owned()
    } else {
        config.path.trim_end_matches('/').to_owned()
    };
    if namespace.is_empty() || namespace.split('/').any(str::is_empty) {
        return Err(Error::invalid_config(format!(
            "`{config}`: the namespace `{}` has an empty path segment",
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
    let mut options = ConnectOptions::new().with_connect_timeout(config.connect_timeout);
    match (&config.username, &config.password) {
        (Some(user), Some(password)) => {
            options = options.with_user(user.clone(), password.expose().to_owned());
        }
        (None, None) => {}
        _ => {
            return Err(Error::invalid_config(format!(
                "`{config}`: etcd needs both a user name and a password, or neither"
            )))
        }
    }
    if tls {
        options = options.with_tls(tls_options(config)?);
    } else if let Some(k) = OPTIONS.iter().find(|k| config.option(k).is_some()) {
        return Err(Error::invalid_config(format!(
            "option `{k}` is for TLS: use an `etcds://` URL"
        )));
    }
    Ok((endpoints, namespace, options))
}

/// The TLS options of an `etcds://` URL: the servers' CA, and optionally a
/// client certificate and its key.
fn tls_options(config: &Config) -> Result<TlsOptions> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| {
            Error::invalid_config(format!("cannot read the {what} file `{path}`: {e}"))
        })
    };
    let ca = config.option("ca").ok_or_else(|| {
        Error::invalid_config(
            "an `etcds://` URL needs `ca=/path/to/ca.pem` (the CA of the servers)",
        )
    })?;
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
    match (config.option("cert"), config.option("key")) {
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

/// Map a client error to quorate's, naming the operation and the key.
fn etcd_error(op: &str, key: &str, e: etcd_client::Error) -> Error {
    use tonic::Code;
    let message = format!("etcd {op} `{key}`: {e}");
    let kind = match &e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Unauthenticated,
            Code::InvalidArgument | Code::FailedPrecondition
                if s.message().contains("auth") || s.message().contains("user name") =>
            {
                ErrorKind::Unauthenticated
            }
            Code::Unavailable | Code::DeadlineExceeded => ErrorKind::Unavailable,
            // The connection broke under the request.
            Code::Unknown if s.message().contains("transport error") => ErrorKind::Unavailable,
            _ => ErrorKind::Backend,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            ErrorKind::Unavailable
        }
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
            ErrorKind::InvalidConfig
        }
        _ => ErrorKind::Backend,
    };
    Error::new(kind, message).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<(Vec<String>, String, ConnectOptions)> {
        settings(&Config::parse(url).unwrap())
    }

    #[test]
    fn endpoints_and_namespace_as_the_backend() {
        let (endpoints, namespace, _) = parse("etcd://h1:1,h2/app/locks?ttl=3s").unwrap();
        assert_eq!(endpoints, ["http://h1:1", "http://h2:2379"]);
        assert_eq!(namespace, "app/locks");
        assert_eq!(parse("etcd://h:1").unwrap().1, DEFAULT_NAMESPACE);
    }

    #[test]
    fn refuses_what_the_backend_refuses() {
        for url in [
            "etcd://h:1?tll=3s",
            "etcd://h:1?ca=/x",
            "etcds://h:1",
            "etcds://h:1?ca=/nonexistent/ca.pem",
            "etcd:///ns",
            "etcd://h:1/a//b",
            "etcd://alice@h:1",
        ] {
            let e = parse(url).err().unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        }
    }
}
