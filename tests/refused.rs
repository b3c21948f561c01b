//! A connection refused by every endpoint fails at once, with each
//! endpoint's error, instead of after the whole `connect_timeout` (issue 13).
//!
//! The URLs name loopback ports nobody listens on (bound, then released)
//! and a `connect_timeout` of one hour. The assertions are on the error's
//! kind and message; the elapsed time is printed, not asserted. A backend
//! that waited for its timeout would hit the test's liveness bound instead.

use std::time::{Duration, Instant};

use quorate::ErrorKind;

/// Far below the one-hour `connect_timeout`: reaching it means the connect
/// did not fail fast.
const LIVENESS: Duration = Duration::from_secs(120);

/// A loopback port nobody listens on: bound, then released.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Connect to `url` (which must be refused on every endpoint); return the
/// error's message after checking its kind and that each port is named
/// with a refusal.
async fn refused(url: &str, ports: &[u16]) -> String {
    let start = Instant::now();
    let r = tokio::time::timeout(LIVENESS, quorate::connect(url)).await;
    let elapsed = start.elapsed();
    println!("{url}: failed after {elapsed:?}");
    let e = match r {
        Err(_) => panic!("{url}: still connecting after {LIVENESS:?}: refusals do not fail fast"),
        Ok(Ok(_)) => panic!("{url}: connected to a port nobody listens on"),
        Ok(Err(e)) => e,
    };
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{url}: {e}");
    let m = e.to_string();
    for p in ports {
        let named = m
            .split(';')
            .any(|part| part.contains(&format!(":{p}")) && part.contains("refused"));
        assert!(named, "{url}: port {p}'s refusal is not in `{m}`");
    }
    m
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_refused_by_every_endpoint_fails_at_once() {
    let (a, b) = (closed_port(), closed_port());
    refused(&format!("etcd://127.0.0.1:{a}?connect_timeout=1h"), &[a]).await;
    refused(
        &format!("etcd://127.0.0.1:{a},127.0.0.1:{b}/ns?connect_timeout=1h"),
        &[a, b],
    )
    .await;
}

#[cfg(feature = "zookeeper")]
#[tokio::test]
async fn zookeeper_refused_by_every_server_fails_at_once() {
    let (a, b) = (closed_port(), closed_port());
    refused(
        &format!("zookeeper://127.0.0.1:{a}?connect_timeout=1h"),
        &[a],
    )
    .await;
    refused(
        &format!("zookeeper://127.0.0.1:{a},127.0.0.1:{b}/chroot?connect_timeout=1h"),
        &[a, b],
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_refused_fails_at_once() {
    let (a, b) = (closed_port(), closed_port());
    refused(&format!("redis://127.0.0.1:{a}?connect_timeout=1h"), &[a]).await;
    refused(
        &format!("redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}/mymaster?connect_timeout=1h"),
        &[a, b],
    )
    .await;
}

/// One endpoint refusing and one accepting TCP (but never answering): not
/// a refusal by every endpoint, so the connect waits for its
/// `connect_timeout` (here 1 s) and says so.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn one_silent_endpoint_leaves_it_to_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = silent.local_addr().unwrap().port();
    let a = closed_port();
    let url = format!("etcd://127.0.0.1:{a},127.0.0.1:{open}?connect_timeout=1s");
    let start = Instant::now();
    let e = tokio::time::timeout(LIVENESS, quorate::connect(&url))
        .await
        .expect("bounded by connect_timeout")
        .expect_err("a silent server does not connect");
    println!("{url}: failed after {:?}", start.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("connect_timeout"), "{e}");
    drop(silent);
}
