//! One batch being written, resumable after a partial write.

use crate::connection::{Transmit, Unsealed};
use bytes::{Buf, Bytes, BytesMut};
use std::io::IoSlice;
use std::vec::Vec;

/// Most segments passed to one vectored write (Linux's `IOV_MAX` is 1024).
pub const MAX_IOVECS: usize = 1024;

/// Segments [`Slices`] holds without allocating.
const INLINE_SLICES: usize = 4;

/// The unwritten segments of a batch as `IoSlice`s, for one vectored
/// write: dereferences to `[IoSlice]`.
#[derive(Debug)]
pub struct Slices<'a> {
    inline: [IoSlice<'a>; INLINE_SLICES],
    len: usize,
    /// Used instead of `inline` when there are more segments.
    spilled: Vec<IoSlice<'a>>,
}

impl<'a> core::ops::Deref for Slices<'a> {
    type Target = [IoSlice<'a>];

    fn deref(&self) -> &Self::Target {
        match self.inline.get(..self.len) {
            Some(inline) => inline,
            None => &self.spilled,
        }
    }
}

/// The segments of one [`Transmit`] and how far they have been written. A
/// readiness-based adapter writes [`Outgoing::slices`] and reports
/// [`Outgoing::advance`]; a completion-based one takes the segments whole
/// with [`Outgoing::take`].
#[derive(Debug, Default)]
pub struct Outgoing {
    /// Kept between batches, so loading one allocates nothing: as long as
    /// the largest batch's (at most `2 * max_batch + 1` segments, 4 KiB at
    /// the default).
    segments: Vec<Bytes>,
    /// First segment not fully written.
    next: usize,
    /// The segment cut last from the batch's own buffer, which holds that
    /// buffer alone once the others are dropped. Once the batch is written
    /// it is the only segment left, kept for [`Outgoing::take_spare`]
    /// (in place: an idle socket holds no extra field for it).
    head: Option<u32>,
}

impl Outgoing {
    /// Loads the next batch; the previous one must be done.
    pub fn load(&mut self, transmit: Transmit) {
        debug_assert!(self.is_done(), "a batch was dropped half written");
        self.segments = transmit.into_segments();
        self.next = 0;
        self.head = None;
    }

    /// Seals `batch` into its segments and loads it; the previous batch
    /// must be done. Its buffer comes back, once written, as
    /// [`Outgoing::take_spare`].
    pub fn load_unsealed(&mut self, batch: Unsealed) {
        debug_assert!(self.is_done(), "a batch was dropped half written");
        self.segments.clear();
        self.next = 0;
        let head = batch.seal_into(&mut self.segments);
        self.head = head.and_then(|i| u32::try_from(i).ok());
    }

    /// The buffer of the last batch written, if it came back whole: give
    /// it to the core (`reuse_batch_buffer`) for the next one.
    #[inline]
    pub fn take_spare(&mut self) -> Option<BytesMut> {
        // Asked at every step; only a written batch has one.
        if self.head.is_none() || !self.is_done() {
            return None;
        }
        self.take_written()
    }

    fn take_written(&mut self) -> Option<BytesMut> {
        self.take_head()?.try_into_mut().ok()
    }

    /// Empties the list but for the batch buffer's last segment, returned.
    fn take_head(&mut self) -> Option<Bytes> {
        let head = self.head.take();
        let head = head.and_then(|i| self.segments.get_mut(i as usize));
        let head = head.map(core::mem::take);
        self.segments.clear();
        self.next = 0;
        head
    }

    /// Loads what `fill` appends (a layer's wire bytes); the previous
    /// batch must be done.
    pub(super) fn load_with(&mut self, fill: impl FnOnce(&mut Vec<Bytes>)) {
        debug_assert!(self.is_done(), "a batch was dropped half written");
        self.segments.clear();
        self.next = 0;
        self.head = None;
        fill(&mut self.segments);
        self.segments.retain(|s| !s.is_empty());
    }

    /// True when nothing is left to write.
    pub fn is_done(&self) -> bool {
        self.next >= self.segments.len()
    }

    /// Up to [`MAX_IOVECS`] unwritten segments, for one vectored write.
    /// A few segments (the usual batch of small frames is one) take no
    /// allocation.
    pub fn slices(&self) -> Slices<'_> {
        let end = self.segments.len().min(self.next + MAX_IOVECS);
        let unwritten = &self.segments[self.next..end];
        let mut slices = Slices {
            inline: [IoSlice::new(&[]); INLINE_SLICES],
            len: unwritten.len(),
            spilled: Vec::new(),
        };
        match slices.inline.get_mut(..unwritten.len()) {
            Some(inline) => {
                for (slice, segment) in inline.iter_mut().zip(unwritten) {
                    *slice = IoSlice::new(segment);
                }
            }
            None => slices.spilled = unwritten.iter().map(|s| IoSlice::new(s)).collect(),
        }
        slices
    }

