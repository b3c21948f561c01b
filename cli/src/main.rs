//! `quorate`: locks, elections and group membership for scripts and
//! operators, on every backend; plus the conformance suite and benchmarks.
//!
//! Exit codes (also in `--help` and `docs/cli.md`): the command's own status
//! for `lock`/`elect`/`join` with a command (128+N if it died of signal N);
//! 75 (EX_TEMPFAIL) when not granted within `--timeout` or busy with
//! `-n`; 79 when the lock, leadership or membership is lost while held;
//! 69 (EX_UNAVAILABLE) when the backend cannot be reached; 126/127 when the
//! command cannot be executed / is not found; 128+N when quorate itself is
//! stopped by signal N while waiting; 3 when `leader` finds no leader or
//! `revoke` no live session of that id; 2 for
//! bad usage; 1 for any other error (one line on stderr).

mod hold;

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use quorate::{Coordinator, ErrorKind, GroupEvent, LossReason, Session};
use quorate_conformance::{bench, runner, Target};
use tokio::time::Instant;

use hold::Signals;

/// Exit status: not granted within `--timeout`, or busy with `-n`
/// (sysexits' EX_TEMPFAIL: try again later).
pub const EXIT_TEMPFAIL: u8 = 75;
/// Exit status: what was held (lock, leadership, membership) was lost.
pub const EXIT_LOST: u8 = 79;
/// Exit status: the backend could not be reached (sysexits' EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit status: the command was found but could not be executed (as shells).
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// Exit status: the command was not found (as shells).
pub const EXIT_NOT_FOUND: u8 = 127;
/// Exit status: `leader` found no leader.
pub const EXIT_NO_LEADER: u8 = 3;
/// Exit status: `revoke` found no live session of that id.
pub const EXIT_NOT_FOUND_SESSION: u8 = 3;
/// Default grace between SIGTERM and SIGKILL to the command's group.
const DEFAULT_KILL_AFTER: &str = "5s";
/// Name of the environment variable holding the default URL.
const URL_ENV: &str = "QUORATE_URL";

const EXIT_CODES_HELP: &str = "\
Exit status:
  0        success (without a command: released after SIGINT/SIGTERM/SIGHUP)
  N        with a command: the command's own status (128+N if it died of signal N)
  1        any other error (one line on stderr)
  2        bad usage
  3        `leader`: the election has no leader; `revoke`: no live session of that id
  69       the backend could not be reached (connect_timeout)
  75       not granted within --timeout (connecting included), or busy with -n
  79       the lock / leadership / membership was lost while held
           (the command's process group got SIGTERM, then SIGKILL after --kill-after)
  126      the command could not be executed
  127      the command was not found
  128+N    quorate was stopped by signal N (SIGINT 130, SIGTERM 143) while waiting

URL schemes (the URL argument may be left out when QUORATE_URL is set):
  etcd://h1:2379,h2:2379/namespace?ttl=10s   etcds://… (TLS)
  zookeeper://h1:2181,h2:2181/chroot?session_timeout=10s
  redis://[user:pass@]h:6379/0?ttl=10s       rediss://…  redis+sentinel://…
  file:///var/lib/quorate                    memory://name
Common options: ttl (100ms..1y), connect_timeout (1ms..1y). See docs/cli.md.";

#[derive(Parser)]
#[command(
    name = "quorate",
    version,
    about = "Distributed locks, elections and membership over etcd, ZooKeeper, Redis, files or memory",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace);
    /// QUORATE_LOG (an env-filter) overrides.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors on stderr, and no "holding …" line on stdout.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Markdown,
    Json,
}

/// `conformance`'s report formats.
#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    /// Tables for people.
    Markdown,
    /// The versioned JSON schema (`quorate-conformance/1`).
    Json,
    /// JUnit XML, one testcase per case, for CI systems (skipped:
    /// not-applicable / unverified, with the reason; failure: fail /
    /// violated).
    Junit,
}

