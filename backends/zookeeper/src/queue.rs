//! The contender queue of kazoo's lock recipe, shared by mutexes,
//! read/write locks and elections.
//!
//! A contender creates an ephemeral sequential node
//! `<dir>/<uuidhex><marker><10-digit seq>` (marker `__lock__` or
//! `__rlock__`). It is granted when no *blocking* node has a lower
//! sequence number; otherwise it watches the nearest blocking predecessor
//! and looks again when that one goes. kazoo's `Lock` is blocked by
//! `__lock__` nodes, `WriteLock` by both kinds, `ReadLock` by `__lock__`
//! nodes, and quorate uses the same rules, so both exclude each other.
//!
//! A contender whose last listing showed exactly one blocking node ahead is
//! granted on that node's deletion without listing again (a hand-off costs
//! the deletion's event, not one more `getChildren`); the grant's node watch
//! then checks that our own node still exists.
//!
//! The uuid prefix finds our node again when the reply to its `create` was
//! lost (Curator's and kazoo's protection), and lets a dropped waiter's
//! clean-up remove exactly its own node, never a later one.

use std::sync::Arc;

use quorate_core::cleanup::{spawn_retrying, GiveUp};
use quorate_core::{Error, Result};
use zookeeper_client as zk;
use zookeeper_client::{Client, CreateMode, EventType, Stat};

use crate::node::{create_with_parents, zk_error};
use crate::session::{is_session_gone, SessionShared};

/// Marker of exclusive contenders (kazoo `Lock`, `WriteLock`, `Election`).
pub(crate) const EXCLUSIVE: &str = "__lock__";
/// Marker of shared contenders (kazoo `ReadLock`).
pub(crate) const SHARED: &str = "__rlock__";

/// Which queue to join, and as what.
pub(crate) struct Spec {
    /// The contender directory.
    pub(crate) dir: String,
    /// This contender's marker.
    pub(crate) marker: &'static str,
    /// The markers of earlier nodes that keep this contender waiting.
    pub(crate) blocked_by: &'static [&'static str],
}

/// A granted contender node.
pub(crate) struct Grant {
    /// Full path of the node (shared with the grant's node watch).
    pub(crate) path: Arc<str>,
    /// Its stat at creation (`czxid` is the fencing token).
    pub(crate) stat: Stat,
}

/// Join the queue and wait for the grant (or, with `wait == false`, give up
/// at once if blocked). `data` is the node's content.
///
/// # Cancel safety
///
/// Dropping the future at any await point removes the node (a background
/// delete, by name or else by uuid prefix).
pub(crate) async fn acquire(
    shared: &Arc<SessionShared>,
    spec: &Spec,
    data: &[u8],
    wait: bool,
) -> Result<Option<Grant>> {
    let prefix = format!("{}{}", uuid::Uuid::new_v4().simple(), spec.marker);
    let mut cleanup = RemoveOnDrop {
        shared: shared.clone(),
        dir: spec.dir.clone(),
        prefix: prefix.clone(),
        name: None,
        armed: true,
    };
    let (name, stat) = create_contender(shared, &spec.dir, &prefix, data).await?;
    cleanup.name = Some(name.clone());
    let my_seq = sequence(&name, &[spec.marker])
        .ok_or_else(|| Error::backend(format!("unexpected contender node name `{name}`")))?;
    let path = format!("{}/{name}", spec.dir);
    loop {
        let client = shared.client()?;
        let children = client
            .list_children(&spec.dir)
            .await
            .map_err(|e| zk_error("list contenders of", &spec.dir, e))?;
        if !children.contains(&name) {
            return Err(Error::lost(format!(
                "contender node `{path}` vanished while waiting (session expired or node deleted)"
            )));
        }
        let Some(predecessor) = predecessor(&children, my_seq, spec.blocked_by) else {
            cleanup.armed = false;
            tracing::debug!(%path, czxid = stat.czxid, "granted");
            return Ok(Some(Grant {
                path: path.into(),
                stat,
            }));
        };
        // With one blocking node ahead, its deletion grants us: nodes
        // created later have higher sequence numbers and never block us.
        let ahead = match blocking_ahead(&children, my_seq, spec.blocked_by) {
            1 => Ahead::Only,
            _ => Ahead::Several,
        };
        if !wait {
            cleanup.armed = false;
            delete_quietly(&client, &path).await?;
            return Ok(None);
        }
        let predecessor = format!("{}/{predecessor}", spec.dir);
        let (exists, watcher) = client
            .check_and_watch_stat(&predecessor)
            .await
            .map_err(|e| zk_error("watch predecessor", &predecessor, e))?;
        drop(client);
        let gone = match exists {
            None => true,
            Some(_) => {
                tracing::trace!(%path, %predecessor, "waiting for predecessor");
                let event = watcher.changed().await;
                if event.event_type == EventType::Session && event.session_state.is_terminated() {
                    return Err(Error::lost(format!(
                        "the ZooKeeper session ended while waiting ({})",
                        event.session_state
                    )));
                }
                event.event_type == EventType::NodeDeleted
            }
        };
        if gone && matches!(ahead, Ahead::Only) {
            // Granted without listing again. Our own node is not re-read
            // here: the caller's node watch (`watch_own_node`) starts with
            // an existence check on this server, which has applied every
            // change up to the deletion we were told of, and fires the
            // grant's loss if our node is gone. A deletion event read only
            // after our session expired (the process was stopped with it in
            // the socket) is refused by core: the session's client-side
            // deadline, three quarters of the session timeout, has passed
            // by then (`Grant::in_time`; the test
            // `a_waiter_paused_past_its_session_is_not_granted`).
            cleanup.armed = false;
            tracing::debug!(%path, czxid = stat.czxid, "granted on the predecessor's deletion");
            return Ok(Some(Grant {
                path: path.into(),
                stat,
            }));
        }
    }
}

