//! The application's event queue, budgeted per plane and paused per
//! connection (hazards 31, 32 and 36).
//!
//! Events wait in three FIFO queues: the replica plane's (peer connects,
//! messages, disconnects), the client plane's (client connects, requests,
//! disconnects) and diagnostics (handshake failures). The application reads
//! them in turn, one event from each non-empty queue, so neither plane
//! waits behind the other's backlog; order within a plane is kept.
//!
//! The planes are budgeted separately: once `message_capacity` replica
//! events (or `request_capacity` client events) wait, the connections that
//! have messages or requests among them stop being read, and only those;
//! the core suspends their liveness deadline meanwhile, so a slow
//! application never makes a live peer look dead. A connection with
//! nothing waiting keeps reading, so a plane may exceed its budget by what
//! one read chunk per connection holds, and by connect and disconnect
//! events. At twice its budget a plane is full: every connection on it
//! stops reading, and the node admits no new client while the client
//! plane is full (they are told `Busy`), so even connection churn cannot
//! grow the queue further. Handshake failures are dropped (and counted by
//! the core) once `message_capacity` of them wait.
//!
//! Once the application drops its event stream, deliveries are discarded
//! and counted ([`Deliveries::discarded`]), and nothing pauses.

use crate::node::{ConnectionId, NodeEvent};
use std::collections::VecDeque;
use std::vec::Vec;

/// The application's event queues. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Deliveries {
    /// The replica plane's events and the client plane's, by [`Plane`].
    planes: [VecDeque<NodeEvent>; 2],
    /// Handshake failures.
    other: VecDeque<NodeEvent>,
    /// Each plane's budget, by [`Plane`].
    capacity: [usize; 2],
    /// Messages and requests waiting per connection, indexed by slot; the
    /// id tells a slot's current connection from one that used it before
    /// (whose deliveries no longer count for the slot).
    waiting: Vec<Option<(ConnectionId, u32)>>,
    /// Which queue the next read starts with: a plane, or 2 for `other`.
    turn: usize,
    /// Since [`Deliveries::take_resumable`] last ran, a pop crossed a
    /// threshold that may let a paused connection read again.
    resumable: bool,
    /// The application dropped its event stream.
    dropped: bool,
    discarded: u64,
}

/// Which queue and budget an event belongs to; indexes the per-plane
/// arrays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plane {
    Replica = 0,
    Client = 1,
}

/// An event's plane (`None`: a diagnostic), and the connection a message
/// or request counts against.
fn classify(event: &NodeEvent) -> (Option<Plane>, Option<ConnectionId>) {
    match event {
        NodeEvent::Message { connection, .. } => (Some(Plane::Replica), Some(*connection)),
        NodeEvent::Request { connection, .. } => (Some(Plane::Client), Some(*connection)),
        NodeEvent::PeerConnected { .. } | NodeEvent::PeerDisconnected { .. } => {
            (Some(Plane::Replica), None)
        }
        NodeEvent::ClientConnected { .. } | NodeEvent::ClientDisconnected { .. } => {
            (Some(Plane::Client), None)
        }
        NodeEvent::HandshakeFailed { .. } => (None, None),
    }
}

impl Deliveries {
    pub(super) fn new(message_capacity: usize, request_capacity: usize) -> Self {
        Deliveries {
            planes: [VecDeque::new(), VecDeque::new()],
            other: VecDeque::new(),
            capacity: [message_capacity.max(1), request_capacity.max(1)],
            waiting: Vec::new(),
            turn: 0,
            resumable: false,
            dropped: false,
            discarded: 0,
        }
    }

    /// Events waiting.
    pub(super) fn len(&self) -> usize {
        self.planes.iter().map(VecDeque::len).sum::<usize>() + self.other.len()
    }

