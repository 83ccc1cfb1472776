//! Nonce rings, the per-peer nonce store and the sliding window: the
//! hazards they exist for. (Their model-based property tests are in
//! `fuzz/tests/models.rs`, beside the models the fuzz targets share.)

use bus_proto::crypto::Nonce;
use bus_proto::replay::*;
use bus_proto::time::UnixNanos;
use std::time::Duration;

fn nonce(b: u8) -> Nonce {
    Nonce::from_bytes([b; 32])
}

const SEC: u64 = 1_000_000_000;
const WINDOW: Duration = Duration::from_secs(30);

fn at(secs: u64) -> UnixNanos {
    UnixNanos::from_nanos(secs * SEC)
}

/// Hazard 7: an empty ring matches nothing, not even the all-zero nonce, and
/// a recorded zero nonce is found like any other.
#[test]
fn zero_nonce_is_an_ordinary_value() {
    let mut ring = NonceRing::<4>::new();
    assert!(!ring.contains(&Nonce::from_bytes([0; 32])));
    ring.insert(nonce(1), at(1));
    assert!(!ring.contains(&Nonce::from_bytes([0; 32])));
    ring.insert(Nonce::from_bytes([0; 32]), at(1));
    assert!(ring.contains(&Nonce::from_bytes([0; 32])));
}

#[test]
fn ring_evicts_in_fifo_order() {
    let mut ring = NonceRing::<3>::new();
    for b in 1..=3 {
        assert_eq!(ring.insert(nonce(b), at(u64::from(b))), None);
    }
    assert!(ring.is_full());
    assert_eq!(ring.next_evicted(), Some((nonce(1), at(1))));
    assert_eq!(ring.insert(nonce(4), at(4)), Some((nonce(1), at(1))));
    assert!(!ring.contains(&nonce(1)));
    assert!(ring.contains(&nonce(4)) && ring.contains(&nonce(2)));
    assert_eq!(ring.len(), 3);
}

/// Hazard 5: checking does not consume a slot; only recording does, and a
/// caller records only after the MAC verified. A flood of checks (forgeries
/// that failed their MAC) leaves the ring untouched.
#[test]
fn checking_never_consumes_a_slot() {
    let mut store = NonceStore::<u8, 4>::new(8, WINDOW);
    store.record(1, nonce(9), at(100), at(100)).unwrap();
    for b in 0..=255 {
        let _ = store.check(1, &nonce(b));
    }
    assert_eq!(
        store.check(1, &nonce(9)),
        Err(ReplayError::Replayed { nonce: nonce(9) })
    );
}

#[test]
fn a_recorded_nonce_cannot_be_recorded_again() {
    let mut store = NonceStore::<u8, 4>::new(8, WINDOW);
    store.record(1, nonce(5), at(100), at(100)).unwrap();
    assert_eq!(
        store.record(1, nonce(5), at(101), at(101)),
        Err(ReplayError::Replayed { nonce: nonce(5) })
    );
    // Per peer: the same nonce from another peer is that peer's business.
    store.record(2, nonce(5), at(101), at(101)).unwrap();
}

/// Hazard 6: a noisy peer fills only its own ring; honest peers' entries stay.
#[test]
fn a_noisy_peer_cannot_evict_another_peers_nonces() {
    let mut store = NonceStore::<u8, 4>::new(8, WINDOW);
    store.record(1, nonce(200), at(100), at(100)).unwrap();
    let mut refused = 0;
    for b in 0..50 {
        // The noisy peer's nonces go stale one by one as time passes.
        let now = at(100 + u64::from(b) * 20);
        if store.record(2, nonce(b), now, now).is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "stale entries are evictable");
    assert!(
        store.check(1, &nonce(200)).is_err(),
        "peer 1's nonce was evicted"
    );
}

/// A peer that handshakes more than CAP times within the freshness window is
/// refused instead of evicting a nonce that could still be replayed.
#[test]
fn a_ring_full_of_fresh_nonces_refuses_rather_than_evicts() {
    let mut store = NonceStore::<u8, 4>::new(8, WINDOW);
    for b in 0..4 {
        store.record(1, nonce(b), at(100), at(100)).unwrap();
    }
    assert_eq!(
        store.record(1, nonce(9), at(110), at(110)),
        Err(ReplayError::PeerSaturated { capacity: 4 })
    );
    assert!(
        store.check(1, &nonce(0)).is_err(),
        "the fresh nonce must still be remembered"
    );
    // Once the oldest is outside the window, it can go.
    store.record(1, nonce(9), at(131), at(131)).unwrap();
    assert!(store.check(1, &nonce(0)).is_ok());
}

#[test]
fn the_store_is_bounded_in_peers_and_drops_only_stale_peers() {
    let mut store = NonceStore::<u8, 2>::new(3, WINDOW);
    for p in 0..3 {
        store.record(p, nonce(p), at(100), at(100)).unwrap();
    }
    assert_eq!(
        store.record(7, nonce(7), at(100), at(100)),
        Err(ReplayError::StoreFull { max_peers: 3 })
    );
    assert_eq!(store.peer_count(), 3);
    store.record(7, nonce(7), at(200), at(200)).unwrap();
    assert_eq!(
        store.peer_count(),
        1,
        "stale peers are dropped to make room"
    );
    store.forget(7);
    assert_eq!(store.peer_count(), 0);
}

/// Hazard 13: a jump beyond the window is refused, not treated as a reset
/// that would make older numbers acceptable again.
#[test]
fn a_forward_jump_beyond_the_window_is_refused_not_reset() {
    let mut w = ReplayWindow1024::new();
    for seq in 0..10 {
        w.accept(seq).unwrap();
    }
    assert_eq!(
        w.accept(9 + 1025),
        Err(WindowError::TooFarAhead {
            seq: 9 + 1025,
            top: Some(9),
            width: 1024
        })
    );
    assert_eq!(
        w.accept(5),
        Err(WindowError::Duplicate { seq: 5 }),
        "old numbers must stay refused"
    );
    w.accept(9 + 1024).unwrap(); // exactly the width is allowed
    assert_eq!(
        w.accept(9),
        Err(WindowError::TooOld {
            seq: 9,
            top: 9 + 1024,
            width: 1024
        })
    );
}

/// Hazard 13: the maximum value can never be accepted, so it cannot pin the window.
#[test]
fn the_maximum_sequence_number_is_rejected() {
    let mut w = ReplayWindow1024::new();
    assert_eq!(w.accept(u64::MAX), Err(WindowError::Exhausted));
    assert_eq!(w.newest(), None);
    assert!(matches!(
        w.accept(u64::MAX - 1),
        Err(WindowError::TooFarAhead { .. })
    ));
}

#[test]
fn the_first_number_must_be_inside_the_initial_window() {
    let mut w = ReplayWindow1024::new();
    assert!(matches!(
        w.accept(1024),
        Err(WindowError::TooFarAhead { top: None, .. })
    ));
    w.accept(1023).unwrap();
    w.accept(0).unwrap();
    assert_eq!(w.newest(), Some(1023));
}
