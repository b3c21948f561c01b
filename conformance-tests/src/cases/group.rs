//! Group membership cases.

pub mod membership_events {
    use futures::StreamExt;
    use quorate::{GroupEvent, Member};
    use serde_json::json;

    use crate::cases::client;
    use crate::outcome::{within, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    fn member(id: &str, caps: serde_json::Value) -> Member {
        Member {
            id: id.to_owned(),
            capabilities: caps,
        }
    }

    async fn next(
        w: &mut futures::stream::BoxStream<'static, quorate::Result<GroupEvent>>,
        what: &str,
    ) -> Result<GroupEvent, crate::outcome::CaseError> {
        match within(10.0, what, w.next()).await? {
            Some(Ok(e)) => Ok(e),
            Some(Err(e)) => fail!("{what}: the watch failed: {e}"),
            None => fail!("{what}: the watch ended"),
        }
    }

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_w, sw) = client(&t).await?;
        let early = sa.group("g").join("early", json!({"v": 0})).await?;
        let mut w1 = sw.group("g").watch();
        let e = next(&mut w1, "the first event").await?;
        ensure!(
            e == GroupEvent::Snapshot {
                members: vec![member("early", json!({"v": 0}))]
            },
            "first event {e:?}, expected a snapshot with `early`"
        );

        let start = std::time::Instant::now();
        let a = sa.group("g").join("a", json!({"slots": 2})).await?;
        let e = next(&mut w1, "joined a").await?;
        let join_to_event_us = start.elapsed().as_secs_f64() * 1e6;
        ensure!(
            e == GroupEvent::Joined {
                member: member("a", json!({"slots": 2}))
            },
            "got {e:?}, expected Joined a"
        );
        let b = sb.group("g").join("b", json!(null)).await?;
        let e = next(&mut w1, "joined b").await?;
        ensure!(
            e == GroupEvent::Joined {
                member: member("b", json!(null))
            },
            "got {e:?}, expected Joined b"
        );

        // A second watcher started now sees a snapshot with all three.
        let mut w2 = sw.group("g").watch();
        let e = next(&mut w2, "the second watcher's snapshot").await?;
        let mut all = vec![
            member("a", json!({"slots": 2})),
            member("b", json!(null)),
            member("early", json!({"v": 0})),
        ];
        all.sort_by(|x, y| x.id.cmp(&y.id));
        ensure!(
            e == GroupEvent::Snapshot {
                members: all.clone()
            },
            "second snapshot {e:?}"
        );
        ensure!(
            sw.group("g").members().await? == all,
            "members() disagrees with the snapshot"
        );

        a.update(json!({"slots": 3})).await?;
        early.leave().await?;
        sb.close().await?; // b leaves with its session
        let expected = [
            GroupEvent::Updated {
                member: member("a", json!({"slots": 3})),
            },
            GroupEvent::Left { id: "early".into() },
            GroupEvent::Left { id: "b".into() },
        ];
        for (i, want) in expected.iter().enumerate() {
            let e1 = next(&mut w1, "a change on the first watcher").await?;
            ensure!(
                &e1 == want,
                "first watcher event {i}: got {e1:?}, expected {want:?}"
            );
            let e2 = next(&mut w2, "a change on the second watcher").await?;
            ensure!(
                &e2 == want,
                "second watcher event {i}: got {e2:?}, expected {want:?}"
            );
        }
        within(
            5.0,
            "b's membership lost() after its session closed",
            b.lost(),
        )
        .await?;
        ensure!(
            sw.group("g").members().await? == vec![member("a", json!({"slots": 3}))],
            "members() after the changes"
        );
        a.leave().await?;
        let e = next(&mut w1, "a leaves").await?;
        ensure!(
            e == GroupEvent::Left { id: "a".into() },
            "got {e:?}, expected Left a"
        );
        // No duplicate or extra event is pending.
        let extra = tokio::time::timeout(std::time::Duration::from_millis(200), w1.next()).await;
        ensure!(
            extra.is_err(),
            "an unexpected extra event: {:?}",
            extra.ok().flatten()
        );
        drop((w1, w2));
        sa.close().await?;
        sw.close().await?;
        let mut f = Figures::new();
        f.insert("join_to_event_us".into(), join_to_event_us);
        Ok(f)
    }
}

pub mod membership_duplicate_id {
    use quorate::ErrorKind;
    use serde_json::json;

