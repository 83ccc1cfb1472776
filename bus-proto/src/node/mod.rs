//! A replica's node: every connection it holds, the peer table and dial
//! schedule, the client plane with its dedup window, and routing.
//!
//! A [`Node`] owns its [`Connection`]s and addresses them by
//! [`ConnectionId`]. It is sans-IO like a connection: the adapter opens and
//! closes sockets when asked ([`Node::poll_action`]), moves bytes
//! ([`Node::handle_input`], [`Node::poll_transmit`]), and sleeps until
//! [`Node::poll_timeout`]. The application sends with [`Node::send`] and
//! [`Node::reply`] and reads [`Node::poll_event`].
//!
//! # Driving loop
//!
//! After every input (`accept`, `connected`, `connect_failed`,
//! `handle_input`, `handle_eof`, `handle_timeout`, `send`, `reply`,
//! `shutdown`), drain in this order:
//!
//! 1. [`Node::poll_transmit`] until `None`: write each batch to its
//!    connection's socket, whole;
//! 2. [`Node::poll_action`] until `None`: open or close sockets (a
//!    `Disconnect` comes after that connection's last transmit);
//! 3. [`Node::poll_event`] until `None`: hand events to the application;
//! 4. [`Node::poll_timeout`]: call `handle_timeout` then (early is harmless).
//!
//! # Why the node owns its connections
//!
//! Consensus replicas are event loops, and one owner makes every
//! cross-connection rule a plain function call with no locks or callbacks:
//! a duplicate connection is refused against the registry in the same step
//! that established it; a retried request is checked against the dedup
//! window before the application sees it; a reply finds the client's
//! current connection. Per-message work is a slab index and a queue push.
//! An adapter that wants a task per socket keeps the node behind one lock
//! and drains [`Node::poll_transmit_for`] per connection.
//!
//! # Replica plane
//!
//! The lower id dials the higher (the directional rule), so each pair has
//! one dialer. The dialer never dials a peer that is connected or mid-dial;
//! after a failure it waits an exponentially growing, capped, jittered
//! delay ([`Backoff`]). The registry holds one connection per peer: a
//! second one from the same peer is closed with `Duplicate` and the first
//! is untouched; removal compares [`ConnectionId`]s, so a late loser cannot
//! remove a newer connection (hazard 21). Each connection the application
//! was told about with [`NodeEvent::PeerConnected`] ends with exactly one
//! [`NodeEvent::PeerDisconnected`] (hazard 22). Messages are delivered at
//! most once, in order, per connection; nothing is resent across
//! connections: the replication protocol above repairs gaps.
//!
//! # Client plane
//!
//! Clients dial a node with a stable client id. A new connection from a
//! client replaces its previous one (newest wins: a client redials only
//! when it believes the old connection dead). Requests pass the
//! [dedup window](crate::dedup) first: a completed request is answered from
//! the cache without reaching the application, one in flight is dropped,
//! a forgotten one gets a `Stale` reply. **Session policy:** on disconnect
//! the client's route is released at once; its dedup session is kept until
//! `dedup_ttl` of inactivity or the caps evict it, so a retry after a
//! reconnect is still answered from the cache (hazard 18).

mod admission;
mod backoff;
mod clients;
mod error;
mod peers;
pub(crate) mod table;

pub use backoff::Backoff;
pub use error::{AcceptError, NodeError, ReplyError, RouteError, SocketError};
pub use table::{Action, ConnectionId, ConnectionInfo};

use crate::config::ValidConfig;
use crate::connection::{BatchBuffers, CloseCause, Connection, Event, LentDecoder, Unsealed};
use crate::crypto::{KeyRing, PeerId};
use crate::dedup::DedupWindow;
use crate::entropy::Entropy;
use crate::handshake::{AdmissionOutcome, Binding, Gate, GateParams};
use crate::time::{Instant, Now};
use crate::wire::{AppHeader, CloseReason, Kind, RejectStatus, RequestHeader};
use admission::Pool;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use bytes::{Bytes, BytesMut};
use core::net::SocketAddr;
use peers::Peers;
use table::{Entry, Input, Next, Origin, Socket, Table};

/// Who a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeParams {
    /// The cluster id.
    pub cluster: u128,
    /// This node's replica id, `< replica_count`.
    pub replica: u8,
    /// Replicas in the cluster, ids `0..replica_count`; at most 255.
    pub replica_count: u8,
    /// Whether clients may connect.
    pub accept_clients: bool,
}

