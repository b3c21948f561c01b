//! Telling a holder at once that its lock file was removed or replaced.
//!
//! Lock files are never removed or renamed by the backend (they hold the
//! fencing counters). If an operator removes one under a holder anyway (an
//! `rm`, an `rm -r` of the root, a `mv` over it), another process can
//! create and lock a new file of that name at once: the holder's grant is
//! void, and the sooner it is told the shorter the time two processes
//! believe they hold the lock.
//!
//! One thread per process (`qfile-removals`) reads one inotify descriptor that watches the
//! `lock/` and `election/` directories of every root a session was opened
//! on, and the directory of every group a session joined, for `.lock` and
//! `.member` names removed or renamed (away or over) and for the directory
//! itself removed or moved. On such an event it runs the cheap check of
//! every session registered on that directory
//! ([`SessionShared::check_held`]: an `fstat` and a `stat` per held item),
//! which fires the loss of each grant whose file is no longer the one at
//! its path. Lock files are never removed in normal operation, so for
//! locks and elections the thread never wakes and grants cost nothing
//! more. Member files are: every leave, update (a rename over the file) or
//! sweep of a dead member wakes the thread of each process with a member in
//! that group, for one check of those sessions.
//!
//! A thread, not a task: a backend may be used from several tokio
//! runtimes (and outlive the one that opened it), and one thread serves
//! them all. One inotify instance per process, whatever the number of
//! coordinators, leaves the per-user instance limit (often 128) to group
//! watches and election observers.
//!
//! A grant is registered with its session only after it is made, so a
//! check can miss a grant made while it ran. Every check is counted
//! ([`generation`]), before it reads what the sessions hold; a lock or a
//! leadership reads the count before it is granted
//! ([`SessionShared::reserve`]) and, once registered, checks its own file
//! if the count moved meanwhile ([`SessionShared::activate`]): two atomic
//! loads per grant, and a check only when a removal happened.
//!
//! The session keep-alive (every TTL/3) runs the same check and stays the
//! fallback where inotify cannot be used (no instance or watch left).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::layout::Space;
use crate::session::SessionShared;
use crate::watch::{add_watch, events, inotify};

/// How many times the thread started checking sessions after a removal.
static CHECKS: AtomicU64 = AtomicU64::new(0);

/// The number of checks started so far: a grant made while this number
/// did not move was seen by every check that could concern it.
pub(crate) fn generation() -> u64 {
    CHECKS.load(Ordering::SeqCst)
}

/// Count a check, before it reads what the sessions hold.
fn count_check() {
    CHECKS.fetch_add(1, Ordering::SeqCst);
}

/// The events watched on each directory.
const MASK: u32 = libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// Events about the watched directory itself.
const SELF: u32 = libc::IN_DELETE_SELF | libc::IN_MOVE_SELF;

/// Whose sessions a batch of events says to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The sessions registered on this watched directory.
    Dir(i32),
    /// Every session: the kernel's event queue overflowed.
    All,
}

/// The process's watcher: its inotify descriptor and, per watched
/// directory, the sessions to check.
struct Watcher {
    fd: OwnedFd,
    sessions: Mutex<HashMap<i32, Vec<Weak<SessionShared>>>>,
}

/// The watcher, started by the first session; `None` when inotify or the
/// thread is not available (the keep-alive alone then notices removals).
fn watcher() -> Option<&'static Watcher> {
    static WATCHER: OnceLock<Option<Watcher>> = OnceLock::new();
    WATCHER
        .get_or_init(|| match start() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot watch lock directories (inotify): removed lock files are noticed by the keep-alive only"
                );
                None
            }
        })
        .as_ref()
}

fn start() -> io::Result<Watcher> {
    // Blocking reads: the thread has nothing else to do.
    let fd = inotify(0)?;
    let reader = fd.try_clone()?;
    std::thread::Builder::new()
        .name("qfile-removals".into())
        .spawn(move || run(reader))?;
    Ok(Watcher {
        fd,
        sessions: Mutex::new(HashMap::new()),
    })
}

/// Watch the lock directories of `session`'s root for removals, and check
/// the session when one happens. Failures are logged; the keep-alive is
/// the fallback.
pub(crate) fn watch(session: &Arc<SessionShared>) {
    for space in Space::ALL {
        watch_dir(session, &session.layout.root().join(space.as_str()));
    }
}

