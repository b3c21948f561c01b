//! The file backend's behaviour within one process: exclusion between
//! sessions and coordinators, fencing, read/write locks, guarded writes,
//! names, groups, elections, sessions, leftovers and configuration errors.

mod common;

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use quorate_core::{Config, ErrorKind, GroupEvent};
use serde_json::json;

use common::connect;

/// Whether another open file description locks byte `offset` of `path`.
fn byte_locked(path: &Path, offset: i64) -> bool {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: a zeroed flock is valid; the descriptor is open.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = offset;
    fl.l_len = 1;
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) },
        0
    );
    fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Wait (bounded) until a writer of rwlock `name` holds the turnstile
/// (byte 0 of the lock's companion `.turn` file).
async fn until_turnstile_taken(dir: &Path, name: &str) {
    let path = dir
        .join("lock")
        .join(format!("{}.turn", quorate_file::stem(name)));
    soon("a writer at the turnstile", async {
        while !byte_locked(&path, 0) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Liveness bound for things that must happen "soon" (never a timing claim).
async fn soon<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 10 s"))
}

#[tokio::test]
async fn mutex_excludes_sessions_of_one_and_of_two_coordinators() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, c2) = (connect(dir.path()).await, connect(dir.path()).await);
    let (s1, s2, s3) = (
        c1.session().await.unwrap(),
        c2.session().await.unwrap(),
        c1.session().await.unwrap(),
    );
    let g = s1.mutex("jobs/nightly").lock().await.unwrap();
    assert!(s2.mutex("jobs/nightly").try_lock().await.unwrap().is_none());
    assert!(s3.mutex("jobs/nightly").try_lock().await.unwrap().is_none());
    // A different name is a different lock; the rwlock of the same name is
    // the same lock (the mutex is its write side).
    assert!(s2.mutex("jobs/other").try_lock().await.unwrap().is_some());
    assert!(s2
        .rwlock("jobs/nightly")
        .try_write()
        .await
        .unwrap()
        .is_none());
    assert!(s2
        .rwlock("jobs/nightly")
        .try_read()
        .await
        .unwrap()
        .is_none());
    assert!(g.is_held().await.unwrap());
    let f1 = g.fence();
    g.release().await.unwrap();
    let g2 = s2.mutex("jobs/nightly").try_lock().await.unwrap().unwrap();
    assert!(g2.fence() > f1);
}

#[tokio::test]
async fn a_blocked_waiter_is_woken_by_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let g = s1.mutex("m").lock().await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = s2.mutex("m").lock().await.unwrap();
        let f = g.fence();
        g.release().await.unwrap();
        f
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "granted while held");
    let f1 = g.fence();
    g.release().await.unwrap();
    let f2 = soon("the waiter's grant", waiter).await.unwrap();
    assert!(f2 > f1);
}

#[tokio::test]
async fn fences_strictly_increase_and_survive_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for _ in 0..3 {
        let c = connect(dir.path()).await;
        let s = c.session().await.unwrap();
        for _ in 0..3 {
            let g = s.mutex("counter").lock().await.unwrap();
            assert!(g.fence().get() > last, "{} after {last}", g.fence());
            last = g.fence().get();
            g.release().await.unwrap();
        }
        s.close().await.unwrap();
    }
    // The counters live in the lock file: the durable reservation (every
    // fence handed out is at most it), then the last fence handed out and
    // the id of the boot that wrote it.
    let (reserved, issued, boot) = counters(&quorate_file::mutex_path(dir.path(), "counter"));
    assert!(reserved >= last, "reserved {reserved} < issued {last}");
    assert_eq!(issued, last);
    assert_eq!(boot, this_boot());
}

/// The reservation, the last fence handed out and its boot id, as written
/// at the start of a lock file.
fn counters(path: &std::path::Path) -> (u64, u64, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let (reserved, slot) = text.split_once('\n').expect("two lines");
    let slot = slot.strip_suffix('\n').expect("a newline after the slot");
    let (issued, boot) = slot.split_once(' ').expect("fence and boot id");
    (
        reserved.parse().unwrap(),
        issued.parse().unwrap(),
        boot.to_owned(),
    )
}

fn this_boot() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

