//! Server fault cases: a lock is held while the *servers* fail (the leader
//! or primary is killed, the holder is partitioned from its server, the
//! server restarts without its data). They need the target's fault
//! controller ([`crate::target::ServerFaults`]), are not applicable without
//! one, and run alone (see `runner.rs`).
//!
//! The adversary is "another client": a fresh coordinator and session
//! that asks for the same lock as soon as the fault is injected, and keeps
//! asking (with a new session if its own is lost) until it is granted. A
//! *double grant* is that client being granted while the holder has not
//! been told (its `lost()` has not resolved): two clients believing they
//! hold one lock. Times are measured from the fault; they are figures,
//! never asserted (only generous liveness bounds are).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate::{Coordinator, LockGuard, Session};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::outcome::{broken, CaseError, EXCLUSION_DECLARED};
use crate::target::{ServerFaults, Target};

/// The session TTL of the holder and the other client: short, so a lost
/// lease frees the lock quickly.
pub(super) const TTL: &str = "2s";
/// The longest a server fault case waits for anything (a liveness bound).
pub(super) const LIMIT: f64 = 30.0;

pub(super) fn ttl() -> Duration {
    quorate::config::parse_duration("ttl", TTL).expect("a valid TTL")
}

pub(super) fn controller(t: &Target) -> Result<Arc<dyn ServerFaults>, CaseError> {
    t.faults
        .clone()
        .ok_or_else(|| CaseError::Unverified("the target has no fault controller".into()))
}

pub(super) fn harness(what: &str) -> impl FnOnce(std::io::Error) -> CaseError + '_ {
    move |e| CaseError::Unverified(format!("the fault controller could not {what}: {e}"))
}

pub(super) fn ms(since: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(since).as_secs_f64() * 1000.0
}

