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
///
/// # Config files
///
/// `Config` deserialises (serde) from a section of your own config file in
/// three forms: a URL string; `{ url = "…" }`; or the URL's parts spelled
/// out ([`ConfigParts`]: `backend`, `endpoints`, `path` (or `namespace`,
/// `directory`), `username`, `password`, `ttl` (or `session_timeout`),
/// `connect_timeout`, and the backend's own `options`). Durations are
/// strings with units or numbers of seconds ([`duration`], which your own
/// duration fields can use too). Every form is validated as a URL is: an
/// unknown key, a bad port or a value out of bounds is an error naming it.
///
/// ```
/// use std::time::Duration;
///
/// #[derive(serde::Deserialize)]
/// struct Settings {
///     locks: quorate_core::Config,
///     cache: quorate_core::Config,
///     scratch: quorate_core::Config,
/// }
///
/// let settings: Settings = toml::from_str(r#"
///     ## A URL, as on the command line.
///     scratch = "file:///var/lib/myservice/locks"
///
///     ## The same as `url = "redis://10.0.0.5:6379/2?ttl=15s"`.
///     [cache]
///     url = "redis://10.0.0.5:6379/2?ttl=15s"
///
///     ## The parts: etcds://app:***@etcd1:2379,etcd2:2379/myservice?…
///     [locks]
///     backend = "etcds"
///     endpoints = ["etcd1:2379", "etcd2:2379"]
///     namespace = "myservice"
///     username = "app"
///     password = "s3cret"
///     ttl = "15s"
///     connect_timeout = 2.5
///     [locks.options]
///     ca = "/etc/myservice/etcd-ca.pem"
/// "#).unwrap();
///
/// let locks = &settings.locks;
/// assert_eq!(locks.scheme, "etcds");
/// assert_eq!(locks.endpoints, ["etcd1:2379", "etcd2:2379"]);
/// assert_eq!(locks.path, "myservice");
/// assert_eq!(locks.ttl, Duration::from_secs(15));
/// assert_eq!(locks.connect_timeout, Duration::from_millis(2500));
/// assert_eq!(locks.option("ca"), Some("/etc/myservice/etcd-ca.pem"));
/// assert!(!format!("{locks:?} {locks}").contains("s3cret"));
/// assert_eq!(settings.cache.ttl, Duration::from_secs(15));
/// assert_eq!(settings.scratch.path, "/var/lib/myservice/locks");
///
/// // A typo is an error, not a silent default.
/// let e = toml::from_str::<Settings>(r#"
///     scratch = "memory://"
///     cache = "memory://"
///     [locks]
///     backend = "etcd"
///     tll = "15s"
/// "#).err().unwrap();
/// assert!(e.to_string().contains("unknown field `tll`"), "{e}");
/// ```
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

