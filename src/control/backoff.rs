//! Exponential backoff and the lease renewal schedule, with time as a parameter (no clocks, no I/O).

use std::time::Duration;

/// Exponential backoff between `min` and `max`, doubling on each failure.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the one after, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How long after a grant or renewal the lease must be renewed again: at expiry minus the margin.
/// Refuses a margin that would renew before the lease was even granted.
pub fn renew_after(ttl: Duration, margin: Duration) -> Result<Duration, MarginTooLong> {
    if margin >= ttl {
        return Err(MarginTooLong {
            margin: margin.as_secs(),
            ttl: ttl.as_secs(),
        });
    }
    Ok(ttl - margin)
}

/// A renewal margin that is not shorter than the lease's TTL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--subnet-lease-renew-margin ({margin}s) must be shorter than the lease TTL ({ttl}s)")]
pub struct MarginTooLong {
    pub margin: u64,
    pub ttl: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let got: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn renewal_at_expiry_minus_margin() {
        let day = Duration::from_secs(86400);
        let hour = Duration::from_secs(3600);
        assert_eq!(renew_after(day, hour).unwrap(), Duration::from_secs(82800));
        assert!(renew_after(hour, day)
            .unwrap_err()
            .to_string()
            .contains("must be shorter"));
    }
}
