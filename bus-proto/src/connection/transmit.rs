//! Batched output: the bytes of up to `max_batch` frames, ready for one
//! vectored write.

use crate::wire::layout::HEADER_SIZE;
use crate::wire::{Header, Integrity};
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

/// A batch encoded but for its checksums or tags: [`Unsealed::seal`]
/// computes them, so that a caller holding the connection behind a lock
/// does the hashing (most of a frame's cost) after releasing it.
///
/// ```
/// use bus_proto::connection::Connection;
/// # fn write(_: &[bytes::Bytes]) {}
/// # fn demo(connection: &mut Connection, now: bus_proto::time::Instant) {
/// // Under the lock:
/// let batch = connection.poll_unsealed(now);
/// // Without it:
/// if let Some(batch) = batch {
///     write(batch.seal().segments());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Unsealed {
    batch: TransmitBuilder,
    integrity: Integrity,
}

impl Unsealed {
    /// Frames in this batch.
    pub fn frames(&self) -> usize {
        self.batch.frames
    }

    /// Total bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.batch.len
    }

    /// Computes every frame's checksums or tags: the batch to write.
    pub fn seal(self) -> Transmit {
        let (frames, len) = (self.batch.frames, self.batch.len);
        let mut segments = Vec::new();
        self.seal_into(&mut segments);
        Transmit {
            segments,
            frames,
            len,
        }
    }

    /// [`Unsealed::seal`], appending the batch's segments to `segments`.
    /// Returns the index of the last segment cut from the batch buffer:
    /// once it is written and the others dropped, it holds that buffer
    /// alone, to be reused ([`BatchBuffers::reuse`]).
    pub(crate) fn seal_into(self, segments: &mut Vec<Bytes>) -> Option<usize> {
        let Unsealed {
            batch:
                TransmitBuilder {
                    mut buf,
                    large,
                    sealed,
                    ..
                },
            integrity,
        } = self;
        let mut at = sealed;
        let mut bodies = large.iter().flatten().map(|(_, body)| body);
        // Our own headers, so their sizes are as `push_unsealed` wrote.
        while let Some(header) = buf.get(at..).and_then(|b| b.first_chunk::<HEADER_SIZE>()) {
            let body_len = (Header::declared(header).size as usize).saturating_sub(HEADER_SIZE);
            let start = at + HEADER_SIZE;
            let (body, next) = match body_len <= COPY_BODY_MAX {
                true => (buf.get(start..start + body_len), start + body_len),
                false => (bodies.next().map(|b| &b[..]), start),
            };
            let body = body.unwrap_or_default();
            let body_sum = integrity.body_sum(body);
            if let Some(header) = buf[at..].first_chunk_mut::<HEADER_SIZE>() {
                Header::seal_with(header, body_sum, &integrity);
            }
            at = next;
        }
        // Exactly: a socket keeps this list while idle.
        segments.reserve_exact(2 * large.as_ref().map_or(0, Vec::len) + 1);
        let mut head = None;
        if let Some(large) = large {
            let mut split = 0;
            for (end, body) in large {
                head = Some(segments.len());
                segments.push(buf.split_to(end - split).freeze());
                segments.push(body);
                split = end;
            }
        }
        if !buf.is_empty() {
            head = Some(segments.len());
            segments.push(buf.freeze());
        }
        head
    }
}

/// Batch buffers kept for reuse once their bytes are written, so that a
/// steady stream of batches allocates none.
///
/// Bounded: at most [`BatchBuffers::KEPT`] buffers, each of at most
/// [`BatchBuffers::KEEP_MAX`] bytes. A buffer offered to a full pool, or a
/// larger one, is freed.
///
/// ```
/// use bus_proto::connection::BatchBuffers;
/// let mut buffers = BatchBuffers::default();
/// buffers.reuse(bytes::BytesMut::with_capacity(4096));
/// assert_eq!(buffers.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct BatchBuffers {
    free: Vec<BytesMut>,
}

