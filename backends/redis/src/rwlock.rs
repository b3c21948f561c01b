//! Read/write locks: one FIFO queue per lock, `<ns>:rwlock:<enc(name)>`
//! (a zset by arrival), holds granted and waiting entries `r<token>` and
//! `w<token>`; `<ns>:rwgrant:<enc(name)>` maps the granted ones to their
//! fence. A writer is granted only at the head of the queue, a reader when
//! no writer is ahead of it: a waiting writer blocks every later reader (no
//! writer starvation), and an entry leaving the queue (release, timeout,
//! dropped waiter) lets the ones behind it proceed at once, woken by a
//! publish on `<ns>:chan:rwlock:<enc(name)>` naming them.
//!
//! # Cancel safety
//!
//! As for mutexes: a [`Cleanup`] guard armed from the first script call
//! removes this call's entry when the future is dropped.

use std::sync::Arc;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::name::encode;
use quorate_core::spi::{AfterWrite, HeldLock, LockKind};
use quorate_core::{FencingToken, Result};

use crate::mutex::{grant_loop, Cleanup};
use crate::session::{RedisSession, Registration};
use crate::{scripts, Ctx};

/// Acquire the read (`LockKind::Read`) or write mode of a read/write lock.
pub(crate) async fn lock(
    session: &RedisSession,
    name: &str,
    kind: LockKind,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<Box<dyn HeldLock>>> {
    let ctx = &session.ctx;
    let enc = encode(name);
    let mode = if kind.is_exclusive() { 'w' } else { 'r' };
    let member = format!("{mode}{}", session.token());
    let ttl = session.ttl_ms();
    let registration = session.register(ctx.key("rwlock", name), member.clone(), loss);
    let channel = wait.then(|| ctx.key("chan:rwlock", name));
    let mut cleanup = Cleanup::new(
        ctx,
        &scripts::RW_RELEASE,
        vec![enc.clone().into(), member.clone().into()],
        session.ttl(),
    );
    let wait_flag: &[u8] = if wait { b"1" } else { b"0" };
    let args: [&[u8]; 4] = [enc.as_bytes(), member.as_bytes(), ttl.as_bytes(), wait_flag];
    let granted = grant_loop(ctx, channel.as_deref(), &member, session.ttl(), || {
        ctx.eval("acquire", &scripts::RW_ACQUIRE, &args)
    })
    .await?;
    if granted.is_some() {
        // Not acknowledged by the replicas asked for: the armed clean-up
        // gives the grant up.
        ctx.replicated().await?;
    }
    cleanup.disarm();
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

/// A granted read or write mode.
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
        let data = encode(key);
        let applied: i64 = self
            .ctx
            .eval(
                "guarded write",
                &scripts::GUARDED_WRITE,
                &[
                    b"rwlock",
                    self.enc.as_bytes(),
                    self.member.as_bytes(),
                    data.as_bytes(),
                    value,
                    if release { b"1" } else { b"0" },
                ],
            )
            .await?;
        Ok(applied == 1)
    }
}
