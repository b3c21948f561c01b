//! Data faults: the server (or the directory) loses or misorders the
//! data a guarantee rests on, without any client↔server fault.
//!
//! - `eviction_refused`: a Redis configured to evict keys is refused at
//!   connect; with the explicit opt-in, what eviction does is measured.
//! - `server_clock_step`: the server's wall clock steps forward (+15 s,
//!   libfaketime) while a lock is held: is the holder told before another
//!   client is granted it?
//! - `fence_after_lagging_failover`: the primary is killed and a replica
//!   that missed the last grant (and whose clock is behind) is promoted: is
//!   the next grant's fence above the last one handed out?
//! - `lock_file_removed`: the lock files are removed (`rm -rf` of the root)
//!   under a holder: is it told, and do fences never repeat?
//!
//! The Redis cases run on dedicated servers the target's fault controller
//! starts ([`crate::target::Fault::Eviction`], `ServerClockStep`,
//! `LaggingFailover`); they need it, and run alone. Times are figures
//! measured from the fault, never asserted (only liveness bounds are).

use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate::ErrorKind;
use tokio::task::JoinHandle;

use super::server_faults::{controller, flag, harness, ms, quietly, Grant, Watched, TTL};
use crate::outcome::{broken, CaseError, CaseResult, Figures, EXCLUSION_DECLARED};
use crate::target::{ServerFaults, Target};

/// The longest a case waits for anything (a liveness bound).
const LIMIT: Duration = Duration::from_secs(30);
/// How often the other client asks for the lock (try_lock), so the instant
/// it could first be granted is measured closely.
const POLL: Duration = Duration::from_millis(10);

/// A target for a dedicated server of the controller, on a fresh namespace.
fn dedicated(t: &Target, base_url: String) -> Target {
    Target::new(t.label.clone(), base_url)
        .fresh()
        .with_option("ttl", TTL)
}

/// Another client asking for lock `name` on `url` every [`POLL`] until
/// `limit` from now (a fresh coordinator and session whenever they fail);
/// `None` if it was never granted.
fn poll_for(url: String, name: &'static str, limit: Duration) -> JoinHandle<Option<Grant>> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let Ok(Ok(c)) = tokio::time::timeout(LIMIT, crate::connect(&url)).await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let Ok(Ok(s)) = tokio::time::timeout(LIMIT, c.session()).await else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            while tokio::time::Instant::now() < deadline && !s.is_lost() {
                match s.mutex(name).try_lock().await {
                    Ok(Some(g)) => {
                        return Some(Grant {
                            at: Instant::now(),
                            fence: g.fence().get(),
                            guard: g,
                            session: s,
                            _coordinator: c,
                        })
                    }
                    Ok(None) => tokio::time::sleep(POLL).await,
                    Err(_) => break,
                }
            }
            quietly(s.close()).await;
        }
        None
    })
}

async fn grant_of(task: JoinHandle<Option<Grant>>) -> Result<Option<Grant>, CaseError> {
    task.await
        .map_err(|e| CaseError::Fail(format!("the other client panicked: {e}")))
}

pub mod eviction_refused {
    //! A Redis with `maxmemory` + `volatile-lru` is refused at connect;
    //! with `allow_eviction=true`, filler data is written past `maxmemory`
    //! while a lock is held and another client polls for it.

    use super::*;
    use crate::fail;

    const NAME: &str = "evicted";

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        let base = faults
            .evicting_server()
            .await
            .map_err(harness("start an evicting server"))?;
        let target = dedicated(&t, base);
        match target.connect().await {
            Ok(_) => fail!(
                "a server with maxmemory and maxmemory-policy volatile-lru was accepted: its lock keys can be evicted"
            ),
            Err(e)
                if e.kind() == ErrorKind::InvalidConfig
                    && e.to_string().contains("maxmemory-policy") => {}
            Err(e) => fail!("refused, but not as an InvalidConfig naming maxmemory-policy: {e}"),
        }

