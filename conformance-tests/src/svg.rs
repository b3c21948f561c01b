//! The guarantees matrix as a picture: one row per case, one column per
//! target, each cell coloured by its verdict. Rendered from the same
//! [`Report`] as the Markdown (`quorate-guarantees render` writes it beside
//! the `.md`), so the picture never disagrees with the table.

use std::fmt::Write as _;

use crate::outcome::Verdict;
use crate::report::Report;

const CELL_W: usize = 92;
const CELL_H: usize = 18;
const LABEL_W: usize = 330;
const HEADER_H: usize = 70;
const LEGEND_H: usize = 40;

/// Fill colour and the word shown in a cell.
fn style(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Pass => ("#2ca02c", "pass"),
        Verdict::Fail => ("#d62728", "FAIL"),
        Verdict::Violated => ("#ff7f0e", "violated"),
        Verdict::Unverified => ("#bbbbbb", "unverified"),
        Verdict::NotApplicable => ("#f2f2f2", "—"),
    }
}

/// A pass on a backend that does not declare the exclusion it measured:
/// kept in this run only (see [`crate::outcome::EXCLUSION_DECLARED`]).
const PASS_THIS_RUN: (&str, &str) = ("#98df8a", "pass this run");

/// Fill colour and word of a case's cell.
fn cell_style(c: &crate::report::CaseReport) -> (&'static str, &'static str) {
    if c.held_this_run_only() {
        PASS_THIS_RUN
    } else {
        style(c.result)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The case × target matrix of `report` as a standalone SVG document.
/// Cases appear in the order of their first appearance; a case a target did
/// not run is left blank (white), never drawn as a pass.
pub fn matrix(report: &Report) -> String {
    let mut cases: Vec<&str> = Vec::new();
    for t in &report.targets {
        for c in &t.cases {
            if !cases.contains(&c.name.as_str()) {
                cases.push(&c.name);
            }
        }
    }
    let width = LABEL_W + CELL_W * report.targets.len() + 10;
    let height = HEADER_H + CELL_H * cases.len() + LEGEND_H;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">Guarantees measured per target (conformance suite on real servers; generated from the JSON report)</text>"#
    );
    for (i, t) in report.targets.iter().enumerate() {
        let x = LABEL_W + CELL_W * i + CELL_W / 2;
        let _ = writeln!(
            svg,
            r#"<text x="{x}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            HEADER_H - 8,
            escape(&t.target)
        );
    }
    for (row, name) in cases.iter().enumerate() {
        let y = HEADER_H + CELL_H * row;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end" font-family="monospace">{}</text>"#,
            LABEL_W - 6,
            y + CELL_H - 5,
            escape(name)
        );
        for (col, t) in report.targets.iter().enumerate() {
            let x = LABEL_W + CELL_W * col;
            let Some(c) = t.cases.iter().find(|c| c.name == *name) else {
                continue;
            };
            let (fill, word) = cell_style(c);
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{y}" width="{}" height="{}" fill="{fill}" stroke="white"><title>{}: {} — {}</title></rect>"#,
                CELL_W - 1,
                CELL_H - 1,
                escape(&t.target),
                escape(name),
                escape(c.result.as_str()),
            );
            let ink = match (c.result, c.held_this_run_only()) {
                (Verdict::NotApplicable | Verdict::Unverified, _) | (_, true) => "#333333",
                _ => "white",
            };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle" fill="{ink}">{word}</text>"#,
                x + CELL_W / 2,
                y + CELL_H - 5,
            );
        }
    }
    let y = HEADER_H + CELL_H * cases.len() + 22;
    let mut x = 10;
    let legend = [
        (style(Verdict::Pass).0, "pass: measured and kept"),
        (PASS_THIS_RUN.0, "pass this run: not declared"),
        (style(Verdict::Fail).0, "FAIL: declared, broken"),
        (
            style(Verdict::Violated).0,
            "violated: broken, declared not kept",
        ),
        (
            style(Verdict::Unverified).0,
            "unverified: not measurable here",
        ),
        (style(Verdict::NotApplicable).0, "not applicable"),
    ];
    for (fill, label) in legend {
        let _ = writeln!(
            svg,
            r##"<rect x="{x}" y="{}" width="14" height="14" fill="{fill}" stroke="#999"/><text x="{}" y="{}">{label}</text>"##,
            y - 11,
            x + 18,
            y
        );
        x += 18 + label.len() * 6 + 20;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CaseReport, TargetReport};

    fn case(name: &str, result: Verdict) -> CaseReport {
        CaseReport {
            name: name.into(),
            backend: "b".into(),
            target: "t".into(),
            guarantee: "g".into(),
            capability: None,
            declared: None,
            result,
            detail: String::new(),
            figures: Default::default(),
            duration_ms: 0.0,
            hooks: Vec::new(),
        }
    }

    #[test]
    fn every_verdict_gets_its_own_colour_and_missing_cases_stay_blank() {
        let report = Report::new(vec![
            TargetReport {
                target: "a<b".into(),
                backend: "b".into(),
                url: "x://".into(),
                capabilities: serde_json::Value::Null,
                cases: vec![case("one", Verdict::Fail), case("two", Verdict::Violated)],
            },
            TargetReport {
                target: "c".into(),
                backend: "b".into(),
                url: "x://".into(),
                capabilities: serde_json::Value::Null,
                cases: vec![case("two", Verdict::Pass)],
            },
        ]);
        let svg = matrix(&report);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a&lt;b"), "target names are escaped");
        // Three cells drawn (the missing `c`/`one` is not), plus the legend.
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("<title>a&lt;b: one — fail</title>"));
        assert!(svg.contains("<title>c: two — pass</title>"));
        assert_eq!(svg.matches(r##"fill="#2ca02c" stroke="white""##).count(), 1);
        assert_eq!(svg.matches(r##"fill="#d62728" stroke="white""##).count(), 1);
    }

    /// A pass on a backend that does not declare the exclusion it measured
    /// is drawn apart from a pass: kept in this run only.
    #[test]
    fn an_undeclared_exclusion_kept_is_drawn_as_a_pass_this_run() {
        let mut held = case("removed", Verdict::Pass);
        held.figures
            .insert(crate::outcome::EXCLUSION_DECLARED.into(), 0.0);
        let report = Report::new(vec![TargetReport {
            target: "file".into(),
            backend: "file".into(),
            url: "file://".into(),
            capabilities: serde_json::Value::Null,
            cases: vec![held, case("mutex", Verdict::Pass)],
        }]);
        let svg = matrix(&report);
        assert_eq!(svg.matches(r##"fill="#98df8a" stroke="white""##).count(), 1);
        assert_eq!(svg.matches(r##"fill="#2ca02c" stroke="white""##).count(), 1);
        assert!(svg.contains(">pass this run</text>"));
    }
}
