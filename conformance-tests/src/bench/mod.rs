//! Benchmarks: each scenario measures quorate and the backend's minimal raw
//! operations in the same process and run, and reports the ratio
//! quorate / raw. For latencies a ratio above 1 means quorate is slower; for
//! throughputs (`ops_per_s`) a ratio below 1 means quorate is slower.
//!
//! These are measurements, never assertions: nothing here fails a test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::outcome::percentile;

pub mod counters;
mod etcd;
mod file;
mod memory;
mod redis;
mod zookeeper;

pub use self::redis::RedisBaseline;
use crate::target::Target;
pub use etcd::EtcdBaseline;
pub use file::FileBaseline;
pub use memory::MemoryBaseline;
pub use zookeeper::ZooKeeperBaseline;

/// How long every hand-off, quorate's and each raw baseline's alike, lets
/// the waiter sit in its own task (or thread) before the write that wakes
/// it: in both, the figure includes waking a waiter that was idle, as a
/// real waiter is. (A baseline that polled the notification in the writing
/// task, right after its write, measured a warm path quorate never gets.)
pub(crate) const SETTLE: Duration = Duration::from_millis(5);

/// A raw baseline's waiter: a task awaiting the notification on its own,
/// aborted if the hand-off ends early (an error of the write).
pub(crate) struct Waiter(tokio::task::JoinHandle<quorate::Result<Instant>>);

impl Waiter {
    /// Start `wait` in a task of its own; it returns when it was notified.
    pub(crate) fn spawn<F>(wait: F) -> Waiter
    where
        F: std::future::Future<Output = quorate::Result<Instant>> + Send + 'static,
    {
        Waiter(tokio::spawn(wait))
    }