        // Opted in: measure what eviction does to a held lock.
        let url = target.url_with("allow_eviction", "true");
        let ca = crate::connect(&url).await?;
        let sa = ca.session().await?;
        let mut holder = Watched::new(sa.mutex(NAME).lock().await?);
        let fa = holder.fence();
        let other = poll_for(url, NAME, Duration::from_secs(8));
        let filling = Instant::now();
        let evicted = faults
            .fill_memory()
            .await
            .map_err(harness("fill the server's memory"))?;
        let filled = Instant::now();
        let grant = grant_of(other).await?;
        let told = holder.told_within(Duration::from_secs(6)).await;
        let mut f = Figures::new();
        f.insert("optin_evicted_keys".into(), evicted as f64);
        f.insert("optin_fill_ms".into(), ms(filling, filled));
        f.insert("optin_lock_lost".into(), flag(grant.is_some()));
        if let Some(g) = &grant {
            f.insert("optin_other_granted_ms".into(), ms(filling, g.at));
            f.insert(
                "optin_double_grant".into(),
                flag(told.is_none_or(|t| g.at < t)),
            );
            f.insert("optin_fence_went_backwards".into(), flag(g.fence <= fa));
        }
        if let Some(told) = told {
            f.insert("optin_holder_told_ms".into(), ms(filling, told));
        }
        holder.finish().await;
        quietly(sa.close()).await;
        if let Some(g) = grant {
            g.finish().await;
        }
        Ok(f)
    }

    /// The outcome in words, from the figures (the opt-in run's are
    /// `optin_*`: the case's own guarantee is the refusal).
    pub fn describe(f: &Figures) -> String {
        let at = |k: &str| f.get(k).copied();
        let mut out = format!(
            "refused at connect (InvalidConfig naming maxmemory-policy); with allow_eviction=true, {:.0} keys were evicted while a lock was held: ",
            at("optin_evicted_keys").unwrap_or(f64::NAN)
        );
        match at("optin_other_granted_ms") {
            None => out.push_str("the lock key survived (no other client was granted it)"),
            Some(granted) => {
                out.push_str(&format!(
                    "another client was granted the lock {granted:.0} ms after filling began, "
                ));
                match at("optin_holder_told_ms") {
                    Some(told) => out.push_str(&format!("the holder was told at {told:.0} ms")),
                    None => out.push_str("the holder was not told"),
                }
                if at("optin_double_grant") == Some(1.0) {
                    out.push_str(" (DOUBLE GRANT: before the holder was told)");
                }
            }
        }
        out
    }
}

pub mod server_clock_step {
    //! The server's wall clock steps +15 s while a lock is held; another
    //! client polls for the lock.

    use super::*;

    const NAME: &str = "clock";
    /// The forward step, in seconds: several TTLs.
    const STEP_S: i64 = 15;

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        let base = faults
            .clock_server()
            .await
            .map_err(harness("start a server with a fake clock"))?;
        let target = dedicated(&t, base);
        let ca = target.connect().await?;
        let declared = ca.capabilities().exclusive_across_clock_steps;
        // Warm the fresh server up first: a session, a lock and a release
        // on another name, before the fault. A cold server (a JVM under a
        // busy build) can answer its very first requests more slowly than
        // the TTL, and a session lost then is no clock step's doing.
        let warm = ca.session().await?;
        warm.mutex("warm-up").lock().await?.release().await?;
        quietly(warm.close()).await;
        let sa = ca.session().await?;
        let mut holder = Watched::new(sa.mutex(NAME).lock().await?);
        let fa = holder.fence();
        let other = poll_for(target.url().to_owned(), NAME, Duration::from_secs(10));
        // Let the other client find the lock held first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stepped = Instant::now();
        faults
            .step_server_clock(STEP_S)
            .await
            .map_err(harness("step the server's clock"))?;
        let grant = grant_of(other).await?;
        // Nobody else granted for the whole poll (5 TTLs): a backend whose
        // leases do not run on the wall clock kept the lock; what the
        // holder was told by then is the outcome. Otherwise the holder
        // must be told in the end.
        let told = match grant {
            Some(_) => holder.told_within(LIMIT).await,
            None => holder.told_within(Duration::ZERO).await,
        };
        let mut f = Figures::new();
        f.insert("clock_step_s".into(), STEP_S as f64);
        f.insert(EXCLUSION_DECLARED.into(), flag(declared));
        if grant.is_none() && told.is_none() {
            // Kept: the holder still holds it, and says so.
            let held = holder.is_held().await;
            f.insert("holder_kept_lock".into(), flag(held == Some(true)));
            holder.finish().await;
            quietly(sa.close()).await;
            if held != Some(true) {
                return Err(CaseError::Fail(format!(
                    "nobody else was granted the lock within 10 s of the step and the holder was never told, but is_held answered {held:?}"
                )));
            }
            return Ok(f);
        }
        let told_ms = told.map(|at| ms(stepped, at));
        if let Some(t) = told_ms {
            f.insert("holder_told_ms".into(), t);
        }
        let mut double = false;
        if let Some(g) = &grant {
            double = told.is_none_or(|t| g.at < t);
            f.insert("other_granted_ms".into(), ms(stepped, g.at));
            f.insert("fence_went_backwards".into(), flag(g.fence <= fa));
        }
        f.insert("double_grant".into(), flag(double));
        holder.finish().await;
        quietly(sa.close()).await;
        let backwards = grant.as_ref().is_some_and(|g| g.fence <= fa);
        if let Some(g) = grant {
            g.finish().await;
        }
        // Told before anyone else is granted, and fences that only go up:
        // broken, they fail a backend that declares
        // exclusive_across_clock_steps and are `violated` (never a pass)
        // for one that does not.
        if double || backwards {
            return Err(broken(
                declared,
                format!(
                    "after a +{STEP_S} s step of the server's wall clock (exclusive_across_clock_steps declared {declared}): {}",
                    describe(&f)
                ),
                f,
            ));
        }
        Ok(f)
    }

    /// The outcome in words, from the figures.
    pub fn describe(f: &Figures) -> String {
        let at = |k: &str| f.get(k).copied();
        let told = at("holder_told_ms").map_or("never told".to_owned(), |t| {
            format!("told {t:.0} ms after the step")
        });
        match at("other_granted_ms") {
            None => format!("the holder kept the lock ({told}); nobody else was granted it"),
            Some(g) => format!(
                "another client was granted the lock {g:.0} ms after the step, the holder {told}{}",
                if at("double_grant") == Some(1.0) {
                    " (DOUBLE GRANT: before the holder was told)"
                } else {
                    ""
                }
            ),
        }
    }
}

