//! quorate-conformance: the shared conformance suite of quorate.
//!
//! - [`cases`]: one set of cases run against every backend, each naming the
//!   guarantee and the declared capability it measures;
//! - [`runner`]: a case with its leak check, a whole suite, and the
//!   libtest-mimic `main` each backend's test target calls;
//! - [`history`]: the history checker (overlapping holds, non-monotonic
//!   fences, stale writes accepted by a fenced resource);
//! - [`bench`]: benchmarks as ratios to raw operations in the same run;
//! - [`agent`]: a client in a child process, for SIGSTOP/SIGKILL faults;
//! - [`report`]: the guarantees report (JSON schema + Markdown);
//! - [`harness`]: real servers on free loopback ports, and a TCP proxy.
#![warn(missing_docs)]

pub mod agent;
pub mod bench;
pub mod cases;
pub mod harness;
pub mod history;
pub mod outcome;
pub mod report;
pub mod runner;
pub mod target;

pub use outcome::{CaseError, CaseResult, Figures, Verdict};
pub use report::Report;
pub use target::Target;
