//! The one watch view of quorate: how raw backend changes become the
//! user's [`GroupEvent`] and leader streams.
//!
//! Backends only *observe*: [`crate::spi::Backend::watch_group`] yields a
//! listing and raw [`GroupChange`]s (put / delete / resync), and
//! [`crate::spi::Backend::observe`] yields leader readings. Everything else
//! is here, once:
//!
//! - **The group view.** A [`GroupView`] keeps the members the watcher
//!   knows; a change becomes `Joined` / `Updated` / `Left` only relative to
//!   that view, so every member's `Joined` (or its presence in the
//!   `Snapshot`) precedes its `Left`, and each change is reported exactly
//!   once, whatever the backend repeats.
//! - **Leader de-duplication.** A [`LeaderView`] drops repeated readings and
//!   any leader whose fence is lower than one already seen: an observer
//!   never sees a lower fence after a higher one.
//! - **The channel and the slow-consumer policy.** One task per watch pulls
//!   the backend's raw stream at once (so the backend never buffers) and
//!   feeds a bounded channel of [`CHANNEL_CAPACITY`] events. Events the
//!   consumer has not taken yet wait in the view, in order, up to a limit;
//!   past it they are **coalesced**: replaced by the difference between
//!   what the consumer was told and the current members (one event per
//!   member that differs). An observer's pending readings coalesce to the
//!   latest. Memory is bounded by the group's size, never by time or by
//!   the number of changes.
//! - **Broken watches.** When the backend's raw stream yields an error or
//!   ends, the task logs it, waits with core's [`Backoff`], and opens a new
//!   raw watch; its listing is applied as a [`GroupChange::Resync`] (the
//!   consumer sees the difference as ordinary events), its first leader as
//!   one more reading. The user's stream never ends because a watch broke;
//!   only an error while *opening* the first watch is reported (as its only
//!   item). It ends when the consumer drops it.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::error::Result;
use crate::fence::FencingToken;
use crate::spi::{GroupChange, RawGroupWatch, RawObserve, SeenMember};
use crate::{GroupEvent, Leader, Member};

/// How many events the channel between a watch's task and its consumer
/// holds.
pub const CHANNEL_CAPACITY: usize = 64;

/// How many events may wait in a group view (beyond the channel) before
/// they are coalesced; a larger group may wait up to twice its size.
pub const PENDING_LIMIT: usize = 1024;

/// What the view knows of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    capabilities: serde_json::Value,
    incarnation: Option<i64>,
}

impl Known {
    fn of(seen: &SeenMember) -> Known {
        Known {
            capabilities: seen.member.capabilities.clone(),
            incarnation: seen.incarnation,
        }
    }
}

type Members = BTreeMap<String, Known>;

/// One step of a group view, as the consumer will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Joined(String, Known),
    Updated(String, Known),
    Left(String),
}

impl Step {
    fn event(&self) -> GroupEvent {
        let member = |id: &String, k: &Known| Member {
            id: id.clone(),
            capabilities: k.capabilities.clone(),
        };
        match self {
            Step::Joined(id, k) => GroupEvent::Joined {
                member: member(id, k),
            },
            Step::Updated(id, k) => GroupEvent::Updated {
                member: member(id, k),
            },
            Step::Left(id) => GroupEvent::Left { id: id.clone() },
        }
    }

    fn apply_to(&self, members: &mut Members) {
        match self {
            Step::Joined(id, k) | Step::Updated(id, k) => {
                members.insert(id.clone(), k.clone());
            }
            Step::Left(id) => {
                members.remove(id);
            }
        }
    }
}

/// The steps that take one member from `before` to `now`.
fn steps(id: &str, before: Option<&Known>, now: Option<&Known>, out: &mut Vec<Step>) {
    match (before, now) {
        (None, None) => {}
        (Some(_), None) => out.push(Step::Left(id.to_owned())),
        (None, Some(n)) => out.push(Step::Joined(id.to_owned(), n.clone())),
        (Some(b), Some(n))
            if b.incarnation.is_some()
                && n.incarnation.is_some()
                && b.incarnation != n.incarnation =>
        {
            out.push(Step::Left(id.to_owned()));
            out.push(Step::Joined(id.to_owned(), n.clone()));
        }
        (Some(b), Some(n)) if b.capabilities != n.capabilities => {
            out.push(Step::Updated(id.to_owned(), n.clone()));
        }
        (Some(_), Some(_)) => {}
    }
}

