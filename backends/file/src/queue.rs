//! The acquisition machinery shared by mutexes, read/write locks and
//! elections: a per-process queue in front of every lock file, and waiting
//! for a kernel lock without blocking the async runtime, without one thread
//! per waiter and without signals.
//!
//! # The per-process queue
//!
//! Every lock file (`lock/<stem>.lock`, `election/<stem>.lock`) has, in each
//! process that uses it, one [`Entry`] in a registry keyed by its path. The
//! entry is shared (weakly held by the registry, removed when the last user
//! goes) by everybody of this process acquiring that name, whatever the
//! session, the primitive (mutex, reader, writer) or the coordinator:
//!
//! - an in-process FIFO ([`Entry::turn`], a fair one-permit semaphore):
//!   only its head tries the kernel locks; the others wait in memory, in
//!   arrival order, and cost no thread and no file descriptor. The head
//!   leaves the FIFO once it holds the lock file (its grant is then only
//!   committed), or when it gives up. A non-waiting attempt (`try_lock`,
//!   `try_read`, `try_write`) reports the lock busy while anybody of this
//!   process is queued for it, as it does while another process's acquirer
//!   is passing the turnstile;
//! - a gate around the commit of a grant on the `qfile-io` pool (the
//!   fencing-counter bump when it must `fdatasync`, never on a runtime
//!   thread; an unsynced bump runs inline), so
//!   that readers granted together take one thread, not one each;
//! - the kernel waits in progress for its files ([`Entry::kernel_wait`]).
//!
//! # Kernel waits
//!
//! The head first tries every lock without waiting (`F_OFD_SETLK`, inline
//! on the async task: a few non-blocking system calls). If one is busy and
//! the caller waits, a thread of the wait pool (`ofd::on_wait_thread`,
//! threads named `qfile-wait`) blocks in `F_OFD_SETLKW` on the head's
//! description and the head awaits a channel; the kernel wakes the thread
//! when the lock frees: no polling.
//!
//! A wait is cancelled by dropping the future (timeout, abort, session
//! closed). Nothing interrupts the thread — the crate takes no signal of its
//! host program — so it stays in the kernel's wait list, *orphaned*:
//!
//! - whatever the cancelled acquirer held itself is released at once, by
//!   dropping its own descriptions (in particular the turnstile of the
//!   read/write lock: the readers behind a timed-out writer proceed
//!   immediately). The orphan's own description holds nothing yet;
//! - when the kernel grants the orphan's lock, its thread finds nobody to
//!   hand it to and drops the description on the spot: the kernel releases
//!   the lock an instant after granting it, no fencing counter is bumped, so
//!   an abandoned wait never acquires "by itself";
//! - until then, the next head of this process that needs the very same
//!   kernel lock (same file — path, device and inode: an orphan blocked on
//!   a removed file is never adopted for the new file at that path —, byte
//!   range and mode) *adopts* the orphan: it
//!   awaits that thread's grant instead of starting another wait. The
//!   hand-over and the thread's wake-up are decided under one mutex, so the
//!   grant goes to exactly one of: the adopter, or nobody (dropped);
//! - a non-waiting attempt (`try_*`) that finds the lock busy while such an
//!   orphan exists adopts it for [`ORPHAN_GRACE`] only: the lock may just
//!   have freed and been granted to the orphan, which would drop it a
//!   moment later; the attempt gets it instead of a false "busy". Likewise
//!   while a granted wait's description is on its way to a receiver that
//!   may be gone by the time it arrives (an acquisition dropped in that
//!   very instant, which drops the description on arrival), the attempt
//!   waits for the delivery (at most [`ORPHAN_GRACE`]) before it answers.
//!
//! So at most one thread per (file, range, mode) and process is ever
//! blocked in the kernel, whatever the number of waiters and of abandoned
//! waits: for a read/write lock name, at most three (the turnstile byte, the
//! lock file shared, the lock file exclusive), plus the idle threads the
//! pool keeps for a second.
//!
//! What every primitive shares on top of this is opening the lock file and
//! locking it, retrying when the file was replaced while waiting
//! ([`Entry::lock_file`]), and the [`Grant`] an acquisition hands back.
//!
//! The registry's key is the lock file's path as this crate builds it
//! (root directory as configured, then the stem): two coordinators of one
//! process whose roots name one directory differently (a symbolic link)
//! get two entries. That is still correct — the kernel locks arbitrate
//! between them as between processes — but their waiters are not ordered
//! with each other, and each entry may have its own waiting thread.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};

