//! The randomized nemesis, in the spirit of Jepsen and etcd's robustness
//! tests: holder processes (agents) loop lock → fenced write → release —
//! each round, at random, either the lock `nemesis` or, where the backend
//! has elections, leadership of the election `nemesis-leader` (campaign →
//! fenced write → resign; its own history: one leader at a time, fences
//! increasing per term) — while a nemesis injects random faults from what the target can break —
//! client SIGSTOP and SIGKILL, client partitions (a black-holing proxy per
//! agent, each in front of a different member where there are several),
//! member partitions, and the server faults of the target's controller
//! whose guarantee the backend declares (leader kill, where
//! `exclusive_across_failover` or `survives_failover` is; a server pause,
//! on a single server or where `exclusive_across_leader_stalls` is) — for
//! a set time. Then
//! everything is healed and every agent must complete a round again.
//!
//! The whole history is checked: grants and belief ends are reported by
//! the agents on the host's monotonic clock ([`crate::agent::mono_ns`]),
//! writes are judged by a [fenced register](crate::harness::fenced) in its
//! own server. Violations: two agents *believing* they hold the lock at
//! once (a belief ends when the agent releases or is told `lost()`),
//! fences not strictly increasing in grant order, a stale write the
//! register accepted, and an agent that cannot complete a round within
//! [`liveness_bound`] after the heal. A SIGSTOP is the one fault a lease
//! cannot survive: where the backend declares `exclusive_under_pause =
//! false`, a hold during which its agent was stopped counts as a belief only
//! until the stop (the agent could not act; fencing is what protects the
//! resource from it afterwards), and its writes with the old fence are
//! counted apart (`stale_writes_accepted_after_pause`, a figure: the
//! register accepts them until the newer holder has written). Where the
//! backend declares `exclusive_under_pause = true` nothing is excused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::agent::{mono_ns, Agent, AgentEvent};
use crate::harness::fenced::FencedRegister;
use crate::harness::{ProxyMode, TcpProxy};
use crate::history::History;
use crate::outcome::{CaseError, Figures};
use crate::target::{Fault, ServerFaults, Target};

/// The lock every agent contends for.
const NAME: &str = "nemesis";
/// The election every agent campaigns in (where the backend has elections).
const ELECTION: &str = "nemesis-leader";

/// What one round of an agent takes: the lock, or the leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// `lock nemesis` … `release`.
    Lock,
    /// `lead nemesis-leader` (campaign) … `release` (resign).
    Lead,
}

impl Round {
    /// The lock or election name, also the fenced register's name.
    fn name(self) -> &'static str {
        match self {
            Round::Lock => NAME,
            Round::Lead => ELECTION,
        }
    }

    /// The agent command that acquires it.
    fn command(self) -> &'static str {
        match self {
            Round::Lock => "lock",
            Round::Lead => "lead",
        }
    }
}

/// The lock's and the election's histories.
#[derive(Clone)]
struct Histories {
    lock: Arc<History>,
    lead: Arc<History>,
}

impl Histories {
    fn of(&self, round: Round) -> &History {
        match round {
            Round::Lock => &self.lock,
            Round::Lead => &self.lead,
        }
    }
}
/// How many holder processes.
const AGENTS: usize = 3;
/// Their session TTL.
const TTL: &str = "2s";
/// The environment variable with the nemesis duration in seconds (the
/// suite's short run; `quorate conformance --nemesis` sets it).
pub const SECS_ENV: &str = "QUORATE_NEMESIS_SECS";
/// The default duration of the suite's run.
pub const DEFAULT_SECS: u64 = 20;

/// How long the nemesis injects faults: `QUORATE_NEMESIS_SECS`, else
/// [`DEFAULT_SECS`].
pub fn duration() -> Duration {
    let secs = std::env::var(SECS_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs)
}

/// The longest an agent may take to complete a round after the heal: a
/// lost lease expiring, plus a generous bound.
pub fn liveness_bound(ttl: Duration) -> Duration {
    ttl * 3 + Duration::from_secs(20)
}

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// SIGSTOP one agent for a while.
    ClientPause,
    /// SIGKILL one agent (a new one takes its place).
    ClientKill,
    /// Black-hole one agent's connection for a while.
    ClientPartition,
    /// Hold the replies to one agent for a while (its requests still reach
    /// the server); they are delivered late, at the heal.
    ClientRepliesLost,
    /// Kill the leader / primary, restart it later.
    KillLeader,
    /// Stop the leader / primary / only server (SIGSTOP) for a while, then
    /// resume it.
    ServerPause,
    /// Cut a random member off from its peers (its client port up), heal
    /// later.
    MemberPartition,
}

