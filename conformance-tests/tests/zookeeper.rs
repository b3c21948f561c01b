//! The conformance suite on real ZooKeeper 3.8 servers started by the
//! harness: a single server (`zookeeper`) and a three-server ensemble
//! (`zookeeper-3`), each with a fault controller (partition; leader kill on
//! the ensemble). With `QUORATE_ZOOKEEPER_ENDPOINTS` set, on those
//! endpoints instead (no server faults).

use std::sync::{Arc, Mutex};

use quorate_conformance::harness::faults::ZkFaults;
use quorate_conformance::harness::zookeeper::{external_endpoints, ZkCluster};
use quorate_conformance::Target;

/// Options of every target: the suite's short TTL.
const OPTIONS: &str = "ttl=2s";

fn target(label: &str, cluster: &Arc<Mutex<ZkCluster>>) -> Target {
    let endpoints = cluster.lock().unwrap().endpoints();
    let mut t = Target::new(label, format!("zookeeper://{endpoints}?{OPTIONS}"));
    t.faults = Some(Arc::new(ZkFaults::new(cluster.clone())));
    t
}

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        if let Some(e) = external_endpoints() {
            let target = Target::new("zookeeper", format!("zookeeper://{e}?{OPTIONS}"));
            return (vec![target], Vec::new());
        }
        let start = |n| tokio::task::spawn_blocking(move || ZkCluster::start(n));
        let (single, ensemble) = (start(1), start(3));
        let expect =
            "starting ZooKeeper (java and /usr/share/java/zookeeper.jar; see scripts/install-deps)";
        let single = Arc::new(Mutex::new(
            single.await.expect("the harness thread").expect(expect),
        ));
        let ensemble = Arc::new(Mutex::new(
            ensemble.await.expect("the harness thread").expect(expect),
        ));
        let targets = vec![
            target("zookeeper", &single),
            target("zookeeper-3", &ensemble),
        ];
        (targets, vec![single, ensemble])
    })
}
