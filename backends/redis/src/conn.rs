//! The connection to the data node: a `redis` `ConnectionManager` (it
//! reconnects by itself) and, for `redis+sentinel://`, following the
//! primary; at connect, a check that the server cannot evict quorate's
//! keys (see [`eviction_risk`]). Following the
//! primary: when a command fails as if the node were gone or demoted
//! (connection errors, `READONLY`, `MASTERDOWN`), the sentinels are asked
//! again (at most every 100 ms) and, if they name another primary, the
//! connection and the pub/sub hub move to it.

use std::sync::{Mutex as StdMutex, RwLock as StdRwLock};
use std::time::Duration;

use quorate_core::{Config, Error, Result};
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::redis_error;
use crate::settings::{Endpoint, EvictionPolicy, Settings};

/// The data connection of one coordinator.
pub(crate) struct Conn {
    manager: StdRwLock<ConnectionManager>,
    /// A second connection for `WAIT` (`wait_replicas`): `WAIT` blocks the
    /// connection it runs on, which must not stall every other command.
    waiter: StdRwLock<ConnectionManager>,
    follow: Option<Follow>,
}

/// What following a Sentinel-managed primary needs.
struct Follow {
    settings: Settings,
    sentinels: Vec<(String, u16)>,
    service: String,
    timeout: Duration,
    primary: StdMutex<(String, u16)>,
    /// When the sentinels were last asked; held while asking.
    asked: tokio::sync::Mutex<Option<Instant>>,
}

impl Conn {
    /// Find the data node, check that it answers and accepts the
    /// credentials within the connect timeout, and set up the manager.
    /// Returns the client too (for the pub/sub hub).
    ///
    /// # Errors
    ///
    /// `Unavailable`, `Unauthenticated`, or `InvalidConfig` (an unknown
    /// sentinel service).
    pub(crate) async fn open(settings: Settings, config: &Config) -> Result<(Conn, redis::Client)> {
        let timeout = config.connect_timeout;
        let started = Instant::now();
        let (host, port) = match &settings.endpoint {
            Endpoint::Direct(h, p) => (h.clone(), *p),
            Endpoint::Sentinel {
                sentinels, service, ..
            } => settings
                .endpoint
                .reach(resolve_primary(sentinels, service, timeout).await?),
        };
        let client = settings.client(&host, port)?;
        let left = timeout.saturating_sub(started.elapsed());
        check(
            &client,
            left,
            &format!("connecting to {config} ({host}:{port})"),
            settings.eviction,
        )
        .await?;
        let manager = manager(&client, timeout)?;
        let waiter = self::manager(&client, timeout)?;
        let follow = match &settings.endpoint {
            Endpoint::Direct(..) => None,
            Endpoint::Sentinel {
                sentinels, service, ..
            } => Some(Follow {
                sentinels: sentinels.clone(),
                service: service.clone(),
                timeout,
                primary: StdMutex::new((host, port)),
                asked: tokio::sync::Mutex::new(None),
                settings,
            }),
        };
        Ok((
            Conn {
                manager: StdRwLock::new(manager),
                waiter: StdRwLock::new(waiter),
                follow,
            },
            client,
        ))
    }

    /// The current manager (a cheap clone).
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.read().unwrap().clone()
    }

    /// The connection `WAIT` runs on (a cheap clone).
    pub(crate) fn waiter(&self) -> ConnectionManager {
        self.waiter.read().unwrap().clone()
    }

    /// After a failed command: when following a primary and the error says
    /// the node may be gone or demoted, ask the sentinels again; returns the
    /// client of the new primary if there is one (the connection has moved).
    pub(crate) async fn after_error(&self, e: &redis::RedisError) -> Option<redis::Client> {
        let follow = self.follow.as_ref()?;
        let node_gone = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"));
        if !node_gone {
            return None;
        }
        let Ok(mut asked) = follow.asked.try_lock() else {
            return None;
        };
        if asked.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return None;
        }
        *asked = Some(Instant::now());
        let found = resolve_primary(&follow.sentinels, &follow.service, follow.timeout).await;
        let (host, port) = match found {
            Ok(addr) => follow.settings.endpoint.reach(addr),
            Err(e) => {
                tracing::debug!(error = %e, "asking the sentinels failed");
                return None;
            }
        };
        if *follow.primary.lock().unwrap() == (host.clone(), port) {
            return None;
        }
        let client = follow.settings.client(&host, port).ok()?;
        let manager = manager(&client, follow.timeout).ok()?;
        let waiter = self::manager(&client, follow.timeout).ok()?;
        *self.manager.write().unwrap() = manager;
        *self.waiter.write().unwrap() = waiter;
        *follow.primary.lock().unwrap() = (host.clone(), port);
        tracing::info!(%host, port, service = %follow.service, "following the new redis primary");
        Some(client)
    }
}

fn manager(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| redis_error("creating the connection manager", e))
}

/// What `CONFIG GET` said about the server's eviction settings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EvictionSettings {
    /// `maxmemory` and `maxmemory-policy` as the server reported them.
    Known {
        /// `maxmemory` in bytes (0: no limit).
        maxmemory: String,
        /// `maxmemory-policy`.
        policy: String,
    },
    /// `CONFIG GET` is not allowed (an ACL without `+config`, a renamed
    /// command on a managed Redis): the reason.
    Unknown(String),
}

