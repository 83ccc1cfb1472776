//! What a graceful shutdown reports.

use crate::connection::CloseCause;

/// How the connections open at shutdown ended.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when shutdown began.
    pub total: usize,
    /// Closed in order: the `close` exchange finished, or the peer had
    /// already hung up.
    pub clean: usize,
    /// Dropped at a deadline: the core's `close_grace` or the shutdown
    /// deadline passed before the peer answered.
    pub forced: usize,
}

impl ShutdownReport {
    pub(crate) fn new(total: usize, forced: usize) -> Self {
        let forced = forced.min(total);
        ShutdownReport {
            total,
            clean: total - forced,
            forced,
        }
    }
}

impl core::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} connections: {} closed cleanly, {} forced",
            self.total, self.clean, self.forced
        )
    }
}

/// Counts closes during shutdown.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) forced: usize,
}

impl Tally {
    pub(crate) fn closed(&mut self, cause: &CloseCause) {
        if matches!(cause, CloseCause::Timeout(_)) {
            self.forced += 1;
        }
    }
}
