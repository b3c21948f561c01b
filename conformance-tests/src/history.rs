//! The history checker: every grant and release recorded with times and
//! fencing tokens, and a fenced resource; the checker counts overlapping
//! holds, non-monotonic fences and stale writes the resource accepted.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// One hold of a lock by one client, as the client saw it.
#[derive(Debug, Clone)]
pub struct Hold {
    /// Who held it.
    pub client: String,
    /// The grant's fencing token.
    pub fence: u64,
    /// When the acquire call returned.
    pub start: Instant,
    /// When the client started releasing (or learnt it lost the lock);
    /// `None` while still held.
    pub end: Option<Instant>,
}

/// A write a holder sent to the protected resource.
#[derive(Debug, Clone)]
pub struct Write {
    /// Who wrote.
    pub client: String,
    /// The fencing token sent with the write.
    pub fence: u64,
    /// When the resource saw it.
    pub at: Instant,
    /// Whether the resource accepted it.
    pub accepted: bool,
}

/// A recorder shared by the clients of one case.
#[derive(Debug, Default)]
pub struct History {
    holds: Mutex<Vec<Hold>>,
    writes: Mutex<Vec<Write>>,
    max_fence_seen: Mutex<Option<u64>>,
}

/// What the checker found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    /// Pairs of holds whose intervals overlap (two holders at once).
    pub overlapping_holds: usize,
    /// Successive holds whose fence did not strictly increase.
    pub non_monotonic_fences: usize,
    /// Writes the resource accepted from a holder after a newer grant
    /// (higher fence) had started.
    pub stale_writes_accepted: usize,
    /// Writes the resource rejected (stale tokens caught by fencing).
    pub stale_writes_rejected: usize,
}