/// How many nodes were ahead of a contender in its last listing.
enum Ahead {
    /// One: its deletion is the grant.
    Only,
    /// Several: list again after each deletion.
    Several,
}

/// The number of earlier nodes among `children` that block a contender with
/// sequence `my_seq`.
fn blocking_ahead(children: &[String], my_seq: i64, blocked_by: &[&str]) -> usize {
    children
        .iter()
        .filter_map(|c| sequence(c, blocked_by))
        .filter(|s| *s < my_seq)
        .count()
}

/// Create our contender node, recovering it by its prefix if the reply to a
/// `create` was lost with the connection.
async fn create_contender(
    shared: &SessionShared,
    dir: &str,
    prefix: &str,
    data: &[u8],
) -> Result<(String, Stat)> {
    let create_path = format!("{dir}/{prefix}");
    let mut maybe_created = false;
    loop {
        let client = shared.client()?;
        if maybe_created {
            match find_by_prefix(&client, dir, prefix).await {
                Ok(Some(name)) => {
                    let path = format!("{dir}/{name}");
                    match client.check_stat(&path).await {
                        Ok(Some(stat)) => return Ok((name, stat)),
                        Ok(None) => {
                            return Err(Error::lost(format!(
                                "contender node `{path}` vanished right after its creation"
                            )))
                        }
                        Err(zk::Error::ConnectionLoss) => continue,
                        Err(e) => return Err(zk_error("stat", &path, e)),
                    }
                }
                Ok(None) => {}
                Err(zk::Error::ConnectionLoss) => continue,
                Err(e) => return Err(zk_error("list contenders of", dir, e)),
            }
        }
        match create_with_parents(
            &client,
            &shared.layout,
            &create_path,
            data,
            CreateMode::EphemeralSequential,
        )
        .await
        {
            Ok((stat, seq)) => return Ok((format!("{prefix}{seq}"), stat)),
            Err(zk::Error::ConnectionLoss) => {
                tracing::debug!(%create_path, "connection lost during create; looking for our node");
                maybe_created = true;
            }
            Err(e) => return Err(zk_error("create contender", &create_path, e)),
        }
    }
}

