//! The key layout under a namespace `<ns>` (default `quorate`). Every name
//! is mapped with [`quorate_core::name::encode`] (`enc`), which never
//! produces `:`, so keys of different kinds or names cannot collide.
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `<ns>:session:<sid>` | string, PX ttl | a live session |
//! | `<ns>:held:<sid>` | hash | what the session holds or waits for (key → token) |
//! | `<ns>:lock:<enc>` | string, PX ttl | mutex / writer holder's token (redis-py `Lock` layout), or `quorate:shared` while readers hold |
//! | `<ns>:queue:<enc>` | zset | waiters of the name: exclusive `<token>`, readers `r<token>`; score = arrival |
//! | `<ns>:readers:<enc>` | hash, PX ttl | granted readers `r<token>` → fence |
//! | `<ns>:fence:<enc>` | counter | the name's fencing tokens, mutex, write and read grants (persistent) |
//! | `<ns>:election:<enc>` | string, PX ttl | leader's token |
//! | `<ns>:equeue:<enc>` | zset | candidates waiting |
//! | `<ns>:efence:<enc>` | counter | leadership fencing tokens (persistent) |
//! | `<ns>:leader:<enc>` | hash, PX ttl | leader's token, fence, value |
//! | `<ns>:group:<enc>` | hash | enc(member) → capabilities JSON |
//! | `<ns>:member:<enc>:<enc(member)>` | string, PX ttl | the member's token |
//! | `<ns>:ginc:<enc>` | hash | enc(member) → its incarnation: the version of its join's event |
//! | `<ns>:gver:<enc>` | counter | group event version (persistent) |
//! | `<ns>:data:<enc(key)>` | string | guarded-write values (persistent) |
//!
//! One name, one lock: a mutex is the write side of the name's read/write
//! lock, so mutex, writers and readers share the lock key, the queue and
//! the fence counter.
//!
//! Pub/sub channels: `<ns>:chan:election:<enc>` (leader changes),
//! `<ns>:chan:group:<enc>`, and `<ns>:chan:session:<sid>` (a revoke is
//! announced there, and the session's waiters are told there that they
//! were granted or should try again: a wake-up reaches only the
//! coordinator of the waiter it is for).
//!
//! Tokens are `quorate:<sid>:<n>` (hex session id, per-session counter):
//! scripts derive the owner's session from a token and treat a grant whose
//! session key is gone as void. Only a value with the `quorate:` prefix is
//! read as a quorate token; any other value (a redis-py `Lock`'s token of
//! any shape — uuid hex, `pid:thread`, text, bytes) is foreign: quorate
//! never deletes or takes it over, it lives by its key's TTL alone.

use quorate_core::name::{encode, Space};

/// The Redis key kinds of a key space ([`Space::as_str`] is the kind; the
/// scripts receive it as their `space` argument).
pub(crate) trait SpaceKeys {
    /// The key kind of the space's holders: `lock`, `election`.
    fn kind(self) -> &'static str;
}

impl SpaceKeys for Space {
    fn kind(self) -> &'static str {
        self.as_str()
    }
}

/// The prefix of every owner token quorate writes (`quorate:<sid>:<n>`).
pub(crate) const TOKEN_PREFIX: &str = "quorate:";

/// Kinds whose keys are documented persistent state, not leftovers.
pub(crate) const PERSISTENT_KINDS: &[&str] = &["fence", "efence", "gver", "data"];

/// The key or channel `<ns>:<kind>:<enc(name)>`.
pub(crate) fn key(ns: &str, kind: &str, name: &str) -> String {
    format!("{ns}:{kind}:{}", encode(name))
}

/// The kind of a key of namespace `ns` (`lock`, `queue`, …).
pub(crate) fn kind_of<'a>(ns: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(ns)?.strip_prefix(':')?.split(':').next()
}

/// Whether `s` is a valid session id (lower-case hex, 1..=32 digits).
pub(crate) fn is_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts spell the spaces' key kinds as literals (`keep_alive`
    /// dispatches on them): they must be core's.
    #[test]
    fn the_scripts_name_the_spaces_as_core_does() {
        let lua = include_str!("lua/keep_alive.lua");
        for space in Space::ALL {
            assert!(lua.contains(&format!("'{}'", space.kind())), "{space}");
        }
    }

    #[test]
    fn layout() {
        assert_eq!(key("q", "lock", "jobs/nightly"), "q:lock:jobs%2Fnightly");
        assert_eq!(key("q", "chan:lock", "a:b"), "q:chan:lock:a%3Ab");
        assert_eq!(kind_of("q", "q:fence:x"), Some("fence"));
        assert_eq!(kind_of("q", "qq:fence:x"), None);
        assert!(is_session_id("00ff"));
        assert!(!is_session_id("00FF"));
        assert!(!is_session_id("a:b"));
    }
}
