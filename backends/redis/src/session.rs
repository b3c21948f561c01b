//! Sessions: a liveness key `<ns>:session:<id>` with a PX TTL, plus the held
//! hash `<ns>:held:<id>` listing every key the session holds or waits in.
//!
//! Core calls [`RedisSession::keep_alive`] every third of the TTL; it runs
//! one script per batch of the held hash (`HSCAN … COUNT`
//! [`KEEP_ALIVE_BATCH`], a hint: about that many entries per call, and a
//! single call for a small hash): the first extends the session key, each
//! extends the held keys of its batch that still carry the session's token
//! and reports the ones that do not, whose grants are then reported lost.
//! The server work per keep-alive stays proportional to the number of held
//! keys (each key carries its own PX TTL, which must track the lease: see
//! `docs/performance.md`), but no single script blocks the server for
//! longer than one batch. Revoking runs one script that deletes the
//! session key and releases everything in the held hash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use quorate_core::loss::LossNotifier;
use quorate_core::{safety_margin, Error, Result};
use redis::Value;

use crate::hub::Wake;
use crate::{keys, scripts, Ctx};

/// The loss notifiers of a session's grants, by held-hash entry
/// (key, token).
type Grants = Arc<StdMutex<HashMap<(String, String), LossNotifier>>>;

/// About how many held-hash entries one keep-alive script visits (the
/// `COUNT` hint of `HSCAN`; a small hash is visited in one call): a
/// session holding many keys is kept alive by several short scripts, one
/// round trip each, rather than one script that blocks the server for the
/// time of all of them. Every call starts after the keep-alive was sent,
/// so every key it extends outlives the deadline core derives from the
/// send time.
const KEEP_ALIVE_BATCH: usize = 256;

/// What `revoke.lua` publishes on the session's channel.
pub(crate) const REVOKED: &str = "revoked";

/// One session of the Redis backend.
pub(crate) struct RedisSession {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) id: String,
    ttl: Duration,
    next_token: AtomicU64,
    grants: Grants,
    /// When the last keep-alive the server confirmed (or the open) was
    /// sent: the session key lives at least until that plus the TTL.
    renewed: StdMutex<Instant>,
    /// Fires the session's loss as soon as a revoke is published.
    revoke_watch: tokio::task::JoinHandle<()>,
}

impl Drop for RedisSession {
    fn drop(&mut self) {
        self.revoke_watch.abort();
    }
}

/// A registered grant notifier; unregisters when dropped.
pub(crate) struct Registration {
    grants: Grants,
    entry: (String, String),
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.grants.lock().unwrap().remove(&self.entry);
    }
}

impl RedisSession {
    pub(crate) async fn open(
        ctx: Arc<Ctx>,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<RedisSession> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        loop {
            let id = format!("{:016x}", rand::random::<u64>());
            // Subscribed before the key exists, so a revoke is never missed
            // (keep-alive would notice it too, a third of a TTL later).
            let mut revoked = ctx.hub.subscribe(&channel(&ctx, &id)).await?;
            let sent = Instant::now();
            let created: i64 = ctx
                .eval(
                    "open session",
                    &scripts::SESSION_OPEN,
                    &[id.as_bytes(), ttl_ms.to_string().as_bytes()],
                )
                .await?;
            if created == 1 {
                tracing::debug!(session = %id, ?ttl, "redis session opened");
                let loss = loss.clone();
                let revoke_watch = tokio::spawn(async move {
                    // The channel also carries wake-ups for this
                    // session's waiters (`<token>=<fence>`, `<token>`).
                    loop {
                        if let Wake::Message(m) = revoked.next().await {
                            if m == REVOKED {
                                break;
                            }
                        }
                    }
                    loss.fire("the session was revoked");
                });
                return Ok(RedisSession {
                    ctx,
                    id,
                    ttl,
                    next_token: AtomicU64::new(1),
                    grants: Arc::default(),
                    renewed: StdMutex::new(sent),
                    revoke_watch,
                });
            }
        }
    }

