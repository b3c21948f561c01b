//! # quorate
//!
//! Distributed coordination — locks, read/write locks, leases (sessions),
//! group membership and leader election — behind one API, over etcd,
//! ZooKeeper, Redis, local files or memory, chosen by URL.
//!
//! ```no_run
//! # async fn demo() -> quorate::Result<()> {
//! let coord = quorate::connect("memory://demo?ttl=10s").await?;
//! let session = coord.session().await?;
//! let guard = session.mutex("jobs/nightly").lock().await?;
//! println!("fence {}", guard.fence());
//! guard.release().await?;
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! Every grant carries a [`FencingToken`]; every guard tells you when it
//! can no longer be trusted ([`LockGuard::lost`]). See `docs/guarantees.md`
//! for what each backend was measured to keep.
#![warn(missing_docs)]

pub use quorate_core::*;

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
