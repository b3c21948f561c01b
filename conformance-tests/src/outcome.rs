//! What a case returns, and helpers to write cases tersely.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The result of one case, as it appears in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The guarantee was measured and held.
    Pass,
    /// The guarantee was measured and did not hold.
    Fail,
    /// The backend does not declare the guarantee, or its scope makes the
    /// case meaningless (e.g. a process fault on an in-process backend).
    NotApplicable,
    /// The case could not measure the guarantee here (e.g. it needs a
    /// server harness or fault controller this run does not have). Never
    /// counted as a pass.
    Unverified,
    /// The guarantee was measured and broken, and the backend does not
    /// declare it (`declared: no` beside it). Never counted as a pass; not a
    /// failure of the suite, since the declaration is honest.
    Violated,
}

impl Verdict {
    /// The verdict's word in the report (`pass`, `fail`, …), as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::NotApplicable => "not-applicable",
            Verdict::Unverified => "unverified",
            Verdict::Violated => "violated",
        }
    }
}

/// Named figures a case measured; the unit is in the key
/// (`handoff_p50_us`, `detect_ms`, …).
pub type Figures = BTreeMap<String, f64>;

/// Why a case did not pass.
#[derive(Debug, Clone)]
pub enum CaseError {
    /// The guarantee did not hold; the message says how.
    Fail(String),
    /// The case could not measure here; the message says why.
    Unverified(String),
    /// The guarantee was measured and broken where the backend does not
    /// declare it: the outcome in words and the figures measured.
    Violated(String, Figures),
}

/// The error for a broken guarantee: a failure if the backend declares it,
/// else a [`Verdict::Violated`] measurement carrying its figures. Never a
/// pass either way.
pub fn broken(declared: bool, detail: String, figures: Figures) -> CaseError {
    if declared {
        CaseError::Fail(detail)
    } else {
        CaseError::Violated(detail, figures)
    }
}

impl From<quorate::Error> for CaseError {
    fn from(e: quorate::Error) -> Self {
        CaseError::Fail(format!("unexpected error: {e}"))
    }
}

/// The figure a case that measures whether two clients held a lock at once
/// records beside its outcome: 1 when the backend declares that guarantee
/// (a double grant fails the case), 0 when it does not (a double grant is
/// `violated`, and a run without one is a pass *in this run*, which the
/// report says: a race the run did not lose is not a guarantee).
pub const EXCLUSION_DECLARED: &str = "exclusion_declared";

/// A case's return value: figures on success.
pub type CaseResult = Result<Figures, CaseError>;

/// Fail the case unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::outcome::CaseError::Fail(format!($($msg)+)));
        }
    };
}

/// Fail the case with a message.
#[macro_export]
macro_rules! fail {
    ($($msg:tt)+) => {
        return Err($crate::outcome::CaseError::Fail(format!($($msg)+)))
    };
}

/// Await `fut`, failing the case if it takes longer than `secs` seconds:
/// a liveness bound (something that must happen eventually), never a speed
/// requirement.
pub async fn within<T>(
    secs: f64,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, CaseError> {
    tokio::time::timeout(std::time::Duration::from_secs_f64(secs), fut)
        .await
        .map_err(|_| CaseError::Fail(format!("{what}: did not happen within {secs} s")))
}

/// Await a spawned task that returns a quorate result, failing the case if
/// it does not finish within `secs` (a liveness bound), fails, or panics.
pub async fn joined<T>(
    secs: f64,
    what: &str,
    task: tokio::task::JoinHandle<quorate::Result<T>>,
) -> Result<T, CaseError> {
    match within(secs, what, task).await? {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CaseError::Fail(format!("{what}: {e}"))),
        Err(e) => Err(CaseError::Fail(format!("{what}: the task panicked: {e}"))),
    }
}

/// Summary statistics of a sample, in the sample's unit.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[rank.min(samples.len() - 1)]
}
