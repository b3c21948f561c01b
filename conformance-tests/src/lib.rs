//! quorate-conformance: the shared conformance suite, server harness,
//! fault injection, history checker and report.
#![warn(missing_docs)]

pub mod harness;
