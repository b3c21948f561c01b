//! A backend under test: a base URL plus a fresh random namespace per case.

use quorate::{Config, Coordinator, Result};

/// A backend under test. Every [`Target::fresh`] gets its own random
/// namespace, so cases never see each other's state and the leak check
/// looks at exactly one case's keys.
#[derive(Debug, Clone)]
pub struct Target {
    base_url: String,
    url: String,
    /// A short label for reports (`memory`, `etcd-3`, …).
    pub label: String,
    /// Extra facts about the deployment the cases may need (e.g. a fault
    /// controller for a server harness).
    pub faults: Option<std::sync::Arc<dyn ServerFaults>>,
}

/// A server fault a [`ServerFaults`] controller can inject. The server
/// fault cases name the one they need; a target whose controller does not
/// support it reports the case *not applicable*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Kill the server that orders writes (the etcd Raft leader, the
    /// ZooKeeper leader, the Redis primary under Sentinel) while the rest of
    /// the deployment stays up: [`ServerFaults::kill_leader`], then
    /// [`ServerFaults::restart_killed`].
    KillLeader,
    /// Put a [`crate::harness::TcpProxy`] between one client and ONE server:
    /// [`ServerFaults::proxy_upstream`].
    Partition,
    /// Restart the (only) server so that it comes back without any data:
    /// [`ServerFaults::restart_empty`].
    RestartWithoutPersistence,
    /// Cut one member of a cluster off from its peers (server↔server
    /// traffic black-holed) while its client port stays up:
    /// [`ServerFaults::member_to_isolate`], [`ServerFaults::isolate_member`],
    /// [`ServerFaults::heal_members`].
    MemberPartition,
    /// A dedicated server configured to evict keys under memory pressure
    /// (`maxmemory` + `volatile-lru`), and filler data that makes it evict:
    /// [`ServerFaults::evicting_server`], [`ServerFaults::fill_memory`].
    Eviction,
    /// A dedicated server whose wall clock can be stepped while it runs
    /// (libfaketime): [`ServerFaults::clock_server`],
    /// [`ServerFaults::step_server_clock`].
    ServerClockStep,
    /// A dedicated primary + replica, the replica's clock behind and its
    /// replication link through a proxy that can black-hole it, so the
    /// replica misses the primary's last writes before the primary is
    /// killed and the replica promoted: [`ServerFaults::lagging_pair`],
    /// [`ServerFaults::pause_replication`],
    /// [`ServerFaults::fail_over_to_replica`].
    LaggingFailover,
    /// Stop the leader / primary (the only server of a single-server
    /// deployment) with SIGSTOP — a long GC or VM pause — and resume it
    /// later: [`ServerFaults::pause_leader`], [`ServerFaults::resume_paused`].
    ServerPause,
}

impl Fault {
    /// Why a case needing this fault does not apply to a target without it.
    pub fn missing(self) -> &'static str {
        match self {
            Fault::KillLeader => "the target has no fault controller that can kill its leader or primary (an external or single-server deployment)",
            Fault::Partition => "the target has no fault controller offering one server's address to partition through a proxy",
            Fault::RestartWithoutPersistence => "the target has no fault controller that can restart a server keeping no data",
            Fault::MemberPartition => "the target has no fault controller that can cut one member of a cluster off from its peers (a single server, an external deployment, or peer traffic not routed through the harness)",
            Fault::Eviction => "the target has no fault controller that can start a server configured to evict keys",
            Fault::ServerClockStep => "the target has no fault controller that can step a server's wall clock (libfaketime)",
            Fault::LaggingFailover => "the target has no fault controller that can fail over to a lagging replica",
            Fault::ServerPause => "the target has no fault controller that can pause (SIGSTOP) its server",
        }
    }
}

