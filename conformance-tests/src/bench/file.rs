//! The raw baseline of `file://`.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::RawBaseline;

/// The raw baseline of `file://`: an OFD lock taken with bare system calls
/// on a file of its own directory — open, `F_OFD_SETLKW` on the whole file,
/// close — without quorate's fencing counter (and its `fdatasync`); the
/// hand-off is a thread blocked in `F_OFD_SETLKW`, woken by the release.
/// Its directory (under the URL's) is removed when the baseline is dropped.
#[derive(Debug)]
pub struct FileBaseline {
    dir: std::path::PathBuf,
}

impl FileBaseline {
    /// A baseline working in a fresh directory under `root`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn new(root: &std::path::Path) -> quorate::Result<Self> {
        let dir = root.join(format!(".raw-baseline-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| quorate::Error::backend(format!("creating `{}`: {e}", dir.display())))?;
        Ok(FileBaseline { dir })
    }

    fn locked(&self, key: &str) -> quorate::Result<std::fs::File> {
        raw_ofd_lock(&self.dir.join(key))
    }
}

impl Drop for FileBaseline {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Open `path` and wait for an exclusive OFD lock on the whole file.
fn raw_ofd_lock(path: &std::path::Path) -> quorate::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let err = |e: std::io::Error| quorate::Error::backend(format!("{}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    // SAFETY: a zeroed `flock` is valid; the descriptor is open.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: as above.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLKW, &mut fl) };
        if r == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(err(e));
        }
    }
}

#[async_trait]
impl RawBaseline for FileBaseline {
    fn describe(&self) -> String {
        "open + F_OFD_SETLKW (whole file) + close, no counter or fsync; a thread blocked in F_OFD_SETLKW woken by the release".into()
    }

    async fn acquire_release(&self, key: &str) -> quorate::Result<()> {
        // Closing the description releases the lock.
        drop(self.locked(key)?);
        Ok(())
    }

    async fn handoff(&self, key: &str) -> quorate::Result<Duration> {
        let held = self.locked(key)?;
        let path = self.dir.join(key);
        let waiter = std::thread::spawn(move || {
            let granted = raw_ofd_lock(&path);
            (granted, Instant::now())
        });
        // Let the waiter block in the kernel.
        tokio::time::sleep(super::SETTLE).await;
        let released = Instant::now();
        drop(held);
        let (granted, at) = tokio::task::spawn_blocking(move || waiter.join())
            .await
            .expect("join task")
            .expect("waiter thread");
        drop(granted?);
        Ok(at.saturating_duration_since(released))
    }
}
