//! Interoperability with the real `etcdctl` (etcd's Go `concurrency`
//! recipes) and authentication against an etcd with auth enabled.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use quorate_conformance::harness::etcd::EtcdCluster;
use quorate_core::{Config, ErrorKind};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::{signal, single, soon, still_pending};

const BLOCKED: Duration = Duration::from_millis(700);

/// Spawn `etcdctl <args>` with its stdout readable line by line.
fn spawn_etcdctl(cluster: &EtcdCluster, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cluster
        .etcdctl()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn etcdctl");
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, what: &str) -> String {
    soon(what, lines.next_line())
        .await
        .expect("read etcdctl output")
        .unwrap_or_else(|| panic!("etcdctl ended before {what}"))
}

/// The create revision of `key`, read with etcdctl.
async fn create_revision(cluster: &EtcdCluster, key: &str) -> u64 {
    let out = cluster
        .etcdctl()
        .args(["get", key, "-w", "json"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["kvs"][0]["create_revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no create revision for {key}: {v}"))
}

#[tokio::test]
async fn etcdctl_lock_and_quorate_exclude_each_other() {
    let (cluster, coord, ns) = single("").await;
    let lock_name = format!("{ns}/lock/shared");
    let s = coord.session().await.unwrap();

    // etcdctl holds; quorate is kept out, then gets in once etcdctl lets go.
    let (mut holder, mut out) = spawn_etcdctl(&cluster, &["lock", &lock_name]);
    let key = next_line(&mut out, "etcdctl lock").await;
    assert!(key.starts_with(&format!("{lock_name}/")), "{key}");
    let ctl_rev = create_revision(&cluster, &key).await;
    assert!(s.mutex("shared").try_lock().await.unwrap().is_none());
    let m = s.mutex("shared");
    let mut waiting = Box::pin(m.lock());
    assert!(
        still_pending(&mut waiting, BLOCKED).await,
        "quorate got in beside etcdctl"
    );
    signal(holder.id().unwrap(), libc::SIGTERM); // etcdctl unlocks on SIGTERM
    soon("etcdctl exit", holder.wait()).await.unwrap();
    let g = soon("quorate after etcdctl", waiting).await.unwrap();
    assert!(
        g.fence().get() > ctl_rev,
        "fence {} after etcdctl's {ctl_rev}",
        g.fence()
    );

    // quorate holds; etcdctl waits, then runs its command once released.
    let (mut waiter, mut out) =
        spawn_etcdctl(&cluster, &["lock", &lock_name, "echo", "ctl-acquired"]);
    let mut line = Box::pin(out.next_line());
    assert!(
        still_pending(&mut line, BLOCKED).await,
        "etcdctl got in beside quorate"
    );
    assert!(waiter.try_wait().unwrap().is_none());
    g.release().await.unwrap();
    let got = soon("etcdctl after quorate", line).await.unwrap();
    assert_eq!(got.as_deref(), Some("ctl-acquired"));
    assert!(soon("etcdctl exit", waiter.wait()).await.unwrap().success());
    s.close().await.unwrap();
    assert!(coord.leftovers().await.unwrap().is_empty());
}

#[tokio::test]
async fn etcdctl_lock_excludes_quorate_readers_both_ways() {
    let (cluster, coord, ns) = single("").await;
    let lock_name = format!("{ns}/lock/shared");
    let (s1, s2) = (
        coord.session().await.unwrap(),
        coord.session().await.unwrap(),
    );

    // etcdctl holds; a quorate reader is kept out, queues behind it, and
    // gets in once etcdctl lets go.
    let (mut holder, mut out) = spawn_etcdctl(&cluster, &["lock", &lock_name]);
    let key = next_line(&mut out, "etcdctl lock").await;
    let ctl_rev = create_revision(&cluster, &key).await;
    assert!(s1.rwlock("shared").try_read().await.unwrap().is_none());
    let rw = s1.rwlock("shared");
    let mut reading = Box::pin(rw.read());
    assert!(
        still_pending(&mut reading, BLOCKED).await,
        "a quorate reader got in beside etcdctl"
    );
    signal(holder.id().unwrap(), libc::SIGTERM); // etcdctl unlocks on SIGTERM
    soon("etcdctl exit", holder.wait()).await.unwrap();
    let r = soon("quorate reader after etcdctl", reading).await.unwrap();
    assert!(
        r.fence().get() > ctl_rev,
        "fence {} after etcdctl's {ctl_rev}",
        r.fence()
    );

    // A quorate reader holds; etcdctl waits (the reader's key is in the
    // prefix), while a second quorate reader shares.
    let (mut waiter, mut out) =
        spawn_etcdctl(&cluster, &["lock", &lock_name, "echo", "ctl-acquired"]);
    let mut line = Box::pin(out.next_line());
    assert!(
        still_pending(&mut line, BLOCKED).await,
        "etcdctl got in beside a quorate reader"
    );
    // etcdctl now waits in the queue: a reader arriving after it waits too.
    assert!(s2.rwlock("shared").try_read().await.unwrap().is_none());
    r.release().await.unwrap();
    let got = soon("etcdctl after the quorate reader", line)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("ctl-acquired"));
    assert!(soon("etcdctl exit", waiter.wait()).await.unwrap().success());
    let r2 = s2
        .rwlock("shared")
        .try_read()
        .await
        .unwrap()
        .expect("free again");
    r2.release().await.unwrap();
    s1.close().await.unwrap();
    s2.close().await.unwrap();
    assert!(coord.leftovers().await.unwrap().is_empty());
}

