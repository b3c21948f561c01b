//! Mutexes, in the layout of etcd's Go `concurrency.Mutex`, and the FIFO
//! queue machinery that read/write locks and elections share.
//!
//! A lock `name` is the prefix `<ns>/lock/<enc(name)>/` (its read/write
//! lock's readers queue there too, see `rwlock`). To queue, a session
//! puts `<prefix><lease hex>` (empty value, under its lease) in a
//! transaction that checks the key's create revision is 0. The holder is the
//! key with the lowest create revision; every other entry waits for the
//! deletion of its immediate predecessor only (the last key created before
//! it, `MaxCreateRev = myRev-1`), then checks again. `etcdctl lock
//! <ns>/lock/<enc(name)>` does exactly the same, so the two exclude each
//! other. The fencing token is the holder key's create revision.
//!
//! The transaction that creates the entry also reads, after the put, the
//! last two keys of each blocker range by create revision: our own key is
//! the newest key there, so the newest other key is our immediate
//! predecessor, read atomically with our arrival. With none, the lock is
//! ours on that one request (as Go's `concurrency.Mutex`, which reads the
//! first key in the same transaction): an uncontended acquire + release is
//! two requests. With one, we watch it at once, without another read.
//!
//! # Cancel safety
//!
//! The queue key is an [`OwnKey`] until granted: dropping the acquisition
//! at any await point deletes the key in the background (only our key, of
//! our lease and create revision).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use quorate_core::backend::async_trait;
use quorate_core::backoff::Backoff;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::LockKind;
use quorate_core::{Error, FencingToken, Result};

use crate::client::txn_range;
use crate::keys::prefix_end;
use crate::owned::{Created, HeldKey, OwnKey};
use crate::session::EtcdSession;
use crate::{rwlock, watch};

/// One queue entry: the key to create and the keys it waits behind.
pub(crate) struct Entry<'a> {
    /// The entry's key (ends with the session's lease id).
    pub(crate) key: String,
    /// Its value: empty for locks, the campaign value for elections.
    pub(crate) value: &'a [u8],
    /// The keys that block this entry when created before it.
    pub(crate) blockers: Blockers,
}

/// Key ranges `[start, end)`: the keys that block an entry when created
/// before it.
pub(crate) struct Blockers(pub(crate) Vec<(Vec<u8>, Vec<u8>)>);

impl Blockers {
    /// Every key starting with `prefix`.
    pub(crate) fn prefix(prefix: &str) -> Blockers {
        Blockers(vec![(
            prefix.as_bytes().to_vec(),
            prefix_end(prefix.as_bytes()),
        )])
    }

    /// The reads that go with the entry's put, in its transaction: the two
    /// newest keys of each range by create revision (keys only). The
    /// entry's own key, when it lies in a range, is the newest of it (no
    /// other key can be created by that transaction), so the other one is
    /// the newest key created before it.
    fn newest_two(&self) -> Vec<TxnOp> {
        self.0
            .iter()
            .map(|(start, end)| {
                let newest = GetOptions::new()
                    .with_range(end.clone())
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(2)
                    .with_keys_only();
                TxnOp::get(start.clone(), Some(newest))
            })
            .collect()
    }
}

/// The key created last before the entry `own` (created at `rev`), from
/// the answers of [`Blockers::newest_two`]: across the ranges, the newest
/// key that is not `own` and was created before `rev`.
fn predecessor(own: &str, rev: i64, ranges: Vec<Vec<KeyValue>>) -> Option<KeyValue> {
    ranges
        .into_iter()
        .flatten()
        .filter(|kv| kv.key() != own.as_bytes() && kv.create_revision() < rev)
        .max_by_key(KeyValue::create_revision)
}