/// What a machine crash can leave on disk: the reservation (synced) but an
/// older "last fence handed out" (never synced). The slot carries another
/// boot's id, so it is not trusted: the next fence is above the
/// reservation, hence above every fence handed out before the crash —
/// never a repeat, even though grants sync only once per block.
#[tokio::test]
async fn fences_never_repeat_after_a_machine_crash_lost_the_unsynced_slot() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let mut last = 0;
    for _ in 0..20 {
        let g = s.mutex("m").lock().await.unwrap();
        last = g.fence().get();
        g.release().await.unwrap();
    }
    let path = quorate_file::mutex_path(dir.path(), "m");
    let (reserved, issued, _) = counters(&path);
    assert_eq!(issued, last);
    assert!(
        reserved > last,
        "a block is reserved ahead: {reserved} vs {last}"
    );
    // The disk after the crash: the slot as it was 15 grants ago, from the
    // boot before.
    let stale = format!(
        "{reserved:020}\n{:020} {}\n",
        last - 15,
        "00000000-0000-4000-8000-000000000000"
    );
    std::fs::write(&path, stale).unwrap();
    let g = s.mutex("m").lock().await.unwrap();
    assert!(
        g.fence().get() > last,
        "fence {} repeats one handed out before the crash (last {last})",
        g.fence()
    );
    assert_eq!(g.fence().get(), reserved + 1);
    g.release().await.unwrap();
    let (reserved_after, issued_after, boot) = counters(&path);
    assert!(reserved_after >= issued_after && issued_after == reserved + 1);
    assert_eq!(boot, this_boot());
}

/// A lock file from before the issued slot existed (one line: the last
/// fence handed out) continues above it.
#[tokio::test]
async fn a_one_line_counter_from_an_older_version_continues_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let path = quorate_file::mutex_path(dir.path(), "old");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("{:020}\n", 1_000_000u64)).unwrap();
    let g = s.mutex("old").lock().await.unwrap();
    assert_eq!(g.fence().get(), 1_000_001);
    g.release().await.unwrap();
    let g = s.mutex("old").lock().await.unwrap();
    assert_eq!(g.fence().get(), 1_000_002);
}

#[tokio::test]
async fn a_corrupt_counter_is_an_error_not_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    std::fs::write(quorate_file::mutex_path(dir.path(), "x"), b"not a number\n").unwrap();
    let e = s.mutex("x").lock().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
    assert!(e.to_string().contains("fencing counter"), "{e}");
    // The failed grant was released: the lock is free.
    assert!(c.leftovers().await.unwrap().is_empty());
}

#[tokio::test]
async fn readers_share_and_writers_exclude() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2, s3) = (
        c.session().await.unwrap(),
        c.session().await.unwrap(),
        c.session().await.unwrap(),
    );
    let r1 = s1.rwlock("cfg").read().await.unwrap();
    let r2 = s2
        .rwlock("cfg")
        .try_read()
        .await
        .unwrap()
        .expect("readers share");
    assert!(r2.fence() > r1.fence());
    assert!(s3.rwlock("cfg").try_write().await.unwrap().is_none());
    r1.release().await.unwrap();
    r2.release().await.unwrap();
    let w = s3.rwlock("cfg").try_write().await.unwrap().unwrap();
    assert!(s1.rwlock("cfg").try_read().await.unwrap().is_none());
    assert!(s2.rwlock("cfg").try_write().await.unwrap().is_none());
    let fw = w.fence();
    w.release().await.unwrap();
    let r = s1.rwlock("cfg").read().await.unwrap();
    assert!(r.fence() > fw);
}

#[tokio::test]
async fn a_waiting_writer_blocks_later_readers() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2, s3) = (
        c.session().await.unwrap(),
        c.session().await.unwrap(),
        c.session().await.unwrap(),
    );
    let r1 = s1.rwlock("cfg").read().await.unwrap();
    let writer = tokio::spawn(async move {
        let w = s2.rwlock("cfg").write().await.unwrap();
        let f = w.fence();
        tokio::time::sleep(Duration::from_millis(50)).await;
        w.release().await.unwrap();
        f
    });
    until_turnstile_taken(dir.path(), "cfg").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "writer granted while a reader holds");
    // The writer waits: a new reader must not overtake it.
    assert!(s3.rwlock("cfg").try_read().await.unwrap().is_none());
    let e = s3
        .rwlock("cfg")
        .read_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let f1 = r1.fence();
    r1.release().await.unwrap();
    let fw = soon("the writer's grant", writer).await.unwrap();
    assert!(fw > f1);
    let r3 = soon("the later reader", s3.rwlock("cfg").read())
        .await
        .unwrap();
    assert!(r3.fence() > fw);
}

