//! Fault injection for servers this process did not start (a CI's
//! containers, an operator's cluster): the built-in proxy of `quorate
//! conformance --proxy` and the user's `--hook KIND=COMMAND` shell
//! commands, behind one [`ServerFaults`] controller, [`HookFaults`].
//!
//! Each server fault of the suite ([`Fault`]) maps to the hook kinds that
//! inject it; a fault whose hooks are not all given is not supported, and
//! its cases are reported unverified / not applicable with the missing
//! hooks as the reason ([`ServerFaults::missing`]), never as passed.
//!
//! | fault | needs |
//! |---|---|
//! | [`Fault::Partition`] (client ↔ server) | `--proxy` |
//! | [`Fault::KillLeader`] | `leader`, `kill-server`, `restart-server` |
//! | [`Fault::RestartWithoutPersistence`] | `restart-empty` |
//! | [`Fault::MemberPartition`] (a URL of 3+ members) | `leader`, `isolate-member`, `heal-members` |
//! | [`Fault::Eviction`] | `evicting-server`, `fill-memory` |
//! | [`Fault::ServerClockStep`] | `clock-server`, `step-clock` |
//! | [`Fault::LaggingFailover`] | `lagging-pair`, `pause-replication`, `fail-over` |
//! | [`Fault::ServerPause`] | `pause-server`, `resume-server` (and `leader` unless the URL names one data server) |
//!
//! A hook runs as `sh -c COMMAND` in its own process group, with
//! placeholders substituted in COMMAND and also set as environment
//! variables ([`PLACEHOLDERS`]); it must exit 0 within the timeout, else
//! its process group is killed and the case that needed it fails. What a
//! hook prints on stdout is its answer where one is asked for (the
//! leader's member index, a URL, a count): the last non-empty line.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::target::{Fault, ServerFaults, Used};

/// A kind of hook: one step of a server fault the suite cannot take
/// itself on servers it did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// Print the index (0-based, in the URL's server order) of the member
    /// that orders writes now: the etcd Raft leader, the ZooKeeper leader,
    /// the Redis primary. Asked again after a kill until it names another.
    Leader,
    /// SIGKILL member `{member}`; return once it is dead.
    KillServer,
    /// Start member `{member}` again after `kill-server`, on the same
    /// address and with its data; return once it serves (as a follower or
    /// replica).
    RestartServer,
    /// Restart the server (member `{member}`, 0) WITHOUT its data; return
    /// once it answers.
    RestartEmpty,
    /// Cut member `{member}` off from its peers (server ↔ server traffic
    /// dropped both ways) while its client port stays up; return at once.
    IsolateMember,
    /// End every member partition; return once every member serves again.
    HealMembers,
    /// Start a fresh dedicated server configured to evict keys
    /// (`maxmemory` + `volatile-lru`) and print its base URL.
    EvictingServer,
    /// Write filler keys with a TTL to the evicting server, well past its
    /// `maxmemory`, and print how many keys it evicted meanwhile.
    FillMemory,
    /// Start a fresh dedicated server whose wall clock can be stepped
    /// (libfaketime) and print its base URL.
    ClockServer,
    /// Step the clock server's wall clock by `{secs}` seconds (forward when
    /// positive) from where it is.
    StepClock,
    /// Start a fresh dedicated primary and a replica whose clock is
    /// `{secs}` seconds behind, wait until the replica is in sync, and
    /// print the primary's base URL.
    LaggingPair,
    /// Stop replication to that replica (it receives nothing more; the
    /// primary keeps serving).
    PauseReplication,
    /// Kill that primary, promote the replica with whatever it received,
    /// and print its base URL once it serves as the primary.
    FailOver,
    /// SIGSTOP member `{member}` (the one the `leader` hook printed; 0 on a
    /// single server); return once it is stopped.
    PauseServer,
    /// SIGCONT member `{member}` after `pause-server`; return once the
    /// deployment serves again (behind Sentinel, which failed over
    /// meanwhile: once the old primary is a replica in sync of the new).
    ResumeServer,
}

impl HookKind {
    /// Every kind, in documentation order.
    pub const ALL: [HookKind; 15] = [
        HookKind::Leader,
        HookKind::KillServer,
        HookKind::RestartServer,
        HookKind::RestartEmpty,
        HookKind::IsolateMember,
        HookKind::HealMembers,
        HookKind::EvictingServer,
        HookKind::FillMemory,
        HookKind::ClockServer,
        HookKind::StepClock,
        HookKind::LaggingPair,
        HookKind::PauseReplication,
        HookKind::FailOver,
        HookKind::PauseServer,
        HookKind::ResumeServer,
    ];