    /// A fresh owner token `quorate:<sid>:<n>`, unique to one acquire call.
    /// The `quorate:` prefix marks the values quorate wrote: scripts only
    /// ever void a grant whose value has it (see `keys.rs`).
    pub(crate) fn token(&self) -> String {
        format!(
            "{}{}:{}",
            keys::TOKEN_PREFIX,
            self.id,
            self.next_token.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The session's channel: revokes, and the wake-ups of its waiters.
    pub(crate) fn channel(&self) -> String {
        channel(&self.ctx, &self.id)
    }

    /// The TTL in milliseconds, as scripts take it.
    pub(crate) fn ttl_ms(&self) -> String {
        self.ttl.as_millis().max(1).to_string()
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Until when the session's key, and every key granted on its behalf
    /// with its remaining TTL, is sure to live: the last confirmed
    /// keep-alive's send time plus the TTL, minus core's safety margin
    /// (the same client-side deadline core keeps).
    pub(crate) fn vouched_until(&self) -> Instant {
        *self.renewed.lock().unwrap() + self.ttl - safety_margin(self.ttl)
    }

    /// Have `loss` fired when keep-alive finds the held-hash entry
    /// `(key, desc)` gone.
    pub(crate) fn register(&self, key: String, desc: String, loss: LossNotifier) -> Registration {
        let entry = (key, desc);
        self.grants.lock().unwrap().insert(entry.clone(), loss);
        Registration {
            grants: self.grants.clone(),
            entry,
        }
    }
}

/// `<ns>:chan:session:<sid>`: a revoke of session `sid` is announced there
/// ([`REVOKED`]), and the scripts tell its waiters that they were granted
/// (`<token>=<fence>`) or should try again (`<token>`). The session's
/// coordinator is subscribed to it for the session's whole life, so a
/// waiter's subscription costs no `SUBSCRIBE`.
fn channel(ctx: &Ctx, sid: &str) -> String {
    ctx.key("chan:session", sid)
}

/// Revoke session `sid` (ours or another's): returns whether it existed.
pub(crate) async fn revoke(ctx: &Ctx, sid: &str) -> Result<bool> {
    let existed: i64 = ctx
        .eval("revoke session", &scripts::REVOKE, &[sid.as_bytes()])
        .await?;
    Ok(existed == 1)
}

impl RedisSession {
    pub(crate) async fn keep_alive(&self) -> Result<()> {
        let sent = Instant::now();
        let ttl = self.ttl_ms();
        let batch = KEEP_ALIVE_BATCH.to_string();
        let mut cursor = String::from("0");
        let mut calls = 0u32;
        loop {
            let reply: Vec<Value> = self
                .ctx
                .eval(
                    "keep alive",
                    &scripts::KEEP_ALIVE,
                    &[
                        self.id.as_bytes(),
                        ttl.as_bytes(),
                        cursor.as_bytes(),
                        batch.as_bytes(),
                    ],
                )
                .await?;
            calls += 1;
            let mut reply = reply.into_iter();
            cursor = match reply.next() {
                Some(Value::BulkString(c)) => String::from_utf8_lossy(&c).into_owned(),
                Some(Value::Int(-1)) => {
                    return Err(Error::lost(format!(
                        "redis session {} has expired or was revoked",
                        self.id
                    )))
                }
                other => {
                    return Err(Error::backend(format!(
                        "redis keep-alive: unexpected reply {other:?}"
                    )))
                }
            };
            while let (Some(key), Some(desc)) = (reply.next(), reply.next()) {
                let (Value::BulkString(key), Value::BulkString(desc)) = (key, desc) else {
                    continue;
                };
                let entry = (
                    String::from_utf8_lossy(&key).into_owned(),
                    String::from_utf8_lossy(&desc).into_owned(),
                );
                tracing::debug!(key = %entry.0, "keep-alive found a grant gone");
                if let Some(loss) = self.grants.lock().unwrap().remove(&entry) {
                    loss.fire(format!(
                        "the redis key `{}` no longer holds this session's token",
                        entry.0
                    ));
                }
            }
            if cursor == "0" {
                break;
            }
        }
        tracing::trace!(session = %self.id, calls, "redis keep-alive done");
        let mut renewed = self.renewed.lock().unwrap();
        *renewed = (*renewed).max(sent);
        Ok(())
    }

    pub(crate) async fn revoke(&self) -> Result<()> {
        revoke(&self.ctx, &self.id).await?;
        Ok(())
    }
}