pub(super) fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Run `f` with a bound, ignoring its result (clean-up of a client that
/// may be partitioned or lost).
pub(super) async fn quietly<T>(f: impl std::future::Future<Output = T>) {
    let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
}

/// A held lock whose `lost()` is watched from the moment it is granted, so
/// the instant the holder was told is known exactly.
pub(super) struct Watched {
    guard: Arc<LockGuard>,
    told: watch::Receiver<Option<Instant>>,
    watcher: JoinHandle<()>,
}

impl Watched {
    pub(super) fn new(guard: LockGuard) -> Watched {
        let guard = Arc::new(guard);
        let (tx, told) = watch::channel(None);
        let g = guard.clone();
        let watcher = tokio::spawn(async move {
            g.lost().await;
            tx.send_replace(Some(Instant::now()));
        });
        Watched {
            guard,
            told,
            watcher,
        }
    }

    pub(super) fn fence(&self) -> u64 {
        self.guard.fence().get()
    }

    /// When the holder was told, if it was.
    fn told_at(&self) -> Option<Instant> {
        *self.told.borrow()
    }

    /// Wait until the holder is told (a liveness bound of `secs`).
    pub(super) async fn told(&mut self, secs: f64, what: &str) -> Result<Instant, CaseError> {
        let at = crate::outcome::within(secs, what, self.told.wait_for(Option::is_some)).await?;
        at.ok()
            .and_then(|v| *v)
            .ok_or_else(|| CaseError::Fail(format!("{what}: the watcher stopped")))
    }

    /// When the holder was told, waiting at most `wait` for it (`None` if
    /// it was not told by then).
    pub(super) async fn told_within(&mut self, wait: Duration) -> Option<Instant> {
        let _ = tokio::time::timeout(wait, self.told.wait_for(Option::is_some)).await;
        *self.told.borrow()
    }

    /// Whether the backend still has the grant (one bounded round trip;
    /// `None` when it does not answer).
    pub(super) async fn is_held(&self) -> Option<bool> {
        match tokio::time::timeout(Duration::from_secs(2), self.guard.is_held()).await {
            Ok(Ok(held)) => Some(held),
            _ => None,
        }
    }

    /// Write under the lock (a guarded write, which needs the leader /
    /// primary); `None` when it does not answer.
    async fn write_if_held(&self) -> Option<bool> {
        let write = self.guard.write_if_held("probe", b"written under the lock");
        match tokio::time::timeout(Duration::from_secs(2), write).await {
            Ok(Ok(applied)) => Some(applied),
            _ => None,
        }
    }

    /// Stop watching; release the lock if it is still believed held.
    pub(super) async fn finish(self) {
        self.watcher.abort();
        let _ = self.watcher.await;
        if let Ok(guard) = Arc::try_unwrap(self.guard) {
            if guard.is_lost() {
                drop(guard);
            } else {
                quietly(guard.release()).await;
            }
        }
    }
}

/// The other client's grant.
pub(super) struct Grant {
    pub(super) at: Instant,
    pub(super) fence: u64,
    pub(super) guard: LockGuard,
    pub(super) session: Session,
    pub(super) _coordinator: Coordinator,
}

impl Grant {
    pub(super) async fn finish(self) {
        quietly(self.guard.release()).await;
        quietly(self.session.close()).await;
    }
}

/// Wait for the other client's grant (a liveness bound of `secs`).
pub(super) async fn granted(
    secs: f64,
    what: &str,
    task: JoinHandle<Option<Grant>>,
) -> Result<Grant, CaseError> {
    crate::outcome::within(secs, what, task)
        .await?
        .map_err(|e| CaseError::Fail(format!("{what}: the client panicked: {e}")))?
        .ok_or_else(|| CaseError::Fail(format!("{what}: not granted within its time limit")))
}

/// Another client asking for lock `name` on `url` until `limit` from now:
/// a fresh coordinator and session, replaced whenever they fail. `granted`
/// is set the moment it is granted.
pub(super) fn contend(
    url: String,
    name: &'static str,
    limit: Duration,
) -> (JoinHandle<Option<Grant>>, watch::Receiver<Option<Instant>>) {
    let (tx, granted) = watch::channel(None);
    let task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let attempt = tokio::time::timeout_at(deadline, async {
                let c = crate::connect(&url).await?;
                let s = c.session().await?;
                match s.mutex(name).lock().await {
                    Ok(g) => Ok((c, s, g)),
                    Err(e) => {
                        quietly(s.close()).await;
                        Err(e)
                    }
                }
            })
            .await;
            match attempt {
                Ok(Ok((c, s, g))) => {
                    let at = Instant::now();
                    tx.send_replace(Some(at));
                    return Some(Grant {
                        at,
                        fence: g.fence().get(),
                        guard: g,
                        session: s,
                        _coordinator: c,
                    });
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the other client failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => break,
            }
        }
        None
    });
    (task, granted)
}

/// Take lock `name` with `s`, watched, and check that another client
/// cannot take it before any fault.
async fn hold_alone(t: &Target, s: &Session, name: &'static str) -> Result<Watched, CaseError> {
    let a = Watched::new(s.mutex(name).lock().await?);
    let (_c, sb) = crate::cases::client(t).await?;
    crate::ensure!(
        sb.mutex(name).try_lock().await?.is_none(),
        "another client got the lock before any fault"
    );
    sb.close().await?;
    Ok(a)
}

/// Whether the next grant's fence was above the holder's
/// (`fence_went_backwards`), in words.
fn fences_in_words(f: &crate::outcome::Figures) -> &'static str {
    if f.get("fence_went_backwards") == Some(&1.0) {
        "FENCES WENT BACKWARDS: the next grant's fence was not above the holder's"
    } else {
        "fences did not go backwards"
    }
}

pub mod leader_failover {
    //! Kill the leader / primary while A holds a lock; measure whether A
    //! keeps it, whether another client is granted it meanwhile, and
    //! whether fences go backwards.

    use std::time::{Duration, Instant};

    use super::*;
    use crate::outcome::{CaseResult, Figures};

    const NAME: &str = "failover";

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        let url = t.url_with("ttl", TTL);
        let ca = crate::connect(&url).await?;
        let caps = ca.capabilities();
        let (keeps, exclusive) = (
            caps.survives_failover,
            caps.survives_failover || caps.exclusive_across_failover,
        );
        let sa = ca.session().await?;
        let a = hold_alone(&t, &sa, NAME).await?;

