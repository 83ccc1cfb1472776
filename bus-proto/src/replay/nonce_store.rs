//! Per-peer nonce rings, bounded in number of peers.

use super::NonceRing;
use crate::crypto::Nonce;
use crate::time::UnixNanos;
use alloc::collections::BTreeMap;
use core::time::Duration;

/// A nonce could not be recorded.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The nonce was already recorded for this peer: a replay.
    #[error("nonce {nonce:?} was already used by this peer")]
    Replayed {
        /// The replayed nonce.
        nonce: Nonce,
    },
    /// The peer's ring is full of nonces that could still pass the freshness
    /// check; evicting one would reopen its replay window, so the handshake
    /// is refused instead (the peer is dialling too often).
    #[error("peer used {capacity} nonces within the freshness window; refusing more")]
    PeerSaturated {
        /// Ring capacity.
        capacity: usize,
    },
    /// Every peer slot holds fresh nonces; a new peer is refused.
    #[error("replay store holds {max_peers} peers with fresh nonces; refusing a new peer")]
    StoreFull {
        /// The configured bound.
        max_peers: usize,
    },
}

/// One [`NonceRing`] per peer, at most `max_peers` peers.
///
/// Nothing is ever evicted while it could still be replayed: an entry whose
/// timestamp is within the freshness window of `now` stays; if room can only
/// be made by evicting such an entry, the new nonce is refused with a typed
/// error instead. Entries older than the window are dropped freely: the
/// freshness check already refuses a message that old.
///
/// Memory: `max_peers * CAP * 40` bytes at most, plus map overhead.
#[derive(Clone, Debug)]
pub struct NonceStore<P: Ord + Copy, const CAP: usize> {
    peers: BTreeMap<P, NonceRing<CAP>>,
    max_peers: usize,
    window: Duration,
}

impl<P: Ord + Copy, const CAP: usize> NonceStore<P, CAP> {
    /// A store for at most `max_peers` peers and the given freshness window.
    pub fn new(max_peers: usize, window: Duration) -> Self {
        NonceStore {
            peers: BTreeMap::new(),
            max_peers: max_peers.max(1),
            window,
        }
    }

    /// Peers with a ring.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Read-only replay check; use it before verifying the MAC.
    pub fn check(&self, peer: P, nonce: &Nonce) -> Result<(), ReplayError> {
        match self.peers.get(&peer) {
            Some(ring) if ring.contains(nonce) => Err(ReplayError::Replayed { nonce: *nonce }),
            _ => Ok(()),
        }
    }

    /// Records `nonce` for `peer`. Call only after the message's MAC verified
    /// and its `timestamp` passed the freshness check (hazard 5).
    pub fn record(
        &mut self,
        peer: P,
        nonce: Nonce,
        timestamp: UnixNanos,
        now: UnixNanos,
    ) -> Result<(), ReplayError> {
        self.check(peer, &nonce)?;
        let window = self.window;
        let stale = |t: UnixNanos| !t.is_fresh(now, window);
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.max_peers {
            // Peers whose every nonce is stale can no longer be replayed: drop them.
            self.peers
                .retain(|_, ring| ring.newest_timestamp().is_some_and(|t| !stale(t)));
            if self.peers.len() >= self.max_peers {
                return Err(ReplayError::StoreFull {
                    max_peers: self.max_peers,
                });
            }
        }
        let ring = self.peers.entry(peer).or_default();
        if let Some((_, oldest)) = ring.next_evicted()
            && !stale(oldest)
        {
            return Err(ReplayError::PeerSaturated { capacity: CAP });
        }
        ring.insert(nonce, timestamp);
        Ok(())
    }

    /// Forgets a peer entirely (e.g. removed from the configuration).
    pub fn forget(&mut self, peer: P) {
        self.peers.remove(&peer);
    }
}
