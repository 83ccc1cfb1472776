//! "Now" for the adapters with one clock read instead of two.
//!
//! The core takes both clocks at every input ([`Now`]), but needs the wall
//! clock only for handshake freshness, whose window is seconds. So the
//! wall clock is derived from the monotonic one through an offset that is
//! re-read at most every [`WALL_REFRESH`] of monotonic time: a step of the
//! wall clock (NTP, an operator) shows within that time. The adapter still
//! reads the clocks; this only decides when.

use crate::time::Now;
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

/// How much monotonic time may pass before the wall clock is read again.
pub const WALL_REFRESH: Duration = Duration::from_millis(100);

/// The cached offset between the wall clock and an adapter's monotonic
/// clock. Lock-free: racing refreshes each store a valid offset.
#[derive(Debug, Default)]
pub struct WallClock {
    /// Wall-clock nanoseconds minus monotonic nanoseconds, at the last read.
    offset: AtomicU64,
    /// Monotonic nanoseconds of the last read, plus one (zero: never read).
    read_at: AtomicU64,
}

impl WallClock {
    /// Now, from the monotonic time since the adapter's origin; `read_wall`
    /// (time since the Unix epoch) is called only when the cached offset
    /// is older than [`WALL_REFRESH`].
    ///
    /// ```
    /// use bus_proto::host::WallClock;
    /// use std::time::Duration;
    ///
    /// let clock = WallClock::default();
    /// let epoch = Duration::from_secs(1_767_225_600);
    /// let first = clock.now(Duration::from_millis(5), || epoch);
    /// // 50 ms later the wall clock is not read again; it follows the
    /// // monotonic one.
    /// let later = clock.now(Duration::from_millis(55), || unreachable!());
    /// assert_eq!(later.wall.as_nanos() - first.wall.as_nanos(), 50_000_000);
    /// ```
    pub fn now(&self, mono: Duration, read_wall: impl FnOnce() -> Duration) -> Now {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mono_ns = nanos(mono);
        let read_at = self.read_at.load(Ordering::Relaxed);
        let fresh = read_at != 0
            && mono_ns.saturating_sub(read_at - 1) < nanos(WALL_REFRESH)
            && mono_ns >= read_at - 1;
        let offset = if fresh {
            self.offset.load(Ordering::Relaxed)
        } else {
            let offset = nanos(read_wall()).saturating_sub(mono_ns);
            self.offset.store(offset, Ordering::Relaxed);
            self.read_at
                .store(mono_ns.saturating_add(1), Ordering::Relaxed);
            offset
        };
        Now::from_elapsed(mono, Duration::from_nanos(offset.saturating_add(mono_ns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;

    #[test]
    fn the_wall_clock_is_read_again_after_the_refresh_interval_and_steps_show() {
        let clock = WallClock::default();
        let reads = Cell::new(0);
        let wall = Cell::new(Duration::from_secs(10_000));
        let at = |ms: u64| {
            clock.now(Duration::from_millis(ms), || {
                reads.set(reads.get() + 1);
                wall.get()
            })
        };
        assert_eq!(at(0).wall.as_nanos(), 10_000_000_000_000);
        assert_eq!(at(99).wall.as_nanos(), 10_000_099_000_000);
        assert_eq!(reads.get(), 1);
        // The wall clock steps back an hour; it shows at the next refresh.
        wall.set(Duration::from_secs(10_000 - 3_600 + 1));
        assert_eq!(at(99).wall.as_nanos(), 10_000_099_000_000);
        let stepped = at(1_000);
        assert_eq!(reads.get(), 2);
        assert_eq!(
            stepped.wall.as_nanos(),
            (10_000 - 3_600 + 1) * 1_000_000_000
        );
        assert_eq!(stepped.mono.as_nanos(), 1_000_000_000);
        // A monotonic reading older than the last read (another thread's)
        // reads the wall clock rather than trust the offset.
        at(500);
        assert_eq!(reads.get(), 3);
    }
}
