//! Two connections over transport layers (TLS, …) in memory: a virtual
//! clock and a seeded byte pipe in each direction (arbitrary chunking,
//! latency, stalls, corruption) under the layers, as a host would drive
//! them. Everything random comes from one seed, so a failing run replays.
#![allow(dead_code, unreachable_pub)]

use bus_proto::config::ValidConfig;
use bus_proto::connection::{CloseCause, Connection, DialParams, Event};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::{Binding, Gate, GateParams};
use bus_proto::host::{FrameTooLarge, StreamLayer};
use bus_proto::time::{Instant, Now, UnixNanos};
use bus_proto::wire::CloseReason;
use bus_proto::wire::Kind;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;

pub const CLUSTER: u128 = 0xC1;
/// Wall clock at virtual time zero (2026-01-01).
pub const WALL_BASE: u64 = 1_767_225_600_000_000_000;

/// Byte-level faults under the layers; rates are per mille of chunks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Largest chunk delivered at once (0: whole writes).
    pub max_chunk: usize,
    pub max_delay: Duration,
    pub stall_per_mille: u32,
    pub stall: Duration,
    pub corrupt_per_mille: u32,
}

/// One end: its layer, its connection once the layer is ready, and what it
/// saw.
pub struct Side {
    pub layer: Box<dyn StreamLayer>,
    pub conn: Option<Connection>,
    pub binding: Option<Binding>,
    pub sent: Vec<Bytes>,
    pub outbox: VecDeque<Bytes>,
    pub received: Vec<Bytes>,
    pub established: bool,
    pub closed: Option<CloseCause>,
    pub layer_error: Option<String>,
    /// The layer's close was started (after the connection drained).
    pub layer_closed: bool,
    /// The peer's stream ended; the layer's verdict on it.
    pub eof: Option<Result<(), String>>,
    inbox: VecDeque<(Instant, Vec<u8>)>,
    last: Instant,
}

impl Side {
    fn new(layer: Box<dyn StreamLayer>, conn: Option<Connection>) -> Side {
        Side {
            layer,
            conn,
            binding: None,
            sent: Vec::new(),
            outbox: VecDeque::new(),
            received: Vec::new(),
            established: false,
            closed: None,
            layer_error: None,
            layer_closed: false,
            eof: None,
            inbox: VecDeque::new(),
            last: Instant::ZERO,
        }
    }

    /// A typed reason the exchange stopped, if any.
    pub fn failure(&self) -> Option<String> {
        self.layer_error
            .clone()
            .or_else(|| self.closed.as_ref().map(|c| c.to_string()))
    }
}

pub struct LayeredPair {
    pub now: Instant,
    /// The dialer's configuration (the acceptor's may differ).
    pub config: ValidConfig,
    pub sides: [Side; 2],
    pub gate: Gate,
    pub faults: Faults,
    keys: KeyRing,
    rng: SeededEntropy,
}

pub const DIALER: usize = 0;
pub const ACCEPTOR: usize = 1;

impl LayeredPair {
    /// Replica 0 (over `dialer`) dials replica 1 (over `acceptor`).
    pub fn new(
        seed: u64,
        config: ValidConfig,
        dialer: Box<dyn StreamLayer>,
        acceptor: Box<dyn StreamLayer>,
        faults: Faults,
    ) -> LayeredPair {
        let acceptor_config = config.clone();
        Self::with_configs(seed, (config, acceptor_config), dialer, acceptor, faults)
    }

    /// [`LayeredPair::new`] with the dialer's and the acceptor's own
    /// configurations.
    pub fn with_configs(
        seed: u64,
        (config, acceptor_config): (ValidConfig, ValidConfig),
        dialer: Box<dyn StreamLayer>,
        acceptor: Box<dyn StreamLayer>,
        faults: Faults,
    ) -> LayeredPair {
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        let gate = Gate::new(
            &acceptor_config,
            GateParams {
                cluster: CLUSTER,
                local: 1,
                replica_count: 3,
                accept_clients: true,
            },
            keys.clone(),
        );
        let accepted = Connection::accept_pending(Instant::ZERO, &acceptor_config);
        LayeredPair {
            now: Instant::ZERO,
            sides: [Side::new(dialer, None), Side::new(acceptor, Some(accepted))],
            config,
            gate,
            faults,
            keys,
            rng: SeededEntropy::new(seed),
        }
    }