use quorate_core::{Error, Result};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::layout::{named_id, open_lock_file, FileId};
use crate::ofd::{io_error, lock_blocking, try_lock, Deliver, Mode, Range, WAIT_POOL};

/// What an acquisition hands back: the locked description, its fence, and
/// the identity of the lock file it holds.
pub(crate) struct Grant {
    pub(crate) file: File,
    pub(crate) fence: u64,
    pub(crate) id: FileId,
}

/// This process's state for one lock file; see the module documentation.
pub(crate) struct Entry {
    /// The lock file's path: the registry key.
    path: PathBuf,
    /// The in-process FIFO: one permit, held by the head.
    fifo: Arc<Semaphore>,
    /// Held while a grant is committed (fence bump) on the `qfile-io` pool.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Kernel waits in progress on this entry's files.
    waits: StdMutex<Waits>,
    /// Granted waits unlisted but not yet delivered: their descriptions
    /// still hold the lock for a receiver that may be gone on arrival.
    /// Raised under `waits`, lowered once the delivery is over.
    delivering: AtomicUsize,
    /// Notified whenever `delivering` drops to zero.
    delivered: Notify,
}

#[derive(Default)]
struct Waits {
    next_id: u64,
    list: Vec<KernelWait>,
}

impl Waits {
    /// The orphaned wait for exactly this kernel lock (same file by path,
    /// device and inode, same range and mode), if any.
    fn orphan(
        &mut self,
        path: &Path,
        inode: (u64, u64),
        range: Range,
        mode: Mode,
    ) -> Option<&mut KernelWait> {
        self.list.iter_mut().find(|w| {
            w.path == path && w.inode == inode && w.range == range && w.mode == mode && w.orphaned()
        })
    }
}

/// The device and inode of an open file (which file a path named).
fn inode_of(file: &File, path: &Path) -> Result<(u64, u64)> {
    file.metadata()
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| io_error(format!("checking `{}`", path.display()), e))
}

/// One thread blocked in `F_OFD_SETLKW`.
struct KernelWait {
    id: u64,
    /// The file (by path, and its device and inode: a file removed and
    /// created again under the path is another file), range and mode it
    /// waits for.
    path: PathBuf,
    inode: (u64, u64),
    range: Range,
    mode: Mode,
    /// Who gets the description once granted; `None` or closed: orphaned.
    to: Option<oneshot::Sender<io::Result<File>>>,
}

impl KernelWait {
    fn orphaned(&self) -> bool {
        self.to.as_ref().is_none_or(|tx| tx.is_closed())
    }
}

/// How long a non-waiting acquisition that finds its lock busy waits for
/// an orphaned wait of this process on the same lock (which the kernel may
/// be granting that very moment, only for it to be dropped) before it
/// answers busy.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

type Registry = StdMutex<HashMap<PathBuf, Weak<Entry>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// This process's entry for the lock file `path`.
pub(crate) fn entry(path: &Path) -> Arc<Entry> {
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = map.get(path).and_then(Weak::upgrade) {
        return e;
    }
    let e = Arc::new(Entry {
        path: path.to_owned(),
        fifo: Arc::new(Semaphore::new(1)),
        gate: Arc::new(tokio::sync::Mutex::new(())),
        waits: StdMutex::new(Waits::default()),
        delivering: AtomicUsize::new(0),
        delivered: Notify::new(),
    });
    map.insert(path.to_owned(), Arc::downgrade(&e));
    e
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        // A new entry may already have replaced this one under the key.
        if map.get(&self.path).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&self.path);
        }
    }
}

