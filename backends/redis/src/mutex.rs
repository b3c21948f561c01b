//! Mutexes: an exclusive lock of `queue.rs` in [`Space::Mutex`]. The lock
//! key `<ns>:lock:<enc(name)>` is a plain string holding the owner token
//! with a PX TTL: redis-py's `Lock` layout, so the two exclude each other.
//! Queueing, hand-off, wake-ups and cancel safety are `queue.rs`'s.

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::{FencingToken, Result};

use crate::queue::{acquire, ExGrant, Space};
use crate::session::RedisSession;

/// Acquire a mutex.
pub(crate) async fn lock(
    session: &RedisSession,
    name: &str,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<Box<dyn HeldLock>>> {
    Ok(acquire(session, Space::Mutex, name, wait, b"", loss)
        .await?
        .map(|g| Box::new(RedisLock(g)) as Box<dyn HeldLock>))
}

/// A held mutex.
struct RedisLock(ExGrant);

#[async_trait]
impl HeldLock for RedisLock {
    fn fence(&self) -> FencingToken {
        self.0.fence
    }

    async fn is_held(&self) -> Result<bool> {
        self.0.is_held().await
    }

    async fn release(&self) -> Result<()> {
        self.0.release().await
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let release = then == AfterWrite::Release;
        self.0.write_if_held(key, value, release).await
    }
}
