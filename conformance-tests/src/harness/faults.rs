//! Fault controllers ([`ServerFaults`]) for the deployments the harness
//! starts, so the server fault cases (`cases/server_faults.rs`) can kill a
//! leader, partition one client through a [`super::TcpProxy`], or restart a
//! server without its data. A runner attaches one to a [`crate::Target`]
//! (`target.faults = Some(Arc::new(…))`); what each supports:
//!
//! | controller | kill leader | partition | restart without data |
//! |---|---|---|---|
//! | [`EtcdFaults`] | 3+ members: the Raft leader | one member | — |
//! | [`ZkFaults`] | 3+ servers: the ZooKeeper leader | one server | — (a clock step of dedicated servers' leader, with [`ZkFaults::with_clock_steps`]) |
//! | [`RedisFaults`] | — | the server | the server (no persistence) |
//! | [`SentinelFaults`] | the primary (Sentinel fails over) | — | — |
//! | [`ExternalFaults`] (servers not started here) | — | the URL's first server | — |
//!
//! Member partitions ([`Fault::MemberPartition`]: one member cut off from
//! its peers, its client port up) need a cluster whose peer traffic runs
//! through [`super::PeerLinks`]: [`EtcdCluster::start_local_partitionable`]
//! (3+ members), [`ZkFaults::start_partitionable`] (3+ servers).
//!
//! [`RedisFaults`] (on a plain, non-TLS server) also starts dedicated
//! servers for the data faults of `cases/data_faults.rs`: an evicting
//! server ([`Fault::Eviction`]), a server whose wall clock is stepped with
//! libfaketime ([`Fault::ServerClockStep`]), and a primary + replica whose
//! clock is behind, for a failover to a lagging replica
//! ([`Fault::LaggingFailover`]). Each is started fresh by the case and
//! killed when replaced or when the controller is dropped. A [`ZkFaults`]
//! made [`ZkFaults::with_clock_steps`] starts a ZooKeeper of its cluster's
//! size (standalone or an ensemble) under libfaketime for
//! [`Fault::ServerClockStep`] the same way, and steps its leader's clock.
//!
//! Every blocking harness call runs on tokio's blocking pool. Servers are
//! only ever killed by their pid, through the harness handles.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::etcd::EtcdCluster;
use super::proxy::{PeerLinks, ProxyMode, TcpProxy};
use super::redis::{info_field, RedisOptions, RedisServer, Resp, SentinelCluster};
use super::zookeeper::ZkCluster;
use crate::target::{Fault, ServerFaults};

fn addr(endpoint: &str) -> Option<SocketAddr> {
    endpoint.parse().ok()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("the harness thread failed: {e}")))?
}

/// Faults of an [`EtcdCluster`] started by the harness: kill the Raft
/// leader (3+ members) and restart it; partition member 0.
#[derive(Debug)]
pub struct EtcdFaults {
    cluster: Arc<tokio::sync::Mutex<EtcdCluster>>,
    size: usize,
    upstream: Option<SocketAddr>,
    members: Vec<SocketAddr>,
    partitionable: bool,
    killed: Mutex<Option<usize>>,
    paused: Mutex<Option<usize>>,
}

impl EtcdFaults {
    /// The controller of `cluster` (none for an external cluster).
    pub async fn new(cluster: Arc<tokio::sync::Mutex<EtcdCluster>>) -> Option<EtcdFaults> {
        let c = cluster.lock().await;
        if c.is_external() {
            return None;
        }
        let (size, upstream) = (c.size(), addr(&c.member_endpoint(0)));
        let members = (0..size)
            .filter_map(|i| addr(&c.member_endpoint(i)))
            .collect();
        let partitionable = c.is_partitionable();
        drop(c);
        Some(EtcdFaults {
            cluster,
            size,
            upstream,
            members,
            partitionable,
            killed: Mutex::new(None),
            paused: Mutex::new(None),
        })
    }
}

