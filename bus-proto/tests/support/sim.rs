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
#![allow(dead_code, unreachable_pub)]

use bus_proto::client::identity::IdentityRecord;
use bus_proto::client::{
    Client, ClientEvent, ClientParams, RequestError, RequestFailure, Reservation,
};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{CloseCause, Deadline};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, ConnectionId, Node, NodeEvent, NodeParams, ReplyError};
use bus_proto::time::{Instant, Now, UnixNanos};
use bus_proto::wire::RequestHeader;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub const CLUSTER: u128 = 0x51_u128;
const WALL_BASE: u64 = 1_767_225_600_000_000_000;
const MS: u64 = 1_000_000;
/// Client ids of impostors (wrong key) start here.
const IMPOSTOR_BASE: u128 = 0xBAD << 100;
/// The adversary's first address (10.0.0.66); a burst may use a few more.
const ADVERSARY_HOST: u8 = 66;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Host {
    Node(u8),
    Client(usize),
    /// The adversary's raw sockets into a node.
    Adversary,
}

type End = (Host, ConnectionId);

struct Pipe {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    last: Instant,
    /// The writer closed: EOF follows the last chunk.
    eof: bool,
}

struct Socket {
    ends: [End; 2],
    pipes: [Pipe; 2],
    /// The first transmits of the dialer (hello, confirm, first data), for
    /// the adversary.
    captured: Vec<Vec<u8>>,
}

struct NodeSlot {
    node: Option<Node>,
    incarnation: u32,
    down_until: Option<Instant>,
    /// Requests executed by this incarnation: (client, request) -> count.
    executed: BTreeMap<(u128, u64), u32>,
    /// Logical operations executed by this incarnation: body -> count.
    ops: BTreeMap<Bytes, u32>,
    /// Replies held back to make retries meet requests in flight, with the
    /// request's body.
    delayed: Vec<(Instant, RequestHeader, Bytes)>,
    /// Next message number per destination.
    sent: Vec<u64>,
    skew: i64,
    /// The application is stalled: the node's sockets are not read.
    stall: Option<Stall>,
}

/// A slow application: until `until` the host reads none of the node's
/// sockets (bytes wait in the pipes) and every connection is paused.
struct Stall {
    started: Instant,
    until: Instant,
    /// Connections paused with `set_reading_paused(.., true)`.
    paused: BTreeSet<ConnectionId>,
}

struct ClientSlot {
    /// The running process; `None` while crashed.
    client: Option<Client>,
    id: u128,
    target: u8,
    /// Outstanding request numbers of the running process: the outbox's.
    waiting: BTreeSet<u64>,
    completed: u64,
    failures: BTreeMap<u64, RequestFailure>,
    impostor: bool,
    /// What survives a crash.
    disk: Disk,
    /// The lease block of this client's identity.
    block: u64,
    /// A lease renewal write under way.
    write: Option<LeaseWrite>,
    /// A renewal write failed: `poll_lease` asks again at this time.
    lease_retry: Option<Instant>,
    /// Crashed until then.
    down_until: Option<Instant>,
}

/// A client's durable state. Writes to it are durable when they complete
/// (the simulated writes are atomic, like a rename).
struct Disk {
    /// The persisted identity record.
    record: IdentityRecord,
    /// The application's outbox: request number -> what was sent under it.
    outbox: BTreeMap<u64, Outgoing>,
    /// The next logical operation's number.
    next_op: u64,
}

/// An outbox entry: recorded after `reserve`, before `submit`.
struct Outgoing {
    reservation: Reservation,
    operation: u32,
    body: Bytes,
}

/// A lease renewal being written to the disk.
struct LeaseWrite {
    mark: u64,
    done_at: Instant,
    fails: bool,
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

fn body_for(from: u8, to: u8, k: u64, len: usize) -> Bytes {
    let mut b = format!("{from}>{to}#{k}:").into_bytes();
    let mut x = (u64::from(from) << 56) ^ (u64::from(to) << 48) ^ k;
    while b.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        b.push((x >> 56) as u8);
    }
    Bytes::from(b)
}

fn parse_message(body: &[u8]) -> Option<(u8, u8, u64, usize)> {
    let colon = body.iter().position(|&c| c == b':')?;
    let head = std::str::from_utf8(&body[..colon]).ok()?;
    let (from, rest) = head.split_once('>')?;
    let (to, k) = rest.split_once('#')?;
    Some((
        from.parse().ok()?,
        to.parse().ok()?,
        k.parse().ok()?,
        body.len(),
    ))
}

/// The node's reply: names the client, the number and the operation.
fn reply_for(client: u128, request: u64, body: &[u8]) -> Bytes {
    let mut reply = format!("reply {client:x}/{request} to ").into_bytes();
    reply.extend_from_slice(body);
    Bytes::from(reply)
}

/// The body of client slot `j`'s `k`th logical operation.
fn op_body(j: usize, k: u64) -> Bytes {
    Bytes::from(format!("op {j}/{k}"))
}

/// Parses [`op_body`].
fn parse_op(body: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let (j, k) = text.strip_prefix("op ")?.split_once('/')?;
    Some((j.parse().ok()?, k.parse().ok()?))
}

impl ClientSlot {
    /// A client that has never run: a new identity, an empty outbox.
    fn new(id: u128, target: u8, block: u64, impostor: bool) -> ClientSlot {
        ClientSlot {
            client: None,
            id,
            target,
            waiting: BTreeSet::new(),
            completed: 0,
            failures: BTreeMap::new(),
            impostor,
            disk: Disk {
                record: IdentityRecord::new(id),
                outbox: BTreeMap::new(),
                next_op: 0,
            },
            block,
            write: None,
            lease_retry: None,
            down_until: None,
        }
    }
}

