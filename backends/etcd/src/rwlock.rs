//! One name, one lock: the mutex of a name is the write side of that
//! name's read/write lock, and readers queue in the mutex's own prefix
//! `P = <ns>/lock/<enc(name)>/`, ordered by create revision:
//!
//! - writers and mutex holders: `P<lease hex>` (etcd's Go
//!   `concurrency.Mutex`, so `etcdctl lock` keys look the same);
//! - readers: `P` + `read/<lease hex>` (`r` is not a hex digit, so a
//!   reader key never collides with a lease key).
//!
//! A writer waits for every earlier key of `P` (readers included); a reader
//! waits only for earlier keys of `P` that are not readers (quorate's
//! writers and mutex holders, `etcdctl lock` and any Go `concurrency.Mutex`
//! on the prefix), so readers share and a waiting writer blocks every later
//! reader (no writer starvation). `etcdctl lock P` waits for every earlier
//! key of the prefix, readers included, so it excludes quorate's readers as
//! well as its writers. Each waiter watches only the last key that blocks
//! it and checks again when it goes. A waiter that gives up deletes its key
//! at once, so the readers behind a timed-out writer proceed immediately.
//! The queue machinery itself lives in `mutex.rs`.

use quorate_core::LockKind;

use crate::keys::{lease_hex, prefix_end};
use crate::mutex::{Blockers, Entry};
use crate::session::EtcdSession;

/// The sub-prefix of readers under a lock's prefix.
pub(crate) const READERS: &str = "read/";

/// The queue entry of lock `name` taken as `kind` (a mutex is the write
/// side).
pub(crate) fn entry(session: &EtcdSession, name: &str, kind: LockKind) -> Entry<'static> {
    let prefix = session.shared.layout.mutex(name);
    let lease = lease_hex(session.lease);
    match kind {
        LockKind::Read => {
            let readers = format!("{prefix}{READERS}");
            // Everything of the prefix but the readers: [P, P + "read/")
            // and [end of P + "read/", end of P).
            let blockers = vec![
                (prefix.clone().into_bytes(), readers.clone().into_bytes()),
                (
                    prefix_end(readers.as_bytes()),
                    prefix_end(prefix.as_bytes()),
                ),
            ];
            Entry {
                key: format!("{readers}{lease}"),
                value: b"",
                blockers: Blockers(blockers),
            }
        }
        LockKind::Write | LockKind::Mutex => Entry {
            key: format!("{prefix}{lease}"),
            value: b"",
            blockers: Blockers::prefix(&prefix),
        },
    }
}