#[tokio::test]
async fn a_timed_out_writer_lets_the_readers_behind_it_through_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2, s3) = (
        c.session().await.unwrap(),
        c.session().await.unwrap(),
        c.session().await.unwrap(),
    );
    let _r1 = s1.rwlock("cfg").read().await.unwrap();
    let later_reader = {
        let s3 = s3.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s3.rwlock("cfg").read().await.unwrap()
        })
    };
    let e = s2
        .rwlock("cfg")
        .write_timeout(Duration::from_millis(400))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    // The reader that queued behind the writer proceeds while r1 still holds.
    let r3 = soon("the reader behind the timed-out writer", later_reader)
        .await
        .unwrap();
    drop(r3);
}

#[tokio::test]
async fn guarded_writes_apply_only_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    assert_eq!(s1.read("config").await.unwrap(), None);
    let g = s1.mutex("config-lock").lock().await.unwrap();
    assert!(g.write_if_held("config", b"v1").await.unwrap());
    assert_eq!(
        s2.read("config").await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert!(g.write_and_release("config", b"v2").await.unwrap());
    assert_eq!(
        s2.read("config").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    // Released in the same step.
    let g2 = s2.mutex("config-lock").try_lock().await.unwrap().unwrap();
    // A revoked session's grant does not write.
    s2.close().await.unwrap();
    assert!(!g2.write_if_held("config", b"v3").await.unwrap());
    assert_eq!(
        s1.read("config").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    // An operator removing the lock file makes the grant void.
    let g3 = s1.mutex("config-lock").lock().await.unwrap();
    std::fs::remove_file(quorate_file::mutex_path(dir.path(), "config-lock")).unwrap();
    assert!(!g3.is_held().await.unwrap());
    assert!(!g3.write_if_held("config", b"v4").await.unwrap());
    assert_eq!(
        s1.read("config").await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
}

#[tokio::test]
async fn hostile_and_long_names_map_to_distinct_safe_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let long_a = format!("{}a", "/".repeat(1023));
    let long_b = format!("{}b", "/".repeat(1023));
    let long_utf8 = "é".repeat(512);
    let names = [
        "..",
        ".",
        "/",
        "a/../b",
        "a\0b",
        "%2F",
        "a/b",
        "a%2Fb",
        ".tmp",
        long_a.as_str(),
        long_b.as_str(),
        long_utf8.as_str(),
    ];
    let mut guards = Vec::new();
    for n in names {
        guards.push(
            s.mutex(n)
                .try_lock()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{n:?} collided with another name")),
        );
    }
    let lock_dir = dir.path().join("lock");
    let files: Vec<String> = std::fs::read_dir(&lock_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // One lock file and one turnstile file per name.
    assert_eq!(files.len(), 2 * names.len(), "{files:?}");
    for f in &files {
        assert!(
            f.len() <= 255 && (f.ends_with(".lock") || f.ends_with(".turn")) && !f.contains('/'),
            "{f}"
        );
    }
    // Nothing was created outside the lock directory's own entries.
    let top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut top_sorted = top.clone();
    top_sorted.sort();
    assert_eq!(top_sorted, ["data", "election", "group", "inspect", "lock"]);
    // The lock records (for `Coordinator::locks`): the session's book and
    // the full names of the hashed (long) stems.
    let mut records: Vec<String> = std::fs::read_dir(dir.path().join("inspect"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    records.sort();
    assert_eq!(records, [format!("{}.session", s.id()), "names".to_owned()]);
    let long: Vec<String> = std::fs::read_dir(dir.path().join("inspect/names"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(long.len(), 3, "{long:?}");
    for r in &long {
        assert!(
            files.contains(&format!("{r}.lock")) && r.len() <= 255,
            "{r}"
        );
    }
    let mut held = c.leftovers().await.unwrap();
    held.sort();
    assert_eq!(held.len(), names.len(), "{held:?}");
    drop(guards);
    soon("release of dropped guards", async {
        while !c.leftovers().await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn closing_a_session_releases_everything_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let lock = s1.mutex("a").lock().await.unwrap();
    let read = s1.rwlock("b").read().await.unwrap();
    let member = s1.group("g").join("m1", json!({"cpu": 4})).await.unwrap();
    let leader = s1.election("e").campaign(b"v1").await.unwrap();
    let mut held = c.leftovers().await.unwrap();
    held.sort();
    assert_eq!(
        held,
        [
            "election/e.lock",
            "group/g/m1.member",
            "lock/a.lock",
            "lock/b.lock"
        ]
    );
    s1.close().await.unwrap();
    for what in [
        lock.lost().await,
        read.lost().await,
        member.lost().await,
        leader.lost().await,
    ] {
        assert!(!what.to_string().is_empty());
    }
    assert!(!lock.is_held().await.unwrap());
    assert!(!leader.is_leader().await.unwrap());
    assert!(s2.mutex("a").try_lock().await.unwrap().is_some());
    assert!(s2.rwlock("b").try_write().await.unwrap().is_some());
    assert!(c.members("g").await.unwrap().is_empty());
    assert_eq!(c.leader("e").await.unwrap(), None);
    s2.close().await.unwrap();
    assert_eq!(c.leftovers().await.unwrap(), Vec::<String>::new());
    let e = s1.mutex("c").lock().await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Closed | ErrorKind::Lost),
        "{e}"
    );
}

#[tokio::test]
async fn group_membership_listing_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    let mut events = c.watch_group("workers");
    assert_eq!(
        soon("snapshot", events.next()).await.unwrap().unwrap(),
        GroupEvent::Snapshot { members: vec![] }
    );
    let a = s1
        .group("workers")
        .join("a", json!({"n": 1}))
        .await
        .unwrap();
    match soon("joined a", events.next()).await.unwrap().unwrap() {
        GroupEvent::Joined { member } => assert_eq!(
            (member.id.as_str(), member.capabilities),
            ("a", json!({"n": 1}))
        ),
        other => panic!("{other:?}"),
    }
    let e = s2
        .group("workers")
        .join("a", json!(null))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyHeld, "{e}");
    let b = s2
        .group("workers")
        .join("b/../x", json!([1]))
        .await
        .unwrap();
    match soon("joined b", events.next()).await.unwrap().unwrap() {
        GroupEvent::Joined { member } => assert_eq!(member.id, "b/../x"),
        other => panic!("{other:?}"),
    }
    let ids: Vec<String> = c
        .members("workers")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["a", "b/../x"]);
    a.update(json!({"n": 2})).await.unwrap();
    match soon("updated a", events.next()).await.unwrap().unwrap() {
        GroupEvent::Updated { member } => assert_eq!(member.capabilities, json!({"n": 2})),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.members("workers").await.unwrap()[0].capabilities,
        json!({"n": 2})
    );
    a.leave().await.unwrap();
    assert_eq!(
        soon("a left", events.next()).await.unwrap().unwrap(),
        GroupEvent::Left { id: "a".into() }
    );
    // The id is free again.
    let a2 = s2.group("workers").join("a", json!(3)).await.unwrap();
    assert!(matches!(
        soon("a joined again", events.next())
            .await
            .unwrap()
            .unwrap(),
        GroupEvent::Joined { .. }
    ));
    drop(a2);
    assert_eq!(
        soon("dropped a left", events.next())
            .await
            .unwrap()
            .unwrap(),
        GroupEvent::Left { id: "a".into() }
    );
    b.leave().await.unwrap();
    assert_eq!(
        soon("b left", events.next()).await.unwrap().unwrap(),
        GroupEvent::Left {
            id: "b/../x".into()
        }
    );
}

/// A member that leaves and joins again before the watcher has looked at
/// its file is still reported as `Left` then `Joined`, never as an update:
/// its file's incarnation tells the two apart (found by the conformance
/// case `membership_view_consistent`, which saw it once in CI). The member
/// never calls `update` until the end, so any other `Updated` is a rejoin
/// misreported; rounds that fall between the same two looks may merge into
/// one `Left` + `Joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_leave_and_rejoin_is_not_reported_as_an_update() {
    const ROUNDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let mut member = s.group("g").join("a", json!(0)).await.unwrap();
    let mut events = c.watch_group("g");
    assert!(matches!(
        soon("snapshot", events.next()).await.unwrap().unwrap(),
        GroupEvent::Snapshot { members } if members.len() == 1
    ));
    for i in 1..=ROUNDS {
        member.leave().await.unwrap();
        member = s.group("g").join("a", json!(i)).await.unwrap();
    }
    member.update(json!("last")).await.unwrap();
    // Until the member shows "last": as an update, or inside the last rejoin.
    let (mut rejoins, mut present) = (0, true);
    loop {
        match soon("the last update", events.next())
            .await
            .unwrap()
            .unwrap()
        {
            GroupEvent::Left { .. } if present => present = false,
            GroupEvent::Joined { member } if !present => {
                present = true;
                rejoins += 1;
                // The last rejoin's look may come after the update: then
                // the update is already in it, and no `Updated` follows.
                if member.capabilities == json!("last") {
                    break;
                }
            }
            GroupEvent::Updated { member } if member.capabilities == json!("last") => break,
            other => panic!("after {rejoins} rejoins: {other:?}"),
        }
    }
    assert!(present && rejoins >= 1, "{rejoins} rejoins reported");
}

#[tokio::test]
async fn a_stale_member_file_is_not_a_member_and_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let gdir = dir.path().join("group").join("g");
    std::fs::create_dir_all(&gdir).unwrap();
    // What a crashed member leaves: its file, unlocked.
    std::fs::write(
        gdir.join("dead.member"),
        br#"{"id":"dead","capabilities":null}"#,
    )
    .unwrap();
    assert!(c.members("g").await.unwrap().is_empty());
    assert!(!gdir.join("dead.member").exists(), "stale file not swept");
    // And a joiner is not blocked by one.
    std::fs::write(
        gdir.join("dead.member"),
        br#"{"id":"dead","capabilities":null}"#,
    )
    .unwrap();
    let m = s.group("g").join("dead", json!("alive")).await.unwrap();
    let members = c.members("g").await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].capabilities, json!("alive"));
    m.leave().await.unwrap();
    assert!(!gdir.join("dead.member").exists());
}

