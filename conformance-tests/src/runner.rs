//! Running cases: one case with its leak check, a whole suite, and the
//! libtest-mimic entry point the per-backend test targets call.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use quorate::Capabilities;

use crate::cases::{self, Case};
use crate::outcome::{CaseError, Figures, Verdict};
use crate::report::{lookup, CaseReport, Report, TargetReport};
use crate::target::Target;

/// The longest one case may run before it counts as hung.
pub const CASE_LIMIT: Duration = Duration::from_secs(300);
/// The longest the leak check waits for background clean-up (dropped
/// guards release in the background), as a fraction of the target's
/// session TTL: shorter than the TTL, so that a `release()`, `close()` or
/// drop-release that does nothing is never masked by the lease expiring.
pub const LEAK_WAIT_OF_TTL: f64 = 0.75;

/// Run one case on a fresh namespace of `base`, then check that nothing
/// was left behind.
pub async fn run_case(case: &Case, base: &Target, caps: &Capabilities) -> CaseReport {
    let caps_json = serde_json::to_value(caps).expect("capabilities serialise");
    let mut report = CaseReport {
        name: case.name.to_owned(),
        backend: caps.backend.to_owned(),
        target: base.label.clone(),
        guarantee: case.guarantee.to_owned(),
        capability: case.capability.map(str::to_owned),
        declared: case.capability.and_then(|c| lookup(&caps_json, c).cloned()),
        result: Verdict::Pass,
        detail: String::new(),
        figures: Figures::new(),
        duration_ms: 0.0,
        hooks: Vec::new(),
    };
    if let Err(reason) = case.applies_to(caps, base) {
        report.result = unrun_verdict(case, caps, &caps_json);
        // The controller may say better what is missing (e.g. a hook).
        let own = case
            .needs
            .filter(|&f| (case.applies)(caps).is_ok() && !base.supports(f))
            .and_then(|f| base.faults.as_ref()?.missing(f));
        report.detail = own.unwrap_or_else(|| reason.to_owned());
        return report;
    }
    // A case that breaks servers runs alone: it waits for the running
    // cases to finish, and holds the others back until it is done.
    let (_alone, _shared) = if case.runs_alone() {
        (Some(ONE_AT_A_TIME.write().await), None)
    } else {
        (None, Some(ONE_AT_A_TIME.read().await))
    };
    let target = base.fresh();
    let started = Instant::now();
    // The keeper holds the namespace open (a memory:// state lives only
    // while a coordinator of its name does) and runs the leak check.
    let keeper = match target.connect().await {
        Ok(c) => c,
        Err(e) => {
            report.result = Verdict::Fail;
            report.detail = format!("cannot connect: {e}");
            return report;
        }
    };
    // Forget what earlier cases used: this case's report lists its own.
    if let Some(f) = &base.faults {
        f.take_used();
    }
    let run = AssertUnwindSafe((case.run)(target.clone())).catch_unwind();
    let limit = CASE_LIMIT + case.budget.map_or(Duration::ZERO, |b| b());
    let outcome = match tokio::time::timeout(limit, run).await {
        Err(_) => Err(CaseError::Fail(format!(
            "the case did not finish within {limit:?}"
        ))),
        Ok(Err(panic)) => Err(CaseError::Fail(format!(
            "the case panicked: {}",
            panic_message(&panic)
        ))),
        Ok(Ok(r)) => r,
    };
    let leak_wait = leak_wait(&target);
    match outcome {
        Ok(figures) => {
            if let Some(describe) = case.describe {
                report.detail = describe(&figures);
            }
            report.figures = figures;
        }
        Err(CaseError::Fail(m)) => {
            report.result = Verdict::Fail;
            report.detail = m;
        }
        Err(CaseError::Unverified(m)) => {
            report.result = Verdict::Unverified;
            report.detail = m;
        }
        Err(CaseError::Violated(m, figures)) => {
            report.result = Verdict::Violated;
            report.detail = m;
            report.figures = figures;
        }
    }
    if let Some(f) = &base.faults {
        record_used(&mut report, f.take_used());
    }
    if matches!(report.result, Verdict::Pass | Verdict::Violated) {
        if let Err(left) = wait_until_clean(&keeper, leak_wait).await {
            report.result = Verdict::Fail;
            report.detail = left;
        }
    }
    report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    report
}