#[async_trait::async_trait]
impl ServerFaults for EtcdFaults {
    fn supports(&self, fault: Fault) -> bool {
        match fault {
            Fault::KillLeader => self.size >= 3,
            Fault::Partition => self.upstream.is_some(),
            Fault::RestartWithoutPersistence => false,
            Fault::MemberPartition => self.size >= 3 && self.partitionable,
            Fault::ServerPause => true,
            Fault::Eviction | Fault::ServerClockStep | Fault::LaggingFailover => false,
        }
    }

    async fn pause_leader(&self) -> io::Result<String> {
        let mut c = self.cluster.lock().await;
        let i = c.leader().await?;
        c.pause(i)?;
        *self.paused.lock().unwrap() = Some(i);
        Ok(format!("etcd member {i} (the Raft leader)"))
    }

    async fn resume_paused(&self) -> io::Result<()> {
        let paused = self.paused.lock().unwrap().take();
        match paused {
            Some(i) => self.cluster.lock().await.resume(i),
            None => Ok(()),
        }
    }

    fn member_clients(&self) -> Vec<SocketAddr> {
        self.members.clone()
    }

    async fn member_to_isolate(&self) -> io::Result<usize> {
        self.cluster.lock().await.follower().await
    }

    async fn leader_member(&self) -> io::Result<usize> {
        self.cluster.lock().await.leader().await
    }

    async fn isolate_member(&self, i: usize) -> io::Result<()> {
        self.cluster.lock().await.isolate(i)
    }

    async fn heal_members(&self) -> io::Result<()> {
        self.cluster.lock().await.heal().await
    }

    async fn kill_leader(&self) -> io::Result<String> {
        let i = self.cluster.lock().await.kill_leader().await?;
        *self.killed.lock().unwrap() = Some(i);
        Ok(format!("etcd member {i} (the Raft leader)"))
    }

    async fn new_leader(&self) -> io::Result<String> {
        let killed = *self.killed.lock().unwrap();
        // Only running members are asked, so the leader found is another.
        let i = self.cluster.lock().await.leader().await?;
        if Some(i) == killed {
            return Err(io::Error::other("the killed member still leads"));
        }
        Ok(format!("etcd member {i}"))
    }

    async fn restart_killed(&self) -> io::Result<()> {
        let killed = self.killed.lock().unwrap().take();
        match killed {
            Some(i) => self.cluster.lock().await.restart(i).await,
            None => Ok(()),
        }
    }

    async fn proxy_upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }
}

/// Faults of a [`ZkCluster`]: kill the leader of an ensemble (3+ servers)
/// and restart it; partition server 0.
#[derive(Debug)]
pub struct ZkFaults {
    cluster: Arc<Mutex<ZkCluster>>,
    size: usize,
    upstream: Option<SocketAddr>,
    members: Vec<SocketAddr>,
    /// The peer links, for an ensemble started by
    /// [`ZkFaults::start_partitionable`].
    peers: Option<PeerLinks>,
    killed: Mutex<Option<usize>>,
    paused: Mutex<Option<usize>>,
    /// Whether [`Fault::ServerClockStep`] is offered
    /// ([`ZkFaults::with_clock_steps`]).
    clock_steps: bool,
    /// The dedicated servers with fake clocks (as many as `cluster` has),
    /// and the offset (s) of the stepped one's.
    clock: Arc<Mutex<Option<(ZkCluster, i64)>>>,
}

impl ZkFaults {
    /// The controller of `cluster`.
    pub fn new(cluster: Arc<Mutex<ZkCluster>>) -> ZkFaults {
        let c = cluster.lock().unwrap();
        let (size, upstream) = (c.len(), addr(&c.endpoint(0)));
        let members = (0..size).filter_map(|i| addr(&c.endpoint(i))).collect();
        drop(c);
        ZkFaults {
            cluster,
            size,
            upstream,
            members,
            peers: None,
            killed: Mutex::new(None),
            paused: Mutex::new(None),
            clock_steps: false,
            clock: Arc::default(),
        }
    }