#[tokio::test]
async fn election_leader_observe_proclaim_resign() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s1, s2) = (c.session().await.unwrap(), c.session().await.unwrap());
    assert_eq!(c.leader("sched").await.unwrap(), None);
    let mut observed = c.observe("sched");
    assert_eq!(soon("first", observed.next()).await.unwrap().unwrap(), None);
    let l1 = s1.election("sched").campaign(b"node-1").await.unwrap();
    let now = c.leader("sched").await.unwrap().unwrap();
    assert_eq!(
        (now.value.as_slice(), now.fence),
        (&b"node-1"[..], l1.fence())
    );
    let seen = soon("leader 1", observed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.value, b"node-1");
    let second = tokio::spawn(async move {
        let l = s2.election("sched").campaign(b"node-2").await.unwrap();
        (l.fence(), l)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "two leaders");
    l1.proclaim(b"node-1b").await.unwrap();
    let seen = soon("proclaimed", observed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.fence),
        (&b"node-1b"[..], l1.fence())
    );
    let f1 = l1.fence();
    l1.resign().await.unwrap();
    let (f2, l2) = soon("the second candidate", second).await.unwrap();
    assert!(f2 > f1);
    // Observers may or may not see the gap (None) between the leaders.
    let mut seen = soon("leader 2", observed.next()).await.unwrap().unwrap();
    if seen.is_none() {
        seen = soon("leader 2", observed.next()).await.unwrap().unwrap();
    }
    let seen = seen.unwrap();
    assert_eq!((seen.value.as_slice(), seen.fence), (&b"node-2"[..], f2));
    assert!(l2.is_leader().await.unwrap());
    drop(l2);
    assert_eq!(
        soon("no leader", observed.next()).await.unwrap().unwrap(),
        None
    );
}

