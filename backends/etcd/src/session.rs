//! Sessions: one etcd lease each, plus the bookkeeping of the keys a
//! session creates under its lease.
//!
//! - Opening grants a lease (etcd may raise the TTL to its minimum; the
//!   granted TTL is reported) and registers `<ns>/session/<lease hex>`
//!   under it, so `leftovers()` can see sessions that were never closed.
//! - [`SessionBackend::keep_alive`] is one `LeaseKeepAlive` round trip on a
//!   long-lived stream; a TTL of 0 in the answer means the lease is gone.
//!   An attempt that gets no answer within a sixth of the TTL is abandoned
//!   for the next endpoint (renewing twice is harmless).
//! - Every key the session creates (queue entries, candidacies, members)
//!   goes through [`OwnKey`]: a drop guard that deletes the key in the
//!   background if the creating future is dropped, and a per-key async
//!   lock ([`KeyLocks`]) that keeps a later acquisition of the same key by
//!   the same session from racing that clean-up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnResponse,
};
use quorate_core::backend::async_trait;
use quorate_core::backoff::Backoff;
use quorate_core::cleanup::{spawn_retrying, GiveUp};
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{
    Acquire, Acquired, HeldLeadership, HeldMembership, LockKind, SessionBackend,
};
use quorate_core::{Error, FencingToken, Result};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use crate::client::{revision, txn_range, Shared};
use crate::error;
use crate::keys::lease_hex;

/// One session: an etcd lease.
pub(crate) struct EtcdSession {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lease: i64,
    ttl: Duration,
    /// The keep-alive stream, set up lazily; taken out during a round trip
    /// so that a round trip dropped half-way never leaves an unread answer
    /// behind for the next one to mistake for its own.
    keeper: AsyncMutex<Option<Keeper>>,
    pub(crate) loss: LossNotifier,
    pub(crate) key_locks: KeyLocks,
}

