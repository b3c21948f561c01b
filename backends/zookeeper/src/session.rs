//! Sessions: one ZooKeeper session per quorate session.
//!
//! A monitor task follows the client's session state: expiry, closing or
//! an authentication failure fires the session's loss. When the loss comes
//! from quorate-core instead (no keep-alive succeeded within the TTL minus
//! the safety margin), the ZooKeeper session is still alive (the client
//! library pings on its own), so the monitor closes it when the lease would
//! have ended, one TTL after the last successful keep-alive was sent: the
//! holder hears of the loss first, and the locks become free at the lease
//! end, as with any lease. An explicit close or revoke closes at once.
//!
//! **Only what the leader confirmed counts.** A follower answers reads
//! (and the client library's pings) from its own state, even when it is cut
//! off from the leader, and the leader — which alone expires sessions —
//! hears of a client's activity only through the follower's next ping reply
//! (it does not touch a session when it serves a follower's forwarded
//! request). So a keep-alive is a `sync`, which the follower forwards to
//! the leader and completes only once the leader answered: a cut-off
//! follower cannot confirm it. And because the leader learns of keep-alive
//! *k* only on a later ping reply, the confirmation of keep-alive *k*
//! vouches for keep-alive *k − 1* (whose touch travelled on an earlier ping
//! reply, ahead of sync *k* on the same follower→leader stream). The lease
//! core counts is therefore three quarters of the negotiated session
//! timeout ([`client_lease`]): core refreshes every quarter of the timeout,
//! and its deadline, counted from the send time of keep-alive *k*, falls
//! before the leader's expiry, counted from the arrival of keep-alive
//! *k − 1*'s touch at the latest (see `docs/backends.md`).
//!
//! Every task and in-flight operation takes a short-lived clone of the
//! client through [`SessionShared::client`]; once the session is closed
//! that fails with `Lost`, and the library sends `closeSession` when the
//! last clone is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use quorate_core::inbox::hand_over;
use quorate_core::loss::LossNotifier;
use quorate_core::{Error, Result};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::time::Instant;
use zookeeper_client as zk;
use zookeeper_client::{Client, SessionState, StateWatcher};

use crate::node::{owned_nodes, zk_error, Layout, Server};

/// What a session's primitives share.
pub(crate) struct SessionShared {
    client: StdMutex<Option<Client>>,
    /// The ZooKeeper session id.
    pub(crate) id: i64,
    /// Where nodes live.
    pub(crate) layout: Layout,
    /// Follows the client's session state (does not keep it alive).
    states: StateWatcher,
    /// When the last successful keep-alive was sent (or the session opened).
    renewed: StdMutex<Instant>,
    /// Hands nodes to watch to the session's watch task ([`watch_nodes`]).
    node_watches: mpsc::Sender<Arm>,
}

impl SessionShared {
    /// A clone of the session's client, for one operation.
    ///
    /// # Errors
    ///
    /// `Lost` once the session was closed or lost.
    pub(crate) fn client(&self) -> Result<Client> {
        self.client
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| Error::lost(format!("ZooKeeper session {:#x} is closed", self.id)))
    }

    /// The session id as quorate shows it.
    pub(crate) fn id_string(&self) -> String {
        format!("{:#x}", self.id)
    }

    /// Drop the session's client: the library closes the ZooKeeper session
    /// once in-flight operations release their clones.
    fn close(&self) {
        self.client.lock().unwrap().take();
    }

    /// Wait until the client library reports a terminal state.
    async fn terminated(&self) -> SessionState {
        let mut states = self.states.clone();
        let mut state = states.peek_state();
        while !state.is_terminated() {
            state = states.changed().await;
        }
        state
    }
}

/// A live session of this process, for `revoke_session` and `leftovers`.
struct Registered {
    shared: Weak<SessionShared>,
    scope: String,
}

/// The sessions this process opened and has not seen end, by id.
fn registry() -> &'static StdMutex<HashMap<i64, Registered>> {
    static REGISTRY: OnceLock<StdMutex<HashMap<i64, Registered>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The key under which a session is listed: the ensemble and namespace.
fn scope_key(server: &Server, layout: &Layout) -> String {
    format!("{} {}", server.shown, layout.base())
}

/// One quorate session.
pub(crate) struct ZkSession {
    pub(crate) shared: Arc<SessionShared>,
    pub(crate) ttl: Duration,
    loss: LossNotifier,
}

