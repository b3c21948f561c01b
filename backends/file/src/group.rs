//! Group membership: one file per live member, locked by the member.
//!
//! Member M of group G is `<root>/group/<stem(G)>/<stem(M)>.member`, whose
//! content is `{"id": M, "capabilities": …, "incarnation": N}` (`N` drawn
//! at random when the member joins and kept by `update`, so a watcher tells
//! a member that left and joined again from one that changed its
//! capabilities) and whose byte 0 (*alive*) the
//! member's open file description holds exclusively for as long as it is a
//! member. A member file is written and locked under a temporary name and
//! only then hard-linked into place (which fails if the name exists), and
//! it is replaced (on `update`) by renaming a new, already locked file over
//! it. So a member file's content never changes, and a file whose alive
//! byte is free is dead for good: its only locker, the member, is gone.
//! Listing therefore probes the alive byte (`F_OFD_GETLK`) of every file:
//! a crashed member disappears from `members()` the instant the kernel
//! closes its files.
//!
//! Dead files are removed by `members()`, `leftovers()` and a joiner that
//! finds one in its way, after taking byte 1 (*sweep*) exclusively and
//! checking the name still points at the dead file, so two sweepers can
//! never remove a live file that replaced a dead one.
//!
//! Watching uses inotify on the group's directory: the member's `link`,
//! `rename` and `unlink`, and the close of its file when it leaves or dies,
//! each trigger a look at that file (or a re-scan), reported to core's
//! watch view as raw changes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::StreamExt;
use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{GroupChange, HeldMembership, RawGroupWatch, SeenMember};
use quorate_core::Member;
use quorate_core::{Error, Result};

use crate::layout::{list, member_file_name, same_file, tmp_name, Layout};
use crate::ofd::{blocking, io_error, is_locked, try_lock, Mode, Range};
use crate::session::{Registration, Revocable, SessionShared};
use crate::watch::{Change, Changes};

/// Held exclusively by the member for its whole membership.
const ALIVE: Range = Range::byte(0);
/// Held exclusively by whoever removes a dead member file.
const SWEEP: Range = Range::byte(1);
/// How often a joiner retries when another process is sweeping its name.
const LINK_ATTEMPTS: usize = 200;

/// Join `group` as `member`.
pub(crate) async fn join(
    session: &Arc<SessionShared>,
    group: &str,
    member: &str,
    capabilities: &serde_json::Value,
    loss: LossNotifier,
) -> Result<Box<dyn HeldMembership>> {
    let dir = session.layout.group_dir(group);
    let path = dir.join(member_file_name(member));
    let incarnation = new_incarnation();
    let content = content(member, capabilities, incarnation)?;
    let (job_dir, job_path) = (dir.clone(), path.clone());
    let (group_name, member_name) = (group.to_owned(), member.to_owned());
    // Before the member file exists: see `SessionShared::reserve`.
    let registration = session.reserve();
    let watched = session.clone();
    let file = blocking(move || {
        fs::create_dir_all(&job_dir)
            .map_err(|e| io_error(format!("creating `{}`", job_dir.display()), e))?;
        // Watched before the member file exists, so its removal is seen.
        crate::removals::watch_dir(&watched, &job_dir);
        let (file, tmp) = locked_tmp(&job_dir, &content)?;
        let linked = link_into_place(&tmp, &job_path, &group_name, &member_name);
        let _ = fs::remove_file(&tmp);
        linked?;
        Ok(MemberFile {
            file: Some(file),
            path: job_path,
        })
    })
    .await?;
    tracing::debug!(group, member, "joined");
    let state = Arc::new(MemberState {
        member: member.to_owned(),
        incarnation,
        dir,
        file: StdMutex::new(file),
        loss,
        registration,
    });
    let weak: std::sync::Weak<MemberState> = Arc::downgrade(&state);
    session.activate(&state.registration, weak)?;
    Ok(Box::new(FileMembership(state)))
}

