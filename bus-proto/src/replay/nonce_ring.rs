//! A fixed-capacity FIFO of recently seen nonces.

use crate::crypto::Nonce;
use crate::time::UnixNanos;

/// The last `CAP` nonces recorded for one peer, with the wall-clock timestamp
/// each arrived with.
///
/// Storage is inline (`CAP` slots, no allocation). Only the filled slots are
/// ever scanned, so an all-zero nonce is an ordinary value and an empty ring
/// matches nothing (hazard 7). When full, [`insert`](Self::insert) evicts the
/// oldest entry.
#[derive(Clone, Debug)]
pub struct NonceRing<const CAP: usize> {
    slots: [(Nonce, UnixNanos); CAP],
    /// Filled slots: `0..len` until the first wrap, then all of them.
    len: usize,
    /// The slot the next insert writes (and, when full, the oldest entry).
    next: usize,
}

impl<const CAP: usize> Default for NonceRing<CAP> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const CAP: usize> NonceRing<CAP> {
    const NONZERO: () = assert!(CAP > 0, "a NonceRing needs at least one slot");

    /// An empty ring.
    pub const fn new() -> Self {
        let () = Self::NONZERO;
        NonceRing {
            slots: [(Nonce::from_bytes([0; 32]), UnixNanos::from_nanos(0)); CAP],
            len: 0,
            next: 0,
        }
    }

    /// Entries held.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is recorded.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the next insert evicts.
    pub const fn is_full(&self) -> bool {
        self.len == CAP
    }

    /// True if `nonce` is recorded.
    pub fn contains(&self, nonce: &Nonce) -> bool {
        self.slots[..self.len].iter().any(|(n, _)| n == nonce)
    }

    /// The entry the next insert would evict, if the ring is full.
    pub fn next_evicted(&self) -> Option<(Nonce, UnixNanos)> {
        self.is_full().then(|| self.slots[self.next])
    }

    /// The latest timestamp recorded, if any.
    pub fn newest_timestamp(&self) -> Option<UnixNanos> {
        self.slots[..self.len].iter().map(|&(_, t)| t).max()
    }

    /// Records `nonce`, evicting and returning the oldest entry when full.
    /// Does not check for duplicates; see [`contains`](Self::contains).
    pub fn insert(&mut self, nonce: Nonce, timestamp: UnixNanos) -> Option<(Nonce, UnixNanos)> {
        let evicted = self.next_evicted();
        self.slots[self.next] = (nonce, timestamp);
        self.next = (self.next + 1) % CAP;
        self.len = (self.len + 1).min(CAP);
        evicted
    }
}
