//! A replica's node as the adapters run it: the core node plus the
//! application's event queues ([`deliveries`](super::deliveries)).

use super::Machine;
use super::deliveries::Deliveries;
use super::driver::{Runtime, Shared};
use super::layer::{LayerError, Transport};
use super::shutdown::{ShutdownReport, Tally};
use crate::config::ValidConfig;
use crate::connection::{LentDecoder, Transmit, Unsealed};
use crate::crypto::KeyRing;
use crate::entropy::Entropy;
use crate::handshake::Binding;
use crate::node::{
    self, AcceptError, Action, ConnectionId, NodeError, NodeEvent, NodeParams, NodeStats,
    ReplyError, RouteError,
};
use crate::time::{Instant, Now};
use crate::wire::RequestHeader;
use crate::wire::{AppHeader, Plane};
use bytes::{Bytes, BytesMut};
use core::net::SocketAddr;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use std::boxed::Box;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::vec::Vec;

/// Adapter settings that are not part of the protocol configuration.
/// Start from the defaults and set what differs, field by field or with
/// the builder methods (new settings will be added: it cannot be built
/// with a struct literal).
///
/// ```
/// use bus_proto::host::{NodeOptions, Transport};
/// let options = NodeOptions::default()
///     .peer(1, "10.0.0.2:7000".parse().unwrap())
///     .peer_via(2, "10.0.0.3:7443".parse().unwrap(), Transport::tcp())
///     .message_capacity(1024);
/// assert_eq!(options.peers.len(), 2);
/// let mut same = NodeOptions::default();
/// same.message_capacity = 1024;
/// assert_eq!(same.message_capacity, options.message_capacity);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// Where the peers listen, by replica id. Only peers this node dials
    /// (higher ids) need one; `Node::set_address` changes it later.
    pub peers: BTreeMap<u8, SocketAddr>,
    /// Replica messages delivered but not yet read by the application
    /// before the replica connections whose messages wait stop being read
    /// (backpressure through TCP, on those connections only; their
    /// liveness deadline is suspended meanwhile). Default 4096. It may be
    /// exceeded by one read chunk per connection. Also bounds the
    /// `HandshakeFailed` events kept (more are logged, counted in
    /// `NodeStats::handshakes_failed`, and dropped).
    pub message_capacity: usize,
    /// The same budget for client requests, kept apart so a client flood
    /// never pauses replica traffic. Default 4096.
    pub request_capacity: usize,
    /// Bytes each socket task reads at once into its reused buffer.
    /// Default 128 KiB; a connection starts with 1 KiB reads and doubles
    /// them while they fill up, so only busy connections read whole
    /// chunks. While a connection keeps reading whole chunks and the
    /// application still holds bodies from earlier ones, it sets up to 8
    /// of those buffers (a chunk and a partial frame each) aside to read
    /// into again once released, which costs fewer page faults than fresh
    /// allocations; a read of less than half a chunk lets them go.
    pub read_chunk: usize,
    /// How each peer is dialled, by replica id; plain TCP where absent.
    /// The dialled replica must listen on the same transport.
    pub peer_transports: BTreeMap<u8, Transport>,
}

impl NodeOptions {
    /// Replica `replica` listens at `address` (plain TCP).
    pub fn peer(mut self, replica: u8, address: SocketAddr) -> Self {
        self.peers.insert(replica, address);
        self
    }

    /// Replica `replica` listens at `address` and is dialled over
    /// `transport`.
    pub fn peer_via(mut self, replica: u8, address: SocketAddr, transport: Transport) -> Self {
        self.peers.insert(replica, address);
        self.peer_transports.insert(replica, transport);
        self
    }

    /// Sets [`NodeOptions::message_capacity`](#structfield.message_capacity).
    pub fn message_capacity(mut self, messages: usize) -> Self {
        self.message_capacity = messages;
        self
    }

    /// Sets [`NodeOptions::request_capacity`](#structfield.request_capacity).
    pub fn request_capacity(mut self, requests: usize) -> Self {
        self.request_capacity = requests;
        self
    }

    /// Sets [`NodeOptions::read_chunk`](#structfield.read_chunk).
    pub fn read_chunk(mut self, bytes: usize) -> Self {
        self.read_chunk = bytes;
        self
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            peers: BTreeMap::new(),
            message_capacity: 4096,
            request_capacity: 4096,
            read_chunk: 128 << 10,
            peer_transports: BTreeMap::new(),
        }
    }
}

