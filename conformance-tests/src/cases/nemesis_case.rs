//! The randomized nemesis as a case (see [`crate::nemesis`]): its
//! duration is `QUORATE_NEMESIS_SECS` (default 20 s).

use crate::outcome::CaseResult;
use crate::target::Target;

pub async fn run(t: Target) -> CaseResult {
    crate::nemesis::run(&t, crate::nemesis::duration()).await
}
