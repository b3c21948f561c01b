//! Read/write locks in kazoo's layout: writers create `__lock__` nodes and
//! wait for every earlier node; readers create `__rlock__` nodes and wait
//! only for earlier `__lock__` nodes. Grants are strictly FIFO: a waiting
//! writer blocks every later reader, and a reader or writer that gives up
//! deletes its node at once, so the waiters behind it move up.
//!
//! Acquisition, release and guarded writes are the mutex's
//! ([`crate::mutex`]); only the queue rules differ.

use quorate_core::spi::LockKind;

use crate::node::Layout;
use crate::queue::{Spec, EXCLUSIVE, SHARED};

/// The queue rules of read/write lock `name` in mode `kind`
/// (`Read` or `Write`).
pub(crate) fn spec(layout: &Layout, name: &str, kind: LockKind) -> Spec {
    let dir = layout.rwlock_dir(name);
    match kind {
        LockKind::Read => Spec {
            dir,
            marker: SHARED,
            blocked_by: &[EXCLUSIVE],
        },
        LockKind::Write | LockKind::Mutex => Spec {
            dir,
            marker: EXCLUSIVE,
            blocked_by: &[EXCLUSIVE, SHARED],
        },
    }
}
