//! The connection to etcd and the discipline of every request.
//!
//! There is one `etcd-client` client per endpoint, and requests go to a
//! *preferred* endpoint. An endpoint whose connection cannot be made, or
//! that does not answer in time (a dead, paused or partitioned member), is
//! passed over for the next one, so such a member costs at most the request
//! in flight. A request that never reached a server is sent again at once,
//! to the next endpoint; a request that may have reached a server is never
//! repeated behind the caller's back. Every request is bounded by the
//! request timeout (the URL's `connect_timeout`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, GetOptions, GetResponse, KeyValue, ResponseHeader, Txn, TxnOpResponse,
    TxnResponse, WatchOptions, WatchStream,
};
use quorate_core::backoff::Backoff;
use quorate_core::{Error, Result};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error;
use crate::keys::Layout;

/// What every part of the backend shares: the endpoints, the key layout
/// and the limit on one request.
pub(crate) struct Shared {
    endpoints: Endpoints,
    pub(crate) layout: Layout,
    pub(crate) request_timeout: Duration,
}

/// One lazily built client per endpoint, and which one is preferred.
struct Endpoints {
    urls: Vec<String>,
    clients: Vec<OnceCell<Client>>,
    options: ConnectOptions,
    preferred: AtomicUsize,
}

impl Endpoints {
    /// The client of endpoint `i`, built on first use (with credentials,
    /// building it authenticates: a request to that endpoint).
    async fn client(&self, i: usize) -> std::result::Result<Client, etcd_client::Error> {
        self.clients[i]
            .get_or_try_init(|| Client::connect([&self.urls[i]], Some(self.options.clone())))
            .await
            .cloned()
    }

    fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// Endpoint `i` failed: prefer the next one (unless someone already
    /// moved on).
    fn pass_over(&self, i: usize) {
        let next = (i + 1) % self.urls.len();
        if self
            .preferred
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.urls.len() > 1
        {
            tracing::debug!(from = %self.urls[i], to = %self.urls[next], "passing over an etcd endpoint");
        }
    }
}

impl Shared {
    /// Set up the endpoints and make one request that needs the credentials
    /// (a read in the namespace), all within `request_timeout`.
    pub(crate) async fn connect(
        urls: Vec<String>,
        options: ConnectOptions,
        layout: Layout,
        request_timeout: Duration,
    ) -> Result<Shared> {
        let clients = urls.iter().map(|_| OnceCell::new()).collect();
        let shared = Shared {
            endpoints: Endpoints {
                urls,
                clients,
                options,
                preferred: AtomicUsize::new(0),
            },
            layout,
            request_timeout,
        };
        let root = shared.layout.root();
        shared
            .get(
                "first request",
                &root,
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(shared)
    }

    /// Run one etcd request made by `make` from a client, bounded by the
    /// request timeout, mapping its error; see the module documentation for
    /// which endpoint it goes to and when it is sent again.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, mut make: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.send(op, |_, c| make(c)).await
    }

    /// The preferred endpoint's client, for a stream that stays on one
    /// endpoint, with its index for [`Shared::pass_over`].
    pub(crate) async fn preferred_client(&self, op: &'static str) -> Result<(usize, Client)> {
        self.send(op, |i, c| std::future::ready(Ok((i, c)))).await
    }

    async fn send<T, F, Fut>(&self, op: &'static str, mut make: F) -> Result<T>
    where
        F: FnMut(usize, Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut unsent = Unsent::new(self.endpoints.urls.len());
        loop {
            let i = self.endpoints.preferred();
            let attempt = async { make(i, self.endpoints.client(i).await?).await };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => {
                    self.endpoints.pass_over(i);
                    return Err(self.timed_out(op, unsent.last));
                }
                Ok(Err(e)) if error::never_sent(&e) => {
                    tracing::debug!(op, endpoint = %self.endpoints.urls[i], error = ?e, "request not sent");
                    self.endpoints.pass_over(i);
                    unsent.failed(error::describe_unsent(&e), deadline).await;
                }
                Ok(r) => return r.map_err(|e| error::map(op, e)),
            }
        }
    }

    /// The endpoint requests go to now.
    pub(crate) fn preferred(&self) -> usize {
        self.endpoints.preferred()
    }

    /// Endpoint `i` failed a stream or did not answer in time.
    pub(crate) fn pass_over(&self, i: usize) {
        self.endpoints.pass_over(i);
    }

    /// The error of a request that got no answer in time; `last_unsent`
    /// says why the last attempt could not even be sent, if so.
    fn timed_out(&self, op: &str, last_unsent: Option<String>) -> Error {
        let mut message = format!(
            "etcd {op}: no answer within {:?} (connect_timeout)",
            self.request_timeout
        );
        if let Some(last) = last_unsent {
            message.push_str("; last error: ");
            message.push_str(&last);
        }
        Error::unavailable(message)
    }

    /// One range request.
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

    /// Open a watch stream on the preferred endpoint (the request that
    /// creates it is bounded by the request timeout; the stream is not).
    /// Returns the endpoint's index with it, for [`Shared::pass_over`].
    pub(crate) async fn watch(
        &self,
        op: &'static str,
        key: &[u8],
        options: WatchOptions,
    ) -> Result<(usize, WatchStream)> {
        self.send(op, |i, mut c| {
            let options = options.clone();
            async move { c.watch(key, Some(options)).await.map(|s| (i, s)) }
        })
        .await
    }

    /// One transaction.
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
        let mut backoff = Backoff::default();
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

/// Attempts that could not be sent: after a round of every endpoint, wait
/// a little (capped, and never past the deadline) before the next round.
struct Unsent {
    endpoints: usize,
    in_round: usize,
    pause: Duration,
    last: Option<String>,
}

impl Unsent {
    fn new(endpoints: usize) -> Self {
        Unsent {
            endpoints,
            in_round: 0,
            pause: Duration::from_millis(5),
            last: None,
        }
    }

    async fn failed(&mut self, why: String, deadline: Instant) {
        self.last = Some(why);
        self.in_round += 1;
        if self.in_round >= self.endpoints {
            self.in_round = 0;
            tokio::time::sleep_until((Instant::now() + self.pause).min(deadline)).await;
            self.pause = (self.pause * 2).min(Duration::from_millis(200));
        }
    }
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
