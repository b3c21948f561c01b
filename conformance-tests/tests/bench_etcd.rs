//! `quorate bench etcd://…` end to end on a real one-member etcd started
//! by the harness (or `QUORATE_ETCD_ENDPOINTS`), and `etcds://` on a TLS
//! member with client certificates: every scenario yields a finite
//! positive ratio against the raw baseline, and nothing is left behind
//! (no raw scratch key, no key of quorate's but its documented persistent
//! `data/` values, quorate's `leftovers()` empty). No timing is asserted:
//! figures belong in `docs/performance.md`.

use std::sync::Arc;

use quorate_conformance::bench::{self, RawBaseline};
use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_conformance::Target;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_the_raw_etcd_baseline_and_cleans_up() {
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    bench_and_check(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_over_tls_with_client_certificates() {
    let cluster = EtcdCluster::start_local_tls(1)
        .await
        .expect("start a TLS etcd");
    bench_and_check(&cluster).await;
}

async fn bench_and_check(cluster: &EtcdCluster) {
    let namespace = format!("bench-test-{:016x}", rand::random::<u64>());
    let url = cluster.url(&namespace, "ttl=2s");

    let raw: Arc<dyn RawBaseline> = bench::baseline_for(&url).await.expect("raw baseline");
    assert!(raw.describe().contains("txn"), "{}", raw.describe());
    let options = bench::Options {
        held: 50,
        waiters: 10,
        counted_ops: 20,
        ..bench::Options::new(0.3)
    };
    let reports = bench::run_with(&Target::new("etcd", url.clone()), raw, &options)
        .await
        .expect("bench run");

    if let Err(e) = bench::check_complete(&reports, "etcd") {
        panic!("incomplete bench report: {e}");
    }
    // Server counters are read from `/metrics` over plain http only, so a
    // TLS cluster has no `requests_per_op`.
    let names: Vec<&str> = reports.iter().map(|r| r.scenario).collect();
    let expected: &[&str] = if cluster.pki().is_some() {
        &bench::EXTRA_SCENARIOS[1..]
    } else {
        &bench::EXTRA_SCENARIOS
    };
    assert_eq!(&names[4..], expected, "{names:?}");

    // Every key under the namespace, read with etcdctl (not with the code
    // under test). The raw baseline wrote under `<ns>/bench-raw-…/`;
    // `run` used a fresh quorate namespace `<ns>/conformance-…`.
    let out = cluster
        .etcdctl()
        .args(["get", &format!("{namespace}/"), "--prefix", "--keys-only"])
        .output()
        .await
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let raw_keys: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{namespace}/bench-raw-")))
        .collect();
    assert!(
        raw_keys.is_empty(),
        "the raw baseline left {raw_keys:?} behind"
    );
    let mut quorate_namespaces: Vec<String> = Vec::new();
    for key in &keys {
        let rest = key
            .strip_prefix(&format!("{namespace}/"))
            .expect("a key under the prefix");
        let (ns, below) = rest.split_once('/').unwrap_or((rest, ""));
        assert!(
            ns.starts_with("conformance-") && below.starts_with("data/"),
            "`{key}` is neither the raw baseline's nor quorate's persistent data"
        );
        let ns = format!("{namespace}/{ns}");
        if !quorate_namespaces.contains(&ns) {
            quorate_namespaces.push(ns);
        }
    }
    for ns in quorate_namespaces {
        let coord = quorate::connect(&cluster.url(&ns, ""))
            .await
            .expect("connect to quorate's namespace");
        assert_eq!(
            coord.leftovers().await.expect("leftovers"),
            Vec::<String>::new()
        );
    }
}
