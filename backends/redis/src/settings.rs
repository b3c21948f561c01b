//! The Redis-specific reading of a [`Config`]:
//!
//! - `redis://[user:pass@]host[:port][/db][?namespace=…]`
//! - `rediss://…` (TLS) with `tls_ca=<PEM file>` (trust this CA instead of
//!   the system roots), `tls_cert=<PEM file>` + `tls_key=<PEM file>` (a
//!   client certificate); the server's certificate is always verified;
//! - `redis+sentinel://[user:pass@]s1[:port],s2[:port]/<service>[/db]`: ask
//!   the sentinels (port 26379 by default, contacted without credentials)
//!   for the primary of `<service>`, and follow it when they fail over. The
//!   credentials are the data nodes'. `nat_map=A:P=B:Q[,…]` connects to
//!   `B:Q` whenever the sentinels name `A:P` (servers behind NAT or in
//!   containers, whose announced address the client cannot reach; Redisson's
//!   `natMap`).
//!
//! Options of every form: `namespace`; `allow_eviction=true|false`
//! (default `false`: a server whose configuration can evict quorate's keys
//! — `maxmemory` > 0 with any `maxmemory-policy` but `noeviction` — is
//! refused at connect; see `conn.rs`); `wait_replicas=N` (default 0: a
//! grant returns only once N replicas acknowledged it, `WAIT`, so a
//! failover to one of them cannot hand out a smaller fence). Unknown
//! options are refused.

use quorate_core::{Config, Error, Result};

use crate::{DEFAULT_NAMESPACE, SCHEMES};

/// A host (name or IP, without brackets) and a port.
pub(crate) type HostPort = (String, u16);

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// One server.
    Direct(String, u16),
    /// The primary of a Sentinel-managed service.
    Sentinel {
        /// The sentinels' addresses.
        sentinels: Vec<(String, u16)>,
        /// The monitored service (master name).
        service: String,
        /// Announced address → the address to connect to (`nat_map`).
        nat_map: Vec<(HostPort, HostPort)>,
    },
}

impl Endpoint {
    /// The address to connect to for the data node the sentinels announce
    /// as `announced` (itself unless `nat_map` names it).
    pub(crate) fn reach(&self, announced: HostPort) -> HostPort {
        match self {
            Endpoint::Sentinel { nat_map, .. } => nat_map
                .iter()
                .find(|(from, _)| *from == announced)
                .map_or(announced, |(_, to)| to.clone()),
            Endpoint::Direct(..) => announced,
        }
    }
}

/// Whether a server that can evict quorate's keys is accepted
/// (`allow_eviction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EvictionPolicy {
    /// Refuse it at connect (the default).
    Refuse,
    /// Accept it: the user opted in to lock keys that may be evicted.
    Allow,
}

/// The parsed, Redis-specific part of a [`Config`].
pub(crate) struct Settings {
    pub(crate) endpoint: Endpoint,
    pub(crate) db: i64,
    username: Option<String>,
    password: Option<String>,
    pub(crate) namespace: String,
    /// What to do with a server whose configuration can evict keys.
    pub(crate) eviction: EvictionPolicy,
    /// Replicas that must acknowledge a grant before it returns (0: none).
    pub(crate) wait_replicas: u32,
    /// `Some` for `rediss://`.
    tls: Option<TlsSettings>,
    /// The URL, redacted, for messages.
    shown: String,
}

/// The TLS options of a `rediss://` URL.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct TlsSettings {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

/// The options every redis URL accepts.
const OPTIONS: &[&str] = &["namespace", "allow_eviction", "wait_replicas", "nat_map"];
/// The options of `rediss://` URLs.
const TLS_OPTIONS: &[&str] = &[
    "namespace",
    "allow_eviction",
    "wait_replicas",
    "nat_map",
    "tls_ca",
    "tls_cert",
    "tls_key",
];

