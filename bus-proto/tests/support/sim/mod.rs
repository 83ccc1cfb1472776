//! A deterministic cluster simulator: N nodes and M clients in memory, a
//! virtual clock, and a seeded network with chunking, latency, stalls,
//! resets, partitions that heal, node restarts, corruption, stalled
//! applications (a node stops reading its sockets for a while), client
//! crashes and restarts, and an adversary that replays captured handshakes
//! and frames, dials with wrong keys, and floods nodes with silent sockets
//! from a few addresses.
//!
//! Honest clients keep a persistent identity (hazard 18) on a simulated
//! disk: the identity record, whose lease of request numbers is renewed by
//! writes that take virtual time and sometimes fail, and an application
//! outbox of requests reserved but not yet answered. A crashed client comes
//! back from its disk, raises the record, and resubmits its outbox; the
//! checks are that no logical operation runs twice on a node incarnation,
//! that no number is issued twice under one id, and that every reply
//! answers the operation sent under its number.
//!
//! Everything random comes from the seed, so a run replays exactly. The
//! checks run as the simulation goes; [`Sim::run`] returns the first
//! broken invariant as an error naming it.
//!
//! Layout: [`network`] carries bytes between hosts (and holds them back);
//! [`nodes`] and [`clients`] are the hosts' slots and the application on
//! them; [`adversary`] attacks the nodes; [`run`] drives the phases and
//! draws the faults; [`checks`] holds the whole-cluster invariants (the
//! per-event ones sit with the handler that sees the event); [`bodies`]
//! makes every payload checkable by its receiver.
#![allow(dead_code, unreachable_pub)]

mod adversary;
mod bodies;
mod checks;
mod clients;
mod network;
mod nodes;
mod run;

use bus_proto::config::{Config, ValidConfig};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::node::ConnectionId;
use bus_proto::time::{Instant, Now, UnixNanos};
use bytes::Bytes;
use clients::ClientSlot;
use network::{End, Socket};
use nodes::NodeSlot;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

pub const CLUSTER: u128 = 0x51_u128;
const WALL_BASE: u64 = 1_767_225_600_000_000_000;
const MS: u64 = 1_000_000;

/// A simulation's shape; everything else comes from the seed.
#[derive(Clone, Debug)]
pub struct Shape {
    pub nodes: u8,
    pub clients: usize,
    /// Virtual time with faults, then the same again healed.
    pub fault_time: Duration,
    /// Bound on reconnecting everything once faults heal.
    pub heal_bound: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            nodes: 3,
            clients: 3,
            fault_time: Duration::from_secs(20),
            heal_bound: Duration::from_secs(15),
        }
    }
}

/// Figures of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub virtual_time: Duration,
    pub steps: u64,
    pub messages_delivered: u64,
    pub requests_executed: u64,
    pub replies_received: u64,
    pub dedup_hits: u64,
    pub duplicates_dropped: u64,
    pub stale: u64,
    pub resent: u64,
    pub resets: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub corruptions: u64,
    pub impostor_dials: u64,
    pub handshake_replays: u64,
    pub frame_replays: u64,
    /// Slow-application stalls: a node stopped reading its sockets.
    pub stalls: u64,
    /// Silent sockets the adversary opened into nodes.
    pub silent_sockets: u64,
    /// Unauthenticated connections the nodes evicted for newer ones.
    pub unauthenticated_evicted: u64,
    /// Honest clients crashed and restarted from their disk.
    pub client_restarts: u64,
    /// Outbox entries resubmitted by a restarted client.
    pub outbox_resends: u64,
    /// Outbox entries a restarted client's `submit` refused as `TooOld`:
    /// dropped with an unknown outcome.
    pub resends_too_old: u64,
    /// Lease renewals stored (`lease_extended`).
    pub lease_renewals: u64,
    /// Lease renewal writes that failed (`lease_failed`).
    pub renewal_failures: u64,
    /// Crashes with a renewal write in flight.
    pub crashes_during_renewal: u64,
    /// `reserve` refused with `LeaseExhausted`.
    pub lease_exhausted: u64,
    pub authenticated_frames: bool,
}

/// The simulator.
pub struct Sim {
    pub seed: u64,
    shape: Shape,
    config: ValidConfig,
    keys: KeyRing,
    now: Instant,
    rng: SeededEntropy,
    nodes: Vec<NodeSlot>,
    clients: Vec<ClientSlot>,
    sockets: Vec<Option<Socket>>,
    by_end: HashMap<End, usize>,
    partitions: BTreeMap<(u8, u8), Instant>,
    /// Per receiver connection: the last message number seen per sender.
    last_seen: HashMap<(u8, ConnectionId), u64>,
    /// Adversary connections: (node, id). None may ever be established.
    adversary: BTreeSet<(u8, ConnectionId)>,
    captured: VecDeque<(u8, Vec<Vec<u8>>)>,
    corrupt_per_mille: u64,
    faults_on: bool,
    /// The next source port for an accepted socket's remote address.
    next_port: u16,
    /// Every request number issued per client id, across its processes,
    /// with the body recorded under it.
    issued: BTreeMap<u128, BTreeMap<u64, Bytes>>,
    /// Client stats of crashed processes (resends).
    resent_by_crashed: u64,
    pub report: Report,
}

