//! Prints throughput and latency figures for the protocol core.
//!
//! `cargo run --release -p bus-proto --example bench` (add `-- --quick` for a
//! short smoke run). Figures only: nothing here asserts a speed.
//!
//! Decode + verify is measured the way an adapter uses the decoder: a
//! socket read has already put the bytes into the decoder's buffer (untimed),
//! and the timed part drains and verifies every frame. The baseline hashes
//! exactly the same bytes with XXH3-128 alone (header bytes 16..256 and the
//! body of each frame), the least any checksummed framing must do.

use bus_proto::crypto::mac::context;
use bus_proto::crypto::{Key, MacKey, Nonce};
use bus_proto::dedup::{DedupLimits, DedupWindow, Lookup};
use bus_proto::replay::{NonceRing, NonceStore};
use bus_proto::time::{Instant as At, UnixNanos};
use bus_proto::wire::{Frame, FrameDecoder, HEADER_SIZE, Header, Integrity, Kind};
use bytes::Bytes;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Runs `f` (which performs `per_call` operations) until `budget` elapses,
/// returning nanoseconds per operation (best of three rounds).
fn ns_per_op(budget: Duration, per_call: u64, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < budget / 3 {
            f();
            ops += per_call;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / ops as f64);
    }
    best
}

/// Copies `wire` into a fresh buffer (untimed: it stands for the socket read,
/// and leaves both contenders equally cache-warm), then times `work` on it.
/// Returns the best nanoseconds per frame seen within `budget`.
fn per_frame_after_fill(
    budget: Duration,
    wire: &[u8],
    frames: usize,
    mut work: impl FnMut(bytes::BytesMut),
) -> f64 {
    let mut best = f64::INFINITY;
    let deadline = Instant::now() + budget;
    while Instant::now() < deadline {
        let mut buf = bytes::BytesMut::with_capacity(wire.len());
        buf.extend_from_slice(wire);
        let start = Instant::now();
        work(buf);
        best = best.min(start.elapsed().as_nanos() as f64 / frames as f64);
    }
    best
}

fn stream(body: usize, total_bytes: usize) -> (Vec<u8>, usize) {
    let frame = Frame {
        header: Header::new(1, Kind::Message { operation: 1 }),
        body: Bytes::from(vec![0xA5; body]),
    };
    let encoded = frame.encode(&Integrity::Checksum, 64 << 20).unwrap();
    let count = (total_bytes / encoded.len()).max(4);
    let mut wire = Vec::with_capacity(count * encoded.len());
    for _ in 0..count {
        encoded.write_to(&mut wire);
    }
    (wire, count)
}

fn framing(budget: Duration) {
    println!("decode + verify (checksum mode) vs XXH3-128 over the same bytes");
    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "body", "frames/s", "MB/s", "ns/frame", "hash ns", "overhead"
    );
    for body in [0usize, 64, 4096, 1 << 20] {
        let (wire, count) = stream(body, 8 << 20);
        let size = HEADER_SIZE + body;
        let per_frame = per_frame_after_fill(budget, &wire, count, |buf| {
            let mut decoder = FrameDecoder::new(Integrity::Checksum, 2 << 20);
            *decoder.buffer_mut() = buf;
            while let Some(frame) = decoder.next_frame().unwrap() {
                black_box(frame);
            }
        });
        let hash = per_frame_after_fill(budget, &wire, count, |buf| {
            for frame in buf.chunks_exact(size) {
                black_box(twox_hash::XxHash3_128::oneshot(&frame[16..HEADER_SIZE]));
                black_box(twox_hash::XxHash3_128::oneshot(&frame[HEADER_SIZE..]));
            }
        });
        println!(
            "{:>9} {:>12.0} {:>12.0} {:>12.1} {:>12.1} {:>8.1}%",
            body,
            1e9 / per_frame,
            size as f64 * 1e3 / per_frame,
            per_frame,
            hash,
            (per_frame / hash - 1.0) * 100.0
        );
    }
    println!();
}

