//! Command numbers, their enumerated fields, and the typed command-specific area.

use super::error::DecodeError;
use super::layout::{HEADER_SIZE, area};
use crate::crypto::{Nonce, Tag};
use crate::time::UnixNanos;
use alloc::boxed::Box;
use core::ops::Range;

/// Declares a `#[repr(int)]` enum with a checked conversion from its wire value.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident: $repr:ty, $err:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value on the wire.
            pub const fn to_wire(self) -> $repr {
                self as $repr
            }

            /// Parses a wire value, naming it when unknown.
            pub const fn from_wire(value: $repr) -> Result<Self, DecodeError> {
                match value {
                    $($value => Ok($name::$variant),)+
                    _ => Err(DecodeError::$err { value }),
                }
            }
        }
    };
}

wire_enum! {
    /// Frame command numbers (header byte 62).
    Command: u8, UnknownCommand {
        /// Dialer's first handshake message.
        Hello = 1,
        /// Acceptor's handshake answer.
        Welcome = 2,
        /// Dialer's key confirmation, completing the handshake.
        Confirm = 3,
        /// Acceptor refuses the dial, with a status.
        Reject = 4,
        /// Liveness probe.
        Ping = 5,
        /// Answer to a ping.
        Pong = 6,
        /// Graceful close, with a reason.
        Close = 7,
        /// Replica-plane application message.
        Message = 8,
        /// Client-plane request.
        Request = 9,
        /// Client-plane reply.
        Reply = 10,
    }
}

impl Command {
    /// Handshake commands and liveness/close: the control lane.
    pub const fn is_control(self) -> bool {
        !matches!(self, Command::Message | Command::Request | Command::Reply)
    }

    /// Only these commands may carry a body.
    pub const fn allows_body(self) -> bool {
        matches!(self, Command::Message | Command::Request | Command::Reply)
    }
}

wire_enum! {
    /// The plane a connection belongs to.
    Plane: u8, UnknownPlane {
        /// Replica to replica, inside one cluster.
        Replica = 1,
        /// Client to node.
        Client = 2,
    }
}

wire_enum! {
    /// Why an acceptor refused a dial (`reject` status).
    RejectStatus: u16, UnknownRejectStatus {
        /// The dial named another cluster.
        ClusterMismatch = 1,
        /// Replica plane: only a lower id may dial a higher id.
        DirectionalRule = 2,
        /// The dialer's id is not a configured peer.
        UnknownPeer = 3,
        /// The dialer's MAC did not verify under any accepted key.
        BadMac = 4,
        /// The dialer's timestamp is outside the freshness window.
        StaleTimestamp = 5,
        /// The dialer's protocol version is not supported.
        UnsupportedVersion = 6,
        /// The acceptor is at a capacity limit; retry later.
        Busy = 7,
        /// The dial names another node as the acceptor.
        WrongAcceptor = 8,
    }
}

wire_enum! {
    /// Why a connection is being closed (`close` reason).
    CloseReason: u16, UnknownCloseReason {
        /// Orderly shutdown of the sender.
        Shutdown = 1,
        /// The peer stopped answering heartbeats.
        Timeout = 2,
        /// The peer broke the protocol.
        ProtocolViolation = 3,
        /// Another connection to the same peer won.
        Duplicate = 4,
        /// The sender dropped the peer's session (e.g. at a capacity limit).
        Evicted = 5,
    }
}

wire_enum! {
    /// What a `reply` carries (`reply.status`).
    ReplyStatus: u16, UnknownReplyStatus {
        /// The application's reply to the request; the body is the reply.
        Ok = 0,
        /// The request number is at or below what the node's dedup window
        /// has forgotten: it is not executed again, and its reply is gone.
        Stale = 1,
        /// The client's dedup window is full of requests in flight: this one
        /// was not executed; retry it after earlier ones complete.
        Busy = 2,
    }
}

/// `hello`: the dialer's first handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Plane of the connection.
    pub plane: Plane,
    /// Dialer's id (replica id or client id).
    pub dialer: u128,
    /// Replica id of the node being dialled.
    pub acceptor: u128,
    /// Dialer's fresh nonce.
    pub nonce: Nonce,
    /// Dialer's wall clock when sending.
    pub timestamp: UnixNanos,
    /// The dialer asks for authenticated frames after the handshake.
    pub authenticated_frames: bool,
    /// Dialer's MAC over the handshake transcript.
    pub mac: Tag,
}

/// `welcome`: the acceptor's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Acceptor's fresh nonce.
    pub nonce: Nonce,
    /// Authenticated frames follow the handshake (the dialer asked, or the
    /// acceptor requires them).
    pub authenticated_frames: bool,
    /// Acceptor's MAC over the handshake transcript.
    pub mac: Tag,
}