    fn at(&self) -> Now {
        Now {
            mono: self.now,
            wall: UnixNanos::from_nanos(WALL_BASE + self.now.as_nanos()),
        }
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.next_u64() % 1000 < u64::from(per_mille)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    fn delay(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX - 1);
        Duration::from_nanos(self.below(max + 1))
    }

    /// Gracefully closes `side`'s connection.
    pub fn close(&mut self, side: usize) {
        let now = self.now;
        if let Some(conn) = &mut self.sides[side].conn {
            conn.close(now, CloseReason::Shutdown);
        }
    }

    /// Ends the stream into `side` without any layer close (a TCP FIN).
    pub fn cut(&mut self, side: usize) {
        let verdict = self.sides[side].layer.read_eof().map_err(|e| e.to_string());
        self.sides[side].eof = Some(verdict);
        let now = self.now;
        if let Some(conn) = &mut self.sides[side].conn {
            conn.handle_eof(now);
        }
    }

    /// Puts raw wire bytes in `to`'s inbox, after what is already there.
    pub fn inject(&mut self, to: usize, bytes: Vec<u8>) {
        let when = self.sides[to].last.max(self.now);
        self.sides[to].last = when;
        self.sides[to].inbox.push_back((when, bytes));
    }

    /// Runs until `until` or until nothing can happen any more.
    pub fn drive(&mut self, until: Instant) {
        loop {
            self.settle();
            let next = self
                .sides
                .iter()
                .flat_map(|s| {
                    let inbox = s.inbox.front().map(|c| c.0);
                    let timer = s.conn.as_ref().and_then(|c| c.poll_timeout());
                    [inbox, timer]
                })
                .flatten()
                .min();
            let Some(next) = next else { break };
            if next > until {
                self.now = until;
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for side in &mut self.sides {
                if let Some(conn) = &mut side.conn {
                    conn.handle_timeout(now);
                }
            }
        }
        self.settle();
    }

    pub fn drive_for(&mut self, d: Duration) {
        let until = self.now.saturating_add(d);
        self.drive(until);
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut progressed = false;
            for side in [DIALER, ACCEPTOR] {
                progressed |= self.receive(side);
                progressed |= self.send(side);
            }
            if !progressed {
                return;
            }
        }
        panic!("the pair did not settle at {:?}", self.now);
    }

    /// Feeds `side` the wire bytes due now, through its layer, as a host
    /// does: the binding first, then the frames, then the new frame limit,
    /// and again while the layer stopped at a frame.
    fn receive(&mut self, side: usize) -> bool {
        let now = self.at();
        let s = &mut self.sides[side];
        let mut wire = BytesMut::new();
        while s.inbox.front().is_some_and(|c| c.0 <= now.mono) {
            let (_, chunk) = s.inbox.pop_front().expect("a chunk");
            wire.extend_from_slice(&chunk);
        }
        if wire.is_empty() || s.layer_error.is_some() {
            return !wire.is_empty();
        }
        loop {
            let s = &mut self.sides[side];
            let mut frames = BytesMut::new();
            if let Err(error) = s.layer.read_wire(now, &mut wire, &mut frames) {
                s.layer_error = Some(error.to_string());
                // As the host does: an oversize message is refused by the
                // core as its decoder refuses an oversize frame.
                let too_large = error.downcast_ref::<FrameTooLarge>().map(|e| e.size);
                if let Some(conn) = &mut s.conn {
                    match too_large {
                        Some(size) => conn.refuse_frame_size(size),
                        None => conn.handle_eof(now.mono),
                    }
                }
            }
            self.ready(side, now);
            let s = &mut self.sides[side];
            if let Some(conn) = &mut s.conn {
                if !frames.is_empty() {
                    conn.handle_input(now.mono, &frames);
                }
                // The acceptor admits the hello before reading on, as the
                // node does under its lock.
                if side == ACCEPTOR
                    && let Some(hello) = conn.take_hello()
                {
                    let admission = self.gate.admit(now.wall, hello, &mut self.rng);
                    conn.admit(now.mono, admission);
                }
                s.layer.set_frame_limit(conn.frame_limit());
            }
            if s.layer_error.is_some() || !s.layer.wants_read() {
                return true;
            }
        }
    }

