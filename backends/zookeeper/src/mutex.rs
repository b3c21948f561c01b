//! Mutexes (kazoo `Lock` layout; the write side of the name's read/write
//! lock) and the held-lock type shared with read/write locks: release, `is_held`, and guarded writes in one `multi`.

use std::sync::Arc;

use quorate_core::backend::async_trait;
use quorate_core::loss::LossNotifier;
use quorate_core::spi::{AfterWrite, HeldLock};
use quorate_core::LockKind;
use quorate_core::{Error, FencingToken, Result};
use zookeeper_client as zk;
use zookeeper_client::{CreateMode, MultiWriteError};

use crate::node::{ensure_dir, parent, zk_error, PARENT_RETRIES};
use crate::queue;
use crate::rwlock;
use crate::session::{is_session_gone, watch_own_node, SessionShared};

/// Acquire a lock of any kind (mutex = write side, or read side) with the
/// queue rules of [`rwlock::spec`].
///
/// # Cancel safety
///
/// As [`queue::acquire`]: a dropped call leaves no node behind.
pub(crate) async fn lock(
    shared: &Arc<SessionShared>,
    name: &str,
    kind: LockKind,
    wait: bool,
    loss: LossNotifier,
) -> Result<Option<Box<dyn HeldLock>>> {
    let spec = rwlock::spec(&shared.layout, name, kind);
    // kazoo stores the contender's identifier as data; ours is the session.
    let identifier = format!("quorate session {}", shared.id_string());
    let Some(grant) = queue::acquire(shared, &spec, identifier.as_bytes(), wait).await? else {
        return Ok(None);
    };
    let fence = FencingToken::try_from(grant.stat.czxid)?;
    watch_own_node(shared, grant.path.clone(), loss);
    Ok(Some(Box::new(ZkLock {
        shared: shared.clone(),
        path: grant.path,
        czxid: grant.stat.czxid,
        fence,
        version: grant.stat.version,
    })))
}

/// A granted contender node of this session.
pub(crate) struct ZkLock {
    shared: Arc<SessionShared>,
    path: Arc<str>,
    czxid: i64,
    /// The grant's token: `czxid`, checked.
    fence: FencingToken,
    /// The node's data version at the grant; nobody changes lock nodes' data,
    /// so a version check doubles as an existence check.
    version: i32,
}

#[async_trait]
impl HeldLock for ZkLock {
    fn fence(&self) -> FencingToken {
        self.fence
    }

    async fn is_held(&self) -> Result<bool> {
        queue::still_mine(&self.shared, &self.path, self.czxid).await
    }

    async fn release(&self) -> Result<()> {
        queue::give_back(&self.shared, &self.path).await
    }

    async fn write_if_held(&self, key: &str, value: &[u8], then: AfterWrite) -> Result<bool> {
        let release = then == AfterWrite::Release;
        let data_path = self.shared.layout.data_path(key);
        for _ in 0..PARENT_RETRIES {
            // A closed or expired session holds nothing: the write is refused.
            let Ok(client) = self.shared.client() else {
                return Ok(false);
            };
            let existing = match client.check_stat(&data_path).await {
                Ok(stat) => stat,
                Err(e) if is_session_gone(&e) => return Ok(false),
                Err(e) => return Err(zk_error("exists", &data_path, e)),
            };
            let mut multi = client.new_multi_writer();
            let build = (|| {
                multi.add_check_version(&self.path, self.version)?;
                match &existing {
                    Some(stat) => multi.add_set_data(&data_path, value, Some(stat.version))?,
                    None => multi.add_create(
                        &data_path,
                        value,
                        &self.shared.layout.options(CreateMode::Persistent),
                    )?,
                }
                if release {
                    multi.add_delete(&self.path, None)?;
                }
                Ok::<(), zk::Error>(())
            })();
            build.map_err(|e| zk_error("build guarded write", &data_path, e))?;
            match multi.commit().await {
                Ok(_) => return Ok(true),
                Err(MultiWriteError::OperationFailed {
                    index: 0,
                    source: zk::Error::NoNode | zk::Error::BadVersion,
                }) => return Ok(false),
                Err(MultiWriteError::OperationFailed {
                    index: 1,
                    source: zk::Error::NoNode,
                }) if existing.is_none() => {
                    // `<ns>/data` is missing (first value ever, or reaped).
                    ensure_dir(&client, &self.shared.layout, parent(&data_path)).await?;
                }
                Err(MultiWriteError::OperationFailed {
                    index: 1,
                    source: zk::Error::NodeExists | zk::Error::NoNode | zk::Error::BadVersion,
                }) => {
                    // The value changed between our stat and the multi: retry.
                }
                Err(MultiWriteError::RequestFailed { source }) if is_session_gone(&source) => {
                    return Ok(false)
                }
                Err(e) => return Err(zk_error("guarded write", &data_path, e.into())),
            }
        }
        Err(Error::backend(format!(
            "guarded write of `{data_path}` kept racing concurrent writers"
        )))
    }
}
