//! The conformance suite's child-process client (see `agent.rs` in the
//! library): `quorate-agent URL`, commands on stdin, JSON events on stdout.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: quorate-agent URL");
        std::process::exit(2);
    };
    quorate_conformance::agent::serve(&url).await;
}
