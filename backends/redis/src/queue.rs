//! The queue machinery shared by mutexes, read/write locks, elections and
//! groups: the FIFO exclusive-lock queue ([`acquire`], [`ExGrant`]) that
//! mutexes and elections are, the wake-up loop ([`grant`],
//! [`wait_wake`]) and the [`Cleanup`] guard of an abandoned acquisition.
//!
//! The lock key `<ns>:lock:<enc(name)>` is a plain string holding the owner
//! token with a PX TTL: redis-py's `Lock` layout, so the two exclude each
//! other. quorate waiters queue in `<ns>:queue:<enc(name)>` (FIFO by
//! arrival). A waiter listens on its own session's channel
//! `<ns>:chan:session:<sid>` (subscribed for the session's life, so this
//! costs no command) from before its first attempt. A release grants the
//! lock to the next live waiter in the same script (on its behalf, with its
//! session's TTL) and publishes `<token>=<fence>` on that waiter's session
//! channel only, so the hand-off costs the waiter no round trip and no
//! other waiter hears of it; a waiter that missed the message finds itself
//! the holder on its next attempt. A bounded fallback re-check (at the expiry of
//! what blocks, at most every TTL/2) covers holders that vanish silently: a
//! crashed holder's key expiring, a redis-py holder releasing.
//!
//! # Cancel safety
//!
//! From the first script call on, a [`Cleanup`] guard is armed; dropping the
//! acquire future spawns the release script for this call's token, which
//! removes the queue entry or the grant (the reply may have been lost) and
//! never touches another call's token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_core::backoff::Backoff;
use quorate_core::cleanup::{spawn_retrying, GiveUp};
use quorate_core::loss::LossNotifier;
use quorate_core::name::encode;
use quorate_core::{Error, FencingToken, Result};

use crate::hub::{Subscription, Wake};
use crate::keys::SpaceKeys;
use crate::scripts::{self, Script};
use crate::session::REVOKED;
use crate::session::{RedisSession, Registration};
use crate::Ctx;

/// Runs a release script for one token when dropped while armed, retrying
/// while the session could still be alive. The script must be idempotent.
pub(crate) struct Cleanup {
    job: Option<CleanupJob>,
}

struct CleanupJob {
    ctx: Arc<Ctx>,
    script: &'static Script,
    args: Vec<Vec<u8>>,
    /// Give up after this long: by then the session's TTL has passed, and
    /// whatever is left belongs to a dead session, which scripts ignore.
    limit: Duration,
}

impl Cleanup {
    pub(crate) fn new(
        ctx: &Arc<Ctx>,
        script: &'static Script,
        args: Vec<Vec<u8>>,
        limit: Duration,
    ) -> Cleanup {
        Cleanup {
            job: Some(CleanupJob {
                ctx: ctx.clone(),
                script,
                args,
                limit,
            }),
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.job = None;
    }
}

impl CleanupJob {
    async fn run(&self) -> Result<i64> {
        let args: Vec<&[u8]> = self.args.iter().map(Vec::as_slice).collect();
        self.ctx.eval("clean up", self.script, &args).await
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(job) = self.job.take() else { return };
        let job = Arc::new(job);
        let give_up = GiveUp::After(job.limit);
        spawn_retrying("clean up a dropped redis wait", give_up, move || {
            let job = job.clone();
            async move { job.run().await.map(drop) }
        });
    }
}

/// Wait for a wake-up addressed to `token` (or to everyone), a reconnect,
/// or the fallback re-check time. Returns the fence when the wake-up says
/// the lock was granted on our behalf (`<token>=<fence>`).
pub(crate) async fn wait_wake(
    sub: &mut Subscription,
    token: &str,
    recheck: Duration,
) -> Option<FencingToken> {
    let sleep = tokio::time::sleep(recheck);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            wake = sub.next() => match wake {
                Wake::Reconnected => return None,
                Wake::Message(p) if p == "*" || p == REVOKED => return None,
                Wake::Message(p) => {
                    for item in p.split(' ') {
                        match item.split_once('=') {
                            None if item == token => return None,
                            Some((t, fence)) if t == token => {
                                // A token that does not parse or is out of
                                // range: re-check instead.
                                return fence
                                    .parse::<u64>()
                                    .ok()
                                    .and_then(|f| FencingToken::new(f).ok());
                            }
                            _ => {}
                        }
                    }
                }
            },
            _ = &mut sleep => return None,
        }
    }
}