#[tokio::test]
async fn keep_alive_checks_the_directory_and_revoke_from_outside_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let c = connect(&root).await;
    let s = c
        .session_with(quorate_core::SessionOptions {
            ttl: None,
            keep_alive: quorate_core::KeepAlive::Manual,
        })
        .await
        .unwrap();
    s.keep_alive().await.unwrap();
    let e = c.revoke_session(s.id()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(!c.capabilities().external_revoke);
    // The root moved away (or removed): everything the session held went
    // with it, the session is lost.
    std::fs::rename(&root, dir.path().join("moved")).unwrap();
    let e = s.keep_alive().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Lost, "{e}");
}

#[tokio::test]
async fn bad_urls_and_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    for (url, kind) in [
        ("file://", ErrorKind::InvalidConfig),
        ("file://relative/dir", ErrorKind::InvalidConfig),
        ("file://host/tmp/x", ErrorKind::InvalidConfig),
        ("file://user:pw@/tmp/x", ErrorKind::InvalidConfig),
        ("file:///tmp/x?bogus=1", ErrorKind::InvalidConfig),
    ] {
        let e = quorate_file::connect(&Config::parse(url).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), kind, "{url}: {e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }
    for path in [file.clone(), file.join("sub")] {
        let url = format!("file://{}", path.display());
        let e = quorate_file::connect(&Config::parse(&url).unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
        assert!(e.to_string().contains("plain-file"), "{e}");
    }
    // A missing directory is created.
    let fresh = dir.path().join("a/b/c");
    connect(&fresh).await;
    assert!(fresh.join("lock").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_share_and_get_distinct_fences() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = c.session().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let g = s.rwlock("r").read().await.unwrap();
            (s, g)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(soon("a concurrent read grant", t).await.unwrap());
    }
    let mut fences: Vec<u64> = held.iter().map(|(_, g)| g.fence().get()).collect();
    fences.sort();
    fences.dedup();
    let first = fences[0];
    assert_eq!(fences, (first..first + 20).collect::<Vec<u64>>());
    let w = c.session().await.unwrap();
    assert!(w.rwlock("r").try_write().await.unwrap().is_none());
    drop(held);
    let g = soon("the writer after the readers", w.rwlock("r").write())
        .await
        .unwrap();
    assert_eq!(g.fence().get(), first + 20);
}

/// An operator removes a held lock file, then the whole root: the holder's
/// `lost()` fires (the keep-alive sees its description is no longer the
/// file at the path), and the grant made on the new file has a larger
/// fence than the removed file's (fences never repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_lock_files_are_noticed_and_fences_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("file://{}?ttl=600ms", root.display());
    let connect = || async {
        quorate_file::connect(&Config::parse(&url).unwrap())
            .await
            .unwrap()
    };
    let (c1, c2) = (connect().await, connect().await);

    // One lock file removed.
    let s1 = c1.session().await.unwrap();
    let held = s1.mutex("m").lock().await.unwrap();
    let f1 = held.fence();
    std::fs::remove_file(quorate_file::mutex_path(&root, "m")).unwrap();
    let s2 = c2.session().await.unwrap();
    let other = s2
        .mutex("m")
        .try_lock()
        .await
        .unwrap()
        .expect("a new file is free");
    assert!(other.fence() > f1, "{} after {f1}", other.fence());
    soon("the holder told its lock file was removed", held.lost()).await;
    assert!(!held.is_held().await.unwrap());
    assert!(!s1.is_lost(), "only the grant is lost, not the session");
    let f2 = other.fence();
    drop(held);

    // The whole root removed under a holder.
    std::fs::remove_dir_all(&root).unwrap();
    let s3 = c1.session().await.unwrap();
    let again = s3.mutex("m").lock().await.unwrap();
    assert!(again.fence() > f2, "{} after {f2}", again.fence());
    soon("the holder told the root was removed", other.lost()).await;
    again.release().await.unwrap();
}

