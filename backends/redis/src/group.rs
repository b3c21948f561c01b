//! Group membership: a hash per group `<ns>:group:<enc(g)>` (enc(member) →
//! capabilities JSON), a TTL key per member `<ns>:member:<enc(g)>:<enc(m)>`
//! holding its session's token (extended by keep-alive), and a version
//! counter `<ns>:gver:<enc(g)>`. Every change (join, update, leave, sweep of
//! a member whose key expired) bumps the version and publishes the event
//! with it on `<ns>:chan:group:<enc(g)>`, in the same script.
//!
//! A watcher subscribes, then lists (members + version, sweeping stale
//! members atomically): events at or below the listed version are already
//! in the snapshot and dropped, the next ones applied in order. A gap in
//! versions, a reconnect, or the fallback timer (when the first member key
//! is due to expire) makes it re-list and emit the difference.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::name::{decode, encode};
use quorate_core::spi::{GroupEvent, HeldMembership, Member};
use quorate_core::{Error, Result};
use redis::Value;
use tokio::sync::mpsc;

use crate::hub::Wake;
use crate::mutex::Cleanup;
use crate::session::{RedisSession, Registration};
use crate::{receiver_stream, scripts, Ctx};

/// A group's members at one version.
pub(crate) struct Listing {
    /// The group's event version the listing reflects.
    pub(crate) version: i64,
    /// Remaining TTL of the member key that expires first (-1: none).
    pub(crate) first_expiry_ms: i64,
    /// The members, sorted by id.
    pub(crate) members: Vec<Member>,
}

fn caps_of(raw: &[u8]) -> serde_json::Value {
    serde_json::from_slice(raw).unwrap_or(serde_json::Value::Null)
}

/// List a group (sweeping stale members).
pub(crate) async fn list(ctx: &Ctx, group: &str) -> Result<Listing> {
    let g = encode(group);
    let reply: Vec<Value> = ctx
        .eval("list members", &scripts::GROUP_LIST, &[g.as_bytes()])
        .await?;
    let mut it = reply.into_iter();
    let (Some(Value::Int(version)), Some(Value::Int(first_expiry_ms))) = (it.next(), it.next())
    else {
        return Err(Error::backend("unexpected reply from the list script"));
    };
    let mut members = Vec::new();
    while let (Some(Value::BulkString(f)), Some(Value::BulkString(caps))) = (it.next(), it.next()) {
        let f = String::from_utf8_lossy(&f);
        let Some(id) = decode(&f) else {
            tracing::warn!(field = %f, "ignoring a group field quorate did not write");
            continue;
        };
        members.push(Member {
            id,
            capabilities: caps_of(&caps),
        });
    }
    members.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Listing {
        version,
        first_expiry_ms,
        members,
    })
}

/// Join `group` as `member`.
pub(crate) async fn join(
    session: &RedisSession,
    group: &str,
    member: &str,
    capabilities: &serde_json::Value,
    loss: LossNotifier,
) -> Result<Box<dyn HeldMembership>> {
    let ctx = &session.ctx;
    let (g, f) = (encode(group), encode(member));
    let token = session.token();
    let key = format!("{}:member:{g}:{f}", ctx.ns);
    let registration = session.register(key, token.clone(), loss);
    let caps = capabilities.to_string();
    let mut cleanup = Cleanup::new(
        ctx,
        &scripts::GROUP_LEAVE,
        vec![g.clone().into(), f.clone().into(), token.clone().into()],
        session.ttl(),
    );
    let joined: i64 = ctx
        .eval(
            "join",
            &scripts::GROUP_JOIN,
            &[
                g.as_bytes(),
                f.as_bytes(),
                token.as_bytes(),
                caps.as_bytes(),
                session.ttl_ms().as_bytes(),
            ],
        )
        .await?;
    cleanup.disarm();
    match joined {
        1 => Ok(Box::new(RedisMembership {
            ctx: ctx.clone(),
            g,
            f,
            token,
            _registration: registration,
        })),
        0 => Err(Error::already_held(format!(
            "member `{member}` is already in group `{group}`"
        ))),
        _ => Err(Error::lost(
            "the redis session expired or was revoked while joining",
        )),
    }
}