impl Settings {
    /// Read `config`; reads the TLS files it names.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` for anything malformed or unknown, or an unreadable
    /// TLS file; `Unsupported` for `rediss://` without the `tls` feature.
    pub(crate) fn from_config(config: &Config) -> Result<Settings> {
        let bad = |why: String| Error::invalid_config(format!("`{config}`: {why}"));
        let read = |what: &str| -> Result<Option<Vec<u8>>> {
            config
                .option(what)
                .map(|path| {
                    std::fs::read(path)
                        .map_err(|e| bad(format!("cannot read the `{what}` file `{path}`: {e}")))
                })
                .transpose()
        };
        let scheme = config.scheme.as_str();
        if !SCHEMES.contains(&scheme) {
            return Err(bad(format!(
                "scheme `{scheme}` is not a redis scheme ({})",
                SCHEMES.join(", ")
            )));
        }
        let tls = if scheme == "rediss" {
            if !cfg!(feature = "tls") {
                return Err(Error::unsupported(format!(
                    "`{config}`: this build of quorate-redis has no `tls` feature"
                )));
            }
            config.reject_unknown_options(TLS_OPTIONS)?;
            if config.option("tls_cert").is_some() != config.option("tls_key").is_some() {
                return Err(bad("give both `tls_cert` and `tls_key`, or neither".into()));
            }
            let client = match (read("tls_cert")?, read("tls_key")?) {
                (Some(c), Some(k)) => Some((c, k)),
                _ => None,
            };
            Some(TlsSettings {
                ca: read("tls_ca")?,
                client,
            })
        } else {
            if let Some(k) = config.options.keys().find(|k| k.starts_with("tls_")) {
                return Err(bad(format!("option `{k}` needs a rediss:// (TLS) URL")));
            }
            config.reject_unknown_options(OPTIONS)?;
            None
        };

        let parse_db = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| bad(format!("the database must be a number, got `{s}`")))
        };
        let (endpoint, db) = if scheme == "redis+sentinel" {
            if config.endpoints.is_empty() {
                return Err(bad("name at least one sentinel host:port".into()));
            }
            let sentinels = config
                .endpoints
                .iter()
                .map(|e| {
                    split_host_port(e, 26379).ok_or_else(|| {
                        bad(format!(
                            "`{e}` is not `host`, `host:port` or `[v6addr]:port`"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (service, db) = match config.path.split_once('/') {
                Some((s, d)) => (s, parse_db(d)?),
                None => (config.path.as_str(), 0),
            };
            if service.is_empty() {
                return Err(bad(
                    "the path must name the sentinel service: redis+sentinel://host:port/<service>[/db]"
                        .into(),
                ));
            }
            let nat_map = match config.option("nat_map") {
                None => Vec::new(),
                Some(m) => parse_nat_map(m).map_err(bad)?,
            };
            (
                Endpoint::Sentinel {
                    sentinels,
                    service: service.to_owned(),
                    nat_map,
                },
                db,
            )
        } else {
            if config.option("nat_map").is_some() {
                return Err(bad(
                    "`nat_map` maps the addresses sentinels announce: it needs a redis+sentinel:// URL"
                        .into(),
                ));
            }
            let [endpoint] = config.endpoints.as_slice() else {
                return Err(bad(format!(
                    "a {scheme}:// URL names exactly one host:port, got {}",
                    config.endpoints.len()
                )));
            };
            let (host, port) = split_host_port(endpoint, 6379).ok_or_else(|| {
                bad(format!(
                    "`{endpoint}` is not `host`, `host:port` or `[v6addr]:port`"
                ))
            })?;
            let db = if config.path.is_empty() {
                0
            } else {
                parse_db(&config.path)?
            };
            (Endpoint::Direct(host, port), db)
        };

        let namespace = config
            .option("namespace")
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned();
        if namespace.is_empty()
            || !namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        {
            return Err(bad(format!(
                "namespace `{namespace}` must be non-empty and use only letters, digits, `.`, `_`, `-`, `/`"
            )));
        }
        let eviction = match config.option("allow_eviction") {
            None | Some("false") => EvictionPolicy::Refuse,
            Some("true") => EvictionPolicy::Allow,
            Some(other) => {
                return Err(bad(format!(
                    "`allow_eviction` is `true` or `false`, got `{other}`"
                )))
            }
        };
        let wait_replicas = match config.option("wait_replicas") {
            None => 0,
            Some(n) => n.parse::<u32>().ok().filter(|n| *n <= 64).ok_or_else(|| {
                bad(format!(
                    "`wait_replicas` is a number of replicas (0 to 64), got `{n}`"
                ))
            })?,
        };
        Ok(Settings {
            endpoint,
            db,
            username: config.username.clone(),
            password: config.password.as_ref().map(|p| p.expose().to_owned()),
            namespace,
            eviction,
            wait_replicas,
            tls,
            shown: config.redacted(),
        })
    }

    /// A client for the data node at `host:port`.
    ///
    /// # Errors
    ///
    /// `InvalidConfig` when the client library refuses the settings (a bad
    /// certificate file, for instance).
    pub(crate) fn client(&self, host: &str, port: u16) -> Result<redis::Client> {
        use redis::IntoConnectionInfo;
        let bad = |e: redis::RedisError| Error::invalid_config(format!("`{}`: {e}", self.shown));
        let mut node = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            node = node.set_username(u);
        }
        if let Some(p) = &self.password {
            node = node.set_password(p);
        }
        let addr = match &self.tls {
            None => redis::ConnectionAddr::Tcp(host.to_owned(), port),
            Some(_) => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
        };
        let info = addr
            .into_connection_info()
            .map_err(bad)?
            .set_redis_settings(node);
        match &self.tls {
            None => redis::Client::open(info).map_err(bad),
            #[cfg(feature = "tls")]
            Some(tls) => {
                // rustls needs a process-wide crypto provider; install ring's
                // unless the application installed one.
                let _ = rustls::crypto::ring::default_provider().install_default();
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: tls.client.as_ref().map(|(c, k)| redis::ClientTlsConfig {
                            client_cert: c.clone(),
                            client_key: k.clone(),
                        }),
                        root_cert: tls.ca.clone(),
                    },
                )
                .map_err(bad)
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(Error::unsupported("rediss:// needs the `tls` feature")),
        }
    }
}

/// `A:P=B:Q[,C:R=D:S…]`: each announced address, with its port, and the
/// address to reach it at.
fn parse_nat_map(map: &str) -> std::result::Result<Vec<(HostPort, HostPort)>, String> {
    let mut pairs: Vec<(HostPort, HostPort)> = Vec::new();
    for entry in map.split(',') {
        let addr =
            |a: &str| {
                split_host_port(a, 0).filter(|(_, p)| *p != 0).ok_or_else(|| {
                format!("`nat_map` entry `{entry}`: `{a}` is not `host:port` or `[v6addr]:port`")
            })
            };
        let Some((from, to)) = entry.split_once('=') else {
            return Err(format!(
                "`nat_map` entries are `announced-host:port=reached-host:port`, got `{entry}`"
            ));
        };
        let (from, to) = (addr(from)?, addr(to)?);
        if pairs.iter().any(|(f, _)| *f == from) {
            return Err(format!("`nat_map` maps `{}:{}` twice", from.0, from.1));
        }
        pairs.push((from, to));
    }
    Ok(pairs)
}

/// `host`, `host:port` or `[v6]:port`, with a default port.
fn split_host_port(endpoint: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match endpoint.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (endpoint, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    Some((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use quorate_core::ErrorKind;

    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_config(&Config::parse(url)?)
    }

    #[test]
    fn parses_urls() {
        let s = settings("redis://alice:pw@127.0.0.1:7000/3?namespace=app&ttl=2s").unwrap();
        assert_eq!(s.endpoint, Endpoint::Direct("127.0.0.1".into(), 7000));
        assert_eq!(s.db, 3);
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.namespace, "app");
        assert!(!s.shown.contains("pw"));
        let s = settings("redis://localhost").unwrap();
        assert_eq!(s.endpoint, Endpoint::Direct("localhost".into(), 6379));
        assert_eq!((s.db, s.namespace.as_str()), (0, "quorate"));
        let s = settings("redis://[::1]:6380").unwrap();
        assert_eq!(s.endpoint, Endpoint::Direct("::1".into(), 6380));
        let s = settings("redis+sentinel://a:1,b/svc/2?namespace=n").unwrap();
        assert_eq!(
            s.endpoint,
            Endpoint::Sentinel {
                sentinels: vec![("a".into(), 1), ("b".into(), 26379)],
                service: "svc".into(),
                nat_map: Vec::new(),
            }
        );
        assert_eq!(s.db, 2);
        assert_eq!(s.eviction, EvictionPolicy::Refuse);
        let s = settings("redis://h:1?allow_eviction=true").unwrap();
        assert_eq!(s.eviction, EvictionPolicy::Allow);
        let s = settings("redis://h:1?allow_eviction=false").unwrap();
        assert_eq!(s.eviction, EvictionPolicy::Refuse);
        assert_eq!(s.wait_replicas, 0);
        let s = settings("redis://h:1?wait_replicas=2").unwrap();
        assert_eq!(s.wait_replicas, 2);
    }

    #[test]
    fn nat_map_reaches_announced_addresses_elsewhere() {
        let s = settings(
            "redis+sentinel://a:1/svc?nat_map=10.0.0.5:6379=127.0.0.1:16379,[fd00::1]:6380=h:2",
        )
        .unwrap();
        let reach = |h: &str, p| s.endpoint.reach((h.into(), p));
        assert_eq!(reach("10.0.0.5", 6379), ("127.0.0.1".into(), 16379));
        assert_eq!(reach("fd00::1", 6380), ("h".into(), 2));
        // Unmapped: the announced address itself (another port too).
        assert_eq!(reach("10.0.0.5", 6380), ("10.0.0.5".into(), 6380));
        for url in [
            "redis://h:1?nat_map=a:1=b:2",
            "redis+sentinel://a:1/svc?nat_map=",
            "redis+sentinel://a:1/svc?nat_map=a:1",
            "redis+sentinel://a:1/svc?nat_map=a=b:2",
            "redis+sentinel://a:1/svc?nat_map=a:1=b",
            "redis+sentinel://a:1/svc?nat_map=a:1=b:0",
            "redis+sentinel://a:1/svc?nat_map=a:1=b:70000",
            "redis+sentinel://a:1/svc?nat_map=a:1=b:2,a:1=c:3",
            "redis+sentinel://a:1/svc?nat_map=a:1=b:2,",
        ] {
            let e = settings(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
            assert!(e.to_string().contains("nat_map"), "{url}: {e}");
        }
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "redis://h:1?bogus=1",
            "redis://h:1/x",
            "redis://h:1/-1",
            "redis://h:notaport",
            "redis://h:0",
            "redis://a:1,b:2",
            "redis://",
            "redis://h:1?namespace=a:b",
            "redis://h:1?namespace=",
            "redis://h:1?allow_eviction=yes",
            "redis://h:1?allow_eviction=",
            "redis://h:1?wait_replicas=-1",
            "redis://h:1?wait_replicas=x",
            "redis://h:1?wait_replicas=1000",
            "redis://h:1?tls_ca=/x",
            "rediss://h:1?tls_cert=/x",
            "rediss://h:1?tls_insecure=true",
            "rediss://h:1?bogus=1",
            "rediss://h:1?tls_ca=/nonexistent/ca.pem",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/svc/x",
            "redis+sentinel:///svc",
            "etcd://h:1",
        ] {
            let e = settings(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        }
    }
}
