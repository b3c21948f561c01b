//! Mutexes and read/write locks of one name share one queue: the mutex is
//! the exclusive (write) side of the name's read/write lock. Waiting, cancel-safe dequeue, release, guarded writes.

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::LockKind;
use quorate_core::{FencingToken, Result};

use crate::queue::{remove, wait_for_grant};
use crate::session::MemorySession;
use crate::state::{Space, State};

/// Acquire a lock of any kind.
pub(crate) async fn lock(
    session: &MemorySession,
    name: &str,
    kind: LockKind,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<Box<dyn HeldLock>>> {
    // One name, one lock: mutexes and both sides of read/write locks
    // share one queue (and one fence counter) per name.
    let space = Space::Mutex;
    let granted = wait_for_grant(
        (&session.state, session.id),
        space,
        name,
        kind.is_exclusive(),
        wait,
        loss,
        |_, _| {},
    )
    .await?;
    Ok(granted.map(|(id, fence)| {
        Box::new(MemoryLock {
            state: session.state.clone(),
            space,
            name: name.to_owned(),
            id,
            fence,
        }) as Box<dyn HeldLock>
    }))
}

/// A granted queue entry.
pub(crate) struct MemoryLock {
    state: State,
    space: Space,
    name: String,
    id: u64,
    fence: FencingToken,
}

#[async_trait]
impl HeldLock for MemoryLock {
    fn fence(&self) -> FencingToken {
        self.fence
    }

    async fn is_held(&self) -> Result<bool> {
        let inner = self.state.shard(&self.name).lock().unwrap();
        Ok(inner
            .queues
            .get(&(self.space, self.name.clone()))
            .is_some_and(|q| q.is_granted(self.id)))
    }

    async fn release(&self) -> Result<()> {
        let mut inner = self.state.shard(&self.name).lock().unwrap();
        remove(&mut inner, self.space, &self.name, self.id);
        Ok(())
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let release = then == AfterWrite::Release;
        let mut inner = self.state.shard(&self.name).lock().unwrap();
        let held = inner
            .queues
            .get(&(self.space, self.name.clone()))
            .is_some_and(|q| q.is_granted(self.id));
        if !held {
            return Ok(false);
        }
        self.state
            .data
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_vec());
        if release {
            remove(&mut inner, self.space, &self.name, self.id);
        }
        Ok(true)
    }
}
