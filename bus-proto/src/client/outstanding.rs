//! The client's outstanding requests: bounded, expiring, correlated by
//! request number (hazard 27).

use crate::node::ConnectionId;
use crate::sorted_deque::SortedDeque;
use crate::time::Instant;
use bytes::Bytes;

/// A request sent (or waiting to be sent) and not yet answered.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) operation: u32,
    /// The application's header fields, sent with every copy.
    pub(crate) app: crate::wire::AppHeader,
    pub(crate) body: Bytes,
    pub(crate) deadline: Instant,
    /// The connection it was last queued on; resent on any other.
    pub(crate) sent_on: Option<ConnectionId>,
}

/// At most `max` requests, keyed by request number, with their deadlines
/// in order. (Numbers alone do not order deadlines: a request resent after
/// a restart keeps the deadline it was first issued with.) Both orders
/// are sorted deques: requests are numbered and timed upwards, and mostly
/// answered oldest first, so each request is an append and a front
/// removal.
#[derive(Debug)]
pub(crate) struct Outstanding {
    requests: SortedDeque<u64, Pending>,
    deadlines: SortedDeque<(Instant, u64), ()>,
    max: usize,
}

impl Outstanding {
    pub(crate) fn new(max: usize) -> Self {
        Outstanding {
            requests: SortedDeque::default(),
            deadlines: SortedDeque::default(),
            max,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.requests.len() >= self.max
    }

    pub(crate) fn contains(&self, number: u64) -> bool {
        self.requests.contains_key(number)
    }

    pub(crate) fn insert(&mut self, number: u64, pending: Pending) {
        let deadline = pending.deadline;
        self.deadlines.insert((deadline, number), ());
        // A replaced request's deadline goes, unless it is the same one.
        if let Some(old) = self.requests.insert(number, pending)
            && old.deadline != deadline
        {
            self.deadlines.remove((old.deadline, number));
        }
    }

    pub(crate) fn get_mut(&mut self, number: u64) -> Option<&mut Pending> {
        self.requests.get_mut(number)
    }

    /// Takes the request a reply answers; `None` means the reply matches
    /// nothing outstanding (stale, duplicated or forged) and is dropped.
    pub(crate) fn take(&mut self, number: u64) -> Option<Pending> {
        let pending = self.requests.remove(number)?;
        self.deadlines.remove((pending.deadline, number));
        Some(pending)
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&((deadline, _), ())| deadline)
    }

    /// The request with the earliest deadline, removed if it expired at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(u64, Pending)> {
        let &((deadline, number), ()) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        Some((number, self.take(number)?))
    }

    /// The lowest-numbered request, removed.
    pub(crate) fn pop_first(&mut self) -> Option<(u64, Pending)> {
        let (number, pending) = self.requests.pop_first()?;
        self.deadlines.remove((pending.deadline, number));
        Some((number, pending))
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

#[cfg(test)]
mod tests {
    use super::{Outstanding, Pending};
    use crate::time::Instant;
    use crate::wire::AppHeader;
    use bytes::Bytes;

    fn pending(deadline: u64) -> Pending {
        Pending {
            operation: 1,
            app: AppHeader::ZERO,
            body: Bytes::new(),
            deadline: Instant::from_nanos(deadline),
            sent_on: None,
        }
    }

    #[test]
    fn a_replaced_request_keeps_one_deadline_the_new_one() {
        let mut outstanding = Outstanding::new(8);
        outstanding.insert(7, pending(100));
        // Same deadline: it must stay, once.
        outstanding.insert(7, pending(100));
        assert_eq!(outstanding.next_deadline(), Some(Instant::from_nanos(100)));
        // Another deadline replaces it.
        outstanding.insert(7, pending(50));
        assert_eq!(outstanding.next_deadline(), Some(Instant::from_nanos(50)));
        assert_eq!(outstanding.len(), 1);
        let (number, expired) = outstanding
            .pop_expired(Instant::from_nanos(60))
            .expect("expired at its new deadline");
        assert_eq!((number, expired.deadline), (7, Instant::from_nanos(50)));
        assert_eq!(outstanding.next_deadline(), None);
        assert_eq!(outstanding.len(), 0);
    }

    #[test]
    fn deadlines_expire_in_order_whatever_the_numbers() {
        let mut outstanding = Outstanding::new(8);
        // A resent request keeps its earlier deadline under a higher number.
        outstanding.insert(1, pending(300));
        outstanding.insert(2, pending(100));
        outstanding.insert(3, pending(200));
        let now = Instant::from_nanos(1_000);
        let order: alloc::vec::Vec<u64> =
            core::iter::from_fn(|| outstanding.pop_expired(now).map(|(n, _)| n)).collect();
        assert_eq!(order, [2, 3, 1]);
    }
}
