//! quorate-file: the `file://` backend of quorate — coordination between
//! the processes of one host through lock files in a directory, with Linux
//! open-file-description (OFD) locks and no server.
//!
//! ```text
//! file:///var/lib/quorate          the directory (created if missing)
//! ```
//!
//! - **Locks** are OFD locks (`F_OFD_SETLK`/`F_OFD_SETLKW`) on one file per
//!   name (see `docs/backends.md` for the layout). They exclude tasks and
//!   threads of one process (each acquisition opens its own file
//!   description), other processes, and classic `fcntl`/`lockf` locks such
//!   as Python's `fcntl.lockf` on the same file.
//! - **Failure detection** is the process lifetime: the kernel releases the
//!   locks of a process the moment it dies; a paused (`SIGSTOP`) holder
//!   keeps them, so nobody else acquires (safe, not live). The session TTL
//!   plays no part: a file session reports a TTL of a century and never
//!   expires; it ends with its process, `close`, or being dropped.
//! - **Waiting** is push: a thread blocks in `F_OFD_SETLKW` and the kernel
//!   wakes it. The waiters of one process on one lock queue in memory, in
//!   arrival order, and only the first waits in the kernel, so a thousand
//!   waiters cost a thread, not a thousand. Dropping a waiting future
//!   returns at once and never acquires later; the crate sends no signal
//!   and installs no handler (see `queue` and `docs/backends.md`).
//! - **Fencing tokens** are a counter in each lock file, bumped under the
//!   lock; a durably reserved high-water mark (one `fdatasync` per 4 096
//!   grants) and the boot id keep them increasing across machine crashes.
//! - **Order**: the waiters of one process are served in arrival order;
//!   the kernel does not queue the waiters of different processes in
//!   arrival order, so mutexes and elections are not FIFO across
//!   processes; read/write locks (whose write side is the mutex of the
//!   same name: one lock file per name) are writer-preferring through a
//!   turnstile byte.
#![warn(missing_docs)]

mod election;
mod group;
mod inspect;
mod layout;
mod mutex;
mod ofd;
mod queue;
mod removals;
mod rwlock;
mod session;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{
    Acquire, Acquired, Backend, HeldLeadership, HeldMembership, RawGroupWatch, RawObserve,
    SessionBackend,
};
use quorate_core::{
    Capabilities, Config, Coordinator, Error, FailureDetection, Primitives, Result, RwOrdering,
    Scope,
};
use quorate_core::{Leader, LockKind, Member};

use crate::layout::{list, read_optional, Layout, Space};
use crate::ofd::{blocking, io_error, is_locked, Mode, Range};
use crate::session::FileSession;

pub use crate::layout::stem;

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["file"];

/// What `file://` declares.
///
/// - `scope: Processes`: one host; the directory must be on a local file
///   system (OFD locks over NFS are not covered by the tests).
/// - `failure_detection: ProcessLifetime`, `exclusive_under_pause: true`.
/// - `fifo: false`: FIFO among the waiters of one process (an in-process
///   queue per lock file), but the kernel wakes the waiters of different
///   processes in no promised order.
/// - `rwlock_ordering: WriterPreferring`: a writer holding the turnstile
///   blocks every later reader; waiters at the turnstile race.
/// - `external_revoke: false`: another process cannot take away a kernel
///   lock.
pub fn capabilities() -> Capabilities {
    let mut c = Capabilities::new("file", Scope::Processes, FailureDetection::ProcessLifetime);
    c.fencing = true;
    c.fifo = false;
    c.rwlock_ordering = RwOrdering::WriterPreferring;
    c.push_wakeups = true;
    c.exclusive_under_pause = true;
    c.survives_failover = false;
    // No server to fail over: nothing measured, nothing declared.
    c.exclusive_across_failover = false;
    c.exclusive_across_leader_stalls = false;
    // No server clock: the kernel holds the lock, whatever the wall clock.
    // Nothing to step, nothing declared.
    c.exclusive_across_clock_steps = false;
    // Lock files removed under a holder: another process can lock a new
    // file before the holder is told (within milliseconds, by the
    // `removals` watch: a race, not a guarantee).
    c.exclusive_across_data_loss = false;
    c.external_revoke = false;
    c.primitives = Primitives::ALL;
    c
}

/// The lock file of the mutex `name` under the root directory `root`: the
/// file another program locks (whole file, e.g. Python's
/// `fcntl.lockf(fd, fcntl.LOCK_EX)`) to exclude, and be excluded by,
/// quorate's mutex of that name.
pub fn mutex_path(root: &Path, name: &str) -> PathBuf {
    root.join(Space::Mutex.as_str())
        .join(format!("{}.lock", stem(name)))
}

