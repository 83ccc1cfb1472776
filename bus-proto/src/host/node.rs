//! A replica's node as the adapters run it: the core node plus the
//! application's bounded event queue.

use super::Machine;
use super::driver::{Runtime, Shared};
use super::shutdown::{ShutdownReport, Tally};
use crate::config::ValidConfig;
use crate::connection::Transmit;
use crate::crypto::KeyRing;
use crate::entropy::Entropy;
use crate::handshake::Binding;
use crate::node::{
    self, Action, ConnectionId, NodeError, NodeEvent, NodeParams, NodeStats, ReplyError, RouteError,
};
use crate::time::{Instant, Now};
use crate::wire::RequestHeader;
use bytes::{Bytes, BytesMut};
use core::net::SocketAddr;
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::vec::Vec;

/// Adapter settings that are not part of the protocol configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// Where the peers listen, by replica id. Only peers this node dials
    /// (higher ids) need one; `Node::set_address` changes it later.
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
pub struct NodeFront {
    node: node::Node,
    events: VecDeque<NodeEvent>,
    capacity: usize,
    waker: Option<Waker>,
    /// Set once shutdown started.
    tally: Option<Tally>,
    /// Shutdown finished: the event stream ends once drained.
    finished: bool,
}

impl NodeFront {
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
            events: VecDeque::new(),
            capacity: options.event_capacity.max(1),
            waker: None,
            tally: None,
            finished: false,
        })
    }
}

impl Machine for NodeFront {
    forward_socket_io!(node);

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
}

fn log_event(event: &NodeEvent) {
    match event {
        NodeEvent::PeerConnected {
            replica,
            connection,
        } => tracing::info!(replica, %connection, "peer connected"),
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

/// What every adapter's `Node` and `Events` forward to.
impl<R: Runtime> Shared<NodeFront, R> {
    /// Registers an accepted socket; `None` if the node refuses it before
    /// reading (shutting down, or too many handshakes in progress).
    pub fn accept_socket(self: &Arc<Self>) -> Option<super::Socket> {
        self.accept(|m, now| m.node.accept(now, Binding::NONE))
            .inspect_err(|error| tracing::debug!(%error, "connection refused before reading"))
            .ok()
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

    /// Queues a message with a `view` header value.
    pub fn send_in_view(
        self: &Arc<Self>,
        to: u8,
        view: u32,
        operation: u32,
        body: Bytes,
    ) -> Result<(), RouteError> {
        self.with_untimed(|m| m.node.send_in_view(to, view, operation, body))
    }

    /// Answers a client request.
    pub fn reply(self: &Arc<Self>, request: RequestHeader, body: Bytes) -> Result<(), ReplyError> {
        self.with(|m, now| m.node.reply(now, request, body))
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        self.read(|m| m.node.stats())
    }

    /// True while replica `replica` has a registered connection.
    pub fn is_connected(&self, replica: u8) -> bool {
        self.read(|m| m.node.is_connected(replica))
    }

    /// Connections held (handshaking or established).
    pub fn connections(&self) -> usize {
        self.read(|m| m.node.connections())
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
        let mut state = self.lock();
        let machine = &mut state.machine;
        let was_full = machine.events.len() >= machine.capacity;
        let n = limit.max(1).min(machine.events.len());
        out.extend(machine.events.drain(..n));
        if n > 0 {
            if was_full && machine.events.len() < machine.capacity {
                state.resume_readers();
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
