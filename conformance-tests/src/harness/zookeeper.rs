//! Real ZooKeeper servers for tests: one server or a three-server
//! ensemble, started from Debian's `/usr/share/java/zookeeper.jar` (its
//! manifest carries the rest of the classpath) on free loopback ports in a
//! temporary directory, with short ticks so short sessions are allowed.
//!
//! [`ZkCluster::start_routed`] makes the servers dial each other's quorum
//! and election ports at other ports (the harness's peer proxies, so one
//! server can be cut off from the others while its client port stays up).
//!
//! Servers can be killed, paused (`SIGSTOP`), resumed and restarted; every
//! process is stopped by its pid when the [`ZkCluster`] is dropped, and a
//! small watchdog kills them if the test process dies without dropping it
//! (a `static` cluster is never dropped).
//!
//! Set `QUORATE_ZOOKEEPER_ENDPOINTS=host:port[,host:port…]` to use external
//! servers instead ([`external_endpoints`]); fault injection then is not
//! available.
//!
//! Elections are tuned for a loopback ensemble, as the test cases measure
//! quorate, not how fast ZooKeeper elects with its defaults. Two of
//! ZooKeeper's waits made elections after a fault take up to 12.8 and
//! 22.7 s here (one full suite run in four; at most 3.5 s in five runs
//! since); twice earlier no new leader came within 30 s (the cause was
//! not captured; such a failure now prints every server's election log):
//! - a follower that joined a leader shutting down for want of synced
//!   followers hangs in discovery until `initLimit` × `tickTime` (was
//!   50 × 200 ms = 10 s, now 25 × 200 ms = 5 s);
//! - the best candidate, waiting with an exponentially growing notification
//!   timeout (up to 60 s by default), does not re-announce its vote to a peer
//!   that starts looking later, so that peer votes for itself until the
//!   timeout ends: `zookeeper.fastleader.maxNotificationInterval` caps it at
//!   1 s.
//!
//! This file only uses `std`, so backend crates can include it in their
//! own tests with `#[path]` without depending on the whole suite.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::faketime;

/// The environment variable naming external ZooKeeper endpoints.
pub const ENDPOINTS_ENV: &str = "QUORATE_ZOOKEEPER_ENDPOINTS";

