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
//! A blocking wait (`F_OFD_SETLKW`) runs on a dedicated thread
//! ([`wait_on_thread`]): the kernel wakes it when the lock frees (no
//! polling), and the async caller awaits a channel. Dropping the caller's
//! future cancels the wait:
//!
//! 1. a flag is set and the thread is sent a real-time signal (one claimed
//!    by this crate at first use, with a no-op handler installed without
//!    `SA_RESTART`), so `fcntl` returns `EINTR` and the thread sees the flag
//!    and gives up: it stops waiting at once, it does not linger in the
//!    kernel's wait list until the lock frees;
//! 2. the signal is repeated with a growing delay (1 ms … 100 ms) until the
//!    thread says it is done, because a signal that lands just before the
//!    thread enters `fcntl` is lost;
//! 3. whatever the thread obtains after the caller left is sent into a
//!    closed channel and dropped on the spot: dropping the [`std::fs::File`]
//!    closes the description and the kernel releases its locks. So a
//!    dropped wait never acquires "by itself" later; at worst (no signal
//!    could be claimed) the abandoned thread takes the lock for the instant
//!    it needs to notice, without bumping any fencing counter.
//!
//! Short operations that do not wait (`F_OFD_SETLK`, reads, `fsync`) run on
//! tokio's blocking pool through [`blocking`]; their results are dropped
//! the same way if the caller went away.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock};
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

/// How an acquisition step may wait.
#[derive(Clone, Copy)]
pub(crate) enum Wait<'a> {
    /// Never wait: a busy lock is reported as such.
    No,
    /// Wait on a dedicated, cancellable thread.
    Yes(&'a Waiter),
}

impl Wait<'_> {
    /// Take a lock: `Ok(true)` granted; `Ok(false)` busy (only with
    /// [`Wait::No`]); an error when the wait was cancelled.
    pub(crate) fn lock(&self, file: &File, mode: Mode, range: Range) -> Result<bool> {
        match self {
            Wait::No => try_lock(file, mode, range).map_err(|e| io_error("taking a file lock", e)),
            Wait::Yes(w) => w.lock(file, mode, range).map(|()| true),
        }
    }

    /// Take a lock that others hold only for an instant (a counter bump):
    /// waits even with [`Wait::No`], but stays cancellable with
    /// [`Wait::Yes`].
    pub(crate) fn lock_brief(&self, file: &File, mode: Mode, range: Range) -> Result<()> {
        match self {
            Wait::No => loop {
                let mut fl = flock(kind(mode), range);
                match fcntl_lock(file, libc::F_OFD_SETLKW, &mut fl) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_error("waiting for a file lock", e)),
                }
            },
            Wait::Yes(w) => w.lock(file, mode, range),
        }
    }

    /// Fail if the caller has gone away (checked before committing a grant).
    pub(crate) fn check(&self) -> Result<()> {
        match self {
            Wait::No => Ok(()),
            Wait::Yes(w) if w.is_cancelled() => Err(cancelled()),
            Wait::Yes(_) => Ok(()),
        }
    }
}

fn cancelled() -> Error {
    Error::backend("the wait was cancelled")
}

/// An I/O error as a quorate error, with context.
pub(crate) fn io_error(context: impl std::fmt::Display, e: io::Error) -> Error {
    Error::backend(format!("{context}: {e}")).with_source(e)
}

/// The waiting thread's side of a cancellable wait.
pub(crate) struct Waiter {
    shared: Arc<WaitShared>,
}

#[derive(Default)]
struct WaitShared {
    cancelled: AtomicBool,
    thread: StdMutex<ThreadState>,
}

#[derive(Default)]
struct ThreadState {
    /// The waiting thread, once it runs. Signalled only while `!done`, under
    /// this mutex, so the id is always that of a live thread.
    id: Option<libc::pthread_t>,
    done: bool,
}

impl Waiter {
    fn is_cancelled(&self) -> bool {
        self.shared.cancelled.load(Ordering::SeqCst)
    }

    /// Block until the lock is granted or the wait is cancelled.
    fn lock(&self, file: &File, mode: Mode, range: Range) -> Result<()> {
        loop {
            if self.is_cancelled() {
                return Err(cancelled());
            }
            let mut fl = flock(kind(mode), range);
            match fcntl_lock(file, libc::F_OFD_SETLKW, &mut fl) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("waiting for a file lock", e)),
            }
        }
    }
}

impl WaitShared {
    /// Signal the waiting thread once; `true` when it is already done.
    fn kick(&self) -> bool {
        let state = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if state.done {
            return true;
        }
        if let (Some(id), Some(sig)) = (state.id, wake_signal()) {
            // SAFETY: `id` is a live thread: it cannot pass the point where
            // it sets `done` (and then exit) while we hold the mutex.
            unsafe {
                libc::pthread_kill(id, sig);
            }
        }
        false
    }
}

/// Sets `done` when dropped (also while unwinding).
struct MarkDone<'a>(&'a WaitShared);

