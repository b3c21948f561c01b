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

use quorate_core::name::{encode, Space};

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

    /// Everything quorate stores: `<ns>/`.
    pub(crate) fn root(&self) -> String {
        format!("{}/", self.ns)
    }

    /// Guarded-write values: `<ns>/data/`.
    pub(crate) fn data_root(&self) -> String {
        format!("{}/data/", self.ns)
    }

    pub(crate) fn session(&self, lease: i64) -> String {
        format!("{}/session/{}", self.ns, lease_hex(lease))
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
        format!("{}/group/{}/", self.ns, encode(group))
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
}
