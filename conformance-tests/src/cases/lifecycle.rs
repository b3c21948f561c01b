//! The grant lifecycle: a release, resign or leave whose reply is lost
//! still frees what it released, soon after the connection heals, while
//! the session lives on.
//!
//! The holder talks to its server through a [`TcpProxy`]. The proxy
//! black-holes the connection, the holder releases (the release gets no
//! answer and fails after `connect_timeout`, or its future is dropped, or
//! the guard is simply dropped), then the black-holed connections are cut
//! (what they buffered is lost, as when a partition outlasts the TCP
//! connection) and the proxy passes traffic again. The session's TTL is
//! long (20 s) and the session must still be alive at the end, so lease
//! expiry cannot be what frees the lock: only a release retried after the
//! heal can, within the liveness bound [`FREED_LIMIT`] (half the TTL).
//!
//! On a backend where a failed release only drops the grant handle, the
//! key stays under a lease the live session keeps renewing, and these
//! cases fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use quorate::{Capabilities, Coordinator, Session};

use crate::fail;
use crate::harness::{ProxyMode, TcpProxy};
use crate::outcome::{within, CaseError, CaseResult, Figures};
use crate::target::{ServerFaults, Target};

/// The holder's session TTL: long, so that its expiry cannot masquerade
/// as a release.
const TTL: &str = "20s";
/// The holder's request limit: a release without an answer fails after it.
const CONNECT_TIMEOUT: &str = "1s";
/// How long after the heal the released lock (leadership, membership) must
/// be free: a liveness bound, half the TTL.
const FREED_LIMIT: f64 = 10.0;
/// How long a dropped release future runs before it is dropped.
const DROP_AFTER: Duration = Duration::from_millis(300);
/// How long the proxy stays in a mode so that every relay has seen it.
const SETTLE: Duration = Duration::from_millis(200);

fn controller(t: &Target) -> Result<Arc<dyn ServerFaults>, CaseError> {
    t.faults
        .clone()
        .ok_or_else(|| CaseError::Unverified("the target has no fault controller".into()))
}

fn ms(since: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(since).as_secs_f64() * 1000.0
}

/// Run `f` with a bound, ignoring its result.
async fn quietly<T>(f: impl std::future::Future<Output = T>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
}

/// A holder connected through its own proxy, with a long TTL.
struct Holder {
    proxy: TcpProxy,
    session: Session,
    _coordinator: Coordinator,
}

impl Holder {
    async fn start(t: &Target) -> Result<Holder, CaseError> {
        let upstream = controller(t)?.proxy_upstream().await.ok_or_else(|| {
            CaseError::Unverified("the controller names no server to proxy".into())
        })?;
        let proxy = TcpProxy::start(upstream)
            .await
            .map_err(|e| CaseError::Unverified(format!("starting the proxy: {e}")))?;
        let url = Target::new(&t.label, t.through(&proxy).url_with("ttl", TTL))
            .url_with("connect_timeout", CONNECT_TIMEOUT);
        let coordinator = crate::connect(&url).await?;
        let session = coordinator.session().await?;
        Ok(Holder {
            proxy,
            session,
            _coordinator: coordinator,
        })
    }

    /// Black-hole the holder's connection while `release` runs, then cut
    /// the black-holed connections (losing whatever they buffered) and pass
    /// traffic again. Returns the release's outcome and the moment of the
    /// heal.
    async fn lose_reply<T>(
        &self,
        what: &str,
        release: impl std::future::Future<Output = T>,
    ) -> Result<(T, Instant), CaseError> {
        self.proxy.set_mode(ProxyMode::Blackhole);
        tokio::time::sleep(SETTLE).await;
        let outcome = within(FREED_LIMIT, what, release).await;
        self.proxy.set_mode(ProxyMode::Cut);
        tokio::time::sleep(SETTLE).await;
        self.proxy.set_mode(ProxyMode::Pass);
        Ok((outcome?, Instant::now()))
    }

    /// The session must have lived through the partition: otherwise the
    /// lease, not the release, may have freed what was released.
    fn still_alive(&self) -> Result<(), CaseError> {
        if self.session.is_lost() {
            fail!(
                "the holder's session (TTL {TTL}) was lost during a partition of about {} ms; the release could not be measured",
                (SETTLE * 2).as_millis() + 1000
            );
        }
        Ok(())
    }

    async fn close(self) {
        quietly(self.session.close()).await;
    }
}

/// Run `measure` with a [`Holder`] of `t`; its session is closed afterwards,
/// whatever the outcome.
async fn with_holder(
    t: &Target,
    measure: impl for<'a> FnOnce(&'a Target, &'a Holder) -> BoxFuture<'a, CaseResult>,
) -> CaseResult {
    let holder = Holder::start(t).await?;
    let measured = measure(t, &holder).await;
    holder.close().await;
    measured
}

/// A release that was confirmed through a black-holed connection means the
/// fault did not take: nothing was measured.
fn unconfirmed<T>(r: &quorate::Result<T>, what: &str) -> Result<(), CaseError> {
    match r {
        Err(_) => Ok(()),
        Ok(_) => Err(CaseError::Unverified(format!(
            "{what} was confirmed through a black-holed connection: its reply was not lost"
        ))),
    }
}

pub mod release_survives_lost_reply {
    //! Three locks: one released with `release()` (which fails after
    //! `connect_timeout`), one whose `release()` future is dropped, one
    //! whose guard is dropped; all three while the connection is
    //! black-holed.

    use super::*;

    const FAILED: &str = "release-failed";
    const CANCELLED: &str = "release-dropped";
    const DROPPED: &str = "guard-dropped";

