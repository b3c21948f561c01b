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

/// Width of the fencing counter at the start of a lock file: 20 decimal
/// digits and a newline, always overwritten in place at the same size.
const FENCE_LEN: usize = 21;

/// Read the fencing counter of a lock file (0 for an empty file).
pub(crate) fn read_fence(file: &File, path: &Path) -> Result<u64> {
    let mut buf = [0u8; FENCE_LEN];
    let mut n = 0;
    while n < FENCE_LEN {
        match file.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(format!("reading `{}`", path.display()), e)),
        }
    }
    if n == 0 {
        return Ok(0);
    }
    let text = std::str::from_utf8(&buf[..n]).ok();
    text.map(|t| t.trim_end_matches('\n'))
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::backend(format!(
                "`{}` does not start with a quorate fencing counter (found {:?}); \
                 refusing to restart the counter",
                path.display(),
                String::from_utf8_lossy(&buf[..n])
            ))
        })
}

/// Bump the fencing counter of a lock file under its lock, make it durable,
/// and return the new value. The caller must hold a lock that excludes every
/// other bump of this file.
///
/// A file without a counter (new, or created empty by another program)
/// starts it at the wall clock in microseconds, not at 1: if an operator
/// removes a lock file (or the whole root) while it is in use, the file
/// created next starts above every fence the removed one handed out (each
/// grant takes well over a microsecond), so fences never repeat — provided
/// the wall clock has not been stepped back by more than the time since the
/// removed file was created.
pub(crate) fn bump_fence(file: &File, path: &Path) -> Result<u64> {
    let fresh = file
        .metadata()
        .map_err(|e| io_error(format!("reading `{}`", path.display()), e))?
        .len()
        == 0;
    let current = if fresh {
        wall_clock_us()
    } else {
        read_fence(file, path)?
    };
    let next = current
        .checked_add(1)
        .ok_or_else(|| Error::backend(format!("the counter of `{}` overflowed", path.display())))?;
    let text = format!("{next:020}\n");
    file.write_all_at(text.as_bytes(), 0)
        .and_then(|()| file.sync_data())
        .map_err(|e| io_error(format!("writing the counter of `{}`", path.display()), e))?;
    if fresh {
        // A new file: make its directory entry durable too, so the counter
        // cannot vanish (and restart) after a crash of the machine.
        sync_parent(path)?;
    }
    Ok(next)
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
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(named) => Ok(named.dev() == open.dev() && named.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
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
