//! Two candidates in one election: the first leads, resigns, and the second
//! takes over while an observer prints every change.
//!
//! `cargo run --example leader -- [URL]` (default `memory://leader-demo`).

use futures::StreamExt;

#[tokio::main]
async fn main() -> quorate::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://leader-demo".into());
    let coord = quorate::connect(&url).await?;
    let mut observer = coord.observe("scheduler");
    // The observer's first report is the leader now (none yet).
    if let Some(first) = observer.next().await {
        println!(
            "leader now: {:?}",
            first?.map(|l| String::from_utf8_lossy(&l.value).into_owned())
        );
    }
    let printer = tokio::spawn(async move {
        let mut seen_leader = false;
        while let Some(l) = observer.next().await {
            match l {
                Ok(Some(l)) => {
                    seen_leader = true;
                    println!(
                        "leader: {} (fence {})",
                        String::from_utf8_lossy(&l.value),
                        l.fence
                    );
                }
                Ok(None) if seen_leader => {
                    println!("leader: none");
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("observe failed: {e}");
                    break;
                }
            }
        }
    });
    let (a, b) = (coord.session().await?, coord.session().await?);
    let first = a.election("scheduler").campaign(b"node-a").await?;
    let second = tokio::spawn(async move {
        let l = b.election("scheduler").campaign(b"node-b").await?;
        l.resign().await?;
        b.close().await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    first.resign().await?;
    second.await.expect("candidate task")?;
    let _ = printer.await;
    a.close().await
}
