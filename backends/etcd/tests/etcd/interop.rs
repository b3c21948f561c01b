//! etcdctl interoperability.
