//! quorate-redis: the Redis backend of quorate:
//! `redis://[user:pass@]host:port[/db][?ttl=10s&namespace=quorate]`,
//! `rediss://…` (TLS), and `redis+sentinel://s1,s2/<service>[/db]` (follows
//! a Sentinel-managed primary). URL forms and options: `settings.rs`.
//!
//! - **Session**: a liveness key `<ns>:session:<id>` with a PX TTL; one
//!   keep-alive script per round extends it and every key the session holds
//!   (listed in its held hash), and reports grants found gone.
//! - **Mutex**: `<ns>:lock:<enc(name)>` is a plain string holding the owner
//!   token with a PX TTL, so a redis-py `Lock` on the same key and quorate
//!   exclude each other. Waiters queue FIFO in `<ns>:queue:<enc(name)>`; a
//!   release grants the next waiter on its behalf and tells it on its
//!   session's pub/sub channel. Every multi-key step is one Lua script (a
//!   Redis 7 function library loaded once per server, `EVALSHA` where there
//!   are no functions: `scripts.rs`); the fencing token is the counter plus
//!   one (floored at the server clock) in the granting script. An
//!   uncontended acquire is 7 commands, its release 5. Owner tokens are
//!   `quorate:<sid>:<n>`; a value without that prefix (a redis-py token of
//!   any shape) is never voided or taken over.
//! - **RwLock**: one name, one lock: the write side is the mutex; readers
//!   wait in the mutex's queue as `r<token>` and, once granted, mark the
//!   lock key `quorate:shared` (so a redis-py `Lock` cannot take it) and
//!   draw fences from the same counter; a waiting writer blocks later
//!   readers.
//! - **Election**: an exclusive lock in its own key space plus the leader's
//!   value; observers follow pub/sub.
//! - **Group**: a hash per group plus a TTL key per member, stale members
//!   swept atomically, versioned events over pub/sub with a re-list and
//!   diff after every reconnect.
//!
//! At connect, a server whose configuration can evict keys (`maxmemory`
//! with a policy other than `noeviction`) is refused unless the URL says
//! `allow_eviction=true`.
//!
//! The full key layout is in `keys.rs`. A single Redis does not keep mutual
//! exclusion across a failover or a restart without persistence (locks are
//! simply gone): [`capabilities`] says so.
#![warn(missing_docs)]

mod conn;
mod election;
mod group;
mod hub;
mod inspect;
mod keys;
mod mutex;
mod queue;
mod rwlock;
mod scripts;
mod session;
mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{
    Acquire, Acquired, Backend, HeldLeadership, HeldMembership, RawGroupWatch, RawObserve,
    SessionBackend,
};
use quorate_core::{
    Capabilities, Config, Coordinator, Error, ErrorKind, FailureDetection, Primitives, Result,
    RwOrdering, Scope,
};
use quorate_core::{Leader, LockKind, Member};
use redis::FromRedisValue;

use conn::Conn;
use hub::Hub;
use session::RedisSession;
use settings::Settings;

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["redis", "rediss", "redis+sentinel"];

/// The default key namespace.
pub const DEFAULT_NAMESPACE: &str = "quorate";

/// What the Redis backend declares.
///
/// A single Redis (or a Sentinel failover, with asynchronous replication)
/// can lose a granted lock: `survives_failover` and
/// `exclusive_across_failover` are `false`: after a failover to a replica
/// that missed the last grants, fences can go backwards (they are monotonic
/// only without failover). `exclusive_across_clock_steps` is `false`: a
/// forward step of the server's wall clock (Redis expires keys by it) can
/// grant a lock to another client before its holder is told.
/// Dead holders are detected by their lease TTL.
pub fn capabilities() -> Capabilities {
    let mut c = Capabilities::new("redis", Scope::Hosts, FailureDetection::LeaseTtl);
    c.fencing = true;
    c.fifo = true;
    c.rwlock_ordering = RwOrdering::Fifo;
    c.push_wakeups = true;
    c.exclusive_under_pause = false;
    c.survives_failover = false;
    c.exclusive_across_failover = false;
    // A stopped primary is a failover under Sentinel (same asynchronous
    // replication); a single server's pause is a lease question.
    c.exclusive_across_leader_stalls = false;
    c.exclusive_across_clock_steps = false;
    // Measured by `restart_without_persistence`: another client is granted
    // a lock before its holder's next keep-alive finds the lease gone.
    c.exclusive_across_data_loss = false;
    c.external_revoke = true;
    c.primitives = Primitives::ALL;
    c
}

