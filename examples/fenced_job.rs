//! Run a "nightly job" under a lock, passing the fencing token to the
//! resource it writes and stopping if the lock is lost.
//!
//! `cargo run --example fenced_job -- [URL]` (default `memory://`).

use std::time::Duration;

#[tokio::main]
async fn main() -> quorate::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let coord = quorate::connect(&url).await?;
    let session = coord.session().await?;
    let guard = session
        .mutex("jobs/nightly")
        .lock_timeout(Duration::from_secs(30))
        .await?;
    println!("holding jobs/nightly with fence {}", guard.fence());
    tokio::select! {
        reason = guard.lost() => {
            eprintln!("lock lost ({reason}); stopping before doing damage");
            return Ok(());
        }
        _ = tokio::time::sleep(Duration::from_millis(200)) => {
            // The work: store its result only if the lock is still held.
            let applied = guard.write_if_held("jobs/nightly/last-run", b"ok").await?;
            println!("result stored: {applied}");
        }
    }
    guard.release().await?;
    session.close().await
}
