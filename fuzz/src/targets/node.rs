//! A replica's node driven by arbitrary socket events, time and
//! application commands, with honest peers (a replica and clients holding
//! the right key) beside raw and forged bytes.

use super::ops;
use super::{CLUSTER, Forged, forge, wall};
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{CloseCause, Connection, Deadline, DialParams};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, ConnectionId, Node, NodeEvent, NodeParams, table_capacity};
use bus_proto::time::{Instant, Now};
use bus_proto::wire::{Kind, RequestHeader};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
enum Peer {
    Nobody,
    /// Replica 0 (the node is replica 1; replica 0 dials it).
    Replica,
    Client(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// An accept from one of a few remote addresses.
    Accept {
        peer: Peer,
        from: u8,
    },
    /// Answers the oldest connect in progress.
    Connect {
        ok: bool,
    },
    Deliver {
        socket: u8,
        len: u16,
    },
    Raw {
        socket: u8,
        bytes: Vec<u8>,
    },
    Forge {
        socket: u8,
        frame: Forged,
    },
    Eof {
        socket: u8,
    },
    /// Milliseconds.
    Advance(u16),
    Send {
        to: u8,
        len: u8,
    },
    PeerSend {
        socket: u8,
        request: u8,
        len: u8,
    },
    Reply {
        len: u8,
    },
    Shutdown,
    /// The host stops or resumes reading a socket (a slow application).
    Pause {
        socket: u8,
        paused: bool,
    },
}

struct Socket {
    id: ConnectionId,
    /// The honest peer at the other end, if any.
    peer: Option<Connection>,
    /// Bytes from the peer, not yet given to the node.
    inbound: Vec<u8>,
    connecting: bool,
    /// The honest peer's client id, if it is a client.
    client: Option<u128>,
}

struct Harness {
    config: ValidConfig,
    node: Node,
    keys: KeyRing,
    now: Instant,
    sockets: Vec<Socket>,
    entropy: SeededEntropy,
    connected: BTreeSet<u8>,
    requests: Vec<RequestHeader>,
    /// Connections whose reading the host paused.
    paused: BTreeSet<ConnectionId>,
}

impl Harness {
    fn new() -> Self {
        let config = {
            let mut tuned = Config::default();
            tuned.max_message_size = 4096;
            tuned.send_queue_frames = 32;
            tuned.send_queue_bytes = 32 * 4096;
            tuned.client_max_outstanding = 4;
            tuned.max_batch = 8;
            tuned.max_handshakes_in_flight = 4;
            tuned.max_connections = 8;
            tuned.dedup_entries_per_client = 4;
            tuned.dedup_max_clients = 3;
            tuned.dedup_max_cached_bytes = 8192;
            tuned.max_replay_peers = 8;
            tuned
        }
        .validate()
        .expect("a valid fuzzing config");
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        let params = NodeParams {
            cluster: CLUSTER,
            replica: 1,
            replica_count: 3,
            accept_clients: true,
        };
        let now = Instant::ZERO;
        let entropy = Box::new(SeededEntropy::new(2));
        let node = Node::new(at(now), &config, params, keys.clone(), entropy).expect("node");
        Harness {
            config,
            node,
            keys,
            now,
            sockets: Vec::new(),
            entropy: SeededEntropy::new(3),
            connected: BTreeSet::new(),
            requests: Vec::new(),
            paused: BTreeSet::new(),
        }
    }

    fn socket(&mut self, n: u8) -> Option<&mut Socket> {
        let len = self.sockets.len();
        (len > 0).then(|| &mut self.sockets[usize::from(n) % len])
    }

