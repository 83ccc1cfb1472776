//! A small, fault-free in-memory network of nodes and clients for the node
//! hazard tests: zero-latency sockets, a virtual clock, and a recorder of
//! every event and socket action. The simulator (`sim/`) adds faults.
#![allow(dead_code, unreachable_pub)]

use bus_proto::client::{Client, ClientEvent, ClientParams, Lease};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{Connection, DialParams, Event};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, ConnectionId, Node, NodeEvent, NodeParams};
use bus_proto::time::{Instant, Now, UnixNanos};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub const CLUSTER: u128 = 0xC1;
const WALL_BASE: u64 = 1_767_225_600_000_000_000;

pub fn keys() -> KeyRing {
    KeyRing::new(Key::from_bytes([9; 32]))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Node(usize),
    Client(usize),
    /// A bare connection driven by the test (an impostor or a second
    /// instance of a replica).
    Raw(usize),
}

pub type End = (Host, ConnectionId);

/// A bare connection the test drives by hand.
pub struct Raw {
    pub conn: Connection,
    pub events: Vec<Event>,
    /// Fake id, so raw ends can sit in the socket map.
    pub id: ConnectionId,
}

pub struct Net {
    pub now: Instant,
    pub config: ValidConfig,
    pub nodes: Vec<Option<Node>>,
    pub clients: Vec<Client>,
    pub raws: Vec<Raw>,
    /// Socket ends, each mapped to the other end.
    pub peer: HashMap<End, End>,
    /// Node events, by node, in order.
    pub node_events: Vec<Vec<NodeEvent>>,
    pub client_events: Vec<Vec<ClientEvent>>,
    /// Every `Connect` action: (time, host, replica).
    pub connects: Vec<(Instant, Host, u8)>,
    /// Connect targets that fail at once (down or unreachable).
    pub unreachable: Vec<u8>,
    seed: u64,
}

impl Net {
    pub fn new(config: ValidConfig, replicas: u8) -> Net {
        let mut net = Net {
            now: Instant::ZERO,
            config,
            nodes: Vec::new(),
            clients: Vec::new(),
            raws: Vec::new(),
            peer: HashMap::new(),
            node_events: Vec::new(),
            client_events: Vec::new(),
            connects: Vec::new(),
            unreachable: Vec::new(),
            seed: 1,
        };
        for i in 0..replicas {
            let node = net.new_node(i, replicas);
            net.nodes.push(Some(node));
            net.node_events.push(Vec::new());
        }
        net
    }

    pub fn at(&self) -> Now {
        Now {
            mono: self.now,
            wall: UnixNanos::from_nanos(WALL_BASE + self.now.as_nanos()),
        }
    }

    fn entropy(&mut self) -> Box<SeededEntropy> {
        self.seed += 1;
        Box::new(SeededEntropy::new(self.seed))
    }

