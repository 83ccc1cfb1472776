//! The incremental frame decoder.
//!
//! The decoder owns its accumulator, so the bytes of a half-received frame
//! live here and not in some future's stack frame: dropping a read future
//! (the losing arm of a `select!`) loses nothing, and any chunking of the
//! same byte stream yields the same frames (hazard 1).

use super::error::DecodeError;
use super::frame::Frame;
use super::header::{Header, Parsed};
use super::integrity::Integrity;
use super::layout::HEADER_SIZE;
use bytes::{Buf, Bytes, BytesMut};

/// Turns a byte stream into validated frames.
///
/// Memory is bounded: the accumulator holds at most what the caller fed
/// beyond the frames it has taken, and a body buffer is reserved only after
/// the header verified and its size passed `HEADER_SIZE <= size <=
/// max_message_size` (hazard 3). After any error the decoder is failed for
/// good: every later call returns the same error and input is discarded,
/// because the frame boundary is lost and the connection must close.
///
/// ```
/// use bus_proto::wire::{FrameDecoder, Frame, Header, Integrity, Kind};
/// use bytes::Bytes;
///
/// let frame = Frame {
///     header: Header::new(7, Kind::Message { operation: 1 }),
///     body: Bytes::from_static(b"hello"),
/// };
/// let mut wire = Vec::new();
/// frame.encode(&Integrity::Checksum, 1 << 20)?.write_to(&mut wire);
///
/// let mut decoder = FrameDecoder::new(Integrity::Checksum, 1 << 20);
/// for byte in &wire {
///     decoder.feed(core::slice::from_ref(byte)); // any chunking works
/// }
/// assert_eq!(decoder.next_frame()?, Some(frame));
/// assert_eq!(decoder.next_frame()?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    pending: Option<(Header, Parsed)>,
    failed: Option<DecodeError>,
    integrity: Integrity,
    max_message_size: u32,
}

impl FrameDecoder {
    /// A decoder for frames of at most `max_message_size` bytes (header included).
    pub fn new(integrity: Integrity, max_message_size: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            pending: None,
            failed: None,
            integrity,
            max_message_size,
        }
    }

    /// Appends received bytes. Ignored once the decoder has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The accumulator, for transports that read straight into it. Only
    /// append to it; bytes already there belong to frames in progress.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The sticky error, if the decoder has failed.
    pub fn error(&self) -> Option<&DecodeError> {
        self.failed.as_ref()
    }

    /// Changes the integrity mode for the frames that follow (e.g. switching to
    /// authenticated frames after a handshake). Takes effect at the next
    /// header not yet verified.
    pub fn set_integrity(&mut self, integrity: Integrity) {
        self.integrity = integrity;
    }

    /// The largest frame accepted, header included.
    pub fn max_message_size(&self) -> u32 {
        self.max_message_size
    }

    /// Changes the size limit for frames whose header is not yet verified
    /// (e.g. header-only frames during a handshake, the full limit after).
    pub fn set_max_message_size(&mut self, max_message_size: u32) {
        self.max_message_size = max_message_size;
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed,
    /// or the (sticky) error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.step() {
            Ok(frame) => Ok(frame),
            Err(err) => {
                self.buf = BytesMut::new();
                self.pending = None;
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Frame>, DecodeError> {
        let (header, parsed) = match self.pending.take() {
            Some(pending) => pending,
            None => {
                let Some(head) = self.buf.first_chunk::<HEADER_SIZE>() else {
                    return Ok(None);
                };
                Header::parse(head, &self.integrity, self.max_message_size)?
            }
        };
        let size = parsed.size as usize;
        if self.buf.len() < size {
            // Bounded: `size` passed the limit check in `parse`.
            self.buf.reserve(size - self.buf.len());
            self.pending = Some((header, parsed));
            return Ok(None);
        }
        // Advancing past the header, then splitting the body off, takes one
        // reference on the shared buffer instead of two.
        self.buf.advance(HEADER_SIZE);
        let body = if size == HEADER_SIZE {
            Bytes::new()
        } else {
            self.buf.split_to(size - HEADER_SIZE).freeze()
        };
        let computed = self.integrity.body_sum(&body);
        let expected = parsed.body_sum;
        if !self.integrity.matches(expected, computed) {
            return Err(match self.integrity {
                Integrity::Checksum => DecodeError::BodyChecksum {
                    received: expected,
                    computed,
                    size: body.len(),
                },
                Integrity::Authenticated(_) => DecodeError::BodyTag { size: body.len() },
            });
        }
        Ok(Some(Frame { header, body }))
    }
}
