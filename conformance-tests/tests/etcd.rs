//! The conformance suite on real etcd: one member, and a three-member
//! cluster, started from `/usr/bin/etcd` by the harness (or the external
//! cluster named by `QUORATE_ETCD_ENDPOINTS`, as the one target). Both
//! harness clusters carry a fault controller: partition (both), leader
//! kill and member partition (etcd-3, whose peer traffic runs through the
//! harness's proxies).

use std::sync::Arc;

use quorate_conformance::harness::etcd::{EtcdCluster, ENDPOINTS_ENV};
use quorate_conformance::harness::faults::EtcdFaults;
use quorate_conformance::target::ServerFaults;
use quorate_conformance::Target;

async fn target(label: &str, cluster: &Arc<tokio::sync::Mutex<EtcdCluster>>) -> Target {
    let mut t = Target::new(label, cluster.lock().await.url("quorate", "ttl=2s"));
    t.faults = EtcdFaults::new(cluster.clone())
        .await
        .map(|f| Arc::new(f) as Arc<dyn ServerFaults>);
    t
}

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        if std::env::var_os(ENDPOINTS_ENV).is_some() {
            let external = EtcdCluster::start(1).await.expect("external etcd");
            let target = Target::new("etcd-external", external.url("quorate", "ttl=2s"));
            return (vec![target], Vec::new());
        }
        let one = EtcdCluster::start_local(1).await.expect("start etcd");
        let three = EtcdCluster::start_local_partitionable(3)
            .await
            .expect("start a 3-member etcd");
        let (one, three) = (
            Arc::new(tokio::sync::Mutex::new(one)),
            Arc::new(tokio::sync::Mutex::new(three)),
        );
        let targets = vec![target("etcd-1", &one).await, target("etcd-3", &three).await];
        (targets, vec![one, three])
    })
}