        let what = faults
            .kill_leader()
            .await
            .map_err(harness("kill the leader"))?;
        let killed = Instant::now();
        tracing::info!(target = %t.label, killed = %what, "server fault injected");
        // Measure, and meanwhile confirm that another server took over:
        // without a new leader the case did not test a failover.
        let (measured, successor) =
            tokio::join!(measure(&url, NAME, a, killed), faults.new_leader());
        let healed = faults
            .restart_killed()
            .await
            .map_err(harness("restart the killed server"));
        quietly(sa.close()).await;
        let successor = successor.map_err(harness("see another server take over"))?;
        let mut f = measured?;
        // Mending the deployment is for the cases after this one; it does
        // not change what was measured.
        if let Err(e) = &healed {
            tracing::warn!(target = %t.label, error = ?e, "the killed server did not rejoin");
        }
        f.insert("killed_server_rejoined".into(), flag(healed.is_ok()));
        tracing::info!(target = %t.label, successor = %successor, "failover confirmed");
        // Two guarantees. Never two holders (nobody else is granted the lock
        // while the holder believes it holds it, fences never go backwards):
        // broken, it fails a backend that declares exclusive_across_failover
        // (or survives_failover) whatever it declares about keeping locks.
        // And the holder keeps the lock: broken, it fails a backend that
        // declares survives_failover. Either is `violated` (never a pass)
        // for a backend that does not declare it; the detail says which
        // part broke.
        f.insert(EXCLUSION_DECLARED.into(), flag(exclusive));
        let two_holders = f["double_grant"] == 1.0 || f["fence_went_backwards"] == 1.0;
        if two_holders {
            return Err(broken(
                exclusive,
                format!(
                    "after killing {what} (exclusive_across_failover declared {exclusive}): {}",
                    describe_after(&f, KILL)
                ),
                f,
            ));
        }
        if f["holder_kept_lock"] == 0.0 {
            return Err(broken(
                keeps,
                format!(
                    "after killing {what} (survives_failover declared {keeps}): {}",
                    describe_after(&f, KILL)
                ),
                f,
            ));
        }
        Ok(f)
    }

    /// Measure from the fault (`killed`, when it was injected): whether
    /// the holder `a` of lock `name` keeps it (its grant answers again and
    /// a guarded write applies, still held two TTLs later) or is told it
    /// lost it, and when another client (asking from the fault on) is
    /// granted it.
    pub(super) async fn measure(
        url: &str,
        name: &'static str,
        mut a: Watched,
        killed: Instant,
    ) -> CaseResult {
        let ttl = ttl();
        let fa = a.fence();
        let (other, _) = contend(url.to_owned(), name, Duration::from_secs_f64(LIMIT * 2.0));
        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl.as_secs_f64() * 1000.0);

        // Until the holder hears from the recovered cluster: its grant
        // stands (resumed), or it is told it lost it.
        let resumed = crate::outcome::within(
            LIMIT,
            "the holder hears from the cluster after the kill",
            async {
                loop {
                    if a.told_at().is_some() {
                        return None;
                    }
                    match a.is_held().await {
                        Some(true) => return Some(Instant::now()),
                        Some(false) => return None,
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            },
        )
        .await?;
        // A read may be answered by a server that has not noticed the
        // kill yet; a guarded write needs the new leader / primary.
        let resumed = match resumed {
            Some(at) => {
                f.insert("resume_ms".into(), ms(killed, at));
                crate::outcome::within(
                    LIMIT,
                    "the holder's guarded write is answered after the kill",
                    async {
                        loop {
                            if a.told_at().is_some() {
                                return None;
                            }
                            match a.write_if_held().await {
                                Some(true) => return Some(Instant::now()),
                                Some(false) => return None,
                                None => tokio::time::sleep(Duration::from_millis(50)).await,
                            }
                        }
                    },
                )
                .await?
            }
            None => None,
        };
        let kept = match resumed {
            Some(at) => {
                f.insert("write_resume_ms".into(), ms(killed, at));
                // Keep holding for two TTLs: the lease must really be
                // renewed on the new leader, not just still unexpired.
                tokio::time::sleep(ttl * 2 + Duration::from_secs(1)).await;
                a.told_at().is_none() && a.is_held().await == Some(true)
            }
            None => false,
        };
        if !kept {
            // The holder lost it: wait until it is told (lost() must
            // resolve whatever happened).
            a.told(LIMIT, "the holder is told it lost the lock").await?;
        }
        // The holder stops believing when told, or else now (release).
        let stopped = a.told_at().unwrap_or_else(Instant::now);
        a.finish().await;
        let grant = granted(
            LIMIT * 2.0,
            "another client gets the lock once the holder released or lost it",
            other,
        )
        .await?;
        let double = grant.at < stopped;
        if !kept {
            f.insert("holder_told_ms".into(), ms(killed, stopped));
        }
        f.insert("other_granted_ms".into(), ms(killed, grant.at));
        let backwards = grant.fence <= fa;
        grant.finish().await;
        f.insert("holder_kept_lock".into(), flag(kept));
        f.insert("double_grant".into(), flag(double));
        f.insert("fence_went_backwards".into(), flag(backwards));
        Ok(f)
    }

    /// The event [`measure`] measures from, in [`describe_after`]'s words.
    const KILL: &str = "the kill";

    /// The outcome in words, from the figures.
    pub fn describe(f: &Figures) -> String {
        describe_after(f, KILL)
    }

    /// The outcome of [`measure`] in words, times counted from `event`.
    pub(super) fn describe_after(f: &Figures, event: &str) -> String {
        let yes = |k: &str| f.get(k) == Some(&1.0);
        let mut s = vec![if yes("holder_kept_lock") {
            format!(
                "the holder kept the lock (is_held answered true {:.0} ms and a guarded write under it applied {:.0} ms after {event}; still held two TTLs later)",
                f.get("resume_ms").copied().unwrap_or(f64::NAN),
                f.get("write_resume_ms").copied().unwrap_or(f64::NAN)
            )
        } else {
            match f.get("holder_told_ms") {
                Some(t) => format!("the holder lost the lock (told {t:.0} ms after {event})"),
                None => "the holder lost the lock".to_owned(),
            }
        }];
        let b = f.get("other_granted_ms").copied().unwrap_or(f64::NAN);
        s.push(match (yes("double_grant"), yes("holder_kept_lock")) {
            (true, _) => format!("DOUBLE GRANT: another client was granted the lock {b:.0} ms after {event}, while the holder still believed it held it"),
            (false, true) => "no other client was granted it while the holder held it".to_owned(),
            (false, false) => format!("another client was granted it {b:.0} ms after {event}, after the holder was told"),
        });
        s.push(fences_in_words(f).to_owned());
        s.join("; ")
    }
}

