//! A Redis server harness: starts real `redis-server` processes on free
//! loopback ports in temporary directories, verifies that it talks to its own
//! process, and can kill, pause, resume and restart them. Every process is
//! killed by pid when its handle is dropped.
//!
//! It depends on the standard library only (a tiny RESP client is included),
//! so backend crates can use it from their own tests with
//! `#[path = ".../conformance-tests/src/harness/redis.rs"] mod redis_harness;`.
//!
//! An external server can be used instead by setting `QUORATE_REDIS_URL`
//! (see [`RedisTarget::from_env_or_start`]); fault injection is then not
//! available.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::faketime;

/// The environment variable naming an external Redis to use instead of a
/// harness-started server (`redis://[user:pass@]host:port[/db]`).
pub const EXTERNAL_URL_ENV: &str = "QUORATE_REDIS_URL";

/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// An ACL user the server is configured with (for authentication tests).
#[derive(Debug, Clone)]
pub struct AclUser {
    /// The user name.
    pub name: String,
    /// Its password.
    pub password: String,
}

/// Options of a started server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// When set, the `default` user is disabled and only this user (with
    /// every permission) can log in.
    pub acl_user: Option<AclUser>,
    /// Extra `redis.conf` lines.
    pub extra_config: Vec<String>,
    /// Also listen with TLS on a second port, with a certificate for
    /// `127.0.0.1`/`localhost` signed by a CA made for this server
    /// (`<dir>/ca.pem`; needs the `openssl` command).
    pub tls: bool,
    /// Start as a replica of the server on this loopback port.
    pub replica_of: Option<u16>,
    /// Start `redis-sentinel` instead, monitoring `(service, port)`.
    pub sentinel_of: Option<(String, u16)>,
    /// Run the server under libfaketime (Debian's `libfaketime`) with its
    /// wall clock this many seconds off the real one; the offset can be
    /// changed while it runs ([`RedisServer::set_clock_offset`]).
    pub fake_clock: Option<i64>,
}

/// The glibc malloc shim preloaded before libfaketime: the server's
/// jemalloc calls `clock_gettime` while libfaketime initializes (a
/// recursion libfaketime cannot recover from: the server hangs at start),
/// so malloc is routed to glibc's allocator for faked servers.
const GLIBC_MALLOC_SHIM: &str = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0";

/// A `redis-server` process started by this harness.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: PathBuf,
    options: RedisOptions,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty temporary directory.
