//! Time as input: two clocks, two types, so they can never be mixed (hazard 29).
//!
//! [`Instant`] is monotonic time for timers; [`UnixNanos`] is wall-clock time
//! for handshake freshness. Both are plain nanosecond counts supplied by the
//! caller; the core never reads a clock. Arithmetic saturates.

use core::time::Duration;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Monotonic time in nanoseconds since an origin of the caller's choosing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// From nanoseconds since the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(nanos(d)))
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Wall-clock time: nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(u64);

impl UnixNanos {
    /// From nanoseconds since the Unix epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        UnixNanos(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The distance between two wall-clock readings, in either direction.
    pub fn abs_diff(self, other: UnixNanos) -> Duration {
        Duration::from_nanos(self.0.abs_diff(other.0))
    }

    /// True if `self` is within `window` of `now`, in the past or the future.
    pub fn is_fresh(self, now: UnixNanos, window: Duration) -> bool {
        self.abs_diff(now) <= window
    }
}

/// Both clocks read at one moment: what the node and client state machines
/// take as "now". The two stay distinct types inside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers.
    pub mono: Instant,
    /// Wall-clock time, for handshake freshness.
    pub wall: UnixNanos,
}

impl Now {
    /// From what an adapter read off its clocks: time since its monotonic
    /// origin, and time since the Unix epoch. Saturates past `u64`
    /// nanoseconds (about 584 years).
    pub fn from_elapsed(since_origin: Duration, since_epoch: Duration) -> Now {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Now {
            mono: Instant::from_nanos(nanos(since_origin)),
            wall: UnixNanos::from_nanos(nanos(since_epoch)),
        }
    }
}