/// The fault controller of a deployment the harness started: what it can
/// break, and how to mend it. Object safe (`Arc<dyn ServerFaults>` in
/// [`Target::faults`]); every method an implementation does not
/// [`support`](ServerFaults::supports) returns an `Unsupported` error.
///
/// The server fault cases run alone (never concurrently with another case
/// of the same test process), so a controller may assume nobody else kills
/// or restarts servers meanwhile.
#[async_trait::async_trait]
pub trait ServerFaults: Send + Sync + std::fmt::Debug {
    /// Whether this controller can inject `fault`.
    fn supports(&self, fault: Fault) -> bool;

    /// Why this controller cannot inject `fault`, in its own words (e.g.
    /// which hook is missing); `None` keeps [`Fault::missing`].
    fn missing(&self, fault: Fault) -> Option<String> {
        let _ = fault;
        None
    }

    /// The fault mechanisms used since the last call, in order (the runner
    /// records them in each case's report, and fails a case in which one
    /// failed). Controllers that record nothing return none.
    fn take_used(&self) -> Vec<Used> {
        Vec::new()
    }

    /// Kill (SIGKILL) the leader / primary and return once it is dead;
    /// returns a description of what was killed (for the report). The rest
    /// of the deployment is left to recover by itself.
    async fn kill_leader(&self) -> std::io::Result<String> {
        Err(unsupported("killing the leader"))
    }

    /// After [`ServerFaults::kill_leader`]: wait until another server leads
    /// (a bounded wait) and describe it, proof that the fault really forced
    /// a failover.
    async fn new_leader(&self) -> std::io::Result<String> {
        Err(unsupported("finding the new leader"))
    }

    /// Start again what [`ServerFaults::kill_leader`] killed, on the same
    /// ports, and return once it serves (as a follower / replica). Does
    /// nothing if nothing is killed.
    async fn restart_killed(&self) -> std::io::Result<()> {
        Err(unsupported("restarting a killed server"))
    }

    /// Kill the server and start it again with no data (no persistence),
    /// returning once it answers.
    async fn restart_empty(&self) -> std::io::Result<()> {
        Err(unsupported("restarting without persistence"))
    }

    /// The client address of ONE server, for a case to put a
    /// [`crate::harness::TcpProxy`] in front of (see [`Target::through`]):
    /// behind Sentinel, the current primary.
    async fn proxy_upstream(&self) -> Option<std::net::SocketAddr> {
        None
    }

    /// The client addresses of the members, by index (for
    /// [`Fault::MemberPartition`]: a client on one member only, another on
    /// the rest, see [`Target::via_all`]).
    fn member_clients(&self) -> Vec<std::net::SocketAddr> {
        Vec::new()
    }

    /// The member a member-partition case should cut off: one that does
    /// not order writes (an etcd non-leader, a ZooKeeper follower), so the
    /// majority keeps its leader.
    async fn member_to_isolate(&self) -> std::io::Result<usize> {
        Err(unsupported("choosing a member to cut off"))
    }

    /// The member that orders writes now (the etcd Raft leader, the
    /// ZooKeeper leader): cut off, it is the hardest case — it may go on
    /// answering its clients as leader until it notices.
    async fn leader_member(&self) -> std::io::Result<usize> {
        Err(unsupported("finding the leader member"))
    }

    /// Cut member `i` off from its peers (black-hole its server↔server
    /// links) while its client port stays up; returns at once.
    async fn isolate_member(&self, _i: usize) -> std::io::Result<()> {
        Err(unsupported("cutting a member off from its peers"))
    }

    /// End a member partition and return once every member serves again.
    async fn heal_members(&self) -> std::io::Result<()> {
        Err(unsupported("healing a member partition"))
    }

    /// [`Fault::Eviction`]: start a fresh dedicated server configured to
    /// evict keys (`maxmemory` + `volatile-lru`; any earlier one is
    /// stopped) and return its base URL (no namespace, no options).
    async fn evicting_server(&self) -> std::io::Result<String> {
        Err(unsupported("starting an evicting server"))
    }