impl Injected {
    fn figure(self) -> &'static str {
        match self {
            Injected::ClientPause => "faults_client_pause",
            Injected::ClientKill => "faults_client_kill",
            Injected::ClientPartition => "faults_client_partition",
            Injected::ClientRepliesLost => "faults_client_replies_lost",
            Injected::KillLeader => "faults_kill_leader",
            Injected::ServerPause => "faults_server_pause",
            Injected::MemberPartition => "faults_member_partition",
        }
    }
}

/// A fault for one agent's driver.
#[derive(Debug, Clone, Copy)]
enum ClientFault {
    Pause(Duration),
    Kill,
    /// The agent's proxy in `mode` for a while.
    Partition(Duration, ProxyMode),
}

/// The host's monotonic clock and `Instant`, tied together once.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    ns: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            ns: mono_ns(),
        }
    }

    /// `ns` in ms since the start (for traces).
    fn ms(&self, ns: u64) -> f64 {
        (ns as f64 - self.ns as f64) / 1e6
    }

    fn at(&self, ns: u64) -> Instant {
        if ns >= self.ns {
            self.instant + Duration::from_nanos(ns - self.ns)
        } else {
            self.instant - Duration::from_nanos(self.ns - ns)
        }
    }
}

/// What the drivers saw and did (agent events, client faults), in ms since
/// the start, kept for a violation's report: the events around the first
/// overlap tell a lost lease from a late release. Bounded: the oldest go.
#[derive(Clone, Default)]
struct Journal(Arc<std::sync::Mutex<std::collections::VecDeque<(f64, String)>>>);

impl Journal {
    /// How many entries are kept.
    const KEEP: usize = 20_000;

    fn note(&self, ms: f64, what: String) {
        let mut j = self.0.lock().unwrap();
        if j.len() == Self::KEEP {
            j.pop_front();
        }
        j.push_back((ms, what));
    }

    /// The entries from `from` to `to` ms in time order, in words; of
    /// more than `limit`, the `limit` nearest to `at` (the moment that
    /// matters: a window dense with events keeps its middle, not its start).
    fn between(&self, from: f64, to: f64, at: f64, limit: usize) -> Vec<String> {
        let mut seen: Vec<(f64, String)> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(ms, _)| (from..=to).contains(ms))
            .cloned()
            .collect();
        seen.sort_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()));
        seen.truncate(limit);
        seen.sort_by(|a, b| a.0.total_cmp(&b.0));
        seen.into_iter()
            .map(|(ms, what)| format!("{ms:.1} {what}"))
            .collect()
    }
}