struct RedisMembership {
    ctx: Arc<Ctx>,
    g: String,
    f: String,
    token: String,
    _registration: Registration,
}

#[async_trait]
impl HeldMembership for RedisMembership {
    async fn update(&self, capabilities: &serde_json::Value) -> Result<()> {
        let caps = capabilities.to_string();
        let done: i64 = self
            .ctx
            .eval(
                "update member",
                &scripts::GROUP_UPDATE,
                &[
                    self.g.as_bytes(),
                    self.f.as_bytes(),
                    self.token.as_bytes(),
                    caps.as_bytes(),
                ],
            )
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(Error::not_held(format!(
                "`{}` is no longer a member",
                decode(&self.f).unwrap_or_default()
            )))
        }
    }

    async fn leave(&self) -> Result<()> {
        let _: i64 = self
            .ctx
            .eval(
                "leave",
                &scripts::GROUP_LEAVE,
                &[self.g.as_bytes(), self.f.as_bytes(), self.token.as_bytes()],
            )
            .await?;
        Ok(())
    }
}

/// One published event: (version, event).
fn parse_event(payload: &str) -> Option<(i64, GroupEvent)> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let version = v.get("v")?.as_i64()?;
    let id = decode(v.get("id")?.as_str()?)?;
    let caps = || {
        caps_of(
            v.get("caps")
                .and_then(|c| c.as_str())
                .unwrap_or("null")
                .as_bytes(),
        )
    };
    let event = match v.get("e")?.as_str()? {
        "joined" => GroupEvent::Joined {
            member: Member {
                id,
                capabilities: caps(),
            },
        },
        "updated" => GroupEvent::Updated {
            member: Member {
                id,
                capabilities: caps(),
            },
        },
        "left" => GroupEvent::Left { id },
        _ => return None,
    };
    Some((version, event))
}

/// The watcher's view of the group, which turns events and re-lists into
/// the stream's events.
struct View {
    members: BTreeMap<String, serde_json::Value>,
    version: i64,
}

impl View {
    /// Apply one event; returns it if it changes the view.
    fn apply(&mut self, event: GroupEvent) -> Option<GroupEvent> {
        match &event {
            GroupEvent::Joined { member } | GroupEvent::Updated { member } => {
                let old = self
                    .members
                    .insert(member.id.clone(), member.capabilities.clone());
                match (old, &event) {
                    (Some(c), _) if c == member.capabilities => None,
                    (Some(_), GroupEvent::Joined { member }) => Some(GroupEvent::Updated {
                        member: member.clone(),
                    }),
                    (None, GroupEvent::Updated { member }) => Some(GroupEvent::Joined {
                        member: member.clone(),
                    }),
                    _ => Some(event),
                }
            }
            GroupEvent::Left { id } => self.members.remove(id).map(|_| event),
            GroupEvent::Snapshot { .. } => None,
        }
    }

    /// Replace the view by a listing; returns the differences as events.
    fn reset(&mut self, listing: Listing) -> Vec<GroupEvent> {
        let mut out = Vec::new();
        let new: BTreeMap<String, serde_json::Value> = listing
            .members
            .into_iter()
            .map(|m| (m.id, m.capabilities))
            .collect();
        for id in self.members.keys() {
            if !new.contains_key(id) {
                out.push(GroupEvent::Left { id: id.clone() });
            }
        }
        for (id, caps) in &new {
            match self.members.get(id) {
                None => out.push(GroupEvent::Joined {
                    member: Member {
                        id: id.clone(),
                        capabilities: caps.clone(),
                    },
                }),
                Some(old) if old != caps => out.push(GroupEvent::Updated {
                    member: Member {
                        id: id.clone(),
                        capabilities: caps.clone(),
                    },
                }),
                Some(_) => {}
            }
        }
        self.members = new;
        self.version = listing.version;
        out
    }
}

