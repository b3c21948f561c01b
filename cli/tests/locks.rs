//! `quorate locks` as a real process against real servers (started by the
//! conformance harness): it shows what `quorate lock` processes hold, with
//! the session and fence they announced, and their waiters.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_conformance::harness::redis::RedisServer;
use quorate_conformance::harness::zookeeper::ZkCluster;
use serde_json::Value;

use common::{quorate, run, stderr, unique, LIVENESS};

/// A holding `quorate lock` process and the first line it printed.
struct Holder {
    child: Child,
    first_line: mpsc::Receiver<String>,
}

impl Holder {
    fn spawn(args: &[&str]) -> Holder {
        let mut child = quorate()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn quorate lock");
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if BufReader::new(out).read_line(&mut line).is_ok() {
                let _ = tx.send(line);
            }
        });
        Holder {
            child,
            first_line: rx,
        }
    }

    /// The `--json` grant line.
    fn grant(&self) -> Value {
        let line = self
            .first_line
            .recv_timeout(LIVENESS)
            .expect("a grant line within the liveness bound");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("grant line {line:?}: {e}"))
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > LIVENESS {
                let _ = self.child.kill();
                panic!("quorate lock did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn locks_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["locks", "--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    assert_eq!(o.status.code(), Some(0), "quorate {all:?}: {}", stderr(&o));
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "quorate {all:?} printed no JSON array ({e}): {:?}",
            o.stdout
        )
    })
}