/// A fresh membership's incarnation: random, non-negative.
fn new_incarnation() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

fn content(member: &str, capabilities: &serde_json::Value, incarnation: i64) -> Result<Vec<u8>> {
    serde_json::to_vec(&serde_json::json!({
        "id": member,
        "capabilities": capabilities,
        "incarnation": incarnation,
    }))
    .map_err(|e| Error::backend(format!("encoding capabilities: {e}")))
}

/// Create a temporary member file in `dir`, lock its alive byte and write
/// `content`.
fn locked_tmp(dir: &Path, content: &[u8]) -> Result<(File, PathBuf)> {
    let tmp = dir.join(tmp_name());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_error(format!("creating `{}`", tmp.display()), e))?;
    let ready = try_lock(&file, Mode::Exclusive, ALIVE)
        .and_then(|locked| {
            if locked {
                Ok(())
            } else {
                Err(io::Error::other("a fresh file was locked by someone else"))
            }
        })
        .and_then(|()| file.write_all_at(content, 0));
    if let Err(e) = ready {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(format!("preparing `{}`", tmp.display()), e));
    }
    Ok((file, tmp))
}

/// Hard-link the locked temporary file to the member's name, removing a
/// dead member file in the way.
fn link_into_place(tmp: &Path, path: &Path, group: &str, member: &str) -> Result<()> {
    for _ in 0..LINK_ATTEMPTS {
        match fs::hard_link(tmp, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match remove_if_dead(path)? {
                Probe::Alive => {
                    return Err(Error::already_held(format!(
                        "member `{member}` is already in group `{group}`"
                    )))
                }
                Probe::Busy => std::thread::sleep(Duration::from_millis(1)),
                Probe::Removed | Probe::Gone => {}
            },
            Err(e) => return Err(io_error(format!("creating `{}`", path.display()), e)),
        }
    }
    Err(Error::backend(format!(
        "could not claim `{}`: another process kept sweeping it",
        path.display()
    )))
}

enum Probe {
    /// A live member holds the file.
    Alive,
    /// The file was dead and this call removed it.
    Removed,
    /// Another process is removing it right now.
    Busy,
    /// The name no longer points at that file.
    Gone,
}

/// Remove the member file at `path` if its member is gone.
fn remove_if_dead(path: &Path) -> Result<Probe> {
    let ctx = || format!("probing `{}`", path.display());
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probe::Gone),
        Err(e) => return Err(io_error(ctx(), e)),
    };
    if is_locked(&file, Mode::Exclusive, ALIVE).map_err(|e| io_error(ctx(), e))? {
        return Ok(Probe::Alive);
    }
    if !try_lock(&file, Mode::Exclusive, SWEEP).map_err(|e| io_error(ctx(), e))? {
        return Ok(Probe::Busy);
    }
    // Dead for good (see the module docs); while we hold its sweep byte the
    // name can only be changed by us.
    if !same_file(&file, path).map_err(|e| io_error(ctx(), e))? {
        return Ok(Probe::Gone);
    }
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed the file of a dead member");
            Ok(Probe::Removed)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Gone),
        Err(e) => Err(io_error(format!("removing `{}`", path.display()), e)),
    }
}