/// Why a server with these eviction settings can drop quorate's keys
/// (`None`: it cannot). Every lock, session and member key has a TTL, so
/// even the `volatile-*` policies can evict them; only `noeviction` (or no
/// `maxmemory`) keeps them.
pub(crate) fn eviction_risk(maxmemory: &str, policy: &str) -> Option<String> {
    let limited = maxmemory.trim().parse::<u64>().map_or(true, |m| m > 0);
    (limited && policy.trim() != "noeviction").then(|| {
        format!(
            "the server can evict quorate's keys (maxmemory {maxmemory} with maxmemory-policy {policy}): \
             a lock key evicted under memory pressure is granted to another client before its \
             holder is told. Set `maxmemory-policy noeviction` (or `maxmemory 0`) on the server, \
             or add `allow_eviction=true` to the URL to accept that risk"
        )
    })
}

/// Read `maxmemory` and `maxmemory-policy` on connection `c`.
async fn eviction_settings(
    c: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<EvictionSettings> {
    let mut found = Vec::new();
    for name in ["maxmemory", "maxmemory-policy"] {
        let reply = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async::<std::collections::HashMap<String, String>>(c)
            .await;
        match reply {
            Ok(map) => found.push(map.get(name).cloned().unwrap_or_default()),
            Err(e)
                if e.code() == Some("NOPERM")
                    || e.to_string()
                        .to_ascii_lowercase()
                        .contains("unknown command") =>
            {
                return Ok(EvictionSettings::Unknown(e.to_string()))
            }
            Err(e) => return Err(e),
        }
    }
    let policy = found.pop().unwrap_or_default();
    let maxmemory = found.pop().unwrap_or_default();
    Ok(EvictionSettings::Known { maxmemory, policy })
}

/// One direct connection, a `PING` and the eviction check: a clear
/// `Unavailable` or `Unauthenticated` within `timeout`, rather than the
/// manager's retries, and `InvalidConfig` for a server that can evict
/// quorate's keys unless `eviction` allows it.
async fn check(
    client: &redis::Client,
    timeout: Duration,
    what: &str,
    eviction: EvictionPolicy,
) -> Result<()> {
    let direct = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let ping = async {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&direct)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut c).await?;
        eviction_settings(&mut c).await
    };
    let settings = match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(redis_error(what, e)),
        Err(_) => {
            return Err(Error::unavailable(format!(
                "{what}: no answer within {timeout:?} (connect_timeout)"
            )))
        }
    };
    match (settings, eviction) {
        (EvictionSettings::Known { maxmemory, policy }, EvictionPolicy::Refuse) => {
            match eviction_risk(&maxmemory, &policy) {
                Some(why) => Err(Error::invalid_config(format!("{what}: {why}"))),
                None => Ok(()),
            }
        }
        (EvictionSettings::Known { maxmemory, policy }, EvictionPolicy::Allow) => {
            if let Some(why) = eviction_risk(&maxmemory, &policy) {
                tracing::warn!("{what}: allow_eviction=true: {why}");
            }
            Ok(())
        }
        (EvictionSettings::Unknown(why), _) => {
            tracing::warn!(
                "{what}: cannot read the server's eviction settings ({why}): whether it can \
                 evict quorate's keys is unverified; make sure `maxmemory-policy` is \
                 `noeviction` (or `maxmemory` is 0)"
            );
            Ok(())
        }
    }
}

/// Ask the sentinels, in order, for the primary of `service`.
async fn resolve_primary(
    sentinels: &[(String, u16)],
    service: &str,
    timeout: Duration,
) -> Result<(String, u16)> {
    let mut unknown = 0;
    let mut failures = Vec::new();
    for (host, port) in sentinels {
        let ask = async {
            let client = redis::Client::open(redis::ConnectionAddr::Tcp(host.clone(), *port))?;
            let direct = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let mut c = client
                .get_multiplexed_async_connection_with_config(&direct)
                .await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(service)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(Some(addr))) => return Ok(addr),
            Ok(Ok(None)) => unknown += 1,
            Ok(Err(e)) => failures.push(format!("{host}:{port}: {e}")),
            Err(_) => failures.push(format!("{host}:{port}: no answer within {timeout:?}")),
        }
    }
    if unknown > 0 && failures.is_empty() {
        return Err(Error::invalid_config(format!(
            "no sentinel knows the service `{service}`"
        )));
    }
    Err(Error::unavailable(format!(
        "no sentinel named the primary of `{service}`: {}",
        failures.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::eviction_risk;

    #[test]
    fn only_noeviction_or_no_limit_is_safe() {
        assert_eq!(eviction_risk("0", "allkeys-lru"), None);
        assert_eq!(eviction_risk("1048576", "noeviction"), None);
        for policy in [
            "volatile-lru",
            "volatile-lfu",
            "volatile-ttl",
            "volatile-random",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
        ] {
            let why = eviction_risk("1048576", policy).expect(policy);
            assert!(
                why.contains("maxmemory-policy") && why.contains(policy),
                "{why}"
            );
            assert!(why.contains("allow_eviction=true"), "{why}");
        }
    }
}