    fn apply(&mut self, op: Op) {
        let now = at(self.now);
        match op {
            Op::Accept { peer, from } => {
                let remote = std::net::SocketAddr::from(([10, 0, 0, from % 3], 4000));
                let Ok(id) = self.node.accept_from(now, Some(remote), Binding::NONE) else {
                    return;
                };
                let local = match peer {
                    Peer::Nobody => None,
                    Peer::Replica => Some(PeerId::Replica(0)),
                    Peer::Client(c) => Some(PeerId::Client(0x100 + u128::from(c % 4))),
                };
                let client = match local {
                    Some(PeerId::Client(id)) => Some(id),
                    _ => None,
                };
                let peer = local.and_then(|local| {
                    let params = DialParams {
                        cluster: CLUSTER,
                        local,
                        acceptor: 1,
                        keys: &self.keys,
                        binding: Binding::NONE,
                    };
                    Connection::dial(self.now, now.wall, &self.config, params, &mut self.entropy)
                        .ok()
                });
                self.sockets.push(Socket {
                    id,
                    peer,
                    inbound: Vec::new(),
                    connecting: false,
                    client,
                });
            }
            Op::Connect { ok } => {
                let Some(s) = self.sockets.iter_mut().find(|s| s.connecting) else {
                    return;
                };
                s.connecting = false;
                let id = s.id;
                if ok {
                    let _ = self.node.connected(now, id, Binding::NONE);
                } else {
                    self.node.connect_failed(now, id);
                }
            }
            Op::Deliver { socket, len } => {
                let Some(s) = self.socket(socket) else { return };
                let n = usize::from(len).min(s.inbound.len());
                let bytes: Vec<u8> = s.inbound.drain(..n).collect();
                let id = s.id;
                let _ = self.node.handle_input(now, id, &bytes);
            }
            Op::Raw { socket, bytes } => {
                let Some(s) = self.socket(socket) else { return };
                let id = s.id;
                let _ = self.node.handle_input(now, id, &bytes);
            }
            Op::Forge { socket, frame } => {
                let Some(s) = self.socket(socket) else { return };
                let id = s.id;
                let _ = self.node.handle_input(now, id, &forge(&frame));
            }
            Op::Eof { socket } => {
                let Some(s) = self.socket(socket) else { return };
                let id = s.id;
                self.node.handle_eof(now, id);
            }
            Op::Advance(ms) => {
                self.now = self
                    .now
                    .saturating_add(Duration::from_millis(u64::from(ms)));
                self.node.handle_timeout(at(self.now));
            }
            Op::Send { to, len } => {
                let _ = self
                    .node
                    .send(to % 4, 1, Bytes::from(vec![len; usize::from(len)]));
            }
            Op::PeerSend {
                socket,
                request,
                len,
            } => {
                let Some(s) = self.socket(socket) else { return };
                let client = s.client;
                let Some(peer) = s.peer.as_mut() else { return };
                let body = Bytes::from(vec![len; usize::from(len)]);
                if !peer.is_established() {
                    return;
                }
                let kind = match client {
                    Some(client) => Kind::Request(RequestHeader {
                        client,
                        request: u64::from(request % 8),
                        operation: 3,
                    }),
                    None => Kind::Message { operation: 2 },
                };
                let _ = peer.send(kind, body);
            }
            Op::Reply { len } => {
                if self.requests.is_empty() {
                    return;
                }
                let request = self.requests.remove(0);
                let _ = self
                    .node
                    .reply(now, request, Bytes::from(vec![len; usize::from(len)]));
            }
            Op::Shutdown => self.node.shutdown(now),
            Op::Pause { socket, paused } => {
                let Some(s) = self.socket(socket) else { return };
                let id = s.id;
                self.node.set_reading_paused(now, id, paused);
                match paused {
                    true => self.paused.insert(id),
                    false => self.paused.remove(&id),
                };
            }
        }
        self.settle();
    }

    /// Carries out actions, moves bytes between the node and honest peers,
    /// drains events, and checks the invariants.
    fn settle(&mut self) {
        let now = at(self.now);
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::Connect {
                    connection,
                    replica,
                } => {
                    assert_eq!(replica, 2, "replica 1 dials only replica 2");
                    self.sockets.push(Socket {
                        id: connection,
                        peer: None,
                        inbound: Vec::new(),
                        connecting: true,
                        client: None,
                    });
                }
                Action::Disconnect { connection } => {
                    self.sockets.retain(|s| s.id != connection);
                }
            }
        }
        for s in &mut self.sockets {
            while let Some(transmit) = self.node.poll_transmit_for(now, s.id) {
                assert!(transmit.frames() <= self.config.max_batch);
                if let Some(peer) = s.peer.as_mut() {
                    let mut bytes = Vec::new();
                    transmit.write_to(&mut bytes);
                    peer.handle_input(self.now, &bytes);
                }
            }
            if let Some(peer) = s.peer.as_mut() {
                while let Some(transmit) = peer.poll_transmit(self.now) {
                    transmit.write_to(&mut s.inbound);
                }
                while peer.poll_event().is_some() {}
            }
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::PeerConnected { replica, .. } => {
                    assert!(
                        self.connected.insert(replica),
                        "replica {replica} connected twice"
                    );
                }
                NodeEvent::PeerDisconnected {
                    connection,
                    cause: CloseCause::Timeout(Deadline::Liveness),
                    ..
                }
                | NodeEvent::ClientDisconnected {
                    connection,
                    cause: CloseCause::Timeout(Deadline::Liveness),
                    ..
                } if self.paused.contains(&connection) => {
                    panic!("{connection} declared dead while we did not read it");
                }
                NodeEvent::PeerDisconnected { replica, .. } => {
                    assert!(
                        self.connected.remove(&replica),
                        "replica {replica} lost twice"
                    );
                }
                NodeEvent::Request { request, .. } if self.requests.len() < 64 => {
                    self.requests.push(request);
                }
                _ => {}
            }
        }
        let c = &self.config;
        assert!(self.node.handshakes_in_flight() <= c.max_handshakes_in_flight);
        // Admitted clients within `max_connections`; the table within its
        // capacity (replicas and the pool have room beyond the clients).
        assert!(self.node.admitted_clients() <= c.max_connections);
        assert!(self.node.connections() <= table_capacity(c, 3));
        assert!(self.node.dedup().clients() <= c.dedup_max_clients);
        assert!(self.node.dedup().cached_bytes() <= c.dedup_max_cached_bytes);
        assert!(self.node.gate().replay_peers() <= c.max_replay_peers);
        for replica in &self.connected {
            assert!(self.node.is_connected(*replica));
        }
    }
}

fn at(now: Instant) -> Now {
    Now {
        mono: now,
        wall: wall(now),
    }
}

/// Node: arbitrary sockets, bytes, time and commands; the invariants hold
/// after every step.
pub fn node(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut harness = Harness::new();
    harness.settle();
    for op in ops::<Op>(&mut u) {
        harness.apply(op);
    }
}
