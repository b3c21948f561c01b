//! Running a command while holding something (a lock, leadership, a
//! membership): the command's own process group, signal forwarding, loss
//! handling with SIGTERM then SIGKILL to the whole group, and the command's
//! death with quorate (even by SIGKILL).
//!
//! How "the command never outlives what quorate holds" is kept:
//!
//! - the command runs in its own process group (`setpgid(0, 0)`), so the
//!   whole tree it starts can be signalled at once, `kill(-pgid, …)`;
//! - quorate is a child subreaper (`PR_SET_CHILD_SUBREAPER`): descendants
//!   orphaned inside the tree are re-parented to quorate, which reaps them, so
//!   "the group is empty" (`kill(-pgid, 0)` = `ESRCH`) is observable even where
//!   PID 1 does not reap;
//! - on loss the group gets SIGTERM, and SIGKILL after `--kill-after`; when
//!   the command exits normally, whatever it left running in its group gets
//!   the same treatment *before* the lock is released;
//! - the direct child has `PR_SET_PDEATHSIG = SIGKILL`. The parent-death
//!   signal is tied to the *thread* that forked: the command is spawned from
//!   the main thread (the future given to `Runtime::block_on` runs there, and
//!   lives as long as the process); [`spawn_command`] refuses to run on any
//!   other thread;
//! - a small watchdog process (`quorate reap-group`, this binary) holds the
//!   read end of a pipe whose write end only quorate has (`O_CLOEXEC`). If
//!   quorate dies without disarming it (SIGKILL), the watchdog reads end of
//!   file and SIGKILLs the command's whole group.
//!
//! When stdin is the terminal and quorate is in its foreground, the terminal
//! is handed to the command's group while it runs (as a shell does) and
//! taken back afterwards: an interactive command can read it, and Ctrl-C
//! reaches the command directly. Stopping the command with Ctrl-Z is not
//! supported (quorate does not do job control).
//!
//! A process that leaves the group (`setsid`, `setpgid`) escapes all of this;
//! only a cgroup could follow it.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::time::Duration;

use quorate::LossReason;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::{Exit, EXIT_LOST, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};

/// How long, after SIGKILL, quorate waits for the killed group to be
/// reaped before it gives up waiting (the lock is released either way).
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

/// How long a disarmed watchdog is given to exit before quorate stops
/// waiting to reap it.
const WATCHDOG_EXIT: Duration = Duration::from_secs(1);

/// Fallback period of the reaping loop, in case a SIGCHLD is coalesced.
const REAP_POLL: Duration = Duration::from_millis(50);

/// SIGINT, SIGTERM and SIGHUP, caught from the start so that every way of
/// stopping quorate goes through its clean-up.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// Install the handlers.
    ///
    /// # Errors
    ///
    /// Exit 1 when the handlers cannot be installed.
    pub fn install() -> Result<Signals, Exit> {
        let make = |k: SignalKind| {
            signal(k).map_err(|e| Exit {
                code: 1,
                message: format!("cannot install signal handlers: {e}"),
            })
        };
        Ok(Signals {
            int: make(SignalKind::interrupt())?,
            term: make(SignalKind::terminate())?,
            hup: make(SignalKind::hangup())?,
        })
    }

    /// The next of the three signals to arrive (its number).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a signal that arrived is kept for the next call.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// Resolves on SIGINT, SIGTERM or SIGHUP (for the watching commands, which
/// hold nothing).
pub async fn interrupted() {
    match Signals::install() {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// What to print on stdout once granted, when there is no command.
pub enum Announce {
    /// Nothing (`-q`).
    Nothing,
    /// This line (`holding …`, or the grant as JSON with `--json`).
    Line(String),
}

/// How a hold runs.
pub struct Options {
    /// Grace between SIGTERM and SIGKILL to the command's group.
    pub kill_after: Duration,
    /// The grant line (no command only).
    pub announce: Announce,
}

/// Run `command` (or, if empty, wait for SIGINT/SIGTERM/SIGHUP) while `lost`
/// has not resolved. Returns the exit status to use: the command's (128+N
/// when it died of signal N), or 0 when holding without a command ended by
/// a signal.
///
/// # Errors
///
/// Exit [`EXIT_LOST`] when `lost` resolves first (the command's group got
/// SIGTERM, then SIGKILL after `kill_after`, and is gone); 127 when the
/// command is not found, 126 when it cannot be executed.
pub async fn run_while_held(
    command: &[String],
    env: &[(&str, String)],
    lost: impl std::future::Future<Output = LossReason>,
    signals: &mut Signals,
    what: &str,
    options: &Options,
) -> Result<u8, Exit> {
    tokio::pin!(lost);
    let Some((program, args)) = command.split_first() else {
        if let Announce::Line(line) = &options.announce {
            // Not println!: a closed stdout must not panic past the clean-up.
            let mut out = std::io::stdout().lock();
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                tracing::warn!(error = %e, "cannot print the grant line");
            }
        }
        return tokio::select! {
            sig = signals.recv() => {
                tracing::info!(signal = sig, "signal while holding without a command: releasing");
                Ok(0)
            }
            reason = &mut lost => Err(lost_exit(what, &reason)),
        };
    };

    let watchdog = Watchdog::start();
    let terminal = Terminal::foreground();
    let child = match spawn_command(program, args, env, terminal.is_some()) {
        Ok(c) => c,
        Err(e) => {
            // The failed child may have taken the terminal before exec failed.
            if let Some(t) = terminal {
                t.take_back();
            }
            if let Some(w) = watchdog {
                w.disarm().await;
            }
            return Err(e);
        }
    };
    let pgid = child.id() as i32;
    if let Some(w) = &watchdog {
        w.arm(pgid);
    }
    if let Some(t) = &terminal {
        t.give_to(pgid);
    }
    let result = supervise(pgid, &mut lost, signals, what, options).await;
    if let Some(t) = terminal {
        t.take_back();
    }
    if let Some(w) = watchdog {
        w.disarm().await;
    }
    result
}

/// The controlling terminal on stdin, when quorate is in its foreground
/// process group: it is handed to the command's group for the command's
/// lifetime (as a shell does), so an interactive command can read it and
/// gets Ctrl-C itself, then taken back.
struct Terminal {
    own_pgrp: i32,
}

impl Terminal {
    fn foreground() -> Option<Terminal> {
        // SAFETY: isatty/tcgetpgrp/getpgrp only query.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let own = libc::getpgrp();
            (libc::tcgetpgrp(0) == own).then_some(Terminal { own_pgrp: own })
        }
    }

    fn give_to(&self, pgid: i32) {
        set_foreground(pgid);
    }

    fn take_back(self) {
        set_foreground(self.own_pgrp);
    }
}

