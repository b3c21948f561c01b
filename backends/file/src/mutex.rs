//! Mutexes and read/write locks: the granted-lock type.
//!
//! A mutex named N is an exclusive OFD lock on the *whole* of
//! `<root>/lock/<stem(N)>.lock` (offset 0, length 0 = to the end of the file
//! and beyond); the read side of N's read/write lock is a shared lock on
//! the same range, the write side is the mutex (see `rwlock`). That is
//! exactly the range Python's `fcntl.lockf(fd, fcntl.LOCK_EX)` locks, so
//! such a process and quorate's mutex, readers and writers exclude each
//! other (fasteners, oslo.concurrency and tooz's file driver lock this way).
//!
//! Under the lock, the fencing counter at the start of the file is bumped
//! before the grant is returned (durably: see `layout::bump_fence` for how
//! one `fdatasync` per block of grants keeps fences increasing across
//! machine crashes). Lock files are never
//! removed: they are where the counter lives (and removing a lock file
//! races with anyone about to lock it). If an operator removes one anyway
//! (or the whole root) under a holder, the `removals` watch (within
//! milliseconds), the session's keep-alive and `is_held()` notice (the held
//! description is no longer the file at the path) and fire the holder's
//! loss; a new file's counter starts at the wall clock (see
//! `layout::bump_fence`), so fences do not repeat.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::LockKind;
use quorate_core::{FencingToken, Result};

use crate::layout::{same_file, write_atomic, FileId, Space};
use crate::ofd::{blocking, io_error};
use crate::rwlock;
use crate::session::{Registration, Revocable, SessionShared};

/// Acquire a lock of any kind for a session; the grant, and the identity
/// of the lock file it holds (for its `inspect` record).
pub(crate) async fn lock(
    session: &Arc<SessionShared>,
    name: &str,
    kind: LockKind,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<(Box<dyn HeldLock>, FileId)>> {
    // One lock per name: a mutex is the write side of the name's
    // read/write lock (see `rwlock`).
    let path = session.layout.lock_path(Space::Mutex, name);
    // Before the lock: see `SessionShared::reserve`.
    let registration = session.reserve();
    let granted = match kind {
        LockKind::Mutex | LockKind::Write => rwlock::lock_write(&path, wait).await?,
        LockKind::Read => rwlock::lock_read(&path, wait).await?,
    };
    let Some(grant) = granted else {
        return Ok(None);
    };
    tracing::debug!(name, ?kind, fence = grant.fence, "file lock granted");
    let state = Arc::new(LockState {
        layout: session.layout.clone(),
        path,
        fence: FencingToken::new(grant.fence)?,
        file: StdMutex::new(Some(grant.file)),
        loss,
        registration,
    });
    let weak: std::sync::Weak<LockState> = Arc::downgrade(&state);
    session.activate(&state.registration, weak)?;
    Ok(Some((Box::new(FileLock(state)), grant.id)))
}

/// A granted lock: the open file description holding it.
struct LockState {
    layout: Arc<crate::layout::Layout>,
    path: PathBuf,
    fence: FencingToken,
    /// `None` once released; closing the file releases the kernel lock.
    file: StdMutex<Option<File>>,
    loss: LossNotifier,
    registration: Registration,
}

impl Revocable for LockState {
    fn revoke(&self, reason: &str) {
        self.loss.fire(reason);
        drop(self.file.lock().unwrap().take());
    }

    fn gone(&self) -> Option<String> {
        let file = self.file.lock().unwrap();
        match same_file(file.as_ref()?, &self.path) {
            Ok(false) => Some(format!(
                "the lock file `{}` was removed or replaced",
                self.path.display()
            )),
            Ok(true) | Err(_) => None,
        }
    }
}

impl LockState {
    /// Whether this description still holds the lock of the named file.
    fn still_held(&self, file: &File) -> Result<bool> {
        same_file(file, &self.path)
            .map_err(|e| io_error(format!("checking `{}`", self.path.display()), e))
    }
}

struct FileLock(Arc<LockState>);

#[async_trait]
impl HeldLock for FileLock {
    fn fence(&self) -> FencingToken {
        self.0.fence
    }

    async fn is_held(&self) -> Result<bool> {
        let state = self.0.clone();
        blocking(move || match state.file.lock().unwrap().as_ref() {
            Some(file) => state.still_held(file),
            None => Ok(false),
        })
        .await
    }

    async fn release(&self) -> Result<()> {
        drop(self.0.file.lock().unwrap().take());
        Ok(())
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let release = then == AfterWrite::Release;
        let state = self.0.clone();
        let data = state.layout.data_path(key);
        let value = value.to_vec();
        blocking(move || {
            let mut file = state.file.lock().unwrap();
            match file.as_ref() {
                Some(f) if state.still_held(f)? => {}
                _ => return Ok(false),
            }
            // Written, synced and renamed into place while the kernel lock
            // is held by this description.
            write_atomic(&data, &value, true)?;
            if release {
                drop(file.take());
            }
            Ok(true)
        })
        .await
    }
}
