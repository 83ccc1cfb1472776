//! The simulated network: a socket is two pipes of seeded chunks, each
//! due after a seeded latency, with corruption, resets, and partitions
//! that hold bytes back until they heal.

use super::Sim;
use bus_proto::node::ConnectionId;
use bus_proto::time::Instant;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Host {
    Node(u8),
    Client(usize),
    /// The adversary's raw sockets into a node.
    Adversary,
}

pub(super) type End = (Host, ConnectionId);

pub(super) struct Pipe {
    pub(super) chunks: VecDeque<(Instant, Vec<u8>)>,
    pub(super) last: Instant,
    /// The writer closed: EOF follows the last chunk.
    pub(super) eof: bool,
}

pub(super) struct Socket {
    pub(super) ends: [End; 2],
    pub(super) pipes: [Pipe; 2],
    /// The first transmits of the dialer (hello, confirm, first data), for
    /// the adversary.
    pub(super) captured: Vec<Vec<u8>>,
}

impl Sim {
    /// Kills a socket: both ends see EOF now, bytes in flight are lost.
    pub(super) fn reset_socket(&mut self, s: usize) {
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

    pub(super) fn open_socket(&mut self, dialer: End, acceptor: End) -> usize {
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
    pub(super) fn port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = port.checked_add(1).unwrap_or(40_000);
        port
    }

    /// The remote address a node sees for a socket dialled by an honest
    /// host: one address per host (10.0.1.<host index>: nodes first, then
    /// clients), a fresh port per socket.
    pub(super) fn remote_of(&mut self, host: Host) -> SocketAddr {
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

    pub(super) fn partitioned(&self, a: Host, b: Host) -> bool {
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
    pub(super) fn write(&mut self, from: End, bytes: Vec<u8>) {
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
    pub(super) fn close_end(&mut self, end: End) {
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
    pub(super) fn deliver(&mut self) -> bool {
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
}
