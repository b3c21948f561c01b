//! The connection to the data node: a `redis` `ConnectionManager` (it
//! reconnects by itself) and, for `redis+sentinel://`, following the
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
use crate::settings::{Endpoint, Settings};

/// The data connection of one coordinator.
pub(crate) struct Conn {
    manager: StdRwLock<ConnectionManager>,
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
            Endpoint::Sentinel { sentinels, service } => {
                resolve_primary(sentinels, service, timeout).await?
            }
        };
        let client = settings.client(&host, port)?;
        let left = timeout.saturating_sub(started.elapsed());
        check(
            &client,
            left,
            &format!("connecting to {config} ({host}:{port})"),
        )
        .await?;
        let manager = manager(&client, timeout)?;
        let follow = match &settings.endpoint {
            Endpoint::Direct(..) => None,
            Endpoint::Sentinel { sentinels, service } => Some(Follow {
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
                follow,
            },
            client,
        ))
    }

    /// The current manager (a cheap clone).
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.read().unwrap().clone()
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
            Ok(addr) => addr,
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
        *self.manager.write().unwrap() = manager;
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

/// One direct connection and a `PING`: a clear `Unavailable` or
/// `Unauthenticated` within `timeout`, rather than the manager's retries.
async fn check(client: &redis::Client, timeout: Duration, what: &str) -> Result<()> {
    let direct = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let ping = async {
        let mut c = client
            .get_multiplexed_async_connection_with_config(&direct)
            .await?;
        redis::cmd("PING").query_async::<()>(&mut c).await
    };
    match tokio::time::timeout(timeout, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(redis_error(what, e)),
        Err(_) => Err(Error::unavailable(format!(
            "{what}: no answer within {timeout:?} (connect_timeout)"
        ))),
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
