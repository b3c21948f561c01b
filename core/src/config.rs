//! Connection configuration: parsed from a URL or deserialised with serde
//! from a config file section. Secrets never appear in `Debug`, `Display`,
//! logs or errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::name::percent_decode;

/// Default lease / session time-to-live.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default time allowed to reach a backend before [`crate::ErrorKind::Unavailable`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The accepted range of a duration setting: one validated type for every
/// duration a user can give (`ttl`, `connect_timeout`, the CLI's `--ttl`).
/// Values outside the range, and values too large to represent, are
/// [`crate::ErrorKind::InvalidConfig`] before anything connects, never a
/// panic (an `Instant + ttl` overflow) later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    /// The setting's name, as it appears in messages (`ttl`, `--ttl`).
    pub name: &'static str,
    /// The smallest accepted value (inclusive).
    pub min: Duration,
    /// The largest accepted value (inclusive).
    pub max: Duration,
}

/// One year (365.25 days, `1y` in the duration syntax): the largest TTL or
/// timeout quorate accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// Bounds of a lease / session TTL (`ttl=`, `session_timeout=`): 100 ms to
/// one year.
pub const TTL_BOUNDS: DurationBounds = DurationBounds {
    name: "ttl",
    min: Duration::from_millis(100),
    max: MAX_DURATION,
};

/// Bounds of `connect_timeout=`: 1 ms to one year (zero is refused: it
/// would fail every request).
pub const CONNECT_TIMEOUT_BOUNDS: DurationBounds = DurationBounds {
    name: "connect_timeout",
    min: Duration::from_millis(1),
    max: MAX_DURATION,
};

impl DurationBounds {
    /// The same bounds under another name (e.g. `session_timeout`, `--ttl`).
    pub const fn named(self, name: &'static str) -> DurationBounds {
        DurationBounds { name, ..self }
    }

    /// Check a duration against the bounds.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] naming the setting, the value and
    /// the accepted range.
    pub fn check(&self, value: Duration) -> Result<Duration> {
        if value < self.min || value > self.max {
            return Err(Error::invalid_config(format!(
                "`{}` must be between {} and {}, got {}",
                self.name,
                humantime::format_duration(self.min),
                humantime::format_duration(self.max),
                humantime::format_duration(value)
            )));
        }
        Ok(value)
    }

    /// Parse a human duration (`500ms`, `10s`, `2m`) and check it.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] when the text is not a duration,
    /// does not fit, or is out of bounds.
    pub fn parse(&self, value: &str) -> Result<Duration> {
        let d = parse_duration(self.name, value)?;
        self.check(d).map_err(|_| {
            Error::invalid_config(format!(
                "`{}` must be between {} and {}, got `{value}`",
                self.name,
                humantime::format_duration(self.min),
                humantime::format_duration(self.max),
            ))
        })
    }
}

/// A secret string (a password). Its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where and how to connect: the parsed form of a URL such as
/// `etcd://user:pass@h1:2379,h2:2379/prefix?ttl=10s`.
///
/// Generic fields are interpreted by core; the meaning of `path` and of the
/// remaining `options` is the backend's (documented in `docs/backends.md`).
/// Backends must reject options they do not know with
/// [`Config::reject_unknown_options`], so a typo is an error, not a silent default.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// URL scheme: `etcd`, `etcds`, `zookeeper`, `redis`, `rediss`,
    /// `redis+sentinel`, `file`, `memory`.
    pub scheme: String,
    /// `host:port` endpoints, in the order given (a `memory://` URL's name
    /// is its single "endpoint").
    pub endpoints: Vec<String>,
    /// The path after the endpoints, without the leading `/`, percent-decoded
    /// (namespace, chroot, database number or directory; for `file://` the
    /// absolute directory, with its leading `/`).
    pub path: String,
    /// User name from the URL userinfo.
    pub username: Option<String>,
    /// Password from the URL userinfo.
    pub password: Option<Secret>,
    /// Lease / session TTL (`ttl=` or `session_timeout=`).
    pub ttl: Duration,
    /// Time allowed to reach the backend (`connect_timeout=`).
    pub connect_timeout: Duration,
    /// The remaining query options, percent-decoded.
    pub options: BTreeMap<String, String>,
}

