//! Integration tests of quorate-redis against real `redis-server`
//! processes started by the harness (one per test, on a free port).

#[path = "../../../conformance-tests/src/harness/redis.rs"]
mod harness;
// The harness module's own `super::faketime`.
#[path = "../../../conformance-tests/src/harness/faketime.rs"]
mod faketime;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use harness::{AclUser, RedisOptions, RedisServer};
use quorate_core::{Config, Coordinator, ErrorKind, GroupEvent, KeepAlive, SessionOptions};

/// A bound on waits that must finish (liveness, not speed).
const LIVENESS: Duration = Duration::from_secs(20);

static NS: AtomicU64 = AtomicU64::new(0);

fn namespace() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        NS.fetch_add(1, Ordering::Relaxed)
    )
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A started server and a coordinator on a fresh namespace.
struct Env {
    server: RedisServer,
    ns: String,
    url: String,
}

impl Env {
    fn start(ttl: &str) -> Env {
        Self::start_with(RedisOptions::default(), ttl)
    }

    fn start_with(options: RedisOptions, ttl: &str) -> Env {
        init_tracing();
        let server = RedisServer::start_with(options).expect("start redis-server");
        let ns = namespace();
        let url = format!("{}?ttl={ttl}&namespace={ns}", server.url());
        Env { server, ns, url }
    }

    async fn coord(&self) -> Coordinator {
        quorate_redis::connect(&Config::parse(&self.url).unwrap())
            .await
            .expect("connect")
    }

    /// A plain redis connection for looking at keys.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{}", self.ns, quorate_core::name::encode(name))
    }
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIVENESS, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIVENESS:?}"))
}

async fn zcard(env: &Env, key: &str) -> i64 {
    let mut raw = env.raw().await;
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap()
}

