//! quorate-memory: the in-process reference backend (`memory://`).
//!
//! It is the executable model of quorate's semantics: the conformance
//! suite's expected behaviour is what this backend does. Locks, read/write
//! locks and elections use one FIFO grant queue (`queue.rs`): readers are
//! shared entries, writers and mutex holders exclusive ones. One name, one
//! lock: the mutex and both sides of the read/write lock of a name are
//! entries of the same queue, with one fence counter.
//!
//! `memory://NAME` coordinators in one process share state while any of them
//! lives, so multi-client cases run in one test; `memory://` alone is
//! private. Sessions are leases with a TTL: without keep-alive they expire.
#![warn(missing_docs)]

mod election;
mod group;
mod inspect;
mod mutex;
mod queue;
mod session;
mod state;

use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{
    Acquire, Acquired, Backend, HeldLeadership, HeldMembership, RawGroupWatch, RawObserve,
    SessionBackend,
};
use quorate_core::{
    Capabilities, Config, Coordinator, Error, FailureDetection, Primitives, Result, RwOrdering,
    Scope,
};
use quorate_core::{Leader, LockKind, Member};

use session::{end_session_everywhere, MemorySession};
use state::State;

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["memory"];

/// What `memory://` declares.
pub fn capabilities() -> Capabilities {
    let mut c = Capabilities::new("memory", Scope::Threads, FailureDetection::LeaseTtl);
    c.fencing = true;
    c.fifo = true;
    c.rwlock_ordering = RwOrdering::Fifo;
    c.push_wakeups = true;
    c.exclusive_under_pause = false;
    // No server to fail over, no server clock to step: nothing measured,
    // nothing declared.
    c.survives_failover = false;
    c.exclusive_across_failover = false;
    c.exclusive_across_leader_stalls = false;
    c.exclusive_across_clock_steps = false;
    c.exclusive_across_data_loss = false;
    c.external_revoke = true;
    c.primitives = Primitives::ALL;
    c
}

/// Connect to `memory://[NAME]`.
///
/// # Errors
///
/// [`quorate_core::ErrorKind::InvalidConfig`] for more than one name, a path,
/// credentials or unknown options.
pub async fn connect(config: &Config) -> Result<Coordinator> {
    config.reject_unknown_options(&[])?;
    if config.endpoints.len() > 1 || !config.path.is_empty() {
        return Err(Error::invalid_config(format!(
            "`{config}`: a memory URL is `memory://` or `memory://NAME`"
        )));
    }
    if config.username.is_some() || config.password.is_some() {
        return Err(Error::invalid_config("memory:// takes no credentials"));
    }
    let name = config.endpoints.first().cloned().unwrap_or_default();
    Ok(Coordinator::new(
        MemoryBackend {
            state: state::shared_state(&name),
        },
        config.clone(),
    ))
}

struct MemoryBackend {
    state: State,
}

#[async_trait]
impl Backend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>> {
        Ok(Box::new(MemorySession::open(self.state.clone(), ttl, loss)))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<()> {
        let id: u64 = session_id.parse().map_err(|_| {
            Error::invalid_name(format!("`{session_id}` is not a memory session id"))
        })?;
        if end_session_everywhere(&self.state, id, "the session was revoked from outside") {
            Ok(())
        } else {
            Err(Error::not_held(format!("no live session {id}")))
        }
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        Ok(group::list(&self.state.shard(group).lock().unwrap(), group))
    }

    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch> {
        Ok(group::watch(&self.state, group))
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        Ok(election::leader(&self.state, name))
    }

