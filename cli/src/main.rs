//! `quorate`: locks, elections and group membership for scripts and
//! operators, on every backend; plus the conformance suite and benchmarks.
//!
//! Exit codes: the command's own status for `lock`/`elect`/`join` with a
//! command (128+N if it died of signal N); 75 (EX_TEMPFAIL) when a lock or
//! leadership times out or is lost; 1 for any other error (one line on
//! stderr); 2 for bad usage.

mod hold;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use quorate::{Coordinator, ErrorKind, GroupEvent};
use quorate_conformance::{bench, runner, Target};

/// Exit status for "try again later": timed out or lost.
pub const EXIT_TEMPFAIL: u8 = 75;

#[derive(Parser)]
#[command(
    name = "quorate",
    version,
    about = "Distributed locks, elections and membership over etcd, ZooKeeper, Redis, files or memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Markdown,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Hold a lock while a command runs (like flock(1) / `etcdctl lock`).
    ///
    /// The command gets QUORATE_FENCE (the fencing token) and QUORATE_LOCK in
    /// its environment. If the lock is lost, the command gets SIGTERM and
    /// quorate exits 75. Without a command, holds until stdin closes or a
    /// signal arrives.
    Lock {
        /// Backend URL, e.g. file:///var/lib/quorate or etcd://127.0.0.1:2379.
        url: String,
        /// Lock name.
        name: String,
        /// Give up after this long (e.g. 500ms, 10s, 2m) and exit 75.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Session (lease) TTL, overriding the URL's `ttl`.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Take the read (shared) side of a read/write lock of this name.
        #[arg(long)]
        shared: bool,
        /// The command to run while holding the lock.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Campaign in an election; run a command while leader, or hold
    /// leadership until interrupted.
    Elect {
        /// Backend URL.
        url: String,
        /// Election name.
        election: String,
        /// The value to publish as leader.
        value: String,
        /// Session (lease) TTL, overriding the URL's `ttl`.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The command to run while leader (gets QUORATE_FENCE and QUORATE_ELECTION).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print the current leader's value (exit 3 if there is none).
    Leader {
        /// Backend URL.
        url: String,
        /// Election name.
        election: String,
        /// Print one line per change until interrupted (`-` for no leader).
        #[arg(long)]
        watch: bool,
    },
    /// Join a group; run a command while a member, or stay until interrupted.
    Join {
        /// Backend URL.
        url: String,
        /// Group name.
        group: String,
        /// Member id.
        member: String,
        /// Capabilities as JSON.
        #[arg(long, default_value = "null")]
        capabilities: String,
        /// Session (lease) TTL, overriding the URL's `ttl`.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The command to run while a member.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List a group's members (one id per line, or JSON).
    Members {
        /// Backend URL.
        url: String,
        /// Group name.
        group: String,
        /// Print membership events until interrupted.
        #[arg(long)]
        watch: bool,
        /// JSON output (an array, or one event object per line with --watch).
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
        format: Format,
        /// Only cases whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Benchmark against the backend's raw operations in the same run.
    Bench {
        /// Backend URL.
        url: String,
        /// Seconds per scenario.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Output format (json: one object per scenario per line).
        #[arg(long, value_enum, default_value = "markdown")]
        format: Format,
    },
    /// The conformance suite's child-process client (internal).
    #[command(hide = true)]
    Agent {
        /// Backend URL.
        url: String,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    quorate::config::parse_duration("duration", s).map_err(|e| e.message().to_owned())
}

/// A failure that ends the program: the message for stderr and the status.
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl From<quorate::Error> for Exit {
    fn from(e: quorate::Error) -> Self {
        let code = match e.kind() {
            ErrorKind::Timeout | ErrorKind::Lost => EXIT_TEMPFAIL,
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("QUORATE_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("quorate: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

async fn connect(url: &str, ttl: Option<Duration>) -> Result<Coordinator, Exit> {
    let mut config = quorate::Config::parse(url)?;
    if let Some(ttl) = ttl {
        config.ttl = ttl;
    }
    Ok(quorate::connect_with(&config).await?)
}

async fn run(command: Command) -> Result<u8, Exit> {
    match command {
        Command::Lock {
            url,
            name,
            timeout,
            ttl,
            shared,
            command,
        } => {
            let coord = connect(&url, ttl).await?;
            let session = coord.session().await?;
            let acquire = async {
                if shared {
                    session.rwlock(&name).read().await
                } else {
                    session.mutex(&name).lock().await
                }
            };
            let guard = match timeout {
                Some(d) => match tokio::time::timeout(d, acquire).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(Exit {
                            code: EXIT_TEMPFAIL,
                            message: format!("timed out after {d:?} waiting for lock `{name}`"),
                        })
                    }
                },
                None => acquire.await?,
            };
            let env = [
                ("QUORATE_FENCE", guard.fence().to_string()),
                ("QUORATE_LOCK", name.clone()),
            ];
            let code = hold::run_while_held(
                &command,
                &env,
                guard.lost(),
                &format!("lock `{name}`"),
                guard.fence().get(),
            )
            .await?;
            if !guard.is_lost() {
                guard.release().await?;
            }
            let _ = session.close().await;
            Ok(code)
        }
        Command::Elect {
            url,
            election,
            value,
            ttl,
            command,
        } => {
            let coord = connect(&url, ttl).await?;
            let session = coord.session().await?;
            let leadership = session
                .election(&election)
                .campaign(value.as_bytes())
                .await?;
            let env = [
                ("QUORATE_FENCE", leadership.fence().to_string()),
                ("QUORATE_ELECTION", election.clone()),
            ];
            let code = hold::run_while_held(
                &command,
                &env,
                leadership.lost(),
                &format!("leadership of `{election}`"),
                leadership.fence().get(),
            )
            .await?;
            if !leadership.is_lost() {
                leadership.resign().await?;
            }
            let _ = session.close().await;
            Ok(code)
        }
        Command::Leader {
            url,
            election,
            watch,
        } => {
            let coord = connect(&url, None).await?;
            if !watch {
                return match coord.leader(&election).await? {
                    Some(l) => {
                        println!("{}", String::from_utf8_lossy(&l.value));
                        Ok(0)
                    }
                    None => Err(Exit {
                        code: 3,
                        message: format!("election `{election}` has no leader"),
                    }),
                };
            }
            let mut observe = coord.observe(&election);
            loop {
                tokio::select! {
                    next = observe.next() => match next {
                        Some(Ok(Some(l))) => println!("{}", String::from_utf8_lossy(&l.value)),
                        Some(Ok(None)) => println!("-"),
                        Some(Err(e)) => return Err(e.into()),
                        None => return Ok(0),
                    },
                    _ = hold::interrupted() => return Ok(0),
                }
            }
        }
        Command::Join {
            url,
            group,
            member,
            capabilities,
            ttl,
            command,
        } => {
            let caps: serde_json::Value =
                serde_json::from_str(&capabilities).map_err(|e| Exit {
                    code: 2,
                    message: format!("--capabilities is not JSON: {e}"),
                })?;
            let coord = connect(&url, ttl).await?;
            let session = coord.session().await?;
            let membership = session.group(&group).join(&member, caps).await?;
            let env = [
                ("QUORATE_GROUP", group.clone()),
                ("QUORATE_MEMBER", member.clone()),
            ];
            let code = hold::run_while_held(
                &command,
                &env,
                membership.lost(),
                &format!("membership `{member}` of `{group}`"),
                0,
            )
            .await?;
            let _ = membership.leave().await;
            let _ = session.close().await;
            Ok(code)
        }
        Command::Members {
            url,
            group,
            watch,
            json,
        } => {
            let coord = connect(&url, None).await?;
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
        Command::Conformance { url, format, only } => {
            let config = quorate::Config::parse(&url)?;
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
            let target = Target::new(config.scheme.clone(), url);
            let report = runner::run_suite(&target, only.as_deref()).await?;
            let report = quorate_conformance::Report::new(vec![report]);
            match format {
                Format::Markdown => print!("{}", report.to_markdown()),
                Format::Json => println!("{}", report.to_json()),
            }
            Ok(if report.has_failures() { 1 } else { 0 })
        }
        Command::Bench {
            url,
            seconds,
            format,
        } => {
            let config = quorate::Config::parse(&url)?;
            let raw = bench::baseline_for(&url).await?;
            let target = Target::new(config.scheme.clone(), url);
            let reports = bench::run(&target, raw, seconds).await?;
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
        Command::Agent { url } => {
            quorate_conformance::agent::serve(&url).await;
            Ok(0)
        }
    }
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
