//! The report as JUnit XML, for CI systems that show test results per case
//! (`quorate conformance URL --format junit`).
//!
//! One `<testsuite>` per target (named by its label, with the backend, URL
//! and report schema as properties) and one `<testcase>` per case
//! (`classname` `quorate.conformance.<target>`, `time` in seconds). A case
//! that `pass`ed is a plain test case; `not-applicable` and `unverified`
//! are `<skipped>` with the verdict and the reason as its message; `fail`
//! and `violated` are `<failure>` with the verdict as `type` and the detail
//! as message and text (`violated`: measured broken, and the backend does
//! not declare the guarantee; CI shows it, though it does not make the
//! suite's exit status fail). Every case carries its guarantee, declared
//! capability and figures in `<system-out>`.

use std::fmt::Write as _;

use crate::outcome::Verdict;
use crate::report::{CaseReport, Report, TargetReport};

impl Report {
    /// The report as JUnit XML (see [`crate::junit`]).
    pub fn to_junit(&self) -> String {
        let all: Vec<&CaseReport> = self.targets.iter().flat_map(|t| &t.cases).collect();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"quorate-conformance\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\">",
            all.len(),
            count(all.iter().copied(), Kind::Failure),
            count(all.iter().copied(), Kind::Skipped),
            seconds(all.iter().map(|c| c.duration_ms).sum()),
        );
        for t in &self.targets {
            suite(&mut x, &self.schema, t);
        }
        x.push_str("</testsuites>\n");
        x
    }
}

/// How a verdict shows in JUnit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Passed,
    Skipped,
    Failure,
}

fn kind(v: Verdict) -> Kind {
    match v {
        Verdict::Pass => Kind::Passed,
        Verdict::NotApplicable | Verdict::Unverified => Kind::Skipped,
        Verdict::Fail | Verdict::Violated => Kind::Failure,
    }
}

fn count<'a>(cases: impl Iterator<Item = &'a CaseReport>, k: Kind) -> usize {
    cases.filter(|c| kind(c.result) == k).count()
}

fn seconds(ms: f64) -> String {
    format!("{:.3}", (ms / 1000.0).max(0.0))
}

fn suite(x: &mut String, schema: &str, t: &TargetReport) {
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{}\">",
        esc(&t.target),
        t.cases.len(),
        count(t.cases.iter(), Kind::Failure),
        count(t.cases.iter(), Kind::Skipped),
        seconds(t.cases.iter().map(|c| c.duration_ms).sum()),
    );
    x.push_str("    <properties>\n");
    for (name, value) in [
        ("backend", t.backend.as_str()),
        ("url", t.url.as_str()),
        ("schema", schema),
    ] {
        let _ = writeln!(
            x,
            "      <property name=\"{name}\" value=\"{}\"/>",
            esc(value)
        );
    }
    x.push_str("    </properties>\n");
    for c in &t.cases {
        case(x, t, c);
    }
    x.push_str("  </testsuite>\n");
}

fn case(x: &mut String, t: &TargetReport, c: &CaseReport) {
    let _ = writeln!(
        x,
        "    <testcase name=\"{}\" classname=\"quorate.conformance.{}\" time=\"{}\">",
        esc(&c.name),
        esc(&t.target),
        seconds(c.duration_ms),
    );
    let verdict = c.result.as_str();
    let detail = if c.detail.is_empty() {
        "(no detail)"
    } else {
        c.detail.as_str()
    };
    match kind(c.result) {
        Kind::Passed => {}
        Kind::Skipped => {
            let _ = writeln!(
                x,
                "      <skipped message=\"{}\"/>",
                esc(&format!("{verdict}: {detail}"))
            );
        }
        Kind::Failure => {
            let _ = writeln!(
                x,
                "      <failure type=\"{verdict}\" message=\"{}\">{}</failure>",
                esc(&format!("{verdict}: {detail}")),
                esc(detail)
            );
        }
    }
    let mut out = format!("guarantee: {}\nresult: {verdict}\n", c.guarantee);
    if let (Some(k), Some(v)) = (&c.capability, &c.declared) {
        let _ = writeln!(out, "declared: {k} = {v}");
    }
    for (k, v) in &c.figures {
        let _ = writeln!(out, "{k} = {v}");
    }
    if !c.hooks.is_empty() {
        let _ = writeln!(out, "faults injected by: {}", c.hooks.join(", "));
    }
    let _ = writeln!(x, "      <system-out>{}</system-out>", esc(&out));
    x.push_str("    </testcase>\n");
}

