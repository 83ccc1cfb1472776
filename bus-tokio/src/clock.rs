//! The two clocks and the OS random generator, as the core's inputs.

use bus_proto::entropy::Entropy;
use bus_proto::time::{Instant, Now, UnixNanos};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reads monotonic time (tokio's clock, so paused-time tests work) and the
/// wall clock; converts core deadlines back to tokio instants.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Now {
        let mono = self.origin.elapsed().as_nanos();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        Now {
            mono: Instant::from_nanos(u64::try_from(mono).unwrap_or(u64::MAX)),
            wall: UnixNanos::from_nanos(u64::try_from(wall).unwrap_or(u64::MAX)),
        }
    }

    pub(crate) fn deadline(&self, at: Instant) -> tokio::time::Instant {
        // A deadline beyond tokio's range is as good as never.
        self.origin
            .checked_add(Duration::from_nanos(at.as_nanos()))
            .unwrap_or_else(|| self.origin + Duration::from_secs(86_400 * 365))
    }
}

/// The operating system's random generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // Without OS randomness no nonce is safe to send; there is no
        // sensible way to continue.
        getrandom::fill(dest).expect("the OS random generator failed");
    }
}
