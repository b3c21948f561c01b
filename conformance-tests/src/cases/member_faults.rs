//! Member (server↔server) partition cases: one member of a cluster is cut
//! off from its peers while its client port stays up, and a client
//! connected only to that member holds a lock (and a leadership, and has
//! written a value). The cut-off member can still answer that client from
//! its own, stale, state; nothing the client relies on may come from it.
//!
//! They need a fault controller supporting [`Fault::MemberPartition`]
//! (a harness cluster whose peer traffic runs through
//! [`crate::harness::PeerLinks`]), are not applicable without one, and run
//! alone. The contender connects to the other members only (the majority).
//! Times are measured from the partition; they are figures, never asserted
//! (only generous liveness bounds are).
//!
//! [`Fault::MemberPartition`]: crate::target::Fault::MemberPartition

use std::net::SocketAddr;
use std::sync::Arc;

use super::server_faults::{controller, harness};
use crate::outcome::CaseError;
use crate::target::{ServerFaults, Target};

/// Which member a case cuts off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// One that does not order writes (the majority keeps its leader).
    Follower,
    /// The leader itself (the majority must elect another).
    Leader,
}

/// The member to cut off, the client address of that member, and those of
/// the others (the majority).
async fn split(
    faults: &Arc<dyn ServerFaults>,
    which: Cut,
) -> Result<(usize, SocketAddr, Vec<SocketAddr>), CaseError> {
    let members = faults.member_clients();
    let cut = match which {
        Cut::Follower => faults.member_to_isolate().await,
        Cut::Leader => faults.leader_member().await,
    }
    .map_err(harness("choose a member to cut off"))?;
    let alone = *members.get(cut).ok_or_else(|| {
        CaseError::Unverified(format!(
            "the controller names no client address for member {cut}"
        ))
    })?;
    let majority: Vec<SocketAddr> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cut)
        .map(|(_, a)| *a)
        .collect();
    if majority.len() < 2 {
        return Err(CaseError::Unverified(
            "a member partition needs at least three members".into(),
        ));
    }
    Ok((cut, alone, majority))
}

pub mod member_partition_loss_before_regrant {
    //! The holder's member is cut off from its peers; the holder must be
    //! told it lost the lock no later than a client on the majority is
    //! granted it.

    use std::time::{Duration, Instant};

    use super::super::server_faults::{contend, granted, ms, quietly, ttl, Watched, LIMIT, TTL};
    use super::*;
    use crate::ensure;
    use crate::outcome::{CaseResult, Figures};

    const NAME: &str = "member-partition";

    pub async fn run(t: Target) -> CaseResult {
        run_cutting(t, Cut::Follower).await
    }

    /// The case, cutting off the member `which`.
    pub(in crate::cases) async fn run_cutting(t: Target, which: Cut) -> CaseResult {
        let faults = controller(&t)?;
        let (cut, alone, majority) = split(&faults, which).await?;
        let ca = crate::connect(&t.via(alone).url_with("ttl", TTL)).await?;
        let sa = ca.session().await?;
        let mut a = Watched::new(sa.mutex(NAME).lock().await?);
        let fa = a.fence();
        let majority_url = t.via_all(&majority).url_with("ttl", TTL);

        faults
            .isolate_member(cut)
            .await
            .map_err(harness("cut a member off"))?;
        let partitioned = Instant::now();
        // Cutting the leader off makes the majority elect a new one first
        // (ZooKeeper's election under a partition was seen to take 20–30 s):
        // a longer liveness bound.
        let limit = match which {
            Cut::Follower => LIMIT,
            Cut::Leader => LIMIT * 3.0,
        };
        let (other, _) = contend(majority_url, NAME, Duration::from_secs_f64(limit));
        let told = a
            .told(
                LIMIT,
                "the holder on the cut-off member is told it lost the lock",
            )
            .await;
        let grant = granted(
            limit,
            "a client on the majority gets the lock of the holder on the cut-off member",
            other,
        )
        .await;
        let healed = faults.heal_members().await;
        a.finish().await;
        quietly(sa.close()).await;
        let (told, grant) = (told?, grant?);
        let (granted_at, fb) = (grant.at, grant.fence);
        grant.finish().await;
        healed.map_err(harness("heal the member partition"))?;

        let mut f = Figures::new();
        f.insert("ttl_ms".into(), ttl().as_secs_f64() * 1000.0);
        f.insert("holder_told_ms".into(), ms(partitioned, told));
        f.insert("other_granted_ms".into(), ms(partitioned, granted_at));
        ensure!(
            told <= granted_at,
            "a client on the majority was granted the lock {:.0} ms after member {cut} ({which:?}) was cut off, before the holder connected to that member was told ({:.0} ms): a double grant",
            ms(partitioned, granted_at),
            ms(partitioned, told)
        );
        ensure!(
            fb > fa,
            "the new grant's fence {fb} is not above the cut-off holder's {fa}"
        );
        Ok(f)
    }
}

pub mod leader_partition_loss_before_regrant {
    //! As `member_partition_loss_before_regrant`, with the *leader* cut off
    //! from its peers: the holder's member may go on renewing leases as
    //! leader until it notices it lost its quorum.

    use super::member_partition_loss_before_regrant::run_cutting;
    use super::Cut;
    use crate::outcome::CaseResult;
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        run_cutting(t, Cut::Leader).await
    }
}

pub mod no_stale_reads {
    //! The holder's member is cut off; through the majority, its session is
    //! revoked and another client takes the lock, the leadership and writes
    //! a new value. Asked on the cut-off member, `is_held`, `is_leader`,
    //! `read` and a guarded write must never answer from its stale state:
    //! an error, `false`, or the new value.

    use std::time::{Duration, Instant};