/// `tcsetpgrp(0, pgrp)` from a process that may be in the background:
/// SIGTTOU is ignored around the call.
fn set_foreground(pgrp: i32) {
    // SAFETY: signal/tcsetpgrp on our own terminal; the previous SIGTTOU
    // disposition is restored.
    unsafe {
        let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        libc::tcsetpgrp(0, pgrp);
        libc::signal(libc::SIGTTOU, old);
    }
}

/// Spawn the command in its own process group with a parent-death signal.
fn spawn_command(
    program: &str,
    args: &[String],
    env: &[(&str, String)],
    take_terminal: bool,
) -> Result<std::process::Child, Exit> {
    // SAFETY: plain syscalls without arguments.
    let on_main_thread = unsafe { libc::gettid() == libc::getpid() };
    if !on_main_thread {
        // PR_SET_PDEATHSIG fires when the forking *thread* ends.
        return Err(Exit {
            code: 1,
            message: "internal error: commands must be spawned from the main thread".into(),
        });
    }
    // SAFETY: prctl with constant arguments on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill, setpgid,
    // signal, tcsetpgrp) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // quorate died between fork and prctl: follow it now.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            if take_terminal {
                // Also done by the parent; whichever runs first wins the
                // race against the command's first read of the terminal.
                libc::setpgid(0, 0);
                let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpid());
                libc::signal(libc::SIGTTOU, old);
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| {
        let code = match e.kind() {
            std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
            _ => EXIT_NOT_EXECUTABLE,
        };
        Exit {
            code,
            message: format!("cannot run `{program}`: {e}"),
        }
    })
}

/// What ended the supervision.
enum End {
    /// The command exited with this status.
    Exited(u8),
    /// The grant was lost.
    Lost(LossReason),
}

