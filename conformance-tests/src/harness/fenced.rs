//! A fenced resource in its own server: a register per name that accepts a
//! write only if its fencing token is at least the highest it has seen for
//! that name. Holders in other processes (agents) write to it over TCP with
//! the fence of the grant they believe they hold, exactly as a storage
//! service protected by fencing tokens would; every attempt goes into the
//! name's [`History`], which the cases check.
//!
//! Protocol, one line each way:
//! `write NAME FENCE CLIENT VALUE` → `accepted` | `refused MAX`;
//! `read NAME` → `value FENCE VALUE` | `empty`. Names, clients and values
//! contain no spaces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::history::History;

#[derive(Default)]
struct State {
    histories: HashMap<String, Arc<History>>,
    values: HashMap<String, (u64, String)>,
}

/// A running fenced register on a free loopback port; stops when dropped.
pub struct FencedRegister {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl FencedRegister {
    /// Start the register on `127.0.0.1` on a free port.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start() -> std::io::Result<FencedRegister> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let s = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Ok(FencedRegister {
            addr,
            state,
            server,
        })
    }

    /// Where holders write.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The history of `name`: holds are recorded by the case, writes by
    /// the register.
    pub fn history(&self, name: &str) -> Arc<History> {
        history(&self.state, name)
    }

    /// The accepted value of `name` and its fence, if any.
    pub fn value(&self, name: &str) -> Option<(u64, String)> {
        self.state.lock().unwrap().values.get(name).cloned()
    }

    /// Write as a holder in this process would (the same check).
    pub fn write(&self, name: &str, fence: u64, client: &str, value: &str) -> bool {
        apply(&self.state, name, fence, client, value)
    }
}

impl Drop for FencedRegister {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn history(state: &Mutex<State>, name: &str) -> Arc<History> {
    state
        .lock()
        .unwrap()
        .histories
        .entry(name.to_owned())
        .or_default()
        .clone()
}

fn apply(state: &Mutex<State>, name: &str, fence: u64, client: &str, value: &str) -> bool {
    // One lock over the check and the store, as a real resource would.
    let mut st = state.lock().unwrap();
    let h = st.histories.entry(name.to_owned()).or_default().clone();
    let accepted = h.write(client, fence);
    if accepted {
        st.values.insert(name.to_owned(), (fence, value.to_owned()));
    }
    accepted
}

async fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let (r, mut w) = conn.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split(' ').collect();
        let reply = match parts.as_slice() {
            ["write", name, fence, client, value] => match fence.parse::<u64>() {
                Ok(f) if apply(&state, name, f, client, value) => "accepted".to_owned(),
                Ok(_) => {
                    let max = state
                        .lock()
                        .unwrap()
                        .values
                        .get(*name)
                        .map_or(0, |(f, _)| *f);
                    format!("refused {max}")
                }
                Err(_) => "error bad fence".to_owned(),
            },
            ["read", name] => match state.lock().unwrap().values.get(*name) {
                Some((f, v)) => format!("value {f} {v}"),
                None => "empty".to_owned(),
            },
            _ => "error bad command".to_owned(),
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Write to the register at `addr` (from a holder's process).
///
/// # Errors
///
/// When the register cannot be reached or answers nonsense.
pub async fn write_to(
    addr: &str,
    name: &str,
    fence: u64,
    client: &str,
    value: &str,
) -> std::io::Result<bool> {
    let conn = TcpStream::connect(addr).await?;
    let (r, mut w) = conn.into_split();
    w.write_all(format!("write {name} {fence} {client} {value}\n").as_bytes())
        .await?;
    let line = BufReader::new(r)
        .lines()
        .next_line()
        .await?
        .unwrap_or_default();
    match line.split(' ').next() {
        Some("accepted") => Ok(true),
        Some("refused") => Ok(false),
        _ => Err(std::io::Error::other(format!(
            "the fenced register answered `{line}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_lower_fences_over_tcp() {
        let reg = FencedRegister::start().await.unwrap();
        let addr = reg.addr().to_string();
        assert!(write_to(&addr, "n", 2, "a", "x").await.unwrap());
        assert!(write_to(&addr, "n", 3, "b", "y").await.unwrap());
        assert!(!write_to(&addr, "n", 2, "a", "stale").await.unwrap());
        assert_eq!(reg.value("n"), Some((3, "y".to_owned())));
        // Names are separate resources.
        assert!(write_to(&addr, "m", 1, "a", "z").await.unwrap());
        let v = reg.history("n").check();
        assert_eq!(v.stale_writes_rejected, 1);
    }
}
