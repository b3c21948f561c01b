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
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
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
        Ok(TcpProxy { addr, mode, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
