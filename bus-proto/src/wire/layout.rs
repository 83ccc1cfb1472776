//! The one definition of the 256-byte header layout.
//!
//! Every other module reads and writes header bytes through these ranges; no
//! offset appears as a literal anywhere else. The `const` block at the bottom
//! proves at compile time that the common fields tile bytes `0..128` exactly
//! and that every command-specific field lies inside the 128-byte area.

use core::ops::Range;

/// Size of every frame header in bytes.
pub const HEADER_SIZE: usize = 256;
/// [`HEADER_SIZE`] as the type of the `size` field.
pub const HEADER_SIZE_U32: u32 = 256;
/// Start of the command-specific area.
pub const AREA_START: usize = 128;
/// Size of the command-specific area in bytes.
pub const AREA_SIZE: usize = HEADER_SIZE - AREA_START;

const fn field(start: usize, len: usize) -> Range<usize> {
    start..start + len
}

/// Header checksum (or tag), covering header bytes `16..256`.
pub const CHECKSUM: Range<usize> = field(0, 16);
/// Body checksum (or tag), covering the body.
pub const CHECKSUM_BODY: Range<usize> = field(16, 16);
/// Cluster id (u128).
pub const CLUSTER: Range<usize> = field(32, 16);
/// Frame size, header plus body (u32).
pub const SIZE: Range<usize> = field(48, 4);
/// View number, opaque to the bus (u32).
pub const VIEW: Range<usize> = field(52, 4);
/// Application release, opaque to the bus (u32).
pub const RELEASE: Range<usize> = field(56, 4);
/// Wire protocol version (u16).
pub const PROTOCOL: Range<usize> = field(60, 2);
/// Command number (u8).
pub const COMMAND: Range<usize> = field(62, 1);
/// Sender's replica id, or [`crate::wire::REPLICA_NONE`] (u8).
pub const REPLICA: Range<usize> = field(63, 1);
/// Per-connection frame sequence number (u64).
pub const SEQUENCE: Range<usize> = field(64, 8);
/// Reserved frame area; must be zero.
pub const RESERVED_FRAME: Range<usize> = field(72, 56);
/// The command-specific area.
pub const AREA: Range<usize> = field(AREA_START, AREA_SIZE);
/// The bytes the header checksum covers.
pub const CHECKSUMMED: Range<usize> = CHECKSUM.end..HEADER_SIZE;

/// Offsets inside the command-specific area, one module per command.
pub mod area {
    use super::{AREA_START, Range, field};

    /// `hello` (dialer's first handshake message).
    pub mod hello {
        use super::*;
        /// Dialer id: replica id or client id (u128).
        pub const DIALER: Range<usize> = field(AREA_START, 16);
        /// Acceptor's replica id (u128).
        pub const ACCEPTOR: Range<usize> = field(144, 16);
        /// Dialer's fresh nonce (32 bytes).
        pub const NONCE: Range<usize> = field(160, 32);
        /// Dialer's wall clock, nanoseconds since the Unix epoch (u64).
        pub const TIMESTAMP: Range<usize> = field(192, 8);
        /// Plane: 1 replica, 2 client (u8).
        pub const PLANE: Range<usize> = field(200, 1);
        /// Flags: bit 0 requests authenticated frames (u8).
        pub const FLAGS: Range<usize> = field(201, 1);
        /// Reserved, zero.
        pub const RESERVED_A: Range<usize> = field(202, 6);
        /// Dialer's MAC (32 bytes).
        pub const MAC: Range<usize> = field(208, 32);
        /// Reserved, zero.
        pub const RESERVED_B: Range<usize> = field(240, 16);
    }

    /// `welcome` (acceptor's answer).
    pub mod welcome {
        use super::*;
        /// Acceptor's fresh nonce (32 bytes).
        pub const NONCE: Range<usize> = field(AREA_START, 32);
        /// Acceptor's MAC (32 bytes).
        pub const MAC: Range<usize> = field(160, 32);
        /// Bit 0: authenticated frames follow the handshake (1 byte).
        pub const FLAGS: Range<usize> = field(192, 1);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(193, 63);
    }

