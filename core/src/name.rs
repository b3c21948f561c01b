//! Names of locks, groups, members, elections and keys, and their safe
//! encoding into backend keys and paths.

use crate::error::{Error, Result};

/// The key space a name lives in: the same name in two spaces is two
/// different things (a lock and an election of one name are different; a
/// mutex and a read/write lock of one name are one lock, in [`Space::Mutex`]). Every backend derives its key, path or node prefix for a space
/// from [`Space::as_str`], and the Redis scripts receive it as an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Mutexes and read/write locks (one lock per name): `lock`.
    Mutex,
    /// Elections: `election`.
    Election,
}

impl Space {
    /// Every space.
    pub const ALL: [Space; 2] = [Space::Mutex, Space::Election];

    /// The space's segment in keys and paths: `lock`, `election`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Space::Mutex => "lock",
            Space::Election => "election",
        }
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest accepted name, in bytes of UTF-8.
///
/// Longer names are refused with [`crate::ErrorKind::InvalidName`]. 1024
/// bytes is far beyond any sensible lock name and keeps every backend's key
/// or path within its limits (the file backend hashes long encodings to stay
/// under `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 1024;

/// Check that `name` is acceptable: non-empty and at most [`MAX_NAME_LEN`]
/// bytes. Every other UTF-8 string (`..`, `/`, NUL, any Unicode) is accepted
/// and made safe by [`encode`].
///
/// # Errors
///
/// [`crate::ErrorKind::InvalidName`] for an empty or too long name.
pub fn validate(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_name(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid_name(format!(
            "{what} name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

/// Encode a name into one path segment / key component that cannot escape
/// its parent or collide with another name.
///
/// Bytes `[A-Za-z0-9._-]` are kept; every other byte of the UTF-8 form is
/// written `%XX` (upper-case hex), so `/` becomes `%2F` and `%` itself
/// `%25`. The encoding is injective. A result of `.` or `..` would still be
/// special in a path, so those names have every dot escaped (`%2E`, `%2E%2E`).
pub fn encode(name: &str) -> String {
    if name == "." || name == ".." {
        return "%2E".repeat(name.len());
    }
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(
                char::from_digit(u32::from(b >> 4), 16)
                    .unwrap()
                    .to_ascii_uppercase(),
            );
            out.push(
                char::from_digit(u32::from(b & 0xF), 16)
                    .unwrap()
                    .to_ascii_uppercase(),
            );
        }
    }
    out
}

/// Invert [`encode`]. Returns `None` for a string that [`encode`] cannot
/// have produced.
pub fn decode(encoded: &str) -> Option<String> {
    let s = percent_decode(encoded)?;
    (encode(&s) == encoded).then_some(s)
}

/// Decode `%XX` escapes into UTF-8; `None` for a bad escape or bad UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_encoded_safely() {
        assert_eq!(encode("jobs/nightly"), "jobs%2Fnightly");
        assert_eq!(encode(".."), "%2E%2E");
        assert_eq!(encode("."), "%2E");
        assert_eq!(encode("a.b"), "a.b");
        assert_eq!(encode("a\0b"), "a%00b");
        assert_eq!(encode("%2F"), "%252F");
        assert_eq!(encode("é"), "%C3%A9");
        for n in ["..", ".", "/", "a/../b", "\0", "%", "é", "..."] {
            let e = encode(n);
            assert!(!e.contains('/') && !e.contains('\0') && e != "." && e != "..");
            assert_eq!(decode(&e).as_deref(), Some(n));
        }
    }

    #[test]
    fn encoding_is_injective_on_tricky_pairs() {
        assert_ne!(encode("a/b"), encode("a%2Fb"));
        assert_ne!(encode(".."), encode("%2E%2E"));
    }

    #[test]
    fn validation_limits() {
        assert!(validate("lock", "").is_err());
        assert!(validate("lock", &"x".repeat(MAX_NAME_LEN)).is_ok());
        assert!(validate("lock", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(decode("%zz").is_none());
        assert!(decode("a%2").is_none());
    }
}