pub mod server_pause {
    //! Stop the server — the leader or primary where there are several —
    //! with SIGSTOP for three TTLs while [`HOLDERS`] clients each hold a
    //! lock (a long GC or VM pause), then resume it. A single server wakes
    //! to a wall clock three TTLs on, with every lease past its expiry; a
    //! cluster elects another leader meanwhile (Sentinel promotes the
    //! replica), and the old one wakes believing it still leads.
    //!
    //! Several holders, each with its own session (lease) and lock: what a
    //! resumed leader does with the leases it did not see renewed is a race
    //! per lease (etcd 3.4.23 revokes some of them, etcd issue 15247), so
    //! one holder alone would show it in few runs.
    //!
    //! No holder probes its grant while it waits (as a holder busy with
    //! its work would not): it must be told by its own keep-alive, not by a
    //! check the case makes for it. For each lock another client asks for
    //! it from the pause on. Whichever comes first decides, lock by lock:
    //! the holder told, or the other client granted (a double grant); if
    //! neither within five TTLs of the resume, the holder kept the lock
    //! (its grant must still answer true and take a guarded write), then
    //! releases it, and the other client must be granted. The figures
    //! without a count are those of the first lock double granted (or
    //! whose fence went backwards), else of the first lock.
    //!
    //! After the SIGCONT the controller mends the deployment (Sentinel:
    //! waits for the failover, makes the old primary a replica). Where that
    //! fails (the sentinels did not fail over within the pause) a completed
    //! measurement still stands, with `paused_server_rejoined` = 0.

