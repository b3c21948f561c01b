//! The acquisition machinery shared by mutexes, read/write locks and
//! elections. The kernel keeps the queue of waiters on a lock file (a
//! blocking OFD lock on a blocking-pool thread, `ofd.rs`); what every
//! primitive shares on top of it is opening the lock file and locking it,
//! retrying when the file was replaced while waiting, and the [`Grant`] an
//! acquisition job hands back.

use std::fs::File;
use std::path::Path;

use quorate_core::Result;

use crate::layout::{open_lock_file, same_file};
use crate::ofd::{io_error, Wait};

/// What an acquisition job hands back: the locked description and its fence.
pub(crate) struct Grant {
    pub(crate) file: File,
    pub(crate) fence: u64,
}

/// Open `path` and take the lock with `take` (which may take several
/// ranges). Retries if the file was replaced while we waited (an operator
/// removed it): a lock on a file nobody else can open protects nothing.
pub(crate) fn lock_file(
    path: &Path,
    wait: Wait<'_>,
    take: impl Fn(&File, Wait<'_>) -> Result<bool>,
) -> Result<Option<File>> {
    loop {
        let file = open_lock_file(path)?;
        if !take(&file, wait)? {
            return Ok(None);
        }
        if same_file(&file, path)
            .map_err(|e| io_error(format!("checking `{}`", path.display()), e))?
        {
            return Ok(Some(file));
        }
        tracing::debug!(path = %path.display(), "lock file was replaced while waiting; retrying");
    }
}
