//! Fencing tokens.

use serde::Serialize;

use crate::error::{Error, Result};

/// A number that strictly increases across successive grants of the same
/// name (lock, rwlock, election).
///
/// Pass it to the resource you protect and have the resource reject any
/// request carrying a token lower than the highest it has seen: that keeps
/// a paused, expired holder from doing damage even though it still believes
/// it holds the lock. Tokens of different names are unrelated.
///
/// A token is at least 1. Backends make one from their own number through
/// the one checked conversion, [`FencingToken::new`] (unsigned counters) or
/// `FencingToken::try_from(i64)` (etcd revisions, ZooKeeper zxids, Redis
/// integers), which refuse a number out of that range instead of mapping it
/// to some other token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// The lowest token: the first grant of a name.
    pub const FIRST: FencingToken = FencingToken(1);

    /// The token `n`.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Backend`] when `n` is 0 (tokens start at 1).
    pub fn new(n: u64) -> Result<FencingToken> {
        if n == 0 {
            return Err(Error::backend(
                "the backend produced fencing token 0 (tokens start at 1)",
            ));
        }
        Ok(FencingToken(n))
    }

    /// The number itself.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The checked conversion from a backend's signed number (etcd create
/// revision, ZooKeeper czxid, Redis `INCR`).
impl TryFrom<i64> for FencingToken {
    type Error = Error;

    /// # Errors
    ///
    /// [`crate::ErrorKind::Backend`] when `n` is not positive.
    fn try_from(n: i64) -> Result<FencingToken> {
        match u64::try_from(n) {
            Ok(n) => FencingToken::new(n),
            Err(_) => Err(Error::backend(format!(
                "the backend produced a negative fencing token ({n})"
            ))),
        }
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_numbers_are_tokens() {
        assert_eq!(FencingToken::new(7).unwrap().get(), 7);
        assert!(FencingToken::new(0).is_err());
        assert_eq!(FencingToken::try_from(42_i64).unwrap().get(), 42);
        assert_eq!(
            FencingToken::try_from(i64::MAX).unwrap().get(),
            9_223_372_036_854_775_807
        );
        assert!(FencingToken::try_from(0_i64).is_err());
        assert!(FencingToken::try_from(-1_i64).is_err());
        assert!(FencingToken::FIRST < FencingToken::new(2).unwrap());
    }
}