/// The member a member file stands for, if it is live.
fn probe(path: &Path) -> Result<Probed> {
    let ctx = || format!("reading `{}`", path.display());
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Probed::Missing),
        Err(e) => return Err(io_error(ctx(), e)),
    };
    if !is_locked(&file, Mode::Exclusive, ALIVE).map_err(|e| io_error(ctx(), e))? {
        return Ok(Probed::Dead);
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error(ctx(), e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match parse(&bytes).filter(|m| member_file_name(&m.member.id) == name) {
        Some(m) => Ok(Probed::Live(m)),
        None => {
            tracing::warn!(path = %path.display(), "ignoring a member file that is not quorate's");
            Ok(Probed::Missing)
        }
    }
}

enum Probed {
    Missing,
    Dead,
    Live(SeenMember),
}

impl Probed {
    fn live(self) -> Option<SeenMember> {
        match self {
            Probed::Live(m) => Some(m),
            Probed::Missing | Probed::Dead => None,
        }
    }
}

/// The live members of the group whose directory is `dir`, by file name.
/// With `sweep`, dead member files are removed on the way.
fn scan_files(dir: &Path, sweep: bool) -> Result<BTreeMap<String, SeenMember>> {
    let mut members = BTreeMap::new();
    for name in list(dir, ".member")? {
        let path = dir.join(&name);
        match probe(&path)? {
            Probed::Live(m) => {
                members.insert(name, m);
            }
            Probed::Dead if sweep => {
                // Listing must not fail because a dead file cannot be
                // removed (e.g. another user's file): it is not listed anyway.
                if let Err(e) = remove_if_dead(&path) {
                    tracing::warn!(error = %e, "could not remove a dead member file");
                }
            }
            Probed::Dead | Probed::Missing => {}
        }
    }
    Ok(members)
}

/// The live members of the group whose directory is `dir`, sorted by id.
/// With `sweep`, dead member files are removed on the way.
pub(crate) fn scan(dir: &Path, sweep: bool) -> Result<Vec<Member>> {
    let mut members: Vec<Member> = scan_files(dir, sweep)?
        .into_values()
        .map(|s| s.member)
        .collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(members)
}

/// A member file's content; a file written before incarnations were
/// recorded has none (`None`: the view cannot tell a rejoin from it).
fn parse(bytes: &[u8]) -> Option<SeenMember> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let id = v.get("id")?.as_str()?.to_owned();
    let capabilities = v.get_mut("capabilities")?.take();
    let incarnation = v.get("incarnation").and_then(|n| n.as_i64());
    Some(SeenMember {
        member: Member { id, capabilities },
        incarnation,
    })
}

/// Members of a group (dead files removed).
pub(crate) async fn members(layout: &Layout, group: &str) -> Result<Vec<Member>> {
    let dir = layout.group_dir(group);
    blocking(move || scan(&dir, true)).await
}

/// Watch a group: a listing, then, for every inotify event on a member
/// file (in event order), that member's raw change; after the follow-up
/// re-scans, a resync (which shows a crashed member no event showed yet).
/// An inotify error (the directory was removed) ends the raw stream with
/// it; core re-opens the watch.
pub(crate) async fn watch(layout: &Layout, group: &str) -> Result<RawGroupWatch> {
    let dir = layout.group_dir(group);
    let job_dir = dir.clone();
    blocking(move || {
        fs::create_dir_all(&job_dir)
            .map_err(|e| io_error(format!("creating `{}`", job_dir.display()), e))
    })
    .await?;
    // Watch first, then scan: no change can fall between the two.
    let changes = Changes::new(&dir, |name| name.ends_with(".member"))?;
    let scan_dir = dir.clone();
    let known = blocking(move || scan_files(&scan_dir, false)).await?;
    let snapshot = known.values().cloned().collect();
    let follow = Follow {
        dir,
        changes,
        ids: known
            .into_iter()
            .map(|(file, m)| (file, m.member.id))
            .collect(),
        broken: false,
    };
    let changes = futures::stream::unfold(follow, |mut f| async move {
        if f.broken {
            return None;
        }
        let changes = f.next().await;
        f.broken = changes.is_err();
        Some((changes, f))
    })
    .flat_map(|changes| match changes {
        Ok(changes) => futures::stream::iter(changes.into_iter().map(Ok)).boxed(),
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    })
    .boxed();
    Ok(RawGroupWatch { snapshot, changes })
}

/// A watch's state: the inotify watch and the member id of each live
/// member file seen (a file name does not tell its id).
struct Follow {
    dir: PathBuf,
    changes: Changes,
    ids: BTreeMap<String, String>,
    broken: bool,
}

