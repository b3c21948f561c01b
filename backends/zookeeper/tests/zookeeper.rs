//! Integration tests of the ZooKeeper backend against real ZooKeeper 3.8
//! servers started by the harness (`QUORATE_ZOOKEEPER_ENDPOINTS` for the
//! tests that need no fault injection): interoperation with a real kazoo
//! process, unreachable servers, digest ACLs, dropped waiters, loss on a
//! server outage, and an ensemble failover.

#[path = "../../../conformance-tests/src/harness/zookeeper.rs"]
mod harness;
// The harness module's own `super::faketime`.
#[path = "../../../conformance-tests/src/harness/faketime.rs"]
mod faketime;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use harness::{external_endpoints, ZkCluster};
use quorate_core::{name, Config, Coordinator, ErrorKind};

const PYTHON: &str = "/opt/quorate-venv/bin/python";

/// The endpoints of the server shared by the tests that inject no fault.
fn shared_endpoints() -> String {
    static SERVER: OnceLock<(String, Option<ZkCluster>)> = OnceLock::new();
    SERVER
        .get_or_init(|| match external_endpoints() {
            Some(e) => (e, None),
            None => {
                let c = ZkCluster::start(1).expect("starting a ZooKeeper server");
                (c.endpoints(), Some(c))
            }
        })
        .0
        .clone()
}

/// Logs with `RUST_LOG=…` (shown for failing tests).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn fresh_namespace() -> String {
    init_logs();
    format!("it-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes(bytes[..8].try_into().unwrap())
}

async fn connect(url: &str) -> quorate_core::Result<Coordinator> {
    quorate_zookeeper::connect(&Config::parse(url)?).await
}

/// The shared server's endpoints, a fresh namespace on it, and a
/// coordinator of that namespace.
async fn on_the_shared_server() -> (String, String, Coordinator) {
    let endpoints = shared_endpoints();
    let ns = fresh_namespace();
    let coord = connect(&format!("zookeeper://{endpoints}/{ns}"))
        .await
        .unwrap();
    (endpoints, ns, coord)
}

/// A kazoo process driven line by line: `acquire KIND PATH`,
/// `try KIND PATH` (answers `true`/`false`), `release`.
struct Kazoo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const KAZOO_SCRIPT: &str = r#"
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1])
zk.start(timeout=20)
lock = None
print("ready", flush=True)
for line in sys.stdin:
    parts = line.split()
    if not parts:
        continue
    cmd = parts[0]
    if cmd in ("acquire", "try"):
        kind, path = parts[1], parts[2]
        if kind == "lock+r":
            lock = zk.Lock(path, "kazoo", extra_lock_patterns=["__rlock__"])
        else:
            lock = {"lock": zk.Lock, "write": zk.WriteLock, "read": zk.ReadLock}[kind](path, "kazoo")
        got = lock.acquire(blocking=(cmd == "acquire"))
        print("true" if got else "false", flush=True)
    elif cmd == "release":
        lock.release()
        print("released", flush=True)
    elif cmd == "children":
        print(" ".join(sorted(zk.get_children(parts[1]))), flush=True)
"#;

impl Kazoo {
    fn start(endpoints: &str) -> Kazoo {
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(KAZOO_SCRIPT)
            .arg(endpoints)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PYTHON} (scripts/install-deps makes it): {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut k = Kazoo {
            child,
            stdin,
            stdout,
        };
        assert_eq!(k.line(), "ready");
        k
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("reading kazoo");
        s.trim().to_owned()
    }

    /// Send a command and wait for its one-line answer (on a blocking
    /// thread, so the runtime keeps serving quorate meanwhile).
    async fn ask(mut self, command: String) -> (Kazoo, String) {
        tokio::task::spawn_blocking(move || {
            writeln!(self.stdin, "{command}").unwrap();
            self.stdin.flush().unwrap();
            let answer = self.line();
            (self, answer)
        })
        .await
        .unwrap()
    }
}

impl Drop for Kazoo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_lock_and_quorate_mutex_exclude_each_other() {
    let (endpoints, ns, coord) = on_the_shared_server().await;
    let session = coord.session().await.unwrap();
    let path = format!("/{ns}/quorate/lock/{}", name::encode("jobs/nightly"));
    let kazoo = Kazoo::start(&endpoints);