/// With a TTL of an hour (a keep-alive every 20 minutes), holders are still
/// told within seconds that their lock file was removed or renamed over, and
/// a leader that its election file was removed: the backend watches the lock
/// directories (inotify) and checks the held files at once. Each removal
/// tells only the holder of that file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_or_replaced_lock_files_are_told_at_once_not_at_the_next_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let url = format!("file://{}?ttl=3600s", root.display());
    let c = quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s = c.session().await.unwrap();
    let removed = s.mutex("removed").lock().await.unwrap();
    let replaced = s.mutex("replaced").lock().await.unwrap();
    let reader = s.rwlock("read").read().await.unwrap();
    let leader = s.election("e").campaign(b"v").await.unwrap();

    std::fs::remove_file(quorate_file::mutex_path(root, "removed")).unwrap();
    soon("the holder of the removed file told", removed.lost()).await;
    assert!(replaced.is_held().await.unwrap() && reader.is_held().await.unwrap());

    let tmp = root.join("new.lock");
    std::fs::write(&tmp, b"").unwrap();
    std::fs::rename(&tmp, quorate_file::mutex_path(root, "replaced")).unwrap();
    soon("the holder of the replaced file told", replaced.lost()).await;

    std::fs::remove_file(quorate_file::mutex_path(root, "read")).unwrap();
    soon("the reader of the removed file told", reader.lost()).await;

    // An election's lock file goes with its directory.
    std::fs::remove_dir_all(root.join("election")).unwrap();
    soon("the leader told its file was removed", leader.lost()).await;
    assert!(!s.is_lost() && !leader.is_leader().await.unwrap());

    // A member file: another member's leave and update (a rename over its
    // file) wake the check and change nothing; removing the file tells.
    let member = s.group("g").join("m", json!({})).await.unwrap();
    let other = s.group("g").join("o", json!({})).await.unwrap();
    other.update(json!({"v": 2})).await.unwrap();
    other.leave().await.unwrap();
    let members = c.members("g").await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    let early = tokio::time::timeout(Duration::from_millis(300), member.lost()).await;
    assert!(early.is_err(), "the member was told {early:?}");
    let file = std::fs::read_dir(root.join("group"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "member"))
        .expect("the member file");
    std::fs::remove_file(file).unwrap();
    soon("the member told its file was removed", member.lost()).await;
    assert!(!s.is_lost());
}

