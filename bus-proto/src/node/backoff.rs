//! Reconnect delays: exponential, capped, jittered (hazard 26).

use crate::entropy::Entropy;
use core::time::Duration;

/// Exponential backoff between `min` and `max`.
///
/// The `n`th consecutive failure waits a delay drawn uniformly from
/// `[d/2, d]` with `d = min(max, min * 2^n)`: the jitter spreads a cluster's
/// redials after a shared fault, and the lower half-bound keeps a delay from
/// ever collapsing to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff with no failures yet (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a success: the next delay starts from `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self, entropy: &mut dyn Entropy) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        // `nanos - half + 1` is at least 1, so the modulus never divides by zero.
        let jitter = entropy.next_u64() % (nanos - half + 1);
        Duration::from_nanos(half + jitter)
    }

    /// The largest delay the next failure can draw.
    pub fn ceiling(&self) -> Duration {
        // 2^31 * min is beyond any sensible cap; stop doubling there.
        let factor = 1u32 << self.failures.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entropy::SeededEntropy;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let mut e = SeededEntropy::new(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..40 {
            let d = b.next_delay(&mut e);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_secs(10));
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
