//! The crate takes no signal of its host program: abandoned waits (timed
//! out, aborted) end without any signal being sent, so a host's own
//! handler of any real-time signal is never called, and a host that left
//! (or reset) them at their default action — termination — is not killed.
//!
//! Its own test binary: it installs process-wide signal dispositions.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use quorate_core::{ErrorKind, Session};

use common::connect;

/// The tests of this file change signal dispositions: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static CALLS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counting(_: libc::c_int) {
    CALLS.fetch_add(1, Ordering::SeqCst);
}

fn real_time_signals() -> std::ops::RangeInclusive<libc::c_int> {
    libc::SIGRTMIN()..=libc::SIGRTMAX()
}

/// Give every real-time signal the disposition `handler` (a function or
/// `SIG_DFL`), as a host program may at any time.
fn set_every_real_time_signal(handler: libc::sighandler_t) {
    for sig in real_time_signals() {
        // SAFETY: valid structs; the handlers are async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = handler;
            libc::sigemptyset(&mut act.sa_mask);
            assert_eq!(libc::sigaction(sig, &act, std::ptr::null_mut()), 0);
        }
    }
}

/// The disposition of every real-time signal.
fn dispositions() -> Vec<libc::sighandler_t> {
    real_time_signals()
        .map(|sig| {
            // SAFETY: querying only.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                assert_eq!(libc::sigaction(sig, std::ptr::null(), &mut old), 0);
                old.sa_sigaction
            }
        })
        .collect()
}

/// Abandon many waits on `name`, held by somebody else: timed out at every
/// point of their life, and aborted, on the mutex and both rwlock sides;
/// elections too.
async fn abandon_waits(s: &Session, name: &str) {
    for i in 0..60u64 {
        let d = Duration::from_micros(100 * (i % 30));
        let e = match i % 3 {
            0 => s.mutex(name).lock_timeout(d).await.map(drop),
            1 => s.rwlock(name).write_timeout(d).await.map(drop),
            _ => s.rwlock(name).read_timeout(d).await.map(drop),
        }
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }
    for _ in 0..5 {
        let s = s.clone();
        let name = name.to_owned();
        let t = tokio::spawn(async move { s.mutex(&name).lock().await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.abort();
        assert!(t.await.unwrap_err().is_cancelled());
    }
    for _ in 0..5 {
        let s = s.clone();
        let name = name.to_owned();
        let t = tokio::spawn(async move { s.election(&name).campaign(b"b").await.map(drop) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.abort();
        assert!(t.await.unwrap_err().is_cancelled());
    }
    // Let anything the crate might still send arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The host leaves every real-time signal at its default until the crate
/// first waited, then installs its own dispositions (`after`): a library
/// that claims a "free" signal at first use would have claimed one.
async fn scenario(after: impl FnOnce()) {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let held = s1.mutex("x").lock().await.unwrap();
    let leader = s1.election("x").campaign(b"a").await.unwrap();
    set_every_real_time_signal(libc::SIG_DFL);
    // A first abandoned wait: the crate's first use of waiting.
    let e = s2
        .mutex("x")
        .lock_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    // The host (re)installs its dispositions after that first use.
    after();
    abandon_waits(&s2, "x").await;
    let f = held.fence();
    held.release().await.unwrap();
    leader.resign().await.unwrap();
    let g = s2
        .mutex("x")
        .lock_timeout(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        g.fence().get(),
        f.get() + 1,
        "an abandoned wait bumped the fence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_handler_of_any_real_time_signal_is_never_called() {
    let _serial = SERIAL.lock().await;
    CALLS.store(0, Ordering::SeqCst);
    let h = counting as extern "C" fn(libc::c_int) as libc::sighandler_t;
    scenario(|| set_every_real_time_signal(h)).await;
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        0,
        "the host's handler was called"
    );
    assert!(
        dispositions().iter().all(|&d| d == h),
        "a disposition was changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_default_real_time_signals_is_not_killed() {
    let _serial = SERIAL.lock().await;
    // Termination is the default action of every real-time signal: had
    // the crate sent one, this process would be dead.
    scenario(|| set_every_real_time_signal(libc::SIG_DFL)).await;
    assert!(
        dispositions().iter().all(|&d| d == libc::SIG_DFL),
        "the crate installed a handler"
    );
}
