//! etcd servers for tests: one member or a three-member cluster, started
//! from `/usr/bin/etcd` (or `$ETCD_BIN`) on free loopback ports, with data
//! under `/dev/shm` when available, fast Raft timings, and fault injection
//! (kill, pause, resume, restart a member; find and kill the leader; with
//! [`EtcdCluster::start_local_partitionable`], cut a member off from its
//! peers while its client port stays up).
//!
//! Setting [`ENDPOINTS_ENV`] (`QUORATE_ETCD_ENDPOINTS=h1:2379,h2:2379`)
//! points the tests at an external cluster instead; fault injection then
//! refuses with an error.
//!
//! Every member is a [`ServerProcess`]: killed (SIGKILL, by pid) when the
//! [`EtcdCluster`] is dropped, and by the kernel when the test process dies.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;

use super::process::{free_port, ServerProcess, TempDir};
use super::proxy::PeerLinks;

/// The environment variable naming external etcd endpoints
/// (`host:port[,host:port...]`) to use instead of starting servers.
pub const ENDPOINTS_ENV: &str = "QUORATE_ETCD_ENDPOINTS";

/// Heartbeat interval of harness clusters, in milliseconds.
const HEARTBEAT_MS: u32 = 25;
/// Election timeout of harness clusters, in milliseconds. With the
/// heartbeat above, etcd's minimum lease TTL is 1 s.
const ELECTION_MS: u32 = 250;
/// How long a cluster (or a restarted member) may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd member started by the harness.
struct Member {
    name: String,
    client_port: u16,
    /// The peer port the other members dial (a proxy's, when routed).
    peer_port: u16,
    /// The peer port the member listens on.
    listen_peer_port: u16,
    process: Option<ServerProcess>,
    paused: bool,
}

impl Member {
    fn client_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn listen_peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listen_peer_port)
    }
}

/// An etcd cluster for tests: started by the harness, or external.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    external: Vec<String>,
    tls: Option<TestPki>,
    /// The peer links, when peer traffic is routed through proxies
    /// ([`EtcdCluster::start_local_partitionable`]). Dropped after the
    /// members are killed (field order).
    peers: Option<PeerLinks>,
    // Dropped after the members are killed (field order).
    dir: Option<TempDir>,
}

/// PEM files of a throw-away PKI for TLS tests, generated with `rcgen`: a
/// CA, a server certificate for `127.0.0.1`/`localhost`, and a client
/// certificate, both signed by the CA.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The servers' certificate.
    pub server_cert: PathBuf,
    /// The servers' private key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generate the PKI into `dir`.
    ///
    /// # Errors
    ///
    /// When generating or writing fails.
    pub fn generate(dir: &Path) -> io::Result<TestPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let err = |e: rcgen::Error| io::Error::other(format!("generating test certificates: {e}"));
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "quorate test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?)
            .map_err(err)?;
        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().map_err(err)?;
            let mut params = CertificateParams::new(names).map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).map_err(err)?;
            Ok::<_, io::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "quorate test etcd",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "quorate test client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok::<_, io::Error>(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("external", &!self.external.is_empty())
            .finish()
    }
}

impl EtcdCluster {
    /// A cluster of `size` members, or the external one named by
    /// [`ENDPOINTS_ENV`] if that is set.
    ///
    /// # Errors
    ///
    /// When the servers do not start or do not form the expected cluster.
    pub async fn start(size: usize) -> io::Result<EtcdCluster> {
        match std::env::var(ENDPOINTS_ENV) {
            Ok(v) if !v.trim().is_empty() => Ok(EtcdCluster {
                members: Vec::new(),
                initial_cluster: String::new(),
                token: String::new(),
                external: v.split(',').map(|s| s.trim().to_owned()).collect(),
                tls: None,
                peers: None,
                dir: None,
            }),
            _ => Self::start_local(size).await,
        }
    }

    /// A cluster of `size` members started here, whatever the environment
    /// says (for fault injection and tests that reconfigure the server).
    ///
    /// # Errors
    ///
    /// When the servers do not start or do not form the expected cluster.
    pub async fn start_local(size: usize) -> io::Result<EtcdCluster> {
        Self::start_local_with(size, false).await
    }

    /// Like [`EtcdCluster::start_local`], with TLS on the client port and
    /// client-certificate authentication (`--client-cert-auth`), using a
    /// fresh [`TestPki`] (see [`EtcdCluster::pki`]).
    ///
    /// # Errors
    ///
    /// When the servers do not start or do not form the expected cluster.
    pub async fn start_local_tls(size: usize) -> io::Result<EtcdCluster> {
        Self::start_local_with(size, true).await
    }