/// Connect to `file:///absolute/directory`: create the directory (and its
/// sub-directories) if missing, and check it is writable and supports OFD
/// locks.
///
/// The one option, `inspect=true|false` (default `true`), says whether
/// grants publish the holder and waiter records `Coordinator::locks` reads
/// (see `docs/backends.md`, *file:// → Listing*).
///
/// # Errors
///
/// [`quorate_core::ErrorKind::InvalidConfig`] for a host, credentials,
/// other options, a bad `inspect` value, a relative or empty path, or a
/// directory that cannot be created or written; [`quorate_core::ErrorKind::Unsupported`] when its file
/// system has no OFD locks.
pub async fn connect(config: &Config) -> Result<Coordinator> {
    config.reject_unknown_options(&[inspect::OPTION])?;
    let records = inspect::Records::from_config(config)?;
    let url = config.redacted();
    if config.endpoints.iter().any(|e| e != "localhost") {
        return Err(Error::invalid_config(format!(
            "`{url}`: a file URL names a local directory, `file:///absolute/path` (no host)"
        )));
    }
    if config.username.is_some() || config.password.is_some() {
        return Err(Error::invalid_config(format!(
            "`{url}`: file:// takes no credentials"
        )));
    }
    let root = PathBuf::from(&config.path);
    if config.path.is_empty() || !root.is_absolute() {
        return Err(Error::invalid_config(format!(
            "`{url}`: give the directory as an absolute path, `file:///absolute/path`"
        )));
    }
    let layout = blocking(move || Layout::open(root)).await?;
    tracing::debug!(root = %layout.root().display(), "file backend ready");
    Ok(Coordinator::new(
        FileBackend {
            layout: Arc::new(layout),
            records,
        },
        config.clone(),
    ))
}

struct FileBackend {
    layout: Arc<Layout>,
    /// The `inspect` option.
    records: inspect::Records,
}

/// Everything that is held right now: locked lock files, live members.
/// Lock files themselves (with their counters) and values are persistent.
fn leftovers(layout: &Layout) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for space in Space::ALL {
        let dir = layout.root().join(space.as_str());
        for name in list(&dir, ".lock")? {
            let path = dir.join(&name);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(format!("opening `{}`", path.display()), e)),
            };
            if is_locked(&file, Mode::Exclusive, Range::WHOLE)
                .map_err(|e| io_error(format!("probing `{}`", path.display()), e))?
            {
                out.push(format!("{}/{name}", space.as_str()));
            }
        }
    }
    let groups = layout.groups_dir();
    for g in list(&groups, "")? {
        for m in group::scan(&groups.join(&g), true)? {
            out.push(format!("group/{g}/{}", layout::member_file_name(&m.id)));
        }
    }
    Ok(out)
}

#[async_trait]
impl Backend for FileBackend {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn open_session(
        &self,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<Box<dyn SessionBackend>> {
        Ok(Box::new(Session {
            inner: FileSession::open(self.layout.clone(), ttl, loss),
            records: self.records,
            book: Arc::new(inspect::Book::new()),
        }))
    }

    async fn revoke_session(&self, _session_id: &str) -> Result<()> {
        Err(Error::unsupported(
            "file:// sessions are processes holding kernel locks: they cannot be revoked from outside",
        ))
    }

    async fn members(&self, group: &str) -> Result<Vec<Member>> {
        group::members(&self.layout, group).await
    }

    async fn watch_group(&self, group: &str) -> Result<RawGroupWatch> {
        group::watch(&self.layout, group).await
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        election::leader(&self.layout, election).await
    }

    async fn observe(&self, election: &str) -> Result<RawObserve> {
        election::observe(&self.layout, election).await
    }

    async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.layout.data_path(key);
        blocking(move || read_optional(&path)).await
    }

    async fn leftovers(&self) -> Result<Vec<String>> {
        let layout = self.layout.clone();
        blocking(move || leftovers(&layout)).await
    }

    async fn locks(&self, prefix: &str) -> Result<Vec<quorate_core::LockState>> {
        let layout = self.layout.clone();
        let prefix = prefix.to_owned();
        blocking(move || inspect::locks(&layout, &prefix)).await
    }
}

/// A session as the backend hands it to core: the file session and
/// whether its grants publish records for `Coordinator::locks`.
struct Session {
    inner: FileSession,
    records: inspect::Records,
    /// The session's lock records (with `inspect=true`).
    book: Arc<inspect::Book>,
}

#[async_trait]
impl SessionBackend for Session {
    fn id(&self) -> String {
        self.inner.shared.id.clone()
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Check that everything the session holds is still there: a grant
    /// whose file was removed or replaced has its loss fired at once. If
    /// the root directory itself is gone, everything the session held went
    /// with it: the session is `Lost`. Other errors reading the root are
    /// `Unavailable` (core retries).
    async fn keep_alive(&self) -> Result<()> {
        self.inner.keep_alive().await
    }

    async fn revoke(&self) -> Result<()> {
        let revoked = self.inner.revoke().await;
        self.book.close();
        revoked
    }

    async fn lock(
        &self,
        name: &str,
        kind: LockKind,
        mode: Acquire,
        loss: LossNotifier,
    ) -> Result<Acquired> {
        // Through `inspect`, which publishes holder and waiter records
        // for `Coordinator::locks` (unless `inspect=false`).
        match self.records {
            inspect::Records::Publish => {
                inspect::lock(&self.inner.shared, &self.book, name, kind, mode, loss).await
            }
            inspect::Records::Skip => {
                mutex::lock(&self.inner.shared, name, kind, mode.waits(), loss)
                    .await
                    .map(|granted| Acquired::from(granted.map(|(held, _)| held)))
            }
        }
    }

    async fn join(
        &self,
        group: &str,
        member: &str,
        capabilities: &serde_json::Value,
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldMembership>> {
        group::join(&self.inner.shared, group, member, capabilities, loss).await
    }

    async fn campaign(
        &self,
        election: &str,
        value: &[u8],
        loss: LossNotifier,
    ) -> Result<Box<dyn HeldLeadership>> {
        election::campaign(&self.inner.shared, election, value, loss).await
    }
}