    /// [`Fault::Eviction`]: write filler keys (with a TTL) to the evicting
    /// server, well past its `maxmemory`; returns how many keys it evicted
    /// meanwhile.
    async fn fill_memory(&self) -> std::io::Result<u64> {
        Err(unsupported("filling a server's memory"))
    }

    /// [`Fault::ServerClockStep`]: start a fresh dedicated server whose
    /// wall clock can be stepped (any earlier one is stopped) and return
    /// its base URL.
    async fn clock_server(&self) -> std::io::Result<String> {
        Err(unsupported("starting a server with a fake clock"))
    }

    /// [`Fault::ServerClockStep`]: step the clock server's wall clock by
    /// `secs` seconds (forward when positive) from where it is.
    async fn step_server_clock(&self, secs: i64) -> std::io::Result<()> {
        let _ = secs;
        Err(unsupported("stepping a server's clock"))
    }

    /// [`Fault::LaggingFailover`]: start a fresh dedicated primary and a
    /// replica whose wall clock is `behind_secs` behind, wait until the
    /// replica is in sync, and return the primary's base URL.
    async fn lagging_pair(&self, behind_secs: u64) -> std::io::Result<String> {
        let _ = behind_secs;
        Err(unsupported("starting a primary with a lagging replica"))
    }

    /// [`Fault::LaggingFailover`]: stop replication (the replica stops
    /// receiving the primary's writes; the primary keeps serving).
    async fn pause_replication(&self) -> std::io::Result<()> {
        Err(unsupported("pausing replication"))
    }

    /// [`Fault::LaggingFailover`]: kill the primary, promote the replica
    /// (with whatever it had received) and return its base URL once it
    /// serves as the primary.
    async fn fail_over_to_replica(&self) -> std::io::Result<String> {
        Err(unsupported("failing over to the replica"))
    }

    /// Stop the leader / primary (the only server of a single-server
    /// deployment) with SIGSTOP: it keeps its sockets and answers nothing.
    /// Returns what was paused, in words.
    async fn pause_leader(&self) -> std::io::Result<String> {
        Err(unsupported("pausing a server"))
    }

    /// Resume (SIGCONT) what [`ServerFaults::pause_leader`] stopped, and
    /// mend the deployment for the cases after (behind Sentinel: the
    /// resumed old primary made a replica of the new one).
    async fn resume_paused(&self) -> std::io::Result<()> {
        Err(unsupported("resuming a paused server"))
    }
}

/// One fault mechanism a controller used during a case (a hook kind run,
/// the built-in proxy), and its error if it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// What was used: a hook kind (`kill-server`) or `proxy`.
    pub name: String,
    /// Why it failed, if it did (the case then fails).
    pub error: Option<String>,
}

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("{what} is not supported by this fault controller"),
    )
}

impl Target {
    /// A target for `base_url` (any URL `quorate::connect` accepts). The
    /// namespace is replaced by a fresh one in [`Target::fresh`].
    pub fn new(label: impl Into<String>, base_url: impl Into<String>) -> Self {
        let base_url = base_url.into();
        Target {
            url: base_url.clone(),
            base_url,
            label: label.into(),
            faults: None,
        }
    }

    /// The same backend with a new random namespace.
    pub fn fresh(&self) -> Target {
        let ns = format!("conformance-{:016x}", rand::random::<u64>());
        Target {
            url: with_namespace(&self.base_url, &ns),
            base_url: self.base_url.clone(),
            label: self.label.clone(),
            faults: self.faults.clone(),
        }
    }

    /// The same target (namespace, options, credentials) reached through
    /// `endpoint` only: the URL's server list is replaced by it. For a
    /// client connected through a [`crate::harness::TcpProxy`].
    pub fn via(&self, endpoint: std::net::SocketAddr) -> Target {
        Target {
            url: replace_endpoints(&self.url, &endpoint.to_string()),
            base_url: replace_endpoints(&self.base_url, &endpoint.to_string()),
            label: self.label.clone(),
            faults: self.faults.clone(),
        }
    }