/// `Coordinator::locks` names a holder only while its record's lock file
/// is the one at the path: the holder's record (written from the identity
/// checked when it locked) lists it, and once its lock file is removed and
/// another session holds the new file, only that one is listed, though the
/// first record still stands (the TTL is long: no keep-alive has cleared
/// it yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listing_follows_the_lock_file_at_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?ttl=60s", dir.path().display());
    let c = quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let holders = || async {
        let locks = c.locks("m").await.unwrap();
        let lock = locks.iter().find(|l| l.name == "m").expect("m is listed");
        lock.holders
            .iter()
            .map(|h| (h.session.clone(), h.fence))
            .collect::<Vec<_>>()
    };
    let s1 = c.session().await.unwrap();
    let first = s1.mutex("m").lock().await.unwrap();
    assert_eq!(
        holders().await,
        [(Some(s1.id().to_owned()), Some(first.fence()))]
    );
    std::fs::remove_file(quorate_file::mutex_path(dir.path(), "m")).unwrap();
    let s2 = c.session().await.unwrap();
    let second = s2.mutex("m").lock().await.unwrap();
    assert_eq!(
        holders().await,
        [(Some(s2.id().to_owned()), Some(second.fence()))]
    );
    second.release().await.unwrap();
    drop(first);
}

/// A membership and a leadership whose files are removed (the member file,
/// then the election's lock file) are told (`lost()`) by the keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_and_election_files_are_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("file://{}?ttl=600ms", root.display());
    let c = quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s = c.session().await.unwrap();
    let member = s.group("g").join("m", json!({})).await.unwrap();
    let leader = s.election("e").campaign(b"v").await.unwrap();
    std::fs::remove_dir_all(root.join("group")).unwrap();
    soon("the member told its file was removed", member.lost()).await;
    assert!(
        leader.is_leader().await.unwrap(),
        "the leadership is intact"
    );
    std::fs::remove_dir_all(root.join("election")).unwrap();
    soon("the leader told its file was removed", leader.lost()).await;
    assert!(!s.is_lost(), "the root is there: the session lives on");
}

/// A broken watch (its directory removed) is re-opened by core with a new
/// listing: the stream goes on, and reports the difference.
#[tokio::test]
async fn a_group_watch_goes_on_after_its_directory_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("file://{}", root.display());
    let c = quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    let s = c.session().await.unwrap();
    let mut events = c.watch_group("g");
    assert_eq!(
        soon("snapshot", events.next()).await.unwrap().unwrap(),
        GroupEvent::Snapshot { members: vec![] }
    );
    let a = s.group("g").join("a", json!(1)).await.unwrap();
    match soon("joined a", events.next()).await.unwrap().unwrap() {
        GroupEvent::Joined { member } => assert_eq!(member.id, "a"),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(root.join("group")).unwrap();
    soon("the member told its file was removed", a.lost()).await;
    match soon("a left", events.next()).await.unwrap().unwrap() {
        GroupEvent::Left { id } => assert_eq!(id, "a"),
        other => panic!("{other:?}"),
    }
    drop(a);
    let b = s.group("g").join("b", json!(2)).await.unwrap();
    match soon("joined b", events.next()).await.unwrap().unwrap() {
        GroupEvent::Joined { member } => assert_eq!(member.id, "b"),
        other => panic!("{other:?}"),
    }
    b.leave().await.unwrap();
    match soon("b left", events.next()).await.unwrap().unwrap() {
        GroupEvent::Left { id } => assert_eq!(id, "b"),
        other => panic!("{other:?}"),
    }
}

