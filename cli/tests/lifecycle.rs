//! `quorate lock` / `elect` / `join` as real processes against real servers
//! (started by the conformance harness on free loopback ports): every exit
//! path leaves nothing behind, commands never outlive the lock, `-n` and
//! `--timeout` mean what they say.
//!
//! Liveness bounds here are generous (seconds, far below the TTLs used);
//! nothing asserts a speed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quorate::Coordinator;
use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_conformance::harness::redis::RedisServer;
use quorate_conformance::harness::zookeeper::ZkCluster;

use common::{quorate, run, stderr, unique, LIVENESS};

/// TTL of every lease in these tests: a stranded entry would delay the next
/// waiter by about this much, far above [`HANDOFF_BOUND`].
const TTL: &str = "30s";
/// Liveness bound for the next waiter to be granted after the holder's
/// release.
const HANDOFF_BOUND: Duration = Duration::from_secs(5);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A child's stdout, line by line, with a bounded wait.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    fn next(&self) -> String {
        self.0
            .recv_timeout(LIVENESS)
            .expect("a line from the child within the liveness bound")
    }
}

fn spawn(args: &[&str]) -> Child {
    quorate()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quorate")
}

/// Wait for a child's exit, bounded; kill it and fail past the bound.
fn wait_bounded(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > LIVENESS {
            let _ = child.kill();
            panic!("{what} did not exit within {LIVENESS:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Whether a process is gone or dead (a zombie that nobody reaped yet:
/// PID 1 of a container does not always reap).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_dead(pid: i32, what: &str) {
    let start = Instant::now();
    while !is_dead(pid) {
        assert!(
            start.elapsed() < LIVENESS,
            "{what} (pid {pid}) still alive after {LIVENESS:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A backend under test: its URL and a coordinator on the same namespace
/// to inspect what is left.
struct Backend {
    url: String,
    coord: Coordinator,
    rt: tokio::runtime::Runtime,
    /// Whether waiters are visible in `leftovers()` (queue entries); file
    /// waiters are blocked kernel lock calls, invisible.
    visible_waiters: bool,
}

impl Backend {
    fn new(url: String, visible_waiters: bool) -> Backend {
        let rt = runtime();
        let coord = rt
            .block_on(quorate::connect(&url))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Backend {
            url,
            coord,
            rt,
            visible_waiters,
        }
    }

    fn leftovers(&self) -> Vec<String> {
        self.rt.block_on(self.coord.leftovers()).unwrap()
    }

    /// Wait until a new waiter shows (beyond `baseline`); for file://, give
    /// the waiter a moment to block in the kernel.
    fn wait_queued(&self, baseline: &[String]) {
        if !self.visible_waiters {
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        let start = Instant::now();
        while self.leftovers().len() <= baseline.len() {
            assert!(
                start.elapsed() < LIVENESS,
                "the waiter never showed in leftovers"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn revoke(&self, session: &str) {
        self.rt
            .block_on(self.coord.revoke_session(session))
            .unwrap_or_else(|e| panic!("revoking {session}: {e}"));
    }
}

/// Holder + timed-out, busy, interrupted (SIGINT/SIGTERM/SIGHUP) and
/// failed-spawn runs: after each exit nothing of it is left on the backend,
/// and the next waiter is granted within [`HANDOFF_BOUND`] of the holder's
/// release (a stranded entry would hold it for about the TTL).
fn nothing_stranded(b: &Backend) {
    let url = b.url.as_str();
    assert_eq!(b.leftovers(), Vec::<String>::new(), "fresh namespace");
    let mut holder = spawn(&["lock", url, "job"]);
    let holder_out = Lines::of(&mut holder);
    let line = holder_out.next();
    assert!(line.starts_with("holding lock `job` (fence "), "{line}");
    let baseline = b.leftovers();
    if b.visible_waiters {
        assert!(!baseline.is_empty(), "the holder's entry is visible");
    }

    for t in ["1ms", "1ms", "1ms", "1ms", "50ms", "300ms", "300ms"] {
        let o = run(&["lock", url, "job", "--timeout", t, "--", "true"]);
        assert_eq!(o.status.code(), Some(75), "--timeout {t}: {}", stderr(&o));
        assert!(stderr(&o).contains("timed out after"), "{}", stderr(&o));
        assert_eq!(b.leftovers(), baseline, "left behind by --timeout {t}");
    }
    for busy in [["-n"], ["--nonblock"]] {
        let o = run(&["lock", busy[0], url, "job", "--", "true"]);
        assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
        assert!(stderr(&o).contains("is busy"), "{}", stderr(&o));
        assert_eq!(b.leftovers(), baseline, "left behind by {}", busy[0]);
    }
    let o = run(&["lock", "--timeout", "0", url, "job", "--", "true"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert_eq!(b.leftovers(), baseline, "left behind by --timeout 0");

    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let mut w = spawn(&["lock", url, "job", "--", "true"]);
        b.wait_queued(&baseline);
        signal(&w, sig);
        let status = wait_bounded(&mut w, "an interrupted waiter");
        assert_eq!(
            status.code(),
            Some(128 + sig),
            "waiter stopped by signal {sig}: {}",
            stderr_of(&mut w)
        );
        assert_eq!(
            b.leftovers(),
            baseline,
            "left behind by a waiter stopped by signal {sig}"
        );
    }

    let mut next = spawn(&["lock", url, "job", "--", "sh", "-c", "echo granted"]);
    let next_out = Lines::of(&mut next);
    b.wait_queued(&baseline);
    let released = Instant::now();
    signal(&holder, libc::SIGTERM);
    assert_eq!(next_out.next(), "granted");
    let handoff = released.elapsed();
    eprintln!("{url}: next waiter granted {handoff:?} after the holder's SIGTERM");
    assert!(
        handoff < HANDOFF_BOUND,
        "the next waiter was granted {handoff:?} after the release: something was stranded"
    );
    assert_eq!(wait_bounded(&mut holder, "the holder").code(), Some(0));
    assert_eq!(wait_bounded(&mut next, "the next waiter").code(), Some(0));
    assert_eq!(b.leftovers(), Vec::<String>::new(), "left after release");

    let o = run(&["lock", url, "job2", "--", "/nonexistent/command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert_eq!(
        b.leftovers(),
        Vec::<String>::new(),
        "left by a failed spawn"
    );
    let not_exec = std::env::temp_dir().join(unique("not-exec"));
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let o = run(&["lock", url, "job2", "--", not_exec.to_str().unwrap()]);
    let _ = std::fs::remove_file(&not_exec);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert_eq!(b.leftovers(), Vec::<String>::new(), "left by a failed exec");
    let o = run(&["lock", "-n", url, "job2", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "job2 is free: {}", stderr(&o));
    assert_eq!(b.leftovers(), Vec::<String>::new());
}

fn file_backend() -> (Backend, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(unique("file"));
    std::fs::create_dir_all(&dir).unwrap();
    (
        Backend::new(format!("file://{}", dir.display()), false),
        dir,
    )
}

fn etcd_backend(etcd: &EtcdCluster) -> Backend {
    Backend::new(etcd.url(&unique("ns"), &format!("ttl={TTL}")), true)
}

fn start_etcd() -> EtcdCluster {
    runtime()
        .block_on(EtcdCluster::start(1))
        .expect("starting etcd (see scripts/install-deps)")
}

#[test]
fn nothing_stranded_file() {
    let (b, dir) = file_backend();
    nothing_stranded(&b);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn nothing_stranded_etcd() {
    let etcd = start_etcd();
    nothing_stranded(&etcd_backend(&etcd));
}

#[test]
fn nothing_stranded_redis() {
    let redis = RedisServer::start().expect("starting redis-server");
    let url = format!("{}?ttl={TTL}&namespace={}", redis.url(), unique("ns"));
    nothing_stranded(&Backend::new(url, true));
}

#[test]
fn nothing_stranded_zookeeper() {
    let zk = ZkCluster::start(1).expect("starting ZooKeeper (see scripts/install-deps)");
    let url = format!(
        "zookeeper://{}?session_timeout={TTL}&namespace={}",
        zk.endpoints(),
        unique("ns")
    );
    nothing_stranded(&Backend::new(url, true));
}

/// `--shared` and exclusive on one name are one lock, as flock(1)'s `-s`
/// and `-x` on one file: shared holders share, and each side keeps the
/// other out (one attempt with `-n`: exit 75 when busy), and a shared
/// waiter queued behind an exclusive holder's command runs only after it.
fn shared_and_exclusive_exclude_each_other(b: &Backend) {
    let url = b.url.as_str();
    // A shared holder (no command: holds until a signal).
    let mut reader = spawn(&["lock", "--shared", url, "one"]);
    let reader_out = Lines::of(&mut reader);
    let line = reader_out.next();
    assert!(line.starts_with("holding lock `one` (fence "), "{line}");
    let o = run(&["lock", "-n", url, "one", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(75),
        "exclusive while shared was held: {}",
        stderr(&o)
    );
    let o = run(&["lock", "-n", "--shared", url, "one", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "shared holders share: {}",
        stderr(&o)
    );
    signal(&reader, libc::SIGTERM);
    assert_eq!(
        wait_bounded(&mut reader, "the shared holder").code(),
        Some(0)
    );

    // An exclusive holder: shared is refused, and a shared waiter runs its
    // command only once the exclusive command is done.
    let dir = std::env::temp_dir().join(unique("order"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let go = dir.join("go");
    let exclusive_script = format!(
        "echo x-start >> {log}; echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo x-end >> {log}",
        log = log.display(),
        go = go.display()
    );
    let mut writer = spawn(&["lock", url, "one", "--", "sh", "-c", &exclusive_script]);
    let writer_out = Lines::of(&mut writer);
    assert_eq!(writer_out.next(), "started");
    let o = run(&["lock", "-n", "--shared", url, "one", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(75),
        "shared while exclusive was held: {}",
        stderr(&o)
    );
    let baseline = b.leftovers();
    let shared_script = format!("echo shared >> {}", log.display());
    let mut waiter = spawn(&[
        "lock",
        "--shared",
        url,
        "one",
        "--",
        "sh",
        "-c",
        &shared_script,
    ]);
    b.wait_queued(&baseline);
    std::fs::write(&go, "").unwrap();
    assert_eq!(
        wait_bounded(&mut writer, "the exclusive holder").code(),
        Some(0)
    );
    assert_eq!(
        wait_bounded(&mut waiter, "the shared waiter").code(),
        Some(0),
        "{}",
        stderr_of(&mut waiter)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text, "x-start\nx-end\nshared\n",
        "the shared command ran while the exclusive one held the lock"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(b.leftovers(), Vec::<String>::new(), "left after release");
}

#[test]
fn shared_and_exclusive_exclude_each_other_file() {
    let (b, dir) = file_backend();
    shared_and_exclusive_exclude_each_other(&b);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shared_and_exclusive_exclude_each_other_etcd() {
    let etcd = start_etcd();
    shared_and_exclusive_exclude_each_other(&etcd_backend(&etcd));
}

#[test]
fn shared_and_exclusive_exclude_each_other_redis() {
    let redis = RedisServer::start().expect("starting redis-server");
    let url = format!("{}?ttl={TTL}&namespace={}", redis.url(), unique("ns"));
    shared_and_exclusive_exclude_each_other(&Backend::new(url, true));
}

#[test]
fn shared_and_exclusive_exclude_each_other_zookeeper() {
    let zk = ZkCluster::start(1).expect("starting ZooKeeper (see scripts/install-deps)");
    let url = format!(
        "zookeeper://{}?session_timeout={TTL}&namespace={}",
        zk.endpoints(),
        unique("ns")
    );
    shared_and_exclusive_exclude_each_other(&Backend::new(url, true));
}

/// On loss (the session revoked from outside, as an operator would), the
/// command's whole process group gets SIGTERM: a grandchild (`sleep 300`
/// started by `sh`) is gone too, and quorate exits 79.
#[test]
fn loss_terminates_the_whole_command_tree() {
    let etcd = start_etcd();
    let b = etcd_backend(&etcd);
    let mut q = spawn(&[
        "lock",
        &b.url,
        "job",
        "--",
        "sh",
        "-c",
        "echo \"$QUORATE_SESSION\"; sleep 300 & echo $!; wait",
    ]);
    let out = Lines::of(&mut q);
    let session = out.next();
    let grandchild: i32 = out.next().parse().unwrap();
    b.revoke(&session);
    let status = wait_bounded(&mut q, "quorate after loss");
    let e = stderr_of(&mut q);
    assert_eq!(status.code(), Some(79), "{e}");
    assert!(e.contains("lost lock `job`"), "{e}");
    assert!(is_dead(grandchild), "the grandchild outlived the lock");
    assert_eq!(b.leftovers(), Vec::<String>::new());
}

/// A command that ignores SIGTERM (and whose children inherit that) is
/// SIGKILLed after `--kill-after`.
#[test]
fn a_command_ignoring_sigterm_is_killed_after_kill_after() {
    let etcd = start_etcd();
    let b = etcd_backend(&etcd);
    let mut q = spawn(&[
        "lock",
        &b.url,
        "job",
        "--kill-after",
        "1s",
        "--",
        "sh",
        "-c",
        "trap '' TERM; echo \"$QUORATE_SESSION\"; echo $$; while :; do sleep 0.1; done",
    ]);
    let out = Lines::of(&mut q);
    let session = out.next();
    let shell: i32 = out.next().parse().unwrap();
    b.revoke(&session);
    let status = wait_bounded(&mut q, "quorate after loss");
    let e = stderr_of(&mut q);
    assert_eq!(status.code(), Some(79), "{e}");
    assert!(
        e.contains("did not exit within 1s of SIGTERM: SIGKILL"),
        "{e}"
    );
    assert!(is_dead(shell), "the TERM-ignoring command survived");
}

/// `kill -9` of quorate takes the command and its descendants with it
/// (parent-death signal + watchdog), and the file lock is free again.
#[test]
fn kill_9_of_quorate_kills_the_command_tree() {
    let (b, dir) = file_backend();
    let mut q = spawn(&[
        "lock",
        &b.url,
        "job",
        "--",
        "sh",
        "-c",
        "echo $$; sleep 300 & echo $!; wait",
    ]);
    let out = Lines::of(&mut q);
    let shell: i32 = out.next().parse().unwrap();
    let grandchild: i32 = out.next().parse().unwrap();
    signal(&q, libc::SIGKILL);
    wait_bounded(&mut q, "quorate after SIGKILL");
    wait_dead(shell, "the command");
    wait_dead(grandchild, "the command's child");
    let o = run(&["lock", "-n", &b.url, "job", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

/// A command's leftover background process is terminated before the lock
/// is released: nothing runs on without the lock.
#[test]
fn processes_left_by_the_command_end_before_the_release() {
    let (b, dir) = file_backend();
    let o = run(&[
        "lock",
        &b.url,
        "job",
        "--",
        "sh",
        "-c",
        "sleep 300 >/dev/null 2>&1 & echo $!",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert!(is_dead(pid), "the background process outlived the lock");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--timeout 0` and `-n` are exactly one attempt: on a free lock they
/// succeed every time.
#[test]
fn timeout_zero_is_one_attempt_etcd() {
    let etcd = start_etcd();
    let b = etcd_backend(&etcd);
    for _ in 0..3 {
        let o = run(&["lock", "--timeout", "0", &b.url, "free", "--", "true"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let o = run(&["lock", "-n", &b.url, "free", "--", "true"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    assert_eq!(b.leftovers(), Vec::<String>::new());
}

/// `--timeout` covers connecting: against a server that accepts TCP but
/// never answers, with connect_timeout=60s, `--timeout 1s` gives up
/// (exit 75) well before connect_timeout; so do `elect` and `join`.
#[test]
fn timeout_covers_connecting() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    for url in [
        format!("etcd://127.0.0.1:{port}?connect_timeout=60s"),
        format!("redis://127.0.0.1:{port}?connect_timeout=60s"),
    ] {
        for args in [
            vec!["lock", "--timeout", "1s", &url, "x", "--", "true"],
            vec!["elect", "--timeout", "1s", &url, "e", "v", "--", "true"],
            vec!["join", "--timeout", "1s", &url, "g", "m", "--", "true"],
        ] {
            let start = Instant::now();
            let o = run(&args);
            assert_eq!(o.status.code(), Some(75), "{args:?}: {}", stderr(&o));
            assert!(
                start.elapsed() < LIVENESS,
                "{args:?} took {:?}",
                start.elapsed()
            );
        }
    }
    drop(silent);
}

/// `elect --timeout` while someone else leads: exit 75, and the candidacy
/// is gone from the backend.
#[test]
fn elect_timeout_leaves_nothing_etcd() {
    let etcd = start_etcd();
    let b = etcd_backend(&etcd);
    let mut leader = spawn(&["elect", &b.url, "sched", "a"]);
    let out = Lines::of(&mut leader);
    assert!(out.next().starts_with("holding leadership of `sched`"));
    let baseline = b.leftovers();
    let o = run(&["elect", "--timeout", "300ms", &b.url, "sched", "b"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert_eq!(b.leftovers(), baseline);
    let o = run(&["leader", &b.url, "sched"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "a");
    signal(&leader, libc::SIGINT);
    assert_eq!(wait_bounded(&mut leader, "the leader").code(), Some(0));
    assert_eq!(b.leftovers(), Vec::<String>::new());
}

/// The URL can come from QUORATE_URL; an unreachable backend exits 69.
#[test]
fn url_from_the_environment_and_unavailable_exit_code() {
    let (b, dir) = file_backend();
    let o = quorate()
        .env("QUORATE_URL", &b.url)
        .args(["lock", "job", "--", "sh", "-c", "echo $QUORATE_LOCK"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "job");
    let o = run(&["lock", "job", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("QUORATE_URL"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    // Refused by every endpoint: exit 69 at once (not after the hour of
    // connect_timeout; the liveness bound of `wait_bounded` would fail it),
    // naming the refusal.
    for scheme in ["redis", "etcd", "zookeeper"] {
        let url = format!("{scheme}://127.0.0.1:{port}?connect_timeout=1h");
        let mut q = spawn(&["lock", &url, "x", "--", "true"]);
        let status = wait_bounded(&mut q, "quorate against a refused port");
        let e = stderr_of(&mut q);
        assert_eq!(status.code(), Some(69), "{e}");
        assert!(
            e.contains(&format!("127.0.0.1:{port}")) && e.contains("Connection refused"),
            "{e}"
        );
    }
}

/// SIGTERM to quorate while the command runs is forwarded to the command's
/// whole group: the command's child ends too, and the status is the
/// command's (143 = killed by SIGTERM).
#[test]
fn signals_reach_the_whole_command_group() {
    let (b, dir) = file_backend();
    let mut q = spawn(&[
        "lock",
        &b.url,
        "job",
        "--",
        "sh",
        "-c",
        "sleep 300 & echo $!; wait",
    ]);
    let out = Lines::of(&mut q);
    let grandchild: i32 = out.next().parse().unwrap();
    signal(&q, libc::SIGTERM);
    let status = wait_bounded(&mut q, "quorate after SIGTERM");
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        stderr_of(&mut q)
    );
    assert!(is_dead(grandchild), "the command's child outlived the lock");
    let o = run(&["lock", "-n", &b.url, "job", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

/// `--json` grant lines (`lock`, `elect`) and `leader --json` agree with
/// each other and with the backend.
#[test]
fn json_grant_lines_etcd() {
    let etcd = start_etcd();
    let b = etcd_backend(&etcd);
    let mut l = spawn(&["lock", "--json", &b.url, "job"]);
    let grant: serde_json::Value = serde_json::from_str(&Lines::of(&mut l).next()).unwrap();
    assert_eq!(grant["kind"], "lock");
    assert_eq!(grant["name"], "job");
    assert!(grant["fence"].as_u64().is_some_and(|f| f > 0), "{grant}");
    let session = grant["session"].as_str().unwrap().to_owned();
    assert!(!session.is_empty());

    let mut e = spawn(&["elect", "--json", &b.url, "sched", "node-a"]);
    let lead: serde_json::Value = serde_json::from_str(&Lines::of(&mut e).next()).unwrap();
    assert_eq!(lead["kind"], "leadership");
    assert_eq!(lead["value"], "node-a");
    let o = run(&["leader", "--json", &b.url, "sched"]);
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(seen["value"], "node-a");
    assert_eq!(seen["fence"], lead["fence"]);

    // The session in the grant line is the one holding the lock.
    b.revoke(&session);
    let status = wait_bounded(&mut l, "the revoked holder");
    assert_eq!(status.code(), Some(79), "{}", stderr_of(&mut l));
    signal(&e, libc::SIGTERM);
    assert_eq!(wait_bounded(&mut e, "the leader").code(), Some(0));
    let o = run(&["leader", "--json", &b.url, "sched"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "null");
    assert_eq!(b.leftovers(), Vec::<String>::new());
}

/// `quorate revoke URL SESSION` breaks a stuck holder, as `etcdctl lease
/// revoke` would: the holder's command is terminated and it exits 79, the
/// lock is free at once (`-n` gets it), a second revoke of the same id
/// exits 3, and nothing is left on the backend. The URL can come from
/// `QUORATE_URL`.
fn revoke_breaks_a_stuck_holder(b: &Backend) {
    let mut holder = spawn(&[
        "lock",
        &b.url,
        "stuck",
        "--",
        "sh",
        "-c",
        "echo \"$QUORATE_SESSION\"; sleep 300 & wait",
    ]);
    let session = Lines::of(&mut holder).next();
    let o = run(&["lock", "-n", &b.url, "stuck", "--", "true"]);
    assert_eq!(o.status.code(), Some(75), "held: {}", stderr(&o));
    let o = quorate()
        .env("QUORATE_URL", &b.url)
        .args(["revoke", &session])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("revoked session {session}")
    );
    let status = wait_bounded(&mut holder, "the revoked holder");
    let e = stderr_of(&mut holder);
    assert_eq!(status.code(), Some(79), "{e}");
    assert!(e.contains("lost lock `stuck`"), "{e}");
    let o = run(&["lock", "-n", &b.url, "stuck", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "not freed: {}", stderr(&o));
    let o = run(&["revoke", &b.url, &session]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no live session"), "{}", stderr(&o));
    assert_eq!(b.leftovers(), Vec::<String>::new());
}

#[test]
fn revoke_breaks_a_stuck_holder_etcd() {
    let etcd = start_etcd();
    revoke_breaks_a_stuck_holder(&etcd_backend(&etcd));
}

#[test]
fn revoke_breaks_a_stuck_holder_redis() {
    let redis = RedisServer::start().expect("starting redis-server");
    let url = format!("{}?ttl={TTL}&namespace={}", redis.url(), unique("ns"));
    revoke_breaks_a_stuck_holder(&Backend::new(url, true));
}

#[test]
fn revoke_breaks_a_stuck_holder_zookeeper() {
    let zk = ZkCluster::start(1).expect("starting ZooKeeper (see scripts/install-deps)");
    let url = format!(
        "zookeeper://{}?session_timeout={TTL}&namespace={}",
        zk.endpoints(),
        unique("ns")
    );
    revoke_breaks_a_stuck_holder(&Backend::new(url, true));
}
