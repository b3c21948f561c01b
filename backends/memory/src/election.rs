//! Elections: candidates queue as exclusive entries in the election
//! namespace; the head of the queue is the leader.

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{HeldLeadership, RawObserve};
use quorate_core::Leader;
use quorate_core::{Error, FencingToken, Result};

use crate::queue::{current_leader, publish_leader, remove, wait_for_grant};
use crate::session::MemorySession;
use crate::state::{feed, Inner, Space, State};

pub(crate) async fn campaign(
    session: &MemorySession,
    name: &str,
    value: &[u8],
    loss: LossNotifier,
) -> Result<Box<dyn HeldLeadership>> {
    let value = value.to_vec();
    let (id, fence) = wait_for_grant(
        (&session.state, session.id),
        Space::Election,
        name,
        true,
        true,
        loss,
        |inner, id| {
            inner
                .elections
                .entry(name.to_owned())
                .or_default()
                .values
                .insert(id, value);
            publish_leader(inner, name);
        },
    )
    .await?
    .expect("a waiting campaign returns a grant");
    Ok(Box::new(MemoryLeadership {
        state: session.state.clone(),
        name: name.to_owned(),
        id,
        fence,
    }))
}

pub(crate) fn leader(state: &State, name: &str) -> Option<Leader> {
    current_leader(&state.shard(name).lock().unwrap(), name)
}

/// Read the leader and register a feed of later readings, under one lock.
pub(crate) fn observe(state: &State, name: &str) -> RawObserve {
    let n = name.to_owned();
    let (feed, changes) = feed(state, name, move |inner| current_leader(inner, &n));
    let mut inner = state.shard(name).lock().unwrap();
    let now = current_leader(&inner, name);
    let election = inner.elections.entry(name.to_owned()).or_default();
    election.last_published = now.clone();
    election.observers.push(feed);
    RawObserve {
        leader: now,
        changes,
    }
}

struct MemoryLeadership {
    state: State,
    name: String,
    id: u64,
    fence: FencingToken,
}

impl MemoryLeadership {
    fn is_head(&self, inner: &Inner) -> bool {
        inner
            .queues
            .get(&(Space::Election, self.name.clone()))
            .is_some_and(|q| q.is_granted(self.id))
    }
}

#[async_trait]
impl HeldLeadership for MemoryLeadership {
    fn fence(&self) -> FencingToken {
        self.fence
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let mut inner = self.state.shard(&self.name).lock().unwrap();
        if !self.is_head(&inner) {
            return Err(Error::not_held(format!(
                "no longer leader of `{}`",
                self.name
            )));
        }
        if let Some(e) = inner.elections.get_mut(&self.name) {
            e.values.insert(self.id, value.to_vec());
        }
        publish_leader(&mut inner, &self.name);
        Ok(())
    }

    async fn is_leader(&self) -> Result<bool> {
        Ok(self.is_head(&self.state.shard(&self.name).lock().unwrap()))
    }

    async fn resign(&self) -> Result<()> {
        let mut inner = self.state.shard(&self.name).lock().unwrap();
        remove(&mut inner, Space::Election, &self.name, self.id);
        Ok(())
    }
}
