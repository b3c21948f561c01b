//! Start one Redis, one etcd member and one ZooKeeper server with the
//! conformance harness (free loopback ports, temporary directories), print
//! one `backend=URL` line each on stdout, and keep them running until stdin
//! closes (or a line is read). Used by `scripts/bench-vs-tooz` and for
//! `docs/performance.md`: the benchmarks then run against the same servers
//! the conformance suite uses.
//!
//! `quorate-bench-servers [redis] [etcd] [zookeeper]` starts only the named
//! ones (all three by default).

use std::io::{BufRead, Write};

use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_conformance::harness::redis::RedisServer;
use quorate_conformance::harness::zookeeper::ZkCluster;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let want = |b: &str| wanted.is_empty() || wanted.iter().any(|w| w == b);
    let mut out = std::io::stdout().lock();
    let redis = want("redis").then(|| RedisServer::start().expect("starting redis-server"));
    if let Some(r) = &redis {
        writeln!(out, "redis={}", r.url()).expect("stdout");
    }
    let etcd = if want("etcd") {
        Some(EtcdCluster::start_local(1).await.expect("starting etcd"))
    } else {
        None
    };
    if let Some(e) = &etcd {
        writeln!(out, "etcd=etcd://{}", e.endpoints().join(",")).expect("stdout");
    }
    let zk = want("zookeeper").then(|| ZkCluster::start(1).expect("starting ZooKeeper"));
    if let Some(z) = &zk {
        writeln!(out, "zookeeper=zookeeper://{}", z.endpoints()).expect("stdout");
    }
    writeln!(out, "ready").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    drop((redis, etcd, zk));
}