impl Drop for MarkDone<'_> {
    fn drop(&mut self) {
        self.0.thread.lock().unwrap_or_else(|e| e.into_inner()).done = true;
    }
}

/// Cancels the wait when the awaiting future is dropped before the result.
struct CancelOnDrop(Option<Arc<WaitShared>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(shared) = self.0.take() else {
            return;
        };
        shared.cancelled.store(true, Ordering::SeqCst);
        if shared.kick() || wake_signal().is_none() {
            return;
        }
        tracing::trace!("interrupting an abandoned file-lock wait");
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let mut delay = KICK_FIRST;
                    while !shared.kick() {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(KICK_MAX);
                    }
                });
            }
            Err(_) => {
                // Dropped outside a runtime: kick from a short-lived thread.
                let _ = std::thread::Builder::new()
                    .name("qfile-kick".into())
                    .spawn(move || {
                        let mut delay = KICK_FIRST;
                        while !shared.kick() {
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(KICK_MAX);
                        }
                    });
            }
        }
    }
}

/// First delay before repeating the wake-up signal, and its cap.
const KICK_FIRST: Duration = Duration::from_millis(1);
const KICK_MAX: Duration = Duration::from_millis(100);

/// Run `job` on a dedicated thread that may block in `F_OFD_SETLKW`, and
/// await its result. Dropping the returned future cancels the wait (see the
/// module documentation); whatever the job returns after that is dropped.
pub(crate) async fn wait_on_thread<T, F>(job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Waiter) -> Result<T> + Send + 'static,
{
    let shared = Arc::new(WaitShared::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_shared = shared.clone();
    // Claim the signal before the thread can need it.
    wake_signal();
    std::thread::Builder::new()
        .name("qfile-wait".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            unblock_wake_signal();
            // SAFETY: plain FFI call without arguments.
            thread_shared.thread.lock().unwrap().id = Some(unsafe { libc::pthread_self() });
            let waiter = Waiter {
                shared: thread_shared.clone(),
            };
            let result = {
                // Marks the thread done even if the job panics, so it is
                // never signalled after it exited.
                let _done = MarkDone(&thread_shared);
                job(&waiter)
            };
            // A closed channel gives the value back, and it is dropped here:
            // its files close and the kernel releases their locks.
            let _ = tx.send(result);
        })
        .map_err(|e| io_error("starting a file-lock wait thread", e))?;
    let mut cancel = CancelOnDrop(Some(shared));
    let result = rx
        .await
        .map_err(|_| Error::backend("a file-lock wait thread died"))?;
    cancel.0 = None;
    result
}

/// Run a short blocking file operation on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| Error::backend(format!("a blocking file operation failed: {e}")))?
}

/// Acquire with `job`: first without waiting on the blocking pool (the
/// common, uncontended case), then, if `wait` and the lock was busy, on a
/// cancellable waiting thread.
pub(crate) async fn acquire<T, F>(wait: bool, job: F) -> Result<Option<T>>
where
    T: Send + 'static,
    F: Fn(Wait<'_>) -> Result<Option<T>> + Send + Sync + 'static,
{
    let job = Arc::new(job);
    let first = job.clone();
    if let Some(granted) = blocking(move || first(Wait::No)).await? {
        return Ok(Some(granted));
    }
    if !wait {
        return Ok(None);
    }
    wait_on_thread(move |w| {
        job(Wait::Yes(w))?.ok_or_else(|| Error::backend("a waiting acquisition returned no grant"))
    })
    .await
    .map(Some)
}

static WAKE_SIGNAL: OnceLock<Option<libc::c_int>> = OnceLock::new();

extern "C" fn on_wake_signal(_: libc::c_int) {}

/// The real-time signal used to interrupt waiting threads: the highest one
/// whose disposition is still the default at first use, given a no-op
/// handler without `SA_RESTART`. `None` if every one is taken.
fn wake_signal() -> Option<libc::c_int> {
    *WAKE_SIGNAL.get_or_init(|| {
        for sig in (libc::SIGRTMIN()..=libc::SIGRTMAX()).rev() {
            // SAFETY: querying and installing a handler with valid structs;
            // the handler does nothing, so it is async-signal-safe.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction != libc::SIG_DFL
                {
                    continue;
                }
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_wake_signal as extern "C" fn(libc::c_int) as usize;
                new.sa_flags = 0;
                libc::sigemptyset(&mut new.sa_mask);
                if libc::sigaction(sig, &new, std::ptr::null_mut()) == 0 {
                    tracing::debug!(
                        signal = sig,
                        "claimed a real-time signal to interrupt file-lock waits"
                    );
                    return Some(sig);
                }
            }
        }
        tracing::warn!(
            "no free real-time signal: abandoned file-lock waits end only when the lock frees"
        );
        None
    })
}

fn unblock_wake_signal() {
    if let Some(sig) = wake_signal() {
        // SAFETY: a valid, initialised signal set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}
