//! quorate-redis: the Redis backend of quorate
//! (`redis://[user:pass@]host:port[/db][?ttl=10s&namespace=quorate]`).
//!
//! - **Session**: a liveness key `<ns>:session:<id>` with a PX TTL; one
//!   keep-alive script per round extends it and every key the session holds
//!   (listed in its held hash), and reports grants found gone.
//! - **Mutex**: `<ns>:lock:<enc(name)>` is a plain string holding the owner
//!   token with a PX TTL, so a redis-py `Lock` on the same key and quorate
//!   exclude each other. Waiters queue FIFO in `<ns>:queue:<enc(name)>` and
//!   are woken through pub/sub; every multi-key step is one Lua script;
//!   the fencing token is an `INCR` in the granting script.
//! - **RwLock**: one FIFO queue of `r`/`w` entries per lock; a waiting writer
//!   blocks later readers.
//! - **Election**: an exclusive lock in its own key space plus the leader's
//!   value; observers follow pub/sub.
//! - **Group**: a hash per group plus a TTL key per member, stale members
//!   swept atomically, versioned events over pub/sub with a re-list and
//!   diff after every reconnect.
//!
//! The full key layout is in `keys.rs`. A single Redis does not keep mutual
//! exclusion across a failover or a restart without persistence (locks are
//! simply gone): [`capabilities`] says so.
#![warn(missing_docs)]

mod election;
mod group;
mod hub;
mod keys;
mod mutex;
mod rwlock;
mod scripts;
mod session;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{Backend, GroupEvent, Leader, Member, SessionBackend};
use quorate_core::{
    Capabilities, Config, Coordinator, Error, ErrorKind, FailureDetection, Primitives, Result,
    RwOrdering, Scope,
};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, FromRedisValue};

use hub::Hub;

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["redis", "rediss", "redis+sentinel"];

/// The default key namespace.
pub const DEFAULT_NAMESPACE: &str = "quorate";

/// What the Redis backend declares.
///
/// A single Redis (or a Sentinel failover, with asynchronous replication)
/// can lose a granted lock: `survives_failover` is `false`. Dead holders
/// are detected by their lease TTL.
pub fn capabilities() -> Capabilities {
    Capabilities {
        backend: "redis",
        scope: Scope::Hosts,
        failure_detection: FailureDetection::LeaseTtl,
        fencing: true,
        fifo: true,
        rwlock_ordering: RwOrdering::Fifo,
        push_wakeups: true,
        exclusive_under_pause: false,
        survives_failover: false,
        external_revoke: true,
        primitives: Primitives {
            mutex: true,
            rwlock: true,
            group: true,
            election: true,
            guarded_writes: true,
        },
    }
}

/// Connect to the Redis named by `config`, and check that it answers and
/// accepts the credentials.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] for a bad URL or option (unknown options
/// are refused), [`ErrorKind::Unavailable`] when the server cannot be
/// reached within `connect_timeout`, [`ErrorKind::Unauthenticated`] when it
/// refuses the credentials, [`ErrorKind::Unsupported`] for
/// `redis+sentinel://` (not implemented yet) and for `rediss://` in a build
/// without the `tls` feature.
///
/// `rediss://` options: `tls_ca=<PEM file>` (trust this CA instead of the
/// system roots), `tls_cert=<PEM file>` and `tls_key=<PEM file>` (a client
/// certificate). The server's certificate is always verified.
pub async fn connect(config: &Config) -> Result<Coordinator> {
    let settings = Settings::from_config(config)?;
    let client = settings.client(config)?;
    let timeout = config.connect_timeout;

    // One direct connection first: a clear Unavailable/Unauthenticated
    // within the connect timeout, rather than the manager's retries.
    let direct = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let check = async {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&direct)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut c).await
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(redis_error(&format!("connecting to {config}"), e)),
        Err(_) => {
            return Err(Error::unavailable(format!(
                "{config} did not answer within {timeout:?} (connect_timeout)"
            )))
        }
    }

    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
        .map_err(|e| redis_error("creating the connection manager", e))?;
    let hub = Hub::start(client, timeout);
    tracing::debug!(url = %config, namespace = %settings.namespace, "connected to redis");
    Ok(Coordinator::new(
        RedisBackend {
            ctx: Arc::new(Ctx {
                conn,
                ns: settings.namespace,
                hub,
                ttl: config.ttl,
            }),
        },
        config.clone(),
    ))
}

/// The parsed, Redis-specific part of a [`Config`].
struct Settings {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: Option<String>,
    namespace: String,
    /// `Some` for `rediss://`.
    tls: Option<TlsSettings>,
}

/// The TLS options of a `rediss://` URL.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct TlsSettings {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// The options every redis URL accepts.
const OPTIONS: &[&str] = &["namespace"];
/// The options of `rediss://` URLs.
const TLS_OPTIONS: &[&str] = &["namespace", "tls_ca", "tls_cert", "tls_key"];

