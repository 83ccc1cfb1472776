//! Frames: a header plus a zero-copy body.

use super::error::EncodeError;
use super::header::Header;
use super::integrity::Integrity;
use super::layout::HEADER_SIZE;
use bytes::Bytes;

/// A frame: validated header and body. The body is a `Bytes` view into the
/// receive buffer, so decoding does not copy it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The body (empty for control commands).
    pub body: Bytes,
}

/// An encoded frame: header bytes and body, kept apart for a vectored write.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    /// The 256 header bytes, integrity fields filled in.
    pub header: [u8; HEADER_SIZE],
    /// The body, shared with the caller's `Bytes`.
    pub body: Bytes,
}

impl Frame {
    /// A frame with an empty body.
    pub const fn control(header: Header) -> Self {
        Frame {
            header,
            body: Bytes::new(),
        }
    }

    /// Encodes the frame. Fails, without encoding anything, on a frame the
    /// decoder would refuse: oversized, or a body on a bodiless command.
    pub fn encode(
        &self,
        integrity: &Integrity,
        max_message_size: u32,
    ) -> Result<EncodedFrame, EncodeError> {
        Ok(EncodedFrame {
            header: self
                .header
                .encode(&self.body, integrity, max_message_size)?,
            body: self.body.clone(),
        })
    }
}

impl EncodedFrame {
    /// Total size on the wire.
    pub fn len(&self) -> usize {
        HEADER_SIZE + self.body.len()
    }

    /// Never true: a frame has at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The two slices to write, in order (for `write_vectored`).
    pub fn slices(&self) -> [&[u8]; 2] {
        [&self.header, &self.body]
    }

    /// Appends the frame's bytes to `out` (for tests and simple transports).
    pub fn write_to(&self, out: &mut alloc::vec::Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.body);
    }
}