/// What the node reports to the application.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// A replica connection was established and registered.
    PeerConnected {
        /// The peer.
        replica: u8,
        /// Its connection.
        connection: ConnectionId,
        /// The remote address, where the adapter passed it (to
        /// [`Node::accept_from`] or [`Node::dialled_to`]). Boxed as in
        /// `HandshakeFailed`.
        remote: Option<Box<SocketAddr>>,
        /// The local address, where the adapter passed it
        /// ([`Node::note_local`]).
        local: Option<Box<SocketAddr>>,
    },
    /// A registered replica connection ended; exactly once per
    /// `PeerConnected`.
    PeerDisconnected {
        /// The peer.
        replica: u8,
        /// The connection that ended.
        connection: ConnectionId,
        /// Why.
        cause: CloseCause,
    },
    /// A connection closed before it was established (never announced):
    /// our dial was rejected (`cause` is [`CloseCause::Rejected`] with the
    /// acceptor's status), or an inbound peer failed to authenticate, was
    /// refused (`Refused(Busy)`) or evicted ([`CloseCause::Evicted`]), or
    /// said nothing until its deadline. For logs and metrics; the dial schedule already retries.
    HandshakeFailed {
        /// The connection that failed.
        connection: ConnectionId,
        /// The replica we dialled, or `None` for an inbound connection.
        dialed: Option<u8>,
        /// The inbound connection's remote address, where the adapter
        /// passed it to [`Node::accept_from`]. Boxed: every event is moved
        /// on its way to the application, and this cold field would
        /// otherwise make all of them 16 bytes larger.
        remote: Option<Box<SocketAddr>>,
        /// Why.
        cause: CloseCause,
    },
    /// A message from a replica, in order.
    Message {
        /// The sender.
        from: u8,
        /// The connection it arrived on.
        connection: ConnectionId,
        /// The application's operation tag.
        operation: u32,
        /// The sender's header fields: `view`, `release`, application area.
        app: AppHeader,
        /// The body.
        body: Bytes,
    },
    /// A client connection was established.
    ClientConnected {
        /// The client.
        client: u128,
        /// Its connection.
        connection: ConnectionId,
        /// The client's address, where the adapter passed it to
        /// [`Node::accept_from`]. Boxed as in `HandshakeFailed`.
        remote: Option<Box<SocketAddr>>,
        /// The local address it came in on, where the adapter passed it
        /// ([`Node::note_local`]).
        local: Option<Box<SocketAddr>>,
    },
    /// A client connection ended; exactly once per `ClientConnected`.
    ClientDisconnected {
        /// The client.
        client: u128,
        /// The connection that ended.
        connection: ConnectionId,
        /// Why.
        cause: CloseCause,
    },
    /// A client request to execute: it passed the dedup window, so it is
    /// the first time the application sees it. Answer with [`Node::reply`].
    Request {
        /// Client, request number and operation.
        request: RequestHeader,
        /// The connection it arrived on.
        connection: ConnectionId,
        /// The client's header fields: `view`, `release`, application area.
        app: AppHeader,
        /// The body.
        body: Bytes,
    },
}

/// Counters since the node started.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Inbound connections refused: at accept (shutting down, or the
    /// connection table full), or at their verified `hello` because
    /// `max_connections` clients are held. Each was told `reject Busy`.
    pub accepts_refused: u64,
    /// Unauthenticated connections evicted to make room for newer ones
    /// (see [`admission`](self#admission-before-authentication)).
    pub unauthenticated_evicted: u64,
    /// Connections that closed before the handshake completed.
    pub handshakes_failed: u64,
    /// Second connections from a registered replica, closed as duplicates.
    pub duplicates_refused: u64,
    /// Dials started.
    pub dials: u64,
    /// Frames dropped because their connection is not registered (a
    /// refused duplicate closing).
    pub frames_unregistered: u64,
    /// Requests handed to the application.
    pub requests: u64,
    /// Retried requests answered from the dedup cache.
    pub dedup_hits: u64,
    /// Duplicates of requests in flight, dropped.
    pub duplicates_dropped: u64,
    /// Requests answered `Stale`.
    pub stale: u64,
    /// Requests answered `Busy` (the client's window was full).
    pub busy: u64,
    /// Client sessions evicted at the dedup caps.
    pub sessions_evicted: u64,
    /// Markers of evicted sessions dropped at the `dedup_max_clients` cap
    /// before their TTL (PROTOCOL.md §9): from then, a late retry of that
    /// client's earlier requests (one that crashed and could not be told)
    /// would run again. Nonzero means the caps are too small for the load.
    pub dedup_markers_dropped: u64,
    /// Messages and requests discarded because the application dropped its
    /// event stream. Counted by the adapters' event queue
    /// (`bus_proto::host`); a bare `Node` leaves it 0.
    pub deliveries_discarded: u64,
    /// Events queued for the application, unread (the adapters' event
    /// queue, a gauge); a bare `Node` leaves it 0.
    pub events_waiting: u64,
    /// Connections whose reading is paused because the application has
    /// not taken what they delivered (a gauge; adapters only).
    pub connections_paused: u64,
}

/// A replica's node. See the [module docs](self).
pub struct Node {
    config: ValidConfig,
    params: NodeParams,
    keys: KeyRing,
    gate: Gate,
    entropy: Box<dyn Entropy + Send>,
    table: Table,
    peers: Peers,
    /// Established client connections, by client id (the routing table).
    clients: BTreeMap<u128, ConnectionId>,
    dedup: DedupWindow,
    /// Drained by the application after every input, so it holds at most
    /// what one input produced.
    events: VecDeque<NodeEvent>,
    /// Accepted connections whose `hello` has not verified.
    pool: Pool,
    /// Admitted clients, counted against `max_connections`.
    counted: usize,
    /// The host asked to admit no new client for now.
    refusing_clients: bool,
    shutting_down: bool,
    stats: NodeStats,
    /// Buffers of written batches, for the next ones.
    batch_buffers: BatchBuffers,
}

