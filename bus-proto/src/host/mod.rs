//! The runtime-independent half of every adapter (feature `host`).
//!
//! An adapter (`bus-tokio`, `bus-smol`, `bus-compio`) owns sockets, tasks
//! and timers. Everything else it needs is here, written once: the socket
//! registry and when each socket task reads, writes or closes
//! ([`Shared`]), the wake-ups between tasks, the timer loop, graceful
//! shutdown, the application's event queues paused per connection
//! ([`NodeFront`]), reply waiters and link state ([`ClientFront`]), and
//! the errors and reports of the public API.
//!
//! Like the rest of the crate this performs no I/O and reads no clock: the
//! adapter's [`Runtime`] supplies the time, sleeps and starts dial tasks.
//! The state sits behind one mutex that is held only for synchronous calls,
//! never across an `.await`; tasks wait with plain [`Waker`](core::task::Waker)s,
//! so any executor can run them.
//!
//! # What an adapter writes
//!
//! - a [`Runtime`]: its clock, its sleep, and a task per dial that waits
//!   for [`Shared::dial_address`], connects while racing
//!   [`Shared::abandoned`], and hands the outcome to [`Shared::dialled`];
//! - a socket task: loop on [`Shared::step`], wait for the first of the
//!   write, the read, the linger deadline and [`Shared::woken`], and pass
//!   what happened to [`Shared::complete`]; then [`Shared::closed`];
//! - an accept loop calling [`Shared::accept_socket`] until
//!   [`Shared::stopped`], started by its [`Listen`] implementation;
//! - a [`Platform`]: the runtime's name, OS randomness, and the tasks a new
//!   node or client starts. The public [`Node`], [`Events`] and [`Client`]
//!   are defined here, once, generic over it: the adapter exports them
//!   under its runtime.

/// The [`Machine`] methods that only pass socket input and output through
/// to the core held in field `$core` (a `node::Node` or a `client::Client`,
/// which share these methods); each front adds what its application sees.
macro_rules! forward_socket_io {
    ($core:ident) => {
        fn take_read_buffer(&mut self, id: ConnectionId) -> Option<BytesMut> {
            self.$core.read_buffer(id).map(core::mem::take)
        }
        fn lend_decoder(&mut self, id: ConnectionId) -> Option<LentDecoder> {
            self.$core.lend_decoder(id)
        }
        fn handle_eof(&mut self, now: Now, id: ConnectionId) {
            self.$core.handle_eof(now, id);
        }
        fn frame_too_large(&mut self, now: Now, id: ConnectionId, size: u32) {
            self.$core.frame_too_large(now, id, size);
        }
        fn handle_timeout(&mut self, now: Now) {
            self.$core.handle_timeout(now);
        }
        fn connected(&mut self, now: Now, id: ConnectionId, remote: core::net::SocketAddr) -> bool {
            self.$core.dialled_to(id, remote);
            self.$core.connected(now, id, Binding::NONE).is_ok()
        }
        fn connected_pending(
            &mut self,
            now: Now,
            id: ConnectionId,
            remote: core::net::SocketAddr,
        ) -> bool {
            self.$core.dialled_to(id, remote);
            self.$core.connected_pending(now, id).is_ok()
        }
        fn transport_ready(&mut self, now: Now, id: ConnectionId, binding: Binding) -> bool {
            self.$core.transport_ready(now, id, binding).is_ok()
        }
        fn note_local(&mut self, id: ConnectionId, local: core::net::SocketAddr) {
            self.$core.note_local(id, local);
        }
        fn peer(&self, id: ConnectionId) -> Option<crate::crypto::PeerId> {
            self.$core.connection(id)?.peer()
        }
        fn has_output(&self, id: ConnectionId) -> bool {
            self.$core
                .connection(id)
                .is_none_or(crate::connection::Connection::has_output)
        }
        fn frame_limit(&self, id: ConnectionId) -> Option<u32> {
            let conn = self.$core.connection(id)?;
            (!conn.is_closed()).then(|| conn.frame_limit())
        }
        fn connect_failed(&mut self, now: Now, id: ConnectionId) {
            self.$core.connect_failed(now, id);
        }
        fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit> {
            self.$core.poll_transmit_for(now, id)
        }
        fn poll_unsealed_for(&mut self, now: Now, id: ConnectionId) -> Option<Unsealed> {
            self.$core.poll_unsealed_for(now, id)
        }
        fn reuse_batch_buffer(&mut self, buffer: BytesMut) {
            self.$core.reuse_batch_buffer(buffer);
        }
        fn poll_ready(&mut self) -> Option<ConnectionId> {
            self.$core.poll_ready()
        }
        fn poll_action(&mut self) -> Option<Action> {
            self.$core.poll_action()
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.$core.poll_timeout()
        }
        fn connections(&self) -> usize {
            self.$core.connections()
        }
        fn config(&self) -> &crate::config::ValidConfig {
            self.$core.config()
        }
    };
}

mod client;
mod clock;
mod deliveries;
mod driver;
mod error;
mod handle;
mod layer;
mod node;
mod outgoing;
#[cfg(feature = "quic")]
mod quic;
mod recycle;
mod shutdown;
mod signal;
mod slots;
mod socket;
mod through;

pub use client::{ClientFront, Link, Reply};
pub use clock::{WALL_REFRESH, WallClock};
pub use driver::{First, MAX_DRAINING, Owner, Runtime, Shared, SharedOptions, first};
pub use error::{ClientError, ConnectError, ListenError, StartError};
pub use handle::{Client, Events, Listen, Node, Platform};
pub use layer::{
    FrameTooLarge, LayerError, LayerFactory, MAX_PENDING_WIRE, StreamLayer, Transport,
};
pub use node::{NodeFront, NodeOptions, Refused};
pub use outgoing::{MAX_IOVECS, Outgoing, Slices};
#[cfg(feature = "quic")]
pub use quic::{QuicPort, QuicStep};
pub use shutdown::ShutdownReport;
pub use socket::{Completion, MIN_READ_ROOM, ReadInto, Socket, Step};
pub use through::TryWrite;

