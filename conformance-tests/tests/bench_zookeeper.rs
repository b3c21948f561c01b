//! `quorate bench zookeeper://…` end to end on a real ZooKeeper server
//! started by the harness (or `QUORATE_ZOOKEEPER_ENDPOINTS`): every
//! scenario yields a finite positive ratio against the raw baseline, and
//! nothing is left behind (the raw baseline's nodes are gone, quorate's
//! namespace has no leftovers). No timing is asserted: figures belong in
//! `docs/performance.md`.

use std::sync::Arc;

use quorate_conformance::bench::{self, RawBaseline};
use quorate_conformance::harness::zookeeper::{external_endpoints, ZkCluster};
use quorate_conformance::Target;
use zookeeper_client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_the_raw_zookeeper_baseline_and_cleans_up() {
    let (endpoints, _cluster) = match external_endpoints() {
        Some(e) => (e, None),
        None => {
            let cluster = tokio::task::spawn_blocking(|| ZkCluster::start(1))
                .await
                .expect("the harness thread")
                .expect("starting ZooKeeper (java and /usr/share/java/zookeeper.jar)");
            (cluster.endpoints(), Some(cluster))
        }
    };
    let chroot = format!("/bench-test-{:016x}", rand::random::<u64>());
    let url = format!("zookeeper://{endpoints}{chroot}?ttl=4s");

    let raw: Arc<dyn RawBaseline> = bench::baseline_for(&url).await.expect("raw baseline");
    assert!(raw.describe().contains("getChildren"), "{}", raw.describe());
    let options = bench::Options {
        held: 50,
        waiters: 10,
        counted_ops: 20,
        ..bench::Options::new(0.3)
    };
    let reports = bench::run_with(&Target::new("zookeeper", url.clone()), raw, &options)
        .await
        .expect("bench run");

    if let Err(e) = bench::check_complete(&reports, "zookeeper") {
        panic!("incomplete bench report: {e}");
    }
    let names: Vec<&str> = reports.iter().map(|r| r.scenario).collect();
    assert_eq!(&names[4..], bench::EXTRA_SCENARIOS, "{names:?}");

    // The raw baseline removed its scratch node and the namespace it
    // created; quorate's namespace (`run` takes a fresh one under the
    // chroot) has no leftovers; no ephemeral node is left anywhere.
    let client = Client::connect(&endpoints).await.expect("connect");
    let raw_namespace = format!("{chroot}/quorate");
    assert_eq!(
        client.check_stat(&raw_namespace).await.expect("exists"),
        None,
        "the raw baseline left `{raw_namespace}` behind"
    );
    for ns in children(&client, &chroot).await {
        assert!(
            ns.starts_with("conformance-"),
            "`{chroot}/{ns}` is neither quorate's namespace nor reaped"
        );
        let coord = quorate::connect(&format!("zookeeper://{endpoints}{chroot}/{ns}"))
            .await
            .expect("connect to quorate's namespace");
        assert_eq!(
            coord.leftovers().await.expect("leftovers"),
            Vec::<String>::new()
        );
    }
    let mut pending = vec![chroot.clone()];
    while let Some(path) = pending.pop() {
        let Some(stat) = client.check_stat(&path).await.expect("exists") else {
            continue; // reaped meanwhile
        };
        assert_eq!(
            stat.ephemeral_owner, 0,
            "`{path}` is an ephemeral node left behind"
        );
        pending.extend(
            children(&client, &path)
                .await
                .into_iter()
                .map(|c| format!("{path}/{c}")),
        );
    }
}

/// The children of `path`; none once it is gone.
async fn children(client: &Client, path: &str) -> Vec<String> {
    match client.list_children(path).await {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(e) => panic!("listing `{path}`: {e}"),
    }
}
