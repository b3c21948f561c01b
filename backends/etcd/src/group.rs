//! Group membership: one key per member, `<ns>/group/<enc(group)>/<enc(member)>`,
//! under the member's session lease, with its capabilities as the JSON
//! value. A member whose session ends disappears with its lease.
//!
//! `watch` lists the group at revision R (the snapshot), then watches the
//! prefix from R+1, so events follow the snapshot with no gap and no
//! duplicate; a broken watch resumes after the last revision it reported,
//! and when that history was compacted the group is listed again and the
//! difference reported as events.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::{EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp};
use futures::StreamExt;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::name::decode;
use quorate_core::spi::{GroupChange, HeldMembership, RawGroupWatch, SeenMember};
use quorate_core::Member;
use quorate_core::{Error, Result};

use crate::client::Shared;
use crate::not_held;
use crate::owned::{Created, HeldKey, OwnKey};
use crate::session::EtcdSession;
use crate::watch::{Batch, PrefixWatch};

/// Join `group` as `member`: put the member key only if it does not exist.
pub(crate) async fn join(
    session: &EtcdSession,
    group: &str,
    member: &str,
    capabilities: &serde_json::Value,
    loss: LossNotifier,
) -> Result<Box<dyn HeldMembership>> {
    let value = encode_capabilities(capabilities)?;
    let key = session.shared.layout.member(group, member);
    let mut own = OwnKey::claim(session, key).await;
    match own.create(session, &value, &[], &[], false).await? {
        Created::Yes(_) => Ok(Box::new(EtcdMembership {
            held: own.keep()?,
            group: group.to_owned(),
            member: member.to_owned(),
            loss,
        })),
        Created::Refused => {
            own.forget();
            Err(Error::already_held(format!(
                "member `{member}` is already in group `{group}` (held by another session)"
            )))
        }
    }
}

fn encode_capabilities(capabilities: &serde_json::Value) -> Result<Vec<u8>> {
    serde_json::to_vec(capabilities)
        .map_err(|e| Error::backend(format!("cannot encode capabilities as JSON: {e}")))
}

/// The members of `group` now, sorted by id.
pub(crate) async fn members(shared: &Shared, group: &str) -> Result<Vec<Member>> {
    let prefix = shared.layout.group(group);
    let resp = shared
        .get(
            "list members",
            &prefix,
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    Ok(to_map(&prefix, resp.kvs())
        .into_iter()
        .map(|(id, capabilities)| Member { id, capabilities })
        .collect())
}

/// A member id from its key, if the key is one quorate could have written.
fn member_id(prefix: &str, key: &[u8]) -> Option<String> {
    let key = std::str::from_utf8(key).ok()?;
    decode(key.strip_prefix(prefix)?)
}

/// Capabilities from a value; a value that is not JSON (written by another
/// tool) is reported as a JSON string.
fn capabilities(value: &[u8]) -> serde_json::Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(value).into_owned()))
}

fn to_map(prefix: &str, kvs: &[KeyValue]) -> BTreeMap<String, serde_json::Value> {
    kvs.iter()
        .filter_map(|kv| Some((member_id(prefix, kv.key())?, capabilities(kv.value()))))
        .collect()
}

/// A listing of `group`, then its raw changes (see the module doc).
pub(crate) async fn watch(shared: Arc<Shared>, group: &str) -> Result<RawGroupWatch> {
    let prefix = shared.layout.group(group);
    let (watch, kvs) = PrefixWatch::start(shared, prefix.clone()).await?;
    let snapshot = seen(&prefix, &kvs);
    let changes = futures::stream::unfold((watch, prefix), |(mut watch, prefix)| async move {
        let changes = raw_changes(&prefix, watch.next().await);
        Some((changes, (watch, prefix)))
    })
    .flat_map(|changes| futures::stream::iter(changes.into_iter().map(Ok)))
    .boxed();
    Ok(RawGroupWatch { snapshot, changes })
}

/// The members among `kvs`, each with its key's create revision as its
/// incarnation.
fn seen(prefix: &str, kvs: &[KeyValue]) -> Vec<SeenMember> {
    kvs.iter()
        .filter_map(|kv| {
            Some(SeenMember {
                member: Member {
                    id: member_id(prefix, kv.key())?,
                    capabilities: capabilities(kv.value()),
                },
                incarnation: Some(kv.create_revision()),
            })
        })
        .collect()
}

/// The raw changes of one batch.
fn raw_changes(prefix: &str, batch: Batch) -> Vec<GroupChange> {
    match batch {
        Batch::Changes(events) => events
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                let id = member_id(prefix, kv.key())?;
                Some(match e.event_type() {
                    EventType::Put => GroupChange::Put(SeenMember {
                        member: Member {
                            id,
                            capabilities: capabilities(kv.value()),
                        },
                        incarnation: Some(kv.create_revision()),
                    }),
                    EventType::Delete => GroupChange::Delete { id },
                })
            })
            .collect(),
        Batch::Resync(kvs) => vec![GroupChange::Resync(seen(prefix, &kvs))],
    }
}

/// A membership: our member key.
struct EtcdMembership {
    held: HeldKey,
    group: String,
    member: String,
    loss: LossNotifier,
}

#[async_trait]
impl HeldMembership for EtcdMembership {
    async fn update(&self, capabilities: &serde_json::Value) -> Result<()> {
        let value = encode_capabilities(capabilities)?;
        let put = TxnOp::put(
            self.held.key.clone(),
            value,
            Some(PutOptions::new().with_lease(self.held.lease)),
        );
        let txn = Txn::new().when(self.held.still_mine()).and_then([put]);
        if self
            .held
            .shared
            .txn("update member", txn)
            .await?
            .succeeded()
        {
            return Ok(());
        }
        self.loss.fire("the member key is gone from etcd");
        Err(not_held(format!(
            "`{}` is no longer a member of `{}`",
            self.member, self.group
        )))
    }

    async fn leave(&self) -> Result<()> {
        self.held.delete("leave").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_come_from_quorate_keys_only() {
        assert_eq!(
            member_id("ns/group/g/", b"ns/group/g/a%2Fb").as_deref(),
            Some("a/b")
        );
        assert_eq!(member_id("ns/group/g/", b"ns/group/h/a"), None);
        assert_eq!(member_id("ns/group/g/", b"ns/group/g/a/b"), None);
        assert_eq!(capabilities(b"{\"x\":1}")["x"], 1);
        assert_eq!(capabilities(b"plain"), serde_json::json!("plain"));
    }
}
