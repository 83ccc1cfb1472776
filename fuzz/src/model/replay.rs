//! Models of the sliding sequence window, the nonce ring and the per-peer
//! nonce store.

use bus_proto::crypto::Nonce;
use bus_proto::replay::ReplayError;
use bus_proto::time::UnixNanos;
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// The sliding window as a set of accepted numbers and the newest: a number
/// is accepted once, if it is within `width` of the newest either way, and
/// never `u64::MAX`.
#[derive(Debug)]
pub struct WindowModel {
    seen: BTreeSet<u64>,
    top: i128,
    width: i128,
}

impl WindowModel {
    /// A model of a window `width` numbers wide that has accepted nothing.
    pub fn new(width: u64) -> Self {
        WindowModel {
            seen: BTreeSet::new(),
            top: -1,
            width: i128::from(width),
        }
    }

    /// Accepts `seq` if the window would; returns whether it did.
    pub fn accept(&mut self, seq: u64) -> bool {
        let s = i128::from(seq);
        let ok = seq != u64::MAX
            && !self.seen.contains(&seq)
            && s > self.top - self.width
            && s <= self.top + self.width;
        if ok {
            self.seen.insert(seq);
            self.top = self.top.max(s);
        }
        ok
    }
}

/// The nonce ring as a FIFO of the last `cap` inserts.
#[derive(Debug)]
pub struct RingModel {
    entries: VecDeque<(Nonce, UnixNanos)>,
    cap: usize,
}

impl RingModel {
    /// An empty ring of `cap` slots.
    pub fn new(cap: usize) -> Self {
        RingModel {
            entries: VecDeque::new(),
            cap,
        }
    }

    /// Inserts; returns the entry pushed out, if the ring was full.
    pub fn insert(&mut self, nonce: Nonce, at: UnixNanos) -> Option<(Nonce, UnixNanos)> {
        self.entries.push_back((nonce, at));
        (self.entries.len() > self.cap)
            .then(|| self.entries.pop_front())
            .flatten()
    }

    /// Whether `nonce` is among the entries.
    pub fn contains(&self, nonce: &Nonce) -> bool {
        self.entries.iter().any(|(n, _)| n == nonce)
    }

    /// The entry the next insert pushes out, if full.
    pub fn next_evicted(&self) -> Option<(Nonce, UnixNanos)> {
        (self.entries.len() >= self.cap)
            .then(|| self.entries.front().copied())
            .flatten()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was inserted yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The per-peer nonce store as one flat list of records, oldest first: a
/// peer's remembered nonces are its last `cap` records; the store holds at
/// most `max_peers` peers and makes room only by dropping peers with no
/// fresh record; a peer with `cap` records refuses while its oldest is fresh.
#[derive(Debug)]
pub struct StoreModel {
    records: Vec<(u8, Nonce, UnixNanos)>,
    cap: usize,
    max_peers: usize,
    window: Duration,
}

impl StoreModel {
    /// An empty store.
    pub fn new(cap: usize, max_peers: usize, window: Duration) -> Self {
        StoreModel {
            records: Vec::new(),
            cap,
            max_peers: max_peers.max(1),
            window,
        }
    }

    fn of(&self, peer: u8) -> Vec<(Nonce, UnixNanos)> {
        let all: Vec<_> = (self.records.iter())
            .filter(|r| r.0 == peer)
            .map(|&(_, n, t)| (n, t))
            .collect();
        all[all.len().saturating_sub(self.cap)..].to_vec()
    }

    fn peers(&self) -> BTreeSet<u8> {
        self.records.iter().map(|r| r.0).collect()
    }

    /// Peers with a record.
    pub fn peer_count(&self) -> usize {
        self.peers().len()
    }

    /// Whether `nonce` is remembered for `peer`.
    pub fn check(&self, peer: u8, nonce: &Nonce) -> Result<(), ReplayError> {
        if self.of(peer).iter().any(|(n, _)| n == nonce) {
            return Err(ReplayError::Replayed { nonce: *nonce });
        }
        Ok(())
    }

    /// Records `nonce` for `peer` at `timestamp`, judged at `now`.
    pub fn record(
        &mut self,
        peer: u8,
        nonce: Nonce,
        timestamp: UnixNanos,
        now: UnixNanos,
    ) -> Result<(), ReplayError> {
        self.check(peer, &nonce)?;
        let window = self.window;
        let fresh = |t: UnixNanos| t.is_fresh(now, window);
        let peers = self.peers();
        if !peers.contains(&peer) && peers.len() >= self.max_peers {
            for p in peers {
                if !self.of(p).iter().any(|&(_, t)| fresh(t)) {
                    self.forget(p);
                }
            }
            if self.peer_count() >= self.max_peers {
                return Err(ReplayError::StoreFull {
                    max_peers: self.max_peers,
                });
            }
        }
        let held = self.of(peer);
        if held.len() >= self.cap && held.first().is_some_and(|&(_, t)| fresh(t)) {
            return Err(ReplayError::PeerSaturated { capacity: self.cap });
        }
        self.records.push((peer, nonce, timestamp));
        Ok(())
    }

    /// Forgets `peer`.
    pub fn forget(&mut self, peer: u8) {
        self.records.retain(|r| r.0 != peer);
    }
}
