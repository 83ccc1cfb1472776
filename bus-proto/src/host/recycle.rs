//! Receive buffers recycled once the application lets go of them.
//!
//! Delivered bodies are slices of the buffer they were read into, so a
//! buffer whose bodies the application still holds cannot take the next
//! read in place. Allocating a fresh large buffer each time costs page
//! faults: the allocator (glibc's, for one) hands large freed blocks back
//! to the kernel and maps them again. A socket instead keeps the handles of its last few pinned
//! buffers and reads into the first one whose bodies have all been
//! dropped.
//!
//! Bounded: at most [`SPARES`] buffers per socket, each the read chunk
//! plus at most one partial frame. When the pool is full the oldest handle is dropped, and its
//! memory goes back to the allocator once the application drops its last
//! body from it. So recycling holds at most `SPARES` such buffers per
//! connection beyond what the application itself holds, and only on
//! connections busy enough to read large chunks.

use bytes::BytesMut;
use std::collections::VecDeque;

/// Buffers kept per socket.
pub(super) const SPARES: usize = 8;

/// Buffers made for reads smaller than this are not kept: the allocator
/// serves them from its free lists without faulting in pages.
pub(super) const KEEP_MIN: usize = 16 << 10;

/// A socket's pinned receive buffers, oldest first. See the
/// [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Spares {
    buffers: VecDeque<BytesMut>,
}

impl Spares {
    /// A buffer with room for `capacity` bytes whose earlier contents are
    /// no longer referenced, if one is free.
    pub(super) fn take_free(&mut self, capacity: usize) -> Option<BytesMut> {
        if self.buffers.is_empty() {
            return None;
        }
        let at = self
            .buffers
            .iter_mut()
            .position(|buffer| buffer.try_reclaim(capacity))?;
        self.buffers.remove(at)
    }

    /// Keeps `buffer`, allocated for reads of `room` bytes (its bytes
    /// already copied elsewhere), until the application drops what it
    /// holds of it. Small buffers are dropped; with the pool full, the
    /// oldest is.
    pub(super) fn keep(&mut self, mut buffer: BytesMut, room: usize) {
        if room < KEEP_MIN {
            return;
        }
        buffer.clear();
        if self.buffers.len() == SPARES {
            self.buffers.pop_front();
        }
        self.buffers.push_back(buffer);
    }

    /// Buffers kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buffers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A buffer of `capacity` with a body split off and still held. Taking
    /// `KEEP_MIN - 10` from it needs its whole allocation, not just its tail.
    fn pinned(capacity: usize) -> (BytesMut, bytes::Bytes) {
        let mut buffer = BytesMut::with_capacity(capacity);
        buffer.extend_from_slice(&[7; 100]);
        let body = buffer.split_to(60).freeze();
        (buffer, body)
    }

    #[test]
    fn a_buffer_is_reused_once_its_bodies_are_dropped() {
        let mut spares = Spares::default();
        let (buffer, body) = pinned(KEEP_MIN);
        let address = buffer.as_ptr() as usize - 60;
        spares.keep(buffer, KEEP_MIN);
        assert!(spares.take_free(KEEP_MIN - 10).is_none(), "still pinned");
        assert_eq!(spares.len(), 1);
        drop(body);
        let reused = spares.take_free(KEEP_MIN - 10).expect("released");
        assert!(reused.is_empty());
        assert!(reused.capacity() >= KEEP_MIN - 10);
        assert_eq!(reused.as_ptr() as usize, address, "the same allocation");
        assert_eq!(spares.len(), 0);
    }

    #[test]
    fn a_free_buffer_too_small_for_the_room_is_not_taken() {
        let mut spares = Spares::default();
        let (buffer, body) = pinned(KEEP_MIN);
        spares.keep(buffer, KEEP_MIN);
        drop(body);
        assert!(spares.take_free(KEEP_MIN * 2).is_none());
        assert_eq!(spares.len(), 1);
    }

    #[test]
    fn the_pool_is_bounded_and_skips_small_buffers() {
        let mut spares = Spares::default();
        let mut bodies = Vec::new();
        for _ in 0..SPARES + 3 {
            let (buffer, body) = pinned(KEEP_MIN);
            spares.keep(buffer, KEEP_MIN);
            bodies.push(body);
        }
        assert_eq!(spares.len(), SPARES);
        let (small, _body) = pinned(KEEP_MIN / 4);
        spares.keep(small, KEEP_MIN / 4);
        assert_eq!(spares.len(), SPARES);
        // The oldest were dropped: releasing their bodies frees them, and
        // the kept ones are found free in turn.
        drop(bodies);
        for _ in 0..SPARES {
            assert!(spares.take_free(KEEP_MIN - 10).is_some());
        }
        assert!(spares.take_free(KEEP_MIN - 10).is_none());
    }
}
