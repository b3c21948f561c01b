//! Waiting costs no thread per waiter: however many tasks of one process
//! wait for one lock (mutex, readers and writers, some of them giving up),
//! at most one thread per lock mode is blocked in the kernel, and the
//! process's thread count stays small.
//!
//! Its own test binary, with one test: it counts every thread of the
//! process (`/proc/self/status`), which other tests would disturb.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, thread_names, waiting_threads};

/// `Threads:` of `/proc/self/status`.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

const WAITERS: usize = 1000;
/// The whole process: the test harness, tokio's two workers, a few
/// blocking-pool threads, the wait pool.
const MAX_THREADS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_waiters_on_one_lock_cost_a_bounded_number_of_threads() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let holder = c.session().await.unwrap();
    let held = holder.mutex("m").lock().await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..WAITERS {
        sessions.push(c.session().await.unwrap());
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let (s, order) = (s.clone(), order.clone());
        let mut waiter = Box::pin(async move {
            // Every tenth waiter gives up after a while (some while at the
            // head of the queue, in the kernel), every other one is a
            // reader or a writer of the same name.
            let guard = match i % 10 {
                0 => {
                    let wait = Duration::from_millis(1 + (i as u64 % 50));
                    s.mutex("m").lock_timeout(wait).await.ok()
                }
                1 | 5 => Some(s.rwlock("m").read().await.unwrap()),
                3 | 7 => Some(s.rwlock("m").write().await.unwrap()),
                _ => Some(s.mutex("m").lock().await.unwrap()),
            };
            // Recorded while still held, then released.
            let fence = guard.as_ref().map(|g| g.fence());
            if let Some(f) = fence {
                order.lock().unwrap().push((f, i));
            }
            if let Some(g) = guard {
                g.release().await.unwrap();
            }
            fence
        });
        // Arrival order is `i`: each waiter is polled here, in turn, until
        // it is queued (first `Pending`), before the next one exists; then
        // a task drives it on.
        match futures::poll!(waiter.as_mut()) {
            std::task::Poll::Pending => tasks.push(tokio::spawn(waiter)),
            // A 1 ms wait can time out within its first poll on a loaded
            // machine; nothing else can finish while the lock is held.
            std::task::Poll::Ready(fence) => {
                assert!(i % 10 == 0 && fence.is_none(), "waiter {i} granted");
                tasks.push(tokio::spawn(async { None }));
            }
        }
    }
    // Everybody queued, the timed waits given up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (n, w) = (threads(), waiting_threads());
    assert!(
        n <= MAX_THREADS,
        "{n} threads ({w} in the wait pool) for {WAITERS} waiters on one lock"
    );
    assert!(w <= 3, "{w} threads in the kernel for one lock");
    held.release().await.unwrap();
    let mut fences = Vec::new();
    for t in tasks {
        if let Some(f) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every waiter granted within 60 s")
            .unwrap()
        {
            fences.push(f);
        }
        let n = threads();
        assert!(
            n <= MAX_THREADS,
            "{n} threads while draining: {:?}",
            thread_names()
        );
    }
    assert!(fences.len() >= WAITERS * 9 / 10);
    fences.sort();
    fences.dedup();
    assert!(
        fences.len() >= WAITERS * 9 / 10,
        "a fence was handed out twice"
    );
    // In-process FIFO: among the waiters that did not give up, grants in
    // arrival order, readers and writers alike. The fences say in which
    // order the grants were made (two readers granted one after the other
    // may *see* their grants in either order).
    let mut order = order.lock().unwrap().clone();
    order.sort();
    let arrivals: Vec<usize> = order.iter().map(|&(_, a)| a).collect();
    let inversions = arrivals.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(inversions, 0, "arrivals in grant order: {arrivals:?}");
}