    use std::time::{Duration, Instant};

    use super::*;
    use crate::ensure;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Fault;

    /// The locks, one per holder.
    const NAMES: [&str; 8] = [
        "server-pause",
        "server-pause-1",
        "server-pause-2",
        "server-pause-3",
        "server-pause-4",
        "server-pause-5",
        "server-pause-6",
        "server-pause-7",
    ];

    /// How many clients hold a lock through the pause.
    pub const HOLDERS: usize = NAMES.len();

    /// How long the server stays stopped: three TTLs.
    fn pause() -> Duration {
        ttl() * 3
    }

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        let url = t.url_with("ttl", TTL);
        let mut sessions = Vec::with_capacity(HOLDERS);
        let mut holders = Vec::with_capacity(HOLDERS);
        for name in NAMES {
            let c = crate::connect(&url).await?;
            let s = c.session().await?;
            holders.push((name, hold_alone(&t, &s, name).await?));
            sessions.push((c, s));
        }
        // Where another server can take over, a pause may be a failover
        // that the stopped leader does not see: the exclusion is then what
        // exclusive_across_leader_stalls declares. A single server has none:
        // its leases must hold.
        let failover = t.supports(Fault::KillLeader);
        let exclusive = !failover || sessions[0].0.capabilities().exclusive_across_leader_stalls;

        let what = faults
            .pause_leader()
            .await
            .map_err(harness("pause the server"))?;
        let paused = Instant::now();
        tracing::info!(target = %t.label, paused = %what, "server fault injected");
        // Resuming starts with the SIGCONT; mending the deployment after
        // (Sentinel: the old primary made a replica) is not the pause.
        let resume = async {
            tokio::time::sleep(pause()).await;
            let at = Instant::now();
            (faults.resume_paused().await, at)
        };
        let measuring = futures::future::join_all(
            holders
                .into_iter()
                .map(|(name, a)| measure(&url, name, a, paused)),
        );
        let (measured, (resumed, resumed_at)) = tokio::join!(measuring, resume);
        for (_, s) in &sessions {
            quietly(s.close()).await;
        }
        // A measurement that completed stands whatever the mending did (a
        // double grant seen is never hidden behind it); without one, a
        // failed resume is the likelier cause, so the case is unverified.
        let mut done = Vec::with_capacity(HOLDERS);
        let mut first_error = None;
        for m in measured {
            match m {
                Ok(f) => done.push(f),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let two = |f: &Figures| f["double_grant"] == 1.0 || f["fence_went_backwards"] == 1.0;
        let count = |key: &str| done.iter().filter(|f| f.get(key) == Some(&1.0)).count() as f64;
        let (double_granted, kept) = (count("double_grant"), count("holder_kept_lock"));
        let first_two = done.iter().position(two);
        if let (Some(e), None) = (first_error, first_two) {
            resumed.map_err(harness("resume the paused server"))?;
            return Err(e);
        }
        let mut f = done.swap_remove(first_two.unwrap_or(0));
        f.insert("holders".into(), HOLDERS as f64);
        f.insert("holders_double_granted".into(), double_granted);
        f.insert("holders_kept_lock".into(), kept);
        if let Err(e) = &resumed {
            tracing::warn!(target = %t.label, error = ?e, "the paused server was not mended");
        }
        f.insert("paused_server_rejoined".into(), flag(resumed.is_ok()));
        f.insert("paused_ms".into(), ms(paused, resumed_at));
        f.insert(EXCLUSION_DECLARED.into(), flag(exclusive));
        if two(&f) {
            let declared = if failover {
                format!(
                    "a pause that may fail over; exclusive_across_leader_stalls declared {exclusive}"
                )
            } else {
                "a single server: its leases must hold".to_owned()
            };
            return Err(broken(
                exclusive,
                format!("after pausing {what} ({declared}): {}", describe(&f)),
                f,
            ));
        }
        Ok(f)
    }

    /// See the module documentation: one holder `a` of lock `name`; times
    /// from `paused`.
    async fn measure(url: &str, name: &'static str, mut a: Watched, paused: Instant) -> CaseResult {
        let ttl = ttl();
        let fa = a.fence();
        let (other, mut granted_at) =
            contend(url.to_owned(), name, Duration::from_secs_f64(LIMIT * 2.0));
        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl.as_secs_f64() * 1000.0);
        let decide_by = pause() + ttl * 5;
        // The first of: the holder told, the other client granted, the
        // bound. (No probe of the grant meanwhile.)
        let told = tokio::select! {
            t = a.told_within(decide_by) => t,
            _ = async { granted_at.wait_for(Option::is_some).await.map(drop) } => a.told_at(),
        };
        let other_first = (*granted_at.borrow()).filter(|g| told.is_none_or(|t| *g < t));
        let kept = told.is_none() && other_first.is_none();
        if kept {
            ensure!(
                a.is_held().await == Some(true),
                "the holder was not told within {} ms of the pause, nor was another client granted the lock, but its grant does not answer true",
                decide_by.as_millis()
            );
            ensure!(
                a.write_if_held().await == Some(true),
                "the holder was not told, nor was another client granted the lock, but a guarded write under it was not applied"
            );
        } else if let Some(t) = told {
            f.insert("holder_told_ms".into(), ms(paused, t));
        }
        a.finish().await;
        let grant = granted(
            LIMIT * 2.0,
            "another client gets the lock once the holder released or lost it",
            other,
        )
        .await?;
        f.insert("other_granted_ms".into(), ms(paused, grant.at));
        f.insert("holder_kept_lock".into(), flag(kept));
        f.insert("double_grant".into(), flag(other_first.is_some()));
        f.insert("fence_went_backwards".into(), flag(grant.fence <= fa));
        grant.finish().await;
        Ok(f)
    }