    /// The name given on the command line (`kill-server`).
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Leader => "leader",
            HookKind::KillServer => "kill-server",
            HookKind::RestartServer => "restart-server",
            HookKind::RestartEmpty => "restart-empty",
            HookKind::IsolateMember => "isolate-member",
            HookKind::HealMembers => "heal-members",
            HookKind::EvictingServer => "evicting-server",
            HookKind::FillMemory => "fill-memory",
            HookKind::ClockServer => "clock-server",
            HookKind::StepClock => "step-clock",
            HookKind::LaggingPair => "lagging-pair",
            HookKind::PauseReplication => "pause-replication",
            HookKind::FailOver => "fail-over",
            HookKind::PauseServer => "pause-server",
            HookKind::ResumeServer => "resume-server",
        }
    }

    /// The hook kinds that inject `fault` (empty for the partition, which
    /// the built-in proxy injects). A server pause on a URL of several
    /// servers (or behind Sentinel) also needs `leader`.
    pub fn for_fault(fault: Fault) -> &'static [HookKind] {
        match fault {
            Fault::Partition => &[],
            Fault::ServerPause => &[HookKind::PauseServer, HookKind::ResumeServer],
            Fault::KillLeader => &[
                HookKind::Leader,
                HookKind::KillServer,
                HookKind::RestartServer,
            ],
            Fault::RestartWithoutPersistence => &[HookKind::RestartEmpty],
            Fault::MemberPartition => &[
                HookKind::Leader,
                HookKind::IsolateMember,
                HookKind::HealMembers,
            ],
            Fault::Eviction => &[HookKind::EvictingServer, HookKind::FillMemory],
            Fault::ServerClockStep => &[HookKind::ClockServer, HookKind::StepClock],
            Fault::LaggingFailover => &[
                HookKind::LaggingPair,
                HookKind::PauseReplication,
                HookKind::FailOver,
            ],
        }
    }

    fn known() -> String {
        HookKind::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HookKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        HookKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown hook kind `{s}` (known: {})", HookKind::known()))
    }
}

/// The placeholders a hook command may use, substituted as `{name}` and
/// set as the environment variable `QUORATE_HOOK_<NAME>` (`{member}` →
/// `$QUORATE_HOOK_MEMBER`); one not given to a kind is empty. Other
/// braces (`${VAR}`, awk's `{print}`, jq's `{name}`) are left as they are.
pub const PLACEHOLDERS: [(&str, &str); 6] = [
    ("member", "the member's 0-based index in the URL's server list (for kill-server and restart-server: what the `leader` hook printed)"),
    ("member1", "the same index plus one (ZooKeeper myid, `etcd1`-style container names)"),
    ("addr", "the member's host:port as written in the URL"),
    ("host", "the host of {addr}"),
    ("port", "the port of {addr}"),
    ("secs", "seconds: the clock step of step-clock (signed), how far behind the replica of lagging-pair is"),
];

/// One `--hook KIND=COMMAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// What it does.
    pub kind: HookKind,
    /// The shell command (run with `sh -c`), placeholders not substituted.
    pub command: String,
}

impl FromStr for Hook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, command) = s.split_once('=').ok_or_else(|| {
            format!(
                "`{s}` is not KIND=COMMAND (e.g. kill-server='docker kill etcd{{member}}'; kinds: {})",
                HookKind::known()
            )
        })?;
        let kind: HookKind = kind.trim().parse()?;
        if command.trim().is_empty() {
            return Err(format!("the `{kind}` hook has an empty command"));
        }
        Ok(Hook {
            kind,
            command: command.to_owned(),
        })
    }
}

/// Whether `host` is an IP address (not a name), bracketed or not.
fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
}

/// The options of a run against servers this process did not start.
#[derive(Debug, Clone)]
pub struct ExternalOptions {
    /// `--proxy`: put a built-in proxy between this run's clients and each
    /// server of the URL (and inject client ↔ server partitions).
    pub proxy: bool,
    /// `--hook`s, at most one per kind.
    pub hooks: Vec<Hook>,
    /// The longest one hook may run.
    pub hook_timeout: Duration,
}

/// The fault controller of a run against servers this process did not
/// start: the built-in proxies and the user's hooks. Attach it to the
/// target with the URL [`HookFaults::prepare`] returns.
pub struct HookFaults {
    hooks: BTreeMap<HookKind, String>,
    timeout: Duration,
    /// The servers as written in the URL (`host:port`).
    endpoints: Vec<String>,
    /// The members' client addresses as this run reaches them (the
    /// built-in proxies' with `--proxy`).
    members: Vec<SocketAddr>,
    /// Whether the URL names sentinels (`redis+sentinel://`).
    sentinel: bool,
    /// What a partition case puts its own proxy in front of.
    upstream: Upstream,
    _proxies: Vec<EndpointProxy>,
    killed: Mutex<Option<String>>,
    /// The member `pause-server` stopped.
    paused: Mutex<Option<String>>,
    used: Mutex<Vec<Used>>,
}