/// Options shared by `lock`, `elect` and `join`.
#[derive(Args, Clone)]
struct HoldArgs {
    /// Give up after this long (e.g. 500ms, 10s, 2m; a bare number is
    /// seconds, as flock's -w) and exit 75. Covers connecting, opening the
    /// session and waiting. `0` makes exactly one attempt (`lock` only;
    /// same as -n).
    #[arg(short = 'w', long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Exit status when not granted in time or busy, instead of 75 (as
    /// flock's -E).
    #[arg(short = 'E', long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    conflict_exit_code: Option<u8>,
    /// Run this string with `sh -c` (as flock's -c), instead of a command
    /// after `--`.
    #[arg(
        short = 'c',
        long = "command",
        id = "shell_command",
        value_name = "STRING"
    )]
    shell_command: Option<String>,
    /// Session (lease) TTL, overriding the URL's `ttl` (100ms..1y).
    #[arg(long, value_parser = parse_any_duration)]
    ttl: Option<Duration>,
    /// Grace between SIGTERM and SIGKILL to the command's process group
    /// when the lock is lost (and for processes the command leaves behind).
    #[arg(long, value_parser = parse_duration, default_value = DEFAULT_KILL_AFTER)]
    kill_after: Duration,
    /// Without a command: print the grant as one JSON object (`kind`, the
    /// name, `fence`, `session`) instead of the `holding …` line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Hold a lock while a command runs (like flock(1) / `etcdctl lock`).
    ///
    /// The command runs in its own process group with QUORATE_FENCE (the
    /// fencing token), QUORATE_LOCK and QUORATE_SESSION in its environment;
    /// SIGINT/SIGTERM/SIGHUP to quorate are forwarded to that group. If the
    /// lock is lost, the group gets SIGTERM, then SIGKILL after --kill-after,
    /// and quorate exits 79. If quorate dies (even by SIGKILL), the group is
    /// killed. The lock is released only once nothing of the group is left.
    ///
    /// Without a command, prints "holding lock `NAME` (fence N)" and holds
    /// until SIGINT, SIGTERM or SIGHUP, then releases and exits 0.
    #[command(
        after_help = EXIT_CODES_HELP,
        override_usage = "quorate lock [OPTIONS] [URL] <NAME> [-- <COMMAND>...]\n       quorate lock [OPTIONS] [URL] <NAME> -c <STRING>"
    )]
    Lock {
        /// [URL] NAME: backend URL (default: $QUORATE_URL), e.g.
        /// file:///var/lib/quorate or etcd://127.0.0.1:2379, and the lock name.
        #[arg(value_name = "URL", num_args = 1..=2, required = true)]
        target: Vec<String>,
        /// Fail at once (exit 75) if the lock is busy: one attempt; same as --timeout 0.
        #[arg(short = 'n', long, conflicts_with = "timeout")]
        nonblock: bool,
        #[command(flatten)]
        hold: HoldArgs,
        /// Take the shared (read) side of the lock, as flock -s: shared
        /// holders of a name share; they and the exclusive holder (the
        /// default, as flock -x) of the same name exclude each other, in
        /// arrival order. Native exclusive locks on the name (etcdctl lock,
        /// redis-py Lock, lockf; kazoo WriteLock) exclude shared holders too.
        #[arg(short, long)]
        shared: bool,
        /// The command to run while holding the lock.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Campaign in an election; run a command while leader, or hold
    /// leadership until SIGINT/SIGTERM/SIGHUP.
    #[command(
        after_help = EXIT_CODES_HELP,
        override_usage = "quorate elect [OPTIONS] [URL] <ELECTION> <VALUE> [-- <COMMAND>...]"
    )]
    Elect {
        /// [URL] ELECTION VALUE: backend URL (default: $QUORATE_URL), the
        /// election name and the value to publish as leader.
        #[arg(value_name = "URL", num_args = 2..=3, required = true)]
        target: Vec<String>,
        #[command(flatten)]
        hold: HoldArgs,
        /// The command to run while leader (gets QUORATE_FENCE, QUORATE_ELECTION, QUORATE_SESSION).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the current leader's value (exit 3 if there is none).
    #[command(
        after_help = EXIT_CODES_HELP,
        override_usage = "quorate leader [OPTIONS] [URL] <ELECTION>"
    )]
    Leader {
        /// [URL] ELECTION: backend URL (default: $QUORATE_URL) and election name.
        #[arg(value_name = "URL", num_args = 1..=2, required = true)]
        target: Vec<String>,
        /// Print one line per change until interrupted (`-` for no leader).
        #[arg(long)]
        watch: bool,
        /// JSON: `{"value": …, "fence": N}`, or `null` for no leader.
        #[arg(long)]
        json: bool,
    },
    /// Join a group; run a command while a member, or stay until
    /// SIGINT/SIGTERM/SIGHUP.
    #[command(
        after_help = EXIT_CODES_HELP,
        override_usage = "quorate join [OPTIONS] [URL] <GROUP> <MEMBER> [-- <COMMAND>...]"
    )]
    Join {
        /// [URL] GROUP MEMBER: backend URL (default: $QUORATE_URL), group
        /// name and member id.
        #[arg(value_name = "URL", num_args = 2..=3, required = true)]
        target: Vec<String>,
        /// Capabilities as JSON.
        #[arg(long, default_value = "null")]
        capabilities: String,
        #[command(flatten)]
        hold: HoldArgs,
        /// The command to run while a member (gets QUORATE_GROUP, QUORATE_MEMBER, QUORATE_SESSION).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List a group's members (one id per line, or JSON).
    #[command(override_usage = "quorate members [OPTIONS] [URL] <GROUP>")]
    Members {
        /// [URL] GROUP: backend URL (default: $QUORATE_URL) and group name.
        #[arg(value_name = "URL", num_args = 1..=2, required = true)]
        target: Vec<String>,
        /// Print membership events until interrupted.
        #[arg(long)]
        watch: bool,
        /// JSON output (an array, or one event object per line with --watch).
        #[arg(long)]
        json: bool,
    },
    /// List the locks held or waited for: holder session, kind, fence,
    /// since when, and the waiters in queue order.
    ///
    /// With one argument, it is the URL if it contains `://`, otherwise
    /// the PREFIX (the URL then comes from $QUORATE_URL). PREFIX keeps the
    /// locks whose name starts with it (the user's names, without the
    /// backend's namespace). A table, one row per holder (`-` where the
    /// backend does not know a field; see docs/backends.md); --json prints
    /// one array. Elections and groups are not listed.
    #[command(
        after_help = EXIT_CODES_HELP,
        override_usage = "quorate locks [OPTIONS] [URL] [PREFIX]"
    )]
    Locks {
        /// [URL] [PREFIX]: backend URL (default: $QUORATE_URL) and a name
        /// prefix (default: every lock).
        #[arg(value_name = "URL", num_args = 0..=2)]
        target: Vec<String>,
        /// JSON: an array of `{"name", "holders": [{"session", "mode",
        /// "fence", "since"}], "waiters": [{"session", "mode"}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Run the conformance suite against a backend and print the report.
    /// Exits 1 if any case fails.
    Conformance {
        /// Backend URL (a fresh namespace is used per case).
        url: String,
        /// Report format.
        #[arg(long, value_enum, default_value = "markdown")]
        format: ReportFormat,
        /// Only cases whose name contains this (repeatable: any of them).
        /// A filter that no case's name contains is an error (exit 2).
        #[arg(long)]
        only: Vec<String>,
        /// How long the randomized nemesis case runs (default 20s; whole
        /// seconds, 1s to one year).
        #[arg(long, value_name = "D", value_parser = parse_seconds)]
        nemesis: Option<Duration>,
        /// Put a built-in TCP proxy (on a free 127.0.0.1 port) between this
        /// run's clients and each server of the URL, and run the client ↔
        /// server partition cases through it. Without it nothing stands
        /// between the clients and the servers and those cases are skipped.
        /// Behind redis+sentinel:// the URL stays as it is and each
        /// partition case proxies the primary the sentinels name. Refused
        /// for URLs it cannot rewrite (file://, memory://, TLS URLs naming
        /// servers by host name, redis+sentinel:// with its own nat_map).
        #[arg(long)]
        proxy: bool,
        /// A shell command (`sh -c`) that injects one step of a server
        /// fault on servers this run did not start, e.g.
        /// kill-server='docker kill etcd{member}'. Repeatable, one per
        /// kind. Kinds: leader (print the leading member's index),
        /// kill-server, restart-server, restart-empty, isolate-member,
        /// heal-members, evicting-server, fill-memory, clock-server,
        /// step-clock, lagging-pair, pause-replication, fail-over,
        /// pause-server, resume-server.
        /// Placeholders (also $QUORATE_HOOK_<NAME>): {member} {member1}
        /// {addr} {host} {port} {secs}. A case whose fault lacks a hook is
        /// skipped with the reason; a failing hook fails its case. See
        /// docs/ci.md.
        #[arg(long = "hook", value_name = "KIND=COMMAND", value_parser = parse_hook)]
        hooks: Vec<quorate_conformance::hooks::Hook>,
        /// The longest one hook may run before its process group is killed
        /// (and its case fails); 1s to one year.
        #[arg(long, value_name = "D", value_parser = parse_seconds, default_value = "120s")]
        hook_timeout: Duration,
    },
    /// Benchmark against the backend's raw operations in the same run.
    Bench {
        /// Backend URL.
        url: String,
        /// Seconds per scenario (a number, or a duration like `500ms`;
        /// 10ms to one day).
        #[arg(long, value_name = "S", value_parser = parse_bench_seconds, default_value = "2")]
        seconds: f64,
        /// Locks one session acquires in `held_10k` (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        held: usize,
        /// Waiters on one lock in `waiters_1000` (0 skips it).
        #[arg(long, default_value_t = 1_000)]
        waiters: usize,
        /// Output format (json: one object per scenario per line).
        #[arg(long, value_enum, default_value = "markdown")]
        format: Format,
    },
    /// Revoke a session by id, as an operator breaks a stuck holder
    /// (etcdctl lease revoke, tooz break_).
    ///
    /// SESSION is the holder's QUORATE_SESSION (or `session` of a --json
    /// grant line). Everything the session holds is released at once: its
    /// locks go to the next waiters, and a `quorate lock` holding them
    /// terminates its command and exits 79. etcd revokes the lease; Redis
    /// removes the session; ZooKeeper deletes the session's nodes (the
    /// holder's guards report the loss). file:// cannot (a kernel lock
    /// belongs to its process): exit 1. Exit 3 when no live session has
    /// that id.
    #[command(
        after_help = EXIT_CODES_HELP,
        override_usage = "quorate revoke [OPTIONS] [URL] <SESSION>"
    )]
    Revoke {
        /// [URL] SESSION: backend URL (default: $QUORATE_URL) and the
        /// session id.
        #[arg(value_name = "URL", num_args = 1..=2, required = true)]
        target: Vec<String>,
    },
    /// Print a shell completion script for SHELL on stdout
    /// (e.g. `quorate completions bash > /etc/bash_completion.d/quorate`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, generated from these
    /// definitions: `quorate man | man -l -`; `quorate man lock` for one
    /// command's page (quorate-lock(1)).
    Man {
        /// A command whose page to print instead of quorate(1).
        command: Option<String>,
    },
    /// The conformance suite's child-process client (internal).
    #[command(hide = true)]
    Agent {
        /// Backend URL.
        url: String,
    },
    /// The watchdog that kills a command's process group if quorate dies
    /// (internal; see cli/src/hold.rs).
    #[command(hide = true)]
    ReapGroup,
}