/// The key spaces of exclusive locks: [`Space::Mutex`] (`<ns>:lock:…`)
/// and [`Space::Election`] (`<ns>:election:…`), core's one definition.
pub(crate) use quorate_core::name::Space;

/// A granted exclusive lock (a mutex, or an election's leadership).
pub(crate) struct ExGrant {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) space: Space,
    pub(crate) enc: String,
    pub(crate) token: String,
    pub(crate) fence: FencingToken,
    _registration: Registration,
}

/// Acquire an exclusive lock in FIFO order; `None` when `wait` is false
/// and the lock is not free. `value` is the candidate's value (elections).
pub(crate) async fn acquire(
    session: &RedisSession,
    space: Space,
    name: &str,
    wait: bool,
    value: &[u8],
    loss: LossNotifier,
) -> Result<Option<ExGrant>> {
    let ctx = &session.ctx;
    let enc = encode(name);
    let token = session.token();
    let ttl = session.ttl_ms();
    let registration = session.register(ctx.key(space.kind(), name), token.clone(), loss);
    let cleanup = Cleanup::new(
        ctx,
        &scripts::EX_RELEASE,
        vec![
            space.kind().into(),
            enc.clone().into(),
            token.clone().into(),
        ],
        session.ttl(),
    );
    let wait_flag: &[u8] = if wait { b"1" } else { b"0" };
    let args: [&[u8]; 6] = [
        space.kind().as_bytes(),
        enc.as_bytes(),
        token.as_bytes(),
        ttl.as_bytes(),
        wait_flag,
        value,
    ];
    let granted = grant(session, wait, &token, cleanup, || {
        ctx.eval("acquire", &scripts::EX_ACQUIRE, &args)
    })
    .await?;
    Ok(granted.map(|fence| ExGrant {
        ctx: ctx.clone(),
        space,
        enc,
        token,
        fence,
        _registration: registration,
    }))
}

/// [`grant_loop`], then, once granted, wait until the replicas asked for
/// acknowledged the grant, and only then disarm `cleanup`: a grant that is
/// not acknowledged (an error) or an acquisition dropped half-way is given
/// up by the armed clean-up. The one tail of every acquire (exclusive and
/// shared).
pub(crate) async fn grant<F, Fut>(
    session: &RedisSession,
    wait: bool,
    token: &str,
    mut cleanup: Cleanup,
    attempt: F,
) -> Result<Option<FencingToken>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<i64>>>,
{
    let granted = grant_loop(session, wait, token, attempt).await?;
    if granted.is_some() {
        session.ctx.replicated().await?;
    }
    cleanup.disarm();
    Ok(granted)
}