#[tokio::test]
async fn etcdctl_elect_observes_and_competes_with_quorate() {
    let (cluster, coord, ns) = single("").await;
    let election = format!("{ns}/election/sched");
    let s1 = coord.session().await.unwrap();
    let s2 = coord.session().await.unwrap();
    let l1 = s1.election("sched").campaign(b"quorate-1").await.unwrap();

    // etcdctl observes quorate's leader: same key, same value.
    let (_observer, mut seen) = spawn_etcdctl(&cluster, &["elect", "-l", &election]);
    assert_eq!(
        next_line(&mut seen, "observed key").await,
        format!("{election}/{}", s1.id())
    );
    assert_eq!(next_line(&mut seen, "observed value").await, "quorate-1");

    // etcdctl competes: it waits while quorate leads.
    let (mut rival, mut rival_out) = spawn_etcdctl(&cluster, &["elect", &election, "ctl-value"]);
    let mut elected = Box::pin(rival_out.next_line());
    assert!(
        still_pending(&mut elected, BLOCKED).await,
        "etcdctl elected beside quorate"
    );
    let mut obs = coord.observe("sched");
    let now = soon("observe", obs.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(now.value, b"quorate-1");

    l1.resign().await.unwrap();
    let rival_key = soon("etcdctl elected", elected).await.unwrap().unwrap();
    assert!(
        rival_key.starts_with(&format!("{election}/")),
        "{rival_key}"
    );
    let now = soon("observe etcdctl", obs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(now.value, b"ctl-value");
    assert_eq!(now.fence.get(), create_revision(&cluster, &rival_key).await);
    assert_eq!(next_line(&mut seen, "observed key").await, rival_key);
    assert_eq!(next_line(&mut seen, "observed value").await, "ctl-value");

    // quorate waits behind etcdctl, and leads once etcdctl resigns.
    let e2 = s2.election("sched");
    let mut c2 = Box::pin(e2.campaign(b"quorate-2"));
    assert!(
        still_pending(&mut c2, BLOCKED).await,
        "quorate elected beside etcdctl"
    );
    signal(rival.id().unwrap(), libc::SIGTERM); // etcdctl resigns on SIGTERM
    soon("etcdctl exit", rival.wait()).await.unwrap();
    let l2 = soon("quorate after etcdctl", c2).await.unwrap();
    assert!(l2.fence().get() > now.fence.get());
    assert_eq!(
        next_line(&mut seen, "observed key").await,
        format!("{election}/{}", s2.id())
    );
    assert_eq!(next_line(&mut seen, "observed value").await, "quorate-2");
}

#[tokio::test]
async fn auth_refuses_wrong_or_missing_credentials_clearly() {
    let cluster = EtcdCluster::start_local(1).await.unwrap();
    for args in [
        &["user", "add", "root:s3cret-pw"][..],
        &["user", "add", "alice:alice-pw"][..],
        &["auth", "enable"][..],
    ] {
        let out = cluster.etcdctl().args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let endpoint = cluster.member_endpoint(0);
    let connect = |userinfo: &str| {
        let url = format!("etcd://{userinfo}{endpoint}/ns?connect_timeout=2s");
        async move { quorate_etcd::connect(&Config::parse(&url).unwrap()).await }
    };

    let e = connect("root:wrong-pw@").await.unwrap_err();
    println!("wrong password: {e}");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(!format!("{e} {e:?}").contains("wrong-pw"), "{e:?}");

    let e = connect("").await.unwrap_err();
    println!("no credentials: {e}");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("user name is empty"), "{e}");

    // A user without any role may log in but not touch the namespace.
    let e = connect("alice:alice-pw@").await.unwrap_err();
    println!("no permission: {e}");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("permission"), "{e}");

    let coord = connect("root:s3cret-pw@").await.unwrap();
    let s = coord.session().await.unwrap();
    let g = s.mutex("m").lock().await.unwrap();
    assert!(g.is_held().await.unwrap());
    g.release().await.unwrap();
    s.close().await.unwrap();
}
