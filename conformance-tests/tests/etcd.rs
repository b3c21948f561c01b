//! The conformance suite on real etcd: one member, and a three-member
//! cluster, started from `/usr/bin/etcd` by the harness (or the external
//! cluster named by `QUORATE_ETCD_ENDPOINTS`, as the one target).

use quorate_conformance::harness::etcd::{EtcdCluster, ENDPOINTS_ENV};
use quorate_conformance::Target;

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        if std::env::var_os(ENDPOINTS_ENV).is_some() {
            let external = EtcdCluster::start(1).await.expect("external etcd");
            let target = Target::new("etcd-external", external.url("quorate", "ttl=2s"));
            return (vec![target], vec![external]);
        }
        let one = EtcdCluster::start_local(1).await.expect("start etcd");
        let three = EtcdCluster::start_local(3)
            .await
            .expect("start a 3-member etcd");
        let targets = vec![
            Target::new("etcd-1", one.url("quorate", "ttl=2s")),
            Target::new("etcd-3", three.url("quorate", "ttl=2s")),
        ];
        (targets, vec![one, three])
    })
}