pub mod fence_after_lagging_failover {
    //! Primary + replica (clock 5 s behind, replication through a proxy);
    //! grant 1 replicated; replication black-holed; grant 2 on the primary
    //! only; primary killed, replica promoted; grant 3 on it. Run twice: as
    //! the target is configured, then with the Redis opt-in `wait_replicas=1`
    //! (a grant returns only once a replica acknowledged it). Its cost is
    //! measured by the backend's own tests, on a replica without a proxy
    //! (through this harness proxy, Nagle's algorithm would dominate it).

    use super::*;

    const NAME: &str = "fenced";
    const BEHIND_S: u64 = 5;
    /// The opt-in that makes fences survive the failover (Redis).
    const OPT_IN: (&str, &str) = ("wait_replicas", "1");

    /// What one run measured.
    struct Run {
        fences: [Option<u64>; 3],
        failover_ms: f64,
    }

    impl Run {
        /// The largest fence handed out before the failover.
        fn before(&self) -> u64 {
            self.fences[0].max(self.fences[1]).unwrap_or(0)
        }

        fn backwards(&self) -> bool {
            self.fences[2].is_some_and(|f3| f3 <= self.before())
        }
    }

    async fn scenario(
        t: &Target,
        faults: &Arc<dyn ServerFaults>,
        option: Option<(&str, &str)>,
    ) -> Result<Run, CaseError> {
        let base = faults
            .lagging_pair(BEHIND_S)
            .await
            .map_err(harness("start a primary with a lagging replica"))?;
        let target = dedicated(t, base);
        let url = match option {
            Some((k, v)) => target.url_with(k, v),
            None => target.url().to_owned(),
        };
        let ca = crate::connect(&url).await?;
        let sa = ca.session().await?;
        let g1 = sa.mutex(NAME).lock().await?;
        let f1 = g1.fence().get();
        g1.release().await?;
        // Give the replica a moment to receive grant 1 and the release.
        tokio::time::sleep(Duration::from_millis(300)).await;
        faults
            .pause_replication()
            .await
            .map_err(harness("pause replication"))?;
        // With the opt-in, this grant is not acknowledged and given up.
        let g2 = crate::outcome::within(
            LIMIT.as_secs_f64(),
            "a grant while replication is cut",
            sa.mutex(NAME).lock(),
        )
        .await?;
        let f2 = g2.as_ref().ok().map(|g| g.fence().get());
        let killed = Instant::now();
        let promoted = faults
            .fail_over_to_replica()
            .await
            .map_err(harness("fail over to the replica"))?;
        let failover_ms = ms(killed, Instant::now());
        drop(g2);
        drop(sa);
        drop(ca);
        let addr = promoted
            .rsplit('/')
            .next()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .ok_or_else(|| CaseError::Unverified(format!("unexpected replica URL {promoted}")))?;
        // The promoted replica has no replica of its own: the next client
        // connects without the opt-in.
        let cb = target.via(addr).connect().await?;
        let sb = cb.session().await?;
        let g3 = crate::outcome::within(
            LIMIT.as_secs_f64(),
            "a grant on the promoted replica",
            sb.mutex(NAME).lock(),
        )
        .await??;
        let f3 = g3.fence().get();
        quietly(g3.release()).await;
        quietly(sb.close()).await;
        Ok(Run {
            fences: [Some(f1), f2, Some(f3)],
            failover_ms,
        })
    }

