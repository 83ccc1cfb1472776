//! The connections of one node or client: a generation-checked slab, the
//! list of connections that may have output, their timers, and the socket
//! actions for the adapter.
//!
//! Shared by [`Node`](super::Node) and [`Client`](crate::client::Client).

use super::SocketError;
use crate::connection::{Connection, LentDecoder, Messages, Side, Stats};
use crate::crypto::PeerId;
use crate::time::Instant;
use alloc::boxed::Box;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;

/// What a socket hands a connection.
pub(crate) enum Input<'a> {
    /// Bytes, copied in.
    Bytes(&'a [u8]),
    /// Bytes appended to the connection's read buffer.
    Read,
    /// The lent decoder, back with new bytes, perhaps verified.
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    Verified(LentDecoder),
}
/// Names one connection of a node or client for its whole life.
///
/// The generation changes every time a slot is reused, so an id held after
/// its connection ended (a late event, a stale socket) never addresses the
/// connection that replaced it: it is the registry's generation token
/// (hazard 21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    index: u32,
    generation: u32,
}

impl ConnectionId {
    /// The id's slot: dense (below the most connections ever open at once)
    /// and reused, under a new generation, once the connection is freed. An
    /// adapter can index its per-socket state by it instead of hashing ids.
    pub fn slot(&self) -> usize {
        self.index as usize
    }
}

impl core::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "connection {}.{}", self.index, self.generation)
    }
}

/// Something the adapter must do with a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to this replica, then report `connected` or
    /// `connect_failed` with this id.
    Connect {
        /// The id to report back.
        connection: ConnectionId,
        /// Whom to connect to; the address is the adapter's business.
        replica: u8,
    },
    /// The connection is over and its last bytes were handed out: close the
    /// socket (or abandon the connect still in progress).
    Disconnect {
        /// The connection.
        connection: ConnectionId,
    },
}

/// What the table's owner must do after a socket event or timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The connection ran: drain its events and reschedule it.
    Settle,
    /// A connect in progress failed or expired: free it and back off.
    ConnectFailed,
    /// Nothing (a stale id).
    Nothing,
}

/// How a connection came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// We asked the adapter to connect to this replica.
    Dialed(u8),
    /// The adapter accepted it.
    Accepted,
}

/// One connection of a node or client at one moment: for stats pages,
/// logs and metrics ([`Node::connection_infos`](super::Node::connection_infos)).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Its id.
    pub id: ConnectionId,
    /// The replica dialled, or the replica or client whose `hello`
    /// verified; `None` while an accepted one handshakes.
    pub peer: Option<PeerId>,
    /// Whether we dialled or accepted it.
    pub side: Side,
    /// The remote address, where the adapter reported it.
    pub remote: Option<core::net::SocketAddr>,
    /// The local address, where the adapter reported it.
    pub local: Option<core::net::SocketAddr>,
    /// The socket is still connecting, or its transport (TLS, WebSocket)
    /// still handshaking: the fields below are zero.
    pub connecting: bool,
    /// The bus handshake is done and data flows.
    pub established: bool,
    /// How long since the handshake completed.
    pub established_for: Option<Duration>,
    /// The host is not reading it: the application has not taken what it
    /// delivered.
    pub reading_paused: bool,
    /// Frames waiting in the send queue.
    pub queued_frames: usize,
    /// Bytes waiting in the send queue.
    pub queued_bytes: usize,
    /// The latest ping round trip.
    pub rtt: Option<Duration>,
    /// Counters since the connection started (bytes and frames each way,
    /// batches, pauses and the time spent paused up to now).
    pub stats: Stats,
}

