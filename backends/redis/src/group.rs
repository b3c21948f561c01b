//! Group membership: a hash per group `<ns>:group:<enc(g)>` (enc(member) →
//! capabilities JSON), a TTL key per member `<ns>:member:<enc(g)>:<enc(m)>`
//! holding its session's token (extended by keep-alive), and a version
//! counter `<ns>:gver:<enc(g)>`. Every change (join, update, leave, sweep of
//! a member whose key expired) bumps the version and publishes the event
//! with it on `<ns>:chan:group:<enc(g)>`, in the same script.
//!
//! A membership's *incarnation* is the version of its join's event, kept in
//! `<ns>:ginc:<enc(g)>` while the member stays and sent with its join, its
//! updates and every listing. Core's watch view reports a member whose
//! incarnation changed between two looks as `Left` then `Joined`: a member
//! that left and joined again while a watcher was re-listing (after a lost
//! message or a reconnect) is not mistaken for an update, or missed.
//!
//! A watcher subscribes, then lists (members + version, sweeping stale
//! members atomically): events at or below the listed version are already
//! in the snapshot and dropped, the next ones applied in order. A gap in
//! versions, a reconnect, or the fallback timer (when the first member key
//! is due to expire) makes it re-list and report a resync; core's watch view
//! turns the raw changes into events.

use std::sync::Arc;
use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::backoff::Backoff;
use quorate_core::loss::LossNotifier;
use quorate_core::name::{decode, encode};
use quorate_core::spi::{GroupChange, HeldMembership, RawGroupWatch, SeenMember};
use quorate_core::watch::raw_changes;
use quorate_core::Member;
use quorate_core::{Error, Result};
use redis::Value;

use crate::hub::{Subscription, Wake};
use crate::queue::Cleanup;
use crate::session::{RedisSession, Registration};
use crate::{scripts, Ctx};

/// A group's members at one version.
pub(crate) struct Listing {
    /// The group's event version the listing reflects.
    pub(crate) version: i64,
    /// Remaining TTL of the member key that expires first (-1: none).
    pub(crate) first_expiry_ms: i64,
    /// The members with their incarnations, sorted by id.
    pub(crate) members: Vec<SeenMember>,
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
    while let (Some(Value::BulkString(f)), Some(Value::BulkString(caps)), Some(Value::Int(inc))) =
        (it.next(), it.next(), it.next())
    {
        let f = String::from_utf8_lossy(&f);
        let Some(id) = decode(&f) else {
            tracing::warn!(field = %f, "ignoring a group field quorate did not write");
            continue;
        };
        members.push(SeenMember {
            member: Member {
                id,
                capabilities: caps_of(&caps),
            },
            // -1: joined by a version that kept no incarnation.
            incarnation: (inc >= 0).then_some(inc),
        });
    }
    members.sort_by(|a, b| a.member.id.cmp(&b.member.id));
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

/// One published event: (version, raw change).
fn parse_event(payload: &str) -> Option<(i64, GroupChange)> {
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
    let change = match v.get("e")?.as_str()? {
        "joined" | "updated" => GroupChange::Put(SeenMember {
            member: Member {
                id,
                capabilities: caps(),
            },
            incarnation: v.get("inc").and_then(serde_json::Value::as_i64),
        }),
        "left" => GroupChange::Delete { id },
        _ => return None,
    };
    Some((version, change))
}

/// A watch's state: the subscription, the version of the last change
/// reported, and when to re-list in case a member expired silently.
struct Follow {
    ctx: Arc<Ctx>,
    group: String,
    sub: Subscription,
    version: i64,
    next_check: tokio::time::Instant,
    backoff: Backoff,
}

impl Follow {
    /// The next raw change, if the next wake-up makes one.
    async fn next(&mut self) -> Option<GroupChange> {
        let relist = tokio::select! {
            wake = self.sub.next() => match wake {
                Wake::Reconnected => true,
                Wake::Message(p) => match parse_event(&p) {
                    Some((v, _)) if v <= self.version => false,
                    Some((v, change)) if v == self.version + 1 => {
                        self.version = v;
                        return Some(change);
                    }
                    // A gap (a lost message) or an unreadable one.
                    _ => true,
                },
            },
            _ = tokio::time::sleep_until(self.next_check) => true,
        };
        if !relist {
            return None;
        }
        match list(&self.ctx, &self.group).await {
            Ok(l) => {
                self.backoff.reset();
                self.next_check = tokio::time::Instant::now()
                    + self.ctx.recheck_after(self.ctx.ttl * 2, l.first_expiry_ms);
                self.version = l.version;
                Some(GroupChange::Resync(l.members))
            }
            Err(e) => {
                tracing::debug!(error = %e, group = %self.group, "watch: re-listing failed");
                let delay = self.backoff.next_delay();
                self.next_check = tokio::time::Instant::now() + delay;
                None
            }
        }
    }
}

/// A listing, then the raw changes: subscribe first, then list, so no
/// change after the listing is missed.
pub(crate) async fn watch(ctx: Arc<Ctx>, group: &str) -> Result<RawGroupWatch> {
    let sub = ctx.hub.subscribe(&ctx.key("chan:group", group)).await?;
    let listing = list(&ctx, group).await?;
    let next_check =
        tokio::time::Instant::now() + ctx.recheck_after(ctx.ttl * 2, listing.first_expiry_ms);
    let follow = Follow {
        group: group.to_owned(),
        sub,
        version: listing.version,
        next_check,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        ctx,
    };
    let changes = raw_changes(follow, |mut f| async move { (f.next().await, f) });
    Ok(RawGroupWatch {
        snapshot: listing.members,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_with_their_version() {
        let (v, e) =
            parse_event(r#"{"v":7,"e":"joined","id":"node%2Fa","caps":"{\"x\":1}","inc":7}"#)
                .unwrap();
        assert_eq!(v, 7);
        assert_eq!(
            e,
            GroupChange::Put(SeenMember {
                member: Member {
                    id: "node/a".into(),
                    capabilities: serde_json::json!({"x": 1})
                },
                incarnation: Some(7),
            })
        );
        // An update of a member joined by a version that kept none.
        let (_, e) = parse_event(r#"{"v":9,"e":"updated","id":"a","caps":"2"}"#).unwrap();
        assert_eq!(
            e,
            GroupChange::Put(SeenMember::new(Member {
                id: "a".into(),
                capabilities: serde_json::json!(2)
            }))
        );
        let (_, e) = parse_event(r#"{"v":8,"e":"left","id":"a"}"#).unwrap();
        assert_eq!(e, GroupChange::Delete { id: "a".into() });
        assert!(parse_event(r#"{"v":1,"e":"left","id":"%zz"}"#).is_none());
        assert!(parse_event("garbage").is_none());
    }
}
