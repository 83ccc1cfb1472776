//! Two connections driven in memory: a virtual clock, a seeded byte pipe in
//! each direction (arbitrary chunking, latency, stalls, corruption, resets)
//! and an adversary that drops, replays or forges whole frames.
//!
//! Everything random comes from one seed, so a failing run replays exactly.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use bus_proto::config::ValidConfig;
use bus_proto::connection::{CloseCause, Connection, DialParams, Event};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::{AdmissionOutcome, Binding, Gate, GateParams};
use bus_proto::time::{Instant, UnixNanos};
use bus_proto::wire::{Frame, HEADER_SIZE, Header, Integrity, Kind};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

pub const CLUSTER: u128 = 0xC1;
/// Wall clock at virtual time zero (2026-01-01).
pub const WALL_BASE: u64 = 1_767_225_600_000_000_000;
/// Body of every frame the adversary forges.
pub const FORGED: &[u8] = b"FORGED BY THE ADVERSARY";

/// Fault rates are per mille.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Largest chunk the pipe delivers at once (0: whole transmits).
    pub max_chunk: usize,
    /// Per-chunk latency, up to this.
    pub max_delay: Duration,
    pub stall_per_mille: u32,
    pub stall: Duration,
    pub corrupt_per_mille: u32,
    pub reset_per_mille: u32,
    pub drop_frame_per_mille: u32,
    pub replay_frame_per_mille: u32,
    pub forge_frame_per_mille: u32,
}

/// One end of the pair, with what it observed.
pub struct End {
    pub conn: Connection,
    pub established: Option<(PeerId, bool)>,
    pub received: Vec<Frame>,
    pub closed: Vec<CloseCause>,
    /// Bodies queued by `send` (accepted), in order.
    pub sent: Vec<Bytes>,
    /// Bodies waiting to be offered to `send`.
    pub outbox: VecDeque<Bytes>,
    pub backpressure: u64,
}

impl End {
    fn new(conn: Connection) -> Self {
        End {
            conn,
            established: None,
            received: Vec::new(),
            closed: Vec::new(),
            sent: Vec::new(),
            outbox: VecDeque::new(),
            backpressure: 0,
        }
    }

    /// Offers queued bodies to the connection until it pushes back.
    fn offer(&mut self) {
        if self.established.is_none() {
            return;
        }
        while let Some(body) = self.outbox.front().cloned() {
            match self.conn.send(Kind::Message { operation: 1 }, body.clone()) {
                Ok(()) => {
                    self.sent.push(body);
                    self.outbox.pop_front();
                }
                Err(bus_proto::connection::SendError::Backpressure { .. }) => {
                    self.backpressure += 1;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn collect(&mut self) {
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Established {
                    peer,
                    authenticated_frames,
                } => {
                    assert!(self.established.is_none(), "Established reported twice");
                    self.established = Some((peer, authenticated_frames));
                }
                Event::Message(frame) => self.received.push(frame),
                Event::Closed { reason } => self.closed.push(reason),
            }
        }
    }
}

struct Pipe {
    /// Chunks with their delivery time, in order.
    chunks: VecDeque<(Instant, Vec<u8>)>,
    last: Instant,
    /// Frames seen in this direction (the adversary's sequence guess).
    frames_seen: u64,
}

/// The harness.
pub struct Pair {
    pub now: Instant,
    pub dialer: End,
    pub acceptor: End,
    pub gate: Gate,
    pub faults: Faults,
    pub admissions: Vec<AdmissionOutcome>,
    /// Whole frames seen on the wire, both directions, for replays.
    pub captured: VecDeque<Vec<u8>>,
    pub forged_sent: u64,
    pub resets: u64,
    /// Skew added to the acceptor's wall clock.
    pub acceptor_skew: i64,
    rng: SeededEntropy,
    pipes: [Pipe; 2],
}

/// How to build a pair.
#[derive(Clone)]
pub struct Setup {
    pub seed: u64,
    pub config: ValidConfig,
    pub dialer: PeerId,
    pub acceptor: u8,
    pub replica_count: u8,
    pub dialer_keys: KeyRing,
    pub acceptor_keys: KeyRing,
    pub dialer_binding: Binding,
    pub acceptor_binding: Binding,
    pub faults: Faults,
}

impl Setup {
    /// Replica 0 dials replica 1, both holding `key`.
    pub fn replicas(seed: u64, config: ValidConfig) -> Self {
        let key = Key::from_bytes([7; 32]);
        Setup {
            seed,
            config,
            dialer: PeerId::Replica(0),
            acceptor: 1,
            replica_count: 3,
            dialer_keys: KeyRing::new(key.clone()),
            acceptor_keys: KeyRing::new(key),
            dialer_binding: Binding::NONE,
            acceptor_binding: Binding::NONE,
            faults: Faults::default(),
        }
    }

    pub fn build(self) -> Pair {
        let gate = Gate::new(
            &self.config,
            GateParams {
                cluster: CLUSTER,
                local: self.acceptor,
                replica_count: self.replica_count,
                accept_clients: true,
            },
            self.acceptor_keys.clone(),
        );
        let mut pair = Pair {
            now: Instant::ZERO,
            dialer: End::new(Connection::accept(
                Instant::ZERO,
                &self.config,
                Binding::NONE,
            )),
            acceptor: End::new(Connection::accept(
                Instant::ZERO,
                &self.config,
                self.acceptor_binding,
            )),
            gate,
            faults: self.faults,
            admissions: Vec::new(),
            captured: VecDeque::new(),
            forged_sent: 0,
            resets: 0,
            acceptor_skew: 0,
            rng: SeededEntropy::new(self.seed),
            pipes: [Pipe::new(), Pipe::new()],
        };
        pair.dialer = End::new(pair.dial(&self));
        pair
    }
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            chunks: VecDeque::new(),
            last: Instant::ZERO,
            frames_seen: 0,
        }
    }
}

