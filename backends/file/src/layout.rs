//! Where everything lives under the root directory, and the small file
//! operations every primitive shares (lock files with their fencing
//! counter, atomic replacement of small files, identity checks).
//!
//! ```text
//! <root>/lock/<stem>.lock        lock N (mutex = write side, read side):
//!                                whole-file lock; fencing counter inside
//! <root>/lock/<stem>.turn        lock N's turnstile and reader-counter bytes
//! <root>/election/<stem>.lock    election: leadership and "published" bytes; counter
//! <root>/election/<stem>.value   the leader's fence and value
//! <root>/group/<stem>/<stem>.member   one locked file per live member
//! <root>/data/<stem>.data        values of guarded writes
//! ```
//!
//! `<stem>` is [`quorate_core::name::encode`] of the name, or, when that is
//! longer than [`MAX_PLAIN_STEM`] bytes, its first [`HASHED_PREFIX`] bytes,
//! `~` and the SHA-256 of the name in hex (see [`stem`]). Temporary files
//! are `.<random>.tmp`: no real file ends in `.tmp`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use quorate_core::name::encode;
use quorate_core::{Error, Result};
use sha2::{Digest, Sha256};

use crate::ofd::io_error;

/// Longest stem kept as the plain encoding; longer ones are hashed.
pub(crate) const MAX_PLAIN_STEM: usize = 200;
/// How much of a long encoding is kept before the hash (for humans).
pub(crate) const HASHED_PREFIX: usize = 100;

/// The file-name stem of a name: injective, at most 165 bytes, never `.`
/// or `..`, never containing `/` or NUL.
///
/// The plain encoding uses only `[A-Za-z0-9._%-]`; a hashed stem contains
/// `~`, so the two forms cannot collide, and two hashed stems collide only
/// if SHA-256 does.
pub fn stem(name: &str) -> String {
    let encoded = encode(name);
    if encoded.len() <= MAX_PLAIN_STEM {
        return encoded;
    }
    // Keep whole characters of the name, so the prefix decodes (cosmetic:
    // the hash is what makes the stem unique).
    let mut end = 0;
    let mut len = 0;
    for (i, ch) in name.char_indices() {
        let mut buf = [0u8; 4];
        let char_len: usize = ch
            .encode_utf8(&mut buf)
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                    1
                } else {
                    3
                }
            })
            .sum();
        if len + char_len > HASHED_PREFIX {
            break;
        }
        len += char_len;
        end = i + ch.len_utf8();
    }
    let prefix = encode(&name[..end]);
    let hash = Sha256::digest(name.as_bytes());
    let mut out = String::with_capacity(prefix.len() + 1 + 64);
    out.push_str(&prefix);
    out.push('~');
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The directory of each key space (core's one definition).
pub(crate) use quorate_core::name::Space;

/// The root directory and the paths under it.
#[derive(Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Open (creating if missing) the root directory and its
    /// sub-directories, and check that it is writable and supports OFD locks.
    pub(crate) fn open(root: PathBuf) -> Result<Layout> {
        let shown = root.display().to_string();
        let unusable = |what: &str, e: io::Error| {
            Error::invalid_config(format!("file:// directory `{shown}` {what}: {e}")).with_source(e)
        };
        fs::create_dir_all(&root).map_err(|e| unusable("cannot be created", e))?;
        if !fs::metadata(&root)
            .map_err(|e| unusable("cannot be read", e))?
            .is_dir()
        {
            return Err(Error::invalid_config(format!(
                "file:// directory `{}` is not a directory",
                root.display()
            )));
        }
        let layout = Layout { root };
        for space in Space::ALL {
            fs::create_dir_all(layout.root.join(space.as_str()))
                .map_err(|e| unusable("is not writable", e))?;
        }
        for dir in ["group", "data"] {
            fs::create_dir_all(layout.root.join(dir))
                .map_err(|e| unusable("is not writable", e))?;
        }
        // Writable and lockable: create, lock and remove a probe file.
        let probe = layout.root.join(tmp_name());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| unusable("is not writable", e))?;
        let _ = fs::remove_file(&probe);
        match crate::ofd::try_lock(&file, crate::ofd::Mode::Exclusive, crate::ofd::Range::WHOLE) {
            Ok(true) => Ok(layout),
            Ok(false) => Err(Error::backend(
                "a fresh probe file was locked by someone else",
            )),
            Err(e) => Err(Error::unsupported(format!(
                "the file system of `{}` does not support open-file-description locks: {e}",
                layout.root.display()
            ))
            .with_source(e)),
        }
    }

    /// The root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The lock file of `name` in `space`.
    pub(crate) fn lock_path(&self, space: Space, name: &str) -> PathBuf {
        self.root
            .join(space.as_str())
            .join(format!("{}.lock", stem(name)))
    }

    /// The file holding the leader's fence and value of `election`.
    pub(crate) fn value_path(&self, election: &str) -> PathBuf {
        self.root
            .join(Space::Election.as_str())
            .join(format!("{}.value", stem(election)))
    }

    /// The directory of `group`.
    pub(crate) fn group_dir(&self, group: &str) -> PathBuf {
        self.root.join("group").join(stem(group))
    }

    /// The directory holding every group.
    pub(crate) fn groups_dir(&self) -> PathBuf {
        self.root.join("group")
    }

    /// The file of a guarded-write value.
    pub(crate) fn data_path(&self, key: &str) -> PathBuf {
        self.root.join("data").join(format!("{}.data", stem(key)))
    }

    /// Whether the root directory is still there.
    pub(crate) fn check_root(&self) -> io::Result<()> {
        if fs::metadata(&self.root)?.is_dir() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "the root is no longer a directory",
            ))
        }
    }
}

