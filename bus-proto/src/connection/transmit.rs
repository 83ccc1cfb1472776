//! Batched output: the bytes of up to `max_batch` frames, ready for one
//! vectored write.

use crate::wire::layout::HEADER_SIZE;
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

/// Bodies up to this size are copied next to their header: one contiguous
/// segment costs less than an extra iovec for small frames.
const COPY_BODY_MAX: usize = 512;

/// Frames to write, as segments in order.
///
/// Write every segment, in order, with as many vectored writes as it takes.
/// A short or failed write must tear the connection down: the batch is not
/// atomic, and resuming after a lost segment would desynchronise frame
/// boundaries (hazard 23). Segments are `Bytes`, so readiness runtimes can
/// borrow them as `IoSlice`s and completion runtimes can take ownership
/// ([`Transmit::into_segments`]) without copying.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transmit {
    segments: Vec<Bytes>,
    frames: usize,
    len: usize,
}

impl Transmit {
    /// The segments, in write order. At most `2 * max_batch` of them, within
    /// the OS iovec limit for `max_batch <= 512`.
    pub fn segments(&self) -> &[Bytes] {
        &self.segments
    }

    /// The segments, owned (for completion-based runtimes).
    pub fn into_segments(self) -> Vec<Bytes> {
        self.segments
    }

    /// Frames in this batch.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true for a transmit returned by a connection.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends all bytes to `out` (tests, simple transports).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for segment in &self.segments {
            out.extend_from_slice(segment);
        }
    }
}

/// Accumulates frames: headers and small bodies into one buffer, large
/// bodies as their own zero-copy segments.
#[derive(Default)]
pub(crate) struct TransmitBuilder {
    buf: BytesMut,
    out: Transmit,
}

impl TransmitBuilder {
    /// A builder whose buffer holds `frames` headers and `small_bodies`
    /// bytes of copied bodies without growing.
    pub(crate) fn with_capacity(frames: usize, small_bodies: usize) -> Self {
        TransmitBuilder {
            buf: BytesMut::with_capacity(frames * HEADER_SIZE + small_bodies),
            out: Transmit::default(),
        }
    }

    /// The bytes of `body` this builder copies into its buffer.
    pub(crate) fn copied(body: &Bytes) -> usize {
        if body.len() <= COPY_BODY_MAX {
            body.len()
        } else {
            0
        }
    }

    pub(crate) fn frames(&self) -> usize {
        self.out.frames
    }

    pub(crate) fn push(&mut self, header: &[u8; HEADER_SIZE], body: &Bytes) {
        self.buf.extend_from_slice(header);
        self.push_body(body);
    }

    /// Pushes a frame whose header `encode` writes in place, into zeroed
    /// bytes at the end of the buffer. On error nothing is pushed.
    pub(crate) fn push_encoded<E>(
        &mut self,
        body: &Bytes,
        encode: impl FnOnce(&mut [u8; HEADER_SIZE]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.buf.len();
        // Copied from zeros: cheaper than `resize` and its fill.
        self.buf.extend_from_slice(&[0; HEADER_SIZE]);
        let header = self.buf[start..].first_chunk_mut::<HEADER_SIZE>();
        if let Some(header) = header
            && let Err(e) = encode(header)
        {
            self.buf.truncate(start);
            return Err(e);
        }
        self.push_body(body);
        Ok(())
    }

    fn push_body(&mut self, body: &Bytes) {
        if body.len() <= COPY_BODY_MAX {
            self.buf.extend_from_slice(body);
        } else {
            self.out.segments.push(self.buf.split().freeze());
            self.out.segments.push(body.clone());
        }
        self.out.frames += 1;
        self.out.len += HEADER_SIZE + body.len();
    }

    pub(crate) fn finish(mut self) -> Option<Transmit> {
        if !self.buf.is_empty() {
            self.out.segments.push(self.buf.freeze());
        }
        (self.out.frames > 0).then_some(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EncodeError, Frame, FrameDecoder, Header, Integrity, Kind};

    /// Headers encoded in place decode as the frames they describe; a
    /// header that fails to encode leaves the batch as it was.
    #[test]
    fn headers_encoded_in_place_decode_and_failures_push_nothing() {
        let integrity = Integrity::Checksum;
        let mut batch = TransmitBuilder::with_capacity(3, 64);
        let frames: Vec<Frame> = (0..2u8)
            .map(|i| Frame {
                header: Header::new(
                    9,
                    Kind::Message {
                        operation: u32::from(i),
                    },
                ),
                body: Bytes::from(alloc::vec![i; 10 + usize::from(i)]),
            })
            .collect();
        for frame in &frames {
            let encoded = batch.push_encoded(&frame.body, |h| {
                frame
                    .header
                    .encode_into(h, &frame.body, &integrity, 1 << 20)
            });
            assert_eq!(encoded, Ok(()));
        }
        let too_large = Bytes::from_static(&[1; 100]);
        let refused = batch.push_encoded(&too_large, |h| {
            frames[0].header.encode_into(h, &too_large, &integrity, 300)
        });
        assert!(matches!(refused, Err(EncodeError::TooLarge { .. })));
        let transmit = batch.finish().expect("two frames");
        assert_eq!(transmit.frames(), 2);
        let mut wire = Vec::new();
        transmit.write_to(&mut wire);
        assert_eq!(wire.len(), transmit.len());
        let mut decoder = FrameDecoder::new(integrity, 1 << 20);
        decoder.feed(&wire);
        for frame in frames {
            assert_eq!(decoder.next_frame(), Ok(Some(frame)));
        }
        assert_eq!(decoder.next_frame(), Ok(None));
    }
}
