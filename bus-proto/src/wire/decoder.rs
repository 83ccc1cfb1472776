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
    /// Bytes at the front of `buf`, whole frames, whose checksums or tags
    /// [`FrameDecoder::verify_ahead`] checked: [`FrameDecoder::next_frame`]
    /// parses them without hashing again. Zeroed by anything that may
    /// change the buffer or how it is verified.
    verified: usize,
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
            verified: 0,
            pending: None,
            failed: None,
            integrity,
            max_message_size,
        }
    }

    /// Appends received bytes. Ignored once the decoder has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.verified = 0;
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The accumulator, for transports that read straight into it. Only
    /// append to it; bytes already there belong to frames in progress.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        self.verified = 0;
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
        self.verified = 0;
        self.integrity = integrity;
    }

    /// The largest frame accepted, header included.
    pub fn max_message_size(&self) -> u32 {
        self.max_message_size
    }

    /// Changes the size limit for frames whose header is not yet verified
    /// (e.g. header-only frames during a handshake, the full limit after).
    pub fn set_max_message_size(&mut self, max_message_size: u32) {
        self.verified = 0;
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
                self.verified = 0;
                self.pending = None;
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Checks the checksums or tags of the complete frames buffered, so
    /// that [`FrameDecoder::next_frame`] then only parses them: a caller
    /// that keeps the decoder behind a lock verifies without holding it
    /// (the hashing is most of a frame's cost), including the body of a
    /// frame whose header came in an earlier read. Stops at the first frame
    /// that does not verify, or is incomplete, or declares a size out of
    /// bounds: `next_frame` checks that one as ever and returns its
    /// error. Anything that may change the buffer ([`FrameDecoder::feed`],
    /// [`FrameDecoder::buffer_mut`]) or how frames verify forgets what was
    /// checked, so only bytes that verified are ever trusted.
    ///
    /// ```
    /// use bus_proto::wire::{FrameDecoder, Frame, Header, Integrity, Kind};
    /// use bytes::Bytes;
    ///
    /// let frame = Frame {
    ///     header: Header::new(7, Kind::Message { operation: 1 }),
    ///     body: Bytes::from_static(b"hello"),
    /// };
    /// let mut decoder = FrameDecoder::new(Integrity::Checksum, 1 << 20);
    /// let mut wire = Vec::new();
    /// frame.encode(&Integrity::Checksum, 1 << 20)?.write_to(&mut wire);
    /// decoder.feed(&wire);
    /// decoder.verify_ahead(); // without the lock
    /// assert_eq!(decoder.next_frame()?, Some(frame)); // under it
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify_ahead(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let mut at = self.verified;
        if at == 0
            && let Some((_, parsed)) = &self.pending
        {
            // A frame whose header verified when it was parsed, in an
            // earlier read: its body may be complete now.
            let size = parsed.size as usize;
            let Some(body) = self.buf.get(HEADER_SIZE..size) else {
                return;
            };
            if !self
                .integrity
                .matches(parsed.body_sum, self.integrity.body_sum(body))
            {
                return;
            }
            at = size;
        }
        while let Some(head) = self
            .buf
            .get(at..)
            .and_then(|b| b.first_chunk::<HEADER_SIZE>())
        {
            if Header::verify(head, &self.integrity).is_err() {
                break;
            }
            let declared = Header::declared(head);
            let size = declared.size as usize;
            if !(HEADER_SIZE..=self.max_message_size as usize).contains(&size) {
                break;
            }
            let Some(body) = self.buf.get(at + HEADER_SIZE..at + size) else {
                break;
            };
            let computed = self.integrity.body_sum(body);
            if !self.integrity.matches(declared.body_sum, computed) {
                break;
            }
            at += size;
        }
        self.verified = at;
    }

    fn step(&mut self) -> Result<Option<Frame>, DecodeError> {
        // The front frame's checksums were checked by `verify_ahead`.
        let verified = self.verified > 0;
        let (header, parsed) = match self.pending.take() {
            Some(pending) => pending,
            None => {
                let Some(head) = self.buf.first_chunk::<HEADER_SIZE>() else {
                    return Ok(None);
                };
                match verified {
                    true => Header::parse_verified(head, self.max_message_size)?,
                    false => Header::parse(head, &self.integrity, self.max_message_size)?,
                }
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
        if verified {
            // Whole frames only, each of the size its verified header
            // declares: this one fits.
            self.verified = self.verified.saturating_sub(size);
            return Ok(Some(Frame { header, body }));
        }
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