impl ZkSession {
    pub(crate) async fn open(
        server: &Server,
        layout: Layout,
        ttl: Duration,
        loss: LossNotifier,
    ) -> Result<ZkSession> {
        let opened = Instant::now();
        let client = server.connect(ttl).await?;
        let id = client.session_id().0;
        let negotiated = client.session_timeout();
        let states = client.state_watcher();
        registry().lock().unwrap().insert(
            id,
            Registered {
                shared: Weak::new(),
                scope: scope_key(server, &layout),
            },
        );
        let (node_watches, arms) = mpsc::channel(WATCH_INBOX);
        let shared = Arc::new(SessionShared {
            client: StdMutex::new(Some(client)),
            id,
            layout,
            states: states.clone(),
            renewed: StdMutex::new(opened),
            node_watches,
        });
        if let Some(r) = registry().lock().unwrap().get_mut(&id) {
            r.shared = Arc::downgrade(&shared);
        }
        tokio::spawn(monitor(shared.clone(), states, loss.clone(), negotiated));
        tokio::spawn(watch_nodes(Arc::downgrade(&shared), arms));
        tracing::debug!(session = %shared.id_string(), ?negotiated, "ZooKeeper session opened");
        Ok(ZkSession {
            shared,
            ttl: client_lease(negotiated),
            loss,
        })
    }
}

impl ZkSession {
    /// One `sync`: the follower forwards it to the leader and answers only
    /// once the leader did, so only a leader-confirmed keep-alive succeeds
    /// (a plain read would be answered by a follower cut off from the
    /// leader). One request per call.
    pub(crate) async fn keep_alive(&self) -> Result<()> {
        let client = self.shared.client()?;
        let base = self.shared.layout.base();
        let sent = Instant::now();
        match client.sync(base).await {
            Ok(()) => {
                let mut renewed = self.shared.renewed.lock().unwrap();
                *renewed = (*renewed).max(sent);
                Ok(())
            }
            Err(e) => Err(zk_error("keep-alive (sync)", base, e)),
        }
    }

    /// Close the session and wait until the server confirms it.
    pub(crate) async fn revoke(&self) -> Result<()> {
        self.shared.close();
        let state = self.shared.terminated().await;
        registry().lock().unwrap().remove(&self.shared.id);
        match state {
            SessionState::Closed | SessionState::Expired => Ok(()),
            s => Err(Error::backend(format!(
                "closing ZooKeeper session {} ended in state {s}",
                self.shared.id_string()
            ))),
        }
    }
}

/// The lease the client counts on for a negotiated session timeout: three
/// quarters of it. Core refreshes every third of this (a quarter of the
/// timeout), and a keep-alive confirmed by the leader vouches only for the
/// previous one (see the module documentation), sent at most that much
/// earlier: the client's deadline (this lease minus core's margin, from the
/// last confirmed keep-alive's send time) falls before the leader can
/// expire the session.
pub(crate) fn client_lease(negotiated: Duration) -> Duration {
    negotiated * 3 / 4
}

impl Drop for ZkSession {
    fn drop(&mut self) {
        // Core revokes an unclosed session before dropping it; a lost one is
        // closed by the monitor at its lease end.
        self.loss.fire("the session was dropped");
    }
}

/// Follow the session state; fire `loss` on a terminal state; once `loss`
/// fired for any reason, close the ZooKeeper session at the lease end.
async fn monitor(
    shared: Arc<SessionShared>,
    mut states: StateWatcher,
    loss: LossNotifier,
    ttl: Duration,
) {
    let id = shared.id_string();
    let mut state = states.peek_state();
    loop {
        match state {
            SessionState::Expired => loss.fire("the ZooKeeper session expired"),
            SessionState::Closed => loss.fire("the ZooKeeper session was closed"),
            SessionState::AuthFailed => loss.fire("ZooKeeper authentication failed"),
            SessionState::Disconnected => {
                tracing::info!(session = %id, "disconnected from ZooKeeper; the session lives until its timeout");
            }
            s => tracing::debug!(session = %id, state = %s, "ZooKeeper session state"),
        }
        if loss.is_lost() {
            break;
        }
        tokio::select! {
            s = states.changed() => state = s,
            _ = loss.lost() => break,
        }
    }
    if !states.peek_state().is_terminated() {
        let lease_end = *shared.renewed.lock().unwrap() + ttl;
        tokio::select! {
            _ = tokio::time::sleep_until(lease_end) => {}
            _ = shared.terminated() => {}
        }
    }
    shared.close();
    let end = shared.terminated().await;
    registry().lock().unwrap().remove(&shared.id);
    tracing::debug!(session = %id, state = %end, "ZooKeeper session ended");
}

/// Revoke a session by id, as an operator would.
///
/// A session of this process is closed through its own connection (the
/// server deletes its nodes; its holder's client reports the session
/// closed). ZooKeeper closes a session only for a client that knows the
/// session's password, so a session of another process is revoked by
/// deleting every node it owns under this namespace: its locks,
/// memberships and candidacies are freed at once and its guards' `lost()`
/// resolve; the other process's session object itself learns nothing.
pub(crate) async fn revoke_by_id(
    server: &Server,
    layout: &Layout,
    client: &Client,
    session_id: &str,
) -> Result<()> {
    let id = session_id
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| {
            Error::invalid_name(format!(
                "`{session_id}` is not a ZooKeeper session id (0x…)"
            ))
        })? as i64;
    let local = registry()
        .lock()
        .unwrap()
        .get(&id)
        .filter(|r| r.scope == scope_key(server, layout))
        .and_then(|r| r.shared.upgrade());
    if let Some(shared) = local {
        shared.close();
        let state = shared.terminated().await;
        tracing::info!(session = %session_id, %state, "session revoked");
        return Ok(());
    }
    let mut deleted = 0;
    for (path, stat) in owned_nodes(client, layout).await? {
        if stat.ephemeral_owner == id {
            match client.delete(&path, Some(stat.version)).await {
                Ok(()) => deleted += 1,
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(zk_error("delete", &path, e)),
            }
        }
    }
    if deleted == 0 {
        return Err(Error::not_held(format!(
            "no live session {session_id} of this process, and no node of it under `{}`",
            layout.base()
        )));
    }
    tracing::info!(session = %session_id, deleted, "revoked a session's nodes");
    Ok(())
}

