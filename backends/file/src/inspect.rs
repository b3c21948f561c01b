//! `Coordinator::locks` for `file://`: holder and waiter records.
//!
//! The kernel tells who holds a lock file only as "some open file
//! description holds it shared/exclusive" (`F_OFD_GETLK` reports no owner
//! for OFD locks), shows no waiters, and a long name's lock file is named
//! by a hash. So each session keeps a record file, its *book*:
//!
//! ```text
//! <root>/inspect/<session>.session   one 512-byte slot per grant or wait
//! <root>/inspect/names/<stem>        the full name of a hashed (long) stem
//! ```
//!
//! The book is created at the session's first acquisition, and its byte 0
//! is locked (OFD, exclusive) while the session lives: the kernel frees it
//! when the process dies, and closing the session closes (then unlinks) it.
//! A grant writes its slot with one `pwrite` (no `fsync`, no directory
//! change: a few microseconds, on the calling task) after the grant; a
//! blocking acquisition writes a waiter slot before it queues, and its
//! grant overwrites that slot with the holder record (nothing is awaited
//! before it queues: file:// queues the waiters of one process in arrival
//! order). Releasing (or `write_and_release`, a lost grant, the end of
//! the session) clears the slot first. A slot is `QRS1`, the payload's
//! length and FNV-1a hash, then the payload (JSON: kind, stem, side, fence,
//! time, and the device and inode of the lock file granted on); a reader
//! skips a slot whose hash does not match (written while it read). Books
//! whose byte 0 is free are skipped, and removed once the process named by
//! the session id (`<pid>.<random>`) is gone.
//!
//! A lock file held by a description with no live record (a Python
//! `lockf` user, a session with `inspect=false`, or a quorate grant in the
//! instant before its slot is written) is listed with one holder of unknown
//! session and fence, if its name can be decoded from the file name or the
//! names directory. A held slot whose lock file was removed or replaced
//! since is ignored. Waiters are listed in arrival order; file:// grants
//! them in no promised order (`fifo: false`). `lockf` waiters are not seen.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_core::backend::async_trait;
use quorate_core::inspect::finish_listing;
use quorate_core::loss::LossNotifier;
use quorate_core::name::decode;
use quorate_core::spi::{Acquire, Acquired, AfterWrite, HeldLock};
use quorate_core::{FencingToken, LockHolder, LockKind, LockMode, LockState, LockWaiter, Result};
use serde_json::{json, Value};

use crate::layout::{list, stem, Layout, Space};
use crate::ofd::{io_error, is_locked, try_lock, Mode, Range};
use crate::session::{Registration, Revocable, SessionShared};

/// The URL option that turns records off: `inspect=false`.
pub(crate) const OPTION: &str = "inspect";

/// Whether grants and waits publish records (the `inspect` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Records {
    /// Publish them (the default): `Coordinator::locks` shows sessions,
    /// fences, grant times and waiters.
    Publish,
    /// Publish none (`inspect=false`): grants cost less, and the listing
    /// shows this process's holders with no session or fence, and not its
    /// waiters.
    Skip,
}

impl Records {
    /// The `inspect` option of a URL.
    ///
    /// # Errors
    ///
    /// [`quorate_core::ErrorKind::InvalidConfig`] for a value other than
    /// `true` or `false`.
    pub(crate) fn from_config(config: &quorate_core::Config) -> Result<Records> {
        match config.option(OPTION) {
            None | Some("true") => Ok(Records::Publish),
            Some("false") => Ok(Records::Skip),
            Some(other) => Err(quorate_core::Error::invalid_config(format!(
                "`{OPTION}` is `true` or `false`, got `{other}`"
            ))),
        }
    }
}

/// The records' directory under the root.
const DIR: &str = "inspect";
/// Full names of hashed stems, under [`DIR`].
const NAMES: &str = "names";
/// Suffix of a book.
const BOOK: &str = ".session";
/// Size of a slot.
const SLOT: usize = 512;
/// A slot's header: magic, payload length (u32 LE), FNV-1a 64 (LE).
const HEADER: usize = 16;
/// Magic of a written slot; a cleared slot starts with zeros.
const MAGIC: &[u8; 4] = b"QRS1";

