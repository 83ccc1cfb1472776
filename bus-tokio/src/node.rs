//! A replica's node on tokio: listen, dial the peers, send, reply, events.

use crate::runtime::{OsEntropy, Tokio, drive};
use bus_proto::config::ValidConfig;
use bus_proto::crypto::KeyRing;
use bus_proto::host::{
    ListenError, NodeFront, NodeOptions, Owner, Shared, SharedOptions, ShutdownReport, StartError,
    Transport,
};
use bus_proto::node::{self, NodeEvent, NodeParams, NodeStats, ReplyError, RouteError};
use bus_proto::wire::RequestHeader;
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};

type Driver = Shared<NodeFront, Tokio>;

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
///     if let NodeEvent::Request { request, body, .. } = event {
///         node.reply(request, body)?; // echo
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    shared: Arc<Owner<NodeFront, Tokio>>,
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
        let runtime = Tokio::current().ok_or(StartError::NoRuntime { runtime: "tokio" })?;
        let front = NodeFront::new(
            bus_proto::host::Runtime::now(&runtime),
            config,
            params,
            keys,
            Box::new(OsEntropy),
            &options,
        )?;
        let driver_options = SharedOptions {
            read_chunk: options.read_chunk,
            linger: config.close_grace,
        };
        let shared = Shared::new(
            front,
            runtime,
            driver_options,
            options.peers,
            options.peer_transports,
        );
        #[cfg(feature = "quic")]
        crate::quic::start_quic_dialer(&shared)?;
        shared
            .runtime()
            .spawn(Shared::run_timers(Arc::clone(&shared)));
        let shared = Arc::new(Owner(shared));
        Ok((
            Node {
                shared: Arc::clone(&shared),
            },
            Events { shared },
        ))
    }

    /// Listens on `address` and accepts replicas and clients over plain
    /// TCP until shutdown. Returns the bound address (useful with port 0).
    pub async fn listen(&self, address: impl ToSocketAddrs) -> Result<SocketAddr, ListenError> {
        self.listen_via(address, Transport::tcp()).await
    }

    /// [`Node::listen`] with every accepted connection carried by
    /// `transport` (e.g. TLS): its handshake and the bus's share
    /// `handshake_timeout` and the handshake cap.
    pub async fn listen_via(
        &self,
        address: impl ToSocketAddrs,
        transport: Transport,
    ) -> Result<SocketAddr, ListenError> {
        #[cfg(feature = "quic")]
        if transport.is_quic() {
            return self.listen_quic(address, &transport).await;
        }
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ListenError { source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ListenError { source })?;
        tracing::info!(%local, transport = transport.name(), "listening");
        self.shared.listener_opened();
        let shared = Arc::clone(&self.shared.0);
        self.shared.runtime().spawn(async move {
            accept_loop(&shared, listener, &transport).await;
            shared.listener_closed();
        });
        Ok(local)
    }

    #[cfg(feature = "quic")]
    async fn listen_quic(
        &self,
        address: impl ToSocketAddrs,
        transport: &Transport,
    ) -> Result<SocketAddr, ListenError> {
        let socket = tokio::net::UdpSocket::bind(address)
            .await
            .map_err(|source| ListenError { source })?;
        let local = socket
            .local_addr()
            .map_err(|source| ListenError { source })?;
        let udp = crate::quic::Udp::new(socket).map_err(|source| ListenError { source })?;
        let port = self.shared.quic_listener(
            transport,
            std::time::Instant::now(),
            crate::quic::quic_seed(),
        )?;
        tracing::info!(%local, transport = transport.name(), "listening");
        let shared = Arc::clone(&self.shared.0);
        self.shared
            .runtime()
            .spawn(crate::quic::run_quic(shared, port, udp));
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
        self.shared.send(to, operation, body)
    }

    /// [`Node::send`], but waits while the queue is full instead of
    /// reporting backpressure. Other errors are returned at once.
    pub async fn send_wait(&self, to: u8, operation: u32, body: Bytes) -> Result<(), RouteError> {
        self.shared.send_wait(to, operation, body).await
    }

    /// Queues messages to replica `to` from the front of `batch`, in
    /// order, under one lock instead of one per message (the cheaper way
    /// to send many at once). Queued messages leave `batch`. At the first
    /// refusal it stops and returns the error, and the refused message and
    /// those after it stay in `batch`: on `Backpressure`, send them later
    /// (or use [`Node::send_batch_wait`]).
    ///
    /// ```no_run
    /// # fn run(node: &bus_tokio::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::collections::VecDeque;
    /// let mut batch: VecDeque<(u32, bytes::Bytes)> =
    ///     (0..64).map(|op| (op, bytes::Bytes::from_static(b"entry"))).collect();
    /// node.send_batch(1, &mut batch)?;
    /// assert!(batch.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn send_batch(&self, to: u8, batch: &mut VecDeque<(u32, Bytes)>) -> Result<(), RouteError> {
        self.shared.send_batch(to, batch)
    }

    /// [`Node::send_batch`], but waits while the queue is full until the
    /// whole batch is queued. Other errors are returned at once, with the
    /// refused message at the front of `batch`.
    pub async fn send_batch_wait(
        &self,
        to: u8,
        batch: &mut VecDeque<(u32, Bytes)>,
    ) -> Result<(), RouteError> {
        self.shared.send_batch_wait(to, batch).await
    }

    /// [`Node::send`] with a `view` header value.
    pub fn send_in_view(
        &self,
        to: u8,
        view: u32,
        operation: u32,
        body: Bytes,
    ) -> Result<(), RouteError> {
        self.shared.send_in_view(to, view, operation, body)
    }

    /// Answers a client request (from [`NodeEvent::Request`]). Retries of
    /// it are then answered from the dedup window.
    pub fn reply(&self, request: RequestHeader, body: Bytes) -> Result<(), ReplyError> {
        self.shared.reply(request, body)
    }

    /// Counters since the node started.
    pub fn stats(&self) -> NodeStats {
        self.shared.stats()
    }

    /// True while replica `replica` has a registered connection.
    pub fn is_connected(&self, replica: u8) -> bool {
        self.shared.is_connected(replica)
    }

    /// Connections held (handshaking or established).
    pub fn connections(&self) -> usize {
        self.shared.connections()
    }

    /// Reads the core node, for diagnostics.
    pub fn inspect<R>(&self, f: impl FnOnce(&node::Node) -> R) -> R {
        self.shared.inspect(f)
    }

    /// Shuts down gracefully: stops accepting and dialling, sends every
    /// connection `close`, and waits for them to finish until `deadline`;
    /// connections still open then are dropped. The event stream ends
    /// after the last event. Calling it again returns an empty report.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.shared.shutdown(deadline).await
    }
}

