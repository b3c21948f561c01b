//! A backend under test: a base URL plus a fresh random namespace per case.

use quorate::{Config, Coordinator, Result};

/// A backend under test. Every [`Target::fresh`] gets its own random
/// namespace, so cases never see each other's state and the leak check
/// looks at exactly one case's keys.
#[derive(Debug, Clone)]
pub struct Target {
    base_url: String,
    url: String,
    /// A short label for reports (`memory`, `etcd-3`, …).
    pub label: String,
    /// Extra facts about the deployment the cases may need (e.g. a fault
    /// controller for a server harness).
    pub faults: Option<std::sync::Arc<dyn ServerFaults>>,
}

/// Faults a server harness can inject (kill, pause, restart the server).
pub trait ServerFaults: Send + Sync + std::fmt::Debug {
    /// Stop the server abruptly (SIGKILL).
    fn kill(&self) -> std::io::Result<()>;
    /// Start it again after [`ServerFaults::kill`].
    fn restart(&self) -> std::io::Result<()>;
}

impl Target {
    /// A target for `base_url` (any URL `quorate::connect` accepts). The
    /// namespace is replaced by a fresh one in [`Target::fresh`].
    pub fn new(label: impl Into<String>, base_url: impl Into<String>) -> Self {
        let base_url = base_url.into();
        Target {
            url: base_url.clone(),
            base_url,
            label: label.into(),
            faults: None,
        }
    }

    /// The same backend with a new random namespace.
    pub fn fresh(&self) -> Target {
        let ns = format!("conformance-{:016x}", rand::random::<u64>());
        Target {
            url: with_namespace(&self.base_url, &ns),
            base_url: self.base_url.clone(),
            label: self.label.clone(),
            faults: self.faults.clone(),
        }
    }

    /// The URL with this target's namespace.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with an option set (e.g. a shorter `ttl` for a fault case).
    pub fn url_with(&self, key: &str, value: &str) -> String {
        let base = strip_option(&self.url, key);
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}{key}={value}")
    }

    /// Connect a new, independent coordinator to this target.
    ///
    /// # Errors
    ///
    /// As `quorate::connect`.
    pub async fn connect(&self) -> Result<Coordinator> {
        quorate::connect(&self.url).await
    }

    /// Connect with an option overridden.
    ///
    /// # Errors
    ///
    /// As `quorate::connect`.
    pub async fn connect_with_option(&self, key: &str, value: &str) -> Result<Coordinator> {
        quorate::connect(&self.url_with(key, value)).await
    }

    /// The scheme of the URL.
    pub fn scheme(&self) -> String {
        Config::parse(&self.url)
            .map(|c| c.scheme)
            .unwrap_or_default()
    }
}

fn strip_option(url: &str, key: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Put `ns` into a URL as the backend's namespace: the name of a
/// `memory://` URL, the `namespace` option of Redis, a path segment appended
/// to the others (etcd prefix, ZooKeeper chroot, file directory).
pub fn with_namespace(url: &str, ns: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), Some(q.to_owned())),
        None => (url.to_owned(), None),
    };
    let scheme = base.split("://").next().unwrap_or_default();
    let (base, query) = match scheme {
        "memory" => (format!("memory://{ns}"), query),
        "redis" | "rediss" | "redis+sentinel" => {
            let q = strip_option(&format!("x?{}", query.unwrap_or_default()), "namespace");
            let rest = q.split_once('?').map(|(_, q)| q.to_owned());
            let ns_opt = format!("namespace={ns}");
            (
                base,
                Some(match rest {
                    Some(r) if !r.is_empty() => format!("{r}&{ns_opt}"),
                    _ => ns_opt,
                }),
            )
        }
        // etcd prefix, ZooKeeper chroot, file directory: one more segment.
        _ => (format!("{}/{ns}", base.trim_end_matches('/')), query),
    };
    match query {
        Some(q) if !q.is_empty() => format!("{base}?{q}"),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_per_scheme() {
        assert_eq!(with_namespace("memory://", "n"), "memory://n");
        assert_eq!(
            with_namespace("memory://x?ttl=2s", "n"),
            "memory://n?ttl=2s"
        );
        assert_eq!(with_namespace("etcd://h:1", "n"), "etcd://h:1/n");
        assert_eq!(
            with_namespace("etcd://h:1/base?ttl=2s", "n"),
            "etcd://h:1/base/n?ttl=2s"
        );
        assert_eq!(with_namespace("file:///tmp/q", "n"), "file:///tmp/q/n");
        assert_eq!(
            with_namespace("redis://h:1/0?ttl=2s&namespace=a", "n"),
            "redis://h:1/0?ttl=2s&namespace=n"
        );
        assert_eq!(
            with_namespace("redis://h:1", "n"),
            "redis://h:1?namespace=n"
        );
    }

    #[test]
    fn url_with_overrides() {
        let t = Target::new("m", "memory://x?ttl=2s");
        assert_eq!(t.url_with("ttl", "1s"), "memory://x?ttl=1s");
        let t = Target::new("m", "memory://x");
        assert_eq!(t.url_with("ttl", "1s"), "memory://x?ttl=1s");
    }
}
