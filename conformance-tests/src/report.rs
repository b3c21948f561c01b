//! The guarantees report, as JSON (a stable schema CI parses) and Markdown.
//!
//! JSON schema `quorate-conformance/1`:
//!
//! ```json
//! { "schema": "quorate-conformance/1", "schema_version": 1,
//!   "targets": [ { "target": "etcd-1", "backend": "etcd", "url": "etcd://…",
//!                  "capabilities": { … },
//!                  "cases": [ { "name": "mutual_exclusion", "backend": "etcd",
//!                               "target": "etcd-1", "guarantee": "…",
//!                               "capability": "scope", "declared": "hosts",
//!                               "result": "pass", "detail": "",
//!                               "figures": { "grants_per_s": 812.0 },
//!                               "duration_ms": 1234.5,
//!                               "hooks": [] } ] } ] }
//! ```
//!
//! `result` is one of `pass`, `fail`, `violated`, `not-applicable`,
//! `unverified`: `violated` is a guarantee measured broken that the backend
//! does not declare (`declared` beside it says so); `unverified` a declared
//! guarantee this run could not measure. Only `pass` is a kept guarantee;
//! figure names carry their unit (`_us`, `_ms`, `_per_s`, or a count).

use serde::{Deserialize, Serialize};

use crate::outcome::{Figures, Verdict};

/// The schema identifier written into every report.
pub const SCHEMA: &str = "quorate-conformance/1";
/// The major version of [`SCHEMA`], written as `schema_version`.
pub const SCHEMA_VERSION: u32 = 1;

fn schema_version_1() -> u32 {
    1
}

/// One case's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseReport {
    /// The case name.
    pub name: String,
    /// The backend (`memory`, `file`, `etcd`, …).
    pub backend: String,
    /// The target label (a backend in one deployment: `etcd-3`).
    pub target: String,
    /// The guarantee measured, in words.
    pub guarantee: String,
    /// The capability field checked, if any.
    pub capability: Option<String>,
    /// The declared value of that capability.
    pub declared: Option<serde_json::Value>,
    /// `pass`, `fail`, `violated`, `not-applicable` or `unverified`.
    pub result: Verdict,
    /// Why it failed or does not apply; on a pass, empty, or the outcome
    /// in words for a case that reports one (a server fault case measuring
    /// a guarantee the backend does not declare).
    pub detail: String,
    /// Figures measured, unit in the key.
    pub figures: Figures,
    /// Wall time of the case.
    pub duration_ms: f64,
    /// The fault mechanisms the case used on servers this process did not
    /// start (`quorate conformance --proxy --hook …`): hook kinds
    /// (`kill-server`, `leader`, …) and `proxy` (the built-in proxy), in
    /// order of first use; empty when it used none, and for the harness's
    /// own servers. Absent in reports older than it (read as empty).
    #[serde(default)]
    pub hooks: Vec<String>,
}

impl CaseReport {
    /// A pass of an exclusion the backend does not declare (the case
    /// recorded [`crate::outcome::EXCLUSION_DECLARED`] = 0): kept in this
    /// run, a race the next run may lose, not a guarantee.
    pub fn held_this_run_only(&self) -> bool {
        self.result == Verdict::Pass
            && self.figures.get(crate::outcome::EXCLUSION_DECLARED) == Some(&0.0)
    }
}

/// Every case of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetReport {
    /// The target label.
    pub target: String,
    /// The backend name.
    pub backend: String,
    /// The URL, password redacted.
    pub url: String,
    /// The declared capabilities.
    pub capabilities: serde_json::Value,
    /// The cases, in suite order.
    pub cases: Vec<CaseReport>,
}

/// A whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The schema's major version, [`SCHEMA_VERSION`], as a number: it
    /// changes only when a field is removed, renamed or changes meaning
    /// (new fields may appear within a version). Reports written before
    /// the field existed read as 1.
    #[serde(default = "schema_version_1")]
    pub schema_version: u32,
    /// One entry per target.
    pub targets: Vec<TargetReport>,
}

impl Report {
    /// A report of these targets.
    pub fn new(targets: Vec<TargetReport>) -> Self {
        Report {
            schema: SCHEMA.to_owned(),
            schema_version: SCHEMA_VERSION,
            targets,
        }
    }