fn authenticated(budget: Duration) {
    println!("frame cost by integrity mode (encode + decode, ns/frame)");
    println!(
        "{:>9} {:>12} {:>14} {:>7}",
        "body", "checksum", "authenticated", "ratio"
    );
    let keyed = Integrity::Authenticated(bus_proto::wire::FrameKeys::derive(&[7; 32]));
    for body in [64usize, 4096] {
        let frame = Frame {
            header: Header::new(1, Kind::Message { operation: 1 }),
            body: Bytes::from(vec![1; body]),
        };
        let cost = |integrity: &Integrity| {
            ns_per_op(budget, 1, || {
                let e = frame.encode(integrity, 1 << 20).unwrap();
                let mut d = FrameDecoder::new(integrity.clone(), 1 << 20);
                d.feed(&e.header);
                d.feed(&e.body);
                black_box(d.next_frame().unwrap());
            })
        };
        let (c, a) = (cost(&Integrity::Checksum), cost(&keyed));
        println!("{body:>9} {c:>12.1} {a:>14.1} {:>6.1}x", a / c);
    }
    println!();
}

fn crypto_and_state(budget: Duration) {
    let key = Key::from_bytes([3; 32]);
    let mac = MacKey::derive(&key, context::HANDSHAKE);
    let transcript = [0x5Au8; 200];
    let tag = mac.sign(&[&transcript]);
    let sign = ns_per_op(budget, 1, || {
        black_box(mac.sign(&[black_box(&transcript)]));
    });
    let verify = ns_per_op(budget, 1, || {
        black_box(mac.verify(&[black_box(&transcript)], &tag)).unwrap();
    });
    let derive = ns_per_op(budget, 1, || {
        black_box(MacKey::derive(black_box(&key), context::HANDSHAKE));
    });
    println!("MAC (BLAKE3 keyed, 200-byte transcript)");
    println!("  sign {sign:.0} ns/op, verify {verify:.0} ns/op, derive_key {derive:.0} ns/op\n");

    let mut window = DedupWindow::new(DedupLimits::default());
    let reply = Bytes::from_static(b"reply body");
    let mut request = 0u64;
    let dedup = ns_per_op(budget, 1000, || {
        for _ in 0..1000 {
            request += 1;
            let client = u128::from(request % 1024);
            let now = At::from_nanos(request);
            assert_eq!(window.lookup(client, request, now), Lookup::Fresh);
            window.mark_in_flight(client, request, now).unwrap();
            window
                .complete(client, request, reply.clone(), now)
                .unwrap();
        }
    });
    let hit = ns_per_op(budget, 1, || {
        black_box(window.lookup(u128::from(request % 1024), request, At::from_nanos(request)));
    });
    println!("dedup window (1024 clients, 64 entries each)");
    println!(
        "  lookup+mark+complete {dedup:.0} ns ({:.2} M ops/s), cached-reply hit {hit:.0} ns\n",
        1e3 / dedup
    );

    let mut ring = NonceRing::<64>::new();
    let mut n = 0u64;
    let insert = ns_per_op(budget, 1, || {
        n += 1;
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        black_box(ring.insert(Nonce::from_bytes(b), UnixNanos::from_nanos(n)));
    });
    let scan = ns_per_op(budget, 1, || {
        black_box(ring.contains(black_box(&Nonce::from_bytes([0xFF; 32]))));
    });
    let mut store = NonceStore::<u8, 64>::new(256, Duration::from_secs(30));
    let mut t = 0u64;
    let record = ns_per_op(budget, 1, || {
        t += 1;
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&t.to_le_bytes());
        // One second apart, so the oldest of 64 is always stale and evictable.
        let now = UnixNanos::from_nanos(t * 1_000_000_000);
        store
            .record((t % 4) as u8, Nonce::from_bytes(b), now, now)
            .unwrap();
    });
    println!("nonce ring (64 slots)");
    println!(
        "  insert {insert:.1} ns, miss scan of a full ring {scan:.1} ns, store check+record {record:.1} ns"
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 30 } else { 900 });
    println!(
        "bus-proto bench ({} mode)\n",
        if quick { "quick" } else { "full" }
    );
    framing(budget);
    authenticated(budget);
    crypto_and_state(budget);
}