impl Pair {
    /// A new dialling connection from `setup`'s dialer (reusing the gate, as
    /// a node reconnecting would).
    pub fn dial(&mut self, setup: &Setup) -> Connection {
        let wall = self.wall();
        Connection::dial(
            self.now,
            wall,
            &setup.config,
            DialParams {
                cluster: CLUSTER,
                local: setup.dialer,
                acceptor: setup.acceptor,
                keys: &setup.dialer_keys,
                binding: setup.dialer_binding,
            },
            &mut self.rng,
        )
        .expect("valid dial")
    }

    /// Replaces both connections with fresh ones (same gate, same clock).
    pub fn reconnect(&mut self, setup: &Setup) {
        self.pipes = [Pipe::new(), Pipe::new()];
        self.dialer = End::new(self.dial(setup));
        self.acceptor = End::new(Connection::accept(
            self.now,
            &setup.config,
            setup.acceptor_binding,
        ));
    }

    pub fn wall(&self) -> UnixNanos {
        UnixNanos::from_nanos(WALL_BASE + self.now.as_nanos())
    }

    fn acceptor_wall(&self) -> UnixNanos {
        UnixNanos::from_nanos(
            self.wall()
                .as_nanos()
                .saturating_add_signed(self.acceptor_skew),
        )
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.next_u64() % 1000 < u64::from(per_mille)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    /// A random index below `n`.
    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below n")
    }

