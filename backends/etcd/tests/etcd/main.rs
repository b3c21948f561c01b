//! Integration tests of the etcd backend against real etcd servers started
//! by the harness (`quorate_conformance::harness::etcd`), or the external
//! cluster named by `QUORATE_ETCD_ENDPOINTS` for the tests that need no
//! fault injection.

mod faults;
mod interop;
mod primitives;
mod tls;

use std::time::Duration;

use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_core::{Config, Coordinator};

/// A fresh namespace, so tests sharing an external cluster never meet.
pub fn namespace() -> String {
    format!("qtest-{:016x}", rand::random::<u64>())
}

/// Connect to `cluster` in namespace `ns` with extra query options.
pub async fn connect(cluster: &EtcdCluster, ns: &str, query: &str) -> Coordinator {
    let url = cluster.url(ns, query);
    quorate_etcd::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// A one-member cluster (or the external one) and a coordinator on it.
pub async fn single(query: &str) -> (EtcdCluster, Coordinator, String) {
    init_tracing();
    let cluster = EtcdCluster::start(1).await.expect("start etcd");
    let ns = namespace();
    let coord = connect(&cluster, &ns, query).await;
    (cluster, coord, ns)
}

/// Wait for a future that must finish soon: a generous bound so a broken
/// implementation fails instead of hanging (not a speed assertion).
pub async fn soon<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 20 s"))
}

/// Whether a future is still pending after `d` (used to check that a
/// waiter is really blocked).
pub async fn still_pending<T>(
    fut: &mut (impl std::future::Future<Output = T> + Unpin),
    d: Duration,
) -> bool {
    tokio::time::timeout(d, fut).await.is_err()
}

/// Keys under `prefix` on the server, read with etcdctl (independent of
/// the backend under test).
pub async fn etcdctl_keys(cluster: &EtcdCluster, prefix: &str) -> Vec<String> {
    let out = cluster
        .etcdctl()
        .args(["get", "--prefix", "--keys-only", prefix])
        .output()
        .await
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Send `sig` to a child process this test started, by its pid.
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) on the pid of a child we started and still own.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}