/// One `--hook KIND=COMMAND` (a clear usage error for an unknown kind,
/// a missing `=` or an empty command).
fn parse_hook(s: &str) -> Result<quorate_conformance::hooks::Hook, String> {
    s.parse()
}

/// A duration, unbounded: `--ttl`, which [`quorate::Config::set_ttl`]
/// checks (an out-of-range TTL is `InvalidConfig`, as in the URL).
fn parse_any_duration(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("`{s}` is not a duration (negative, or too large)")),
        Err(_) => {
            quorate::config::parse_duration("duration", s).map_err(|e| e.message().to_owned())
        }
    }
}

/// A duration with a unit (`500ms`, `10s`, `2m`) or a bare number of
/// seconds (`10`, `0.5`), as flock(1) takes it, at most one year
/// ([`quorate::config::MAX_DURATION`]; larger values would overflow the
/// clock arithmetic). `--ttl` is checked further by the config's bounds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_within(s, "duration", Duration::ZERO, quorate::config::MAX_DURATION)
}

/// As [`parse_duration`], at least one second: a `--nemesis` or
/// `--hook-timeout` of zero would run no nemesis, or fail every hook at
/// once, instead of being refused.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    parse_within(
        s,
        "duration",
        Duration::from_secs(1),
        quorate::config::MAX_DURATION,
    )
}

