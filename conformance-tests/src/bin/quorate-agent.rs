//! The conformance suite's child-process client (see `agent.rs` in the
//! library): `quorate-agent URL`, commands on stdin, JSON events on stdout.
//! With `QUORATE_AGENT_LOG=DIR` each agent writes its traces (filter:
//! `RUST_LOG`, default `debug`) to `DIR/agent-PID.log`, to debug a run.

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: quorate-agent URL");
        std::process::exit(2);
    };
    if let Some(dir) = std::env::var_os("QUORATE_AGENT_LOG") {
        let path = std::path::Path::new(&dir).join(format!("agent-{}.log", std::process::id()));
        if let Ok(file) = std::fs::File::create(&path) {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
        }
    }
    quorate_conformance::agent::serve(&url).await;
}
