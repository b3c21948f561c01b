//! quorate-core: the traits, types, errors, configuration and shared
//! behaviour of quorate.
//!
//! Users work with [`Coordinator`] → [`Session`] → [`Mutex`] / [`RwLock`] /
//! [`Group`] / [`Election`] and their guards. Backends implement the small
//! object-safe SPI in [`spi`]; everything common to all backends (name
//! validation, timeouts, re-entrancy checks, keep-alive and the client-side
//! lease deadline, loss fan-out, drop-release) lives here, once.
#![warn(missing_docs)]

pub mod backoff;
pub mod capabilities;
pub mod cleanup;
pub mod config;
mod coordinator;
mod election;
pub mod error;
mod fence;
mod grant;
mod group;
pub mod inbox;
pub mod inspect;
pub mod loss;
pub mod metrics;
mod model;
mod mutex;
pub mod name;
pub mod reach;
mod rwlock;
mod session;
pub mod spi;
pub mod watch;

pub use capabilities::{Capabilities, FailureDetection, Primitives, RwOrdering, Scope};
pub use config::{Config, ConfigParts, Secret};
pub use coordinator::Coordinator;
pub use election::{Election, Leadership};
pub use error::{Error, ErrorKind, Result};
pub use fence::FencingToken;
pub use group::{Group, Membership};
pub use inspect::{LockHolder, LockMode, LockState, LockWaiter};
pub use loss::LossReason;
pub use model::{GroupEvent, Leader, LockKind, Member};
pub use mutex::{LockGuard, Mutex};
pub use rwlock::RwLock;
pub use session::{safety_margin, KeepAlive, Session, SessionOptions};
pub use spi::{Acquire, AfterWrite};

/// The JSON crate whose `Value` carries a member's capabilities
/// ([`Member::capabilities`]), re-exported so callers need no dependency
/// of their own with a matching version: `quorate::serde_json::json!({…})`.
pub use serde_json;

/// Re-exports for backend crates.
pub mod backend {
    pub use async_trait::async_trait;
    pub use futures::stream::BoxStream;
}