    /// Whether any case failed.
    pub fn has_failures(&self) -> bool {
        self.targets
            .iter()
            .flat_map(|t| &t.cases)
            .any(|c| c.result == Verdict::Fail)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// Markdown: a summary table, then one table per target.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        md.push_str(
            "| target | pass | fail | violated (not declared) | unverified | not applicable |\n|---|---|---|---|---|---|\n",
        );
        for t in &self.targets {
            let count = |v: Verdict| t.cases.iter().filter(|c| c.result == v).count();
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                t.target,
                count(Verdict::Pass),
                count(Verdict::Fail),
                count(Verdict::Violated),
                count(Verdict::Unverified),
                count(Verdict::NotApplicable),
            ));
        }
        md.push_str(&self.matrix());
        for t in &self.targets {
            md.push_str(&format!("\n## {} (`{}`)\n\n", t.target, t.url));
            md.push_str("Declared capabilities:\n\n```json\n");
            md.push_str(&serde_json::to_string_pretty(&t.capabilities).unwrap_or_default());
            md.push_str("\n```\n\n");
            md.push_str("| case | guarantee | declared | result | figures / detail |\n|---|---|---|---|---|\n");
            for c in &t.cases {
                let declared = match (&c.capability, &c.declared) {
                    (Some(k), Some(v)) => format!("`{k}` = `{v}`"),
                    _ => "—".to_owned(),
                };
                let mut notes: Vec<String> = c
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", format_figure(*v)))
                    .collect();
                if !c.detail.is_empty() {
                    notes.push(c.detail.replace('|', "\\|").replace('\n', " "));
                }
                if !c.hooks.is_empty() {
                    notes.push(format!("faults injected by: {}", c.hooks.join(", ")));
                }
                md.push_str(&format!(
                    "| `{}` | {} | {} | **{}** | {} |\n",
                    c.name,
                    c.guarantee.replace('|', "\\|"),
                    declared,
                    verdict_word(c),
                    notes.join("; ")
                ));
            }
        }
        md
    }
}

/// The faults of the fault matrix: (fault, the case that injects it).
const FAULTS: &[(&str, &str)] = &[
    ("client SIGSTOP past the TTL", "holder_pause"),
    (
        "waiter SIGSTOP past the TTL, grant in flight",
        "waiter_pause",
    ),
    ("client SIGKILL", "holder_crash_frees_lock"),
    ("client ↔ server partition", "partition_loss_before_expiry"),
    (
        "replies lost (one-way partition)",
        "one_way_partition_loss_before_expiry",
    ),
    (
        "member ↔ member partition",
        "member_partition_loss_before_regrant",
    ),
    ("reads on a cut-off member", "no_stale_reads"),
    ("leader / primary killed", "leader_failover"),
    ("server SIGSTOP past the TTL", "server_pause"),
    (
        "failover to a lagging replica",
        "fence_after_lagging_failover",
    ),
    ("restart without data", "restart_without_persistence"),
    ("server clock step", "server_clock_step"),
    ("eviction configured", "eviction_refused"),
    ("lock files removed", "lock_file_removed"),
    ("release reply lost", "release_survives_lost_reply"),
    ("random mix (nemesis)", "nemesis"),
];

