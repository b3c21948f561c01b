//! The conformance suite on the in-process reference backend.

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        (
            vec![quorate_conformance::Target::new(
                "memory",
                "memory://?ttl=2s",
            )],
            (),
        )
    })
}