    /// The outcome in words, from the figures.
    pub fn describe(f: &Figures) -> String {
        let at = |k: &str| f.get(k).copied().unwrap_or(f64::NAN);
        let yes = |k: &str| f.get(k) == Some(&1.0);
        let mut s = vec![format!("the server was stopped {:.0} ms", at("paused_ms"))];
        if let Some(n) = f.get("holders") {
            s.push(format!(
                "of {n:.0} holders (each its own session and lock), {:.0} double granted, {:.0} kept their locks; {}",
                at("holders_double_granted"),
                at("holders_kept_lock"),
                if yes("double_grant") || yes("fence_went_backwards") {
                    "the first broken lock"
                } else {
                    "the first lock"
                }
            ));
        }
        s.push(if yes("double_grant") {
            format!(
                "DOUBLE GRANT: another client was granted the lock {:.0} ms after the pause began, before the holder was told{}",
                at("other_granted_ms"),
                match f.get("holder_told_ms") {
                    Some(t) => format!(" (told {t:.0} ms after it)"),
                    None => " (never told)".to_owned(),
                }
            )
        } else if yes("holder_kept_lock") {
            format!(
                "the holder kept the lock (not told, nobody else granted, its grant answering and taking a guarded write five TTLs after the resume); granted to another client {:.0} ms after the pause began, once released",
                at("other_granted_ms")
            )
        } else {
            format!(
                "the holder was told {:.0} ms after the pause began, another client was granted the lock {:.0} ms after it began",
                at("holder_told_ms"),
                at("other_granted_ms")
            )
        });
        s.push(fences_in_words(f).to_owned());
        s.join("; ")
    }
}

pub mod partition_loss_before_expiry {
    //! Black-hole the holder's only connection; it must be told before the
    //! other client can be granted the lock.

    use std::time::Instant;

    use super::*;
    use crate::ensure;
    use crate::harness::{ProxyMode, TcpProxy};
    use crate::outcome::{CaseError, CaseResult, Figures};

    const NAME: &str = "partition";

    pub async fn run(t: Target) -> CaseResult {
        hold_then_partition(&t, ProxyMode::Blackhole, NAME, "the partitioned holder").await
    }

