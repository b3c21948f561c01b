//! The raw baseline of `redis://`: the same operations with the `redis`
//! crate directly, no quorate in between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use quorate::{Config, Error, Result};
use redis::aio::{MultiplexedConnection, PubSubStream};

use super::{RawBaseline, Waiter, SETTLE};

/// `SET key token NX PX` (retried at once while taken) + `DEL key` for
/// acquire/release; a `PUBLISH` until it reaches a subscribed connection
/// for the hand-off.
pub struct RedisBaseline {
    conn: MultiplexedConnection,
    stream: Arc<tokio::sync::Mutex<PubSubStream>>,
    channel: String,
}

impl std::fmt::Debug for RedisBaseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBaseline").finish()
    }
}

fn err(e: redis::RedisError) -> Error {
    Error::unavailable(format!("raw redis baseline: {e}"))
}

impl RedisBaseline {
    /// Connect to the server of a `redis://` URL (host, port, database and
    /// credentials; quorate options are ignored).
    ///
    /// # Errors
    ///
    /// `Unsupported` for other schemes; `Unavailable` when unreachable.
    pub async fn connect(config: &Config) -> Result<RedisBaseline> {
        if config.scheme != "redis" {
            return Err(Error::unsupported(format!(
                "the raw redis baseline takes redis:// URLs, not {}://",
                config.scheme
            )));
        }
        let client = client_for(config)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(err)?;
        let channel = format!("bench-raw-{:016x}", rand::random::<u64>());
        let (mut sink, stream) = client.get_async_pubsub().await.map_err(err)?.split();
        sink.subscribe(&channel).await.map_err(err)?;
        Ok(RedisBaseline {
            conn,
            stream: Arc::new(tokio::sync::Mutex::new(stream)),
            channel,
        })
    }
}

/// A `redis` crate client for the server of a `redis://` URL (host, port,
/// database and credentials; quorate options are ignored).
pub(crate) fn client_for(config: &Config) -> Result<redis::Client> {
    let endpoint = config.endpoints.first().cloned().unwrap_or_default();
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_matches(['[', ']']).to_owned(),
            p.parse().unwrap_or(6379),
        ),
        None => (endpoint, 6379),
    };
    let mut node = redis::RedisConnectionInfo::default().set_db(config.path.parse().unwrap_or(0));
    if let Some(u) = &config.username {
        node = node.set_username(u);
    }
    if let Some(p) = &config.password {
        node = node.set_password(p.expose());
    }
    let info =
        redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(host, port))
            .map_err(err)?
            .set_redis_settings(node);
    redis::Client::open(info).map_err(err)
}

#[async_trait]
impl RawBaseline for RedisBaseline {
    fn describe(&self) -> String {
        "redis crate: SET NX PX (retried at once while taken) + DEL; PUBLISH until a subscriber task, idle for 5 ms, receives it".into()
    }

    async fn acquire_release(&self, key: &str) -> Result<()> {
        let mut c = self.conn.clone();
        // Contended (one shared key): retry at once, the fastest unfair
        // raw lock there is.
        loop {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg("raw-token")
                .arg("NX")
                .arg("PX")
                .arg(10_000)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            if set.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        redis::cmd("DEL")
            .arg(key)
            .query_async::<i64>(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn handoff(&self, _key: &str) -> Result<Duration> {
        let stream = self.stream.clone();
        let waiter = Waiter::spawn(async move {
            let mut stream = stream.lock().await;
            stream.next().await.ok_or_else(|| {
                Error::unavailable("raw baseline: the subscriber connection ended")
            })?;
            Ok(Instant::now())
        });
        tokio::time::sleep(SETTLE).await;
        let mut c = self.conn.clone();
        let sent = Instant::now();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg("go")
            .query_async::<i64>(&mut c)
            .await
            .map_err(err)?;
        Ok(waiter.notified().await?.saturating_duration_since(sent))
    }
}
