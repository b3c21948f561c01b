//! Group membership: join with capabilities, list, watch changes.

use std::sync::Arc;

use futures::stream::BoxStream;
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::grant::{GiveBack, Grant};
use crate::loss::{GuardLoss, LossReason};
use crate::name;
use crate::session::{ClaimKey, Session, WhileGivingBack};
use crate::spi::HeldMembership;
use crate::{GroupEvent, Member};

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
            .claim(
                ClaimKey::Member(self.name.clone(), member.to_owned()),
                WhileGivingBack::Refuse,
            )
            .await?
            .ok_or_else(|| Error::backend("a refusing claim returned no claim"))?;
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
        let held: Arc<dyn HeldMembership> = held.into();
        Ok(Membership {
            grant: Grant::new(&self.session, held, claim, loss, GiveBack::Leave)?,
            group: self.name.clone(),
            id: member.to_owned(),
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
    /// after it, with no gap and no duplicate (a member's `Left` always after
    /// its `Joined` or its place in the snapshot). A consumer that falls
    /// behind gets the changes coalesced per member; a broken watch is
    /// re-opened with back-off and the difference reported as events (see
    /// [`crate::watch`]). An invalid name, or a failure to open the first
    /// watch, is the stream's only item.
    pub fn watch(&self) -> BoxStream<'static, Result<GroupEvent>> {
        self.session.inner.coordinator.watch_group(&self.name)
    }
}

/// A membership in a group. Dropping it leaves in the background (the
/// session's clean-up retries until the backend confirms).
pub struct Membership {
    grant: Grant<Arc<dyn HeldMembership>>,
    group: String,
    id: String,
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
        if let Some(r) = self.grant.loss().reason() {
            return Err(Error::lost(format!(
                "membership `{}` is lost: {r}",
                self.id
            )));
        }
        let held = self.grant.handle(&self.id)?;
        self.grant
            .session()
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
        self.grant.loss().lost().await
    }

    /// Leave the group and wait for the backend to confirm.
    ///
    /// # Errors
    ///
    /// The backend's error, or [`crate::ErrorKind::Unavailable`] when it
    /// does not answer within `connect_timeout`. Leaving is then not
    /// confirmed, and the session's background clean-up retries it until
    /// the backend confirms or the session ends.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future hands the leave to the session's
    /// background clean-up, as dropping the guard does.
    pub async fn leave(self) -> Result<()> {
        self.grant.give_back().await
    }
}
