//! Fencing tokens.

use serde::Serialize;

/// A number that strictly increases across successive grants of the same
/// name (lock, rwlock, election).
///
/// Pass it to the resource you protect and have the resource reject any
/// request carrying a token lower than the highest it has seen: that keeps
/// a paused, expired holder from doing damage even though it still believes
/// it holds the lock. Tokens of different names are unrelated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// A token of value `n`.
    pub const fn new(n: u64) -> Self {
        FencingToken(n)
    }

    /// The number itself.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