    fn record(f: &mut Figures, suffix: &str, run: &Run) {
        for (i, fence) in run.fences.iter().enumerate() {
            if let Some(fence) = fence {
                f.insert(format!("fence_{}{suffix}", i + 1), *fence as f64);
            }
        }
        f.insert(format!("failover_ms{suffix}"), run.failover_ms);
        f.insert(
            format!("fence_went_backwards{suffix}"),
            flag(run.backwards()),
        );
    }

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        // Fences that never go backwards across a failover: part of
        // exclusive_across_failover, which survives_failover implies.
        let caps = t.connect().await?.capabilities();
        let declared = caps.survives_failover || caps.exclusive_across_failover;
        let plain = scenario(&t, &faults, None).await?;
        let opted = scenario(&t, &faults, Some(OPT_IN)).await?;
        let mut f = Figures::new();
        f.insert("replica_clock_behind_s".into(), BEHIND_S as f64);
        f.insert(EXCLUSION_DECLARED.into(), flag(declared));
        record(&mut f, "", &plain);
        record(&mut f, "_wait", &opted);
        if opted.backwards() {
            return Err(CaseError::Fail(format!(
                "with {}={}, fences still went backwards: {}",
                OPT_IN.0,
                OPT_IN.1,
                describe(&f)
            )));
        }
        if plain.backwards() {
            return Err(broken(
                declared,
                format!(
                    "after failing over to a replica that missed the last grant (exclusive_across_failover declared {declared}): {}",
                    describe(&f)
                ),
                f,
            ));
        }
        Ok(f)
    }

    /// The outcome in words, from the figures.
    pub fn describe(f: &Figures) -> String {
        let at = |k: &str| f.get(k).copied();
        let fence = |k: &str| at(k).map_or("none (refused)".to_owned(), |v| format!("{v:.0}"));
        let verdict = |k: &str| {
            if at(k) == Some(1.0) {
                "FENCES WENT BACKWARDS"
            } else {
                "fences kept increasing"
            }
        };
        format!(
            "as configured: fences {} (replicated), {} (primary only), then {} on the promoted replica (clock {:.0} s behind): {}; with {}={}: {}, {}, then {}: {}",
            fence("fence_1"),
            fence("fence_2"),
            fence("fence_3"),
            at("replica_clock_behind_s").unwrap_or(f64::NAN),
            verdict("fence_went_backwards"),
            OPT_IN.0,
            OPT_IN.1,
            fence("fence_1_wait"),
            fence("fence_2_wait"),
            fence("fence_3_wait"),
            verdict("fence_went_backwards_wait"),
        )
    }
}

pub mod lock_file_removed {
    //! The root directory (every lock file) is removed under a holder;
    //! another client locks the same name (a new file).

    use super::*;
    use crate::fail;

    const NAME: &str = "removed";
    /// Rounds of lock, removal and grant to the other client.
    const ROUNDS: usize = 10;

    /// What one round measured, from the removal.
    struct Round {
        fence_a: u64,
        fence_b: u64,
        granted_ms: f64,
        told_ms: Option<f64>,
    }

    impl Round {
        /// Granted to the other before the holder was told.
        fn double(&self) -> bool {
            self.told_ms.is_none_or(|t| self.granted_ms < t)
        }

        /// How long before the other's grant the holder was told
        /// (negative: a double grant).
        fn lead(&self) -> f64 {
            self.told_ms
                .map_or(f64::NEG_INFINITY, |t| self.granted_ms - t)
        }
    }

