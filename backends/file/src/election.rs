//! Elections, on top of a lock file: `<root>/election/<stem(E)>.lock`.
//!
//! A candidate waits for byte 0 (*leadership*) exclusively, exactly like a
//! mutex. Once it holds it, it bumps the fencing counter, writes its fence
//! and value to `<root>/election/<stem(E)>.value` (temporary file and
//! rename, so readers see all or nothing) and only then takes byte 1
//! (*published*). `leader()` reports a leader only while byte 1 is held
//! (probed with `F_OFD_GETLK`), so it never reports a leader whose value is
//! not written yet, nor a dead one: the kernel frees both bytes when the
//! leader's process dies. Resigning removes the value file and closes the
//! description. `observe()` re-reads on inotify events for these two files.
//!
//! Candidates of one process are queued in arrival order in that process
//! (see `queue`: only the first waits in the kernel); candidates of
//! different processes are elected in whatever order the kernel wakes
//! them, so across processes there is no arrival order (the backend
//! declares `fifo: false`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};

use futures::StreamExt;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{HeldLeadership, RawObserve};
use quorate_core::Leader;
use quorate_core::{Error, FencingToken, Result};

use crate::layout::{bump_fence, read_optional, same_file, stem, write_atomic, Layout, Space};
use crate::ofd::{blocking, commit, io_error, is_locked, try_lock, Cancel, Mode, Range};
use crate::queue;
use crate::session::{Registration, Revocable, SessionShared};
use crate::watch::Changes;

/// Held exclusively by the leader (and waited for by candidates).
const LEADERSHIP: Range = Range::byte(0);
/// Held exclusively by the leader once its value is published.
const PUBLISHED: Range = Range::byte(1);

/// The value file's content: the fence in decimal, a newline, the value.
fn encode_value(fence: u64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{fence}\n").into_bytes();
    out.extend_from_slice(value);
    out
}

fn decode_value(bytes: &[u8]) -> Option<Leader> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let fence = std::str::from_utf8(&bytes[..nl]).ok()?.parse().ok()?;
    // A value file whose token is not one (0) is not a leader's.
    let fence = FencingToken::new(fence).ok()?;
    Some(Leader {
        value: bytes[nl + 1..].to_vec(),
        fence,
    })
}

/// A leader's hold on the election; dropping it resigns (removes the value
/// file, then closes the description).
struct LeaderFile {
    file: Option<File>,
    lock_path: PathBuf,
    value_path: PathBuf,
}