impl Sim {
    pub fn new(seed: u64, shape: Shape) -> Sim {
        let mut rng = SeededEntropy::new(seed);
        let authenticated = rng.next_u64().is_multiple_of(2);
        let config = {
            let mut tuned = Config::default();
            tuned.heartbeat_interval = Duration::from_millis(100);
            tuned.liveness_timeout = Duration::from_millis(600);
            tuned.handshake_timeout = Duration::from_millis(500);
            tuned.close_grace = Duration::from_millis(200);
            tuned.reconnect_min = Duration::from_millis(20);
            tuned.reconnect_max = Duration::from_millis(1000);
            tuned.request_timeout = Duration::from_secs(5);
            tuned.hello_timeout = Duration::from_millis(500);
            tuned.max_handshakes_in_flight = 8;
            tuned.max_unauthenticated_per_address = 4;
            tuned.max_connections = 64;
            tuned.send_queue_frames = 256;
            tuned.max_batch = 16;
            tuned.client_max_outstanding = 8;
            tuned.dedup_entries_per_client = 16;
            // The dedup window never ends a session during a run, so a
            // node incarnation runs each request number at most once and
            // the per-operation check below holds without exceptions:
            // sessions are never evicted at the caps (far more sessions
            // and bytes than the few clients use: no `Evicted`, no
            // `RequestFailure::Unknown`), and the TTL is far longer than a
            // run (40 s of virtual time). `request_timeout` (5 s) is below
            // it, as `validate` requires.
            tuned.dedup_max_clients = 64;
            tuned.dedup_max_cached_bytes = 64 << 20;
            tuned.dedup_ttl = Duration::from_secs(300);
            tuned.authenticated_frames = authenticated;
            tuned
        }
        .validate()
        .expect("simulation config is valid");
        let keys = KeyRing::new(Key::from_bytes([0x5A; 32]));
        let corrupt_per_mille = rng.next_u64() % 3;
        let mut sim = Sim {
            seed,
            config,
            keys,
            now: Instant::ZERO,
            rng,
            nodes: Vec::new(),
            clients: Vec::new(),
            sockets: Vec::new(),
            by_end: HashMap::new(),
            partitions: BTreeMap::new(),
            last_seen: HashMap::new(),
            adversary: BTreeSet::new(),
            captured: VecDeque::new(),
            corrupt_per_mille,
            faults_on: true,
            next_port: 40_000,
            issued: BTreeMap::new(),
            resent_by_crashed: 0,
            report: Report {
                authenticated_frames: authenticated,
                ..Report::default()
            },
            shape,
        };
        for i in 0..sim.shape.nodes {
            let skew = (sim.rand(10_001) as i64 - 5_000) * MS as i64;
            sim.nodes.push(NodeSlot {
                node: None,
                incarnation: 0,
                down_until: None,
                executed: BTreeMap::new(),
                ops: BTreeMap::new(),
                delayed: Vec::new(),
                sent: vec![0; usize::from(sim.shape.nodes)],
                skew,
                stall: None,
            });
            sim.start_node(i);
        }
        for j in 0..sim.shape.clients {
            let target = u8::try_from(j % usize::from(sim.shape.nodes)).unwrap_or(0);
            let id = 0xC0DE_0000 + j as u128;
            // Small blocks, so renewals and exhausted leases happen.
            let block = 8 + sim.rand(57);
            sim.clients.push(ClientSlot::new(id, target, block, false));
            if let Err(e) = sim.boot_client(j) {
                panic!("seed {seed}: {e}");
            }
        }
        sim
    }

    fn rand(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    /// A uniform index below `n`.
    fn pick(&mut self, n: usize) -> usize {
        usize::try_from(self.rand(n as u64)).unwrap_or(0)
    }

    fn pick_node(&mut self) -> u8 {
        u8::try_from(self.rand(u64::from(self.shape.nodes))).unwrap_or(0)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rand(1000) < per_mille
    }

    fn now_for(&self, skew: i64) -> Now {
        Now {
            mono: self.now,
            wall: UnixNanos::from_nanos(
                WALL_BASE
                    .saturating_add(self.now.as_nanos())
                    .saturating_add_signed(skew),
            ),
        }
    }

    fn node_now(&self, i: u8) -> Now {
        self.now_for(self.nodes[usize::from(i)].skew)
    }
}
