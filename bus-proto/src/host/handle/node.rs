//! A replica's node handle and its event stream.

use super::{Listen, Platform};
use crate::config::ValidConfig;
use crate::crypto::KeyRing;
use crate::host::{ListenError, NodeFront, NodeOptions, Owner, Shared, SharedOptions};
use crate::host::{ShutdownReport, StartError, Transport};
use crate::node::{self, ConnectionInfo, NodeEvent, NodeParams, NodeStats, ReplyError, RouteError};
use crate::wire::{AppHeader, RequestHeader};
use bytes::Bytes;
use core::marker::PhantomData;
use core::net::SocketAddr;
use core::pin::Pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::collections::VecDeque;
use std::sync::Arc;
use std::vec::Vec;

/// A replica's node on runtime `R`; each adapter names it `Node`
/// (`bus_tokio::Node` is `Node<bus_tokio::Tokio>`). Cheap to clone; every
/// clone drives the same node, and the node stops when the last clone and
/// its [`Events`] are dropped.
///
/// It listens for replicas and clients ([`Node::listen`]), dials its
/// higher-numbered peers on a backoff schedule, sends to replicas by id,
/// and answers client requests; everything it receives arrives on its
/// [`Events`].
///
/// ```no_run
/// use bus_proto::host::{Events, Listen, Node, Platform};
/// use bus_proto::node::NodeEvent;
///
/// /// Listens on `address` and echoes every request, on any runtime.
/// async fn echo<R: Platform + Listen<&'static str>>(
///     node: Node<R>,
///     mut events: Events<R>,
/// ) -> Result<(), Box<dyn std::error::Error>> {
///     node.listen("127.0.0.1:7000").await?;
///     while let Some(event) = events.recv().await {
///         if let NodeEvent::Request { request, body, .. } = event {
///             node.reply(request, body)?;
///         }
///     }
///     Ok(())
/// }
/// ```
pub struct Node<R: Platform> {
    shared: Arc<Owner<NodeFront, R>>,
    _affinity: PhantomData<R::Affinity>,
}

impl<R: Platform> Clone for Node<R> {
    fn clone(&self) -> Self {
        Node {
            shared: Arc::clone(&self.shared),
            _affinity: PhantomData,
        }
    }
}

impl<R: Platform> core::fmt::Debug for Node<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("runtime", &R::NAME)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<R: Platform> Node<R> {
    /// Starts a node on the runtime the caller runs under
    /// ([`Platform::current`]; `StartError::NoRuntime` outside one). It
    /// dials its higher-numbered peers once their addresses are known
    /// (`options.peers`, [`Node::set_address`]); [`Node::listen`] accepts
    /// the others and clients.
    pub fn start(
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        options: NodeOptions,
    ) -> Result<(Node<R>, Events<R>), StartError> {
        let runtime = super::current_runtime::<R>()?;
        Node::start_in(runtime, config, params, keys, options)
    }

    /// [`Node::start`] with its tasks on `runtime` (for example smol's
    /// `Smol::on(executor)`, an executor the program runs itself).
    pub fn start_in(
        runtime: R,
        config: &ValidConfig,
        params: NodeParams,
        keys: KeyRing,
        options: NodeOptions,
    ) -> Result<(Node<R>, Events<R>), StartError> {
        let now = runtime.now();
        let front = NodeFront::new(now, config, params, keys, R::entropy(), &options)?;
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
        R::launch(&shared)?;
        let shared = Arc::new(Owner(shared));
        let events = Events {
            shared: Arc::clone(&shared),
            _affinity: PhantomData,
        };
        let node = Node {
            shared,
            _affinity: PhantomData,
        };
        Ok((node, events))
    }

    /// Listens on `address` and accepts replicas and clients over plain
    /// TCP until shutdown. Returns the bound address (useful with port 0).
    /// `address` is any form the runtime's sockets resolve ([`Listen`]).
    pub async fn listen<A>(&self, address: A) -> Result<SocketAddr, ListenError>
    where
        R: Listen<A>,
    {
        self.listen_via(address, Transport::tcp()).await
    }

