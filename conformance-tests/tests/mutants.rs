//! The suite against deliberately broken backends: every verdict the
//! report shows must be able to fail. For each [`Mutation`], a child
//! process (this executable, with the mutation in its environment so the
//! agent processes it starts inherit it) runs the cases that must catch it
//! against `memory://` and a real one-member etcd it starts (with its fault
//! controller, so server fault cases apply there); the trial passes only if
//! each of those cases *fails* on every target where it applies.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;

use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_conformance::harness::faults::EtcdFaults;
use quorate_conformance::mutant::{Mutation, ENV};
use quorate_conformance::report::TargetReport;
use quorate_conformance::{runner, Report, Target, Verdict};

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Some(m) = Mutation::from_env() {
        // Child: run the cases that must catch `m`, print the report.
        let report = runtime.block_on(child(m));
        println!("{}", report.to_json());
        return;
    }
    let args = libtest_mimic::Arguments::from_args();
    let trials = Mutation::ALL
        .into_iter()
        .map(|m| {
            libtest_mimic::Trial::test(format!("mutant::{}", m.as_str()), move || {
                caught(m).map_err(Into::into)
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

async fn child(m: Mutation) -> Report {
    let etcd = EtcdCluster::start_local(1).await.expect("start etcd");
    let url = etcd.url("quorate", "ttl=2s");
    let etcd = Arc::new(tokio::sync::Mutex::new(etcd));
    let mut with_faults = Target::new("etcd", url);
    with_faults.faults = EtcdFaults::new(etcd.clone())
        .await
        .map(|f| Arc::new(f) as _);
    let mut targets = Vec::new();
    for target in [Target::new("memory", "memory://?ttl=2s"), with_faults] {
        let mut merged: Option<TargetReport> = None;
        for case in m.caught_by() {
            let r = runner::run_suite(&target, Some(case))
                .await
                .expect("the target is reachable");
            match &mut merged {
                Some(t) => t.cases.extend(r.cases),
                None => merged = Some(r),
            }
        }
        targets.extend(merged);
    }
    Report::new(targets)
}

/// Run the child for `m` and check that every case that must catch it
/// failed wherever it applies.
fn caught(m: Mutation) -> Result<(), String> {
    let out = std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(ENV, m.as_str())
        // A short nemesis: a broken backend shows within seconds.
        .env(quorate_conformance::nemesis::SECS_ENV, "6")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running the mutant child: {e}"))?;
    if !out.status.success() {
        return Err(format!("the mutant child exited with {}", out.status));
    }
    let report: Report = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the mutant child's report: {e}"))?;
    let mut verdicts: BTreeMap<(String, String), (Verdict, String)> = BTreeMap::new();
    for t in &report.targets {
        for c in &t.cases {
            verdicts.insert(
                (c.name.clone(), t.target.clone()),
                (c.result, c.detail.clone()),
            );
        }
    }
    let mut uncaught = Vec::new();
    let mut caught_somewhere = false;
    for ((name, target), (verdict, detail)) in &verdicts {
        if !m.caught_by().contains(&name.as_str()) {
            continue;
        }
        match verdict {
            Verdict::Fail => {
                caught_somewhere = true;
                eprintln!("{}: {name} on {target} fails: {detail}", m.as_str());
            }
            Verdict::NotApplicable => {}
            other => uncaught.push(format!("{name} on {target}: {}", other.as_str())),
        }
    }
    if !uncaught.is_empty() {
        return Err(format!(
            "the {} mutant was not caught by: {}",
            m.as_str(),
            uncaught.join("; ")
        ));
    }
    if !caught_somewhere {
        return Err(format!("no case ran against the {} mutant", m.as_str()));
    }
    Ok(())
}