/// The place at the head of an entry's FIFO; dropping it lets the next
/// waiter of this process in.
pub(crate) struct Turn(#[allow(dead_code)] OwnedSemaphorePermit);

impl Entry {
    /// Wait for the head of the in-process FIFO (`None` when `!wait` and
    /// somebody of this process is queued or at the head).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the FIFO at once.
    pub(crate) async fn turn(&self, wait: bool) -> Result<Option<Turn>> {
        let permit = if wait {
            self.fifo.clone().acquire_owned().await
        } else {
            match self.fifo.clone().try_acquire_owned() {
                Ok(p) => Ok(p),
                Err(tokio::sync::TryAcquireError::NoPermits) => return Ok(None),
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err(Error::backend("the lock queue was closed"))
                }
            }
        };
        permit
            .map(|p| Some(Turn(p)))
            .map_err(|_| Error::backend("the lock queue was closed"))
    }

    /// The commit gate of this entry if nobody holds it.
    pub(crate) fn try_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.gate.clone().try_lock_owned().ok()
    }

    /// Hold the commit gate of this entry (see the module documentation).
    pub(crate) async fn gate(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.gate.clone().lock_owned().await
    }

    /// Wait until a description of the file at `path` holds `range` in
    /// `mode`, and return it. `file` is the caller's own (already tried)
    /// description; it is used for a new wait, or dropped if an orphaned
    /// wait for the same lock is adopted (whose description is returned).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future orphans the wait (module documentation): the
    /// description is dropped when the kernel grants it, unless another
    /// waiter of this process adopted the wait first.
    pub(crate) async fn kernel_wait(
        self: &Arc<Self>,
        path: &Path,
        file: File,
        mode: Mode,
        range: Range,
    ) -> Result<File> {
        let (tx, rx) = oneshot::channel();
        let inode = inode_of(&file, path)?;
        let start = {
            let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
            let orphan = waits.orphan(path, inode, range, mode);
            if let Some(orphan) = orphan {
                tracing::trace!(path = %path.display(), "adopting an orphaned file-lock wait");
                orphan.to = Some(tx);
                None
            } else {
                waits.next_id += 1;
                let id = waits.next_id;
                waits.list.push(KernelWait {
                    id,
                    path: path.to_owned(),
                    inode,
                    range,
                    mode,
                    to: Some(tx),
                });
                Some(id)
            }
        };
        match start {
            // Our own description is not needed: the adopted wait has one.
            None => drop(file),
            Some(id) => {
                let entry = self.clone();
                let started = WAIT_POOL.submit(Box::new(move || {
                    let result = lock_blocking(&file, mode, range);
                    entry.wait_ended(id, result, file)
                }));
                if let Err(e) = started {
                    let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
                    waits.list.retain(|w| w.id != id);
                    return Err(io_error("starting a file-lock wait thread", e));
                }
            }
        }
        match rx.await {
            Ok(Ok(file)) => Ok(file),
            Ok(Err(e)) => Err(io_error(
                format!("waiting for a lock on `{}`", path.display()),
                e,
            )),
            Err(_) => Err(Error::backend("a file-lock wait thread died")),
        }
    }

    /// The end of kernel wait `id` (on its pool thread): `result` of the
    /// wait on `file`. Unlists the wait and, under the same mutex, either
    /// picks its receiver, to whom the returned delivery hands the
    /// description once the thread counts as free, or, with nobody to take
    /// it, drops the description on the spot: closing it, the kernel
    /// releases what it was just granted, so a wait that is no longer
    /// listed holds nothing (`take_from_orphan` relies on it) but for the
    /// deliveries counted in `delivering`.
    fn wait_ended(self: &Arc<Self>, id: u64, result: io::Result<()>, file: File) -> Deliver {
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let i = waits.list.iter().position(|w| w.id == id);
        // A sender whose receiver is gone is an orphan's too. Delivering to
        // it later instead held the lock past the unlisting: a `try_lock`
        // right after a release found it busy with no orphan to take it
        // from (seen in CI: `try_and_timeout` on a busy machine).
        let to = i
            .and_then(|i| waits.list.swap_remove(i).to)
            .filter(|to| !to.is_closed());
        match to {
            Some(to) => {
                self.delivering.fetch_add(1, Ordering::AcqRel);
                drop(waits);
                let entry = self.clone();
                Box::new(move || {
                    // A receiver gone since (its acquisition dropped in this
                    // very instant) gives the description back, dropped
                    // here, before the delivery counts as over.
                    drop(to.send(result.map(|()| file)));
                    if entry.delivering.fetch_sub(1, Ordering::AcqRel) == 1 {
                        entry.delivered.notify_waiters();
                    }
                })
            }
            None => {
                drop(file);
                drop(waits);
                Box::new(|| {})
            }
        }
    }

    /// Take `range` of the file at `path` (which may be this entry's lock
    /// file or a companion file) in `mode`: first without waiting, then, if
    /// busy and `wait`, in the kernel. `Ok(None)`: busy and `!wait`.
    pub(crate) async fn lock(
        self: &Arc<Self>,
        path: &Path,
        wait: bool,
        mode: Mode,
        range: Range,
    ) -> Result<Option<File>> {
        let file = open_lock_file(path)?;
        if try_lock(&file, mode, range).map_err(|e| io_error("taking a file lock", e))? {
            return Ok(Some(file));
        }
        if !wait {
            return self.take_from_orphan(path, file, mode, range).await;
        }
        self.kernel_wait(path, file, mode, range).await.map(Some)
    }

    /// A non-waiting acquisition found the lock busy. If the holder may be
    /// an orphaned wait of this very process (abandoned by a timed-out or
    /// dropped acquisition) that the kernel has just granted, and that is
    /// about to drop it, "busy" would be wrong: the lock is free but for
    /// our own leftover. So adopt the orphan for at most [`ORPHAN_GRACE`]:
    /// if the kernel grants it meanwhile, its description (holding the
    /// lock) is ours; otherwise it is orphaned again and the answer is
    /// busy. Without an orphan on this lock, busy at once.
    async fn take_from_orphan(
        &self,
        path: &Path,
        file: File,
        mode: Mode,
        range: Range,
    ) -> Result<Option<File>> {
        let inode = inode_of(&file, path)?;
        let (tx, mut rx) = oneshot::channel();
        let (adopted, delivering) = {
            let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
            let orphan = waits.orphan(path, inode, range, mode);
            let adopted = orphan.map(|w| {
                w.to = Some(tx);
                w.id
            });
            (adopted, self.delivering.load(Ordering::Acquire))
        };
        let Some(id) = adopted else {
            // No orphan listed now. One that held the lock at our attempt
            // has dropped it by now (it is unlisted only with its
            // description closed), or its description is still on its way
            // to a receiver, who may be gone: wait for that delivery, then
            // look once more.
            if delivering > 0 {
                self.deliveries_over(ORPHAN_GRACE).await;
            }
            return if try_lock(&file, mode, range).map_err(|e| io_error("taking a file lock", e))? {
                Ok(Some(file))
            } else {
                Ok(None)
            };
        };
        drop(file);
        let answer = match tokio::time::timeout(ORPHAN_GRACE, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let still_waiting = {
                    let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
                    match waits.list.iter_mut().find(|w| w.id == id) {
                        Some(w) => {
                            // Orphaned again: the lock is really held.
                            w.to = None;
                            true
                        }
                        None => false,
                    }
                };
                if still_waiting {
                    return Ok(None);
                }
                // Granted just now: the thread took our sender and is
                // sending the description.
                rx.await
            }
        };
        match answer {
            Ok(Ok(file)) => {
                tracing::trace!(path = %path.display(), "took a just-granted orphaned wait");
                Ok(Some(file))
            }
            Ok(Err(e)) => Err(io_error(
                format!("waiting for a lock on `{}`", path.display()),
                e,
            )),
            Err(_) => Ok(None),
        }
    }

    /// Wait until no granted wait of this entry is being delivered, for at
    /// most `within`.
    async fn deliveries_over(&self, within: std::time::Duration) {
        let over = async {
            loop {
                let notified = self.delivered.notified();
                tokio::pin!(notified);
                // Registered before the check: a notification between the
                // two is not missed.
                notified.as_mut().enable();
                if self.delivering.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(within, over).await;
    }

    /// Open this entry's lock file and take `range` in `mode`; the
    /// description and the file's identity. Retries if the file was
    /// replaced while we waited (an operator removed it): a lock on a file
    /// nobody else can open protects nothing.
    pub(crate) async fn lock_file(
        self: &Arc<Self>,
        wait: bool,
        mode: Mode,
        range: Range,
    ) -> Result<Option<(File, FileId)>> {
        let path = self.path.clone();
        loop {
            let Some(file) = self.lock(&path, wait, mode, range).await? else {
                return Ok(None);
            };
            if let Some(id) = named_id(&file, &path)
                .map_err(|e| io_error(format!("checking `{}`", path.display()), e))?
            {
                return Ok(Some((file, id)));
            }
            tracing::debug!(path = %path.display(), "lock file was replaced while waiting; retrying");
        }
    }

    /// The lock file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A granted wait of `entry` on `path`'s whole file, listed as kernel
    /// wait with receiver `to`: the description the wait thread would
    /// hold, and the wait's id.
    fn granted_wait(
        entry: &Entry,
        path: &Path,
        to: oneshot::Sender<io::Result<File>>,
    ) -> (File, u64) {
        let file = open_lock_file(path).unwrap();
        assert!(try_lock(&file, Mode::Exclusive, Range::WHOLE).unwrap());
        let mut waits = entry.waits.lock().unwrap();
        waits.next_id += 1;
        let id = waits.next_id;
        waits.list.push(KernelWait {
            id,
            path: path.to_owned(),
            inode: inode_of(&file, path).unwrap(),
            range: Range::WHOLE,
            mode: Mode::Exclusive,
            to: Some(to),
        });
        (file, id)
    }

    /// Whether another description can take the whole file now.
    fn free(path: &Path) -> bool {
        try_lock(
            &open_lock_file(path).unwrap(),
            Mode::Exclusive,
            Range::WHOLE,
        )
        .unwrap()
    }

    #[test]
    fn a_wait_whose_receiver_is_gone_lets_go_before_it_is_unlisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lock");
        let e = entry(&path);
        let (tx, rx) = oneshot::channel();
        drop(rx);
        let (file, id) = granted_wait(&e, &path, tx);
        let deliver = e.wait_ended(id, Ok(()), file);
        assert!(e.waits.lock().unwrap().list.is_empty());
        // Free before the delivery runs: nobody is left to take it from.
        assert!(free(&path), "the unlisted wait still holds the lock");
        deliver();
    }

    #[test]
    fn a_wait_with_a_receiver_hands_its_description_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lock");
        let e = entry(&path);
        let (tx, mut rx) = oneshot::channel();
        let (file, id) = granted_wait(&e, &path, tx);
        let deliver = e.wait_ended(id, Ok(()), file);
        assert!(e.waits.lock().unwrap().list.is_empty());
        assert!(!free(&path), "held for the receiver");
        deliver();
        let file = rx.try_recv().unwrap().unwrap();
        assert!(!free(&path), "the receiver holds it");
        drop(file);
        assert!(free(&path));
    }

    #[tokio::test]
    async fn a_try_waits_for_a_delivery_whose_receiver_left_meanwhile() {
        use std::future::Future;
        use std::task::Poll;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lock");
        let e = entry(&path);
        let (tx, rx) = oneshot::channel();
        let (file, id) = granted_wait(&e, &path, tx);
        // The wait ends with its receiver there; the receiver leaves before
        // the delivery runs (its acquisition dropped in that instant).
        let deliver = e.wait_ended(id, Ok(()), file);
        drop(rx);
        let mut attempt = Box::pin(e.lock(&path, false, Mode::Exclusive, Range::WHOLE));
        let first = std::future::poll_fn(|cx| Poll::Ready(attempt.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "answered before the delivery in flight: {:?}",
            first.map(|r| r.map(|f| f.is_some()))
        );
        deliver();
        let got = attempt.await.unwrap();
        assert!(
            got.is_some(),
            "busy, though the lock was free but for a delivery nobody took"
        );
    }
}