impl core::fmt::Debug for Node {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("params", &self.params)
            .field("connections", &self.table.len())
            .field("clients", &self.clients.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node that starts dialling its higher-numbered peers at `now`.
    /// `entropy` supplies handshake nonces and backoff jitter (the OS
    /// generator in production).
    pub fn new(
        now: Now,
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        entropy: Box<dyn Entropy + Send>,
    ) -> Result<Node, NodeError> {
        if params.replica >= params.replica_count {
            return Err(NodeError::ReplicaOutOfRange {
                replica: params.replica,
                replica_count: params.replica_count,
            });
        }
        let gate = Gate::new(
            config,
            GateParams {
                cluster: params.cluster,
                local: params.replica,
                replica_count: params.replica_count,
                accept_clients: params.accept_clients,
            },
            keys.clone(),
        );
        Ok(Node {
            config: config.clone(),
            params,
            keys,
            gate,
            entropy,
            table: Table::new(table_capacity(config, params.replica_count)),
            peers: Peers::new(now.mono, config, params.replica, params.replica_count),
            clients: BTreeMap::new(),
            dedup: DedupWindow::new(config.dedup_limits()),
            events: VecDeque::new(),
            pool: Pool::default(),
            counted: 0,
            refusing_clients: false,
            shutting_down: false,
            stats: NodeStats::default(),
            batch_buffers: BatchBuffers::default(),
        })
    }

    /// Who this node is.
    pub fn params(&self) -> &NodeParams {
        &self.params
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            dedup_markers_dropped: self.dedup.markers_dropped(),
            ..self.stats
        }
    }

    /// Connections held (connecting, in handshake, established, closing).
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// The node's configuration.
    pub fn config(&self) -> &ValidConfig {
        &self.config
    }

    /// The adapter's socket for `id` has local address `local` (reported
    /// in [`ConnectionInfo`]).
    pub fn note_local(&mut self, id: ConnectionId, local: core::net::SocketAddr) {
        self.table.note_local(id, local);
    }

    /// The adapter's socket for dial `id` reached `remote` (before
    /// [`Node::connected`](Self::connected)): its events and infos name it.
    pub fn dialled_to(&mut self, id: ConnectionId, remote: core::net::SocketAddr) {
        self.table.dialled_to(id, remote);
    }

