//! quorate-etcd: the `etcd` backend of quorate.
//!
//! Not implemented yet: [`connect`] returns
//! [`quorate_core::ErrorKind::Unsupported`] until its issue lands.
#![warn(missing_docs)]

use quorate_core::{Config, Coordinator, Error, Result};

/// Connect to the backend named by `config`.
///
/// # Errors
///
/// Always [`quorate_core::ErrorKind::Unsupported`] for now.
pub async fn connect(config: &Config) -> Result<Coordinator> {
    Err(Error::unsupported(format!(
        "the {} backend is not implemented yet (`{config}`)",
        "etcd"
    )))
}

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["etcd", "etcds"];