impl Settings {
    fn from_config(config: &Config) -> Result<Settings> {
        let bad = |why: String| Error::invalid_config(format!("`{config}`: {why}"));
        let tls = match config.scheme.as_str() {
            "redis" => {
                if let Some(k) = config.options.keys().find(|k| k.starts_with("tls_")) {
                    return Err(bad(format!("option `{k}` needs a rediss:// (TLS) URL")));
                }
                config.reject_unknown_options(OPTIONS)?;
                None
            }
            "rediss" => {
                if !cfg!(feature = "tls") {
                    return Err(Error::unsupported(format!(
                        "`{config}`: this build of quorate-redis has no `tls` feature"
                    )));
                }
                config.reject_unknown_options(TLS_OPTIONS)?;
                let tls = TlsSettings {
                    ca: config.option("tls_ca").map(str::to_owned),
                    cert: config.option("tls_cert").map(str::to_owned),
                    key: config.option("tls_key").map(str::to_owned),
                };
                if tls.cert.is_some() != tls.key.is_some() {
                    return Err(bad("give both `tls_cert` and `tls_key`, or neither".into()));
                }
                Some(tls)
            }
            "redis+sentinel" => {
                return Err(Error::unsupported(format!(
                    "`{config}`: redis+sentinel:// is not implemented by quorate-redis yet"
                )))
            }
            other => {
                return Err(bad(format!(
                    "scheme `{other}` is not a redis scheme ({})",
                    SCHEMES.join(", ")
                )))
            }
        };
        let [endpoint] = config.endpoints.as_slice() else {
            return Err(bad(format!(
                "a redis:// URL names exactly one host:port, got {}",
                config.endpoints.len()
            )));
        };
        let (host, port) = split_host_port(endpoint).ok_or_else(|| {
            bad(format!(
                "`{endpoint}` is not `host`, `host:port` or `[v6addr]:port`"
            ))
        })?;
        let db = if config.path.is_empty() {
            0
        } else {
            config
                .path
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| {
                    bad(format!(
                        "the path must be a database number, got `/{}`",
                        config.path
                    ))
                })?
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
        Ok(Settings {
            host,
            port,
            db,
            username: config.username.clone(),
            password: config.password.as_ref().map(|p| p.expose().to_owned()),
            namespace,
            tls,
        })
    }

    /// The redis client (reading the TLS files, if any).
    fn client(&self, config: &Config) -> Result<redis::Client> {
        let bad = |e: redis::RedisError| Error::invalid_config(format!("`{config}`: {e}"));
        match &self.tls {
            None => redis::Client::open(self.connection_info()).map_err(bad),
            #[cfg(feature = "tls")]
            Some(tls) => {
                // rustls needs a process-wide crypto provider; install ring's
                // unless the application installed one.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let read = |what: &str, path: &str| {
                    std::fs::read(path).map_err(|e| {
                        Error::invalid_config(format!(
                            "`{config}`: cannot read `{what}` file `{path}`: {e}"
                        ))
                    })
                };
                let root_cert = tls.ca.as_deref().map(|p| read("tls_ca", p)).transpose()?;
                let client_tls = match (&tls.cert, &tls.key) {
                    (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                        client_cert: read("tls_cert", c)?,
                        client_key: read("tls_key", k)?,
                    }),
                    _ => None,
                };
                redis::Client::build_with_tls(
                    self.connection_info(),
                    redis::TlsCertificates {
                        client_tls,
                        root_cert,
                    },
                )
                .map_err(bad)
            }
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(Error::unsupported("rediss:// needs the `tls` feature")),
        }
    }

    fn connection_info(&self) -> redis::ConnectionInfo {
        use redis::IntoConnectionInfo;
        let mut redis_settings = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis_settings = redis_settings.set_username(u);
        }
        if let Some(p) = &self.password {
            redis_settings = redis_settings.set_password(p);
        }
        let addr = match &self.tls {
            None => redis::ConnectionAddr::Tcp(self.host.clone(), self.port),
            Some(_) => redis::ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            },
        };
        addr.into_connection_info()
            .expect("a TCP address is a valid connection info")
            .set_redis_settings(redis_settings)
    }
}

fn split_host_port(endpoint: &str) -> Option<(String, u16)> {
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
        None => 6379,
    };
    Some((host.to_owned(), port))
}

