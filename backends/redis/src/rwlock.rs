//! The read side of a name's lock. One name, one lock: the write side of a
//! read/write lock is the name's mutex (`mutex.rs`, the redis-py `Lock`
//! key `<ns>:lock:<enc(name)>`), and readers wait in the same queue
//! `<ns>:queue:<enc(name)>` as members `r<token>`. A granted reader is
//! recorded in the hash `<ns>:readers:<enc(name)>` (member → fence, the
//! name's one fence counter), and while any reader holds, the lock key
//! holds the mark `quorate:shared` (no token) with a PX TTL that the
//! readers' keep-alives extend: a redis-py `Lock` (`SET NX`) and quorate's
//! mutex and writers are kept out, and the last reader to leave removes
//! it. A reader is granted while the lock key is free or shared and no
//! exclusive waiter is ahead of it in the queue, so a waiting writer
//! blocks later readers (no writer starvation), and an entry leaving the
//! queue (release, timeout, dropped waiter) lets the ones behind it
//! proceed at once, granted on their behalf and told so on their own
//! session's channel `<ns>:chan:session:<sid>`. A reader waits for a redis-py holder as for any
//! exclusive holder (the fallback re-check at its key's expiry: redis-py
//! publishes nothing).
//!
//! # Cancel safety
//!
//! As for mutexes: a [`Cleanup`] guard armed from the first script call
//! removes this call's entry (queued or granted) when the future is
//! dropped.

use std::sync::Arc;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::name::encode;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::{FencingToken, Result};

use crate::queue::{grant, guarded_write, Cleanup};
use crate::session::{RedisSession, Registration};
use crate::{scripts, Ctx};

/// Acquire the read side of lock `name` (the write side is the mutex).
pub(crate) async fn read(
    session: &RedisSession,
    name: &str,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<Box<dyn HeldLock>>> {
    let ctx = &session.ctx;
    let enc = encode(name);
    let member = format!("r{}", session.token());
    let ttl = session.ttl_ms();
    let registration = session.register(ctx.key("readers", name), member.clone(), loss);
    let cleanup = Cleanup::new(
        ctx,
        &scripts::RW_RELEASE,
        vec![enc.clone().into(), member.clone().into()],
        session.ttl(),
    );
    let wait_flag: &[u8] = if wait { b"1" } else { b"0" };
    let args: [&[u8]; 4] = [enc.as_bytes(), member.as_bytes(), ttl.as_bytes(), wait_flag];
    let granted = grant(session, wait, &member, cleanup, || {
        ctx.eval("acquire", &scripts::RW_ACQUIRE, &args)
    })
    .await?;
    Ok(granted.map(|fence| {
        Box::new(RedisRwLock {
            ctx: ctx.clone(),
            enc,
            member,
            fence,
            _registration: registration,
        }) as Box<dyn HeldLock>
    }))
}

/// A granted reader.
struct RedisRwLock {
    ctx: Arc<Ctx>,
    enc: String,
    member: String,
    fence: FencingToken,
    _registration: Registration,
}

#[async_trait]
impl HeldLock for RedisRwLock {
    fn fence(&self) -> FencingToken {
        self.fence
    }

    async fn is_held(&self) -> Result<bool> {
        let held: i64 = self
            .ctx
            .eval(
                "is held",
                &scripts::RW_IS_HELD,
                &[self.enc.as_bytes(), self.member.as_bytes()],
            )
            .await?;
        Ok(held == 1)
    }

    async fn release(&self) -> Result<()> {
        let _: i64 = self
            .ctx
            .eval(
                "release",
                &scripts::RW_RELEASE,
                &[self.enc.as_bytes(), self.member.as_bytes()],
            )
            .await?;
        Ok(())
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let release = then == AfterWrite::Release;
        guarded_write(
            &self.ctx,
            ["readers", &self.enc, &self.member],
            key,
            value,
            release,
        )
        .await
    }
}
