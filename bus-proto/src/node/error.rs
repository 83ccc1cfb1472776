//! What the node refuses, and why.

use super::ConnectionId;
use crate::connection::DialError;
use crate::wire::layout::HEADER_SIZE_U32;
use crate::wire::{
    EncodeError, HEADER_SIZE, Header, Integrity, Kind, PROTOCOL_VERSION, Reject, RejectStatus,
};

/// Why [`Node::new`](super::Node::new) refused its parameters.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node's replica id is not below `replica_count`.
    #[error("replica id {replica} is not below replica_count {replica_count}")]
    ReplicaOutOfRange {
        /// The id.
        replica: u8,
        /// The cluster size.
        replica_count: u8,
    },
}

/// Why a socket input could not be taken.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SocketError {
    /// The id names no connection (it ended, or was never issued): drop
    /// the socket.
    #[error("{0} is not a live connection")]
    UnknownConnection(ConnectionId),
    /// `connected` for a connection that is not waiting for its socket.
    #[error("{0} is not waiting for a socket")]
    NotConnecting(ConnectionId),
    /// The connection could not start its handshake.
    #[error("{connection}: {error}")]
    Dial {
        /// The connection, now closed.
        connection: ConnectionId,
        /// Why.
        error: DialError,
    },
}

/// Why an inbound connection was refused. The adapter writes
/// [`AcceptError::reject`] without waiting (a new socket's send buffer is
/// empty, so it fits) and closes the socket unread.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// The connection table is full
    /// ([`table_capacity`](super::table_capacity)): clients, the
    /// unauthenticated pool, replicas and closing connections fill it.
    #[error("{held} connections held, the table is full")]
    TableFull {
        /// Connections held.
        held: usize,
        /// Our cluster, named in the reject.
        cluster: u128,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown {
        /// Our cluster, named in the reject.
        cluster: u128,
    },
}

impl AcceptError {
    /// The frame that tells the dialer: a `reject` with status `Busy`
    /// (retry later), sequence 0, as PROTOCOL.md §5 lists for capacity
    /// limits.
    pub fn reject(&self) -> [u8; HEADER_SIZE] {
        let cluster = match *self {
            AcceptError::TableFull { cluster, .. } => cluster,
            AcceptError::ShuttingDown { cluster } => cluster,
        };
        let header = Header::new(
            cluster,
            Kind::Reject(Reject {
                status: RejectStatus::Busy,
                protocol_min: PROTOCOL_VERSION,
                protocol_max: PROTOCOL_VERSION,
            }),
        );
        // A header-only frame within the minimum size always encodes.
        header
            .encode(&[], &Integrity::Checksum, HEADER_SIZE_U32)
            .unwrap_or([0; HEADER_SIZE])
    }
}

/// Why a message to a replica was not queued. Nothing was queued.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such replica in this cluster.
    #[error("replica {replica} is not in this cluster of {replica_count}")]
    UnknownReplica {
        /// The destination.
        replica: u8,
        /// The cluster size.
        replica_count: u8,
    },
    /// The destination is this node.
    #[error("replica {0} is this node")]
    Local(u8),
    /// No established connection to the replica right now; the node keeps
    /// dialling it (or waits for it to dial).
    #[error("replica {0} is not connected")]
    Disconnected(u8),
    /// The connection's send queue is full; retry after it drains.
    #[error("replica {replica}: send queue full ({queued_frames} frames, {queued_bytes} bytes)")]
    Backpressure {
        /// The destination.
        replica: u8,
        /// Frames queued.
        queued_frames: usize,
        /// Bytes queued.
        queued_bytes: usize,
    },
    /// The frame cannot be encoded (too large).
    #[error("replica {replica}: {error}")]
    Encode {
        /// The destination.
        replica: u8,
        /// Why.
        error: EncodeError,
    },
}

/// Why a reply was not sent.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The client has no connection right now. The reply is kept in the
    /// dedup window (unless `cached` is false: the session ended or the
    /// reply exceeds the cache), so the client's retry after it reconnects
    /// is answered from there.
    #[error("client {client:#x} is not connected (reply cached: {cached})")]
    Disconnected {
        /// The client.
        client: u128,
        /// Whether the retry will find the reply.
        cached: bool,
    },
    /// The client's connection queue is full. Nothing was recorded: call
    /// `reply` again later.
    #[error("client {client:#x}: send queue full ({queued_frames} frames, {queued_bytes} bytes)")]
    Backpressure {
        /// The client.
        client: u128,
        /// Frames queued.
        queued_frames: usize,
        /// Bytes queued.
        queued_bytes: usize,
    },
    /// This request was already answered; the first reply stands.
    #[error("client {client:#x} request {request} was already answered")]
    AlreadyReplied {
        /// The client.
        client: u128,
        /// The request number.
        request: u64,
    },
    /// The reply cannot be encoded (too large); nothing was recorded.
    #[error("client {client:#x}: {error}")]
    Encode {
        /// The client.
        client: u128,
        /// Why.
        error: EncodeError,
    },
}