/// Acquire a lock of any kind.
pub(crate) async fn lock(
    session: &EtcdSession,
    name: &str,
    kind: LockKind,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<Box<dyn HeldLock>>> {
    // One name, one lock: the mutex is the write side (see `rwlock`).
    let entry = rwlock::entry(session, name, kind);
    let held = if wait {
        Some(enqueue_and_wait(session, &entry).await?)
    } else {
        try_take(session, &entry).await?
    };
    Ok(held.map(|held| {
        tracing::debug!(key = %held.key, fence = held.rev, "etcd lock granted");
        Box::new(EtcdLock { held, loss }) as Box<dyn HeldLock>
    }))
}

/// Take the lock only if no blocker exists now: one transaction that puts
/// our key only if the blocker ranges are empty, so nothing is queued when
/// the lock is busy.
async fn try_take(session: &EtcdSession, entry: &Entry<'_>) -> Result<Option<HeldKey>> {
    let mut own = OwnKey::claim(session, entry.key.clone()).await;
    // A range compare holds when it holds for every key in the range, and
    // compares an empty range as one absent key (create revision 0).
    let nobody_ahead: Vec<Compare> = entry
        .blockers
        .0
        .iter()
        .map(|(start, end)| {
            Compare::create_revision(start.clone(), CompareOp::Equal, 0).with_range(end.clone())
        })
        .collect();
    match own
        .create(session, entry.value, &nobody_ahead, &[], false)
        .await?
    {
        Created::Yes(_) => Ok(Some(own.keep()?)),
        Created::Refused => {
            own.forget();
            Ok(None)
        }
    }
}

/// Queue the entry and wait until nothing created before it blocks it.
///
/// Uncontended, this is one request: the transaction that creates the
/// entry reads its predecessor too (see the module documentation).
///
/// # Errors
///
/// `Lost` when the entry disappears while waiting (lease expired or
/// revoked, key deleted); the error of a request that fails for good
/// (retryable errors are retried; the session's loss bounds the wait);
/// `Backend` when the key exists under another lease.
///
/// # Cancel safety
///
/// Dropping the future at any await point deletes the entry in the
/// background ([`OwnKey`]), only our key of our lease and create revision.
pub(crate) async fn enqueue_and_wait(session: &EtcdSession, entry: &Entry<'_>) -> Result<HeldKey> {
    let mut own = OwnKey::claim(session, entry.key.clone()).await;
    let reads = entry.blockers.newest_two();
    let ranges = match own.create(session, entry.value, &[], &reads, true).await? {
        Created::Yes(ranges) => ranges,
        Created::Refused => {
            // Only our own session writes keys ending in our lease id, and
            // `create` removes its leftovers; someone else wrote it.
            own.forget();
            return Err(Error::backend(format!(
                "etcd key `{}` exists but is not attached to this session's lease",
                entry.key
            )));
        }
    };
    let rev = own.rev();
    let ahead = predecessor(&entry.key, rev, ranges);
    tracing::debug!(key = %own.key(), rev, queued_behind = ahead.is_some(), "queued");
    if let Some(ahead) = ahead {
        wait_for_turn(session, entry, rev, ahead).await?;
    }
    own.keep()
}

/// Wait until no key of `entry.blockers` has a create revision below `rev`,
/// starting with the deletion of `ahead` (the last such key, read when the
/// entry was created) and watching only the last such key each time (no
/// herd, no polling; a re-check every lease TTL guards against a lost
/// notification).
async fn wait_for_turn(
    session: &EtcdSession,
    entry: &Entry<'_>,
    rev: i64,
    mut ahead: KeyValue,
) -> Result<()> {
    // The last key created before ours in each blocker range.
    let gets: Vec<TxnOp> = entry
        .blockers
        .0
        .iter()
        .map(|(start, end)| {
            let predecessor = GetOptions::new()
                .with_range(end.clone())
                .with_max_create_revision(rev - 1)
                .with_sort(SortTarget::Create, SortOrder::Descend)
                .with_limit(1);
            TxnOp::get(start.clone(), Some(predecessor))
        })
        .collect();
    let mut backoff = Backoff::default();
    loop {
        tracing::debug!(
            key = %entry.key,
            waiting_for = %String::from_utf8_lossy(ahead.key()),
            "waiting for predecessor"
        );
        watch::wait_deleted(
            &session.shared,
            ahead.key().to_vec(),
            fallback(session),
            &mut backoff,
        )
        .await;
        let txn = Txn::new()
            .when([Compare::create_revision(
                entry.key.clone(),
                CompareOp::Equal,
                rev,
            )])
            .and_then(gets.clone());
        let resp = session
            .shared
            .txn_retrying("check queue", txn)
            .await
            .map_err(|e| session.note(e))?;
        if !resp.succeeded() {
            return Err(Error::lost(format!(
                "the queue key `{}` disappeared while waiting (lease expired or revoked, or the key was deleted)",
                entry.key
            )));
        }
        match (0..entry.blockers.0.len())
            .filter_map(|i| txn_range(&resp, i).into_iter().next())
            .max_by_key(KeyValue::create_revision)
        {
            Some(next) => ahead = next,
            None => return Ok(()),
        }
    }
}

/// How long a waiter trusts its watch before checking again anyway.
fn fallback(session: &EtcdSession) -> Duration {
    use quorate_core::spi::SessionBackend;
    session.ttl().max(Duration::from_secs(1))
}

/// A granted lock of any kind.
struct EtcdLock {
    held: HeldKey,
    loss: LossNotifier,
}

#[async_trait]
impl HeldLock for EtcdLock {
    fn fence(&self) -> FencingToken {
        self.held.fence
    }

    async fn is_held(&self) -> Result<bool> {
        // Keys created later never precede ours, so the grant stands
        // exactly while our key does.
        let held = self.held.exists("is held").await?;
        if !held {
            self.loss.fire("the lock's key is gone from etcd");
        }
        Ok(held)
    }

    async fn release(&self) -> Result<()> {
        self.held.delete("release").await
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let release = then == AfterWrite::Release;
        let data = self.held.shared.layout.data(key);
        let mut ops = vec![TxnOp::put(data, value, None::<PutOptions>)];
        if release {
            ops.push(TxnOp::delete(self.held.key.clone(), None));
        }
        let txn = Txn::new().when(self.held.still_mine()).and_then(ops);
        let applied = self
            .held
            .shared
            .txn("guarded write", txn)
            .await?
            .succeeded();
        if !applied {
            self.loss.fire("the lock's key is gone from etcd");
        } else if release {
            self.held.forget_lock();
        }
        Ok(applied)
    }
}