impl Sim {
    pub fn new(seed: u64, shape: Shape) -> Sim {
        let mut rng = SeededEntropy::new(seed);
        let authenticated = rng.next_u64().is_multiple_of(2);
        let config = Config {
            heartbeat_interval: Duration::from_millis(100),
            liveness_timeout: Duration::from_millis(600),
            handshake_timeout: Duration::from_millis(500),
            close_grace: Duration::from_millis(200),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(1000),
            request_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_millis(500),
            max_handshakes_in_flight: 8,
            max_unauthenticated_per_address: 4,
            max_connections: 64,
            send_queue_frames: 256,
            max_batch: 16,
            client_max_outstanding: 8,
            dedup_entries_per_client: 16,
            // The dedup window never ends a session during a run, so a
            // node incarnation runs each request number at most once and
            // the per-operation check below holds without exceptions:
            // sessions are never evicted at the caps (far more sessions
            // and bytes than the few clients use: no `Evicted`, no
            // `RequestFailure::Unknown`), and the TTL is far longer than a
            // run (40 s of virtual time). `request_timeout` (5 s) is below
            // it, as `validate` requires.
            dedup_max_clients: 64,
            dedup_max_cached_bytes: 64 << 20,
            dedup_ttl: Duration::from_secs(300),
            authenticated_frames: authenticated,
            ..Config::default()
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

    fn new_client(&mut self, id: u128, target: u8, keys: KeyRing) -> Client {
        let seed = self.rng.next_u64();
        Client::new(
            self.now_for(0),
            &self.config,
            ClientParams {
                cluster: CLUSTER,
                id,
                target,
            },
            keys,
            Box::new(SeededEntropy::new(seed)),
        )
    }

    fn start_node(&mut self, i: u8) {
        let seed = self.rng.next_u64();
        let now = self.node_now(i);
        let node = Node::new(
            now,
            &self.config,
            NodeParams {
                cluster: CLUSTER,
                replica: i,
                replica_count: self.shape.nodes,
                accept_clients: true,
            },
            self.keys.clone(),
            Box::new(SeededEntropy::new(seed)),
        )
        .expect("valid node params");
        let slot = &mut self.nodes[usize::from(i)];
        slot.node = Some(node);
        slot.incarnation += 1;
        slot.executed.clear();
        slot.ops.clear();
        slot.delayed.clear();
        slot.down_until = None;
        slot.stall = None;
    }

    fn collect_stats(&mut self, i: u8) {
        if let Some(node) = &self.nodes[usize::from(i)].node {
            let s = node.stats();
            self.report.dedup_hits += s.dedup_hits;
            self.report.duplicates_dropped += s.duplicates_dropped;
            self.report.stale += s.stale;
            self.report.unauthenticated_evicted += s.unauthenticated_evicted;
        }
    }

    fn crash_node(&mut self, i: u8, downtime: Duration) {
        self.report.restarts += 1;
        self.collect_stats(i);
        self.nodes[usize::from(i)].node = None;
        self.nodes[usize::from(i)].stall = None;
        self.nodes[usize::from(i)].down_until = Some(self.now.saturating_add(downtime));
        let mut mine: Vec<usize> = self
            .by_end
            .iter()
            .filter(|((h, _), _)| *h == Host::Node(i))
            .map(|(_, &s)| s)
            .collect();
        // In socket order, not the hash map's, so a seed replays exactly.
        mine.sort_unstable();
        for s in mine {
            self.reset_socket(s);
        }
        self.adversary.retain(|(n, _)| *n != i);
        self.last_seen.retain(|(n, _), _| *n != i);
    }

    /// Kills a socket: both ends see EOF now, bytes in flight are lost.
    fn reset_socket(&mut self, s: usize) {
        let Some(socket) = self.sockets[s].take() else {
            return;
        };
        for end in socket.ends {
            self.by_end.remove(&end);
            self.eof(end);
        }
    }

    fn eof(&mut self, (host, id): End) {
        let now = self.now;
        match host {
            Host::Node(i) => {
                let at = self.node_now(i);
                if let Some(node) = self.nodes[usize::from(i)].node.as_mut() {
                    node.handle_eof(at, id);
                }
            }
            Host::Client(j) => {
                let at = self.now_for(0);
                if let Some(client) = self.clients[j].client.as_mut() {
                    client.handle_eof(at, id);
                }
            }
            Host::Adversary => {}
        }
        let _ = now;
    }

    fn open_socket(&mut self, dialer: End, acceptor: End) -> usize {
        let pipe = || Pipe {
            chunks: VecDeque::new(),
            last: Instant::ZERO,
            eof: false,
        };
        let socket = Socket {
            ends: [dialer, acceptor],
            pipes: [pipe(), pipe()],
            captured: Vec::new(),
        };
        let s = match self.sockets.iter().position(Option::is_none) {
            Some(s) => {
                self.sockets[s] = Some(socket);
                s
            }
            None => {
                self.sockets.push(Some(socket));
                self.sockets.len() - 1
            }
        };
        self.by_end.insert(dialer, s);
        self.by_end.insert(acceptor, s);
        s
    }

    /// A fresh source port for an accepted socket's remote address.
    fn port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = port.checked_add(1).unwrap_or(40_000);
        port
    }

    /// The remote address a node sees for a socket dialled by an honest
    /// host: one address per host (10.0.1.<host index>: nodes first, then
    /// clients), a fresh port per socket.
    fn remote_of(&mut self, host: Host) -> SocketAddr {
        let index = match host {
            Host::Node(i) => i,
            Host::Client(j) => self
                .shape
                .nodes
                .saturating_add(u8::try_from(j).unwrap_or(u8::MAX)),
            Host::Adversary => return self.adversary_address(0),
        };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, index)), self.port())
    }

    /// The adversary's `k`th address, 10.0.0.(66 + k).
    fn adversary_address(&mut self, k: u8) -> SocketAddr {
        let host = ADVERSARY_HOST.saturating_add(k);
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), self.port())
    }

    /// Whether node `i`'s application is stalled (its sockets are not read).
    fn stalled(&self, i: u8) -> bool {
        self.nodes[usize::from(i)].stall.is_some()
    }

    /// Whether bytes and EOF toward `host` wait in the pipes: a stalled
    /// node reads nothing.
    fn reader_stalled(&self, host: Host) -> bool {
        matches!(host, Host::Node(i) if self.stalled(i))
    }

    /// Connection `id` of node `i` opened: paused at once while the node's
    /// application is stalled.
    fn opened(&mut self, i: u8, id: ConnectionId) {
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        if let (Some(stall), Some(node)) = (slot.stall.as_mut(), slot.node.as_mut()) {
            node.set_reading_paused(at, id, true);
            stall.paused.insert(id);
        }
    }

    /// The slow-application fault: a random live node stops reading its
    /// sockets for 1-3 times `liveness_timeout`; every open connection is
    /// paused, and so is every connection opened meanwhile.
    fn start_stall(&mut self) {
        let candidates: Vec<u8> = (0..self.shape.nodes)
            .filter(|&i| self.nodes[usize::from(i)].node.is_some() && !self.stalled(i))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let i = candidates[self.pick(candidates.len())];
        let per_mille = 1000 + u32::try_from(self.rand(2001)).unwrap_or(0);
        let length = self.config.liveness_timeout.saturating_mul(per_mille) / 1000;
        // Sorted, so the pauses replay in one order.
        let mut ids: Vec<ConnectionId> = self
            .by_end
            .keys()
            .filter(|(host, _)| *host == Host::Node(i))
            .map(|&(_, id)| id)
            .collect();
        ids.extend(
            self.adversary
                .iter()
                .filter(|(n, _)| *n == i)
                .map(|&(_, id)| id),
        );
        ids.sort();
        ids.dedup();
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        let mut paused = BTreeSet::new();
        for id in ids {
            if node.connection(id).is_some_and(|c| !c.is_closed()) {
                node.set_reading_paused(at, id, true);
                paused.insert(id);
            }
        }
        slot.stall = Some(Stall {
            started: self.now,
            until: self.now.saturating_add(length),
            paused,
        });
        self.report.stalls += 1;
    }

    /// Node `i`'s application catches up: every paused connection resumes
    /// (the peer gets a fresh `liveness_timeout`) and the bytes that
    /// waited in the pipes are delivered, in order.
    fn end_stall(&mut self, i: u8) -> Result<(), String> {
        let seed = self.seed;
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        let Some(stall) = slot.stall.take() else {
            return Ok(());
        };
        let Some(node) = slot.node.as_mut() else {
            return Ok(());
        };
        for id in stall.paused {
            if node.connection(id).is_some_and(|c| !c.reading_paused()) {
                return Err(format!(
                    "seed {seed}: node {i} connection {id:?} was no longer paused at the end \
                     of the stall {:?}..{:?}",
                    stall.started, stall.until
                ));
            }
            node.set_reading_paused(at, id, false);
        }
        Ok(())
    }

    /// Stalls due to end at `now` end.
    fn end_due_stalls(&mut self) -> Result<(), String> {
        for i in 0..self.shape.nodes {
            let due = self.nodes[usize::from(i)]
                .stall
                .as_ref()
                .is_some_and(|s| s.until <= self.now);
            if due {
                self.end_stall(i)?;
            }
        }
        Ok(())
    }

    /// The silent-connection adversary: a burst of sockets into one node,
    /// more than its unauthenticated pool holds, from one adversary address
    /// or a few, never written on. The node's bounds hold after every
    /// accept.
    fn silent_burst(&mut self) -> Result<(), String> {
        let i = self.pick_node();
        let Some(node) = self.nodes[usize::from(i)].node.as_ref() else {
            return Ok(());
        };
        // Closed ones can never be established: forget them.
        self.adversary
            .retain(|&(n, id)| n != i || node.connection(id).is_some());
        let cap = self.config.max_handshakes_in_flight;
        let count = cap + 1 + self.pick(2 * cap);
        let addresses = if self.chance(333) {
            2 + self.rand(3)
        } else {
            1
        };
        for k in 0..count {
            let which = u8::try_from(self.rand(addresses)).unwrap_or(0);
            let remote = self.adversary_address(which);
            let at = self.node_now(i);
            let Some(node) = self.nodes[usize::from(i)].node.as_mut() else {
                return Ok(());
            };
            let accepted = node.accept_from(at, Some(remote), Binding::NONE);
            self.report.silent_sockets += 1;
            if let Ok(id) = accepted {
                self.adversary.insert((i, id));
                self.opened(i, id);
            }
            self.check_admission(i).map_err(|e| {
                format!("{e}, after silent socket {k} of a burst of {count} from {remote}")
            })?;
            // Sometimes the host runs the node between accepts.
            if self.chance(500) {
                self.drain_node(i)?;
            }
        }
        Ok(())
    }

    /// The admission bounds, which hold at every instant.
    fn check_admission(&self, i: u8) -> Result<(), String> {
        let Some(node) = self.nodes[usize::from(i)].node.as_ref() else {
            return Ok(());
        };
        let seed = self.seed;
        let now = self.now;
        if node.handshakes_in_flight() > self.config.max_handshakes_in_flight {
            return Err(format!(
                "seed {seed}: node {i} holds {} unauthenticated connections at {now:?}, over \
                 max_handshakes_in_flight {}",
                node.handshakes_in_flight(),
                self.config.max_handshakes_in_flight
            ));
        }
        if node.admitted_clients() > self.config.max_connections {
            return Err(format!(
                "seed {seed}: node {i} counts {} admitted clients at {now:?}, over \
                 max_connections {}",
                node.admitted_clients(),
                self.config.max_connections
            ));
        }
        Ok(())
    }

    fn partitioned(&self, a: Host, b: Host) -> bool {
        let node = |h: Host| match h {
            Host::Node(i) => Some(i),
            _ => None,
        };
        match (node(a), node(b)) {
            (Some(x), Some(y)) => self.partitions.contains_key(&(x.min(y), x.max(y))),
            _ => false,
        }
    }

    /// Writes `bytes` into the pipe from `from` with the seeded faults.
    fn write(&mut self, from: End, bytes: Vec<u8>) {
        let Some(&s) = self.by_end.get(&from) else {
            return;
        };
        let mut bytes = bytes;
        if self.faults_on && self.chance(self.corrupt_per_mille) && !bytes.is_empty() {
            let at = self.pick(bytes.len());
            bytes[at] ^= 1 << self.rand(8);
            self.report.corruptions += 1;
        }
        let latency = Duration::from_micros(50 + self.rand(2_000));
        let stall = if self.faults_on && self.chance(5) {
            Duration::from_millis(self.rand(300))
        } else {
            Duration::ZERO
        };
        let max_chunk = 1 + self.pick(600);
        let now = self.now;
        let Some(socket) = self.sockets[s].as_mut() else {
            return;
        };
        let side = usize::from(socket.ends[1] == from);
        if side == 0 && socket.captured.len() < 3 {
            socket.captured.push(bytes.clone());
        }
        let pipe = &mut socket.pipes[side];
        let mut at = now.saturating_add(latency + stall).max(pipe.last);
        for chunk in bytes.chunks(max_chunk) {
            pipe.chunks.push_back((at, chunk.to_vec()));
            at = at.saturating_add(Duration::from_micros(1));
        }
        pipe.last = at;
    }

    /// The writer closed its socket: EOF after the bytes in flight.
    fn close_end(&mut self, end: End) {
        let Some(&s) = self.by_end.get(&end) else {
            return;
        };
        self.by_end.remove(&end);
        let Some(socket) = self.sockets[s].as_mut() else {
            return;
        };
        let side = usize::from(socket.ends[1] == end);
        socket.pipes[side].eof = true;
        // The closed end reads no more.
        socket.pipes[1 - side].chunks.clear();
        if socket.pipes[1 - side].eof || !self.by_end.contains_key(&socket.ends[1 - side]) {
            let both_done = socket.pipes[side].chunks.is_empty();
            if both_done {
                self.sockets[s] = None;
            }
        }
    }

    /// Delivers every chunk due at `now`; returns whether any moved.
    fn deliver(&mut self) -> bool {
        let mut moved = false;
        for s in 0..self.sockets.len() {
            for side in 0..2 {
                while let Some(socket) = self.sockets[s].as_mut() {
                    let (from, to) = (socket.ends[side], socket.ends[1 - side]);
                    if self.reader_stalled(to.0) {
                        // Not read: bytes and EOF wait, in order.
                        break;
                    }
                    let blocked = self.partitioned(from.0, to.0);
                    let Some(socket) = self.sockets[s].as_mut() else {
                        break;
                    };
                    let pipe = &mut socket.pipes[side];
                    match pipe.chunks.front() {
                        Some((at, _)) if *at <= self.now && !blocked => {
                            let (_, chunk) = pipe.chunks.pop_front().expect("front exists");
                            moved = true;
                            self.input(to, &chunk);
                        }
                        Some((at, _)) if *at <= self.now => {
                            // Held until the partition heals, like TCP retransmits.
                            break;
                        }
                        None if pipe.eof => {
                            pipe.eof = false;
                            moved = true;
                            let reader_open = self.by_end.contains_key(&to);
                            self.by_end.remove(&to);
                            self.sockets[s] = None;
                            if reader_open {
                                self.eof(to);
                            }
                            break;
                        }
                        _ => break,
                    }
                }
            }
        }
        moved
    }

    fn input(&mut self, (host, id): End, bytes: &[u8]) {
        match host {
            Host::Node(i) => {
                let at = self.node_now(i);
                if let Some(node) = self.nodes[usize::from(i)].node.as_mut() {
                    let _ = node.handle_input(at, id, bytes);
                }
            }
            Host::Client(j) => {
                let at = self.now_for(0);
                if let Some(client) = self.clients[j].client.as_mut() {
                    let _ = client.handle_input(at, id, bytes);
                }
            }
            Host::Adversary => {}
        }
    }

    /// Runs the whole simulation: faults, then healing, then the checks.
    pub fn run(&mut self) -> Result<Report, String> {
        let fault_end = Instant::ZERO.saturating_add(self.shape.fault_time);
        let mut next_fault = Instant::from_nanos(200 * MS);
        let mut next_app = Instant::ZERO;
        while self.now < fault_end {
            let now = self.now;
            self.partitions.retain(|_, until| *until > now);
            if self.now >= next_fault {
                self.fault()?;
                next_fault = self
                    .now
                    .saturating_add(Duration::from_millis(50 + self.rand(400)));
            }
            if self.now >= next_app {
                self.app_tick()?;
                next_app = self
                    .now
                    .saturating_add(Duration::from_millis(1 + self.rand(20)));
            }
            self.step()?;
            let heal = self.partitions.values().min().copied().unwrap_or(fault_end);
            self.advance(next_fault.min(next_app).min(fault_end).min(heal));
        }
        self.heal()?;
        let heal_deadline = self.now.saturating_add(self.shape.heal_bound);
        let healed_at = loop {
            if self.all_connected() {
                break self.now;
            }
            if self.now >= heal_deadline {
                return Err(format!(
                    "replicas not all connected {:?} after faults healed: {}",
                    self.shape.heal_bound,
                    self.connectivity()
                ));
            }
            if self.now >= next_app {
                self.app_tick()?;
                next_app = self.now.saturating_add(Duration::from_millis(5));
            }
            self.step()?;
            self.advance(next_app.min(heal_deadline));
        };
        // Every honest client completes a fresh request. One whose lease
        // is exhausted (its renewal still being written) or whose
        // outstanding requests fill its window issues it once it can.
        let before: Vec<u64> = self.clients.iter().map(|c| c.completed).collect();
        let mut fresh: Vec<Option<u64>> = vec![None; self.clients.len()];
        let reply_deadline = self.now.saturating_add(self.shape.heal_bound);
        loop {
            let mut unissued = false;
            for (j, slot) in fresh.iter_mut().enumerate() {
                if self.clients[j].impostor || slot.is_some() {
                    continue;
                }
                *slot = self.issue(j, 7)?;
                unissued |= slot.is_none();
            }
            let done = self
                .clients
                .iter()
                .zip(&fresh)
                .all(|(c, n)| c.impostor || n.is_some_and(|n| !c.waiting.contains(&n)));
            if done {
                break;
            }
            if self.now >= reply_deadline {
                return Err(format!(
                    "clients did not complete a request within {:?} of healing at {healed_at:?} \
                     (fresh requests {fresh:?})",
                    self.shape.heal_bound
                ));
            }
            self.step()?;
            let limit = if unissued {
                self.now.saturating_add(Duration::from_millis(5))
            } else {
                reply_deadline
            };
            self.advance(limit.min(reply_deadline));
        }
        for (j, (c, n)) in self.clients.iter().zip(&fresh).enumerate() {
            if let Some(n) = n
                && c.completed <= before[j]
            {
                return Err(format!(
                    "client {j} request {n} failed after healing: {:?}",
                    c.failures.get(n)
                ));
            }
        }
        self.check_bounds()?;
        for i in 0..self.shape.nodes {
            self.collect_stats(i);
        }
        self.report.resent = self.resent_by_crashed
            + self
                .clients
                .iter()
                .filter_map(|c| c.client.as_ref())
                .map(|c| c.stats().resent)
                .sum::<u64>();
        self.report.virtual_time = self.now.saturating_duration_since(Instant::ZERO);
        Ok(self.report.clone())
    }

    fn heal(&mut self) -> Result<(), String> {
        self.faults_on = false;
        self.partitions.clear();
        for i in 0..self.shape.nodes {
            self.end_stall(i)?;
            if self.nodes[usize::from(i)].node.is_none() {
                self.start_node(i);
            }
        }
        for j in 0..self.clients.len() {
            if self.clients[j].down_until.is_some() {
                self.boot_client(j)?;
            }
        }
        Ok(())
    }

    fn all_connected(&self) -> bool {
        self.nodes.iter().enumerate().all(|(i, slot)| {
            slot.node.as_ref().is_some_and(|node| {
                (0..self.shape.nodes)
                    .filter(|&r| usize::from(r) != i)
                    .all(|r| node.is_connected(r))
            })
        })
    }

    fn connectivity(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, slot)| match &slot.node {
                None => format!("{i}: down"),
                Some(node) => format!(
                    "{i}: [{}]",
                    (0..self.shape.nodes)
                        .map(|r| if node.is_connected(r) { "+" } else { "-" })
                        .collect::<String>()
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Jumps to the earliest of `limit`, a pipe delivery, or a timer.
    fn advance(&mut self, limit: Instant) {
        let mut next = limit;
        for socket in self.sockets.iter().flatten() {
            // A partition holds its pipes until a fault tick heals it.
            if self.partitioned(socket.ends[0].0, socket.ends[1].0) {
                continue;
            }
            for (side, pipe) in socket.pipes.iter().enumerate() {
                // A stalled reader's pipes wait for the stall's end.
                if self.reader_stalled(socket.ends[1 - side].0) {
                    continue;
                }
                if let Some((at, _)) = pipe.chunks.front() {
                    next = next.min(*at);
                }
                if pipe.eof && pipe.chunks.is_empty() {
                    next = next.min(self.now);
                }
            }
        }
        for slot in &self.nodes {
            if let Some(t) = slot.node.as_ref().and_then(Node::poll_timeout) {
                next = next.min(t);
            }
            if let Some(t) = slot.down_until {
                next = next.min(t);
            }
            if let Some(stall) = &slot.stall {
                next = next.min(stall.until);
            }
            for (t, _, _) in &slot.delayed {
                next = next.min(*t);
            }
        }
        for c in &self.clients {
            let timers = [
                c.client.as_ref().and_then(Client::poll_timeout),
                c.down_until,
                c.write.as_ref().map(|w| w.done_at),
                c.lease_retry,
            ];
            for t in timers.into_iter().flatten() {
                next = next.min(t);
            }
        }
        self.now = next.max(self.now.saturating_add(Duration::from_micros(1)));
    }

    /// Delivers, runs timers and drains every state machine until quiet.
    fn step(&mut self) -> Result<(), String> {
        self.report.steps += 1;
        for i in 0..self.shape.nodes {
            let slot = &mut self.nodes[usize::from(i)];
            if slot.down_until.is_some_and(|t| t <= self.now) {
                self.start_node(i);
            }
        }
        for j in 0..self.clients.len() {
            if self.clients[j].down_until.is_some_and(|t| t <= self.now) {
                self.boot_client(j)?;
            }
        }
        self.end_due_stalls()?;
        for _ in 0..10_000 {
            let mut moved = self.deliver();
            for i in 0..self.shape.nodes {
                let at = self.node_now(i);
                if let Some(node) = self.nodes[usize::from(i)].node.as_mut()
                    && node.poll_timeout().is_some_and(|t| t <= self.now)
                {
                    node.handle_timeout(at);
                }
                moved |= self.drain_node(i)?;
            }
            for j in 0..self.clients.len() {
                let at = self.now_for(0);
                let now = self.now;
                if let Some(client) = self.clients[j].client.as_mut()
                    && client.poll_timeout().is_some_and(|t| t <= now)
                {
                    client.handle_timeout(at);
                }
                moved |= self.drain_client(j)?;
                moved |= self.service_lease(j)?;
            }
            if !moved {
                for i in 0..self.shape.nodes {
                    self.check_admission(i)?;
                }
                return Ok(());
            }
        }
        Err("the simulation did not settle in 10000 rounds at one instant".into())
    }

    fn drain_node(&mut self, i: u8) -> Result<bool, String> {
        let at = self.node_now(i);
        let mut moved = false;
        let idx = usize::from(i);
        // Replies whose delay passed.
        let due: Vec<(RequestHeader, Bytes)> = {
            let slot = &mut self.nodes[idx];
            let now = self.now;
            let (due, keep): (Vec<_>, Vec<_>) =
                slot.delayed.drain(..).partition(|(t, _, _)| *t <= now);
            slot.delayed = keep;
            due.into_iter().map(|(_, r, b)| (r, b)).collect()
        };
        for (request, body) in due {
            moved |= self.reply(i, request, body);
        }
        loop {
            let Some(node) = self.nodes[idx].node.as_mut() else {
                return Ok(moved);
            };
            if let Some((id, transmit)) = node.poll_transmit(at) {
                moved = true;
                let bytes: Vec<u8> = transmit.segments().concat();
                self.write((Host::Node(i), id), bytes);
                continue;
            }
            if let Some(action) = node.poll_action() {
                moved = true;
                self.node_action(i, action);
                continue;
            }
            if let Some(event) = node.poll_event() {
                moved = true;
                self.node_event(i, event)?;
                continue;
            }
            return Ok(moved);
        }
    }

    /// The application answers; a full queue means trying again shortly.
    fn reply(&mut self, i: u8, request: RequestHeader, body: Bytes) -> bool {
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        let Some(node) = slot.node.as_mut() else {
            return false;
        };
        let reply = reply_for(request.client, request.request, &body);
        if let Err(ReplyError::Backpressure { .. }) = node.reply(at, request, reply) {
            let retry = self.now.saturating_add(Duration::from_millis(10));
            slot.delayed.push((retry, request, body));
        }
        true
    }

    fn node_action(&mut self, i: u8, action: Action) {
        match action {
            Action::Connect {
                connection,
                replica,
            } => {
                let at = self.node_now(i);
                let target_up = self.nodes[usize::from(replica)].node.is_some();
                if !target_up || self.partitioned(Host::Node(i), Host::Node(replica)) {
                    // Half the time the SYN is lost and the dial times out.
                    if self.chance(500)
                        && let Some(node) = self.nodes[usize::from(i)].node.as_mut()
                    {
                        node.connect_failed(at, connection);
                    }
                    return;
                }
                let rat = self.node_now(replica);
                let remote = self.remote_of(Host::Node(i));
                let Some(target) = self.nodes[usize::from(replica)].node.as_mut() else {
                    return;
                };
                match target.accept_from(rat, Some(remote), Binding::NONE) {
                    Ok(accepted) => {
                        self.opened(replica, accepted);
                        self.open_socket(
                            (Host::Node(i), connection),
                            (Host::Node(replica), accepted),
                        );
                        if let Some(node) = self.nodes[usize::from(i)].node.as_mut() {
                            let _ = node.connected(at, connection, Binding::NONE);
                        }
                        self.opened(i, connection);
                    }
                    Err(_) => {
                        if let Some(node) = self.nodes[usize::from(i)].node.as_mut() {
                            node.connect_failed(at, connection);
                        }
                    }
                }
            }
            Action::Disconnect { connection } => self.close_end((Host::Node(i), connection)),
        }
    }

    fn node_event(&mut self, i: u8, event: NodeEvent) -> Result<(), String> {
        let seed = self.seed;
        if let NodeEvent::PeerDisconnected {
            connection, cause, ..
        }
        | NodeEvent::ClientDisconnected {
            connection, cause, ..
        } = &event
        {
            let paused = self.nodes[usize::from(i)]
                .stall
                .as_ref()
                .filter(|s| s.paused.contains(connection));
            if let (CloseCause::Timeout(Deadline::Liveness), Some(stall)) = (cause, paused) {
                return Err(format!(
                    "seed {seed}: node {i} (incarnation {}) closed with a liveness timeout at \
                     {:?} while its reading was paused by the stall {:?}..{:?}: {event:?}",
                    self.nodes[usize::from(i)].incarnation,
                    self.now,
                    stall.started,
                    stall.until
                ));
            }
        }
        match event {
            NodeEvent::PeerConnected { connection, .. }
            | NodeEvent::ClientConnected { connection, .. }
                if self.adversary.contains(&(i, connection)) =>
            {
                return Err(format!(
                    "seed {seed}: node {i} established the adversary's {connection}"
                ));
            }
            NodeEvent::ClientConnected { client, .. } if client >= IMPOSTOR_BASE => {
                return Err(format!("node {i} admitted impostor client {client:#x}"));
            }
            NodeEvent::Message {
                from,
                connection,
                body,
                ..
            } => {
                let Some((f, to, k, _)) = parse_message(&body) else {
                    return Err(format!("node {i}: corrupted message from {from}: {body:?}"));
                };
                if f != from || to != i || body != body_for(f, to, k, body.len()) {
                    return Err(format!(
                        "node {i}: corrupted or misrouted message {f}>{to}#{k}"
                    ));
                }
                // In order, never duplicated: on one connection the
                // sender's numbers only grow.
                let last = self.last_seen.insert((i, connection), k);
                if last.is_some_and(|l| k <= l) {
                    return Err(format!(
                        "node {i}: message {from}>{i}#{k} after #{} on one connection",
                        last.unwrap_or(0)
                    ));
                }
                self.report.messages_delivered += 1;
            }
            NodeEvent::Request { request, body, .. } => {
                let (client, number) = (request.client, request.request);
                let incarnation = self.nodes[usize::from(i)].incarnation;
                // The request is one its client issued, with that body.
                let issued = self.issued.get(&client).and_then(|m| m.get(&number));
                if issued != Some(&body) || parse_op(&body).is_none() {
                    return Err(format!(
                        "seed {seed}: node {i} (incarnation {incarnation}) executed client \
                         {client:#x} request {number} with body {body:?}, issued with {issued:?}"
                    ));
                }
                let slot = &mut self.nodes[usize::from(i)];
                let count = slot.executed.entry((client, number)).or_insert(0);
                *count += 1;
                if *count > 1 {
                    return Err(format!(
                        "seed {seed}: node {i} (incarnation {incarnation}) executed client \
                         {client:#x} request {number} twice"
                    ));
                }
                // No logical operation runs twice, under any number.
                let count = slot.ops.entry(body.clone()).or_insert(0);
                *count += 1;
                if *count > 1 {
                    return Err(format!(
                        "seed {seed}: node {i} (incarnation {incarnation}) executed operation \
                         {body:?} twice (the second time as client {client:#x} request {number})"
                    ));
                }
                self.report.requests_executed += 1;
                if self.rand(4) == 0 {
                    let at = self
                        .now
                        .saturating_add(Duration::from_millis(self.rand(300)));
                    self.nodes[usize::from(i)].delayed.push((at, request, body));
                } else {
                    self.reply(i, request, body);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn drain_client(&mut self, j: usize) -> Result<bool, String> {
        let at = self.now_for(0);
        let mut moved = false;
        loop {
            let Some(c) = self.clients[j].client.as_mut() else {
                return Ok(moved);
            };
            if let Some((id, transmit)) = c.poll_transmit(at) {
                moved = true;
                let bytes: Vec<u8> = transmit.segments().concat();
                self.write((Host::Client(j), id), bytes);
                continue;
            }
            if let Some(action) = c.poll_action() {
                moved = true;
                self.client_action(j, action);
                continue;
            }
            if let Some(event) = c.poll_event() {
                moved = true;
                self.client_event(j, event)?;
                continue;
            }
            return Ok(moved);
        }
    }

    fn client_action(&mut self, j: usize, action: Action) {
        let at = self.now_for(0);
        match action {
            Action::Connect {
                connection,
                replica,
            } => {
                let rat = self.node_now(replica);
                let remote = self.remote_of(Host::Client(j));
                let accepted = self.nodes[usize::from(replica)]
                    .node
                    .as_mut()
                    .and_then(|n| n.accept_from(rat, Some(remote), Binding::NONE).ok());
                match accepted {
                    Some(accepted) => {
                        self.opened(replica, accepted);
                        self.open_socket(
                            (Host::Client(j), connection),
                            (Host::Node(replica), accepted),
                        );
                        if let Some(client) = self.clients[j].client.as_mut() {
                            let _ = client.connected(at, connection, Binding::NONE);
                        }
                    }
                    None => {
                        if let Some(client) = self.clients[j].client.as_mut() {
                            client.connect_failed(at, connection);
                        }
                    }
                }
            }
            Action::Disconnect { connection } => self.close_end((Host::Client(j), connection)),
        }
    }

    fn client_event(&mut self, j: usize, event: ClientEvent) -> Result<(), String> {
        let seed = self.seed;
        let slot = &mut self.clients[j];
        match event {
            ClientEvent::Connected { .. } if slot.impostor => {
                return Err(format!("impostor client {j} connected without the key"));
            }
            ClientEvent::Reply {
                request,
                operation,
                body,
            } => {
                if !slot.waiting.remove(&request) {
                    return Err(format!(
                        "seed {seed}: client {j}: reply to request {request} not outstanding"
                    ));
                }
                // The answer leaves the outbox; it must answer what was
                // sent under this number.
                let Some(sent) = slot.disk.outbox.remove(&request) else {
                    return Err(format!(
                        "seed {seed}: client {j}: reply to request {request}, not in the outbox"
                    ));
                };
                if body != reply_for(slot.id, request, &sent.body) || operation != sent.operation {
                    return Err(format!(
                        "seed {seed}: client {j}: wrong reply to request {request} (operation \
                         {}, {:?}): operation {operation}, {body:?}",
                        sent.operation, sent.body
                    ));
                }
                slot.completed += 1;
                self.report.replies_received += 1;
            }
            ClientEvent::Failed { request, reason } => {
                if !slot.waiting.remove(&request) {
                    return Err(format!(
                        "seed {seed}: client {j}: failure of request {request} not outstanding"
                    ));
                }
                // The client will not resend it: the application gives up
                // (`Busy`: it did not run; otherwise the outcome is unknown).
                if !slot.impostor && slot.disk.outbox.remove(&request).is_none() {
                    return Err(format!(
                        "seed {seed}: client {j}: failure of request {request}, not in the outbox"
                    ));
                }
                slot.failures.insert(request, reason);
            }
            _ => {}
        }
        Ok(())
    }

    /// The application issues a new logical operation through its outbox:
    /// reserve a number, record the entry durably, then submit. Returns
    /// the number, or `None` when the client is down, its window is full
    /// or its lease is exhausted (nothing was issued then).
    fn issue(&mut self, j: usize, operation: u32) -> Result<Option<u64>, String> {
        let seed = self.seed;
        let at = self.now_for(0);
        let max = self.config.client_max_outstanding;
        let slot = &mut self.clients[j];
        if slot.impostor {
            return Ok(None);
        }
        let Some(client) = slot.client.as_mut() else {
            return Ok(None);
        };
        if client.outstanding() >= max {
            return Ok(None);
        }
        let reservation = match client.reserve(at) {
            Ok(r) => r,
            Err(RequestError::LeaseExhausted { until }) => {
                let lease = client.lease();
                if lease.next != until || until > slot.disk.record.reserved_until {
                    return Err(format!(
                        "seed {seed}: client {j}: LeaseExhausted at {until} with lease \
                         {lease:?} and {:?} stored",
                        slot.disk.record
                    ));
                }
                self.report.lease_exhausted += 1;
                return Ok(None);
            }
            Err(e) => return Err(format!("seed {seed}: client {j}: reserve failed: {e}")),
        };
        let number = reservation.request;
        // Every issued number is covered by the stored record.
        if number >= slot.disk.record.reserved_until {
            return Err(format!(
                "seed {seed}: client {j} issued request {number}, but the stored record is \
                 {:?}",
                slot.disk.record
            ));
        }
        let body = op_body(j, slot.disk.next_op);
        slot.disk.next_op += 1;
        let numbers = self.issued.entry(slot.id).or_default();
        if let Some(earlier) = numbers.insert(number, body.clone()) {
            return Err(format!(
                "seed {seed}: client {j} (id {:#x}) issued request {number} twice: for {earlier:?} \
                 and for {body:?}",
                slot.id
            ));
        }
        slot.disk.outbox.insert(
            number,
            Outgoing {
                reservation,
                operation,
                body: body.clone(),
            },
        );
        if let Err(e) = client.submit(at, reservation, operation, body) {
            return Err(format!(
                "seed {seed}: client {j}: submit of fresh request {number} failed: {e}"
            ));
        }
        slot.waiting.insert(number);
        Ok(Some(number))
    }

    /// Moves client `j`'s lease renewal along: a write that finished is
    /// reported to the client, and a renewal the client asks for starts
    /// one (taking virtual time, failing sometimes while faults are on).
    /// Returns whether anything happened.
    fn service_lease(&mut self, j: usize) -> Result<bool, String> {
        let seed = self.seed;
        let now = self.now;
        let at = self.now_for(0);
        if self.clients[j].impostor || self.clients[j].client.is_none() {
            return Ok(false);
        }
        let mut moved = false;
        if self.clients[j]
            .write
            .as_ref()
            .is_some_and(|w| w.done_at <= now)
        {
            moved = true;
            let slot = &mut self.clients[j];
            let write = slot.write.take().expect("checked");
            let Some(client) = slot.client.as_mut() else {
                return Ok(moved);
            };
            if write.fails {
                client.lease_failed(at);
                slot.lease_retry = Some(now.saturating_add(Duration::from_secs(1)));
                self.report.renewal_failures += 1;
            } else {
                slot.disk.record.reserved_until = slot.disk.record.reserved_until.max(write.mark);
                client.lease_extended(write.mark);
                self.report.lease_renewals += 1;
            }
        }
        if self.clients[j].write.is_some() {
            return Ok(moved);
        }
        let Some(mark) = self.clients[j]
            .client
            .as_mut()
            .and_then(|c| c.poll_lease(at))
        else {
            // A retry time that passed is not a timer any more.
            let slot = &mut self.clients[j];
            if slot.lease_retry.is_some_and(|t| t <= now) {
                slot.lease_retry = None;
            }
            return Ok(moved);
        };
        let slot = &self.clients[j];
        let lease = slot.client.as_ref().map(Client::lease);
        if lease.is_none_or(|l| mark <= l.until || mark != l.until + slot.block) {
            return Err(format!(
                "seed {seed}: client {j} asked to store mark {mark} with lease {lease:?} \
                 (block {})",
                slot.block
            ));
        }
        // Mostly a quick write; sometimes an fsync stall that outlasts
        // the half lease left; sometimes a failure.
        let delay = if self.chance(50) {
            200 + self.rand(1500)
        } else {
            1 + self.rand(60)
        };
        let fails = self.faults_on && self.chance(100);
        let slot = &mut self.clients[j];
        slot.lease_retry = None;
        slot.write = Some(LeaseWrite {
            mark,
            done_at: now.saturating_add(Duration::from_millis(delay)),
            fails,
        });
        Ok(true)
    }

    /// Client `j`'s process crashes: its memory is gone, its sockets
    /// reset, a renewal write under way landed or not. Its disk stays.
    fn crash_client(&mut self, j: usize, downtime: Duration) {
        let Some(client) = self.clients[j].client.take() else {
            return;
        };
        self.report.client_restarts += 1;
        self.resent_by_crashed += client.stats().resent;
        drop(client);
        if let Some(write) = self.clients[j].write.take() {
            self.report.crashes_during_renewal += 1;
            if !write.fails && self.chance(500) {
                let record = &mut self.clients[j].disk.record;
                record.reserved_until = record.reserved_until.max(write.mark);
            }
        }
        let slot = &mut self.clients[j];
        slot.lease_retry = None;
        slot.waiting.clear();
        slot.down_until = Some(self.now.saturating_add(downtime));
        // Every socket of the process, also ones it was closing, so that
        // no byte meant for it reaches the next process's connections.
        let mut mine: Vec<usize> = (0..self.sockets.len())
            .filter(|&s| {
                self.sockets[s]
                    .as_ref()
                    .is_some_and(|k| k.ends.iter().any(|e| e.0 == Host::Client(j)))
            })
            .collect();
        mine.sort_unstable();
        for s in mine {
            self.reset_socket(s);
        }
    }

    /// Client `j`'s process starts: it loads its record, stores the raised
    /// one before issuing anything, and resubmits its outbox.
    fn boot_client(&mut self, j: usize) -> Result<(), String> {
        let seed = self.seed;
        let slot = &mut self.clients[j];
        slot.down_until = None;
        let block = slot.block;
        let start = |record: IdentityRecord| {
            record
                .start(block)
                .map_err(|e| format!("seed {seed}: client {j}: {e}"))
        };
        let (mut raised, mut lease) = start(slot.disk.record)?;
        if lease.next != slot.disk.record.reserved_until || raised.reserved_until != lease.until {
            return Err(format!(
                "seed {seed}: client {j}: start from {:?} gave {raised:?} and {lease:?}",
                slot.disk.record
            ));
        }
        slot.disk.record = raised;
        if self.faults_on && self.chance(100) {
            // The process died right after storing its record, and the
            // next one starts from there: the numbers of that lease are
            // never issued.
            let slot = &mut self.clients[j];
            (raised, lease) = start(slot.disk.record)?;
            slot.disk.record = raised;
        }
        let entropy = self.rng.next_u64();
        let at = self.now_for(0);
        let slot = &mut self.clients[j];
        let mut client = Client::with_lease(
            at,
            &self.config,
            ClientParams {
                cluster: CLUSTER,
                id: slot.id,
                target: slot.target,
            },
            lease,
            self.keys.clone(),
            Box::new(SeededEntropy::new(entropy)),
        );
        let mut too_old = Vec::new();
        for (&number, sent) in &slot.disk.outbox {
            match client.submit(at, sent.reservation, sent.operation, sent.body.clone()) {
                Ok(()) => {
                    slot.waiting.insert(number);
                    self.report.outbox_resends += 1;
                }
                Err(RequestError::TooOld { .. }) => too_old.push(number),
                Err(e) => {
                    return Err(format!(
                        "seed {seed}: client {j}: resubmitting request {number} ({:?}) after a \
                         restart failed: {e}",
                        sent.body
                    ));
                }
            }
        }
        // Issued a request_timeout or more ago: a node may have forgotten
        // it, so its outcome stays unknown.
        for number in too_old {
            slot.disk.outbox.remove(&number);
            self.report.resends_too_old += 1;
        }
        slot.client = Some(client);
        Ok(())
    }

    /// The application: replicas message each other, clients send requests.
    fn app_tick(&mut self) -> Result<(), String> {
        let from = self.pick_node();
        let to = self.pick_node();
        if from != to {
            let k = self.nodes[usize::from(from)].sent[usize::from(to)];
            let big = self.chance(50);
            let len = 16 + self.pick(if big { 8000 } else { 200 });
            let body = body_for(from, to, k, len);
            if let Some(node) = self.nodes[usize::from(from)].node.as_mut()
                && node.send(to, 1, body).is_ok()
            {
                self.nodes[usize::from(from)].sent[usize::from(to)] += 1;
            }
        }
        if !self.clients.is_empty() {
            let j = self.pick(self.clients.len());
            self.issue(j, 3)?;
        }
        Ok(())
    }

    /// One random fault.
    fn fault(&mut self) -> Result<(), String> {
        match self.rand(10) {
            0 | 1 => {
                let live: Vec<usize> = (0..self.sockets.len())
                    .filter(|&s| self.sockets[s].is_some())
                    .collect();
                if !live.is_empty() {
                    let s = live[self.pick(live.len())];
                    self.report.resets += 1;
                    self.reset_socket(s);
                }
            }
            2 => {
                let a = self.pick_node();
                let b = self.pick_node();
                if a != b {
                    let until = self
                        .now
                        .saturating_add(Duration::from_millis(200 + self.rand(2000)));
                    self.partitions.insert((a.min(b), a.max(b)), until);
                    self.report.partitions += 1;
                }
            }
            3 => {
                let down = self.nodes.iter().filter(|s| s.node.is_none()).count();
                if down == 0 {
                    let i = self.pick_node();
                    let downtime = Duration::from_millis(100 + self.rand(1500));
                    self.crash_node(i, downtime);
                }
            }
            4 => self.impostor_dial(),
            5 => self.replay_handshake(),
            6 => self.replay_frame(),
            7 => self.start_stall(),
            8 => self.silent_burst()?,
            _ => {
                if self.chance(500) {
                    let honest: Vec<usize> = (0..self.clients.len())
                        .filter(|&j| !self.clients[j].impostor && self.clients[j].client.is_some())
                        .collect();
                    if !honest.is_empty() {
                        let j = honest[self.pick(honest.len())];
                        // Mostly back within request_timeout, so the outbox
                        // is resent; sometimes later, so it is too old.
                        let downtime = if self.chance(750) {
                            Duration::from_millis(10 + self.rand(1500))
                        } else {
                            Duration::from_millis(2000 + self.rand(6000))
                        };
                        self.crash_client(j, downtime);
                    }
                }
            }
        }
        Ok(())
    }

    fn impostor_dial(&mut self) {
        if self.clients.len() >= self.shape.clients + 2 {
            return;
        }
        let target = self.pick_node();
        let id = IMPOSTOR_BASE + self.clients.len() as u128;
        let wrong = KeyRing::new(Key::from_bytes([0x33; 32]));
        let client = self.new_client(id, target, wrong);
        let mut slot = ClientSlot::new(id, target, 0, true);
        slot.client = Some(client);
        self.clients.push(slot);
        self.report.impostor_dials += 1;
    }

    /// Replays a captured dialer handshake into a fresh connection.
    fn replay_handshake(&mut self) {
        let candidates: Vec<(u8, Vec<Vec<u8>>)> = self
            .sockets
            .iter()
            .flatten()
            .filter_map(|s| match s.ends[1].0 {
                Host::Node(i) if !s.captured.is_empty() => Some((i, s.captured.clone())),
                _ => None,
            })
            .collect();
        for c in candidates {
            if self.captured.len() >= 16 {
                self.captured.pop_front();
            }
            self.captured.push_back(c);
        }
        if self.captured.is_empty() {
            return;
        }
        let pick = self.pick(self.captured.len());
        let (i, transmits) = self.captured[pick].clone();
        if self.stalled(i) {
            // Its application is stalled: the node reads nothing.
            return;
        }
        let at = self.node_now(i);
        let Some(node) = self.nodes[usize::from(i)].node.as_mut() else {
            return;
        };
        let Ok(id) = node.accept(at, Binding::NONE) else {
            return;
        };
        self.adversary.insert((i, id));
        self.report.handshake_replays += 1;
        for bytes in transmits {
            let _ = node.handle_input(at, id, &bytes);
        }
    }

    /// Replays a captured frame into a live connection (authenticated
    /// frames only: in checksum mode an on-path attacker is out of scope).
    fn replay_frame(&mut self) {
        if !self.report.authenticated_frames {
            return;
        }
        let live: Vec<usize> = (0..self.sockets.len())
            .filter(|&s| {
                self.sockets[s]
                    .as_ref()
                    .is_some_and(|s| s.captured.len() >= 3)
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let s = live[self.pick(live.len())];
        let Some(socket) = self.sockets[s].as_mut() else {
            return;
        };
        let bytes = socket.captured[2].clone();
        let at = socket.pipes[0].last;
        socket.pipes[0].chunks.push_back((at, bytes));
        self.report.frame_replays += 1;
    }

    fn check_bounds(&self) -> Result<(), String> {
        let max_conns = self.config.max_connections + usize::from(self.shape.nodes);
        for (i, slot) in self.nodes.iter().enumerate() {
            if let Some(node) = &slot.node {
                if node.connections() > max_conns {
                    return Err(format!("node {i} holds {} connections", node.connections()));
                }
                if node.dedup().clients() > self.clients.len() {
                    return Err(format!(
                        "node {i} holds {} dedup sessions",
                        node.dedup().clients()
                    ));
                }
                if node.handshakes_in_flight() > self.config.max_handshakes_in_flight {
                    return Err(format!(
                        "node {i}: {} handshakes",
                        node.handshakes_in_flight()
                    ));
                }
            }
        }
        for (j, c) in self.clients.iter().enumerate() {
            let Some(client) = c.client.as_ref() else {
                continue;
            };
            if client.outstanding() > self.config.client_max_outstanding || client.connections() > 2
            {
                return Err(format!("client {j} exceeds its bounds"));
            }
            // The outbox is exactly what the process has outstanding.
            if !c.impostor
                && (client.outstanding() != c.waiting.len()
                    || !c.disk.outbox.keys().eq(c.waiting.iter()))
            {
                return Err(format!(
                    "client {j}: outbox {:?} but outstanding {:?} ({})",
                    c.disk.outbox.keys().collect::<Vec<_>>(),
                    c.waiting,
                    client.outstanding()
                ));
            }
        }
        Ok(())
    }
}