/// `bench --seconds`: as [`parse_duration`], from 10 ms to one day, as
/// seconds (`nan`, `inf` or `1e300` were taken and panicked later).
fn parse_bench_seconds(s: &str) -> Result<f64, String> {
    parse_within(
        s,
        "--seconds",
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    )
    .map(|d| d.as_secs_f64())
}

/// [`parse_any_duration`], then checked to lie in `min..=max`.
fn parse_within(
    s: &str,
    name: &'static str,
    min: Duration,
    max: Duration,
) -> Result<Duration, String> {
    let d = parse_any_duration(s)?;
    let bounds = quorate::config::DurationBounds { name, min, max };
    bounds.check(d).map_err(|e| e.message().to_owned())
}

/// A failure that ends the program: the message for stderr and the status.
pub struct Exit {
    /// The exit status.
    pub code: u8,
    /// One line for stderr.
    pub message: String,
}

impl From<quorate::Error> for Exit {
    fn from(e: quorate::Error) -> Self {
        let code = match e.kind() {
            ErrorKind::Timeout => EXIT_TEMPFAIL,
            ErrorKind::Lost => EXIT_LOST,
            ErrorKind::Unavailable => EXIT_UNAVAILABLE,
            _ => 1,
        };
        Exit {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::ReapGroup => return ExitCode::from(hold::reap_group_main()),
        Command::Completions { shell } => return completions(*shell),
        Command::Man { command } => return man(command.as_deref()),
        _ => {}
    }
    init_tracing(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The future runs on this (the main) thread: commands are spawned from
    // it, which their parent-death signal depends on (see hold.rs).
    let result = runtime.block_on(run(cli.command, cli.quiet));
    // Every clean-up was awaited already; do not hang on a blocking thread.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("quorate: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// `quorate completions SHELL`: the script on stdout.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory;
    // clap_complete offers hidden commands too: leave the internal ones
    // (`agent`, `reap-group`) out.
    let full = Cli::command();
    let mut public = clap::Command::new("quorate")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        public = public.about(about.clone());
    }
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut public, "quorate", &mut out);
    write_stdout(&out)
}

/// `quorate man [COMMAND]`: quorate(1), or quorate-COMMAND(1), in roff on
/// stdout.
fn man(command: Option<&str>) -> ExitCode {
    use clap::CommandFactory;
    let mut cli = Cli::command();
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => {
            let found = cli
                .get_subcommands()
                .find(|c| !c.is_hide_set() && c.get_name() == name)
                .cloned();
            match found {
                // The page's title and usage name the command as typed.
                Some(c) => c
                    .name(format!("quorate-{name}"))
                    .bin_name(format!("quorate {name}"))
                    .version(env!("CARGO_PKG_VERSION")),
                None => {
                    let names: Vec<&str> = cli
                        .get_subcommands()
                        .filter(|c| !c.is_hide_set())
                        .map(|c| c.get_name())
                        .collect();
                    eprintln!("quorate: no command `{name}`; pages: {}", names.join(", "));
                    return ExitCode::from(2);
                }
            }
        }
    };
    let extra = page.get_after_help().is_some();
    let has_subcommands = page.get_subcommands().any(|c| !c.is_hide_set());
    let man = clap_mangen::Man::new(page);
    let mut out = Vec::new();
    let rendered = (|| -> std::io::Result<()> {
        man.render_title(&mut out)?;
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        if has_subcommands {
            man.render_subcommands_section(&mut out)?;
        }
        if extra {
            // The exit-status table and URL schemes keep their columns
            // (clap_mangen's EXTRA section would fill them as prose).
            out.extend_from_slice(b".SH \"EXIT STATUS AND URLS\"\n.nf\n");
            out.extend_from_slice(roff_verbatim(EXIT_CODES_HELP).as_bytes());
            out.extend_from_slice(b".fi\n");
        }
        man.render_version_section(&mut out)
    })();
    if let Err(e) = rendered {
        eprintln!("quorate: cannot render the man page: {e}");
        return ExitCode::from(1);
    }
    write_stdout(roff_ascii(&String::from_utf8_lossy(&out)).as_bytes())
}

