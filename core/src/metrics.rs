//! Optional metrics, recorded through the [`metrics`](https://docs.rs/metrics)
//! crate's facade when the cargo feature `metrics` is on (install any
//! `metrics` exporter, e.g. Prometheus, in your program to see them). Without
//! the feature these functions compile to nothing.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `quorate_acquire_seconds` | histogram | `backend`, `kind`, `mode`, `outcome` | time from calling `lock`/`read`/`write`/`try_*` to its answer (`mode`: `wait`, `try`; `outcome`: `granted`, `busy`, `error`) |
//! | `quorate_grants_total` | counter | `backend`, `kind`, `mode` | locks granted |
//! | `quorate_hold_seconds` | histogram | `backend`, `grant` | time from grant to give-back (or to the guard's drop); `grant`: `lock`, `leadership`, `membership` |
//! | `quorate_losses_total` | counter | `backend`, `grant`, `reason` | grants that were lost before their owner gave them back (`reason`: `deadline` — no keep-alive within the TTL; `gone` — the backend said the lease or key is gone), counted when the grant ends |
//! | `quorate_keepalive_seconds` | histogram | `backend`, `outcome` | one automatic keep-alive round trip (`outcome`: `ok`, `lost`, `error`, `timeout`) |
//!
//! Hand-offs show in `quorate_acquire_seconds{mode="wait"}`: core cannot
//! tell a grant handed over by a releaser from one that found the lock
//! free, so there is no separate hand-off counter.

use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

use crate::loss::LossReason;
use crate::model::LockKind;
use crate::spi::Acquire;

/// When something timed for a metric started: the time with the `metrics`
/// feature; without it nothing, and no clock is read (a clock read is a
/// measurable part of an uncontended grant).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    started: Instant,
}

impl Stopwatch {
    /// Start timing now.
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            started: Instant::now(),
        }
    }

    /// The time since [`Stopwatch::start`] (zero without the feature).
    pub(crate) fn elapsed(&self) -> Duration {
        #[cfg(feature = "metrics")]
        return self.started.elapsed();
        #[cfg(not(feature = "metrics"))]
        Duration::ZERO
    }
}

/// How an acquisition ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcquireOutcome {
    Granted,
    Busy,
    Error,
}

/// How a keep-alive round trip ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAliveOutcome {
    Ok,
    Lost,
    Error,
    Timeout,
}

fn kind_label(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Mutex => "mutex",
        LockKind::Read => "read",
        LockKind::Write => "write",
    }
}

fn mode_label(mode: Acquire) -> &'static str {
    match mode {
        Acquire::Wait => "wait",
        Acquire::Try => "try",
    }
}

/// An acquisition answered after `took`.
pub(crate) fn acquired(
    backend: &'static str,
    kind: LockKind,
    mode: Acquire,
    outcome: AcquireOutcome,
    took: Duration,
) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match outcome {
            AcquireOutcome::Granted => "granted",
            AcquireOutcome::Busy => "busy",
            AcquireOutcome::Error => "error",
        };
        let (kind, mode) = (kind_label(kind), mode_label(mode));
        metrics::histogram!("quorate_acquire_seconds", "backend" => backend, "kind" => kind, "mode" => mode, "outcome" => outcome)
            .record(took.as_secs_f64());
        if outcome == "granted" {
            metrics::counter!("quorate_grants_total", "backend" => backend, "kind" => kind, "mode" => mode)
                .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, kind_label(kind), mode_label(mode), outcome, took);
}

/// A grant ended (given back, or its guard dropped) after `held`; `lost` is
/// the guard's loss reason if it was lost before that.
pub(crate) fn grant_ended(
    backend: &'static str,
    grant: &'static str,
    held: Duration,
    lost: Option<&LossReason>,
) {
    let reason = match lost {
        Some(LossReason::Deadline { .. }) => Some("deadline"),
        Some(LossReason::Gone(_)) => Some("gone"),
        _ => None,
    };
    #[cfg(feature = "metrics")]
    {
        metrics::histogram!("quorate_hold_seconds", "backend" => backend, "grant" => grant)
            .record(held.as_secs_f64());
        if let Some(reason) = reason {
            metrics::counter!("quorate_losses_total", "backend" => backend, "grant" => grant, "reason" => reason)
                .increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, grant, held, reason);
}

/// One automatic keep-alive round trip.
pub(crate) fn keep_alive(backend: &'static str, outcome: KeepAliveOutcome, took: Duration) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match outcome {
            KeepAliveOutcome::Ok => "ok",
            KeepAliveOutcome::Lost => "lost",
            KeepAliveOutcome::Error => "error",
            KeepAliveOutcome::Timeout => "timeout",
        };
        metrics::histogram!("quorate_keepalive_seconds", "backend" => backend, "outcome" => outcome)
            .record(took.as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, outcome, took);
}
