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

use futures::stream::BoxStream;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::name::encode;
use quorate_core::spi::{HeldLeadership, Leader};
use quorate_core::{Error, FencingToken, Result};
use redis::Value;
use tokio::sync::mpsc;

use crate::mutex::{acquire, ExGrant, Space};
use crate::session::RedisSession;
use crate::{receiver_stream, scripts, Ctx};

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
                    fence: FencingToken(*fence as u64),
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

/// The current leader, then every change.
pub(crate) async fn observe(
    ctx: Arc<Ctx>,
    name: &str,
) -> Result<BoxStream<'static, Result<Option<Leader>>>> {
    let mut sub = ctx.hub.subscribe(&ctx.key("chan:election", name)).await?;
    let (mut last, mut pttl) = leader(&ctx, name).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(Ok(last.clone()));
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            // A live leader's key is extended before it expires; re-read
            // when it is due, in case the leader died without a word.
            let recheck = if last.is_some() && pttl >= 0 {
                ctx.recheck_after(ctx.ttl * 2, pttl)
            } else {
                ctx.ttl
            };
            tokio::select! {
                _ = tx.closed() => return,
                _ = sub.next() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
            match leader(&ctx, &name).await {
                Ok((now, p)) => {
                    pttl = p;
                    if now != last {
                        if tx.send(Ok(now.clone())).is_err() {
                            return;
                        }
                        last = now;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, election = %name, "observe: re-reading the leader failed");
                    pttl = -1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(receiver_stream(rx))
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