impl BatchBuffers {
    /// Buffers kept at most.
    pub const KEPT: usize = 16;
    /// The largest buffer kept, in bytes: a batch of 64 small frames
    /// (about 20 KiB) fits; a rare larger one is not worth holding.
    pub const KEEP_MAX: usize = 64 << 10;

    /// Keeps `buffer` (emptied) for a later batch, unless the pool is full
    /// or the buffer is larger than [`BatchBuffers::KEEP_MAX`].
    pub fn reuse(&mut self, mut buffer: BytesMut) {
        if self.free.len() >= Self::KEPT {
            return;
        }
        buffer.clear();
        // A buffer shared once stays shared: freezing it and taking it back
        // ([`bytes::Bytes::try_into_mut`]) then allocates nothing.
        drop(buffer.split_to(0));
        // Only a buffer nothing else holds: another handle could otherwise
        // pin an allocation of any size here.
        let Ok(mut buffer) = buffer.freeze().try_into_mut() else {
            return;
        };
        // Its whole allocation counts: a buffer taken back from written
        // `Bytes` has it behind its start, not in `capacity()`.
        if buffer.try_reclaim(Self::KEEP_MAX + 1) {
            return;
        }
        self.free.push(buffer);
    }

    /// Buffers kept.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// True if no buffer is kept.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// An empty buffer with room for `need` bytes: the last one kept, or a
    /// new one.
    fn take(&mut self, need: usize) -> BytesMut {
        if need == 0 {
            return BytesMut::new();
        }
        match self.free.pop() {
            Some(mut buffer) => {
                buffer.reserve(need);
                buffer
            }
            None => BytesMut::with_capacity(need),
        }
    }
}

/// Accumulates frames: headers and small bodies into one buffer, large
/// bodies to become their own zero-copy segments once sealed.
#[derive(Debug, Default)]
pub(crate) struct TransmitBuilder {
    /// Headers and the bodies copied next to them.
    buf: BytesMut,
    /// Bodies too large to copy, each after the header that ends at this
    /// offset of `buf` (`None` rather than empty: cheaper to drop).
    large: Option<Vec<(usize, Bytes)>>,
    /// `buf` holds frames encoded whole (a handshake frame) up to here.
    sealed: usize,
    frames: usize,
    len: usize,
}