/// What a partition case puts its own proxy in front of (`--proxy`).
#[derive(Debug)]
enum Upstream {
    /// Without `--proxy`: nothing (no client ↔ server partition).
    None,
    /// The first server's resolved address.
    Server(SocketAddr),
    /// Behind Sentinel: the primary of `service` as the URL's sentinels name
    /// it when a case asks (the case's client reaches it through the proxy
    /// by `nat_map`, see [`crate::Target::through`]).
    SentinelPrimary {
        sentinels: Vec<String>,
        service: String,
    },
}

impl Upstream {
    fn is_some(&self) -> bool {
        !matches!(self, Upstream::None)
    }
}

impl fmt::Debug for HookFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookFaults")
            .field("hooks", &self.hooks.keys().collect::<Vec<_>>())
            .field("endpoints", &self.endpoints)
            .field("members", &self.members)
            .field("proxied", &self.upstream.is_some())
            .finish()
    }
}

/// Why `--proxy` cannot rewrite a URL, or a hook list is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError(pub String);

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

impl HookFaults {
    /// Check the options against `url`, start the built-in proxies if
    /// asked (one per server of the URL, each on a free loopback port), and
    /// return the URL the suite must use (the proxies' addresses in place
    /// of the servers') with the controller.
    ///
    /// # Errors
    ///
    /// A second hook of one kind; `--proxy` with a URL it cannot rewrite
    /// (no servers: `file://`, `memory://`; `redis+sentinel://`, whose
    /// clients reach the data servers the sentinels name; a TLS URL naming
    /// its servers by host name, which TLS verifies); a server name that
    /// does not resolve; a proxy that cannot listen.
    pub async fn prepare(
        url: &str,
        options: ExternalOptions,
    ) -> Result<(String, HookFaults), SetupError> {
        let mut hooks = BTreeMap::new();
        for h in options.hooks {
            if hooks.insert(h.kind, h.command).is_some() {
                return Err(SetupError(format!(
                    "--hook {} is given twice (one command per kind)",
                    h.kind
                )));
            }
        }
        let config = quorate::Config::parse(url).map_err(|e| SetupError(e.to_string()))?;
        let endpoints = config.endpoints.clone();
        let (new_url, members, upstream, proxies) = if options.proxy {
            let cannot = |why: String| {
                SetupError(format!(
                    "--proxy cannot rewrite `{}`: {why}",
                    config.redacted()
                ))
            };
            if endpoints.is_empty() || matches!(config.scheme.as_str(), "memory" | "file") {
                return Err(cannot(format!(
                    "a {}:// URL names no server to put a proxy in front of",
                    config.scheme
                )));
            }
            if config.scheme.contains("sentinel") {
                // The URL's servers are the sentinels: no relay in front of
                // them; each partition case proxies the primary they name.
                if config.option("nat_map").is_some() {
                    return Err(cannot(
                        "the partition cases map the primary the sentinels name to their proxy with `nat_map`; run without the URL's own `nat_map` (the primary must be reachable at the address the sentinels announce)".into(),
                    ));
                }
                let service = config.path.split('/').next().unwrap_or_default().to_owned();
                let upstream = Upstream::SentinelPrimary {
                    sentinels: endpoints.clone(),
                    service,
                };
                (url.to_owned(), Vec::new(), upstream, Vec::new())
            } else {
                let tls = matches!(config.scheme.as_str(), "etcds" | "rediss");
                let mut proxies = Vec::new();
                let mut members = Vec::new();
                let mut upstream = None;
                for e in endpoints.iter() {
                    let (host, _) = split_host_port(e)
                        .ok_or_else(|| cannot(format!("the server `{e}` is not host:port")))?;
                    if tls && !is_ip_literal(host) {
                        return Err(cannot(format!(
                        "TLS verifies the server name `{host}`, which a proxy on 127.0.0.1 does not present; name the servers by IP address, or run without --proxy"
                    )));
                    }
                    let addr = resolve(e).await.map_err(cannot)?;
                    upstream.get_or_insert(addr);
                    let proxy = EndpointProxy::start(addr)
                        .await
                        .map_err(|e| cannot(format!("a proxy cannot listen on 127.0.0.1: {e}")))?;
                    members.push(proxy.addr());
                    proxies.push(proxy);
                }
                let list = members
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                let new_url = crate::target::replace_endpoints(url, &list);
                (
                    new_url,
                    members,
                    upstream.map_or(Upstream::None, Upstream::Server),
                    proxies,
                )
            }
        } else {
            let mut members = Vec::new();
            for e in &endpoints {
                if let Ok(a) = resolve(e).await {
                    members.push(a);
                }
            }
            if members.len() != endpoints.len() {
                members.clear();
            }
            (url.to_owned(), members, Upstream::None, Vec::new())
        };
        Ok((
            new_url,
            HookFaults {
                hooks,
                timeout: options.hook_timeout,
                sentinel: config.scheme.contains("sentinel"),
                endpoints,
                members,
                upstream,
                _proxies: proxies,
                killed: Mutex::new(None),
                paused: Mutex::new(None),
                used: Mutex::new(Vec::new()),
            },
        ))
    }