use crate::connection::{LentDecoder, Transmit, Unsealed};
use crate::handshake::Binding;
use crate::node::{Action, ConnectionId};
use crate::time::{Instant, Now};
use bytes::BytesMut;
use core::net::SocketAddr;

/// A sans-IO state machine as the driver sees it: a node or a client plus
/// what the application reads from it. Implemented by [`NodeFront`] and
/// [`ClientFront`].
pub trait Machine: Send + 'static {
    /// Lends `id`'s receive buffer (partial frames included) to a task
    /// that reads into it without the lock (a transport layer's, a QUIC
    /// port's) and then hands it back with [`Machine::handle_read`].
    fn take_read_buffer(&mut self, id: ConnectionId) -> Option<BytesMut>;
    /// Returns the buffer with new bytes appended, and processes them.
    fn handle_read(&mut self, now: Now, id: ConnectionId, buffer: BytesMut);
    /// Lends `id`'s whole decoder to its socket task, which reads into it
    /// and verifies the frames' checksums or tags without the lock
    /// ([`LentDecoder::verify`]), then hands it back with
    /// [`Machine::handle_verified`].
    fn lend_decoder(&mut self, id: ConnectionId) -> Option<LentDecoder>;
    /// Returns the lent decoder with new bytes, and processes them.
    fn handle_verified(&mut self, now: Now, id: ConnectionId, decoder: LentDecoder);
    /// The peer closed its side, or the socket failed.
    fn handle_eof(&mut self, now: Now, id: ConnectionId);
    /// `id`'s transport refused a frame of `size` bytes over the limit
    /// ([`FrameTooLarge`]).
    fn frame_too_large(&mut self, now: Now, id: ConnectionId, size: u32);
    /// Runs the core's timers.
    fn handle_timeout(&mut self, now: Now);
    /// The socket for `Connect` is open, to `remote`; false if the id is
    /// stale.
    fn connected(&mut self, now: Now, id: ConnectionId, remote: SocketAddr) -> bool;
    /// The socket for `Connect` is open and its transport layer starts
    /// handshaking; false if the id is stale.
    fn connected_pending(&mut self, now: Now, id: ConnectionId, remote: SocketAddr) -> bool;
    /// `id`'s transport layer finished its handshake with `binding`;
    /// false if the id is stale or was not waiting for it.
    fn transport_ready(&mut self, now: Now, id: ConnectionId, binding: Binding) -> bool;
    /// The largest frame `id` accepts now; `None` once it is closed.
    fn frame_limit(&self, id: ConnectionId) -> Option<u32>;
    /// `id`'s socket has local address `local`.
    fn note_local(&mut self, id: ConnectionId, local: core::net::SocketAddr);
    /// Who `id` is connected to, once its handshake named them.
    fn peer(&self, id: ConnectionId) -> Option<crate::crypto::PeerId>;
    /// Whether [`Machine::poll_transmit_for`] may return a batch for `id`
    /// (true when unsure): a socket with nothing to write skips it, and
    /// the clock read it needs.
    fn has_output(&self, _id: ConnectionId) -> bool {
        true
    }
    /// The socket for `Connect` could not be opened.
    fn connect_failed(&mut self, now: Now, id: ConnectionId);
    /// `id`'s next batch of bytes to write.
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit>;
    /// [`Machine::poll_transmit_for`] but for the checksums or tags, which
    /// the socket task computes after releasing the lock
    /// ([`Unsealed::seal`]).
    fn poll_unsealed_for(&mut self, now: Now, id: ConnectionId) -> Option<Unsealed>;
    /// Keeps a written batch's buffer for a later batch (bounded: see
    /// [`crate::connection::BatchBuffers`]). By default it is dropped.
    fn reuse_batch_buffer(&mut self, buffer: BytesMut) {
        drop(buffer);
    }
    /// A connection with something to write.
    fn poll_ready(&mut self) -> Option<ConnectionId>;
    /// A socket to open or close.
    fn poll_action(&mut self) -> Option<Action>;
    /// When to call [`Machine::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// Hands the core's events to the application.
    fn deliver(&mut self);
    /// True while `id`'s socket should not be read: the application has
    /// not taken its deliveries, so a slow application pushes back on that
    /// peer through TCP.
    fn reading_paused(&self, _id: ConnectionId) -> bool {
        false
    }
    /// The driver paused or resumed reading `id` (the core suspends its
    /// liveness deadline meanwhile).
    fn set_reading_paused(&mut self, _now: Now, _id: ConnectionId, _paused: bool) {}
    /// Connections the core still holds.
    fn connections(&self) -> usize;
    /// The core's configuration.
    fn config(&self) -> &crate::config::ValidConfig;
    /// A connection from `remote` on a transport that handshakes first
    /// (QUIC): its id in the unauthenticated pool, or `None` to refuse it.
    /// A client accepts nothing.
    /// `plane`: the listener's one plane, if it takes only one.
    fn accept_pending(
        &mut self,
        _now: Now,
        _remote: core::net::SocketAddr,
        _plane: Option<crate::wire::Plane>,
    ) -> Option<ConnectionId> {
        None
    }
    /// True if a new peer at `remote` should prove its address before it
    /// costs a handshake (QUIC's Retry).
    fn wants_address_proof(&self, _remote: core::net::SocketAddr) -> bool {
        false
    }
    /// A dial's TCP connect failed (the core has been told).
    fn dial_error(&mut self, _error: &std::io::Error) {}
}
