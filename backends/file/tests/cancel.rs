//! Cancel safety of blocking waits: a dropped or timed-out `lock()` stops
//! waiting at once (its thread leaves `F_OFD_SETLKW` while the lock is still
//! held) and never acquires later by itself.
//!
//! This is its own test binary because it counts the process's waiting
//! threads (named `qfile-wait`), which other tests would disturb.

use std::path::Path;
use std::time::Duration;

use quorate_core::{Config, Coordinator, ErrorKind};

async fn connect(dir: &Path) -> Coordinator {
    let url = format!("file://{}", dir.display());
    quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap()
}

/// The tests of this file count threads: run them one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Threads of this process blocked in (or about to block in) a lock wait.
fn waiting_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "qfile-wait")
        .count()
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
async fn a_dropped_wait_stops_waiting_at_once_and_never_acquires() {
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
    // The lock is still held, so only the signal can have ended the wait.
    until_no_waiting_thread("after a timeout").await;

    // A wait whose task is aborted (its future dropped).
    let waiter = {
        let s2 = s2.clone();
        tokio::spawn(async move { s2.mutex("m").lock().await })
    };
    until_one_waiting_thread("a wait to abort").await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    until_no_waiting_thread("after an abort").await;

    // Many short waits, cancelled at every point of their life (some before
    // the thread even blocks: the signal is repeated until it is done).
    for i in 0..100u64 {
        let e = s2
            .mutex("m")
            .lock_timeout(Duration::from_micros(50 * (i % 20)))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }
    until_no_waiting_thread("after many short waits").await;

    // Nobody acquired behind the holder's back: when it releases, the lock
    // is free and the counter moved only by the holder's own grant.
    let f1 = holder.fence();
    holder.release().await.unwrap();
    // The lock file's second line is the last fence handed out.
    let text = std::fs::read_to_string(quorate_file::mutex_path(dir.path(), "m")).unwrap();
    let issued = text.lines().nth(1).and_then(|l| l.get(..20));
    assert_eq!(
        issued,
        Some(format!("{:020}", f1.get()).as_str()),
        "{text:?}"
    );
    let next = s3.mutex("m").try_lock().await.unwrap().expect("free");
    assert_eq!(next.fence().get(), f1.get() + 1);
    assert!(c.leftovers().await.unwrap().len() == 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_session_ends_its_waits() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let _holder = s1.rwlock("r").write().await.unwrap();
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
    until_no_waiting_thread("after close").await;
}
