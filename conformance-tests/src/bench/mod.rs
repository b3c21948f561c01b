//! Benchmarks: each scenario measures quorate and the backend's minimal raw
//! operations in the same process and run, and reports the ratio
//! quorate / raw. For latencies a ratio above 1 means quorate is slower; for
//! throughputs (`ops_per_s`) a ratio below 1 means quorate is slower.
//!
//! These are measurements, never assertions: nothing here fails a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use crate::outcome::percentile;

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
    let measured = scenarios(target, &raw, seconds).await;
    let closed = raw.close().await;
    let reports = measured?;
    closed?;
    Ok(reports)
}

async fn scenarios(
    target: &Target,
    raw: &Arc<dyn RawBaseline>,
    seconds: f64,
) -> quorate::Result<Vec<ScenarioReport>> {
    let target = target.fresh();
    let coord = target.connect().await?;
    let backend = coord.capabilities().backend.to_owned();
    let budget = Duration::from_secs_f64(seconds.max(0.2));
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
        tokio::time::sleep(Duration::from_millis(5)).await;
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
        });
    }
    session.close().await?;
    waiter.close().await?;
    Ok(out)
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
    }
}

/// The scenarios every [`run`] reports, in order.
pub const SCENARIOS: [&str; 4] = [
    "uncontended",
    "handoff",
    "throughput_one_lock",
    "throughput_many_locks",
];

/// Check that a run reported every scenario for `backend`, each with
/// samples and a finite, positive ratio. Speed is not judged.
///
/// # Errors
///
/// A message naming what is missing or malformed.
pub fn check_complete(reports: &[ScenarioReport], backend: &str) -> Result<(), String> {
    let names: Vec<&str> = reports.iter().map(|r| r.scenario).collect();
    if names != SCENARIOS {
        return Err(format!("scenarios {names:?}, expected {SCENARIOS:?}"));
    }
    for r in reports {
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
            _ => (String::new(), String::new()),
        };
        md.push_str(&format!(
            "| {} | {} | {q} | {raw} | {:.2} | {} |\n",
            r.backend, r.scenario, r.ratio, r.raw
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