    /// The same target, its client's traffic to the proxy's upstream sent
    /// through `proxy`: the URL names the proxy instead of the servers
    /// ([`Target::via`]), or, behind Sentinel (where the URL names the
    /// sentinels and they name the primary), maps the primary's announced
    /// address to the proxy (`nat_map`), so the sentinels stay reachable.
    pub fn through(&self, proxy: &crate::harness::TcpProxy) -> Target {
        if self.scheme() == "redis+sentinel" {
            let map = format!("{}={}", proxy.upstream(), proxy.addr());
            Target {
                url: self.url_with("nat_map", &map),
                base_url: Target::new("", self.base_url.clone()).url_with("nat_map", &map),
                label: self.label.clone(),
                faults: self.faults.clone(),
            }
        } else {
            self.via(proxy.addr())
        }
    }

    /// One target per server of the URL, each reaching the deployment
    /// through that server only (clients "on different members"); the
    /// target itself when the URL names at most one.
    pub fn members(&self) -> Vec<Target> {
        let endpoints = quorate::Config::parse(&self.url)
            .map(|c| c.endpoints)
            .unwrap_or_default();
        if endpoints.len() <= 1 {
            return vec![self.clone()];
        }
        endpoints
            .iter()
            .map(|e| Target {
                url: replace_endpoints(&self.url, e),
                base_url: replace_endpoints(&self.base_url, e),
                label: self.label.clone(),
                faults: self.faults.clone(),
            })
            .collect()
    }

    /// The same target reached through `endpoints` only (as
    /// [`Target::via`], with several servers).
    pub fn via_all(&self, endpoints: &[std::net::SocketAddr]) -> Target {
        let list = endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Target {
            url: replace_endpoints(&self.url, &list),
            base_url: replace_endpoints(&self.base_url, &list),
            label: self.label.clone(),
            faults: self.faults.clone(),
        }
    }

    /// Whether the target's fault controller can inject `fault`.
    pub fn supports(&self, fault: Fault) -> bool {
        self.faults.as_ref().is_some_and(|f| f.supports(fault))
    }

    /// The URL with this target's namespace.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with an option set (e.g. a shorter `ttl` for a fault case).
    pub fn url_with(&self, key: &str, value: &str) -> String {
        let base = strip_option(&self.url, key);
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{key}={value}")
    }

    /// The same target (namespace, faults) with an option set on every
    /// connection it makes (e.g. a long `ttl`).
    pub fn with_option(&self, key: &str, value: &str) -> Target {
        Target {
            url: self.url_with(key, value),
            base_url: self.base_url.clone(),
            label: self.label.clone(),
            faults: self.faults.clone(),
        }
    }

    /// Connect a new, independent coordinator to this target.
    ///
    /// # Errors
    ///
    /// As `quorate::connect`.
    pub async fn connect(&self) -> Result<Coordinator> {
        crate::connect(&self.url).await
    }

    /// Connect with an option overridden.
    ///
    /// # Errors
    ///
    /// As `quorate::connect`.
    pub async fn connect_with_option(&self, key: &str, value: &str) -> Result<Coordinator> {
        crate::connect(&self.url_with(key, value)).await
    }

    /// The scheme of the URL.
    pub fn scheme(&self) -> String {
        Config::parse(&self.url)
            .map(|c| c.scheme)
            .unwrap_or_default()
    }
}

