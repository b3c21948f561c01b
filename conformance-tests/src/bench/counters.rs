//! Server-side request counters, read from the server's own statistics, so
//! that "requests per operation" is measured without timing noise.
//!
//! - Redis: `INFO commandstats`. `requests` counts every command the server
//!   ran, including those a Lua script ran (Redis counts both alike);
//!   `scripts` counts the `EVAL`/`EVALSHA`/`FCALL` calls among them, and
//!   the server time is taken from `usec` (see
//!   [`ServerCounters::server_time_us`]).
//! - etcd: `/metrics` on the first client endpoint (plain `http` only):
//!   `grpc_server_msg_received_total`, i.e. unary requests plus messages on
//!   streams (lease keep-alives, watch creations).
//! - ZooKeeper: the `mntr` four-letter word (`zk_packets_received`; pings
//!   included). The server must allow it (`4lw.commands.whitelist`).
//!
//! Other backends have no server, hence no counters.

use std::collections::BTreeMap;

use quorate::{Config, Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One reading of a server's counters. Differences of two readings are what
/// the benchmarks report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerCounters {
    /// Requests the server handled (see the module documentation for what
    /// counts as one on each backend).
    pub requests: f64,
    /// Redis: script calls (`EVAL`, `EVALSHA`, `FCALL`), included in
    /// `requests`.
    pub scripts: Option<f64>,
    /// Redis: server time spent in script calls, in microseconds (a
    /// script's time includes the commands it ran).
    pub server_us: Option<f64>,
    /// Redis: server time spent in every command that is not a script call,
    /// in microseconds; this includes the commands scripts ran, so it is
    /// only meaningful for operations that run no script (see
    /// [`ServerCounters::server_time_us`]).
    pub command_us: Option<f64>,
    /// Per kind of request (Redis command, etcd gRPC method, ZooKeeper
    /// counter name).
    pub by_kind: BTreeMap<String, f64>,
}

impl ServerCounters {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &ServerCounters) -> ServerCounters {
        let mut by_kind = BTreeMap::new();
        for (k, v) in &self.by_kind {
            let d = v - earlier.by_kind.get(k).copied().unwrap_or(0.0);
            if d != 0.0 {
                by_kind.insert(k.clone(), d);
            }
        }
        ServerCounters {
            requests: self.requests - earlier.requests,
            scripts: self.scripts.zip(earlier.scripts).map(|(a, b)| a - b),
            server_us: self.server_us.zip(earlier.server_us).map(|(a, b)| a - b),
            command_us: self.command_us.zip(earlier.command_us).map(|(a, b)| a - b),
            by_kind,
        }
    }

    /// `self - other` (clamped at 0): a difference of readings without the
    /// cost of reading the counters themselves
    /// ([`CounterSource::read_cost`]).
    pub fn minus(&self, other: &ServerCounters) -> ServerCounters {
        let mut d = self.since(other);
        d.requests = d.requests.max(0.0);
        d.scripts = d.scripts.map(|s| s.max(0.0));
        d.server_us = d.server_us.map(|s| s.max(0.0));
        d.command_us = d.command_us.map(|s| s.max(0.0));
        d.by_kind.retain(|_, v| *v > 0.0);
        d
    }

    /// Redis: the server time of a difference of readings: the script
    /// time if any script ran, else the plain commands' time.
    pub fn server_time_us(&self) -> Option<f64> {
        match self.scripts {
            Some(s) if s > 0.0 => self.server_us,
            Some(_) => self.command_us.or(Some(0.0)),
            None => None,
        }
    }

    /// Every figure divided by `n` (per operation).
    pub fn per(&self, n: f64) -> ServerCounters {
        ServerCounters {
            requests: self.requests / n,
            scripts: self.scripts.map(|s| s / n),
            server_us: self.server_us.map(|s| s / n),
            command_us: self.command_us.map(|s| s / n),
            by_kind: self
                .by_kind
                .iter()
                .map(|(k, v)| (k.clone(), v / n))
                .collect(),
        }
    }
}

/// Where a backend's counters are read.
pub enum CounterSource {
    /// A Redis connection for `INFO commandstats`.
    Redis(redis::aio::MultiplexedConnection),
    /// `host:port` of an etcd client endpoint serving `/metrics` over http.
    Etcd(String),
    /// `host:port` of a ZooKeeper server answering `mntr`.
    ZooKeeper(String),
}

impl std::fmt::Debug for CounterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CounterSource::Redis(_) => f.write_str("CounterSource::Redis"),
            CounterSource::Etcd(e) => write!(f, "CounterSource::Etcd({e})"),
            CounterSource::ZooKeeper(e) => write!(f, "CounterSource::ZooKeeper({e})"),
        }
    }
}

fn first_endpoint(config: &Config, default_port: u16) -> String {
    let e = config.endpoints.first().cloned().unwrap_or_default();
    if e.rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        e
    } else {
        format!("{e}:{default_port}")
    }
}

