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
//! The URL is read by `quorate-etcd` itself ([`quorate_etcd::RawEtcd`]):
//! endpoints with the default port 2379, the namespace (default
//! `quorate`), `user:password@`, and for `etcds://` the `ca`, `cert` and
//! `key` files.
//!
//! All raw operations share one connection (one `etcd-client` client,
//! balanced over the URL's endpoints), as all of quorate's sessions in
//! `run` share one coordinator; the hand-off's watcher uses a second one.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions, WatchStream,
};
use quorate::{Config, Error, ErrorKind, Result};

use super::{RawBaseline, Waiter, SETTLE};

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
        let raw = quorate_etcd::RawEtcd::from_config(config)?;
        let namespace = raw.namespace();
        let shown = config.redacted();
        let limit = config.connect_timeout;
        let probe = format!("{namespace}/");
        let open = || async {
            let mut client = raw
                .client()
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
         watch event at another connection, awaited in a task idle for 5 ms"
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
        let watched = key.clone();
        let waiter = Waiter::spawn(async move {
            next_delete(&mut stream, &watched).await?;
            Ok(Instant::now())
        });
        tokio::time::sleep(SETTLE).await;
        let sent = Instant::now();
        holder
            .delete(key.as_str(), None)
            .await
            .map_err(|e| etcd_error("delete", &key, e))?;
        Ok(waiter.notified().await?.saturating_duration_since(sent))
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
