//! The conformance suite on the file backend, in a temporary directory.

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("file://{}?ttl=2s", dir.path().display());
        (vec![quorate_conformance::Target::new("file", url)], dir)
    })
}