/// Run the nemesis on `t` for `duration`; the figures, or a failure naming
/// the violations.
///
/// # Errors
///
/// [`CaseError::Fail`] on any violation or a liveness failure after the
/// heal; [`CaseError::Unverified`] when the harness cannot run it.
pub async fn run(t: &Target, duration: Duration) -> Result<Figures, CaseError> {
    let caps = crate::connect(t.url()).await?.capabilities();
    let ttl = quorate::config::parse_duration("ttl", TTL)?;
    let register = FencedRegister::start()
        .await
        .map_err(|e| CaseError::Unverified(format!("starting the fenced register: {e}")))?;
    let histories = Histories {
        lock: register.history(NAME),
        lead: register.history(ELECTION),
    };
    let mut kinds = vec![Round::Lock];
    if caps.primitives.election {
        kinds.push(Round::Lead);
    }
    let clock = Clock::now();
    let journal = Journal::default();
    let controller: Option<Arc<dyn ServerFaults>> = t.faults.clone();
    let upstream = match &controller {
        Some(c) => c.proxy_upstream().await,
        None => None,
    };
    let lease = !matches!(
        caps.failure_detection,
        quorate::FailureDetection::ProcessLifetime
    );

    let mut menu = vec![Injected::ClientPause, Injected::ClientKill];
    if lease && upstream.is_some() {
        menu.push(Injected::ClientPartition);
        menu.push(Injected::ClientRepliesLost);
    }
    // The nemesis checks safety (and liveness after the heal), so leader
    // kills are in the mix wherever a failover is declared not to make two
    // holders, whether or not holders keep their locks through it.
    if (caps.survives_failover || caps.exclusive_across_failover) && t.supports(Fault::KillLeader) {
        menu.push(Injected::KillLeader);
    }
    // A server pause on a single server is no failover: lease semantics
    // must hold. Where another server can take over it may be one the
    // stopped leader does not see, so it is in the mix wherever
    // exclusive_across_leader_stalls is declared.
    let stall_safe = caps.exclusive_across_leader_stalls || !t.supports(Fault::KillLeader);
    if lease && t.supports(Fault::ServerPause) && stall_safe {
        menu.push(Injected::ServerPause);
    }
    let members = controller
        .as_ref()
        .map(|c| c.member_clients())
        .unwrap_or_default();
    if lease && t.supports(Fault::MemberPartition) && !members.is_empty() {
        menu.push(Injected::MemberPartition);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut fault_txs = Vec::new();
    let mut drivers = Vec::new();
    for i in 0..AGENTS {
        // Agents reach the deployment through different members where it
        // has several.
        let upstream = members.get(i % members.len().max(1)).copied().or(upstream);
        let proxy = match (upstream, lease) {
            (Some(up), true) => Some(
                TcpProxy::start(up)
                    .await
                    .map_err(|e| CaseError::Unverified(format!("starting a proxy: {e}")))?,
            ),
            _ => None,
        };
        let url = match &proxy {
            Some(p) => t.through(p).url_with("ttl", TTL),
            None => t.url_with("ttl", TTL),
        };
        let (tx, rx) = mpsc::channel(4);
        fault_txs.push(tx);
        let driver = Driver {
            name: format!("agent-{i}"),
            url,
            proxy,
            agent: None,
            histories: histories.clone(),
            kinds: kinds.clone(),
            round: Round::Lock,
            register: register.addr().to_string(),
            clock,
            journal: journal.clone(),
            hold: None,
            excuse_pauses: !caps.exclusive_under_pause,
            pauses: Vec::new(),
            excused: 0,
            writes_after_pause: Vec::new(),
            rounds: 0,
        };
        drivers.push(tokio::spawn(driver.drive(rx, stop_rx.clone(), ttl)));
    }

    // The nemesis itself.
    let mut injected = Figures::new();
    let mut timeline = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let pause = Duration::from_millis(rand::rng().random_range(300..1500));
        tokio::time::sleep(pause).await;
        let fault = menu[rand::rng().random_range(0..menu.len())];
        *injected.entry(fault.figure().to_owned()).or_default() += 1.0;
        timeline.push(format!(
            "{:.0} ms {fault:?}",
            clock.instant.elapsed().as_secs_f64() * 1000.0
        ));
        let scale = || ttl.mul_f64(rand::rng().random_range(0.2..2.0));
        let client = |f: ClientFault| {
            let tx = &fault_txs[rand::rng().random_range(0..fault_txs.len())];
            // A driver still busy with a fault skips this one.
            let _ = tx.try_send(f);
        };
        match fault {
            Injected::ClientPause => client(ClientFault::Pause(scale())),
            Injected::ClientKill => client(ClientFault::Kill),
            Injected::ClientPartition => {
                client(ClientFault::Partition(scale(), ProxyMode::Blackhole))
            }
            Injected::ClientRepliesLost => {
                client(ClientFault::Partition(scale(), ProxyMode::RepliesLost))
            }
            Injected::KillLeader => {
                let c = controller
                    .as_ref()
                    .expect("the menu checked the controller");
                match c.kill_leader().await {
                    Ok(what) => tracing::info!(%what, "nemesis: killed"),
                    Err(e) => {
                        return Err(CaseError::Unverified(format!("killing the leader: {e}")))
                    }
                }
                let down = Duration::from_millis(rand::rng().random_range(500..3000));
                tokio::time::sleep(down).await;
                c.restart_killed()
                    .await
                    .map_err(|e| CaseError::Unverified(format!("restarting the leader: {e}")))?;
            }
            Injected::ServerPause => {
                let c = controller
                    .as_ref()
                    .expect("the menu checked the controller");
                let what = c
                    .pause_leader()
                    .await
                    .map_err(|e| CaseError::Unverified(format!("pausing the server: {e}")))?;
                let d = scale();
                timeline.push(format!("  {what} stopped for {} ms", d.as_millis()));
                tokio::time::sleep(d).await;
                c.resume_paused()
                    .await
                    .map_err(|e| CaseError::Unverified(format!("resuming the server: {e}")))?;
            }
            Injected::MemberPartition => {
                let c = controller
                    .as_ref()
                    .expect("the menu checked the controller");
                let i = rand::rng().random_range(0..members.len());
                let leader = c.leader_member().await.ok();
                c.isolate_member(i)
                    .await
                    .map_err(|e| CaseError::Unverified(format!("cutting member {i} off: {e}")))?;
                let d = scale();
                timeline.push(format!(
                    "  member {i} cut off for {} ms (leader was {leader:?})",
                    d.as_millis()
                ));
                tokio::time::sleep(d).await;
                c.heal_members()
                    .await
                    .map_err(|e| CaseError::Unverified(format!("healing members: {e}")))?;
            }
        }
    }
    // Heal: drivers finish their faults, then each must complete a round.
    stop_tx.send_replace(true);
    let mut f = injected;
    let mut heal_max_ms: f64 = 0.0;
    let mut rounds = 0u64;
    let mut excused = 0u64;
    let mut after_pause = Vec::new();
    let mut failures = Vec::new();
    for d in drivers {
        match d.await {
            Ok(Ok(r)) => {
                heal_max_ms = heal_max_ms.max(r.heal_round_ms);
                rounds += r.rounds;
                excused += r.excused;
                after_pause.extend(r.writes_after_pause);
            }
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("a driver panicked: {e}")),
        }
    }
    // A killed agent's session ends when its lease expires: wait for that
    // (a bounded wait), so the leak check judges only what should be gone.
    let keeper = crate::connect(t.url()).await?;
    let deadline = Instant::now() + ttl * 2 + Duration::from_secs(5);
    while Instant::now() < deadline && !keeper.leftovers().await?.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Writes of a holder stopped during its hold, accepted after a newer
    // grant: what a pause allows (the register accepts them until the newer
    // holder writes), counted apart where the backend declares it.
    let stale_after_pause = |round: Round| {
        let holds = histories.of(round).holds();
        after_pause
            .iter()
            .filter(|(r, fence, at)| {
                let at = clock.at(*at);
                *r == round && holds.iter().any(|h| h.fence > *fence && h.start <= at)
            })
            .count()
    };
    let mut v = histories.lock.check();
    v.stale_writes_accepted = v
        .stale_writes_accepted
        .saturating_sub(stale_after_pause(Round::Lock));
    let mut vl = histories.lead.check();
    vl.stale_writes_accepted = vl
        .stale_writes_accepted
        .saturating_sub(stale_after_pause(Round::Lead));
    let stale_after_pause = stale_after_pause(Round::Lock) + stale_after_pause(Round::Lead);
    let history = &histories.lock;
    f.insert(
        "stale_writes_accepted_after_pause".into(),
        stale_after_pause as f64,
    );
    f.insert("duration_s".into(), duration.as_secs_f64());
    f.insert("agents".into(), AGENTS as f64);
    f.insert("grants".into(), history.holds().len() as f64);
    f.insert("rounds_completed".into(), rounds as f64);
    f.insert("overlapping_beliefs".into(), v.overlapping_holds as f64);
    f.insert("non_monotonic_fences".into(), v.non_monotonic_fences as f64);
    f.insert(
        "stale_writes_accepted".into(),
        v.stale_writes_accepted as f64,
    );
    f.insert(
        "stale_writes_rejected".into(),
        v.stale_writes_rejected as f64,
    );
    f.insert("paused_beliefs_excused".into(), excused as f64);
    if kinds.contains(&Round::Lead) {
        f.insert("leader_terms".into(), histories.lead.holds().len() as f64);
        f.insert("overlapping_leaders".into(), vl.overlapping_holds as f64);
        f.insert(
            "non_monotonic_leader_fences".into(),
            vl.non_monotonic_fences as f64,
        );
        f.insert(
            "stale_leader_writes_accepted".into(),
            vl.stale_writes_accepted as f64,
        );
    }
    f.insert("heal_round_max_ms".into(), heal_max_ms);
    if !failures.is_empty() {
        return Err(CaseError::Fail(format!(
            "after the heal: {}; figures: {f:?}",
            failures.join("; ")
        )));
    }
    // What the drivers read around the first overlap (agent events carry
    // the agent's own `at_ns`; the entry's time is when it was read).
    let around = |h: &History| match h.first_overlap(clock.instant) {
        Some((from, to)) => journal
            .between(from - 1000.0, to + 500.0, from, 80)
            .join(", "),
        None => "none".to_owned(),
    };
    if !v.is_clean() {
        return Err(CaseError::Fail(format!(
            "violations under random faults: {v:?}; first overlaps: {}; faults: {}; figures: {f:?}; events around the first overlap: {}",
            history.overlaps(clock.instant, 5).join("; "),
            timeline.join(", "),
            around(history)
        )));
    }
    if !vl.is_clean() {
        return Err(CaseError::Fail(format!(
            "election violations under random faults (two leaders at once, or leadership fences not increasing): {vl:?}; first overlaps: {}; faults: {}; figures: {f:?}; events around the first overlap: {}",
            histories.lead.overlaps(clock.instant, 5).join("; "),
            timeline.join(", "),
            around(&histories.lead)
        )));
    }
    if history.holds().is_empty() {
        return Err(CaseError::Fail("no agent was ever granted the lock".into()));
    }
    Ok(f)
}

