//! One lock per name: the mutex of a name is the exclusive side of that
//! name's read/write lock, as `flock -x`/`-s` on one file.
//!
//! Both sides lock the *whole* of `<root>/lock/<stem(N)>.lock` (offset 0,
//! length 0): a writer (or mutex holder) exclusively, a reader shared. That
//! is the range Python's `fcntl.lockf(fd, LOCK_EX)` (fasteners,
//! oslo.concurrency, tooz's file driver) locks, so such a process excludes
//! quorate's readers and writers and is excluded by them; fasteners'
//! reader/writer lock (whole file, shared/exclusive) shares with quorate's
//! readers.
//!
//! The kernel does not keep lock waiters in order, and a shared lock is
//! granted over a waiting exclusive one, so quorate's acquirers also pass a
//! *turnstile*: byte 0 of the companion file `<root>/lock/<stem(N)>.turn`,
//! taken exclusively by every acquirer (reader, writer, mutex) from its
//! arrival until it holds the lock file. While a writer waits, every reader
//! that arrives after it is stopped at the turnstile: no writer starvation.
//! A writer that times out or whose future is dropped closes its
//! descriptions, which frees the turnstile at once, so the readers behind it
//! proceed immediately. Within one process, acquirers queue in arrival
//! order in front of the turnstile (`queue`: only the head of that FIFO
//! tries it), so the acquirers of one process are served in arrival order,
//! readers and writers alike; acquirers of different processes racing for
//! the turnstile are served in no promised order: *writer-preferring*, not
//! FIFO. Foreign `lockf` users do not pass the turnstile; they contend for
//! the lock file only.
//!
//! Fencing: one counter per name, at the start of the lock file. A writer
//! bumps it while it holds the lock file exclusively; a reader bumps it
//! after leaving the turnstile, holding the lock file shared (so no writer
//! is bumping) and byte 1 of the companion file exclusively (so no other
//! reader is). Every grant, read or write, gets a strictly larger token,
//! and the turnstile is held only while passing it, never across an
//! `fdatasync`. The counter byte is held for one bump only, so even a
//! `try_read` waits for it rather than report a busy lock.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use quorate_core::Result;

use crate::layout::{bump_fence, bump_fence_unsynced, FileId};
use crate::ofd::{commit, io_error, lock_blocking, try_lock, unlock, Mode, Range};
use crate::queue::{entry, Entry, Grant, Turn};

/// Taken exclusively by every acquirer on its way in (companion file).
const TURNSTILE: Range = Range::byte(0);
/// Held exclusively by a reader while it bumps the counter (companion file).
const COUNTER: Range = Range::byte(1);

/// The turnstile (companion) file of the lock file `path`.
pub(crate) fn turnstile_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("turn")
}

/// Pass the in-process FIFO and the turnstile into the lock file in `mode`:
/// returns the lock file's description holding the whole file in `mode`
/// with the file's identity, the turnstile file's description (still
/// holding the turnstile) and this acquirer's place at the head of the
/// in-process FIFO. The caller releases the turnstile, then the place, so
/// the next acquirer of this process finds the turnstile free.
///
/// # Cancel safety
///
/// Dropping the future drops the descriptions it holds: the turnstile is
/// free at once; a kernel wait in progress is orphaned (see `queue`).
async fn enter(
    entry: &Arc<Entry>,
    mode: Mode,
    wait: bool,
) -> Result<Option<(File, FileId, File, Turn)>> {
    let Some(turn_place) = entry.turn(wait).await? else {
        return Ok(None);
    };
    let turn_path = turnstile_path(entry.path());
    let Some(turn) = entry
        .lock(&turn_path, wait, Mode::Exclusive, TURNSTILE)
        .await?
    else {
        return Ok(None);
    };
    let Some((file, id)) = entry.lock_file(wait, mode, Range::WHOLE).await? else {
        return Ok(None);
    };
    Ok(Some((file, id, turn, turn_place)))
}

/// Acquire a read grant of the lock file `path` (`None`: busy and `!wait`).
pub(crate) async fn lock_read(path: &Path, wait: bool) -> Result<Option<Grant>> {
    let entry = entry(path);
    let Some((file, id, turn, turn_place)) = enter(&entry, Mode::Shared, wait).await? else {
        return Ok(None);
    };
    // The turnstile file stays open: the reader's counter byte is in it.
    unlock(&turn, TURNSTILE).map_err(|e| io_error("leaving the turnstile", e))?;
    drop(turn_place);
    // Inline when no other reader of this process is committing, no other
    // process's reader holds the counter byte, and the bump needs no sync.
    let gate = match entry.try_gate() {
        Some(gate) => {
            let counter = try_lock(&turn, Mode::Exclusive, COUNTER)
                .map_err(|e| io_error("taking the counter byte", e))?;
            if counter {
                if let Some(fence) = bump_fence_unsynced(&file, path)? {
                    return Ok(Some(Grant { file, fence, id }));
                }
            }
            gate
        }
        None => entry.gate().await,
    };
    let path = path.to_owned();
    commit(gate, move |cancel| {
        cancel.check()?;
        // Held by another process's reader for one bump only (this
        // process's readers commit one at a time): waited for here, on
        // the `qfile-io` pool.
        lock_blocking(&turn, Mode::Exclusive, COUNTER)
            .map_err(|e| io_error("taking the counter byte", e))?;
        cancel.check()?;
        let fence = bump_fence(&file, &path)?;
        drop(turn);
        Ok(Some(Grant { file, fence, id }))
    })
    .await
}

/// Acquire a write grant or a mutex of the lock file `path` (`None`: busy
/// and `!wait`).
pub(crate) async fn lock_write(path: &Path, wait: bool) -> Result<Option<Grant>> {
    let entry = entry(path);
    let Some((file, id, turn, turn_place)) = enter(&entry, Mode::Exclusive, wait).await? else {
        return Ok(None);
    };
    // Closing the turnstile file's description frees the turnstile: no
    // separate unlock.
    drop(turn);
    drop(turn_place);
    // Inline when the bump needs no sync (this exclusive grant excludes
    // every other bump of the file).
    if let Some(fence) = bump_fence_unsynced(&file, path)? {
        return Ok(Some(Grant { file, fence, id }));
    }
    let gate = entry.gate().await;
    let path = path.to_owned();
    commit(gate, move |cancel| {
        cancel.check()?;
        let fence = bump_fence(&file, &path)?;
        Ok(Some(Grant { file, fence, id }))
    })
    .await
}
