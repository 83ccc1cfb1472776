//! The sliding sequence window, the nonce ring and the nonce store against
//! their models.

use super::ops;
use crate::model::replay::{RingModel, StoreModel, WindowModel};
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::crypto::Nonce;
use bus_proto::replay::{NonceRing, NonceStore, ReplayWindow, ReplayWindow1024};
use bus_proto::time::UnixNanos;
use std::time::Duration;

/// A sequence number relative to the last one, or an extreme.
#[derive(Arbitrary, Debug)]
enum Seq {
    Forward(u16),
    Back(u16),
    Absolute(u64),
    Max,
}

/// Replay window: every number goes through a 128-wide and a 1024-wide
/// window; `check` and `accept` agree, and both match the model.
pub fn replay_window(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut narrow = ReplayWindow::<2>::new();
    let mut wide = ReplayWindow1024::new();
    let mut narrow_model = WindowModel::new(128);
    let mut wide_model = WindowModel::new(1024);
    let mut last = 0u64;
    for step in ops::<Seq>(&mut u) {
        let seq = match step {
            Seq::Forward(d) => last.saturating_add(u64::from(d)),
            Seq::Back(d) => last.saturating_sub(u64::from(d)),
            Seq::Absolute(s) => s,
            Seq::Max => u64::MAX,
        };
        last = seq;
        let checked = narrow.check(seq).is_ok();
        let accepted = narrow.accept(seq).is_ok();
        assert_eq!(checked, accepted, "check and accept disagree on {seq}");
        assert_eq!(accepted, narrow_model.accept(seq), "128-wide, seq {seq}");
        let checked = wide.check(seq).is_ok();
        let accepted = wide.accept(seq).is_ok();
        assert_eq!(checked, accepted, "check and accept disagree on {seq}");
        assert_eq!(accepted, wide_model.accept(seq), "1024-wide, seq {seq}");
    }
}

#[derive(Arbitrary, Debug)]
enum NonceOp {
    RingInsert(u8),
    RingCheck(u8),
    Record {
        peer: u8,
        nonce: u8,
        skew: i8,
    },
    Check {
        peer: u8,
        nonce: u8,
    },
    Forget(u8),
    /// Seconds.
    Advance(u8),
}

const RING: usize = 5;
const STORE_RING: usize = 4;
const MAX_PEERS: usize = 3;
const WINDOW: Duration = Duration::from_secs(30);
const SEC: u64 = 1_000_000_000;

fn nonce(b: u8) -> Nonce {
    Nonce::from_bytes([b; 32])
}

/// Nonce ring and nonce store: arbitrary inserts, checks, records (with
/// timestamps skewed either way), forgets and time, against the models.
pub fn nonce_ring(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut ring = NonceRing::<RING>::new();
    let mut ring_model = RingModel::new(RING);
    let mut store = NonceStore::<u8, STORE_RING>::new(MAX_PEERS, WINDOW);
    let mut store_model = StoreModel::new(STORE_RING, MAX_PEERS, WINDOW);
    let mut now = 1_000 * SEC;
    for op in ops::<NonceOp>(&mut u) {
        let at = UnixNanos::from_nanos(now);
        match op {
            NonceOp::RingInsert(b) => {
                assert_eq!(ring.insert(nonce(b), at), ring_model.insert(nonce(b), at));
            }
            NonceOp::RingCheck(b) => {
                assert_eq!(ring.contains(&nonce(b)), ring_model.contains(&nonce(b)));
            }
            NonceOp::Record {
                peer,
                nonce: b,
                skew,
            } => {
                let peer = peer % 6;
                let skew = i64::from(skew) * SEC as i64;
                let timestamp = UnixNanos::from_nanos(now.saturating_add_signed(skew));
                // The store's contract: record only timestamps that passed
                // the freshness check.
                if !timestamp.is_fresh(at, WINDOW) {
                    continue;
                }
                assert_eq!(
                    store.record(peer, nonce(b), timestamp, at),
                    store_model.record(peer, nonce(b), timestamp, at),
                    "record peer {peer} nonce {b}"
                );
            }
            NonceOp::Check { peer, nonce: b } => {
                let peer = peer % 6;
                assert_eq!(
                    store.check(peer, &nonce(b)),
                    store_model.check(peer, &nonce(b))
                );
            }
            NonceOp::Forget(peer) => {
                store.forget(peer % 6);
                store_model.forget(peer % 6);
            }
            NonceOp::Advance(s) => now += u64::from(s) * SEC,
        }
        assert_eq!(ring.len(), ring_model.len());
        assert!(ring.len() <= RING);
        assert_eq!(store.peer_count(), store_model.peer_count());
        assert!(store.peer_count() <= MAX_PEERS);
    }
}