/// Non-ASCII characters (`…`, `≥`) as roff's `\[uXXXX]` escapes, so that
/// troff reads the page without a UTF-8 pre-processor.
fn roff_ascii(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

/// `text` as roff lines for a no-fill block: backslashes escaped, lines
/// that start with `.` or `'` protected, `-` as a hyphen-minus.
fn roff_verbatim(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.replace('\\', "\\e").replace('-', "\\-");
        if line.starts_with('.') || line.starts_with('\'') {
            out.push_str("\\&");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Write all of `bytes` to stdout; a closed stdout is an error (exit 1).
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quorate: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    let filter = match std::env::var("QUORATE_LOG") {
        Ok(f) if !f.trim().is_empty() => tracing_subscriber::EnvFilter::new(f),
        _ => tracing_subscriber::EnvFilter::new(match (quiet, verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            (false, _) => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Split `[URL] ARGS…` into the URL (from `QUORATE_URL` when left out) and
/// the `n` other arguments.
fn split_target(mut target: Vec<String>, n: usize) -> Result<(String, Vec<String>), Exit> {
    if target.len() == n + 1 {
        let url = target.remove(0);
        return Ok((url, target));
    }
    match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Ok((url, target)),
        _ => Err(Exit {
            code: 2,
            message: format!("no backend URL: give it as the first argument or set {URL_ENV}"),
        }),
    }
}

/// `locks [URL] [PREFIX]`: two arguments are both; one is the URL if it
/// contains `://`, else the prefix; the URL defaults to $QUORATE_URL.
fn split_locks_target(mut target: Vec<String>) -> Result<(String, String), Exit> {
    let url = match target.len() {
        2 => Some(target.remove(0)),
        1 if target[0].contains("://") => Some(target.remove(0)),
        _ => None,
    };
    let prefix = target.pop().unwrap_or_default();
    match url {
        Some(url) => Ok((url, prefix)),
        None => split_target(Vec::new(), 0).map(|(url, _)| (url, prefix)),
    }
}

/// A name for a table cell: control characters escaped, so that a row
/// stays one line.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The `locks` table: one row per holder (one row with `-` for a lock
/// that is only waited for); the waiters on the lock's first row.
fn locks_table(locks: &[quorate::LockState]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "KIND".to_owned(),
        "SESSION".to_owned(),
        "FENCE".to_owned(),
        "SINCE".to_owned(),
        "WAITERS".to_owned(),
    ]];
    let dash = || "-".to_owned();
    for lock in locks {
        let waiters = if lock.waiters.is_empty() {
            dash()
        } else {
            let list: Vec<String> = lock
                .waiters
                .iter()
                .map(|w| format!("{}({})", cell(w.session.as_deref().unwrap_or("?")), w.mode))
                .collect();
            format!("{}: {}", list.len(), list.join(" "))
        };
        if lock.holders.is_empty() {
            rows.push([cell(&lock.name), dash(), dash(), dash(), dash(), waiters]);
            continue;
        }
        for (i, h) in lock.holders.iter().enumerate() {
            rows.push([
                cell(&lock.name),
                h.mode.to_string(),
                h.session.as_deref().map_or_else(dash, cell),
                h.fence.map_or_else(dash, |f| f.to_string()),
                h.since
                    .map_or_else(dash, |t| humantime::format_rfc3339_seconds(t).to_string()),
                if i == 0 { waiters.clone() } else { dash() },
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, w) in widths.iter().enumerate() {
            if c == 5 {
                line.push_str(&r[c]);
            } else {
                line.push_str(&format!("{:<w$}  ", r[c], w = *w));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

async fn connect(url: &str) -> Result<Coordinator, Exit> {
    Ok(quorate::connect(url).await?)
}

/// How `lock` tries.
#[derive(Clone, Copy)]
enum Attempt {
    /// Wait until granted, at most until the deadline.
    Wait(Option<Instant>),
    /// One attempt (`-n`, `--timeout 0`).
    Once,
}

/// Why waiting stopped before a grant.
enum Stop {
    TimedOut,
    Signal(i32),
}

impl Stop {
    fn exit(&self, what: &str, phase: &str, timeout: Option<Duration>) -> Exit {
        match self {
            Stop::TimedOut => Exit {
                code: EXIT_TEMPFAIL,
                message: format!(
                    "timed out after {} {phase} {what}",
                    humantime::format_duration(timeout.unwrap_or_default())
                ),
            },
            Stop::Signal(sig) => Exit {
                code: (128 + sig).clamp(0, 255) as u8,
                message: format!("interrupted by signal {sig} while {phase} {what}"),
            },
        }
    }
}

/// Run `fut` until it finishes, the deadline passes or a signal arrives;
/// `fut` is dropped in the two latter cases (it must be cancel safe).
async fn race<T>(
    fut: impl std::future::Future<Output = T>,
    deadline: Option<Instant>,
    signals: &mut Signals,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        sig = signals.recv() => Err(Stop::Signal(sig)),
        _ = sleep_until(deadline) => Err(Stop::TimedOut),
        r = fut => Ok(r),
    }
}

/// Run `fut` to completion (it is bounded by `connect_timeout`), noting
/// whether the deadline passed or a signal arrived meanwhile.
async fn finish<T>(
    fut: impl std::future::Future<Output = T>,
    deadline: Option<Instant>,
    signals: &mut Signals,
) -> (T, Option<Stop>) {
    tokio::pin!(fut);
    let mut stop = None;
    loop {
        tokio::select! {
            r = &mut fut => return (r, stop),
            sig = signals.recv(), if stop.is_none() => stop = Some(Stop::Signal(sig)),
            _ = sleep_until(deadline), if stop.is_none() => stop = Some(Stop::TimedOut),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What `lock`, `elect` and `join` hold.
enum Grant {
    Lock(quorate::LockGuard),
    Leadership(quorate::Leadership),
    Membership(quorate::Membership),
}

impl Grant {
    fn fence(&self) -> Option<u64> {
        match self {
            Grant::Lock(g) => Some(g.fence().get()),
            Grant::Leadership(l) => Some(l.fence().get()),
            Grant::Membership(_) => None,
        }
    }

    async fn lost(&self) -> LossReason {
        match self {
            Grant::Lock(g) => g.lost().await,
            Grant::Leadership(l) => l.lost().await,
            Grant::Membership(m) => m.lost().await,
        }
    }

    async fn release(self) -> quorate::Result<()> {
        match self {
            Grant::Lock(g) if !g.is_lost() => g.release().await,
            Grant::Leadership(l) if !l.is_lost() => l.resign().await,
            Grant::Membership(m) => {
                if futures::FutureExt::now_or_never(m.lost()).is_some() {
                    return Ok(());
                }
                m.leave().await
            }
            _ => Ok(()),
        }
    }
}

/// What to hold and how: the common path of `lock`, `elect` and `join`.
struct HoldPlan {
    url: String,
    args: HoldArgs,
    attempt: Attempt,
    /// "lock `x`", for messages.
    what: String,
    command: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// The grant line's fields for `--json` (session and fence are added).
    grant_json: serde_json::Value,
    quiet: bool,
}

/// Connect, open a session, acquire (with `acquire`), run the command or
/// hold, then release — and on *every* exit path (timeout, busy, signal,
/// failed spawn, loss, error) close the session and wait for the backend to
/// confirm before returning, so nothing of this process is left behind.
async fn hold_with<F, Fut>(plan: HoldPlan, acquire: F) -> Result<u8, Exit>
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = quorate::Result<Option<Grant>>>,
{
    let conflict = plan.args.conflict_exit_code.unwrap_or(EXIT_TEMPFAIL);
    hold_inner(plan, acquire).await.map_err(|mut e| {
        if e.code == EXIT_TEMPFAIL {
            e.code = conflict;
        }
        e
    })
}

async fn hold_inner<F, Fut>(plan: HoldPlan, acquire: F) -> Result<u8, Exit>
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = quorate::Result<Option<Grant>>>,
{
    let mut signals = Signals::install()?;
    let command = match (&plan.args.shell_command, plan.command.is_empty()) {
        (Some(c), true) => vec!["sh".to_owned(), "-c".to_owned(), c.clone()],
        (Some(_), false) => {
            return Err(Exit {
                code: 2,
                message: "give either -c STRING or a command after `--`, not both".into(),
            })
        }
        (None, _) => plan.command.clone(),
    };
    let mut config = quorate::Config::parse(&plan.url)?;
    if let Some(ttl) = plan.args.ttl {
        config.set_ttl("--ttl", ttl)?;
    }
    config.validate()?;
    let deadline = match plan.attempt {
        Attempt::Wait(d) => d,
        Attempt::Once => None,
    };
    let what = plan.what.as_str();
    let timeout = plan.args.timeout;
    let coord = race(quorate::connect_with(&config), deadline, &mut signals)
        .await
        .map_err(|s| s.exit(what, "connecting for", timeout))??;
    // Opening a session is not cut short (a half-open lease would outlive
    // us until its TTL); it is bounded by connect_timeout.
    let (session, stop) = finish(coord.session(), deadline, &mut signals).await;
    let session = session?;
    if let Some(stop) = stop {
        close(&session).await;
        return Err(stop.exit(what, "opening a session for", timeout));
    }
    let outcome = race(acquire(session.clone()), deadline, &mut signals).await;
    let grant = match outcome {
        Ok(Ok(Some(g))) => g,
        Ok(Ok(None)) => {
            close(&session).await;
            return Err(Exit {
                code: EXIT_TEMPFAIL,
                message: format!("{what} is busy"),
            });
        }
        Ok(Err(e)) => {
            close(&session).await;
            return Err(e.into());
        }
        Err(stop) => {
            // The acquire future was dropped (cancel safe); closing the
            // session removes anything a late grant might have left.
            close(&session).await;
            return Err(stop.exit(what, "waiting for", timeout));
        }
    };
    let mut env = plan.env;
    if let Some(f) = grant.fence() {
        env.push(("QUORATE_FENCE", f.to_string()));
    }
    env.push(("QUORATE_SESSION", session.id().to_owned()));
    let announce = match (plan.quiet, plan.args.json) {
        (true, _) => hold::Announce::Nothing,
        (false, false) => hold::Announce::Line(match grant.fence() {
            Some(f) => format!("holding {what} (fence {f})"),
            None => format!("holding {what}"),
        }),
        (false, true) => {
            let mut grant_json = plan.grant_json;
            grant_json["session"] = session.id().into();
            if let Some(f) = grant.fence() {
                grant_json["fence"] = f.into();
            }
            hold::Announce::Line(grant_json.to_string())
        }
    };
    let options = hold::Options {
        kill_after: plan.args.kill_after,
        announce,
    };
    let result =
        hold::run_while_held(&command, &env, grant.lost(), &mut signals, what, &options).await;
    if let Err(e) = grant.release().await {
        tracing::warn!(error = %e, "releasing {what}; closing the session instead");
    }
    close(&session).await;
    result
}

/// Close (revoke) the session and wait for the backend to confirm, bounded
/// by `connect_timeout`. A failure is reported, not fatal: the lease then
/// runs out by its TTL.
async fn close(session: &Session) {
    if let Err(e) = session.close().await {
        let expiry = match session.ttl() {
            Some(ttl) => format!(
                "it expires after its TTL, {}",
                humantime::format_duration(ttl)
            ),
            None => "its locks are released when this process exits".to_owned(),
        };
        eprintln!(
            "quorate: warning: could not close session {}: {e} ({expiry})",
            session.id()
        );
    }
}

fn deadline_of(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + t)
}

async fn run(command: Command, quiet: bool) -> Result<u8, Exit> {
    match command {
        Command::Lock {
            target,
            nonblock,
            hold,
            shared,
            command,
        } => {
            let (url, rest) = split_target(target, 1)?;
            let name = rest[0].clone();
            let attempt = if nonblock || hold.timeout == Some(Duration::ZERO) {
                Attempt::Once
            } else {
                Attempt::Wait(deadline_of(hold.timeout))
            };
            let plan = HoldPlan {
                url,
                args: hold,
                attempt,
                what: format!("lock `{name}`"),
                command,
                env: vec![("QUORATE_LOCK", name.clone())],
                grant_json: serde_json::json!({
                    "kind": if shared { "read" } else { "lock" },
                    "name": name,
                }),
                quiet,
            };
            hold_with(plan, |session| async move {
                let grant = match (shared, attempt) {
                    (false, Attempt::Wait(_)) => session.mutex(&name).lock().await.map(Some),
                    (false, Attempt::Once) => session.mutex(&name).try_lock().await,
                    (true, Attempt::Wait(_)) => session.rwlock(&name).read().await.map(Some),
                    (true, Attempt::Once) => session.rwlock(&name).try_read().await,
                };
                grant.map(|g| g.map(Grant::Lock))
            })
            .await
        }
        Command::Elect {
            target,
            hold,
            command,
        } => {
            let (url, rest) = split_target(target, 2)?;
            let (election, value) = (rest[0].clone(), rest[1].clone());
            reject_zero_timeout(&hold, "elect")?;
            let plan = HoldPlan {
                url,
                attempt: Attempt::Wait(deadline_of(hold.timeout)),
                args: hold,
                what: format!("leadership of `{election}`"),
                command,
                env: vec![("QUORATE_ELECTION", election.clone())],
                grant_json: serde_json::json!({
                    "kind": "leadership",
                    "election": election,
                    "value": value,
                }),
                quiet,
            };
            hold_with(plan, |session| async move {
                session
                    .election(&election)
                    .campaign(value.as_bytes())
                    .await
                    .map(|l| Some(Grant::Leadership(l)))
            })
            .await
        }
        Command::Leader {
            target,
            watch,
            json,
        } => {
            let (url, rest) = split_target(target, 1)?;
            let election = rest[0].clone();
            let coord = connect(&url).await?;
            if !watch {
                let leader = coord.leader(&election).await?;
                print_leader(leader.as_ref(), json, None);
                return match leader {
                    Some(_) => Ok(0),
                    None => Err(Exit {
                        code: EXIT_NO_LEADER,
                        message: format!("election `{election}` has no leader"),
                    }),
                };
            }
            let mut observe = coord.observe(&election);
            loop {
                tokio::select! {
                    next = observe.next() => match next {
                        Some(Ok(l)) => print_leader(l.as_ref(), json, Some("-")),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Ok(0),
                    },
                    _ = hold::interrupted() => return Ok(0),
                }
            }
        }
        Command::Join {
            target,
            capabilities,
            hold,
            command,
        } => {
            let (url, rest) = split_target(target, 2)?;
            let (group, member) = (rest[0].clone(), rest[1].clone());
            reject_zero_timeout(&hold, "join")?;
            let caps: serde_json::Value =
                serde_json::from_str(&capabilities).map_err(|e| Exit {
                    code: 2,
                    message: format!("--capabilities is not JSON: {e}"),
                })?;
            let plan = HoldPlan {
                url,
                attempt: Attempt::Wait(deadline_of(hold.timeout)),
                args: hold,
                what: format!("membership `{member}` of `{group}`"),
                command,
                env: vec![
                    ("QUORATE_GROUP", group.clone()),
                    ("QUORATE_MEMBER", member.clone()),
                ],
                grant_json: serde_json::json!({
                    "kind": "membership",
                    "group": group,
                    "member": member,
                }),
                quiet,
            };
            hold_with(plan, |session| async move {
                session
                    .group(&group)
                    .join(&member, caps)
                    .await
                    .map(|m| Some(Grant::Membership(m)))
            })
            .await
        }
        Command::Members {
            target,
            watch,
            json,
        } => {
            let (url, rest) = split_target(target, 1)?;
            let group = rest[0].clone();
            let coord = connect(&url).await?;
            if !watch {
                let members = coord.members(&group).await?;
                if json {
                    println!("{}", serde_json::to_string(&members).expect("serialisable"));
                } else {
                    for m in members {
                        println!("{}", m.id);
                    }
                }
                return Ok(0);
            }
            let mut events = coord.watch_group(&group);
            loop {
                tokio::select! {
                    next = events.next() => match next {
                        Some(Ok(e)) if json => println!("{}", serde_json::to_string(&e).expect("serialisable")),
                        Some(Ok(e)) => print_event(&e),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Ok(0),
                    },
                    _ = hold::interrupted() => return Ok(0),
                }
            }
        }
        Command::Locks { target, json } => {
            let (url, prefix) = split_locks_target(target)?;
            let coord = connect(&url).await?;
            let locks = coord.locks(&prefix).await?;
            if json {
                println!("{}", serde_json::to_string(&locks).expect("serialisable"));
            } else {
                print!("{}", locks_table(&locks));
            }
            Ok(0)
        }
        Command::Conformance {
            url,
            format,
            only,
            nemesis,
            proxy,
            hooks,
            hook_timeout,
        } => {
            let config = quorate::Config::parse(&url)?;
            let filters: Vec<&str> = only.iter().map(String::as_str).collect();
            let unmatched = runner::unmatched_filters(&filters);
            if !unmatched.is_empty() {
                return Err(Exit {
                    code: 2,
                    message: format!(
                        "--only {}: no case's name contains it; the cases are: {}",
                        unmatched.join(", --only "),
                        quorate_conformance::cases::all()
                            .iter()
                            .map(|c| c.name)
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                });
            }
            if let Some(d) = nemesis {
                // SAFETY: set before the suite starts any thread that reads the environment.
                std::env::set_var(
                    quorate_conformance::nemesis::SECS_ENV,
                    d.as_secs().to_string(),
                );
            }
            // The client-process fault cases run this executable as their
            // agent (`quorate agent URL`), so they always run; a result is
            // reported as measured, never rewritten.
            let exe = std::env::current_exe().map_err(|e| Exit {
                code: 1,
                message: format!("cannot find this executable: {e}"),
            })?;
            // SAFETY: set before the suite starts any thread that reads the environment.
            std::env::set_var("QUORATE_AGENT", exe);
            std::env::set_var("QUORATE_AGENT_SUBCOMMAND", "agent");
            // Servers this run did not start: the built-in proxies
            // (--proxy) and the user's hooks inject the server faults; a
            // fault with neither is reported skipped with what is missing.
            let options = quorate_conformance::hooks::ExternalOptions {
                proxy,
                hooks,
                hook_timeout,
            };
            let (suite_url, faults) =
                quorate_conformance::hooks::HookFaults::prepare(&url, options)
                    .await
                    .map_err(|e| Exit {
                        code: 2,
                        message: e.to_string(),
                    })?;
            let mut target = Target::new(config.scheme.clone(), suite_url);
            target.faults = Some(std::sync::Arc::new(faults));
            let mut report = runner::run_suite_matching(&target, &filters).await?;
            // The URL as given, not the proxies' rewrite of it.
            report.url = config.redacted();
            let report = quorate_conformance::Report::new(vec![report]);
            match format {
                ReportFormat::Markdown => print!("{}", report.to_markdown()),
                ReportFormat::Json => println!("{}", report.to_json()),
                ReportFormat::Junit => print!("{}", report.to_junit()),
            }
            Ok(if report.has_failures() { 1 } else { 0 })
        }
        Command::Bench {
            url,
            seconds,
            held,
            waiters,
            format,
        } => {
            let config = quorate::Config::parse(&url)?;
            let raw = bench::baseline_for(&url).await?;
            let target = Target::new(config.scheme.clone(), url);
            let options = bench::Options {
                held,
                waiters,
                ..bench::Options::new(seconds)
            };
            let reports = bench::run_with(&target, raw, &options).await?;
            match format {
                Format::Markdown => print!("{}", bench::to_markdown(&reports)),
                Format::Json => {
                    for r in &reports {
                        println!("{}", serde_json::to_string(r).expect("serialisable"));
                    }
                }
            }
            Ok(0)
        }
        Command::Revoke { target } => {
            let (url, rest) = split_target(target, 1)?;
            let session = rest[0].as_str();
            let coord = connect(&url).await?;
            match coord.revoke_session(session).await {
                Ok(()) => {
                    if !quiet {
                        println!("revoked session {session}");
                    }
                    Ok(0)
                }
                Err(e) if e.kind() == ErrorKind::NotHeld => Err(Exit {
                    code: EXIT_NOT_FOUND_SESSION,
                    message: e.to_string(),
                }),
                Err(e) => Err(e.into()),
            }
        }
        Command::ReapGroup => Ok(hold::reap_group_main()),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled in main before the runtime starts")
        }
        Command::Agent { url } => {
            quorate_conformance::agent::serve(&url).await;
            Ok(0)
        }
    }
}

/// One line for `leader`: the value (`none` for no leader), or JSON.
fn print_leader(leader: Option<&quorate::Leader>, json: bool, none: Option<&str>) {
    match (leader, json) {
        (Some(l), false) => println!("{}", String::from_utf8_lossy(&l.value)),
        (None, false) => {
            if let Some(none) = none {
                println!("{none}");
            }
        }
        (Some(l), true) => println!(
            "{}",
            serde_json::json!({
                "value": String::from_utf8_lossy(&l.value),
                "fence": l.fence.get(),
            })
        ),
        (None, true) => println!("null"),
    }
}

/// `elect` and `join` have no single-attempt form.
fn reject_zero_timeout(hold: &HoldArgs, command: &str) -> Result<(), Exit> {
    if hold.timeout == Some(Duration::ZERO) {
        return Err(Exit {
            code: 2,
            message: format!("`{command} --timeout 0`: there is no single-attempt {command}; give a timeout above zero"),
        });
    }
    Ok(())
}

fn print_event(e: &GroupEvent) {
    match e {
        GroupEvent::Snapshot { members } => {
            for m in members {
                println!("member {} {}", m.id, m.capabilities);
            }
        }
        GroupEvent::Joined { member } => println!("joined {} {}", member.id, member.capabilities),
        GroupEvent::Updated { member } => println!("updated {} {}", member.id, member.capabilities),
        GroupEvent::Left { id } => println!("left {id}"),
    }
}
