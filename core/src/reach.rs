//! Failing fast when no endpoint accepts a connection.
//!
//! A backend's client library typically retries refused connections until
//! its `connect_timeout` runs out, which is right once connected (a server
//! restarting comes back) but makes a first connection to a wrong port or a
//! stopped server wait the whole timeout. [`refused_by_all`] probes every
//! endpoint with a plain TCP connection *beside* the real connect: it
//! completes only when every endpoint failed at once (refused, unreachable,
//! a host name that does not resolve), with each endpoint's error, and stays
//! pending otherwise — an endpoint accepting TCP, or one not answering at
//! all, leaves the decision to the real connect and its timeout. Racing the
//! two costs the success path nothing.

use std::future::pending;
use std::io;

use tokio::net::TcpStream;

use crate::Error;

/// What one endpoint did with a TCP connection attempt.
enum Probe {
    /// Some address of the endpoint accepted the connection.
    Accepted,
    /// An attempt did not finish by itself (the operating system's own
    /// timeout): not conclusive.
    NoAnswer,
    /// Every address failed at once; the errors, one per address.
    Failed(Vec<String>),
}

async fn probe(endpoint: &str) -> Probe {
    let addrs = match tokio::net::lookup_host(endpoint).await {
        Ok(addrs) => addrs.collect::<Vec<_>>(),
        Err(e) => return Probe::Failed(vec![format!("{endpoint}: {e}")]),
    };
    if addrs.is_empty() {
        return Probe::Failed(vec![format!("{endpoint}: resolves to no address")]);
    }
    let mut failures = Vec::new();
    let mut no_answer = false;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(_) => return Probe::Accepted,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => no_answer = true,
            Err(e) if addr.to_string() == endpoint => failures.push(format!("{endpoint}: {e}")),
            Err(e) => failures.push(format!("{endpoint} ({addr}): {e}")),
        }
    }
    if no_answer {
        Probe::NoAnswer
    } else {
        Probe::Failed(failures)
    }
}

/// Resolves only when a TCP connection to every one of `endpoints`
/// (`host:port`, IPv6 as `[addr]:port`) fails at once, with an
/// [`crate::ErrorKind::Unavailable`] error naming each endpoint's error
/// (e.g. `127.0.0.1:2379: Connection refused (os error 111)`); stays
/// pending forever if any endpoint accepts a connection, if any attempt
/// hangs, or if `endpoints` is empty. Race it against the real connect
/// (`tokio::select!`), which keeps deciding every other case within its
/// `connect_timeout`.
///
/// `what` names the backend for the message (`"etcd"`).
///
/// # Cancel safety
///
/// Cancel safe: dropping it closes the probe connections it opened.
pub async fn refused_by_all(what: &str, endpoints: &[String]) -> Error {
    if endpoints.is_empty() {
        return pending().await;
    }
    let probes = futures::future::join_all(endpoints.iter().map(|e| probe(e))).await;
    let mut failures = Vec::new();
    for p in probes {
        match p {
            Probe::Failed(f) => failures.extend(f),
            Probe::Accepted | Probe::NoAnswer => return pending().await,
        }
    }
    tracing::debug!(what, ?failures, "no endpoint accepts connections");
    Error::unavailable(format!(
        "no {what} endpoint accepts connections: {}",
        failures.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A loopback port nobody listens on: bound, then released.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn every_endpoint_refusing_resolves_with_each_error() {
        let (a, b) = (closed_port(), closed_port());
        let endpoints = [format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")];
        let e = refused_by_all("test", &endpoints).await;
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
        let m = e.message();
        assert!(m.contains(&format!("127.0.0.1:{a}: ")), "{m}");
        assert!(m.contains(&format!("127.0.0.1:{b}: ")), "{m}");
        assert_eq!(m.matches("refused").count(), 2, "{m}");
    }

    #[tokio::test]
    async fn one_endpoint_accepting_leaves_the_decision_to_the_real_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let endpoints = [
            format!("127.0.0.1:{}", closed_port()),
            format!("127.0.0.1:{open}"),
        ];
        // Pending for good: still pending long after the probes finished
        // (a loopback connection is accepted or refused at once).
        let r = tokio::time::timeout(
            Duration::from_millis(500),
            refused_by_all("test", &endpoints),
        )
        .await;
        assert!(r.is_err(), "resolved although an endpoint accepts: {r:?}");
    }

    #[tokio::test]
    async fn an_unresolvable_host_counts_as_failed() {
        let endpoints = ["no-such-host.invalid:2379".to_owned()];
        let e = refused_by_all("test", &endpoints).await;
        assert!(e.message().contains("no-such-host.invalid:2379: "), "{e}");
    }
}
