//! The entry point: a connected backend, cheap to clone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tracing::Instrument;

use crate::capabilities::Capabilities;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::inspect::LockState;
use crate::name;
use crate::session::{Session, SessionOptions};
use crate::spi::Backend;
use crate::{GroupEvent, Leader, Member};

/// A connection to one coordination backend. Cheap to clone; clones share
/// the connection.
///
/// Obtain one with `quorate::connect(url)` (the facade picks the backend
/// from the URL scheme) or from a backend crate's `connect`.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<CoordinatorInner>,
}

struct CoordinatorInner {
    backend: Arc<dyn Backend>,
    config: Config,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("url", &self.inner.config.redacted())
            .finish()
    }
}

impl Coordinator {
    /// Wrap a connected backend. Backend crates call this from their
    /// `connect`.
    pub fn new(backend: impl Backend, config: Config) -> Self {
        Coordinator {
            inner: Arc::new(CoordinatorInner {
                backend: Arc::new(backend),
                config,
            }),
        }
    }

    /// The configuration this coordinator was made from.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// What the backend declares it guarantees.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }

    /// The connected backend behind this coordinator, for layers that
    /// decorate one (the conformance suite's deliberately broken
    /// "mutants"); applications never need it.
    #[doc(hidden)]
    pub fn backend_handle(&self) -> Arc<dyn Backend> {
        self.inner.backend.clone()
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Open a session with the configured TTL and automatic keep-alive.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Unavailable`] when the backend does not answer
    /// within `connect_timeout`, or the backend's error.
    pub async fn session(&self) -> Result<Session> {
        Session::open(self.clone(), SessionOptions::default()).await
    }

    /// Open a session with explicit options (TTL, manual keep-alive).
    ///
    /// # Errors
    ///
    /// As [`Coordinator::session`].
    pub async fn session_with(&self, options: SessionOptions) -> Result<Session> {
        Session::open(self.clone(), options).await
    }

    /// Revoke another session by id, as an operator would (`etcdctl lease
    /// revoke`, tooz's `break_`): everything it holds is released, and its
    /// holder's guards report the loss (`lost()` resolves). The id is the
    /// holder's [`Session::id`] (`QUORATE_SESSION` for commands run by
    /// `quorate lock`); `quorate revoke URL SESSION` calls this.
    ///
    /// Per backend: etcd revokes the lease; Redis removes the session and
    /// its entries; ZooKeeper closes a session of this process, and for a
    /// session of another process deletes every node it owns under the
    /// namespace (its guards report the loss; that process's session
    /// object itself learns nothing); memory ends the session.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Unsupported`] where the backend has no such
    /// operation (file://; see [`Capabilities::external_revoke`]);
    /// [`crate::ErrorKind::NotHeld`] when no live session has that id;
    /// [`crate::ErrorKind::InvalidName`] when the id cannot be one of this
    /// backend's; [`crate::ErrorKind::Unavailable`] when the backend does
    /// not answer within `connect_timeout`, or the backend's error.
    pub async fn revoke_session(&self, session_id: &str) -> Result<()> {
        self.bounded(
            "revoke session",
            self.inner.backend.revoke_session(session_id),
        )
        .await
    }

    /// The members of a group, without needing a session.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidName`], or the backend's error.
    pub async fn members(&self, group: &str) -> Result<Vec<Member>> {
        name::validate("group", group)?;
        self.bounded("list members", self.inner.backend.members(group))
            .await
    }

    /// Watch a group without needing a session: a [`GroupEvent::Snapshot`],
    /// then every change, each exactly once (a member's `Left` always after
    /// its `Joined` or its place in the snapshot).
    ///
    /// The stream never ends on its own: a broken watch is re-opened with
    /// back-off and the difference reported as events; a consumer that falls
    /// behind gets the changes coalesced per member (see [`crate::watch`]).
    /// An invalid name or a failure to open the first watch is the stream's
    /// only item.
    pub fn watch_group(&self, group: &str) -> BoxStream<'static, Result<GroupEvent>> {
        let this = self.clone();
        let group = group.to_owned();
        if let Err(e) = name::validate("group", &group) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        crate::watch::group_events(format!("group `{group}`"), move || {
            let this = this.clone();
            let group = group.clone();
            async move {
                this.bounded("watch group", this.inner.backend.watch_group(&group))
                    .await
            }
        })
    }

