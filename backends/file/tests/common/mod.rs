//! What every file:// test binary shares.

use std::path::Path;

use quorate_core::{Config, Coordinator};

/// A coordinator on `file://<dir>`.
pub async fn connect(dir: &Path) -> Coordinator {
    let url = format!("file://{}", dir.display());
    quorate_file::connect(&Config::parse(&url).unwrap())
        .await
        .unwrap()
}

/// The names of this process's threads (`/proc/self/task/*/comm`).
#[allow(dead_code)] // not every test binary counts threads
pub fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|c| c.trim_end().to_owned())
        .collect()
}

/// Threads of the crate's wait pool (`qfile-wait`): blocked in, or about to
/// block in, a kernel lock wait.
#[allow(dead_code)] // not every test binary counts threads
pub fn waiting_threads() -> usize {
    thread_names().iter().filter(|n| *n == "qfile-wait").count()
}
