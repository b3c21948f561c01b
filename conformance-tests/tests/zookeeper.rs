//! The conformance suite on real ZooKeeper 3.8 servers started by the
//! harness: a single server (`zookeeper`) and a three-server ensemble
//! (`zookeeper-3`), each with a fault controller (partition; leader kill and
//! member partition on the ensemble, whose quorum and election traffic runs
//! through the harness's proxies). With `QUORATE_ZOOKEEPER_ENDPOINTS` set, on those
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
    // The controller also starts servers with fake clocks (as many as the
    // target has) for `server_clock_step`.
    t.faults = Some(Arc::new(ZkFaults::new(cluster.clone()).with_clock_steps()));
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
        let single = tokio::task::spawn_blocking(|| ZkCluster::start(1));
        let expect =
            "starting ZooKeeper (java and /usr/share/java/zookeeper.jar; see scripts/install-deps)";
        // The ensemble's peer traffic runs through the harness's proxies
        // (member partitions).
        let (ensemble, ensemble_faults) = ZkFaults::start_partitionable(3).await.expect(expect);
        let single = Arc::new(Mutex::new(
            single.await.expect("the harness thread").expect(expect),
        ));
        let mut three = Target::new(
            "zookeeper-3",
            format!(
                "zookeeper://{}?{OPTIONS}",
                ensemble.lock().unwrap().endpoints()
            ),
        );
        three.faults = Some(Arc::new(ensemble_faults.with_clock_steps()));
        let targets = vec![target("zookeeper", &single), three];
        (targets, vec![single, ensemble])
    })
}
