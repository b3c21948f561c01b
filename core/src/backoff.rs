//! The one retry back-off of quorate: capped exponential, used by core's
//! background clean-up and by every backend loop that retries a request
//! (waits, watches, keep-alive attempts, clean-ups of dropped acquisitions).

use std::time::Duration;

/// A capped exponential back-off: each [`Backoff::wait`] sleeps the current
/// delay, then doubles it up to the cap; [`Backoff::reset`] starts over
/// after a success.
///
/// ```
/// # use std::time::Duration;
/// # use quorate_core::backoff::Backoff;
/// let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
/// assert_eq!(b.next_delay(), Duration::from_millis(10));
/// assert_eq!(b.next_delay(), Duration::from_millis(20));
/// assert_eq!(b.next_delay(), Duration::from_millis(35));
/// assert_eq!(b.next_delay(), Duration::from_millis(35));
/// b.reset();
/// assert_eq!(b.next_delay(), Duration::from_millis(10));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Default for Backoff {
    /// 20 ms doubling to 1 s: quick after a blip, at most one attempt a
    /// second against a server that is down.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(20), Duration::from_secs(1))
    }
}

impl Backoff {
    /// A back-off starting at `initial` and doubling up to `max` (at least
    /// `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The delay to wait now; the next one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }

    /// Sleep for [`Backoff::next_delay`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait only advances the delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Start over from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(20));
    }

    #[test]
    fn a_cap_below_the_start_is_the_start() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(10));
        assert_eq!(b.next_delay(), Duration::from_millis(50));
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }

    #[test]
    fn huge_delays_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        b.next_delay();
        assert_eq!(b.next_delay(), Duration::MAX);
    }
}