    /// Like [`EtcdCluster::start_local`], with the peer traffic of every
    /// member routed through a [`PeerLinks`] proxy, so that one member can
    /// be cut off from the others while its client port stays up
    /// ([`EtcdCluster::isolate`], [`EtcdCluster::heal`]).
    ///
    /// # Errors
    ///
    /// When the servers do not start or do not form the expected cluster.
    pub async fn start_local_partitionable(size: usize) -> io::Result<EtcdCluster> {
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start_local(size, false, true).await {
                Ok(c) => return Ok(c),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn start_local_with(size: usize, tls: bool) -> io::Result<EtcdCluster> {
        assert!(size >= 1, "a cluster has at least one member");
        let mut last_error = None;
        // A free port can be taken by someone else between our probe and
        // etcd's bind: retry with new ports.
        for _ in 0..3 {
            match Self::try_start_local(size, tls, false).await {
                Ok(c) => return Ok(c),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    async fn try_start_local(size: usize, tls: bool, routed: bool) -> io::Result<EtcdCluster> {
        assert!(size >= 1, "a cluster has at least one member");
        let dir = TempDir::new("etcd")?;
        let tls = if tls {
            Some(TestPki::generate(dir.path())?)
        } else {
            None
        };
        let token = format!("quorate-{:016x}", rand::random::<u64>());
        let mut members = Vec::with_capacity(size);
        let mut peers = routed.then(|| PeerLinks::new(size));
        for i in 0..size {
            let listen_peer_port = free_port();
            let peer_port = match &mut peers {
                Some(links) => links.route(
                    &tokio::runtime::Handle::current(),
                    i,
                    std::net::SocketAddr::from(([127, 0, 0, 1], listen_peer_port)),
                )?,
                None => listen_peer_port,
            };
            members.push(Member {
                name: format!("{token}-m{i}"),
                client_port: free_port(),
                peer_port,
                listen_peer_port,
                process: None,
                paused: false,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial_cluster,
            token,
            external: Vec::new(),
            tls,
            peers,
            dir: Some(dir),
        };
        for i in 0..size {
            cluster.spawn_member(i)?;
        }
        cluster.wait_healthy(None).await?;
        cluster.verify_members().await?;
        Ok(cluster)
    }

    fn spawn_member(&mut self, i: usize) -> io::Result<()> {
        let dir = self.dir.as_ref().expect("local cluster").path().to_owned();
        let m = &self.members[i];
        let client_url = format!("{}://{}", self.client_scheme(), m.client_endpoint());
        let args: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &dir.join(&m.name).display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &m.listen_peer_url(),
            "--initial-advertise-peer-urls",
            &m.peer_url(),
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            &HEARTBEAT_MS.to_string(),
            "--election-timeout",
            &ELECTION_MS.to_string(),
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut args = args;
        if let Some(pki) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &pki.server_cert),
                ("--key-file", &pki.server_key),
                ("--trusted-ca-file", &pki.ca),
            ] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".to_owned());
        }
        let process = ServerProcess::start(
            &m.name,
            std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()),
            args,
            dir.join(format!("{}.log", m.name)),
        )?;
        self.members[i].process = Some(process);
        self.members[i].paused = false;
        self.note_pids();
        Ok(())
    }

    /// Keep the peer links' pid table current.
    fn note_pids(&self) {
        if let Some(links) = &self.peers {
            let table = links.pids();
            let mut table = table.lock().unwrap();
            for (i, slot) in table.iter_mut().enumerate() {
                *slot = self.pid(i);
            }
        }
    }

    /// Whether the peer traffic runs through [`PeerLinks`]
    /// ([`EtcdCluster::start_local_partitionable`]).
    pub fn is_partitionable(&self) -> bool {
        self.peers.is_some()
    }

    /// Cut member `i` off from its peers (its client port stays up).
    ///
    /// # Errors
    ///
    /// When the cluster's peer traffic is not routed through proxies.
    pub fn isolate(&self, i: usize) -> io::Result<()> {
        let links = self.peers.as_ref().ok_or_else(|| {
            io::Error::other("the cluster was not started with its peer traffic through proxies")
        })?;
        links.isolate(i);
        Ok(())
    }

    /// End a partition made by [`EtcdCluster::isolate`] and wait until
    /// every running member is healthy again.
    ///
    /// # Errors
    ///
    /// When the cluster does not recover within the start timeout.
    pub async fn heal(&mut self) -> io::Result<()> {
        if let Some(links) = &self.peers {
            links.heal();
        }
        for i in 0..self.members.len() {
            if self.pid(i).is_some() && !self.members[i].paused {
                self.wait_healthy(Some(i)).await?;
            }
        }
        Ok(())
    }

    /// The index of a running member that is not the Raft leader (the one
    /// to cut off in a member partition, so the majority keeps its leader).
    ///
    /// # Errors
    ///
    /// As [`EtcdCluster::leader`]; when no other member runs.
    pub async fn follower(&self) -> io::Result<usize> {
        let leader = self.leader().await?;
        (0..self.members.len())
            .find(|&i| i != leader && self.pid(i).is_some() && !self.members[i].paused)
            .ok_or_else(|| io::Error::other("no running etcd member besides the leader"))
    }

    /// Whether this is an external cluster (no fault injection).
    pub fn is_external(&self) -> bool {
        !self.external.is_empty()
    }

    /// Number of members started here (0 for an external cluster).
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// `host:port` of every member (or the external endpoints).
    pub fn endpoints(&self) -> Vec<String> {
        if self.is_external() {
            return self.external.clone();
        }
        self.members.iter().map(Member::client_endpoint).collect()
    }

    /// `host:port` of member `i`.
    pub fn member_endpoint(&self, i: usize) -> String {
        self.members[i].client_endpoint()
    }

    /// The pid of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i]
            .process
            .as_ref()
            .and_then(ServerProcess::pid)
    }

    fn process(&self, i: usize) -> io::Result<&ServerProcess> {
        self.members[i]
            .process
            .as_ref()
            .filter(|p| p.pid().is_some())
            .ok_or_else(|| io::Error::other(format!("member {i} is not running")))
    }

    /// An `etcd://` URL for every endpoint, with a namespace and extra
    /// query (`"ttl=2s"`, or empty). For a TLS cluster, an `etcds://` URL
    /// with the CA and the client certificate and key.
    pub fn url(&self, namespace: &str, query: &str) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        let mut url = format!("{scheme}://{}/{namespace}", self.endpoints().join(","));
        let mut options: Vec<String> = Vec::new();
        if let Some(pki) = &self.tls {
            options.push(format!("ca={}", pki.ca.display()));
            options.push(format!("cert={}", pki.client_cert.display()));
            options.push(format!("key={}", pki.client_key.display()));
        }
        if !query.is_empty() {
            options.push(query.to_owned());
        }
        if !options.is_empty() {
            url.push('?');
            url.push_str(&options.join("&"));
        }
        url
    }

    /// The PKI of a TLS cluster ([`EtcdCluster::start_local_tls`]).
    pub fn pki(&self) -> Option<&TestPki> {
        self.tls.as_ref()
    }

    fn client_scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn local(&self, what: &str) -> io::Result<()> {
        if self.is_external() {
            return Err(io::Error::other(format!(
                "{what} needs servers started by the harness, but {ENDPOINTS_ENV} points at external ones"
            )));
        }
        Ok(())
    }

    /// Kill member `i` (SIGKILL) and reap it.
    ///
    /// # Errors
    ///
    /// For an external cluster or a member that is not running.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        self.local("kill")?;
        self.process(i)?;
        if let Some(p) = self.members[i].process.as_mut() {
            p.kill()?;
        }
        self.members[i].paused = false;
        self.note_pids();
        Ok(())
    }