/// The steps that turn `old` into `new`: members that left (or came back as
/// a new incarnation) first, then members that joined or changed, by id.
fn diff(old: &Members, new: &Members) -> Vec<Step> {
    let mut out = Vec::new();
    for (id, b) in old {
        if !new.contains_key(id) {
            steps(id, Some(b), None, &mut out);
        }
    }
    for (id, n) in new {
        steps(id, old.get(id), Some(n), &mut out);
    }
    out
}

/// A watcher's view of a group: what the consumer has been told, what the
/// backend reports now, and the steps between the two.
///
/// Invariant: applying `pending` in order to `told` gives `current`.
#[derive(Debug, Default)]
pub struct GroupView {
    told: Members,
    current: Members,
    pending: VecDeque<Step>,
    coalesced: u64,
}

impl GroupView {
    /// A view that starts from `snapshot`; returns it with the
    /// [`GroupEvent::Snapshot`] to send first.
    pub fn new(snapshot: &[SeenMember]) -> (GroupView, GroupEvent) {
        let members: Members = snapshot
            .iter()
            .map(|s| (s.member.id.clone(), Known::of(s)))
            .collect();
        let event = GroupEvent::Snapshot {
            members: members
                .iter()
                .map(|(id, k)| Member {
                    id: id.clone(),
                    capabilities: k.capabilities.clone(),
                })
                .collect(),
        };
        (
            GroupView {
                told: members.clone(),
                current: members,
                pending: VecDeque::new(),
                coalesced: 0,
            },
            event,
        )
    }

    /// Apply a raw change; the events it makes wait in the view until
    /// [`GroupView::next_event`] takes them.
    pub fn apply(&mut self, change: GroupChange) {
        let mut out = Vec::new();
        match change {
            GroupChange::Put(seen) => {
                let id = seen.member.id.clone();
                let now = Known::of(&seen);
                steps(&id, self.current.get(&id), Some(&now), &mut out);
            }
            GroupChange::Delete { id } => {
                steps(&id, self.current.get(&id), None, &mut out);
            }
            GroupChange::Resync(all) => {
                let now: Members = all
                    .iter()
                    .map(|s| (s.member.id.clone(), Known::of(s)))
                    .collect();
                out = diff(&self.current, &now);
            }
        }
        for step in out {
            step.apply_to(&mut self.current);
            self.pending.push_back(step);
        }
        let limit = PENDING_LIMIT.max(2 * self.current.len().max(self.told.len()));
        if self.pending.len() > limit {
            self.pending = diff(&self.told, &self.current).into();
            self.coalesced += 1;
            tracing::debug!(
                pending = self.pending.len(),
                "group watcher is slow: its pending events were coalesced"
            );
        }
    }

    /// Whether an event waits.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Take the next event for the consumer (it then counts as told).
    pub fn next_event(&mut self) -> Option<GroupEvent> {
        let step = self.pending.pop_front()?;
        step.apply_to(&mut self.told);
        Some(step.event())
    }

    /// The members the backend reports now, sorted by id.
    pub fn members(&self) -> Vec<Member> {
        self.current
            .iter()
            .map(|(id, k)| Member {
                id: id.clone(),
                capabilities: k.capabilities.clone(),
            })
            .collect()
    }

    /// How many times pending events were coalesced.
    pub fn coalesced(&self) -> u64 {
        self.coalesced
    }
}

/// An observer's view of an election's leader.
#[derive(Debug)]
pub struct LeaderView {
    told: Option<Leader>,
    current: Option<Leader>,
    highest: Option<FencingToken>,
    stale_dropped: u64,
}

impl LeaderView {
    /// A view that starts from `leader`, which is sent first.
    pub fn new(leader: Option<Leader>) -> LeaderView {
        LeaderView {
            highest: leader.as_ref().map(|l| l.fence),
            told: leader.clone(),
            current: leader,
            stale_dropped: 0,
        }
    }

    /// Apply a reading: a leader with a lower fence than one already seen
    /// is dropped (logged); otherwise it becomes the current leader, and
    /// replaces any reading the consumer has not taken yet.
    pub fn apply(&mut self, reading: Option<Leader>) {
        if let Some(l) = &reading {
            if let Some(high) = self.highest {
                if l.fence < high {
                    self.stale_dropped += 1;
                    tracing::warn!(
                        fence = %l.fence,
                        highest = %high,
                        "observer: dropping a leader with a lower fence than one already seen"
                    );
                    return;
                }
            }
            self.highest = Some(l.fence);
        }
        self.current = reading;
    }