    /// One round: a holder on `ca`, the root removed, the name locked at
    /// once by a session of `cb` opened before the removal.
    async fn round(
        ca: &quorate::Coordinator,
        cb: &quorate::Coordinator,
        root: &std::path::Path,
    ) -> Result<Round, CaseError> {
        let sa = ca.session().await?;
        let mut holder = Watched::new(sa.mutex(NAME).lock().await?);
        let fence_a = holder.fence();
        let sb = cb.session().await?;
        let removed = Instant::now();
        if let Err(e) = std::fs::remove_dir_all(root) {
            return Err(CaseError::Unverified(format!(
                "could not remove `{}`: {e}",
                root.display()
            )));
        }
        let gb = crate::outcome::within(
            LIMIT.as_secs_f64(),
            "another client locks the name again",
            sb.mutex(NAME).lock(),
        )
        .await??;
        let granted = Instant::now();
        let fence_b = gb.fence().get();
        let told = holder.told_within(LIMIT).await;
        holder.finish().await;
        quietly(sa.close()).await;
        quietly(gb.release()).await;
        quietly(sb.close()).await;
        Ok(Round {
            fence_a,
            fence_b,
            granted_ms: ms(removed, granted),
            told_ms: told.map(|t| ms(removed, t)),
        })
    }

    pub async fn run(t: Target) -> CaseResult {
        let config = quorate::Config::parse(t.url())?;
        let root = std::path::PathBuf::from(&config.path);
        // Only ever remove this case's own fresh namespace directory.
        let own = root.is_absolute()
            && root
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("conformance-"));
        if !own {
            return Err(CaseError::Unverified(format!(
                "`{}` is not this case's own namespace directory: not removing it",
                root.display()
            )));
        }
        let ca = t.connect().await?;
        let declared = ca.capabilities().exclusive_across_data_loss;
        // The other client is connected before the removal: it locks at
        // once after it, as a busy worker would. Whether the holder is told
        // first is a race between its notice and one grant, so the round
        // is repeated; the figures are those of the closest round (the
        // smallest lead of the holder's notice over the other's grant).
        let cb = t.connect().await?;
        let mut closest: Option<Round> = None;
        let mut doubles = 0;
        for _ in 0..ROUNDS {
            let r = round(&ca, &cb, &root).await?;
            if r.fence_b <= r.fence_a {
                fail!("the new grant's fence {} is not above the holder's {}: fences repeated after the lock files were removed", r.fence_b, r.fence_a);
            }
            let Some(_) = r.told_ms else {
                fail!(
                    "the holder was never told (within {LIMIT:?}) that its lock file was removed; another client was granted the name with fence {} (holder's {})",
                    r.fence_b, r.fence_a
                );
            };
            doubles += usize::from(r.double());
            if closest.as_ref().is_none_or(|c| r.lead() < c.lead()) {
                closest = Some(r);
            }
        }
        let r = closest.expect("at least one round");
        let mut f = Figures::new();
        f.insert("rounds".into(), ROUNDS as f64);
        f.insert(EXCLUSION_DECLARED.into(), flag(declared));
        f.insert("double_grants".into(), doubles as f64);
        f.insert("other_granted_ms".into(), r.granted_ms);
        if let Some(told) = r.told_ms {
            f.insert("holder_told_ms".into(), told);
        }
        f.insert("fence_went_backwards".into(), flag(r.fence_b <= r.fence_a));
        let double = doubles > 0;
        f.insert("double_grant".into(), flag(double));
        // Told, and fences kept increasing (the guarantee under `fencing`).
        // But another client granted before the holder was told is two
        // holders: it fails a backend that declares
        // exclusive_across_data_loss and is `violated` (never a pass) for
        // one that does not.
        if double {
            return Err(broken(
                declared,
                format!(
                    "after the lock files were removed (exclusive_across_data_loss declared {declared}): {}",
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
        format!(
            "after the root was removed, another client (connected beforehand) was granted the name {:.1} ms later (a new file: the kernel lock cannot stop it) and the holder was told {:.1} ms after the removal (the closest of {:.0} rounds){}; fences kept increasing",
            at("other_granted_ms"),
            at("holder_told_ms"),
            at("rounds"),
            match at("double_grants") {
                n if n > 0.0 => format!(" (DOUBLE GRANT in {n:.0} rounds: before the holder was told)"),
                _ => String::new(),
            }
        )
    }
}