/// Connect to the Redis named by `config`, and check that it answers and
/// accepts the credentials.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] for a bad URL or option (unknown options
/// are refused), [`ErrorKind::Unavailable`] when the server cannot be
/// reached within `connect_timeout`, [`ErrorKind::Unauthenticated`] when it
/// refuses the credentials (or a `rediss://` server's certificate is not
/// trusted), [`ErrorKind::Unsupported`] for `rediss://` in a build without
/// the `tls` feature. The URL forms and options are described in
/// `settings.rs`: `redis://`, `rediss://` (`tls_ca`, `tls_cert`,
/// `tls_key`), `redis+sentinel://s1,s2/<service>[/db]`.
pub async fn connect(config: &Config) -> Result<Coordinator> {
    let settings = Settings::from_config(config)?;
    let namespace = settings.namespace.clone();
    let wait_replicas = settings.wait_replicas;
    let (conn, client) = Conn::open(settings, config).await?;
    let hub = Hub::start(client, config.connect_timeout);
    tracing::debug!(url = %config, %namespace, "connected to redis");
    Ok(Coordinator::new(
        RedisBackend {
            ctx: Arc::new(Ctx {
                conn,
                ns: namespace,
                hub,
                ttl: config.ttl,
                wait_replicas,
                wait_timeout: config.connect_timeout / 2,
                scripts_only: AtomicBool::new(false),
            }),
        },
        config.clone(),
    ))
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
    /// Commands and scripts (reconnects by itself, follows a sentinel
    /// primary).
    pub(crate) conn: Conn,
    /// The key namespace.
    pub(crate) ns: String,
    /// Pub/sub wake-ups.
    pub(crate) hub: Hub,
    /// The configured TTL (fallback re-check interval of watchers).
    pub(crate) ttl: Duration,
    /// `wait_replicas`: replicas that must acknowledge a grant (0: none).
    pub(crate) wait_replicas: u32,
    /// How long `WAIT` waits for them (half the connect timeout, so the
    /// answer comes before the client gives up on the connection).
    pub(crate) wait_timeout: Duration,
    /// The server has no functions (or the user may not use them): run
    /// the scripts with `EVALSHA` from now on.
    pub(crate) scripts_only: AtomicBool,
}

/// The server cannot run quorate's functions: it has none (`unknown
/// command` before Redis 7) or the ACL denies `FCALL`/`FUNCTION`.
/// Messages: `ERR unknown command 'FCALL', …` (`FCALL` in backquotes
/// before Redis 7), `NOPERM … run the 'fcall' command` (`'function|load'`).
fn no_functions(e: &redis::RedisError) -> bool {
    let msg = e.to_string().to_ascii_lowercase();
    let named = |cmd: &str| {
        [format!("'{cmd}'"), format!("`{cmd}`"), format!("'{cmd}|")]
            .iter()
            .any(|m| msg.contains(m.as_str()))
    };
    (msg.contains("unknown command") || e.code() == Some("NOPERM"))
        && (named("fcall") || named("function"))
}

/// The server does not know the function called (the library is not
/// loaded there).
fn function_missing(e: &redis::RedisError) -> bool {
    e.to_string()
        .to_ascii_lowercase()
        .contains("function not found")
}