    fn random_delay(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX - 1);
        Duration::from_nanos(self.below(max + 1))
    }

    /// Injects raw bytes into a direction (0: to the acceptor, 1: to the dialer).
    pub fn inject(&mut self, direction: usize, bytes: Vec<u8>) {
        let at = self.now.max(self.pipes[direction].last);
        self.pipes[direction].chunks.push_back((at, bytes));
    }

    /// Runs until virtual time `until` or until nothing can happen any more.
    pub fn drive(&mut self, until: Instant) {
        loop {
            self.settle();
            let Some(next) = self.next_wakeup() else {
                break;
            };
            if next > until {
                self.now = until;
                break;
            }
            self.now = self.now.max(next);
            self.deliver_due();
            let now = self.now;
            self.dialer.conn.handle_timeout(now);
            self.acceptor.conn.handle_timeout(now);
        }
        self.settle();
    }

    /// Drives for `d` of virtual time.
    pub fn drive_for(&mut self, d: Duration) {
        let until = self.now.saturating_add(d);
        self.drive(until);
    }

    /// Drains outputs of both ends until nothing changes at this instant.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            if let Some(hello) = self.acceptor.conn.take_hello() {
                let wall = self.acceptor_wall();
                let admission = self.gate.admit(wall, hello, &mut self.rng);
                self.admissions.push(admission.outcome());
                self.acceptor.conn.admit(self.now, admission);
                progressed = true;
            }
            for side in 0..2 {
                let end = if side == 0 {
                    &mut self.dialer
                } else {
                    &mut self.acceptor
                };
                end.offer();
                let mut out = Vec::new();
                while let Some(t) = end.conn.poll_transmit(self.now) {
                    assert!(t.frames() > 0 && t.segments().len() <= 2 * 512);
                    t.write_to(&mut out);
                }
                end.collect();
                if !out.is_empty() {
                    progressed = true;
                    self.transmit(side, out);
                }
            }
            if self.deliver_due() {
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
        panic!("pair did not settle at {:?}", self.now);
    }

    /// Applies the adversary at frame granularity, then chunks with delays.
    fn transmit(&mut self, direction: usize, bytes: Vec<u8>) {
        let mut stream = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at + HEADER_SIZE <= bytes.len() {
            let size = u32::from_le_bytes(bytes[at + 48..at + 52].try_into().unwrap()) as usize;
            let frame = bytes[at..at + size].to_vec();
            at += size;
            if self.roll(self.faults.forge_frame_per_mille) {
                stream.extend_from_slice(&self.forge(direction));
            }
            if self.roll(self.faults.replay_frame_per_mille) && !self.captured.is_empty() {
                let i = self.index(self.captured.len());
                stream.extend_from_slice(&self.captured[i]);
            }
            self.captured.push_back(frame.clone());
            if self.captured.len() > 256 {
                self.captured.pop_front();
            }
            self.pipes[direction].frames_seen += 1;
            if !self.roll(self.faults.drop_frame_per_mille) {
                stream.extend_from_slice(&frame);
            }
        }
        assert_eq!(at, bytes.len(), "a transmit holds whole frames");
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = if self.faults.max_chunk == 0 {
                rest.len()
            } else {
                1 + self.index(self.faults.max_chunk)
            }
            .min(rest.len());
            let mut chunk = rest[..n].to_vec();
            rest = &rest[n..];
            if self.roll(self.faults.corrupt_per_mille) {
                let i = self.index(chunk.len());
                chunk[i] ^= u8::try_from(1 + self.below(255)).expect("1..=255");
            }
            let mut delay = self.random_delay(self.faults.max_delay);
            if self.roll(self.faults.stall_per_mille) {
                delay += self.random_delay(self.faults.stall);
            }
            let pipe = &mut self.pipes[direction];
            let when = pipe.last.max(self.now.saturating_add(delay));
            pipe.last = when;
            pipe.chunks.push_back((when, chunk));
        }
    }

    /// A frame made without the session key: valid checksum, a plausible
    /// sequence number, the peer's identity fields.
    fn forge(&mut self, direction: usize) -> Vec<u8> {
        self.forged_sent += 1;
        let replica = if direction == 0 { 0 } else { 1 };
        let frame = Frame {
            header: Header {
                cluster: CLUSTER,
                view: 0,
                release: 0,
                replica,
                sequence: self.pipes[direction].frames_seen,
                kind: Kind::Message { operation: 1 },
                app: bus_proto::wire::AppArea::ZERO,
            },
            body: Bytes::from_static(FORGED),
        };
        let mut out = Vec::new();
        frame
            .encode(&Integrity::Checksum, 1 << 20)
            .unwrap()
            .write_to(&mut out);
        out
    }

    /// Delivers chunks whose time has come; true if any was delivered.
    fn deliver_due(&mut self) -> bool {
        let mut any = false;
        for direction in 0..2 {
            while let Some((when, _)) = self.pipes[direction].chunks.front() {
                if *when > self.now {
                    break;
                }
                let (_, chunk) = self.pipes[direction].chunks.pop_front().unwrap();
                any = true;
                if self.roll(self.faults.reset_per_mille) {
                    self.reset();
                    return true;
                }
                let now = self.now;
                let end = if direction == 0 {
                    &mut self.acceptor
                } else {
                    &mut self.dialer
                };
                end.conn.handle_input(now, &chunk);
            }
        }
        any
    }

    /// The transport dies under both ends.
    pub fn reset(&mut self) {
        self.resets += 1;
        self.pipes = [Pipe::new(), Pipe::new()];
        let now = self.now;
        self.dialer.conn.handle_eof(now);
        self.acceptor.conn.handle_eof(now);
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let pipes = self
            .pipes
            .iter()
            .filter_map(|p| p.chunks.front().map(|c| c.0));
        let timers = [
            self.dialer.conn.poll_timeout(),
            self.acceptor.conn.poll_timeout(),
        ];
        pipes.chain(timers.into_iter().flatten()).min()
    }

    /// Both ends established and nothing left in flight or queued.
    pub fn quiet(&self) -> bool {
        self.pipes.iter().all(|p| p.chunks.is_empty())
            && self.dialer.outbox.is_empty()
            && self.acceptor.outbox.is_empty()
            && self.dialer.conn.queued().0 == 0
            && self.acceptor.conn.queued().0 == 0
    }
}

/// `received` must be an in-order, intact, duplicate-free prefix of `sent`.
pub fn assert_prefix(sent: &[Bytes], received: &[Frame], who: &str) {
    assert!(
        received.len() <= sent.len(),
        "{who}: received {} frames, only {} were sent",
        received.len(),
        sent.len()
    );
    for (i, (frame, body)) in received.iter().zip(sent).enumerate() {
        assert_eq!(
            &frame.body, body,
            "{who}: frame {i} differs from what was sent"
        );
    }
}