/// file:// has no lease: `Session::ttl()` is `None` whatever TTL was asked
/// for (in the URL or the session options), `remaining()` is
/// `Duration::MAX`, and a session nobody keeps alive is not lost once the
/// requested TTL has passed — its lock stays held.
#[tokio::test]
async fn a_session_without_a_lease_reports_no_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?ttl=200ms", dir.path().display());
    let c = quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap();
    assert_eq!(
        c.capabilities().failure_detection,
        quorate_core::FailureDetection::ProcessLifetime
    );
    let s = c.session().await.unwrap();
    assert_eq!(s.ttl(), None);
    assert_eq!(s.remaining(), Duration::MAX);
    assert!(format!("{s:?}").contains("ttl: None"), "{s:?}");
    let manual = c
        .session_with(quorate_core::SessionOptions {
            ttl: Some(Duration::from_millis(150)),
            keep_alive: quorate_core::KeepAlive::Manual,
        })
        .await
        .unwrap();
    assert_eq!(manual.ttl(), None);
    let g = manual.mutex("m").lock().await.unwrap();
    // Well past the requested TTL without a keep-alive: nothing expires.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!manual.is_lost() && !g.is_lost());
    assert!(g.is_held().await.unwrap());
    assert!(s.mutex("m").try_lock().await.unwrap().is_none());
    g.release().await.unwrap();
    manual.close().await.unwrap();
    s.close().await.unwrap();
}

/// An abandoned wait stays blocked on the file it opened; if that lock file
/// is removed and created again, a new waiter must wait for the new file,
/// never adopt the abandoned wait on the old one (held here forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_wait_on_a_removed_lock_file_is_not_adopted_for_the_new_one() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let (s2, s3) = (c.session().await.unwrap(), c.session().await.unwrap());
    let path = quorate_file::mutex_path(dir.path(), "m");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Another program holds the old file, whole, for the rest of the test.
    let old = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    // SAFETY: a zeroed flock is valid; the descriptor is open.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fcntl(old.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) },
        0
    );
    let e = s2
        .mutex("m")
        .lock_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    std::fs::remove_file(&path).unwrap();
    // A new file, held for a moment, so that the next waiter waits.
    let g3 = s3.mutex("m").lock().await.unwrap();
    let waiter = {
        let s2 = s2.clone();
        tokio::spawn(async move { s2.mutex("m").lock_timeout(Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let f3 = g3.fence();
    g3.release().await.unwrap();
    let g2 = soon("the waiter for the new file", waiter)
        .await
        .unwrap()
        .expect("granted the new file, not stuck on the removed one");
    assert!(g2.fence() > f3);
    drop(old);
}

/// Most grants bump the fence inline (no `fdatasync`), the one that
/// passes the reserved block commits on the I/O pool with a sync: across
/// such a block, readers' and writers' fences go up by one per grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_go_up_by_one_per_grant_across_a_reserved_block() {
    let dir = tempfile::tempdir().unwrap();
    let c = connect(dir.path()).await;
    let s = c.session().await.unwrap();
    let first = s.mutex("f").lock().await.unwrap();
    let mut last = first.fence().get();
    first.release().await.unwrap();
    for i in 0..4200 {
        // Released explicitly: a dropped guard is given back in the
        // background, and the session's own `try_lock` is busy until then.
        let fence = if i % 2 == 0 {
            let g = s.rwlock("f").read().await.unwrap();
            let f = g.fence();
            g.release().await.unwrap();
            f
        } else {
            let g = s.mutex("f").try_lock().await.unwrap().expect("free");
            let f = g.fence();
            g.release().await.unwrap();
            f
        };
        assert_eq!(fence.get(), last + 1, "grant {i}");
        last = fence.get();
    }
}
