//! The file backend between real processes: Python's `fcntl.lockf` and
//! quorate exclude each other; a SIGKILLed holder frees its lock, its
//! membership and its leadership at once; a SIGSTOPped holder keeps
//! everyone out; a spawned child never inherits a lock.
//!
//! Child holders are this very test binary, re-run with `--exact
//! child_process` and the `QUORATE_FILE_CHILD` variable, or `python3 -c`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use quorate_core::{Coordinator, ErrorKind, GroupEvent};

use common::connect;

/// Liveness bound for things that must happen "soon" (never a timing claim).
async fn soon<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 10 s"))
}

/// A child process, killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Proc {
            child,
            stdin,
            stdout,
        }
    }

    /// The rest of the next line containing `prefix`, from `prefix` on
    /// (other output, like libtest's, is skipped).
    fn line(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                panic!("child exited before printing `{prefix}`");
            }
            if let Some(at) = line.find(prefix) {
                return line[at..].trim_end().to_owned();
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// SIGKILL and reap: when this returns the kernel has closed every file
    /// of the child.
    fn kill_and_reap(&mut self) {
        self.signal(libc::SIGKILL);
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test binary as a child that takes `what` (`mutex`, `member` or
/// `leader`) named `name` under `root`, prints `CHILD-READY <fence>` and
/// waits to be killed (`hammer`: locks and releases mutex `name` in a loop
/// until killed).
fn quorate_child(root: &Path, what: &str, name: &str) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(
        "QUORATE_FILE_CHILD",
        format!("{}\t{what}\t{name}", root.display()),
    );
    let mut p = Proc::spawn(cmd);
    p.line("CHILD-READY");
    p
}

#[test]
#[ignore = "the child process of the other tests, not a test"]
fn child_process() {
    let spec = std::env::var("QUORATE_FILE_CHILD").expect("run only as a child process");
    let mut parts = spec.split('\t');
    let (root, what, name) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let c = connect(Path::new(&root)).await;
        let s = c.session().await.unwrap();
        let fence = match what.as_str() {
            "mutex" => {
                let g = s.mutex(&name).lock().await.unwrap();
                let f = g.fence().get();
                std::mem::forget(g);
                f
            }
            "member" => {
                let m = s
                    .group(&name)
                    .join("child", serde_json::json!({"pid": std::process::id()}))
                    .await
                    .unwrap();
                std::mem::forget(m);
                0
            }
            "leader" => {
                let l = s.election(&name).campaign(b"child").await.unwrap();
                let f = l.fence().get();
                std::mem::forget(l);
                f
            }
            "hammer" => {
                // Lock and release as fast as possible until killed.
                let m = s.mutex(&name);
                let f = m.lock().await.unwrap().fence().get();
                println!("CHILD-READY {f}");
                loop {
                    m.lock().await.unwrap().release().await.unwrap();
                }
            }
            other => panic!("unknown child role {other}"),
        };
        println!("CHILD-READY {fence}");
        std::future::pending::<()>().await;
    });
}

fn python(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    cmd
}

/// Holds `fcntl.lockf(f, LOCK_EX)` on argv[1] until told, then unlocks.
const PY_HOLD: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "a+")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
fcntl.lockf(f, fcntl.LOCK_UN)
print("unlocked", flush=True)
sys.stdin.readline()
"#;

/// Tries `fcntl.lockf(f, LOCK_EX | LOCK_NB)` on argv[1] once.
const PY_TRY: &str = r#"
import fcntl, sys
f = open(sys.argv[1], "a+")
try:
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("result acquired", flush=True)
except OSError as e:
    print("result busy", e.errno, flush=True)
"#;

