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
use futures::stream::BoxStream;
use futures::StreamExt;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::name::decode;
use quorate_core::spi::{GroupEvent, HeldMembership, Member};
use quorate_core::{Error, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::client::Shared;
use crate::not_held;
use crate::session::{Created, EtcdSession, HeldKey, OwnKey};
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
    match own.create(session, &value, &[], false).await? {
        Created::Yes => Ok(Box::new(EtcdMembership {
            held: own.keep(),
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

/// A snapshot of `group`, then every change.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    group: &str,
) -> Result<BoxStream<'static, Result<GroupEvent>>> {
    let prefix = shared.layout.group(group);
    let (mut watch, kvs) = PrefixWatch::start(shared, prefix.clone()).await?;
    let mut members = to_map(&prefix, &kvs);
    let (tx, rx) = mpsc::unbounded_channel();
    let snapshot = members
        .iter()
        .map(|(id, c)| Member {
            id: id.clone(),
            capabilities: c.clone(),
        })
        .collect();
    let _ = tx.send(Ok(GroupEvent::Snapshot { members: snapshot }));
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                b = watch.next() => b,
                () = tx.closed() => return,
            };
            for event in apply(&prefix, &mut members, batch) {
                if tx.send(Ok(event)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(UnboundedReceiverStream::new(rx).boxed())
}

/// Apply a batch to the local view of the group; return the events.
fn apply(
    prefix: &str,
    members: &mut BTreeMap<String, serde_json::Value>,
    batch: Batch,
) -> Vec<GroupEvent> {
    let mut out = Vec::new();
    match batch {
        Batch::Changes(events) => {
            for e in events {
                let Some(kv) = e.kv() else { continue };
                let Some(id) = member_id(prefix, kv.key()) else {
                    continue;
                };
                match e.event_type() {
                    EventType::Put => {
                        let c = capabilities(kv.value());
                        let member = Member {
                            id: id.clone(),
                            capabilities: c.clone(),
                        };
                        if members.insert(id, c).is_some() {
                            out.push(GroupEvent::Updated { member });
                        } else {
                            out.push(GroupEvent::Joined { member });
                        }
                    }
                    EventType::Delete => {
                        if members.remove(&id).is_some() {
                            out.push(GroupEvent::Left { id });
                        }
                    }
                }
            }
        }
        Batch::Resync(kvs) => {
            let now = to_map(prefix, &kvs);
            out = diff(members, &now);
            *members = now;
        }
    }
    out
}

/// The events that turn `old` into `new` (after a re-list): members that
/// left first, then members that joined or changed, by id.
fn diff(
    old: &BTreeMap<String, serde_json::Value>,
    new: &BTreeMap<String, serde_json::Value>,
) -> Vec<GroupEvent> {
    let mut out: Vec<GroupEvent> = old
        .keys()
        .filter(|id| !new.contains_key(*id))
        .map(|id| GroupEvent::Left { id: id.clone() })
        .collect();
    for (id, c) in new {
        let member = Member {
            id: id.clone(),
            capabilities: c.clone(),
        };
        match old.get(id) {
            None => out.push(GroupEvent::Joined { member }),
            Some(before) if before != c => out.push(GroupEvent::Updated { member }),
            Some(_) => {}
        }
    }
    out
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

    #[test]
    fn a_relisted_group_is_reported_as_its_difference() {
        use serde_json::json;
        let map = |pairs: &[(&str, serde_json::Value)]| -> BTreeMap<String, serde_json::Value> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let old = map(&[("a", json!(1)), ("b", json!(1)), ("c", json!(1))]);
        let new = map(&[("a", json!(2)), ("c", json!(1)), ("d", json!(1))]);
        let m = |id: &str, c| Member {
            id: id.into(),
            capabilities: c,
        };
        assert_eq!(
            diff(&old, &new),
            vec![
                GroupEvent::Left { id: "b".into() },
                GroupEvent::Updated {
                    member: m("a", json!(2))
                },
                GroupEvent::Joined {
                    member: m("d", json!(1))
                },
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