/// Wait until the queue `key` has `n` entries (the waiters are enqueued).
async fn until_queued(env: &Env, key: &str, n: i64) {
    within("enqueue", async {
        while zcard(env, key).await != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_excludes_and_fences_increase() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let g1 = s1.mutex("jobs/nightly").lock().await.unwrap();
    assert!(g1.is_held().await.unwrap());
    assert!(s2.mutex("jobs/nightly").try_lock().await.unwrap().is_none());
    // One name, one lock: the mutex is the rwlock's write side.
    assert!(s2
        .rwlock("jobs/nightly")
        .try_write()
        .await
        .unwrap()
        .is_none());
    assert!(s2
        .rwlock("jobs/nightly")
        .try_read()
        .await
        .unwrap()
        .is_none());
    // The lock key is the plain token string with a TTL (redis-py layout).
    let mut raw = env.raw().await;
    let key = env.key("lock", "jobs/nightly");
    let holder: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        holder.starts_with(&format!("quorate:{}:", s1.id())),
        "{holder}"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 5000, "{pttl}");
    let f1 = g1.fence();
    g1.release().await.unwrap();
    let g2 = s2.mutex("jobs/nightly").try_lock().await.unwrap().unwrap();
    assert!(g2.fence() > f1);
    g2.release().await.unwrap();
    let g3 = s1.mutex("jobs/nightly").lock().await.unwrap();
    assert!(g3.fence() > f1);
    drop(g3);
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
    // Fence counters are documented persistent state, not leftovers.
    let exists: i64 = redis::cmd("EXISTS")
        .arg(env.key("fence", "jobs/nightly"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_waiters_are_granted_in_fifo_order() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let holder = coord.session().await.unwrap();
    let g = holder.mutex("m").lock().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let s = coord.session().await.unwrap();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let g = s.mutex("m").lock().await.unwrap();
            tx.send((i, g.fence())).unwrap();
            g.release().await.unwrap();
            s.close().await.unwrap();
        }));
        until_queued(&env, &env.key("queue", "m"), i + 1).await;
    }
    g.release().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(within("grant", rx.recv()).await.unwrap());
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        order.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(order.windows(2).all(|w| w[0].1 < w[1].1), "{order:?}");
    holder.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_timed_out_waiters_leave_the_queue() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let (s1, s2, s3) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let g = s1.mutex("m").lock().await.unwrap();
    let queue = env.key("queue", "m");

    // A waiter whose future is dropped leaves the queue.
    let waiter = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("m").lock().await }
    });
    until_queued(&env, &queue, 1).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    until_queued(&env, &queue, 0).await;

    // A waiter that times out leaves it too, and the one behind moves up.
    let behind = tokio::spawn({
        let s3 = s3.clone();
        async move { s3.mutex("m").lock().await.map(|g| g.fence()) }
    });
    until_queued(&env, &queue, 1).await;
    let timed_out = s2.mutex("m").lock_timeout(Duration::from_millis(200)).await;
    assert_eq!(timed_out.unwrap_err().kind(), ErrorKind::Timeout);
    until_queued(&env, &queue, 1).await;
    g.release().await.unwrap();
    let fence = within("grant", behind).await.unwrap().unwrap();
    assert!(fence.get() >= 2);
    for s in [s1, s2, s3] {
        s.close().await.unwrap();
    }
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_readers_share_and_a_waiting_writer_blocks_later_readers() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let sessions: Vec<_> = futures::future::join_all((0..4).map(|_| coord.session()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let r1 = sessions[0].rwlock("cfg").read().await.unwrap();
    let r2 = sessions[1].rwlock("cfg").read().await.unwrap();
    assert!(sessions[2]
        .rwlock("cfg")
        .try_write()
        .await
        .unwrap()
        .is_none());
    // One name, one lock: waiting readers and writers share the mutex's
    // queue (granted entries leave it).
    let queue = env.key("queue", "cfg");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn({
        let s = sessions[2].clone();
        let tx = tx.clone();
        async move {
            let w = s.rwlock("cfg").write().await.unwrap();
            tx.send("writer").unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            w.release().await.unwrap();
        }
    });
    until_queued(&env, &queue, 1).await;
    // A reader arriving after the waiting writer must wait behind it.
    assert!(sessions[3]
        .rwlock("cfg")
        .try_read()
        .await
        .unwrap()
        .is_none());
    let late_reader = tokio::spawn({
        let s = sessions[3].clone();
        async move {
            let r = s.rwlock("cfg").read().await.unwrap();
            tx.send("late reader").unwrap();
            r.release().await.unwrap();
        }
    });
    until_queued(&env, &queue, 2).await;
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let first = within("writer", rx.recv()).await.unwrap();
    let second = within("reader", rx.recv()).await.unwrap();
    assert_eq!((first, second), ("writer", "late reader"));
    writer.await.unwrap();
    late_reader.await.unwrap();
    for s in sessions {
        s.close().await.unwrap();
    }
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_writer_lets_readers_behind_it_proceed() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let (s1, s2, s3) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let r1 = s1.rwlock("x").read().await.unwrap();
    let queue = env.key("queue", "x");
    let writer = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.rwlock("x").write().await.map(drop) }
    });
    until_queued(&env, &queue, 1).await;
    let reader = tokio::spawn({
        let s3 = s3.clone();
        async move { s3.rwlock("x").read().await.map(|g| g.fence()) }
    });
    until_queued(&env, &queue, 2).await;
    writer.abort();
    // The reader behind the dropped writer is granted while r1 still holds.
    let fence = within("reader", reader).await.unwrap().unwrap();
    assert!(fence > r1.fence());
    r1.release().await.unwrap();
    for s in [s1, s2, s3] {
        s.close().await.unwrap();
    }
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_writes_apply_only_while_held() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let g = s.mutex("cfg-lock").lock().await.unwrap();
    assert!(g.write_if_held("config", b"v1").await.unwrap());
    assert_eq!(s.read("config").await.unwrap().as_deref(), Some(&b"v1"[..]));
    // Someone deletes the lock key: the write must not apply.
    let mut raw = env.raw().await;
    let _: i64 = redis::cmd("DEL")
        .arg(env.key("lock", "cfg-lock"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!g.write_if_held("config", b"v2").await.unwrap());
    assert!(g.is_lost());
    assert_eq!(s.read("config").await.unwrap().as_deref(), Some(&b"v1"[..]));
    g.release().await.unwrap();
    let g = s.mutex("cfg-lock").lock().await.unwrap();
    assert!(g.write_and_release("config", b"v3").await.unwrap());
    assert_eq!(s.read("config").await.unwrap().as_deref(), Some(&b"v3"[..]));
    let w = s.rwlock("rw").write().await.unwrap();
    assert!(w.write_and_release("rwdata", b"w").await.unwrap());
    assert_eq!(s.read("rwdata").await.unwrap().as_deref(), Some(&b"w"[..]));
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_watch_starts_with_a_snapshot_then_every_change() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let a = s1
        .group("workers")
        .join("node-a", serde_json::json!({"cpu": 4}))
        .await
        .unwrap();
    let mut watch = coord.watch_group("workers");
    let snapshot = within("snapshot", watch.next()).await.unwrap().unwrap();
    assert_eq!(
        snapshot,
        GroupEvent::Snapshot {
            members: vec![quorate_core::Member {
                id: "node-a".into(),
                capabilities: serde_json::json!({"cpu": 4})
            }]
        }
    );
    let err = s2
        .group("workers")
        .join("node-a", serde_json::json!(null))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyHeld);
    let b = s2
        .group("workers")
        .join("node/b", serde_json::json!("x"))
        .await
        .unwrap();
    a.update(serde_json::json!({"cpu": 8})).await.unwrap();
    a.leave().await.unwrap();
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(within("event", watch.next()).await.unwrap().unwrap());
    }
    assert_eq!(
        events,
        vec![
            GroupEvent::Joined {
                member: quorate_core::Member {
                    id: "node/b".into(),
                    capabilities: serde_json::json!("x")
                }
            },
            GroupEvent::Updated {
                member: quorate_core::Member {
                    id: "node-a".into(),
                    capabilities: serde_json::json!({"cpu": 8})
                }
            },
            GroupEvent::Left {
                id: "node-a".into()
            },
        ]
    );
    assert_eq!(
        coord
            .members("workers")
            .await
            .unwrap()
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        vec!["node/b"]
    );
    // Closing a session removes its members, and watchers hear it.
    drop(b);
    s2.close().await.unwrap();
    let left = within("left", watch.next()).await.unwrap().unwrap();
    assert_eq!(
        left,
        GroupEvent::Left {
            id: "node/b".into()
        }
    );
    s1.close().await.unwrap();
    drop(watch);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_a_dead_session_is_swept_and_watchers_hear_it() {
    let env = Env::start("1s");
    let coord = env.coord().await;
    let dying = coord
        .session_with(SessionOptions {
            ttl: Some(Duration::from_millis(600)),
            keep_alive: KeepAlive::Manual,
        })
        .await
        .unwrap();
    let m = dying
        .group("g")
        .join("ghost", serde_json::json!(1))
        .await
        .unwrap();
    let mut watch = coord.watch_group("g");
    let snapshot = within("snapshot", watch.next()).await.unwrap().unwrap();
    assert!(matches!(snapshot, GroupEvent::Snapshot { ref members } if members.len() == 1));
    // No keep-alive: the session and its member key expire on the server,
    // nobody publishes; the watcher's fallback re-list sweeps the member.
    let started = Instant::now();
    let left = within("sweep", watch.next()).await.unwrap().unwrap();
    assert_eq!(left, GroupEvent::Left { id: "ghost".into() });
    eprintln!(
        "figure: dead member reported left after {:?} (ttl 600ms)",
        started.elapsed()
    );
    assert!(!within("lost", m.lost()).await.to_string().is_empty());
    assert!(coord.members("g").await.unwrap().is_empty());
    drop(watch);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_observe_proclaim_resign() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let mut observe = coord.observe("sched");
    assert_eq!(
        within("first", observe.next()).await.unwrap().unwrap(),
        None
    );
    let l1 = s1.election("sched").campaign(b"node-a").await.unwrap();
    let seen = within("leader", observe.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.fence),
        (&b"node-a"[..], l1.fence())
    );
    let second = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.election("sched").campaign(b"node-b").await }
    });
    until_queued(&env, &env.key("equeue", "sched"), 1).await;
    l1.proclaim(b"node-a v2").await.unwrap();
    let seen = within("proclaim", observe.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, b"node-a v2");
    assert_eq!(
        coord.leader("sched").await.unwrap().unwrap().value,
        b"node-a v2"
    );
    let f1 = l1.fence();
    l1.resign().await.unwrap();
    let l2 = within("second", second).await.unwrap().unwrap();
    assert!(l2.fence() > f1);
    assert!(l2.is_leader().await.unwrap());
    // The observer may see "no leader" between the two; never a stale one.
    loop {
        match within("handover", observe.next()).await.unwrap().unwrap() {
            None => continue,
            Some(l) => {
                assert_eq!((l.value.as_slice(), l.fence), (&b"node-b"[..], l2.fence()));
                break;
            }
        }
    }
    l2.resign().await.unwrap();
    assert_eq!(within("none", observe.next()).await.unwrap().unwrap(), None);
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    drop(observe);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_session_is_lost_and_its_locks_free() {
    let env = Env::start("5s");
    let (c1, c2) = (env.coord().await, env.coord().await);
    let s1 = c1.session().await.unwrap();
    let g = s1.mutex("m").lock().await.unwrap();
    let r = s1.rwlock("rw").write().await.unwrap();
    let s2 = c2.session().await.unwrap();
    let waiter = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("m").lock().await.map(|g| g.fence()) }
    });
    until_queued(&env, &env.key("queue", "m"), 1).await;
    c2.revoke_session(s1.id()).await.unwrap();
    within("session lost", s1.lost()).await;
    within("guard lost", g.lost()).await;
    within("rw guard lost", r.lost()).await;
    assert!(!g.is_held().await.unwrap());
    let fence = within("waiter", waiter).await.unwrap().unwrap();
    assert!(fence > g.fence());
    assert!(s2.rwlock("rw").try_write().await.unwrap().is_some());
    assert_eq!(
        c2.revoke_session(s1.id()).await.unwrap_err().kind(),
        ErrorKind::NotHeld
    );
    assert_eq!(
        c2.revoke_session("not/a/session").await.unwrap_err().kind(),
        ErrorKind::InvalidName
    );
    drop((g, r));
    s2.close().await.unwrap();
    assert_eq!(c1.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reports_a_lock_whose_key_was_taken() {
    let env = Env::start("900ms");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let kept = s.mutex("kept").lock().await.unwrap();
    let g = s.mutex("stolen").lock().await.unwrap();
    let mut raw = env.raw().await;
    let _: () = redis::cmd("SET")
        .arg(env.key("lock", "stolen"))
        .arg("someone-else")
        .query_async(&mut raw)
        .await
        .unwrap();
    let reason = within("lost", g.lost()).await;
    assert!(reason.to_string().contains("no longer holds"), "{reason}");
    // The other lock of the session is kept alive past its TTL.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(kept.is_held().await.unwrap());
    assert!(!s.is_lost());
    let _: i64 = redis::cmd("DEL")
        .arg(env.key("lock", "stolen"))
        .query_async(&mut raw)
        .await
        .unwrap();
    drop((g, kept));
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// More held keys than one keep-alive batch (256): the keep-alive visits
/// them all over several scripts, keeps every one alive past the TTL, and
/// still reports the one whose key was taken, wherever it falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_in_batches_keeps_every_held_key_and_reports_a_taken_one() {
    let env = Env::start("1500ms");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let mut guards = Vec::new();
    for i in 0..700 {
        guards.push(s.mutex(&format!("many-{i}")).lock().await.unwrap());
    }
    let mut raw = env.raw().await;
    let _: () = redis::cmd("SET")
        .arg(env.key("lock", "many-613"))
        .arg("someone-else")
        .query_async(&mut raw)
        .await
        .unwrap();
    let reason = within("lost", guards[613].lost()).await;
    assert!(reason.to_string().contains("no longer holds"), "{reason}");
    // Twice the TTL later every other key still holds the session's token
    // and a TTL no longer than the session's.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(!s.is_lost());
    for (i, g) in guards.iter().enumerate() {
        if i == 613 {
            continue;
        }
        let pttl: i64 = redis::cmd("PTTL")
            .arg(env.key("lock", &format!("many-{i}")))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= 1500, "many-{i}: PTTL {pttl}");
        assert!(g.lost().now_or_never().is_none(), "many-{i} reported lost");
    }
    let _: i64 = redis::cmd("DEL")
        .arg(env.key("lock", "many-613"))
        .query_async(&mut raw)
        .await
        .unwrap();
    drop(guards);
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// A redis-py `Lock` driven over stdin/stdout.
struct PyLock {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

const PY_AGENT: &str = r#"
import sys, redis
url, key = sys.argv[1], sys.argv[2]
r = redis.Redis.from_url(url)
lock = r.lock(key, timeout=30)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "try":
        print("acquired" if lock.acquire(blocking=False) else "busy", flush=True)
    elif cmd == "release":
        lock.release()
        print("released", flush=True)
    elif cmd == "quit":
        break
"#;

impl PyLock {
    fn start(url: &str, key: &str) -> PyLock {
        Self::run(PY_AGENT, &[url, key])
    }

    /// Run a python `script` with redis-py and `args`.
    fn run(script: &str, args: &[&str]) -> PyLock {
        let mut child = Command::new("/opt/quorate-venv/bin/python")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python with redis-py");
        let out = BufReader::new(child.stdout.take().unwrap());
        PyLock { child, out }
    }

    fn call(&mut self, cmd: &str) -> String {
        writeln!(self.child.stdin.as_mut().unwrap(), "{cmd}").unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for PyLock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_and_quorate_readers_exclude_each_other() {
    let env = Env::start("2s");
    let coord = env.coord().await;
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let key = env.key("lock", "shared/job");
    let mut py = tokio::task::block_in_place(|| PyLock::start(&env.server.url(), &key));

    // redis-py holds: quorate readers and writers are kept out; a reader
    // waits.
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "acquired");
    assert!(s1.rwlock("shared/job").try_read().await.unwrap().is_none());
    assert!(s1.rwlock("shared/job").try_write().await.unwrap().is_none());
    let reader = tokio::spawn({
        let s1 = s1.clone();
        async move { s1.rwlock("shared/job").read().await }
    });
    until_queued(&env, &env.key("queue", "shared/job"), 1).await;
    assert_eq!(
        tokio::task::block_in_place(|| py.call("release")),
        "released"
    );
    let r1 = within("quorate reader after redis-py", reader)
        .await
        .unwrap()
        .unwrap();

    // quorate readers hold (two of them share): redis-py cannot lock.
    let r2 = s2
        .rwlock("shared/job")
        .try_read()
        .await
        .unwrap()
        .expect("readers share");
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "busy");
    assert!(r2.fence() > r1.fence());
    r1.release().await.unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| py.call("try")),
        "busy",
        "redis-py locked while a quorate reader still held"
    );
    r2.release().await.unwrap();
    // The last reader gone, the key is free again.
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "acquired");
    assert_eq!(
        tokio::task::block_in_place(|| py.call("release")),
        "released"
    );
    tokio::task::block_in_place(|| py.call("quit"));
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_keep_the_shared_mark_alive_past_the_ttl() {
    let env = Env::start("1s");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let r = s.rwlock("kept").read().await.unwrap();
    // Three TTLs: only the session's keep-alives keep the mark.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(r.is_held().await.unwrap());
    let mut raw = env.raw().await;
    let key = env.key("lock", "kept");
    let mark: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(mark, "quorate:shared");
    let mut py = tokio::task::block_in_place(|| PyLock::start(&env.server.url(), &key));
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "busy");
    assert!(r.write_if_held("kept-value", b"v").await.unwrap());
    r.release().await.unwrap();
    let gone: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(gone, None, "the last reader leaves no mark behind");
    tokio::task::block_in_place(|| py.call("quit"));
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_and_quorate_exclude_each_other() {
    let env = Env::start("2s");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let key = env.key("lock", "shared/job");
    let mut py = tokio::task::block_in_place(|| PyLock::start(&env.server.url(), &key));

    // redis-py holds: quorate cannot take it, and waits.
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "acquired");
    assert!(s.mutex("shared/job").try_lock().await.unwrap().is_none());
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { s.mutex("shared/job").lock().await }
    });
    until_queued(&env, &env.key("queue", "shared/job"), 1).await;
    let released_at = Instant::now();
    assert_eq!(
        tokio::task::block_in_place(|| py.call("release")),
        "released"
    );
    // redis-py publishes nothing: the waiter's bounded re-check finds it free.
    let g = within("quorate after redis-py", waiter)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "figure: quorate waiter took a lock released by redis-py after {:?} (ttl 2s, re-check <= ttl/2)",
        released_at.elapsed()
    );

    // quorate holds: redis-py cannot take it.
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "busy");
    g.release().await.unwrap();
    assert_eq!(tokio::task::block_in_place(|| py.call("try")), "acquired");
    assert_eq!(
        tokio::task::block_in_place(|| py.call("release")),
        "released"
    );
    tokio::task::block_in_place(|| py.call("quit"));
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_password_is_unauthenticated() {
    let env = Env::start_with(
        RedisOptions {
            acl_user: Some(AclUser {
                name: "quorate".into(),
                password: "right-pass".into(),
            }),
            ..RedisOptions::default()
        },
        "2s",
    );
    let port = env.server.port();
    // The right credentials work, and a lock round trip succeeds.
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    s.mutex("m").lock().await.unwrap().release().await.unwrap();
    s.close().await.unwrap();
    for url in [
        format!("redis://quorate:wrong-pass@127.0.0.1:{port}"),
        format!("redis://nobody:right-pass@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let err = quorate_redis::connect(&Config::parse(&url).unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{url}: {err}");
        assert!(!err.to_string().contains("wrong-pass"), "{err}");
        assert!(!err.to_string().contains("right-pass"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_or_silent_server_is_unavailable_within_the_connect_timeout() {
    // Nothing listens on a port that was just free: refused at once.
    let port = harness::free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}?connect_timeout=1s");
    let err = within(
        "connect",
        quorate_redis::connect(&Config::parse(&url).unwrap()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");

    // A paused server accepts the TCP connection but never answers.
    let env = Env::start("2s");
    env.server.pause();
    let url = format!("{}?connect_timeout=500ms", env.server.url());
    let started = Instant::now();
    let err = within(
        "connect",
        quorate_redis::connect(&Config::parse(&url).unwrap()),
    )
    .await
    .unwrap_err();
    env.server.resume();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    eprintln!(
        "figure: paused server reported unavailable after {:?} (connect_timeout 500ms)",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_persistence_loses_the_lock_and_says_so() {
    let mut env = Env::start("1s");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let g = s.mutex("m").lock().await.unwrap();
    tokio::task::block_in_place(|| env.server.restart()).unwrap();
    let started = Instant::now();
    let reason = within("lost", g.lost()).await;
    eprintln!(
        "figure: lock reported lost {:?} after the restart ({reason})",
        started.elapsed()
    );
    assert!(s.is_lost());
    // The coordinator reconnects: a new session can take the lock.
    let s2 = within("new session", async {
        loop {
            match coord.session().await {
                Ok(s) => break s,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let g2 = s2.mutex("m").lock().await.unwrap();
    // The fence counter was lost with the data, but tokens are floored at
    // the server clock: they still increase.
    assert!(g2.fence() > g.fence(), "{} then {}", g.fence(), g2.fence());
    g2.release().await.unwrap();
    s2.close().await.unwrap();
    drop(g);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// Not a test: the lock-holding child process of
/// `killed_holder_is_released_after_the_ttl`, run by it with
/// `QUORATE_REDIS_AGENT_URL` set. Does nothing otherwise.
#[tokio::test]
#[ignore = "helper process of killed_holder_is_released_after_the_ttl"]
async fn agent_hold_lock_until_killed() {
    let Ok(url) = std::env::var("QUORATE_REDIS_AGENT_URL") else {
        return;
    };
    let coord = quorate_redis::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s = coord.session().await.unwrap();
    let g = s.mutex("crash").lock().await.unwrap();
    println!("LOCKED {}", g.fence());
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_is_released_after_the_ttl() {
    let env = Env::start("1s");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "agent_hold_lock_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("QUORATE_REDIS_AGENT_URL", &env.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let agent_fence: u64 = tokio::task::block_in_place(|| loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "agent ended early");
        if let Some(f) = line.trim().strip_prefix("LOCKED ") {
            break f.parse().unwrap();
        }
    });
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    assert!(s.mutex("crash").try_lock().await.unwrap().is_none());
    child.kill().unwrap();
    let killed_at = Instant::now();
    child.wait().unwrap();
    let g = within("takeover", s.mutex("crash").lock()).await.unwrap();
    let waited = killed_at.elapsed();
    assert!(g.fence().get() > agent_fence);
    eprintln!("figure: lock of a SIGKILLed holder acquired {waited:?} after the kill (ttl 1s)");
    g.release().await.unwrap();
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_locks_share_one_keep_alive() {
    // Counted, not timed: with keep-alive driven by hand, each keep-alive
    // of a session holding 200 locks is a fixed number of scripts,
    // whatever the number of locks (not one per lock).
    const KEEP_ALIVES: u64 = 5;
    let env = Env::start("10s");
    let coord = env.coord().await;
    let s = coord
        .session_with(SessionOptions {
            ttl: None,
            keep_alive: KeepAlive::Manual,
        })
        .await
        .unwrap();
    let mut guards = Vec::new();
    for i in 0..200 {
        guards.push(s.mutex(&format!("l{i}")).lock().await.unwrap());
    }
    let mut raw = env.raw().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .unwrap();
    for _ in 0..KEEP_ALIVES {
        s.keep_alive().await.unwrap();
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let scripts = calls("evalsha") + calls("eval") + calls("fcall");
    eprintln!("figure: {scripts} script calls for {KEEP_ALIVES} keep-alives of a session holding 200 locks");
    // At most a couple of scripts per keep-alive; one per lock would be
    // 200 per keep-alive.
    assert!(scripts <= 2 * KEEP_ALIVES, "{stats}");
    for g in &guards {
        assert!(g.is_held().await.unwrap());
    }
    drop(guards);
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// Kill the coordinator's pub/sub connection (as a network blip would).
async fn kill_pubsub_connections(env: &Env) {
    let killed = kill_pubsub(&mut env.raw().await).await;
    assert!(killed >= 1, "no pub/sub connection to kill");
}

/// Kill every pub/sub connection of the server; how many there were.
async fn kill_pubsub(raw: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(raw)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_is_woken_after_its_pubsub_connection_drops() {
    // A TTL so long that the fallback re-check (TTL/2) cannot be what wakes
    // the waiter within the liveness bound.
    let env = Env::start("60s");
    let coord = env.coord().await;
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let g = s1.mutex("m").lock().await.unwrap();
    let waiter = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("m").lock().await }
    });
    until_queued(&env, &env.key("queue", "m"), 1).await;
    kill_pubsub_connections(&env).await;
    g.release().await.unwrap();
    let g2 = within("woken after reconnect", waiter)
        .await
        .unwrap()
        .unwrap();
    g2.release().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// A watcher of the group `g` on one coordinator, past its (empty)
/// snapshot, and a session on another coordinator to change the group with
/// (kept alive by the second coordinator returned).
async fn watched_empty_group(
    env: &Env,
) -> (
    Coordinator,
    Coordinator,
    quorate_core::Session,
    futures::stream::BoxStream<'static, quorate_core::Result<GroupEvent>>,
) {
    let coord = env.coord().await;
    let other = env.coord().await;
    let s = other.session().await.unwrap();
    let mut watch = coord.watch_group("g");
    assert_eq!(
        within("snapshot", watch.next()).await.unwrap().unwrap(),
        GroupEvent::Snapshot { members: vec![] }
    );
    (coord, other, s, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_watch_relists_after_its_pubsub_connection_drops() {
    let env = Env::start("60s");
    let (coord, _other, s, mut watch) = watched_empty_group(&env).await;
    // Changes made while the watcher's subscription is down are published
    // to nobody; the watcher must still report each exactly once.
    kill_pubsub_connections(&env).await;
    let a = s.group("g").join("a", serde_json::json!(1)).await.unwrap();
    let b = s.group("g").join("b", serde_json::json!(2)).await.unwrap();
    a.leave().await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = within("event", watch.next()).await.unwrap().unwrap();
        seen.push(e);
        // Once b is in and a is out, nothing else may follow.
        let has_b = seen
            .iter()
            .any(|e| matches!(e, GroupEvent::Joined { member } if member.id == "b"));
        let a_net: i32 = seen
            .iter()
            .map(|e| match e {
                GroupEvent::Joined { member } if member.id == "a" => 1,
                GroupEvent::Left { id } if id == "a" => -1,
                _ => 0,
            })
            .sum();
        if has_b && a_net == 0 && seen.len() < 3 {
            break;
        }
    }
    // Either the three events (the subscription came back first) or the
    // difference (a never seen): b joined, a is not a member.
    let expected_full = vec![
        GroupEvent::Joined {
            member: quorate_core::Member {
                id: "a".into(),
                capabilities: serde_json::json!(1),
            },
        },
        GroupEvent::Joined {
            member: quorate_core::Member {
                id: "b".into(),
                capabilities: serde_json::json!(2),
            },
        },
        GroupEvent::Left { id: "a".into() },
    ];
    let expected_diff = vec![expected_full[1].clone()];
    assert!(seen == expected_full || seen == expected_diff, "{seen:?}");
    // Nothing further: the next event is the one we cause now.
    b.leave().await.unwrap();
    assert_eq!(
        within("left", watch.next()).await.unwrap().unwrap(),
        GroupEvent::Left { id: "b".into() }
    );
    s.close().await.unwrap();
    drop(watch);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_hidden_by_a_relist_is_left_then_joined() {
    // A member that leaves and joins again while a watcher's subscription is
    // down (its connection killed, as a network blip would) is found by the
    // watcher's re-list, with other capabilities: that is a new membership,
    // reported as `Left` then `Joined`, never as an update of the old one.
    const ROUNDS: i64 = 100;
    let env = Env::start("60s");
    let (coord, _other, s, mut watch) = watched_empty_group(&env).await;
    let mut raw = env.raw().await;
    let mut member = s.group("g").join("a", serde_json::json!(0)).await.unwrap();
    for i in 1..=ROUNDS {
        // Right after a kill the connections may not be back yet: none
        // killed is fine.
        kill_pubsub(&mut raw).await;
        member.leave().await.unwrap();
        member = s.group("g").join("a", serde_json::json!(i)).await.unwrap();
    }
    member.update(serde_json::json!("final")).await.unwrap();
    let last = serde_json::json!("final");
    let mut events = 0;
    loop {
        let e = within("the final update", watch.next())
            .await
            .unwrap()
            .unwrap();
        events += 1;
        match e {
            GroupEvent::Updated { member } | GroupEvent::Joined { member }
                if member.capabilities == last =>
            {
                break
            }
            GroupEvent::Updated { member } => {
                panic!("event {events}: a rejoin reported as an update: {member:?}")
            }
            _ => {}
        }
    }
    member.leave().await.unwrap();
    s.close().await.unwrap();
    drop(watch);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_lock_rides_out_a_short_server_stall() {
    let env = Env::start("3s");
    let url = format!("{}&connect_timeout=300ms", env.url);
    let coord = quorate_redis::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let g = s1.mutex("m").lock().await.unwrap();
    let waiter = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("m").lock().await }
    });
    until_queued(&env, &env.key("queue", "m"), 1).await;
    // The waiter's fallback re-check (TTL/2 = 1.5s) falls inside the stall
    // and fails; the wait goes on instead of returning the error.
    env.server.pause();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    env.server.resume();
    assert!(!waiter.is_finished(), "{:?}", waiter.await);
    within("release", g.release()).await.unwrap();
    let g2 = within("waiter", waiter).await.unwrap().unwrap();
    assert!(!s1.is_lost() && !s2.is_lost());
    g2.release().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_and_carries_every_primitive() {
    init_tracing();
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    })
    .unwrap();
    let ns = namespace();
    let url = format!("{}&ttl=2s&namespace={ns}", server.tls_url().unwrap());
    let coord = quorate_redis::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s = coord.session().await.unwrap();
    let mut watch = coord.watch_group("g");
    within("snapshot", watch.next()).await.unwrap().unwrap();
    let m = s.group("g").join("a", serde_json::json!(1)).await.unwrap();
    assert!(matches!(
        within("joined", watch.next()).await.unwrap().unwrap(),
        GroupEvent::Joined { .. }
    ));
    let g = s.mutex("m").lock().await.unwrap();
    let s2 = coord.session().await.unwrap();
    let waiter = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("m").lock().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.release().await.unwrap();
    within("handoff over TLS", waiter)
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    m.leave().await.unwrap();
    s.close().await.unwrap();
    s2.close().await.unwrap();
    drop(watch);
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());

    // Without the test CA, the server's certificate is not trusted.
    let port = url.split(':').nth(2).unwrap().split('?').next().unwrap();
    let untrusted = format!("rediss://127.0.0.1:{port}?connect_timeout=2s");
    let err = within(
        "untrusted",
        quorate_redis::connect(&Config::parse(&untrusted).unwrap()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // Plain TCP on the TLS port is not Redis talking: unavailable, no hang.
    let plain = format!("redis://127.0.0.1:{port}?connect_timeout=1s");
    let err = within(
        "plain on TLS port",
        quorate_redis::connect(&Config::parse(&plain).unwrap()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_dropped_while_being_handed_the_lock_leaves_nothing() {
    let env = Env::start("5s");
    let coord = env.coord().await;
    let (holder, waiting, third) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let queue = env.key("queue", "m");
    // Race the waiter's drop against the release that grants it the lock
    // on its behalf, many times: whichever wins, nothing may stay behind.
    for round in 0..20 {
        let g = holder.mutex("m").lock().await.unwrap();
        let waiter = tokio::spawn({
            let s = waiting.clone();
            async move { s.mutex("m").lock().await.map(drop) }
        });
        until_queued(&env, &queue, 1).await;
        let release = g.release();
        if round % 2 == 0 {
            waiter.abort();
            release.await.unwrap();
        } else {
            release.await.unwrap();
            waiter.abort();
        }
        let _ = waiter.await;
        let g3 = within("third party", third.mutex("m").lock())
            .await
            .unwrap();
        g3.release().await.unwrap();
    }
    for s in [holder, waiting, third] {
        s.close().await.unwrap();
    }
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// redis-py takes `key` with `token` (hex-encoded; empty: redis-py's own
/// default, a uuid1 hex) and reports `acquired`/`busy`, then `owned` and
/// `released` on request.
const PY_TOKEN_AGENT: &str = r#"
import sys, binascii, redis
url, key, tok = sys.argv[1], sys.argv[2], binascii.unhexlify(sys.argv[3])
r = redis.Redis.from_url(url)
lock = r.lock(key, timeout=60)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "try":
        ok = lock.acquire(blocking=False, token=tok if tok else None)
        print("acquired" if ok else "busy", flush=True)
    elif cmd == "owned":
        print("owned" if lock.owned() else "not-owned", flush=True)
    elif cmd == "release":
        lock.release()
        print("released", flush=True)
    elif cmd == "quit":
        break
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// quorate never deletes (or takes over) a lock value it did not write:
/// redis-py tokens of every shape redis-py accepts — its default (uuid1
/// hex), `<hex>:<digits>` (a `pid:thread` token, which looks like a token
/// of a dead quorate session), arbitrary text, and arbitrary bytes — stay
/// in place while quorate tries, waits and times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_tokens_of_every_shape_are_never_taken_over() {
    let env = Env::start("1s");
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    let shapes: &[(&str, &[u8])] = &[
        ("redis-py default (uuid1 hex)", b""),
        ("pid:thread", b"12345:140201"),
        ("hex:digits", b"00ff00ff00ff00ff:1"),
        ("text", b"my worker #3 (host a)"),
        ("bytes", b"\xff\x00\x01quorate\xfe"),
    ];
    let mut raw = env.raw().await;
    for (i, (shape, token)) in shapes.iter().enumerate() {
        let name = format!("interop/{i}");
        let key = env.key("lock", &name);
        let url = env.server.url();
        let mut py = tokio::task::block_in_place(|| {
            PyLock::run(PY_TOKEN_AGENT, &[url.as_str(), key.as_str(), &hex(token)])
        });
        assert_eq!(tokio::task::block_in_place(|| py.call("try")), "acquired");
        let held: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        if !token.is_empty() {
            assert_eq!(&held, token, "{shape}: redis-py wrote its token");
        }
        // quorate neither takes it at once, nor while waiting past its TTL
        // (a dead quorate session's grant would be voided within that).
        let tried = s.mutex(&name).try_lock().await.unwrap();
        assert!(tried.is_none(), "{shape}: quorate took a redis-py lock");
        let waited = s
            .mutex(&name)
            .lock_timeout(Duration::from_millis(1500))
            .await;
        assert_eq!(
            waited.err().map(|e| e.kind()),
            Some(ErrorKind::Timeout),
            "{shape}: quorate was granted a lock redis-py holds"
        );
        let still: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(still, held, "{shape}: the redis-py value was changed");
        assert_eq!(
            tokio::task::block_in_place(|| py.call("owned")),
            "owned",
            "{shape}"
        );
        assert_eq!(
            tokio::task::block_in_place(|| py.call("release")),
            "released",
            "{shape}"
        );
        tokio::task::block_in_place(|| py.call("quit"));
        // Free again: quorate takes it.
        let g = s.mutex(&name).try_lock().await.unwrap();
        assert!(g.is_some(), "{shape}: free after redis-py released");
        g.unwrap().release().await.unwrap();
    }
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}

/// A server whose configuration can evict quorate's keys (`maxmemory` with
/// a policy other than `noeviction`) is refused at connect with an
/// `InvalidConfig` naming the setting; `allow_eviction=true` opts in; a
/// `noeviction` server is accepted; a user that may not run `CONFIG GET`
/// connects (the check is then unverified, a warning is logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_can_evict_is_refused_unless_allowed() {
    let env = Env::start_with(
        RedisOptions {
            extra_config: vec![
                "maxmemory 8mb".into(),
                "maxmemory-policy volatile-lru".into(),
                "user noconfig on >pw ~* &* +@all -config".into(),
            ],
            ..RedisOptions::default()
        },
        "2s",
    );
    let Err(refused) = quorate_redis::connect(&Config::parse(&env.url).unwrap()).await else {
        panic!("an evicting server was accepted");
    };
    assert_eq!(refused.kind(), ErrorKind::InvalidConfig, "{refused}");
    let msg = refused.to_string();
    assert!(
        msg.contains("maxmemory-policy volatile-lru") && msg.contains("allow_eviction=true"),
        "{msg}"
    );
    let allowed = format!("{}&allow_eviction=true", env.url);
    let coord = quorate_redis::connect(&Config::parse(&allowed).unwrap())
        .await
        .expect("allow_eviction=true connects");
    let s = coord.session().await.unwrap();
    s.mutex("m").lock().await.unwrap().release().await.unwrap();
    s.close().await.unwrap();

    // CONFIG GET denied by the ACL: connect, unverified.
    let port = env.server.port();
    let noconfig = format!(
        "redis://noconfig:pw@127.0.0.1:{port}?ttl=2s&namespace={}",
        env.ns
    );
    let coord = quorate_redis::connect(&Config::parse(&noconfig).unwrap())
        .await
        .expect("a user without CONFIG connects");
    coord.session().await.unwrap().close().await.unwrap();

    // The same server set to noeviction is accepted.
    env.server
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    quorate_redis::connect(&Config::parse(&env.url).unwrap())
        .await
        .expect("a noeviction server is accepted");
}

/// `wait_replicas=1`: a grant returns only once the replica acknowledged
/// it; while the replica is stopped a grant is given up (`Unavailable`)
/// and leaves nothing behind; once it is back, grants work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_gives_up_unacknowledged_grants() {
    init_tracing();
    let primary = RedisServer::start().expect("start the primary");
    let replica = RedisServer::start_with(RedisOptions {
        replica_of: Some(primary.port()),
        ..RedisOptions::default()
    })
    .expect("start the replica");
    within("the replica syncs", async {
        loop {
            let link = tokio::task::block_in_place(|| {
                harness::info_field(&replica, "replication", "master_link_status")
            });
            if matches!(link, Ok(Some(ref s)) if s == "up") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let url = format!(
        "{}?ttl=2s&connect_timeout=1s&wait_replicas=1&namespace={}",
        primary.url(),
        namespace()
    );
    let coord = quorate_redis::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s = coord.session().await.unwrap();
    // Figures (never asserted): an uncontended lock + release with and
    // without the acknowledgement, on the same primary and replica.
    let plain_url = url.replace("&wait_replicas=1", "");
    let plain = quorate_redis::connect(&Config::parse(&plain_url).unwrap())
        .await
        .unwrap();
    let ps = plain.session().await.unwrap();
    let p50 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        s.mutex("cost")
            .lock()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        with.push(t.elapsed());
        let t = Instant::now();
        ps.mutex("cost")
            .lock()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        without.push(t.elapsed());
    }
    eprintln!(
        "figure: uncontended lock+release p50 {:?} with wait_replicas=1, {:?} without",
        p50(with),
        p50(without)
    );
    ps.close().await.unwrap();
    let g = s.mutex("m").lock().await.unwrap();
    let f1 = g.fence();
    g.release().await.unwrap();

    replica.pause();
    let refused = s.mutex("m").try_lock().await;
    replica.resume();
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable),
        "an unacknowledged grant is given up"
    );
    let g = within("a grant once the replica is back", s.mutex("m").lock())
        .await
        .unwrap();
    assert!(g.fence() > f1);
    g.release().await.unwrap();
    s.close().await.unwrap();
    within("nothing left behind", async {
        while !coord.leftovers().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// `INFO commandstats` as `command -> calls`.
async fn command_calls(raw: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(raw)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn calls_of(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
}

/// The scripts run as one function library (`FCALL`), loaded when the
/// server does not know it — first use, and again after `FUNCTION FLUSH`
/// (as after a restart without persistence or a failover to a replica
/// that missed it); an uncontended lock + release is 12 commands. A user
/// the ACL denies `FCALL` and `FUNCTION` (or a server before Redis 7)
/// gets the same scripts through `EVALSHA`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_loaded_on_demand_and_scripts_are_the_fallback() {
    let env = Env::start_with(
        RedisOptions {
            extra_config: vec!["user nofunc on >pw ~* &* +@all -fcall -fcall_ro -function".into()],
            ..RedisOptions::default()
        },
        "5s",
    );
    let mut raw = env.raw().await;
    let coord = env.coord().await;
    let s = coord.session().await.unwrap();
    s.mutex("m").lock().await.unwrap().release().await.unwrap();
    let before = command_calls(&mut raw).await;
    let g = s.mutex("m").lock().await.unwrap();
    g.release().await.unwrap();
    let after = command_calls(&mut raw).await;
    let total = |stats: &[(String, u64)]| {
        stats
            .iter()
            .filter(|(n, _)| n != "info")
            .map(|(_, c)| c)
            .sum::<u64>()
    };
    assert_eq!(
        calls_of(&after, "fcall") - calls_of(&before, "fcall"),
        2,
        "{after:?}"
    );
    assert_eq!(total(&after) - total(&before), 12, "{before:?} {after:?}");
    // A reader: 9 commands to acquire, 8 to release (FCALLs included).
    let before = command_calls(&mut raw).await;
    s.rwlock("m").read().await.unwrap().release().await.unwrap();
    let after = command_calls(&mut raw).await;
    eprintln!(
        "figure: uncontended reader acquire + release: {} commands",
        total(&after) - total(&before)
    );
    assert_eq!(total(&after) - total(&before), 17, "{before:?} {after:?}");

    // The server forgets the library: the next call loads it again.
    let _: () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    let g = s.mutex("m").lock().await.unwrap();
    let r = s.rwlock("r").read().await.unwrap();
    g.release().await.unwrap();
    r.release().await.unwrap();
    s.close().await.unwrap();
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());

    // No FCALL/FUNCTION for this user: EVALSHA, everything still works.
    let port = env.server.port();
    let url = format!(
        "redis://nofunc:pw@127.0.0.1:{port}?ttl=5s&namespace={}",
        env.ns
    );
    let coord = quorate_redis::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let before = command_calls(&mut raw).await;
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );
    let g = s1.mutex("m").lock().await.unwrap();
    let waiter = tokio::spawn({
        let s2 = s2.clone();
        async move { s2.mutex("m").lock().await }
    });
    until_queued(&env, &env.key("queue", "m"), 1).await;
    let fence = g.fence();
    g.release().await.unwrap();
    let g2 = within("hand-off", waiter).await.unwrap().unwrap();
    assert!(g2.fence() > fence);
    g2.release().await.unwrap();
    let r = s1.rwlock("m").read().await.unwrap();
    r.release().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    let after = command_calls(&mut raw).await;
    assert!(
        calls_of(&after, "evalsha") > calls_of(&before, "evalsha"),
        "{after:?}"
    );
    assert_eq!(coord.leftovers().await.unwrap(), Vec::<String>::new());
}
