//! Leader election on the exclusive lock: candidates queue FIFO for the key
//! `<ns>:election:<enc(name)>` exactly as mutex waiters do; the holder is
//! the leader. The granting script also writes `<ns>:leader:<enc(name)>`
//! (token, fence, value; same TTL, extended by keep-alive) and publishes
//! `!` on `<ns>:chan:election:<enc(name)>`, as do proclaim and release.
//! Observers re-read the leader on every publish, after every reconnect,
//! and when the leader's key is due to expire (a crashed leader publishes
//! nothing).

use std::sync::Arc;
use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::backoff::Backoff;
use quorate_core::loss::LossNotifier;
use quorate_core::name::encode;
use quorate_core::spi::{HeldLeadership, RawObserve};
use quorate_core::watch::raw_changes;
use quorate_core::Leader;
use quorate_core::{Error, FencingToken, Result};
use redis::Value;

use crate::hub::Subscription;
use crate::queue::{acquire, ExGrant, Space};
use crate::session::RedisSession;
use crate::{scripts, Ctx};

/// Campaign and wait until elected.
pub(crate) async fn campaign(
    session: &RedisSession,
    name: &str,
    value: &[u8],
    loss: LossNotifier,
) -> Result<Box<dyn HeldLeadership>> {
    let grant = acquire(session, Space::Election, name, true, value, loss)
        .await?
        .ok_or_else(|| Error::backend("a waiting campaign returned without a grant"))?;
    Ok(Box::new(RedisLeadership(grant)))
}

/// The current leader and the remaining TTL of its key in ms (-1: none).
pub(crate) async fn leader(ctx: &Ctx, name: &str) -> Result<(Option<Leader>, i64)> {
    let enc = encode(name);
    let reply: Vec<Value> = ctx
        .eval("get leader", &scripts::LEADER, &[enc.as_bytes()])
        .await?;
    match reply.as_slice() {
        [Value::Int(1), Value::Int(fence), value, Value::Int(pttl)] => {
            let value = match value {
                Value::BulkString(v) => v.clone(),
                _ => Vec::new(),
            };
            Ok((
                Some(Leader {
                    value,
                    fence: FencingToken::try_from(*fence)?,
                }),
                *pttl,
            ))
        }
        [Value::Int(0)] => Ok((None, -1)),
        other => Err(Error::backend(format!(
            "unexpected reply {other:?} from the leader script"
        ))),
    }
}

/// The current leader, then the leader as read after every publish, every
/// reconnect, and when the leader's key is due to expire.
pub(crate) async fn observe(ctx: Arc<Ctx>, name: &str) -> Result<RawObserve> {
    let sub = ctx.hub.subscribe(&ctx.key("chan:election", name)).await?;
    let (now, pttl) = leader(&ctx, name).await?;
    let follow = Follow {
        ctx,
        name: name.to_owned(),
        sub,
        leader_known: now.is_some(),
        pttl,
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
    };
    let changes = raw_changes(follow, |mut f| async move { (f.next().await, f) });
    Ok(RawObserve {
        leader: now,
        changes,
    })
}

/// An observer's state.
struct Follow {
    ctx: Arc<Ctx>,
    name: String,
    sub: Subscription,
    /// Whether the last reading had a leader.
    leader_known: bool,
    /// The remaining TTL of the leader's key at the last reading (-1: none).
    pttl: i64,
    backoff: Backoff,
}

impl Follow {
    /// The leader after the next wake-up, if the read succeeded.
    async fn next(&mut self) -> Option<Option<Leader>> {
        // A live leader's key is extended before it expires; re-read when
        // it is due, in case the leader died without a word.
        let recheck = if self.leader_known && self.pttl >= 0 {
            self.ctx.recheck_after(self.ctx.ttl * 2, self.pttl)
        } else {
            self.ctx.ttl
        };
        tokio::select! {
            _ = self.sub.next() => {}
            _ = tokio::time::sleep(recheck) => {}
        }
        match leader(&self.ctx, &self.name).await {
            Ok((now, p)) => {
                self.backoff.reset();
                self.pttl = p;
                self.leader_known = now.is_some();
                Some(now)
            }
            Err(e) => {
                tracing::debug!(error = %e, election = %self.name, "observe: re-reading the leader failed");
                self.pttl = -1;
                self.backoff.wait().await;
                None
            }
        }
    }
}

/// Leadership: the election's exclusive grant.
struct RedisLeadership(ExGrant);

#[async_trait]
impl HeldLeadership for RedisLeadership {
    fn fence(&self) -> FencingToken {
        self.0.fence
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let done: i64 = self
            .0
            .ctx
            .eval(
                "proclaim",
                &scripts::PROCLAIM,
                &[self.0.enc.as_bytes(), self.0.token.as_bytes(), value],
            )
            .await?;
        if done == 1 {
            Ok(())
        } else {
            Err(Error::not_held("no longer the leader"))
        }
    }

    async fn is_leader(&self) -> Result<bool> {
        self.0.is_held().await
    }

    async fn resign(&self) -> Result<()> {
        self.0.release().await
    }
}