impl Ctx {
    /// Run a script with the namespace as its first argument: `FCALL` of
    /// its function in the library (loaded when the server does not know
    /// it), or, on a server without functions, `EVALSHA`/`EVAL` of the
    /// whole script (see `scripts.rs`).
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        what: &str,
        script: &scripts::Script,
        args: &[&[u8]],
    ) -> Result<T> {
        let mut conn = self.conn.manager();
        if !self.scripts_only.load(Ordering::Relaxed) {
            let mut fcall = redis::cmd("FCALL");
            fcall.arg(script.function()).arg(0).arg(self.ns.as_bytes());
            for a in args {
                fcall.arg(*a);
            }
            let mut loaded = false;
            loop {
                let e = match fcall.query_async(&mut conn).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                if no_functions(&e) {
                    tracing::info!(
                        error = %e,
                        "redis functions are not available (a server before Redis 7, or an ACL \
                         without FCALL/FUNCTION): running quorate's scripts with EVALSHA"
                    );
                    self.scripts_only.store(true, Ordering::Relaxed);
                    break;
                }
                if loaded || !function_missing(&e) {
                    return Err(self.failed(what, e).await);
                }
                // A server that does not know the library (first use,
                // restart, failover, FUNCTION FLUSH): load it, call again.
                let load = redis::cmd("FUNCTION")
                    .arg("LOAD")
                    .arg("REPLACE")
                    .arg(&scripts::LIBRARY.code)
                    .query_async::<String>(&mut conn)
                    .await;
                match load {
                    Ok(_) => {
                        tracing::debug!(library = %scripts::LIBRARY.name, "loaded the redis function library");
                        loaded = true;
                    }
                    Err(e) if no_functions(&e) => {
                        tracing::info!(
                            error = %e,
                            "cannot load quorate's redis function library: running its \
                             scripts with EVALSHA"
                        );
                        self.scripts_only.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        return Err(self
                            .failed("loading quorate's redis function library", e)
                            .await)
                    }
                }
            }
        }
        let mut inv = script.eval_script().prepare_invoke();
        inv.arg(self.ns.as_bytes());
        for a in args {
            inv.arg(*a);
        }
        match inv.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(what, e).await),
        }
    }

    /// With `wait_replicas=N`: return once N replicas have acknowledged
    /// every write made so far — in particular the grant (ours, or made on
    /// our behalf by a release) the caller has just learnt of. A `PUBLISH`
    /// (replicated, no key) on the `WAIT` connection followed by `WAIT`, in
    /// one pipeline on one connection: the replication stream is ordered,
    /// so acknowledging the later `PUBLISH` acknowledges the grant.
    ///
    /// # Errors
    ///
    /// `Unavailable` when fewer replicas acknowledged within the wait
    /// timeout (the caller then releases the grant instead of returning
    /// it), or the server could not be reached.
    pub(crate) async fn replicated(&self) -> Result<()> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let timeout_ms = self.wait_timeout.as_millis().max(1) as u64;
        let mut conn = self.conn.waiter();
        let (acked,): (i64,) = redis::pipe()
            .cmd("PUBLISH")
            .arg(self.key("chan", "replicated"))
            .arg("1")
            .ignore()
            .cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(timeout_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("waiting for replicas", e))?;
        if acked < i64::from(self.wait_replicas) {
            return Err(Error::unavailable(format!(
                "the grant was acknowledged by {acked} of the {} replicas `wait_replicas` asks for within {:?}; it was given up",
                self.wait_replicas, self.wait_timeout
            )));
        }
        Ok(())
    }

    /// Run one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, what: &str, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.conn.manager();
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(what, e).await),
        }
    }

    /// Every key matching the glob `pattern`, by `SCAN` (in no order, and
    /// possibly with repeats, as `SCAN` promises: callers sort or dedup).
    ///
    /// # Errors
    ///
    /// The first failing `SCAN` call's error, as [`Ctx::query`] maps it.
    pub(crate) async fn scan(&self, what: &str, pattern: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    what,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            out.extend(batch);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Map a failure, moving to a new sentinel primary if there is one.
    async fn failed(&self, what: &str, e: redis::RedisError) -> Error {
        if let Some(client) = self.conn.after_error(&e).await {
            self.hub.switch(client);
        }
        redis_error(what, e)
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
        let listing = group::list(&self.ctx, group).await?;
        Ok(listing.members.into_iter().map(|m| m.member).collect())
    }

    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch> {
        group::watch(self.ctx.clone(), group).await
    }

    async fn leader(&self, name: &str) -> Result<Option<Leader>> {
        Ok(election::leader(&self.ctx, name).await?.0)
    }

    async fn observe(&self, name: &str) -> Result<RawObserve> {
        election::observe(self.ctx.clone(), name).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.ctx
            .query("read", redis::cmd("GET").arg(self.ctx.key("data", key)))
            .await
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let pattern = format!("{}:*", self.ctx.ns);
        let mut out = self.ctx.scan("list leftovers", &pattern).await?;
        out.retain(|k| {
            keys::kind_of(&self.ctx.ns, k)
                .is_some_and(|kind| !keys::PERSISTENT_KINDS.contains(&kind))
        });
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn locks(&self, prefix: &str) -> Result<Vec<quorate_core::LockState>> {
        inspect::locks(&self.ctx, prefix).await
    }
}

#[async_trait]
impl SessionBackend for RedisSession {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn ttl(&self) -> Duration {
        RedisSession::ttl(self)
    }

    async fn keep_alive(&self) -> Result<()> {
        RedisSession::keep_alive(self).await
    }

    async fn revoke(&self) -> Result<()> {
        RedisSession::revoke(self).await
    }

    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired> {
        let wait = mode.waits();
        let held = match kind {
            // One name, one lock: the write side is the mutex.
            LockKind::Mutex | LockKind::Write => mutex::lock(self, name, wait, loss).await,
            LockKind::Read => rwlock::read(self, name, wait, loss).await,
        };
        held.map(Acquired::from)
    }

    async fn join(
        &self,
        group: &str,
        member: &str,
        capabilities: &serde_json::Value,
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldMembership>> {
        group::join(self, group, member, capabilities, loss).await
    }

    async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>> {
        election::campaign(self, name, value, loss).await
    }
}