    /// When the waiter was notified.
    ///
    /// # Errors
    ///
    /// The waiter's own error, or `Backend` if its task panicked.
    pub(crate) async fn notified(mut self) -> quorate::Result<Instant> {
        (&mut self.0)
            .await
            .map_err(|e| quorate::Error::backend(format!("raw baseline waiter task: {e}")))?
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The minimal raw operations of a backend, done with its own client, that
/// quorate's figures are compared against.
#[async_trait]
pub trait RawBaseline: Send + Sync {
    /// What the raw operations are, in words (shown in the report).
    fn describe(&self) -> String;
    /// One uncontended raw acquire + release of `key` (e.g. etcd: a
    /// put-if-absent txn and a delete).
    async fn acquire_release(&self, key: &str) -> quorate::Result<()>;
    /// One raw hand-off: the time from a write by one client to its
    /// notification reaching another (or one raw write where the backend
    /// has no cheaper notification).
    async fn handoff(&self, key: &str) -> quorate::Result<Duration>;
    /// Remove whatever the baseline created on the backend. [`run`] calls
    /// it once at the end, after the scenarios (also when one failed).
    async fn close(&self) -> quorate::Result<()> {
        Ok(())
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `uncontended`, `handoff`, `throughput_one_lock`, `throughput_many_locks`.
    pub scenario: &'static str,
    /// The backend.
    pub backend: String,
    /// quorate's median latency (latency scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    /// quorate's 99th percentile latency (latency scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    /// quorate's throughput (throughput scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_s: Option<f64>,
    /// The raw baseline's median latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_p50_us: Option<f64>,
    /// The raw baseline's 99th percentile latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_p99_us: Option<f64>,
    /// The raw baseline's throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_ops_per_s: Option<f64>,
    /// quorate / raw (p50 for latencies, ops/s for throughputs).
    pub ratio: f64,
    /// Number of quorate samples (or operations).
    pub samples: usize,
    /// What the raw baseline does.
    pub raw: String,
    /// The named figures of the scenarios that are not a plain latency or
    /// throughput (`requests_per_op`, `held_10k`, `waiters_1000`), with
    /// their unit in the name.
    #[serde(flatten)]
    pub figures: BTreeMap<String, f64>,
    /// Per kind of server request (Redis command, etcd gRPC method,
    /// ZooKeeper counter), per operation, by measurement
    /// (`requests_per_op` only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub breakdown: BTreeMap<String, BTreeMap<String, f64>>,
}

/// What [`run_with`] measures, and how much.
#[derive(Debug, Clone)]
pub struct Options {
    /// About how long each latency or throughput scenario runs.
    pub seconds: f64,
    /// Locks one session acquires in `held_10k` (0 skips the scenario).
    pub held: usize,
    /// Waiters on one lock in `waiters_1000` (0 skips the scenario).
    pub waiters: usize,
    /// Operations counted in `requests_per_op` (uncontended pairs; a
    /// quarter of it in hand-offs).
    pub counted_ops: usize,
}

impl Options {
    /// Every scenario at its named size: 10 000 held locks, 1 000 waiters,
    /// 200 counted operations.
    pub fn new(seconds: f64) -> Options {
        Options {
            seconds,
            held: 10_000,
            waiters: 1_000,
            counted_ops: 200,
        }
    }
}

/// Tasks in the throughput scenarios.
pub const TASKS: usize = 8;

/// Run every scenario for about `seconds` each, then
/// [`RawBaseline::close`] the baseline.
///
/// # Errors
///
/// A backend error during a scenario or while closing the baseline.
pub async fn run(
    target: &Target,
    raw: Arc<dyn RawBaseline>,
    seconds: f64,
) -> quorate::Result<Vec<ScenarioReport>> {
    run_with(target, raw, &Options::new(seconds)).await
}

/// [`run`] with explicit [`Options`].
///
/// # Errors
///
/// A backend error during a scenario or while closing the baseline.
pub async fn run_with(
    target: &Target,
    raw: Arc<dyn RawBaseline>,
    options: &Options,
) -> quorate::Result<Vec<ScenarioReport>> {
    let measured = scenarios(target, &raw, options).await;
    let closed = raw.close().await;
    let reports = measured?;
    closed?;
    Ok(reports)
}

async fn scenarios(
    target: &Target,
    raw: &Arc<dyn RawBaseline>,
    options: &Options,
) -> quorate::Result<Vec<ScenarioReport>> {
    let target = target.fresh();
    let coord = target.connect().await?;
    let backend = coord.capabilities().backend.to_owned();
    let budget = Duration::from_secs_f64(options.seconds.max(0.2));
    let mut out = Vec::new();

    // Uncontended acquire + release.
    let session = coord.session().await?;
    let mut q = sample_for(budget, 10_000, || async {
        let t = Instant::now();
        session
            .mutex("bench-uncontended")
            .lock()
            .await?
            .release()
            .await?;
        Ok(t.elapsed())
    })
    .await?;
    let mut r = sample_for(budget, 10_000, || async {
        let t = Instant::now();
        raw.acquire_release("bench-raw-uncontended").await?;
        Ok(t.elapsed())
    })
    .await?;
    out.push(latency_report(
        "uncontended",
        &backend,
        &mut q,
        &mut r,
        raw.describe(),
    ));

    // Contended hand-off: release to the waiter's return.
    let waiter = coord.session().await?;
    let mut q = sample_for(budget, 500, || async {
        let held = session.mutex("bench-handoff").lock().await?;
        let w = waiter.clone();
        let pending = tokio::spawn(async move {
            let g = w.mutex("bench-handoff").lock().await;
            (g, Instant::now())
        });
        // Let the waiter enqueue and start waiting.
        tokio::time::sleep(SETTLE).await;
        let released = Instant::now();
        held.release().await?;
        let (g, granted) = pending.await.expect("waiter task");
        g?.release().await?;
        Ok(granted.saturating_duration_since(released))
    })
    .await?;
    let mut r = sample_for(budget, 500, || async {
        raw.handoff("bench-raw-handoff").await
    })
    .await?;
    out.push(latency_report(
        "handoff",
        &backend,
        &mut q,
        &mut r,
        raw.describe(),
    ));

    // Throughput with many tasks on one lock, and on one lock each.
    for (scenario, shared) in [
        ("throughput_one_lock", true),
        ("throughput_many_locks", false),
    ] {
        let (q_ops, q_n) = throughput(budget, |i| {
            let coord = coord.clone();
            async move {
                let s = coord.session().await?;
                let name = if shared {
                    "bench-tp".to_owned()
                } else {
                    format!("bench-tp-{i}")
                };
                Ok(move || {
                    let s = s.clone();
                    let name = name.clone();
                    async move { s.mutex(&name).lock().await?.release().await }
                })
            }
        })
        .await?;
        let (r_ops, _) = throughput(budget, |i| {
            let raw = raw.clone();
            async move {
                let key = if shared {
                    "bench-raw-tp".to_owned()
                } else {
                    format!("bench-raw-tp-{i}")
                };
                Ok(move || {
                    let raw = raw.clone();
                    let key = key.clone();
                    async move { raw.acquire_release(&key).await }
                })
            }
        })
        .await?;
        out.push(ScenarioReport {
            scenario,
            backend: backend.clone(),
            p50_us: None,
            p99_us: None,
            ops_per_s: Some(q_ops),
            raw_p50_us: None,
            raw_p99_us: None,
            raw_ops_per_s: Some(r_ops),
            ratio: q_ops / r_ops,
            samples: q_n,
            raw: format!("{} ({TASKS} tasks)", raw.describe()),
            figures: BTreeMap::new(),
            breakdown: BTreeMap::new(),
        });
    }
    let uncontended_p99 = out[0].p99_us.unwrap_or(1000.0);

    let source = readable_counters(target.url()).await;
    if let Some(source) = &source {
        out.push(
            requests_per_op(
                source,
                &backend,
                &session,
                &waiter,
                raw,
                options.counted_ops.max(4),
            )
            .await?,
        );
    }
    session.close().await?;
    waiter.close().await?;
    if options.held > 0 {
        out.push(held_many(&coord, &backend, source.as_ref(), options.held).await?);
    }
    if options.waiters > 0 {
        // Space the waiters' arrivals by twice the p99 of an uncontended
        // acquire + release (2 to 20 ms), so that each has enqueued before
        // the next starts: an inversion is then the backend's, not the
        // benchmark's.
        let spacing = Duration::from_secs_f64((2.0 * uncontended_p99 / 1e6).clamp(0.002, 0.02));
        out.push(many_waiters(&coord, &backend, options.waiters, spacing).await?);
    }
    Ok(out)
}

/// The server counters behind `url`, if it has any and they can be read
/// now; otherwise the scenarios that need them are left out (with a
/// warning), never failed.
async fn readable_counters(url: &str) -> Option<counters::CounterSource> {
    let source = match counters::CounterSource::for_url(url).await {
        Ok(s) => s?,
        Err(e) => {
            tracing::warn!(error = %e, "no server counters: requests_per_op left out");
            return None;
        }
    };
    match source.read().await {
        Ok(_) => Some(source),
        Err(e) => {
            tracing::warn!(error = %e, "server counters unreadable: requests_per_op left out");
            None
        }
    }
}

/// Server requests per uncontended acquire + release and per hand-off, for
/// quorate and the raw baseline, from the server's own counters.
async fn requests_per_op(
    source: &counters::CounterSource,
    backend: &str,
    session: &quorate::Session,
    waiter: &quorate::Session,
    raw: &Arc<dyn RawBaseline>,
    n: usize,
) -> quorate::Result<ScenarioReport> {
    let handoffs = (n / 4).max(2);
    let cost = source.read_cost().await?;
    let c0 = source.read().await?;
    for _ in 0..n {
        session
            .mutex("bench-counted")
            .lock()
            .await?
            .release()
            .await?;
    }
    let c1 = source.read().await?;
    for _ in 0..n {
        raw.acquire_release("bench-raw-counted").await?;
    }
    let c2 = source.read().await?;
    for _ in 0..handoffs {
        let held = session.mutex("bench-counted-handoff").lock().await?;
        let w = waiter.clone();
        let pending = tokio::spawn(async move { w.mutex("bench-counted-handoff").lock().await });
        tokio::time::sleep(SETTLE).await;
        held.release().await?;
        pending.await.expect("waiter task")?.release().await?;
    }
    let c3 = source.read().await?;
    for _ in 0..handoffs {
        raw.handoff("bench-raw-counted-handoff").await?;
    }
    let c4 = source.read().await?;
    let q = c1.since(&c0).minus(&cost).per(n as f64);
    let r = c2.since(&c1).minus(&cost).per(n as f64);
    let qh = c3.since(&c2).minus(&cost).per(handoffs as f64);
    let rh = c4.since(&c3).minus(&cost).per(handoffs as f64);
    let mut figures = BTreeMap::new();
    figures.insert("uncontended_requests".to_owned(), q.requests);
    figures.insert("raw_uncontended_requests".to_owned(), r.requests);
    figures.insert("handoff_cycle_requests".to_owned(), qh.requests);
    figures.insert(
        "handoff_extra_requests".to_owned(),
        qh.requests - 2.0 * q.requests,
    );
    figures.insert("raw_handoff_requests".to_owned(), rh.requests);
    for (prefix, c) in [
        ("", &q),
        ("raw_", &r),
        ("handoff_cycle_", &qh),
        ("raw_handoff_", &rh),
    ] {
        let what = if prefix.starts_with("handoff") || prefix == "raw_handoff_" {
            ""
        } else {
            "uncontended_"
        };
        if let Some(scripts) = c.scripts {
            figures.insert(format!("{prefix}{what}scripts"), scripts);
        }
        if let Some(us) = c.server_time_us() {
            figures.insert(format!("{prefix}{what}server_us"), us);
        }
    }
    let breakdown = [
        ("uncontended", q),
        ("raw_uncontended", r),
        ("handoff_cycle", qh),
        ("raw_handoff", rh),
    ]
    .into_iter()
    .map(|(k, c)| (k.to_owned(), c.by_kind))
    .collect();
    Ok(ScenarioReport {
        scenario: "requests_per_op",
        backend: backend.to_owned(),
        p50_us: None,
        p99_us: None,
        ops_per_s: None,
        raw_p50_us: None,
        raw_p99_us: None,
        raw_ops_per_s: None,
        ratio: figures["uncontended_requests"] / figures["raw_uncontended_requests"],
        samples: n,
        raw: format!(
            "server counters over {n} acquire+release pairs and {handoffs} hand-off cycles \
             (a hand-off cycle: holder acquire, waiter enqueues, holder release, waiter grant, \
             waiter release; extra = cycle - 2 x uncontended); raw hand-off: one raw hand-off"
        ),
        figures,
        breakdown,
    })
}

/// One session acquires `n` locks one after another, keeps them, and
/// releases them.
async fn held_many(
    coord: &quorate::Coordinator,
    backend: &str,
    source: Option<&counters::CounterSource>,
    n: usize,
) -> quorate::Result<ScenarioReport> {
    let mut figures = BTreeMap::new();
    let session = coord.session().await?;
    // The cost of one keep-alive with nothing held, for comparison.
    let (ka0, ka0_us) = keep_alive_cost(&session, source).await?;
    let rss0 = proc_status("VmRSS:").map(|kib| kib * 1024.0);
    let start = Instant::now();
    let mut guards = Vec::with_capacity(n);
    for i in 0..n {
        guards.push(session.mutex(&format!("bench-held-{i}")).lock().await?);
    }
    figures.insert(
        "acquire_total_ms".to_owned(),
        start.elapsed().as_secs_f64() * 1e3,
    );
    if let (Some(a), Some(b)) = (rss0, proc_status("VmRSS:").map(|kib| kib * 1024.0)) {
        figures.insert("rss_bytes_per_lock".to_owned(), (b - a) / n as f64);
    }
    let (ka, ka_us) = keep_alive_cost(&session, source).await?;
    // Core refreshes the session every third of its TTL.
    figures.insert("keepalive_client_us".to_owned(), ka_us);
    figures.insert("keepalive_client_us_0_locks".to_owned(), ka0_us);
    if let (Some(ka), Some(ka0)) = (ka, ka0) {
        figures.insert("keepalive_requests_per_ttl".to_owned(), 3.0 * ka.requests);
        figures.insert(
            "keepalive_requests_per_ttl_0_locks".to_owned(),
            3.0 * ka0.requests,
        );
        if let Some(scripts) = ka.scripts.filter(|s| *s > 0.0) {
            figures.insert("keepalive_scripts_per_ttl".to_owned(), 3.0 * scripts);
            // The longest the server is kept from serving anyone else by
            // one keep-alive script, on average.
            if let Some(us) = ka.server_time_us() {
                figures.insert("keepalive_server_us_per_script".to_owned(), us / scripts);
            }
        }
        if let (Some(us), Some(us0)) = (ka.server_time_us(), ka0.server_time_us()) {
            figures.insert("keepalive_server_us_per_ttl".to_owned(), 3.0 * us);
            figures.insert("keepalive_server_us_per_ttl_0_locks".to_owned(), 3.0 * us0);
        }
    }
    let start = Instant::now();
    for g in guards {
        g.release().await?;
    }
    figures.insert(
        "release_total_ms".to_owned(),
        start.elapsed().as_secs_f64() * 1e3,
    );
    session.close().await?;
    figures.insert("locks".to_owned(), n as f64);
    Ok(figure_report("held_10k", backend, n, figures,
        "one session acquires the locks one after another; rss from /proc/self/status; \
         keep-alive cost per TTL = 3 x one keep-alive (core refreshes every TTL/3), from server counters")
    )
}

/// One explicit keep-alive: the server counters it moved (if any) and its
/// client-side latency in microseconds.
async fn keep_alive_cost(
    session: &quorate::Session,
    source: Option<&counters::CounterSource>,
) -> quorate::Result<(Option<counters::ServerCounters>, f64)> {
    let before = match source {
        Some(s) => Some((s.read_cost().await?, s.read().await?)),
        None => None,
    };
    let t = Instant::now();
    session.keep_alive().await?;
    let us = t.elapsed().as_secs_f64() * 1e6;
    let delta = match (source, before) {
        (Some(s), Some((cost, b))) => Some(s.read().await?.since(&b).minus(&cost)),
        _ => None,
    };
    Ok((delta, us))
}

/// `waiters` sessions queue on one held lock, arriving `spacing` apart;
/// then the holder releases and each waiter releases as soon as it is
/// granted.
async fn many_waiters(
    coord: &quorate::Coordinator,
    backend: &str,
    waiters: usize,
    spacing: Duration,
) -> quorate::Result<ScenarioReport> {
    raise_open_files_limit();
    let name = "bench-waiters";
    let mut figures = BTreeMap::new();
    let holder = coord.session().await?;
    let held = holder.mutex(name).lock().await?;
    let rss0 = proc_status("VmRSS:").map(|kib| kib * 1024.0);
    let threads0 = proc_status("Threads:");
    let mut sessions = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        sessions.push(coord.session().await?);
    }
    let order = Arc::new(std::sync::Mutex::new(Vec::with_capacity(waiters)));
    let mut tasks = Vec::with_capacity(waiters);
    for (i, s) in sessions.iter().enumerate() {
        let s = s.clone();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let g = s.mutex(name).lock().await?;
            order.lock().unwrap().push(i);
            g.release().await
        }));
        tokio::time::sleep(spacing).await;
    }
    tokio::time::sleep(Duration::from_millis(200).max(spacing * 4)).await;
    let queue = queue_ranks(coord, name, &sessions).await;
    let threads = proc_status("Threads:");
    if let (Some(a), Some(b)) = (rss0, proc_status("VmRSS:").map(|kib| kib * 1024.0)) {
        figures.insert("rss_bytes_per_waiter".to_owned(), (b - a) / waiters as f64);
    }
    if let Some(t) = threads {
        figures.insert("threads".to_owned(), t);
    }
    if let Some(t) = threads0 {
        figures.insert("threads_before".to_owned(), t);
    }
    let start = Instant::now();
    held.release().await?;
    let mut failed = 0usize;
    for t in tasks {
        if t.await.expect("waiter task").is_err() {
            failed += 1;
        }
    }
    figures.insert("drain_ms".to_owned(), start.elapsed().as_secs_f64() * 1e3);
    let order = order.lock().unwrap().clone();
    // Against the order the waiters were started in, and against the
    // order of the backend's own queue as listed while they all waited
    // (a waiter whose enqueue took longer than the spacing is behind a
    // later one in the queue: an inversion of arrival, not of the queue).
    let arrival_inversions = inversions(order.iter().copied());
    figures.insert("arrival_inversions".to_owned(), arrival_inversions as f64);
    match &queue {
        Some(rank) => {
            figures.insert(
                "fifo_inversions".to_owned(),
                inversions(order.iter().map(|&i| rank[i])) as f64,
            );
            figures.insert("queue_listed".to_owned(), 1.0);
        }
        None => {
            figures.insert("fifo_inversions".to_owned(), arrival_inversions as f64);
            figures.insert("queue_listed".to_owned(), 0.0);
        }
    }
    figures.insert("failed_waiters".to_owned(), failed as f64);
    figures.insert("waiters".to_owned(), waiters as f64);
    figures.insert("arrival_spacing_us".to_owned(), spacing.as_secs_f64() * 1e6);
    futures::future::join_all(sessions.iter().map(|s| s.close())).await;
    holder.close().await?;
    Ok(figure_report(
        "waiters_1000",
        backend,
        waiters,
        figures,
        "one session per waiter, arriving arrival_spacing_us apart; threads and rss from \
         /proc/self/status; a FIFO inversion is a waiter granted after one behind it in the \
         backend's queue as `locks` listed it while all waited (queue_listed = 1; else after \
         one that arrived later, as arrival_inversions counts)",
    ))
}

