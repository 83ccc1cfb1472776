//! Node-level figures: the cost of routing a message through two nodes
//! compared with two bare connections, the cost of answering a retried
//! request from the dedup cache compared with running it, and how fast the
//! deterministic simulator runs a 5-node cluster.
//!
//! `cargo run --release -p bus-proto --example bench_node`

#[path = "../tests/support/sim/mod.rs"]
mod sim;

use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{Connection, DialParams};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, ConnectionId, Node, NodeEvent, NodeParams};
use bus_proto::time::{Instant, Now, UnixNanos};
use bus_proto::wire::{Kind, RequestHeader};
use bytes::Bytes;
use std::hint::black_box;
use std::time::{Duration, Instant as Clock};

const CLUSTER: u128 = 0xC1;

fn now() -> Now {
    Now {
        mono: Instant::from_nanos(1),
        wall: UnixNanos::from_nanos(1_767_225_600_000_000_000),
    }
}

fn config() -> ValidConfig {
    {
        let mut tuned = Config::default();
        tuned.send_queue_frames = 4096;
        tuned.max_batch = 64;
        tuned
    }
    .validate()
    .expect("valid")
}

fn keys() -> KeyRing {
    KeyRing::new(Key::from_bytes([7; 32]))
}

fn node(i: u8, entropy: u64) -> Node {
    Node::new(
        now(),
        &config(),
        NodeParams {
            cluster: CLUSTER,
            replica: i,
            replica_count: 2,
            accept_clients: true,
        },
        keys(),
        Box::new(SeededEntropy::new(entropy)),
    )
    .expect("valid")
}

/// Moves every transmit of `from` into `to` over the one socket pair.
fn carry(from: &mut Node, to: &mut Node, to_id: ConnectionId) -> usize {
    let mut n = 0;
    while let Some((_, t)) = from.poll_transmit(now()) {
        for s in t.segments() {
            let _ = to.handle_input(now(), to_id, s);
        }
        n += 1;
    }
    n
}

/// Two connected nodes and the ids of their ends of the one socket.
fn node_pair() -> (Node, Node, ConnectionId, ConnectionId) {
    let (mut a, mut b) = (node(0, 1), node(1, 2));
    a.handle_timeout(now());
    let Some(Action::Connect {
        connection: a_id, ..
    }) = a.poll_action()
    else {
        panic!("node 0 dials node 1")
    };
    let b_id = b.accept(now(), Binding::NONE).expect("accepted");
    a.connected(now(), a_id, Binding::NONE).expect("connected");
    for _ in 0..4 {
        carry(&mut a, &mut b, b_id);
        carry(&mut b, &mut a, a_id);
    }
    while a.poll_event().is_some() || b.poll_event().is_some() {}
    assert!(a.is_connected(1) && b.is_connected(0));
    (a, b, a_id, b_id)
}

/// ns per 64-byte message: node 0 routes to replica 1, node 1 delivers.
fn node_route(count: usize) -> f64 {
    let (mut a, mut b, _, b_id) = node_pair();
    let body = Bytes::from(vec![1u8; 64]);
    let start = Clock::now();
    let mut delivered = 0;
    for _ in 0..count / 64 {
        for _ in 0..64 {
            a.send(1, 1, body.clone()).expect("room");
        }
        carry(&mut a, &mut b, b_id);
        while let Some(e) = b.poll_event() {
            if let NodeEvent::Message { body, .. } = e {
                black_box(body);
                delivered += 1;
            }
        }
    }
    assert_eq!(delivered, count / 64 * 64);
    start.elapsed().as_nanos() as f64 / delivered as f64
}

