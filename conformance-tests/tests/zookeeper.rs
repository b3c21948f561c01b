//! The conformance suite on a real ZooKeeper 3.8 server started by the
//! harness (or on `QUORATE_ZOOKEEPER_ENDPOINTS`).

use quorate_conformance::harness::zookeeper::{external_endpoints, ZkCluster};

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        let (endpoints, server) = match external_endpoints() {
            Some(e) => (e, None),
            None => {
                let cluster = tokio::task::spawn_blocking(|| ZkCluster::start(1))
                    .await
                    .expect("the harness thread")
                    .expect("starting a ZooKeeper server (java and /usr/share/java/zookeeper.jar; see scripts/install-deps)");
                (cluster.endpoints(), Some(cluster))
            }
        };
        (
            vec![quorate_conformance::Target::new(
                "zookeeper",
                format!("zookeeper://{endpoints}?ttl=2s"),
            )],
            server,
        )
    })
}