    /// Whether a change waits.
    pub fn has_pending(&self) -> bool {
        self.told != self.current
    }

    /// Take the current leader if the consumer was not told it yet.
    pub fn next_event(&mut self) -> Option<Option<Leader>> {
        if !self.has_pending() {
            return None;
        }
        self.told = self.current.clone();
        Some(self.current.clone())
    }

    /// How many stale readings were dropped.
    pub fn stale_dropped(&self) -> u64 {
        self.stale_dropped
    }
}

/// What the watch task drives: a view fed by raw streams.
trait View: Send + 'static {
    type Raw: Send + 'static;
    type Event: Send + 'static;
    /// A view from a freshly opened raw watch; its first event and stream.
    fn start(raw: Self::Raw) -> (Self, Self::Event, BoxStream<'static, Result<Self::Change>>)
    where
        Self: Sized;
    type Change: Send + 'static;
    fn apply(&mut self, change: Self::Change);
    /// A re-opened raw watch: apply its listing; its stream.
    fn reopen(&mut self, raw: Self::Raw) -> BoxStream<'static, Result<Self::Change>>;
    fn has_pending(&self) -> bool;
    fn next_event(&mut self) -> Option<Self::Event>;
}

impl View for GroupView {
    type Raw = RawGroupWatch;
    type Event = GroupEvent;
    type Change = GroupChange;
    fn start(raw: RawGroupWatch) -> (Self, GroupEvent, BoxStream<'static, Result<GroupChange>>) {
        let (view, first) = GroupView::new(&raw.snapshot);
        (view, first, raw.changes)
    }
    fn apply(&mut self, change: GroupChange) {
        GroupView::apply(self, change);
    }
    fn reopen(&mut self, raw: RawGroupWatch) -> BoxStream<'static, Result<GroupChange>> {
        GroupView::apply(self, GroupChange::Resync(raw.snapshot));
        raw.changes
    }
    fn has_pending(&self) -> bool {
        GroupView::has_pending(self)
    }
    fn next_event(&mut self) -> Option<GroupEvent> {
        GroupView::next_event(self)
    }
}

impl View for LeaderView {
    type Raw = RawObserve;
    type Event = Option<Leader>;
    type Change = Option<Leader>;
    fn start(
        raw: RawObserve,
    ) -> (
        Self,
        Option<Leader>,
        BoxStream<'static, Result<Option<Leader>>>,
    ) {
        (LeaderView::new(raw.leader.clone()), raw.leader, raw.changes)
    }
    fn apply(&mut self, change: Option<Leader>) {
        LeaderView::apply(self, change);
    }
    fn reopen(&mut self, raw: RawObserve) -> BoxStream<'static, Result<Option<Leader>>> {
        LeaderView::apply(self, raw.leader);
        raw.changes
    }
    fn has_pending(&self) -> bool {
        LeaderView::has_pending(self)
    }
    fn next_event(&mut self) -> Option<Option<Leader>> {
        LeaderView::next_event(self)
    }
}

/// The raw change stream of a backend's follower: `next` takes the
/// follower's state, waits for what changed, and hands the state back with
/// the changes (none, one, or a batch: anything iterable). The stream yields
/// each change and never ends by itself; the backend's follower decides
/// what to do about a broken watch (re-list, resume), and core's watch task
/// re-opens it when the stream yields an error. The one shape of every
/// backend's `watch_group` and `observe` change stream.
pub fn raw_changes<S, C, F, Fut>(state: S, mut next: F) -> BoxStream<'static, Result<C::Item>>
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: Future<Output = (C, S)> + Send + 'static,
    C: IntoIterator + Send + 'static,
    C::IntoIter: Send + 'static,
    C::Item: Send + 'static,
{
    futures::stream::unfold(state, move |s| {
        let step = next(s);
        async move {
            let (changes, s) = step.await;
            Some((changes, s))
        }
    })
    .flat_map(|changes| futures::stream::iter(changes.into_iter().map(Ok)))
    .boxed()
}

/// The user's group event stream over raw watches opened by `open`.
pub(crate) fn group_events<F, Fut>(what: String, open: F) -> BoxStream<'static, Result<GroupEvent>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<RawGroupWatch>> + Send + 'static,
{
    run::<GroupView, F, Fut>(what, open)
}

/// The user's leader stream over raw observations opened by `open`.
pub(crate) fn leader_events<F, Fut>(
    what: String,
    open: F,
) -> BoxStream<'static, Result<Option<Leader>>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<RawObserve>> + Send + 'static,
{
    run::<LeaderView, F, Fut>(what, open)
}