/// ns per 64-byte message through two bare connections, same batching.
fn connection_route(count: usize) -> f64 {
    let cfg = config();
    let mut entropy = SeededEntropy::new(3);
    let mut gate = bus_proto::handshake::Gate::new(
        &cfg,
        bus_proto::handshake::GateParams {
            cluster: CLUSTER,
            local: 1,
            replica_count: 2,
            accept_clients: false,
        },
        keys(),
    );
    let k = keys();
    let mut d = Connection::dial(
        now().mono,
        now().wall,
        &cfg,
        DialParams {
            cluster: CLUSTER,
            local: PeerId::Replica(0),
            acceptor: 1,
            keys: &k,
            binding: Binding::NONE,
        },
        &mut entropy,
    )
    .expect("dial");
    let mut acc = Connection::accept(now().mono, &cfg, Binding::NONE);
    for _ in 0..4 {
        while let Some(t) = d.poll_transmit(now().mono) {
            for s in t.segments() {
                acc.handle_input(now().mono, s);
            }
        }
        if let Some(h) = acc.take_hello() {
            let adm = gate.admit(now().wall, h, &mut entropy);
            acc.admit(now().mono, adm);
        }
        while let Some(t) = acc.poll_transmit(now().mono) {
            for s in t.segments() {
                d.handle_input(now().mono, s);
            }
        }
    }
    while d.poll_event().is_some() || acc.poll_event().is_some() {}
    let body = Bytes::from(vec![1u8; 64]);
    let start = Clock::now();
    let mut delivered = 0;
    for _ in 0..count / 64 {
        for _ in 0..64 {
            d.send(Kind::Message { operation: 1 }, body.clone())
                .expect("room");
        }
        while let Some(t) = d.poll_transmit(now().mono) {
            for s in t.segments() {
                acc.handle_input(now().mono, s);
            }
        }
        while let Some(e) = acc.poll_event() {
            black_box(e);
            delivered += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / delivered as f64
}

/// ns per request at the node: `(fresh, cache hit)`. Fresh requests reach
/// the application, which replies; retries of a completed request are
/// answered from the dedup cache.
fn dedup(count: usize) -> (f64, f64) {
    let cfg = config();
    let mut n = node(1, 4);
    let k = keys();
    let mut entropy = SeededEntropy::new(5);
    let mut client = Connection::dial(
        now().mono,
        now().wall,
        &cfg,
        DialParams {
            cluster: CLUSTER,
            local: PeerId::Client(42),
            acceptor: 1,
            keys: &k,
            binding: Binding::NONE,
        },
        &mut entropy,
    )
    .expect("dial");
    let id = n.accept(now(), Binding::NONE).expect("accept");
    let pump = |client: &mut Connection, n: &mut Node| {
        while let Some(t) = client.poll_transmit(now().mono) {
            for s in t.segments() {
                let _ = n.handle_input(now(), id, s);
            }
        }
        while let Some((_, t)) = n.poll_transmit(now()) {
            for s in t.segments() {
                client.handle_input(now().mono, s);
            }
        }
        while client.poll_event().is_some() {}
    };
    for _ in 0..3 {
        pump(&mut client, &mut n);
    }
    let reply = Bytes::from(vec![2u8; 64]);
    let body = Bytes::from(vec![3u8; 64]);
    let request = |i: u64| RequestHeader {
        client: 42,
        request: i,
        operation: 1,
    };
    // Fresh: the application sees each request and replies.
    let batches = (count / 32) as u64;
    let start = Clock::now();
    for b in 0..batches {
        for i in 0..32 {
            client
                .send(Kind::Request(request(b * 32 + i)), body.clone())
                .expect("room");
        }
        pump(&mut client, &mut n);
        while let Some(e) = n.poll_event() {
            if let NodeEvent::Request { request, .. } = e {
                n.reply(now(), request, reply.clone()).expect("reply");
            }
        }
        pump(&mut client, &mut n);
    }
    let fresh = start.elapsed().as_nanos() as f64 / (batches * 32) as f64;
    // Retries of the last 32 completed requests (still in the window).
    let hits_before = n.stats().dedup_hits;
    let last = batches * 32 - 32;
    let start = Clock::now();
    for _ in 0..batches {
        for i in 0..32 {
            client
                .send(Kind::Request(request(last + i)), body.clone())
                .expect("room");
        }
        pump(&mut client, &mut n);
        while let Some(e) = n.poll_event() {
            black_box(e);
        }
    }
    let hit = start.elapsed().as_nanos() as f64 / (batches * 32) as f64;
    assert_eq!(n.stats().dedup_hits - hits_before, batches * 32);
    (fresh, hit)
}

fn simulated(seeds: u64) -> (f64, Duration) {
    let shape = sim::Shape {
        nodes: 5,
        clients: 5,
        ..sim::Shape::default()
    };
    let start = Clock::now();
    let mut virtual_time = Duration::ZERO;
    for seed in 0..seeds {
        let report = sim::Sim::new(seed, shape.clone())
            .run()
            .expect("simulation passes");
        virtual_time += report.virtual_time;
    }
    let wall = start.elapsed();
    (virtual_time.as_secs_f64() / wall.as_secs_f64(), wall)
}

fn main() {
    let count = 200_000;
    let _ = node_route(count / 10); // warm up
    let node_ns = node_route(count);
    let conn_ns = connection_route(count);
    println!(
        "routing a 64 B message, send to delivery, both ends on one core:\n  \
         through two nodes {node_ns:.0} ns, through two bare connections {conn_ns:.0} ns: \
         node overhead {:.0} ns ({:.2}x)",
        node_ns - conn_ns,
        node_ns / conn_ns
    );
    let (fresh, hit) = dedup(count / 2);
    println!(
        "client request at the node, request to reply on the wire (64 B):\n  \
         fresh (application runs it and replies) {fresh:.0} ns, \
         retry answered from the dedup cache {hit:.0} ns ({:.2}x)",
        hit / fresh
    );
    let (ratio, wall) = simulated(20);
    println!(
        "simulator, 5 nodes + 5 clients with faults, 20 seeds in {wall:.2?}: \
         {ratio:.0} virtual seconds per wall second"
    );
}
