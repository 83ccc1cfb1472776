//! Receive buffers recycled once the application lets go of them.
//!
//! Delivered bodies are slices of the buffer they were read into, so a
//! buffer whose bodies the application still holds cannot take the next
//! read in place. Allocating a fresh large buffer each time costs page
//! faults: the allocator (glibc's, for one) hands large freed blocks back
//! to the kernel and maps them again. A busy socket instead sets its
//! pinned buffers aside and reads into the first one whose bodies have all
//! been dropped.
//!
//! Bounded: at most [`SPARES`] buffers per socket, and only buffers the
//! pool allocated itself for a read chunk and a partial frame (never one
//! the decoder grew for a large frame). With the pool full the oldest is
//! dropped, and its memory goes back to the allocator once the
//! application drops its last body from it. A read that fills less than
//! half its room empties the pool, so only a connection that keeps reading
//! whole chunks keeps spares.

use bytes::BytesMut;
use std::collections::VecDeque;

/// Buffers kept per socket.
pub(super) const SPARES: usize = 8;

/// Buffers made for reads smaller than this are not kept: the allocator
/// serves them from its free lists without faulting in pages.
pub(super) const KEEP_MIN: usize = 16 << 10;

/// A fresh buffer holding `buffer`'s bytes (a partial frame) with `room`
/// to spare after them.
pub(super) fn moved(buffer: &BytesMut, room: usize) -> BytesMut {
    let mut fresh = BytesMut::with_capacity(buffer.len() + room);
    fresh.extend_from_slice(buffer);
    fresh
}

/// An allocation the pool made: where it starts and its size, so that the
/// buffer reading into it is recognised when it is replaced.
#[derive(Clone, Copy, Debug)]
struct Allocation {
    start: usize,
    capacity: usize,
}

impl Allocation {
    fn of(buffer: &BytesMut) -> Self {
        Allocation {
            start: buffer.as_ptr() as usize,
            capacity: buffer.capacity(),
        }
    }

    /// `buffer` lies within this allocation: not moved nor grown since.
    fn holds(&self, buffer: &BytesMut) -> bool {
        let at = buffer.as_ptr() as usize;
        self.start <= at && at + buffer.capacity() <= self.start + self.capacity
    }
}

/// A socket's receive buffers set aside, oldest first. See the
/// [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Spares {
    buffers: VecDeque<(BytesMut, Allocation)>,
    /// The allocation the socket reads into, if the pool made it.
    current: Option<Allocation>,
}

impl Spares {
    /// Moves `buffer`'s bytes (a partial frame) to a buffer with `room`
    /// to spare: a released spare when `recycle` and one fits, else a
    /// fresh allocation. With `recycle`, the old buffer is set aside if
    /// the pool made it for reads of at least `room` bytes (and
    /// [`KEEP_MIN`]).
    pub(super) fn replace(&mut self, buffer: &mut BytesMut, room: usize, recycle: bool) {
        let previous = self.current.take();
        let (fresh, allocation) = match recycle.then(|| self.take_free(buffer, room)).flatten() {
            Some(spare) => spare,
            None => {
                let fresh = moved(buffer, room);
                let allocation = Allocation::of(&fresh);
                (fresh, allocation)
            }
        };
        self.current = Some(allocation);
        let mut old = core::mem::replace(buffer, fresh);
        let Some(previous) = previous else {
            return;
        };
        if recycle && room >= KEEP_MIN && previous.capacity >= room && previous.holds(&old) {
            old.clear();
            if self.buffers.len() == SPARES {
                self.buffers.pop_front();
            }
            self.buffers.push_back((old, previous));
        }
    }

    /// A spare holding `buffer`'s bytes with `room` after them, with its
    /// allocation.
    fn take_free(&mut self, buffer: &BytesMut, room: usize) -> Option<(BytesMut, Allocation)> {
        if self.buffers.is_empty() {
            return None;
        }
        let need = buffer.len() + room;
        let at = self.buffers.iter_mut().position(|(spare, allocation)| {
            // Success means the allocation is ours again, or that the
            // spare's own tail has the room (`try_reclaim` then moves
            // nothing): bytes there are the spare's alone either way.
            allocation.capacity >= need && spare.try_reclaim(need)
        })?;
        let (mut spare, allocation) = self.buffers.remove(at)?;
        spare.extend_from_slice(buffer);
        Some((spare, allocation))
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
    use bytes::Bytes;
    use std::vec::Vec;

    const ROOM: usize = KEEP_MIN;

    /// Fills `buffer` and splits all but a 7-byte partial frame off as a
    /// body the application holds.
    fn fill(buffer: &mut BytesMut) -> Bytes {
        let room = buffer.capacity() - buffer.len();
        buffer.extend_from_slice(&std::vec![1; room]);
        let body = buffer.len() - 7;
        buffer.split_to(body).freeze()
    }

    /// A pool and the first buffer it allocated for `ROOM`.
    fn started() -> (Spares, BytesMut) {
        let mut spares = Spares::default();
        let mut buffer = BytesMut::new();
        spares.replace(&mut buffer, ROOM, true);
        (spares, buffer)
    }

    #[test]
    fn a_buffer_is_reused_once_its_bodies_are_dropped() {
        let (mut spares, mut buffer) = started();
        let _warm_up = fill(&mut buffer);
        spares.replace(&mut buffer, ROOM, true);
        let first = fill(&mut buffer);
        let first_address = first.as_ptr() as usize;
        spares.replace(&mut buffer, ROOM, true);
        assert_eq!(spares.len(), 2, "both pinned buffers set aside");
        let _second = fill(&mut buffer);
        drop(first);
        spares.replace(&mut buffer, ROOM, true);
        assert_eq!(buffer.as_ptr() as usize, first_address, "the released one");
        assert_eq!(&buffer[..], &[1; 7], "with the partial frame");
        assert!(buffer.capacity() - buffer.len() >= ROOM);
    }

    #[test]
    fn only_the_pools_own_chunk_sized_buffers_are_kept() {
        let (mut spares, mut buffer) = started();
        let _body = fill(&mut buffer);
        // The decoder grows the buffer for a large frame: a new allocation
        // the pool did not make.
        buffer.reserve(4 * ROOM);
        let _large = fill(&mut buffer);
        spares.replace(&mut buffer, ROOM, true);
        assert_eq!(spares.len(), 0, "a large frame's buffer is not kept");
        // Small rooms, and buffers replaced without recycling, are not
        // kept either.
        let _body = fill(&mut buffer);
        spares.replace(&mut buffer, KEEP_MIN / 2, true);
        let _body = fill(&mut buffer);
        spares.replace(&mut buffer, ROOM, false);
        assert_eq!(spares.len(), 0);
    }

    #[test]
    fn the_pool_is_bounded() {
        let (mut spares, mut buffer) = started();
        let mut bodies = Vec::new();
        for _ in 0..SPARES + 3 {
            bodies.push(fill(&mut buffer));
            spares.replace(&mut buffer, ROOM, true);
        }
        assert_eq!(spares.len(), SPARES);
    }
}