/// Why an accepted socket was turned away.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The node refused it on plain TCP: write [`Refused::reject`]'s frame
    /// first, so the dialer knows to retry later.
    #[error(transparent)]
    Node(AcceptError),
    /// The node refused it on a layered transport, whose handshake has not
    /// even started: it is closed without an answer.
    #[error("{error} (on {transport}: closed without an answer)")]
    Layered {
        /// Why the node refused it.
        error: AcceptError,
        /// The listener's transport.
        transport: &'static str,
    },
    /// The listener's transport layer could not start for it.
    #[error("the {transport} layer could not start: {error}")]
    Layer {
        /// The listener's transport.
        transport: &'static str,
        /// What the layer reported.
        error: LayerError,
    },
}

impl Refused {
    /// The frame to write before closing, if the refusal has one (plain
    /// TCP only: a layered socket could not carry it).
    pub fn reject(&self) -> Option<[u8; crate::wire::HEADER_SIZE]> {
        match self {
            Refused::Node(error) => Some(error.reject()),
            _ => None,
        }
    }
}

/// The core node plus the application's event queue.
pub struct NodeFront {
    node: node::Node,
    events: Deliveries,
    waker: Option<Waker>,
    /// Events went straight into `events` since the last `deliver`.
    direct: bool,
    /// Set once shutdown started.
    tally: Option<Tally>,
    /// Shutdown finished: the event stream ends once drained.
    finished: bool,
}

impl NodeFront {
    /// Runs socket input with a sink for a registered replica's messages,
    /// which skip the core's queue: one move into the application's
    /// instead of two. `deliver` wakes the application for them.
    fn input_direct(&mut self, input: impl FnOnce(&mut node::Node, &mut dyn FnMut(NodeEvent))) {
        let (node, events, direct) = (&mut self.node, &mut self.events, &mut self.direct);
        input(node, &mut |event| *direct |= events.push(event));
    }

    /// Restricts an accepted connection to a listener's one plane.
    fn only_plane(&mut self, id: ConnectionId, plane: Option<Plane>) {
        if let Some(plane) = plane {
            self.node.only_plane(id, plane);
        }
    }

    /// A node started at `now`, with its event queue sized by `options`.
    pub fn new(
        now: Now,
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        entropy: Box<dyn Entropy + Send>,
        options: &NodeOptions,
    ) -> Result<Self, NodeError> {
        Ok(NodeFront {
            node: node::Node::new(now, config, params, keys, entropy)?,
            events: Deliveries::new(options.message_capacity, options.request_capacity),
            waker: None,
            direct: false,
            tally: None,
            finished: false,
        })
    }
}

impl Machine for NodeFront {
    forward_socket_io!(node);

    fn handle_read(&mut self, now: Now, id: ConnectionId, buffer: BytesMut) {
        // A stale id means the connection is already gone; the socket
        // task learns that from `Disconnect`.
        let Some(slot) = self.node.read_buffer(id) else {
            return;
        };
        *slot = buffer;
        self.input_direct(|node, deliver| {
            let _ = node.handle_read_into(now, id, deliver);
        });
    }

    fn handle_verified(&mut self, now: Now, id: ConnectionId, decoder: LentDecoder) {
        self.input_direct(|node, deliver| node.handle_verified_into(now, id, decoder, deliver));
    }

