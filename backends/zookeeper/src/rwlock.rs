//! One name, one lock, in kazoo's layout: the mutex of a name is the write
//! side of the name's read/write lock, and both live in the mutex's
//! directory `<ns>/lock/<enc(name)>/`. Writers and mutex holders create
//! `__lock__` nodes and wait for every earlier node; readers create
//! `__rlock__` nodes and wait only for earlier `__lock__` nodes. These are
//! kazoo's `WriteLock` (`__lock__`, blocked by both kinds) and `ReadLock`
//! (`__rlock__`, blocked by `__lock__`) rules in the same directory as
//! kazoo's `Lock`. Grants are strictly FIFO: a waiting writer blocks every
//! later reader, and a reader or writer that gives up deletes its node at
//! once, so the waiters behind it move up.
//!
//! kazoo's plain `Lock` is blocked by `__lock__` nodes only (its
//! `_EXCLUDE_NAMES`), so by kazoo's own design it does not wait for
//! `__rlock__` readers (kazoo's or quorate's); kazoo's `WriteLock`, and
//! `Lock(path, extra_lock_patterns=["__rlock__"])`, do.
//!
//! Acquisition, release and guarded writes are the mutex's
//! ([`crate::mutex`]); only the queue rules differ.

use quorate_core::LockKind;

use crate::node::Layout;
use crate::queue::{Spec, EXCLUSIVE, SHARED};

/// The queue rules of lock `name` taken as `kind` (a mutex is the write
/// side).
pub(crate) fn spec(layout: &Layout, name: &str, kind: LockKind) -> Spec {
    let dir = layout.lock_dir(name);
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
