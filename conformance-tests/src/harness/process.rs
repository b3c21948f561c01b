//! Helpers shared by the server harnesses: free ports, scratch directories,
//! and child processes that die with the test process.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// A loopback TCP port that was free a moment ago (bound to port 0, then
/// released). The caller must cope with losing a race for it.
///
/// # Errors
///
/// The bind error.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A fresh, empty directory for one server's data: under `/dev/shm` when
/// it is usable (fast fsync), else under the system temp dir. Removed by
/// [`ScratchDir`]'s `Drop`.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Create a directory named `quorate-<what>-<pid>-<random>`.
    ///
    /// # Errors
    ///
    /// The error of creating it.
    pub fn new(what: &str) -> io::Result<ScratchDir> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() && tempfile_probe(shm) {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "quorate-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(format!(".quorate-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawn a server process that is killed (SIGKILL) when the test process
/// dies, however it dies.
///
/// The kernel's parent-death signal fires when the *thread* that forked
/// the child exits, so every server is forked by one dedicated thread that
/// lives as long as the process.
///
/// # Errors
///
/// The spawn error.
pub fn spawn_tied_to_process(command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("quorate-harness-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(spawn_with_death_signal(&mut command));
                }
            })
            .expect("spawn the harness spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    sender
        .lock()
        .unwrap()
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("the harness spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the harness spawner thread is gone"))?
}

fn spawn_with_death_signal(command: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe; the closure touches
    // no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Send `signal` to a process we started, by its pid.
///
/// # Errors
///
/// The `kill(2)` error.
pub fn signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: plain syscall on a pid we own.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