impl Report {
    /// The fault matrix, target × fault: what each deployment survives,
    /// from the case that injects the fault. A held guarantee shows the
    /// measured delays where the case has them.
    pub fn fault_matrix(&self) -> String {
        let mut md = String::from("| target |");
        for (fault, _) in FAULTS {
            md.push_str(&format!(" {fault} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(FAULTS.len()));
        md.push('\n');
        for t in &self.targets {
            md.push_str(&format!("| {} |", t.target));
            for (_, case) in FAULTS {
                let cell = t
                    .cases
                    .iter()
                    .find(|c| c.name == *case)
                    .map_or_else(String::new, fault_cell);
                md.push_str(&format!(" {cell} |"));
            }
            md.push('\n');
        }
        md.push_str(
            "\nheld: the guarantee was kept (delays measured from the fault: *told* = the holder's `lost()`, *other* = another client granted) · held in this run (not declared): nobody else was granted the lock before the holder was told, on a backend that does not declare it (a race this run did not lose; the next may) · 🔴 FAIL: declared, broken · 🔴 violated: broken, and declared not kept · ⚪ unverified: declared, not measurable here · —: not applicable · blank: not run\n",
        );
        md
    }

    /// One matrix, case × target, each cell the verdict's mark: the view a
    /// user reads first. A broken guarantee is red whether it was declared
    /// (fail) or not (violated).
    fn matrix(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for c in self.targets.iter().flat_map(|t| &t.cases) {
            if !names.contains(&c.name.as_str()) {
                names.push(&c.name);
            }
        }
        let mut md = String::from("\n| case |");
        for t in &self.targets {
            md.push_str(&format!(" {} |", t.target));
        }
        md.push_str("\n|---|");
        md.push_str(&"---|".repeat(self.targets.len()));
        md.push('\n');
        for name in names {
            md.push_str(&format!("| `{name}` |"));
            for t in &self.targets {
                let cell = t
                    .cases
                    .iter()
                    .find(|c| c.name == name)
                    .map_or("", verdict_mark);
                md.push_str(&format!(" {cell} |"));
            }
            md.push('\n');
        }
        md.push_str(
            "\n🟢 pass · 🟢 pass this run (not declared): an exclusion the backend does not declare held in this run, a race the next may lose · 🔴 FAIL (declared, broken) · 🔴 VIOLATED (not declared, broken) · ⚪ unverified (declared, not measured here) · — not applicable\n",
        );
        md
    }
}

fn fault_cell(c: &CaseReport) -> String {
    // Seconds, or milliseconds below one (a file removal is told in ms).
    let ms = |k: &str| {
        c.figures.get(k).map(|&v| match v {
            v if v >= 1000.0 => format!("{:.1} s", v / 1000.0),
            v if v >= 10.0 => format!("{v:.0} ms"),
            v => format!("{v:.1} ms"),
        })
    };
    match c.result {
        Verdict::Pass => {
            // Kept in this run by a backend that does not declare it: a
            // race this run did not lose, not a guarantee.
            let undeclared = c.held_this_run_only();
            let mut notes = Vec::new();
            if undeclared {
                notes.push("not declared".to_owned());
            }
            match (ms("holder_told_ms"), ms("other_granted_ms")) {
                (Some(t), Some(o)) => notes.push(format!("told {t}, other {o}")),
                (Some(t), None) => notes.push(format!("told {t}")),
                _ => {}
            }
            let head = if undeclared {
                "held in this run"
            } else {
                "held"
            };
            if notes.is_empty() {
                head.to_owned()
            } else {
                format!("{head} ({})", notes.join("; "))
            }
        }
        Verdict::Fail => "🔴 **FAIL**".to_owned(),
        Verdict::Violated => "🔴 **violated** (declared: no)".to_owned(),
        Verdict::Unverified => "⚪ unverified".to_owned(),
        Verdict::NotApplicable => "—".to_owned(),
    }
}

fn verdict_mark(c: &CaseReport) -> &'static str {
    match c.result {
        Verdict::Pass if c.held_this_run_only() => "🟢 pass this run (not declared)",
        Verdict::Pass => "🟢 pass",
        Verdict::Fail => "🔴 **FAIL**",
        Verdict::Violated => "🔴 **VIOLATED**",
        Verdict::NotApplicable => "—",
        Verdict::Unverified => "⚪ unverified",
    }
}

fn verdict_word(c: &CaseReport) -> &'static str {
    match c.result {
        Verdict::Pass if c.held_this_run_only() => {
            "pass in this run (not declared: a race it did not lose)"
        }
        Verdict::Pass => "pass",
        Verdict::Fail => "🔴 FAIL",
        Verdict::Violated => "🔴 VIOLATED (not declared)",
        Verdict::NotApplicable => "not applicable",
        Verdict::Unverified => "unverified",
    }
}

fn format_figure(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e12) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The value at a dotted path (`primitives.rwlock`) of a JSON object.
pub fn lookup<'a>(json: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(json, |v, k| v.get(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(told_ms: f64, other_ms: f64) -> CaseReport {
        CaseReport {
            name: "lock_file_removed".into(),
            backend: "file".into(),
            target: "file".into(),
            guarantee: String::new(),
            capability: None,
            declared: None,
            result: Verdict::Pass,
            detail: String::new(),
            figures: [
                ("holder_told_ms".to_owned(), told_ms),
                ("other_granted_ms".to_owned(), other_ms),
            ]
            .into(),
            duration_ms: 0.0,
            hooks: Vec::new(),
        }
    }

    /// Delays under a second are shown in milliseconds, not as `0.0 s`.
    #[test]
    fn fault_cells_show_short_delays_in_milliseconds() {
        assert_eq!(
            fault_cell(&held(0.84, 1.5)),
            "held (told 0.8 ms, other 1.5 ms)"
        );
        assert_eq!(
            fault_cell(&held(14.2, 667.0)),
            "held (told 14 ms, other 667 ms)"
        );
        assert_eq!(
            fault_cell(&held(1700.0, 2400.0)),
            "held (told 1.7 s, other 2.4 s)"
        );
    }

    /// A pass of a backend that does not declare exclusion says so.
    #[test]
    fn an_undeclared_exclusion_held_is_held_in_this_run_only() {
        let mut c = held(0.5, 1.0);
        c.figures
            .insert(crate::outcome::EXCLUSION_DECLARED.into(), 0.0);
        assert_eq!(
            fault_cell(&c),
            "held in this run (not declared; told 0.5 ms, other 1.0 ms)"
        );
        c.figures.clear();
        c.figures
            .insert(crate::outcome::EXCLUSION_DECLARED.into(), 0.0);
        assert_eq!(fault_cell(&c), "held in this run (not declared)");
        c.figures
            .insert(crate::outcome::EXCLUSION_DECLARED.into(), 1.0);
        assert_eq!(fault_cell(&c), "held");
    }
}
