//! The randomized nemesis as a case (see [`crate::nemesis`]): its
//! duration is `QUORATE_NEMESIS_SECS` (default 20 s).

use std::time::Duration;

use crate::nemesis::{DEFAULT_SECS, SECS_ENV};
use crate::outcome::CaseResult;
use crate::target::Target;

pub async fn run(t: Target) -> CaseResult {
    let secs = std::env::var(SECS_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS);
    crate::nemesis::run(&t, Duration::from_secs(secs)).await
}
