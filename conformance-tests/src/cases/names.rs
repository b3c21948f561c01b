//! Name-safety cases.

pub mod hostile_names {
    use quorate::ErrorKind;

    use crate::cases::client;
    use crate::outcome::{CaseResult, Figures};
    use crate::target::Target;
    use crate::{ensure, fail};

    fn names() -> Vec<String> {
        let mut v: Vec<String> = [
            "..", ".", "/", "//", "a/b", "a/../b", "a%2Fb", "%2E%2E", "%", "a\0b", "\0", "é🦀",
            " ", "lock", "lock/", "/lock", "a:b", "a*b", "a?b", "-", "__lock__", "CON", "a\nb",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("x".repeat(quorate::name::MAX_NAME_LEN));
        v.push("é".repeat(quorate::name::MAX_NAME_LEN / 2));
        v
    }

    pub async fn run(t: Target) -> CaseResult {
        let (coord, sa) = client(&t).await?;
        let (_b, sb) = client(&t).await?;
        let names = names();
        // All distinct names can be held at once by one session: none
        // collides with another.
        let mut guards = Vec::new();
        for n in &names {
            match sa.mutex(n).try_lock().await {
                Ok(Some(g)) => guards.push(g),
                Ok(None) => fail!("name {n:?} collides with another name (already held)"),
                Err(e) if e.kind() == ErrorKind::InvalidName => {}
                Err(e) => fail!("name {n:?}: {e}"),
            }
        }
        ensure!(
            guards.len() == names.len(),
            "only {} of {} names were accepted",
            guards.len(),
            names.len()
        );
        // And they really exclude another session.
        for g in &guards {
            ensure!(
                sb.mutex(g.name()).try_lock().await?.is_none(),
                "name {:?} does not exclude another session",
                g.name()
            );
        }
        for g in guards {
            g.release().await?;
        }
        for bad in [
            String::new(),
            "x".repeat(quorate::name::MAX_NAME_LEN + 1),
            "y".repeat(4096),
        ] {
            match sa.mutex(&bad).try_lock().await {
                Err(e) if e.kind() == ErrorKind::InvalidName => {}
                other => fail!(
                    "a {}-byte name gave {other:?}, expected InvalidName",
                    bad.len()
                ),
            }
        }
        let caps = coord.capabilities();
        if caps.primitives.group {
            let hostile = ["..", "a/b", "a\0b", "é🦀"];
            let mut ms = Vec::new();
            for n in hostile {
                ms.push(sa.group(n).join(n, serde_json::json!(n)).await?);
            }
            for n in hostile {
                let members = sb.group(n).members().await?;
                ensure!(
                    members.len() == 1 && members[0].id == n,
                    "group {n:?} lists {members:?}"
                );
            }
            for m in ms {
                m.leave().await?;
            }
            match sa.group("g").join("", serde_json::json!(null)).await {
                Err(e) if e.kind() == ErrorKind::InvalidName => {}
                other => fail!("an empty member id gave {other:?}, expected InvalidName"),
            }
        }
        if caps.primitives.election {
            let l = sa.election("../e").campaign(b"x").await?;
            ensure!(
                sb.election("../e").leader().await?.map(|l| l.value) == Some(b"x".to_vec()),
                "election `../e` leader not visible"
            );
            ensure!(
                sb.election("e").leader().await?.is_none(),
                "election `../e` collides with `e`"
            );
            l.resign().await?;
        }
        if caps.primitives.guarded_writes {
            let g = sa.mutex("k").lock().await?;
            ensure!(
                g.write_if_held("../k", b"1").await?,
                "guarded write to `../k` refused"
            );
            ensure!(
                g.write_if_held("k", b"2").await?,
                "guarded write to `k` refused"
            );
            ensure!(
                sb.read("../k").await? == Some(b"1".to_vec()),
                "`../k` and `k` collide"
            );
            g.release().await?;
        }
        sa.close().await?;
        sb.close().await?;
        Ok(Figures::new())
    }
}
