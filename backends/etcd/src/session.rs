//! Sessions: one etcd lease each, plus the bookkeeping of the keys a
//! session creates under its lease.
//!
//! - Opening grants a lease (etcd may raise the TTL to its minimum; the
//!   granted TTL is reported) and registers `<ns>/session/<lease hex>`
//!   under it, so `leftovers()` can see sessions that were never closed.
//! - [`EtcdSession::keep_alive`] is one `LeaseKeepAlive` round trip on a
//!   long-lived stream; a TTL of 0 in the answer means the lease is gone.
//!   An attempt that gets no answer within a sixth of the TTL is abandoned
//!   for the next endpoint (renewing twice is harmless).
//! - The session keeps per-key async locks ([`KeyLocks`]) that keep a later
//!   acquisition of a key by the same session from racing the clean-up of
//!   an abandoned one; the keys themselves (`OwnKey`, `HeldKey`) are
//!   `owned.rs`'s, which builds on this file and not the other way round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use quorate_core::backoff::Backoff;
use quorate_core::cleanup::{spawn_retrying, GiveUp};
use quorate_core::loss::LossNotifier;
use quorate_core::{Error, Result};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::client::Shared;
use crate::deletions::Deletions;
use crate::error;
use crate::keys::lease_hex;

/// One session: an etcd lease.
pub(crate) struct EtcdSession {
    pub(crate) shared: Arc<Shared>,
    /// The coordinator's shared deletion streams (queue waits).
    pub(crate) deletions: Arc<Deletions>,
    pub(crate) lease: i64,
    pub(crate) ttl: Duration,
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
        deletions: Arc<Deletions>,
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
            deletions,
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
    pub(crate) async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
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

/// How long a clean-up of an abandoned session or acquisition keeps trying;
/// after that the lease TTL frees what is left.
pub(crate) const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

impl EtcdSession {
    pub(crate) async fn keep_alive(&self) -> Result<()> {
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

    pub(crate) async fn revoke(&self) -> Result<()> {
        if let Ok(mut slot) = self.keeper.try_lock() {
            slot.take();
        }
        revoke_lease(&self.shared, self.lease).await
    }
}
