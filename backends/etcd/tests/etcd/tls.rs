//! `etcds://`: TLS with a CA and client certificates, against an etcd that
//! requires client certificates (`--client-cert-auth`).

use quorate_conformance::harness::etcd::{EtcdCluster, TestPki};
use quorate_conformance::harness::process::TempDir;
use quorate_core::{Config, ErrorKind};

use crate::{connect, namespace};

#[tokio::test]
async fn tls_with_client_certificates() {
    crate::init_tracing();
    let cluster = EtcdCluster::start_local_tls(1).await.unwrap();
    let pki = cluster.pki().unwrap().clone();
    let ns = namespace();
    let coord = connect(&cluster, &ns, "").await;
    let s = coord.session().await.unwrap();
    let g = s.mutex("m").lock().await.unwrap();
    assert!(g.is_held().await.unwrap());
    g.release().await.unwrap();
    s.close().await.unwrap();

    let endpoint = cluster.member_endpoint(0);
    let try_url = |query: String| {
        let url = format!("etcds://{endpoint}/{ns}?connect_timeout=2s&{query}");
        async move { quorate_etcd::connect(&Config::parse(&url).unwrap()).await }
    };
    // No client certificate: the server refuses the handshake.
    let e = try_url(format!("ca={}", pki.ca.display()))
        .await
        .unwrap_err();
    println!("no client certificate: {e}");
    // A CA that did not sign the server's certificate.
    let other = TempDir::new("pki").unwrap();
    let other_pki = TestPki::generate(other.path()).unwrap();
    let e2 = try_url(format!(
        "ca={}&cert={}&key={}",
        other_pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ))
    .await
    .unwrap_err();
    println!("untrusted server: {e2}");
    // Plain text to a TLS port.
    let e3 = quorate_etcd::connect(
        &Config::parse(&format!("etcd://{endpoint}/{ns}?connect_timeout=2s")).unwrap(),
    )
    .await
    .unwrap_err();
    println!("plain text to TLS: {e3}");
    // The server drops the connection after the handshake: to the client
    // that is a broken connection, so the message carries a hint.
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("give `cert=` and `key=`"), "{e}");
    assert_eq!(e2.kind(), ErrorKind::Unauthenticated, "{e2}");
    assert!(e2.to_string().contains("invalid peer certificate"), "{e2}");
    assert_eq!(e3.kind(), ErrorKind::Unavailable, "{e3}");
}