impl Config {
    /// Parse a URL.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] when the URL is malformed; the message
    /// shows the URL with its password redacted.
    pub fn parse(url: &str) -> Result<Config> {
        let bad =
            |why: &str| Error::invalid_config(format!("invalid URL `{}`: {why}", redact_url(url)));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected `scheme://…`"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(bad(
                "the scheme is empty or has characters other than letters, digits, `+`, `-`, `.`",
            ));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') {
            return Err(bad("fragments (`#…`) are not allowed"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((a, b)) => (a, Some(b)),
                    None => (u, None),
                };
                let user = percent_decode(user)
                    .ok_or_else(|| bad("bad percent-encoding in the user name"))?;
                let pass = match pass {
                    Some(p) => {
                        Some(Secret(percent_decode(p).ok_or_else(|| {
                            bad("bad percent-encoding in the password")
                        })?))
                    }
                    None => None,
                };
                ((!user.is_empty()).then_some(user), pass)
            }
        };
        let endpoints: Vec<String> = if hosts.is_empty() {
            Vec::new()
        } else {
            hosts.split(',').map(str::to_owned).collect()
        };
        if endpoints.iter().any(|e| e.is_empty()) {
            return Err(bad("an endpoint in the comma-separated list is empty"));
        }
        let path = percent_decode(path).ok_or_else(|| bad("bad percent-encoding in the path"))?;
        let path = if scheme == "file" {
            path
        } else {
            path.strip_prefix('/').unwrap_or(&path).to_owned()
        };

        let mut config = Config {
            scheme: scheme.to_ascii_lowercase(),
            endpoints,
            path,
            username,
            password,
            ttl: DEFAULT_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            options: BTreeMap::new(),
        };
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k =
                    percent_decode(k).ok_or_else(|| bad("bad percent-encoding in a query key"))?;
                let v = percent_decode(v)
                    .ok_or_else(|| bad("bad percent-encoding in a query value"))?;
                if config.options.insert(k.clone(), v).is_some() {
                    return Err(bad(&format!("option `{k}` is given twice")));
                }
            }
        }
        config.apply_generic_options()?;
        Ok(config)
    }

    /// Move `ttl`/`session_timeout`/`connect_timeout` out of `options`.
    fn apply_generic_options(&mut self) -> Result<()> {
        if self.options.contains_key("ttl") && self.options.contains_key("session_timeout") {
            return Err(Error::invalid_config(
                "give either `ttl` or `session_timeout`, not both",
            ));
        }
        for key in ["ttl", "session_timeout"] {
            if let Some(v) = self.options.remove(key) {
                self.ttl = TTL_BOUNDS.named(key).parse(&v)?;
            }
        }
        if let Some(v) = self.options.remove("connect_timeout") {
            self.connect_timeout = CONNECT_TIMEOUT_BOUNDS.parse(&v)?;
        }
        self.validate()
    }

    /// Check what `parse` checks on a config whose public fields may have
    /// been set by hand: `ttl` and `connect_timeout` within their bounds
    /// ([`TTL_BOUNDS`], [`CONNECT_TIMEOUT_BOUNDS`]) and every endpoint's
    /// port, where given, in 1..=65535. Connecting calls this first.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        TTL_BOUNDS.check(self.ttl)?;
        CONNECT_TIMEOUT_BOUNDS.check(self.connect_timeout)?;
        if !matches!(self.scheme.as_str(), "file" | "memory") {
            for e in &self.endpoints {
                check_endpoint(e)?;
            }
        }
        Ok(())
    }

    /// Set the TTL, with the same check as the URL's `ttl=` (`what` names
    /// the setting in the error, e.g. `--ttl`).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] when out of [`TTL_BOUNDS`].
    pub fn set_ttl(&mut self, what: &'static str, ttl: Duration) -> Result<()> {
        self.ttl = TTL_BOUNDS.named(what).check(ttl)?;
        Ok(())
    }

    /// The URL with the password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        let mut s = format!("{}://", self.scheme);
        if let Some(u) = &self.username {
            s.push_str(u);
            if self.password.is_some() {
                s.push_str(":***");
            }
            s.push('@');
        } else if self.password.is_some() {
            s.push_str(":***@");
        }
        s.push_str(&self.endpoints.join(","));
        if !self.path.is_empty() {
            if !self.path.starts_with('/') {
                s.push('/');
            }
            s.push_str(&self.path);
        }
        let mut sep = '?';
        let mut push = |k: &str, v: String| {
            s.push(sep);
            sep = '&';
            s.push_str(k);
            s.push('=');
            s.push_str(&v);
        };
        if self.ttl != DEFAULT_TTL {
            push("ttl", humantime::format_duration(self.ttl).to_string());
        }
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT {
            push(
                "connect_timeout",
                humantime::format_duration(self.connect_timeout).to_string(),
            );
        }
        for (k, v) in &self.options {
            push(k, v.clone());
        }
        s
    }

    /// A backend-specific option.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }

    /// A backend-specific option holding a duration (`500ms`, `10s`, `2m`).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] when the value is not a duration.
    pub fn duration_option(&self, key: &str) -> Result<Option<Duration>> {
        self.option(key).map(|v| parse_duration(key, v)).transpose()
    }

    /// Fail with a clear message naming the first option not in `known`.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] naming the unknown option and the known ones.
    pub fn reject_unknown_options(&self, known: &[&str]) -> Result<()> {
        if let Some(k) = self.options.keys().find(|k| !known.contains(&k.as_str())) {
            let mut all: Vec<&str> = vec!["ttl", "session_timeout", "connect_timeout"];
            all.extend_from_slice(known);
            return Err(Error::invalid_config(format!(
                "unknown option `{k}` for {}:// (known: {})",
                self.scheme,
                all.join(", ")
            )));
        }
        Ok(())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted())
            .finish()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::str::FromStr for Config {
    type Err = Error;
    fn from_str(s: &str) -> Result<Config> {
        Config::parse(s)
    }
}