    pub async fn run(t: Target) -> CaseResult {
        with_holder(&t, |t, h| Box::pin(measure(t, h))).await
    }

    async fn measure(t: &Target, holder: &Holder) -> CaseResult {
        let (c, other) = crate::cases::client(t).await?;
        let s = &holder.session;
        let failed = s.mutex(FAILED).lock().await?;
        let cancelled = s.mutex(CANCELLED).lock().await?;
        let dropped = s.mutex(DROPPED).lock().await?;
        let ((released, cancelled), healed) = holder
            .lose_reply("the releases return while partitioned", async {
                drop(dropped);
                tokio::join!(
                    failed.release(),
                    tokio::time::timeout(DROP_AFTER, cancelled.release())
                )
            })
            .await?;
        unconfirmed(&released, "release()")?;
        if cancelled.is_ok() {
            return Err(CaseError::Unverified(format!(
                "release() finished within {DROP_AFTER:?} through a black-holed connection"
            )));
        }

        let other = &other;
        let attempts = [FAILED, CANCELLED, DROPPED].map(|name| async move {
            let granted = other.mutex(name).lock_timeout(secs(FREED_LIMIT)).await;
            (name, granted, Instant::now())
        });
        let mut f = Figures::new();
        let mut stranded = Vec::new();
        for (name, granted, at) in futures::future::join_all(attempts).await {
            match granted {
                Ok(g) => {
                    f.insert(format!("{name}_freed_after_heal_ms"), ms(healed, at));
                    g.release().await?;
                }
                Err(e) => stranded.push(format!("`{name}` ({e})")),
            }
        }
        if !stranded.is_empty() {
            quietly(other.close()).await;
            fail!(
                "locks released while the holder's connection was black-holed were not free {FREED_LIMIT} s after the heal, with the holder's session (TTL {TTL}) still alive: {}",
                stranded.join(", ")
            );
        }
        other.close().await?;
        drop(c);
        holder.still_alive()?;
        // Once confirmed, the holder's session may take the lock again: its
        // claim on the name went with the confirmation.
        match s.mutex(FAILED).lock_timeout(secs(FREED_LIMIT)).await {
            Ok(g) => g.release().await?,
            Err(e) => fail!(
                "the holder's session could not take `{FAILED}` again after its release was confirmed in the background: {e}"
            ),
        }
        Ok(f)
    }
}

pub mod resign_survives_lost_reply {
    //! A leader resigns while its connection is black-holed.

    use super::*;

    const NAME: &str = "resign";

    pub async fn run(t: Target) -> CaseResult {
        with_holder(&t, |t, h| Box::pin(measure(t, h))).await
    }

    async fn measure(t: &Target, holder: &Holder) -> CaseResult {
        let (c, other) = crate::cases::client(t).await?;
        let leadership = holder.session.election(NAME).campaign(b"holder").await?;
        let (resigned, healed) = holder
            .lose_reply("resign() returns while partitioned", leadership.resign())
            .await?;
        unconfirmed(&resigned, "resign()")?;

        let elected =
            tokio::time::timeout(secs(FREED_LIMIT), other.election(NAME).campaign(b"other")).await;
        let at = Instant::now();
        let mut f = Figures::new();
        match elected {
            Ok(Ok(l)) => {
                f.insert("elected_after_heal_ms".into(), ms(healed, at));
                l.resign().await?;
            }
            Ok(Err(e)) => {
                quietly(other.close()).await;
                return Err(e.into());
            }
            Err(_) => {
                quietly(other.close()).await;
                fail!(
                    "another candidate was not elected {FREED_LIMIT} s after the heal, though the leader resigned while black-holed and its session (TTL {TTL}) is alive"
                );
            }
        }
        other.close().await?;
        drop(c);
        holder.still_alive()?;
        Ok(f)
    }
}

pub mod leave_survives_lost_reply {
    //! A member leaves while its connection is black-holed.

    use super::*;

    const GROUP: &str = "leave";
    const MEMBER: &str = "holder";

    pub async fn run(t: Target) -> CaseResult {
        with_holder(&t, |t, h| Box::pin(measure(t, h))).await
    }

    async fn measure(t: &Target, holder: &Holder) -> CaseResult {
        let (c, other) = crate::cases::client(t).await?;
        let membership = holder
            .session
            .group(GROUP)
            .join(MEMBER, serde_json::json!(null))
            .await?;
        let (left, healed) = holder
            .lose_reply("leave() returns while partitioned", membership.leave())
            .await?;
        unconfirmed(&left, "leave()")?;

        // Observe until the member is gone (a bounded look, not a timing).
        let gone = within(FREED_LIMIT, "the member is gone after the heal", async {
            loop {
                match other.group(GROUP).members().await {
                    Ok(m) if m.iter().all(|m| m.id != MEMBER) => return Ok(Instant::now()),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        quietly(other.close()).await;
        drop(c);
        let gone = match gone {
            Ok(r) => r?,
            Err(_) => fail!(
                "member `{MEMBER}` was still listed {FREED_LIMIT} s after the heal, though it left while black-holed and its session (TTL {TTL}) is alive"
            ),
        };
        holder.still_alive()?;
        let mut f = Figures::new();
        f.insert("gone_after_heal_ms".into(), ms(healed, gone));
        Ok(f)
    }
}

/// A lease backend whose elections the case can use.
pub(crate) fn needs_lease_and_election(c: &Capabilities) -> Result<(), &'static str> {
    super::needs_lease(c)?;
    super::needs_election(c)
}

/// A lease backend whose groups the case can use.
pub(crate) fn needs_lease_and_group(c: &Capabilities) -> Result<(), &'static str> {
    super::needs_lease(c)?;
    super::needs_group(c)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
