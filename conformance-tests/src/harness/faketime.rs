//! A server whose wall clock can be stepped while it runs: Debian's
//! libfaketime preloaded, reading its offset from a file on every clock
//! call, with the monotonic clock left real (as on a host whose clock an
//! NTP step or an operator moves).

use std::io;
use std::path::Path;
use std::process::Command;

/// Debian's libfaketime.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// An error unless every library of `libs` (libfaketime and whatever must
/// be preloaded with it) is installed.
pub fn require(libs: &[&str]) -> io::Result<()> {
    match libs.iter().find(|lib| !Path::new(lib).exists()) {
        Some(lib) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{lib} is missing (scripts/install-deps installs faketime)"),
        )),
        None => Ok(()),
    }
}

/// Run `command` under libfaketime (`preload`: the `LD_PRELOAD` list that
/// contains it) with its wall-clock offset read from `file` on every clock
/// call, so that [`write_offset`] steps the running server's wall clock;
/// its monotonic clock stays real.
///
/// `FAKETIME_FORCE_MONOTONIC_FIX=0`: libfaketime 0.9.10 turns its
/// "monotonic fix" on by itself on this glibc, and with it every timed wait
/// on a monotonic condition variable returns at once. A JVM's internal
/// threads (`Common-Cleaner`, `VM Thread`, monitor deflation) wait that
/// way, so an idle ZooKeeper spun two cores (1,000 clock ticks in 5 s, 2
/// without libfaketime, 3 with the fix off); three of them starved an
/// ensemble into losing its sessions. The monotonic clock is not faked
/// here, so those waits need no fix.
pub fn apply(command: &mut Command, preload: &str, file: &Path) {
    command
        .env("LD_PRELOAD", preload)
        .env("FAKETIME_TIMESTAMP_FILE", file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_FORCE_MONOTONIC_FIX", "0");
}

/// Write a wall-clock offset of `secs` seconds (`+N` / `-N`) to `file`,
/// through a rename so that libfaketime never reads half a file.
pub fn write_offset(file: &Path, secs: i64) -> io::Result<()> {
    let tmp = file.with_extension("tmp");
    let offset = if secs < 0 {
        format!("{secs}")
    } else {
        format!("+{secs}")
    };
    std::fs::write(&tmp, offset)?;
    std::fs::rename(&tmp, file)
}
