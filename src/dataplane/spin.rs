//! The CPU bound of a worker's busy polling (pure): polling without sleeping after traffic saves the
//! wakeups that make up most of a userspace tunnel's added latency, but light steady traffic (a packet
//! every few tens of microseconds) would keep a worker spinning all the time. Spinning may use at most a
//! fixed share of each window; past it, the worker sleeps in poll until the next window.

use std::time::{Duration, Instant};

/// The window spinning time is counted over.
pub const WINDOW: Duration = Duration::from_millis(100);
/// The share of each window a worker may spend spinning (25 %: a quarter of a CPU per worker at most).
pub const BUDGET: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, Copy)]
pub struct SpinBudget {
    window_start: Instant,
    used: Duration,
}

impl SpinBudget {
    pub fn new(now: Instant) -> Self {
        SpinBudget {
            window_start: now,
            used: Duration::ZERO,
        }
    }

    /// How long the worker may spin from `now` on (zero: sleep).
    #[inline]
    pub fn allowance(&mut self, now: Instant) -> Duration {
        if now.duration_since(self.window_start) >= WINDOW {
            *self = SpinBudget::new(now);
        }
        BUDGET.saturating_sub(self.used)
    }

    /// Records `spent` of spinning.
    #[inline]
    pub fn spend(&mut self, spent: Duration) {
        self.used += spent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinning_is_bounded_per_window_and_renews() {
        let t0 = Instant::now();
        let mut b = SpinBudget::new(t0);
        assert_eq!(b.allowance(t0), BUDGET);
        b.spend(Duration::from_millis(20));
        assert_eq!(
            b.allowance(t0 + Duration::from_millis(30)),
            Duration::from_millis(5)
        );
        b.spend(Duration::from_millis(6));
        assert_eq!(b.allowance(t0 + Duration::from_millis(60)), Duration::ZERO);
        // The next window starts afresh.
        assert_eq!(b.allowance(t0 + WINDOW), BUDGET);
        // Over any long stretch, spinning is at most BUDGET per WINDOW.
        let mut b = SpinBudget::new(t0);
        let mut spun = Duration::ZERO;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            let a = b.allowance(now).min(Duration::from_micros(50));
            b.spend(a);
            spun += a;
            now += Duration::from_micros(60);
        }
        assert!(spun <= BUDGET * 10, "{spun:?}");
        assert!(
            spun >= BUDGET * 9,
            "the budget is used when wanted: {spun:?}"
        );
    }
}