/// Put what the fault controller used into `report.hooks` (each name once,
/// in order of first use); a hook that failed makes the case fail, whatever
/// the case concluded from the error.
fn record_used(report: &mut CaseReport, used: Vec<crate::target::Used>) {
    let mut failure = None;
    for u in used {
        if !report.hooks.contains(&u.name) {
            report.hooks.push(u.name.clone());
        }
        if let (None, Some(e)) = (&failure, u.error) {
            failure = Some(format!("the `{}` hook failed: {e}", u.name));
        }
    }
    if let Some(f) = failure {
        if report.result != Verdict::Fail {
            report.detail = if report.detail.is_empty() {
                f
            } else {
                format!("{f} (the case reported: {})", report.detail)
            };
            report.result = Verdict::Fail;
        }
    }
}

/// Cases run concurrently (libtest threads) under a shared turn; a server
/// fault case takes it alone.
static ONE_AT_A_TIME: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The verdict of a case that does not apply to a target: `unverified`
/// when the backend declares the guarantee but this run has no way to
/// measure it (a fault controller the target lacks), else `not-applicable`.
fn unrun_verdict(case: &Case, caps: &Capabilities, caps_json: &serde_json::Value) -> Verdict {
    let declared = case
        .capability
        .and_then(|c| lookup(caps_json, c))
        .is_some_and(declares);
    // A server fault needs a server: an in-process backend has none.
    let has_server = caps.scope == quorate::Scope::Hosts;
    // When the case applies to the backend, only the target's harness is
    // missing.
    if (case.applies)(caps).is_ok() && declared && (case.needs.is_none() || has_server) {
        Verdict::Unverified
    } else {
        Verdict::NotApplicable
    }
}

/// Whether a declared capability value claims the guarantee (`true`, or a
/// non-empty value such as a scope).
fn declares(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Null => false,
        _ => true,
    }
}

/// How long the leak check may wait on `target`: a fraction of its TTL.
fn leak_wait(target: &Target) -> Duration {
    let ttl = quorate::Config::parse(target.url())
        .map(|c| c.ttl)
        .unwrap_or(Duration::from_secs(2));
    ttl.mul_f64(LEAK_WAIT_OF_TTL)
}

async fn wait_until_clean(keeper: &quorate::Coordinator, wait: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match keeper.leftovers().await {
            Ok(left) if left.is_empty() => return Ok(()),
            Ok(left) if start.elapsed() > wait => {
                return Err(format!(
                    "left behind {wait:?} after the case (shorter than the session TTL, so a release or close that does nothing is caught): {}",
                    left.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                ))
            }
            Err(e) if start.elapsed() > wait => {
                return Err(format!("the leak check failed: {e}"))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// The capabilities of a target (one connection).
///
/// # Errors
///
/// When the target cannot be reached.
pub async fn capabilities(target: &Target) -> quorate::Result<Capabilities> {
    Ok(target.connect().await?.capabilities())
}

/// Run every case (or those whose name contains `filter`) on `target`.
///
/// # Errors
///
/// When the target cannot be reached at all.
pub async fn run_suite(target: &Target, filter: Option<&str>) -> quorate::Result<TargetReport> {
    run_suite_matching(target, filter.as_slice()).await
}

/// The filters among `filters` that no case's name contains: a filter
/// that selects nothing is a mistake to report, not an empty pass.
pub fn unmatched_filters<'a>(filters: &[&'a str]) -> Vec<&'a str> {
    let cases = cases::all();
    filters
        .iter()
        .copied()
        .filter(|f| !cases.iter().any(|c| c.name.contains(f)))
        .collect()
}

/// Run every case whose name contains any of `filters` (every case when
/// there is none) on `target`. Check the filters with
/// [`unmatched_filters`] first: one that matches no case runs nothing.
///
/// # Errors
///
/// When the target cannot be reached at all.
pub async fn run_suite_matching(
    target: &Target,
    filters: &[&str],
) -> quorate::Result<TargetReport> {
    let caps = capabilities(target).await?;
    let mut reports = Vec::new();
    for case in cases::all() {
        if !filters.is_empty() && !filters.iter().any(|f| case.name.contains(f)) {
            continue;
        }
        tracing::info!(case = case.name, target = %target.label, "running");
        reports.push(run_case(&case, target, &caps).await);
    }
    Ok(target_report(target, &caps, reports))
}