/// The child of `dir` that starts with `prefix`, if any.
async fn find_by_prefix(
    client: &Client,
    dir: &str,
    prefix: &str,
) -> std::result::Result<Option<String>, zk::Error> {
    match client.list_children(dir).await {
        Ok(children) => Ok(children.into_iter().find(|c| c.starts_with(prefix))),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The sequence number of a contender node with one of `markers`, parsed
/// as kazoo does: the marker followed by exactly ten digits (or a minus
/// sign and ten digits, after the counter wrapped) at the end of the name.
pub(crate) fn sequence(name: &str, markers: &[&str]) -> Option<i64> {
    markers.iter().find_map(|m| {
        let at = name.rfind(m)?;
        let digits = &name[at + m.len()..];
        let unsigned = digits.strip_prefix('-').unwrap_or(digits);
        (unsigned.len() == 10 && unsigned.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    })
}

/// The nearest earlier node among `children` that blocks a contender with
/// sequence `my_seq`.
fn predecessor<'a>(children: &'a [String], my_seq: i64, blocked_by: &[&str]) -> Option<&'a str> {
    children
        .iter()
        .filter_map(|c| sequence(c, blocked_by).map(|s| (s, c)))
        .filter(|(s, _)| *s < my_seq)
        .max_by_key(|(s, _)| *s)
        .map(|(_, c)| c.as_str())
}

/// The exclusive contenders of `children` in queue order (an election's
/// candidates).
pub(crate) fn in_order(children: &[String], markers: &[&str]) -> Vec<(i64, String)> {
    let mut v: Vec<(i64, String)> = children
        .iter()
        .filter_map(|c| sequence(c, markers).map(|s| (s, c.clone())))
        .collect();
    v.sort();
    v
}

/// Whether the contender node at `path` (created as `czxid`) is still this
/// session's: the `is_held()` of a lock and the `is_leader()` of a
/// candidate. Linearizable: `sync` first, so a follower answers only once
/// caught up with the leader.
pub(crate) async fn still_mine(shared: &SessionShared, path: &str, czxid: i64) -> Result<bool> {
    let Ok(client) = shared.client() else {
        return Ok(false); // the session is closed, and its nodes with it
    };
    if !crate::session::sync_with_leader(&client, path).await? {
        return Ok(false);
    }
    match client.check_stat(path).await {
        Ok(Some(stat)) => Ok(stat.czxid == czxid && stat.ephemeral_owner == shared.id),
        Ok(None) => Ok(false),
        Err(e) if is_session_gone(&e) => Ok(false),
        Err(e) => Err(zk_error("exists", path, e)),
    }
}

/// Give back the contender node at `path` (a lock's release, a candidate's
/// resignation): idempotent; nothing to do once the session is closed.
pub(crate) async fn give_back(shared: &SessionShared, path: &str) -> Result<()> {
    let Ok(client) = shared.client() else {
        return Ok(()); // the session is closed: the node went with it
    };
    delete_quietly(&client, path).await
}

/// Delete a node, treating "already gone" as done.
pub(crate) async fn delete_quietly(client: &Client, path: &str) -> Result<()> {
    match client.delete(path, None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) if is_session_gone(&e) => Ok(()),
        Err(e) => Err(zk_error("delete", path, e)),
    }
}

/// Delete our node in the background if the acquiring future is dropped.
struct RemoveOnDrop {
    shared: Arc<SessionShared>,
    dir: String,
    prefix: String,
    /// The node's name once the create reply arrived.
    name: Option<String>,
    armed: bool,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shared = self.shared.clone();
        let dir = std::mem::take(&mut self.dir);
        let prefix = std::mem::take(&mut self.prefix);
        let name = self.name.take();
        // Retried until done or the session is closed (`client()` is then
        // `Lost`, and the ephemeral node went with the session).
        spawn_retrying(
            "remove a dropped waiter's node",
            GiveUp::WithSession,
            move || {
                let (shared, dir, prefix, name) =
                    (shared.clone(), dir.clone(), prefix.clone(), name.clone());
                async move {
                    let client = shared.client()?;
                    // Requests of one session are applied in order, so this
                    // lookup sees the create even if its reply never came.
                    let name = match name {
                        Some(n) => Some(n),
                        None => find_by_prefix(&client, &dir, &prefix)
                            .await
                            .map_err(|e| zk_error("list contenders of", &dir, e))?,
                    };
                    if let Some(name) = name {
                        let path = format!("{dir}/{name}");
                        delete_quietly(&client, &path).await?;
                        tracing::debug!(%path, "removed a dropped waiter's node");
                    }
                    Ok(())
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_parse_like_kazoo() {
        let both = &[EXCLUSIVE, SHARED];
        assert_eq!(sequence("ab12__lock__0000000007", both), Some(7));
        assert_eq!(sequence("ab12__rlock__0000000010", both), Some(10));
        assert_eq!(sequence("ab12__rlock__0000000010", &[EXCLUSIVE]), None);
        assert_eq!(sequence("ab12__lock__-0000000001", both), Some(-1));
        assert_eq!(sequence("ab12__lock__000000007", both), None);
        assert_eq!(sequence("member", both), None);
    }

    #[test]
    fn predecessor_follows_blocking_rules() {
        let children: Vec<String> = [
            "a__lock__0000000001",
            "b__rlock__0000000002",
            "c__rlock__0000000003",
            "d__lock__0000000004",
            "e__rlock__0000000005",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A writer (seq 4) waits for the nearest earlier node of any kind.
        assert_eq!(
            predecessor(&children, 4, &[EXCLUSIVE, SHARED]),
            Some("c__rlock__0000000003")
        );
        // A reader (seq 3) waits only for the nearest earlier writer.
        assert_eq!(
            predecessor(&children, 3, &[EXCLUSIVE]),
            Some("a__lock__0000000001")
        );
        // A reader (seq 5) waits for the writer at 4.
        assert_eq!(
            predecessor(&children, 5, &[EXCLUSIVE]),
            Some("d__lock__0000000004")
        );
        assert_eq!(predecessor(&children, 1, &[EXCLUSIVE, SHARED]), None);
    }
}