    /// The current leader of an election, without needing a session.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidName`], or the backend's error.
    pub async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        name::validate("election", election)?;
        self.bounded("get leader", self.inner.backend.leader(election))
            .await
    }

    /// Observe an election without needing a session: the current leader,
    /// then every change, never a lower fence after a higher one. A consumer
    /// that falls behind gets the latest leader; broken observations are
    /// re-opened as for [`Coordinator::watch_group`].
    pub fn observe(&self, election: &str) -> BoxStream<'static, Result<Option<Leader>>> {
        let this = self.clone();
        let election = election.to_owned();
        if let Err(e) = name::validate("election", &election) {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        crate::watch::leader_events(format!("election `{election}`"), move || {
            let this = this.clone();
            let election = election.clone();
            async move {
                this.bounded("observe election", this.inner.backend.observe(&election))
                    .await
            }
        })
    }

    /// Read a value stored by a guarded write.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidName`], or the backend's error.
    pub async fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        name::validate("key", key)?;
        self.bounded("read", self.inner.backend.read(key)).await
    }

    /// Everything left under the namespace that a clean shutdown should
    /// have removed (see [`Backend::leftovers`]). Empty when nothing leaked.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub async fn leftovers(&self) -> Result<Vec<String>> {
        self.bounded("list leftovers", self.inner.backend.leftovers())
            .await
    }

    /// The locks held or waited for now whose name starts with `prefix`
    /// (`""` for all), sorted by name: each with its holders (session,
    /// exclusive or shared, fence and grant time where the backend knows
    /// them) and its waiters in queue order. Elections and groups are not
    /// locks and are not listed. A snapshot for operators (`quorate
    /// locks`): it may be stale by the time it is read; never decide to
    /// act on a lock from it. Bounded by `connect_timeout`.
    ///
    /// What each backend can tell (fence, grant time, waiters) is listed in
    /// `docs/backends.md`.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidName`] for a prefix longer than a name
    /// may be; [`crate::ErrorKind::Unsupported`] for a backend that cannot
    /// list locks; [`crate::ErrorKind::Unavailable`] when the backend does
    /// not answer within `connect_timeout`, or the backend's error.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping the future leaves nothing behind.
    pub async fn locks(&self, prefix: &str) -> Result<Vec<LockState>> {
        if !prefix.is_empty() {
            name::validate("lock name prefix", prefix)?;
        }
        let prefix_owned = prefix.to_owned();
        let locks = self
            .bounded("list locks", self.inner.backend.locks(prefix))
            .await?;
        Ok(crate::inspect::finish_listing(locks, &prefix_owned))
    }

    /// The limit on one request that does not wait for a lock
    /// (`connect_timeout`). Backends bound their requests by it; core's own
    /// bound on a backend request ends a little later (a tenth more, 20 ms
    /// to 1 s), so that a backend sees its own timeout first and can act on
    /// it (etcd moves to another endpoint).
    pub fn request_timeout(&self) -> Duration {
        self.inner.config.connect_timeout
    }

    /// How long core itself waits for one backend request: see
    /// [`backstop`].
    pub(crate) fn backstop(&self) -> Duration {
        backstop(self.request_timeout())
    }

    /// Run one backend request that is not a wait, bounded by
    /// `connect_timeout` (core's [`backstop`] of it), inside a tracing
    /// span.
    pub(crate) async fn bounded<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = tracing::debug_span!("quorate", op = what, backend = %self.inner.config.scheme);
        let limit = self.backstop();
        match tokio::time::timeout(limit, fut).instrument(span).await {
            Ok(r) => r,
            Err(_) => Err(Error::unavailable(format!(
                "{what}: {} did not answer within {limit:?} (connect_timeout {:?} and core's grace)",
                self.inner.config.redacted(),
                self.request_timeout()
            ))),
        }
    }
}

/// Core's own bound on one backend request given `connect_timeout`
/// `limit`: `limit` plus a tenth of it (at least 20 ms, at most 1 s).
///
/// Backends bound their requests by `connect_timeout` themselves and act
/// on one that gets no answer: etcd moves its requests, and the watch
/// streams that follow them, to another endpoint. Core's bound must end
/// *after* theirs: ending at the same instant, it sometimes dropped the
/// request first, and the backend never learned that its endpoint was
/// silent (seen: a waiter left on a cut-off etcd member until its next
/// keep-alive, 10 s later, instead of about a second).
pub(crate) fn backstop(limit: Duration) -> Duration {
    limit.saturating_add((limit / 10).clamp(Duration::from_millis(20), Duration::from_secs(1)))
}
