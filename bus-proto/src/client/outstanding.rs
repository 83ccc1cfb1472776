//! The client's outstanding requests: bounded, expiring, correlated by
//! request number (hazard 27).

use crate::node::ConnectionId;
use crate::time::Instant;
use alloc::collections::BTreeMap;
use bytes::Bytes;

/// A request sent (or waiting to be sent) and not yet answered.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) operation: u32,
    pub(crate) body: Bytes,
    pub(crate) deadline: Instant,
    /// The connection it was last queued on; resent on any other.
    pub(crate) sent_on: Option<ConnectionId>,
}

/// At most `max` requests, keyed by request number. Numbers grow with time
/// and every request gets the same timeout, so the lowest number always
/// holds the earliest deadline.
#[derive(Debug)]
pub(crate) struct Outstanding {
    requests: BTreeMap<u64, Pending>,
    max: usize,
}

impl Outstanding {
    pub(crate) fn new(max: usize) -> Self {
        Outstanding {
            requests: BTreeMap::new(),
            max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.requests.len() >= self.max
    }

    pub(crate) fn insert(&mut self, number: u64, pending: Pending) {
        self.requests.insert(number, pending);
    }

    /// Takes the request a reply answers; `None` means the reply matches
    /// nothing outstanding (stale, duplicated or forged) and is dropped.
    pub(crate) fn take(&mut self, number: u64) -> Option<Pending> {
        self.requests.remove(&number)
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.requests.first_key_value().map(|(_, p)| p.deadline)
    }

    /// The lowest-numbered request expired at `now`, removed.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(u64, Pending)> {
        let (_, first) = self.requests.first_key_value()?;
        if first.deadline > now {
            return None;
        }
        self.requests.pop_first()
    }

    /// The lowest-numbered request, removed.
    pub(crate) fn pop_first(&mut self) -> Option<(u64, Pending)> {
        self.requests.pop_first()
    }

    /// Requests not yet queued on connection `on`, in number order.
    pub(crate) fn unsent_on(
        &mut self,
        on: ConnectionId,
    ) -> impl Iterator<Item = (&u64, &mut Pending)> {
        self.requests
            .iter_mut()
            .filter(move |(_, p)| p.sent_on != Some(on))
    }
}