/// The serde forms of a config section: a URL string, `{ url = "…" }`, or
/// the parts spelled out.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConfigRepr {
    Url(String),
    WithUrl {
        url: String,
    },
    Parts {
        backend: String,
        #[serde(default)]
        endpoints: Vec<String>,
        #[serde(default, alias = "namespace", alias = "directory")]
        path: String,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<Secret>,
        #[serde(default)]
        ttl: Option<String>,
        #[serde(default)]
        connect_timeout: Option<String>,
        #[serde(default)]
        options: BTreeMap<String, String>,
    },
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match ConfigRepr::deserialize(d)? {
            ConfigRepr::Url(url) | ConfigRepr::WithUrl { url } => {
                Config::parse(&url).map_err(D::Error::custom)
            }
            ConfigRepr::Parts {
                backend,
                endpoints,
                path,
                username,
                password,
                ttl,
                connect_timeout,
                options,
            } => {
                let mut config = Config {
                    scheme: backend.to_ascii_lowercase(),
                    endpoints,
                    path,
                    username,
                    password,
                    ttl: DEFAULT_TTL,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    options,
                };
                if let Some(t) = ttl {
                    config.options.insert("ttl".into(), t);
                }
                if let Some(t) = connect_timeout {
                    config.options.insert("connect_timeout".into(), t);
                }
                config.apply_generic_options().map_err(D::Error::custom)?;
                Ok(config)
            }
        }
    }
}

/// Parse a human duration (`500ms`, `10s`, `2m`, `1h 30m`).
///
/// # Errors
///
/// [`crate::ErrorKind::InvalidConfig`] naming `what`.
pub fn parse_duration(what: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        Error::invalid_config(format!(
            "`{what}` must be a duration like `500ms`, `10s` or `2m`, got `{value}` ({e})"
        ))
    })
}

/// Check a `host[:port]` / `[v6]:port` endpoint: a port, where given, is
/// a number in 1..=65535.
fn check_endpoint(endpoint: &str) -> Result<()> {
    let port = if let Some(rest) = endpoint.strip_prefix('[') {
        match rest.split_once(']') {
            Some((_, "")) => None,
            Some((_, p)) => Some(p.strip_prefix(':').unwrap_or(p)),
            None => {
                return Err(Error::invalid_config(format!(
                    "endpoint `{endpoint}`: `[` without `]`"
                )))
            }
        }
    } else {
        endpoint.rsplit_once(':').map(|(_, p)| p)
    };
    match port {
        None => Ok(()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            _ => Err(Error::invalid_config(format!(
                "endpoint `{endpoint}`: the port must be a number from 1 to 65535, got `{p}`"
            ))),
        },
    }
}