/// The file name of a member.
pub(crate) fn member_file_name(member: &str) -> String {
    format!("{}.member", stem(member))
}

/// A fresh temporary file name (`.<random>.tmp`).
pub(crate) fn tmp_name() -> String {
    format!(".{:016x}.tmp", rand::random::<u64>())
}

/// Open (creating if needed, with its directory) a lock file read-write.
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)
                    .map_err(|e| io_error(format!("creating `{}`", dir.display()), e))?;
            }
            open()
        }
        r => r,
    }
    .map_err(|e| io_error(format!("opening `{}`", path.display()), e))
}

/// Width of the reserved high-water mark at the start of a lock file: 20
/// decimal digits and a newline, always overwritten in place at the same
/// size. (Lock files written before the issued slot existed hold only this
/// line, which was then the last fence handed out.)
const FENCE_LEN: usize = 21;

/// Width of the *issued* slot that follows it: the last fence handed out
/// (20 digits), a space, the boot id of the machine's boot that wrote it
/// (36 characters) and a newline.
const ISSUED_LEN: usize = 20 + 1 + 36 + 1;

/// Fences reserved durably at once: one `fdatasync` per this many grants.
/// After a machine crash the next fence jumps to the end of the reserved
/// block (a gap, never a repeat).
const FENCE_BLOCK: u64 = 4096;

/// The counters at the start of a lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    /// Durable: every fence ever handed out is at most this.
    reserved: u64,
    /// The last fence handed out, when it can be trusted: written in this
    /// boot of the machine (the page cache, shared by every process, still
    /// holds it even if the writer crashed). `None` for a slot written
    /// before a reboot (a machine crash may have lost its latest value), a
    /// missing slot, or an unknown boot id.
    issued: Option<u64>,
}

/// Read the counters (`None` for an empty file).
fn read_counters(file: &File, path: &Path) -> Result<Option<Counters>> {
    let mut buf = [0u8; FENCE_LEN + ISSUED_LEN];
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(format!("reading `{}`", path.display()), e)),
        }
    }
    if n == 0 {
        return Ok(None);
    }
    let digits = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u64>().ok())
    };
    let head = &buf[..n.min(FENCE_LEN)];
    let reserved = digits(head.strip_suffix(b"\n").unwrap_or(head)).ok_or_else(|| {
        Error::backend(format!(
            "`{}` does not start with a quorate fencing counter (found {:?}); \
             refusing to restart the counter",
            path.display(),
            String::from_utf8_lossy(head)
        ))
    })?;
    let issued = (n == FENCE_LEN + ISSUED_LEN)
        .then(|| &buf[FENCE_LEN..])
        .and_then(|slot| {
            let (value, boot) = slot.strip_suffix(b"\n")?.split_at(20);
            let boot = boot.strip_prefix(b" ")?;
            (Some(boot) == boot_id().map(str::as_bytes)).then_some(())?;
            digits(value)
        })
        .filter(|issued| *issued <= reserved);
    Ok(Some(Counters { reserved, issued }))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once; `None`
/// where the kernel does not say (then every grant reserves, i.e. syncs).
fn boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() == 36 && s.bytes().all(|b| b.is_ascii_graphic()))
        })
        .as_deref()
}

/// Bump the fencing counter of a lock file under its lock and return the
/// new fence. The caller must hold a lock that excludes every other bump
/// of this file.
///
/// Fences stay strictly increasing across process crashes *and* machine
/// crashes with one `fdatasync` per [`FENCE_BLOCK`] grants, not one per
/// grant: the first line is a durably written *reservation* that every
/// fence handed out stays at or below; the second records the last fence
/// handed out and the boot that wrote it, without a sync. A process crash
/// loses nothing (the page cache is the file for every other process); a
/// machine crash may lose the second line, and a slot from another boot is
/// not trusted: the next fence is then the reservation + 1.
///
/// A file without a counter (new, or created empty by another program)
/// starts it at the wall clock in microseconds, not at 1: if an operator
/// removes a lock file (or the whole root) while it is in use, the file
/// created next starts above every fence the removed one handed out (each
/// grant takes well over a microsecond, and a block is reserved only once
/// 4096 fences of the current one are used), so fences never repeat —
/// provided the wall clock has not been stepped back by more than the time
/// since the removed file was created.
pub(crate) fn bump_fence(file: &File, path: &Path) -> Result<u64> {
    bump(file, path, true).map(|next| next.expect("a bump that may sync always bumps"))
}