impl TransmitBuilder {
    /// A builder whose buffer, from `buffers`, holds `frames` headers and
    /// `small_bodies` bytes of copied bodies without growing.
    pub(crate) fn in_buffer(
        buffers: &mut BatchBuffers,
        frames: usize,
        small_bodies: usize,
    ) -> Self {
        TransmitBuilder {
            buf: buffers.take(frames * HEADER_SIZE + small_bodies),
            ..TransmitBuilder::default()
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
        self.frames
    }

    /// Pushes a header-only frame encoded whole (a handshake frame, sealed
    /// under the keys in force before the handshake's end). Only first.
    pub(crate) fn push_sealed(&mut self, header: &[u8; HEADER_SIZE]) {
        debug_assert!(self.buf.len() == self.sealed, "sealed frames come first");
        self.buf.extend_from_slice(header);
        self.sealed = self.buf.len();
        self.frames += 1;
        self.len += HEADER_SIZE;
    }

    /// Pushes a frame whose header `encode` writes in place, into zeroed
    /// bytes at the end of the buffer, but for its integrity fields:
    /// [`Unsealed::seal`] fills those in. On error nothing is pushed.
    pub(crate) fn push_unsealed<E>(
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
        if body.len() <= COPY_BODY_MAX {
            self.buf.extend_from_slice(body);
        } else {
            let at = self.buf.len();
            self.large.get_or_insert_default().push((at, body.clone()));
        }
        self.frames += 1;
        self.len += HEADER_SIZE + body.len();
        Ok(())
    }

    /// The batch, to be sealed under `integrity`; `None` if it is empty,
    /// its buffer then back in `buffers`.
    #[inline]
    pub(crate) fn finish(
        self,
        integrity: &Integrity,
        buffers: &mut BatchBuffers,
    ) -> Option<Unsealed> {
        if self.frames == 0 {
            // One that never allocated is not worth keeping.
            if self.buf.capacity() > 0 {
                buffers.reuse(self.buf);
            }
            return None;
        }
        Some(Unsealed {
            batch: self,
            integrity: integrity.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EncodeError, Frame, FrameDecoder, FrameKeys, Header, Integrity, Kind};
    use proptest::prelude::*;

    fn message(i: usize, len: usize) -> Frame {
        Frame {
            header: Header::new(
                9,
                Kind::Message {
                    operation: u32::try_from(i).unwrap_or(0),
                },
            ),
            body: Bytes::from(alloc::vec![u8::try_from(i).unwrap_or(0); len]),
        }
    }

    proptest! {
        /// A batch sealed after it was built decodes as the frames pushed:
        /// a handshake frame encoded whole under the old integrity first,
        /// then small bodies copied next to their headers and large ones
        /// as their own segments, all sealed under the new integrity; a
        /// header that fails to encode leaves the batch as it was.
        #[test]
        fn a_batch_sealed_later_decodes_as_the_frames_pushed(
            lens in prop::collection::vec(
                prop_oneof![0usize..=COPY_BODY_MAX, COPY_BODY_MAX + 1..2000],
                0..8,
            ),
            handshake in any::<bool>(),
            refuse_at in any::<prop::sample::Index>(),
            stale in any::<bool>(),
        ) {
            let integrity = Integrity::Authenticated(FrameKeys::derive(&[7; 32]));
            let first = Frame::control(Header::new(9, Kind::Ping { token: 5 }));
            let first_wire = first.encode(&Integrity::Checksum, 1 << 20).unwrap();
            let frames: Vec<Frame> = lens.iter().enumerate().map(|(i, &len)| message(i, len)).collect();
            // A kept buffer holding stale bytes must not show through.
            let mut buffers = BatchBuffers::default();
            if stale {
                buffers.reuse(BytesMut::from(&[0xa5; 3000][..]));
            }
            let mut batch = TransmitBuilder::in_buffer(&mut buffers, frames.len() + 1, 64);
            if handshake {
                batch.push_sealed(&first_wire.header);
            }
            let refuse_at = refuse_at.index(frames.len() + 1);
            for (i, frame) in frames.iter().enumerate() {
                if i == refuse_at {
                    let too_large = Bytes::from_static(&[1; 100]);
                    let refused = batch.push_unsealed(&too_large, |h| {
                        frame.header.encode_unsealed(h, too_large.len(), 300)
                    });
                    let too_large = matches!(refused, Err(EncodeError::TooLarge { .. }));
                    prop_assert!(too_large, "{:?}", refused);
                }
                let pushed = batch.push_unsealed(&frame.body, |h| {
                    frame.header.encode_unsealed(h, frame.body.len(), 1 << 20)
                });
                prop_assert_eq!(pushed, Ok(()));
            }
            let Some(unsealed) = batch.finish(&integrity, &mut buffers) else {
                prop_assert!(frames.is_empty() && !handshake);
                // The unused buffer is kept.
                prop_assert_eq!(buffers.len(), 1);
                return Ok(());
            };
            let transmit = unsealed.seal();
            prop_assert_eq!(transmit.frames(), frames.len() + usize::from(handshake));
            let mut wire = Vec::new();
            transmit.write_to(&mut wire);
            prop_assert_eq!(wire.len(), transmit.len());
            let mut decoder = FrameDecoder::new(Integrity::Checksum, 1 << 20);
            decoder.feed(&wire);
            if handshake {
                prop_assert_eq!(decoder.next_frame(), Ok(Some(first)));
            }
            decoder.set_integrity(integrity);
            for frame in frames {
                prop_assert_eq!(decoder.next_frame(), Ok(Some(frame)));
            }
            prop_assert_eq!(decoder.next_frame(), Ok(None));
        }
    }
}