/// `reject`: the acceptor refuses a dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Why.
    pub status: RejectStatus,
    /// Lowest protocol version the acceptor speaks.
    pub protocol_min: u16,
    /// Highest protocol version the acceptor speaks.
    pub protocol_max: u16,
}

/// Client-plane correlation fields shared by `request` and `reply`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestHeader {
    /// Client id; stable across the client's reconnects.
    pub client: u128,
    /// Request number, chosen by the client; `u64::MAX` is invalid.
    pub request: u64,
    /// Application-chosen operation tag.
    pub operation: u32,
}

/// The command and its command-specific fields. The handshake's large
/// fields are boxed: they are rare, and every data frame's `Kind` is moved
/// several times on its way through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// See [`Hello`].
    Hello(Box<Hello>),
    /// See [`Welcome`].
    Welcome(Box<Welcome>),
    /// Dialer's key confirmation MAC.
    Confirm {
        /// MAC over the full transcript.
        mac: Tag,
    },
    /// See [`Reject`].
    Reject(Reject),
    /// Liveness probe with an opaque token.
    Ping {
        /// Echoed by the pong.
        token: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's token.
        token: u64,
    },
    /// Graceful close.
    Close {
        /// Why.
        reason: CloseReason,
    },
    /// Replica-plane application message.
    Message {
        /// Application-chosen operation tag.
        operation: u32,
    },
    /// Client-plane request.
    Request(RequestHeader),
    /// Client-plane reply.
    Reply {
        /// The `client` and `request` of the request answered.
        request: RequestHeader,
        /// Whether the body is the application's reply.
        status: ReplyStatus,
    },
}

impl Kind {
    /// The command number of this kind.
    pub const fn command(&self) -> Command {
        match self {
            Kind::Hello(_) => Command::Hello,
            Kind::Welcome(_) => Command::Welcome,
            Kind::Confirm { .. } => Command::Confirm,
            Kind::Reject(_) => Command::Reject,
            Kind::Ping { .. } => Command::Ping,
            Kind::Pong { .. } => Command::Pong,
            Kind::Close { .. } => Command::Close,
            Kind::Message { .. } => Command::Message,
            Kind::Request(_) => Command::Request,
            Kind::Reply { .. } => Command::Reply,
        }
    }

    /// Writes the command-specific area. Reserved bytes are left as they are
    /// (zero in a fresh header).
    pub(crate) fn write_area(&self, h: &mut [u8; HEADER_SIZE]) {
        match self {
            Kind::Hello(m) => {
                use area::hello::*;
                h[DIALER].copy_from_slice(&m.dialer.to_le_bytes());
                h[ACCEPTOR].copy_from_slice(&m.acceptor.to_le_bytes());
                h[NONCE].copy_from_slice(m.nonce.as_bytes());
                h[TIMESTAMP].copy_from_slice(&m.timestamp.as_nanos().to_le_bytes());
                h[PLANE][0] = m.plane.to_wire();
                h[FLAGS][0] = u8::from(m.authenticated_frames);
                m.mac.write_to(&mut h[MAC]);
            }
            Kind::Welcome(m) => {
                use area::welcome::*;
                h[NONCE].copy_from_slice(m.nonce.as_bytes());
                h[FLAGS][0] = u8::from(m.authenticated_frames);
                m.mac.write_to(&mut h[MAC]);
            }
            Kind::Confirm { mac } => mac.write_to(&mut h[area::confirm::MAC]),
            Kind::Reject(m) => {
                use area::reject::*;
                h[STATUS].copy_from_slice(&m.status.to_wire().to_le_bytes());
                h[PROTOCOL_MIN].copy_from_slice(&m.protocol_min.to_le_bytes());
                h[PROTOCOL_MAX].copy_from_slice(&m.protocol_max.to_le_bytes());
            }
            Kind::Ping { token } | Kind::Pong { token } => {
                h[area::ping::TOKEN].copy_from_slice(&token.to_le_bytes());
            }
            Kind::Close { reason } => {
                h[area::close::REASON].copy_from_slice(&reason.to_wire().to_le_bytes());
            }
            Kind::Message { operation } => {
                h[area::message::OPERATION].copy_from_slice(&operation.to_le_bytes());
            }
            Kind::Request(r) | Kind::Reply { request: r, .. } => {
                use area::request::*;
                h[CLIENT].copy_from_slice(&r.client.to_le_bytes());
                h[REQUEST].copy_from_slice(&r.request.to_le_bytes());
                h[OPERATION].copy_from_slice(&r.operation.to_le_bytes());
                if let Kind::Reply { status, .. } = self {
                    h[STATUS].copy_from_slice(&status.to_wire().to_le_bytes());
                }
            }
        }
    }