/// How long a (re)started server may take to report a mode: JVM start-up
/// is slow on a loaded two-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// External endpoints from [`ENDPOINTS_ENV`], if set and non-empty.
pub fn external_endpoints() -> Option<String> {
    std::env::var(ENDPOINTS_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// Whether a ZooKeeper server can be started here (java and the jar).
pub fn available() -> bool {
    Path::new(ZOOKEEPER_JAR).exists()
        && Command::new("java")
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// A logging binding for the server's slf4j, if installed (logs then go to
/// `server<N>.log` in the cluster's directory).
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";

/// One server of a cluster.
struct Server {
    id: usize,
    client_port: u16,
    config: PathBuf,
    log: PathBuf,
    process: Option<Child>,
    watchdog: Option<Child>,
}

/// A ZooKeeper server or ensemble started by this process.
pub struct ZkCluster {
    dir: PathBuf,
    servers: Vec<Server>,
    /// Kept current with the servers' pids when the peer traffic is routed
    /// ([`ZkCluster::start_routed`]).
    pid_table: Option<Arc<Mutex<Vec<Option<u32>>>>>,
    /// The libfaketime offset file of each server, for servers started by
    /// [`ZkCluster::start_with_fake_clock`] (empty otherwise).
    clock_files: Vec<PathBuf>,
}

/// Where the other servers reach one server's quorum and election ports:
/// a `route` of [`ZkCluster::start_routed`] maps `(server index, quorum
/// port, election port)` to the ports to dial instead.
pub type Route<'a> = &'a mut dyn FnMut(usize, u16, u16) -> std::io::Result<(u16, u16)>;

impl ZkCluster {
    /// Start `n` servers (1 = standalone, 3 = an ensemble) and wait until
    /// each reports a mode (`srvr`).
    ///
    /// # Errors
    ///
    /// When java cannot be started or a server does not become ready.
    pub fn start(n: usize) -> std::io::Result<ZkCluster> {
        Self::start_inner(n, None, &mut |_, q, e| Ok((q, e)), false)
    }

    /// `n` servers (1 = standalone, 3 = an ensemble) each run under
    /// libfaketime with a clock of its own: server `i`'s wall clock can be
    /// stepped while it runs ([`ZkCluster::set_clock_offset`]); the
    /// monotonic clocks stay real, as on hosts whose clock an NTP step or an
    /// operator moves.
    ///
    /// # Errors
    ///
    /// As [`ZkCluster::start`], and when libfaketime is not installed.
    pub fn start_with_fake_clock(n: usize) -> std::io::Result<ZkCluster> {
        faketime::require(&[faketime::LIBFAKETIME])?;
        Self::start_inner(n, None, &mut |_, q, e| Ok((q, e)), true)
    }

    /// Step the wall clock of server `i` of a cluster started by
    /// [`ZkCluster::start_with_fake_clock`] to `secs` seconds off the real
    /// one, at once.
    ///
    /// # Errors
    ///
    /// When the server has no fake clock, or the offset cannot be written.
    pub fn set_clock_offset(&self, i: usize, secs: i64) -> std::io::Result<()> {
        let file = self
            .clock_files
            .get(i)
            .ok_or_else(|| std::io::Error::other("the server was not started with a fake clock"))?;
        faketime::write_offset(file, secs)?;
        // Check that the server's clock moved (libfaketime in effect): the
        // time of day it logs a command at, against the real one plus the
        // offset.
        let logged = self.logged_time_of_day(i)?;
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(std::io::Error::other)?
            .as_secs_f64();
        const DAY: f64 = 86_400.0;
        let off = (logged - (real + secs as f64)).rem_euclid(DAY);
        let off = if off > DAY / 2.0 { off - DAY } else { off };
        if off.abs() > 2.0 {
            return Err(std::io::Error::other(format!(
                "the server's clock is {off:.1} s off the {secs} s offset set: libfaketime is not in effect"
            )));
        }
        Ok(())
    }

    /// The time of day (seconds since midnight UTC) by server `i`'s own
    /// clock: when it logs a `srvr` command sent now.
    ///
    /// # Errors
    ///
    /// When it does not answer, or logs nothing within 2 s (no logging
    /// binding, `SLF4J_SIMPLE_JAR`).
    pub fn logged_time_of_day(&self, i: usize) -> std::io::Result<f64> {
        let logged = || {
            std::fs::read_to_string(&self.servers[i].log).map(|text| {
                text.lines()
                    .filter(|l| l.contains("Processing srvr command"))
                    .filter_map(time_of_day)
                    .collect::<Vec<f64>>()
            })
        };
        let before = logged()?.len();
        four_letter_word(self.servers[i].client_port, "srvr")?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let times = logged()?;
            if times.len() > before {
                return Ok(times[times.len() - 1]);
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "ZooKeeper server {} logged no srvr command (is {SLF4J_SIMPLE_JAR} installed?)",
                    self.servers[i].id
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`ZkCluster::start`], but every server reaches the others'
    /// quorum and election ports at the ports `route` returns (proxies in
    /// front of the real ones, so a server can be cut off from its peers
    /// while its client port stays up). `pids` is kept current with the
    /// servers' pids (`None` while one is not running).
    ///
    /// # Errors
    ///
    /// As [`ZkCluster::start`], and `route`'s.
    pub fn start_routed(
        n: usize,
        pids: Arc<Mutex<Vec<Option<u32>>>>,
        route: Route<'_>,
    ) -> std::io::Result<ZkCluster> {
        Self::start_inner(n, Some(pids), route, false)
    }

    fn start_inner(
        n: usize,
        pid_table: Option<Arc<Mutex<Vec<Option<u32>>>>>,
        route: Route<'_>,
        fake_clock: bool,
    ) -> std::io::Result<ZkCluster> {
        // A port found free can be taken by someone else (any connect()
        // draws from the same ephemeral range) before the server binds it:
        // then start afresh on new ports. The failed attempt's servers are
        // killed when its cluster is dropped.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(n, pid_table.clone(), route, fake_clock) {
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {
                    tracing::warn!(error = %e, "a ZooKeeper port was taken; starting again on new ports");
                }
                result => return result,
            }
        }
    }

    fn try_start(
        n: usize,
        pid_table: Option<Arc<Mutex<Vec<Option<u32>>>>>,
        route: Route<'_>,
        fake_clock: bool,
    ) -> std::io::Result<ZkCluster> {
        assert!(n >= 1, "a cluster has at least one server");
        let dir = std::env::temp_dir().join(format!(
            "quorate-zk-{}-{}",
            std::process::id(),
            unique_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()?;
        // The ports the other servers dial.
        let dialed: Vec<(u16, u16)> = if n > 1 {
            ports
                .iter()
                .enumerate()
                .map(|(i, (_, p, e))| route(i, *p, *e))
                .collect::<std::io::Result<_>>()?
        } else {
            Vec::new()
        };
        let mut servers = Vec::new();
        for (i, (client, peer, election)) in ports.iter().enumerate() {
            let id = i + 1;
            let data = dir.join(format!("data{id}"));
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{id}\n"))?;
            let mut cfg = format!(
                "tickTime=200\ninitLimit=25\nsyncLimit=25\ndataDir={}\nclientPort={client}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=*\n\
                 forceSync=no\nminSessionTimeout=400\nmaxSessionTimeout=60000\nmaxClientCnxns=0\n\
                 autopurge.purgeInterval=0\n",
                data.display()
            );
            if n > 1 {
                for (j, (_, p, e)) in ports.iter().enumerate() {
                    // A server listens on its own ports, and dials the
                    // others' through their routes.
                    let (p, e) = if j == i { (*p, *e) } else { dialed[j] };
                    cfg.push_str(&format!("server.{}=127.0.0.1:{p}:{e}\n", j + 1));
                }
            }
            let _ = (peer, election);
            let config = dir.join(format!("zoo{id}.cfg"));
            std::fs::write(&config, cfg)?;
            servers.push(Server {
                id,
                client_port: *client,
                config,
                log: dir.join(format!("server{id}.log")),
                process: None,
                watchdog: None,
            });
        }
        let mut clock_files = Vec::new();
        if fake_clock {
            for server in &servers {
                let file = dir.join(format!("faketime-{}", server.id));
                faketime::write_offset(&file, 0)?;
                clock_files.push(file);
            }
        }
        let mut cluster = ZkCluster {
            dir,
            servers,
            pid_table,
            clock_files,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_ready(i)?;
        }
        Ok(cluster)
    }

    /// The number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no server (never: `start` needs one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// `127.0.0.1:port[,…]` of every server.
    pub fn endpoints(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client endpoint of server `i` (0-based).
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.servers[i].client_port)
    }

    /// The pid of server `i`'s JVM, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].process.as_ref().map(Child::id)
    }

    /// Kill server `i` with `SIGKILL` and reap it.
    pub fn kill(&mut self, i: usize) {
        let server = &mut self.servers[i];
        if let Some(mut p) = server.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if let Some(mut w) = server.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        self.note_pids();
    }

    /// Keep the routed cluster's pid table current.
    fn note_pids(&self) {
        if let Some(table) = &self.pid_table {
            let mut table = table.lock().unwrap();
            for (i, slot) in table.iter_mut().enumerate() {
                *slot = self.pid(i);
            }
        }
    }

    /// Wait until server `i` serves again (reports a mode), e.g. after a
    /// partition healed.
    ///
    /// # Errors
    ///
    /// When it does not within the ready timeout.
    pub fn wait_serving(&mut self, i: usize) -> std::io::Result<()> {
        self.wait_ready(i)
    }

    /// Stop server `i` with `SIGSTOP` (it keeps its sockets but answers
    /// nothing: a black hole).
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Resume server `i` after [`ZkCluster::pause`].
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    /// Start server `i` again (after [`ZkCluster::kill`]) on the same ports
    /// and data, and wait until it reports a mode.
    ///
    /// # Errors
    ///
    /// When it does not become ready.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i)
    }

    /// The mode server `i` reports (`standalone`, `leader`, `follower`), or
    /// `None` when it does not answer.
    pub fn mode(&self, i: usize) -> Option<String> {
        let out = four_letter_word(self.servers[i].client_port, "srvr").ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }

    /// The index of the ensemble's leader (or of the standalone server).
    pub fn leader(&self) -> Option<usize> {
        (0..self.servers.len())
            .find(|&i| matches!(self.mode(i).as_deref(), Some("leader") | Some("standalone")))
    }

    /// The tail of server `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.servers[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every server's mode and the last `lines` lines of its log about the
    /// election and the quorum (election rounds, peer connections, the
    /// leader's and followers' state changes), for a failure message that
    /// says why no leader emerged.
    pub fn election_report(&self, lines: usize) -> String {
        const ABOUT: [&str; 5] = [
            "FastLeaderElection",
            "QuorumCnxManager",
            "quorum.QuorumPeer ",
            "quorum.Leader ",
            "quorum.Learner ",
        ];
        let mut out = String::new();
        for i in 0..self.servers.len() {
            let mode = match (self.pid(i), self.mode(i)) {
                (None, _) => "not running".to_owned(),
                (Some(_), Some(m)) => m,
                (Some(_), None) => "running, not serving".to_owned(),
            };
            out.push_str(&format!("server {} ({mode}):\n", self.servers[i].id));
            let text = std::fs::read_to_string(&self.servers[i].log).unwrap_or_default();
            let about: Vec<&str> = text
                .lines()
                // Log lines, not the stack traces under them.
                .filter(|l| !l.starts_with(char::is_whitespace))
                .filter(|l| ABOUT.iter().any(|a| l.contains(a)))
                .collect();
            for l in &about[about.len().saturating_sub(lines)..] {
                out.push_str("  ");
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.pid(i) {
            let _ = Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        assert!(
            !self.dir.to_string_lossy().contains('\''),
            "the cluster directory is quoted in a shell command"
        );
        let dir = self.dir.clone();
        let server = &mut self.servers[i];
        let mut classpath = ZOOKEEPER_JAR.to_owned();
        if Path::new(SLF4J_SIMPLE_JAR).exists() {
            classpath.push(':');
            classpath.push_str(SLF4J_SIMPLE_JAR);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)?;
        let mut java = Command::new("java");
        if let Some(file) = self.clock_files.get(i) {
            // Session expiry runs on System.nanoTime, the real monotonic
            // clock.
            faketime::apply(&mut java, faketime::LIBFAKETIME, file);
        }
        let child = java
            .args([
                "-Xmx192m",
                "-Xss512k",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Dzookeeper.admin.enableServer=false",
                "-Dznode.container.checkIntervalMs=1000",
                // Election liveness: see the module's documentation.
                "-Dzookeeper.fastleader.maxNotificationInterval=1000",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                // Wall-clock UTC times, to line the log up with the test's.
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                "-Duser.timezone=UTC",
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        // Kill the JVM by pid (and remove the cluster's directory) if this
        // process goes away without dropping us.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 1; done; \
                 if ! kill -0 {parent} 2>/dev/null; then kill -9 {child} 2>/dev/null; sleep 1; rm -rf '{dir}'; fi",
                parent = std::process::id(),
                child = child.id(),
                dir = dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        server.process = Some(child);
        server.watchdog = Some(watchdog);
        self.note_pids();
        Ok(())
    }

    fn wait_ready(&mut self, i: usize) -> std::io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.mode(i).is_some() {
                return Ok(());
            }
            let exited = match self.servers[i].process.as_mut() {
                Some(p) => p.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                return Err(std::io::Error::other(format!(
                    "ZooKeeper server {} exited ({status}); log:\n{}",
                    self.servers[i].id,
                    self.log_tail(i)
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "ZooKeeper server {} did not report a mode within {READY_TIMEOUT:?}; log:\n{}",
                    self.servers[i].id,
                    self.log_tail(i)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ZkCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.resume(i);
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `HH:mm:ss.SSS` time of day a server log line starts with, in
/// seconds.
fn time_of_day(line: &str) -> Option<f64> {
    let stamp = line.get(..12)?;
    let mut parts = stamp.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Send a four-letter word and read the whole answer.
pub fn four_letter_word(port: u16, word: &str) -> std::io::Result<String> {
    let addr = ("127.0.0.1", port);
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], addr.1)),
        Duration::from_secs(1),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(word.as_bytes())?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos ^ (NEXT.fetch_add(1, Ordering::Relaxed) << 32)
}