impl LeaderFile {
    fn resign(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        // Only remove the value if the lock file is still the one we hold,
        // else it may be another leader's.
        if same_file(&file, &self.lock_path).unwrap_or(false) {
            match std::fs::remove_file(&self.value_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_error(
                        format!("removing `{}`", self.value_path.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    fn held(&self) -> Result<Option<&File>> {
        match &self.file {
            Some(f)
                if same_file(f, &self.lock_path).map_err(|e| {
                    io_error(format!("checking `{}`", self.lock_path.display()), e)
                })? =>
            {
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }
}

impl Drop for LeaderFile {
    fn drop(&mut self) {
        if let Err(e) = self.resign() {
            tracing::warn!(error = %e, "resigning on drop");
        }
    }
}

/// The commit of a campaign, once leadership (byte 0) is held: bump,
/// publish the value, then take byte 1.
fn publish(
    file: File,
    lock_path: &Path,
    value_path: &Path,
    value: &[u8],
    cancel: &Cancel,
) -> Result<(LeaderFile, u64)> {
    cancel.check()?;
    let fence = bump_fence(&file, lock_path)?;
    let leader = LeaderFile {
        file: Some(file),
        lock_path: lock_path.to_owned(),
        value_path: value_path.to_owned(),
    };
    write_atomic(value_path, &encode_value(fence, value), false)?;
    let published = try_lock(
        leader.file.as_ref().expect("just set"),
        Mode::Exclusive,
        PUBLISHED,
    )
    .map_err(|e| io_error("publishing the leader", e))?;
    if !published {
        return Err(Error::backend(format!(
            "byte 1 of `{}` is locked by a process that does not hold byte 0",
            lock_path.display()
        )));
    }
    Ok((leader, fence))
}

/// Campaign and wait until elected.
///
/// Candidates of one process queue in that process's FIFO for the
/// election's lock file (see `queue`); only the first waits in the kernel.
pub(crate) async fn campaign(
    session: &Arc<SessionShared>,
    election: &str,
    value: &[u8],
    loss: LossNotifier,
) -> Result<Box<dyn HeldLeadership>> {
    let lock_path = session.layout.lock_path(Space::Election, election);
    let value_path = session.layout.value_path(election);
    // Before the lock: see `SessionShared::reserve`.
    let registration = session.reserve();
    let entry = queue::entry(&lock_path);
    let turn = entry
        .turn(true)
        .await?
        .ok_or_else(|| Error::backend("a waiting campaign was refused its turn"))?;
    let (file, _) = entry
        .lock_file(true, Mode::Exclusive, LEADERSHIP)
        .await?
        .ok_or_else(|| Error::backend("a waiting campaign returned no leadership"))?;
    drop(turn);
    let (lp, vp, v) = (lock_path.clone(), value_path.clone(), value.to_vec());
    let (leader, fence) = commit(entry.gate().await, move |cancel| {
        publish(file, &lp, &vp, &v, cancel)
    })
    .await?;
    tracing::debug!(election, fence, "elected");
    let state = Arc::new(LeaderState {
        election: election.to_owned(),
        fence: FencingToken::new(fence)?,
        leader: StdMutex::new(leader),
        loss,
        registration,
    });
    let weak: std::sync::Weak<LeaderState> = Arc::downgrade(&state);
    session.activate(&state.registration, weak)?;
    Ok(Box::new(FileLeadership(state)))
}

/// The current leader: only while the published byte is held.
fn read_leader(lock_path: &Path, value_path: &Path) -> Result<Option<Leader>> {
    let ctx = || format!("reading `{}`", lock_path.display());
    let file = match File::open(lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(ctx(), e)),
    };
    if !is_locked(&file, Mode::Exclusive, PUBLISHED).map_err(|e| io_error(ctx(), e))? {
        return Ok(None);
    }
    Ok(read_optional(value_path)?.and_then(|b| decode_value(&b)))
}

/// The current leader of `election`.
pub(crate) async fn leader(layout: &Layout, election: &str) -> Result<Option<Leader>> {
    let lock_path = layout.lock_path(Space::Election, election);
    let value_path = layout.value_path(election);
    blocking(move || read_leader(&lock_path, &value_path)).await
}

/// The current leader, then the leader as re-read on every inotify event.
/// An inotify error (the directory was removed) ends the raw stream with
/// it; core re-opens the observation.
pub(crate) async fn observe(layout: &Layout, election: &str) -> Result<RawObserve> {
    let lock_path = layout.lock_path(Space::Election, election);
    let value_path = layout.value_path(election);
    let dir = lock_path.parent().expect("under the root").to_owned();
    let s = stem(election);
    let (lock_name, value_name) = (format!("{s}.lock"), format!("{s}.value"));
    // Watch first, then read: no change can fall between the two.
    let changes = Changes::new(&dir, move |name| name == lock_name || name == value_name)?;
    let (lp, vp) = (lock_path.clone(), value_path.clone());
    let leader = blocking(move || read_leader(&lp, &vp)).await?;
    let changes =
        futures::stream::unfold(Some((changes, lock_path, value_path)), |state| async move {
            let (mut changes, lock_path, value_path) = state?;
            let read = match changes.next().await {
                Ok(_) => {
                    let (lp, vp) = (lock_path.clone(), value_path.clone());
                    blocking(move || read_leader(&lp, &vp)).await
                }
                Err(e) => Err(e),
            };
            let next = read.is_ok().then_some((changes, lock_path, value_path));
            Some((read, next))
        })
        .boxed();
    Ok(RawObserve { leader, changes })
}

struct LeaderState {
    election: String,
    fence: FencingToken,
    leader: StdMutex<LeaderFile>,
    loss: LossNotifier,
    registration: Registration,
}

impl Revocable for LeaderState {
    fn revoke(&self, reason: &str) {
        self.loss.fire(reason);
        if let Err(e) = self.leader.lock().unwrap().resign() {
            tracing::warn!(error = %e, "resigning on revoke");
        }
    }

    fn gone(&self) -> Option<String> {
        let leader = self.leader.lock().unwrap();
        leader.file.as_ref()?;
        match leader.held() {
            Ok(None) => Some(format!(
                "the election file `{}` was removed or replaced",
                leader.lock_path.display()
            )),
            Ok(Some(_)) | Err(_) => None,
        }
    }
}

struct FileLeadership(Arc<LeaderState>);

#[async_trait]
impl HeldLeadership for FileLeadership {
    fn fence(&self) -> FencingToken {
        self.0.fence
    }

    async fn proclaim(&self, value: &[u8]) -> Result<()> {
        let state = self.0.clone();
        let value = value.to_vec();
        blocking(move || {
            let leader = state.leader.lock().unwrap();
            if leader.held()?.is_none() {
                return Err(Error::not_held(format!(
                    "no longer leader of `{}`",
                    state.election
                )));
            }
            write_atomic(
                &leader.value_path,
                &encode_value(state.fence.get(), &value),
                false,
            )
        })
        .await
    }

    async fn is_leader(&self) -> Result<bool> {
        let state = self.0.clone();
        blocking(move || Ok(state.leader.lock().unwrap().held()?.is_some())).await
    }

    async fn resign(&self) -> Result<()> {
        let state = self.0.clone();
        blocking(move || state.leader.lock().unwrap().resign()).await
    }
}
