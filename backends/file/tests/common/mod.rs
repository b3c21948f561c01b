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