    /// Pause member `i` (SIGSTOP): it keeps its sockets but answers nothing.
    ///
    /// # Errors
    ///
    /// For an external cluster or a member that is not running.
    pub fn pause(&mut self, i: usize) -> io::Result<()> {
        self.local("pause")?;
        let process = self.process(i)?;
        process.pause()?;
        if let Some(pid) = process.pid() {
            wait_until_stopped(pid)?;
        }
        self.members[i].paused = true;
        Ok(())
    }

    /// Resume member `i` (SIGCONT) after [`EtcdCluster::pause`].
    ///
    /// # Errors
    ///
    /// For an external cluster or a member that is not running.
    pub fn resume(&mut self, i: usize) -> io::Result<()> {
        self.local("resume")?;
        self.process(i)?.resume()?;
        self.members[i].paused = false;
        Ok(())
    }

    /// Start member `i` again (after [`EtcdCluster::kill`], or killing it
    /// first) on the same ports and data, and wait until it answers.
    ///
    /// # Errors
    ///
    /// For an external cluster, or when it does not come back.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.local("restart")?;
        match self.members[i].process.as_mut() {
            Some(p) => p.restart()?,
            None => self.spawn_member(i)?,
        }
        self.members[i].paused = false;
        self.note_pids();
        self.wait_healthy(Some(i)).await
    }

    /// The index of the current Raft leader, asking the running members.
    ///
    /// # Errors
    ///
    /// For an external cluster, or when no leader is known within the
    /// start timeout.
    pub async fn leader(&self) -> io::Result<usize> {
        self.local("finding the leader")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut ids = vec![None; self.members.len()];
            let mut leader_id = None;
            for (i, m) in self.members.iter().enumerate() {
                if m.process.as_ref().and_then(ServerProcess::pid).is_none() || m.paused {
                    continue;
                }
                if let Ok(status) = self.endpoint_status(&m.client_endpoint()).await {
                    ids[i] = Some(status.0);
                    if status.1 != 0 {
                        leader_id = Some(status.1);
                    }
                }
            }
            if let Some(l) = leader_id {
                if let Some(i) = ids.iter().position(|id| *id == Some(l)) {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("no etcd leader within the timeout"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kill the current leader; returns its index.
    ///
    /// # Errors
    ///
    /// As [`EtcdCluster::leader`] and [`EtcdCluster::kill`].
    pub async fn kill_leader(&mut self) -> io::Result<usize> {
        let i = self.leader().await?;
        self.kill(i)?;
        Ok(i)
    }

    /// `(member_id, leader_id)` as reported by one endpoint.
    async fn endpoint_status(&self, endpoint: &str) -> io::Result<(u64, u64)> {
        let out = self
            .etcdctl_at(&[endpoint.to_owned()])
            .args(["endpoint", "status", "-w", "json", "--command-timeout=1s"])
            .output()
            .await?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
        let status = &v[0]["Status"];
        let member = status["header"]["member_id"].as_u64();
        let leader = status["leader"].as_u64();
        match (member, leader) {
            (Some(m), Some(l)) => Ok((m, l)),
            _ => Err(io::Error::other(format!("unexpected status: {v}"))),
        }
    }

    /// An `etcdctl` (v3 API) command aimed at every endpoint.
    pub fn etcdctl(&self) -> tokio::process::Command {
        self.etcdctl_at(&self.endpoints())
    }

    /// An `etcdctl` (v3 API) command aimed at `endpoints`.
    pub fn etcdctl_at(&self, endpoints: &[String]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(
            std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into()),
        );
        let scheme = self.client_scheme();
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(pki) = &self.tls {
            cmd.arg(format!("--cacert={}", pki.ca.display()))
                .arg(format!("--cert={}", pki.client_cert.display()))
                .arg(format!("--key={}", pki.client_key.display()));
        }
        cmd
    }

    /// Wait until every running member (or only member `only`) reports
    /// healthy (a committed proposal).
    async fn wait_healthy(&mut self, only: Option<usize>) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let targets: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.members.len()).collect(),
        };
        for i in targets {
            loop {
                if let Some(p) = self.members[i].process.as_mut() {
                    if p.has_exited() {
                        return Err(io::Error::other(format!(
                            "etcd member {i} exited during start-up:\n{}",
                            p.log_tail()
                        )));
                    }
                }
                let out = self
                    .etcdctl_at(&[self.member_endpoint(i)])
                    .args(["endpoint", "health", "--command-timeout=1s"])
                    .output()
                    .await?;
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "etcd member {i} not healthy within {START_TIMEOUT:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Check that the cluster's member list is exactly our members (so we
    /// talk to our own servers, not to something else on those ports).
    async fn verify_members(&self) -> io::Result<()> {
        let out = self
            .etcdctl()
            .args(["member", "list", "-w", "json", "--command-timeout=2s"])
            .output()
            .await?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
        let mut names: Vec<String> = v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut expected: Vec<String> = self.members.iter().map(|m| m.name.clone()).collect();
        expected.sort();
        if names != expected {
            return Err(io::Error::other(format!(
                "etcd member list is {names:?}, expected {expected:?}"
            )));
        }
        Ok(())
    }
}

/// SIGSTOP takes effect asynchronously, thread by thread: wait until every
/// thread of `pid` is stopped, so a request sent after `pause` returns can
/// never be answered.
fn wait_until_stopped(pid: u32) -> io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?;
        let mut all_stopped = true;
        for task in tasks {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if !matches!(state, Some('T' | 't')) {
                all_stopped = false;
                break;
            }
        }
        if all_stopped {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!("process {pid} did not stop")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