fn temp_dir(what: &str) -> io::Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "quorate-{what}-{}-{n}-{nanos:x}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A loopback port that was free a moment ago (bind port 0, read, close).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Start a server with default options (no password).
    pub fn start() -> io::Result<RedisServer> {
        Self::start_with(RedisOptions::default())
    }

    /// Start a server with `options` on a free loopback port.
    pub fn start_with(options: RedisOptions) -> io::Result<RedisServer> {
        let dir = temp_dir("redis")?;
        if options.tls {
            make_certificates(&dir)?;
        }
        let mut last_err = None;
        // A port found free can be taken by someone else before the server
        // binds it: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let tls_port = if options.tls {
                Some(free_port()?)
            } else {
                None
            };
            let mut server = RedisServer {
                child: None,
                port,
                tls_port,
                dir: dir.clone(),
                options: options.clone(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_err = Some(e);
                    server.kill();
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not start redis-server")))
    }

    fn write_config(&self) -> io::Result<PathBuf> {
        let mut conf = format!(
            "port {}\nbind 127.0.0.1\ndir {}\nlogfile {}\ndaemonize no\nprotected-mode no\n",
            self.port,
            self.dir.display(),
            self.dir.join("redis.log").display(),
        );
        if let Some((service, port)) = &self.options.sentinel_of {
            conf.push_str(&format!(
                "sentinel monitor {service} 127.0.0.1 {port} 2\nsentinel down-after-milliseconds {service} 1000\nsentinel failover-timeout {service} 5000\n"
            ));
        } else {
            conf.push_str("save \"\"\nappendonly no\n");
        }
        if let Some(port) = self.options.replica_of {
            conf.push_str(&format!("replicaof 127.0.0.1 {port}\n"));
        }
        if let Some(u) = &self.options.acl_user {
            conf.push_str(&format!(
                "user default off\nuser {} on >{} ~* &* +@all\n",
                u.name, u.password
            ));
        }
        if let Some(tls_port) = self.tls_port {
            let d = self.dir.display();
            conf.push_str(&format!(
                "tls-port {tls_port}\ntls-cert-file {d}/server.pem\ntls-key-file {d}/server.key\ntls-ca-cert-file {d}/ca.pem\ntls-auth-clients optional\n"
            ));
        }
        for line in &self.options.extra_config {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.dir.join("redis.conf");
        std::fs::write(&path, conf)?;
        Ok(path)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let conf = self.write_config()?;
        let program = if self.options.sentinel_of.is_some() {
            "redis-sentinel"
        } else {
            "redis-server"
        };
        let mut command = Command::new(program);
        if let Some(offset) = self.options.fake_clock {
            faketime::require(&[faketime::LIBFAKETIME, GLIBC_MALLOC_SHIM])?;
            let file = self.clock_file();
            if !file.exists() {
                faketime::write_offset(&file, offset)?;
            }
            // The event loop's timers run on the real monotonic clock.
            let preload = format!("{GLIBC_MALLOC_SHIM} {}", faketime::LIBFAKETIME);
            faketime::apply(&mut command, &preload, &file);
        }
        let child = command
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.child = Some(child);
        self.wait_ready(pid)
    }

    /// Wait until our process answers, and check that the server on the
    /// port is ours (its `process_id` is the pid we started).
    fn wait_ready(&mut self, pid: u32) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}); log: {}",
                    self.log_tail()
                )));
            }
            match self.command(&["INFO", "server"]) {
                Ok(Resp::Bulk(Some(info))) => {
                    let info = String::from_utf8_lossy(&info).into_owned();
                    let theirs = info
                        .lines()
                        .find_map(|l| l.strip_prefix("process_id:"))
                        .map(|p| p.trim().to_owned());
                    if theirs.as_deref() != Some(pid.to_string().as_str()) {
                        return Err(io::Error::other(format!(
                            "port {} is served by another process ({theirs:?}, ours is {pid})",
                            self.port
                        )));
                    }
                    return Ok(());
                }
                Ok(other) => {
                    return Err(io::Error::other(format!("unexpected INFO reply {other:?}")))
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The libfaketime offset file of a server with a fake clock.
    fn clock_file(&self) -> PathBuf {
        self.dir.join(format!("faketime-{}", self.port))
    }

    /// Set the wall-clock offset (seconds from the real clock) of a server
    /// started with [`RedisOptions::fake_clock`]: its clock steps at once.
    pub fn set_clock_offset(&self, secs: i64) -> io::Result<()> {
        if self.options.fake_clock.is_none() {
            return Err(io::Error::other(
                "the server was not started with a fake clock",
            ));
        }
        faketime::write_offset(&self.clock_file(), secs)
    }

    /// The server's `TIME`, in microseconds since the epoch.
    pub fn server_time_us(&self) -> io::Result<u64> {
        match self.command(&["TIME"])? {
            Resp::Array(Some(parts)) if parts.len() == 2 => {
                let num = |r: &Resp| match r {
                    Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).parse::<u64>().ok(),
                    _ => None,
                };
                match (num(&parts[0]), num(&parts[1])) {
                    (Some(s), Some(us)) => Ok(s * 1_000_000 + us),
                    _ => Err(io::Error::other("unexpected TIME reply")),
                }
            }
            other => Err(io::Error::other(format!("unexpected TIME reply {other:?}"))),
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port, for a server started with [`RedisOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis://[user:pass@]127.0.0.1:PORT` (with the ACL user, if any).
    pub fn url(&self) -> String {
        match &self.options.acl_user {
            Some(u) => format!("redis://{}:{}@127.0.0.1:{}", u.name, u.password, self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `rediss://[user:pass@]127.0.0.1:TLS_PORT?tls_ca=<dir>/ca.pem`, for a
    /// server started with [`RedisOptions::tls`].
    pub fn tls_url(&self) -> Option<String> {
        let port = self.tls_port?;
        let auth = match &self.options.acl_user {
            Some(u) => format!("{}:{}@", u.name, u.password),
            None => String::new(),
        };
        Some(format!(
            "rediss://{auth}127.0.0.1:{port}?tls_ca={}",
            self.dir.join("ca.pem").display()
        ))
    }

    /// The ACL user, if the server was started with one.
    pub fn acl_user(&self) -> Option<&AclUser> {
        self.options.acl_user.as_ref()
    }

    /// Run one command (authenticated as the ACL user if any) and return
    /// its reply.
    pub fn command(&self, args: &[&str]) -> io::Result<Resp> {
        let mut conn = RespConn::connect(self.port)?;
        if let Some(u) = &self.options.acl_user {
            match conn.call(&["AUTH", &u.name, &u.password])? {
                Resp::Simple(_) => {}
                other => return Err(io::Error::other(format!("AUTH failed: {other:?}"))),
            }
        }
        conn.call(args)
    }

    /// Send `SIGKILL` to the server and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Send `SIGSTOP`: the server stops answering but keeps its sockets.
    pub fn pause(&self) {
        self.signal(libc_signal::SIGSTOP);
    }

    /// Send `SIGCONT` after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal(libc_signal::SIGCONT);
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status();
        }
    }

    /// Kill the server and start a new process on the same port and
    /// directory. Without persistence, every key is gone.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old socket may linger for a moment.
                Err(_) if Instant::now() < deadline => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a server certificate for `127.0.0.1`/`localhost` in `dir`
/// (`ca.pem`, `server.pem`, `server.key`), made with the `openssl` command.
fn make_certificates(dir: &Path) -> io::Result<()> {
    let run = |args: &[&str]| -> io::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
    )?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=quorate test CA"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&ca)?;
    let mut csr = vec!["req", "-subj", "/CN=localhost"];
    csr.extend_from_slice(&ec);
    csr.extend_from_slice(&["-keyout", "server.key", "-out", "server.csr"]);
    run(&csr)?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ])
}

/// Signal names for `kill -SIG` (the harness needs no libc binding).
mod libc_signal {
    pub const SIGSTOP: &str = "STOP";
    pub const SIGCONT: &str = "CONT";
}

/// A primary, one replica and three `redis-sentinel`s monitoring them as
/// service [`SentinelCluster::SERVICE`] (quorum 2, down after 1 s).
pub struct SentinelCluster {
    /// The servers, the first one started as the primary.
    pub servers: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelCluster {
    /// The monitored service's name.
    pub const SERVICE: &'static str = "quorate-primary";

    /// Start the primary, the replica (waiting until it is in sync) and the
    /// sentinels (waiting until each knows the replica and the two others).
    pub fn start() -> io::Result<SentinelCluster> {
        let primary = RedisServer::start()?;
        let replica = RedisServer::start_with(RedisOptions {
            replica_of: Some(primary.port()),
            ..RedisOptions::default()
        })?;
        wait_until("the replica to sync", || {
            Ok(info_field(&replica, "replication", "master_link_status")?.as_deref() == Some("up"))
        })?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(RedisServer::start_with(RedisOptions {
                sentinel_of: Some((Self::SERVICE.to_owned(), primary.port())),
                ..RedisOptions::default()
            })?);
        }
        let cluster = SentinelCluster {
            servers: vec![primary, replica],
            sentinels,
        };
        for s in &cluster.sentinels {
            wait_until("the sentinels to know each other and the replica", || {
                let count = |what: &str| -> io::Result<usize> {
                    Ok(match s.command(&["SENTINEL", what, Self::SERVICE])? {
                        Resp::Array(Some(items)) => items.len(),
                        _ => 0,
                    })
                };
                Ok(count("sentinels")? == 2 && count("replicas")? == 1)
            })?;
        }
        Ok(cluster)
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/SERVICE`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), Self::SERVICE)
    }

    /// The port of the primary, as the first answering sentinel says.
    pub fn primary_port(&self) -> io::Result<u16> {
        for s in &self.sentinels {
            if let Ok(Resp::Array(Some(addr))) =
                s.command(&["SENTINEL", "get-master-addr-by-name", Self::SERVICE])
            {
                if let Some(Resp::Bulk(Some(port))) = addr.get(1) {
                    if let Ok(p) = String::from_utf8_lossy(port).parse() {
                        return Ok(p);
                    }
                }
            }
        }
        Err(io::Error::other("no sentinel names a primary"))
    }

    /// The server listening on `port`.
    pub fn server(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.servers.iter_mut().find(|s| s.port() == port)
    }

    /// Wait until the sentinels name a primary other than `old_port` and
    /// it answers as a primary; returns its port.
    pub fn wait_failover(&self, old_port: u16) -> io::Result<u16> {
        let mut new = 0;
        wait_until_for("a failover", Duration::from_secs(30), || {
            new = self.primary_port()?;
            Ok(new != old_port
                && self.servers.iter().any(|s| {
                    s.port() == new
                        && info_field(s, "replication", "role")
                            .ok()
                            .flatten()
                            .as_deref()
                            == Some("master")
                }))
        })?;
        Ok(new)
    }
}

/// One `field` of an `INFO section` reply of `server` (`None` if absent).
pub fn info_field(server: &RedisServer, section: &str, field: &str) -> io::Result<Option<String>> {
    match server.command(&["INFO", section])? {
        Resp::Bulk(Some(info)) => Ok(String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())),
        other => Err(io::Error::other(format!("unexpected INFO reply {other:?}"))),
    }
}

fn wait_until(what: &str, check: impl FnMut() -> io::Result<bool>) -> io::Result<()> {
    wait_until_for(what, Duration::from_secs(20), check)
}

fn wait_until_for(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> io::Result<bool>,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(true) = check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Either a harness-started server or an external one from
/// [`EXTERNAL_URL_ENV`].
pub enum RedisTarget {
    /// Started here: faults can be injected.
    Local(RedisServer),
    /// Given by the environment: no fault injection.
    External(String),
}

impl RedisTarget {
    /// Use `QUORATE_REDIS_URL` if set, else start a server.
    pub fn from_env_or_start() -> io::Result<RedisTarget> {
        match std::env::var(EXTERNAL_URL_ENV) {
            Ok(url) if !url.is_empty() => Ok(RedisTarget::External(url)),
            _ => Ok(RedisTarget::Local(RedisServer::start()?)),
        }
    }

    /// The base URL (no namespace, no options).
    pub fn url(&self) -> String {
        match self {
            RedisTarget::Local(s) => s.url(),
            RedisTarget::External(u) => u.clone(),
        }
    }

    /// The local server, when there is one.
    pub fn server(&mut self) -> Option<&mut RedisServer> {
        match self {
            RedisTarget::Local(s) => Some(s),
            RedisTarget::External(_) => None,
        }
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR …`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$…` (`None` for a nil bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*…` (`None` for a nil array)
    Array(Option<Vec<Resp>>),
}

/// A minimal blocking RESP2 connection, for setting up and checking servers.
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connect to `127.0.0.1:port`.
    pub fn connect(port: u16) -> io::Result<RespConn> {
        let stream = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().expect("valid address"),
            Duration::from_secs(2),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(RespConn {
            reader: BufReader::new(stream),
        })
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, args: &[&str]) -> io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)?;
        self.read()
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn read(&mut self) -> io::Result<Resp> {
        let line = self.line()?;
        let bad = || io::Error::other(format!("bad RESP line `{line}`"));
        let (tag, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        match tag {
            "+" => Ok(Resp::Simple(rest.to_owned())),
            "-" => Ok(Resp::Error(rest.to_owned())),
            ":" => rest.parse().map(Resp::Int).map_err(|_| bad()),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let mut buf = vec![0; n as usize + 2];
                self.reader.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Ok(Resp::Bulk(Some(buf)))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Resp::Array(None));
                }
                let items = (0..n).map(|_| self.read()).collect::<io::Result<_>>()?;
                Ok(Resp::Array(Some(items)))
            }
            _ => Err(bad()),
        }
    }
}
