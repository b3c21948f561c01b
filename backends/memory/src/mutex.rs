//! Mutexes and read/write locks of one name share one queue: the mutex is
//! the exclusive (write) side of the name's read/write lock. Waiting, cancel-safe dequeue, release, guarded writes.

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock, LockKind};
use quorate_core::{Error, FencingToken, Result};

use crate::queue::{enqueue, remove};
use crate::session::MemorySession;
use crate::state::{Space, State};

/// Removes a queue entry when dropped while armed: the cancel-safety of a
/// dropped `lock()` (or `campaign()`) future.
pub(crate) struct DequeueOnDrop {
    pub(crate) state: State,
    pub(crate) space: Space,
    pub(crate) name: String,
    pub(crate) id: u64,
    pub(crate) armed: bool,
}

impl Drop for DequeueOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let mut inner = self.state.shard(&self.name).lock().unwrap();
            remove(&mut inner, self.space, &self.name, self.id);
        }
    }
}

/// Enqueue in `space`, then wait for the grant; dropping the future at any
/// point removes the entry.
pub(crate) async fn wait_for_grant(
    session: &MemorySession,
    space: Space,
    name: &str,
    exclusive: bool,
    wait: bool,
    loss: LossNotifier,
    on_enqueue: impl FnOnce(&mut crate::state::Inner, u64),
) -> Result<Option<(u64, FencingToken)>> {
    let (id, granted) = {
        let mut inner = session.state.shard(name).lock().unwrap();
        session.check_alive(&inner)?;
        match enqueue(&mut inner, space, name, session.id, exclusive, wait, loss) {
            None => return Ok(None),
            Some((id, granted)) => {
                on_enqueue(&mut inner, id);
                (id, granted)
            }
        }
    };
    let mut dequeue = DequeueOnDrop {
        state: session.state.clone(),
        space,
        name: name.to_owned(),
        id,
        armed: true,
    };
    let fence = match granted {
        Ok(f) => f,
        Err(rx) => rx
            .await
            .map_err(|_| Error::lost("the session ended while waiting"))?,
    };
    dequeue.armed = false;
    Ok(Some((id, FencingToken::new(fence)?)))
}

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
        session,
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