impl CounterSource {
    /// The counters of the server behind `url`, or `None` where there are
    /// none to read (memory, file, TLS etcd).
    ///
    /// # Errors
    ///
    /// A Redis server that cannot be reached.
    pub async fn for_url(url: &str) -> Result<Option<CounterSource>> {
        let config = Config::parse(url)?;
        Ok(match config.scheme.as_str() {
            "redis" => {
                let client = super::redis::client_for(&config)?;
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| Error::unavailable(format!("redis counters: {e}")))?;
                Some(CounterSource::Redis(conn))
            }
            "etcd" => Some(CounterSource::Etcd(first_endpoint(&config, 2379))),
            "zookeeper" => Some(CounterSource::ZooKeeper(first_endpoint(&config, 2181))),
            _ => None,
        })
    }

    /// Read the counters now.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or answers something unexpected.
    pub async fn read(&self) -> Result<ServerCounters> {
        match self {
            CounterSource::Redis(conn) => {
                let mut c = conn.clone();
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(&mut c)
                    .await
                    .map_err(|e| Error::unavailable(format!("redis INFO commandstats: {e}")))?;
                Ok(parse_commandstats(&info))
            }
            CounterSource::Etcd(endpoint) => {
                let body = http_get(endpoint, "/metrics").await?;
                Ok(parse_etcd_metrics(&body))
            }
            CounterSource::ZooKeeper(endpoint) => {
                let body = four_letter_word(endpoint, "mntr").await?;
                parse_mntr(&body).ok_or_else(|| {
                    Error::unavailable(format!(
                        "ZooKeeper {endpoint}: no zk_packets_received in `mntr` (is `4lw.commands.whitelist` set?)"
                    ))
                })
            }
        }
    }
}

impl CounterSource {
    /// What reading the counters adds to a difference of two readings:
    /// the least of three back-to-back differences. ZooKeeper counts its
    /// own `mntr` as a packet received (and its answer as sent), so every
    /// difference includes one reading; Redis's `INFO` is left out by the
    /// parser and etcd's `/metrics` is not a gRPC message, so theirs is
    /// zero. Subtract it with [`ServerCounters::minus`].
    ///
    /// # Errors
    ///
    /// As [`CounterSource::read`].
    pub async fn read_cost(&self) -> Result<ServerCounters> {
        let mut prev = self.read().await?;
        let mut least: Option<ServerCounters> = None;
        for _ in 0..3 {
            let next = self.read().await?;
            let d = next.since(&prev);
            if least.as_ref().is_none_or(|l| d.requests < l.requests) {
                least = Some(d);
            }
            prev = next;
        }
        Ok(least.unwrap_or_default())
    }
}

/// Parse `INFO commandstats`, leaving out the `INFO` calls themselves.
pub fn parse_commandstats(info: &str) -> ServerCounters {
    let mut out = ServerCounters {
        scripts: Some(0.0),
        server_us: Some(0.0),
        command_us: Some(0.0),
        ..ServerCounters::default()
    };
    for line in info.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if name == "info" {
            continue;
        }
        let (calls, usec) = (field("calls"), field("usec"));
        out.requests += calls;
        out.by_kind.insert(name.to_owned(), calls);
        let script = matches!(
            name,
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
        );
        if script {
            *out.scripts.as_mut().unwrap() += calls;
        }
        if script {
            *out.server_us.as_mut().unwrap() += usec;
        } else {
            *out.command_us.get_or_insert(0.0) += usec;
        }
    }
    out
}

/// Parse etcd's Prometheus text: `grpc_server_msg_received_total`, by method.
pub fn parse_etcd_metrics(body: &str) -> ServerCounters {
    let mut out = ServerCounters::default();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("grpc_server_msg_received_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let method = labels
            .split(',')
            .find_map(|l| l.strip_prefix("grpc_method=\""))
            .map(|m| m.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        out.requests += v;
        *out.by_kind.entry(method).or_insert(0.0) += v;
    }
    out
}

/// Parse ZooKeeper's `mntr` answer.
pub fn parse_mntr(body: &str) -> Option<ServerCounters> {
    let mut out = ServerCounters::default();
    let mut found = false;
    for line in body.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        if k == "zk_packets_received" {
            out.requests = v;
            found = true;
        }
        if k == "zk_packets_sent" || k == "zk_cnt_node_deleted_watch_count" {
            out.by_kind.insert(k.to_owned(), v);
        }
    }
    found.then_some(out)
}

async fn connect(endpoint: &str) -> Result<tokio::net::TcpStream> {
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(endpoint),
    )
    .await
    .map_err(|_| Error::unavailable(format!("{endpoint}: connect timed out")))?
    .map_err(|e| Error::unavailable(format!("{endpoint}: {e}")))
}

async fn read_all(mut s: tokio::net::TcpStream, endpoint: &str) -> Result<String> {
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| Error::unavailable(format!("{endpoint}: read timed out")))?
        .map_err(|e| Error::unavailable(format!("{endpoint}: {e}")))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn http_get(endpoint: &str, path: &str) -> Result<String> {
    let mut s = connect(endpoint).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| Error::unavailable(format!("{endpoint}: {e}")))?;
    read_all(s, endpoint).await
}

async fn four_letter_word(endpoint: &str, word: &str) -> Result<String> {
    let mut s = connect(endpoint).await?;
    s.write_all(word.as_bytes())
        .await
        .map_err(|e| Error::unavailable(format!("{endpoint}: {e}")))?;
    let _ = s.shutdown().await;
    read_all(s, endpoint).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_servers_counters() {
        let r = parse_commandstats(
            "# Commandstats\r\ncmdstat_set:calls=3,usec=6,usec_per_call=2.00\r\n\
             cmdstat_evalsha:calls=2,usec=50,usec_per_call=25.00\r\n\
             cmdstat_info:calls=9,usec=900\r\n",
        );
        assert_eq!(
            (r.requests, r.scripts, r.server_us),
            (5.0, Some(2.0), Some(50.0))
        );
        assert_eq!(r.command_us, Some(6.0));
        let e = parse_etcd_metrics(
            "# HELP x\ngrpc_server_msg_received_total{grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 7\n\
             grpc_server_msg_received_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n",
        );
        assert_eq!(e.requests, 9.0);
        assert_eq!(e.by_kind["Txn"], 7.0);
        let z = parse_mntr("zk_version\t3.8\nzk_packets_received\t42\n").unwrap();
        assert_eq!(z.requests, 42.0);
    }
}
