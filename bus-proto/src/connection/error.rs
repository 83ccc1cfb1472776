//! Why a connection closed, and why a send was refused.

use crate::handshake::{HandshakeError, IgnoreReason};
use crate::wire::{
    CloseReason, Command, DecodeError, EncodeError, ErrorClass, Reject, RejectStatus,
};

/// Which deadline expired.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// The handshake did not complete in `handshake_timeout`.
    Handshake,
    /// Acceptor: the dialer's `hello` did not arrive in `hello_timeout`.
    Hello,
    /// Nothing was received for `liveness_timeout`.
    Liveness,
    /// A graceful close did not finish within `close_grace`.
    CloseGrace,
}

/// Why a connection closed: the `reason` of [`Event::Closed`](super::Event::Closed).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseCause {
    /// We closed gracefully with this reason, and the peer acknowledged or
    /// hung up.
    #[error("closed by us ({0:?})")]
    Local(CloseReason),
    /// The peer closed with this reason.
    #[error("closed by the peer ({0:?})")]
    Peer(CloseReason),
    /// Dialer: the acceptor refused the dial.
    #[error("acceptor rejected the dial: {:?} (it speaks protocol {}..={})", .0.status, .0.protocol_min, .0.protocol_max)]
    Rejected(Reject),
    /// Acceptor: we refused the dial with this status.
    #[error("refused the dial: {0:?}")]
    Refused(RejectStatus),
    /// Acceptor: we dropped the dial without answering.
    #[error("ignored the dial: {0}")]
    Ignored(IgnoreReason),
    /// A handshake proof failed.
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    /// The peer sent bytes that are not a valid frame.
    #[error("invalid frame from the peer: {0}")]
    Decode(DecodeError),
    /// The peer sent a valid frame that is wrong at this point.
    #[error("protocol violation by the peer: {0}")]
    Violation(Violation),
    /// Before authenticating, the peer sent a frame the handshake does not
    /// allow; closed without an answer.
    #[error("unauthenticated peer: {0}")]
    Unauthenticated(Violation),
    /// A deadline expired.
    #[error("{0:?} deadline expired")]
    Timeout(Deadline),
    /// Acceptor: closed before its `hello` arrived, to make room for newer
    /// connections in the unauthenticated pool.
    #[error("evicted before authenticating, to make room")]
    Evicted,
    /// The transport ended without a `close` frame.
    #[error("transport closed without a close frame")]
    Reset,
}

impl CloseCause {
    /// How an operator should triage it: failures that cannot be tied to an
    /// authenticated peer are [`ErrorClass::Unauthenticated`] (hazard 15).
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            CloseCause::Decode(e) => Some(e.class()),
            CloseCause::Ignored(_)
            | CloseCause::Refused(_)
            | CloseCause::Handshake(_)
            | CloseCause::Evicted
            | CloseCause::Unauthenticated(_) => Some(ErrorClass::Unauthenticated),
            CloseCause::Violation(_) => Some(ErrorClass::ProtocolViolation),
            _ => None,
        }
    }
}

/// A valid frame that the connection's state does not allow.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A command not allowed in this state or on this plane.
    #[error("{command:?} is not allowed {state}")]
    Unexpected {
        /// The command received.
        command: Command,
        /// Where we were (e.g. "before the handshake").
        state: &'static str,
    },
    /// A frame's sequence number is not the next one: a frame was dropped,
    /// replayed or injected.
    #[error("frame sequence {received}, expected {expected}")]
    Sequence {
        /// The next sequence number due.
        expected: u64,
        /// The one received.
        received: u64,
    },
    /// Bytes arrived after the `hello` before it was answered.
    #[error("{bytes} bytes sent before the welcome")]
    EarlyData {
        /// Bytes buffered.
        bytes: usize,
    },
    /// A frame names another cluster.
    #[error("frame for cluster {received:#x}, this connection is in {expected:#x}")]
    Cluster {
        /// Our cluster.
        expected: u128,
        /// The frame's.
        received: u128,
    },
    /// A frame's `replica` field is not the peer's.
    #[error("frame says replica {received}, the peer is {expected}")]
    Replica {
        /// The peer's value.
        expected: u8,
        /// The frame's.
        received: u8,
    },
    /// A client-plane frame for another client.
    #[error("frame for client {received:#x} on the connection of client {expected:#x}")]
    Client {
        /// The connection's client.
        expected: u128,
        /// The frame's.
        received: u128,
    },
}

/// `send` refused a frame. Nothing was queued.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send queue is full; retry after the connection transmits.
    #[error(
        "send queue full: {queued_frames} frames / {queued_bytes} bytes queued (limits {max_frames} / {max_bytes})"
    )]
    Backpressure {
        /// Frames queued.
        queued_frames: usize,
        /// Bytes queued.
        queued_bytes: usize,
        /// `send_queue_frames`.
        max_frames: usize,
        /// `send_queue_bytes`.
        max_bytes: usize,
    },
    /// The connection is closing or closed.
    #[error("connection is closing or closed")]
    Closed,
    /// Not a data command, or not one this side may send on this plane.
    #[error("{command:?} cannot be sent by this side of a {plane} connection")]
    NotAllowed {
        /// The command.
        command: Command,
        /// "replica-plane" or "client-plane".
        plane: &'static str,
    },
    /// The frame is invalid (too large, reserved request number).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A dial could not start.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// Replica plane: only a lower id dials a higher id.
    #[error("replica {local} may not dial replica {acceptor}: only a lower id dials a higher one")]
    DirectionalRule {
        /// Our id.
        local: u8,
        /// The id dialled.
        acceptor: u8,
    },
    /// `255` is reserved for clients in the header's `replica` field.
    #[error("replica id {0} is reserved (replica ids are 0..=254)")]
    ReservedReplicaId(u8),
}