fn python_try(path: &Path) -> String {
    let out = python(PY_TRY, &[path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_python_lockf_holder_excludes_quorate() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let path = quorate_file::mutex_path(dir.path(), "shared/job");
    let mut py = Proc::spawn(python(PY_HOLD, &[path.to_str().unwrap()]));
    py.line("locked");
    assert!(s1.mutex("shared/job").try_lock().await.unwrap().is_none());
    let waiter = tokio::spawn(async move { s2.mutex("shared/job").lock().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "granted while Python holds lockf");
    py.send("unlock");
    py.line("unlocked");
    let g = soon("quorate's grant after Python unlocked", waiter)
        .await
        .unwrap();
    // Python's lockf created the file empty: quorate's counter starts there
    // (at the wall clock in microseconds, so a re-created file never repeats
    // a fence), and is written at the start of the file: the durable
    // reservation, then the fence handed out.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    let reserved: u64 = lines.next().unwrap().parse().unwrap();
    assert!(reserved >= g.fence().get(), "{text:?}");
    assert_eq!(
        lines.next().and_then(|l| l.get(..20)),
        Some(format!("{:020}", g.fence().get()).as_str()),
        "{text:?}"
    );
    // Python's lock was released while its process lives on: quorate's
    // grant really is exclusive against it again.
    assert!(python_try(&path).starts_with("result busy"));
}

#[tokio::test]
async fn a_quorate_holder_excludes_python_lockf() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let path = quorate_file::mutex_path(dir.path(), "shared/job");
    let g = s.mutex("shared/job").lock().await.unwrap();
    assert!(
        python_try(&path).starts_with("result busy"),
        "Python got the lock"
    );
    g.release().await.unwrap();
    assert_eq!(python_try(&path), "result acquired");
    // One name, one lock: the read side of the name's read/write lock is a
    // shared lock on the same file, so it conflicts with lockf too, and so
    // does the write side (the mutex).
    let r = s.rwlock("shared/job").read().await.unwrap();
    assert!(
        python_try(&path).starts_with("result busy"),
        "Python got the lock while a quorate reader held it"
    );
    r.release().await.unwrap();
    let w = s.rwlock("shared/job").write().await.unwrap();
    assert!(
        python_try(&path).starts_with("result busy"),
        "Python got the lock while a quorate writer held it"
    );
    w.release().await.unwrap();
    assert_eq!(python_try(&path), "result acquired");
}

#[tokio::test]
async fn a_python_lockf_holder_excludes_quorate_readers_and_writers() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let path = quorate_file::mutex_path(dir.path(), "shared/job");
    let mut py = Proc::spawn(python(PY_HOLD, &[path.to_str().unwrap()]));
    py.line("locked");
    assert!(s1.rwlock("shared/job").try_read().await.unwrap().is_none());
    assert!(s1.rwlock("shared/job").try_write().await.unwrap().is_none());
    let reader = tokio::spawn(async move { s2.rwlock("shared/job").read().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !reader.is_finished(),
        "a reader was granted while Python holds lockf"
    );
    py.send("unlock");
    py.line("unlocked");
    let r = soon("quorate's read grant after Python unlocked", reader)
        .await
        .unwrap();
    assert!(python_try(&path).starts_with("result busy"));
    r.release().await.unwrap();
}

#[tokio::test]
async fn a_spawned_child_never_inherits_a_lock() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let path = quorate_file::mutex_path(dir.path(), "m");
    let g = s1.mutex("m").lock().await.unwrap();
    // A child spawned while the lock is held (fork + exec) …
    let script = r#"
import os, sys
target = os.path.realpath(sys.argv[1])
fds = [fd for fd in os.listdir("/proc/self/fd")
       if os.path.realpath("/proc/self/fd/" + fd) == target]
print("inherited", len(fds), flush=True)
sys.stdin.readline()
"#;
    let mut child = Proc::spawn(python(script, &[path.to_str().unwrap()]));
    // … has no descriptor of the lock file …
    assert_eq!(child.line("inherited"), "inherited 0");
    // … and, once the parent releases, holds nothing while it lives on.
    g.release().await.unwrap();
    assert_eq!(python_try(&path), "result acquired");
    assert!(s2.mutex("m").try_lock().await.unwrap().is_some());
    child.send("bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_frees_its_lock_for_a_blocked_waiter_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let mut handoffs = Vec::new();
    let mut last_fence = 0;
    for _ in 0..5 {
        let mut holder = quorate_child(dir.path(), "mutex", "m");
        assert!(s.mutex("m").try_lock().await.unwrap().is_none());
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let g = s.mutex("m").lock().await.unwrap();
                (Instant::now(), g)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        let killed = Instant::now();
        holder.signal(libc::SIGKILL);
        let (granted, g) = soon("the grant after SIGKILL", waiter).await.unwrap();
        handoffs.push(granted.duration_since(killed));
        assert!(g.fence().get() > last_fence);
        last_fence = g.fence().get();
        g.release().await.unwrap();
        holder.kill_and_reap();
    }
    handoffs.sort();
    println!(
        "figure file sigkill_to_waiter_grant_us: min {} median {} max {} (n = {})",
        handoffs[0].as_micros(),
        handoffs[handoffs.len() / 2].as_micros(),
        handoffs[handoffs.len() - 1].as_micros(),
        handoffs.len()
    );
}

/// Eventual acquisition between processes: the kernel wakes a blocked
/// waiter when a lock frees but does not hand it the lock, so a process
/// that locks again at once could win every time. A waiter that holds the
/// turnstile keeps every newcomer of any process out, so a child locking
/// and releasing in a tight loop does not starve this process's waiter.
/// (A variant where a writer that finds the lock file free skips the
/// turnstile also passed here: a quorate loop takes longer to come back
/// than the woken waiter; see `docs/backends.md` for why it was not
/// adopted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_lock_loop_in_another_process_does_not_starve_a_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let _hammer = quorate_child(dir.path(), "hammer", "m");
    let mut waits = Vec::new();
    let mut last_fence = 0;
    for _ in 0..20 {
        let asked = Instant::now();
        let g = soon(
            "a grant while another process hammers the lock",
            s.mutex("m").lock(),
        )
        .await
        .unwrap();
        waits.push(asked.elapsed());
        assert!(g.fence().get() > last_fence);
        last_fence = g.fence().get();
        g.release().await.unwrap();
    }
    waits.sort();
    println!(
        "figure file wait_under_hammer_us: min {} median {} max {} (n = {})",
        waits[0].as_micros(),
        waits[waits.len() / 2].as_micros(),
        waits[waits.len() - 1].as_micros(),
        waits.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_holder_keeps_everyone_out() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let mut holder = quorate_child(dir.path(), "mutex", "m");
    holder.signal(libc::SIGSTOP);
    // Paused well past any TTL-like window: nobody else may acquire.
    let e = s
        .mutex("m")
        .lock_timeout(Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(s.mutex("m").try_lock().await.unwrap().is_none());
    let path = quorate_file::mutex_path(dir.path(), "m");
    assert!(python_try(&path).starts_with("result busy"));
    assert_eq!(c.leftovers().await.unwrap(), ["lock/m.lock"]);
    // Resumed, then dead: free again (safe, and live once the holder dies).
    holder.signal(libc::SIGCONT);
    holder.kill_and_reap();
    assert!(s.mutex("m").try_lock().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_member_disappears_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let mut events = c.watch_group("workers");
    assert!(matches!(
        soon("snapshot", events.next()).await.unwrap().unwrap(),
        GroupEvent::Snapshot { .. }
    ));
    let mut child = quorate_child(dir.path(), "member", "workers");
    match soon("joined", events.next()).await.unwrap().unwrap() {
        GroupEvent::Joined { member } => assert_eq!(member.id, "child"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.members("workers").await.unwrap().len(), 1);
    let killed = Instant::now();
    child.kill_and_reap();
    // Reaped means its files are closed: not a member any more, right now.
    assert!(c.members("workers").await.unwrap().is_empty());
    assert_eq!(
        soon("left", events.next()).await.unwrap().unwrap(),
        GroupEvent::Left { id: "child".into() }
    );
    println!(
        "figure file sigkill_to_left_event_us: {}",
        killed.elapsed().as_micros()
    );
    assert!(c.leftovers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let mut child = quorate_child(dir.path(), "leader", "sched");
    let child_fence = child_fence_of(&c).await;
    let mut observed = c.observe("sched");
    let first = soon("observe", observed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.value.as_slice(), first.fence.get()),
        (&b"child"[..], child_fence)
    );
    let campaign = {
        let s = s.clone();
        tokio::spawn(async move { s.election("sched").campaign(b"parent").await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!campaign.is_finished(), "two leaders");
    child.kill_and_reap();
    let l = soon("the new leader", campaign).await.unwrap();
    assert!(l.fence().get() > child_fence);
    let mut seen = soon("observe", observed.next()).await.unwrap().unwrap();
    if seen.is_none() {
        seen = soon("observe", observed.next()).await.unwrap().unwrap();
    }
    assert_eq!(seen.unwrap().value, b"parent");
    assert_eq!(c.leader("sched").await.unwrap().unwrap().fence, l.fence());
}

async fn child_fence_of(c: &Coordinator) -> u64 {
    c.leader("sched")
        .await
        .unwrap()
        .expect("the child leads")
        .fence
        .get()
}
