//! Read/write locks: one FIFO queue per lock, ordered by create revision,
//! with the mode in the key (as etcd's Go `recipes.RWMutex` does):
//!
//! - readers: `<ns>/rwlock/<enc(name)>/read/<lease hex>`
//! - writers: `<ns>/rwlock/<enc(name)>/write/<lease hex>`
//!
//! A writer waits for every earlier key (readers and writers); a reader
//! waits only for earlier writers, so readers share and a waiting writer
//! blocks every later reader (no writer starvation). Each waiter watches
//! only the last key that blocks it (the last earlier key, or the last
//! earlier writer for a reader), and checks again when it goes. A waiter
//! that gives up deletes its key at once, so the readers behind a
//! timed-out writer proceed immediately. The queue machinery itself lives
//! in `mutex.rs`.

use quorate_core::spi::LockKind;

use crate::keys::lease_hex;
use crate::mutex::Entry;
use crate::session::EtcdSession;

/// The queue entry of a read (`LockKind::Read`) or write lock.
pub(crate) fn entry(session: &EtcdSession, name: &str, kind: LockKind) -> Entry<'static> {
    let prefix = session.shared.layout.rwlock(name);
    let lease = lease_hex(session.lease);
    match kind {
        LockKind::Read => Entry {
            key: format!("{prefix}read/{lease}"),
            value: b"",
            blockers: format!("{prefix}write/"),
        },
        LockKind::Write | LockKind::Mutex => Entry {
            key: format!("{prefix}write/{lease}"),
            value: b"",
            blockers: prefix,
        },
    }
}
