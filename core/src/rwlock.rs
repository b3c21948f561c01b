//! Read/write locks: shared readers, exclusive writers, FIFO so that a
//! waiting writer blocks later readers (no writer starvation).

use std::time::Duration;

use crate::error::Result;
use crate::mutex::{acquire, wait_for, with_timeout, LockGuard};
use crate::session::Session;
use crate::spi::Acquire;
use crate::LockKind;

/// A named read/write lock owned by a [`Session`]. One name, one lock: the
/// write side is the [`crate::Mutex`] of the same name (one FIFO queue and
/// one fence counter per name, on every backend), so a mutex holder
/// excludes readers and writers of the name and is excluded by them, as
/// `flock -x`/`flock -s` on one file. Native exclusive recipes that
/// interoperate with quorate's mutex (`etcdctl lock`, kazoo `Lock`,
/// redis-py `Lock`, `lockf`) also exclude quorate's readers.
///
/// A session holds at most one mode of one name at a time, mutex included
/// (no upgrade, no re-entrancy).
#[derive(Debug, Clone)]
pub struct RwLock {
    session: Session,
    name: String,
}

impl RwLock {
    pub(crate) fn new(session: Session, name: &str) -> Self {
        RwLock {
            session,
            name: name.to_owned(),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait for a shared (read) grant. Readers share with readers, and wait
    /// behind any writer or mutex holder of the same name, and any that
    /// arrived before them.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the queue at once.
    ///
    /// # Errors
    ///
    /// As [`crate::Mutex::lock`].
    pub async fn read(&self) -> Result<LockGuard> {
        self.wait(LockKind::Read).await
    }

    /// Wait for an exclusive (write) grant: the same grant as
    /// [`crate::Mutex::lock`] of this name.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the queue at once, so the
    /// readers queued behind this writer proceed immediately.
    ///
    /// # Errors
    ///
    /// As [`crate::Mutex::lock`].
    pub async fn write(&self) -> Result<LockGuard> {
        self.wait(LockKind::Write).await
    }

    /// A read grant only if available now (no writer or mutex holder of the
    /// name holds or waits).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Errors
    ///
    /// As [`crate::Mutex::try_lock`].
    pub async fn try_read(&self) -> Result<Option<LockGuard>> {
        acquire(&self.session, &self.name, LockKind::Read, Acquire::Try).await
    }

    /// A write grant only if the lock is free now.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Errors
    ///
    /// As [`crate::Mutex::try_lock`].
    pub async fn try_write(&self) -> Result<Option<LockGuard>> {
        acquire(&self.session, &self.name, LockKind::Write, Acquire::Try).await
    }

    /// Wait at most `timeout` for a read grant.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Errors
    ///
    /// As [`crate::Mutex::lock_timeout`].
    pub async fn read_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        with_timeout(timeout, &self.name, self.read()).await
    }

    /// Wait at most `timeout` for a write grant. A timed-out writer leaves
    /// the queue at once, so readers queued behind it proceed immediately.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// # Errors
    ///
    /// As [`crate::Mutex::lock_timeout`].
    pub async fn write_timeout(&self, timeout: Duration) -> Result<LockGuard> {
        with_timeout(timeout, &self.name, self.write()).await
    }

    async fn wait(&self, kind: LockKind) -> Result<LockGuard> {
        wait_for(&self.session, &self.name, kind).await
    }
}