    /// Starts the bus handshake on `side` once its layer is ready: the
    /// dialer's connection is created, the acceptor's bound.
    fn ready(&mut self, side: usize, now: Now) {
        let Some(binding) = self.sides[side].layer.take_ready() else {
            return;
        };
        self.sides[side].binding = Some(binding);
        match side {
            DIALER => {
                let params = DialParams {
                    cluster: CLUSTER,
                    local: PeerId::Replica(0),
                    acceptor: 1,
                    keys: &self.keys,
                    binding,
                };
                let conn =
                    Connection::dial(now.mono, now.wall, &self.config, params, &mut self.rng)
                        .expect("a valid dial");
                self.sides[side].conn = Some(conn);
            }
            _ => {
                if let Some(conn) = &mut self.sides[side].conn {
                    conn.bind(now.mono, binding);
                }
            }
        }
    }

    /// Runs `side`'s connection and layer outputs into the pipe.
    fn send(&mut self, side: usize) -> bool {
        let now = self.at();
        // A layer without a handshake of its own is ready at once.
        self.ready(side, now);
        let mut progressed = false;
        if side == ACCEPTOR
            && let Some(conn) = &mut self.sides[side].conn
            && let Some(hello) = conn.take_hello()
        {
            let admission = self.gate.admit(now.wall, hello, &mut self.rng);
            conn.admit(now.mono, admission);
            progressed = true;
        }
        let s = &mut self.sides[side];
        if let Some(conn) = &mut s.conn {
            if s.established {
                while let Some(body) = s.outbox.front().cloned() {
                    if conn
                        .send(Kind::Message { operation: 1 }, body.clone())
                        .is_err()
                    {
                        break;
                    }
                    s.sent.push(body);
                    s.outbox.pop_front();
                }
            }
            while let Some(batch) = conn.poll_transmit(now.mono) {
                if s.layer_error.is_none()
                    && let Err(error) = s.layer.write_frames(batch)
                {
                    s.layer_error = Some(error.to_string());
                }
                progressed = true;
            }
            while let Some(event) = conn.poll_event() {
                progressed = true;
                match event {
                    Event::Established { .. } => s.established = true,
                    Event::Message(frame) => s.received.push(frame.body),
                    Event::Closed { reason } => s.closed = Some(reason),
                }
            }
            if conn.is_drained() && !s.layer_closed && s.layer_error.is_none() {
                s.layer_closed = true;
                s.layer.close();
            }
        }
        let mut wire = Vec::new();
        s.layer.take_wire(&mut wire);
        if wire.is_empty() {
            return progressed;
        }
        let bytes: Vec<u8> = wire.iter().flat_map(|b| b.iter().copied()).collect();
        self.pipe(1 - side, bytes);
        true
    }

    /// Chunks `bytes` into `to`'s inbox, with the faults.
    fn pipe(&mut self, to: usize, bytes: Vec<u8>) {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = match self.faults.max_chunk {
                0 => rest.len(),
                max => 1 + usize::try_from(self.below(max as u64)).expect("small"),
            }
            .min(rest.len());
            let mut chunk = rest[..n].to_vec();
            rest = &rest[n..];
            if self.roll(self.faults.corrupt_per_mille) {
                let i = usize::try_from(self.below(chunk.len() as u64)).expect("small");
                chunk[i] ^= u8::try_from(1 + self.below(255)).expect("1..=255");
            }
            let mut delay = self.delay(self.faults.max_delay);
            if self.roll(self.faults.stall_per_mille) {
                delay += self.delay(self.faults.stall);
            }
            let when = self.sides[to].last.max(self.now.saturating_add(delay));
            self.sides[to].last = when;
            self.sides[to].inbox.push_back((when, chunk));
        }
    }
}
