//! A client in a child process, driven over stdin/stdout, so that fault
//! cases can SIGSTOP/SIGKILL a real process that holds a lock.
//!
//! Protocol: the agent is started with a URL, prints
//! `{"event":"ready","session":ID}`, then reads one command per line:
//! `lock NAME`, `lead NAME` (campaign in election NAME; a leadership is
//! reported and released like a lock: `granted`, `lost`, and `release`
//! resigns), `release`, `write` (report the fence it would write with),
//! `guarded KEY VALUE` (the backend's guarded write, asked even if the
//! agent already knows its lock is lost: the backend must refuse it),
//! `fenced ADDR NAME VALUE` (write to the [fenced register] at ADDR with
//! the fence of the grant it believes it holds), `exit`. It answers each
//! with one JSON line (`granted`, `releasing` then `released`, `write`, `guarded`, `fenced`,
//! `error`) and prints `{"event":"lost",…}` on its own when its lock is
//! lost.
//!
//! [fenced register]: crate::harness::fenced

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// One line the agent prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    /// Connected and holding a session.
    Ready {
        /// The session id.
        session: String,
    },
    /// The lock was granted.
    Granted {
        /// Its fencing token.
        fence: u64,
        /// When the grant returned, on the host's monotonic clock
        /// ([`mono_ns`], comparable across processes).
        #[serde(default)]
        at_ns: u64,
    },
    /// The agent is about to release (or resign): it stopped believing
    /// it holds the lock at `at_ns`. Written *before* the release starts,
    /// so a holder stopped or killed during its release has said so.
    Releasing {
        /// When it stopped believing, on the host's monotonic clock.
        at_ns: u64,
    },
    /// The lock was released.
    Released {
        /// When the release began (the holder stopped believing), on the
        /// host's monotonic clock.
        #[serde(default)]
        at_ns: u64,
    },
    /// The fence the agent would write with now, and whether it knows its
    /// lock is lost.
    Write {
        /// The fence of the agent's grant.
        fence: u64,
        /// Whether the agent's guard reports the lock lost.
        lost: bool,
    },
    /// The answer to `guarded`: whether the backend applied the write,
    /// and whether the agent already knew its lock was lost when it asked.
    Guarded {
        /// Whether the backend applied it.
        applied: bool,
        /// Whether the agent's guard reported the loss before the write.
        lost_before: bool,
    },
    /// The answer to `fenced`: whether the register accepted the write.
    Fenced {
        /// The fence sent.
        fence: u64,
        /// Whether the register accepted it.
        accepted: bool,
        /// Whether the agent's guard reported the loss before the write.
        lost_before: bool,
        /// When the write was sent, on the host's monotonic clock.
        #[serde(default)]
        at_ns: u64,
    },
    /// A release failed (the lock may still be held on the backend until
    /// the clean-up or the lease ends it); the holder stopped believing it
    /// held the lock when the release began.
    ReleaseFailed {
        /// When the release began, on the host's monotonic clock.
        at_ns: u64,
        /// The error.
        message: String,
    },
    /// The agent's lock was lost.
    Lost {
        /// Why.
        reason: String,
        /// When `lost()` resolved, on the host's monotonic clock.
        #[serde(default)]
        at_ns: u64,
    },
    /// A command failed.
    Error {
        /// The error message.
        message: String,
    },
}