/// Watch `dir` (a group's directory, once it exists) for removals too, and
/// check `session` when one happens there. Failures are logged; the
/// keep-alive is the fallback.
pub(crate) fn watch_dir(session: &Arc<SessionShared>, dir: &Path) {
    let Some(w) = watcher() else {
        return;
    };
    let wd = match add_watch(&w.fd, dir, MASK) {
        Ok(wd) => wd,
        Err(error) => {
            tracing::debug!(
                dir = %dir.display(),
                %error,
                "cannot watch a directory: removals there are noticed by the keep-alive"
            );
            return;
        }
    };
    let mut sessions = w.sessions.lock().unwrap();
    let list = sessions.entry(wd).or_default();
    list.retain(|s| s.strong_count() > 0);
    if !list.iter().any(|s| s.as_ptr() == Arc::as_ptr(session)) {
        list.push(Arc::downgrade(session));
    }
}

/// The thread: read events, check the sessions of every directory where a
/// lock file went away.
fn run(fd: OwnedFd) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: reading into an owned buffer of the given length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %e, "reading inotify events stopped: removed lock files are noticed by the keep-alive only");
            return;
        }
        let Some(w) = watcher() else {
            return;
        };
        let (to_check, ended) = parse(&buf[..n as usize]);
        if !to_check.is_empty() {
            count_check();
        }
        let sessions: Vec<Arc<SessionShared>> = {
            let mut by_wd = w.sessions.lock().unwrap();
            let mut out = Vec::new();
            for check in &to_check {
                match check {
                    Check::Dir(wd) => out.extend(
                        by_wd
                            .get(wd)
                            .into_iter()
                            .flatten()
                            .filter_map(Weak::upgrade),
                    ),
                    Check::All => out.extend(by_wd.values().flatten().filter_map(Weak::upgrade)),
                }
            }
            for wd in ended {
                by_wd.remove(&wd);
            }
            out
        };
        let mut checked = HashSet::new();
        for s in sessions {
            if !checked.insert(Arc::as_ptr(&s)) {
                continue;
            }
            let lost = s.check_held();
            if lost > 0 {
                tracing::debug!(session = %s.id, lost, "told holders their files went away");
            }
        }
    }
}

/// From a buffer of events: whose sessions to check, and the watch
/// descriptors that ended (their directory is gone).
fn parse(buf: &[u8]) -> (Vec<Check>, Vec<i32>) {
    let (mut check, mut ended) = (Vec::new(), Vec::new());
    for e in events(buf) {
        let which = if e.mask & libc::IN_Q_OVERFLOW != 0 {
            Some(Check::All)
        } else if e.mask & SELF != 0 || e.name.ends_with(b".lock") || e.name.ends_with(b".member") {
            Some(Check::Dir(e.wd))
        } else {
            None
        };
        if let Some(which) = which.filter(|w| !check.contains(w)) {
            check.push(which);
        }
        if e.mask & libc::IN_IGNORED != 0 {
            ended.push(e.wd);
        }
    }
    (check, ended)
}

/// Count a check as the thread does (tests of what a grant does when one
/// ran while it was made).
#[cfg(test)]
pub(crate) fn count_check_for_test() {
    count_check();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(wd: i32, mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        if !padded.is_empty() {
            padded.resize(name.len().div_ceil(16) * 16 + 16, 0);
        }
        let mut out = Vec::new();
        out.extend(wd.to_ne_bytes());
        out.extend(mask.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend((padded.len() as u32).to_ne_bytes());
        out.extend(padded);
        out
    }

    #[test]
    fn only_lock_and_member_files_and_the_directory_itself_count() {
        let mut buf = event(1, libc::IN_DELETE, "a.turn");
        buf.extend(event(2, libc::IN_MOVED_TO, ".0123.tmp"));
        assert_eq!(parse(&buf), (vec![], vec![]));
        buf.extend(event(2, libc::IN_DELETE, "m.lock"));
        buf.extend(event(2, libc::IN_MOVED_FROM, "n.lock"));
        buf.extend(event(3, libc::IN_DELETE_SELF, ""));
        buf.extend(event(3, libc::IN_IGNORED, ""));
        buf.extend(event(4, libc::IN_MOVED_TO, "w.member"));
        assert_eq!(
            parse(&buf),
            (vec![Check::Dir(2), Check::Dir(3), Check::Dir(4)], vec![3])
        );
        let lost = event(-1, libc::IN_Q_OVERFLOW, "");
        assert_eq!(parse(&lost), (vec![Check::All], vec![]));
    }
}