impl ConnectionInfo {
    fn of(id: ConnectionId, entry: &Entry, now: Instant) -> ConnectionInfo {
        let dialled = match entry.origin {
            Origin::Dialed(replica) => Some(PeerId::Replica(replica)),
            Origin::Accepted => None,
        };
        let side = match entry.origin {
            Origin::Dialed(_) => Side::Dialer,
            Origin::Accepted => Side::Acceptor,
        };
        let conn = match &entry.socket {
            Socket::Open(conn) => Some(conn),
            Socket::Connecting { .. } => None,
        };
        let (queued_frames, queued_bytes) = conn.map_or((0, 0), |c| c.queued());
        ConnectionInfo {
            id,
            peer: conn.and_then(|c| c.peer()).or(dialled),
            side,
            remote: entry.remote,
            local: entry.local,
            connecting: conn.is_none(),
            established: conn.is_some_and(|c| c.is_established()),
            established_for: entry
                .established_at
                .map(|at| now.saturating_duration_since(at)),
            reading_paused: conn.is_some_and(|c| c.reading_paused()),
            queued_frames,
            queued_bytes,
            rtt: conn.and_then(|c| c.rtt()),
            stats: conn.map_or_else(Stats::default, |c| c.stats_at(now)),
        }
    }
}

/// The state machine behind an id.
pub(crate) enum Socket {
    /// The adapter is connecting (`socket_open` false), or its socket is
    /// open and the transport under framing (TLS, WebSocket) still
    /// handshaking (`socket_open` true); give up at `deadline`.
    Connecting {
        deadline: Instant,
        socket_open: bool,
    },
    /// A connection (boxed: slots move when the slab grows).
    Open(Box<Connection>),
}

/// One connection's place in the table.
pub(crate) struct Entry {
    pub(crate) origin: Origin,
    pub(crate) socket: Socket,
    /// The application was told it is connected, so it will be told once
    /// that it is disconnected.
    pub(crate) announced: bool,
    /// Accepted, and its `hello` has not verified yet: in the node's
    /// unauthenticated pool. Cleared exactly once, when the `hello`
    /// verifies or the connection closes.
    pub(crate) unauthenticated: bool,
    /// An admitted client (its `hello` verified): counted against
    /// `max_connections` until it closes.
    pub(crate) counted: bool,
    /// The remote address, where the adapter knows it.
    pub(crate) remote: Option<core::net::SocketAddr>,
    /// When the handshake completed.
    pub(crate) established_at: Option<Instant>,
    /// Accepted on a listener of one plane only: a `hello` of the other is
    /// refused.
    pub(crate) plane: Option<crate::wire::Plane>,
    /// The local address, where the adapter reported it.
    pub(crate) local: Option<core::net::SocketAddr>,
}

struct Slot {
    generation: u32,
    entry: Option<Entry>,
    /// In `ready`.
    ready: bool,
    /// The deadline queued in `timers`; never later than the true one.
    timer: Option<Instant>,
}

/// A bounded slab of connections.
pub(crate) struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Slots that may have output or be finished; each at most once.
    ready: VecDeque<u32>,
    timers: BTreeSet<(Instant, u32)>,
    actions: VecDeque<Action>,
    live: usize,
    max: usize,
}

