//! Linux open-file-description (OFD) locks, and waiting for them without
//! blocking the async runtime and without giving up cancel safety.
//!
//! # The locks
//!
//! `F_OFD_SETLK`/`F_OFD_SETLKW`/`F_OFD_GETLK` lock byte ranges of a file
//! per *open file description*: every `open()` gets its own, so two tasks or
//! threads of one process that open the same file exclude each other, the
//! kernel drops the locks when the last descriptor of the description is
//! closed (process death included), and they conflict with classic
//! `fcntl`/`lockf` locks of other processes (Python's `fcntl.lockf`).
//! Every file of this crate is opened `O_CLOEXEC` (Rust's default), so an
//! exec'd child never inherits a description, hence never a lock.
//!
//! # Waiting
//!
//! A blocking wait ([`lock_blocking`], `F_OFD_SETLKW`) runs on a thread of
//! [`WAIT_POOL`] (threads named `qfile-wait`): the kernel wakes it when the
//! lock frees (no polling). Who waits, how many threads wait, and what
//! happens when a waiter goes away is decided in `queue.rs`: at most one
//! thread per contended (file, range, mode) and process, and a cancelled
//! wait is never interrupted — this crate sends no signal and installs no
//! signal handler, since the signals belong to the host program — but
//! orphaned: its thread stays in the kernel's wait list until the lock is
//! granted to it or another waiter of the process adopts the wait, and an
//! orphan's grant is dropped on the spot (the description closes, the
//! kernel releases), before any fencing counter is bumped.
//!
//! Short operations that do not wait (`F_OFD_SETLK`, reads, `fsync`,
//! fence bumps) run on [`IO_POOL`] (threads named `qfile-io`, at most eight)
//! through [`blocking`] and [`commit`], never on a thread of the async
//! runtime; their results are dropped if the caller went away. The first,
//! non-blocking attempt of an acquisition (open, `F_OFD_SETLK`, `fstat`)
//! runs inline on the async task: a few system calls that never wait; so
//! does a fence bump that needs no `fdatasync` (`layout::bump_fence_unsynced`:
//! a `pread` and a `pwrite`).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex as StdMutex};
use std::time::Duration;

use quorate_core::{Error, Result};

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `F_RDLCK`: shared with other shared holders.
    Shared,
    /// `F_WRLCK`: excludes every other holder.
    Exclusive,
}

/// A byte range of a file; `len == 0` means "to the end of the file, however
/// far it grows" (what `lockf` and Python's `fcntl.lockf(fd, op)` lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    start: i64,
    len: i64,
}

impl Range {
    /// The whole file.
    pub(crate) const WHOLE: Range = Range { start: 0, len: 0 };

    /// The single byte at `offset`.
    pub(crate) const fn byte(offset: i64) -> Range {
        Range {
            start: offset,
            len: 1,
        }
    }
}

fn flock(kind: libc::c_int, range: Range) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range.start;
    fl.l_len = range.len;
    fl.l_pid = 0; // required by the OFD commands
    fl
}

fn kind(mode: Mode) -> libc::c_int {
    match mode {
        Mode::Shared => libc::F_RDLCK,
        Mode::Exclusive => libc::F_WRLCK,
    }
}

fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `file` is an open descriptor and `fl` a valid `flock`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Take a lock without waiting: `Ok(true)` when granted, `Ok(false)` when a
/// conflicting lock is held by another open file description.
pub(crate) fn try_lock(file: &File, mode: Mode, range: Range) -> io::Result<bool> {
    loop {
        let mut fl = flock(kind(mode), range);
        match fcntl_lock(file, libc::F_OFD_SETLK, &mut fl) {
            Ok(()) => return Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                return Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Release a range held by this description (a no-op where none is held).
pub(crate) fn unlock(file: &File, range: Range) -> io::Result<()> {
    let mut fl = flock(libc::F_UNLCK, range);
    fcntl_lock(file, libc::F_OFD_SETLK, &mut fl)
}

/// Whether another open file description (or another process's classic
/// lock) holds a lock on `range` that conflicts with `mode`. Locks of this
/// very description are never reported. Works on a read-only descriptor.
pub(crate) fn is_locked(file: &File, mode: Mode, range: Range) -> io::Result<bool> {
    let mut fl = flock(kind(mode), range);
    fcntl_lock(file, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

fn cancelled() -> Error {
    Error::backend("the wait was cancelled")
}

/// An I/O error as a quorate error, with context.
pub(crate) fn io_error(context: impl std::fmt::Display, e: io::Error) -> Error {
    Error::backend(format!("{context}: {e}")).with_source(e)
}

/// Block in `F_OFD_SETLKW` until `file`'s description holds `range` in
/// `mode` (retrying on `EINTR`, which only a signal of the host program can
/// cause). Only ever called on a thread of [`WAIT_POOL`] or [`IO_POOL`].
pub(crate) fn lock_blocking(file: &File, mode: Mode, range: Range) -> io::Result<()> {
    loop {
        let mut fl = flock(kind(mode), range);
        match fcntl_lock(file, libc::F_OFD_SETLKW, &mut fl) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A cancellation flag for work handed to a thread: set when the awaiting
/// future is dropped before it took the result.
#[derive(Clone, Default)]
pub(crate) struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Fail if the caller has gone away (checked before committing a grant,
    /// i.e. before bumping a fencing counter).
    pub(crate) fn check(&self) -> Result<()> {
        if self.0.load(Ordering::SeqCst) {
            Err(cancelled())
        } else {
            Ok(())
        }
    }
}

/// Sets its [`Cancel`] flag when dropped, unless disarmed.
struct CancelOnDrop(Option<Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Run a blocking job that commits a grant (bumps a fencing counter, which
/// may `fdatasync`) on [`IO_POOL`], holding `gate` (the lock file's commit
/// gate, see `queue`) until the job is done, even if the caller goes away
/// first. The job gets a [`Cancel`] flag that is set if the awaiting future
/// is dropped first; it checks it before committing, and whatever it
/// returns after that is dropped (its files close, the kernel releases
/// their locks).
pub(crate) async fn commit<T, F>(gate: tokio::sync::OwnedMutexGuard<()>, job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Cancel) -> Result<T> + Send + 'static,
{
    let cancel = Cancel::default();
    let mut guard = CancelOnDrop(Some(cancel.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    IO_POOL
        .submit(Box::new(move || {
            let result = job(&cancel);
            Box::new(move || {
                let _ = tx.send(result);
                // Released once this thread is free for the next commit.
                drop(gate);
            })
        }))
        .map_err(|e| io_error("starting a file operation thread", e))?;
    let result = rx
        .await
        .map_err(|_| Error::backend("a blocking file operation panicked"))?;
    guard.0 = None;
    result
}

// ---------------------------------------------------------------------
// Thread pools: `qfile-wait` (kernel waits), `qfile-io` (short jobs).
// ---------------------------------------------------------------------

/// What a job hands back to its pool thread: the delivery of its result,
/// run once the thread counts as free again (so a job submitted by
/// whoever receives the result finds that thread, not a new one).
pub(crate) type Deliver = Box<dyn FnOnce() + Send + 'static>;

/// A job for a pool thread: does the work, returns the delivery.
pub(crate) type Job = Box<dyn FnOnce() -> Deliver + Send + 'static>;

/// How long an idle pool thread lingers before it exits.
const POOL_IDLE: Duration = Duration::from_secs(1);

/// A minimal thread pool; see [`WAIT_POOL`] and [`IO_POOL`].
pub(crate) struct Pool {
    name: &'static str,
    /// Most threads at once; jobs beyond wait in the queue.
    max: usize,
    state: StdMutex<PoolState>,
    wake: Condvar,
}

struct PoolState {
    jobs: VecDeque<Job>,
    threads: usize,
    /// Threads running a job (between taking it and its delivery).
    busy: usize,
}

impl Pool {
    const fn new(name: &'static str, max: usize) -> Pool {
        Pool {
            name,
            max,
            state: StdMutex::new(PoolState {
                jobs: VecDeque::new(),
                threads: 0,
                busy: 0,
            }),
            wake: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `job` on a free thread of the pool, a new one if none is free
    /// and the pool is below its maximum, else as soon as one is free.
    pub(crate) fn submit(&'static self, job: Job) -> io::Result<()> {
        let mut state = self.state();
        state.jobs.push_back(job);
        let free = state.threads - state.busy;
        if free >= state.jobs.len() || state.threads >= self.max {
            self.wake.notify_one();
            return Ok(());
        }
        state.threads += 1;
        drop(state);
        let spawned = std::thread::Builder::new()
            .name(self.name.into())
            .stack_size(256 * 1024)
            .spawn(move || self.run());
        if let Err(e) = spawned {
            let mut state = self.state();
            state.threads -= 1;
            if state.threads == 0 {
                // Nobody to run it: take it back (the queue holds ours).
                state.jobs.pop_back();
                return Err(e);
            }
        }
        Ok(())
    }

    fn run(&'static self) {
        let mut state = self.state();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.busy += 1;
                drop(state);
                let deliver = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                state = self.state();
                state.busy -= 1;
                drop(state);
                // A panicking job delivers nothing: its receiver sees the
                // sender dropped.
                if let Ok(deliver) = deliver {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(deliver));
                }
                state = self.state();
                continue;
            }
            let (s, timeout) = self
                .wake
                .wait_timeout(state, POOL_IDLE)
                .unwrap_or_else(|e| e.into_inner());
            state = s;
            if timeout.timed_out() && state.jobs.is_empty() {
                state.threads -= 1;
                return;
            }
        }
    }
}

/// Threads blocked in `F_OFD_SETLKW` (named `qfile-wait`). No limit of its
/// own: `queue.rs` bounds the kernel waits to one per contended (file,
/// range, mode) and process.
pub(crate) static WAIT_POOL: Pool = Pool::new("qfile-wait", usize::MAX);

/// Threads for short blocking file operations (named `qfile-io`): commits
/// (fence bump, sometimes an `fdatasync`), keep-alive checks, reads,
/// writes. At most eight (enough to overlap the `fdatasync`s of grants of
/// different names): a thousand sessions' keep-alives or grants at once
/// queue here instead of starting a thread each.
pub(crate) static IO_POOL: Pool = Pool::new("qfile-io", 8);

/// Run a short blocking file operation on [`IO_POOL`], never on a thread
/// of the async runtime. If the caller goes away first, the job still runs
/// to its end and its result is dropped (its files close).
pub(crate) async fn blocking<T, F>(job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    IO_POOL
        .submit(Box::new(move || {
            let result = job();
            Box::new(move || {
                let _ = tx.send(result);
            })
        }))
        .map_err(|e| io_error("starting a file operation thread", e))?;
    rx.await
        .map_err(|_| Error::backend("a blocking file operation panicked"))?
}