    /// Messages and requests discarded because the event stream was
    /// dropped.
    pub(super) fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Queues an event; false if it was dropped (a diagnostic over its
    /// bound, or any delivery after the stream was dropped).
    pub(super) fn push(&mut self, event: NodeEvent) -> bool {
        let (plane, connection) = classify(&event);
        if self.dropped {
            self.discarded += u64::from(connection.is_some());
            return false;
        }
        match plane {
            Some(plane) => {
                if let Some(connection) = connection {
                    self.count(connection);
                }
                self.planes[plane as usize].push_back(event);
            }
            // Unauthenticated sockets must not grow the queue.
            None if self.other.len() >= self.capacity[Plane::Replica as usize] => return false,
            None => self.other.push_back(event),
        }
        true
    }

    /// The next event, taking the queues in turn.
    pub(super) fn pop(&mut self) -> Option<NodeEvent> {
        let turn = self.take_turn()?;
        self.queue(turn).pop_front()
    }

    /// Moves up to `limit` events into `out`, taking the queues in turn;
    /// returns how many.
    pub(super) fn pop_into(&mut self, out: &mut Vec<NodeEvent>, limit: usize) -> usize {
        let mut moved = 0;
        while moved < limit {
            if let Some(plane) = self.only_plane() {
                // Nothing to take turns with: the rest comes from this one
                // queue at once.
                return moved + self.take_run(plane, out, limit - moved);
            }
            let Some(turn) = self.take_turn() else {
                break;
            };
            out.extend(self.queue(turn).pop_front());
            moved += 1;
        }
        moved
    }

    /// The plane whose queue is the only one with events waiting.
    fn only_plane(&self) -> Option<Plane> {
        let [replica, client] = &self.planes;
        match (replica.is_empty(), client.is_empty(), self.other.is_empty()) {
            (false, true, true) => Some(Plane::Replica),
            (true, false, true) => Some(Plane::Client),
            _ => None,
        }
    }

    /// Moves up to `limit` events from the front of `plane`'s queue into
    /// `out`, uncounted as [`Deliveries::take_turn`] uncounts them one by
    /// one: a connection's run of deliveries at once, and a threshold
    /// crossed anywhere in the run noted.
    fn take_run(&mut self, plane: Plane, out: &mut Vec<NodeEvent>, limit: usize) -> usize {
        let queue = &mut self.planes[plane as usize];
        let (len, capacity) = (queue.len(), self.capacity[plane as usize]);
        let taken = len.min(limit);
        // `take_turn` checks the length before each event leaves: it
        // passes through every value from `len` down to `len - taken + 1`.
        let crossed = |threshold: usize| len - taken < threshold && threshold <= len;
        self.resumable |= crossed(capacity) || crossed(capacity.saturating_mul(2));
        let mut run: Option<(ConnectionId, u32)> = None;
        for event in queue.drain(..taken) {
            if let (_, Some(id)) = classify(&event) {
                match &mut run {
                    Some((current, n)) if *current == id => *n += 1,
                    _ => {
                        if let Some((id, n)) = run.replace((id, 1)) {
                            uncount_many(&mut self.waiting, &mut self.resumable, id, n);
                        }
                    }
                }
            }
            out.push(event);
        }
        if let Some((id, n)) = run {
            uncount_many(&mut self.waiting, &mut self.resumable, id, n);
        }
        self.turn = match plane {
            Plane::Replica => 1,
            Plane::Client => 2,
        };
        taken
    }

    /// The queue read next (a plane's, or 2 for diagnostics), its front
    /// event already uncounted; `None` when every queue is empty.
    fn take_turn(&mut self) -> Option<usize> {
        let next = |turn: usize| if turn == 2 { 0 } else { turn + 1 };
        let mut turn = self.turn;
        for _ in 0..3 {
            if self.len_of(turn) > 0 {
                self.turn = next(turn);
                if let Some(front) = self.planes.get(turn).and_then(VecDeque::front)
                    && let (Some(plane), connection) = classify(front)
                {
                    self.uncount(connection, plane);
                }
                return Some(turn);
            }
            turn = next(turn);
        }
        None
    }

    fn len_of(&self, turn: usize) -> usize {
        self.planes.get(turn).unwrap_or(&self.other).len()
    }

    fn queue(&mut self, turn: usize) -> &mut VecDeque<NodeEvent> {
        match self.planes.get_mut(turn) {
            Some(queue) => queue,
            None => &mut self.other,
        }
    }

    /// Counts a message or request against connection `id`, before it
    /// joins its plane's queue.
    fn count(&mut self, id: ConnectionId) {
        let slot = id.slot();
        if self.waiting.len() <= slot {
            self.waiting.resize(slot + 1, None);
        }
        match &mut self.waiting[slot] {
            Some((current, n)) if *current == id => *n = n.saturating_add(1),
            entry => *entry = Some((id, 1)),
        }
    }

    /// Uncounts the front event of `plane` (from connection `id`), before
    /// it leaves the queue. Falling below a threshold may let paused
    /// connections read again.
    fn uncount(&mut self, id: Option<ConnectionId>, plane: Plane) {
        let (len, capacity) = (
            self.planes[plane as usize].len(),
            self.capacity[plane as usize],
        );
        if len == capacity || len == capacity.saturating_mul(2) {
            self.resumable = true;
        }
        let Some(id) = id else {
            return;
        };
        uncount_many(&mut self.waiting, &mut self.resumable, id, 1);
    }

    /// Messages and requests of connection `id` waiting.
    fn waiting(&self, id: ConnectionId) -> u32 {
        match self.waiting.get(id.slot()) {
            Some(Some((current, n))) if *current == id => *n,
            _ => 0,
        }
    }

    /// Whether established connection `id` should stop reading: deliveries
    /// of its own wait and its plane's budget is spent, or its plane is
    /// full. `replica` says which plane it is on.
    pub(super) fn should_pause(&self, id: ConnectionId, replica: bool) -> bool {
        if self.dropped {
            return false;
        }
        let plane = match replica {
            true => Plane::Replica,
            false => Plane::Client,
        };
        let (waiting, capacity) = (
            self.planes[plane as usize].len(),
            self.capacity[plane as usize],
        );
        waiting >= capacity.saturating_mul(2) || (waiting >= capacity && self.waiting(id) > 0)
    }

    /// Whether any connection may have to pause: a plane's budget is
    /// spent. The cheap check every socket step makes first.
    pub(super) fn may_pause(&self) -> bool {
        !self.dropped
            && (self.planes.iter())
                .zip(self.capacity)
                .any(|(queue, capacity)| queue.len() >= capacity)
    }

    /// Whether paused connections may read again since the last call: the
    /// driver re-checks them only then, not on every event read.
    pub(super) fn take_resumable(&mut self) -> bool {
        core::mem::take(&mut self.resumable)
    }

    /// The client plane is full: no new client should be admitted.
    pub(super) fn client_plane_full(&self) -> bool {
        let plane = Plane::Client as usize;
        !self.dropped && self.planes[plane].len() >= self.capacity[plane].saturating_mul(2)
    }

    /// The application dropped its event stream: what waits is discarded,
    /// and so is every later delivery.
    pub(super) fn drop_stream(&mut self) {
        self.dropped = true;
        let deliveries = (self.planes.iter().flatten())
            .filter(|e| classify(e).1.is_some())
            .count();
        self.discarded += deliveries as u64;
        self.planes.iter_mut().for_each(VecDeque::clear);
        self.other.clear();
        self.waiting.clear();
    }

    /// Whether the stream was dropped.
    pub(super) fn stream_dropped(&self) -> bool {
        self.dropped
    }
}

/// Uncounts `n` deliveries of connection `id` from `waiting`; reaching
/// none may let it read again (`resumable`).
fn uncount_many(
    waiting: &mut [Option<(ConnectionId, u32)>],
    resumable: &mut bool,
    id: ConnectionId,
    n: u32,
) {
    // An earlier connection of this slot: nothing to uncount.
    if let Some(Some((current, waiting))) = waiting.get_mut(id.slot())
        && *current == id
    {
        *waiting = waiting.saturating_sub(n);
        *resumable |= *waiting == 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Deliveries;
    use crate::handshake::Binding;
    use crate::node::{ConnectionId, NodeEvent};
    use bytes::Bytes;

    fn message(connection: ConnectionId, operation: u32) -> NodeEvent {
        NodeEvent::Message {
            from: 1,
            connection,
            operation,
            app: crate::wire::AppHeader::ZERO,
            body: Bytes::new(),
        }
    }

    /// A node, to issue connection ids, and its clock reading.
    fn node() -> (crate::node::Node, crate::time::Now) {
        use crate::config::Config;
        use crate::crypto::{Key, KeyRing};
        use crate::entropy::SeededEntropy;
        use crate::node::{Node, NodeParams};
        use crate::time::{Instant, Now, UnixNanos};
        let config = Config::default().validate().expect("valid");
        let params = NodeParams {
            cluster: 1,
            replica: 0,
            replica_count: 1,
            accept_clients: true,
        };
        let keys = KeyRing::new(Key::from_bytes([1; 32]));
        let now = Now {
            mono: Instant::from_nanos(1),
            wall: UnixNanos::from_nanos(1),
        };
        let entropy = std::boxed::Box::new(SeededEntropy::new(1));
        (
            Node::new(now, &config, params, keys, entropy).expect("node"),
            now,
        )
    }

    /// Two live connections' ids.
    fn ids() -> (ConnectionId, ConnectionId) {
        let (mut node, now) = node();
        let a = node.accept(now, Binding::NONE).expect("a");
        let b = node.accept(now, Binding::NONE).expect("b");
        (a, b)
    }

    #[test]
    fn only_connections_with_waiting_deliveries_pause_and_planes_are_separate() {
        let (a, b) = ids();
        let mut queue = Deliveries::new(2, 2);
        assert!(queue.push(message(a, 1)));
        assert!(!queue.should_pause(a, true), "budget not spent");
        assert!(queue.push(message(a, 2)));
        assert!(queue.should_pause(a, true), "a's deliveries wait");
        assert!(!queue.should_pause(b, true), "b has nothing waiting");
        assert!(
            !queue.should_pause(a, false),
            "the client budget is its own"
        );
        assert!(matches!(
            queue.pop(),
            Some(NodeEvent::Message { operation: 1, .. })
        ));
        assert!(!queue.should_pause(a, true));
    }

    /// A slot's next connection does not inherit the deliveries its
    /// previous one left waiting: it reads unless its plane is full.
    #[test]
    fn a_reused_slot_does_not_inherit_waiting_deliveries() {
        let (mut node, now) = node();
        let old = node.accept(now, Binding::NONE).expect("old");
        node.handle_eof(now, old);
        let new = node.accept(now, Binding::NONE).expect("new");
        assert_eq!(old.slot(), new.slot());
        let mut queue = Deliveries::new(4, 4);
        for op in 0..4 {
            queue.push(message(old, op));
        }
        assert!(queue.should_pause(old, true));
        assert!(!queue.should_pause(new, true), "nothing of its own waits");
        queue.push(message(new, 9));
        assert!(queue.should_pause(new, true));
        // The old connection's deliveries leave without touching the new.
        for _ in 0..4 {
            queue.pop();
        }
        assert!(!queue.should_pause(new, true), "below the budget again");
    }

    /// At twice its budget a plane is full: every connection on it pauses,
    /// even one with nothing waiting, and new clients are refused.
    #[test]
    fn a_full_plane_pauses_every_connection_on_it() {
        let (a, b) = ids();
        let mut queue = Deliveries::new(2, 2);
        for op in 0..4 {
            queue.push(NodeEvent::Request {
                request: crate::wire::RequestHeader {
                    client: 1,
                    request: op,
                    operation: 0,
                },
                connection: a,
                app: crate::wire::AppHeader::ZERO,
                body: Bytes::new(),
            });
        }
        assert!(queue.should_pause(b, false), "the client plane is full");
        assert!(queue.client_plane_full());
        assert!(!queue.should_pause(b, true), "the replica plane is not");
    }

    #[test]
    fn planes_are_read_in_turn_and_in_order_within_a_plane() {
        let (a, b) = ids();
        let mut queue = Deliveries::new(16, 16);
        for op in 0..3 {
            queue.push(message(a, op));
        }
        queue.push(NodeEvent::ClientConnected {
            client: 9,
            connection: b,
            remote: None,
            local: None,
        });
        let order: std::vec::Vec<_> = core::iter::from_fn(|| queue.pop())
            .map(|e| match e {
                NodeEvent::Message { operation, .. } => operation,
                _ => 100,
            })
            .collect();
        assert_eq!(order, [0, 100, 1, 2]);
    }

    /// One of a few kinds of event, on one of three connections.
    fn event(kind: u8, ids: &[ConnectionId; 3], operation: u32) -> NodeEvent {
        let connection = ids[usize::from(kind / 4) % 3];
        match kind % 4 {
            0 | 1 => message(connection, operation),
            2 => NodeEvent::Request {
                request: crate::wire::RequestHeader {
                    client: 7,
                    request: u64::from(operation) + 1,
                    operation,
                },
                connection,
                app: crate::wire::AppHeader::ZERO,
                body: Bytes::new(),
            },
            _ => NodeEvent::PeerConnected {
                replica: 1,
                connection,
                remote: None,
                local: None,
            },
        }
    }

    proptest::proptest! {
        /// Taking events in bulk is taking them one by one: the same
        /// events in the same order, and the same pauses and resumptions
        /// after, whatever was queued and however much is taken at once.
        #[test]
        fn taking_in_bulk_is_taking_one_by_one(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u8..12, 1usize..20), 1..60),
            capacity in 1usize..6,
        ) {
            let (mut node, now) = node();
            let ids = [(); 3].map(|()| node.accept(now, Binding::NONE).expect("id"));
            let mut bulk = Deliveries::new(capacity, capacity);
            let mut single = Deliveries::new(capacity, capacity);
            for (i, (push, kind, n)) in ops.into_iter().enumerate() {
                let operation = u32::try_from(i).unwrap_or(0);
                if push {
                    for j in 0..n {
                        let e = event(kind, &ids, operation * 100 + u32::try_from(j).unwrap_or(0));
                        proptest::prop_assert_eq!(bulk.push(e.clone()), single.push(e));
                    }
                    continue;
                }
                let mut taken = std::vec::Vec::new();
                let moved = bulk.pop_into(&mut taken, n);
                let mut one_by_one = std::vec::Vec::new();
                while one_by_one.len() < n {
                    match single.pop() {
                        Some(e) => one_by_one.push(e),
                        None => break,
                    }
                }
                proptest::prop_assert_eq!(moved, taken.len());
                proptest::prop_assert_eq!(&taken, &one_by_one);
                proptest::prop_assert_eq!(bulk.take_resumable(), single.take_resumable());
                proptest::prop_assert_eq!(bulk.turn, single.turn);
                for id in ids {
                    proptest::prop_assert_eq!(bulk.waiting(id), single.waiting(id));
                    for replica in [true, false] {
                        proptest::prop_assert_eq!(
                            bulk.should_pause(id, replica),
                            single.should_pause(id, replica)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_dropped_stream_discards_and_counts_and_never_pauses() {
        let (a, _) = ids();
        let mut queue = Deliveries::new(1, 1);
        queue.push(message(a, 1));
        assert!(queue.should_pause(a, true));
        queue.drop_stream();
        assert!(!queue.should_pause(a, true));
        assert!(!queue.push(message(a, 2)));
        assert_eq!(queue.discarded(), 2);
        assert_eq!(queue.len(), 0);
    }
}