impl Follow {
    /// The raw changes after the next inotify wake-up.
    async fn next(&mut self) -> Result<Vec<GroupChange>> {
        let d = self.dir.clone();
        match self.changes.next().await? {
            Change::Files(names) => {
                let looked = blocking(move || {
                    names
                        .into_iter()
                        .map(|n| {
                            let state = probe(&d.join(&n))?.live();
                            Ok((n, state))
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .await?;
                Ok(looked
                    .into_iter()
                    .filter_map(|(file, now)| match now {
                        Some(m) => {
                            self.ids.insert(file, m.member.id.clone());
                            Some(GroupChange::Put(m))
                        }
                        None => self.ids.remove(&file).map(|id| GroupChange::Delete { id }),
                    })
                    .collect())
            }
            Change::Everything => {
                let now = blocking(move || scan_files(&d, false)).await?;
                self.ids = now
                    .iter()
                    .map(|(f, m)| (f.clone(), m.member.id.clone()))
                    .collect();
                Ok(vec![GroupChange::Resync(now.into_values().collect())])
            }
        }
    }
}

/// A member's locked file; dropping it leaves the group (removes the file
/// if it is still ours, then closes it, which frees the alive byte).
struct MemberFile {
    file: Option<File>,
    path: PathBuf,
}

impl MemberFile {
    fn leave(&mut self) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let ours = same_file(&file, &self.path)
            .map_err(|e| io_error(format!("checking `{}`", self.path.display()), e))?;
        if ours {
            match fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(format!("removing `{}`", self.path.display()), e)),
            }
        }
        Ok(())
    }
}

impl Drop for MemberFile {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            tracing::warn!(error = %e, "leaving a group on drop");
        }
    }
}

struct MemberState {
    member: String,
    /// Written into every version of the member file (see the module docs).
    incarnation: i64,
    dir: PathBuf,
    file: StdMutex<MemberFile>,
    loss: LossNotifier,
    registration: Registration,
}

impl Revocable for MemberState {
    fn revoke(&self, reason: &str) {
        self.loss.fire(reason);
        if let Err(e) = self.file.lock().unwrap().leave() {
            tracing::warn!(error = %e, "leaving a group on revoke");
        }
    }

    fn gone(&self) -> Option<String> {
        let held = self.file.lock().unwrap();
        match same_file(held.file.as_ref()?, &held.path) {
            Ok(false) => Some(format!(
                "the member file `{}` was removed or replaced",
                held.path.display()
            )),
            Ok(true) | Err(_) => None,
        }
    }
}

struct FileMembership(Arc<MemberState>);

#[async_trait]
impl HeldMembership for FileMembership {
    async fn update(&self, capabilities: &serde_json::Value) -> Result<()> {
        let state = self.0.clone();
        let content = content(&state.member, capabilities, state.incarnation)?;
        blocking(move || {
            let mut held = state.file.lock().unwrap();
            let still_ours = match held.file.as_ref() {
                Some(f) => same_file(f, &held.path)
                    .map_err(|e| io_error(format!("checking `{}`", held.path.display()), e))?,
                None => false,
            };
            if !still_ours {
                state.loss.fire("the member file is gone");
                return Err(Error::not_held(format!(
                    "`{}` is no longer a member",
                    state.member
                )));
            }
            // The new file is locked before it replaces the old one, so the
            // member never looks dead; the old description closes after.
            let (file, tmp) = locked_tmp(&state.dir, &content)?;
            if let Err(e) = fs::rename(&tmp, &held.path) {
                let _ = fs::remove_file(&tmp);
                return Err(io_error(format!("replacing `{}`", held.path.display()), e));
            }
            held.file = Some(file);
            Ok(())
        })
        .await
    }

    async fn leave(&self) -> Result<()> {
        let state = self.0.clone();
        blocking(move || state.file.lock().unwrap().leave()).await
    }
}
