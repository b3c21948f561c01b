//! quorate-conformance: the shared conformance suite of quorate.
//!
//! - [`cases`]: one set of cases run against every backend, each naming the
//!   guarantee and the declared capability it measures;
//! - [`runner`]: a case with its leak check, a whole suite, and the
//!   libtest-mimic `main` each backend's test target calls;
//! - [`history`]: the history checker (overlapping holds, non-monotonic
//!   fences, stale writes accepted by a fenced resource);
//! - [`bench`](mod@bench): benchmarks as ratios to raw operations in the same run;
//! - [`agent`]: a client in a child process, for SIGSTOP/SIGKILL faults;
//! - [`report`]: the guarantees report (JSON schema + Markdown);
//! - [`harness`]: real servers on free loopback ports, a TCP proxy, and a
//!   fenced register;
//! - [`nemesis`]: random faults over a time budget, the whole history
//!   checked;
//! - [`hooks`]: fault injection on servers this process did not start
//!   (`quorate conformance --proxy --hook KIND=COMMAND`);
//! - [`mutant`]: deliberately broken backends that show each verdict can
//!   fail.
#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod cases;
pub mod harness;
pub mod history;
pub mod hooks;
pub mod junit;
pub mod mutant;
pub mod nemesis;
pub mod outcome;
pub mod report;
pub mod runner;
pub mod svg;
pub mod target;

pub use outcome::{CaseError, CaseResult, Figures, Verdict};
pub use report::Report;
pub use target::Target;

/// Connect to `url` as every client of the suite does: `quorate::connect`,
/// with this process's [`mutant::Mutation`] applied if one is set.
///
/// # Errors
///
/// As `quorate::connect`.
pub async fn connect(url: &str) -> quorate::Result<quorate::Coordinator> {
    let coord = quorate::connect(url).await?;
    Ok(match mutant::Mutation::from_env() {
        Some(m) => mutant::wrap(coord, m),
        None => coord,
    })
}