    /// `confirm` (dialer's key confirmation).
    pub mod confirm {
        use super::*;
        /// Dialer's second MAC (32 bytes).
        pub const MAC: Range<usize> = field(AREA_START, 32);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(160, 96);
    }

    /// `reject` (acceptor refuses a dial).
    pub mod reject {
        use super::*;
        /// Rejection status (u16).
        pub const STATUS: Range<usize> = field(AREA_START, 2);
        /// Lowest protocol version the acceptor speaks (u16).
        pub const PROTOCOL_MIN: Range<usize> = field(130, 2);
        /// Highest protocol version the acceptor speaks (u16).
        pub const PROTOCOL_MAX: Range<usize> = field(132, 2);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(134, 122);
    }

    /// `ping` and `pong`.
    pub mod ping {
        use super::*;
        /// Sender's opaque token, echoed by `pong` (u64).
        pub const TOKEN: Range<usize> = field(AREA_START, 8);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(136, 120);
    }

    /// `close`.
    pub mod close {
        use super::*;
        /// Close reason (u16).
        pub const REASON: Range<usize> = field(AREA_START, 2);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(130, 126);
    }

    /// The application's area of every data frame (`message`, `request`,
    /// `reply`): carried unchanged, never read by the bus.
    pub const APP: Range<usize> = field(160, 96);

    /// `message` (replica plane application data).
    pub mod message {
        use super::*;
        /// Application-chosen operation tag (u32).
        pub const OPERATION: Range<usize> = field(AREA_START, 4);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(132, 28);
    }

    /// `request` and `reply` (client plane).
    pub mod request {
        use super::*;
        /// Client id (u128).
        pub const CLIENT: Range<usize> = field(AREA_START, 16);
        /// Request number (u64).
        pub const REQUEST: Range<usize> = field(144, 8);
        /// Application-chosen operation tag (u32).
        pub const OPERATION: Range<usize> = field(152, 4);
        /// `reply` status (u16); zero in a `request`.
        pub const STATUS: Range<usize> = field(156, 2);
        /// Reserved, zero.
        pub const RESERVED: Range<usize> = field(158, 2);
    }
}

/// True when `fields` tile `start..end` exactly, in order, without gaps.
const fn tiles(fields: &[Range<usize>], start: usize, end: usize) -> bool {
    let mut at = start;
    let mut i = 0;
    while i < fields.len() {
        if fields[i].start != at || fields[i].end <= fields[i].start {
            return false;
        }
        at = fields[i].end;
        i += 1;
    }
    at == end
}

const _: () = {
    use area::*;
    assert!(tiles(
        &[
            CHECKSUM,
            CHECKSUM_BODY,
            CLUSTER,
            SIZE,
            VIEW,
            RELEASE,
            PROTOCOL,
            COMMAND,
            REPLICA,
            SEQUENCE,
            RESERVED_FRAME
        ],
        0,
        AREA_START
    ));
    assert!(AREA.end == HEADER_SIZE && CHECKSUMMED.start == 16);
    assert!(HEADER_SIZE_U32 as usize == HEADER_SIZE);
    assert!(tiles(
        &[
            hello::DIALER,
            hello::ACCEPTOR,
            hello::NONCE,
            hello::TIMESTAMP,
            hello::PLANE,
            hello::FLAGS,
            hello::RESERVED_A,
            hello::MAC,
            hello::RESERVED_B
        ],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[
            welcome::NONCE,
            welcome::MAC,
            welcome::FLAGS,
            welcome::RESERVED
        ],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[confirm::MAC, confirm::RESERVED],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[
            reject::STATUS,
            reject::PROTOCOL_MIN,
            reject::PROTOCOL_MAX,
            reject::RESERVED
        ],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[ping::TOKEN, ping::RESERVED],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[close::REASON, close::RESERVED],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[message::OPERATION, message::RESERVED, APP],
        AREA_START,
        HEADER_SIZE
    ));
    assert!(tiles(
        &[
            request::CLIENT,
            request::REQUEST,
            request::OPERATION,
            request::STATUS,
            request::RESERVED,
            APP
        ],
        AREA_START,
        HEADER_SIZE
    ));
};
