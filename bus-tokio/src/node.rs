//! A replica's node on tokio: listen, dial the peers, send, reply, events.

use crate::clock::{Clock, OsEntropy};
use crate::driver::{Machine, Owner, Shared};
use crate::error::{ListenError, StartError};
use crate::shutdown::{ShutdownReport, Tally};
use bus_proto::config::ValidConfig;
use bus_proto::connection::Transmit;
use bus_proto::crypto::KeyRing;
use bus_proto::handshake::Binding;
use bus_proto::node::{
    self, Action, ConnectionId, NodeEvent, NodeParams, NodeStats, ReplyError, RouteError,
};
use bus_proto::time::{Instant, Now};
use bus_proto::wire::RequestHeader;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};

/// Adapter settings that are not part of the protocol configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// Where the peers listen, by replica id. Only peers this node dials
    /// (higher ids) need one; [`Node::set_address`] changes it later.
    pub peers: BTreeMap<u8, SocketAddr>,
    /// Events the application has not read yet before socket tasks stop
    /// reading (backpressure through TCP). Default 4096. The queue may
    /// exceed it by what one read chunk or timer tick produces; while it is
    /// full, `HandshakeFailed` events are dropped (they are logged and
    /// counted in `NodeStats::handshakes_failed`).
    pub event_capacity: usize,
    /// Bytes each socket task reads at once into its reused buffer.
    /// Default 64 KiB.
    pub read_chunk: usize,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            peers: BTreeMap::new(),
            event_capacity: 4096,
            read_chunk: 64 << 10,
        }
    }
}

/// The core node plus the application's event queue.
pub(crate) struct NodeMachine {
    node: node::Node,
    events: VecDeque<NodeEvent>,
    capacity: usize,
    waker: Option<Waker>,
    /// Set once shutdown started.
    tally: Option<Tally>,
    /// Shutdown finished: the event stream ends once drained.
    finished: bool,
}

