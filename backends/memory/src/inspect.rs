//! `Coordinator::locks` for `memory://`: the lock queues themselves. Every
//! field is known: session, side, fence, grant time, waiters in FIFO order.

use quorate_core::inspect::finish_listing;
use quorate_core::{FencingToken, LockHolder, LockMode, LockState, LockWaiter};

use crate::state::{Shared, Space};

/// Every lock queue whose name starts with `prefix`.
pub(crate) fn locks(state: &Shared, prefix: &str) -> Vec<LockState> {
    let mut out = Vec::new();
    for shard in state.shards() {
        let inner = shard.lock().unwrap();
        for ((space, name), queue) in &inner.queues {
            if *space != Space::Mutex || !name.starts_with(prefix) {
                continue;
            }
            let mut lock = LockState::new(name.clone());
            for e in &queue.entries {
                let mode = if e.exclusive {
                    LockMode::Exclusive
                } else {
                    LockMode::Shared
                };
                let session = Some(e.session.to_string());
                match e.fence {
                    Some(fence) => lock.holders.push(
                        LockHolder::new(session, mode)
                            .with_fence(FencingToken::new(fence).ok())
                            .with_since(e.granted_at),
                    ),
                    None => lock.waiters.push(LockWaiter::new(session, mode)),
                }
            }
            out.push(lock);
        }
    }
    finish_listing(out, prefix)
}