    /// Also offer [`Fault::ServerClockStep`]: the case gets dedicated
    /// servers, as many as the controller's cluster has, each run under
    /// libfaketime with a clock of its own. The step moves the leader's
    /// wall clock (the standalone server's, or the ensemble's leader, which
    /// runs session expiry), so an ensemble's members also disagree by the
    /// step.
    pub fn with_clock_steps(mut self) -> ZkFaults {
        self.clock_steps = true;
        self
    }

    /// Start an ensemble of `n` servers whose quorum and election traffic
    /// runs through [`PeerLinks`] (so one server can be cut off from the
    /// others, [`Fault::MemberPartition`]), and its controller, which owns
    /// the links.
    ///
    /// # Errors
    ///
    /// When the servers do not start.
    pub async fn start_partitionable(n: usize) -> io::Result<(Arc<Mutex<ZkCluster>>, ZkFaults)> {
        let runtime = tokio::runtime::Handle::current();
        let (cluster, links) = blocking(move || {
            let mut links = PeerLinks::new(n);
            let pids = links.pids();
            let cluster = ZkCluster::start_routed(n, pids, &mut |i, quorum, election| {
                let to = |port| SocketAddr::from(([127, 0, 0, 1], port));
                Ok((
                    links.route(&runtime, i, to(quorum))?,
                    links.route(&runtime, i, to(election))?,
                ))
            })?;
            Ok((cluster, links))
        })
        .await?;
        let cluster = Arc::new(Mutex::new(cluster));
        let mut faults = ZkFaults::new(cluster.clone());
        faults.peers = Some(links);
        Ok((cluster, faults))
    }
}

impl std::fmt::Debug for ZkCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkCluster")
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

#[async_trait::async_trait]
impl ServerFaults for ZkFaults {
    fn supports(&self, fault: Fault) -> bool {
        match fault {
            Fault::KillLeader => self.size >= 3,
            Fault::Partition => self.upstream.is_some(),
            Fault::RestartWithoutPersistence => false,
            Fault::MemberPartition => self.size >= 3 && self.peers.is_some(),
            Fault::ServerClockStep => self.clock_steps,
            Fault::ServerPause => true,
            Fault::Eviction | Fault::LaggingFailover => false,
        }
    }

    async fn pause_leader(&self) -> io::Result<String> {
        let cluster = self.cluster.clone();
        let i = blocking(move || {
            let c = cluster.lock().unwrap();
            let i = c
                .leader()
                .ok_or_else(|| io::Error::other("no ZooKeeper server reports being the leader"))?;
            c.pause(i);
            Ok(i)
        })
        .await?;
        *self.paused.lock().unwrap() = Some(i);
        Ok(format!("ZooKeeper server {} (the leader)", i + 1))
    }

    async fn resume_paused(&self) -> io::Result<()> {
        if let Some(i) = self.paused.lock().unwrap().take() {
            self.cluster.lock().unwrap().resume(i);
        }
        Ok(())
    }

    fn member_clients(&self) -> Vec<SocketAddr> {
        self.members.clone()
    }

    async fn member_to_isolate(&self) -> io::Result<usize> {
        let cluster = self.cluster.clone();
        blocking(move || {
            let c = cluster.lock().unwrap();
            (0..c.len())
                .find(|&i| c.mode(i).as_deref() == Some("follower"))
                .ok_or_else(|| io::Error::other("no ZooKeeper server reports being a follower"))
        })
        .await
    }

    async fn leader_member(&self) -> io::Result<usize> {
        let cluster = self.cluster.clone();
        blocking(move || {
            cluster
                .lock()
                .unwrap()
                .leader()
                .ok_or_else(|| io::Error::other("no ZooKeeper server reports being the leader"))
        })
        .await
    }

    async fn isolate_member(&self, i: usize) -> io::Result<()> {
        let links = self.peers.as_ref().ok_or_else(|| {
            io::Error::other("the ensemble's peer traffic is not routed through proxies")
        })?;
        links.isolate(i);
        Ok(())
    }