    /// [`Node::listen`] with every accepted connection carried by
    /// `transport` (TLS, WebSocket, QUIC on UDP): its handshake and the
    /// bus's share `handshake_timeout` and the handshake cap.
    pub async fn listen_via<A>(
        &self,
        address: A,
        transport: Transport,
    ) -> Result<SocketAddr, ListenError>
    where
        R: Listen<A>,
    {
        R::listen(&self.shared.0, address, transport).await
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
    /// # use bus_proto::host::{Node, Platform};
    /// # fn run<R: Platform>(node: &Node<R>) -> Result<(), Box<dyn std::error::Error>> {
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

    /// [`Node::send`] with the application's header fields: `view`,
    /// `release` and the 96-byte application area, covered by the header's
    /// checksum or tag and delivered in [`NodeEvent::Message`]'s `app`.
    /// Consensus metadata goes there, and a small consensus message is a
    /// header-only frame (an empty body).
    ///
    /// ```no_run
    /// # use bus_proto::host::{Node, Platform};
    /// use bus_proto::wire::{AppArea, AppHeader};
    /// # fn run<R: Platform>(node: &Node<R>) -> Result<(), Box<dyn std::error::Error>> {
    /// // A prepare_ok: view 3, op 42, commit 40, and no body.
    /// let mut area = [0u8; 96];
    /// area[..8].copy_from_slice(&42u64.to_le_bytes());
    /// area[8..16].copy_from_slice(&40u64.to_le_bytes());
    /// let app = AppHeader { view: 3, release: 1, area: AppArea::new(area) };
    /// node.send_with(1, 5, app, bytes::Bytes::new())?;
    /// # Ok(()) }
    /// ```
    pub fn send_with(
        &self,
        to: u8,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), RouteError> {
        self.shared.send_with(to, operation, app, body)
    }

    /// Answers a client request (from [`NodeEvent::Request`]). Retries of
    /// it are then answered from the dedup window.
    ///
    /// The window keeps the body for as long as it keeps the entry,
    /// counting its length against `dedup_max_cached_bytes`. A body sliced
    /// from a received message keeps that message's whole receive buffer
    /// (up to the read chunk) alive meanwhile: reply with a copy
    /// (`Bytes::copy_from_slice`) of a small part of a large message.
    pub fn reply(&self, request: RequestHeader, body: Bytes) -> Result<(), ReplyError> {
        self.shared.reply(request, AppHeader::ZERO, body)
    }

    /// [`Node::reply`] with the application's header fields; the dedup
    /// window keeps them with the body, so a retry gets both.
    pub fn reply_with(
        &self,
        request: RequestHeader,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), ReplyError> {
        self.shared.reply(request, app, body)
    }

    /// Counters and gauges: requests, dedup hits, refusals, evictions,
    /// dials, events waiting, connections paused.
    pub fn stats(&self) -> NodeStats {
        self.shared.stats()
    }

    /// Every connection the node holds, now: peer, side, remote address,
    /// whether it is established and for how long, send-queue depth,
    /// whether reading is paused and for how long in all, the latest ping
    /// round trip, and bytes, frames and batches each way. A snapshot, for
    /// stats pages and metrics.
    ///
    /// ```no_run
    /// # use bus_proto::host::{Node, Platform};
    /// # fn show<R: Platform>(node: &Node<R>) {
    /// for c in node.connection_infos() {
    ///     println!(
    ///         "{:?} at {:?}: {} bytes in, {} out, rtt {:?}, {} frames queued",
    ///         c.peer, c.remote, c.stats.bytes_received, c.stats.bytes_sent, c.rtt, c.queued_frames
    ///     );
    /// }
    /// # }
    /// ```
    pub fn connection_infos(&self) -> Vec<ConnectionInfo> {
        self.shared.connection_infos()
    }

    /// True while replica `replica` has a registered connection.
    pub fn is_connected(&self, replica: u8) -> bool {
        self.shared.is_connected(replica)
    }

    /// Connections held (handshaking or established).
    pub fn connections(&self) -> usize {
        self.shared.connections()
    }

    /// Replaces the node's keys for every handshake from now on, dialled
    /// or accepted. Established connections carry on with the keys their
    /// handshake derived; the replay store and the dedup windows stay. A
    /// cluster rotates its key without refusing a dial in three phases:
    ///
    /// 1. every node: the new key verify-only,
    ///    `KeyRing::new(old).with_previous(new)`;
    /// 2. node by node: `KeyRing::new(new).with_previous(old)` (signs
    ///    with the new key, still accepts the old one);
    /// 3. once every node and client signs with the new key:
    ///    `KeyRing::new(new)`.
    ///
    /// ```no_run
    /// # use bus_proto::host::{Node, Platform};
    /// # use bus_proto::crypto::{Key, KeyRing};
    /// # fn rotate<R: Platform>(node: &Node<R>, old: Key, new: Key) {
    /// node.set_keys(KeyRing::new(old.clone()).with_previous(new.clone())); // phase 1
    /// // ... once every node is in phase 1:
    /// node.set_keys(KeyRing::new(new.clone()).with_previous(old)); // phase 2
    /// // ... once every node is in phase 2:
    /// node.set_keys(KeyRing::new(new)); // phase 3
    /// # }
    /// ```
    pub fn set_keys(&self, keys: crate::crypto::KeyRing) {
        self.shared.set_keys(keys);
    }

    /// Reads the core node, for diagnostics.
    pub fn inspect<T>(&self, f: impl FnOnce(&node::Node) -> T) -> T {
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

/// A node's events: an async stream (also [`futures_core::Stream`]), in
/// order within each plane, the planes read in turn. Ends after shutdown.
///
/// While `message_capacity` messages (or `request_capacity` requests)
/// wait unread, the connections they came on stop being read (their
/// liveness deadline suspended), and only those. Dropping it is harmless:
/// the node keeps its connections and sends; messages and requests
/// delivered from then on are discarded and counted in
/// `NodeStats::deliveries_discarded` (one warning is logged).
pub struct Events<R: Platform> {
    shared: Arc<Owner<NodeFront, R>>,
    _affinity: PhantomData<R::Affinity>,
}

impl<R: Platform> core::fmt::Debug for Events<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl<R: Platform> Events<R> {
    /// The next event, or `None` once the node has shut down.
    pub async fn recv(&mut self) -> Option<NodeEvent> {
        core::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Waits for at least one event and moves up to `limit` into `out`
    /// (one lock for all of them). Returns how many; 0 means the node has
    /// shut down.
    pub async fn recv_many(&mut self, out: &mut Vec<NodeEvent>, limit: usize) -> usize {
        core::future::poll_fn(|cx| self.shared.poll_events(cx, out, limit)).await
    }

    /// Polls for the next event.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.shared.poll_event(cx)
    }
}

impl<R: Platform> Drop for Events<R> {
    fn drop(&mut self) {
        self.shared.events_dropped();
    }
}

impl<R: Platform> futures_core::Stream for Events<R> {
    type Item = NodeEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NodeEvent>> {
        self.get_mut().poll_recv(cx)
    }
}
