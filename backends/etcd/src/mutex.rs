//! Mutexes: etcd's Go `concurrency.Mutex`. A lock `name` is the prefix
//! `<ns>/lock/<enc(name)>/` (its read/write lock's readers queue there
//! too, see `rwlock`); a waiting acquisition queues there (`queue`), and
//! `etcdctl lock <ns>/lock/<enc(name)>` does exactly the same, so the two
//! exclude each other. The fencing token is the holder key's create
//! revision. An uncontended acquire + release is two requests. A waiter
//! granted on its only predecessor's delete event has its key confirmed
//! after the grant, firing the guard's loss if it was gone.
//!
//! # Cancel safety
//!
//! A queued or trying acquisition's key is an `OwnKey` until granted:
//! dropping it at any await point deletes the key in the background.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::LockKind;
use quorate_core::{FencingToken, Result};

use crate::owned::{Created, HeldKey, OwnKey};
use crate::queue::{enqueue_and_wait, Confirm, Entry, SoleHandoff};
use crate::rwlock;
use crate::session::EtcdSession;

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
        let (held, confirm) = enqueue_and_wait(session, &entry, SoleHandoff::Grant).await?;
        if let Confirm::Pending { revision } = confirm {
            held.confirm_later(revision, loss.clone());
        }
        Some(held)
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