    /// Every connection the node holds, as of `now`: peer, side, remote
    /// address, queue depths, round trip and counters.
    pub fn connection_infos(&self, now: Instant) -> impl Iterator<Item = ConnectionInfo> + '_ {
        self.table.infos(now)
    }

    /// Replaces the node's keys for every handshake from now on, dialled
    /// or accepted; established sessions keep the keys they derived. The
    /// replay store stays, and so does every dedup window. See
    /// [`KeyRing`] for the three phases of a rotation that refuses no
    /// dial.
    ///
    /// ```
    /// # use bus_proto::config::Config;
    /// # use bus_proto::crypto::{Key, KeyRing};
    /// # use bus_proto::entropy::SeededEntropy;
    /// # use bus_proto::node::{Node, NodeParams};
    /// # use bus_proto::time::Now;
    /// # let config = Config::default().validate().unwrap();
    /// let (old, new) = (Key::from_bytes([1; 32]), Key::from_bytes([2; 32]));
    /// let params = NodeParams { cluster: 7, replica: 0, replica_count: 3, accept_clients: true };
    /// let entropy = Box::new(SeededEntropy::new(1));
    /// let mut node = Node::new(Now::default(), &config, params, KeyRing::new(old.clone()), entropy)?;
    /// node.set_keys(KeyRing::new(old.clone()).with_previous(new.clone())); // phase 1, every node
    /// node.set_keys(KeyRing::new(new.clone()).with_previous(old)); // phase 2, node by node
    /// node.set_keys(KeyRing::new(new)); // phase 3
    /// # Ok::<(), bus_proto::node::NodeError>(())
    /// ```
    pub fn set_keys(&mut self, keys: KeyRing) {
        self.gate.set_keys(keys.clone());
        self.keys = keys;
    }

    /// Whether [`Node::shutdown`] started: accepts are refused from then on.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Accepted connections whose `hello` has not verified yet (the
    /// unauthenticated pool).
    pub fn handshakes_in_flight(&self) -> usize {
        self.pool.len()
    }

    /// True while the unauthenticated pool is at least half full.
    pub fn under_handshake_load(&self) -> bool {
        self.pool.len().saturating_mul(2) >= self.config.max_handshakes_in_flight
    }

    /// Whether a transport that can make a new peer at `remote` prove it
    /// owns that address before admitting it (QUIC's Retry) should: under
    /// load, or when the address already holds a place in the pool. A
    /// source that has not proved its address then never evicts a
    /// handshake, since eviction needs a full pool or a full address.
    pub fn wants_address_proof(&self, remote: SocketAddr) -> bool {
        self.under_handshake_load() || self.pool.count(Some(admission::group(remote.ip()))) > 0
    }

    /// While `refuse` holds, a client whose `hello` verifies is told `Busy`
    /// instead of admitted (replicas are still admitted): the host sets it
    /// while its application's client-plane queue is full, so connection
    /// churn cannot grow that queue.
    pub fn refuse_clients(&mut self, refuse: bool) {
        self.refusing_clients = refuse;
    }

    /// Admitted clients (their `hello` verified), counted against
    /// `max_connections`.
    pub fn admitted_clients(&self) -> usize {
        self.counted
    }

    /// The remote address `id` was accepted from, if the adapter said.
    pub fn remote(&self, id: ConnectionId) -> Option<SocketAddr> {
        self.table.get(id)?.remote
    }

    /// The local address of `id`'s socket, if the adapter said.
    pub fn local(&self, id: ConnectionId) -> Option<SocketAddr> {
        self.table.get(id)?.local
    }

    /// Whether replica `replica` has a registered connection.
    pub fn is_connected(&self, replica: u8) -> bool {
        self.peers.connected(replica).is_some()
    }

    /// The backoff exponent of `replica`: failed or short-lived dials since
    /// a connection last stayed up for `reconnect_max`.
    pub fn dial_failures(&self, replica: u8) -> u32 {
        self.peers.failures(replica)
    }

    /// The registered connection to replica `replica`, if any.
    pub fn peer_connection(&self, replica: u8) -> Option<ConnectionId> {
        self.peers.connected(replica)
    }

    /// The connection serving client `client`, if any.
    pub fn client_connection(&self, client: u128) -> Option<ConnectionId> {
        self.clients.get(&client).copied()
    }

    /// The dedup window (read-only: for metrics and tests).
    pub fn dedup(&self) -> &DedupWindow {
        &self.dedup
    }

    /// The handshake gate (read-only: for metrics and tests).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// True while `id` names a connection this core holds (connecting,
    /// open or closing); false once it is over and freed.
    pub fn holds(&self, id: ConnectionId) -> bool {
        self.table.get(id).is_some()
    }

    /// The connection behind `id` (read-only: for metrics and tests).
    pub fn connection(&self, id: ConnectionId) -> Option<&Connection> {
        self.table.conn(id)
    }

    /// An inbound socket was accepted, remote address unknown. See
    /// [`Node::accept_from`].
    pub fn accept(&mut self, now: Now, binding: Binding) -> Result<ConnectionId, AcceptError> {
        self.accept_from(now, None, binding)
    }

    /// An inbound socket was accepted from `remote`. It joins the
    /// unauthenticated pool: if the pool (or `remote`'s share of it) is
    /// full, the oldest member of the address holding the most is evicted
    /// (closed at once, without an answer) to make room; the new socket is
    /// never refused for it. Refused only while shutting down or when the
    /// connection table is full ([`table_capacity`]): then write
    /// [`AcceptError::reject`]'s bytes if the socket takes them, and close
    /// it. `binding` is the transport's channel binding ([`Binding::NONE`]
    /// for plain TCP).
    pub fn accept_from(
        &mut self,
        now: Now,
        remote: Option<SocketAddr>,
        binding: Binding,
    ) -> Result<ConnectionId, AcceptError> {
        self.admit_socket(now, remote, Some(binding))
    }

    /// Accepts a socket, bound now or (`None`) once its transport is ready.
    fn admit_socket(
        &mut self,
        now: Now,
        remote: Option<SocketAddr>,
        binding: Option<Binding>,
    ) -> Result<ConnectionId, AcceptError> {
        if self.shutting_down {
            self.stats.accepts_refused += 1;
            return Err(AcceptError::ShuttingDown {
                cluster: self.params.cluster,
            });
        }
        let address = remote.map(|r| admission::group(r.ip()));
        self.make_room(now.mono, address);
        let conn = match binding {
            Some(binding) => Connection::accept(now.mono, &self.config, binding),
            None => Connection::accept_pending(now.mono, &self.config),
        };
        let Some(id) = self.table.insert(Entry {
            origin: Origin::Accepted,
            socket: Socket::Open(Box::new(conn)),
            announced: false,
            unauthenticated: true,
            counted: false,
            remote,
            established_at: None,
            plane: None,
            local: None,
        }) else {
            self.stats.accepts_refused += 1;
            return Err(AcceptError::TableFull {
                held: self.table.len(),
                cluster: self.params.cluster,
            });
        };
        let table = &self.table;
        self.pool
            .join(id, address, self.config.max_handshakes_in_flight, |id| {
                table.get(id).is_some_and(|e| e.unauthenticated)
            });
        Ok(id)
    }

    /// Evicts as the pool's caps require before a connection from
    /// `address` joins. Sockets whose address the adapter did not give
    /// share only the node-wide cap.
    fn make_room(&mut self, now: Instant, address: Option<core::net::IpAddr>) {
        let per_address = self.config.max_unauthenticated_per_address;
        if address.is_some() && self.pool.count(address) >= per_address {
            self.evict(now, Some(address));
        } else if self.pool.len() >= self.config.max_handshakes_in_flight {
            self.evict(now, None);
        }
    }

    /// Evicts one member of the unauthenticated pool (of `address` if
    /// given), if there is one.
    fn evict(&mut self, now: Instant, address: Option<Option<core::net::IpAddr>>) {
        let table = &self.table;
        let Some(id) = self.pool.victim(address, |id| {
            table.get(id).is_some_and(|e| e.unauthenticated)
        }) else {
            return;
        };
        self.stats.unauthenticated_evicted += 1;
        if let Some(conn) = self.table.conn_mut(id) {
            conn.evict();
        }
        // Closed without a frame to flush: the slot is free at once.
        self.settle(now, id);
    }

    /// `id` left the unauthenticated pool: its `hello` verified (`client`:
    /// as a client's, now counted against `max_connections`), or it closed.
    fn authenticated(&mut self, id: ConnectionId, client: bool) {
        let Some(entry) = self.table.get_mut(id) else {
            return;
        };
        if core::mem::take(&mut entry.unauthenticated) {
            self.pool
                .leave(entry.remote.map(|r| admission::group(r.ip())));
        }
        if client && !core::mem::replace(&mut entry.counted, true) {
            self.counted += 1;
        }
    }

    /// `id` closed: it leaves the pool, and a client frees its place.
    fn released(&mut self, id: ConnectionId) {
        self.authenticated(id, false);
        if let Some(entry) = self.table.get_mut(id)
            && core::mem::take(&mut entry.counted)
        {
            self.counted -= 1;
        }
    }

    /// Accepted connection `id` came in on a listener of `plane` only: a
    /// `hello` for the other plane is refused (`reject UnknownPeer`) before
    /// any MAC is computed. Call it right after accepting, before input.
    pub fn only_plane(&mut self, id: ConnectionId, plane: crate::wire::Plane) {
        if let Some(entry) = self.table.get_mut(id)
            && matches!(entry.origin, Origin::Accepted)
        {
            entry.plane = Some(plane);
        }
    }

    /// An inbound socket was accepted from `remote` whose transport (TLS,
    /// a WebSocket upgrade) must handshake before the bus's own
    /// handshake: as [`Node::accept_from`], but the connection reads
    /// nothing until [`Node::transport_ready`]. Its handshake deadlines
    /// run from now and cover both handshakes; it sits in the
    /// unauthenticated pool meanwhile.
    pub fn accept_pending(
        &mut self,
        now: Now,
        remote: Option<SocketAddr>,
    ) -> Result<ConnectionId, AcceptError> {
        self.admit_socket(now, remote, None)
    }

    /// The socket for an [`Action::Connect`] is open, and its transport
    /// (TLS, a WebSocket upgrade) starts handshaking: the `hello` waits for
    /// [`Node::transport_ready`], and the whole handshake, the
    /// transport's and the bus's, must end within `handshake_timeout` from
    /// now, or the dial fails.
    pub fn connected_pending(&mut self, now: Now, id: ConnectionId) -> Result<(), SocketError> {
        let deadline = now.mono.saturating_add(self.config.handshake_timeout);
        self.table.start_transport(id, deadline)
    }

    /// The transport under `id` finished its handshake with this channel
    /// `binding` ([`Binding::NONE`] where it has none): a dialled
    /// connection sends its `hello` now, an accepted one reads the
    /// `hello`. Only for connections started with
    /// [`Node::accept_pending`] or [`Node::connected_pending`].
    pub fn transport_ready(
        &mut self,
        now: Now,
        id: ConnectionId,
        binding: Binding,
    ) -> Result<(), SocketError> {
        if let Some(conn) = self.table.conn_mut(id) {
            if !conn.is_transport_pending() {
                return Err(SocketError::NotConnecting(id));
            }
            conn.bind(now.mono, binding);
            self.after_input(now, id);
            return Ok(());
        }
        let deadline = self.table.check_connecting(id, true)?;
        self.dial_on(now, id, binding, Some(deadline))
    }

    /// The socket for an [`Action::Connect`] is open: the handshake starts.
    pub fn connected(
        &mut self,
        now: Now,
        id: ConnectionId,
        binding: Binding,
    ) -> Result<(), SocketError> {
        self.table.check_connecting(id, false)?;
        self.dial_on(now, id, binding, None)
    }

    /// Starts the bus handshake on `id`'s open socket, within `deadline`
    /// if the transport's handshake already spent part of the budget.
    fn dial_on(
        &mut self,
        now: Now,
        id: ConnectionId,
        binding: Binding,
        deadline: Option<Instant>,
    ) -> Result<(), SocketError> {
        let Some(Entry {
            origin: Origin::Dialed(replica),
            ..
        }) = self.table.get(id)
        else {
            return Err(SocketError::NotConnecting(id));
        };
        let params = crate::connection::DialParams {
            cluster: self.params.cluster,
            local: PeerId::Replica(self.params.replica),
            acceptor: *replica,
            keys: &self.keys,
            binding,
        };
        match Connection::dial(now.mono, now.wall, &self.config, params, &mut *self.entropy) {
            Ok(mut conn) => {
                if let Some(deadline) = deadline {
                    conn.limit_handshake_deadline(deadline);
                }
                self.table.open(id, conn);
                Ok(())
            }
            Err(error) => {
                self.dial_failed(now.mono, id);
                Err(SocketError::Dial {
                    connection: id,
                    error,
                })
            }
        }
    }

    /// The connect for an [`Action::Connect`] failed; the peer is dialled
    /// again after a backoff. Stale ids are ignored.
    pub fn connect_failed(&mut self, now: Now, id: ConnectionId) {
        if matches!(
            self.table.get(id),
            Some(Entry {
                socket: Socket::Connecting { .. },
                ..
            })
        ) {
            self.dial_failed(now.mono, id);
        }
    }

    /// Bytes read from `id`'s socket, in order.
    pub fn handle_input(
        &mut self,
        now: Now,
        id: ConnectionId,
        bytes: &[u8],
    ) -> Result<(), SocketError> {
        self.input(now, id, Input::Bytes(bytes), None)
    }

    /// `id`'s receive buffer, to read into without a copy; then call
    /// [`Node::handle_read`]. See [`Connection::read_buffer`].
    pub fn read_buffer(&mut self, id: ConnectionId) -> Option<&mut BytesMut> {
        self.table.conn_mut(id).and_then(|c| c.read_buffer())
    }

    /// Processes bytes appended to [`Node::read_buffer`].
    pub fn handle_read(&mut self, now: Now, id: ConnectionId) -> Result<(), SocketError> {
        self.input(now, id, Input::Read, None)
    }

    /// Lends `id`'s decoder to its socket task; see [`LentDecoder`].
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    pub(crate) fn lend_decoder(&mut self, id: ConnectionId) -> Option<LentDecoder> {
        self.table.conn_mut(id)?.lend_decoder()
    }

    /// The lent decoder is back with new bytes, perhaps verified; its
    /// frames are handled as [`Node::handle_read_into`] handles them.
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    pub(crate) fn handle_verified_into(
        &mut self,
        now: Now,
        id: ConnectionId,
        decoder: LentDecoder,
        deliver: &mut dyn FnMut(NodeEvent),
    ) {
        let _ = self.input(now, id, Input::Verified(decoder), Some(deliver));
    }

    /// [`Node::handle_read`] for a caller with its own event queue: a
    /// registered replica's messages go to `deliver` instead of
    /// [`Node::poll_event`]'s queue, saving a move per message. Only while
    /// that queue is empty: nothing waiting there (such as the peer's
    /// `PeerConnected`) is overtaken. The caller still polls the other
    /// events after the call, and before its next one.
    pub fn handle_read_into(
        &mut self,
        now: Now,
        id: ConnectionId,
        deliver: &mut dyn FnMut(NodeEvent),
    ) -> Result<(), SocketError> {
        self.input(now, id, Input::Read, Some(deliver))
    }

    /// Input for `id`: a registered replica's messages go straight to the
    /// application's queue (`direct`, or ours), everything else through
    /// [`Node::settle`].
    fn input(
        &mut self,
        now: Now,
        id: ConnectionId,
        input: Input<'_>,
        direct: Option<&mut dyn FnMut(NodeEvent)>,
    ) -> Result<(), SocketError> {
        let events = &mut self.events;
        let mut direct = direct.filter(|_| events.is_empty());
        let mut deliver = |frame| {
            if let Some(event) = message_event(id, frame) {
                match &mut direct {
                    Some(direct) => direct(event),
                    None => events.push_back(event),
                }
            }
        };
        self.table.input(now.mono, id, input, Some(&mut deliver))?;
        self.after_input(now, id);
        Ok(())
    }

    /// The adapter stopped (`true`) or resumed (`false`) reading `id`'s
    /// socket because the application has not taken its deliveries; see
    /// [`Connection::set_reading_paused`]. Stale ids are ignored.
    pub fn set_reading_paused(&mut self, now: Now, id: ConnectionId, paused: bool) {
        if let Some(conn) = self.table.conn_mut(id) {
            conn.set_reading_paused(now.mono, paused);
            self.table.touch(id);
        }
    }

    /// `id`'s transport refused a frame of `size` bytes over the frame
    /// limit before buffering it (a WebSocket message): the connection
    /// closes as it would on an oversize frame from its decoder.
    pub fn frame_too_large(&mut self, now: Now, id: ConnectionId, size: u32) {
        if let Some(conn) = self.table.conn_mut(id) {
            conn.refuse_frame_size(size);
            self.after_input(now, id);
        }
    }

    /// `id`'s socket reached EOF or failed.
    pub fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        let next = self.table.eof(now.mono, id);
        self.follow(now.mono, id, next);
    }

    /// Runs every timer due at `now`: connection deadlines, dials, dedup
    /// expiry. Harmless when called early.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some((id, next)) = self.table.fire_expired(now.mono) {
            self.follow(now.mono, id, next);
        }
        if !self.shutting_down {
            while let Some(replica) = self.peers.pop_due(now.mono) {
                self.start_dial(now.mono, replica);
            }
        }
        let expired = self.dedup.expire(now.mono);
        self.stats.sessions_evicted += expired as u64;
    }

    /// Sends a message to replica `to`. Never blocks: a full queue is
    /// [`RouteError::Backpressure`].
    pub fn send(&mut self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError> {
        self.send_with(to, operation, AppHeader::ZERO, body)
    }

    /// [`Node::send`] with the application's header fields: `view`,
    /// `release` and the application area (consensus metadata; a message
    /// may be header-only).
    pub fn send_with(
        &mut self,
        to: u8,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), RouteError> {
        if to >= self.params.replica_count {
            return Err(RouteError::UnknownReplica {
                replica: to,
                replica_count: self.params.replica_count,
            });
        }
        if to == self.params.replica {
            return Err(RouteError::Local(to));
        }
        let id = self
            .peers
            .connected(to)
            .ok_or(RouteError::Disconnected(to))?;
        let conn = self
            .table
            .conn_mut(id)
            .ok_or(RouteError::Disconnected(to))?;
        conn.send_with(app, Kind::Message { operation }, body)
            .map_err(|e| route_error(to, e))?;
        self.table.mark_ready(id);
        Ok(())
    }

    /// Starts a graceful shutdown: no more dials or accepts; every
    /// connection closes with `Shutdown` within `close_grace`. Done when
    /// [`Node::connections`] is zero.
    pub fn shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        self.peers.cancel_all();
        let ids: alloc::vec::Vec<_> = self.table.ids().collect();
        for id in ids {
            match self.table.get(id).map(|e| &e.socket) {
                Some(Socket::Connecting { .. }) => self.dial_failed(now.mono, id),
                Some(Socket::Open(_)) => {
                    if let Some(conn) = self.table.conn_mut(id) {
                        conn.close(now.mono, CloseReason::Shutdown);
                    }
                    self.settle(now.mono, id);
                }
                None => {}
            }
        }
    }

    /// The next batch to write, and to which connection.
    #[must_use]
    pub fn poll_transmit(
        &mut self,
        now: Now,
    ) -> Option<(ConnectionId, crate::connection::Transmit)> {
        loop {
            let id = self.table.first_ready()?;
            if let Some(transmit) = self.poll_transmit_for(now, id) {
                return Some((id, transmit));
            }
            self.table.pop_ready();
        }
    }

    /// The next batch for one connection, for adapters with a task per
    /// socket. Prefer [`Node::poll_transmit`] otherwise.
    #[must_use]
    pub fn poll_transmit_for(
        &mut self,
        now: Now,
        id: ConnectionId,
    ) -> Option<crate::connection::Transmit> {
        self.poll_unsealed_for(now, id).map(Unsealed::seal)
    }

    /// [`Node::poll_transmit_for`] but for the checksums or tags: seal the
    /// batch ([`Unsealed::seal`]) after releasing any lock around the node.
    #[must_use]
    #[inline]
    pub fn poll_unsealed_for(&mut self, now: Now, id: ConnectionId) -> Option<Unsealed> {
        let conn = self.table.conn_mut(id)?;
        let transmit = conn.poll_unsealed_in(now.mono, &mut self.batch_buffers);
        // Sending a queued `close` can finish the connection.
        self.settle(now.mono, id);
        transmit
    }

    /// Keeps the buffer of a written batch for a later one: taken back
    /// with [`bytes::Bytes::try_into_mut`] from the batch's segment cut
    /// last from it, once written and the others dropped. Bounded, see
    /// [`BatchBuffers`].
    pub fn reuse_batch_buffer(&mut self, buffer: BytesMut) {
        self.batch_buffers.reuse(buffer);
    }

    /// A connection that may have output (queued frames, a heartbeat, a
    /// close), taken off the ready list. For adapters with a task per
    /// socket: wake that socket's task, which drains
    /// [`Node::poll_transmit_for`]. Spurious entries are harmless.
    #[must_use]
    pub fn poll_ready(&mut self) -> Option<ConnectionId> {
        self.table.take_ready()
    }

    /// The next socket action.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.table.poll_action()
    }

    /// The next application event.
    ///
    /// The queue is not capped here: it holds what the inputs since the
    /// last drain produced, and each input adds at most one event per
    /// frame it completes (at most its bytes / 256) plus one per
    /// connection that changed state. So a host that drains it after every
    /// input holds it to one input's worth, and a host that must stop
    /// draining stops feeding that connection's input too (the adapters pause reading a connection while its deliveries wait unread ([`crate::host`])).
    /// [`Node::pending_events`] tells how many wait.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Events waiting for [`Node::poll_event`].
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// When to call [`Node::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.table.next_timeout(),
            self.peers.next_due(),
            self.dedup.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn follow(&mut self, now: Instant, id: ConnectionId, next: Next) {
        match next {
            Next::Settle => self.settle(now, id),
            Next::ConnectFailed => self.dial_failed(now, id),
            Next::Nothing => {}
        }
    }

    /// After bytes arrived: admits a parked `hello`, then settles.
    fn after_input(&mut self, now: Now, id: ConnectionId) {
        let only = self.table.get(id).and_then(|e| e.plane);
        if let Some(conn) = self.table.conn_mut(id)
            && let Some(hello) = conn.take_hello()
        {
            if only.is_some_and(|plane| plane != hello.plane()) {
                // A listener of the other plane: refused before any MAC
                // work, as a node that accepts no clients refuses them.
                self.stats.accepts_refused += 1;
                conn.refuse(self.params.cluster, RejectStatus::UnknownPeer);
                return self.settle(now.mono, id);
            }
            let admission = self.gate.admit(now.wall, hello, &mut *self.entropy);
            let client = match admission.outcome() {
                AdmissionOutcome::Accepted { peer } => Some(matches!(peer, PeerId::Client(_))),
                _ => None,
            };
            let full = self.counted >= self.config.max_connections || self.refusing_clients;
            if client == Some(true) && full {
                // Replicas have room of their own; clients wait.
                self.stats.accepts_refused += 1;
                if let Some(conn) = self.table.conn_mut(id) {
                    conn.refuse(self.params.cluster, RejectStatus::Busy);
                }
            } else {
                if let Some(client) = client {
                    self.authenticated(id, client);
                }
                if let Some(conn) = self.table.conn_mut(id) {
                    conn.admit(now.mono, admission);
                }
            }
        }
        self.settle(now.mono, id);
    }

    /// Handles `id`'s events, reschedules it, and frees it once it is over
    /// and flushed.
    fn settle(&mut self, now: Instant, id: ConnectionId) {
        while let Some(event) = self.table.conn_mut(id).and_then(|c| c.poll_event()) {
            match event {
                Event::Established { peer, .. } => self.on_established(now, id, peer),
                Event::Message(frame) => self.on_frame(now, id, frame),
                Event::Closed { reason } => self.on_closed(now, id, reason),
            }
        }
        match self.table.conn_mut(id) {
            Some(conn) if conn.is_drained() => {
                self.table.remove(id);
            }
            Some(_) => self.table.touch(id),
            None => {}
        }
    }

    fn on_established(&mut self, now: Instant, id: ConnectionId, peer: PeerId) {
        if let Some(entry) = self.table.get_mut(id) {
            entry.established_at = Some(now);
        }
        match peer {
            PeerId::Replica(replica) => self.install_peer(now, id, replica),
            PeerId::Client(client) => self.install_client(now, id, client),
        }
    }

    fn on_frame(&mut self, now: Instant, id: ConnectionId, frame: crate::wire::Frame) {
        // Only registered connections speak for a peer: a refused duplicate
        // may still deliver frames while its close is in flight.
        if !self.table.get(id).is_some_and(|e| e.announced) {
            self.stats.frames_unregistered += 1;
            return;
        }
        if let Kind::Request(request) = frame.header.kind {
            let (app, body) = app_and_body(frame);
            return self.on_request(now, id, request, app, body);
        }
        // The connection only delivers the data commands its plane and
        // side allow, so nothing else reaches here.
        if let Some(event) = message_event(id, frame) {
            self.events.push_back(event);
        }
    }

    fn on_closed(&mut self, now: Instant, id: ConnectionId, cause: CloseCause) {
        let Some(entry) = self.table.get_mut(id) else {
            return;
        };
        let (origin, announced, remote) = (entry.origin, entry.announced, entry.remote);
        let since = entry.established_at;
        self.released(id);
        if since.is_none() {
            self.stats.handshakes_failed += 1;
        }
        let established = self
            .table
            .conn_mut(id)
            .and_then(|c| c.peer())
            .filter(|_| announced);
        match established {
            Some(PeerId::Replica(replica)) => {
                let lasted = since.map(|t| now.saturating_duration_since(t));
                self.peers
                    .lost(now, replica, id, lasted, &mut *self.entropy);
                self.events.push_back(NodeEvent::PeerDisconnected {
                    replica,
                    connection: id,
                    cause,
                });
            }
            Some(PeerId::Client(client)) => {
                // Only this connection's own route: a newer one stays.
                if self.clients.get(&client) == Some(&id) {
                    self.clients.remove(&client);
                }
                self.events.push_back(NodeEvent::ClientDisconnected {
                    client,
                    connection: id,
                    cause,
                });
            }
            None => {
                let dialed = match origin {
                    Origin::Dialed(replica) => {
                        self.peers.dial_ended(now, replica, id, &mut *self.entropy);
                        Some(replica)
                    }
                    Origin::Accepted => None,
                };
                if since.is_none() {
                    self.events.push_back(NodeEvent::HandshakeFailed {
                        connection: id,
                        dialed,
                        remote: remote.map(Box::new),
                        cause,
                    });
                }
            }
        }
    }

    fn install_peer(&mut self, now: Instant, id: ConnectionId, replica: u8) {
        match self.peers.connected(replica) {
            Some(winner) if winner != id && self.table.get(winner).is_some() => {
                // The registered connection stays; the newcomer goes.
                self.stats.duplicates_refused += 1;
                if let Some(conn) = self.table.conn_mut(id) {
                    conn.close(now, CloseReason::Duplicate);
                }
            }
            _ => {
                self.peers.install(replica, id);
                self.announce(
                    id,
                    NodeEvent::PeerConnected {
                        replica,
                        connection: id,
                        remote: self.remote(id).map(Box::new),
                        local: self.local(id).map(Box::new),
                    },
                );
            }
        }
    }

    fn announce(&mut self, id: ConnectionId, event: NodeEvent) {
        if let Some(entry) = self.table.get_mut(id) {
            entry.announced = true;
        }
        self.events.push_back(event);
    }

    fn start_dial(&mut self, now: Instant, replica: u8) {
        let deadline = now.saturating_add(self.config.handshake_timeout);
        match self.table.insert(Entry {
            origin: Origin::Dialed(replica),
            socket: Socket::Connecting {
                deadline,
                socket_open: false,
            },
            announced: false,
            unauthenticated: false,
            counted: false,
            remote: None,
            established_at: None,
            plane: None,
            local: None,
        }) {
            Some(id) => {
                self.stats.dials += 1;
                self.peers.dialing(replica, id);
                self.table.push_action(Action::Connect {
                    connection: id,
                    replica,
                });
            }
            None => self.peers.retry_later(now, replica, &mut *self.entropy),
        }
    }

    /// A dial that never got a working connection: free it, back off.
    fn dial_failed(&mut self, now: Instant, id: ConnectionId) {
        if let Some(Entry {
            origin: Origin::Dialed(replica),
            ..
        }) = self.table.remove(id)
            && !self.shutting_down
        {
            self.peers.dial_ended(now, replica, id, &mut *self.entropy);
        }
    }
}

