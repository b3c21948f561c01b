//! # quorate
//!
//! Distributed coordination — locks, read/write locks, leases (sessions),
//! group membership and leader election — behind one API, over etcd,
//! ZooKeeper, Redis, local files or memory, chosen by URL. Every grant
//! carries a [`FencingToken`]; every guard tells you when it can no longer
//! be trusted ([`LockGuard::lost`]); waits are pushed by the backend, never
//! polled. What each backend was *measured* to keep under real faults is in
//! [`guide::guarantees`].
//!
//! ## Getting started
//!
//! ```toml
//! [dependencies]
//! quorate = { version = "0.1", default-features = false, features = ["file"] }
//! tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
//! futures = "0.3"    # StreamExt, for watch() and observe()
//! serde_json = "1"   # a member's capabilities (or use quorate::serde_json)
//! ```
//!
//! quorate runs on [tokio](https://docs.rs/tokio): call it from inside a
//! tokio runtime (the library itself needs only tokio's `rt`, `sync`, `time`
//! and `macros`). This example runs with no server (`file://`):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> quorate::Result<()> {
//! let dir = std::env::temp_dir().join(format!("quorate-docs-{}", std::process::id()));
//! let coord = quorate::connect(&format!("file://{}", dir.display())).await?;
//! let session = coord.session().await?; // a lease, kept alive in the background
//!
//! let guard = session.mutex("jobs/nightly").lock().await?;
//! let fence = guard.fence(); // strictly increasing per name
//! tokio::select! {
//!     _ = guard.lost() => { /* stop: the lock can no longer be trusted */ }
//!     _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => { /* the work */ }
//! }
//! assert!(guard.write_if_held("config", b"v2").await?); // applied only while held
//! guard.release().await?;
//! assert!(fence.get() > 0);
//!
//! session.close().await?; // everything the session holds is released
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```
//!
//! ## URL schemes
//!
//! | scheme | backend | example |
//! |---|---|---|
//! | `memory://` | in-process reference (tests) | `memory://demo` |
//! | `file://` | Linux OFD locks on a local directory | `file:///var/lib/quorate` |
//! | `etcd://` | etcd v3 leases and revisions | `etcd://h1:2379,h2:2379/prefix?ttl=10s` |
//! | `zookeeper://` | ephemeral sequential znodes | `zookeeper://h1:2181,h2:2181/chroot?session_timeout=10s` |
//! | `redis://`, `rediss://` | Lua scripts on one primary (or Sentinel) | `redis://user:pass@h:6379/0?ttl=10s` |
//!
//! A [`Config`] can also be deserialised from a config file (a URL string or
//! its parts, [`ConfigParts`]); options and key layouts per backend are in
//! [`guide::backends`]. An unknown or disabled scheme is an error listing
//! the schemes this build knows ([`known_schemes`]).
//!
//! ## Cargo features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `memory` | yes | `memory://` |
//! | `file` | yes | `file://` |
//! | `etcd` | yes | `etcd://` (no TLS stack) |
//! | `etcd-tls` | yes | `etcds://` (rustls) |
//! | `zookeeper` | yes | `zookeeper://` |
//! | `redis` | yes | `redis://` (no TLS stack) |
//! | `redis-tls` | yes | `rediss://` (rustls) |
//! | `metrics` | no | acquire wait, hold time, losses, keep-alive latency through the `metrics` crate facade (names in [`metrics`]) |
//!
//! Pick only what you use: `default-features = false, features = ["etcd"]`.
//!
//! ## Where to go next
//!
//! [`Coordinator`] → [`Session`] → [`Mutex`] / [`RwLock`] / [`Group`] /
//! [`Election`] and their guards. [`guide`] holds the project's documents:
//! what each backend guarantees (measured), backend layouts and options, and
//! the `quorate` command line.
#![warn(missing_docs)]

pub use quorate_core::*;

/// The project's documents, as published beside the code.
pub mod guide {
    /// What each backend declares and what the conformance suite measured,
    /// under which faults (generated from a real run).
    #[doc = include_str!("../docs/guarantees.md")]
    pub mod guarantees {}

    /// Key and file layouts, URL options and interoperability per backend.
    #[doc = include_str!("../docs/backends.md")]
    pub mod backends {}

    /// The `quorate` command: exit codes, guarantees, comparison with
    /// flock(1) and `etcdctl lock`.
    #[doc = include_str!("../docs/cli.md")]
    pub mod cli {}
}

/// The URL schemes this build knows, in a stable order.
pub fn known_schemes() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut schemes: Vec<&'static str> = Vec::new();
    #[cfg(feature = "memory")]
    schemes.extend_from_slice(quorate_memory::SCHEMES);
    #[cfg(feature = "file")]
    schemes.extend_from_slice(quorate_file::SCHEMES);
    #[cfg(feature = "etcd")]
    schemes.extend_from_slice(quorate_etcd::SCHEMES);
    #[cfg(feature = "zookeeper")]
    schemes.extend_from_slice(quorate_zookeeper::SCHEMES);
    #[cfg(feature = "redis")]
    schemes.extend_from_slice(quorate_redis::SCHEMES);
    schemes
}

/// Connect to the backend named by the URL's scheme.
///
/// # Errors
///
/// [`ErrorKind::InvalidConfig`] for a malformed URL;
/// [`ErrorKind::Unsupported`] for a scheme this build does not know (the
/// message lists the known ones); [`ErrorKind::Unavailable`] when the backend
/// cannot be reached within `connect_timeout`.
pub async fn connect(url: &str) -> Result<Coordinator> {
    connect_with(&Config::parse(url)?).await
}

/// Connect with a parsed or deserialised [`Config`].
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_with(config: &Config) -> Result<Coordinator> {
    config.validate()?;
    let limit = config.connect_timeout;
    let span = tracing::debug_span!("connect", url = %config);
    let _enter = span.enter();
    let fut = dispatch(config);
    drop(_enter);
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::unavailable(format!(
            "could not connect to `{config}` within {limit:?} (connect_timeout)"
        ))),
    }
}

async fn dispatch(config: &Config) -> Result<Coordinator> {
    let scheme = config.scheme.as_str();
    #[cfg(feature = "memory")]
    if quorate_memory::SCHEMES.contains(&scheme) {
        return quorate_memory::connect(config).await;
    }
    #[cfg(feature = "file")]
    if quorate_file::SCHEMES.contains(&scheme) {
        return quorate_file::connect(config).await;
    }
    #[cfg(feature = "etcd")]
    if quorate_etcd::SCHEMES.contains(&scheme) {
        return quorate_etcd::connect(config).await;
    }
    #[cfg(feature = "zookeeper")]
    if quorate_zookeeper::SCHEMES.contains(&scheme) {
        return quorate_zookeeper::connect(config).await;
    }
    #[cfg(feature = "redis")]
    if quorate_redis::SCHEMES.contains(&scheme) {
        return quorate_redis::connect(config).await;
    }
    Err(Error::unsupported(format!(
        "unknown or disabled URL scheme `{scheme}://`; this build knows: {}",
        known_schemes()
            .iter()
            .map(|s| format!("{s}://"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