/// Turn a redis error into a quorate error of the right kind.
pub(crate) fn redis_error(what: &str, e: redis::RedisError) -> Error {
    let code = e.code().unwrap_or_default();
    if e.to_string().contains("invalid peer certificate") {
        // rustls refused the server's certificate: retrying cannot help.
        return Error::new(
            ErrorKind::Unauthenticated,
            format!("{what}: the server's TLS certificate is not trusted (see `tls_ca`): {e}"),
        )
        .with_source(e);
    }
    let kind = if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "WRONGPASS" | "NOAUTH")
    {
        ErrorKind::Unauthenticated
    } else if code == "NOPERM" {
        return Error::new(
            ErrorKind::Unauthenticated,
            format!("{what}: the redis user lacks a permission quorate needs: {e}"),
        );
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(code, "LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN")
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Backend
    };
    let message = match kind {
        ErrorKind::Unauthenticated => {
            format!("{what}: redis refused the credentials (wrong user name or password): {e}")
        }
        _ => format!("{what}: {e}"),
    };
    Error::new(kind, message).with_source(e)
}

/// What every part of the backend shares.
pub(crate) struct Ctx {
    /// Commands and scripts (reconnects by itself).
    pub(crate) conn: ConnectionManager,
    /// The key namespace.
    pub(crate) ns: String,
    /// Pub/sub wake-ups.
    pub(crate) hub: Hub,
    /// The configured TTL (fallback re-check interval of watchers).
    pub(crate) ttl: Duration,
}

impl Ctx {
    /// Run a script with the namespace as its first argument.
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        script: &redis::Script,
        args: &[&[u8]],
    ) -> Result<T> {
        let mut inv = script.prepare_invoke();
        inv.arg(self.ns.as_bytes());
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(what, e))
    }

    /// `<ns>:<kind>:<enc(name)>`.
    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        keys::key(&self.ns, kind, name)
    }

    /// The bounded fallback re-check interval for a wait blocked by
    /// something that expires in `blocker_ms` (negative: unknown/none).
    pub(crate) fn recheck_after(&self, ttl: Duration, blocker_ms: i64) -> Duration {
        let cap = (ttl / 2).max(Duration::from_millis(10));
        if blocker_ms >= 0 {
            (Duration::from_millis(blocker_ms as u64) + Duration::from_millis(5)).min(cap)
        } else {
            cap
        }
    }
}

/// A stream over an unbounded receiver (ends when every sender is gone).
pub(crate) fn receiver_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> BoxStream<'static, T> {
    use futures::StreamExt;
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

struct RedisBackend {
    ctx: Arc<Ctx>,
}

#[async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>> {
        Ok(Box::new(
            session::RedisSession::open(self.ctx.clone(), ttl, loss).await?,
        ))
    }

    async fn revoke_session(&self, session_id: &str) -> Result<()> {
        if !keys::is_session_id(session_id) {
            return Err(Error::invalid_name(format!(
                "`{session_id}` is not a redis session id"
            )));
        }
        if session::revoke(&self.ctx, session_id).await? {
            Ok(())
        } else {
            Err(Error::not_held(format!("no live session {session_id}")))
        }
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        Ok(group::list(&self.ctx, group).await?.members)
    }

    async fn watch_group(&self, group: &str) -> Result<BoxStream<'static, Result<GroupEvent>>> {
        group::watch(self.ctx.clone(), group).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        Ok(election::leader(&self.ctx, name).await?.0)
    }

    async fn observe(&self, name: &str) -> Result<BoxStream<'static, Result<Option<Leader>>>> {
        election::observe(self.ctx.clone(), name).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.ctx.conn.clone();
        conn.get(self.ctx.key("data", key))
            .await
            .map_err(|e| redis_error("read", e))
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let mut conn = self.ctx.conn.clone();
        let pattern = format!("{}:*", self.ctx.ns);
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error("list leftovers", e))?;
            out.extend(batch.into_iter().filter(|k| {
                keys::kind_of(&self.ctx.ns, k)
                    .is_some_and(|kind| !keys::PERSISTENT_KINDS.contains(&kind))
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<Settings> {
        Settings::from_config(&Config::parse(url)?)
    }

    #[test]
    fn parses_urls() {
        let s = settings("redis://alice:pw@127.0.0.1:7000/3?namespace=app&ttl=2s").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("127.0.0.1", 7000, 3));
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.namespace, "app");
        let s = settings("redis://localhost").unwrap();
        assert_eq!((s.port, s.db, s.namespace.as_str()), (6379, 0, "quorate"));
        let s = settings("redis://[::1]:6380").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 6380));
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
            "etcd://h:1",
        ] {
            let e = settings(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        }
        for url in [
            "redis://h:1?tls_ca=/x",
            "rediss://h:1?tls_cert=/x",
            "rediss://h:1?tls_insecure=true",
            "rediss://h:1?bogus=1",
        ] {
            let e = settings(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        }
        assert_eq!(
            settings("redis+sentinel://h:1/mymaster")
                .err()
                .unwrap()
                .kind(),
            ErrorKind::Unsupported
        );
        let s = settings("rediss://h:1?tls_ca=/ca.pem").unwrap();
        assert_eq!(s.tls.unwrap().ca.as_deref(), Some("/ca.pem"));
    }
}