impl Table {
    /// A table of at most `max` connections.
    pub(crate) fn new(max: usize) -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            live: 0,
            max,
        }
    }

    /// Connections held.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Whether another connection fits.
    pub(crate) fn is_full(&self) -> bool {
        self.live >= self.max
    }

    /// Adds a connection; `None` when full.
    pub(crate) fn insert(&mut self, entry: Entry) -> Option<ConnectionId> {
        if self.is_full() {
            return None;
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(Slot {
                    generation: 0,
                    entry: None,
                    ready: false,
                    timer: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.entry = Some(entry);
        self.live += 1;
        let id = ConnectionId {
            index,
            generation: slot.generation,
        };
        self.touch(id);
        Some(id)
    }

    fn slot(&self, id: ConnectionId) -> Option<&Slot> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.entry.is_some())
    }

    fn slot_mut(&mut self, id: ConnectionId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.entry.is_some())
    }

    /// The entry behind `id`, if it is still the same connection.
    pub(crate) fn get(&self, id: ConnectionId) -> Option<&Entry> {
        self.slot(id)?.entry.as_ref()
    }

    /// The entry behind `id`, if it is still the same connection.
    pub(crate) fn get_mut(&mut self, id: ConnectionId) -> Option<&mut Entry> {
        self.slot_mut(id)?.entry.as_mut()
    }

    /// The open connection behind `id`.
    pub(crate) fn conn_mut(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        match &mut self.get_mut(id)?.socket {
            Socket::Open(conn) => Some(conn),
            Socket::Connecting { .. } => None,
        }
    }

    /// The open connection behind `id`, read-only.
    pub(crate) fn conn(&self, id: ConnectionId) -> Option<&Connection> {
        match &self.get(id)?.socket {
            Socket::Open(conn) => Some(conn),
            Socket::Connecting { .. } => None,
        }
    }

    /// The connect behind `id` is still in progress (`socket_open`
    /// false), or its transport is still handshaking (true): its deadline.
    pub(crate) fn check_connecting(
        &self,
        id: ConnectionId,
        socket_open: bool,
    ) -> Result<Instant, SocketError> {
        match self.get(id).map(|e| &e.socket) {
            None => Err(SocketError::UnknownConnection(id)),
            Some(Socket::Connecting {
                deadline,
                socket_open: open,
            }) if *open == socket_open => Ok(*deadline),
            Some(_) => Err(SocketError::NotConnecting(id)),
        }
    }

    /// The socket behind a connect is open and its transport handshakes
    /// until `deadline`.
    pub(crate) fn start_transport(
        &mut self,
        id: ConnectionId,
        deadline: Instant,
    ) -> Result<(), SocketError> {
        self.check_connecting(id, false)?;
        if let Some(entry) = self.get_mut(id) {
            entry.socket = Socket::Connecting {
                deadline,
                socket_open: true,
            };
        }
        self.touch(id);
        Ok(())
    }

    /// The socket behind a connect is open: `conn` takes over the id.
    pub(crate) fn open(&mut self, id: ConnectionId, conn: Connection) {
        if let Some(entry) = self.get_mut(id) {
            entry.socket = Socket::Open(Box::new(conn));
        }
        self.touch(id);
    }

    /// Input from `id`'s socket. Once the application knows the peer, its
    /// messages go to `messages` rather than the connection's event queue;
    /// before, they wait behind its `Established` event there.
    pub(crate) fn input(
        &mut self,
        now: Instant,
        id: ConnectionId,
        input: Input<'_>,
        messages: Messages<'_, '_>,
    ) -> Result<(), SocketError> {
        let entry = self.get_mut(id).ok_or(SocketError::UnknownConnection(id))?;
        let messages = messages.filter(|_| entry.announced);
        let Socket::Open(conn) = &mut entry.socket else {
            return Err(SocketError::UnknownConnection(id));
        };
        match input {
            Input::Bytes(bytes) => conn.handle_input_with(now, bytes, messages),
            Input::Read => conn.handle_read_with(now, messages),
            Input::Verified(decoder) => conn.handle_verified(now, decoder, messages),
        }
        Ok(())
    }

    /// `id`'s socket reached EOF or failed.
    pub(crate) fn eof(&mut self, now: Instant, id: ConnectionId) -> Next {
        match self.get_mut(id).map(|e| &mut e.socket) {
            Some(Socket::Open(conn)) => {
                conn.handle_eof(now);
                Next::Settle
            }
            Some(Socket::Connecting { .. }) => Next::ConnectFailed,
            None => Next::Nothing,
        }
    }

    /// The next connection whose deadline passed, with its timers run.
    pub(crate) fn fire_expired(&mut self, now: Instant) -> Option<(ConnectionId, Next)> {
        let id = self.pop_expired(now)?;
        let next = match self.get_mut(id).map(|e| &mut e.socket) {
            Some(Socket::Connecting { deadline, .. }) if *deadline <= now => Next::ConnectFailed,
            Some(Socket::Open(conn)) => {
                conn.handle_timeout(now);
                Next::Settle
            }
            _ => {
                // A stale, early entry: re-arm it at the true deadline.
                self.touch(id);
                Next::Nothing
            }
        };
        Some((id, next))
    }

    /// The adapter connected dial `id` to `remote`.
    pub(crate) fn dialled_to(&mut self, id: ConnectionId, remote: core::net::SocketAddr) {
        if let Some(entry) = self.get_mut(id)
            && matches!(entry.origin, Origin::Dialed(_))
        {
            entry.remote = Some(remote);
        }
    }

    /// The adapter's socket for `id` has local address `local`.
    pub(crate) fn note_local(&mut self, id: ConnectionId, local: core::net::SocketAddr) {
        if let Some(entry) = self.get_mut(id) {
            entry.local = Some(local);
        }
    }

    /// Every connection held, as of `now`, in slot order.
    /// Connection `id`, as of `now`.
    pub(crate) fn info(&self, id: ConnectionId, now: Instant) -> Option<ConnectionInfo> {
        Some(ConnectionInfo::of(id, self.get(id)?, now))
    }

    pub(crate) fn infos(&self, now: Instant) -> impl Iterator<Item = ConnectionInfo> + '_ {
        self.ids().filter_map(move |id| self.info(id, now))
    }

    /// Ids of every connection held, in slot order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.entry.as_ref()?;
            Some(ConnectionId {
                index: u32::try_from(i).ok()?,
                generation: s.generation,
            })
        })
    }

    /// Records that `id` may have output and that its deadline may have
    /// moved. Cheap: the timer entry is only replaced when the deadline got
    /// earlier, since waking early is harmless and the stale entry is
    /// refreshed when it fires.
    pub(crate) fn touch(&mut self, id: ConnectionId) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        let Some(entry) = slot
            .entry
            .as_ref()
            .filter(|_| slot.generation == id.generation)
        else {
            return;
        };
        let deadline = match &entry.socket {
            Socket::Connecting { deadline, .. } => Some(*deadline),
            Socket::Open(conn) => conn.poll_timeout(),
        };
        if !slot.ready {
            slot.ready = true;
            self.ready.push_back(id.index);
        }
        if let Some(deadline) = deadline
            && slot.timer.is_none_or(|t| deadline < t)
        {
            if let Some(old) = slot.timer.replace(deadline) {
                self.timers.remove(&(old, id.index));
            }
            self.timers.insert((deadline, id.index));
        }
    }

    /// Queues `id` for output without revisiting its deadline: for input
    /// that only adds output, such as a queued frame, which never moves a
    /// connection's deadline earlier.
    pub(crate) fn mark_ready(&mut self, id: ConnectionId) {
        if let Some(slot) = self.slots.get_mut(id.index as usize)
            && slot.generation == id.generation
            && slot.entry.is_some()
            && !slot.ready
        {
            slot.ready = true;
            self.ready.push_back(id.index);
        }
    }

    /// The first connection that may have output, left in the list.
    pub(crate) fn first_ready(&mut self) -> Option<ConnectionId> {
        loop {
            let &index = self.ready.front()?;
            let slot = &self.slots[index as usize];
            if slot.entry.is_some() {
                return Some(ConnectionId {
                    index,
                    generation: slot.generation,
                });
            }
            self.ready.pop_front();
            self.slots[index as usize].ready = false;
        }
    }

    /// Takes the first connection off the ready list.
    pub(crate) fn pop_ready(&mut self) {
        if let Some(index) = self.ready.pop_front() {
            self.slots[index as usize].ready = false;
        }
    }

    /// Takes the first live connection off the ready list.
    pub(crate) fn take_ready(&mut self) -> Option<ConnectionId> {
        let id = self.first_ready()?;
        self.pop_ready();
        Some(id)
    }

    /// The earliest connection deadline.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// A connection whose deadline is at or before `now`, taken off the
    /// timer queue.
    fn pop_expired(&mut self, now: Instant) -> Option<ConnectionId> {
        loop {
            let &(at, index) = self.timers.first().filter(|(at, _)| *at <= now)?;
            self.timers.remove(&(at, index));
            let slot = &mut self.slots[index as usize];
            slot.timer = None;
            if slot.entry.is_some() {
                return Some(ConnectionId {
                    index,
                    generation: slot.generation,
                });
            }
        }
    }

    /// Frees the slot and tells the adapter to close the socket. Returns the
    /// entry, or `None` if `id` is stale.
    pub(crate) fn remove(&mut self, id: ConnectionId) -> Option<Entry> {
        let slot = self.slot_mut(id)?;
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        if let Some(at) = slot.timer.take() {
            self.timers.remove(&(at, id.index));
        }
        // A slot still in `ready` is skipped by `first_ready` once vacant,
        // and its flag is cleared there.
        self.free.push(id.index);
        self.live -= 1;
        self.actions
            .push_back(Action::Disconnect { connection: id });
        Some(entry)
    }

    /// Queues an action for the adapter.
    pub(crate) fn push_action(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// The next socket action.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}
