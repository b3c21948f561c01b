//! Election cases.

pub mod election_handover {
    use std::time::Duration;

    use crate::cases::client;
    use crate::ensure;
    use crate::outcome::{joined, CaseResult, Figures};
    use crate::target::Target;

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_c, sc) = client(&t).await?;
        ensure!(
            sc.election("e").leader().await?.is_none(),
            "a leader exists before anyone campaigned"
        );
        let la = sa.election("e").campaign(b"a").await?;
        let cb = {
            let sb = sb.clone();
            tokio::spawn(async move { sb.election("e").campaign(b"b").await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        ensure!(
            !cb.is_finished(),
            "a second candidate was elected while the first leads"
        );
        let leader = sc.election("e").leader().await?;
        ensure!(
            leader.as_ref().map(|l| l.value.as_slice()) == Some(b"a".as_slice()),
            "leader() = {leader:?}, expected a"
        );
        ensure!(
            leader.map(|l| l.fence) == Some(la.fence()),
            "leader() reports another fence than the leader holds"
        );
        ensure!(la.is_leader().await?, "the leader's is_leader() is false");
        let fa = la.fence();
        let start = std::time::Instant::now();
        la.resign().await?;
        let lb = joined(10.0, "the waiting candidate is elected after resign", cb).await?;
        let handover_us = start.elapsed().as_secs_f64() * 1e6;
        ensure!(
            lb.fence() > fa,
            "leadership fence did not increase: {} then {}",
            fa,
            lb.fence()
        );
        let leader = sc.election("e").leader().await?;
        ensure!(
            leader.map(|l| l.value) == Some(b"b".to_vec()),
            "leader() after handover is not b"
        );
        lb.resign().await?;
        for s in [sa, sb, sc] {
            s.close().await?;
        }
        let mut f = Figures::new();
        f.insert("handover_us".into(), handover_us);
        Ok(f)
    }
}

pub mod election_observe {
    use futures::StreamExt;
    use quorate::Leader;

    use crate::cases::client;
    use crate::outcome::{joined, within, CaseError, CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    async fn next(
        o: &mut futures::stream::BoxStream<'static, quorate::Result<Option<Leader>>>,
        what: &str,
    ) -> Result<Option<Leader>, CaseError> {
        match within(10.0, what, o.next()).await? {
            Some(Ok(l)) => Ok(l),
            Some(Err(e)) => fail!("{what}: observe failed: {e}"),
            None => fail!("{what}: observe ended"),
        }
    }

    pub async fn run(t: Target) -> CaseResult {
        let (_a, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let (_o, so) = client(&t).await?;
        let mut o = so.election("e").observe();
        ensure!(
            next(&mut o, "the current (no) leader").await?.is_none(),
            "observe reported a leader before any campaign"
        );
        let la = sa.election("e").campaign(b"a1").await?;
        let l = next(&mut o, "leader a").await?;
        ensure!(
            l == Some(Leader {
                value: b"a1".to_vec(),
                fence: la.fence()
            }),
            "observed {l:?}, expected a1"
        );
        la.proclaim(b"a2").await?;
        let l = next(&mut o, "proclaimed a2").await?;
        ensure!(
            l == Some(Leader {
                value: b"a2".to_vec(),
                fence: la.fence()
            }),
            "observed {l:?}, expected a2"
        );
        let cb = {
            let sb = sb.clone();
            tokio::spawn(async move { sb.election("e").campaign(b"b").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        la.resign().await?;
        // Between a and b there may be a moment with no leader; then b.
        let mut l = next(&mut o, "the next leader").await?;
        if l.is_none() {
            l = next(&mut o, "leader b after a gap").await?;
        }
        let lb = joined(10.0, "b's campaign returns", cb).await?;
        ensure!(
            l == Some(Leader {
                value: b"b".to_vec(),
                fence: lb.fence()
            }),
            "observed {l:?}, expected b"
        );
        // A fresh observer starts from b, never from the stale a.
        let mut o2 = so.election("e").observe();
        let l2 = next(&mut o2, "a fresh observer's first report").await?;
        ensure!(
            l2.as_ref().map(|l| l.fence) == Some(lb.fence()),
            "a fresh observer reported {l2:?}, expected b"
        );
        lb.resign().await?;
        let l = next(&mut o, "no leader after b resigns").await?;
        ensure!(l.is_none(), "observed {l:?} after the last leader resigned");
        drop((o, o2));
        for s in [sa, sb, so] {
            s.close().await?;
        }
        Ok(Figures::new())
    }
}
