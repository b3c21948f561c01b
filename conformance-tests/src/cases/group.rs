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