fn mode_str(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Shared => "shared",
        _ => "exclusive",
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A session's book: its record file, open while the session lives.
pub(crate) struct Book {
    state: StdMutex<BookState>,
}

#[derive(Default)]
struct BookState {
    /// `None` before the first record and after the session closed.
    open: Option<OpenBook>,
    closed: bool,
    free: Vec<u64>,
    next: u64,
}

struct OpenBook {
    path: PathBuf,
    file: File,
}

impl Book {
    /// An empty book; its file is made at the first record.
    pub(crate) fn new() -> Book {
        Book {
            state: StdMutex::new(BookState::default()),
        }
    }

    /// Write `payload` into slot `reuse` (one of ours, still written) or,
    /// when `None`, into a free slot; the slot's index. A failed write
    /// leaves a reused slot as it was (the caller still owns it).
    fn write(
        &self,
        layout: &Layout,
        session: &str,
        payload: &Value,
        reuse: Option<u64>,
    ) -> Result<u64> {
        let payload = payload.to_string().into_bytes();
        if payload.len() > SLOT - HEADER {
            return Err(quorate_core::Error::backend(
                "a lock record does not fit its slot",
            ));
        }
        let mut st = self.state.lock().unwrap();
        if st.closed {
            return Err(quorate_core::Error::lost("the session is closed"));
        }
        if st.open.is_none() {
            st.open = Some(open_book(layout, session)?);
        }
        let index = match reuse.or_else(|| st.free.pop()) {
            Some(i) => i,
            None => {
                st.next += 1;
                st.next - 1
            }
        };
        let mut slot = Vec::with_capacity(HEADER + payload.len());
        slot.extend_from_slice(MAGIC);
        slot.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        slot.extend_from_slice(&fnv1a(&payload).to_le_bytes());
        slot.extend_from_slice(&payload);
        let book = st.open.as_ref().expect("opened above");
        match book.file.write_all_at(&slot, index * SLOT as u64) {
            Ok(()) => Ok(index),
            Err(e) => {
                let e = io_error(format!("writing `{}`", book.path.display()), e);
                if reuse.is_none() {
                    st.free.push(index);
                }
                Err(e)
            }
        }
    }

    /// Clear slot `index` (the record is gone) and free it.
    fn clear(&self, index: u64) {
        let mut st = self.state.lock().unwrap();
        if let Some(book) = &st.open {
            if let Err(e) = book.file.write_all_at(&[0; 4], index * SLOT as u64) {
                tracing::debug!(path = %book.path.display(), error = %e, "clearing a lock record");
            }
        }
        st.free.push(index);
    }

    /// The session ended: close the book (its records end with it) and
    /// unlink it. Later records are refused.
    pub(crate) fn close(&self) {
        let open = {
            let mut st = self.state.lock().unwrap();
            st.closed = true;
            st.open.take()
        };
        if let Some(OpenBook { path, file }) = open {
            drop(file);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), error = %e, "removing a session's lock records");
                }
            }
        }
    }
}

impl Drop for Book {
    fn drop(&mut self) {
        self.close();
    }
}

/// Create and lock a session's book.
fn open_book(layout: &Layout, session: &str) -> Result<OpenBook> {
    let dir = layout.root().join(DIR);
    let path = dir.join(format!("{session}{BOOK}"));
    let create = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
    };
    let file = match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(&dir)
                .map_err(|e| io_error(format!("creating `{}`", dir.display()), e))?;
            create()
        }
        r => r,
    }
    .map_err(|e| io_error(format!("creating `{}`", path.display()), e))?;
    match try_lock(&file, Mode::Exclusive, Range::byte(0)) {
        Ok(true) => Ok(OpenBook { path, file }),
        Ok(false) => Err(quorate_core::Error::backend(format!(
            "`{}` is locked by another session of the same id",
            path.display()
        ))),
        Err(e) => Err(io_error(format!("locking `{}`", path.display()), e)),
    }
}

