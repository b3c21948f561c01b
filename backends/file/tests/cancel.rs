//! Cancel safety of blocking waits: a dropped or timed-out `lock()` returns
//! at once, never acquires later by itself and never bumps the fence; its
//! kernel wait (a `qfile-wait` thread in `F_OFD_SETLKW`, which nothing
//! interrupts: the crate takes no signal) is orphaned, adopted by the next
//! waiter for the same lock, and dropped when the lock frees: however many
//! waits are abandoned, at most one thread waits per lock and mode.
//!
//! This is its own test binary because it counts the process's waiting
//! threads (named `qfile-wait`), which other tests would disturb.

mod common;

use std::path::Path;
use std::time::Duration;

use quorate_core::ErrorKind;

use common::{connect, waiting_threads};

/// The tests of this file count threads: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn assert_at_most_one_waiting_thread(what: &str) {
    let n = waiting_threads();
    assert!(n <= 1, "{what}: {n} threads wait for one lock");
}

/// The last fence handed out for lock `name`: the second line of its lock
/// file.
fn last_fence(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(quorate_file::mutex_path(dir, name)).unwrap();
    text.lines()
        .nth(1)
        .and_then(|l| l.get(..20))
        .map(str::to_owned)
}

async fn until_one_waiting_thread(what: &str) {
    for _ in 0..1000 {
        if waiting_threads() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: no thread blocked in the wait within 5 s");
}

async fn until_no_waiting_thread(what: &str) {
    for _ in 0..1000 {
        if waiting_threads() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{what}: a waiting thread is still there 5 s later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_returns_at_once_and_never_acquires() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2, s3) = (
        c.session().await.unwrap(),
        c.session().await.unwrap(),
        c.session().await.unwrap(),
    );
    let holder = s1.mutex("m").lock().await.unwrap();
    assert_eq!(waiting_threads(), 0);

    // A timed-out wait.
    let waiter = {
        let s2 = s2.clone();
        tokio::spawn(async move {
            s2.mutex("m")
                .lock_timeout(Duration::from_millis(1000))
                .await
        })
    };
    until_one_waiting_thread("a timed wait").await;
    let e = waiter.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    // The lock is still held: the orphaned kernel wait stays, alone.
    assert_at_most_one_waiting_thread("after a timeout");

    // A wait whose task is aborted (its future dropped).
    let waiter = {
        let s2 = s2.clone();
        tokio::spawn(async move { s2.mutex("m").lock().await })
    };
    until_one_waiting_thread("a wait to abort").await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_at_most_one_waiting_thread("after an abort");

    // Many short waits, cancelled at every point of their life, by
    // sessions of one and of two coordinators, on the mutex and on both
    // sides of the read/write lock of the same name.
    let c2 = connect(dir.path()).await;
    let s4 = c2.session().await.unwrap();
    for i in 0..150u64 {
        let d = Duration::from_micros(50 * (i % 20));
        let s = if i % 2 == 0 { &s2 } else { &s4 };
        let e = match i % 3 {
            0 => s.mutex("m").lock_timeout(d).await.map(drop),
            1 => s.rwlock("m").write_timeout(d).await.map(drop),
            _ => s.rwlock("m").read_timeout(d).await.map(drop),
        }
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        // One orphan per mode at most: exclusive and shared.
        let n = waiting_threads();
        assert!(
            n <= 2,
            "after {i} short waits: {n} threads wait for one lock"
        );
    }

    // Nobody acquired behind the holder's back: when it releases, the
    // counter moved only by the holder's own grant (the orphans take the
    // lock for an instant, bump nothing and drop it).
    let f1 = holder.fence();
    holder.release().await.unwrap();
    let next = s3
        .mutex("m")
        .lock_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(next.fence().get(), f1.get() + 1);
    assert!(c.leftovers().await.unwrap().len() == 1);
    next.release().await.unwrap();
    until_no_waiting_thread("once the lock is free").await;
    assert_eq!(
        last_fence(dir.path(), "m"),
        Some(format!("{:020}", f1.get() + 1))
    );
    assert!(c.leftovers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_session_ends_its_waits() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let holder = s1.rwlock("r").write().await.unwrap();
    let waiter = {
        let s2 = s2.clone();
        tokio::spawn(async move { s2.rwlock("r").read().await })
    };
    until_one_waiting_thread("a read wait").await;
    s2.close().await.unwrap();
    let e = waiter.await.unwrap().unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Lost | ErrorKind::Closed),
        "{e}"
    );
    assert_at_most_one_waiting_thread("after close");
    let f = holder.fence();
    holder.release().await.unwrap();
    until_no_waiting_thread("once the lock is free").await;
    assert_eq!(
        last_fence(dir.path(), "r"),
        Some(format!("{:020}", f.get())),
        "the abandoned read wait bumped the fence"
    );
}
