//! Sessions: a session is this process and the open file descriptions it
//! holds. The kernel releases every lock when the process dies, so there is
//! no lease to expire: the TTL plays no part in failure detection. The
//! backend declares `FailureDetection::ProcessLifetime`, so core keeps no
//! client-side lease deadline for its sessions (a holder paused by `SIGSTOP`
//! still holds its kernel locks when it resumes, and is right to trust
//! them). `keep_alive` checks that every held grant's file is still the one
//! at its path (fires the grant's loss when an operator removed or replaced
//! it) and that the root directory is still there (the session is lost when
//! it is not). Core calls it every TTL/3 with automatic keep-alive. A held
//! lock or election file removed or replaced is noticed sooner, within
//! milliseconds: every session is registered with `removals`, whose inotify
//! watch runs the same check of held items when such a file goes away; the
//! keep-alive is its fallback.
//!
//! A session keeps a registry of what it holds (locks, memberships,
//! leaderships) so that `SessionBackend::revoke` (and the loss of the
//! session, whatever its cause) releases all of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use quorate_core::loss::LossNotifier;
use quorate_core::{Error, Result};
use tokio::task::JoinHandle;

use crate::layout::Layout;
use crate::ofd::{blocking, io_error};

/// Something a session holds and must give up when it is revoked.
pub(crate) trait Revocable: Send + Sync {
    /// Fire the holder's loss and release (synchronously; quick file
    /// operations only).
    fn revoke(&self, reason: &str);

    /// Why the grant can no longer be trusted, when a cheap local check
    /// (an `fstat` of the held description and a `stat` of its path) shows
    /// it: its file was removed or replaced (an operator's `rm`), so anyone
    /// can now create and lock a new file of that name. `None` when it looks
    /// intact, is already released, or cannot be checked.
    fn gone(&self) -> Option<String> {
        None
    }
}

/// The state of a session shared with everything it holds.
pub(crate) struct SessionShared {
    pub(crate) id: String,
    pub(crate) layout: Arc<Layout>,
    items: StdMutex<Items>,
    /// Held for the whole of [`SessionShared::revoke_all`]: `close()` fires
    /// the session's loss (whose task revokes everything) and then revokes
    /// everything itself; whichever comes second must not return before
    /// the first has closed every description.
    revoking: StdMutex<()>,
}

#[derive(Default)]
struct Items {
    revoked: bool,
    next: u64,
    live: HashMap<u64, Weak<dyn Revocable>>,
}

/// A held item's entry in its session's registry, removed when dropped.
pub(crate) struct Registration {
    session: Weak<SessionShared>,
    id: u64,
    /// [`crate::removals::generation`] when reserved.
    seen: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(s) = self.session.upgrade() {
            s.items.lock().unwrap().live.remove(&self.id);
        }
    }
}

impl SessionShared {
    /// A registration for an item about to be created; see [`Self::activate`].
    /// Reserve it *before* the item's file is locked: it notes how many
    /// removal checks had started ([`crate::removals::generation`]).
    pub(crate) fn reserve(self: &Arc<Self>) -> Registration {
        let seen = crate::removals::generation();
        let mut items = self.items.lock().unwrap();
        items.next += 1;
        Registration {
            session: Arc::downgrade(self),
            id: items.next,
            seen,
        }
    }

    /// Enter a freshly granted item. Fails with `Lost` when the session was
    /// revoked meanwhile; the caller then drops the item, which releases it.
    ///
    /// If a removal check started since [`Self::reserve`], it may have
    /// missed this item (not yet entered): the item's own file is checked
    /// now, and its loss fired if it is gone.
    pub(crate) fn activate(&self, reg: &Registration, item: Weak<dyn Revocable>) -> Result<()> {
        {
            let mut items = self.items.lock().unwrap();
            if items.revoked {
                return Err(self.revoked_error());
            }
            items.live.insert(reg.id, item.clone());
        }
        if crate::removals::generation() != reg.seen {
            if let Some(item) = item.upgrade() {
                if let Some(reason) = item.gone() {
                    tracing::warn!(session = %self.id, %reason, "a file went away as it was granted");
                    item.revoke(&reason);
                }
            }
        }
        Ok(())
    }

    fn revoked_error(&self) -> Error {
        Error::lost(format!("session {} was revoked", self.id))
    }

    /// Release everything the session holds; later grants are refused.
    ///
    /// Returns only once everything is released, also when another call is
    /// in progress (it waits for that one).
    pub(crate) fn revoke_all(&self, reason: &str) {
        let _revoking = self.revoking.lock().unwrap_or_else(|e| e.into_inner());
        let live = {
            let mut items = self.items.lock().unwrap();
            items.revoked = true;
            std::mem::take(&mut items.live)
        };
        if !live.is_empty() {
            tracing::debug!(session = %self.id, held = live.len(), %reason, "releasing everything of the session");
        }
        for item in live.into_values().filter_map(|w| w.upgrade()) {
            item.revoke(reason);
        }
    }

    fn is_revoked(&self) -> bool {
        self.items.lock().unwrap().revoked
    }

    /// Check every held item ([`Revocable::gone`]) and revoke (fire the
    /// loss of) those whose file was removed or replaced. Returns how many.
    pub(crate) fn check_held(&self) -> usize {
        let live: Vec<_> = {
            let items = self.items.lock().unwrap();
            items.live.values().filter_map(Weak::upgrade).collect()
        };
        let mut lost = 0;
        for item in live {
            if let Some(reason) = item.gone() {
                tracing::warn!(session = %self.id, %reason, "a held grant's file is gone");
                item.revoke(&reason);
                lost += 1;
            }
        }
        lost
    }
}

