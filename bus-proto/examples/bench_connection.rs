//! Connection-level figures: handshake cost per side, handshakes per second,
//! memory per idle connection, frames per second through an in-memory pair,
//! and authenticated frames vs checksums.
//!
//! `cargo run --release -p bus-proto --example bench_connection`

use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{Connection, DialParams, Event};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::{Binding, Gate, GateParams};
use bus_proto::time::{Instant, UnixNanos};
use bus_proto::wire::Kind;
use bytes::Bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant as Clock};

/// Counts live heap bytes, to measure what an idle connection holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's
// arguments unchanged; the counter is only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLUSTER: u128 = 0xC1;

struct Bench {
    config: ValidConfig,
    keys: KeyRing,
    gate: Gate,
    entropy: SeededEntropy,
    wall: u64,
}

impl Bench {
    fn new(config: ValidConfig) -> Self {
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        Bench {
            gate: Gate::new(
                &config,
                GateParams {
                    cluster: CLUSTER,
                    local: 1,
                    replica_count: 3,
                    accept_clients: true,
                },
                keys.clone(),
            ),
            config,
            keys,
            entropy: SeededEntropy::new(1),
            wall: 1_767_225_600_000_000_000,
        }
    }

    /// One handshake; returns the two connections and the time each side
    /// spent in the state machine.
    fn handshake(&mut self) -> (Connection, Connection, Duration, Duration) {
        // Step the wall clock past the freshness window so the bench's one
        // dialer never fills its nonce ring.
        self.wall += 31_000_000_000;
        let wall = UnixNanos::from_nanos(self.wall);
        let now = Instant::ZERO;
        let mut d_time = Duration::ZERO;
        let mut a_time = Duration::ZERO;
        let mut buf = Vec::with_capacity(512);

        let t = Clock::now();
        let params = DialParams {
            cluster: CLUSTER,
            local: PeerId::Replica(0),
            acceptor: 1,
            keys: &self.keys,
            binding: Binding::NONE,
        };
        let mut dialer =
            Connection::dial(now, wall, &self.config, params, &mut self.entropy).unwrap();
        drain(&mut dialer, now, &mut buf);
        d_time += t.elapsed();

        let t = Clock::now();
        let mut acceptor = Connection::accept(now, &self.config, Binding::NONE);
        acceptor.handle_input(now, &buf);
        let hello = acceptor.take_hello().unwrap();
        let admission = self.gate.admit(wall, hello, &mut self.entropy);
        acceptor.admit(now, admission);
        drain(&mut acceptor, now, &mut buf);
        a_time += t.elapsed();

        let t = Clock::now();
        dialer.handle_input(now, &buf);
        drain(&mut dialer, now, &mut buf);
        assert!(matches!(
            dialer.poll_event(),
            Some(Event::Established { .. })
        ));
        d_time += t.elapsed();

        let t = Clock::now();
        acceptor.handle_input(now, &buf);
        assert!(matches!(
            acceptor.poll_event(),
            Some(Event::Established { .. })
        ));
        a_time += t.elapsed();
        (dialer, acceptor, d_time, a_time)
    }
}

fn drain(conn: &mut Connection, now: Instant, out: &mut Vec<u8>) {
    out.clear();
    while let Some(t) = conn.poll_transmit(now) {
        t.write_to(out);
    }
}

fn config(authenticated_frames: bool) -> ValidConfig {
    {
        let mut tuned = Config::default();
        tuned.authenticated_frames = authenticated_frames;
        tuned.send_queue_frames = 4096;
        tuned
    }
    .validate()
    .unwrap()
}

/// ns per frame sending `count` frames of `body` bytes from dialer to acceptor.
fn throughput(authenticated: bool, body: usize, count: usize) -> f64 {
    let mut bench = Bench::new(config(authenticated));
    let (mut dialer, mut acceptor, ..) = bench.handshake();
    let payload = Bytes::from(vec![0xA5; body]);
    let now = Instant::ZERO;
    let mut received = 0;
    let start = Clock::now();
    while received < count {
        for _ in 0..1024 {
            if dialer
                .send(Kind::Message { operation: 1 }, payload.clone())
                .is_err()
            {
                break;
            }
        }
        while let Some(t) = dialer.poll_transmit(now) {
            for segment in t.segments() {
                acceptor.handle_input(now, segment);
            }
        }
        while let Some(event) = acceptor.poll_event() {
            if let Event::Message(frame) = event {
                black_box(&frame);
                received += 1;
            }
        }
    }
    start.elapsed().as_nanos() as f64 / received as f64
}

fn main() {
    // Handshake CPU per side.
    let mut bench = Bench::new(config(false));
    for _ in 0..200 {
        bench.handshake();
    }
    let n = 5_000;
    let (mut d, mut a) = (Duration::ZERO, Duration::ZERO);
    let start = Clock::now();
    for _ in 0..n {
        let (_, _, dt, at) = bench.handshake();
        d += dt;
        a += at;
    }
    let total = start.elapsed();
    println!("handshake (in memory, {n} runs)");
    println!(
        "  dialer CPU   {:>7.2} us  (dial, hello, verify welcome, confirm)",
        d.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "  acceptor CPU {:>7.2} us  (accept, gate checks + MAC, welcome, verify confirm)",
        a.as_secs_f64() * 1e6 / n as f64
    );
    println!(
        "  handshakes/s {:>7.0}     (both sides on one core)",
        n as f64 / total.as_secs_f64()
    );

    // Memory held by idle established connections.
    let pairs = 1000;
    let before = LIVE.load(Ordering::Relaxed);
    let mut held = Vec::with_capacity(pairs);
    let vec_cost = LIVE.load(Ordering::Relaxed) - before;
    for _ in 0..pairs {
        let (dialer, acceptor, ..) = bench.handshake();
        held.push((dialer, acceptor));
    }
    let heap = LIVE.load(Ordering::Relaxed) - before - vec_cost;
    let inline = std::mem::size_of::<Connection>();
    let per_conn = heap as f64 / (2 * pairs) as f64;
    println!("idle established connection");
    println!(
        "  {:.0} bytes each: {inline} inline + {:.0} heap (receive buffer, queues; gate state excluded)",
        inline as f64 + per_conn,
        per_conn
    );
    drop(held);

    println!("in-memory pair throughput (encode, batch, decode, verify, deliver)");
    println!("  body     checksum           authenticated      auth/checksum");
    for (body, count) in [(64usize, 400_000usize), (4096, 100_000)] {
        let _ = throughput(false, body, count / 10);
        let c = throughput(false, body, count);
        let t = throughput(true, body, count);
        println!(
            "  {:<6} {:>6.0} ns  {:>5.2} M/s  {:>6.0} ns  {:>5.2} M/s  {:>5.2}x",
            if body == 64 { "64 B" } else { "4 KiB" },
            c,
            1e3 / c,
            t,
            1e3 / t,
            t / c
        );
    }
}