/// Waiters granted after one with a later position (each position is
/// compared with the latest granted so far).
fn inversions(granted: impl Iterator<Item = usize>) -> usize {
    let mut count = 0;
    let mut latest = None;
    for i in granted {
        match latest {
            Some(m) if i < m => count += 1,
            _ => latest = Some(i),
        }
    }
    count
}

/// Each waiter's position in the backend's queue of `name`, as
/// `Coordinator::locks` lists it; `None` unless every waiter is listed
/// with its session (a backend that cannot list, or lists no sessions).
async fn queue_ranks(
    coord: &quorate::Coordinator,
    name: &str,
    sessions: &[quorate::Session],
) -> Option<Vec<usize>> {
    let states = coord.locks(name).await.ok()?;
    let state = states.into_iter().find(|s| s.name == name)?;
    let by_id: std::collections::HashMap<&str, usize> = sessions
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id(), i))
        .collect();
    let mut rank = vec![usize::MAX; sessions.len()];
    for (position, waiter) in state.waiters.iter().enumerate() {
        let i = *by_id.get(waiter.session.as_deref()?)?;
        rank[i] = position;
    }
    rank.iter().all(|r| *r != usize::MAX).then_some(rank)
}

fn figure_report(
    scenario: &'static str,
    backend: &str,
    samples: usize,
    figures: BTreeMap<String, f64>,
    raw: &str,
) -> ScenarioReport {
    ScenarioReport {
        scenario,
        backend: backend.to_owned(),
        p50_us: None,
        p99_us: None,
        ops_per_s: None,
        raw_p50_us: None,
        raw_p99_us: None,
        raw_ops_per_s: None,
        ratio: f64::NAN,
        samples,
        raw: raw.to_owned(),
        figures,
        breakdown: BTreeMap::new(),
    }
}