    // kazoo holds: quorate cannot get it.
    let (kazoo, got) = kazoo.ask(format!("acquire lock {path}")).await;
    assert_eq!(got, "true");
    assert!(session
        .mutex("jobs/nightly")
        .try_lock()
        .await
        .unwrap()
        .is_none());
    // A quorate waiter queues behind kazoo and is woken by its release.
    let waiter = tokio::spawn({
        let session = session.clone();
        async move { session.mutex("jobs/nightly").lock().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "quorate got the lock kazoo holds");
    let (kazoo, released) = kazoo.ask("release".into()).await;
    assert_eq!(released, "released");
    let guard = waiter.await.unwrap().unwrap();

    // quorate holds: kazoo cannot get it, until quorate releases.
    let (kazoo, got) = kazoo.ask(format!("try lock {path}")).await;
    assert_eq!(got, "false", "kazoo got the lock quorate holds");
    guard.release().await.unwrap();
    let (kazoo, got) = kazoo.ask(format!("try lock {path}")).await;
    assert_eq!(got, "true");
    let (_kazoo, _) = kazoo.ask("release".into()).await;
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_rwlock_and_quorate_rwlock_follow_the_same_rules() {
    let (endpoints, ns, coord) = on_the_shared_server().await;
    let session = coord.session().await.unwrap();
    let rw = session.rwlock("config");
    // One name, one lock: the read/write lock lives in the mutex's
    // directory.
    let path = format!("/{ns}/quorate/lock/config");
    let kazoo = Kazoo::start(&endpoints);

    // kazoo writer: quorate can neither read nor write.
    let (kazoo, got) = kazoo.ask(format!("acquire write {path}")).await;
    assert_eq!(got, "true");
    assert!(rw.try_read().await.unwrap().is_none());
    assert!(rw.try_write().await.unwrap().is_none());
    let (kazoo, _) = kazoo.ask("release".into()).await;

    // kazoo reader: quorate may read, not write.
    let (kazoo, got) = kazoo.ask(format!("acquire read {path}")).await;
    assert_eq!(got, "true");
    let r = rw
        .try_read()
        .await
        .unwrap()
        .expect("readers share with kazoo");
    r.release().await.unwrap();
    assert!(rw.try_write().await.unwrap().is_none());
    let (kazoo, _) = kazoo.ask("release".into()).await;

    // quorate writer: kazoo can neither read nor write.
    let w = rw.write().await.unwrap();
    let (kazoo, got) = kazoo.ask(format!("try read {path}")).await;
    assert_eq!(got, "false", "kazoo read while quorate wrote");
    let (kazoo, got) = kazoo.ask(format!("try write {path}")).await;
    assert_eq!(got, "false", "kazoo wrote while quorate wrote");
    w.release().await.unwrap();

    // quorate reader: kazoo may read, not write, and a kazoo `Lock` that
    // counts `__rlock__` nodes (`extra_lock_patterns`) cannot lock.
    let r = rw.read().await.unwrap();
    let (kazoo, got) = kazoo.ask(format!("try read {path}")).await;
    assert_eq!(got, "true", "kazoo could not share a read with quorate");
    let (kazoo, _) = kazoo.ask("release".into()).await;
    let (kazoo, got) = kazoo.ask(format!("try write {path}")).await;
    assert_eq!(got, "false", "kazoo wrote while quorate read");
    let (kazoo, got) = kazoo.ask(format!("try lock+r {path}")).await;
    assert_eq!(
        got, "false",
        "kazoo Lock(extra_lock_patterns) locked while quorate read"
    );
    // kazoo's plain `Lock` is blocked by `__lock__` nodes only (its
    // `_EXCLUDE_NAMES`, the same as its `ReadLock`'s): it does not see
    // readers, kazoo's or quorate's. Pinned here because docs/backends.md
    // says so.
    let (kazoo, got) = kazoo.ask(format!("try lock {path}")).await;
    assert_eq!(
        got, "true",
        "kazoo's plain Lock now sees __rlock__ readers: update docs/backends.md"
    );
    let (kazoo, _) = kazoo.ask("release".into()).await;
    r.release().await.unwrap();

    // One name, one lock: quorate's mutex of the name is the write side.
    let m = session.mutex("config").lock().await.unwrap();
    let (kazoo, got) = kazoo.ask(format!("try read {path}")).await;
    assert_eq!(got, "false", "kazoo read while quorate's mutex was held");
    m.release().await.unwrap();
    // kazoo `Lock` holds: a quorate reader waits.
    let (kazoo, got) = kazoo.ask(format!("acquire lock {path}")).await;
    assert_eq!(got, "true");
    assert!(
        rw.try_read().await.unwrap().is_none(),
        "quorate read while kazoo's Lock held"
    );
    let (kazoo, _) = kazoo.ask("release".into()).await;

    // Node names are kazoo's: `<32 hex>__lock__<10 digits>`.
    let held = rw.write().await.unwrap();
    let (_kazoo, children) = kazoo.ask(format!("children {path}")).await;
    let (prefix, seq) = children.split_once("__lock__").expect("a __lock__ node");
    assert_eq!(prefix.len(), 32, "{children}");
    assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{children}");
    assert!(
        seq.len() == 10 && seq.bytes().all(|b| b.is_ascii_digit()),
        "{children}"
    );
    held.release().await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_contender_in_an_election_is_seen_and_waited_for() {
    let (endpoints, ns, coord) = on_the_shared_server().await;
    let session = coord.session().await.unwrap();
    let path = format!("/{ns}/quorate/election/scheduler");
    // kazoo's Election runs its `Lock` on the election path, with its
    // identifier as the node's data.
    let kazoo = Kazoo::start(&endpoints);
    let (kazoo, got) = kazoo.ask(format!("acquire lock {path}")).await;
    assert_eq!(got, "true");
    let leader = coord.leader("scheduler").await.unwrap().expect("a leader");
    assert_eq!(leader.value, b"kazoo".to_vec());
    let campaign = tokio::spawn({
        let session = session.clone();
        async move { session.election("scheduler").campaign(b"quorate").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!campaign.is_finished(), "elected while kazoo leads");
    let (_kazoo, _) = kazoo.ask("release".into()).await;
    let leadership = campaign.await.unwrap().unwrap();
    let leader = coord.leader("scheduler").await.unwrap().expect("a leader");
    assert_eq!(leader.value, b"quorate".to_vec());
    assert_eq!(leader.fence, leadership.fence());
    leadership.resign().await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_unavailable_not_a_hang() {
    // Nothing listens on this port: connections are refused.
    let port = harness::free_port().unwrap();
    let url = format!("zookeeper://127.0.0.1:{port}?connect_timeout=1s");
    let r = tokio::time::timeout(Duration::from_secs(30), connect(&url))
        .await
        .expect("connect() hung instead of giving up");
    let e = r.expect_err("connected to nothing");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
}

#[tokio::test]
async fn black_holed_server_is_unavailable_not_a_hang() {
    // A listener that accepts and never answers, like a paused server.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let url = format!("zookeeper://127.0.0.1:{port}?connect_timeout=1s");
    let r = tokio::time::timeout(Duration::from_secs(30), connect(&url))
        .await
        .expect("connect() hung instead of giving up");
    let e = r.expect_err("connected to a black hole");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    drop(hole);
}

#[tokio::test]
async fn bad_urls_are_invalid_config() {
    for url in [
        "zookeeper://",
        "zookeeper://127.0.0.1",
        "zookeeper://127.0.0.1:2181/a/../b",
        "zookeeper://127.0.0.1:2181?namespace=zookeeper",
        "zookeeper://alice@127.0.0.1:2181",
        "zookeeper://127.0.0.1:2181?sesion_timeout=1s",
    ] {
        let e = connect(url).await.expect_err(url);
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_identity_owns_its_nodes() {
    let endpoints = shared_endpoints();
    let ns = fresh_namespace();
    let alice = connect(&format!("zookeeper://alice:secret@{endpoints}/{ns}"))
        .await
        .unwrap();
    let mallory = connect(&format!("zookeeper://alice:guess@{endpoints}/{ns}"))
        .await
        .unwrap();
    let anonymous = connect(&format!("zookeeper://{endpoints}/{ns}"))
        .await
        .unwrap();
    let sa = alice.session().await.unwrap();
    let g = sa.mutex("m").lock().await.unwrap();
    assert!(g.write_if_held("k", b"v").await.unwrap());
    let member = sa
        .group("g")
        .join("a", serde_json::json!({"n": 1}))
        .await
        .unwrap();

    // Another identity can read but not queue, join or write.
    let sm = mallory.session().await.unwrap();
    let e = sm
        .mutex("m")
        .try_lock()
        .await
        .expect_err("queued under alice's lock");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    let e = sm
        .group("g")
        .join("b", serde_json::json!(null))
        .await
        .expect_err("joined alice's group");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(anonymous.read("k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(anonymous.members("g").await.unwrap().len(), 1);

    // The same identity from another client is alice.
    let alice2 = connect(&format!("zookeeper://alice:secret@{endpoints}/{ns}"))
        .await
        .unwrap();
    let s2 = alice2.session().await.unwrap();
    assert!(s2.mutex("m").try_lock().await.unwrap().is_none());
    drop(member);
    g.release().await.unwrap();
    let g2 = s2.mutex("m").lock().await.unwrap();
    g2.release().await.unwrap();
    for s in [sa, sm, s2] {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waiters_leave_nothing_behind() {
    let (_, _, coord) = on_the_shared_server().await;
    let holder = coord.session().await.unwrap();
    let waiters = coord.session().await.unwrap();
    let g = holder.mutex("m").lock().await.unwrap();
    let l = holder.election("e").campaign(b"h").await.unwrap();
    // Drop lock, write and campaign futures at many different points.
    for i in 0..40u64 {
        let cut = Duration::from_micros(i * 150);
        let _ = tokio::time::timeout(cut, waiters.mutex("m").lock()).await;
        let _ = tokio::time::timeout(cut, waiters.rwlock("m").write()).await;
        let _ = tokio::time::timeout(cut, waiters.election("e").campaign(b"w")).await;
        let _ = tokio::time::timeout(cut, waiters.group("g").join("w", serde_json::json!(i))).await;
    }
    g.release().await.unwrap();
    l.resign().await.unwrap();
    // The clean-ups run in the background: wait for them, then nothing of
    // the waiters may remain (and the session itself is still live).
    let mut left = Vec::new();
    for _ in 0..100 {
        left = coord.leftovers().await.unwrap();
        left.retain(|l| !l.starts_with("session/"));
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "dropped waiters left {left:?}");
    // And the lock is really free for the waiting session now.
    let g = waiters.mutex("m").try_lock().await.unwrap();
    assert!(g.is_some(), "a dropped waiter still blocks the lock");
    drop(g);
    holder.close().await.unwrap();
    waiters.close().await.unwrap();
}

/// Every grant's node is watched, by the session's one watch task: after a
/// burst of concurrent grants (and releases, whose deletions end their
/// watches), deleting the remaining grants' nodes from another client (an
/// operator, or a revoke from another process) must tell every holder, and
/// not lose the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grant_of_a_burst_hears_its_node_deleted() {
    use futures::future::join_all;
    use zookeeper_client as zk;
    const LOCKS: usize = 600;
    let (endpoints, ns, coord) = on_the_shared_server().await;
    let session = coord.session().await.unwrap();
    let names: Vec<String> = (0..LOCKS).map(|i| format!("burst-{i}")).collect();
    let mutexes: Vec<_> = names.iter().map(|n| session.mutex(n)).collect();
    let guards: Vec<_> = join_all(mutexes.iter().map(|m| m.lock()))
        .await
        .into_iter()
        .map(|g| g.unwrap())
        .collect();
    // Half are released (their watches end with the release's deletion).
    let mut guards = guards;
    let kept = guards.split_off(LOCKS / 2);
    for g in guards {
        g.release().await.unwrap();
    }
    assert!(
        kept.iter().all(|g| !g.is_lost()),
        "a held grant is already lost"
    );
    let raw = zk::Client::connect(&endpoints).await.unwrap();
    for name in &names[LOCKS / 2..] {
        let dir = format!("/{ns}/quorate/lock/{name}");
        for child in raw.list_children(&dir).await.unwrap() {
            raw.delete(&format!("{dir}/{child}"), None).await.unwrap();
        }
    }
    for (i, g) in kept.iter().enumerate() {
        let reason = tokio::time::timeout(Duration::from_secs(20), g.lost())
            .await
            .unwrap_or_else(|_| panic!("grant {i} did not hear its node deleted"));
        assert!(
            reason.to_string().contains("deleted"),
            "grant {i} lost for another reason: {reason}"
        );
    }
    assert!(!session.is_lost(), "deleting lock nodes lost the session");
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_outage_past_the_timeout_loses_the_session_first() {
    let mut cluster = tokio::task::spawn_blocking(|| ZkCluster::start(1))
        .await
        .unwrap()
        .expect("starting a ZooKeeper server");
    let endpoints = cluster.endpoints();
    let ns = fresh_namespace();
    let url = format!("zookeeper://{endpoints}/{ns}?session_timeout=2s&connect_timeout=2s");
    let coord = connect(&url).await.unwrap();
    let session = coord.session().await.unwrap();
    let g = session.mutex("m").lock().await.unwrap();
    // A disconnection (SUSPENDED) alone is not a loss…
    cluster.pause(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!g.is_lost(), "a short outage already lost the lock");
    // …but one that may have let the server expire the session is.
    let reason = tokio::time::timeout(Duration::from_secs(20), g.lost())
        .await
        .expect("the lock was not reported lost during a long outage");
    assert!(session.is_lost(), "the guard is lost but not its session");
    cluster.resume(0);
    // After the outage the lock is free for others.
    let other = connect(&url).await.unwrap();
    let so = other.session().await.unwrap();
    let g2 = tokio::time::timeout(Duration::from_secs(20), so.mutex("m").lock())
        .await
        .unwrap_or_else(|_| panic!("the lost holder ({reason}) still holds the lock"))
        .unwrap();
    assert!(g2.fence() > g.fence());
    g2.release().await.unwrap();
    so.close().await.unwrap();
    cluster.kill(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_survives_an_ensemble_leader_failover() {
    let mut cluster = tokio::task::spawn_blocking(|| ZkCluster::start(3))
        .await
        .unwrap()
        .expect("starting a three-server ZooKeeper ensemble");
    let ns = fresh_namespace();
    let url = format!(
        "zookeeper://{}/{ns}?session_timeout=6s&connect_timeout=10s",
        cluster.endpoints()
    );
    let coord = connect(&url).await.unwrap();
    let holder = coord.session().await.unwrap();
    let other = coord.session().await.unwrap();
    let g = holder.mutex("m").lock().await.unwrap();
    let leader = cluster.leader().expect("the ensemble has a leader");
    cluster.kill(leader);
    // The ensemble elects a new leader; the session and its lock survive.
    let held = async {
        loop {
            match g.is_held().await {
                Ok(h) => return h,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("is_held after failover: {e}"),
            }
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("no answer after the failover"),
        "the lock was lost in the failover"
    );
    assert!(!g.is_lost() && !holder.is_lost());
    assert!(other.mutex("m").try_lock().await.unwrap().is_none());
    let fence = g.fence();
    g.release().await.unwrap();
    let g2 = other.mutex("m").lock().await.unwrap();
    assert!(g2.fence() > fence);
    g2.release().await.unwrap();
    holder.close().await.unwrap();
    other.close().await.unwrap();
}

/// The next group event, failing the test after 30 s.
async fn next(
    events: &mut futures::stream::BoxStream<
        'static,
        quorate_core::Result<quorate_core::GroupEvent>,
    >,
) -> quorate_core::GroupEvent {
    use futures::StreamExt;
    tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("no group event")
        .expect("the stream ended")
        .expect("a group error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_watch_misses_no_change_across_a_reconnection() {
    use quorate_core::GroupEvent;

    let mut cluster = tokio::task::spawn_blocking(|| ZkCluster::start(3))
        .await
        .unwrap()
        .expect("starting a three-server ZooKeeper ensemble");
    let ns = fresh_namespace();
    let opts = "session_timeout=20s&connect_timeout=10s";
    // The watcher talks to server 0 only; the members to servers 1 and 2.
    let watcher = connect(&format!("zookeeper://{}/{ns}?{opts}", cluster.endpoint(0)))
        .await
        .unwrap();
    let members = connect(&format!(
        "zookeeper://{},{}/{ns}?{opts}",
        cluster.endpoint(1),
        cluster.endpoint(2)
    ))
    .await
    .unwrap();
    let session = members.session().await.unwrap();
    let mut events = watcher.watch_group("g");
    assert_eq!(
        next(&mut events).await,
        GroupEvent::Snapshot { members: vec![] }
    );
    let a = session
        .group("g")
        .join("a", serde_json::json!(1))
        .await
        .unwrap();
    assert!(matches!(next(&mut events).await, GroupEvent::Joined { member } if member.id == "a"));

    // While the watcher's server is down: b joins, a changes, c joins and
    // leaves again.
    cluster.kill(0);
    let b = session
        .group("g")
        .join("b", serde_json::json!(2))
        .await
        .unwrap();
    a.update(serde_json::json!(10)).await.unwrap();
    let c = session
        .group("g")
        .join("c", serde_json::json!(3))
        .await
        .unwrap();
    c.leave().await.unwrap();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart(0).expect("restarting server 0");
        cluster
    })
    .await
    .unwrap();
    // After the reconnection: exactly the net changes, in id order.
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next(&mut events).await);
    }
    assert_eq!(
        seen,
        vec![
            GroupEvent::Updated {
                member: quorate_core::Member {
                    id: "a".into(),
                    capabilities: serde_json::json!(10)
                }
            },
            GroupEvent::Joined {
                member: quorate_core::Member {
                    id: "b".into(),
                    capabilities: serde_json::json!(2)
                }
            },
        ]
    );
    // And it keeps following.
    b.leave().await.unwrap();
    assert_eq!(next(&mut events).await, GroupEvent::Left { id: "b".into() });
    drop(a);
    session.close().await.unwrap();
    drop(cluster);
}

/// The helper process of `a_waiter_paused_past_its_session_is_not_granted`:
/// waits for lock `late` on `QUORATE_ZK_AGENT_URL` and prints `LOCKED
/// <fence>` or `ERROR <kind>`. Does nothing without that variable.
#[tokio::test]
#[ignore = "helper process of a_waiter_paused_past_its_session_is_not_granted"]
async fn agent_wait_for_lock() {
    let Ok(url) = std::env::var("QUORATE_ZK_AGENT_URL") else {
        return;
    };
    let coord = connect(&url).await.unwrap();
    let s = coord.session().await.unwrap();
    match s.mutex("late").lock().await {
        Ok(g) => println!("LOCKED {}", g.fence()),
        Err(e) => println!("ERROR {:?}", e.kind()),
    }
    std::io::stdout().flush().unwrap();
}

/// Wait until lock `name` has `n` nodes (holders and waiters), at most 20 s.
async fn until_entries(coord: &Coordinator, name: &str, n: usize, what: &str) {
    for _ in 0..1000 {
        let locks = coord.locks(name).await.unwrap();
        let entries: usize = locks
            .iter()
            .map(|l| l.holders.len() + l.waiters.len())
            .sum();
        if entries == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 20 s: {what}");
}

/// The fault the zookeeper-3 nemesis once hit as a non-monotonic fence: a
/// waiter whose only predecessor is deleted while its process is stopped
/// (the `NodeDeleted` waits in its socket), stopped past its session
/// timeout, while another session is granted the lock and releases it. On
/// resume the waiter must not be granted: its node is gone, and its fence
/// (its node's czxid) is lower than the one granted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_paused_past_its_session_is_not_granted() {
    let endpoints = shared_endpoints();
    let ns = fresh_namespace();
    let url = format!("zookeeper://{endpoints}/{ns}?session_timeout=2s");
    let coord = connect(&url).await.unwrap();
    let holder = coord.session().await.unwrap();
    let g = holder.mutex("late").lock().await.unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["agent_wait_for_lock", "--exact", "--ignored", "--nocapture"])
        .env("QUORATE_ZK_AGENT_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_entries(&coord, "late", 2, "the helper queued").await;
    // Let the waiter set its watch on the holder's node.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id() as i32;
    // SAFETY: a plain signal to our own child, by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped_fence = g.fence();
    g.release().await.unwrap();
    // The stopped waiter's session expires: its node goes.
    until_entries(&coord, "late", 0, "the stopped waiter's node went").await;
    let other = coord.session().await.unwrap();
    let g2 = other.mutex("late").lock().await.unwrap();
    let granted_meanwhile = g2.fence();
    assert!(granted_meanwhile > stopped_fence);
    g2.release().await.unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while !line.starts_with("LOCKED") && !line.starts_with("ERROR") {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                break;
            }
        }
        line
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("ERROR Lost"),
        "the waiter stopped past its session answered `{}` (fence granted meanwhile: {granted_meanwhile})",
        line.trim()
    );
    holder.close().await.unwrap();
    other.close().await.unwrap();
}