/// Redact the password of a URL that may not even parse.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{hosts}{}", &rest[end..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_endpoint_urls() {
        let c =
            Config::parse("etcd://h1:2379,h2:2379/prefix?ttl=3s&connect_timeout=500ms").unwrap();
        assert_eq!(c.scheme, "etcd");
        assert_eq!(c.endpoints, vec!["h1:2379", "h2:2379"]);
        assert_eq!(c.path, "prefix");
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        assert!(c.options.is_empty());
    }

    #[test]
    fn file_url_keeps_absolute_path() {
        let c = Config::parse("file:///var/lib/quorate").unwrap();
        assert!(c.endpoints.is_empty());
        assert_eq!(c.path, "/var/lib/quorate");
    }

    #[test]
    fn secrets_never_show() {
        let c = Config::parse("redis://alice:s3cr%40t@h:6379/0?ttl=10s").unwrap();
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cr@t");
        let shown = format!("{c:?} {c}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("alice:***@h:6379"), "{shown}");
        let e = Config::parse("redis://alice:hunter2@h:6379/0?ttl=bogus").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = Config::parse("redis://alice:hunter2@h:6379/%zz").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for bad in [
            "",
            "etcd",
            "://x",
            "etcd://h:1?ttl=x",
            "etcd://h:1,,h:2",
            "etcd://h?ttl=1s&ttl=2s",
            "etcd://h?ttl=1ms",
            "etcd://h?ttl=0s",
            "etcd://h?ttl=18446744073709551615s",
            "etcd://h?ttl=99999999999999999999999s",
            "etcd://h?session_timeout=2y",
            "etcd://h?connect_timeout=0s",
            "etcd://h?connect_timeout=18446744073709551615s",
            "memory://x?ttl=18446744073709551615s",
            "file:///tmp/q?connect_timeout=0ms",
            "etcd://127.0.0.1:99999",
            "etcd://127.0.0.1:0",
            "etcd://127.0.0.1:2379,127.0.0.1:65536",
            "redis://h:-1",
            "redis://h:port",
            "zookeeper://h:",
            "etcd://[::1]:70000",
            "etcd://[::1",
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig, "{bad}: {e}");
        }
    }

    #[test]
    fn bounds_are_inclusive_and_named() {
        let c = Config::parse("etcd://h?ttl=100ms&connect_timeout=1ms").unwrap();
        assert_eq!(c.ttl, Duration::from_millis(100));
        assert_eq!(c.connect_timeout, Duration::from_millis(1));
        let c = Config::parse("etcd://h?ttl=1y").unwrap();
        assert_eq!(c.ttl, MAX_DURATION);
        let e = Config::parse("etcd://h?session_timeout=50ms").unwrap_err();
        assert!(
            e.to_string()
                .contains("`session_timeout` must be between 100ms and 1year"),
            "{e}"
        );
        for ok in [
            "etcd://127.0.0.1:1",
            "etcd://127.0.0.1:65535",
            "etcd://h",
            "etcd://[::1]:2379",
            "etcd://[::1]",
            "memory://a:b",
        ] {
            Config::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = Config::parse("etcd://127.0.0.1:99999").unwrap_err();
        assert!(e.to_string().contains("`99999`"), "{e}");
    }

    #[test]
    fn set_ttl_and_validate_apply_the_same_bounds() {
        let mut c = Config::parse("memory://x").unwrap();
        for bad in [
            Duration::ZERO,
            Duration::from_millis(99),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            let e = c.set_ttl("--ttl", bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig);
            assert!(e.to_string().contains("`--ttl`"), "{e}");
        }
        c.set_ttl("--ttl", Duration::from_secs(3)).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(3));
        c.validate().unwrap();
        c.connect_timeout = Duration::ZERO;
        assert_eq!(
            c.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidConfig
        );
        c.connect_timeout = Duration::from_secs(1);
        c.ttl = Duration::MAX;
        assert_eq!(
            c.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidConfig
        );
        let mut c = Config::parse("etcd://h:1").unwrap();
        c.endpoints.push("h:99999".into());
        assert_eq!(
            c.validate().unwrap_err().kind(),
            crate::ErrorKind::InvalidConfig
        );
    }

    #[test]
    fn deserialised_parts_are_validated() {
        for bad in [
            r#"{"backend":"etcd","endpoints":["a:99999"]}"#,
            r#"{"backend":"etcd","ttl":"18446744073709551615s"}"#,
            r#"{"backend":"etcd","connect_timeout":"0s"}"#,
        ] {
            assert!(serde_json::from_str::<Config>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_options_are_rejected() {
        let c = Config::parse("etcd://h:1?tll=3s").unwrap();
        let e = c.reject_unknown_options(&["ca"]).unwrap_err();
        assert!(e.to_string().contains("unknown option `tll`"), "{e}");
    }

    #[test]
    fn deserialises_from_parts_and_url() {
        let c: Config = serde_json::from_str(r#""memory://x?ttl=2s""#).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(2));
        let c: Config = serde_json::from_str(
            r#"{"backend":"etcd","endpoints":["a:1","b:2"],"namespace":"ns","ttl":"4s","password":"pw"}"#,
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.path, "ns");
        assert_eq!(c.ttl, Duration::from_secs(4));
        assert!(!format!("{c:?}").contains("pw"));
        let c: Config = serde_json::from_str(r#"{"url":"file:///tmp/q"}"#).unwrap();
        assert_eq!(c.path, "/tmp/q");
    }
}