/// A numeric field of `/proc/self/status` (`VmRSS:` in KiB, `Threads:`).
fn proc_status(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Many waiters may each hold sockets or files: raise the soft limit of
/// open files to the hard one.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn sample_for<F, Fut>(budget: Duration, max: usize, mut f: F) -> quorate::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = quorate::Result<Duration>>,
{
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < max && (start.elapsed() < budget || samples.len() < 5) {
        samples.push(f().await?.as_secs_f64() * 1e6);
    }
    Ok(samples)
}

async fn throughput<Mk, MkFut, Op, OpFut>(
    budget: Duration,
    make: Mk,
) -> quorate::Result<(f64, usize)>
where
    Mk: Fn(usize) -> MkFut,
    MkFut: std::future::Future<Output = quorate::Result<Op>>,
    Op: Fn() -> OpFut + Send + 'static,
    OpFut: std::future::Future<Output = quorate::Result<()>> + Send,
{
    let mut ops = Vec::new();
    for i in 0..TASKS {
        ops.push(make(i).await?);
    }
    let start = Instant::now();
    let deadline = start + budget;
    let tasks: Vec<_> = ops
        .into_iter()
        .map(|op| {
            tokio::spawn(async move {
                let mut n = 0usize;
                while Instant::now() < deadline {
                    op().await?;
                    n += 1;
                }
                Ok::<_, quorate::Error>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("bench task")?;
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), total))
}

fn latency_report(
    scenario: &'static str,
    backend: &str,
    q: &mut [f64],
    r: &mut [f64],
    raw: String,
) -> ScenarioReport {
    let (qp50, qp99) = (percentile(q, 50.0), percentile(q, 99.0));
    let (rp50, rp99) = (percentile(r, 50.0), percentile(r, 99.0));
    ScenarioReport {
        scenario,
        backend: backend.to_owned(),
        p50_us: Some(qp50),
        p99_us: Some(qp99),
        ops_per_s: None,
        raw_p50_us: Some(rp50),
        raw_p99_us: Some(rp99),
        raw_ops_per_s: None,
        ratio: qp50 / rp50,
        samples: q.len(),
        raw,
        figures: BTreeMap::new(),
        breakdown: BTreeMap::new(),
    }
}

/// The scenarios every [`run`] reports, in order.
pub const SCENARIOS: [&str; 4] = [
    "uncontended",
    "handoff",
    "throughput_one_lock",
    "throughput_many_locks",
];

/// The scenarios a [`run_with`] may add after [`SCENARIOS`], in order:
/// `requests_per_op` where the server has counters, then `held_10k` and
/// `waiters_1000` unless skipped.
pub const EXTRA_SCENARIOS: [&str; 3] = ["requests_per_op", "held_10k", "waiters_1000"];

/// Check that a run reported every scenario for `backend`, each with
/// samples and a finite, positive ratio. Speed is not judged.
///
/// # Errors
///
/// A message naming what is missing or malformed.
pub fn check_complete(reports: &[ScenarioReport], backend: &str) -> Result<(), String> {
    let names: Vec<&str> = reports.iter().map(|r| r.scenario).collect();
    if names.len() < SCENARIOS.len() || names[..SCENARIOS.len()] != SCENARIOS {
        return Err(format!("scenarios {names:?}, expected {SCENARIOS:?} first"));
    }
    if let Some(extra) = names[SCENARIOS.len()..]
        .iter()
        .find(|n| !EXTRA_SCENARIOS.contains(n))
    {
        return Err(format!("unknown scenario {extra}"));
    }
    for r in &reports[SCENARIOS.len()..] {
        if r.figures.is_empty() || r.figures.values().any(|v| !v.is_finite()) {
            return Err(format!("{}: figures {:?}", r.scenario, r.figures));
        }
    }
    for r in &reports[..SCENARIOS.len()] {
        if r.backend != backend {
            return Err(format!(
                "{}: backend `{}`, expected `{backend}`",
                r.scenario, r.backend
            ));
        }
        if !(r.ratio.is_finite() && r.ratio > 0.0) {
            return Err(format!("{}: ratio {} ({r:?})", r.scenario, r.ratio));
        }
        if r.samples == 0 {
            return Err(format!("{}: no samples", r.scenario));
        }
    }
    Ok(())
}

/// A Markdown table of scenario reports.
pub fn to_markdown(reports: &[ScenarioReport]) -> String {
    let mut md = String::from(
        "| backend | scenario | quorate | raw | ratio (quorate/raw) | raw operations |\n|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let (q, raw) = match (r.p50_us, r.ops_per_s) {
            (Some(p50), _) => (
                format!(
                    "p50 {p50:.1} µs, p99 {:.1} µs",
                    r.p99_us.unwrap_or(f64::NAN)
                ),
                format!(
                    "p50 {:.1} µs, p99 {:.1} µs",
                    r.raw_p50_us.unwrap_or(f64::NAN),
                    r.raw_p99_us.unwrap_or(f64::NAN)
                ),
            ),
            (None, Some(ops)) => (
                format!("{ops:.0} ops/s"),
                format!("{:.0} ops/s", r.raw_ops_per_s.unwrap_or(f64::NAN)),
            ),
            _ => (
                r.figures
                    .iter()
                    .filter(|(k, _)| !k.starts_with("raw_"))
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.figures
                    .iter()
                    .filter(|(k, _)| k.starts_with("raw_"))
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        };
        let ratio = if r.ratio.is_finite() {
            format!("{:.2}", r.ratio)
        } else {
            "–".to_owned()
        };
        md.push_str(&format!(
            "| {} | {} | {q} | {raw} | {ratio} | {} |\n",
            r.backend, r.scenario, r.raw
        ));
    }
    md
}

/// The raw baseline for a URL's backend: its own client doing the minimal
/// operations, connected to the same servers.
///
/// # Errors
///
/// [`quorate::ErrorKind::Unsupported`] for a backend without a baseline
/// (no ratio can then be measured); connection errors.
pub async fn baseline_for(url: &str) -> quorate::Result<Arc<dyn RawBaseline>> {
    let config = quorate::Config::parse(url)?;
    match config.scheme.as_str() {
        "memory" => Ok(Arc::new(MemoryBaseline::default())),
        "redis" => Ok(Arc::new(RedisBaseline::connect(&config).await?)),
        "file" => Ok(Arc::new(FileBaseline::new(std::path::Path::new(
            &config.path,
        ))?)),
        "zookeeper" => Ok(Arc::new(ZooKeeperBaseline::connect(&config).await?)),
        "etcd" | "etcds" => Ok(Arc::new(EtcdBaseline::connect(&config).await?)),
        other => Err(quorate::Error::unsupported(format!(
            "no raw baseline for {other}:// yet, so no ratio can be measured"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(scenario: &'static str, ratio: f64) -> ScenarioReport {
        ScenarioReport {
            scenario,
            backend: "memory".into(),
            p50_us: None,
            p99_us: None,
            ops_per_s: Some(1.0),
            raw_p50_us: None,
            raw_p99_us: None,
            raw_ops_per_s: Some(1.0),
            ratio,
            samples: 1,
            raw: String::new(),
            figures: BTreeMap::new(),
            breakdown: BTreeMap::new(),
        }
    }

    #[test]
    fn check_complete_rejects_missing_scenarios_and_bad_ratios() {
        let good: Vec<_> = SCENARIOS.iter().map(|s| report(s, 1.0)).collect();
        assert!(check_complete(&good, "memory").is_ok());
        assert!(check_complete(&good[..3], "memory").is_err());
        assert!(check_complete(&good, "etcd").is_err());
        let mut bad = good.clone();
        bad[1].ratio = f64::NAN;
        assert!(check_complete(&bad, "memory").is_err());
        bad[1].ratio = 1.0;
        bad[2].samples = 0;
        assert!(check_complete(&bad, "memory").is_err());
    }
}