    use crate::cases::client;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let m = sa.group("g").join("node", json!(1)).await?;
        match sb.group("g").join("node", json!(2)).await {
            Err(e) if e.kind() == ErrorKind::AlreadyHeld => {}
            Err(e) => fail!("joining a taken id failed with {e}, expected AlreadyHeld"),
            Ok(_) => fail!("two live members got the same id"),
        }
        match sa.group("g").join("node", json!(3)).await {
            Err(e) if e.kind() == ErrorKind::AlreadyHeld => {}
            other => fail!("re-joining from the same session: {other:?}, expected AlreadyHeld"),
        }
        let members = sb.group("g").members().await?;
        ensure!(
            members.len() == 1 && members[0].capabilities == json!(1),
            "members {members:?}"
        );
        m.leave().await?;
        let m2 = sb.group("g").join("node", json!(2)).await?;
        m2.leave().await?;
        sa.close().await?;
        sb.close().await?;
        Ok(Figures::new())
    }
}

pub mod membership_view_consistent {
    //! Watchers started before and while members join, change, leave,
    //! rejoin and expire: each watcher's stream is consistent at every
    //! step (a `Snapshot` first; `Joined` only of a member it does not
    //! know, `Updated`/`Left` only of one it does, so every `Left` follows
    //! that member's `Joined` or its place in the snapshot, exactly once),
    //! the watcher started first sees every member's `Joined` and `Left`,
    //! and every watcher converges to `members()`.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use futures::StreamExt;
    use quorate::{Capabilities, FailureDetection, GroupEvent, KeepAlive, SessionOptions};
    use serde_json::{json, Value};
    use tokio::sync::watch;