impl Machine for NodeMachine {
    fn take_read_buffer(&mut self, id: ConnectionId) -> Option<BytesMut> {
        self.node.read_buffer(id).map(std::mem::take)
    }
    fn handle_read(&mut self, now: Now, id: ConnectionId, buffer: BytesMut) {
        // A stale id means the connection is already gone; the socket task
        // learns that from `Disconnect`.
        if let Some(slot) = self.node.read_buffer(id) {
            *slot = buffer;
            let _ = self.node.handle_read(now, id);
        }
    }
    fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        self.node.handle_eof(now, id);
    }
    fn handle_timeout(&mut self, now: Now) {
        self.node.handle_timeout(now);
    }
    fn connected(&mut self, now: Now, id: ConnectionId) -> bool {
        self.node.connected(now, id, Binding::NONE).is_ok()
    }
    fn connect_failed(&mut self, now: Now, id: ConnectionId) {
        self.node.connect_failed(now, id);
    }
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit> {
        self.node.poll_transmit_for(now, id)
    }
    fn poll_ready(&mut self) -> Option<ConnectionId> {
        self.node.poll_ready()
    }
    fn poll_action(&mut self) -> Option<Action> {
        self.node.poll_action()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }
    fn deliver(&mut self) {
        let before = self.events.len();
        while let Some(event) = self.node.poll_event() {
            if let Some(tally) = &mut self.tally {
                if let NodeEvent::PeerDisconnected { cause, .. }
                | NodeEvent::ClientDisconnected { cause, .. }
                | NodeEvent::HandshakeFailed { cause, .. } = &event
                {
                    tally.closed(cause);
                }
            }
            log_event(&event);
            // Diagnostics must not grow a full queue: unauthenticated
            // sockets could otherwise add events without bound. They are
            // logged above and counted in the core's stats.
            if self.events.len() >= self.capacity
                && matches!(event, NodeEvent::HandshakeFailed { .. })
            {
                continue;
            }
            self.events.push_back(event);
        }
        if self.events.len() > before {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
    fn reading_paused(&self) -> bool {
        // Once shutting down, sockets keep reading so closes complete.
        self.tally.is_none() && self.events.len() >= self.capacity
    }
    fn connections(&self) -> usize {
        self.node.connections()
    }
}

fn log_event(event: &NodeEvent) {
    match event {
        NodeEvent::PeerConnected {
            replica,
            connection,
        } => {
            tracing::info!(replica, %connection, "peer connected");
        }
        NodeEvent::PeerDisconnected {
            replica,
            connection,
            cause,
        } => tracing::info!(replica, %connection, %cause, "peer disconnected"),
        NodeEvent::ClientConnected { client, connection } => {
            tracing::debug!(client = %format_args!("{client:032x}"), %connection, "client connected");
        }
        NodeEvent::ClientDisconnected {
            client,
            connection,
            cause,
        } => {
            tracing::debug!(client = %format_args!("{client:032x}"), %connection, %cause, "client disconnected");
        }
        NodeEvent::HandshakeFailed {
            connection,
            dialed,
            cause,
        } => tracing::info!(%connection, ?dialed, %cause, "handshake failed"),
        NodeEvent::Message { .. } | NodeEvent::Request { .. } => {}
    }
}

/// A replica's node running on tokio. Cheap to clone; every clone drives
/// the same node.
///
/// ```no_run
/// use bus_tokio::{Node, NodeOptions};
/// use bus_tokio::bus_proto::config::Config;
/// use bus_tokio::bus_proto::crypto::{Key, KeyRing};
/// use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::default().validate()?;
/// let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
/// let params = NodeParams { cluster: 7, replica: 0, replica_count: 3, accept_clients: true };
/// let mut options = NodeOptions::default();
/// options.peers.insert(1, "127.0.0.1:7001".parse()?);
/// options.peers.insert(2, "127.0.0.1:7002".parse()?);
/// let (node, mut events) = Node::start(&config, params, keys, options)?;
/// node.listen("127.0.0.1:7000").await?;
/// while let Some(event) = events.recv().await {
///     if let NodeEvent::Request { request, body } = event {
///         node.reply(request, body)?; // echo
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    shared: Arc<Owner<NodeMachine>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node on the current tokio runtime (multi- or
    /// current-thread). It dials its higher-numbered peers once their
    /// addresses are known ([`Node::set_address`]); [`Node::listen`]
    /// accepts the others and clients.
    pub fn start(
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        options: NodeOptions,
    ) -> Result<(Node, Events), StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let clock = Clock::new();
        let node = node::Node::new(clock.now(), config, params, keys, Box::new(OsEntropy))?;
        let machine = NodeMachine {
            node,
            events: VecDeque::new(),
            capacity: options.event_capacity.max(1),
            waker: None,
            tally: None,
            finished: false,
        };
        let shared = Shared::start(
            machine,
            clock,
            handle,
            options.read_chunk,
            config.close_grace,
            options.peers,
        );
        let shared = Arc::new(Owner(shared));
        Ok((
            Node {
                shared: Arc::clone(&shared),
            },
            Events { shared },
        ))
    }

    /// Listens on `address` and accepts replicas and clients until
    /// shutdown. Returns the bound address (useful with port 0).
    pub async fn listen(&self, address: impl ToSocketAddrs) -> Result<SocketAddr, ListenError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ListenError { source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ListenError { source })?;
        self.shared.listener_opened();
        let shared = Arc::clone(&self.shared.0);
        tokio::spawn(async move {
            accept_loop(&shared, listener).await;
            shared.listener_closed();
        });
        tracing::info!(%local, "listening");
        Ok(local)
    }

    /// Where replica `replica` listens. The dial schedule uses it from the
    /// next attempt (only for peers this node dials: higher ids); a dial
    /// already waiting for this address proceeds at once.
    pub fn set_address(&self, replica: u8, address: SocketAddr) {
        self.shared.set_address(replica, address);
    }

    /// Sends a message to replica `to` without waiting: a full queue is
    /// [`RouteError::Backpressure`], a missing connection
    /// [`RouteError::Disconnected`].
    pub fn send(&self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError> {
        self.shared
            .with_untimed(|m| m.node.send(to, operation, body))
    }

    /// [`Node::send`], but waits while the queue is full instead of
    /// reporting backpressure. Other errors are returned at once.
    pub async fn send_wait(&self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError> {
        self.shared
            .retry_when_full(
                || self.send(to, operation, body.clone()),
                |e| matches!(e, RouteError::Backpressure { .. }),
            )
            .await
    }

    /// [`Node::send`] with a `view` header value.
    pub fn send_in_view(
        &self,
        to: u8,
        view: u32,
        operation: u32,
        body: Bytes,
    ) -> Result<(), RouteError> {
        self.shared
            .with_untimed(|m| m.node.send_in_view(to, view, operation, body))
    }

    /// Answers a client request (from [`NodeEvent::Request`]). Retries of
    /// it are then answered from the dedup window.
    pub fn reply(&self, request: RequestHeader, body: Bytes) -> Result<(), ReplyError> {
        self.shared.with(|m, now| m.node.reply(now, request, body))
    }

    /// Counters since the node started.
    pub fn stats(&self) -> NodeStats {
        self.shared.lock().machine.node.stats()
    }

    /// True while replica `replica` has a registered connection.
    pub fn is_connected(&self, replica: u8) -> bool {
        self.shared.lock().machine.node.is_connected(replica)
    }

    /// Connections held (handshaking or established).
    pub fn connections(&self) -> usize {
        self.shared.lock().machine.node.connections()
    }

    /// Reads the core node, for diagnostics.
    pub fn inspect<R>(&self, f: impl FnOnce(&node::Node) -> R) -> R {
        f(&self.shared.lock().machine.node)
    }

    /// Shuts down gracefully: stops accepting and dialling, sends every
    /// connection `close`, and waits for them to finish until `deadline`;
    /// connections still open then are dropped. The event stream ends
    /// after the last event. Calling it again returns an empty report.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let Some(total) = self.shared.with(|m, now| {
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
        let stragglers = self.shared.drain(deadline).await;
        let mut state = self.shared.lock();
        let machine = &mut state.machine;
        machine.finished = true;
        if let Some(waker) = machine.waker.take() {
            waker.wake();
        }
        let timed_out = machine.tally.map_or(0, |t| t.forced);
        ShutdownReport::new(total, timed_out + stragglers)
    }
}

