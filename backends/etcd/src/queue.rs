//! The FIFO queue that mutexes, read/write locks and elections share, in
//! the layout of etcd's Go `concurrency.Mutex`.
//!
//! To queue, a session puts `<prefix><lease hex>` (value under its lease)
//! in a transaction that checks the key's create revision is 0. The first
//! entry (lowest create revision) holds; every other entry waits for the
//! deletion of its immediate predecessor only (the last key created before
//! it, `MaxCreateRev = myRev-1`), then checks again. Which keys block an
//! entry is the caller's ([`Blockers`]: the whole prefix for a mutex, a
//! writer or a candidate; all but the readers for a reader).
//!
//! The transaction that creates the entry also reads, after the put, the
//! last three keys of each blocker range by create revision: our own key is
//! the newest key there, so the newest other key is our immediate
//! predecessor, read atomically with our arrival. With none, the entry is
//! granted on that one request (as Go's `concurrency.Mutex`, which reads the
//! first key in the same transaction). With one, we watch it at once,
//! without another read.
//!
//! **Hand-off without a re-read.** When that predecessor was the *only*
//! key ahead of us, its deletion (seen as a committed delete event) makes
//! the entry first: no key created later can precede it. With
//! [`SoleHandoff::Grant`] the entry is then granted on the event itself and
//! the caller checks, after the grant, that its key stood at the deletion's
//! revision ([`Confirm::Pending`]; it could only be gone if the lease was
//! revoked meanwhile): the hand-off costs the release's event, not one more
//! round trip. With more keys ahead, when the wait ended without seeing the
//! deletion, or with [`SoleHandoff::Check`] (elections), the queue is read
//! again first.
//!
//! # Cancel safety
//!
//! The queue key is an [`OwnKey`] until granted: dropping the acquisition
//! at any await point deletes the key in the background (only our key, of
//! our lease and create revision).

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp};
use quorate_core::backoff::Backoff;
use quorate_core::{Error, Result};

use crate::client::txn_range;
use crate::deletions::Deleted;
use crate::keys::prefix_end;
use crate::owned::{Created, HeldKey, OwnKey};
use crate::session::EtcdSession;

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

    /// The reads that go with the entry's put, in its transaction: the
    /// three newest keys of each range by create revision (keys only). The
    /// entry's own key, when it lies in a range, is the newest of it (no
    /// other key can be created by that transaction), so the others are the
    /// newest keys created before it — enough to tell none, one, or more.
    fn newest_three(&self) -> Vec<TxnOp> {
        self.0
            .iter()
            .map(|(start, end)| {
                let newest = GetOptions::new()
                    .with_range(end.clone())
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(3)
                    .with_keys_only();
                TxnOp::get(start.clone(), Some(newest))
            })
            .collect()
    }
}

/// The keys ahead of the entry `own` (created at `rev`), as far as
/// [`Blockers::newest_three`] read them.
enum Ahead {
    /// Nothing: the entry is granted.
    Nobody,
    /// Exactly this key: its deletion grants the entry.
    Only(KeyValue),
    /// This key (the last one created before the entry) and others.
    Several(KeyValue),
}

fn ahead(own: &str, rev: i64, ranges: Vec<Vec<KeyValue>>) -> Ahead {
    let mut before: Vec<KeyValue> = ranges
        .into_iter()
        .flatten()
        .filter(|kv| kv.key() != own.as_bytes() && kv.create_revision() < rev)
        .collect();
    before.sort_by_key(KeyValue::create_revision);
    match (before.pop(), before.is_empty()) {
        (None, _) => Ahead::Nobody,
        (Some(last), true) => Ahead::Only(last),
        (Some(last), false) => Ahead::Several(last),
    }
}

/// How a waiter whose only predecessor was deleted proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SoleHandoff {
    /// Granted on the delete event; the caller confirms the grant after.
    Grant,
    /// Read the queue again before the grant.
    Check,
}

/// Whether a grant from [`enqueue_and_wait`] still needs its confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// Read with the grant (or the entry was never behind anyone).
    Done,
    /// Granted on the predecessor's delete event at `revision`: check that
    /// our key stood then ([`HeldKey::confirm_later`]).
    Pending {
        /// The revision of the predecessor's deletion.
        revision: i64,
    },
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
pub(crate) async fn enqueue_and_wait(
    session: &EtcdSession,
    entry: &Entry<'_>,
    sole: SoleHandoff,
) -> Result<(HeldKey, Confirm)> {
    let mut own = OwnKey::claim(session, entry.key.clone()).await;
    let reads = entry.blockers.newest_three();
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
    let confirm = match ahead(&entry.key, rev, ranges) {
        Ahead::Nobody => Confirm::Done,
        Ahead::Only(last) => wait_for_turn(session, entry, rev, last, sole).await?,
        Ahead::Several(last) => {
            wait_for_turn(session, entry, rev, last, SoleHandoff::Check).await?
        }
    };
    tracing::debug!(key = %own.key(), rev, ?confirm, "granted in the queue");
    Ok((own.keep()?, confirm))
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
    mut sole: SoleHandoff,
) -> Result<Confirm> {
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
        let deleted = session
            .deletions
            .wait(
                &session.shared,
                ahead.key(),
                ahead.create_revision(),
                fallback(session),
                &mut backoff,
            )
            .await;
        if let (SoleHandoff::Grant, Deleted::Seen { revision }) = (sole, deleted) {
            return Ok(Confirm::Pending { revision });
        }
        // Once read again, `ahead` may have others before it.
        sole = SoleHandoff::Check;
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
            None => return Ok(Confirm::Done),
        }
    }
}

/// How long a waiter trusts its watch before checking again anyway.
fn fallback(session: &EtcdSession) -> Duration {
    use quorate_core::spi::SessionBackend;
    session.ttl().max(Duration::from_secs(1))
}
