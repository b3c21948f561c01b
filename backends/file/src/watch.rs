//! Change notification for a directory, through raw inotify (no polling).
//!
//! Group watches and election observers re-scan their directory when
//! inotify reports a change to a file they care about, and diff against
//! what they reported last. One subtlety: when a process dies, the kernel
//! reports the close of its files (`IN_CLOSE_WRITE`) a moment *before* it
//! drops the open file description's locks (`__fput` notifies, then removes
//! the locks). A re-scan that runs in that instant still sees the dead
//! holder's lock. So after every relevant event, [`Changes`] also asks for
//! three follow-up re-scans (10 ms, 100 ms and 1 s later): bounded, and only
//! after a change, never a busy poll.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use quorate_core::{Error, Result};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

use crate::ofd::io_error;

/// Delays of the follow-up re-scans after an event.
const FOLLOW_UPS: [Duration; 3] = [
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_secs(1),
];

/// Which events of the watched directory wake a re-scan.
const MASK: u32 = libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_CLOSE_WRITE
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

/// Changes to the relevant files of one directory.
pub(crate) struct Changes {
    fd: AsyncFd<OwnedFd>,
    relevant: Box<dyn Fn(&str) -> bool + Send + Sync>,
    follow_ups: VecDeque<Instant>,
    buf: Vec<u8>,
}

impl Changes {
    /// Start watching `dir` (which must exist). Events for file names for
    /// which `relevant` is false are ignored. Changes after this call are
    /// never missed, so scan the directory *after* it.
    pub(crate) fn new(
        dir: &Path,
        relevant: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Changes> {
        let context = || format!("watching `{}`", dir.display());
        let fd = inotify(libc::IN_NONBLOCK).map_err(|e| io_error(context(), e))?;
        add_watch(&fd, dir, MASK).map_err(|e| io_error(context(), e))?;
        // SAFETY: the `OwnedFd` moves into the `AsyncFd` and stays open,
        // the same descriptor, until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| io_error(context(), e.into_parts().1))?;
        Ok(Changes {
            fd,
            relevant: Box::new(relevant),
            follow_ups: VecDeque::new(),
            buf: vec![0; 16 * 1024],
        })
    }

    /// Resolves when the caller should look again: at the files named by
    /// relevant events (in the order of their first event), or at everything
    /// (a follow-up is due, or the kernel's event queue overflowed). Fails
    /// when the directory itself was removed or moved.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: events are read only when they can be consumed at once.
    pub(crate) async fn next(&mut self) -> Result<Change> {
        loop {
            let follow_up = self.follow_ups.front().copied();
            tokio::select! {
                r = self.fd.readable() => {
                    let mut guard = r.map_err(|e| io_error("waiting for inotify", e))?;
                    let buf = &mut self.buf;
                    let read = guard.try_io(|fd| {
                        // SAFETY: reading into an owned buffer of the given length.
                        let n = unsafe {
                            libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                        };
                        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
                    });
                    let n = match read {
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => return Err(io_error("reading inotify events", e)),
                        Err(_would_block) => continue,
                    };
                    let change = self.parse(n)?;
                    let relevant = match &change {
                        Change::Files(names) => !names.is_empty(),
                        Change::Everything => true,
                    };
                    if relevant {
                        let now = Instant::now();
                        self.follow_ups = FOLLOW_UPS.iter().map(|d| now + *d).collect();
                        return Ok(change);
                    }
                }
                _ = tokio::time::sleep_until(follow_up.unwrap_or_else(Instant::now)), if follow_up.is_some() => {
                    self.follow_ups.pop_front();
                    return Ok(Change::Everything);
                }
            }
        }
    }

    fn parse(&self, n: usize) -> Result<Change> {
        let mut names: Vec<String> = Vec::new();
        let mut everything = false;
        for event in events(&self.buf[..n]) {
            if event.mask & (libc::IN_DELETE_SELF | libc::IN_MOVE_SELF | libc::IN_IGNORED) != 0 {
                return Err(Error::backend("the watched directory was removed or moved"));
            }
            let name = String::from_utf8_lossy(event.name).into_owned();
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                everything = true;
            } else if (self.relevant)(&name) && !names.contains(&name) {
                names.push(name);
            }
        }
        Ok(if everything {
            Change::Everything
        } else {
            Change::Files(names)
        })
    }
}

/// What to look at again.
pub(crate) enum Change {
    /// These files, in the order their first event arrived.
    Files(Vec<String>),
    /// Every file (a follow-up, or events were lost).
    Everything,
}

/// A new inotify descriptor (close-on-exec, plus `flags`).
pub(crate) fn inotify(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain FFI call; the returned descriptor is owned below.
    let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Watch `dir` for `mask` on `fd`; its watch descriptor (the same one
/// when `dir` is already watched).
pub(crate) fn add_watch(fd: &OwnedFd, dir: &Path, mask: u32) -> io::Result<i32> {
    let cpath = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: valid descriptor and NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cpath.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// One inotify event.
pub(crate) struct Event<'a> {
    /// The watch descriptor it concerns.
    pub(crate) wd: i32,
    /// `IN_*` bits.
    pub(crate) mask: u32,
    /// The file name in the watched directory (empty for the directory).
    pub(crate) name: &'a [u8],
}

/// The events in a buffer read from an inotify descriptor.
pub(crate) fn events(buf: &[u8]) -> impl Iterator<Item = Event<'_>> {
    const HEADER: usize = 16; // wd, mask, cookie, len: four 32-bit fields
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + HEADER > buf.len() {
            return None;
        }
        let field = |i: usize| {
            let b = &buf[at + 4 * i..at + 4 * i + 4];
            [b[0], b[1], b[2], b[3]]
        };
        let (wd, mask) = (i32::from_ne_bytes(field(0)), u32::from_ne_bytes(field(1)));
        let len = u32::from_ne_bytes(field(3)) as usize;
        let name = &buf[at + HEADER..(at + HEADER + len).min(buf.len())];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        at += HEADER + len;
        Some(Event { wd, mask, name })
    })
}