/// A snapshot, then every change.
pub(crate) async fn watch(
    ctx: Arc<Ctx>,
    group: &str,
) -> Result<BoxStream<'static, Result<GroupEvent>>> {
    let mut sub = ctx.hub.subscribe(&ctx.key("chan:group", group)).await?;
    let listing = list(&ctx, group).await?;
    let mut next_check =
        tokio::time::Instant::now() + ctx.recheck_after(ctx.ttl * 2, listing.first_expiry_ms);
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Ok(GroupEvent::Snapshot {
        members: listing.members.clone(),
    }));
    let mut view = View {
        members: BTreeMap::new(),
        version: 0,
    };
    view.reset(listing);
    let group = group.to_owned();
    tokio::spawn(async move {
        loop {
            let relist = tokio::select! {
                _ = tx.closed() => return,
                wake = sub.next() => match wake {
                    Wake::Reconnected => true,
                    Wake::Message(p) => match parse_event(&p) {
                        Some((v, _)) if v <= view.version => false,
                        Some((v, event)) if v == view.version + 1 => {
                            view.version = v;
                            if let Some(e) = view.apply(event) {
                                if tx.send(Ok(e)).is_err() {
                                    return;
                                }
                            }
                            false
                        }
                        // A gap (a lost message) or an unreadable one.
                        _ => true,
                    },
                },
                _ = tokio::time::sleep_until(next_check) => true,
            };
            if relist {
                match list(&ctx, &group).await {
                    Ok(l) => {
                        next_check = tokio::time::Instant::now()
                            + ctx.recheck_after(ctx.ttl * 2, l.first_expiry_ms);
                        for e in view.reset(l) {
                            if tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, %group, "watch: re-listing failed");
                        next_check = tokio::time::Instant::now() + Duration::from_millis(100);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    Ok(receiver_stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, caps: i64) -> Member {
        Member {
            id: id.into(),
            capabilities: serde_json::json!(caps),
        }
    }

    #[test]
    fn events_are_parsed_with_their_version() {
        let (v, e) =
            parse_event(r#"{"v":7,"e":"joined","id":"node%2Fa","caps":"{\"x\":1}"}"#).unwrap();
        assert_eq!(v, 7);
        assert_eq!(
            e,
            GroupEvent::Joined {
                member: Member {
                    id: "node/a".into(),
                    capabilities: serde_json::json!({"x": 1})
                }
            }
        );
        assert!(parse_event(r#"{"v":1,"e":"left","id":"%zz"}"#).is_none());
        assert!(parse_event("garbage").is_none());
    }

    #[test]
    fn a_relist_emits_exactly_the_difference() {
        let mut view = View {
            members: BTreeMap::new(),
            version: 0,
        };
        view.reset(Listing {
            version: 3,
            first_expiry_ms: -1,
            members: vec![m("a", 1), m("b", 1)],
        });
        let diff = view.reset(Listing {
            version: 9,
            first_expiry_ms: -1,
            members: vec![m("b", 2), m("c", 1)],
        });
        assert_eq!(
            diff,
            vec![
                GroupEvent::Left { id: "a".into() },
                GroupEvent::Updated { member: m("b", 2) },
                GroupEvent::Joined { member: m("c", 1) },
            ]
        );
        assert_eq!(view.version, 9);
        // Applying an event that the view already reflects emits nothing.
        assert_eq!(view.apply(GroupEvent::Joined { member: m("c", 1) }), None);
        assert_eq!(view.apply(GroupEvent::Left { id: "a".into() }), None);
        assert_eq!(
            view.apply(GroupEvent::Left { id: "c".into() }),
            Some(GroupEvent::Left { id: "c".into() })
        );
    }
}
