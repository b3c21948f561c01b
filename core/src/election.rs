//! Leader election: campaign, observe, resign, with fencing.

use futures::stream::BoxStream;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::fence::FencingToken;
use crate::loss::{GuardLoss, LossReason};
use crate::name;
use crate::session::{Claim, ClaimKey, Session};
use crate::spi::{HeldLeadership, Leader};

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
        let claim = self.session.claim(ClaimKey::Candidate(self.name.clone()))?;
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
        Ok(Leadership {
            held: Some(held.into()),
            name: self.name.clone(),
            fence,
            loss,
            claim: Some(claim),
            session: self.session.clone(),
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

    /// The current leader, then every change (never a stale leader after a
    /// newer one).
    pub fn observe(&self) -> BoxStream<'static, Result<Option<Leader>>> {
        self.session.inner.coordinator.observe(&self.name)
    }
}

/// Leadership of an election. Dropping it resigns in the background.
pub struct Leadership {
    held: Option<std::sync::Arc<dyn HeldLeadership>>,
    name: String,
    fence: FencingToken,
    loss: GuardLoss,
    claim: Option<Claim>,
    session: Session,
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
        if let Some(r) = self.loss.reason() {
            return Err(Error::lost(format!(
                "leadership of `{}` is lost: {r}",
                self.name
            )));
        }
        let held = self.held.as_ref().expect("held until resign");
        self.session
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
        if self.loss.is_lost() {
            return Ok(false);
        }
        let held = self.held.as_ref().expect("held until resign");
        let answer = self
            .session
            .inner
            .coordinator
            .bounded("is leader", held.is_leader())
            .await?;
        if !answer {
            self.loss.own.fire("the backend no longer has this leader");
        }
        Ok(answer && !self.loss.is_lost())
    }

    /// Resolves when leadership can no longer be trusted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) -> LossReason {
        self.loss.lost().await
    }

    /// Whether the loss is already known (no round trip).
    pub fn is_lost(&self) -> bool {
        self.loss.is_lost()
    }

    /// Give up leadership; the next candidate is elected.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub async fn resign(mut self) -> Result<()> {
        self.loss.own.fire("resigned");
        let result = match self.held.take() {
            Some(h) => {
                self.session
                    .inner
                    .coordinator
                    .bounded("resign", h.resign())
                    .await
            }
            None => Ok(()),
        };
        drop(self.claim.take());
        result
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let (Some(held), Some(claim)) = (self.held.take(), self.claim.take()) {
            self.loss.own.fire("resigned");
            self.session
                .spawn_cleanup("resign dropped leadership", claim, async move {
                    held.resign().await
                });
        }
    }
}
