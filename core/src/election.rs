//! Leader election: campaign, observe, resign, with fencing.

use std::sync::Arc;

use futures::stream::BoxStream;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::fence::FencingToken;
use crate::grant::{GiveBack, Grant};
use crate::loss::{GuardLoss, LossReason};
use crate::name;
use crate::session::{ClaimKey, Session, WhileGivingBack};
use crate::spi::HeldLeadership;
use crate::Leader;

/// A named election, seen through a [`Session`].
#[derive(Debug, Clone)]
pub struct Election {
    session: Session,
    name: String,
}

impl Election {
    pub(crate) fn new(session: Session, name: &str) -> Self {
        Election {
            session,
            name: name.to_owned(),
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Campaign with `value` and wait until elected. Candidates are elected
    /// in the order they arrived.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future withdraws the candidacy at once.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::AlreadyHeld`] if this session already campaigns
    /// here; [`crate::ErrorKind::Lost`] if the session is lost while
    /// waiting; the backend's error.
    pub async fn campaign(&self, value: impl AsRef<[u8]>) -> Result<Leadership> {
        name::validate("election", &self.name)?;
        self.session.check_usable()?;
        let claim = self
            .session
            .claim(
                ClaimKey::Candidate(self.name.clone()),
                WhileGivingBack::Wait,
            )
            .await?
            .ok_or_else(|| Error::backend("a waiting claim returned no claim"))?;
        let loss = GuardLoss::new(&self.session.inner.loss);
        let span = tracing::debug_span!("campaign", election = %self.name);
        let held = self
            .session
            .wait_or_lost(self.session.inner.backend.campaign(
                &self.name,
                value.as_ref(),
                loss.own.clone(),
            ))
            .instrument(span)
            .await?;
        let fence = held.fence();
        tracing::debug!(election = %self.name, %fence, "elected");
        let held: Arc<dyn HeldLeadership> = held.into();
        Ok(Leadership {
            grant: Grant::new(&self.session, held, claim, loss, GiveBack::Resign)?,
            name: self.name.clone(),
            fence,
        })
    }

    /// The current leader, if any.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        self.session.inner.coordinator.leader(&self.name).await
    }

    /// The current leader, then every change (never a lower fence after a
    /// higher one). A consumer that falls behind gets the latest leader; a
    /// broken observation is re-opened with back-off (see [`crate::watch`]).
    pub fn observe(&self) -> BoxStream<'static, Result<Option<Leader>>> {
        self.session.inner.coordinator.observe(&self.name)
    }
}

/// Leadership of an election. Dropping it resigns in the background (the
/// session's clean-up retries until the backend confirms).
pub struct Leadership {
    grant: Grant<Arc<dyn HeldLeadership>>,
    name: String,
    fence: FencingToken,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("election", &self.name)
            .field("fence", &self.fence)
            .finish()
    }
}

impl Leadership {
    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this leadership.
    pub fn fence(&self) -> FencingToken {
        self.fence
    }

    /// Publish a new value; observers see it.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Lost`] / [`crate::ErrorKind::NotHeld`] when no
    /// longer leader; the backend's error.
    pub async fn proclaim(&self, value: impl AsRef<[u8]>) -> Result<()> {
        if let Some(r) = self.grant.loss().reason() {
            return Err(Error::lost(format!(
                "leadership of `{}` is lost: {r}",
                self.name
            )));
        }
        let held = self.grant.handle(&self.name)?;
        self.grant
            .session()
            .inner
            .coordinator
            .bounded("proclaim", held.proclaim(value.as_ref()))
            .await
    }

    /// Ask the backend whether this is still the leader. `false` also
    /// resolves [`Leadership::lost`].
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub async fn is_leader(&self) -> Result<bool> {
        let loss = self.grant.loss();
        if loss.is_lost() {
            return Ok(false);
        }
        let held = self.grant.handle(&self.name)?;
        let answer = self
            .grant
            .session()
            .inner
            .coordinator
            .bounded("is leader", held.is_leader())
            .await?;
        if !answer {
            loss.own.fire("the backend no longer has this leader");
        }
        Ok(answer && !loss.is_lost())
    }

    /// Resolves when leadership can no longer be trusted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) -> LossReason {
        self.grant.loss().lost().await
    }

    /// Whether the loss is already known (no round trip).
    pub fn is_lost(&self) -> bool {
        self.grant.loss().is_lost()
    }

    /// Give up leadership and wait for the backend to confirm; the next
    /// candidate is elected.
    ///
    /// # Errors
    ///
    /// The backend's error, or [`crate::ErrorKind::Unavailable`] when it
    /// does not answer within `connect_timeout`. The resignation is then
    /// not confirmed, and the session's background clean-up retries it
    /// until the backend confirms or the session ends.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future hands the resignation to the
    /// session's background clean-up, as dropping the guard does.
    pub async fn resign(self) -> Result<()> {
        self.grant.give_back().await
    }
}