    /// Marks `written` bytes as written. Bytes beyond what is loaded are
    /// ignored (a writer never reports more than it was given).
    pub fn advance(&mut self, mut written: usize) {
        while written > 0 && !self.is_done() {
            let segment = &mut self.segments[self.next];
            let step = written.min(segment.len());
            segment.advance(step);
            written -= step;
            if segment.is_empty() {
                self.next += 1;
            }
        }
        if self.is_done() {
            self.finished();
        }
    }

    /// Drops the written segments but the batch buffer's last one, kept
    /// for [`Outgoing::take_spare`]: the others may share the buffer, so
    /// they go first.
    fn finished(&mut self) {
        if let Some(head) = self.take_head() {
            self.segments.push(head);
            self.next = 1;
            self.head = Some(0);
        }
    }

    /// Takes every unwritten segment, for an adapter that writes the whole
    /// batch in one owned-buffer operation; the batch is then done.
    pub fn take(&mut self) -> Vec<Bytes> {
        let mut segments = core::mem::take(&mut self.segments);
        segments.drain(..self.next.min(segments.len()));
        self.next = 0;
        self.head = None;
        segments
    }
}

#[cfg(test)]
mod tests {
    use super::Outgoing;
    use bytes::Bytes;
    use std::vec;
    use std::vec::Vec;

    fn loaded(parts: &[&'static [u8]]) -> Outgoing {
        Outgoing {
            segments: parts.iter().map(|p| Bytes::from_static(p)).collect(),
            ..Outgoing::default()
        }
    }

    /// A dialling connection's first batch (its hello), not yet sealed.
    fn hello() -> crate::connection::Unsealed {
        use crate::config::Config;
        use crate::connection::{Connection, DialParams};
        use crate::crypto::{Key, KeyRing, PeerId};
        use crate::entropy::SeededEntropy;
        use crate::handshake::Binding;
        use crate::time::{Instant, UnixNanos};
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        let params = DialParams {
            cluster: 1,
            local: PeerId::Replica(0),
            acceptor: 1,
            keys: &keys,
            binding: Binding::NONE,
        };
        let config = Config::default().validate().expect("valid");
        let wall = UnixNanos::from_nanos(1_700_000_000_000_000_000);
        let mut entropy = SeededEntropy::new(1);
        let mut conn =
            Connection::dial(Instant::ZERO, wall, &config, params, &mut entropy).expect("dial");
        conn.poll_unsealed(Instant::ZERO).expect("a hello")
    }

    #[test]
    fn a_written_batch_gives_its_buffer_back_once_nothing_else_holds_it() {
        let mut out = Outgoing::default();
        out.load_unsealed(hello());
        let len: usize = out.slices().iter().map(|s| s.len()).sum();
        out.advance(len - 1);
        assert!(
            out.take_spare().is_none(),
            "not before the batch is written"
        );
        out.advance(1);
        out.advance(0);
        assert!(out.is_done() && out.slices().is_empty());
        let mut spare = out.take_spare().expect("the buffer, written");
        assert!(spare.is_empty());
        assert!(spare.try_reclaim(len), "the batch's whole allocation");
        assert!(out.take_spare().is_none(), "given once");

        // A copy of the batch held elsewhere keeps the buffer from reuse.
        out.load_unsealed(hello());
        let held = out.slices().first().map(|s| Bytes::copy_from_slice(s));
        let kept = out.segments.first().cloned();
        out.advance(len);
        assert!(out.take_spare().is_none());
        assert_eq!(kept.map(|k| k.to_vec()), held.map(|h| h.to_vec()));
    }

    #[test]
    fn partial_writes_resume_mid_segment() {
        let mut out = loaded(&[b"abc", b"de", b"f"]);
        out.advance(4);
        let rest: Vec<u8> = out.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(rest, b"ef");
        out.advance(2);
        assert!(out.is_done());
        assert!(out.slices().is_empty());
    }

    #[test]
    fn take_returns_only_unwritten_segments() {
        let mut out = loaded(&[b"abc", b"de", b"f"]);
        out.advance(3);
        assert_eq!(
            out.take(),
            vec![Bytes::from_static(b"de"), Bytes::from_static(b"f")]
        );
        assert!(out.is_done());
    }

    #[test]
    fn few_and_many_segments_give_the_same_slices() {
        for n in [0, 1, super::INLINE_SLICES, super::INLINE_SLICES + 1, 40] {
            let parts: Vec<&'static [u8]> = (0..n).map(|i| &b"abcdefghij"[..=i % 10]).collect();
            let out = loaded(&parts);
            let slices = out.slices();
            assert_eq!(slices.len(), n);
            for (slice, part) in slices.iter().zip(&parts) {
                assert_eq!(&slice[..], *part);
            }
        }
    }

    #[test]
    fn slices_stop_at_the_iovec_limit() {
        let parts: Vec<&'static [u8]> = vec![b"x"; super::MAX_IOVECS + 5];
        let mut out = loaded(&parts);
        assert_eq!(out.slices().len(), super::MAX_IOVECS);
        out.advance(super::MAX_IOVECS);
        assert_eq!(out.slices().len(), 5);
        out.advance(usize::MAX);
        assert!(out.is_done());
    }
}
