//! The real `quorate` binary, run as separate processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn quorate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quorate"));
    c.env_remove("QUORATE_URL");
    c
}

fn run(args: &[&str]) -> Output {
    quorate()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run quorate")
}

fn temp_dir(label: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("quorate-cli-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_on_every_command() {
    for cmd in [
        "lock",
        "elect",
        "leader",
        "join",
        "members",
        "conformance",
        "bench",
        "revoke",
    ] {
        let o = run(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help failed: {}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("Usage: quorate"), "{cmd} --help: {text}");
        assert!(
            text.contains("<URL>"),
            "{cmd} --help does not name the URL: {text}"
        );
    }
    for cmd in ["lock", "elect", "join"] {
        let text = String::from_utf8_lossy(&run(&[cmd, "--help"]).stdout).into_owned();
        for needle in [
            "QUORATE_URL",
            "--timeout",
            "--kill-after",
            "75 ",
            "79 ",
            "126 ",
            "127 ",
            "etcd://",
            "zookeeper://",
            "redis://",
            "file://",
            "memory://",
        ] {
            assert!(
                text.contains(needle),
                "{cmd} --help lacks `{needle}`: {text}"
            );
        }
    }
    let text = String::from_utf8_lossy(&run(&["lock", "--help"]).stdout).into_owned();
    assert!(
        text.contains("--nonblock") && text.contains("until SIGINT"),
        "{text}"
    );
    let o = run(&["--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit status"));
}

#[test]
fn lock_runs_the_command_with_fence_and_name_and_passes_its_status() {
    let o = run(&[
        "lock",
        "memory://",
        "jobs/nightly",
        "--",
        "sh",
        "-c",
        "echo \"$QUORATE_LOCK $QUORATE_FENCE\"; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "stderr: {}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "jobs/nightly 1");
}

#[test]
fn a_command_killed_by_a_signal_gives_128_plus_n() {
    let o = run(&["lock", "memory://", "x", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(o.status.code(), Some(128 + 9));
}

#[test]
fn errors_are_one_clear_line_and_never_show_secrets() {
    let o = run(&["lock", "bogus://h", "x", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(
        e.contains("unknown or disabled URL scheme `bogus://`") && e.contains("memory://"),
        "{e}"
    );

    let o = run(&["lock", "memory://?ttl=soon", "x", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("`ttl` must be a duration"),
        "{}",
        stderr(&o)
    );

    let o = run(&["members", "redis://alice:hunter2@127.0.0.1:1/0?nope=1", "g"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));

    let o = run(&["lock", "memory://", "x", "--timeout", "soon", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "bad usage exits 2: {}",
        stderr(&o)
    );
    let o = run(&["lock", "memory://", "", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid name"), "{}", stderr(&o));
}

/// Without a command and without a terminal (stdin at end of file, as
/// under cron or systemd), `lock` holds until a signal: another process
/// finds the lock busy meanwhile.
#[test]
fn lock_without_command_holds_until_a_signal() {
    let dir = temp_dir("hold");
    let url = format!("file://{}", dir.display());
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut child = quorate()
            .args(["lock", &url, "held"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("holding lock `held` (fence "), "{line}");
        let o = run(&["lock", "-n", &url, "held", "--", "true"]);
        assert_eq!(o.status.code(), Some(75), "not held: {}", stderr(&o));
        assert!(child.try_wait().unwrap().is_none(), "released at once");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(child.wait().unwrap().code(), Some(0));
        let o = run(&["lock", "-n", &url, "held", "--", "true"]);
        assert_eq!(o.status.code(), Some(0), "not released: {}", stderr(&o));
    }
    let o = quorate()
        .args(["-q", "lock", &url, "quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until the quiet holder has the lock.
    let start = std::time::Instant::now();
    while run(&["lock", "-n", &url, "quiet", "--", "true"])
        .status
        .code()
        != Some(75)
    {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "-q never held"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(o.id() as i32, libc::SIGTERM) };
    let out = o.wait_with_output().unwrap();
    assert!(out.stdout.is_empty(), "-q printed: {:?}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Invalid values are clear `InvalidConfig` errors (exit 1), before any
/// connection, never a panic (exit 101).
#[test]
fn invalid_config_is_a_clear_error_never_a_panic() {
    for (args, needle) in [
        (
            vec![
                "lock",
                "memory://?ttl=18446744073709551615s",
                "x",
                "--",
                "true",
            ],
            "`ttl`",
        ),
        (
            vec![
                "lock",
                "memory://?connect_timeout=18446744073709551615s",
                "x",
                "--",
                "true",
            ],
            "`connect_timeout`",
        ),
        (
            vec!["lock", "memory://?connect_timeout=0s", "x", "--", "true"],
            "`connect_timeout`",
        ),
        (
            vec![
                "lock",
                "file:///tmp?ttl=99999999999999999999s",
                "x",
                "--",
                "true",
            ],
            "`ttl`",
        ),
        (
            vec!["lock", "--ttl", "0s", "memory://", "x", "--", "true"],
            "`--ttl`",
        ),
        (
            vec![
                "lock",
                "--ttl",
                "18446744073709551615s",
                "memory://",
                "x",
                "--",
                "true",
            ],
            "`--ttl`",
        ),
        (
            vec![
                "elect",
                "--ttl",
                "50ms",
                "memory://",
                "e",
                "v",
                "--",
                "true",
            ],
            "`--ttl`",
        ),
        (
            vec!["lock", "etcd://127.0.0.1:99999", "x", "--", "true"],
            "99999",
        ),
        (
            vec!["lock", "zookeeper://127.0.0.1:0", "x", "--", "true"],
            "port",
        ),
        (vec!["members", "redis://127.0.0.1:70000", "g"], "70000"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("invalid configuration") && e.contains(needle),
            "{args:?}: {e}"
        );
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let o = run(&["elect", "--timeout", "0", "memory://", "e", "v"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    for flag in ["--timeout", "--kill-after", "-w"] {
        for value in ["18446744073709551615s", "2y", "1e300", "-1"] {
            let o = run(&["lock", flag, value, "memory://", "x", "--", "true"]);
            assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
            assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        }
    }
}

#[test]
fn leader_without_a_leader_exits_3() {
    let o = run(&["leader", "memory://", "nobody"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

#[test]
fn members_on_an_empty_group_prints_nothing_and_json_an_empty_array() {
    let o = run(&["members", "memory://", "g"]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    let o = run(&["members", "memory://", "g", "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[]");
}

/// `bench --seconds` outside 10 ms to one day, or not a number of seconds
/// at all, is refused (exit 2) before anything runs; `inf` and `1e300`
/// used to panic converting to a duration.
#[test]
fn bench_refuses_out_of_range_seconds_without_a_panic() {
    for value in ["nan", "inf", "1e300", "0", "5ms", "2days", "ten"] {
        let o = run(&["bench", "memory://", "--seconds", value]);
        assert_eq!(o.status.code(), Some(2), "{value}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{value}");
        let err = stderr(&o);
        assert!(
            err.contains("--seconds") && !err.contains("panicked"),
            "{value}: {err}"
        );
    }
}

#[test]
fn bench_prints_one_json_object_per_scenario_with_ratios() {
    let o = run(&[
        "bench",
        "memory://",
        "--seconds",
        "0.2",
        "--held",
        "100",
        "--waiters",
        "20",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let scenarios: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "uncontended",
            "handoff",
            "throughput_one_lock",
            "throughput_many_locks",
            "held_10k",
            "waiters_1000"
        ]
    );
    // memory:// has no server counters, hence no `requests_per_op`.
    for (s, field) in scenarios[4..]
        .iter()
        .zip(["rss_bytes_per_lock", "fifo_inversions"])
    {
        assert!(s[field].as_f64().is_some_and(f64::is_finite), "{s}");
    }
    for s in &scenarios[..4] {
        assert!(
            s["ratio"]
                .as_f64()
                .is_some_and(|r| r > 0.0 && r.is_finite()),
            "{s}"
        );
    }
}

#[test]
fn conformance_json_report_has_the_documented_schema() {
    let o = run(&[
        "conformance",
        "memory://",
        "--format",
        "json",
        "--only",
        "try_and_timeout",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["schema"], "quorate-conformance/1");
    let case = &report["targets"][0]["cases"][0];
    assert_eq!(case["name"], "try_and_timeout");
    assert_eq!(case["backend"], "memory");
    assert_eq!(case["result"], "pass");
    assert!(case["figures"].is_object());
}

/// A `--only` that no case's name contains is refused (exit 2, naming it,
/// no report) instead of an empty report that exits 0: a typo in a CI
/// pipeline must not read as a pass.
#[test]
fn conformance_only_that_matches_no_case_is_an_error() {
    let o = run(&[
        "conformance",
        "memory://",
        "--format",
        "json",
        "--only",
        "try_and_timeout",
        "--only",
        "mutal_exclusion",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = stderr(&o);
    assert!(err.contains("--only mutal_exclusion"), "{err}");
    assert!(!err.contains("--only try_and_timeout"), "{err}");
    assert!(err.contains("mutual_exclusion"), "{err}");
}

/// A `--nemesis` or `--hook-timeout` under a second or over a year is
/// refused (exit 2, naming the flag) instead of becoming a 1 s nemesis, a
/// hook that always times out, or a run that never ends.
#[test]
fn conformance_out_of_range_durations_are_refused() {
    for (flag, value) in [
        ("--nemesis", "0s"),
        ("--nemesis", "500ms"),
        ("--nemesis", "99999999h"),
        ("--hook-timeout", "0"),
        ("--hook-timeout", "2years"),
    ] {
        let o = run(&[
            "conformance",
            "memory://",
            "--only",
            "try_and_timeout",
            flag,
            value,
        ]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{flag} {value}");
        let err = stderr(&o);
        assert!(
            err.contains(flag) && err.contains("between 1s and 1year"),
            "{flag} {value}: {err}"
        );
    }
}

/// `--format junit` is JUnit XML that a parser accepts: one testcase per
/// case, a passed case plain, a not-applicable one `<skipped>` with its
/// reason, and the counts agree with the cases.
#[test]
fn conformance_junit_report_parses() {
    let dir = temp_dir("junit");
    let url = format!("file://{}", dir.display());
    let o = run(&[
        "conformance",
        &url,
        "--format",
        "junit",
        "--only",
        "_lost_reply",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let xml = String::from_utf8(o.stdout).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let suites = doc.root_element();
    assert_eq!(suites.tag_name().name(), "testsuites");
    let cases: Vec<_> = suites
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 3, "{xml}");
    assert_eq!(suites.attribute("tests"), Some("3"));
    assert_eq!(suites.attribute("skipped"), Some("3"));
    for c in &cases {
        assert!(c.attribute("name").unwrap().ends_with("_lost_reply"));
        assert_eq!(c.attribute("classname"), Some("quorate.conformance.file"));
        let skipped = c.children().find(|n| n.has_tag_name("skipped")).unwrap();
        assert!(
            skipped
                .attribute("message")
                .unwrap()
                .starts_with("not-applicable: failure detection is the process lifetime"),
            "{xml}"
        );
    }
    let o = run(&[
        "conformance",
        "memory://",
        "--format",
        "junit",
        "--only",
        "try_and_timeout",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let xml = String::from_utf8(o.stdout).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml}"));
    let case = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase"))
        .unwrap();
    assert_eq!(case.attribute("name"), Some("try_and_timeout"));
    assert!(
        case.children()
            .all(|n| !n.has_tag_name("skipped") && !n.has_tag_name("failure")),
        "{xml}"
    );
    assert_eq!(doc.root_element().attribute("failures"), Some("0"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two `quorate lock` processes on one file:// lock never overlap, and a
/// waiter with a short timeout exits 75.
#[test]
fn two_processes_exclude_each_other_on_file_locks() {
    let dir = temp_dir("excl");
    let url = format!("file://{}", dir.display());
    let log = dir.join("log");
    let script = format!(
        "echo start >> {0}; sleep 0.3; echo end >> {0}",
        log.display()
    );
    let a = quorate()
        .args(["lock", &url, "job", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let b = quorate()
        .args(["lock", &url, "job", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{} {}",
        stderr(&a),
        stderr(&b)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text, "start\nend\nstart\nend\n",
        "the two commands overlapped"
    );

    let mut holder = quorate()
        .args(["lock", &url, "busy"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let o = run(&["lock", &url, "busy", "--timeout", "300ms", "--", "true"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    // Without a command the holder holds until a signal.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(holder.id() as i32, libc::SIGTERM) };
    assert!(holder.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A lock lost while its command runs: the command gets SIGTERM and
/// `quorate lock` exits 79 with the reason. The loss is real: the
/// ZooKeeper server is paused (SIGSTOP) past the session's TTL.
#[test]
fn a_lost_lock_terminates_the_command_and_exits_79() {
    use quorate_conformance::harness::zookeeper::ZkCluster;
    let zk = ZkCluster::start(1).expect("starting ZooKeeper (see scripts/install-deps)");
    let url = format!(
        "zookeeper://{}?session_timeout=2s&connect_timeout=1s",
        zk.endpoints()
    );
    let dir = temp_dir("lost");
    let marker = dir.join("terminated");
    let script = format!(
        "trap 'echo TERM > {}; exit 0' TERM; echo started; while true; do sleep 0.05; done",
        marker.display()
    );
    let mut child = quorate()
        .args(["lock", &url, "job", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    zk.pause(0);
    let output = child.wait_with_output().unwrap();
    zk.resume(0);
    assert_eq!(
        output.status.code(),
        Some(79),
        "stderr: {}",
        stderr(&output)
    );
    let e = stderr(&output);
    assert!(e.contains("lost lock `job`"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "TERM",
        "the command was not sent SIGTERM"
    );
    drop(zk);
    let _ = std::fs::remove_dir_all(&dir);
}

/// flock(1)'s spellings: `-w SECONDS`, `-E N`, `-c STRING`.
#[test]
fn flock_spellings_w_e_and_c() {
    let dir = temp_dir("flock");
    let url = format!("file://{}", dir.display());
    let o = run(&["lock", &url, "j", "-c", "echo \"$QUORATE_LOCK\"; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "j");
    let o = run(&["lock", &url, "j", "-c", "true", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let mut holder = quorate()
        .args(["lock", &url, "j"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let o = run(&["lock", "-w", "0.2", "-E", "9", &url, "j", "--", "true"]);
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    let o = run(&["lock", "-n", "-E", "9", &url, "j", "--", "true"]);
    assert_eq!(o.status.code(), Some(9), "{}", stderr(&o));
    let o = run(&["lock", "-w", "-1", &url, "j", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(holder.id() as i32, libc::SIGTERM) };
    assert!(holder.wait().unwrap().success());
    // The command's own status is passed through, -E or not.
    let o = run(&["lock", "-E", "9", &url, "j", "-c", "exit 75"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a terminal, the command gets the terminal (foreground process group)
/// while it runs: it can read it, where a background group would be stopped
/// by SIGTTIN. `script(1)` provides the terminal.
#[test]
fn an_interactive_command_can_read_the_terminal() {
    let dir = temp_dir("tty");
    let inner = format!(
        "{} lock file://{} t -- sh -c 'read l; echo got $l'",
        env!("CARGO_BIN_EXE_quorate"),
        dir.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(b"hello\n").unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the command never read the terminal (stopped in the background?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("got hello"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `-v` adds log lines on stderr (no colour escapes when stderr is not a
/// terminal); by default and with `-q` a successful run prints nothing there.
#[test]
fn verbosity_flags() {
    let o = run(&["-vv", "lock", "memory://", "x", "--", "true"]);
    assert_eq!(o.status.code(), Some(0));
    let e = stderr(&o);
    assert!(e.contains("DEBUG") && e.contains("granted"), "{e}");
    assert!(!e.contains('\u{1b}'), "colour escapes on a pipe: {e:?}");
    for quiet in [&["lock"][..], &["-q", "lock"][..]] {
        let mut args = quiet.to_vec();
        args.extend(["memory://", "x", "--", "true"]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0));
        assert!(o.stderr.is_empty(), "{args:?}: {}", stderr(&o));
    }
    let o = run(&["-q", "-v", "lock", "memory://", "x"]);
    assert_eq!(o.status.code(), Some(2), "-q and -v conflict");
}

/// With stdout closed, the grant line cannot be printed: `lock` still
/// holds, and releases on SIGTERM (no panic past the clean-up).
#[test]
fn a_closed_stdout_does_not_break_holding() {
    let dir = temp_dir("closed-stdout");
    let url = format!("file://{}", dir.display());
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!("exec {} lock {url} held >&-", env!("CARGO_BIN_EXE_quorate")),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held by the child: a try finds the lock busy, and then (no try
    // running) `quorate locks` lists a holder, whose record is written once
    // the grant is complete. Busy alone is not enough: the kernel lock is
    // taken a moment before the child's grant completes, and a SIGTERM in
    // that moment finds it still waiting.
    let held_by_child = || {
        run(&["lock", "-n", &url, "held", "--", "true"])
            .status
            .code()
            == Some(75)
            && {
                let o = run(&["locks", &url, "held", "--json"]);
                serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .is_some_and(|locks| {
                        locks.iter().any(|l| {
                            l["name"] == "held"
                                && l["holders"].as_array().is_some_and(|h| h.len() == 1)
                        })
                    })
            }
    };
    let start = std::time::Instant::now();
    while !held_by_child() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited instead of holding"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never held"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child (sh exec'd quorate).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = run(&["lock", "-n", &url, "held", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "not released: {}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `quorate completions SHELL` prints a script for each shell clap knows,
/// naming the public commands and not the internal ones; bash's loads and
/// registers the completion. An unknown shell is bad usage (exit 2).
#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = run(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        for needle in ["lock", "revoke", "timeout", "nonblock", "completions"] {
            assert!(script.contains(needle), "{shell} lacks `{needle}`");
        }
        for internal in ["reap-group", "agent"] {
            assert!(!script.contains(internal), "{shell} offers `{internal}`");
        }
    }
    let dir = temp_dir("completions");
    let file = dir.join("quorate.bash");
    std::fs::write(&file, run(&["completions", "bash"]).stdout).unwrap();
    let o = Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p quorate", file.display()),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("quorate"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tcsh"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `quorate man` is quorate(1) in roff, with the exit-status table and the
/// URL schemes kept in columns; `quorate man COMMAND` is quorate-COMMAND(1)
/// for every public command; groff renders each without a warning. An
/// unknown or internal command is bad usage (exit 2), naming the pages.
#[test]
fn man_pages() {
    let o = run(&["man"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(page.contains(".TH quorate 1"), "{page}");
    for needle in [
        "quorate\\-lock(1)",
        "quorate\\-revoke(1)",
        "EXIT STATUS",
        ".nf",
        "etcd://",
    ] {
        assert!(page.contains(needle), "quorate(1) lacks `{needle}`");
    }
    assert!(!page.contains("reap"), "an internal command in quorate(1)");
    for cmd in [
        "lock",
        "elect",
        "leader",
        "join",
        "members",
        "revoke",
        "conformance",
        "bench",
        "completions",
    ] {
        let o = run(&["man", cmd]);
        assert_eq!(o.status.code(), Some(0), "{cmd}: {}", stderr(&o));
        let page = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            page.contains(&format!(".TH quorate-{cmd} 1")),
            "{cmd}: {page}"
        );
        // groff -ww: every warning; -z: no output, only the diagnostics.
        let mut groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("groff (scripts/install-deps)");
        use std::io::Write;
        groff
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let g = groff.wait_with_output().unwrap();
        assert!(g.status.success(), "{cmd}");
        assert_eq!(
            String::from_utf8_lossy(&g.stderr),
            "",
            "groff on quorate-{cmd}(1)"
        );
    }
    let lock = String::from_utf8_lossy(&run(&["man", "lock"]).stdout).into_owned();
    for needle in [
        "\\-\\-nonblock",
        "\\-\\-timeout",
        "127 ",
        "file:///var/lib/quorate",
    ] {
        assert!(lock.contains(needle), "quorate-lock(1) lacks `{needle}`");
    }
    for bad in ["nope", "reap-group", "agent"] {
        let o = run(&["man", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("lock, elect"), "{}", stderr(&o));
    }
}

/// `revoke` where it cannot work: file:// sessions are processes (exit 1,
/// saying why), an id that is not one of the backend's is a clear error,
/// an unknown session exits 3, and no URL at all is bad usage.
#[test]
fn revoke_errors() {
    let dir = temp_dir("revoke");
    let o = run(&["revoke", &format!("file://{}", dir.display()), "123"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot be revoked from outside"),
        "{}",
        stderr(&o)
    );
    let o = run(&["revoke", "memory://", "not-a-session"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a memory session id"),
        "{}",
        stderr(&o)
    );
    let o = run(&["revoke", "memory://", "42"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no live session 42"), "{}", stderr(&o));
    let o = run(&["revoke", "42"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
