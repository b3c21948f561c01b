//! `Coordinator::locks` for `file://`: holder and waiter records.
//!
//! The kernel tells who holds a lock file only as "some open file
//! description holds it shared/exclusive" (`F_OFD_GETLK` reports no owner
//! for OFD locks), shows no waiters, and a long name's lock file is named
//! by a hash. So every grant, and every blocking acquisition while it
//! waits, publishes a small record:
//!
//! ```text
//! <root>/inspect/<stem>/<session>-<n>.held   {"name", "session", "mode", "fence", "at_us", "dev", "ino"}
//! <root>/inspect/<stem>/<session>-<n>.wait   {"name", "session", "mode", "at_us"}
//! ```
//!
//! A record is created (never existing before: names are unique), its byte
//! 0 locked (OFD, exclusive), then written; it counts as live exactly while
//! its byte 0 is locked: the kernel frees it when the process dies, and the
//! grant's release (or `write_and_release`, a lost grant, the end of the
//! session) closes it, then unlinks it in the background. A record whose
//! byte 0 is free is skipped; once the process named by its session id
//! (`<pid>.<random>`) is gone it is dead for good and the next listing
//! removes it. A held record also names the lock file it was granted on
//! (device and inode): if that file was removed or replaced since, the
//! record is ignored. Records are not synced to disk (they describe
//! processes, which do not survive a crash either).
//!
//! A lock file held by a description with no live record (a Python
//! `lockf` user, or a quorate grant in the instant before its record is
//! published) is listed with one holder of unknown session and fence, if
//! its name can be decoded from the file name (not for hashed long names).
//! Waiters are listed in arrival order; file:// grants them in no promised
//! order (`fifo: false`). Processes waiting with `lockf` are not seen.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::ofd::{blocking, io_error, is_locked, try_lock, Mode, Range};
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
/// Suffix of a holder record.
const HELD: &str = ".held";
/// Suffix of a waiter record.
const WAIT: &str = ".wait";

/// Makes record names unique within the process (with the session id,
/// which holds the process id, unique on the host).
static NEXT: AtomicU64 = AtomicU64::new(0);

fn mode_of(kind: LockKind) -> LockMode {
    LockMode::from(kind)
}

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

/// A published record: its path and the description holding its byte 0.
struct Record {
    path: PathBuf,
    file: StdMutex<Option<File>>,
}

impl Record {
    /// Create `dir/file_name` (it never exists: names are unique), lock
    /// its byte 0, and write `content`. A reader that finds it unlocked or
    /// half written in between skips it.
    fn publish(dir: &Path, file_name: &str, content: &Value) -> Result<Record> {
        let path = dir.join(file_name);
        let create = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
        };
        let mut file = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)
                    .map_err(|e| io_error(format!("creating `{}`", dir.display()), e))?;
                create()
            }
            r => r,
        }
        .map_err(|e| io_error(format!("creating `{}`", path.display()), e))?;
        let written = try_lock(&file, Mode::Exclusive, Range::byte(0))
            .and_then(|locked| {
                if locked {
                    Ok(())
                } else {
                    Err(io::Error::other(
                        "a fresh record file was locked by another",
                    ))
                }
            })
            .and_then(|()| file.write_all(content.to_string().as_bytes()));
        if let Err(e) = written {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(io_error(format!("writing `{}`", path.display()), e));
        }
        Ok(Record {
            path,
            file: StdMutex::new(Some(file)),
        })
    }

    /// Remove the record (idempotent): close its description, which frees
    /// its byte 0 (from then on no listing counts it), then unlink it on
    /// the blocking pool (a directory operation the caller need not wait
    /// for; if the process ends first, the next listing sweeps it).
    fn remove(&self) {
        let Some(file) = self.file.lock().unwrap().take() else {
            return;
        };
        drop(file);
        let path = self.path.clone();
        let unlink = move || {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(path = %path.display(), error = %e, "removing a lock record");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(unlink)),
            Err(_) => unlink(),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A holder record, registered with its session so that the end of the
/// session removes it with the grant.
struct HeldRecord {
    record: Record,
    registration: Registration,
}

impl Revocable for HeldRecord {
    fn revoke(&self, _reason: &str) {
        self.record.remove();
    }
}

/// The records of lock `name`: `<root>/inspect/<stem>/`.
fn record_dir(layout: &Layout, name: &str) -> PathBuf {
    layout.root().join(DIR).join(stem(name))
}

fn record_name(session: &str, suffix: &str) -> String {
    format!("{session}-{}{suffix}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Acquire through `mutex::lock`, publishing a waiter record while a
/// blocking acquisition waits and a holder record once granted. A record
/// that cannot be written is logged and left out (the grant stands: the
/// kernel lock is the truth; the listing then shows it with no session).
///
/// # Cancel safety
///
/// As `mutex::lock`; the waiter record is removed when the future is
/// dropped.
pub(crate) async fn lock(
    session: &Arc<SessionShared>,
    name: &str,
    kind: LockKind,
    mode: Acquire,
    loss: LossNotifier,
) -> Result<Acquired> {
    let dir = record_dir(&session.layout, name);
    // One attempt first: an uncontended grant never writes a waiter
    // record. Only a blocking acquisition that finds the lock busy
    // publishes one, then waits.
    let mut waiter = None;
    let mut granted = crate::mutex::lock(session, name, kind, false, loss.clone()).await?;
    if granted.is_none() && mode.waits() {
        let content = json!({
            "name": name,
            "session": session.id,
            "mode": mode_str(mode_of(kind)),
            "at_us": now_us(),
        });
        let (dir, file_name) = (dir.clone(), record_name(&session.id, WAIT));
        waiter = match blocking(move || Record::publish(&dir, &file_name, &content)).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(name, error = %e, "could not publish a waiter record");
                None
            }
        };
        granted = crate::mutex::lock(session, name, kind, true, loss).await?;
    }
    let Some(held) = granted else {
        return Ok(Acquired::Busy);
    };
    let lock_path = session.layout.lock_path(Space::Mutex, name);
    let content = json!({
        "name": name,
        "session": session.id,
        "mode": mode_str(mode_of(kind)),
        "fence": held.fence().get(),
        "at_us": now_us(),
    });
    let file_name = record_name(&session.id, HELD);
    let published = blocking(move || {
        let meta = fs::metadata(&lock_path)
            .map_err(|e| io_error(format!("reading `{}`", lock_path.display()), e))?;
        let mut content = content;
        content["dev"] = json!(meta.dev());
        content["ino"] = json!(meta.ino());
        Record::publish(&dir, &file_name, &content)
    })
    .await;
    drop(waiter);
    let record = match published {
        Ok(record) => {
            let state = Arc::new(HeldRecord {
                record,
                registration: session.reserve(),
            });
            let weak: std::sync::Weak<HeldRecord> = Arc::downgrade(&state);
            match session.activate(&state.registration, weak) {
                Ok(()) => Some(state),
                // The session ended meanwhile: the grant goes with it.
                Err(_) => None,
            }
        }
        Err(e) => {
            tracing::warn!(name, error = %e, "could not publish a holder record");
            None
        }
    };
    Ok(Acquired::Granted(Box::new(RecordedLock { held, record })))
}

/// A grant with its holder record.
struct RecordedLock {
    held: Box<dyn HeldLock>,
    record: Option<Arc<HeldRecord>>,
}

impl RecordedLock {
    fn unpublish(&self) {
        if let Some(r) = &self.record {
            r.record.remove();
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

/// One live record read back.
struct Seen {
    name: String,
    session: Option<String>,
    mode: LockMode,
    fence: Option<FencingToken>,
    at_us: u64,
}

/// Read the record at `path` if it is live; remove it if it is dead.
fn read_record(path: &Path) -> Result<Option<Value>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("opening `{}`", path.display()), e)),
    };
    let live = is_locked(&file, Mode::Exclusive, Range::byte(0))
        .map_err(|e| io_error(format!("probing `{}`", path.display()), e))?;
    if !live {
        // Being written, being removed, or dead: dead for good once its
        // process is gone (names are never reused), then swept.
        if !process_alive(path) {
            let _ = fs::remove_file(path);
        }
        return Ok(None);
    }
    let bytes = io::read_to_string(&file)
        .map_err(|e| io_error(format!("reading `{}`", path.display()), e))?;
    Ok(serde_json::from_str(&bytes).ok())
}

