//! The one error type of quorate, with a kind callers can match on.

use std::fmt;

/// What went wrong, in terms a caller can act on.
///
/// Match on this (not on message text) to decide what to do; new kinds may be
/// added, so keep a wildcard arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The operation did not finish within the time the caller allowed
    /// (`lock_timeout`, `connect_timeout`, …). Retryable.
    Timeout,
    /// The backend could not be reached or stopped answering. Retryable.
    Unavailable,
    /// The session (lease) or the lock was lost: it can no longer be trusted.
    Lost,
    /// This session already holds (or is already acquiring) that lock, or the
    /// member id / candidacy is already taken. quorate never re-enters.
    AlreadyHeld,
    /// The operation needs a lock (or leadership, or membership) that is not
    /// held (any more).
    NotHeld,
    /// A name (lock, group, member, election, key) is not acceptable.
    InvalidName,
    /// A URL or configuration value is not acceptable.
    InvalidConfig,
    /// The backend refused the credentials (wrong user/password/certificate).
    Unauthenticated,
    /// This backend (or this build) does not support the operation or scheme.
    Unsupported,
    /// The session was closed by its owner.
    Closed,
    /// Any other failure reported by the backend.
    Backend,
}

impl ErrorKind {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Timeout | ErrorKind::Unavailable)
    }

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Lost => "lost",
            ErrorKind::AlreadyHeld => "already held",
            ErrorKind::NotHeld => "not held",
            ErrorKind::InvalidName => "invalid name",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Closed => "closed",
            ErrorKind::Backend => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every quorate operation.
///
/// Messages never contain secrets: URLs are shown redacted (see
/// [`crate::Config`]).
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind, for matching.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Shorthand for [`ErrorKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
    /// Shorthand for [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// Shorthand for [`ErrorKind::Lost`].
    pub fn lost(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Lost, message)
    }
    /// Shorthand for [`ErrorKind::AlreadyHeld`].
    pub fn already_held(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyHeld, message)
    }
    /// Shorthand for [`ErrorKind::NotHeld`].
    pub fn not_held(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotHeld, message)
    }
    /// Shorthand for [`ErrorKind::InvalidName`].
    pub fn invalid_name(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidName, message)
    }
    /// Shorthand for [`ErrorKind::InvalidConfig`].
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig, message)
    }
    /// Shorthand for [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// Shorthand for [`ErrorKind::Backend`].
    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Backend, message)
    }
}

/// quorate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(Error::timeout("x").is_retryable());
        assert!(Error::unavailable("x").is_retryable());
        assert!(!Error::lost("x").is_retryable());
        assert!(!Error::invalid_name("x").is_retryable());
    }

    #[test]
    fn display_has_kind_and_message() {
        let e = Error::not_held("lock `a` was released");
        assert_eq!(e.to_string(), "not held: lock `a` was released");
        assert_eq!(e.kind(), ErrorKind::NotHeld);
    }
}