fn target_report(target: &Target, caps: &Capabilities, cases: Vec<CaseReport>) -> TargetReport {
    TargetReport {
        target: target.label.clone(),
        backend: caps.backend.to_owned(),
        url: quorate::Config::parse(target.url())
            .map(|c| c.redacted())
            .unwrap_or_else(|_| target.label.clone()),
        capabilities: serde_json::to_value(caps).expect("capabilities serialise"),
        cases,
    }
}

/// The `main` of a per-backend conformance test target (`harness = false`):
/// one libtest trial per case and target; a case that does not apply is
/// reported as *ignored*, never as passed. With `QUORATE_REPORT_DIR` set,
/// writes `<dir>/<target>.json` (schema in [`crate::report`]).
///
/// `targets` runs inside the runtime so it can start servers first; the
/// value it returns (e.g. server handles) is kept alive until the end.
pub fn test_main<K, F>(setup: impl FnOnce() -> F) -> !
where
    F: std::future::Future<Output = (Vec<Target>, K)>,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let args = libtest_mimic::Arguments::from_args();
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime"),
    );
    // Listing tests must not start servers.
    let (targets, keep) = if args.list {
        (Vec::new(), None)
    } else {
        let (t, k) = runtime.block_on(setup());
        (t, Some(k))
    };
    let results: Arc<Mutex<Vec<(usize, CaseReport)>>> = Arc::default();
    let mut trials = Vec::new();
    let mut per_target = Vec::new();
    for (ti, target) in targets.iter().enumerate() {
        let caps = match runtime.block_on(capabilities(target)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot reach {}: {e}", target.label);
                std::process::exit(101);
            }
        };
        per_target.push(caps.clone());
        for case in cases::all() {
            let name = format!("{}::{}", target.label, case.name);
            let applies = case.applies_to(&caps, target);
            let runtime = runtime.clone();
            let target = target.clone();
            let caps = caps.clone();
            let results = results.clone();
            // Only a measured, kept guarantee is a passed trial; a broken
            // undeclared one (violated) and one this run could not measure
            // (unverified) are ignored at run time with their verdict as
            // the reason: never counted as passed.
            let trial = libtest_mimic::Trial::ignorable_test(name, move || {
                let report = runtime.block_on(run_case(&case, &target, &caps));
                let verdict = report.result;
                let detail = report.detail.clone();
                results.lock().unwrap().push((ti, report));
                match verdict {
                    Verdict::Pass => Ok(libtest_mimic::Completion::Completed),
                    Verdict::Fail => Err(detail.into()),
                    Verdict::Violated | Verdict::Unverified => {
                        Ok(libtest_mimic::Completion::ignored_with(format!(
                            "{}: {detail}",
                            verdict.as_str()
                        )))
                    }
                    Verdict::NotApplicable => {
                        Err(format!("not applicable at run time: {detail}").into())
                    }
                }
            });
            trials.push(trial.with_ignored_flag(applies.is_err()));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    if let Some(dir) = std::env::var_os("QUORATE_REPORT_DIR") {
        let mut results = std::mem::take(&mut *results.lock().unwrap());
        let dir = std::path::PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for (ti, target) in targets.iter().enumerate() {
            let caps = &per_target[ti];
            let mut cases_out = Vec::new();
            for case in cases::all() {
                if let Some(pos) = results
                    .iter()
                    .position(|(i, r)| *i == ti && r.name == case.name)
                {
                    cases_out.push(results.remove(pos).1);
                } else if let Err(reason) = case.applies_to(caps, target) {
                    let rt = Target::new(target.label.clone(), target.url());
                    let mut r = runtime.block_on(run_case(&case, &rt, caps));
                    reason.clone_into(&mut r.detail);
                    cases_out.push(r);
                }
            }
            let report = Report::new(vec![target_report(target, caps, cases_out)]);
            let path = dir.join(format!("{}.json", target.label));
            if let Err(e) = std::fs::write(&path, report.to_json()) {
                eprintln!("writing {}: {e}", path.display());
            }
        }
    }
    drop(keep);
    drop(targets);
    conclusion.exit()
}
