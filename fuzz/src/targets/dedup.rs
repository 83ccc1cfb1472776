//! The request dedup window against its model, with arbitrary times.

use super::ops;
use crate::model::dedup::DedupModel;
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::dedup::{DedupLimits, DedupWindow};
use bus_proto::time::Instant;
use bytes::Bytes;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
enum When {
    /// Milliseconds after the previous operation.
    Later(u16),
    /// Any time at all, earlier ones included.
    At(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Lookup(u8, u8),
    Mark(u8, u8),
    Complete(u8, u8, u8),
    Evict(u8),
    Expire,
}

/// Dedup window: limits and operations from the input, each at a time that
/// moves forward or jumps anywhere. Every answer matches the model and the
/// caps hold after every step.
pub fn dedup_window(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(entries), Ok(clients), Ok(bytes), Ok(ttl)) = (
        u.int_in_range(1usize..=5),
        u.int_in_range(1usize..=5),
        u.int_in_range(0usize..=400),
        u.int_in_range(1u64..=400),
    ) else {
        return;
    };
    let limits = DedupLimits {
        entries_per_client: entries,
        max_clients: clients,
        max_cached_bytes: bytes,
        ttl: Duration::from_millis(ttl),
    };
    let mut window = DedupWindow::new(limits);
    let mut model = DedupModel::new(limits);
    let mut now = 0u64;
    for (when, op) in ops::<(When, Op)>(&mut u) {
        now = match when {
            When::Later(ms) => now.saturating_add(u64::from(ms) * 1_000_000),
            When::At(t) => t,
        };
        let at = Instant::from_nanos(now);
        let client = |c: u8| u128::from(c % 7);
        let request = |r: u8| u64::from(r % 16);
        match op {
            Op::Lookup(c, r) => assert_eq!(
                window.lookup(client(c), request(r), at),
                model.lookup(client(c), request(r), at)
            ),
            Op::Mark(c, r) => assert_eq!(
                window.mark_in_flight(client(c), request(r), at).ok(),
                model.mark(client(c), request(r), at)
            ),
            Op::Complete(c, r, n) => {
                let reply = Bytes::from(vec![0xee; usize::from(n)]);
                assert_eq!(
                    window
                        .complete(client(c), request(r), reply.clone(), at)
                        .ok(),
                    model.complete(client(c), request(r), reply, at)
                );
            }
            Op::Evict(c) => assert_eq!(window.evict_client(client(c)), model.evict(client(c))),
            Op::Expire => assert_eq!(window.expire(at), model.expire(at)),
        }
        assert_eq!(window.clients(), model.clients());
        assert_eq!(window.cached_bytes(), model.bytes());
        assert!(window.clients() <= clients);
        assert!(window.cached_bytes() <= bytes);
        assert_eq!(window.markers(), model.markers());
        assert!(window.markers() <= clients);
    }
}