/// What a driver reports at the end.
struct DriverReport {
    rounds: u64,
    excused: u64,
    writes_after_pause: Vec<(Round, u64, u64)>,
    heal_round_ms: f64,
}

/// The protocol state of one agent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Idle,
    Waiting,
    Writing,
    Holding(tokio::time::Instant),
    Releasing,
}

struct Driver {
    name: String,
    url: String,
    proxy: Option<TcpProxy>,
    agent: Option<Agent>,
    histories: Histories,
    /// The kinds of round to pick from.
    kinds: Vec<Round>,
    /// The kind of the current round.
    round: Round,
    register: String,
    clock: Clock,
    journal: Journal,
    /// The open hold: its kind, history index and start.
    hold: Option<(Round, usize, u64)>,
    /// Whether a hold spanning a SIGSTOP ends, as a belief, at the stop
    /// (the backend declares it does not survive pauses).
    excuse_pauses: bool,
    /// The SIGSTOP windows of the current agent (host monotonic ns),
    /// judged against the grant times the agent reports — the driver may
    /// read a grant only after a pause that began after it.
    pauses: Vec<(u64, u64)>,
    excused: u64,
    /// Writes with the fence of a hold during which the agent was stopped,
    /// accepted after a newer grant: `(round, fence, at)`.
    writes_after_pause: Vec<(Round, u64, u64)>,
    rounds: u64,
}