    /// Parses and validates the command-specific area of `command`.
    pub(crate) fn read_area(command: Command, h: &[u8; HEADER_SIZE]) -> Result<Kind, DecodeError> {
        Ok(match command {
            Command::Hello => {
                use area::hello::*;
                zeroed(command, h, RESERVED_A)?;
                zeroed(command, h, RESERVED_B)?;
                let flags = flag_bit(command, h[FLAGS][0])?;
                Kind::Hello(Box::new(Hello {
                    plane: Plane::from_wire(h[PLANE][0])?,
                    dialer: u128::from_le_bytes(array(h, DIALER)),
                    acceptor: u128::from_le_bytes(array(h, ACCEPTOR)),
                    nonce: Nonce::from_bytes(array(h, NONCE)),
                    timestamp: UnixNanos::from_nanos(u64::from_le_bytes(array(h, TIMESTAMP))),
                    authenticated_frames: flags,
                    mac: Tag::from_bytes(array(h, MAC)),
                }))
            }
            Command::Welcome => {
                use area::welcome::*;
                zeroed(command, h, RESERVED)?;
                Kind::Welcome(Box::new(Welcome {
                    nonce: Nonce::from_bytes(array(h, NONCE)),
                    authenticated_frames: flag_bit(command, h[FLAGS][0])?,
                    mac: Tag::from_bytes(array(h, MAC)),
                }))
            }
            Command::Confirm => {
                use area::confirm::*;
                zeroed(command, h, RESERVED)?;
                Kind::Confirm {
                    mac: Tag::from_bytes(array(h, MAC)),
                }
            }
            Command::Reject => {
                use area::reject::*;
                zeroed(command, h, RESERVED)?;
                Kind::Reject(Reject {
                    status: RejectStatus::from_wire(u16::from_le_bytes(array(h, STATUS)))?,
                    protocol_min: u16::from_le_bytes(array(h, PROTOCOL_MIN)),
                    protocol_max: u16::from_le_bytes(array(h, PROTOCOL_MAX)),
                })
            }
            Command::Ping | Command::Pong => {
                use area::ping::*;
                zeroed(command, h, RESERVED)?;
                let token = u64::from_le_bytes(array(h, TOKEN));
                if command == Command::Ping {
                    Kind::Ping { token }
                } else {
                    Kind::Pong { token }
                }
            }
            Command::Close => {
                use area::close::*;
                zeroed(command, h, RESERVED)?;
                Kind::Close {
                    reason: CloseReason::from_wire(u16::from_le_bytes(array(h, REASON)))?,
                }
            }
            Command::Message => {
                use area::message::*;
                zeroed(command, h, RESERVED)?;
                Kind::Message {
                    operation: u32::from_le_bytes(array(h, OPERATION)),
                }
            }
            Command::Request | Command::Reply => {
                use area::request::*;
                zeroed(command, h, RESERVED)?;
                let r = RequestHeader {
                    client: u128::from_le_bytes(array(h, CLIENT)),
                    request: u64::from_le_bytes(array(h, REQUEST)),
                    operation: u32::from_le_bytes(array(h, OPERATION)),
                };
                if r.request == u64::MAX {
                    return Err(DecodeError::InvalidField {
                        command,
                        field: "request",
                        value: u128::from(r.request),
                    });
                }
                if command == Command::Request {
                    zeroed(command, h, STATUS)?;
                    Kind::Request(r)
                } else {
                    Kind::Reply {
                        request: r,
                        status: ReplyStatus::from_wire(u16::from_le_bytes(array(h, STATUS)))?,
                    }
                }
            }
        })
    }
}

/// A flags byte whose only defined bit is bit 0.
fn flag_bit(command: Command, flags: u8) -> Result<bool, DecodeError> {
    match flags {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidField {
            command,
            field: "flags",
            value: u128::from(flags),
        }),
    }
}

/// Copies a fixed-size field out of the header. The layout's compile-time
/// checks guarantee `range.len() == N` for every call site.
pub(crate) fn array<const N: usize>(h: &[u8; HEADER_SIZE], range: Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&h[range]);
    out
}

/// True when every byte is zero: whole words ORed together, then the
/// tail (cheaper inline than a `memcmp` against zeros).
#[inline(always)]
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    let words = bytes.chunks_exact(8);
    let tail = words.remainder().iter().fold(0u8, |acc, &b| acc | b);
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    words.fold(0u64, |acc, c| acc | word(c)) == 0 && tail == 0
}

/// Rejects a reserved range that is not all zero, naming the first offset.
pub(crate) fn zeroed(
    command: Command,
    h: &[u8; HEADER_SIZE],
    range: Range<usize>,
) -> Result<(), DecodeError> {
    let start = range.start;
    // The common, valid case first; locate the byte only on failure.
    if all_zero(&h[range.clone()]) {
        return Ok(());
    }
    match h[range].iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(DecodeError::ReservedNonZero {
            command: command.to_wire(),
            offset: start + i,
            byte: h[start + i],
        }),
    }
}