    pub fn new_node(&mut self, i: u8, replicas: u8) -> Node {
        let entropy = self.entropy();
        Node::new(
            self.at(),
            &self.config,
            NodeParams {
                cluster: CLUSTER,
                replica: i,
                replica_count: replicas,
                accept_clients: true,
            },
            keys(),
            entropy,
        )
        .expect("valid node")
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].as_mut().expect("node is up")
    }

    /// Adds a client of `target`; returns its index.
    pub fn add_client(&mut self, id: u128, target: u8) -> usize {
        self.add_client_with_lease(id, target, Lease::UNBOUNDED)
    }

    /// Adds a client of `target` that issues numbers from `lease` (a
    /// persistent identity); returns its index.
    pub fn add_client_with_lease(&mut self, id: u128, target: u8, lease: Lease) -> usize {
        let entropy = self.entropy();
        let client = Client::with_lease(
            self.at(),
            &self.config,
            ClientParams {
                cluster: CLUSTER,
                id,
                target,
            },
            lease,
            keys(),
            entropy,
        );
        self.clients.push(client);
        self.client_events.push(Vec::new());
        self.clients.len() - 1
    }

    /// Opens a bare dial from `local` to node `acceptor` with `keys`.
    pub fn raw_dial(&mut self, local: PeerId, acceptor: u8, keys: &KeyRing) -> usize {
        let mut entropy = SeededEntropy::new(self.seed + 1000);
        let at = self.at();
        let conn = Connection::dial(
            at.mono,
            at.wall,
            &self.config,
            DialParams {
                cluster: CLUSTER,
                local,
                acceptor,
                keys,
                binding: Binding::NONE,
            },
            &mut entropy,
        )
        .expect("valid dial");
        let accepted = self
            .node(usize::from(acceptor))
            .accept(at, Binding::NONE)
            .expect("accepted");
        // A fake id for the raw end: any value unique among raws works.
        let id = accepted;
        let r = self.raws.len();
        self.raws.push(Raw {
            conn,
            events: Vec::new(),
            id,
        });
        let raw_end = (Host::Raw(r), id);
        let node_end = (Host::Node(usize::from(acceptor)), accepted);
        self.peer.insert(raw_end, node_end);
        self.peer.insert(node_end, raw_end);
        r
    }

    fn deliver(&mut self, to: End, bytes: &[u8]) {
        let at = self.at();
        match to.0 {
            Host::Node(i) => {
                if let Some(node) = self.nodes[i].as_mut() {
                    let _ = node.handle_input(at, to.1, bytes);
                }
            }
            Host::Client(j) => {
                let _ = self.clients[j].handle_input(at, to.1, bytes);
            }
            Host::Raw(r) => self.raws[r].conn.handle_input(at.mono, bytes),
        }
    }

    fn eof(&mut self, to: End) {
        let at = self.at();
        match to.0 {
            Host::Node(i) => {
                if let Some(node) = self.nodes[i].as_mut() {
                    node.handle_eof(at, to.1);
                }
            }
            Host::Client(j) => self.clients[j].handle_eof(at, to.1),
            Host::Raw(r) => self.raws[r].conn.handle_eof(at.mono),
        }
    }

    /// Resets the socket at `end`: both sides see EOF.
    pub fn reset(&mut self, end: End) {
        if let Some(other) = self.peer.remove(&end) {
            self.peer.remove(&other);
            self.eof(end);
            self.eof(other);
        }
    }

    fn connect(&mut self, from: Host, connection: ConnectionId, replica: u8) {
        let at = self.at();
        self.connects.push((self.now, from, replica));
        let target = usize::from(replica);
        let accepted = if self.unreachable.contains(&replica) {
            None
        } else {
            self.nodes[target]
                .as_mut()
                .and_then(|n| n.accept(at, Binding::NONE).ok())
        };
        match (from, accepted) {
            (Host::Node(i), Some(acc)) => {
                self.peer
                    .insert((from, connection), (Host::Node(target), acc));
                self.peer
                    .insert((Host::Node(target), acc), (from, connection));
                let _ = self.node(i).connected(at, connection, Binding::NONE);
            }
            (Host::Node(i), None) => self.node(i).connect_failed(at, connection),
            (Host::Client(j), Some(acc)) => {
                self.peer
                    .insert((from, connection), (Host::Node(target), acc));
                self.peer
                    .insert((Host::Node(target), acc), (from, connection));
                let _ = self.clients[j].connected(at, connection, Binding::NONE);
            }
            (Host::Client(j), None) => self.clients[j].connect_failed(at, connection),
            (Host::Raw(_), _) => {}
        }
    }

    /// Drains every state machine until nothing moves at this instant.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let at = self.at();
            for i in 0..self.nodes.len() {
                while let Some(node) = self.nodes[i].as_mut() {
                    if let Some((id, t)) = node.poll_transmit(at) {
                        moved = true;
                        let bytes = t.segments().concat();
                        if let Some(&to) = self.peer.get(&(Host::Node(i), id)) {
                            self.deliver(to, &bytes);
                        }
                    } else if let Some(action) = node.poll_action() {
                        moved = true;
                        match action {
                            Action::Connect {
                                connection,
                                replica,
                            } => self.connect(Host::Node(i), connection, replica),
                            Action::Disconnect { connection } => {
                                if let Some(other) = self.peer.remove(&(Host::Node(i), connection))
                                {
                                    self.peer.remove(&other);
                                    self.eof(other);
                                }
                            }
                        }
                    } else if let Some(event) = node.poll_event() {
                        moved = true;
                        self.node_events[i].push(event);
                    } else {
                        break;
                    }
                }
            }
            for j in 0..self.clients.len() {
                loop {
                    let c = &mut self.clients[j];
                    if let Some((id, t)) = c.poll_transmit(at) {
                        moved = true;
                        let bytes = t.segments().concat();
                        if let Some(&to) = self.peer.get(&(Host::Client(j), id)) {
                            self.deliver(to, &bytes);
                        }
                    } else if let Some(action) = c.poll_action() {
                        moved = true;
                        match action {
                            Action::Connect {
                                connection,
                                replica,
                            } => self.connect(Host::Client(j), connection, replica),
                            Action::Disconnect { connection } => {
                                if let Some(other) =
                                    self.peer.remove(&(Host::Client(j), connection))
                                {
                                    self.peer.remove(&other);
                                    self.eof(other);
                                }
                            }
                        }
                    } else if let Some(event) = c.poll_event() {
                        moved = true;
                        self.client_events[j].push(event);
                    } else {
                        break;
                    }
                }
            }
            for r in 0..self.raws.len() {
                while let Some(t) = self.raws[r].conn.poll_transmit(at.mono) {
                    moved = true;
                    let bytes = t.segments().concat();
                    let end = (Host::Raw(r), self.raws[r].id);
                    if let Some(&to) = self.peer.get(&end) {
                        self.deliver(to, &bytes);
                    }
                }
                while let Some(e) = self.raws[r].conn.poll_event() {
                    moved = true;
                    self.raws[r].events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle");
    }

    fn next_timeout(&self) -> Option<Instant> {
        let nodes = self.nodes.iter().flatten().filter_map(Node::poll_timeout);
        let clients = self.clients.iter().filter_map(Client::poll_timeout);
        let raws = self.raws.iter().filter_map(|r| r.conn.poll_timeout());
        nodes.chain(clients).chain(raws).min()
    }

    /// Runs for `d` of virtual time, firing timers as they come due.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        loop {
            self.settle();
            let next = self.next_timeout().unwrap_or(end);
            if next > end {
                self.now = end;
                self.settle();
                return;
            }
            self.now = next.max(self.now);
            let at = self.at();
            for node in self.nodes.iter_mut().flatten() {
                node.handle_timeout(at);
            }
            for c in &mut self.clients {
                c.handle_timeout(at);
            }
            for r in &mut self.raws {
                r.conn.handle_timeout(at.mono);
            }
            if self.now == end {
                self.settle();
                return;
            }
        }
    }

    /// Takes node `i`'s events so far.
    pub fn take_node_events(&mut self, i: usize) -> Vec<NodeEvent> {
        std::mem::take(&mut self.node_events[i])
    }

    /// Takes client `j`'s events so far.
    pub fn take_client_events(&mut self, j: usize) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events[j])
    }

    /// The node-side end of client `j`'s current connection.
    pub fn client_socket(&self, j: usize) -> Option<End> {
        self.peer
            .iter()
            .find(|(k, _)| k.0 == Host::Client(j))
            .map(|(_, v)| *v)
    }

    /// Counts connect attempts by host and replica.
    pub fn connect_counts(&self) -> BTreeMap<(String, u8), usize> {
        let mut m = BTreeMap::new();
        for (_, h, r) in &self.connects {
            *m.entry((format!("{h:?}"), *r)).or_insert(0) += 1;
        }
        m
    }
}

/// Short timers, for the node and client hazard tests.
pub fn config() -> Config {
    {
        let mut tuned = Config::default();
        tuned.heartbeat_interval = Duration::from_millis(100);
        tuned.liveness_timeout = Duration::from_millis(500);
        tuned.handshake_timeout = Duration::from_millis(300);
        tuned.close_grace = Duration::from_millis(100);
        tuned.reconnect_min = Duration::from_millis(50);
        tuned.reconnect_max = Duration::from_millis(800);
        tuned.request_timeout = Duration::from_secs(2);
        tuned
    }
}

/// The replies among client events: (request number, body).
pub fn replies(events: &[ClientEvent]) -> Vec<(u64, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Reply { request, body, .. } => Some((*request, body.clone())),
            _ => None,
        })
        .collect()
}