    /// The hook kinds given.
    pub fn kinds(&self) -> Vec<HookKind> {
        self.hooks.keys().copied().collect()
    }

    /// One data server, the URL's only one: no leader to ask for.
    fn single_server(&self) -> bool {
        self.endpoints.len() == 1 && !self.sentinel
    }

    fn has(&self, kinds: &[HookKind]) -> bool {
        kinds.iter().all(|k| self.hooks.contains_key(k))
    }

    fn note(&self, name: &str, error: Option<String>) {
        self.used.lock().unwrap().push(Used {
            name: name.to_owned(),
            error,
        });
    }

    /// The placeholders of member `member` (an index, or whatever the
    /// `leader` hook printed).
    fn member_vars(&self, member: &str) -> Vec<(&'static str, String)> {
        let index = member.parse::<usize>().ok();
        let addr = index
            .and_then(|i| self.endpoints.get(i))
            .cloned()
            .unwrap_or_default();
        let (host, port) = split_host_port(&addr)
            .map(|(h, p)| (h.to_owned(), p.to_owned()))
            .unwrap_or_default();
        vec![
            ("member", member.to_owned()),
            (
                "member1",
                index.map(|i| (i + 1).to_string()).unwrap_or_default(),
            ),
            ("addr", addr),
            ("host", host),
            ("port", port),
        ]
    }

    /// Run hook `kind` with `vars`; its answer (the last non-empty line of
    /// stdout). The use is recorded; a failure is recorded by the caller
    /// through [`HookFaults::failed`] where it ends the fault.
    async fn run(&self, kind: HookKind, vars: &[(&'static str, String)]) -> io::Result<String> {
        let template = self.hooks.get(&kind).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no --hook {kind} was given"),
            )
        })?;
        self.note(kind.name(), None);
        let result = run_hook(kind, template, vars, self.timeout).await;
        if let Err(e) = &result {
            tracing::warn!(hook = %kind, error = %e, "hook failed");
        }
        result
    }

    /// Record that hook `kind` failed in a way that ends the fault.
    fn failed<T>(&self, kind: HookKind, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            self.note(kind.name(), Some(e.to_string()));
        }
        r
    }

    async fn leader(&self) -> io::Result<String> {
        self.run(HookKind::Leader, &[]).await.and_then(|out| {
            if out.is_empty() {
                Err(io::Error::other("the `leader` hook printed nothing"))
            } else {
                Ok(out)
            }
        })
    }

    async fn leader_index(&self) -> io::Result<usize> {
        let out = self.leader().await?;
        match out.parse::<usize>() {
            Ok(i) if i < self.members.len() => Ok(i),
            _ => Err(io::Error::other(format!(
                "the `leader` hook printed `{out}`, not a member index below {}",
                self.members.len()
            ))),
        }
    }
}

/// The built-in proxy in front of one server (`--proxy`): forwards every
/// connection, and while the server is down (a connection to it fails) it
/// stops listening, so clients are refused as by the server itself (a
/// proxy that accepted and then closed would look alive to a client's
/// endpoint balancing) until the server accepts again.
struct EndpointProxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointProxy {
    async fn start(upstream: SocketAddr) -> io::Result<EndpointProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let l = match listener.take() {
                    Some(l) => l,
                    // Listen again on the same port (SO_REUSEADDR).
                    None => match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "the built-in proxy cannot listen again");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                while let Ok((mut client, _)) = l.accept().await {
                    match tokio::net::TcpStream::connect(upstream).await {
                        Ok(mut server) => {
                            tokio::spawn(async move {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            });
                        }
                        Err(_) => break,
                    }
                }
                drop(l);
                // The server is down: refuse until it accepts again.
                while tokio::net::TcpStream::connect(upstream).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Ok(EndpointProxy { addr, task })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EndpointProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn split_host_port(endpoint: &str) -> Option<(&str, &str)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    Some((host, port))
}