/// Start the watch task on the stream's first poll (so no runtime is needed
/// to create the stream) and hand out the receiving end of its channel.
fn run<V, F, Fut>(what: String, open: F) -> BoxStream<'static, Result<V::Event>>
where
    V: View,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V::Raw>> + Send + 'static,
{
    futures::stream::once(async move {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(pump::<V, F, Fut>(what, open, tx));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
    })
    .flatten()
    .boxed()
}

/// The watch task: open, then pull raw changes into the view and push the
/// view's events into the channel as room allows; re-open a broken watch
/// with back-off. Ends when the consumer drops the stream.
async fn pump<V, F, Fut>(what: String, mut open: F, tx: mpsc::Sender<Result<V::Event>>)
where
    V: View,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V::Raw>> + Send + 'static,
{
    let raw = tokio::select! {
        () = tx.closed() => return,
        r = open() => r,
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let (mut view, first, mut changes) = V::start(raw);
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            biased;
            () = tx.closed() => return,
            permit = tx.reserve(), if view.has_pending() => {
                let Ok(permit) = permit else { return };
                if let Some(event) = view.next_event() {
                    permit.send(Ok(event));
                }
            }
            item = changes.next() => match item {
                Some(Ok(change)) => {
                    backoff.reset();
                    view.apply(change);
                }
                broken => {
                    match broken {
                        Some(Err(e)) => tracing::warn!(watch = %what, error = %e, "watch broke; re-opening with a new listing"),
                        _ => tracing::warn!(watch = %what, "watch ended; re-opening with a new listing"),
                    }
                    loop {
                        tokio::select! {
                            () = tx.closed() => return,
                            () = backoff.wait() => {}
                        }
                        let reopened = tokio::select! {
                            () = tx.closed() => return,
                            r = open() => r,
                        };
                        match reopened {
                            Ok(raw) => {
                                tracing::debug!(watch = %what, "watch re-opened; resynchronised");
                                changes = view.reopen(raw);
                                break;
                            }
                            Err(e) => tracing::debug!(watch = %what, error = %e, "re-opening the watch failed"),
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, caps: i64, inc: Option<i64>) -> SeenMember {
        SeenMember {
            member: Member {
                id: id.into(),
                capabilities: serde_json::json!(caps),
            },
            incarnation: inc,
        }
    }

    fn drain(view: &mut GroupView) -> Vec<GroupEvent> {
        std::iter::from_fn(|| view.next_event()).collect()
    }

    fn left(id: &str) -> GroupEvent {
        GroupEvent::Left { id: id.into() }
    }

    fn joined(id: &str, caps: i64) -> GroupEvent {
        GroupEvent::Joined {
            member: seen(id, caps, None).member,
        }
    }

    #[test]
    fn repeats_and_unknown_deletes_make_no_event() {
        let (mut v, first) = GroupView::new(&[seen("a", 1, None)]);
        assert_eq!(
            first,
            GroupEvent::Snapshot {
                members: vec![seen("a", 1, None).member]
            }
        );
        v.apply(GroupChange::Put(seen("a", 1, None)));
        v.apply(GroupChange::Delete { id: "zz".into() });
        assert_eq!(drain(&mut v), vec![]);
        v.apply(GroupChange::Delete { id: "a".into() });
        v.apply(GroupChange::Delete { id: "a".into() });
        v.apply(GroupChange::Put(seen("b", 1, None)));
        v.apply(GroupChange::Put(seen("b", 2, None)));
        assert_eq!(
            drain(&mut v),
            vec![
                left("a"),
                joined("b", 1),
                GroupEvent::Updated {
                    member: seen("b", 2, None).member
                }
            ]
        );
    }

    #[test]
    fn a_resync_is_reported_as_its_difference() {
        let (mut v, _) =
            GroupView::new(&[seen("a", 1, None), seen("b", 1, None), seen("c", 1, None)]);
        v.apply(GroupChange::Resync(vec![
            seen("a", 2, None),
            seen("c", 1, None),
            seen("d", 1, None),
        ]));
        assert_eq!(
            drain(&mut v),
            vec![
                left("b"),
                GroupEvent::Updated {
                    member: seen("a", 2, None).member
                },
                joined("d", 1),
            ]
        );
        v.apply(GroupChange::Resync(vec![
            seen("a", 2, None),
            seen("c", 1, None),
            seen("d", 1, None),
        ]));
        assert_eq!(drain(&mut v), vec![]);
    }

    #[test]
    fn a_new_incarnation_is_left_then_joined() {
        let (mut v, _) = GroupView::new(&[seen("a", 1, Some(5))]);
        v.apply(GroupChange::Resync(vec![seen("a", 1, Some(9))]));
        assert_eq!(drain(&mut v), vec![left("a"), joined("a", 1)]);
    }

    #[test]
    fn a_slow_consumer_gets_the_coalesced_difference() {
        let (mut v, _) = GroupView::new(&[seen("keep", 0, None), seen("goes", 0, None)]);
        v.apply(GroupChange::Delete { id: "goes".into() });
        assert_eq!(v.next_event(), Some(left("goes")));
        for i in 0..=PENDING_LIMIT as i64 {
            v.apply(GroupChange::Put(seen("flap", i, None)));
            v.apply(GroupChange::Delete { id: "flap".into() });
        }
        v.apply(GroupChange::Put(seen("new", 7, None)));
        assert!(v.coalesced() >= 1);
        let events = drain(&mut v);
        assert!(events.len() <= PENDING_LIMIT + 1, "{}", events.len());
        assert_eq!(events.last(), Some(&joined("new", 7)));
        let known = assert_consistent(&["keep", "goes"], &[left("goes")], &events);
        assert_eq!(known, ["keep", "new"].map(String::from).into());
    }

    /// Every `Left`/`Updated` is of a member the consumer knows; every
    /// `Joined` of one it does not.
    fn assert_consistent(
        snapshot: &[&str],
        before: &[GroupEvent],
        events: &[GroupEvent],
    ) -> std::collections::BTreeSet<String> {
        let mut known: std::collections::BTreeSet<String> =
            snapshot.iter().map(|s| s.to_string()).collect();
        for e in before.iter().chain(events) {
            match e {
                GroupEvent::Joined { member } => assert!(known.insert(member.id.clone()), "{e:?}"),
                GroupEvent::Updated { member } => assert!(known.contains(&member.id), "{e:?}"),
                GroupEvent::Left { id } => assert!(known.remove(id), "{e:?}"),
                GroupEvent::Snapshot { .. } => panic!("a second snapshot"),
            }
        }
        known
    }

    #[test]
    fn any_sequence_of_raw_changes_gives_a_consistent_stream() {
        // A deterministic walk through puts, deletes and resyncs of three
        // ids, taking events at varying moments.
        let ids = ["a", "b", "c"];
        let (mut v, _) = GroupView::new(&[seen("a", 0, Some(1))]);
        let mut all = Vec::new();
        let mut x: u64 = 7;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = ids[(x >> 33) as usize % 3];
            let inc = Some(((x >> 40) % 3) as i64);
            match (x >> 50) % 5 {
                0 | 1 => v.apply(GroupChange::Put(seen(id, ((x >> 20) % 2) as i64, inc))),
                2 | 3 => v.apply(GroupChange::Delete { id: id.into() }),
                _ => v.apply(GroupChange::Resync(
                    ids.iter()
                        .filter(|i| **i != id)
                        .map(|i| seen(i, 0, inc))
                        .collect(),
                )),
            }
            if (x >> 45) % 3 == 0 {
                all.extend(drain(&mut v));
            }
        }
        all.extend(drain(&mut v));
        let known = assert_consistent(&["a"], &[], &all);
        let now: std::collections::BTreeSet<String> =
            v.members().into_iter().map(|m| m.id).collect();
        assert_eq!(known, now, "the stream converges to the members");
    }

    fn leader(fence: u64, value: &str) -> Option<Leader> {
        Some(Leader {
            value: value.as_bytes().to_vec(),
            fence: FencingToken::new(fence).unwrap(),
        })
    }

    #[test]
    fn an_observer_never_sees_a_lower_fence_after_a_higher_one() {
        let mut v = LeaderView::new(leader(5, "a"));
        v.apply(leader(5, "a"));
        assert_eq!(v.next_event(), None);
        v.apply(leader(7, "b"));
        v.apply(leader(6, "stale"));
        assert_eq!(v.next_event(), Some(leader(7, "b")));
        assert_eq!(v.stale_dropped(), 1);
        v.apply(None);
        v.apply(leader(6, "stale"));
        assert_eq!(v.next_event(), Some(None));
        v.apply(leader(7, "b2"));
        v.apply(leader(8, "c"));
        // A slow observer gets the latest reading only.
        assert_eq!(v.next_event(), Some(leader(8, "c")));
        assert_eq!(v.next_event(), None);
    }
}