/// Text for an XML attribute or element: the five special characters as
/// entities; characters XML 1.0 does not allow (most C0 controls) as `?`.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Figures;

    fn case(name: &str, result: Verdict, detail: &str) -> CaseReport {
        let mut figures = Figures::new();
        figures.insert("grants_per_s".into(), 812.5);
        CaseReport {
            name: name.into(),
            backend: "etcd".into(),
            target: "etcd-3".into(),
            guarantee: "a <guarantee> & \"words\"".into(),
            capability: Some("scope".into()),
            declared: Some(serde_json::json!("hosts")),
            result,
            detail: detail.into(),
            figures,
            duration_ms: 1234.5,
            hooks: Vec::new(),
        }
    }

    /// Every verdict maps as documented, the counts agree with the cases,
    /// and text with XML's special characters and a control character
    /// survives a real XML parser.
    #[test]
    fn junit_parses_and_maps_every_verdict() {
        let report = Report::new(vec![
            TargetReport {
                target: "etcd-3".into(),
                backend: "etcd".into(),
                url: "etcd://a:1,b:2/ns?ttl=2s&x=<y>".into(),
                capabilities: serde_json::json!({}),
                cases: vec![
                    case("mutual_exclusion", Verdict::Pass, ""),
                    case("fifo_order", Verdict::Fail, "granted 3 before 2 & <1>\u{1}"),
                    case("holder_pause", Verdict::Violated, "two holders"),
                    case(
                        "leader_failover",
                        Verdict::Unverified,
                        "no fault controller",
                    ),
                    case("holder_crash", Verdict::NotApplicable, ""),
                ],
            },
            TargetReport {
                target: "memory".into(),
                backend: "memory".into(),
                url: "memory://".into(),
                capabilities: serde_json::json!({}),
                cases: vec![case("mutual_exclusion", Verdict::Pass, "")],
            },
        ]);
        let xml = report.to_junit();
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        assert_eq!(root.attribute("tests"), Some("6"));
        assert_eq!(root.attribute("failures"), Some("2"));
        assert_eq!(root.attribute("skipped"), Some("2"));
        let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        assert_eq!(suites.len(), 2);
        let etcd = suites[0];
        assert_eq!(etcd.attribute("name"), Some("etcd-3"));
        assert_eq!(etcd.attribute("tests"), Some("5"));
        let url = etcd
            .descendants()
            .find(|n| n.attribute("name") == Some("url"))
            .unwrap();
        assert_eq!(
            url.attribute("value"),
            Some("etcd://a:1,b:2/ns?ttl=2s&x=<y>")
        );
        let cases: Vec<_> = etcd
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 5);
        let child = |i: usize, tag: &str| cases[i].children().find(|n| n.has_tag_name(tag));
        assert_eq!(
            cases[0].attribute("classname"),
            Some("quorate.conformance.etcd-3")
        );
        assert_eq!(cases[0].attribute("time"), Some("1.234"));
        assert!(child(0, "failure").is_none() && child(0, "skipped").is_none());
        let fail = child(1, "failure").unwrap();
        assert_eq!(fail.attribute("type"), Some("fail"));
        assert_eq!(fail.text(), Some("granted 3 before 2 & <1>?"));
        assert_eq!(
            child(2, "failure").unwrap().attribute("type"),
            Some("violated")
        );
        assert_eq!(
            child(3, "skipped").unwrap().attribute("message"),
            Some("unverified: no fault controller")
        );
        assert_eq!(
            child(4, "skipped").unwrap().attribute("message"),
            Some("not-applicable: (no detail)")
        );
        let out = child(0, "system-out").unwrap().text().unwrap();
        assert!(
            out.contains("guarantee: a <guarantee> & \"words\""),
            "{out}"
        );
        assert!(out.contains("declared: scope = \"hosts\""), "{out}");
        assert!(out.contains("grants_per_s = 812.5"), "{out}");
    }
}
