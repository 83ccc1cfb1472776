//! Byte-stream transports under framing (TLS, WebSocket, WebSocket over
//! TLS), as a socket task drives them.
//!
//! A layer is a sans-IO engine between the socket's wire bytes and the
//! core's frame bytes. The socket task runs it outside the driver's lock,
//! so encryption and masking never serialise connections: it feeds the
//! wire bytes it read ([`StreamLayer::read_wire`]), hands each batch the
//! core transmits to [`StreamLayer::write_frames`], and writes what
//! [`StreamLayer::take_wire`] gives. Once the layer's own handshake is
//! done, [`StreamLayer::take_ready`] yields the channel binding and the
//! core starts the bus handshake over it, within the same deadline
//! ([`Node::accept_pending`](crate::node::Node::accept_pending)).
//!
//! Plain TCP has no layer: its bytes go straight between the socket and
//! the core.

use crate::connection::Transmit;
use crate::handshake::Binding;
use crate::time::Now;
use bytes::{Bytes, BytesMut};
use std::boxed::Box;
use std::sync::Arc;
use std::vec::Vec;

/// Most bytes a layer may hold for the wire before its socket stops
/// reading ([`StreamLayer::pending_wire`]).
pub const MAX_PENDING_WIRE: usize = 256 << 10;

/// A layer that frames messages itself (WebSocket) refused one over the
/// frame limit before buffering it. The host hands it to the core, which
/// closes the connection exactly as its decoder closes one carrying an
/// oversize frame on TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {size}-byte message exceeds the frame limit {max}")]
pub struct FrameTooLarge {
    /// The message's size (saturated at `u32::MAX`).
    pub size: u32,
    /// The limit in force.
    pub max: u32,
}

/// Why a layer gave up: the connection ends (with whatever alert or close
/// the layer queued written first, within `close_grace`).
pub type LayerError = Box<dyn core::error::Error + Send + Sync + 'static>;

/// One connection's transport engine, driven from memory.
///
/// Implemented by the TLS and WebSocket layers of
/// [`crate::transport`]; a test can implement it to wrap the stream in
/// anything.
pub trait StreamLayer: Send + 'static {
    /// Processes wire bytes read from the socket at `now`, consuming all
    /// of `wire`, and appends the frame bytes they carry to `frames`. The
    /// time is the layer's only clock (TLS checks certificate validity
    /// against it).
    fn read_wire(
        &mut self,
        now: Now,
        wire: &mut BytesMut,
        frames: &mut BytesMut,
    ) -> Result<(), LayerError>;
    /// The layer stopped reading at a frame whose processing may change the
    /// frame limit (before authentication) and holds more input: call
    /// [`StreamLayer::read_wire`] again, with no new bytes, once the core
    /// has the frames and the layer the new limit.
    fn wants_read(&self) -> bool {
        false
    }
    /// The socket's read side ended. An error when the end was not the
    /// layer's clean close (TLS without `close_notify`): the connection
    /// ends as reset either way, the error is logged.
    fn read_eof(&mut self) -> Result<(), LayerError>;
    /// The peer closed its side within the layer (TLS `close_notify`, a
    /// WebSocket close frame): nothing more will be read. The connection
    /// ends as if the stream had ended, cleanly.
    fn peer_closed(&self) -> bool {
        false
    }
    /// Bytes the layer holds for the wire that the host has not taken
    /// (answers to the peer's input: pongs, handshake replies). The host
    /// stops reading while they pass [`MAX_PENDING_WIRE`], so a peer that
    /// sends pings and never reads cannot make them pile up.
    fn pending_wire(&self) -> usize {
        0
    }
    /// Once, when the layer's handshake is done: the channel binding for
    /// the bus handshake ([`Binding::NONE`] where the layer has none).
    fn take_ready(&mut self) -> Option<Binding>;
    /// Encodes one batch of whole frames for the wire (each frame's size
    /// is in its header, for a layer that frames messages itself).
    fn write_frames(&mut self, batch: Transmit) -> Result<(), LayerError>;
    /// The core's frame limit changed (a header before the bus handshake,
    /// `max_message_size` after): a layer that frames messages itself
    /// refuses larger ones from the wire.
    fn set_frame_limit(&mut self, _limit: u32) {}
    /// Starts the layer's own close (TLS `close_notify`, the WebSocket
    /// close frame). Called once, after the core's last frames.
    fn close(&mut self);
    /// Wire bytes to write, in order, appended to `out`: handshake
    /// records, encoded batches, alerts, pongs, the close.
    fn take_wire(&mut self, out: &mut Vec<Bytes>);
}

