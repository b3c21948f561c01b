//! The user-facing data that the API and the backend SPI share: the kind
//! of a lock, and what listings and watches report (group members and
//! their events, the leader of an election). Users meet these through
//! [`crate::LockGuard::kind`], [`crate::Group`] and [`crate::Election`];
//! backends build them. This module depends on nothing but the fencing
//! token, so both sides import it one way.

use serde::Serialize;

use crate::fence::FencingToken;

/// Which lock a [`crate::spi::SessionBackend::lock`] call asks for.
///
/// One name, one lock: `Mutex` and `Write` are the same exclusive side of the
/// name's lock (a backend may treat them alike), `Read` its shared side; all
/// three wait in one queue and share one fence counter per name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    /// The exclusive lock of a `Mutex`.
    Mutex,
    /// The shared mode of a `RwLock`.
    Read,
    /// The exclusive mode of a `RwLock`.
    Write,
}

impl LockKind {
    /// Whether this mode excludes every other holder.
    pub fn is_exclusive(self) -> bool {
        !matches!(self, LockKind::Read)
    }
}

/// A member of a group, as listed or reported by events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The member id given to `join`.
    pub id: String,
    /// The capabilities (any JSON) given to `join` or `update`.
    pub capabilities: serde_json::Value,
}

/// A change in a group, as reported by `Group::watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum GroupEvent {
    /// Always the first event: every member at one consistent moment; later
    /// events are exactly the changes after it (no gap, no duplicate).
    Snapshot {
        /// The members, sorted by id.
        members: Vec<Member>,
    },
    /// A member joined.
    Joined {
        /// The new member.
        member: Member,
    },
    /// A member changed its capabilities.
    Updated {
        /// The member with its new capabilities.
        member: Member,
    },
    /// A member left or its session ended.
    Left {
        /// The id of the member that left.
        id: String,
    },
}

/// The current leader of an election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// The value the leader campaigned with or last proclaimed.
    pub value: Vec<u8>,
    /// The leadership's fencing token.
    pub fence: FencingToken,
}
