//! A server process the harness started: stopped, paused and resumed by
//! its own pid only, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A free TCP port on 127.0.0.1 (bound and released; a race with another
/// process is possible, so servers verify they got it by answering).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// A temporary directory removed on drop, on tmpfs (`/dev/shm`) when there
/// is one.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create `quorate-<label>-<random>`.
    pub fn new(label: &str) -> std::io::Result<TempDir> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("quorate-{label}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child server process, its command line kept so it can be restarted.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Start `program args…`, output appended to `log`.
    ///
    /// # Errors
    ///
    /// When the program cannot be started.
    pub fn start(
        name: &str,
        program: impl Into<PathBuf>,
        args: Vec<String>,
        log: impl Into<PathBuf>,
    ) -> std::io::Result<Self> {
        let mut p = ServerProcess {
            name: name.to_owned(),
            program: program.into(),
            args,
            log: log.into(),
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("starting {}: {e}", self.program.display()),
                )
            })?;
        tracing::debug!(server = %self.name, pid = child.id(), "started");
        self.child = Some(child);
        Ok(())
    }

    /// The pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn signal(&self, sig: i32) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other(format!("{} is not running", self.name)))?;
        // SAFETY: kill(2) on the pid of a child this harness started and has
        // not reaped yet (so the pid cannot have been reused).
        if unsafe { libc::kill(pid as i32, sig) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SIGKILL and reap.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = self.signal_pid(c.id(), libc::SIGCONT);
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn signal_pid(&self, pid: u32, sig: i32) -> std::io::Result<()> {
        // SAFETY: as in `signal`.
        if unsafe { libc::kill(pid as i32, sig) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SIGSTOP.
    ///
    /// # Errors
    ///
    /// When not running.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT.
    ///
    /// # Errors
    ///
    /// When not running.
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Start again with the same command line (after [`ServerProcess::kill`]).
    ///
    /// # Errors
    ///
    /// When the program cannot be started.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill()?;
        self.spawn()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