    /// Take lock `name` through a proxy, then partition the holder (`who`)
    /// with `mode` ([`partition_holder`]).
    pub(in crate::cases) async fn hold_then_partition(
        t: &Target,
        mode: ProxyMode,
        name: &'static str,
        who: &str,
    ) -> CaseResult {
        let proxy = proxy(t).await?;
        let ca = crate::connect(&t.through(&proxy).url_with("ttl", TTL)).await?;
        let sa = ca.session().await?;
        let g = sa.mutex(name).lock().await?;
        let f = partition_holder(t, &proxy, mode, name, g, who).await;
        quietly(sa.close()).await;
        f
    }

    /// A proxy in front of the target's server.
    pub(in crate::cases) async fn proxy(t: &Target) -> Result<TcpProxy, CaseError> {
        let upstream = controller(t)?.proxy_upstream().await.ok_or_else(|| {
            CaseError::Unverified("the controller names no server to proxy".into())
        })?;
        TcpProxy::start(upstream)
            .await
            .map_err(|e| CaseError::Unverified(format!("starting the proxy: {e}")))
    }

    /// Partition `proxy` (`mode`), the only way of `holder` (a grant of
    /// `name`) to its server, while another client asks for `name`: the
    /// holder (`who`) must be told before the other is granted, the other
    /// must be granted within the liveness bound, and the new fence must be
    /// above the holder's. Heals the proxy before it returns.
    pub(in crate::cases) async fn partition_holder(
        t: &Target,
        proxy: &TcpProxy,
        mode: ProxyMode,
        name: &'static str,
        holder: quorate::LockGuard,
        who: &str,
    ) -> Result<Figures, CaseError> {
        proxy.set_mode(mode);
        let cut = Instant::now();
        let mut a = Watched::new(holder);
        let fa = a.fence();
        let (other, _) = contend(
            t.url_with("ttl", TTL),
            name,
            std::time::Duration::from_secs_f64(LIMIT),
        );
        let told = a
            .told(LIMIT, &format!("{who} is told it lost the lock"))
            .await;
        let grant = granted(
            LIMIT,
            &format!("another client gets the lock of {who}"),
            other,
        )
        .await;
        proxy.set_mode(ProxyMode::Pass);
        a.finish().await;
        let (told, grant) = (told?, grant?);
        let (granted, fb) = (grant.at, grant.fence);
        grant.finish().await;

        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl().as_secs_f64() * 1000.0);
        f.insert("holder_told_ms".into(), ms(cut, told));
        f.insert("other_granted_ms".into(), ms(cut, granted));
        ensure!(
            told < granted,
            "another client was granted the lock {:.0} ms after the partition, before {who} was told ({:.0} ms): a double grant",
            ms(cut, granted),
            ms(cut, told)
        );
        ensure!(
            fb > fa,
            "the new grant's fence {fb} is not above the fence {fa} of {who}"
        );
        Ok(f)
    }
}

pub mod handoff_partition_loss_before_expiry {
    //! The holder got the lock by a *hand-off* — it was waiting behind
    //! another holder, whose release granted it — and its only connection is
    //! black-holed at once: it must be told before a third client can be
    //! granted the lock. (A grant made on the waiter's behalf, by another
    //! client's request, must start the waiter's clock no later than the
    //! backend's.)

    use std::time::Duration;

    use super::partition_loss_before_expiry::{partition_holder, proxy};
    use super::*;
    use crate::ensure;
    use crate::harness::ProxyMode;
    use crate::outcome::{CaseError, CaseResult};

    const NAME: &str = "handoff-partition";

    pub async fn run(t: Target) -> CaseResult {
        let proxy = proxy(&t).await?;
        let cb = crate::connect(&t.url_with("ttl", TTL)).await?;
        let sb = cb.session().await?;
        let first = sb.mutex(NAME).lock().await?;
        let ca = crate::connect(&t.through(&proxy).url_with("ttl", TTL)).await?;
        let sa = ca.session().await?;
        let waiter = sa.mutex(NAME);
        let waiting = tokio::spawn(async move { waiter.lock().await });
        // Let the waiter queue (a waiter that had not queued yet is granted
        // directly: the case then measures a plain partition).
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure!(
            !waiting.is_finished(),
            "the waiter was granted while the first holder held the lock"
        );
        // Age the waiter's session a little, so a grant that started the
        // waiter's clock late would show.
        tokio::time::sleep(ttl() / 3).await;
        first.release().await?;
        let g = crate::outcome::within(LIMIT, "the waiter is granted by the hand-off", waiting)
            .await?
            .map_err(|e| CaseError::Fail(format!("the waiting task failed: {e}")))??;
        let f = partition_holder(
            &t,
            &proxy,
            ProxyMode::Blackhole,
            NAME,
            g,
            "the partitioned holder (granted by a hand-off)",
        )
        .await;
        quietly(sa.close()).await;
        quietly(sb.close()).await;
        f
    }
}