    use crate::cases::client;
    use crate::outcome::{within, CaseError, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    type View = BTreeMap<String, Value>;

    /// What a checked watcher saw so far.
    #[derive(Debug, Clone, Default)]
    struct Seen {
        view: View,
        /// Every id it was told joined (the snapshot counts).
        ever_joined: Vec<String>,
        /// Every id it was told left.
        ever_left: Vec<String>,
        events: usize,
        /// The first inconsistency, if any.
        broken: Option<String>,
    }

    /// Follow `events`, checking each against the view so far; publish
    /// the result after every event. Stops at the first inconsistency.
    async fn check(
        name: &'static str,
        mut events: futures::stream::BoxStream<'static, quorate::Result<GroupEvent>>,
        out: watch::Sender<Seen>,
    ) {
        let mut seen = Seen::default();
        while let Some(event) = events.next().await {
            seen.events += 1;
            let n = seen.events;
            let problem = match event {
                Err(e) => Some(format!("the watch failed: {e}")),
                Ok(GroupEvent::Snapshot { members }) if n == 1 => {
                    for m in members {
                        seen.ever_joined.push(m.id.clone());
                        seen.view.insert(m.id, m.capabilities);
                    }
                    None
                }
                Ok(e) if n == 1 => Some(format!("the first event is {e:?}, not a snapshot")),
                Ok(GroupEvent::Snapshot { .. }) => Some(format!("a second snapshot (event {n})")),
                Ok(GroupEvent::Joined { member }) => {
                    if seen.view.contains_key(&member.id) {
                        Some(format!(
                            "event {n}: Joined `{}`, which it already had",
                            member.id
                        ))
                    } else {
                        seen.ever_joined.push(member.id.clone());
                        seen.view.insert(member.id, member.capabilities);
                        None
                    }
                }
                Ok(GroupEvent::Updated { member }) => match seen.view.get_mut(&member.id) {
                    None => Some(format!(
                        "event {n}: Updated `{}`, which never joined",
                        member.id
                    )),
                    Some(c) => {
                        *c = member.capabilities;
                        None
                    }
                },
                Ok(GroupEvent::Left { id }) => {
                    if seen.view.remove(&id).is_none() {
                        Some(format!("event {n}: Left `{id}` with no Joined before it"))
                    } else {
                        seen.ever_left.push(id);
                        None
                    }
                }
            };
            if let Some(p) = problem {
                tracing::warn!(watcher = name, problem = %p, "inconsistent group view");
                seen.broken = Some(p);
                let _ = out.send(seen);
                return;
            }
            let _ = out.send(seen.clone());
        }
        seen.broken = Some("the watch ended".into());
        let _ = out.send(seen);
    }

    /// Wait until `cond` holds for the watcher, failing at once on an
    /// inconsistency.
    async fn until(
        rx: &mut watch::Receiver<Seen>,
        secs: f64,
        what: &str,
        cond: impl Fn(&Seen) -> bool,
    ) -> Result<Seen, CaseError> {
        let seen = within(secs, what, rx.wait_for(|s| s.broken.is_some() || cond(s)))
            .await?
            .map_err(|_| CaseError::Fail(format!("{what}: the checking task ended")))?
            .clone();
        if let Some(p) = &seen.broken {
            fail!("{what}: {p}");
        }
        Ok(seen)
    }

    fn is_lease(c: &Capabilities) -> bool {
        !matches!(c.failure_detection, FailureDetection::ProcessLifetime)
    }

    pub async fn run(t: Target) -> CaseResult {
        let (ca, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_w, sw) = client(&t).await?;
        let lease = is_lease(&ca.capabilities());
        // The member that expires: its session is never kept alive where
        // there is a lease; elsewhere it ends by closing.
        let se = ca
            .session_with(SessionOptions {
                ttl: Some(Duration::from_secs(2)),
                keep_alive: if lease {
                    KeepAlive::Manual
                } else {
                    KeepAlive::Automatic
                },
            })
            .await?;
        let limit = se.ttl().unwrap_or_default().as_secs_f64() + 30.0;

        let (tx1, mut w1) = watch::channel(Seen::default());
        tokio::spawn(check("first", sw.group("g").watch(), tx1));
        until(&mut w1, 10.0, "the first watcher's snapshot", |s| {
            s.events >= 1
        })
        .await?;

        // Members join concurrently; a second watcher starts among them.
        let ids = ["a0", "a1", "a2", "a3", "a4", "a5"];
        let (tx2, mut w2) = watch::channel(Seen::default());
        let joins = ids.iter().enumerate().map(|(i, id)| {
            let s = if i % 2 == 0 { sa.clone() } else { sb.clone() };
            async move { s.group("g").join(id, json!({"i": i})).await }
        });
        let second = async {
            tokio::task::yield_now().await;
            tokio::spawn(check("second", sw.group("g").watch(), tx2));
        };
        let expiring_group = se.group("g");
        let (joined, expiring, ()) = tokio::join!(
            futures::future::join_all(joins),
            expiring_group.join("expires", json!("soon")),
            second
        );
        let mut members = BTreeMap::new();
        for (id, m) in ids.iter().zip(joined) {
            members.insert(*id, m?);
        }
        let expiring = expiring?;
        let all: Vec<String> = ids
            .iter()
            .map(|s| s.to_string())
            .chain(["expires".to_string()])
            .collect();
        until(&mut w1, limit, "the first watcher sees every join", |s| {
            all.iter().all(|id| s.view.contains_key(id))
        })
        .await?;

        // A third watcher starts with every member in its snapshot.
        let (tx3, mut w3) = watch::channel(Seen::default());
        tokio::spawn(check("third", sw.group("g").watch(), tx3));
        let third = until(&mut w3, 10.0, "the third watcher's snapshot", |s| {
            s.events >= 1
        })
        .await?;
        ensure!(
            all.iter().all(|id| third.view.contains_key(id)),
            "the third watcher's snapshot lacks a member: {:?}",
            third.view
        );

        // Change, leave and rejoin concurrently, while `expires` expires.
        let a0 = members.remove("a0").expect("joined");
        let a2 = members.remove("a2").expect("joined");
        let a1 = members.get("a1").expect("joined");
        let (left0, left2, updated) =
            tokio::join!(a0.leave(), a2.leave(), a1.update(json!({"i": 1, "v": 2})));
        left0?;
        left2?;
        updated?;
        let a0 = sb.group("g").join("a0", json!({"again": true})).await?;
        if lease {
            within(
                limit,
                "the unrefreshed session's membership is lost",
                expiring.lost(),
            )
            .await?;
        } else {
            drop(expiring);
            se.close().await?;
        }

        // Both watchers converge to the members the backend lists.
        let want = || async {
            Ok::<View, CaseError>(
                sw.group("g")
                    .members()
                    .await?
                    .into_iter()
                    .map(|m| (m.id, m.capabilities))
                    .collect(),
            )
        };
        let expected: View = within(
            limit,
            "members() no longer lists the expired member",
            async {
                loop {
                    let now = want().await?;
                    if !now.contains_key("expires") {
                        return Ok::<View, CaseError>(now);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        )
        .await??;
        let first = until(&mut w1, limit, "the first watcher converges", |s| {
            s.view == expected
        })
        .await?;
        let second = until(&mut w2, limit, "the second watcher converges", |s| {
            s.view == expected
        })
        .await?;
        let third = until(&mut w3, limit, "the third watcher converges", |s| {
            s.view == expected
        })
        .await?;
        // The first watcher was there before anyone joined: it was told of
        // every member that left, including the one that expired.
        for id in ["a0", "a2", "expires"] {
            ensure!(
                first.ever_left.iter().any(|l| l == id),
                "the first watcher never saw `{id}` leave: {first:?}"
            );
        }
        drop((a0, members));
        sa.close().await?;
        sb.close().await?;
        sw.close().await?;
        let mut f = Figures::new();
        f.insert("first_watcher_events".into(), first.events as f64);
        f.insert("second_watcher_events".into(), second.events as f64);
        f.insert("third_watcher_events".into(), third.events as f64);
        Ok(f)
    }
}