    fn deliver(&mut self) {
        let mut delivered = core::mem::take(&mut self.direct);
        while let Some(event) = self.node.poll_event() {
            if let Some(tally) = &mut self.tally
                && let NodeEvent::PeerDisconnected { cause, .. }
                | NodeEvent::ClientDisconnected { cause, .. }
                | NodeEvent::HandshakeFailed { cause, .. } = &event
            {
                tally.closed(cause);
            }
            log_event(&event);
            delivered |= self.events.push(event);
        }
        self.node.refuse_clients(self.events.client_plane_full());
        if delivered && let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
    fn reading_paused(&self, id: ConnectionId) -> bool {
        // Once shutting down, sockets keep reading so closes complete.
        if self.tally.is_some() || !self.events.may_pause() {
            return false;
        }
        // Only an established connection can have deliveries: one still
        // in its handshake always reads.
        match self.node.connection(id).filter(|c| c.is_established()) {
            Some(conn) => {
                let replica = matches!(conn.peer(), Some(crate::crypto::PeerId::Replica(_)));
                self.events.should_pause(id, replica)
            }
            None => false,
        }
    }
    fn set_reading_paused(&mut self, now: Now, id: ConnectionId, paused: bool) {
        self.node.set_reading_paused(now, id, paused);
    }
    fn accept_pending(
        &mut self,
        now: Now,
        remote: SocketAddr,
        plane: Option<Plane>,
    ) -> Option<ConnectionId> {
        match self.node.accept_pending(now, Some(remote)) {
            Ok(id) => {
                self.only_plane(id, plane);
                Some(id)
            }
            Err(error) => {
                tracing::debug!(%remote, %error, "QUIC connection refused");
                None
            }
        }
    }
    fn wants_address_proof(&self, remote: SocketAddr) -> bool {
        self.node.wants_address_proof(remote)
    }
}

fn log_event(event: &NodeEvent) {
    match event {
        NodeEvent::PeerConnected {
            replica,
            connection,
            remote,
            local,
        } => tracing::info!(replica, %connection, ?remote, ?local, "peer connected"),
        NodeEvent::PeerDisconnected {
            replica,
            connection,
            cause,
        } => tracing::info!(replica, %connection, %cause, "peer disconnected"),
        NodeEvent::ClientConnected {
            client,
            connection,
            remote,
            local,
        } => {
            tracing::debug!(client = %format_args!("{client:032x}"), %connection, ?remote, ?local, "client connected");
        }
        NodeEvent::ClientDisconnected {
            client,
            connection,
            cause,
        } => {
            tracing::debug!(client = %format_args!("{client:032x}"), %connection, %cause, "client disconnected");
        }
        // Our own dials matter to the operator; inbound failures come at
        // the rate of whatever floods the port, so they are debug only
        // (counted in `NodeStats`).
        NodeEvent::HandshakeFailed {
            connection,
            dialed: Some(replica),
            cause,
            ..
        } => tracing::info!(%connection, replica, %cause, "dial failed"),
        NodeEvent::HandshakeFailed {
            connection,
            dialed: None,
            remote,
            cause,
        } => tracing::debug!(%connection, ?remote, %cause, "inbound handshake failed"),
        NodeEvent::Message { .. } | NodeEvent::Request { .. } => {}
    }
}

/// What every adapter's `Node` and `Events` forward to.
impl<R: Runtime> Shared<NodeFront, R> {
    /// Registers a socket accepted from `remote` (if known) on a listener
    /// of `transport`. On `Err`, write the refusal's bytes
    /// ([`Refused::reject`]) if there are any and the socket takes them
    /// without waiting, then close it.
    pub fn accept_socket(
        self: &Arc<Self>,
        remote: Option<SocketAddr>,
        transport: &Transport,
    ) -> Result<super::Socket, Refused> {
        let refused = |error| {
            tracing::debug!(?remote, %error, "connection refused");
            error
        };
        // Outside the lock: starting a layer may do crypto.
        let layer = transport.new_layer().map_err(|error| {
            refused(Refused::Layer {
                transport: transport.name(),
                error,
            })
        })?;
        match layer {
            None => self
                .accept(None, (transport.name(), remote), |m, now| {
                    let id = m.node.accept_from(now, remote, Binding::NONE)?;
                    m.only_plane(id, transport.plane());
                    Ok(id)
                })
                .map_err(|error| refused(Refused::Node(error))),
            Some(layer) => self
                .accept(Some(layer), (transport.name(), remote), |m, now| {
                    let id = m.node.accept_pending(now, remote)?;
                    m.only_plane(id, transport.plane());
                    Ok(id)
                })
                .map_err(|error| {
                    refused(Refused::Layered {
                        error,
                        transport: transport.name(),
                    })
                }),
        }
    }

