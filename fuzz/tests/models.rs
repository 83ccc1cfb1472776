//! The replay structures and the dedup window against the reference models
//! in `bus_fuzz::model`, which the fuzz targets use too.

use bus_fuzz::model::dedup::DedupModel;
use bus_fuzz::model::replay::{RingModel, WindowModel};
use bus_proto::crypto::Nonce;
use bus_proto::dedup::*;
use bus_proto::replay::*;
use bus_proto::time::{Instant, UnixNanos};
use bytes::Bytes;
use proptest::prelude::*;
use std::time::Duration;

const MS: u64 = 1_000_000;

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * MS)
}

fn at(secs: u64) -> UnixNanos {
    UnixNanos::from_nanos(secs * 1_000_000_000)
}

fn nonce(b: u8) -> Nonce {
    Nonce::from_bytes([b; 32])
}

fn limits(entries: usize, clients: usize, bytes: usize, ttl_ms: u64) -> DedupLimits {
    DedupLimits {
        entries_per_client: entries,
        max_clients: clients,
        max_cached_bytes: bytes,
        ttl: Duration::from_millis(ttl_ms),
    }
}

fn reply(n: usize) -> Bytes {
    Bytes::from(vec![0xEE; n])
}

proptest! {
    /// The ring behaves like a bounded FIFO of the last CAP inserts.
    #[test]
    fn ring_matches_a_fifo_model(ops in prop::collection::vec((any::<bool>(), 0u8..12), 0..200)) {
        let mut ring = NonceRing::<5>::new();
        let mut model = RingModel::new(5);
        for (insert, b) in ops {
            if insert {
                prop_assert_eq!(ring.insert(nonce(b), at(0)), model.insert(nonce(b), at(0)));
            }
            prop_assert_eq!(ring.contains(&nonce(b)), model.contains(&nonce(b)));
            prop_assert_eq!(ring.len(), model.len());
        }
    }
}

fn arb_seq_ops() -> impl Strategy<Value = Vec<u64>> {
    // Mostly small steps around a moving point, with occasional big jumps and
    // the extreme values.
    prop::collection::vec(
        prop_oneof![
            8 => 0u64..3000,
            1 => Just(u64::MAX),
            1 => Just(u64::MAX - 1),
            1 => any::<u64>(),
        ],
        0..400,
    )
}

proptest! {
    #[test]
    fn window_matches_a_set_model(seqs in arb_seq_ops()) {
        let mut window = ReplayWindow::<2>::new();
        let mut model = WindowModel::new(128);
        for seq in seqs {
            let checked = window.check(seq).is_ok();
            let accepted = window.accept(seq).is_ok();
            prop_assert_eq!(checked, accepted, "check and accept disagree on {}", seq);
            prop_assert_eq!(accepted, model.accept(seq), "seq {}", seq);
        }
    }

    #[test]
    fn window_1024_matches_the_model_on_a_dense_stream(start in 0u64..1024, steps in prop::collection::vec(-1100i64..1100, 0..300)) {
        let mut window = ReplayWindow1024::new();
        let mut model = WindowModel::new(1024);
        let mut at = i128::from(start);
        for step in steps {
            at = (at + i128::from(step)).max(0);
            let seq = u64::try_from(at).unwrap();
            prop_assert_eq!(window.accept(seq).is_ok(), model.accept(seq), "seq {}", seq);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Lookup(u8, u64),
    Mark(u8, u64),
    Complete(u8, u64, usize),
    Evict(u8),
    Expire,
}

fn arb_op() -> impl Strategy<Value = (u64, Op)> {
    let client = 0u8..6;
    let request = 0u64..12;
    let op = prop_oneof![
        3 => (client.clone(), request.clone()).prop_map(|(c, r)| Op::Lookup(c, r)),
        3 => (client.clone(), request.clone()).prop_map(|(c, r)| Op::Mark(c, r)),
        3 => (client.clone(), request, 0usize..120).prop_map(|(c, r, n)| Op::Complete(c, r, n)),
        1 => client.prop_map(Op::Evict),
        1 => Just(Op::Expire),
    ];
    (prop_oneof![4 => 0u64..5, 1 => 0u64..400], op)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn window_matches_the_reference_model(
        entries in 1usize..5,
        clients in 1usize..5,
        bytes in 50usize..300,
        ttl in 10u64..300,
        ops in prop::collection::vec(arb_op(), 0..200),
    ) {
        let l = limits(entries, clients, bytes, ttl);
        let mut window = DedupWindow::new(l);
        let mut model = DedupModel::new(l);
        let mut now = 0;
        for (dt, op) in ops {
            now += dt;
            let at = t(now);
            match op {
                Op::Lookup(c, r) => {
                    prop_assert_eq!(window.lookup(c.into(), r, at), model.lookup(c.into(), r, at));
                }
                Op::Mark(c, r) => {
                    let real = window.mark_in_flight(c.into(), r, at);
                    prop_assert_eq!(real.ok(), model.mark(c.into(), r, at));
                }
                Op::Complete(c, r, n) => {
                    let real = window.complete(c.into(), r, reply(n), at);
                    prop_assert_eq!(real.ok(), model.complete(c.into(), r, reply(n), at));
                }
                Op::Evict(c) => prop_assert_eq!(window.evict_client(c.into()), model.evict(c.into())),
                Op::Expire => prop_assert_eq!(window.expire(at), model.expire(at)),
            }
            prop_assert_eq!(window.clients(), model.clients());
            prop_assert_eq!(window.cached_bytes(), model.bytes());
            prop_assert!(window.clients() <= clients);
            prop_assert!(window.cached_bytes() <= bytes);
        }
    }

    /// Arbitrary (even backwards) times never panic and keep the bounds.
    #[test]
    fn arbitrary_times_keep_the_bounds(ops in prop::collection::vec((any::<u64>(), arb_op()), 0..150)) {
        let mut window = DedupWindow::new(limits(3, 3, 200, 50));
        for (time, (_, op)) in ops {
            let at = Instant::from_nanos(time);
            match op {
                Op::Lookup(c, r) => { let _ = window.lookup(c.into(), r, at); }
                Op::Mark(c, r) => { let _ = window.mark_in_flight(c.into(), r, at); }
                Op::Complete(c, r, n) => { let _ = window.complete(c.into(), r, reply(n), at); }
                Op::Evict(c) => { window.evict_client(c.into()); }
                Op::Expire => { window.expire(at); }
            }
            prop_assert!(window.clients() <= 3 && window.cached_bytes() <= 200);
        }
    }
}