async fn accept_loop(shared: &Arc<Shared<NodeMachine>>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stopped() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of
                // spinning; the listener itself is still fine.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registered = {
            let mut state = shared.lock();
            let now = shared.clock.now();
            match state.machine.node.accept(now, Binding::NONE) {
                Ok(id) => {
                    let wake = shared.register(&mut state, id);
                    Some((id, wake))
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "connection refused before reading");
                    None
                }
            }
        };
        if let Some((id, wake)) = registered {
            shared.spawn_socket(id, stream, wake);
        }
    }
}

/// The node's events, in order: an async stream (also
/// [`futures_core::Stream`]). Ends after shutdown. While the application
/// leaves `event_capacity` events unread, socket tasks stop reading.
pub struct Events {
    shared: Arc<Owner<NodeMachine>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// The next event, or `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Waits for at least one event and moves up to `limit` into `out`.
    /// Returns how many; 0 means the node has shut down.
    pub async fn recv_many(&mut self, out: &mut Vec<NodeEvent>, limit: usize) -> usize {
        std::future::poll_fn(|cx| self.poll_take(cx, out, limit.max(1))).await
    }

    /// Polls for the next event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        let mut batch = Vec::with_capacity(1);
        match self.poll_take(cx, &mut batch, 1) {
            Poll::Ready(_) => Poll::Ready(batch.pop()),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<NodeEvent>,
        limit: usize,
    ) -> Poll<usize> {
        let mut state = self.shared.lock();
        let machine = &mut state.machine;
        let was_full = machine.events.len() >= machine.capacity;
        let n = limit.min(machine.events.len());
        out.extend(machine.events.drain(..n));
        if n > 0 {
            if was_full && machine.events.len() < machine.capacity {
                Shared::resume_readers(&mut state);
            }
            return Poll::Ready(n);
        }
        if machine.finished {
            return Poll::Ready(0);
        }
        machine.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl futures_core::Stream for Events {
    type Item = NodeEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.get_mut().poll_recv(cx)
    }
}