    /// Queues a message to replica `to`; see `Node::send`.
    pub fn send(self: &Arc<Self>, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError> {
        self.with_untimed(|m| m.node.send(to, operation, body))
    }

    /// Queues a message, waiting while the queue is full.
    pub async fn send_wait(
        self: &Arc<Self>,
        to: u8,
        operation: u32,
        body: Bytes,
    ) -> Result<(), RouteError> {
        self.retry_when_full(
            || self.send(to, operation, body.clone()),
            |e| matches!(e, RouteError::Backpressure { .. }),
        )
        .await
    }

    /// Queues messages to `to` from the front of `batch`, in order, under
    /// one lock; see `Node::send_batch`.
    pub fn send_batch(
        self: &Arc<Self>,
        to: u8,
        batch: &mut VecDeque<(u32, Bytes)>,
    ) -> Result<(), RouteError> {
        self.with_untimed(|m| {
            while let Some((operation, body)) = batch.front() {
                m.node.send(to, *operation, body.clone())?;
                batch.pop_front();
            }
            Ok(())
        })
    }

    /// [`Shared::send_batch`], waiting while the queue is full until the
    /// whole batch is queued; see `Node::send_batch_wait`.
    pub async fn send_batch_wait(
        self: &Arc<Self>,
        to: u8,
        batch: &mut VecDeque<(u32, Bytes)>,
    ) -> Result<(), RouteError> {
        self.retry_when_full(
            || self.send_batch(to, batch),
            |e| matches!(e, RouteError::Backpressure { .. }),
        )
        .await
    }

    /// Queues a message with the application's header fields.
    pub fn send_with(
        self: &Arc<Self>,
        to: u8,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), RouteError> {
        self.with_untimed(|m| m.node.send_with(to, operation, app, body))
    }

    /// Answers a client request with the application's header fields.
    pub fn reply(
        self: &Arc<Self>,
        request: RequestHeader,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), ReplyError> {
        self.with(|m, now| m.node.reply_with(now, request, app, body))
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        let state = self.lock();
        let m = &state.machine;
        NodeStats {
            deliveries_discarded: m.events.discarded(),
            events_waiting: m.events.len() as u64,
            connections_paused: state.paused.len() as u64,
            ..m.node.stats()
        }
    }

    /// Every connection the node holds, now.
    pub fn connection_infos(&self) -> Vec<crate::node::ConnectionInfo> {
        let now = self.runtime().now().mono;
        self.read(|m| m.node.connection_infos(now).collect())
    }

    /// The application dropped its event stream: later deliveries are
    /// discarded and counted (`NodeStats::deliveries_discarded`), paused
    /// sockets resume, and the node keeps its connections and sends.
    pub fn events_dropped(&self) {
        let mut state = self.lock();
        if state.machine.events.stream_dropped() {
            return;
        }
        let waiting = state.machine.events.len();
        state.machine.events.drop_stream();
        state.machine.node.refuse_clients(false);
        tracing::warn!(
            waiting,
            "the application dropped its event stream: messages and requests are discarded from now on"
        );
        self.resume_readers(&mut state);
    }

    /// True while replica `replica` has a registered connection.
    pub fn is_connected(&self, replica: u8) -> bool {
        self.read(|m| m.node.is_connected(replica))
    }

    /// Connections held (handshaking or established).
    pub fn connections(&self) -> usize {
        self.read(|m| m.node.connections())
    }

    /// Replaces the node's keys for every handshake from now on.
    pub fn set_keys(&self, keys: crate::crypto::KeyRing) {
        self.lock().machine.node.set_keys(keys);
        tracing::info!("keys replaced: new handshakes use them");
    }

    /// Reads the core node.
    pub fn inspect<T>(&self, f: impl FnOnce(&node::Node) -> T) -> T {
        self.read(|m| f(&m.node))
    }

    /// Shuts the node down gracefully within `deadline`; a second call
    /// returns an empty report.
    pub async fn shutdown(self: &Arc<Self>, deadline: Duration) -> ShutdownReport {
        let Some(total) = self.with(|m, now| {
            if m.tally.is_some() {
                return None;
            }
            m.tally = Some(Tally::default());
            let total = m.node.connections();
            m.node.shutdown(now);
            Some(total)
        }) else {
            return ShutdownReport::default();
        };
        let stragglers = self.drain(deadline).await;
        let mut state = self.lock();
        let machine = &mut state.machine;
        machine.finished = true;
        if let Some(waker) = machine.waker.take() {
            waker.wake();
        }
        let timed_out = machine.tally.map_or(0, |t| t.forced);
        ShutdownReport::new(total, timed_out + stragglers)
    }

    /// Moves up to `limit` (at least one) queued events into `out`;
    /// `Ready(0)` once the node has shut down and every event was read.
    pub fn poll_events(
        &self,
        cx: &mut Context<'_>,
        out: &mut Vec<NodeEvent>,
        limit: usize,
    ) -> Poll<usize> {
        self.poll_taking(cx, |events| events.pop_into(out, limit.max(1)))
            .map(Option::unwrap_or_default)
    }

    /// The next queued event; `Ready(None)` once the node has shut down and
    /// every event was read.
    pub fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.poll_taking(cx, Deliveries::pop).map(Option::flatten)
    }

    /// Takes what `take` finds in the queues (`Some`, or nothing when it
    /// returns a zero count), resuming paused readers it made room for.
    fn poll_taking<T: Taken>(
        &self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Deliveries) -> T,
    ) -> Poll<Option<T>> {
        let mut state = self.lock();
        let machine = &mut state.machine;
        let taken = take(&mut machine.events);
        if !taken.is_empty() {
            if state.machine.events.take_resumable() {
                // The client plane may have room again: admit clients now,
                // not at the next input.
                let full = state.machine.events.client_plane_full();
                state.machine.node.refuse_clients(full);
                if !state.paused.is_empty() {
                    self.resume_readers(&mut state);
                }
            }
            return Poll::Ready(Some(taken));
        }
        if machine.finished {
            return Poll::Ready(None);
        }
        machine.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What [`Shared::poll_taking`] took: a count of events, or one event.
trait Taken {
    fn is_empty(&self) -> bool;
}

impl Taken for usize {
    fn is_empty(&self) -> bool {
        *self == 0
    }
}

impl Taken for Option<NodeEvent> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}