impl EtcdSession {
    /// Grant a lease of `ttl` (rounded up to whole seconds) and register
    /// the session under it.
    pub(crate) async fn open(
        shared: Arc<Shared>,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<EtcdSession> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let secs = i64::try_from(secs.max(1))
            .map_err(|_| Error::invalid_config(format!("TTL {ttl:?} is too long")))?;
        let granted = shared
            .call("grant lease", |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        let lease = granted.id();
        // Revoke the lease if this future is dropped before returning.
        let mut revoke_guard = RevokeOnDrop {
            shared: Some(shared.clone()),
            lease,
        };
        let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0).max(1));
        let marker = shared.layout.session(lease);
        if let Err(e) = shared
            .call("register session", |mut c| {
                let marker = marker.clone();
                async move {
                    c.put(marker, "", Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await
        {
            let _ = revoke_lease(&shared, lease).await;
            revoke_guard.shared = None;
            return Err(e);
        }
        revoke_guard.shared = None;
        tracing::debug!(lease = %lease_hex(lease), ?ttl, "etcd session opened");
        Ok(EtcdSession {
            shared,
            lease,
            ttl,
            keeper: AsyncMutex::new(None),
            loss,
            key_locks: KeyLocks::default(),
        })
    }

    /// Pass an error through, firing the session's loss first if it says
    /// the lease is gone.
    pub(crate) fn note(&self, e: Error) -> Error {
        if error::is_lease_gone(&e) {
            self.loss
                .fire(format!("etcd lease {} is gone: {e}", lease_hex(self.lease)));
        }
        e
    }

    fn lost(&self) -> Error {
        let e = Error::lost(format!(
            "etcd lease {} has expired or was revoked",
            lease_hex(self.lease)
        ));
        self.note(e)
    }
}

/// The keep-alive stream of a lease, on one endpoint.
struct Keeper {
    endpoint: usize,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// Revokes a freshly granted lease when `open` is dropped half-way.
struct RevokeOnDrop {
    shared: Option<Arc<Shared>>,
    lease: i64,
}

impl Drop for RevokeOnDrop {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let lease = self.lease;
        spawn_retrying(
            "revoke the lease of an abandoned session",
            GiveUp::After(CLEANUP_LIMIT),
            move || {
                let shared = shared.clone();
                async move { revoke_lease(&shared, lease).await }
            },
        );
    }
}

#[async_trait]
impl SessionBackend for EtcdSession {
    fn id(&self) -> String {
        lease_hex(self.lease)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn keep_alive(&self) -> Result<()> {
        // Renewing a lease twice is harmless, so an attempt that gets no
        // answer soon is abandoned for another endpoint (core bounds the
        // whole call, and counts the renewal from when the call began).
        let attempt_limit =
            (self.ttl / 6).clamp(Duration::from_millis(100), self.shared.request_timeout);
        let mut slot = self.keeper.lock().await;
        let mut backoff = Backoff::default();
        loop {
            let (endpoint, failure) = match slot.take() {
                None => {
                    // Opening a stream sends the first keep-alive and reads its
                    // answer: one round trip.
                    let (endpoint, mut client) = self.shared.preferred_client("keep alive").await?;
                    let opened =
                        tokio::time::timeout(attempt_limit, client.lease_keep_alive(self.lease))
                            .await;
                    match opened {
                        Ok(Ok((keeper, stream))) => {
                            *slot = Some(Keeper {
                                endpoint,
                                keeper,
                                stream,
                            });
                            return Ok(());
                        }
                        Ok(Err(e)) => (endpoint, error::map("keep alive", e)),
                        Err(_) => (endpoint, Error::unavailable("keep alive: no answer")),
                    }
                }
                Some(mut k) => {
                    let round_trip = async {
                        k.keeper.keep_alive().await?;
                        k.stream.message().await
                    };
                    match tokio::time::timeout(attempt_limit, round_trip).await {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                            *slot = Some(k);
                            return Ok(());
                        }
                        Ok(Ok(Some(_))) => return Err(self.lost()),
                        Ok(Ok(None)) => {
                            (k.endpoint, Error::unavailable("keep-alive stream closed"))
                        }
                        Ok(Err(e)) => (k.endpoint, error::map("keep alive", e)),
                        Err(_) => (k.endpoint, Error::unavailable("keep alive: no answer")),
                    }
                }
            };
            if !failure.is_retryable() {
                return Err(self.note(failure));
            }
            tracing::debug!(error = %failure, "keep-alive attempt failed; trying another endpoint");
            self.shared.pass_over(endpoint);
            backoff.wait().await;
        }
    }

    async fn revoke(&self) -> Result<()> {
        if let Ok(mut slot) = self.keeper.try_lock() {
            slot.take();
        }
        revoke_lease(&self.shared, self.lease).await
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

/// Revoke a session of this namespace by id (the lease id in hex, as
/// `etcdctl lease list` shows it).
pub(crate) async fn revoke_by_id(shared: &Shared, session_id: &str) -> Result<()> {
    let lease = u64::from_str_radix(session_id, 16)
        .ok()
        .and_then(|l| i64::try_from(l).ok())
        .filter(|l| *l > 0)
        .ok_or_else(|| {
            Error::invalid_name(format!(
                "`{session_id}` is not an etcd session id (a lease id in hex)"
            ))
        })?;
    let marker = shared.layout.session(lease);
    let found = shared
        .call("find session", |mut c| {
            let marker = marker.clone();
            async move { c.get(marker, None).await }
        })
        .await?;
    if found.kvs().is_empty() {
        return Err(crate::not_held(format!(
            "no live session {session_id} in namespace `{}`",
            shared.layout.namespace()
        )));
    }
    match shared
        .call("revoke lease", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error::is_lease_gone(&e) => Err(crate::not_held(format!(
            "session {session_id} has already ended"
        ))),
        Err(e) => Err(e),
    }
}

/// Revoke `lease`; a lease already gone counts as revoked.
async fn revoke_lease(shared: &Shared, lease: i64) -> Result<()> {
    match shared
        .call("revoke lease", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error::is_lease_gone(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Per-key async locks of one session: whoever creates or cleans up key K
/// holds K's lock, so a new acquisition waits for the clean-up of an
/// abandoned one instead of racing it.
#[derive(Default)]
pub(crate) struct KeyLocks {
    inner: StdMutex<KeyLockMap>,
}

#[derive(Default)]
struct KeyLockMap {
    locks: HashMap<String, Arc<AsyncMutex<()>>>,
    /// Prune unused entries when the map grows past this (amortised O(1)).
    prune_at: usize,
}

impl KeyLocks {
    async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.inner.lock().unwrap();
            if map.locks.len() >= map.prune_at {
                map.locks.retain(|_, l| Arc::strong_count(l) > 1);
                map.prune_at = (map.locks.len() * 2).max(64);
            }
            map.locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// What [`OwnKey::create`] found.
pub(crate) enum Created {
    /// The key now exists under our lease; its create revision is recorded.
    /// With what each of the `reads` passed to `create` returned, in order,
    /// read in the same transaction, right after the put.
    Yes(Vec<Vec<KeyValue>>),
    /// Not created: the extra compares failed, or the key exists and
    /// belongs to another session.
    Refused,
}

/// A key this session is about to create. Until [`OwnKey::keep`] or
/// [`OwnKey::forget`], dropping it deletes the key in the background: only
/// the key of our lease (and of the create revision we made, once known).
///
/// The create request runs in its own task. Dropping the acquisition
/// detaches it rather than cancelling it, and the clean-up waits for its
/// answer before deleting: a create that the server applies late (after a
/// delete sent on another stream) can never leave the key behind.
pub(crate) struct OwnKey {
    shared: Arc<Shared>,
    key: String,
    lease: i64,
    rev: Option<i64>,
    in_flight: Option<JoinHandle<Result<TxnResponse>>>,
    guard: Option<OwnedMutexGuard<()>>,
    armed: bool,
}

impl OwnKey {
    /// Take `key`'s lock in this session (waiting for any clean-up of it).
    pub(crate) async fn claim(session: &EtcdSession, key: String) -> OwnKey {
        let guard = session.key_locks.lock(&key).await;
        OwnKey {
            shared: session.shared.clone(),
            key,
            lease: session.lease,
            rev: None,
            in_flight: None,
            guard: Some(guard),
            armed: true,
        }
    }

    /// Put the key with `value` under the lease if it does not exist and
    /// every compare of `extra` holds, in one transaction, and run `reads`
    /// (range requests) in the same transaction after the put: they see
    /// the new key, and nothing can happen between the put and them. A
    /// leftover of this same session (an earlier clean-up that failed) is
    /// deleted and the put retried. With `retry`, retryable errors are
    /// retried (for waits); without, they are returned (for bounded calls).
    ///
    /// # Errors
    ///
    /// The request's error (after retries, with `retry`), firing the
    /// session's loss first when it says the lease is gone.
    ///
    /// # Cancel safety
    ///
    /// The request runs in a task of its own; dropping this future leaves
    /// it to the drop guard, which waits for its answer and then deletes
    /// the key if it was created.
    pub(crate) async fn create(
        &mut self,
        session: &EtcdSession,
        value: &[u8],
        extra: &[Compare],
        reads: &[TxnOp],
        retry: bool,
    ) -> Result<Created> {
        loop {
            let mut when = vec![Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                0,
            )];
            when.extend_from_slice(extra);
            let mut then = vec![TxnOp::put(
                self.key.clone(),
                value,
                Some(PutOptions::new().with_lease(self.lease)),
            )];
            then.extend_from_slice(reads);
            let txn = Txn::new()
                .when(when)
                .and_then(then)
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let shared = self.shared.clone();
            let request = tokio::spawn(async move {
                if retry {
                    shared.txn_retrying("create key", txn).await
                } else {
                    shared.txn("create key", txn).await
                }
            });
            let answer = self.in_flight.insert(request).await;
            self.in_flight = None;
            let resp = answer
                .map_err(|e| Error::backend(format!("the create request's task failed: {e}")))?
                .map_err(|e| session.note(e))?;
            if resp.succeeded() {
                self.rev = Some(revision(resp.header())?);
                let read = (1..=reads.len()).map(|i| txn_range(&resp, i)).collect();
                return Ok(Created::Yes(read));
            }
            let Some(existing) = txn_range(&resp, 0).into_iter().next() else {
                return Ok(Created::Refused);
            };
            if existing.lease() != self.lease {
                return Ok(Created::Refused);
            }
            tracing::warn!(key = %self.key, "removing a leftover key of this session before re-creating it");
            delete_own(
                &self.shared,
                &self.key,
                self.lease,
                Some(existing.create_revision()),
            )
            .await?;
        }
    }

    /// The key's create revision (after a successful [`OwnKey::create`]).
    pub(crate) fn rev(&self) -> i64 {
        self.rev.expect("create succeeded")
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Nothing was created: no clean-up needed.
    pub(crate) fn forget(mut self) {
        self.armed = false;
    }

    /// The key stays: hand it to a grant, candidacy or membership.
    ///
    /// # Errors
    ///
    /// [`quorate_core::ErrorKind::Backend`] when the create revision is not
    /// a fencing token (not positive); the key is then removed as if the
    /// acquisition had been dropped.
    pub(crate) fn keep(mut self) -> Result<HeldKey> {
        let fence = FencingToken::try_from(self.rev())?;
        self.armed = false;
        Ok(HeldKey {
            shared: self.shared.clone(),
            key: self.key.clone(),
            lease: self.lease,
            rev: self.rev(),
            fence,
            guard: StdMutex::new(self.guard.take()),
        })
    }
}

impl Drop for OwnKey {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (shared, key, lease, mut rev) =
            (self.shared.clone(), self.key.clone(), self.lease, self.rev);
        let guard = self.guard.take();
        let in_flight = self.in_flight.take();
        tracing::debug!(%key, "abandoned acquisition: deleting its key in the background");
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%key, "no runtime to clean up in; the lease TTL will");
            return;
        };
        runtime.spawn(async move {
            if let Some(mut request) = in_flight {
                // Let the create finish first, so the delete is applied
                // after it.
                match tokio::time::timeout(shared.request_timeout, &mut request).await {
                    Ok(Ok(Ok(resp))) if resp.succeeded() => rev = revision(resp.header()).ok(),
                    Ok(_) => {}
                    Err(_) => request.abort(),
                }
            }
            spawn_retrying(
                "delete the key of an abandoned acquisition",
                GiveUp::After(CLEANUP_LIMIT),
                move || {
                    // The key's lock is held until the clean-up ends, so a
                    // new acquisition of the key waits for it.
                    let _key_lock = &guard;
                    let (shared, key) = (shared.clone(), key.clone());
                    async move { delete_own(&shared, &key, lease, rev).await }
                },
            );
        });
    }
}

/// A key this session holds: a lock grant, a candidacy or a membership.
pub(crate) struct HeldKey {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: String,
    pub(crate) lease: i64,
    /// The create revision.
    pub(crate) rev: i64,
    /// The fencing token of what this key grants: `rev`, checked.
    pub(crate) fence: FencingToken,
    guard: StdMutex<Option<OwnedMutexGuard<()>>>,
}

impl HeldKey {
    /// Compares that hold exactly while this key is still ours.
    pub(crate) fn still_mine(&self) -> [Compare; 2] {
        [
            Compare::create_revision(self.key.clone(), CompareOp::Equal, self.rev),
            Compare::lease(self.key.clone(), CompareOp::Equal, self.lease),
        ]
    }

    /// Whether the key still exists as we created it: one linearizable
    /// round trip.
    ///
    /// etcd serves a read-only transaction as a *serializable* read, from
    /// the contacted member's local state, unless one of its operations is
    /// a linearizable range (`IsTxnSerializable` in etcd's
    /// `server/etcdserver/txn`: vacuously true for a transaction without
    /// operations). A compare-only transaction would therefore let a member
    /// cut off from its peers answer "still held" long after the lease was
    /// revoked through the majority. The count-only range on the key makes
    /// the member confirm with the leader (ReadIndex) first; cut off, it
    /// errors instead of answering.
    pub(crate) async fn exists(&self, op: &'static str) -> Result<bool> {
        let txn = Txn::new().when(self.still_mine()).and_then([TxnOp::get(
            self.key.clone(),
            Some(GetOptions::new().with_count_only()),
        )]);
        Ok(self.shared.txn(op, txn).await?.succeeded())
    }

    /// Delete the key if it is still ours. Idempotent.
    pub(crate) async fn delete(&self, op: &'static str) -> Result<()> {
        let txn = Txn::new()
            .when(self.still_mine())
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        self.shared.txn(op, txn).await?;
        self.forget_lock();
        Ok(())
    }

    /// Let the session create this key again (after it was deleted).
    pub(crate) fn forget_lock(&self) {
        self.guard.lock().unwrap().take();
    }
}

/// Delete `key` if it is attached to `lease` (and was created at `rev`,
/// when known).
async fn delete_own(shared: &Shared, key: &str, lease: i64, rev: Option<i64>) -> Result<()> {
    let mut when = vec![Compare::lease(key, CompareOp::Equal, lease)];
    if let Some(rev) = rev {
        when.push(Compare::create_revision(key, CompareOp::Equal, rev));
    }
    let txn = Txn::new().when(when).and_then([TxnOp::delete(key, None)]);
    shared.txn_retrying("delete key", txn).await.map(|_| ())
}

/// How long a clean-up of an abandoned session or acquisition keeps trying;
/// after that the lease TTL frees what is left.
const CLEANUP_LIMIT: Duration = Duration::from_secs(30);