pub mod one_way_partition_loss_before_expiry {
    //! A one-way partition: the holder's requests still reach its server,
    //! but no reply comes back. The holder must be told before another
    //! client is granted the lock, and another client must be granted
    //! within the liveness bound. Unlike a black hole, renewals (and
    //! reconnections) sent after the cut still arrive and may extend the
    //! lease on the server; a client that went on sending them after
    //! giving its lease up would keep the lock alive until the link
    //! healed.

    use super::partition_loss_before_expiry::hold_then_partition;
    use super::*;
    use crate::harness::ProxyMode;
    use crate::outcome::CaseResult;

    const NAME: &str = "one-way-partition";

    pub async fn run(t: Target) -> CaseResult {
        hold_then_partition(
            &t,
            ProxyMode::RepliesLost,
            NAME,
            "the holder whose replies are lost",
        )
        .await
    }
}

pub mod restart_without_persistence {
    //! Restart the server without its data while A holds a lock.

    use std::time::Instant;

    use super::*;
    use crate::outcome::{CaseResult, Figures};

    const NAME: &str = "restart";

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        let url = t.url_with("ttl", TTL);
        let ca = crate::connect(&url).await?;
        let declared = ca.capabilities().exclusive_across_data_loss;
        let sa = ca.session().await?;
        let mut a = Watched::new(sa.mutex(NAME).lock().await?);
        let fa = a.fence();

        let restarted = Instant::now();
        faults
            .restart_empty()
            .await
            .map_err(harness("restart the server"))?;
        let (other, _) = contend(url, NAME, std::time::Duration::from_secs_f64(LIMIT));
        let told = a
            .told(
                LIMIT,
                "the holder is told it lost the lock after the restart",
            )
            .await;
        let grant = granted(
            LIMIT,
            "another client gets the lock after the restart",
            other,
        )
        .await;
        a.finish().await;
        quietly(sa.close()).await;
        let (told, grant) = (told?, grant?);
        let (granted, fb) = (grant.at, grant.fence);
        grant.finish().await;

        let mut f = Figures::new();
        f.insert("holder_told_ms".into(), ms(restarted, told));
        f.insert("other_granted_ms".into(), ms(restarted, granted));
        f.insert("double_grant".into(), flag(granted < told));
        f.insert("fence_went_backwards".into(), flag(fb <= fa));
        f.insert(EXCLUSION_DECLARED.into(), flag(declared));
        // Telling the holder no later than another client is granted, and
        // fences that never go backwards, are what the case measures: broken,
        // they fail a backend that declares exclusive_across_data_loss and
        // are `violated` (never a pass) for one that does not.
        if granted < told || fb <= fa {
            return Err(broken(
                declared,
                format!(
                    "after a restart without data (exclusive_across_data_loss declared {declared}): {}",
                    describe(&f)
                ),
                f,
            ));
        }
        Ok(f)
    }

    /// The outcome in words, from the figures.
    pub fn describe(f: &Figures) -> String {
        let at = |k: &str| f.get(k).copied().unwrap_or(f64::NAN);
        let yes = |k: &str| f.get(k) == Some(&1.0);
        format!(
            "the lock was lost with the data: the holder was told {:.0} ms after the restart, another client was granted it {:.0} ms after it ({}); {}",
            at("holder_told_ms"),
            at("other_granted_ms"),
            if yes("double_grant") {
                "DOUBLE GRANT: before the holder was told"
            } else {
                "no double grant: after the holder was told"
            },
            if yes("fence_went_backwards") {
                "FENCES WENT BACKWARDS: the new grant's fence is not above the holder's"
            } else {
                "fences did not go backwards"
            }
        )
    }
}