impl Driver {
    async fn drive(
        mut self,
        mut faults: mpsc::Receiver<ClientFault>,
        mut stop: watch::Receiver<bool>,
        ttl: Duration,
    ) -> Result<DriverReport, String> {
        let mut state = State::Idle;
        let mut healed: Option<(Instant, u64)> = None;
        loop {
            if healed.is_none() && *stop.borrow() {
                healed = Some((Instant::now(), self.rounds));
            }
            if let Some((at, rounds)) = healed {
                if self.rounds > rounds && state == State::Idle {
                    let heal_round_ms = at.elapsed().as_secs_f64() * 1000.0;
                    if let Some(agent) = self.agent.take() {
                        let _ = agent.exit(Duration::from_secs(10)).await;
                    }
                    return Ok(DriverReport {
                        rounds: self.rounds,
                        excused: self.excused,
                        writes_after_pause: std::mem::take(&mut self.writes_after_pause),
                        heal_round_ms,
                    });
                }
                if at.elapsed() > liveness_bound(ttl) {
                    return Err(format!(
                        "{} completed no round within {:?} of the heal (state {state:?})",
                        self.name,
                        liveness_bound(ttl)
                    ));
                }
            }
            if self.agent.is_none() {
                match Agent::start(&self.url).await {
                    Ok((a, _)) => {
                        self.agent = Some(a);
                        self.pauses.clear();
                        state = State::Idle;
                    }
                    Err(e) => {
                        tracing::debug!(agent = %self.name, error = %e, "agent start failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let agent = self.agent.as_mut().expect("started above");
            if state == State::Idle {
                self.round = self.kinds[rand::rng().random_range(0..self.kinds.len())];
                let cmd = format!("{} {}", self.round.command(), self.round.name());
                if agent.send(&cmd).await.is_err() {
                    self.agent = None;
                    continue;
                }
                state = State::Waiting;
            }
            let hold_until = match state {
                State::Holding(t) => t,
                _ => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                ev = agent.next_event(Duration::from_secs(3600)) => match ev {
                    Ok(ev) => state = self.on_event(ev, state).await,
                    Err(_) => {
                        // The agent died (killed, or crashed): it believes nothing.
                        self.end_hold(mono_ns());
                        self.agent = None;
                        state = State::Idle;
                    }
                },
                () = tokio::time::sleep_until(hold_until) => {
                    let agent = self.agent.as_mut().expect("holding");
                    if agent.send("release").await.is_err() {
                        self.end_hold(mono_ns());
                        self.agent = None;
                        state = State::Idle;
                    } else {
                        state = State::Releasing;
                    }
                }
                Some(fault) = faults.recv(), if healed.is_none() => self.inject(fault).await,
                _ = stop.changed(), if healed.is_none() => {}
            }
        }
    }

    async fn on_event(&mut self, ev: AgentEvent, state: State) -> State {
        tracing::info!(agent = %self.name, event = ?ev, now_ms = self.clock.ms(mono_ns()), ?state, "nemesis: agent event");
        self.journal.note(
            self.clock.ms(mono_ns()),
            format!("{} read {ev:?}", self.name),
        );
        match ev {
            AgentEvent::Granted { fence, at_ns } => {
                let i = self.histories.of(self.round).acquired_at(
                    &self.name,
                    fence,
                    self.clock.at(at_ns),
                );
                self.hold = Some((self.round, i, at_ns));
                let value = format!("{}-{fence}", self.name);
                let cmd = format!("fenced {} {} {value}", self.register, self.round.name());
                match self.agent.as_mut().expect("running").send(&cmd).await {
                    Ok(()) => State::Writing,
                    Err(_) => State::Idle,
                }
            }
            AgentEvent::Fenced {
                fence,
                accepted,
                at_ns,
                ..
            } => {
                if accepted && self.excuse_pauses && self.first_stop_in_hold(at_ns).is_some() {
                    self.writes_after_pause.push((self.round, fence, at_ns));
                }
                let hold = Duration::from_millis(rand::rng().random_range(0..50));
                State::Holding(tokio::time::Instant::now() + hold)
            }
            AgentEvent::Lost { at_ns, .. } | AgentEvent::Releasing { at_ns } => {
                self.end_hold(at_ns);
                state
            }
            AgentEvent::Released { at_ns } => {
                self.end_hold(at_ns);
                self.rounds += 1;
                State::Idle
            }
            AgentEvent::ReleaseFailed { at_ns, message } => {
                // The holder stopped believing when it began releasing.
                tracing::debug!(agent = %self.name, %message, "release failed");
                self.end_hold(at_ns);
                State::Idle
            }
            AgentEvent::Error { message } => {
                tracing::debug!(agent = %self.name, %message, "agent error");
                if state == State::Releasing {
                    self.end_hold(mono_ns());
                }
                match state {
                    // A failed fenced write (the register is ours; should
                    // not happen) still lets the hold run its course.
                    State::Writing => State::Holding(tokio::time::Instant::now()),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        State::Idle
                    }
                }
            }
            other => {
                tracing::debug!(agent = %self.name, event = ?other, "unexpected agent event");
                state
            }
        }
    }

    /// An event a killed agent wrote before it died, read only after the
    /// kill: it updates the history, and nothing is sent back.
    fn on_unread_event(&mut self, ev: AgentEvent) {
        tracing::info!(agent = %self.name, event = ?ev, now_ms = self.clock.ms(mono_ns()), "nemesis: event of a killed agent");
        self.journal.note(
            self.clock.ms(mono_ns()),
            format!("{} (killed) read {ev:?}", self.name),
        );
        match ev {
            AgentEvent::Granted { fence, at_ns } => {
                let i = self.histories.of(self.round).acquired_at(
                    &self.name,
                    fence,
                    self.clock.at(at_ns),
                );
                self.hold = Some((self.round, i, at_ns));
            }
            AgentEvent::Lost { at_ns, .. }
            | AgentEvent::Releasing { at_ns }
            | AgentEvent::Released { at_ns }
            | AgentEvent::ReleaseFailed { at_ns, .. } => self.end_hold(at_ns),
            AgentEvent::Fenced {
                fence,
                accepted: true,
                at_ns,
                ..
            } if self.excuse_pauses && self.first_stop_in_hold(at_ns).is_some() => {
                self.writes_after_pause.push((self.round, fence, at_ns));
            }
            _ => {}
        }
    }

    /// End the open hold at `at_ns` — at the agent's first stop during
    /// it, where pauses are excused.
    fn end_hold(&mut self, at_ns: u64) {
        let stopped = self.first_stop_in_hold(at_ns);
        if let Some((round, i, _)) = self.hold.take() {
            let end = match stopped {
                Some(s) if self.excuse_pauses => {
                    self.excused += 1;
                    s
                }
                _ => at_ns,
            };
            self.histories.of(round).released_at(i, self.clock.at(end));
        }
    }

    /// The first SIGSTOP of the agent after the open hold's grant and
    /// before `before`.
    fn first_stop_in_hold(&self, before: u64) -> Option<u64> {
        let (_, _, start) = self.hold?;
        self.pauses
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s >= start && *s < before)
            .min()
    }

    async fn inject(&mut self, fault: ClientFault) {
        tracing::info!(agent = %self.name, ?fault, now_ms = self.clock.ms(mono_ns()), "nemesis: client fault");
        self.journal
            .note(self.clock.ms(mono_ns()), format!("{} {fault:?}", self.name));
        match fault {
            ClientFault::Pause(d) => {
                let Some(agent) = self.agent.as_ref() else {
                    return;
                };
                if agent.pause().await.is_err() {
                    // Not seen stopped in time: resume it, so it is not
                    // left stopped (and unrecorded) for good.
                    let _ = agent.signal(libc::SIGCONT);
                    return;
                }
                // Confirmed stopped: every event it stamped is earlier.
                let stopped = mono_ns();
                tokio::time::sleep(d).await;
                let _ = agent.signal(libc::SIGCONT);
                self.pauses.push((stopped, mono_ns()));
            }
            ClientFault::Kill => {
                if let Some(agent) = self.agent.take() {
                    // It believes nothing from the SIGKILL on: the lock is
                    // freed (process lifetime) only after it is dead. What
                    // it reported before dying and the driver had not read
                    // yet (a grant, a loss, a release) still counts.
                    let sent = mono_ns();
                    for ev in agent.kill_collect().await.unwrap_or_default() {
                        self.on_unread_event(ev);
                    }
                    self.end_hold(sent);
                }
            }
            ClientFault::Partition(d, mode) => {
                if let Some(p) = &self.proxy {
                    p.set_mode(mode);
                    tokio::time::sleep(d).await;
                    p.set_mode(ProxyMode::Pass);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_gives_a_window_in_time_order_and_forgets_the_oldest() {
        let j = Journal::default();
        j.note(30.0, "c".into());
        j.note(10.0, "a".into());
        j.note(20.0, "b".into());
        j.note(99.0, "late".into());
        assert_eq!(
            j.between(5.0, 30.0, 10.0, 10),
            ["10.0 a", "20.0 b", "30.0 c"]
        );
        // Over the limit, the entries nearest the moment stay.
        assert_eq!(j.between(5.0, 30.0, 10.0, 1), ["10.0 a"]);
        assert_eq!(j.between(5.0, 30.0, 28.0, 2), ["20.0 b", "30.0 c"]);
        for i in 0..Journal::KEEP {
            j.note(1000.0 + i as f64, "x".into());
        }
        assert!(j.between(0.0, 999.0, 0.0, 10).is_empty());
    }
}
