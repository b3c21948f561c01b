//! Group membership: a member map per group, events to watchers sent under
//! the same lock as the change, so a watcher's snapshot and its events never
//! overlap or leave a gap.

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{GroupChange, HeldMembership, RawGroupWatch, SeenMember};
use quorate_core::Member;
use quorate_core::{Error, Result};

use crate::session::MemorySession;
use crate::state::{feed, remove_member, Inner, MemberRecord, State};

pub(crate) fn list(inner: &Inner, group: &str) -> Vec<Member> {
    seen(inner, group).into_iter().map(|s| s.member).collect()
}

/// The members with their incarnations.
fn seen(inner: &Inner, group: &str) -> Vec<SeenMember> {
    inner
        .groups
        .get(group)
        .map(|g| g.members.iter().map(|(id, m)| m.seen(id)).collect())
        .unwrap_or_default()
}

impl MemberRecord {
    fn seen(&self, id: &str) -> SeenMember {
        SeenMember {
            member: Member {
                id: id.to_owned(),
                capabilities: self.capabilities.clone(),
            },
            incarnation: Some(self.incarnation),
        }
    }
}

pub(crate) fn join(
    session: &MemorySession,
    group: &str,
    member: &str,
    capabilities: &serde_json::Value,
    loss: LossNotifier,
) -> Result<Box<dyn HeldMembership>> {
    let mut inner = session.state.shard(group).lock().unwrap();
    session.check_alive(&inner)?;
    let g = inner.groups.entry(group.to_owned()).or_default();
    if g.members.contains_key(member) {
        return Err(Error::already_held(format!(
            "member `{member}` is already in group `{group}`"
        )));
    }
    g.joins += 1;
    let record = MemberRecord {
        session: session.id,
        capabilities: capabilities.clone(),
        loss,
        incarnation: g.joins,
    };
    g.publish(GroupChange::Put(record.seen(member)));
    g.members.insert(member.to_owned(), record);
    Ok(Box::new(MemoryMembership {
        state: session.state.clone(),
        session: session.id,
        group: group.to_owned(),
        member: member.to_owned(),
    }))
}

/// List the group and register a feed of its changes, under one lock.
pub(crate) fn watch(state: &State, group: &str) -> RawGroupWatch {
    let g = group.to_owned();
    let (feed, changes) = feed(state, group, move |inner| {
        GroupChange::Resync(seen(inner, &g))
    });
    let mut inner = state.shard(group).lock().unwrap();
    let snapshot = seen(&inner, group);
    inner
        .groups
        .entry(group.to_owned())
        .or_default()
        .watchers
        .push(feed);
    RawGroupWatch { snapshot, changes }
}

struct MemoryMembership {
    state: State,
    session: u64,
    group: String,
    member: String,
}

#[async_trait]
impl HeldMembership for MemoryMembership {
    async fn update(&self, capabilities: &serde_json::Value) -> Result<()> {
        let mut inner = self.state.shard(&self.group).lock().unwrap();
        let g = inner.groups.get_mut(&self.group);
        let Some(g) = g.filter(|g| {
            g.members
                .get(&self.member)
                .is_some_and(|m| m.session == self.session)
        }) else {
            return Err(Error::not_held(format!(
                "`{}` is no longer a member of `{}`",
                self.member, self.group
            )));
        };
        if let Some(m) = g.members.get_mut(&self.member) {
            m.capabilities = capabilities.clone();
            let change = GroupChange::Put(m.seen(&self.member));
            g.publish(change);
        }
        Ok(())
    }

    async fn leave(&self) -> Result<()> {
        let mut inner = self.state.shard(&self.group).lock().unwrap();
        remove_member(&mut inner, &self.group, &self.member, self.session);
        Ok(())
    }
}
