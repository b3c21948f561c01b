//! The key layout under the namespace, compatible with etcd's Go
//! `concurrency` package (and so with `etcdctl lock` / `etcdctl elect`):
//!
//! | what | key | value |
//! | --- | --- | --- |
//! | session marker | `<ns>/session/<lease hex>` | empty, under the lease |
//! | mutex / write queue entry | `<ns>/lock/<enc(name)>/<lease hex>` | empty, under the lease |
//! | read queue entry | `<ns>/lock/<enc(name)>/read/<lease hex>` | empty, under the lease |
//! | election candidate | `<ns>/election/<enc(name)>/<lease hex>` | campaign value, under the lease |
//! | group member | `<ns>/group/<enc(group)>/<enc(member)>` | capabilities (JSON), under the lease |
//! | guarded-write value | `<ns>/data/<enc(key)>` | the value (persistent) |
//!
//! Names go through [`quorate_core::name::encode`], so no name can escape
//! its prefix or share a prefix with another name. The lease id is
//! written in lower-case hexadecimal without padding, exactly as Go's
//! `fmt.Sprintf("%x", lease)`.
//!
//! # Namespaces never nest
//!
//! The namespace is written into keys as it is, because `etcdctl lock
//! <ns>/lock/<enc(name)>` must name the same queue (and because changing the
//! layout of an existing namespace would let an old and a new quorate hold
//! the same lock at once). So namespaces are made prefix-free by refusing
//! the ones that could reach into another's key space instead: no segment
//! of a namespace but the first may be one of [`SUBSPACES`]
//! ([`check_namespace`]). Then for two namespaces `A` and `B`, no key of
//! `B` lies under any `A/<subspace>/`: if `B` extends `A` (`B = A/s/...`),
//! its keys continue `A/s/` with `s` not a subspace; if `A` extends `B`,
//! `A` is refused the same way; if neither extends the other, their keys
//! part before the first `/` after the shorter one. What a namespace
//! lists (`leftovers`) is read per subspace, never as `<ns>/`, so the keys
//! of a longer namespace `A/s/...` are never counted as `A`'s.

use quorate_core::name::{encode, Space};

/// The segments that follow the namespace in keys: `session`, `lock`,
/// `election`, `group`, `data` (see the table above).
pub(crate) const SUBSPACES: [&str; 5] = [
    SESSION,
    Space::Mutex.as_str(),
    Space::Election.as_str(),
    GROUP,
    DATA,
];

const SESSION: &str = "session";
const GROUP: &str = "group";
const DATA: &str = "data";

/// Why `ns` cannot be a namespace, if it cannot: it is empty, has an empty
/// segment, or a segment after the first is one of [`SUBSPACES`] (it would
/// nest in the key space of a shorter namespace, see the module
/// documentation).
pub(crate) fn check_namespace(ns: &str) -> std::result::Result<(), String> {
    if ns.is_empty() || ns.split('/').any(str::is_empty) {
        return Err(format!("the namespace `{ns}` has an empty path segment"));
    }
    let segments: Vec<&str> = ns.split('/').collect();
    if let Some((i, reserved)) = segments
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, s)| SUBSPACES.contains(s))
    {
        let outer = segments[..i].join("/");
        return Err(format!(
            "the namespace `{ns}` would nest inside namespace `{outer}`: its keys would lie \
             under `{outer}/{reserved}/` and interfere with that namespace's \
             {what}. No segment of a namespace but the first may be one of {SUBSPACES:?}",
            what = match *reserved {
                SESSION => "sessions",
                GROUP => "groups",
                DATA => "guarded writes",
                s if s == Space::Election.as_str() => "elections",
                _ => "locks",
            }
        ));
    }
    Ok(())
}

/// The keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    ns: String,
}

impl Layout {
    pub(crate) fn new(ns: &str) -> Self {
        Layout { ns: ns.to_owned() }
    }

    /// The namespace itself, for messages.
    pub(crate) fn namespace(&self) -> &str {
        &self.ns
    }

    /// The prefix of the namespace, `<ns>/`. Keys of longer namespaces
    /// (`<ns>/x/...`) lie under it too: list a subspace, never this.
    pub(crate) fn root(&self) -> String {
        format!("{}/", self.ns)
    }

    /// The prefix of one of [`SUBSPACES`]: `<ns>/<subspace>/`.
    pub(crate) fn subspace(&self, subspace: &str) -> String {
        format!("{}/{subspace}/", self.ns)
    }

    /// Guarded-write values: `<ns>/data/`.
    pub(crate) fn data_root(&self) -> String {
        self.subspace(DATA)
    }

    pub(crate) fn session(&self, lease: i64) -> String {
        format!("{}{}", self.subspace(SESSION), lease_hex(lease))
    }