/// Whether the process that wrote the record at `path` may still run: its
/// name starts with the session id, `<pid>.<random>`.
fn process_alive(path: &Path) -> bool {
    let pid = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('.'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok());
    match pid {
        Some(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        // Not a record this code wrote: leave it.
        None => true,
    }
}

fn parse_seen(v: &Value) -> Option<Seen> {
    let mode = match v["mode"].as_str()? {
        "shared" => LockMode::Shared,
        _ => LockMode::Exclusive,
    };
    Some(Seen {
        name: v["name"].as_str()?.to_owned(),
        session: v["session"].as_str().map(str::to_owned),
        mode,
        fence: v["fence"].as_u64().and_then(|f| FencingToken::new(f).ok()),
        at_us: v["at_us"].as_u64().unwrap_or(0),
    })
}

/// Whether the lock file of `name` is still the file a holder record was
/// granted on.
fn same_lock_file(layout: &Layout, name: &str, v: &Value) -> bool {
    match fs::metadata(layout.lock_path(Space::Mutex, name)) {
        Ok(m) => v["dev"].as_u64() == Some(m.dev()) && v["ino"].as_u64() == Some(m.ino()),
        Err(_) => false,
    }
}

/// Every lock whose name starts with `prefix` that is held or waited for.
pub(crate) fn locks(layout: &Layout, prefix: &str) -> Result<Vec<LockState>> {
    let mut holders: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let mut waiters: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    let root = layout.root().join(DIR);
    for st in list(&root, "")? {
        // A plain stem decodes to the name: skip other prefixes unread.
        if decode(&st).is_some_and(|n| !n.starts_with(prefix)) {
            continue;
        }
        let dir = root.join(&st);
        for file_name in list(&dir, "")? {
            let held = file_name.ends_with(HELD);
            if !held && !file_name.ends_with(WAIT) {
                continue;
            }
            let Some(v) = read_record(&dir.join(&file_name))? else {
                continue;
            };
            let Some(seen) = parse_seen(&v) else {
                continue;
            };
            if !seen.name.starts_with(prefix) || stem(&seen.name) != st {
                continue;
            }
            if held {
                if same_lock_file(layout, &seen.name, &v) {
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
                LockHolder::new(s.session, s.mode)
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
            .map(|s| LockWaiter::new(s.session, s.mode))
            .collect();
    }
    // Lock files held by a description without a live record.
    let locks_dir = layout.root().join(Space::Mutex.as_str());
    for file_name in list(&locks_dir, ".lock")? {
        let Some(name) = file_name.strip_suffix(".lock").and_then(decode) else {
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