/// Now on the host's monotonic clock (`CLOCK_MONOTONIC`, the clock of
/// `std::time::Instant`), in nanoseconds: one clock for every process of
/// the host, so agents' event times and the driver's compare directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where the agent binary is: `$QUORATE_AGENT` (run with
/// `$QUORATE_AGENT_SUBCOMMAND` before the URL when set, e.g. `quorate agent`), or `quorate-agent` next to
/// the running executable (or one directory up, for test binaries in
/// `target/*/deps`).
pub fn agent_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUORATE_AGENT") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("quorate-agent"),
        dir.parent()?.join("quorate-agent"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// A running agent process. Killed (SIGKILL, by pid) when dropped.
pub struct Agent {
    session: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Agent {
    /// Start an agent connected to `url`; waits for its `ready` line.
    ///
    /// # Errors
    ///
    /// When the binary is missing, cannot start, or does not get ready.
    pub async fn start(url: &str) -> Result<(Agent, String), String> {
        let path =
            agent_path().ok_or("the quorate-agent binary was not found (set QUORATE_AGENT)")?;
        let mut command = Command::new(&path);
        if let Some(sub) = std::env::var_os("QUORATE_AGENT_SUBCOMMAND") {
            command.arg(sub);
        }
        let mut child = command
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", path.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut agent = Agent {
            session: String::new(),
            child,
            stdin,
            stdout,
        };
        match agent.next_event(Duration::from_secs(20)).await? {
            AgentEvent::Ready { session } => {
                agent.session.clone_from(&session);
                Ok((agent, session))
            }
            other => Err(format!("the agent did not get ready: {other:?}")),
        }
    }

    /// The agent's session id (to revoke it from outside).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The agent's pid.
    pub fn pid(&self) -> i32 {
        self.child.id().map_or(0, |p| p as i32)
    }

    /// Send one command line.
    ///
    /// # Errors
    ///
    /// When the agent's stdin is closed.
    pub async fn send(&mut self, command: &str) -> Result<(), String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("sending `{command}` to the agent: {e}"))?;
        self.stdin.flush().await.map_err(|e| e.to_string())
    }

    /// The next event, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// On timeout, end of output or an unparsable line.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<AgentEvent, String> {
        let line = tokio::time::timeout(timeout, self.stdout.next_line())
            .await
            .map_err(|_| format!("no event from the agent within {timeout:?}"))?
            .map_err(|e| e.to_string())?
            .ok_or("the agent exited")?;
        serde_json::from_str(&line).map_err(|e| format!("bad agent line `{line}`: {e}"))
    }

    /// Send a signal to the agent process.
    pub fn signal(&self, signal: i32) -> Result<(), String> {
        let pid = self.pid();
        if pid <= 0 {
            return Err("the agent has exited".into());
        }
        // SAFETY: kill(2) on the pid of our own child process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "kill({pid}, {signal}): {}",
                std::io::Error::last_os_error()
            ))
        }
    }

    /// Whether the agent process is stopped (state `T` in
    /// `/proc/PID/stat`): proof that a SIGSTOP took effect.
    pub fn is_stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        // The state follows the parenthesised command name.
        stat.ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
            .unwrap_or(false)
    }

    /// SIGSTOP the agent and wait (up to a second) until the kernel shows
    /// it stopped.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent or the process does not stop.
    pub async fn pause(&self) -> Result<(), String> {
        self.signal(libc::SIGSTOP)?;
        for _ in 0..100 {
            if self.is_stopped() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("agent {} did not stop after SIGSTOP", self.pid()))
    }

    /// Ask the agent to exit (it closes its session first) and wait for it,
    /// up to `timeout`; killed if it does not exit in time.
    ///
    /// # Errors
    ///
    /// When it did not exit by itself in time.
    pub async fn exit(mut self, timeout: Duration) -> Result<(), String> {
        let _ = self.send("exit").await;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("waiting for the agent: {e}")),
            Err(_) => Err(format!("the agent did not exit within {timeout:?}")),
        }
    }

    /// SIGKILL the agent and reap it.
    pub async fn kill(mut self) -> Result<(), String> {
        self.child.kill().await.map_err(|e| e.to_string())
    }

    /// SIGKILL the agent, reap it, and return the events it had written
    /// but the caller had not read yet (a `lost` it reported before the
    /// kill must not be mistaken for a belief that lasted until the kill).
    ///
    /// # Errors
    ///
    /// When the kill fails.
    pub async fn kill_collect(mut self) -> Result<Vec<AgentEvent>, String> {
        self.child.kill().await.map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        // The process is dead: what is left in the pipe, then end of file.
        while let Ok(ev) = self.next_event(Duration::from_secs(2)).await {
            events.push(ev);
        }
        Ok(events)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Resume first in case it is stopped, so the kill is delivered.
        let _ = self.signal(libc::SIGCONT);
        let _ = self.child.start_kill();
    }
}

/// What an agent holds: a lock or a leadership.
#[derive(Clone)]
enum Held {
    Lock(Arc<quorate::LockGuard>),
    Lead(Arc<quorate::Leadership>),
}

impl Held {
    fn fence(&self) -> u64 {
        match self {
            Held::Lock(g) => g.fence().get(),
            Held::Lead(l) => l.fence().get(),
        }
    }

    fn is_lost(&self) -> bool {
        match self {
            Held::Lock(g) => g.is_lost(),
            Held::Lead(l) => l.is_lost(),
        }
    }

    async fn lost(&self) -> quorate::LossReason {
        match self {
            Held::Lock(g) => g.lost().await,
            Held::Lead(l) => l.lost().await,
        }
    }

    /// Release the lock or resign the leadership (the watcher holding the
    /// other share must be gone).
    async fn give_back(self) -> Result<(), String> {
        match self {
            Held::Lock(g) => match Arc::try_unwrap(g) {
                Ok(g) => g.release().await.map_err(|e| e.to_string()),
                Err(_) => Err("guard still shared".into()),
            },
            Held::Lead(l) => match Arc::try_unwrap(l) {
                Ok(l) => l.resign().await.map_err(|e| e.to_string()),
                Err(_) => Err("leadership still shared".into()),
            },
        }
    }
}

fn emit(event: &AgentEvent) {
    let mut out = std::io::stdout().lock();
    // Write errors mean the driver is gone; nothing to do about it.
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(event).expect("serialisable")
    );
    let _ = out.flush();
}