fn strip_option(url: &str, key: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Replace the `host:port[,host:port…]` list of a URL, keeping its scheme,
/// credentials, path and options.
pub(crate) fn replace_endpoints(url: &str, endpoints: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let credentials = authority
        .rsplit_once('@')
        .map(|(c, _)| format!("{c}@"))
        .unwrap_or_default();
    format!("{scheme}://{credentials}{endpoints}{tail}")
}

/// Put `ns` into a URL as the backend's namespace: the name of a
/// `memory://` URL, the `namespace` option of Redis, a path segment appended
/// to the others (etcd prefix, ZooKeeper chroot, file directory).
pub fn with_namespace(url: &str, ns: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), Some(q.to_owned())),
        None => (url.to_owned(), None),
    };
    let scheme = base.split("://").next().unwrap_or_default();
    let (base, query) = match scheme {
        "memory" => (format!("memory://{ns}"), query),
        "redis" | "rediss" | "redis+sentinel" => {
            let q = strip_option(&format!("x?{}", query.unwrap_or_default()), "namespace");
            let rest = q.split_once('?').map(|(_, q)| q.to_owned());
            let ns_opt = format!("namespace={ns}");
            (
                base,
                Some(match rest {
                    Some(r) if !r.is_empty() => format!("{r}&{ns_opt}"),
                    _ => ns_opt,
                }),
            )
        }
        // etcd prefix, ZooKeeper chroot, file directory: one more segment.
        _ => (format!("{}/{ns}", base.trim_end_matches('/')), query),
    };
    match query {
        Some(q) if !q.is_empty() => format!("{base}?{q}"),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_per_scheme() {
        assert_eq!(with_namespace("memory://", "n"), "memory://n");
        assert_eq!(
            with_namespace("memory://x?ttl=2s", "n"),
            "memory://n?ttl=2s"
        );
        assert_eq!(with_namespace("etcd://h:1", "n"), "etcd://h:1/n");
        assert_eq!(
            with_namespace("etcd://h:1/base?ttl=2s", "n"),
            "etcd://h:1/base/n?ttl=2s"
        );
        assert_eq!(with_namespace("file:///tmp/q", "n"), "file:///tmp/q/n");
        assert_eq!(
            with_namespace("redis://h:1/0?ttl=2s&namespace=a", "n"),
            "redis://h:1/0?ttl=2s&namespace=n"
        );
        assert_eq!(
            with_namespace("redis://h:1", "n"),
            "redis://h:1?namespace=n"
        );
    }

    #[test]
    fn via_replaces_the_servers_only() {
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let t = Target::new("e", "etcd://h1:1,h2:2/base?ttl=2s").fresh();
        let v = t.via(addr);
        assert!(v.url().starts_with("etcd://127.0.0.1:9/base/conformance-"));
        assert!(v.url().ends_with("?ttl=2s"));
        let t = Target::new("r", "rediss://u:p@h:1?tls_ca=/x/ca.pem");
        assert_eq!(
            t.via(addr).url(),
            "rediss://u:p@127.0.0.1:9?tls_ca=/x/ca.pem"
        );
        let t = Target::new("z", "zookeeper://h:1,h:2");
        assert_eq!(t.via(addr).url(), "zookeeper://127.0.0.1:9");
    }

    #[tokio::test]
    async fn through_maps_the_sentinel_primary_and_replaces_other_servers() {
        let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let proxy = crate::harness::TcpProxy::start(upstream).await.unwrap();
        let p = proxy.addr();
        let t = Target::new("s", "redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc?ttl=2s");
        let fresh = t.fresh();
        let v = fresh.through(&proxy);
        // The sentinels stay; the primary they announce is reached via the proxy.
        assert!(
            v.url().starts_with(
                "redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc?ttl=2s&namespace=conformance-"
            ),
            "{}",
            v.url()
        );
        assert!(
            v.url().ends_with(&format!("&nat_map=127.0.0.1:9={p}")),
            "{}",
            v.url()
        );
        // A fresh namespace keeps the mapping.
        assert!(v
            .fresh()
            .url()
            .contains(&format!("nat_map=127.0.0.1:9={p}")));
        let t = Target::new("e", "etcd://h1:1,h2:2?ttl=2s");
        assert_eq!(t.through(&proxy).url(), format!("etcd://{p}?ttl=2s"));
    }

    #[test]
    fn url_with_overrides() {
        let t = Target::new("m", "memory://x?ttl=2s");
        assert_eq!(t.url_with("ttl", "1s"), "memory://x?ttl=1s");
        let t = Target::new("m", "memory://x");
        assert_eq!(t.url_with("ttl", "1s"), "memory://x?ttl=1s");
    }
}
