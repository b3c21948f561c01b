//! The conformance suite on real ZooKeeper 3.8 servers started by the
//! harness: a single server (`zookeeper`) and a three-server ensemble
//! (`zookeeper-3`). With `QUORATE_ZOOKEEPER_ENDPOINTS` set, on those
//! endpoints instead.

use quorate_conformance::harness::zookeeper::{external_endpoints, ZkCluster};
use quorate_conformance::Target;

/// Options of every target: the suite's short TTL.
const OPTIONS: &str = "ttl=2s";

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
        let single = single.await.expect("the harness thread").expect(expect);
        let ensemble = ensemble.await.expect("the harness thread").expect(expect);
        let targets = vec![
            Target::new(
                "zookeeper",
                format!("zookeeper://{}?{OPTIONS}", single.endpoints()),
            ),
            Target::new(
                "zookeeper-3",
                format!("zookeeper://{}?{OPTIONS}", ensemble.endpoints()),
            ),
        ];
        (targets, vec![single, ensemble])
    })
}