/// Wait for the command (pid = pgid) while forwarding signals to its group
/// and watching for loss; then make sure nothing of the group is left.
async fn supervise(
    pgid: i32,
    lost: &mut std::pin::Pin<&mut impl std::future::Future<Output = LossReason>>,
    signals: &mut Signals,
    what: &str,
    options: &Options,
) -> Result<u8, Exit> {
    let mut sigchld = signal(SignalKind::child()).ok();
    let mut status: Option<u8> = None;
    let end = loop {
        reap(pgid, &mut status);
        if let Some(code) = status {
            break End::Exited(code);
        }
        tokio::select! {
            _ = async { match &mut sigchld { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            _ = tokio::time::sleep(REAP_POLL) => {}
            sig = signals.recv() => {
                tracing::info!(signal = sig, pgid, "forwarding signal to the command's process group");
                kill_group(pgid, sig);
            }
            reason = lost.as_mut() => break End::Lost(reason),
        }
    };
    match end {
        End::Exited(code) => {
            if group_alive(pgid) {
                tracing::info!(
                    pgid,
                    "the command exited but left processes in its group: terminating them before releasing"
                );
                terminate_group(pgid, &mut status, options.kill_after, &mut sigchld).await;
            }
            Ok(code)
        }
        End::Lost(reason) => {
            eprintln!(
                "quorate: lost {what}: sending SIGTERM to the command's process group (SIGKILL after {})",
                humantime::format_duration(options.kill_after)
            );
            terminate_group(pgid, &mut status, options.kill_after, &mut sigchld).await;
            Err(lost_exit(what, &reason))
        }
    }
}

/// SIGTERM the group, SIGKILL it after `grace`, and wait (bounded) until
/// it is gone.
async fn terminate_group(
    pgid: i32,
    status: &mut Option<u8>,
    grace: Duration,
    sigchld: &mut Option<Signal>,
) {
    kill_group(pgid, libc::SIGTERM);
    // A stopped process cannot act on SIGTERM until it is continued.
    kill_group(pgid, libc::SIGCONT);
    if wait_group_gone(pgid, status, Instant::now() + grace, sigchld).await {
        return;
    }
    tracing::warn!(
        pgid,
        ?grace,
        "the command's group outlived SIGTERM: SIGKILL"
    );
    eprintln!(
        "quorate: the command's process group did not exit within {} of SIGTERM: SIGKILL",
        humantime::format_duration(grace)
    );
    kill_group(pgid, libc::SIGKILL);
    if !wait_group_gone(pgid, status, Instant::now() + REAP_AFTER_KILL, sigchld).await {
        tracing::warn!(pgid, "the command's group is still there after SIGKILL");
    }
}

/// Reap and wait until no process of the group is left, or `until`.
/// Returns whether the group is gone.
async fn wait_group_gone(
    pgid: i32,
    status: &mut Option<u8>,
    until: Instant,
    sigchld: &mut Option<Signal>,
) -> bool {
    loop {
        reap(pgid, status);
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::select! {
            _ = async { match sigchld { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
            _ = tokio::time::sleep(REAP_POLL.min(until.saturating_duration_since(Instant::now()))) => {}
        }
    }
}

/// Reap every exited process of the group that is our child (the command,
/// and orphans re-parented to us as subreaper); record the command's status.
fn reap(pgid: i32, status: &mut Option<u8>) {
    loop {
        let mut raw: libc::c_int = 0;
        // SAFETY: waitpid on our own children of this process group.
        let mut pid = unsafe { libc::waitpid(-pgid, &mut raw, libc::WNOHANG) };
        if pid <= 0 && status.is_none() {
            // The command itself, should it have moved to another group.
            // SAFETY: waitpid on our own child.
            pid = unsafe { libc::waitpid(pgid, &mut raw, libc::WNOHANG) };
        }
        if pid <= 0 {
            return;
        }
        if pid == pgid && status.is_none() {
            let st = std::process::ExitStatus::from_raw(raw);
            *status = Some(match (st.code(), st.signal()) {
                (Some(c), _) => c.clamp(0, 255) as u8,
                (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
                _ => 1,
            });
        }
    }
}

fn kill_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) on the command's process group.
    unsafe { libc::kill(-pgid, sig) };
}

/// Whether any process (zombies included) is left in the group.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn lost_exit(what: &str, reason: &LossReason) -> Exit {
    Exit {
        code: EXIT_LOST,
        message: format!("lost {what}: {reason}"),
    }
}

/// The watchdog process that SIGKILLs the command's group if quorate dies
/// without disarming it.
struct Watchdog {
    pipe: std::fs::File,
    process: std::process::Child,
}

impl Watchdog {
    /// Start `quorate reap-group` with the read end of a close-on-exec pipe
    /// as its stdin. `None` (with a warning) when it cannot be started: the
    /// command then still has its parent-death signal, but not its
    /// descendants.
    fn start() -> Option<Watchdog> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fds we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "no watchdog: pipe2 failed");
            return None;
        }
        // SAFETY: fresh fds from pipe2, owned once each.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "no watchdog: cannot find this executable");
                return None;
            }
        };
        match std::process::Command::new(exe)
            .arg("reap-group")
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(process) => Some(Watchdog {
                pipe: std::fs::File::from(write),
                process,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "no watchdog: cannot start it");
                None
            }
        }
    }

    /// Tell the watchdog which group to kill should quorate die.
    fn arm(&self, pgid: i32) {
        let _ = (&self.pipe).write_all(format!("{pgid}\n").as_bytes());
    }

    /// Tell the watchdog to exit without killing anything, and reap it
    /// (waiting at most [`WATCHDOG_EXIT`]; it exits at once on `done` or end
    /// of file).
    async fn disarm(self) {
        let Watchdog { pipe, mut process } = self;
        let _ = (&pipe).write_all(b"done\n");
        drop(pipe);
        let until = Instant::now() + WATCHDOG_EXIT;
        while Instant::now() < until {
            match process.try_wait() {
                Ok(None) => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => return,
            }
        }
        tracing::warn!(
            pid = process.id(),
            "the watchdog did not exit when disarmed"
        );
    }
}

/// The watchdog's side (`quorate reap-group`, internal): read the group id
/// from stdin; at end of file without `done`, SIGKILL that group.
pub fn reap_group_main() -> u8 {
    // SAFETY: ignoring signals so that a Ctrl-C to the terminal's group,
    // which reaches quorate too, does not take the watchdog down first.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    let mut input = String::new();
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => input.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        if input.lines().any(|l| l == "done") {
            return 0;
        }
    }
    let pgid = input
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok());
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        kill_group(pgid, libc::SIGKILL);
    }
    0
}
