//! The typed header and its validation.

use super::command::{Command, Kind, array, zeroed};
use super::error::{DecodeError, EncodeError};
use super::integrity::Integrity;
use super::layout::*;
use super::{PROTOCOL_VERSION, REPLICA_NONE};

/// A decoded, validated header (everything but the integrity fields and size,
/// which are derived from the body when encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Cluster id.
    pub cluster: u128,
    /// View number, opaque to the bus.
    pub view: u32,
    /// Application release, opaque to the bus.
    pub release: u32,
    /// Sender's replica id, or [`REPLICA_NONE`] for clients.
    pub replica: u8,
    /// Per-connection sequence number, set by the connection.
    pub sequence: u64,
    /// Command and command-specific fields.
    pub kind: Kind,
}

/// What [`Header::parse`] learns beyond the typed header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parsed {
    /// Frame size, header plus body, already checked against the limit.
    pub(crate) size: u32,
    /// Expected body integrity value.
    pub(crate) body_sum: u128,
}

impl Header {
    /// A header with zeroed common fields and no replica.
    pub const fn new(cluster: u128, kind: Kind) -> Self {
        Header {
            cluster,
            view: 0,
            release: 0,
            replica: REPLICA_NONE,
            sequence: 0,
            kind,
        }
    }

    /// The command number.
    pub const fn command(&self) -> Command {
        self.kind.command()
    }

    /// Checks that a frame with this header and `body_len` body bytes is valid.
    pub fn check(&self, body_len: usize, max_message_size: u32) -> Result<u32, EncodeError> {
        let command = self.command();
        if body_len > 0 && !command.allows_body() {
            return Err(EncodeError::BodyNotAllowed {
                command,
                body: body_len,
            });
        }
        if let Kind::Request(r) | Kind::Reply { request: r, .. } = &self.kind
            && r.request == u64::MAX
        {
            return Err(EncodeError::InvalidField {
                command,
                field: "request",
                value: u128::from(r.request),
            });
        }
        u32::try_from(body_len)
            .ok()
            .and_then(|b| b.checked_add(HEADER_SIZE_U32))
            .filter(|&size| size <= max_message_size)
            .ok_or(EncodeError::TooLarge {
                body: body_len,
                max: max_message_size,
            })
    }

    /// Encodes this header for `body`, computing size and integrity fields.
    pub fn encode(
        &self,
        body: &[u8],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<[u8; HEADER_SIZE], EncodeError> {
        let size = self.check(body.len(), max_message_size)?;
        let mut h = [0u8; HEADER_SIZE];
        h[CLUSTER].copy_from_slice(&self.cluster.to_le_bytes());
        h[SIZE].copy_from_slice(&size.to_le_bytes());
        h[VIEW].copy_from_slice(&self.view.to_le_bytes());
        h[RELEASE].copy_from_slice(&self.release.to_le_bytes());
        h[PROTOCOL].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        h[COMMAND][0] = self.command().to_wire();
        h[REPLICA][0] = self.replica;
        h[SEQUENCE].copy_from_slice(&self.sequence.to_le_bytes());
        self.kind.write_area(&mut h);
        let body_sum = integrity.body_sum(body);
        h[CHECKSUM_BODY].copy_from_slice(&body_sum.to_le_bytes());
        let sum = integrity.header_sum(&h[CHECKSUMMED]);
        h[CHECKSUM].copy_from_slice(&sum.to_le_bytes());
        Ok(h)
    }

    /// Verifies and parses a header. Checks run in this order, so nothing the
    /// peer declares is used before the header's integrity is established:
    /// integrity, protocol version, size bounds, reserved area, command, then
    /// the command-specific fields.
    pub(crate) fn parse(
        h: &[u8; HEADER_SIZE],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<(Header, Parsed), DecodeError> {
        let received = u128::from_le_bytes(array(h, CHECKSUM));
        let computed = integrity.header_sum(&h[CHECKSUMMED]);
        if !integrity.matches(received, computed) {
            return Err(match integrity {
                Integrity::Checksum => DecodeError::HeaderChecksum { received, computed },
                Integrity::Authenticated(_) => DecodeError::HeaderTag,
            });
        }
        let raw_command = h[COMMAND][0];
        let version = u16::from_le_bytes(array(h, PROTOCOL));
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedProtocol {
                version,
                command: raw_command,
            });
        }
        let size = u32::from_le_bytes(array(h, SIZE));
        if size < HEADER_SIZE_U32 {
            return Err(DecodeError::SizeTooSmall { size });
        }
        if size > max_message_size {
            return Err(DecodeError::SizeTooLarge {
                size,
                max: max_message_size,
            });
        }
        let command = Command::from_wire(raw_command)?;
        zeroed(command, h, RESERVED_FRAME)?;
        let body_size = size - HEADER_SIZE_U32;
        if body_size > 0 && !command.allows_body() {
            return Err(DecodeError::BodyNotAllowed {
                command,
                size: body_size,
            });
        }
        let header = Header {
            cluster: u128::from_le_bytes(array(h, CLUSTER)),
            view: u32::from_le_bytes(array(h, VIEW)),
            release: u32::from_le_bytes(array(h, RELEASE)),
            replica: h[REPLICA][0],
            sequence: u64::from_le_bytes(array(h, SEQUENCE)),
            kind: Kind::read_area(command, h)?,
        };
        let body_sum = u128::from_le_bytes(array(h, CHECKSUM_BODY));
        Ok((header, Parsed { size, body_sum }))
    }

    /// Verifies and parses a standalone header (e.g. in tests and fuzzers).
    /// Returns the header and the frame size it declares.
    pub fn decode(
        h: &[u8; HEADER_SIZE],
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<(Header, u32), DecodeError> {
        Header::parse(h, integrity, max_message_size).map(|(header, p)| (header, p.size))
    }
}