/// Ask the sentinels, in order, for the primary of `service`; its address
/// resolved.
async fn sentinel_primary(sentinels: &[String], service: &str) -> Result<SocketAddr, String> {
    let mut failures = Vec::new();
    for s in sentinels {
        let endpoint = if split_host_port(s).is_some() {
            s.clone()
        } else {
            format!("{s}:26379")
        };
        let ask = async {
            let client = redis::Client::open(format!("redis://{endpoint}"))?;
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(service)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok(Some((host, port)))) => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                return resolve(&format!("{host}:{port}")).await;
            }
            Ok(Ok(None)) => failures.push(format!("{endpoint}: does not know `{service}`")),
            Ok(Err(e)) => failures.push(format!("{endpoint}: {e}")),
            Err(_) => failures.push(format!("{endpoint}: no answer within 5 s")),
        }
    }
    Err(format!(
        "no sentinel named the primary of `{service}`: {}",
        failures.join("; ")
    ))
}

async fn resolve(endpoint: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(endpoint)
        .await
        .map_err(|e| format!("the server `{endpoint}` does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("the server `{endpoint}` resolves to no address"))
}

/// Run one hook: `sh -c` with placeholders substituted and exported, in
/// its own process group (killed whole on timeout); its answer is the last
/// non-empty line of stdout.
async fn run_hook(
    kind: HookKind,
    template: &str,
    vars: &[(&'static str, String)],
    timeout: Duration,
) -> io::Result<String> {
    let mut command = template.to_owned();
    for (name, _) in PLACEHOLDERS {
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        command = command.replace(&format!("{{{name}}}"), value);
    }
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("QUORATE_HOOK_KIND", kind.name())
        .process_group(0)
        .kill_on_drop(true);
    for (name, _) in PLACEHOLDERS {
        let value = vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        cmd.env(format!("QUORATE_HOOK_{}", name.to_uppercase()), value);
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::other(format!("the `{kind}` hook cannot start `sh`: {e}")))?;
    let pgid = child.id();
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| io::Error::other(format!("the `{kind}` hook: {e}")))?,
        Err(_) => {
            if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the hook's own process group (it was
                // started with process_group(0), so its pgid is its pid).
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the `{kind}` hook (`{command}`) did not finish within {timeout:?}; its process group was killed"
                ),
            ));
        }
    };
    tracing::info!(hook = %kind, command = %command, status = %output.status, elapsed_ms = started.elapsed().as_millis() as u64, "hook ran");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(io::Error::other(format!(
            "the `{kind}` hook (`{command}`) exited with {}{}",
            output.status,
            last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .unwrap_or_default())
}

#[async_trait::async_trait]
impl ServerFaults for HookFaults {
    fn supports(&self, fault: Fault) -> bool {
        match fault {
            Fault::Partition => self.upstream.is_some(),
            Fault::ServerPause => {
                self.has(HookKind::for_fault(fault))
                    && (self.single_server() || self.has(&[HookKind::Leader]))
            }
            // Behind Sentinel the URL names sentinels, not data members.
            Fault::MemberPartition => {
                !self.sentinel && self.members.len() >= 3 && self.has(HookKind::for_fault(fault))
            }
            // As the harness: a single server has no other to take over.
            Fault::KillLeader => {
                (self.endpoints.len() >= 3 || self.sentinel) && self.has(HookKind::for_fault(fault))
            }
            other => self.has(HookKind::for_fault(other)),
        }
    }

    fn missing(&self, fault: Fault) -> Option<String> {
        if fault == Fault::Partition {
            return Some(
                "the client ↔ server partition needs --proxy (a built-in proxy between this run's clients and the servers)".into(),
            );
        }
        let absent: Vec<String> = HookKind::for_fault(fault)
            .iter()
            .filter(|k| !self.hooks.contains_key(k))
            .map(|k| format!("--hook {k}=…"))
            .collect();
        if fault == Fault::ServerPause && !self.single_server() && !self.has(&[HookKind::Leader]) {
            let mut absent = vec!["--hook leader=…"];
            for k in HookKind::for_fault(fault) {
                if !self.hooks.contains_key(k) {
                    absent.push(if *k == HookKind::PauseServer {
                        "--hook pause-server=…"
                    } else {
                        "--hook resume-server=…"
                    });
                }
            }
            return Some(format!(
                "pausing the leader of several servers needs {}",
                absent.join(", ")
            ));
        }
        if fault == Fault::MemberPartition && self.sentinel {
            return Some(
                "behind Sentinel the URL's servers are sentinels, not members of one data cluster: no member partition".into(),
            );
        }
        let too_small = match fault {
            Fault::MemberPartition => (self.members.len() < 3)
                .then_some("a member partition needs a URL naming 3+ members"),
            Fault::KillLeader => (self.endpoints.len() < 3 && !self.sentinel).then_some(
                "killing the leader needs a URL naming 3+ members, or redis+sentinel://",
            ),
            _ => None,
        };
        if let Some(too_small) = too_small {
            return Some(format!(
                "{too_small} (it names {}){}",
                self.endpoints.len(),
                if absent.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", absent.join(", "))
                }
            ));
        }
        Some(format!(
            "no hook injects this fault: it needs {} (see docs/ci.md)",
            absent.join(", ")
        ))
    }

    fn take_used(&self) -> Vec<Used> {
        std::mem::take(&mut *self.used.lock().unwrap())
    }

    async fn pause_leader(&self) -> io::Result<String> {
        let member = if self.single_server() {
            "0".to_owned()
        } else {
            let leader = self.leader().await;
            self.failed(HookKind::Leader, leader)?
        };
        let vars = self.member_vars(&member);
        let r = self.run(HookKind::PauseServer, &vars).await;
        self.failed(HookKind::PauseServer, r)?;
        *self.paused.lock().unwrap() = Some(member.clone());
        Ok(format!("member {member}"))
    }

    async fn resume_paused(&self) -> io::Result<()> {
        let Some(member) = self.paused.lock().unwrap().take() else {
            return Ok(());
        };
        let vars = self.member_vars(&member);
        let r = self.run(HookKind::ResumeServer, &vars).await;
        self.failed(HookKind::ResumeServer, r).map(drop)
    }

    async fn kill_leader(&self) -> io::Result<String> {
        let leader = self.leader().await;
        let leader = self.failed(HookKind::Leader, leader)?;
        let vars = self.member_vars(&leader);
        let r = self.run(HookKind::KillServer, &vars).await;
        self.failed(HookKind::KillServer, r)?;
        *self.killed.lock().unwrap() = Some(leader.clone());
        Ok(format!(
            "member {leader} (the leader named by the `leader` hook)"
        ))
    }

    async fn new_leader(&self) -> io::Result<String> {
        let killed = self.killed.lock().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(30).max(self.timeout);
        loop {
            // Asked during the election: failures and the old answer are
            // retried until the deadline.
            let r = self.leader().await;
            match r {
                Ok(l) if Some(&l) != killed.as_ref() => return Ok(format!("member {l}")),
                r if Instant::now() > deadline => {
                    let e = match r {
                        Ok(l) => io::Error::other(format!(
                            "the `leader` hook still names the killed member {l} after 30 s"
                        )),
                        Err(e) => e,
                    };
                    return self.failed(HookKind::Leader, Err(e));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn restart_killed(&self) -> io::Result<()> {
        let Some(member) = self.killed.lock().unwrap().take() else {
            return Ok(());
        };
        let vars = self.member_vars(&member);
        let r = self.run(HookKind::RestartServer, &vars).await;
        self.failed(HookKind::RestartServer, r).map(drop)
    }

    async fn restart_empty(&self) -> io::Result<()> {
        let vars = self.member_vars("0");
        let r = self.run(HookKind::RestartEmpty, &vars).await;
        self.failed(HookKind::RestartEmpty, r).map(drop)
    }

    async fn proxy_upstream(&self) -> Option<SocketAddr> {
        let addr = match &self.upstream {
            Upstream::None => return None,
            Upstream::Server(addr) => Ok(*addr),
            Upstream::SentinelPrimary { sentinels, service } => {
                sentinel_primary(sentinels, service).await
            }
        };
        match addr {
            Ok(addr) => {
                self.note("proxy", None);
                Some(addr)
            }
            Err(e) => {
                self.note("proxy", Some(e));
                None
            }
        }
    }

    /// The members' client addresses, when something may stand between
    /// the clients and them: with `--proxy`, or for the member partition
    /// cases (clients on chosen members, which the nemesis also relays).
    /// Otherwise none, so no case puts a relay in front of a member.
    fn member_clients(&self) -> Vec<SocketAddr> {
        if self.upstream.is_some() || self.supports(Fault::MemberPartition) {
            self.members.clone()
        } else {
            Vec::new()
        }
    }

    async fn member_to_isolate(&self) -> io::Result<usize> {
        let leader = self.leader_index().await;
        let leader = self.failed(HookKind::Leader, leader)?;
        Ok(if leader == 0 { 1 } else { 0 })
    }

    async fn leader_member(&self) -> io::Result<usize> {
        let leader = self.leader_index().await;
        self.failed(HookKind::Leader, leader)
    }

    async fn isolate_member(&self, i: usize) -> io::Result<()> {
        let vars = self.member_vars(&i.to_string());
        let r = self.run(HookKind::IsolateMember, &vars).await;
        self.failed(HookKind::IsolateMember, r).map(drop)
    }

    async fn heal_members(&self) -> io::Result<()> {
        let r = self.run(HookKind::HealMembers, &[]).await;
        self.failed(HookKind::HealMembers, r).map(drop)
    }

    async fn evicting_server(&self) -> io::Result<String> {
        let r = self
            .run(HookKind::EvictingServer, &[])
            .await
            .and_then(url_answer);
        self.failed(HookKind::EvictingServer, r)
    }

    async fn fill_memory(&self) -> io::Result<u64> {
        let r = self.run(HookKind::FillMemory, &[]).await.and_then(|out| {
            out.parse::<u64>().map_err(|_| {
                io::Error::other(format!(
                    "the `fill-memory` hook printed `{out}`, not a count of evicted keys"
                ))
            })
        });
        self.failed(HookKind::FillMemory, r)
    }

    async fn clock_server(&self) -> io::Result<String> {
        let r = self
            .run(HookKind::ClockServer, &[])
            .await
            .and_then(url_answer);
        self.failed(HookKind::ClockServer, r)
    }

    async fn step_server_clock(&self, secs: i64) -> io::Result<()> {
        let r = self
            .run(HookKind::StepClock, &[("secs", secs.to_string())])
            .await;
        self.failed(HookKind::StepClock, r).map(drop)
    }

    async fn lagging_pair(&self, behind_secs: u64) -> io::Result<String> {
        let r = self
            .run(HookKind::LaggingPair, &[("secs", behind_secs.to_string())])
            .await
            .and_then(url_answer);
        self.failed(HookKind::LaggingPair, r)
    }

    async fn pause_replication(&self) -> io::Result<()> {
        let r = self.run(HookKind::PauseReplication, &[]).await;
        self.failed(HookKind::PauseReplication, r).map(drop)
    }

    async fn fail_over_to_replica(&self) -> io::Result<String> {
        let r = self.run(HookKind::FailOver, &[]).await.and_then(url_answer);
        self.failed(HookKind::FailOver, r)
    }
}

/// A hook's answer that must be a URL.
fn url_answer(out: String) -> io::Result<String> {
    quorate::Config::parse(&out)
        .map(|_| out.clone())
        .map_err(|e| io::Error::other(format!("the hook printed `{out}`, not a URL: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse() {
        let h: Hook = "kill-server=docker kill etcd{member}".parse().unwrap();
        assert_eq!(h.kind, HookKind::KillServer);
        assert_eq!(h.command, "docker kill etcd{member}");
        // `=` inside the command is kept.
        let h: Hook = "step-clock=echo a=b {secs}".parse().unwrap();
        assert_eq!(h.command, "echo a=b {secs}");
        // Other braces (shell, awk, jq) are left as they are.
        let h: Hook = "leader=echo ${X} {a,b} | awk '{print}'".parse().unwrap();
        assert_eq!(h.command, "echo ${X} {a,b} | awk '{print}'");
        let e = "kill-srv=x".parse::<Hook>().unwrap_err();
        assert!(e.contains("unknown hook kind `kill-srv`"), "{e}");
        assert!(e.contains("kill-server"), "{e}");
        let e = "kill-server".parse::<Hook>().unwrap_err();
        assert!(e.contains("not KIND=COMMAND"), "{e}");
        let e = "kill-server=  ".parse::<Hook>().unwrap_err();
        assert!(e.contains("empty command"), "{e}");
        let e = "=true".parse::<Hook>().unwrap_err();
        assert!(e.contains("unknown hook kind ``"), "{e}");
        for k in HookKind::ALL {
            assert_eq!(k.name().parse::<HookKind>(), Ok(k));
        }
    }

    fn options(proxy: bool, hooks: &[&str]) -> ExternalOptions {
        ExternalOptions {
            proxy,
            hooks: hooks.iter().map(|h| h.parse().unwrap()).collect(),
            hook_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn proxy_refuses_urls_it_cannot_rewrite() {
        for (url, why) in [
            ("memory://x", "names no server"),
            ("file:///tmp/x", "names no server"),
            (
                "redis+sentinel://127.0.0.1:1/mymaster?nat_map=10.0.0.1:6379=127.0.0.1:2",
                "nat_map",
            ),
            ("rediss://db.example:6379", "TLS verifies the server name"),
        ] {
            let e = HookFaults::prepare(url, options(true, &[]))
                .await
                .unwrap_err();
            assert!(e.0.contains(why), "{url}: {e}");
        }
        // Without --proxy and member-partition hooks, nothing names a member
        // to relay to.
        let (url, plain) = HookFaults::prepare(
            "etcd://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            options(false, &[]),
        )
        .await
        .unwrap();
        assert_eq!(url, "etcd://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
        assert!(plain.member_clients().is_empty());
        assert_eq!(plain.proxy_upstream().await, None);
        let e = HookFaults::prepare(
            "etcd://127.0.0.1:1",
            options(false, &["leader=a", "leader=b"]),
        )
        .await
        .unwrap_err();
        assert!(e.0.contains("given twice"), "{e}");
    }

    #[tokio::test]
    async fn a_server_pause_needs_the_leader_only_where_there_are_several() {
        let pause = ["pause-server=true", "resume-server=true"];
        let (_, single) = HookFaults::prepare("redis://127.0.0.1:1", options(false, &pause))
            .await
            .unwrap();
        assert!(single.supports(Fault::ServerPause));
        let (_, three) = HookFaults::prepare(
            "etcd://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            options(false, &pause),
        )
        .await
        .unwrap();
        assert!(!three.supports(Fault::ServerPause));
        let why = three.missing(Fault::ServerPause).unwrap();
        assert!(why.contains("--hook leader=…"), "{why}");
        let (_, none) = HookFaults::prepare("redis://127.0.0.1:1", options(false, &[]))
            .await
            .unwrap();
        assert!(!none.supports(Fault::ServerPause));
        let why = none.missing(Fault::ServerPause).unwrap();
        assert!(why.contains("--hook pause-server=…"), "{why}");
    }

    #[tokio::test]
    async fn proxy_behind_sentinel_asks_the_sentinels_for_the_primary() {
        let url = "redis+sentinel://127.0.0.1:1/mymaster/2?ttl=2s";
        let (same, faults) = HookFaults::prepare(url, options(true, &[])).await.unwrap();
        // The URL's servers are the sentinels: no relay in front of them.
        assert_eq!(same, url);
        assert!(faults.member_clients().is_empty());
        assert!(faults.supports(Fault::Partition));
        let why = faults.missing(Fault::MemberPartition).unwrap();
        assert!(why.contains("behind Sentinel"), "{why}");
        // No sentinel answers on port 1: no primary, and the run says why.
        assert_eq!(faults.proxy_upstream().await, None);
        let used = faults.take_used();
        let why = used[0].error.as_deref().unwrap_or_default();
        assert!(
            why.contains("no sentinel named the primary of `mymaster`"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn proxy_rewrites_every_server() {
        let (url, faults) = HookFaults::prepare(
            "etcd://127.0.0.1:2379,localhost:2380/ns?ttl=2s",
            options(true, &[]),
        )
        .await
        .unwrap();
        let members = faults.member_clients();
        assert_eq!(members.len(), 2);
        assert!(members.iter().all(|m| m.ip().is_loopback()));
        assert_eq!(
            url,
            format!("etcd://{},{}/ns?ttl=2s", members[0], members[1])
        );
        assert!(faults.supports(Fault::Partition));
        assert!(!faults.supports(Fault::KillLeader));
        let (_, single) = HookFaults::prepare(
            "etcd://127.0.0.1:2379",
            options(
                false,
                &["leader=echo 0", "kill-server=true", "restart-server=true"],
            ),
        )
        .await
        .unwrap();
        assert!(!single.supports(Fault::KillLeader));
        let why = single.missing(Fault::KillLeader).unwrap();
        assert!(why.contains("3+ members"), "{why}");
        let why = faults.missing(Fault::KillLeader).unwrap();
        assert!(why.contains("--hook leader=…"), "{why}");
        assert_eq!(
            faults.proxy_upstream().await,
            Some("127.0.0.1:2379".parse().unwrap())
        );
        assert_eq!(faults.take_used()[0].name, "proxy");
    }

    #[tokio::test]
    async fn hooks_run_with_placeholders_timeout_and_failure() {
        let (_, faults) = HookFaults::prepare(
            "etcd://127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579",
            options(
                false,
                &[
                    "leader=echo noise; echo 2",
                    "kill-server=test {member} = 2 && test $QUORATE_HOOK_PORT = 2579 && test {member1} = 3",
                    "restart-server=sleep 10",
                    "isolate-member=exit 3",
                    "heal-members=true",
                ],
            ),
        )
        .await
        .unwrap();
        assert!(faults.supports(Fault::KillLeader));
        assert!(faults.supports(Fault::MemberPartition));
        assert_eq!(faults.leader_member().await.unwrap(), 2);
        assert_eq!(faults.member_to_isolate().await.unwrap(), 0);
        faults.kill_leader().await.unwrap();
        let e = faults.isolate_member(1).await.unwrap_err();
        assert!(e.to_string().contains("exited with"), "{e}");
        let faults = HookFaults {
            timeout: Duration::from_millis(300),
            ..faults
        };
        let started = Instant::now();
        let e = faults.restart_killed().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let used = faults.take_used();
        let failed: Vec<_> = used.iter().filter(|u| u.error.is_some()).collect();
        assert_eq!(failed.len(), 2, "{used:?}");
        assert!(faults.take_used().is_empty());
    }
}