/// The most connections a node holds at once: `max_connections` admitted
/// clients, the unauthenticated pool (`max_handshakes_in_flight`), two per
/// replica (the one we dial and the one that dials us), and as many again
/// as the pool for connections that closed and still flush a last frame.
/// An accept beyond it is refused with `reject Busy`.
pub fn table_capacity(config: &ValidConfig, replica_count: u8) -> usize {
    config
        .max_connections
        .saturating_add(config.max_handshakes_in_flight.saturating_mul(2))
        .saturating_add(2 * usize::from(replica_count))
}

fn route_error(replica: u8, error: crate::connection::SendError) -> RouteError {
    use crate::connection::SendError;
    match error {
        SendError::Backpressure {
            queued_frames,
            queued_bytes,
            ..
        } => RouteError::Backpressure {
            replica,
            queued_frames,
            queued_bytes,
        },
        SendError::Closed | SendError::NotAllowed { .. } => RouteError::Disconnected(replica),
        SendError::Encode(error) => RouteError::Encode { replica, error },
    }
}

/// A replica's `message` frame as the application's event; `None` for
/// another command.
fn message_event(connection: ConnectionId, frame: crate::wire::Frame) -> Option<NodeEvent> {
    let (Kind::Message { operation }, from) = (&frame.header.kind, frame.header.replica) else {
        return None;
    };
    let operation = *operation;
    let (app, body) = app_and_body(frame);
    Some(NodeEvent::Message {
        from,
        connection,
        operation,
        app,
        body,
    })
}

/// A data frame's application fields and body, moved field by field: the
/// cheapest way through, per message.
fn app_and_body(frame: crate::wire::Frame) -> (AppHeader, Bytes) {
    let crate::wire::Frame { header, body } = frame;
    let crate::wire::Header {
        view,
        release,
        app: area,
        ..
    } = header;
    let app = AppHeader {
        view,
        release,
        area,
    };
    (app, body)
}