    async fn heal_members(&self) -> io::Result<()> {
        if let Some(links) = &self.peers {
            links.heal();
        }
        let cluster = self.cluster.clone();
        blocking(move || {
            let mut c = cluster.lock().unwrap();
            // The cut-off server notices the closed links and rejoins: wait
            // twice, so a mode reported just before it noticed is not taken
            // for having rejoined.
            for _ in 0..2 {
                for i in 0..c.len() {
                    if c.pid(i).is_some() {
                        c.wait_serving(i)?;
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Ok(())
        })
        .await
    }

    async fn kill_leader(&self) -> io::Result<String> {
        let cluster = self.cluster.clone();
        let i = blocking(move || {
            let mut c = cluster.lock().unwrap();
            let i = c
                .leader()
                .ok_or_else(|| io::Error::other("no ZooKeeper server reports being the leader"))?;
            c.kill(i);
            Ok(i)
        })
        .await?;
        *self.killed.lock().unwrap() = Some(i);
        Ok(format!("ZooKeeper server {} (the leader)", i + 1))
    }

    async fn new_leader(&self) -> io::Result<String> {
        let killed = *self.killed.lock().unwrap();
        let cluster = self.cluster.clone();
        blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let leader = cluster.lock().unwrap().leader();
                match leader {
                    Some(i) if Some(i) != killed => {
                        return Ok(format!("ZooKeeper server {}", i + 1))
                    }
                    _ if Instant::now() > deadline => {
                        return Err(io::Error::other(format!(
                            "no other ZooKeeper server became the leader within 30 s; \
                             the servers' election logs:\n{}",
                            cluster.lock().unwrap().election_report(12)
                        )))
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .await
    }

    async fn clock_server(&self) -> io::Result<String> {
        let (clock, n) = (self.clock.clone(), self.size);
        blocking(move || {
            let mut c = clock.lock().unwrap();
            *c = None;
            let servers = ZkCluster::start_with_fake_clock(n)?;
            let url = format!("zookeeper://{}", servers.endpoints());
            *c = Some((servers, 0));
            Ok(url)
        })
        .await
    }

    async fn step_server_clock(&self, secs: i64) -> io::Result<()> {
        let clock = self.clock.clone();
        blocking(move || {
            let mut c = clock.lock().unwrap();
            let (servers, offset) = c.as_mut().ok_or_else(|| missing("clock server"))?;
            let leader = servers.leader().ok_or_else(|| {
                io::Error::other("no ZooKeeper server with a fake clock reports being the leader")
            })?;
            *offset += secs;
            servers.set_clock_offset(leader, *offset)
        })
        .await
    }

    async fn restart_killed(&self) -> io::Result<()> {
        let Some(i) = self.killed.lock().unwrap().take() else {
            return Ok(());
        };
        let cluster = self.cluster.clone();
        blocking(move || cluster.lock().unwrap().restart(i)).await
    }

    async fn proxy_upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }
}

/// Faults of a single [`RedisServer`] (no persistence): restart it empty;
/// partition it (its TLS port when `tls`); without TLS, the data faults on
/// dedicated servers (see the module documentation).
#[derive(Debug)]
pub struct RedisFaults {
    server: Arc<Mutex<RedisServer>>,
    upstream: Option<SocketAddr>,
    data_faults: bool,
    data: Arc<Mutex<DataServers>>,
}

/// The dedicated servers of the data faults (killed by pid when dropped).
#[derive(Debug, Default)]
struct DataServers {
    evicting: Option<RedisServer>,
    clock: Option<(RedisServer, i64)>,
    primary: Option<RedisServer>,
    replica: Option<RedisServer>,
    /// The replica's link to the primary runs through it, so replication
    /// can be black-holed (the primary's writes never reach the replica).
    replication: Option<TcpProxy>,
}

/// `maxmemory` of the evicting server, in bytes.
const EVICTING_MAXMEMORY: u64 = 4 << 20;

fn evicted_keys(server: &RedisServer) -> io::Result<u64> {
    Ok(info_field(server, "stats", "evicted_keys")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn expect_ok(what: &str, reply: Resp) -> io::Result<()> {
    match reply {
        Resp::Simple(_) => Ok(()),
        other => Err(io::Error::other(format!("{what}: {other:?}"))),
    }
}

fn missing(what: &str) -> io::Error {
    io::Error::other(format!(
        "no {what} was started (call its start method first)"
    ))
}

impl RedisFaults {
    /// The controller of `server`, partitioned on its plain port, or on its
    /// TLS port when `tls`.
    pub fn new(server: Arc<Mutex<RedisServer>>, tls: bool) -> RedisFaults {
        let s = server.lock().unwrap();
        let port = if tls { s.tls_port() } else { Some(s.port()) };
        drop(s);
        RedisFaults {
            server,
            upstream: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            data_faults: !tls,
            data: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl ServerFaults for RedisFaults {
    fn supports(&self, fault: Fault) -> bool {
        match fault {
            Fault::KillLeader => false,
            Fault::Partition => self.upstream.is_some(),
            Fault::RestartWithoutPersistence => true,
            Fault::MemberPartition => false,
            Fault::ServerPause => true,
            Fault::Eviction | Fault::ServerClockStep | Fault::LaggingFailover => self.data_faults,
        }
    }

    async fn pause_leader(&self) -> io::Result<String> {
        let s = self.server.lock().unwrap();
        s.pause();
        Ok(format!("the Redis server on port {}", s.port()))
    }

    async fn resume_paused(&self) -> io::Result<()> {
        self.server.lock().unwrap().resume();
        Ok(())
    }

    async fn evicting_server(&self) -> io::Result<String> {
        let data = self.data.clone();
        blocking(move || {
            let mut d = data.lock().unwrap();
            d.evicting = None;
            let server = RedisServer::start_with(RedisOptions {
                extra_config: vec![
                    format!("maxmemory {EVICTING_MAXMEMORY}"),
                    "maxmemory-policy volatile-lru".into(),
                ],
                ..RedisOptions::default()
            })?;
            let url = server.url();
            d.evicting = Some(server);
            Ok(url)
        })
        .await
    }

    async fn fill_memory(&self) -> io::Result<u64> {
        let data = self.data.clone();
        blocking(move || {
            let d = data.lock().unwrap();
            let server = d
                .evicting
                .as_ref()
                .ok_or_else(|| missing("evicting server"))?;
            let before = evicted_keys(server)?;
            let mut conn = super::redis::RespConn::connect(server.port())?;
            let value = "x".repeat(8 << 10);
            // Four times maxmemory of 8 KiB values with a TTL: the
            // volatile-lru policy evicts among keys with a TTL, quorate's
            // included.
            let n = 4 * EVICTING_MAXMEMORY / (8 << 10);
            for i in 0..n {
                let key = format!("filler:{i}");
                match conn.call(&["SET", &key, &value, "EX", "600"])? {
                    Resp::Simple(_) => {}
                    other => return Err(io::Error::other(format!("filler SET: {other:?}"))),
                }
            }
            Ok(evicted_keys(server)? - before)
        })
        .await
    }

    async fn clock_server(&self) -> io::Result<String> {
        let data = self.data.clone();
        blocking(move || {
            let mut d = data.lock().unwrap();
            d.clock = None;
            let server = RedisServer::start_with(RedisOptions {
                fake_clock: Some(0),
                ..RedisOptions::default()
            })?;
            let url = server.url();
            d.clock = Some((server, 0));
            Ok(url)
        })
        .await
    }

    async fn step_server_clock(&self, secs: i64) -> io::Result<()> {
        let data = self.data.clone();
        blocking(move || {
            let mut d = data.lock().unwrap();
            let (server, offset) = d.clock.as_mut().ok_or_else(|| missing("clock server"))?;
            *offset += secs;
            server.set_clock_offset(*offset)
        })
        .await
    }

    async fn lagging_pair(&self, behind_secs: u64) -> io::Result<String> {
        let data = self.data.clone();
        let primary = blocking(move || {
            let mut d = data.lock().unwrap();
            d.replication = None;
            d.replica = None;
            d.primary = None;
            RedisServer::start()
        })
        .await?;
        let proxy = TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], primary.port()))).await?;
        let via = proxy.addr().port();
        let data = self.data.clone();
        blocking(move || {
            let replica = RedisServer::start_with(RedisOptions {
                replica_of: Some(via),
                fake_clock: Some(-(behind_secs as i64)),
                ..RedisOptions::default()
            })?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while info_field(&replica, "replication", "master_link_status")?.as_deref()
                != Some("up")
            {
                if Instant::now() > deadline {
                    return Err(io::Error::other("the replica did not sync within 20 s"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let url = primary.url();
            let mut d = data.lock().unwrap();
            d.primary = Some(primary);
            d.replica = Some(replica);
            d.replication = Some(proxy);
            Ok(url)
        })
        .await
    }

    async fn pause_replication(&self) -> io::Result<()> {
        let d = self.data.lock().unwrap();
        let proxy = d
            .replication
            .as_ref()
            .ok_or_else(|| missing("replication link"))?;
        // Black-hole the link: the primary keeps serving and sending, the
        // replica receives nothing more (and still believes the link up).
        proxy.set_mode(ProxyMode::Blackhole);
        Ok(())
    }

    async fn fail_over_to_replica(&self) -> io::Result<String> {
        let data = self.data.clone();
        blocking(move || {
            let mut d = data.lock().unwrap();
            if let Some(mut primary) = d.primary.take() {
                primary.kill();
            }
            // Dropping the proxy cuts the link: what it held back is lost.
            d.replication = None;
            let replica = d.replica.as_ref().ok_or_else(|| missing("replica"))?;
            expect_ok(
                "REPLICAOF NO ONE",
                replica.command(&["REPLICAOF", "NO", "ONE"])?,
            )?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while info_field(replica, "replication", "role")?.as_deref() != Some("master") {
                if Instant::now() > deadline {
                    return Err(io::Error::other("the replica was not promoted within 20 s"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(replica.url())
        })
        .await
    }

    async fn restart_empty(&self) -> io::Result<()> {
        let server = self.server.clone();
        blocking(move || server.lock().unwrap().restart()).await
    }

    async fn proxy_upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }
}

/// Faults of a [`SentinelCluster`]: kill the primary (the sentinels then
/// promote the replica) and bring the old primary back as a replica.
#[derive(Debug)]
pub struct SentinelFaults {
    cluster: Arc<Mutex<SentinelCluster>>,
    killed: Mutex<Option<u16>>,
    paused: Mutex<Option<u16>>,
}

impl SentinelFaults {
    /// The controller of `cluster`.
    pub fn new(cluster: Arc<Mutex<SentinelCluster>>) -> SentinelFaults {
        SentinelFaults {
            cluster,
            killed: Mutex::new(None),
            paused: Mutex::new(None),
        }
    }

    /// Do `act` to the primary the sentinels name now (one of ours);
    /// returns its port.
    async fn on_primary(&self, act: fn(&mut RedisServer)) -> io::Result<u16> {
        let cluster = self.cluster.clone();
        blocking(move || {
            let mut c = cluster.lock().unwrap();
            let port = c.primary_port()?;
            act(c.server(port).ok_or_else(|| {
                io::Error::other(format!("the primary on port {port} is not ours"))
            })?);
            Ok(port)
        })
        .await
    }
}

impl std::fmt::Debug for SentinelCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelCluster")
            .field("url", &self.url())
            .finish()
    }
}

#[async_trait::async_trait]
impl ServerFaults for SentinelFaults {
    fn supports(&self, fault: Fault) -> bool {
        matches!(
            fault,
            Fault::KillLeader | Fault::Partition | Fault::ServerPause
        )
    }

    async fn pause_leader(&self) -> io::Result<String> {
        let port = self.on_primary(|s| s.pause()).await?;
        *self.paused.lock().unwrap() = Some(port);
        Ok(format!("the Redis primary on port {port}"))
    }

    /// Resume the old primary; the sentinels fail over while it is stopped
    /// (down after 1 s), so wait for that and make it a replica in sync of
    /// the new primary.
    async fn resume_paused(&self) -> io::Result<()> {
        let Some(old) = self.paused.lock().unwrap().take() else {
            return Ok(());
        };
        let cluster = self.cluster.clone();
        blocking(move || {
            let mut c = cluster.lock().unwrap();
            c.server(old)
                .ok_or_else(|| io::Error::other("the paused primary is gone"))?
                .resume();
            let new_primary = c.wait_failover(old)?;
            let server = c
                .server(old)
                .ok_or_else(|| io::Error::other("the paused primary is gone"))?;
            rejoin_as_replica(server, old, new_primary)
        })
        .await
    }

    /// The current primary (a client maps its announced address to the
    /// proxy: [`crate::Target::through`]).
    async fn proxy_upstream(&self) -> Option<SocketAddr> {
        let cluster = self.cluster.clone();
        let port = blocking(move || cluster.lock().unwrap().primary_port())
            .await
            .ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    async fn kill_leader(&self) -> io::Result<String> {
        let port = self.on_primary(RedisServer::kill).await?;
        *self.killed.lock().unwrap() = Some(port);
        Ok(format!("the Redis primary on port {port}"))
    }

    async fn new_leader(&self) -> io::Result<String> {
        let Some(old) = *self.killed.lock().unwrap() else {
            return Err(io::Error::other("no primary was killed"));
        };
        let cluster = self.cluster.clone();
        let new = blocking(move || cluster.lock().unwrap().wait_failover(old)).await?;
        Ok(format!("the Redis replica on port {new}, promoted"))
    }

    /// Wait for the failover, start the old primary again (empty: no
    /// persistence) and wait until the sentinels made it a replica in sync.
    async fn restart_killed(&self) -> io::Result<()> {
        let Some(old) = self.killed.lock().unwrap().take() else {
            return Ok(());
        };
        let cluster = self.cluster.clone();
        blocking(move || {
            let mut c = cluster.lock().unwrap();
            let new_primary = c.wait_failover(old)?;
            let server = c
                .server(old)
                .ok_or_else(|| io::Error::other("the killed primary is gone"))?;
            server.restart()?;
            rejoin_as_replica(server, old, new_primary)
        })
        .await
    }
}

/// Point the old primary (on port `old`) at the new one at once, as an
/// operator would, rather than wait for the sentinels to notice it and
/// reconfigure it (seen to take over 30 s on a loaded machine); wait until
/// it is a replica in sync.
fn rejoin_as_replica(server: &RedisServer, old: u16, new_primary: u16) -> io::Result<()> {
    server.command(&["REPLICAOF", "127.0.0.1", &new_primary.to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let role = info_field(server, "replication", "role").ok().flatten();
        let link = info_field(server, "replication", "master_link_status")
            .ok()
            .flatten();
        if role.as_deref() == Some("slave") && link.as_deref() == Some("up") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "the old primary on port {old} did not become a replica in sync within 30 s (role {role:?}, link {link:?})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Faults of a deployment this process did not start (servers run by the
/// user's CI, e.g. as containers): only what needs no control of the
/// servers — a proxy between one client and the URL's first endpoint, for
/// the partition cases. The other server faults stay `unverified`.
#[derive(Debug)]
pub struct ExternalFaults {
    upstream: SocketAddr,
}

impl ExternalFaults {
    /// A controller for the servers of `url`, if its first endpoint
    /// resolves to an address (`None` for `file://`, `memory://`).
    pub async fn for_url(url: &str) -> Option<ExternalFaults> {
        let config = quorate::Config::parse(url).ok()?;
        // Behind Sentinel the endpoints are sentinels, not the data path.
        if config.scheme.contains("sentinel") {
            return None;
        }
        let first = config.endpoints.first()?.clone();
        let upstream = tokio::net::lookup_host(first).await.ok()?.next()?;
        Some(ExternalFaults { upstream })
    }
}

#[async_trait::async_trait]
impl ServerFaults for ExternalFaults {
    fn supports(&self, fault: Fault) -> bool {
        fault == Fault::Partition
    }

    async fn proxy_upstream(&self) -> Option<SocketAddr> {
        Some(self.upstream)
    }
}