/// Serve the agent protocol on stdin/stdout for a client of `url` until
/// stdin closes or `exit` arrives. Exits the process if it cannot connect.
pub async fn serve(url: &str) {
    let coord = match crate::connect(url).await {
        Ok(c) => c,
        Err(e) => {
            emit(&AgentEvent::Error {
                message: e.to_string(),
            });
            std::process::exit(1);
        }
    };
    let mut session = match coord.session().await {
        Ok(s) => s,
        Err(e) => {
            emit(&AgentEvent::Error {
                message: e.to_string(),
            });
            std::process::exit(1);
        }
    };
    emit(&AgentEvent::Ready {
        session: session.id().to_owned(),
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut guard: Option<Held> = None;
    let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let (cmd, arg) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match cmd {
            "lock" | "lead" => {
                // A lost session is replaced (as a long-running client
                // would), so an agent outlives faults that end sessions.
                if session.is_lost() {
                    if let Some(w) = watcher.take() {
                        w.abort();
                        let _ = w.await;
                    }
                    drop(guard.take());
                    match coord.session().await {
                        Ok(s) => session = s,
                        Err(e) => {
                            emit(&AgentEvent::Error {
                                message: e.to_string(),
                            });
                            continue;
                        }
                    }
                }
                let granted = if cmd == "lock" {
                    session
                        .mutex(arg)
                        .lock()
                        .await
                        .map(|g| Held::Lock(Arc::new(g)))
                } else {
                    let value = format!("agent-{}", std::process::id());
                    session
                        .election(arg)
                        .campaign(value)
                        .await
                        .map(|l| Held::Lead(Arc::new(l)))
                };
                match granted {
                    Ok(g) => {
                        emit(&AgentEvent::Granted {
                            fence: g.fence(),
                            at_ns: mono_ns(),
                        });
                        let w = g.clone();
                        watcher = Some(tokio::spawn(async move {
                            let reason = w.lost().await;
                            emit(&AgentEvent::Lost {
                                reason: reason.to_string(),
                                at_ns: mono_ns(),
                            });
                        }));
                        guard = Some(g);
                    }
                    Err(e) => emit(&AgentEvent::Error {
                        message: e.to_string(),
                    }),
                }
            }
            "write" => match &guard {
                Some(g) => emit(&AgentEvent::Write {
                    fence: g.fence(),
                    lost: g.is_lost(),
                }),
                None => emit(&AgentEvent::Error {
                    message: "no lock held".into(),
                }),
            },
            "guarded" => {
                let (key, value) = arg.split_once(' ').unwrap_or((arg, ""));
                match &guard {
                    Some(Held::Lock(g)) => {
                        let lost_before = g.is_lost();
                        match g.write_if_held_at_backend(key, value.as_bytes()).await {
                            Ok(applied) => emit(&AgentEvent::Guarded {
                                applied,
                                lost_before,
                            }),
                            Err(e) => emit(&AgentEvent::Error {
                                message: e.to_string(),
                            }),
                        }
                    }
                    _ => emit(&AgentEvent::Error {
                        message: "no lock held".into(),
                    }),
                }
            }
            "fenced" => {
                let parts: Vec<&str> = arg.splitn(3, ' ').collect();
                match (&guard, parts.as_slice()) {
                    (Some(g), [addr, name, value]) => {
                        let lost_before = g.is_lost();
                        let fence = g.fence();
                        let at_ns = mono_ns();
                        let written = crate::harness::fenced::write_to(
                            addr,
                            name,
                            fence,
                            session.id(),
                            value,
                        )
                        .await;
                        match written {
                            Ok(accepted) => emit(&AgentEvent::Fenced {
                                fence,
                                accepted,
                                lost_before,
                                at_ns,
                            }),
                            Err(e) => emit(&AgentEvent::Error {
                                message: e.to_string(),
                            }),
                        }
                    }
                    _ => emit(&AgentEvent::Error {
                        message: "usage: fenced ADDR NAME VALUE, with a lock held".into(),
                    }),
                }
            }
            "release" => {
                if let Some(w) = watcher.take() {
                    // Wait for the aborted watcher to drop its share of
                    // the guard.
                    w.abort();
                    let _ = w.await;
                }
                let at_ns = mono_ns();
                if guard.is_some() {
                    emit(&AgentEvent::Releasing { at_ns });
                }
                match guard.take() {
                    Some(g) => match g.give_back().await {
                        Ok(()) => emit(&AgentEvent::Released { at_ns }),
                        Err(e) => emit(&AgentEvent::ReleaseFailed {
                            at_ns,
                            message: e.to_string(),
                        }),
                    },
                    None => emit(&AgentEvent::Error {
                        message: "no lock held".into(),
                    }),
                }
            }
            "exit" => break,
            other => emit(&AgentEvent::Error {
                message: format!("unknown command `{other}`"),
            }),
        }
    }
    if let Some(w) = watcher.take() {
        w.abort();
    }
    drop(guard);
    let _ = session.close().await;
}