/// Make sure a hashed stem's full name can be found by readers.
fn record_name(layout: &Layout, name: &str, st: &str) {
    if decode(st).is_some() {
        return;
    }
    let dir = layout.root().join(DIR).join(NAMES);
    let path = dir.join(st);
    if path.exists() {
        return;
    }
    let _ = fs::create_dir_all(&dir);
    // Written whole under a temporary name, then renamed: once per name.
    let tmp = dir.join(crate::layout::tmp_name());
    if fs::write(&tmp, name)
        .and_then(|()| fs::rename(&tmp, &path))
        .is_err()
    {
        let _ = fs::remove_file(&tmp);
        tracing::debug!(stem = st, "could not record a long lock name");
    }
}

/// A written slot, cleared when dropped or revoked.
struct Slot {
    book: Arc<Book>,
    index: u64,
    cleared: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn clear(&self) {
        if !self.cleared.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.book.clear(self.index);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A holder slot, registered with its session so that the end of the
/// session (or a lost grant) clears it with the grant.
struct HeldSlot {
    slot: Slot,
    registration: Registration,
}

impl Revocable for HeldSlot {
    fn revoke(&self, _reason: &str) {
        self.slot.clear();
    }
}

/// Write a record, logging (not failing) when it cannot be written: the
/// kernel lock is the truth, and the listing then shows the grant with no
/// session. With `over` (a waiter slot whose acquisition was granted) the
/// record goes into that slot: one `pwrite` instead of writing a new slot
/// and clearing the old, and a listing never sees both. If the write fails,
/// `over` is dropped (cleared) and no record stands.
fn write_slot(
    book: &Arc<Book>,
    layout: &Layout,
    session: &str,
    payload: &Value,
    over: Option<Slot>,
) -> Option<Slot> {
    match book.write(layout, session, payload, over.as_ref().map(|s| s.index)) {
        Ok(index) => Some(over.unwrap_or_else(|| Slot {
            book: book.clone(),
            index,
            cleared: std::sync::atomic::AtomicBool::new(false),
        })),
        Err(e) => {
            tracing::warn!(error = %e, "could not write a lock record");
            None
        }
    }
}

/// Acquire through `mutex::lock`, writing a waiter slot while a blocking
/// acquisition waits and a holder slot once granted. The slot writes are
/// `pwrite`s to the page cache on the calling task (a few microseconds);
/// the book's creation at the session's first acquisition (and, for a
/// hashed long name, its first record of the full name) is a file creation
/// on the calling task too, so that nothing is awaited before the
/// acquisition queues.
///
/// # Cancel safety
///
/// As `mutex::lock`; the waiter slot is cleared when the future is
/// dropped.
pub(crate) async fn lock(
    session: &Arc<SessionShared>,
    book: &Arc<Book>,
    name: &str,
    kind: LockKind,
    mode: Acquire,
    loss: LossNotifier,
) -> Result<Acquired> {
    let layout = &session.layout;
    let st = stem(name);
    let side = mode_str(LockMode::from(kind));
    record_name(layout, name, &st);
    // Nothing is awaited before `mutex::lock` queues the acquisition (its
    // in-process queue is FIFO by arrival, which is the first poll): the
    // waiter slot is written here, synchronously, and overwritten by the
    // holder record once granted (an uncontended lock + release: three
    // `pwrite`s, the waiter record, the holder record, the clear).
    let waiter = if mode.waits() {
        let payload = json!({"k": "wait", "stem": st, "mode": side, "at_us": now_us()});
        write_slot(book, layout, &session.id, &payload, None)
    } else {
        None
    };
    let granted = crate::mutex::lock(session, name, kind, mode.waits(), loss).await?;
    let Some((held, id)) = granted else {
        return Ok(Acquired::Busy);
    };
    // The waiter slot (if any) becomes the holder slot. `id` is the lock
    // file the grant holds, as checked when it was locked.
    let payload = json!({
        "k": "held",
        "stem": st,
        "mode": side,
        "fence": held.fence().get(),
        "at_us": now_us(),
        "dev": id.dev,
        "ino": id.ino,
    });
    let record = write_slot(book, layout, &session.id, &payload, waiter);
    let record = record.and_then(|slot| {
        let state = Arc::new(HeldSlot {
            slot,
            registration: session.reserve(),
        });
        let weak: std::sync::Weak<HeldSlot> = Arc::downgrade(&state);
        // The session ended meanwhile: the grant goes with it.
        session.activate(&state.registration, weak).ok()?;
        Some(state)
    });
    Ok(Acquired::Granted(Box::new(RecordedLock { held, record })))
}

/// A grant with its holder slot.
struct RecordedLock {
    held: Box<dyn HeldLock>,
    record: Option<Arc<HeldSlot>>,
}

impl RecordedLock {
    fn unpublish(&self) {
        if let Some(r) = &self.record {
            r.slot.clear();
        }
    }
}

#[async_trait]
impl HeldLock for RecordedLock {
    fn fence(&self) -> FencingToken {
        self.held.fence()
    }

    async fn is_held(&self) -> Result<bool> {
        self.held.is_held().await
    }

    async fn release(&self) -> Result<()> {
        // The record first: a listing in between shows the lock held by an
        // unknown session for an instant, never by this one after a
        // hand-off.
        self.unpublish();
        self.held.release().await
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let applied = self.held.write_if_held(key, value, then).await?;
        if then == AfterWrite::Release || !applied {
            self.unpublish();
        }
        Ok(applied)
    }
}

/// One live slot read back.
struct Seen {
    name: String,
    session: String,
    held: bool,
    mode: LockMode,
    fence: Option<FencingToken>,
    at_us: u64,
    identity: Option<(u64, u64)>,
}

/// Whether the process that owns the book at `path` may still run: its
/// name starts with the session id, `<pid>.<random>`.
fn process_alive(path: &Path) -> bool {
    let pid = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('.'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        // Not a book this code wrote: leave it.
        None => true,
    }
}

/// The full name of a stem: decoded, or from the names directory.
fn name_of(
    layout: &Layout,
    st: &str,
    cache: &mut BTreeMap<String, Option<String>>,
) -> Option<String> {
    if let Some(n) = decode(st) {
        return Some(n);
    }
    cache
        .entry(st.to_owned())
        .or_insert_with(|| {
            let n = fs::read_to_string(layout.root().join(DIR).join(NAMES).join(st)).ok()?;
            (stem(&n) == st).then_some(n)
        })
        .clone()
}

/// The live slots of the book at `path` (none if the book is dead; a dead
/// book whose process is gone is removed).
fn read_book(
    layout: &Layout,
    path: &Path,
    session: &str,
    names: &mut BTreeMap<String, Option<String>>,
) -> Result<Vec<Seen>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("opening `{}`", path.display()), e)),
    };
    let live = is_locked(&file, Mode::Exclusive, Range::byte(0))
        .map_err(|e| io_error(format!("probing `{}`", path.display()), e))?;
    if !live {
        if !process_alive(path) {
            let _ = fs::remove_file(path);
        }
        return Ok(Vec::new());
    }
    let bytes = {
        use std::io::Read;
        let mut b = Vec::new();
        (&file)
            .read_to_end(&mut b)
            .map_err(|e| io_error(format!("reading `{}`", path.display()), e))?;
        b
    };
    let mut out = Vec::new();
    for slot in bytes.chunks(SLOT) {
        if slot.len() < HEADER || &slot[..4] != MAGIC {
            continue;
        }
        let len = u32::from_le_bytes(slot[4..8].try_into().unwrap()) as usize;
        let hash = u64::from_le_bytes(slot[8..16].try_into().unwrap());
        let Some(payload) = slot.get(HEADER..HEADER + len) else {
            continue;
        };
        if fnv1a(payload) != hash {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        let Some(st) = v["stem"].as_str() else {
            continue;
        };
        let Some(name) = name_of(layout, st, names) else {
            continue;
        };
        let mode = match v["mode"].as_str() {
            Some("shared") => LockMode::Shared,
            _ => LockMode::Exclusive,
        };
        out.push(Seen {
            name,
            session: session.to_owned(),
            held: v["k"] == "held",
            mode,
            fence: v["fence"].as_u64().and_then(|f| FencingToken::new(f).ok()),
            at_us: v["at_us"].as_u64().unwrap_or(0),
            identity: v["dev"].as_u64().zip(v["ino"].as_u64()),
        });
    }
    Ok(out)
}