/// The "parts" form of a config section: the URL's pieces spelled out, as
/// a config file would rather hold them. [`Config`] deserialises from this
/// (any map that is not `{ url = "…" }`), from `{ url = "…" }`, or from a
/// bare URL string; see [`Config`]'s `# Config files` for an example.
///
/// Unknown keys are an error naming them (a typo such as `tll` is never a
/// silent default). Every value is checked as the URL's would be
/// ([`Config::validate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigParts {
    /// The backend: a URL scheme (`etcd`, `etcds`, `zookeeper`, `redis`,
    /// `rediss`, `redis+sentinel`, `file`, `memory`). Required.
    pub backend: String,
    /// `host:port` endpoints (none for `file` and `memory`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The URL's path: etcd namespace, ZooKeeper chroot, Redis database
    /// number or sentinel service, `file` directory (absolute), `memory`
    /// name. Also spelled `namespace` or `directory`.
    #[serde(default, alias = "namespace", alias = "directory")]
    pub path: String,
    /// User name, as in the URL's userinfo.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (never shown in `Debug`, `Display`, logs or errors).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Lease / session TTL ([`TTL_BOUNDS`]; default [`DEFAULT_TTL`]), in
    /// the form of [`duration`]: `"10s"`, `"1m 30s"` or a number of seconds.
    /// Also spelled `session_timeout`.
    #[serde(default, alias = "session_timeout", with = "duration::option")]
    pub ttl: Option<Duration>,
    /// Time allowed to reach the backend ([`CONNECT_TIMEOUT_BOUNDS`];
    /// default [`DEFAULT_CONNECT_TIMEOUT`]), as `ttl`.
    #[serde(default, with = "duration::option")]
    pub connect_timeout: Option<Duration>,
    /// The backend's own options, as the URL's query (`ca`, `namespace`,
    /// `eviction`, …: `docs/backends.md`); values are strings.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl TryFrom<ConfigParts> for Config {
    type Error = Error;

    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidConfig`] for a value out of bounds, a bad
    /// port, or `ttl`/`connect_timeout` given both here and in `options`.
    fn try_from(parts: ConfigParts) -> Result<Config> {
        let mut config = Config {
            scheme: parts.backend.to_ascii_lowercase(),
            endpoints: parts.endpoints,
            path: parts.path,
            username: parts.username,
            password: parts.password,
            ttl: DEFAULT_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            options: parts.options,
        };
        if config.scheme.is_empty() {
            return Err(Error::invalid_config("`backend` is empty"));
        }
        let twice = |key: &str, given: bool, in_options: &[&str]| {
            if given && in_options.iter().any(|k| config.options.contains_key(*k)) {
                return Err(Error::invalid_config(format!(
                    "`{key}` is given both as a key and in `options`"
                )));
            }
            Ok(())
        };
        twice("ttl", parts.ttl.is_some(), &["ttl", "session_timeout"])?;
        twice(
            "connect_timeout",
            parts.connect_timeout.is_some(),
            &["connect_timeout"],
        )?;
        // `ttl = "10s"` in `options` keeps working, as in the URL's query.
        config.apply_generic_options()?;
        if let Some(ttl) = parts.ttl {
            config.set_ttl("ttl", ttl)?;
        }
        if let Some(t) = parts.connect_timeout {
            config.connect_timeout = CONNECT_TIMEOUT_BOUNDS.check(t)?;
        }
        config.validate()?;
        Ok(config)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(ConfigVisitor)
    }
}

/// A URL string, `{ url = "…" }`, or [`ConfigParts`].
struct ConfigVisitor;

impl<'de> serde::de::Visitor<'de> for ConfigVisitor {
    type Value = Config;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a backend URL, `{ url = \"…\" }`, or the parts (`backend`, `endpoints`, …)")
    }

    fn visit_str<E: serde::de::Error>(self, url: &str) -> std::result::Result<Config, E> {
        Config::parse(url).map_err(E::custom)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        map: A,
    ) -> std::result::Result<Config, A::Error> {
        use serde::de::Error as _;
        /// The map, read once: either only `url`, or the parts.
        #[derive(Deserialize)]
        struct Section {
            #[serde(default)]
            url: Option<String>,
            #[serde(flatten)]
            rest: BTreeMap<String, serde_json::Value>,
        }
        let section = Section::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        match section.url {
            Some(url) if section.rest.is_empty() => Config::parse(&url).map_err(A::Error::custom),
            Some(_) => Err(A::Error::custom(format!(
                "give either `url` or the parts, not both (also given: {})",
                section.rest.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            None => {
                let rest = serde_json::Value::Object(section.rest.into_iter().collect());
                let parts = ConfigParts::deserialize(rest).map_err(A::Error::custom)?;
                Config::try_from(parts).map_err(A::Error::custom)
            }
        }
    }
}

/// Serde helpers for [`Duration`] fields in the syntax quorate's URLs use,
/// for your own config files too: a string with units (`"500ms"`, `"10s"`,
/// `"1h 30m"`; see [`parse_duration`]) or a number of seconds (`10`,
/// `0.5`). Serialises as a string with units (`"1m 30s"`).
///
/// ```
/// use std::time::Duration;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Service {
///     backend: quorate_core::Config,
///     #[serde(with = "quorate_core::config::duration")]
///     poll: Duration,
///     #[serde(default, with = "quorate_core::config::duration::option")]
///     grace: Option<Duration>,
/// }
///
/// let s: Service = toml::from_str(r#"
///     backend = "memory://demo"
///     poll = "1m 30s"
///     grace = 2.5
/// "#).unwrap();
/// assert_eq!(s.poll, Duration::from_secs(90));
/// assert_eq!(s.grace, Some(Duration::from_millis(2500)));
/// ```
///
/// (`quorate::config::duration` through the facade.) Bounds are the
/// caller's: check them with a [`DurationBounds`].
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Deserialise a [`Duration`] from a string with units or a number of
    /// seconds.
    ///
    /// # Errors
    ///
    /// The deserialiser's error for anything else: a string that is not a
    /// duration, a negative or non-finite number, or one too large for a
    /// [`Duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Serialise a [`Duration`] as a string with units (`"1m 30s"`), which
    /// [`deserialize`] reads back.
    ///
    /// # Errors
    ///
    /// The serialiser's.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// The same for `Option<Duration>` (use with `#[serde(default)]`).
    pub mod option {
        use super::*;

        /// Deserialise an optional [`Duration`] (see [`super::deserialize`]).
        ///
        /// # Errors
        ///
        /// As [`super::deserialize`].
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            d.deserialize_option(OptionVisitor)
        }

        /// Serialise an optional [`Duration`] (see [`super::serialize`]).
        ///
        /// # Errors
        ///
        /// The serialiser's.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
                None => s.serialize_none(),
            }
        }

        struct OptionVisitor;

        impl<'de> serde::de::Visitor<'de> for OptionVisitor {
            type Value = Option<Duration>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration (`\"10s\"`, `\"1h 30m\"` or seconds) or nothing")
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                super::deserialize(d).map(Some)
            }
        }
    }

    struct DurationVisitor;

    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration: a string such as \"500ms\", \"10s\", \"1h 30m\", or a number of seconds")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration("duration", v).map_err(|e| E::custom(e.message()))
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("a duration cannot be negative, got {v}")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| {
                E::custom(format!(
                    "{v} is not a duration in seconds (negative, not finite, or too large)"
                ))
            })
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

    /// The TOML example of `docs/backends.md` / `Config`'s docs, and the
    /// errors of the parts form.
    #[test]
    fn parts_from_toml() {
        #[derive(Deserialize)]
        struct File {
            coordination: Config,
        }
        let f: File = toml::from_str(
            r#"
            [coordination]
            backend = "zookeeper"
            endpoints = ["zk1:2181", "zk2:2181", "zk3:2181"]
            path = "myservice"
            session_timeout = "8s"
            connect_timeout = 3
            options = { namespace = "locks" }
            "#,
        )
        .unwrap();
        let c = f.coordination;
        assert_eq!(c.scheme, "zookeeper");
        assert_eq!(c.endpoints.len(), 3);
        assert_eq!(c.ttl, Duration::from_secs(8));
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.option("namespace"), Some("locks"));
        assert_eq!(
            c.to_string(),
            "zookeeper://zk1:2181,zk2:2181,zk3:2181/myservice?ttl=8s&connect_timeout=3s&namespace=locks"
        );

        let err = |text: &str| {
            toml::from_str::<File>(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"))
                .to_string()
        };
        let bad = [
            (
                "[coordination]\nbackend = \"etcd\"\ntll = \"3s\"",
                "unknown field `tll`",
            ),
            (
                "[coordination]\nendpoints = [\"a:1\"]",
                "missing field `backend`",
            ),
            (
                "[coordination]\nbackend = \"etcd\"\nttl = \"3 parsecs\"",
                "duration",
            ),
            ("[coordination]\nbackend = \"etcd\"\nttl = -3", "negative"),
            (
                "[coordination]\nbackend = \"etcd\"\nttl = \"50ms\"",
                "`ttl` must be between",
            ),
            (
                "[coordination]\nbackend = \"etcd\"\nconnect_timeout = 0",
                "`connect_timeout` must be between",
            ),
            (
                "[coordination]\nbackend = \"etcd\"\nendpoints = [\"a:0\"]",
                "port",
            ),
            (
                "[coordination]\nurl = \"etcd://a:1\"\nttl = \"3s\"",
                "either `url` or the parts",
            ),
            (
                "[coordination]\nbackend = \"etcd\"\nttl = \"3s\"\noptions = { ttl = \"4s\" }",
                "both",
            ),
            ("[coordination]\nbackend = \"\"", "`backend` is empty"),
            ("coordination = \"etcd://a:99999\"", "port"),
        ];
        for (text, needle) in bad {
            let e = err(text);
            assert!(e.contains(needle), "{text}: `{e}` lacks `{needle}`");
        }
        // A password in a refused section never shows.
        let e = err("[coordination]\nbackend = \"etcd\"\npassword = \"hunter2\"\nttl = \"1ms\"");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn duration_helper_round_trips() {
        #[derive(Deserialize, serde::Serialize, PartialEq, Debug)]
        struct S {
            #[serde(with = "duration")]
            d: Duration,
            #[serde(default, with = "duration::option")]
            o: Option<Duration>,
        }
        let s = S {
            d: Duration::from_millis(90_500),
            o: Some(Duration::from_secs(3)),
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(text, r#"{"d":"1m 30s 500ms","o":"3s"}"#);
        assert_eq!(serde_json::from_str::<S>(&text).unwrap(), s);
        let s: S = serde_json::from_str(r#"{"d":0.25}"#).unwrap();
        assert_eq!(s.d, Duration::from_millis(250));
        assert_eq!(s.o, None);
        let s: S = serde_json::from_str(r#"{"d":7,"o":null}"#).unwrap();
        assert_eq!((s.d, s.o), (Duration::from_secs(7), None));
        for bad in [
            r#"{"d":-1}"#,
            r#"{"d":"soon"}"#,
            r#"{"d":true}"#,
            r#"{"d":1e300}"#,
        ] {
            assert!(serde_json::from_str::<S>(bad).is_err(), "{bad}");
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
