//! What the process tests of `quorate lock` and `quorate locks` share: the
//! binary under test with no `QUORATE_URL` and no terminal, and names no
//! other run uses.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Liveness bound for anything a test waits on.
pub const LIVENESS: Duration = Duration::from_secs(30);

/// The `quorate` binary, without `QUORATE_URL` from the environment and
/// with stdin closed.
pub fn quorate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quorate"));
    c.env_remove("QUORATE_URL").stdin(Stdio::null());
    c
}

/// Run `quorate args…` to completion.
pub fn run(args: &[&str]) -> Output {
    quorate().args(args).output().expect("run quorate")
}

/// A finished run's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A name no other test run uses (process id and clock).
pub fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("cli-{label}-{}-{nanos}", std::process::id())
}
