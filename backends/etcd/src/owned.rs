//! Key ownership: every key a session creates under its lease (queue
//! entries, candidacies, members) goes through [`OwnKey`]: a drop guard
//! that deletes the key in the background if the creating future is
//! dropped, holding the session's per-key lock (`KeyLocks`, `session.rs`)
//! meanwhile. Once created and kept it is a [`HeldKey`]: a key of exactly
//! this lease and create revision, which every later check, write and
//! delete compares against, so a retry can never touch a later grant.

use std::sync::{Arc, Mutex as StdMutex};

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnResponse};
use quorate_core::cleanup::{spawn_retrying, GiveUp};
use quorate_core::loss::LossNotifier;
use quorate_core::{Error, FencingToken, Result};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use crate::client::{revision, txn_range, Shared};
use crate::session::{EtcdSession, CLEANUP_LIMIT};

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

    /// Check in the background that this key existed, as we created it,
    /// at `revision` (the revision of the predecessor's deletion that
    /// granted it, before our own key was read again), and fire `loss` if
    /// it did not. A read *at* that revision, so a release or loss after
    /// the grant does not count. An error (a compacted revision, a cut-off
    /// member) leaves it to the session's keep-alive, which reports a lease
    /// that is gone.
    pub(crate) fn confirm_later(&self, revision: i64, loss: LossNotifier) {
        let (shared, key, lease, rev) =
            (self.shared.clone(), self.key.clone(), self.lease, self.rev);
        tokio::spawn(async move {
            let at = GetOptions::new().with_revision(revision);
            match shared.get("confirm grant", &key, Some(at)).await {
                Ok(r) => {
                    let stood = r
                        .kvs()
                        .first()
                        .is_some_and(|kv| kv.create_revision() == rev && kv.lease() == lease);
                    if !stood {
                        tracing::warn!(%key, revision, "granted on the predecessor's deletion, but our key was gone by then");
                        loss.fire("the lock's key was gone when it was granted (lease revoked)");
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "confirming a grant failed; the keep-alive checks the lease")
                }
            }
        });
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
