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
//! proceed immediately. Waiters racing for the turnstile itself are served in
//! no promised order: *writer-preferring*, not FIFO. Foreign `lockf` users
//! do not pass the turnstile; they contend for the lock file only.
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

use quorate_core::Result;

use crate::layout::{bump_fence, open_lock_file};
use crate::ofd::{io_error, unlock, Mode, Range, Wait};
use crate::queue::{lock_file, Grant};

/// Taken exclusively by every acquirer on its way in (companion file).
const TURNSTILE: Range = Range::byte(0);
/// Held exclusively by a reader while it bumps the counter (companion file).
const COUNTER: Range = Range::byte(1);

/// The turnstile (companion) file of the lock file `path`.
pub(crate) fn turnstile_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("turn")
}

/// Pass the turnstile into the lock file `path` in `mode`: returns the lock
/// file's description holding the whole file in `mode`, and the turnstile
/// file's description (the turnstile already released).
fn enter(path: &Path, mode: Mode, wait: Wait<'_>) -> Result<Option<(File, File)>> {
    let turn = open_lock_file(&turnstile_path(path))?;
    if !wait.lock(&turn, Mode::Exclusive, TURNSTILE)? {
        return Ok(None);
    }
    let Some(file) = lock_file(path, wait, |f, w| w.lock(f, mode, Range::WHOLE))? else {
        return Ok(None);
    };
    unlock(&turn, TURNSTILE).map_err(|e| io_error("leaving the turnstile", e))?;
    Ok(Some((file, turn)))
}

/// The acquisition job of a read grant.
pub(crate) fn lock_read(path: &Path, wait: Wait<'_>) -> Result<Option<Grant>> {
    let Some((file, turn)) = enter(path, Mode::Shared, wait)? else {
        return Ok(None);
    };
    wait.check()?;
    wait.lock_brief(&turn, Mode::Exclusive, COUNTER)?;
    let fence = bump_fence(&file, path)?;
    drop(turn);
    Ok(Some(Grant { file, fence }))
}

/// The acquisition job of a write grant or a mutex.
pub(crate) fn lock_write(path: &Path, wait: Wait<'_>) -> Result<Option<Grant>> {
    let Some((file, turn)) = enter(path, Mode::Exclusive, wait)? else {
        return Ok(None);
    };
    drop(turn);
    wait.check()?;
    let fence = bump_fence(&file, path)?;
    Ok(Some(Grant { file, fence }))
}