/// Run an acquire script until it grants: `Some(fence)`; `None` when it
/// does not and the caller does not `wait`.
///
/// A waiter registers on its session's channel (already subscribed on the
/// server: no command) before its first attempt, so a wake-up sent after
/// that attempt cannot be missed; an uncontended lock costs one round
/// trip. A wake-up saying the lock was granted on the waiter's behalf is
/// trusted only while the session's last confirmed keep-alive vouches for
/// its key (and so for the grant's, which got the session's remaining
/// TTL): a waiter that learns of it later (stopped, starved) asks the
/// server again rather than return a grant that may have expired and gone
/// to someone else meanwhile. Between attempts it waits for a wake-up addressed to `token` (which may
/// say the lock was granted on its behalf: then no further round trip), a
/// reconnect, or the fallback re-check. While waiting, a transient failure (server
/// unreachable) is retried with backoff: the wait ends with the session,
/// whose loss core reports.
///
/// The caller keeps its [`Cleanup`] armed until this returns `Ok`.
async fn grant_loop<F, Fut>(
    session: &RedisSession,
    wait: bool,
    token: &str,
    mut attempt: F,
) -> Result<Option<FencingToken>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<i64>>>,
{
    let (ctx, ttl) = (&session.ctx, session.ttl());
    let channel = wait.then(|| session.channel());
    let channel = channel.as_deref();
    // The session's channel, to which the session itself is subscribed:
    // registering here costs no command, so it is done before the first
    // attempt, and a wake-up sent after that attempt cannot be missed.
    let mut sub: Option<Subscription> = match channel {
        Some(c) => Some(ctx.hub.subscribe(c).await?),
        None => None,
    };
    let mut backoff = Backoff::default();
    loop {
        let reply = match attempt().await {
            Ok(r) => r,
            Err(e) if e.is_retryable() && channel.is_some() => {
                tracing::debug!(error = %e, "acquire attempt failed; retrying");
                backoff.wait().await;
                continue;
            }
            Err(e) => return Err(e),
        };
        backoff.reset();
        match (reply.first(), reply.get(1), channel) {
            (Some(1), Some(&fence), _) => return Ok(Some(FencingToken::try_from(fence)?)),
            (Some(-1), _, _) => {
                return Err(Error::lost(
                    "the redis session expired or was revoked while acquiring",
                ))
            }
            (Some(0), _, None) => return Ok(None),
            (Some(0), blocker, Some(_)) => {
                let Some(sub) = sub.as_mut() else {
                    return Err(Error::backend("a waiting acquire without a subscription"));
                };
                let recheck = ctx.recheck_after(ttl, *blocker.unwrap_or(&-1));
                if let Some(fence) = wait_wake(sub, token, recheck).await {
                    if Instant::now() < session.vouched_until() {
                        return Ok(Some(fence));
                    }
                    tracing::debug!(
                        token,
                        "a grant on our behalf arrived after the session's last keep-alive \
                         stopped vouching for it; asking the server again"
                    );
                }
            }
            _ => {
                return Err(Error::backend(format!(
                    "unexpected reply {reply:?} from an acquire script"
                )))
            }
        }
    }
}

impl ExGrant {
    fn args(&self) -> [&[u8]; 3] {
        [
            self.space.kind().as_bytes(),
            self.enc.as_bytes(),
            self.token.as_bytes(),
        ]
    }

    pub(crate) async fn is_held(&self) -> Result<bool> {
        let held: i64 = self
            .ctx
            .eval("is held", &scripts::EX_IS_HELD, &self.args())
            .await?;
        Ok(held == 1)
    }

    pub(crate) async fn release(&self) -> Result<()> {
        let _: i64 = self
            .ctx
            .eval("release", &scripts::EX_RELEASE, &self.args())
            .await?;
        Ok(())
    }

    pub(crate) async fn write_if_held(
        &self,
        key: &str,
        value: &[u8],
        release: bool,
    ) -> Result<bool> {
        guarded_write(
            &self.ctx,
            [self.space.kind(), &self.enc, &self.token],
            key,
            value,
            release,
        )
        .await
    }
}

/// Write `value` to the data key `key` if the grant `[kind, enc, token]`
/// (`kind`: the key space of an exclusive lock, or `readers`) is still
/// held, and give the grant back in the same script if `release`: the one
/// guarded write of every lock. Whether it applied.
pub(crate) async fn guarded_write(
    ctx: &Ctx,
    [kind, enc, token]: [&str; 3],
    key: &str,
    value: &[u8],
    release: bool,
) -> Result<bool> {
    let data = encode(key);
    let applied: i64 = ctx
        .eval(
            "guarded write",
            &scripts::GUARDED_WRITE,
            &[
                kind.as_bytes(),
                enc.as_bytes(),
                token.as_bytes(),
                data.as_bytes(),
                value,
                if release { b"1" } else { b"0" },
            ],
        )
        .await?;
    Ok(applied == 1)
}