/// The ids of the live sessions this process opened on this ensemble and
/// namespace.
pub(crate) fn live_sessions(server: &Server, layout: &Layout) -> Vec<String> {
    let key = scope_key(server, layout);
    registry()
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, r)| r.scope == key)
        .map(|(id, _)| format!("{id:#x}"))
        .collect()
}

/// `sync` `path` before a read a guarantee depends on: the follower the
/// client is connected to then answers only once it has caught up with the
/// leader (a follower cut off from the leader errors instead of answering
/// from its stale state). `Ok(false)` when the session is gone.
pub(crate) async fn sync_with_leader(client: &Client, path: &str) -> Result<bool> {
    match client.sync(path).await {
        Ok(()) => Ok(true),
        Err(e) if is_session_gone(&e) => Ok(false),
        Err(e) => Err(zk_error("sync", path, e)),
    }
}

/// Whether a client error means the session itself is gone.
pub(crate) fn is_session_gone(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed
    )
}

/// How many node watches may wait for the session's watch task to take
/// them up. The task takes each at once, so this bounds a burst of grants,
/// not the number watched; past it, a small task waits for room
/// ([`hand_over`]).
const WATCH_INBOX: usize = 256;

/// A node to watch and the loss to fire when it goes.
type Arm = (Arc<str>, LossNotifier);

/// Fire `loss` when the node at `path` (a grant, membership or candidacy of
/// this session) is deleted by anyone, or the session ends. Our own
/// release deletes the node too, after core fired the loss (the first fire
/// wins), so the watch ends with the release's deletion event and never
/// costs a `removeWatches`.
///
/// The session's one watch task runs every such watch (see
/// [`watch_nodes`]), so a held grant costs its watcher, not a task.
pub(crate) fn watch_own_node(shared: &Arc<SessionShared>, path: Arc<str>, loss: LossNotifier) {
    // The task ends only once no sender is left, never while this session
    // is open; if it did, refuse to vouch for an unwatched grant.
    hand_over(
        &shared.node_watches,
        (path, loss),
        &Handle::current(),
        |(path, loss)| loss.fire(format!("the watch of node `{path}` could not start")),
    );
}

/// The session's watch task: runs the watch of every node handed to
/// [`watch_own_node`] until the session's shared state is gone (every grant
/// holds it, so none is left to watch for then).
async fn watch_nodes(shared: Weak<SessionShared>, mut arms: mpsc::Receiver<Arm>) {
    let mut watching = FuturesUnordered::new();
    loop {
        tokio::select! {
            arm = arms.recv() => match arm {
                Some((path, loss)) => watching.push(watch_node(shared.clone(), path, loss)),
                None => return,
            },
            Some(()) = watching.next(), if !watching.is_empty() => {}
        }
    }
}

/// Watch one node; see [`watch_own_node`]. The `exists` request runs boxed,
/// so what stays while the node is watched is the watcher, the path and
/// the loss.
async fn watch_node(shared: Weak<SessionShared>, path: Arc<str>, loss: LossNotifier) {
    loop {
        if loss.is_lost() {
            return;
        }
        let Some(Ok(client)) = shared.upgrade().map(|s| s.client()) else {
            return;
        };
        // Only the watcher (none when the node is gone) leaves the box.
        let node = &path;
        let watched = Box::pin(async move {
            let (stat, watcher) = client.check_and_watch_stat(node).await?;
            Ok::<_, zk::Error>(stat.map(|_| watcher))
        })
        .await;
        match watched {
            Ok(None) => {
                loss.fire(format!("node `{path}` was deleted"));
                return;
            }
            Ok(Some(watcher)) => {
                let event = watcher.changed().await;
                match event.event_type {
                    zk::EventType::NodeDeleted => {
                        loss.fire(format!("node `{path}` was deleted"));
                        return;
                    }
                    zk::EventType::Session if event.session_state.is_terminated() => {
                        loss.fire(format!(
                            "the ZooKeeper session ended ({})",
                            event.session_state
                        ));
                        return;
                    }
                    _ => {}
                }
            }
            Err(e) if is_session_gone(&e) => {
                loss.fire(format!("the ZooKeeper session ended ({e})"));
                return;
            }
            Err(e) => {
                tracing::debug!(%path, error = %e, "re-arming the node watch");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
