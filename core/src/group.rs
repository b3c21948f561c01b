//! Group membership: join with capabilities, list, watch changes.

use futures::stream::BoxStream;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::loss::{GuardLoss, LossReason};
use crate::name;
use crate::session::{Claim, ClaimKey, Session};
use crate::spi::{GroupEvent, HeldMembership, Member};

/// A named group of members, seen through a [`Session`].
#[derive(Debug, Clone)]
pub struct Group {
    session: Session,
    name: String,
}

impl Group {
    pub(crate) fn new(session: Session, name: &str) -> Self {
        Group {
            session,
            name: name.to_owned(),
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Join as `member` with `capabilities` (any JSON). The membership lasts
    /// until [`Membership::leave`], the guard is dropped, or the session
    /// ends.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped join leaves no member behind.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::AlreadyHeld`] if the member id is already in the
    /// group; [`crate::ErrorKind::InvalidName`]; the backend's error.
    pub async fn join(&self, member: &str, capabilities: serde_json::Value) -> Result<Membership> {
        name::validate("group", &self.name)?;
        name::validate("member", member)?;
        self.session.check_usable()?;
        let claim = self
            .session
            .claim(ClaimKey::Member(self.name.clone(), member.to_owned()))?;
        let loss = GuardLoss::new(&self.session.inner.loss);
        let span = tracing::debug_span!("join", group = %self.name, member);
        let held = self
            .session
            .wait_or_lost(self.session.inner.coordinator.bounded(
                "join",
                self.session.inner.backend.join(
                    &self.name,
                    member,
                    &capabilities,
                    loss.own.clone(),
                ),
            ))
            .instrument(span)
            .await?;
        Ok(Membership {
            held: Some(held.into()),
            group: self.name.clone(),
            id: member.to_owned(),
            loss,
            claim: Some(claim),
            session: self.session.clone(),
        })
    }

    /// The current members, sorted by id.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub async fn members(&self) -> Result<Vec<Member>> {
        self.session.inner.coordinator.members(&self.name).await
    }

    /// A stream of events: first [`GroupEvent::Snapshot`], then every change
    /// after it, with no gap and no duplicate.
    pub fn watch(&self) -> BoxStream<'static, Result<GroupEvent>> {
        self.session.inner.coordinator.watch_group(&self.name)
    }
}

/// A membership in a group. Dropping it leaves in the background.
pub struct Membership {
    held: Option<std::sync::Arc<dyn HeldMembership>>,
    group: String,
    id: String,
    loss: GuardLoss,
    claim: Option<Claim>,
    session: Session,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("group", &self.group)
            .field("id", &self.id)
            .finish()
    }
}

impl Membership {
    /// The member id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Replace the capabilities; watchers see an `Updated` event.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Lost`] when the membership is gone; the backend's
    /// error.
    pub async fn update(&self, capabilities: serde_json::Value) -> Result<()> {
        if let Some(r) = self.loss.reason() {
            return Err(Error::lost(format!(
                "membership `{}` is lost: {r}",
                self.id
            )));
        }
        let held = self.held.as_ref().expect("held until leave");
        self.session
            .inner
            .coordinator
            .bounded("update member", held.update(&capabilities))
            .await
    }

    /// Resolves when the membership is gone (session lost, removed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) -> LossReason {
        self.loss.lost().await
    }

    /// Leave the group and wait for the backend to confirm.
    ///
    /// # Errors
    ///
    /// The backend's error.
    pub async fn leave(mut self) -> Result<()> {
        self.loss.own.fire("left");
        let result = match self.held.take() {
            Some(h) => {
                self.session
                    .inner
                    .coordinator
                    .bounded("leave", h.leave())
                    .await
            }
            None => Ok(()),
        };
        drop(self.claim.take());
        result
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let (Some(held), Some(claim)) = (self.held.take(), self.claim.take()) {
            self.loss.own.fire("left");
            self.session
                .spawn_cleanup("leave dropped membership", claim, async move {
                    held.leave().await
                });
        }
    }
}