    use super::super::server_faults::{quietly, LIMIT};
    use super::*;
    use crate::outcome::{CaseResult, Figures};
    use crate::{ensure, fail};

    const LOCK: &str = "stale";
    const ELECTION: &str = "stale";
    const KEY: &str = "stale";
    /// The holder's TTL: long, so that its own client-side deadline does
    /// not answer for the backend while the reads are asked (core answers
    /// `false` by itself once a session is lost).
    const HOLDER_TTL: &str = "10s";
    /// How long one read may take before it counts as "no answer".
    const READ_LIMIT: Duration = Duration::from_secs(20);

    /// One answer of the cut-off member, for the figures: 1 = stale (a
    /// violation), 0 = not stale, -1 = an error or no answer.
    fn code(stale: Option<bool>) -> f64 {
        match stale {
            Some(true) => 1.0,
            Some(false) => 0.0,
            None => -1.0,
        }
    }

    /// Run one read with a bound; `Some(answer)` or `None` for an error or
    /// no answer; and how long it took, in ms.
    async fn ask<T, E: std::fmt::Display>(
        what: &str,
        read: impl std::future::Future<Output = Result<T, E>>,
    ) -> (Option<T>, f64) {
        let started = Instant::now();
        let answer = match tokio::time::timeout(READ_LIMIT, read).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(what, error = %e, "the cut-off member refused");
                None
            }
            Err(_) => None,
        };
        (answer, started.elapsed().as_secs_f64() * 1000.0)
    }

    pub async fn run(t: Target) -> CaseResult {
        let faults = controller(&t)?;
        let (cut, alone, majority) = split(&faults, Cut::Follower).await?;
        let ca = crate::connect(&t.via(alone).url_with("ttl", HOLDER_TTL)).await?;
        let sa = ca.session().await?;
        let g = sa.mutex(LOCK).lock().await?;
        let l = sa.election(ELECTION).campaign(b"cut-off").await?;
        ensure!(
            g.write_if_held(KEY, b"old").await?,
            "the holder's guarded write did not apply before any fault"
        );
        let cb = crate::connect(&t.via_all(&majority).url_with("ttl", "2s")).await?;
        let sb = cb.session().await?;

        faults
            .isolate_member(cut)
            .await
            .map_err(harness("cut a member off"))?;
        let partitioned = Instant::now();
        // The conflicting grants, through the majority.
        let conflict = async {
            cb.revoke_session(sa.id()).await?;
            let gb = sb.mutex(LOCK).lock().await?;
            let lb = sb.election(ELECTION).campaign(b"majority").await?;
            let wrote = gb.write_if_held(KEY, b"new").await?;
            Ok::<_, quorate::Error>((gb, lb, wrote))
        };
        let conflict = tokio::time::timeout(Duration::from_secs_f64(LIMIT), conflict).await;
        let conflicted = Instant::now();
        let checks = if matches!(conflict, Ok(Ok(_))) {
            Some(tokio::join!(
                ask("is_held", g.is_held()),
                ask("is_leader", l.is_leader()),
                ask("read", sa.read(KEY)),
                ask("write_if_held", g.write_if_held(KEY, b"stale write")),
            ))
        } else {
            None
        };
        let healed = faults.heal_members().await;
        let after_heal = sb.read(KEY).await;
        let (gb, lb) = match conflict {
            Ok(Ok((gb, lb, wrote))) => {
                if !wrote {
                    fail!("the majority's guarded write did not apply while it held the lock");
                }
                (gb, lb)
            }
            Ok(Err(e)) => fail!("the conflicting grants through the majority failed: {e}"),
            Err(_) => fail!("the conflicting grants through the majority took over {LIMIT} s"),
        };
        quietly(gb.release()).await;
        quietly(lb.resign()).await;
        quietly(sb.close()).await;
        drop((g, l));
        quietly(sa.close()).await;
        healed.map_err(harness("heal the member partition"))?;
        let Some((held, leader, read, write)) = checks else {
            fail!("no check ran");
        };

        let (stale_held, stale_leader, stale_write) = (held.0, leader.0, write.0);
        let stale_read = read.0.as_ref().map(|v| v.as_deref() != Some(&b"new"[..]));
        let mut f = Figures::new();
        f.insert(
            "conflict_granted_ms".into(),
            conflicted.duration_since(partitioned).as_secs_f64() * 1000.0,
        );
        for (name, stale, took) in [
            ("is_held", stale_held, held.1),
            ("is_leader", stale_leader, leader.1),
            ("read", stale_read, read.1),
            ("write_if_held", stale_write, write.1),
        ] {
            f.insert(format!("{name}_stale"), code(stale));
            f.insert(format!("{name}_answer_ms"), took);
        }
        let mut stale = Vec::new();
        if stale_held == Some(true) {
            stale.push(format!(
                "is_held() answered true after the lock was granted through the majority ({:.1} ms)",
                held.1
            ));
        }
        if stale_leader == Some(true) {
            stale.push(format!(
                "is_leader() answered true after another candidate became leader through the majority ({:.1} ms)",
                leader.1
            ));
        }
        if stale_read == Some(true) {
            stale.push(format!(
                "read() answered {:?} after the majority wrote \"new\" ({:.1} ms)",
                read.0
                    .as_ref()
                    .map(|v| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())),
                read.1
            ));
        }
        if stale_write == Some(true) {
            stale.push(
                "a guarded write applied after the lock was granted through the majority".into(),
            );
        }
        ensure!(
            stale.is_empty(),
            "on member {cut}, cut off from its peers: {}",
            stale.join("; ")
        );
        match after_heal {
            Ok(Some(v)) if v == b"new" => {}
            other => fail!(
                "after the partition healed the value reads {:?}, not the majority's \"new\"",
                other.map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
            ),
        }
        Ok(f)
    }
}