/// Poll `quorate locks --json URL` until `done` (bounded).
fn locks_until(url: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let locks = locks_json(&[url]);
        if done(&locks) {
            return locks;
        }
        assert!(start.elapsed() < LIVENESS, "{what}: last listing {locks:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A holder, two shared holders and a waiter, shown by `quorate locks`
/// with the sessions and fences the holders announced; prefix, table and
/// `$QUORATE_URL` forms; nothing once they are gone.
fn locks_shows_the_holders(url: &str) {
    assert!(
        locks_json(&[url]).is_empty(),
        "a fresh namespace lists locks"
    );
    let holder = Holder::spawn(&["lock", "--json", url, "jobs/a"]);
    let grant = holder.grant();
    let readers = [
        Holder::spawn(&["lock", "-s", "--json", url, "jobs/b"]),
        Holder::spawn(&["lock", "-s", "--json", url, "jobs/b"]),
    ];
    let reader_grants: Vec<Value> = readers.iter().map(Holder::grant).collect();
    let waiter = Holder::spawn(&["lock", "--json", url, "jobs/a"]);
    let locks = locks_until(url, "the waiter never showed", |l| {
        l.iter()
            .any(|l| l["name"] == "jobs/a" && l["waiters"].as_array().is_some_and(|w| w.len() == 1))
    });

    let names: Vec<&str> = locks.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(names, ["jobs/a", "jobs/b"], "{locks:?}");
    let a = &locks[0];
    let holders = a["holders"].as_array().expect("holders");
    assert_eq!(holders.len(), 1, "{a}");
    assert_eq!(holders[0]["session"], grant["session"], "{a} vs {grant}");
    assert_eq!(holders[0]["fence"], grant["fence"], "{a} vs {grant}");
    assert_eq!(holders[0]["mode"], "exclusive", "{a}");
    let w = &a["waiters"][0];
    assert_eq!(w["mode"], "exclusive", "{a}");
    assert!(
        w["session"].is_string() && w["session"] != grant["session"],
        "the waiter's session: {a}"
    );
    let b = &locks[1];
    let mut got: Vec<(String, u64)> = b["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .map(|h| {
            assert_eq!(h["mode"], "shared", "{b}");
            (
                h["session"].as_str().unwrap_or_default().to_owned(),
                h["fence"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, u64)> = reader_grants
        .iter()
        .map(|g| {
            (
                g["session"].as_str().unwrap().to_owned(),
                g["fence"].as_u64().unwrap(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "{b}");

    // Prefix; URL from the environment; the table.
    let only_b: Vec<Value> = locks_json(&[url, "jobs/b"]);
    assert_eq!(only_b.len(), 1, "{only_b:?}");
    assert_eq!(only_b[0]["name"], "jobs/b");
    assert!(locks_json(&[url, "other"]).is_empty());
    let o = quorate()
        .env("QUORATE_URL", url)
        .args(["locks", "jobs/a"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    for col in ["NAME", "KIND", "SESSION", "FENCE", "SINCE", "WAITERS"] {
        assert!(lines[0].contains(col), "{table}");
    }
    let session = grant["session"].as_str().unwrap();
    let fence = grant["fence"].to_string();
    assert!(
        lines[1].starts_with("jobs/a ")
            && lines[1].contains(" exclusive ")
            && lines[1].contains(session)
            && lines[1].contains(&fence)
            && lines[1].contains("1: "),
        "{table}"
    );

    // The holder ends: the waiter holds, with the fence it announced.
    holder.stop();
    let next = waiter.grant();
    let locks = locks_until(url, "the hand-off never showed", |l| {
        l.first()
            .is_some_and(|l| l["holders"][0]["session"] == next["session"])
    });
    assert_eq!(locks[0]["holders"][0]["fence"], next["fence"], "{locks:?}");
    assert!(
        locks[0]["waiters"].as_array().is_some_and(Vec::is_empty),
        "{locks:?}"
    );
    waiter.stop();
    for r in readers {
        r.stop();
    }
    let after = locks_json(&[url]);
    assert!(
        after.is_empty(),
        "listed after every holder exited: {after:?}"
    );
}

#[test]
fn locks_file() {
    let dir = std::env::temp_dir().join(unique("locks"));
    std::fs::create_dir_all(&dir).unwrap();
    locks_shows_the_holders(&format!("file://{}", dir.display()));
    let _ = std::fs::remove_dir_all(dir);
}

/// `inspect=false`: no records, so the holder is listed without session,
/// fence or time, and nothing of it after it exits.
#[test]
fn locks_file_without_records() {
    let dir = std::env::temp_dir().join(unique("norecords"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("file://{}", dir.display());
    let holder = Holder::spawn(&["lock", "--json", &format!("{url}?inspect=false"), "n"]);
    let grant = holder.grant();
    assert!(grant["fence"].is_u64(), "{grant}");
    let locks = locks_json(&[&url]);
    assert_eq!(locks.len(), 1, "{locks:?}");
    let h = &locks[0]["holders"][0];
    assert_eq!(locks[0]["name"], "n");
    assert_eq!(h["mode"], "exclusive", "{locks:?}");
    assert!(
        h["session"].is_null() && h["fence"].is_null() && h["since"].is_null(),
        "{locks:?}"
    );
    assert!(!dir.join("inspect").exists(), "records were written");
    holder.stop();
    assert!(locks_json(&[&url]).is_empty());
    let o = run(&["locks", &format!("{url}?inspect=maybe")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn locks_etcd() {
    let etcd = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(EtcdCluster::start(1))
        .expect("starting etcd (see scripts/install-deps)");
    locks_shows_the_holders(&etcd.url(&unique("ns"), "ttl=30s"));
}

#[test]
fn locks_redis() {
    let redis = RedisServer::start().expect("starting redis-server");
    let url = format!("{}?ttl=30s&namespace={}", redis.url(), unique("ns"));
    locks_shows_the_holders(&url);
}

#[test]
fn locks_zookeeper() {
    let zk = ZkCluster::start(1).expect("starting ZooKeeper (see scripts/install-deps)");
    let url = format!(
        "zookeeper://{}?session_timeout=30s&namespace={}",
        zk.endpoints(),
        unique("ns")
    );
    locks_shows_the_holders(&url);
}

#[test]
fn locks_errors() {
    // No URL and no $QUORATE_URL: usage (2).
    let o = run(&["locks"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = run(&["locks", "jobs/"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // An over-long prefix: InvalidName (1), one line.
    let dir = std::env::temp_dir().join(unique("locks-errors"));
    let url = format!("file://{}", dir.display());
    let long = "x".repeat(2000);
    let o = run(&["locks", &url, &long]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    // Unreachable: 69.
    let o = run(&["locks", "etcd://127.0.0.1:1?connect_timeout=1s"]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}
