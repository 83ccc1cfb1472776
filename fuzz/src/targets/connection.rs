//! A dialer and an acceptor connection (with the acceptor's handshake gate)
//! joined by two in-order byte pipes, driven by arbitrary operations: honest
//! delivery in arbitrary pieces, raw and forged frames, time, sends,
//! closes and EOFs. The connection and handshake targets share it.

use super::ops;
use super::{CLUSTER, forge, wall};
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{Connection, DialParams, Event};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::{Binding, Gate, GateParams};
use bus_proto::time::Instant;
use bus_proto::wire::{CloseReason, Kind};
use bytes::Bytes;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Moves up to `len` bytes down the pipe into end `to`.
    Deliver {
        to: bool,
        len: u16,
    },
    Raw {
        to: bool,
        bytes: Vec<u8>,
    },
    Forge {
        to: bool,
        frame: super::Forged,
    },
    /// Milliseconds.
    Advance(u16),
    Send {
        from: bool,
        len: u8,
    },
    Close {
        side: bool,
        reason: u8,
    },
    Eof {
        side: bool,
    },
}

struct End {
    conn: Connection,
    established: bool,
    closed: bool,
    sent: Vec<Bytes>,
    received: Vec<Bytes>,
    /// Bytes other than the peer's own output reached this end.
    tampered: bool,
}

impl End {
    fn new(conn: Connection) -> Self {
        End {
            conn,
            established: false,
            closed: false,
            sent: Vec::new(),
            received: Vec::new(),
            tampered: false,
        }
    }
}

struct Duplex {
    config: ValidConfig,
    now: Instant,
    /// 0: the dialer, 1: the acceptor.
    ends: [End; 2],
    /// Bytes on their way to end `i`.
    pipes: [Vec<u8>; 2],
    gate: Gate,
    entropy: SeededEntropy,
}

fn config(authenticated_frames: bool) -> ValidConfig {
    {
        let mut tuned = Config::default();
        tuned.max_message_size = 4096;
        tuned.send_queue_frames = 64;
        tuned.send_queue_bytes = 64 * 4096;
        tuned.max_batch = 8;
        tuned.authenticated_frames = authenticated_frames;
        tuned
    }
    .validate()
    .expect("a valid fuzzing config")
}

impl Duplex {
    fn new(client: bool, authenticated_frames: bool) -> Self {
        let config = config(authenticated_frames);
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        let mut entropy = SeededEntropy::new(1);
        let now = Instant::ZERO;
        let local = if client {
            PeerId::Client(0xc1)
        } else {
            PeerId::Replica(0)
        };
        let dialer = Connection::dial(
            now,
            wall(now),
            &config,
            DialParams {
                cluster: CLUSTER,
                local,
                acceptor: 1,
                keys: &keys,
                binding: Binding::NONE,
            },
            &mut entropy,
        )
        .expect("a valid dial");
        let gate = Gate::new(
            &config,
            GateParams {
                cluster: CLUSTER,
                local: 1,
                replica_count: 3,
                accept_clients: true,
            },
            keys,
        );
        let acceptor = Connection::accept(now, &config, Binding::NONE);
        Duplex {
            now,
            ends: [End::new(dialer), End::new(acceptor)],
            pipes: [Vec::new(), Vec::new()],
            gate,
            entropy,
            config,
        }
    }

    fn apply(&mut self, op: Op, honest: bool) {
        let now = self.now;
        match op {
            Op::Deliver { to, len } if honest => {
                let i = usize::from(to);
                let n = usize::from(len).min(self.pipes[i].len());
                let bytes: Vec<u8> = self.pipes[i].drain(..n).collect();
                self.ends[i].conn.handle_input(now, &bytes);
            }
            Op::Raw { to, bytes } => {
                let i = usize::from(to);
                self.ends[i].tampered = true;
                self.ends[i].conn.handle_input(now, &bytes);
            }
            Op::Forge { to, frame } => {
                let i = usize::from(to);
                self.ends[i].tampered = true;
                self.ends[i].conn.handle_input(now, &forge(&frame));
            }
            Op::Advance(ms) => {
                self.now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                for end in &mut self.ends {
                    end.conn.handle_timeout(self.now);
                }
            }
            Op::Send { from, len } if honest => {
                let end = &mut self.ends[usize::from(from)];
                // Replica links carry messages; the client plane is the
                // node target's business.
                if !matches!(end.conn.peer(), Some(PeerId::Replica(_))) {
                    return;
                }
                let kind = Kind::Message { operation: 1 };
                let body = Bytes::from(vec![len; usize::from(len)]);
                if end.conn.send(kind, body.clone()).is_ok() {
                    end.sent.push(body);
                }
            }
            Op::Close { side, reason } => {
                let reason = CloseReason::ALL[usize::from(reason) % CloseReason::ALL.len()];
                self.ends[usize::from(side)].conn.close(now, reason);
            }
            Op::Eof { side } => self.ends[usize::from(side)].conn.handle_eof(now),
            Op::Deliver { .. } | Op::Send { .. } => {}
        }
        self.settle();
    }

    /// Admits a parked hello, collects output and events, and checks the
    /// invariants.
    fn settle(&mut self) {
        let now = self.now;
        if let Some(hello) = self.ends[1].conn.take_hello() {
            let admission = self.gate.admit(wall(now), hello, &mut self.entropy);
            self.ends[1].conn.admit(now, admission);
        }
        for i in 0..2 {
            while let Some(transmit) = self.ends[i].conn.poll_transmit(now) {
                assert!(transmit.frames() <= self.config.max_batch);
                let mut bytes = Vec::new();
                transmit.write_to(&mut bytes);
                self.pipes[1 - i].extend_from_slice(&bytes);
            }
            let end = &mut self.ends[i];
            while let Some(event) = end.conn.poll_event() {
                assert!(!end.closed, "an event after Closed: {event:?}");
                match event {
                    Event::Established { .. } => {
                        assert!(!end.established, "Established twice");
                        end.established = true;
                    }
                    Event::Message(frame) => {
                        assert!(end.established, "a message before the handshake");
                        end.received.push(frame.body);
                    }
                    Event::Closed { .. } => end.closed = true,
                }
            }
            let (frames, bytes) = end.conn.queued();
            assert!(frames <= self.config.send_queue_frames);
            assert!(bytes <= self.config.send_queue_bytes);
            assert_eq!(end.closed, end.conn.is_closed());
            assert!(end.closed || end.conn.poll_timeout().is_some());
        }
        // Untampered, in-order pipes: what arrives is a prefix of what was
        // sent, nothing lost, duplicated or reordered.
        for i in 0..2 {
            if !self.ends[i].tampered {
                let sent = &self.ends[1 - i].sent;
                let received = &self.ends[i].received;
                assert!(received.len() <= sent.len() && received[..] == sent[..received.len()]);
            }
        }
    }
}

fn run(data: &[u8], honest: bool) {
    let mut u = Unstructured::new(data);
    let (Ok(client), Ok(authenticated)) = (bool::arbitrary(&mut u), bool::arbitrary(&mut u)) else {
        return;
    };
    let mut duplex = Duplex::new(client, authenticated);
    duplex.settle();
    for op in ops::<Op>(&mut u) {
        duplex.apply(op, honest);
    }
}

/// Connection: the full duplex with honest delivery, sends and faults.
pub fn connection(data: &[u8]) {
    run(data, true);
}

/// Handshake messages: both ends see only forged or raw frames (with
/// `cfg(fuzzing)` every MAC verifies, so forged handshakes get through),
/// plus time, closes and EOFs.
pub fn handshake(data: &[u8]) {
    run(data, false);
}