async fn accept_loop(shared: &Arc<Driver>, listener: TcpListener, transport: &Transport) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stopped() => return,
        };
        match accepted {
            Ok((stream, remote)) => match shared.accept_socket(Some(remote), transport) {
                Ok(socket) => {
                    let task = drive(Arc::clone(shared), socket, stream);
                    shared.runtime().spawn(task);
                }
                // tokio's `try_write` waits for a readiness event a new
                // socket has not had yet; the std socket writes at once
                // (non-blocking, and a new socket's send buffer is empty).
                Err(refused) => {
                    if let (Some(reject), Ok(stream)) = (refused.reject(), stream.into_std()) {
                        drop(std::io::Write::write(&mut &stream, &reject));
                    }
                }
            },
            Err(error) => {
                // Out of file descriptors and the like: wait instead of
                // spinning; the listener itself is still fine.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The node's events: an async stream (also [`futures_core::Stream`]),
/// in order within each plane, the planes read in turn. Ends after
/// shutdown. While `message_capacity` messages (or `request_capacity`
/// requests) wait unread, the connections they came on stop being read
/// (their liveness deadline suspended), and only those. Dropping it is
/// harmless: later deliveries are discarded and counted.
pub struct Events {
    shared: Arc<Owner<NodeFront, Tokio>>,
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
        std::future::poll_fn(|cx| self.shared.poll_events(cx, out, limit)).await
    }

    /// Polls for the next event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.shared.poll_event(cx)
    }
}

/// Dropping the event stream is harmless: the node keeps its connections
/// and sends; messages and requests delivered from then on are discarded
/// and counted in `NodeStats::deliveries_discarded` (one warning is
/// logged).
impl Drop for Events {
    fn drop(&mut self) {
        self.shared.events_dropped();
    }
}

impl futures_core::Stream for Events {
    type Item = NodeEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.get_mut().poll_recv(cx)
    }
}
