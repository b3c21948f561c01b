//! A TCP proxy between a client and a server that can pass traffic, cut
//! every connection (and refuse new ones), or black-hole them (accept, but
//! forward nothing: a partition that looks alive to TCP).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward both ways.
    Pass,
    /// Close every connection; refuse new ones.
    Cut,
    /// Keep connections open but forward nothing.
    Blackhole,
    /// A one-way partition: forward what the client sends, hold whatever
    /// the server sends (the client's requests are served, their replies
    /// never arrive). What was held is delivered if the mode goes back to
    /// [`ProxyMode::Pass`].
    RepliesLost,
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: Arc<watch::Sender<ProxyMode>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    ///
    /// # Errors
    ///
    /// When it cannot listen.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(watch::channel(ProxyMode::Pass).0);
        let m = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *m.borrow() == ProxyMode::Cut {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, upstream, m.subscribe()));
            }
        });
        Ok(TcpProxy {
            addr,
            upstream,
            mode,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Change what the proxy does, for existing and new connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(ProxyMode::Cut);
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<ProxyMode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Cut => return,
            ProxyMode::Blackhole => {
                // Forward nothing until the mode changes.
                if mode.changed().await.is_err() {
                    return;
                }
            }
            ProxyMode::RepliesLost => {
                tokio::select! {
                    r = cr.read(&mut cbuf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if sw.write_all(&cbuf[..n]).await.is_err() { return },
                    },
                    c = mode.changed() => if c.is_err() { return },
                }
            }
            ProxyMode::Pass => {
                tokio::select! {
                    r = cr.read(&mut cbuf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if sw.write_all(&cbuf[..n]).await.is_err() { return },
                    },
                    r = sr.read(&mut sbuf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if cw.write_all(&sbuf[..n]).await.is_err() { return },
                    },
                    c = mode.changed() => if c.is_err() { return },
                }
            }
        }
    }
}

/// The server↔server (peer) links of a cluster the harness started, routed
/// through proxies so that one member can be cut off from its peers while
/// its client port stays up (a member partition).
///
/// One proxy listens in front of each member's peer listener (the etcd
/// peer URL; the ZooKeeper quorum and election ports); the cluster
/// advertises the proxies' addresses to the other members. Each accepted
/// connection is attributed to the member that dialed it, by finding the
/// dialing socket's owner among the members' pids (`/proc/net/tcp*` and
/// `/proc/<pid>/fd`), so a link is known by both its ends.
///
/// [`PeerLinks::isolate`] black-holes every link with the isolated member
/// at either end (connections stay open, nothing is forwarded, as when
/// packets are dropped), including links dialed during the partition.
/// [`PeerLinks::heal`] closes those connections, so the members reconnect
/// afresh, and forwards again. Nothing else is ever touched: connections
/// are attributed by the pids the cluster registers in
/// [`PeerLinks::pids`].
#[derive(Debug)]
pub struct PeerLinks {
    pids: Arc<std::sync::Mutex<Vec<Option<u32>>>>,
    isolated: Arc<watch::Sender<Isolation>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Which member is cut off from its peers, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Isolation {
    member: Option<usize>,
}

impl PeerLinks {
    /// Links of a cluster of `members` members, none isolated.
    pub fn new(members: usize) -> PeerLinks {
        PeerLinks {
            pids: Arc::new(std::sync::Mutex::new(vec![None; members])),
            isolated: Arc::new(watch::channel(Isolation { member: None }).0),
            tasks: Vec::new(),
        }
    }

    /// The table of the members' pids: the cluster keeps it current
    /// (a member's pid while it runs, `None` otherwise).
    pub fn pids(&self) -> Arc<std::sync::Mutex<Vec<Option<u32>>>> {
        self.pids.clone()
    }

