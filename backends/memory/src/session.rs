//! Sessions: a record with a deadline, expired by a timer task unless kept
//! alive; expiry or revocation removes everything the session owned.

use std::time::Duration;

use quorate_core::loss::LossNotifier;
use quorate_core::{Error, Result};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::queue;
use crate::state::{self, Inner, SessionId, SessionRecord, Shared, State};

pub(crate) struct MemorySession {
    pub(crate) state: State,
    pub(crate) id: SessionId,
    pub(crate) ttl: Duration,
    pub(crate) expiry: JoinHandle<()>,
}

impl MemorySession {
    pub(crate) fn open(state: State, ttl: Duration, loss: LossNotifier) -> MemorySession {
        let id = crate::state::next_id();
        let record = SessionRecord {
            deadline: Instant::now() + ttl,
            loss,
        };
        for shard in state.shards() {
            shard.lock().unwrap().sessions.insert(id, record.clone());
        }
        let expiry = tokio::spawn(expire_when_due(state.clone(), id));
        MemorySession {
            state,
            id,
            ttl,
            expiry,
        }
    }

    pub(crate) fn check_alive(&self, inner: &Inner) -> Result<()> {
        state::check_alive(inner, self.id)
    }

    /// Push the deadline one TTL ahead; `Lost` if the session has ended.
    pub(crate) fn keep_alive(&self) -> Result<()> {
        let mut inner = self.state.sessions().lock().unwrap();
        match inner.sessions.get_mut(&self.id) {
            Some(r) => {
                r.deadline = Instant::now() + self.ttl;
                Ok(())
            }
            None => Err(Error::lost(format!(
                "session {} has expired or was revoked",
                self.id
            ))),
        }
    }

    /// End the session now: everything it owned is released.
    pub(crate) fn revoke(&self) {
        self.expiry.abort();
        end_session_everywhere(&self.state, self.id, "the session was revoked");
    }
}

impl Drop for MemorySession {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

async fn expire_when_due(state: State, id: SessionId) {
    loop {
        let deadline = match state.sessions().lock().unwrap().sessions.get(&id) {
            Some(r) => r.deadline,
            None => return,
        };
        tokio::time::sleep_until(deadline).await;
        let due = match state.sessions().lock().unwrap().sessions.get(&id) {
            Some(r) => Instant::now() >= r.deadline,
            None => return,
        };
        if due {
            // Ended in the authoritative shard first, under its lock, so a
            // keep-alive after this point fails.
            let ended = {
                let mut inner = state.sessions().lock().unwrap();
                match inner.sessions.get(&id) {
                    Some(r) if Instant::now() >= r.deadline => {
                        end_session(&mut inner, id, "the lease expired")
                    }
                    _ => false,
                }
            };
            if ended {
                tracing::debug!(session = id, "memory session expired");
                end_session_everywhere(&state, id, "the lease expired");
                return;
            }
        }
    }
}

/// Remove a session and everything it owned from every shard (the
/// authoritative one first), telling every holder; whether it was live.
pub(crate) fn end_session_everywhere(state: &Shared, id: SessionId, reason: &str) -> bool {
    let mut live = false;
    for shard in state.shards() {
        live |= end_session(&mut shard.lock().unwrap(), id, reason);
    }
    live
}

/// Remove a session and everything it owned from one shard, telling every
/// holder.
pub(crate) fn end_session(inner: &mut Inner, id: SessionId, reason: &str) -> bool {
    let Some(record) = inner.sessions.remove(&id) else {
        return false;
    };
    record.loss.fire(reason);
    let owned: Vec<_> = inner
        .queues
        .iter()
        .flat_map(|((space, name), q)| {
            q.entries
                .iter()
                .filter(|e| e.session == id)
                .map(|e| (*space, name.clone(), e.id, e.loss.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (space, name, entry, loss) in owned {
        loss.fire(reason);
        queue::remove(inner, space, &name, entry);
    }
    let memberships: Vec<(String, String)> = inner
        .groups
        .iter()
        .flat_map(|(g, state)| {
            state
                .members
                .iter()
                .filter(|(_, m)| m.session == id)
                .map(|(m, _)| (g.clone(), m.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    for (g, m) in memberships {
        state::remove_member(inner, &g, &m, id);
    }
    true
}
