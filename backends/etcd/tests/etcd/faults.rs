//! Fault injection on real processes: a holder killed with SIGKILL, the
//! Raft leader killed under a held lock, watch streams broken by member
//! restarts and history compaction.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_core::{Config, Coordinator, GroupEvent, Member};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{namespace, signal, single, soon, still_pending};

/// The `hold_lock` example, built by `cargo test -p quorate-etcd` next to
/// this test binary.
fn hold_lock_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples")
        .join("hold_lock");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p quorate-etcd` (which builds the examples) or `cargo build -p quorate-etcd --example hold_lock`",
        path.display()
    );
    path
}

#[tokio::test]
async fn killed_holder_process_frees_the_lock_after_its_ttl() {
    let (cluster, coord, ns) = single("ttl=2s").await;
    let mut holder = tokio::process::Command::new(hold_lock_binary())
        .args([cluster.url(&ns, "ttl=2s"), "job".into()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap()).lines();
    let line = soon("holder locked", out.next_line())
        .await
        .unwrap()
        .unwrap();
    let holder_fence: u64 = line.strip_prefix("locked ").unwrap().parse().unwrap();

    let s = coord.session().await.unwrap();
    let m = s.mutex("job");
    let mut waiting = Box::pin(m.lock());
    assert!(still_pending(&mut waiting, Duration::from_millis(700)).await);
    let killed = Instant::now();
    signal(holder.id().unwrap(), libc::SIGKILL);
    holder.wait().await.unwrap();
    let g = soon("grant after the holder died", waiting).await.unwrap();
    println!(
        "figure: lock free {:?} after SIGKILL of its holder (lease TTL 2s)",
        killed.elapsed()
    );
    assert!(g.fence().get() > holder_fence);
    g.release().await.unwrap();
}

#[tokio::test]
async fn leader_killed_while_a_lock_is_held_never_grants_it_twice() {
    let mut cluster = EtcdCluster::start_local(3).await.unwrap();
    let coord = crate::connect(&cluster, &namespace(), "ttl=3s&connect_timeout=1s").await;
    let s1 = coord.session().await.unwrap();
    let s2 = coord.session().await.unwrap();
    let g1 = s1.mutex("L").lock().await.unwrap();
    let m2 = s2.mutex("L");
    let mut w2 = Box::pin(m2.lock());
    assert!(still_pending(&mut w2, Duration::from_millis(500)).await);

    let killed = Instant::now();
    let old = cluster.kill_leader().await.unwrap();
    let new = cluster.leader().await.unwrap();
    assert_ne!(old, new);
    // Retry through the election until the cluster answers.
    let held = soon("answer after failover", async {
        loop {
            match g1.is_held().await {
                Ok(v) => return v,
                Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    println!(
        "figure: holder confirmed its lock {:?} after the leader was killed",
        killed.elapsed()
    );
    assert!(held, "the lock was lost in the failover");
    assert!(!s1.is_lost());
    // Across the failover and beyond a lease TTL, the waiter stays out.
    assert!(
        still_pending(&mut w2, Duration::from_secs(4)).await,
        "second grant while the first holder still holds"
    );
    assert!(g1.is_held().await.unwrap());
    let f1 = g1.fence();
    g1.release().await.unwrap();
    let g2 = soon("grant after release", w2).await.unwrap();
    assert!(g2.fence() > f1);
    g2.release().await.unwrap();
}

async fn next_event(
    events: &mut futures::stream::BoxStream<'static, quorate_core::Result<GroupEvent>>,
) -> GroupEvent {
    soon("group event", events.next()).await.unwrap().unwrap()
}

fn member(id: &str, capabilities: serde_json::Value) -> Member {
    Member {
        id: id.into(),
        capabilities,
    }
}

async fn connect_to(endpoints: &[String], ns: &str) -> Coordinator {
    crate::init_tracing();
    let url = format!("etcd://{}/{ns}", endpoints.join(","));
    quorate_etcd::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap()
}

/// The current revision, from etcdctl on `endpoints`.
async fn current_revision(cluster: &EtcdCluster, endpoints: &[String]) -> u64 {
    let out = cluster
        .etcdctl_at(endpoints)
        .args(["get", "any", "-w", "json"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["header"]["revision"].as_u64().unwrap()
}

#[tokio::test]
async fn group_watch_resumes_across_member_restarts_and_compaction() {
    let mut cluster = EtcdCluster::start_local(3).await.unwrap();
    let ns = namespace();
    // The watcher talks to one follower only, the changes go through the
    // others. Restarting that follower breaks the watcher's stream without
    // a Raft election (killing the leader stalls writes in flight for
    // etcd's request timeout, which is not what this test is about).
    let leader = cluster.leader().await.unwrap();
    let w = (leader + 1) % 3;
    let others: Vec<String> = (0..3)
        .filter(|i| *i != w)
        .map(|i| cluster.member_endpoint(i))
        .collect();
    let watcher = connect_to(&[cluster.member_endpoint(w)], &ns).await;
    let actor = connect_to(&others, &ns).await;
    let s = actor.session().await.unwrap();
    let g = s.group("g");
    let mut events = watcher.watch_group("g");
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Snapshot { members: vec![] }
    );
    let a = g.join("a", json!(1)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Joined {
            member: member("a", json!(1))
        }
    );

    // The stream breaks; what changed meanwhile is replayed exactly once.
    cluster.kill(w).unwrap();
    let b = g.join("b", json!(1)).await.unwrap();
    a.update(json!(2)).await.unwrap();
    cluster.restart(w).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Joined {
            member: member("b", json!(1))
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Updated {
            member: member("a", json!(2))
        }
    );
    let _c = g.join("c", json!(1)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Joined {
            member: member("c", json!(1))
        }
    );

    // The history the watcher needs is compacted while it is away: it
    // re-lists and reports the difference (same net changes, no gap, no
    // duplicate).
    cluster.kill(w).unwrap();
    b.leave().await.unwrap();
    a.update(json!(3)).await.unwrap();
    let _d = g.join("d", json!(1)).await.unwrap();
    let rev = current_revision(&cluster, &others).await;
    let out = cluster
        .etcdctl_at(&others)
        .args(["compact", &rev.to_string(), "--physical"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.restart(w).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event(&mut events).await);
    }
    assert_eq!(
        seen,
        vec![
            GroupEvent::Left { id: "b".into() },
            GroupEvent::Updated {
                member: member("a", json!(3))
            },
            GroupEvent::Joined {
                member: member("d", json!(1))
            },
        ]
    );
    let _e = g.join("e", json!(1)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Joined {
            member: member("e", json!(1))
        }
    );
    let listed = watcher.members("g").await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "c", "d", "e"]
    );
}

#[tokio::test]
async fn a_paused_member_costs_neither_session_nor_lock() {
    let mut cluster = EtcdCluster::start_local(3).await.unwrap();
    let coord = crate::connect(&cluster, &namespace(), "ttl=2s&connect_timeout=1s").await;
    let s = coord.session().await.unwrap();
    let g = s.mutex("L").lock().await.unwrap();
    let leader = cluster.leader().await.unwrap();
    cluster.pause(leader).unwrap();
    // Three TTLs with the old leader frozen: keep-alives must find the
    // live members.
    let (mut answered, mut unavailable) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        match g.is_held().await {
            Ok(held) => {
                assert!(held);
                answered += 1;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                unavailable += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "figure: with the leader paused, {answered} is_held answered, {unavailable} unavailable"
    );
    assert!(!s.is_lost(), "session lost: {:?}", s.lost().await);
    assert!(answered > 0);
    cluster.resume(leader).unwrap();
    g.release().await.unwrap();
    s.close().await.unwrap();
}

#[tokio::test]
async fn a_watch_on_a_paused_member_moves_to_a_live_one() {
    let mut cluster = EtcdCluster::start_local(3).await.unwrap();
    let ns = namespace();
    let leader = cluster.leader().await.unwrap();
    let f = (leader + 1) % 3;
    let others: Vec<String> = (0..3)
        .filter(|i| *i != f)
        .map(|i| cluster.member_endpoint(i))
        .collect();
    // The watcher prefers the follower `f` (its first endpoint).
    let mut watcher_endpoints = vec![cluster.member_endpoint(f)];
    watcher_endpoints.extend(others.iter().cloned());
    let watcher = connect_to(&watcher_endpoints, &ns).await;
    let actor = connect_to(&others, &ns).await;
    let mut events = watcher.watch_group("g");
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Snapshot { members: vec![] }
    );
    cluster.pause(f).unwrap();
    let s = actor.session().await.unwrap();
    let joined = Instant::now();
    let _m = s.group("g").join("x", json!(1)).await.unwrap();
    assert_eq!(
        next_event(&mut events).await,
        GroupEvent::Joined {
            member: member("x", json!(1))
        }
    );
    println!(
        "figure: join seen {:?} later by a watcher whose member is paused",
        joined.elapsed()
    );
    cluster.resume(f).unwrap();
}

/// The waiters of a coordinator wait for deletions on one shared watch
/// stream per queue directory. A member cut off from its peers keeps that
/// stream open and still answers its progress requests, but sees no new
/// deletion: a waiter left on it would wait for its fallback re-check, one
/// lease TTL (30 s here). Once a request of the coordinator finds the
/// member cut off and moves to another endpoint, the stream must follow
/// within about a second, and the waiter be granted when the lock is
/// released.
#[tokio::test]
async fn waiters_move_off_a_cut_off_members_deletion_stream() {
    let cluster = EtcdCluster::start_local_partitionable(3).await.unwrap();
    let ns = namespace();
    let f = cluster.follower().await.unwrap();
    let others: Vec<String> = (0..3)
        .filter(|i| *i != f)
        .map(|i| cluster.member_endpoint(i))
        .collect();
    // The waiter's coordinator prefers `f` (its first endpoint).
    let mut endpoints = vec![cluster.member_endpoint(f)];
    endpoints.extend(others.iter().cloned());
    crate::init_tracing();
    let url = format!(
        "etcd://{}/{ns}?ttl=30s&connect_timeout=1s",
        endpoints.join(",")
    );
    let waiting = quorate_etcd::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let holding = connect_to(&others, &ns).await;
    let h = holding.session().await.unwrap();
    let g = h.mutex("L").lock().await.unwrap();
    let w = waiting.session().await.unwrap();
    let m = w.mutex("L");
    let mut pending = Box::pin(m.lock());
    assert!(
        still_pending(&mut pending, Duration::from_millis(500)).await,
        "granted while held"
    );
    cluster.isolate(f).unwrap();
    // Any request of the waiting coordinator that `f` cannot answer moves
    // its requests to another endpoint: here, opening a session (a lease
    // grant needs the cut-off member's leader).
    let probe = waiting.session().await;
    println!(
        "figure: a session opened on the cut-off member: {:?}",
        probe.as_ref().err()
    );
    if let Ok(s) = probe {
        s.close().await.ok();
    }
    let released = Instant::now();
    g.release().await.unwrap();
    let granted = tokio::time::timeout(Duration::from_secs(10), &mut pending)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "not granted {:?} after the release: the waiter still waits on the cut-off member",
                released.elapsed()
            )
        })
        .unwrap();
    println!("figure: granted {:?} after the release", released.elapsed());
    granted.release().await.unwrap();
    h.close().await.unwrap();
    drop(w);
}