    /// Start a proxy, on a free loopback port, in front of the peer
    /// listener `upstream` of member `member`; returns the port the other
    /// members must dial instead. Callable from any thread: the proxy runs
    /// on `runtime`.
    ///
    /// # Errors
    ///
    /// When it cannot listen.
    pub fn route(
        &mut self,
        runtime: &tokio::runtime::Handle,
        member: usize,
        upstream: SocketAddr,
    ) -> std::io::Result<u16> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let _entered = runtime.enter();
        let listener = TcpListener::from_std(listener)?;
        let (pids, isolated) = (self.pids.clone(), self.isolated.clone());
        self.tasks.push(runtime.spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                let pids = pids.clone();
                let isolated = isolated.subscribe();
                tokio::spawn(async move {
                    let local = conn.local_addr().ok();
                    let dialer = match local {
                        Some(local) => {
                            tokio::task::spawn_blocking(move || dialing_member(peer, local, &pids))
                                .await
                                .ok()
                                .flatten()
                        }
                        None => None,
                    };
                    if dialer.is_none() {
                        tracing::debug!(%peer, member, "a peer connection from no known member");
                    }
                    peer_relay(conn, upstream, [Some(member), dialer], isolated).await;
                });
            }
        }));
        Ok(port)
    }

    /// Cut member `member` off from every other member (black-hole every
    /// link it is an end of). Replaces any earlier isolation.
    pub fn isolate(&self, member: usize) {
        self.isolated.send_replace(Isolation {
            member: Some(member),
        });
    }

    /// End the partition: the black-holed connections are closed and
    /// traffic flows again.
    pub fn heal(&self) {
        self.isolated.send_replace(Isolation { member: None });
    }

    /// The isolated member, if any.
    pub fn isolated(&self) -> Option<usize> {
        self.isolated.borrow().member
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Relay one peer connection whose ends are `ends` (listener, dialer)
/// while neither end is isolated; black-hole it while one is; close it
/// when a partition it was black-holed in heals.
async fn peer_relay(
    client: TcpStream,
    upstream: SocketAddr,
    ends: [Option<usize>; 2],
    mut isolated: watch::Receiver<Isolation>,
) {
    let cut_off = |i: &Isolation| i.member.is_some() && ends.contains(&i.member);
    // A connection dialed during a partition is black-holed from the start.
    if cut_off(&isolated.borrow_and_update()) {
        let _ = isolated.wait_for(|i| !cut_off(i)).await;
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    loop {
        if cut_off(&isolated.borrow_and_update()) {
            // Forward nothing; close once the partition heals.
            let _ = isolated.wait_for(|i| !cut_off(i)).await;
            return;
        }
        tokio::select! {
            r = cr.read(&mut cbuf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&cbuf[..n]).await.is_err() { return },
            },
            r = sr.read(&mut sbuf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if cw.write_all(&sbuf[..n]).await.is_err() { return },
            },
            c = isolated.changed() => if c.is_err() { return },
        }
    }
}

/// The member (index into `pids`) owning the socket that dialed from
/// `peer` to `local`, found through `/proc`.
fn dialing_member(
    peer: SocketAddr,
    local: SocketAddr,
    pids: &std::sync::Mutex<Vec<Option<u32>>>,
) -> Option<usize> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| socket_inode(table, peer.port(), local.port()))?;
    let wanted = format!("socket:[{inode}]");
    let pids = pids.lock().unwrap().clone();
    pids.iter().enumerate().find_map(|(i, pid)| {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", (*pid)?)).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|l| l.as_os_str() == std::ffi::OsStr::new(&wanted))
            })
            .then_some(i)
    })
}

/// The inode of the loopback TCP socket with local port `local_port` and
/// remote port `remote_port` in a `/proc/net/tcp`-style table.
fn socket_inode(table: &str, local_port: u16, remote_port: u16) -> Option<u64> {
    let text = std::fs::read_to_string(table).ok()?;
    let port_of = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    text.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 10 {
            return None;
        }
        (port_of(cols[1]) == Some(local_port) && port_of(cols[2]) == Some(remote_port))
            .then(|| cols[9].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server on a free loopback port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Send a byte and wait (boundedly) for its echo.
    async fn round_trip(s: &mut TcpStream) -> Option<u8> {
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            Ok(Ok(1)) => Some(b[0]),
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replies_lost_forwards_requests_and_holds_replies_until_the_heal() {
        // An echo server that also reports every byte it receives.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (got, mut received) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1];
            while let Ok(1) = s.read(&mut b).await {
                let _ = got.send(b[0]).await;
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
        });
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn).await, Some(b'x'));
        assert_eq!(received.recv().await, Some(b'x'));

        proxy.set_mode(ProxyMode::RepliesLost);
        // The request reaches the server; its reply does not come back.
        assert_eq!(round_trip(&mut conn).await, None);
        let reached = tokio::time::timeout(Duration::from_secs(5), received.recv()).await;
        assert_eq!(reached, Ok(Some(b'x')));

        // Healed: the held reply arrives (late), then traffic flows again.
        proxy.set_mode(ProxyMode::Pass);
        let mut b = [0u8; 1];
        let late = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await;
        assert!(matches!(late, Ok(Ok(1))), "{late:?}");
        assert_eq!(b[0], b'x');
        assert_eq!(round_trip(&mut conn).await, Some(b'x'));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_links_attribute_black_hole_and_heal() {
        let upstream = echo().await;
        // This process plays member 1, dialing member 0's peer listener.
        let mut links = PeerLinks::new(2);
        links.pids().lock().unwrap()[1] = Some(std::process::id());
        let port = links
            .route(&tokio::runtime::Handle::current(), 0, upstream)
            .unwrap();
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert_eq!(round_trip(&mut conn).await, Some(b'x'));

        // Cutting off the dialer (found through /proc) black-holes the link.
        links.isolate(1);
        assert_eq!(links.isolated(), Some(1));
        assert_eq!(round_trip(&mut conn).await, None);
        // A link dialed during the partition is black-holed too.
        let mut during = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert_eq!(round_trip(&mut during).await, None);

        // Healing closes the black-holed connections; new ones pass.
        links.heal();
        let mut b = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        let mut after = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert_eq!(round_trip(&mut after).await, Some(b'x'));

        // Cutting off a member that is no end of the link changes nothing;
        // cutting off the listening member black-holes it.
        links.isolate(2);
        assert_eq!(round_trip(&mut after).await, Some(b'x'));
        links.isolate(0);
        assert_eq!(round_trip(&mut after).await, None);
        links.heal();
    }
}