    /// The queue prefix of a mutex, as `etcdctl lock <ns>/lock/<enc(name)>`
    /// builds it (the Go `concurrency.NewMutex` adds the trailing `/`).
    pub(crate) fn mutex(&self, name: &str) -> String {
        format!("{}/{}/{}/", self.ns, Space::Mutex, encode(name))
    }

    /// The candidate prefix of an election, as `etcdctl elect
    /// <ns>/election/<enc(name)>` builds it.
    pub(crate) fn election(&self, name: &str) -> String {
        format!("{}/{}/{}/", self.ns, Space::Election, encode(name))
    }

    /// The member prefix of a group.
    pub(crate) fn group(&self, group: &str) -> String {
        format!("{}{}/", self.subspace(GROUP), encode(group))
    }

    pub(crate) fn member(&self, group: &str, member: &str) -> String {
        format!("{}{}", self.group(group), encode(member))
    }

    pub(crate) fn data(&self, key: &str) -> String {
        format!("{}{}", self.data_root(), encode(key))
    }
}

/// The end of the key range of every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `\0` (to the end of the key space)
/// when every byte is 0xff.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A lease id as Go's `%x` writes it.
pub(crate) fn lease_hex(lease: i64) -> String {
    format!("{lease:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_go_recipes() {
        let l = Layout::new("quorate");
        assert_eq!(l.mutex("jobs/nightly"), "quorate/lock/jobs%2Fnightly/");
        assert_eq!(l.election("leader"), "quorate/election/leader/");
        assert_eq!(l.member("g", "a/b"), "quorate/group/g/a%2Fb");
        assert_eq!(l.data(".."), "quorate/data/%2E%2E");
        assert_eq!(lease_hex(0x694d_7a0b_1c2d_3e4f), "694d7a0b1c2d3e4f");
        assert_eq!(lease_hex(0xab), "ab");
        assert_eq!(prefix_end(b"p/read/"), b"p/read0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn prefixes_of_different_names_never_nest() {
        let l = Layout::new("ns");
        let a = l.mutex("a");
        let ab = l.mutex("a/b");
        assert!(!ab.starts_with(&a) && !a.starts_with(&ab));
        assert!(!l.group("x").starts_with(&l.data_root()));
    }

    #[test]
    fn namespaces_that_could_nest_are_refused() {
        for ns in [
            "nsq/lock/foo",
            "nsq/election/e",
            "nsq/group/g",
            "nsq/session",
            "nsq/data",
            "a/b/lock",
            "a/b/election/c/d",
        ] {
            let e = check_namespace(ns).unwrap_err();
            assert!(e.contains("would nest inside namespace"), "{ns}: {e}");
        }
        assert!(check_namespace("nsq/lock/foo")
            .unwrap_err()
            .contains("under `nsq/lock/`"));
        for ns in ["", "a//b", "a/", "/a"] {
            assert!(check_namespace(ns)
                .unwrap_err()
                .contains("empty path segment"));
        }
        for ns in [
            "quorate",
            "lock",
            "app/locks",
            "a/b/c",
            "data2/x",
            "a/locks/b",
        ] {
            check_namespace(ns).unwrap_or_else(|e| panic!("{ns}: {e}"));
        }
    }

    /// Every key of an accepted namespace, against every prefix another
    /// accepted namespace lists or queues under: none lies inside another
    /// namespace's subspace.
    #[test]
    fn accepted_namespaces_are_prefix_free() {
        let candidates = [
            "a",
            "a/b",
            "a/b/c",
            "ab",
            "a/bc",
            "lock",
            "lock/a",
            "a/lockx",
            "x/session2",
            "a/lock",
            "a/lock/b",
            "a/group/g",
            "a/b/data",
            "a/session",
            "a/election/e",
        ];
        let accepted: Vec<&str> = candidates
            .into_iter()
            .filter(|ns| check_namespace(ns).is_ok())
            .collect();
        assert!(accepted.len() >= 9, "{accepted:?}");
        let keys = |l: &Layout| {
            vec![
                l.session(0xab),
                format!("{}ab", l.mutex("n")),
                format!("{}read/ab", l.mutex("n")),
                format!("{}ab", l.election("n")),
                l.member("n", "m"),
                l.data("n"),
            ]
        };
        for a in &accepted {
            let la = Layout::new(a);
            for b in accepted.iter().filter(|b| *b != a) {
                for key in keys(&Layout::new(b)) {
                    for sub in SUBSPACES {
                        assert!(
                            !key.starts_with(&la.subspace(sub)),
                            "`{key}` of namespace `{b}` lies under `{}` of namespace `{a}`",
                            la.subspace(sub)
                        );
                    }
                }
            }
        }
    }
}
