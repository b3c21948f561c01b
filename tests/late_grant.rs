//! A grant that reaches a session only after its lease's client-side
//! deadline has passed is not handed to the caller.
//!
//! The fault: the waiter's process is paused (SIGSTOP, a stalled runtime)
//! with the grant already delivered (a delete event in its socket, a woken
//! task), and stays paused past its TTL. Meanwhile the server may have
//! expired the lease and granted the lock to someone else. On resume the
//! grant and the session's deadline are both due; whichever the runtime
//! polls first used to win, so `acquire` could return a guard that its lease
//! no longer backed. Here the pause is a blocking sleep on a current-thread
//! runtime, which makes the grant's task run before the lease task's timer
//! is even looked at: the order that broke.
#![cfg(feature = "memory")]

use std::time::Duration;

use quorate::{ErrorKind, KeepAlive, SessionOptions};

/// Wait (on the runtime) until `lock` has `n` entries: holder and waiters.
async fn until_entries(coord: &quorate::Coordinator, lock: &str, n: usize) {
    for _ in 0..500 {
        let entries = coord
            .locks(lock)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.name == lock)
            .map(|l| l.holders.len() + l.waiters.len())
            .sum::<usize>();
        if entries >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("`{lock}` never had {n} entries");
}

/// A session with a 500 ms lease, kept alive automatically.
async fn short_lease(coord: &quorate::Coordinator) -> quorate::Session {
    coord
        .session_with(SessionOptions {
            ttl: Some(Duration::from_millis(500)),
            keep_alive: KeepAlive::Automatic,
        })
        .await
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_lock_granted_after_the_lease_deadline_is_given_back_not_returned() {
    runtime().block_on(async {
        let coord = quorate::connect("memory://late-grant-lock").await.unwrap();
        let holder = coord.session().await.unwrap();
        let waiter = short_lease(&coord).await;
        let guard = holder.mutex("l").lock().await.unwrap();
        let w = waiter.clone();
        let acquiring = tokio::spawn(async move { w.mutex("l").lock().await });
        until_entries(&coord, "l", 2).await;
        guard.release().await.unwrap();
        // The pause: the grant is delivered, nothing runs, the TTL passes.
        std::thread::sleep(Duration::from_millis(800));
        match acquiring.await.unwrap() {
            Ok(g) => panic!(
                "granted {g:?} {:?} after the session's deadline (remaining {:?})",
                g.fence(),
                waiter.remaining()
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Lost, "{e}"),
        }
        // The late grant was given back: another session gets the lock.
        let other = coord.session().await.unwrap();
        let again = tokio::time::timeout(Duration::from_secs(5), other.mutex("l").lock())
            .await
            .expect("the late grant was never given back")
            .unwrap();
        again.release().await.unwrap();
    });
}

#[test]
fn a_leadership_won_after_the_lease_deadline_is_resigned_not_returned() {
    runtime().block_on(async {
        let coord = quorate::connect("memory://late-grant-election")
            .await
            .unwrap();
        let leader = coord.session().await.unwrap();
        let candidate = short_lease(&coord).await;
        let first = leader.election("e").campaign(b"first").await.unwrap();
        let c = candidate.clone();
        let campaigning = tokio::spawn(async move { c.election("e").campaign(b"late").await });
        // Let the campaign reach the backend's queue.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.resign().await.unwrap();
        // The pause: the win is delivered, nothing runs, the TTL passes.
        std::thread::sleep(Duration::from_millis(800));
        match campaigning.await.unwrap() {
            Ok(l) => panic!(
                "elected with fence {:?} after the session's deadline",
                l.fence()
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Lost, "{e}"),
        }
        // The late win was resigned: another session is elected.
        let other = coord.session().await.unwrap();
        let again =
            tokio::time::timeout(Duration::from_secs(5), other.election("e").campaign(b"x"))
                .await
                .expect("the late leadership was never given back")
                .unwrap();
        again.resign().await.unwrap();
    });
}