impl Violations {
    /// Whether mutual exclusion and fencing held.
    pub fn is_clean(&self) -> bool {
        self.overlapping_holds == 0
            && self.non_monotonic_fences == 0
            && self.stale_writes_accepted == 0
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `client` was granted the lock with `fence`; returns the
    /// hold's index for [`History::released`].
    pub fn acquired(&self, client: &str, fence: u64) -> usize {
        let mut holds = self.holds.lock().unwrap();
        holds.push(Hold {
            client: client.to_owned(),
            fence,
            start: Instant::now(),
            end: None,
        });
        holds.len() - 1
    }

    /// Record that the hold `index` ended (call *before* releasing).
    pub fn released(&self, index: usize) {
        self.released_at(index, Instant::now());
    }

    /// Record a grant that happened `at` (e.g. reported by the holder's
    /// process on the host's monotonic clock); returns the hold's index.
    pub fn acquired_at(&self, client: &str, fence: u64, at: Instant) -> usize {
        let mut holds = self.holds.lock().unwrap();
        holds.push(Hold {
            client: client.to_owned(),
            fence,
            start: at,
            end: None,
        });
        holds.len() - 1
    }

    /// Record that the hold `index` ended `at`.
    pub fn released_at(&self, index: usize, at: Instant) {
        self.holds.lock().unwrap()[index].end = Some(at);
    }

    /// The protected resource: accept a write unless its fence is lower
    /// than the highest fence already seen. Returns whether it accepted.
    pub fn write(&self, client: &str, fence: u64) -> bool {
        let mut max = self.max_fence_seen.lock().unwrap();
        let accepted = max.is_none_or(|m| fence >= m);
        if accepted {
            *max = Some(fence);
        }
        self.writes.lock().unwrap().push(Write {
            client: client.to_owned(),
            fence,
            at: Instant::now(),
            accepted,
        });
        accepted
    }

    /// All holds so far.
    pub fn holds(&self) -> Vec<Hold> {
        self.holds.lock().unwrap().clone()
    }

    /// The holds in grant order, and every pair of them that overlaps
    /// (indices, the earlier grant first), an open hold ending `now`.
    fn overlapping(&self, now: Instant) -> (Vec<Hold>, Vec<(usize, usize)>) {
        let mut holds = self.holds();
        holds.sort_by_key(|h| h.start);
        let mut pairs = Vec::new();
        for (i, a) in holds.iter().enumerate() {
            let a_end = a.end.unwrap_or(now);
            for (j, b) in holds.iter().enumerate().skip(i + 1) {
                if b.start < a_end {
                    pairs.push((i, j));
                }
            }
        }
        (holds, pairs)
    }

    /// The overlapping pairs of holds, described relative to `origin`
    /// (for a failure message): `client fence [start, end] ms` each.
    pub fn overlaps(&self, origin: Instant, limit: usize) -> Vec<String> {
        let now = Instant::now();
        let (holds, pairs) = self.overlapping(now);
        let ms = |t: Instant| ms_since(origin, t);
        let show = |h: &Hold| {
            format!(
                "{} fence {} [{:.1}, {:.1}] ms",
                h.client,
                h.fence,
                ms(h.start),
                ms(h.end.unwrap_or(now))
            )
        };
        pairs
            .iter()
            .take(limit)
            .map(|&(a, b)| format!("{} overlaps {}", show(&holds[a]), show(&holds[b])))
            .collect()
    }

    /// The first overlapping pair's span in ms since `origin`: from the
    /// later grant to the earlier hold's end. `None` without an overlap.
    pub fn first_overlap(&self, origin: Instant) -> Option<(f64, f64)> {
        let now = Instant::now();
        let (holds, pairs) = self.overlapping(now);
        let &(a, b) = pairs.first()?;
        let a_end = holds[a].end.unwrap_or(now);
        Some((ms_since(origin, holds[b].start), ms_since(origin, a_end)))
    }

    /// Check the history.
    pub fn check(&self) -> Violations {
        let (holds, pairs) = self.overlapping(Instant::now());
        let mut v = Violations {
            overlapping_holds: pairs.len(),
            ..Violations::default()
        };
        for pair in holds.windows(2) {
            if pair[1].fence <= pair[0].fence {
                v.non_monotonic_fences += 1;
            }
        }
        for w in self.writes.lock().unwrap().iter() {
            let newer_started = holds.iter().any(|h| h.fence > w.fence && h.start <= w.at);
            if !w.accepted {
                v.stale_writes_rejected += 1;
            } else if newer_started {
                v.stale_writes_accepted += 1;
            }
        }
        v
    }
}

/// `t` in ms since `origin` (negative before it).
fn ms_since(origin: Instant, t: Instant) -> f64 {
    if t >= origin {
        t.duration_since(origin).as_secs_f64() * 1000.0
    } else {
        -(origin.duration_since(t).as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn detects_overlap_and_bad_fences() {
        let h = History::new();
        let a = h.acquired("a", 5);
        let b = h.acquired("b", 5);
        h.released(a);
        h.released(b);
        let v = h.check();
        assert_eq!(v.overlapping_holds, 1);
        assert_eq!(v.non_monotonic_fences, 1);
        assert!(!v.is_clean());
    }

    #[test]
    fn first_overlap_spans_the_later_grant_to_the_earlier_end() {
        let origin = Instant::now();
        let h = History::new();
        let t = |ms: u64| origin + Duration::from_millis(ms);
        let a = h.acquired_at("a", 1, t(100));
        h.released_at(a, t(200));
        let b = h.acquired_at("b", 2, t(300));
        h.released_at(b, t(900));
        assert_eq!(h.first_overlap(origin), None);
        let c = h.acquired_at("c", 3, t(700));
        h.released_at(c, t(1000));
        let (from, to) = h.first_overlap(origin).expect("b and c overlap");
        assert!(
            (from - 700.0).abs() < 0.01 && (to - 900.0).abs() < 0.01,
            "{from} {to}"
        );
    }

    #[test]
    fn clean_sequential_history() {
        let h = History::new();
        for f in 1..=3 {
            let i = h.acquired("a", f);
            assert!(h.write("a", f));
            std::thread::sleep(Duration::from_millis(1));
            h.released(i);
        }
        assert!(h.check().is_clean());
    }

    #[test]
    fn fenced_resource_rejects_and_checker_counts_stale_accepts() {
        let h = History::new();
        let a = h.acquired("a", 1);
        h.released(a);
        let _b = h.acquired("b", 2);
        // The stale holder writes before the new one: accepted, but stale.
        assert!(h.write("a", 1));
        assert!(h.write("b", 2));
        // After the new holder's write, the stale one is rejected.
        assert!(!h.write("a", 1));
        let v = h.check();
        assert_eq!(v.stale_writes_accepted, 1);
        assert_eq!(v.stale_writes_rejected, 1);
    }
}
