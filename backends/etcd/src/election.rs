//! Elections, in the layout of etcd's Go `concurrency.Election` (so
//! `etcdctl elect <ns>/election/<enc(name)>` can observe and compete):
//! each candidate puts `<ns>/election/<enc(name)>/<lease hex>` with its
//! value under its lease; the key with the lowest create revision leads;
//! a candidate waits for the deletion of its immediate predecessor only.
//! The fencing token is the leader key's create revision. Proclaiming
//! rewrites the value of our key only while its create revision is ours.
//!
//! Observers list the candidates at revision R and follow the prefix from
//! R+1, computing the leader after every revision, so they never report a
//! stale leader after a newer one.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use futures::StreamExt;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{HeldLeadership, RawObserve};
use quorate_core::Leader;
use quorate_core::{FencingToken, Result};

use crate::client::Shared;
use crate::keys::lease_hex;
use crate::mutex::{enqueue_and_wait, Blockers, Entry};
use crate::not_held;
use crate::owned::HeldKey;
use crate::session::EtcdSession;
use crate::watch::{Batch, PrefixWatch};

/// Campaign with `value`; resolves once leader.
pub(crate) async fn campaign(
    session: &EtcdSession,
    name: &str,
    value: &[u8],
    loss: LossNotifier,
) -> Result<Box<dyn HeldLeadership>> {
    let prefix = session.shared.layout.election(name);
    let entry = Entry {
        key: format!("{prefix}{}", lease_hex(session.lease)),
        value,
        blockers: Blockers::prefix(&prefix),
    };
    let held = enqueue_and_wait(session, &entry).await?;
    tracing::debug!(key = %held.key, fence = held.rev, "elected");
    Ok(Box::new(EtcdLeadership { held, loss }))
}

/// The current leader: the candidate with the lowest create revision.
pub(crate) async fn leader(shared: &Shared, name: &str) -> Result<Option<Leader>> {
    let prefix = shared.layout.election(name);
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let resp = shared.get("get leader", &prefix, Some(first)).await?;
    resp.kvs()
        .first()
        .map(|kv| {
            Ok(Leader {
                value: kv.value().to_vec(),
                fence: FencingToken::try_from(kv.create_revision())?,
            })
        })
        .transpose()
}

/// The current leader, then the leader after every change of the
/// candidates.
pub(crate) async fn observe(shared: Arc<Shared>, name: &str) -> Result<RawObserve> {
    let prefix = shared.layout.election(name);
    let (watch, kvs) = PrefixWatch::start(shared, prefix).await?;
    let mut candidates = Candidates::default();
    candidates.reset(&kvs);
    let leader = candidates.leader()?;
    let changes = futures::stream::unfold(
        (watch, candidates),
        |(mut watch, mut candidates)| async move {
            candidates.apply(watch.next().await);
            Some((candidates.leader(), (watch, candidates)))
        },
    )
    .boxed();
    Ok(RawObserve { leader, changes })
}

/// An observer's view of the candidates: key → (create revision, value).
#[derive(Default)]
struct Candidates(BTreeMap<Vec<u8>, (i64, Vec<u8>)>);

impl Candidates {
    fn reset(&mut self, kvs: &[KeyValue]) {
        self.0 = kvs
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    (kv.create_revision(), kv.value().to_vec()),
                )
            })
            .collect();
    }

    fn apply(&mut self, batch: Batch) {
        match batch {
            Batch::Changes(events) => {
                for e in events {
                    let Some(kv) = e.kv() else { continue };
                    match e.event_type() {
                        EventType::Put => {
                            self.0.insert(
                                kv.key().to_vec(),
                                (kv.create_revision(), kv.value().to_vec()),
                            );
                        }
                        EventType::Delete => {
                            self.0.remove(kv.key());
                        }
                    }
                }
            }
            Batch::Resync(kvs) => self.reset(&kvs),
        }
    }

    fn leader(&self) -> Result<Option<Leader>> {
        self.0
            .values()
            .min_by_key(|(rev, _)| *rev)
            .map(|(rev, value)| {
                Ok(Leader {
                    value: value.clone(),
                    fence: FencingToken::try_from(*rev)?,
                })
            })
            .transpose()
    }
}

/// Leadership: our candidate key, lowest in the queue.
struct EtcdLeadership {
    held: HeldKey,
    loss: LossNotifier,
}

#[async_trait]
impl HeldLeadership for EtcdLeadership {
    fn fence(&self) -> FencingToken {
        self.held.fence
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let put = TxnOp::put(
            self.held.key.clone(),
            value,
            Some(PutOptions::new().with_lease(self.held.lease)),
        );
        let txn = Txn::new().when(self.held.still_mine()).and_then([put]);
        if self.held.shared.txn("proclaim", txn).await?.succeeded() {
            return Ok(());
        }
        self.loss.fire("the leader key is gone from etcd");
        Err(not_held(format!(
            "no longer leader: `{}` is gone from etcd",
            self.held.key
        )))
    }

    async fn is_leader(&self) -> Result<bool> {
        let held = self.held.exists("is leader").await?;
        if !held {
            self.loss.fire("the leader key is gone from etcd");
        }
        Ok(held)
    }

    async fn resign(&self) -> Result<()> {
        self.held.delete("resign").await
    }
}
