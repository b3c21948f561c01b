//! The `metrics` feature records what `core/src/metrics.rs` documents, on a
//! real (in-process) backend, read back through a debugging recorder.
#![cfg(all(feature = "metrics", feature = "memory"))]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// (name, labels sorted as `k=v`, value) of every recorded metric.
fn snapshot(s: &Snapshotter) -> Vec<(String, Vec<String>, DebugValue)> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let _: MetricKind = kind;
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

fn counter(all: &[(String, Vec<String>, DebugValue)], name: &str, labels: &[&str]) -> u64 {
    all.iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|x| l.iter().any(|y| y == x)))
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

fn samples(all: &[(String, Vec<String>, DebugValue)], name: &str, labels: &[&str]) -> usize {
    all.iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|x| l.iter().any(|y| y == x)))
        .map(|(_, _, v)| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "current_thread")]
async fn grants_waits_holds_losses_and_keepalives_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let coord = quorate::connect("memory://metrics-test?ttl=300ms")
        .await
        .unwrap();
    let s1 = coord.session().await.unwrap();
    let s2 = coord.session().await.unwrap();

    let guard = s1.mutex("m").lock().await.unwrap();
    assert!(s2.mutex("m").try_lock().await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(250)).await; // ≥ 1 keep-alive at ttl/3
    guard.release().await.unwrap();

    // A grant lost before its owner gave it back: revoke the session.
    let lost = s2.rwlock("r").read().await.unwrap();
    coord.revoke_session(s2.id()).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), lost.lost()).await;
    drop(lost);

    let all = snapshot(&snapshotter);
    let b = "backend=memory";
    assert_eq!(
        counter(
            &all,
            "quorate_grants_total",
            &[b, "kind=mutex", "mode=wait"]
        ),
        1
    );
    assert_eq!(
        counter(&all, "quorate_grants_total", &[b, "kind=read", "mode=wait"]),
        1
    );
    assert_eq!(
        samples(
            &all,
            "quorate_acquire_seconds",
            &[b, "mode=try", "outcome=busy"]
        ),
        1
    );
    assert_eq!(
        samples(&all, "quorate_hold_seconds", &[b, "grant=lock"]),
        2,
        "{all:?}"
    );
    assert_eq!(
        counter(
            &all,
            "quorate_losses_total",
            &[b, "grant=lock", "reason=gone"]
        ),
        1,
        "{all:?}"
    );
    assert!(samples(&all, "quorate_keepalive_seconds", &[b, "outcome=ok"]) >= 1);
}