/// One session of the file backend.
pub(crate) struct FileSession {
    pub(crate) shared: Arc<SessionShared>,
    /// The requested TTL, reported as is; it only paces keep-alives.
    pub(crate) ttl: Duration,
    on_loss: JoinHandle<()>,
}

impl FileSession {
    /// Open a session. Its id is `<pid>.<random>`. Once `loss` fires (core's
    /// client-side deadline, close, drop), everything it holds is released.
    /// The TTL only paces core's keep-alive (a directory check).
    pub(crate) fn open(layout: Arc<Layout>, ttl: Duration, loss: LossNotifier) -> FileSession {
        let shared = Arc::new(SessionShared {
            id: format!("{}.{:08x}", std::process::id(), rand::random::<u32>()),
            layout,
            items: StdMutex::new(Items::default()),
            revoking: StdMutex::new(()),
        });
        crate::removals::watch(&shared);
        let watched = shared.clone();
        let on_loss = tokio::spawn(async move {
            let reason = loss.lost().await;
            let _ = blocking(move || {
                watched.revoke_all(&format!("session lost: {reason}"));
                Ok(())
            })
            .await;
        });
        tracing::debug!(session = %shared.id, "file session opened");
        FileSession {
            shared,
            ttl,
            on_loss,
        }
    }
}

impl Drop for FileSession {
    fn drop(&mut self) {
        self.on_loss.abort();
        self.shared.revoke_all("session dropped");
    }
}

impl FileSession {
    /// Check that everything the session holds is still there: a grant
    /// whose file was removed or replaced has its loss fired at once. If
    /// the root directory itself is gone, everything the session held went
    /// with it: the session is `Lost`. Other errors reading the root are
    /// `Unavailable` (core retries).
    pub(crate) async fn keep_alive(&self) -> Result<()> {
        if self.shared.is_revoked() {
            return Err(self.shared.revoked_error());
        }
        let shared = self.shared.clone();
        blocking(move || {
            shared.check_held();
            let layout = &shared.layout;
            layout.check_root().map_err(|e| {
                let gone = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                );
                let e = io_error(format!("root directory `{}`", layout.root().display()), e);
                if gone {
                    Error::lost(format!(
                        "{}: the root directory was removed, and everything the session held with it",
                        e.message()
                    ))
                } else {
                    Error::unavailable(e.message().to_owned())
                }
            })
        })
        .await
    }

    pub(crate) async fn revoke(&self) -> Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            shared.revoke_all("the session was revoked");
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// An item whose release takes a while (as closing many descriptions,
    /// removing a leader's value file, … can on a loaded machine).
    struct Slow(AtomicBool);

    impl Revocable for Slow {
        fn revoke(&self, _: &str) {
            std::thread::sleep(Duration::from_millis(200));
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A session's shared state on the root `dir`, with no thread or loss.
    fn session(dir: &std::path::Path) -> Arc<SessionShared> {
        Arc::new(SessionShared {
            id: "test".into(),
            layout: Arc::new(Layout::open(dir.to_owned()).unwrap()),
            items: StdMutex::new(Items::default()),
            revoking: StdMutex::new(()),
        })
    }

    /// `close()` fires the loss (its task calls `revoke_all`) and calls
    /// `revoke_all` itself: the second call must wait for the first one,
    /// else `close()` returns with locks still held (the flake seen once in
    /// `closing_a_session_releases_everything_it_holds`).
    #[test]
    fn a_second_revoke_all_returns_only_once_the_first_released_everything() {
        let dir = tempfile::tempdir().unwrap();
        let shared = session(dir.path());
        let item = Arc::new(Slow(AtomicBool::new(false)));
        let reg = shared.reserve();
        let weak: Weak<Slow> = Arc::downgrade(&item);
        shared.activate(&reg, weak).unwrap();
        let first = {
            let shared = shared.clone();
            std::thread::spawn(move || shared.revoke_all("first"))
        };
        // The first call has taken the items and is releasing them.
        while shared.items.lock().unwrap().live.contains_key(&reg.id) {
            std::thread::yield_now();
        }
        shared.revoke_all("second");
        assert!(
            item.0.load(Ordering::SeqCst),
            "revoke_all returned while another call was still releasing"
        );
        first.join().unwrap();
    }

    /// An item whose file is gone.
    struct Gone(AtomicBool);

    impl Revocable for Gone {
        fn revoke(&self, _: &str) {
            self.0.store(true, Ordering::SeqCst);
        }

        fn gone(&self) -> Option<String> {
            Some("removed".into())
        }
    }

    /// A removal check that started between a grant's reservation and its
    /// entry could not see it: the grant checks its own file when entered,
    /// and its loss fires.
    #[test]
    fn an_item_granted_while_a_removal_check_ran_checks_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let shared = session(dir.path());
        let item = Arc::new(Gone(AtomicBool::new(false)));
        let reg = shared.reserve();
        crate::removals::count_check_for_test();
        let weak: Weak<Gone> = Arc::downgrade(&item);
        shared.activate(&reg, weak).unwrap();
        assert!(
            item.0.load(Ordering::SeqCst),
            "a grant made while a removal check ran was not checked"
        );
    }
}