    async fn observe(&self, name: &str) -> Result<RawObserve> {
        Ok(election::observe(&self.state, name))
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state.data.lock().unwrap().get(key).cloned())
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .state
            .sessions()
            .lock()
            .unwrap()
            .sessions
            .keys()
            .map(|id| format!("session/{id}"))
            .collect();
        for shard in self.state.shards() {
            let inner = shard.lock().unwrap();
            for ((space, name), q) in &inner.queues {
                for e in &q.entries {
                    out.push(format!("{}/{}/{}", space.as_str(), name, e.id));
                }
            }
            for (g, state) in &inner.groups {
                for m in state.members.keys() {
                    out.push(format!("group/{g}/{m}"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    async fn locks(&self, prefix: &str) -> Result<Vec<quorate_core::LockState>> {
        Ok(inspect::locks(&self.state, prefix))
    }
}

#[async_trait]
impl SessionBackend for MemorySession {
    fn id(&self) -> String {
        self.id.to_string()
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn keep_alive(&self) -> Result<()> {
        MemorySession::keep_alive(self)
    }

    async fn revoke(&self) -> Result<()> {
        MemorySession::revoke(self);
        Ok(())
    }

    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired> {
        let wait = mode.waits();
        mutex::lock(self, name, kind, wait, loss)
            .await
            .map(Acquired::from)
    }

    async fn join(
        &self,
        group: &str,
        member: &str,
        capabilities: &serde_json::Value,
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldMembership>> {
        group::join(self, group, member, capabilities, loss)
    }

    async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>> {
        election::campaign(self, name, value, loss).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use futures::StreamExt;
    use quorate_core::{Config, GroupEvent};

    /// A member that leaves and joins again while a watcher's feed
    /// overflows is reported, after the re-list, as `Left` then `Joined`
    /// (its incarnation changed), never as `Updated`. The raw watch is not
    /// read during the changes, so its feed overflows for certain.
    #[tokio::test]
    async fn a_rejoin_hidden_in_a_relist_is_not_an_update() {
        use quorate_core::spi::{Backend, GroupChange};
        use quorate_core::watch::GroupView;

        let coord = super::connect(&Config::parse("memory://rejoin-relist").unwrap())
            .await
            .unwrap();
        let raw = super::MemoryBackend {
            state: super::state::shared_state("rejoin-relist"),
        };
        let session = coord.session().await.unwrap();
        let mut member = session
            .group("g")
            .join("a", serde_json::json!(0))
            .await
            .unwrap();
        let mut watch = raw.watch_group("g").await.unwrap();
        let (mut view, _snapshot) = GroupView::new(&watch.snapshot);
        for i in 1..=200 {
            member.leave().await.unwrap();
            member = session
                .group("g")
                .join("a", serde_json::json!(i))
                .await
                .unwrap();
        }
        let change = watch.changes.next().await.unwrap().unwrap();
        assert!(
            matches!(&change, GroupChange::Resync(_)),
            "the feed did not overflow: {change:?}"
        );
        view.apply(change);
        let mut events = Vec::new();
        while let Some(e) = view.next_event() {
            events.push(e);
        }
        assert!(
            matches!(
                &events[..],
                [GroupEvent::Left { id }, GroupEvent::Joined { member }]
                    if id == "a" && member.capabilities == 200
            ),
            "{events:?}"
        );
    }

    /// A watcher that does not read while thousands of changes happen
    /// (its feed overflows, its view coalesces) then reads: every event is
    /// consistent with what it was told, and it converges to the members.
    #[tokio::test]
    async fn a_slow_watcher_gets_a_consistent_coalesced_stream() {
        let coord = super::connect(&Config::parse("memory://slow-watcher").unwrap())
            .await
            .unwrap();
        let session = coord.session().await.unwrap();
        let keep = session
            .group("g")
            .join("keep", serde_json::json!(0))
            .await
            .unwrap();
        let mut events = coord.watch_group("g");
        let mut view: BTreeMap<String, serde_json::Value> = match events.next().await {
            Some(Ok(GroupEvent::Snapshot { members })) => members
                .into_iter()
                .map(|m| (m.id, m.capabilities))
                .collect(),
            other => panic!("{other:?}"),
        };
        let mut kept = Vec::new();
        for i in 0..3000 {
            let m = session
                .group("g")
                .join(&format!("m{i}"), serde_json::json!(i))
                .await
                .unwrap();
            if i % 1000 == 999 {
                kept.push(m);
            } else {
                m.leave().await.unwrap();
            }
        }
        keep.update(serde_json::json!(1)).await.unwrap();
        let want: BTreeMap<String, serde_json::Value> = coord
            .members("g")
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.id, m.capabilities))
            .collect();
        assert_eq!(want.len(), 4, "{want:?}");
        let mut seen = 0;
        while view != want {
            let event = events.next().await.unwrap().unwrap();
            seen += 1;
            match event {
                GroupEvent::Joined { member } => {
                    assert!(view.insert(member.id, member.capabilities).is_none());
                }
                GroupEvent::Updated { member } => {
                    assert!(view.insert(member.id, member.capabilities).is_some());
                }
                GroupEvent::Left { id } => assert!(view.remove(&id).is_some(), "Left {id}"),
                GroupEvent::Snapshot { .. } => panic!("a second snapshot"),
            }
        }
        // 6000 changes happened; a coalesced stream carries far fewer.
        assert!(seen < 6000, "{seen} events");
        drop((kept, keep));
    }

    /// A session's grants spread over every shard: revoking it from outside
    /// frees all of them, ends its membership and candidacy, and leaves
    /// nothing behind in any shard; a second session then gets every lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ending_a_session_clears_it_from_every_shard() {
        let coord = super::connect(&Config::parse("memory://?ttl=30s").unwrap())
            .await
            .unwrap();
        let s = coord.session().await.unwrap();
        let mut guards = Vec::new();
        for i in 0..200 {
            guards.push(s.mutex(&format!("lock-{i}")).lock().await.unwrap());
        }
        let _member = s
            .group("workers")
            .join("a", serde_json::json!({}))
            .await
            .unwrap();
        let _leader = s.election("boss").campaign(b"a").await.unwrap();
        coord.revoke_session(s.id()).await.unwrap();
        for g in &guards {
            tokio::time::timeout(Duration::from_secs(5), g.lost())
                .await
                .expect("every grant is told");
        }
        assert!(coord.members("workers").await.unwrap().is_empty());
        assert!(coord.leader("boss").await.unwrap().is_none());
        let other = coord.session().await.unwrap();
        for i in 0..200 {
            let g = other.mutex(&format!("lock-{i}")).try_lock().await.unwrap();
            g.expect("free after the revoke").release().await.unwrap();
        }
        other.close().await.unwrap();
        drop(guards);
        assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
    }
}