/// [`bump_fence`] when that needs no `fdatasync` (the file has a counter,
/// the next fence is within its reservation and the boot id is known): a
/// `pread` and a `pwrite` to the page cache, cheap enough to run on an
/// async task. `Ok(None)`, with nothing written, when it would need one.
pub(crate) fn bump_fence_unsynced(file: &File, path: &Path) -> Result<Option<u64>> {
    bump(file, path, false)
}

fn bump(file: &File, path: &Path, may_sync: bool) -> Result<Option<u64>> {
    let found = read_counters(file, path)?;
    let (reserved, last) = match found {
        None => {
            let start = wall_clock_us();
            (start, start)
        }
        Some(Counters {
            reserved,
            issued: Some(issued),
        }) => (reserved, issued),
        Some(Counters {
            reserved,
            issued: None,
        }) => (reserved, reserved),
    };
    let overflow = || Error::backend(format!("the counter of `{}` overflowed", path.display()));
    let next = last.checked_add(1).ok_or_else(overflow)?;
    let write = |offset: u64, text: String| {
        file.write_all_at(text.as_bytes(), offset)
            .map_err(|e| io_error(format!("writing the counter of `{}`", path.display()), e))
    };
    if !may_sync && (found.is_none() || next > reserved || boot_id().is_none()) {
        return Ok(None);
    }
    if found.is_none() || next > reserved {
        let reserve = next.checked_add(FENCE_BLOCK - 1).ok_or_else(overflow)?;
        write(0, format!("{reserve:020}\n"))?;
        file.sync_data()
            .map_err(|e| io_error(format!("syncing the counter of `{}`", path.display()), e))?;
        if found.is_none() {
            // A new file: make its directory entry durable too, so the
            // counter cannot vanish (and restart) after a machine crash.
            sync_parent(path)?;
        }
    }
    if let Some(boot) = boot_id() {
        write(FENCE_LEN as u64, format!("{next:020} {boot}\n"))?;
    }
    Ok(Some(next))
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
}

fn sync_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(format!("syncing `{}`", dir.display()), e))?;
    }
    Ok(())
}

/// Whether `path` still names the file open as `file` (it was not removed
/// or replaced, e.g. by an operator's `rm`).
pub(crate) fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    Ok(named_id(file, path)?.is_some())
}

/// A file's identity: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// The identity of the file open as `file` if `path` still names it
/// ([`same_file`]), `None` if not.
pub(crate) fn named_id(file: &File, path: &Path) -> io::Result<Option<FileId>> {
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) if named.dev() == open.dev() && named.ino() == open.ino() => Ok(Some(FileId {
            dev: open.dev(),
            ino: open.ino(),
        })),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replace `path` with `bytes` atomically: write a temporary file in the
/// same directory, optionally `fsync` it, rename it over `path`, and
/// optionally `fsync` the directory. Readers see the old or the new
/// content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().expect("paths under the root have a parent");
    let tmp = dir.join(tmp_name());
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all_at(bytes, 0)?;
        if durable {
            file.sync_data()?;
        }
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(format!("writing `{}`", path.display()), e));
    }
    if durable {
        sync_parent(path)?;
    }
    Ok(())
}

/// Read a small file whole; `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(format!("reading `{}`", path.display()), e)),
    }
}

/// The entries of a directory whose names end with `suffix`; none if the
/// directory does not exist.
pub(crate) fn list(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(format!("listing `{}`", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("listing `{}`", dir.display()), e))?;
        if let Some(name) = entry.file_name().to_str() {
            // Temporary files end in `.tmp`, so they never match a real suffix.
            if name.ends_with(suffix) && !name.ends_with(".tmp") {
                out.push(name.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_plain_when_short_and_hashed_when_long() {
        assert_eq!(stem("jobs/nightly"), "jobs%2Fnightly");
        assert_eq!(stem(".."), "%2E%2E");
        let long_a = format!("{}a", "é".repeat(400));
        let long_b = format!("{}b", "é".repeat(400));
        let (a, b) = (stem(&long_a), stem(&long_b));
        assert_ne!(a, b);
        assert!(a.contains('~') && a.len() <= HASHED_PREFIX + 65, "{a}");
        // The prefix does not end in a cut escape.
        let prefix = a.split('~').next().unwrap();
        assert!(quorate_core::name::decode(prefix).is_some(), "{prefix}");
        // Exactly at the limit stays plain; one byte more is hashed.
        let edge = "x".repeat(MAX_PLAIN_STEM);
        assert_eq!(stem(&edge), edge);
        assert!(stem(&format!("{edge}x")).contains('~'));
        // The longest accepted name fits NAME_MAX with any suffix.
        let max = "/".repeat(quorate_core::name::MAX_NAME_LEN);
        assert!(format!("{}.member", stem(&max)).len() < 255);
    }
}
