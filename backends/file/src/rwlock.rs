//! Read/write locks, with a turnstile so that writers are not starved.
//!
//! A read/write lock named N lives in `<root>/rwlock/<stem(N)>.lock` (a
//! different file from the mutex of the same name) and uses three bytes of
//! it:
//!
//! - the *turnstile*, byte 0: every acquirer, reader or writer, takes it
//!   exclusively on the way in;
//! - the *data* byte, byte 1: readers hold it shared, writers exclusively,
//!   for as long as they hold the lock;
//! - the *counter* byte, byte 2: a reader holds it exclusively while it
//!   bumps the fencing counter.
//!
//! Every acquirer keeps the turnstile from its arrival until it holds the
//! data byte, so while a writer waits, every reader that arrives after it is
//! stopped at the turnstile: no writer starvation. A writer that times out
//! or whose future is dropped closes its description, which frees the
//! turnstile at once, so the readers behind it proceed immediately.
//!
//! The kernel does not queue waiters in order: when the turnstile frees,
//! whichever waiter the scheduler runs first takes it. So the ordering is
//! *writer-preferring* (a writer that holds the turnstile blocks every later
//! reader), not FIFO.
//!
//! Fencing: a reader bumps the counter after leaving the turnstile, holding
//! the data byte shared (so no writer is bumping) and the counter byte (so
//! no other reader is); a writer bumps while it holds the data byte
//! exclusively. Every grant, read or write, gets a strictly larger token,
//! and the turnstile is held only for the instant of passing it, never
//! across an `fdatasync`. The counter byte is held for one bump only, so
//! even a `try_read` waits for it rather than report a busy lock.

use std::path::Path;

use quorate_core::Result;

use crate::layout::bump_fence;
use crate::mutex::{lock_file, Grant};
use crate::ofd::{io_error, unlock, Mode, Range, Wait};

/// Taken exclusively by every acquirer on its way in.
const TURNSTILE: Range = Range::byte(0);
/// Held shared by readers, exclusively by writers.
const DATA: Range = Range::byte(1);
/// Held exclusively by a reader while it bumps the counter.
const COUNTER: Range = Range::byte(2);

/// The acquisition job of a read grant.
pub(crate) fn lock_read(path: &Path, wait: Wait<'_>) -> Result<Option<Grant>> {
    let Some(file) = lock_file(path, wait, |f, w| {
        Ok(w.lock(f, Mode::Exclusive, TURNSTILE)? && w.lock(f, Mode::Shared, DATA)?)
    })?
    else {
        return Ok(None);
    };
    unlock(&file, TURNSTILE).map_err(|e| io_error("leaving the turnstile", e))?;
    wait.check()?;
    wait.lock_brief(&file, Mode::Exclusive, COUNTER)?;
    let fence = bump_fence(&file, path)?;
    unlock(&file, COUNTER).map_err(|e| io_error("releasing the counter byte", e))?;
    Ok(Some(Grant { file, fence }))
}

/// The acquisition job of a write grant.
pub(crate) fn lock_write(path: &Path, wait: Wait<'_>) -> Result<Option<Grant>> {
    let Some(file) = lock_file(path, wait, |f, w| {
        Ok(w.lock(f, Mode::Exclusive, TURNSTILE)? && w.lock(f, Mode::Exclusive, DATA)?)
    })?
    else {
        return Ok(None);
    };
    unlock(&file, TURNSTILE).map_err(|e| io_error("leaving the turnstile", e))?;
    wait.check()?;
    let fence = bump_fence(&file, path)?;
    Ok(Some(Grant { file, fence }))
}