/// Makes the layer for each new connection of a listener or a dial target.
pub trait LayerFactory: Send + Sync + 'static {
    /// The transport's name for logs and URLs (`tls`, `ws`, `wss`).
    fn name(&self) -> &'static str;
    /// A fresh layer for one connection.
    fn layer(&self) -> Result<Box<dyn StreamLayer>, LayerError>;
}

/// What carries a connection's frames: plain TCP, TCP under a layer, or
/// QUIC. Listeners and dial targets each have one; the default is plain
/// TCP.
///
/// ```
/// use bus_proto::host::Transport;
/// assert_eq!(Transport::tcp().name(), "tcp");
/// assert!(Transport::default().is_tcp());
/// ```
#[derive(Clone, Default)]
pub struct Transport {
    kind: Kind,
    /// A listener's plane, if it takes only one.
    only: Option<crate::wire::Plane>,
}

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Tcp,
    Layered(Arc<dyn LayerFactory>),
    #[cfg(feature = "quic")]
    Quic(Arc<crate::transport::quic::QuicSetup>),
}

impl Transport {
    /// Plain TCP: frames straight on the socket.
    pub fn tcp() -> Self {
        Transport::default()
    }

    /// TCP under the layers `factory` makes.
    pub fn layered(factory: Arc<dyn LayerFactory>) -> Self {
        Transport {
            kind: Kind::Layered(factory),
            only: None,
        }
    }

    /// QUIC over UDP, with this TLS setup.
    #[cfg(feature = "quic")]
    pub(crate) fn quic(setup: crate::transport::quic::QuicSetup) -> Self {
        Transport {
            kind: Kind::Quic(Arc::new(setup)),
            only: None,
        }
    }

    /// A listener of this transport that accepts only `plane`: replicas
    /// (a port for the cluster's own network) or clients (a port facing
    /// applications). A `hello` for the other plane is refused
    /// (`reject UnknownPeer`) before any MAC is computed. Dials ignore it:
    /// a dial's plane is the dialer's own.
    ///
    /// ```
    /// use bus_proto::host::Transport;
    /// use bus_proto::wire::Plane;
    /// let replicas_only = Transport::tcp().only(Plane::Replica);
    /// assert_eq!(replicas_only.plane(), Some(Plane::Replica));
    /// assert_eq!(Transport::tcp().plane(), None);
    /// ```
    pub fn only(mut self, plane: crate::wire::Plane) -> Self {
        self.only = Some(plane);
        self
    }

    /// The one plane a listener of this transport accepts (`None`: both).
    pub fn plane(&self) -> Option<crate::wire::Plane> {
        self.only
    }

    /// The transport's name: `tcp`, the layer's, or `quic`.
    pub fn name(&self) -> &'static str {
        match &self.kind {
            Kind::Tcp => "tcp",
            Kind::Layered(factory) => factory.name(),
            #[cfg(feature = "quic")]
            Kind::Quic(_) => "quic",
        }
    }

    /// True for plain TCP.
    pub fn is_tcp(&self) -> bool {
        matches!(self.kind, Kind::Tcp)
    }

    /// True for QUIC: the adapter binds a UDP socket and runs it as a
    /// QUIC port ([`Shared::quic_step`](super::Shared::quic_step)) instead
    /// of a TCP listener or dial.
    pub fn is_quic(&self) -> bool {
        #[cfg(feature = "quic")]
        if let Kind::Quic(_) = self.kind {
            return true;
        }
        false
    }

    /// The QUIC setup, for a QUIC transport.
    #[cfg(feature = "quic")]
    pub(crate) fn quic_setup(&self) -> Option<&crate::transport::quic::QuicSetup> {
        match &self.kind {
            Kind::Quic(setup) => Some(setup),
            _ => None,
        }
    }

    /// A layer for a new TCP connection: `None` for plain TCP; an error
    /// for QUIC, which does not run over TCP.
    pub fn new_layer(&self) -> Result<Option<Box<dyn StreamLayer>>, LayerError> {
        match &self.kind {
            Kind::Tcp => Ok(None),
            Kind::Layered(factory) => factory.layer().map(Some),
            #[cfg(feature = "quic")]
            Kind::Quic(_) => Err("QUIC runs over UDP, not over a TCP connection".into()),
        }
    }
}

impl core::fmt::Debug for Transport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Transport {
    /// The same transport: both TCP, or the same configuration.
    fn eq(&self, other: &Self) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::Tcp, Kind::Tcp) => true,
            (Kind::Layered(a), Kind::Layered(b)) => Arc::ptr_eq(a, b),
            #[cfg(feature = "quic")]
            (Kind::Quic(a), Kind::Quic(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Transport {}