/// Every lock whose name starts with `prefix` that is held or waited for.
pub(crate) fn locks(layout: &Layout, prefix: &str) -> Result<Vec<LockState>> {
    let mut holders: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut waiters: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut names = BTreeMap::new();
    let mut files: BTreeMap<String, Option<(u64, u64)>> = BTreeMap::new();
    let dir = layout.root().join(DIR);
    for file_name in list(&dir, BOOK)? {
        let session = file_name
            .strip_suffix(BOOK)
            .unwrap_or(&file_name)
            .to_owned();
        for seen in read_book(layout, &dir.join(&file_name), &session, &mut names)? {
            if !seen.name.starts_with(prefix) {
                continue;
            }
            if seen.held {
                // Only on the lock file it was granted on.
                let now = files.entry(seen.name.clone()).or_insert_with(|| {
                    fs::metadata(layout.lock_path(Space::Mutex, &seen.name))
                        .ok()
                        .map(|m| (m.dev(), m.ino()))
                });
                if seen.identity.is_some() && *now == seen.identity {
                    holders.entry(seen.name.clone()).or_default().push(seen);
                }
            } else {
                waiters.entry(seen.name.clone()).or_default().push(seen);
            }
        }
    }
    let mut out: BTreeMap<String, LockState> = BTreeMap::new();
    for (name, mut list) in holders {
        list.sort_by_key(|s| s.at_us);
        let lock = out
            .entry(name.clone())
            .or_insert_with(|| LockState::new(name));
        lock.holders = list
            .into_iter()
            .map(|s| {
                LockHolder::new(Some(s.session), s.mode)
                    .with_fence(s.fence)
                    .with_since(Some(UNIX_EPOCH + Duration::from_micros(s.at_us)))
            })
            .collect();
    }
    for (name, mut list) in waiters {
        list.sort_by_key(|s| s.at_us);
        let lock = out
            .entry(name.clone())
            .or_insert_with(|| LockState::new(name));
        lock.waiters = list
            .into_iter()
            .map(|s| LockWaiter::new(Some(s.session), s.mode))
            .collect();
    }
    // Lock files held by a description without a live record.
    let locks_dir = layout.root().join(Space::Mutex.as_str());
    for file_name in list(&locks_dir, ".lock")? {
        let Some(name) = file_name
            .strip_suffix(".lock")
            .and_then(|st| name_of(layout, st, &mut names))
        else {
            continue;
        };
        if !name.starts_with(prefix) || out.get(&name).is_some_and(|l| !l.holders.is_empty()) {
            continue;
        }
        let path = locks_dir.join(&file_name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(format!("opening `{}`", path.display()), e)),
        };
        let probe = |mode| {
            is_locked(&file, mode, Range::WHOLE)
                .map_err(|e| io_error(format!("probing `{}`", path.display()), e))
        };
        // A shared probe conflicts only with an exclusive holder.
        let mode = if probe(Mode::Shared)? {
            LockMode::Exclusive
        } else if probe(Mode::Exclusive)? {
            LockMode::Shared
        } else {
            continue;
        };
        out.entry(name.clone())
            .or_insert_with(|| LockState::new(name))
            .holders
            .push(LockHolder::new(None, mode));
    }
    Ok(finish_listing(out.into_values().collect(), prefix))
}
