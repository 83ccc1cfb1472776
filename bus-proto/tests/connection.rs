//! Connection behaviour and hazards (hazards.md 13, 20, 22–25): each test is
//! named after what it proves.

#[allow(unreachable_pub)]
mod support {
    pub mod pair;
}

use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{
    BatchBuffers, CloseCause, Connection, Deadline, DialParams, Event, SendError, Violation,
};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::{Binding, Gate, GateParams};
use bus_proto::time::Instant;
use bus_proto::wire::{
    CloseReason, Command, DecodeError, Frame, FrameDecoder, HEADER_SIZE, Header, Integrity, Kind,
    ReplyStatus, RequestHeader,
};
use bytes::Bytes;
use std::time::Duration;
use support::pair::{CLUSTER, Setup, WALL_BASE, assert_prefix};

fn config() -> ValidConfig {
    Config::default().validate().unwrap()
}

const T0: Instant = Instant::ZERO;

fn at_ms(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

/// Moves every pending transmit of `from` into `to`; returns the bytes.
fn pump(from: &mut Connection, to: &mut Connection, now: Instant) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(t) = from.poll_transmit(now) {
        t.write_to(&mut bytes);
    }
    to.handle_input(now, &bytes);
    bytes
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

fn closed(conn: &mut Connection) -> Vec<CloseCause> {
    events(conn)
        .into_iter()
        .filter_map(|e| match e {
            Event::Closed { reason } => Some(reason),
            _ => None,
        })
        .collect()
}

/// A dialer (`local`) and acceptor (replica 1) connection, handshake done.
fn establish_as(
    config: &ValidConfig,
    gate_config: &ValidConfig,
    local: PeerId,
) -> (Connection, Connection) {
    let ring = KeyRing::new(Key::from_bytes([7; 32]));
    let mut entropy = SeededEntropy::new(1);
    let mut gate = Gate::new(
        gate_config,
        GateParams {
            cluster: CLUSTER,
            local: 1,
            replica_count: 3,
            accept_clients: true,
        },
        ring.clone(),
    );
    let wall = bus_proto::time::UnixNanos::from_nanos(WALL_BASE);
    let params = DialParams {
        cluster: CLUSTER,
        local,
        acceptor: 1,
        keys: &ring,
        binding: Binding::NONE,
    };
    let mut dialer = Connection::dial(T0, wall, config, params, &mut entropy).unwrap();
    let mut acceptor = Connection::accept(T0, gate_config, Binding::NONE);
    pump(&mut dialer, &mut acceptor, T0);
    let hello = acceptor.take_hello().unwrap();
    acceptor.admit(T0, gate.admit(wall, hello, &mut entropy));
    pump(&mut acceptor, &mut dialer, T0);
    pump(&mut dialer, &mut acceptor, T0);
    for conn in [&mut dialer, &mut acceptor] {
        assert!(matches!(
            events(conn).as_slice(),
            [Event::Established { .. }]
        ));
    }
    (dialer, acceptor)
}

fn establish(config: &ValidConfig) -> (Connection, Connection) {
    establish_as(config, config, PeerId::Replica(0))
}

/// A checksum-mode frame as replica 0 would send it (what an attacker on a
/// trusted network can craft).
fn crafted(sequence: u64, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut header = Header::new(CLUSTER, kind);
    header.replica = 0;
    header.sequence = sequence;
    let mut out = Vec::new();
    Frame {
        header,
        body: Bytes::copy_from_slice(body),
    }
    .encode(&Integrity::Checksum, 1 << 20)
    .unwrap()
    .write_to(&mut out);
    out
}

/// Splits a checksum-mode byte stream into frames.
fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(Integrity::Checksum, 1 << 20);
    decoder.feed(bytes);
    std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
}

fn message(body: &str) -> (Kind, Bytes) {
    (
        Kind::Message { operation: 1 },
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

#[test]
fn replicas_exchange_messages_in_order_through_a_chunked_pipe() {
    let mut setup = Setup::replicas(1, config());
    setup.faults.max_chunk = 7;
    setup.faults.max_delay = Duration::from_millis(5);
    let mut pair = setup.build();
    for i in 0..200u32 {
        pair.dialer
            .outbox
            .push_back(Bytes::from(format!("d{i}").repeat(i as usize)));
        pair.acceptor.outbox.push_back(Bytes::from(format!("a{i}")));
    }
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(pair.dialer.established, Some((PeerId::Replica(1), false)));
    assert_eq!(pair.acceptor.established, Some((PeerId::Replica(0), false)));
    assert_eq!(
        (pair.acceptor.received.len(), pair.dialer.received.len()),
        (200, 200)
    );
    assert_prefix(&pair.dialer.sent, &pair.acceptor.received, "acceptor");
    assert_prefix(&pair.acceptor.sent, &pair.dialer.received, "dialer");
}

#[test]
fn sequence_gap_jump_replay_or_max_closes_the_connection() {
    for bad in [4u64, 1000, u64::MAX, 2] {
        let (_dialer, mut acceptor) = establish(&config());
        // The dialer sent hello (0) and confirm (1): 2 is due.
        acceptor.handle_input(T0, &crafted(2, Kind::Message { operation: 1 }, b"ok"));
        acceptor.handle_input(T0, &crafted(bad, Kind::Message { operation: 1 }, b"bad"));
        let events = events(&mut acceptor);
        assert!(matches!(&events[0], Event::Message(f) if f.body == "ok"));
        assert_eq!(
            events[1..],
            [Event::Closed {
                reason: CloseCause::Violation(Violation::Sequence {
                    expected: 3,
                    received: bad
                })
            }]
        );
    }
}

#[test]
fn send_queue_is_bounded_by_frames_and_bytes_and_reports_backpressure() {
    let config = {
        let mut tuned = Config::default();
        tuned.send_queue_frames = 64;
        tuned.send_queue_bytes = 1 << 20;
        tuned
    }
    .validate()
    .unwrap();
    let (mut dialer, mut acceptor) = establish(&config);
    for i in 0..64 {
        let (kind, body) = message(&format!("{i}"));
        dialer.send(kind, body).unwrap();
    }
    let (kind, body) = message("one too many");
    let err = dialer.send(kind, body).unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Backpressure {
                queued_frames: 64,
                max_frames: 64,
                ..
            }
        ),
        "{err}"
    );
    pump(&mut dialer, &mut acceptor, T0);
    assert_eq!(events(&mut acceptor).len(), 64, "nothing queued was lost");
    // The byte bound.
    let half = Bytes::from(vec![0u8; (1 << 19) - HEADER_SIZE]);
    dialer
        .send(Kind::Message { operation: 1 }, half.clone())
        .unwrap();
    dialer
        .send(Kind::Message { operation: 1 }, half.clone())
        .unwrap();
    let err = dialer
        .send(Kind::Message { operation: 1 }, Bytes::from_static(b"x"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Backpressure {
                queued_frames: 2,
                queued_bytes: 1048576,
                ..
            }
        ),
        "{err}"
    );
    // Too large for any queue: a typed encode error, not backpressure.
    let huge = Bytes::from(vec![0u8; 1 << 20]);
    assert!(matches!(
        dialer.send(Kind::Message { operation: 1 }, huge),
        Err(SendError::Encode(_))
    ));
}

#[test]
fn ping_flood_cannot_grow_the_control_lane() {
    let (_dialer, mut acceptor) = establish(&config());
    let mut flood = Vec::new();
    for i in 0..1000u64 {
        flood.extend_from_slice(&crafted(2 + i, Kind::Ping { token: i }, b""));
    }
    acceptor.handle_input(T0, &flood);
    let mut out = Vec::new();
    while let Some(t) = acceptor.poll_transmit(T0) {
        t.write_to(&mut out);
    }
    let frames = frames_of(&out);
    assert_eq!(frames.len(), 1, "one pong for the whole flood");
    assert_eq!(frames[0].header.kind, Kind::Pong { token: 999 });
}

#[test]
fn control_frames_overtake_queued_data() {
    let (_dialer, mut acceptor) = establish(&config());
    for i in 0..1000 {
        let (kind, body) = message(&format!("bulk {i}"));
        acceptor.send(kind, body).unwrap();
    }
    acceptor.handle_input(T0, &crafted(2, Kind::Ping { token: 42 }, b""));
    let first = acceptor.poll_transmit(T0).unwrap();
    let mut bytes = Vec::new();
    first.write_to(&mut bytes);
    let frames = frames_of(&bytes);
    assert_eq!(frames[0].header.kind, Kind::Pong { token: 42 });
    assert_eq!(frames.len(), config().max_batch);
    // A fatal close also goes first, and queued data is dropped with it.
    let (_dialer, mut acceptor) = establish(&config());
    for i in 0..1000 {
        let (kind, body) = message(&format!("bulk {i}"));
        acceptor.send(kind, body).unwrap();
    }
    acceptor.handle_timeout(at_ms(5_000));
    let mut bytes = Vec::new();
    acceptor
        .poll_transmit(at_ms(5_000))
        .unwrap()
        .write_to(&mut bytes);
    let frames = frames_of(&bytes);
    assert_eq!(frames.len(), 1);
    assert_eq!(
        frames[0].header.kind,
        Kind::Close {
            reason: CloseReason::Timeout
        }
    );
    assert!(acceptor.poll_transmit(at_ms(5_000)).is_none() && acceptor.is_drained());
}

#[test]
fn closed_is_reported_exactly_once_on_every_path() {
    type Path = fn(&mut Connection, &mut Connection);
    let paths: [(&str, Path); 6] = [
        ("eof twice", |_, a| {
            a.handle_eof(T0);
            a.handle_eof(T0);
        }),
        ("eof then timeout then close", |_, a| {
            a.handle_eof(T0);
            a.handle_timeout(at_ms(60_000));
            a.close(T0, CloseReason::Shutdown);
        }),
        ("liveness then eof", |_, a| {
            a.handle_timeout(at_ms(5_000));
            a.handle_eof(at_ms(5_001));
        }),
        ("bad frame then more input then eof", |_, a| {
            a.handle_input(T0, &[0xFF; 300]);
            a.handle_input(T0, &[0xFF; 300]);
            a.handle_eof(T0);
        }),
        ("graceful close, grace expiry, eof", |_, a| {
            a.close(T0, CloseReason::Shutdown);
            let _ = a.poll_transmit(T0);
            a.handle_timeout(at_ms(2_000));
            a.handle_eof(at_ms(2_001));
            a.handle_timeout(at_ms(9_000));
        }),
        ("peer close answered, then eof", |d, a| {
            d.close(T0, CloseReason::Shutdown);
            pump(d, a, T0);
            pump(a, d, T0);
            a.handle_eof(T0);
            d.handle_eof(T0);
        }),
    ];
    for (name, path) in paths {
        let (mut dialer, mut acceptor) = establish(&config());
        path(&mut dialer, &mut acceptor);
        assert_eq!(closed(&mut acceptor).len(), 1, "{name}");
        assert!(
            acceptor.poll_timeout().is_none(),
            "{name}: timer left after close"
        );
    }
    // Before the handshake too.
    let mut conn = Connection::accept(T0, &config(), Binding::NONE);
    conn.handle_timeout(at_ms(10_000));
    conn.handle_eof(at_ms(10_001));
    conn.close(at_ms(10_002), CloseReason::Shutdown);
    assert_eq!(
        closed(&mut conn),
        vec![CloseCause::Timeout(Deadline::Hello)]
    );
}

#[test]
fn batches_respect_max_batch_and_the_iovec_limit() {
    let config = {
        let mut tuned = Config::default();
        tuned.max_batch = 512;
        tuned.send_queue_frames = 4096;
        tuned
    }
    .validate()
    .unwrap();
    let (mut dialer, mut acceptor) = establish(&config);
    let mut sent = Vec::new();
    for i in 0..1500u32 {
        let len = if i % 2 == 0 { 10 } else { 2000 };
        let body = Bytes::from(vec![u8::try_from(i % 251).unwrap(); len]);
        dialer
            .send(Kind::Message { operation: i }, body.clone())
            .unwrap();
        sent.push(body);
    }
    let mut batches = 0;
    while let Some(t) = dialer.poll_transmit(T0) {
        assert!(t.frames() <= 512, "{} frames in one batch", t.frames());
        assert!(t.segments().len() <= 1024, "{} iovecs", t.segments().len());
        let mut bytes = Vec::new();
        t.write_to(&mut bytes);
        acceptor.handle_input(T0, &bytes);
        batches += 1;
    }
    assert_eq!(batches, 3);
    let received: Vec<Frame> = events(&mut acceptor)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(f) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(received.len(), 1500);
    assert_prefix(&sent, &received, "acceptor");
}

#[test]
fn graceful_close_flushes_queued_data_then_both_sides_close() {
    let (mut dialer, mut acceptor) = establish(&config());
    for i in 0..10 {
        let (kind, body) = message(&format!("last words {i}"));
        dialer.send(kind, body).unwrap();
    }
    dialer.close(T0, CloseReason::Shutdown);
    assert_eq!(
        dialer.send(message("late").0, message("late").1),
        Err(SendError::Closed)
    );
    pump(&mut dialer, &mut acceptor, T0);
    let got = events(&mut acceptor);
    assert_eq!(
        got.len(),
        10,
        "data before the close; the acceptor answers first"
    );
    assert!(got.iter().all(|e| matches!(e, Event::Message(_))));
    pump(&mut acceptor, &mut dialer, T0);
    assert_eq!(
        closed(&mut acceptor),
        vec![CloseCause::Peer(CloseReason::Shutdown)]
    );
    assert_eq!(
        closed(&mut dialer),
        vec![CloseCause::Local(CloseReason::Shutdown)]
    );
    assert!(dialer.is_drained() && acceptor.is_drained());
}

#[test]
fn graceful_close_is_bounded_by_one_grace_period() {
    let (mut dialer, _acceptor) = establish(&config());
    for i in 0..10 {
        let (kind, body) = message(&format!("{i}"));
        dialer.send(kind, body).unwrap();
    }
    let start = at_ms(100);
    dialer.close(start, CloseReason::Shutdown);
    // The peer never reads and never answers.
    let _ = dialer.poll_transmit(start);
    assert_eq!(dialer.poll_timeout(), Some(at_ms(2_100)));
    dialer.handle_timeout(at_ms(2_099));
    assert!(closed(&mut dialer).is_empty());
    dialer.handle_timeout(at_ms(2_100));
    assert_eq!(
        closed(&mut dialer),
        vec![CloseCause::Timeout(Deadline::CloseGrace)]
    );
}

#[test]
fn heartbeats_keep_an_idle_connection_alive_and_measure_rtt() {
    let mut setup = Setup::replicas(2, config());
    setup.faults.max_delay = Duration::from_millis(30);
    let mut pair = setup.build();
    pair.drive_for(Duration::from_secs(60));
    assert!(pair.dialer.closed.is_empty() && pair.acceptor.closed.is_empty());
    for end in [&pair.dialer, &pair.acceptor] {
        let rtt = end.conn.rtt().expect("a pong arrived");
        assert!(rtt <= Duration::from_millis(60), "{rtt:?}");
        let frames = end.conn.stats().frames_sent;
        assert!((50..=200).contains(&frames), "{frames} heartbeats in 60 s");
    }
}

#[test]
fn silence_after_the_handshake_closes_at_the_liveness_deadline() {
    let (_dialer, mut acceptor) = establish(&config());
    acceptor.handle_timeout(at_ms(1_000));
    let ping = acceptor.poll_transmit(at_ms(1_000)).unwrap();
    assert_eq!(ping.frames(), 1, "a heartbeat when idle");
    acceptor.handle_timeout(at_ms(4_999));
    assert!(closed(&mut acceptor).is_empty());
    assert_eq!(acceptor.poll_timeout(), Some(at_ms(5_000)));
    acceptor.handle_timeout(at_ms(5_000));
    assert_eq!(
        closed(&mut acceptor),
        vec![CloseCause::Timeout(Deadline::Liveness)]
    );
}

/// Hazard 31: while the host does not read (the application is slow),
/// silence proves nothing, so the liveness deadline is suspended; on resume
/// the peer gets a whole `liveness_timeout`. Heartbeats keep going out.
#[test]
fn a_paused_reader_never_declares_its_peer_dead() {
    let (_dialer, mut acceptor) = establish(&config());
    acceptor.set_reading_paused(at_ms(500), true);
    for s in 1..=30 {
        let now = at_ms(s * 1_000);
        acceptor.handle_timeout(now);
        // A heartbeat per idle second: the peer keeps hearing from us.
        let ping = acceptor.poll_transmit(now).expect("a heartbeat");
        assert_eq!(ping.frames(), 1);
        assert!(
            closed(&mut acceptor).is_empty(),
            "closed after {s} s paused"
        );
    }
    acceptor.set_reading_paused(at_ms(30_000), false);
    acceptor.handle_timeout(at_ms(34_999));
    assert!(closed(&mut acceptor).is_empty());
    acceptor.handle_timeout(at_ms(35_000));
    assert_eq!(
        closed(&mut acceptor),
        vec![CloseCause::Timeout(Deadline::Liveness)]
    );
}

#[test]
fn client_plane_carries_requests_and_replies_for_that_client_only() {
    let client = 0xC11E47u128;
    let (mut dialer, mut acceptor) = establish_as(&config(), &config(), PeerId::Client(client));
    let request = RequestHeader {
        client,
        request: 1,
        operation: 7,
    };
    dialer
        .send(Kind::Request(request), Bytes::from_static(b"get"))
        .unwrap();
    assert!(matches!(
        dialer.send(Kind::Message { operation: 1 }, Bytes::new()),
        Err(SendError::NotAllowed {
            command: Command::Message,
            ..
        })
    ));
    assert!(matches!(
        acceptor.send(Kind::Request(request), Bytes::new()),
        Err(SendError::NotAllowed {
            command: Command::Request,
            ..
        })
    ));
    pump(&mut dialer, &mut acceptor, T0);
    let got = events(&mut acceptor);
    let [Event::Message(frame)] = got.as_slice() else {
        panic!("one request, got {got:?}")
    };
    assert_eq!(frame.header.kind, Kind::Request(request));
    acceptor
        .send(
            Kind::Reply {
                request,
                status: ReplyStatus::Ok,
            },
            Bytes::from_static(b"value"),
        )
        .unwrap();
    pump(&mut acceptor, &mut dialer, T0);
    assert!(matches!(events(&mut dialer).as_slice(), [Event::Message(f)] if f.body == "value"));
    // A request naming another client is a violation.
    let other = RequestHeader {
        client: client + 1,
        ..request
    };
    dialer.send(Kind::Request(other), Bytes::new()).unwrap();
    pump(&mut dialer, &mut acceptor, T0);
    assert_eq!(
        closed(&mut acceptor),
        vec![CloseCause::Violation(Violation::Client {
            expected: client,
            received: client + 1
        })]
    );
}

#[test]
fn authenticated_frames_follow_when_either_side_requires_them() {
    let plain = config();
    let strict = {
        let mut tuned = Config::default();
        tuned.authenticated_frames = true;
        tuned
    }
    .validate()
    .unwrap();
    for (dialer_config, acceptor_config) in
        [(&plain, &strict), (&strict, &plain), (&strict, &strict)]
    {
        let (mut dialer, mut acceptor) =
            establish_as(dialer_config, acceptor_config, PeerId::Replica(0));
        assert!(dialer.authenticated_frames() && acceptor.authenticated_frames());
        let (kind, body) = message("tagged");
        dialer.send(kind, body).unwrap();
        pump(&mut dialer, &mut acceptor, T0);
        assert!(
            matches!(events(&mut acceptor).as_slice(), [Event::Message(f)] if f.body == "tagged")
        );
        // A frame with a valid checksum but no tag is refused.
        acceptor.handle_input(T0, &crafted(3, Kind::Message { operation: 1 }, b"injected"));
        assert_eq!(
            closed(&mut acceptor),
            vec![CloseCause::Decode(DecodeError::HeaderTag)]
        );
    }
    let (dialer, acceptor) = establish(&plain);
    assert!(!dialer.authenticated_frames() && !acceptor.authenticated_frames());
}

#[test]
fn frames_after_the_peers_close_are_a_violation() {
    let (_dialer, mut acceptor) = establish(&config());
    let mut bytes = crafted(
        2,
        Kind::Close {
            reason: CloseReason::Shutdown,
        },
        b"",
    );
    bytes.extend_from_slice(&crafted(3, Kind::Message { operation: 1 }, b"after close"));
    acceptor.handle_input(T0, &bytes);
    assert_eq!(
        closed(&mut acceptor),
        vec![CloseCause::Violation(Violation::Unexpected {
            command: Command::Message,
            state: "after the peer's close"
        })]
    );
}

/// A written batch's buffer, given back, carries the next batches: they
/// are built in the same allocation, and its stale bytes never reach the
/// wire.
#[test]
fn a_batch_buffer_given_back_carries_the_next_batches() {
    let (mut dialer, mut acceptor) = establish(&config());
    let mut buffers = BatchBuffers::default();
    let mut allocation = None;
    for round in 0..4u8 {
        let sent: Vec<Bytes> = (0..3u8)
            .map(|i| Bytes::from(vec![round * 10 + i; 40 - usize::from(i)]))
            .collect();
        for body in &sent {
            dialer
                .send(Kind::Message { operation: 1 }, body.clone())
                .unwrap();
        }
        let batch = dialer.poll_unsealed_in(T0, &mut buffers).unwrap();
        assert!(
            buffers.is_empty(),
            "round {round}: the kept buffer is taken"
        );
        let [segment] = <[Bytes; 1]>::try_from(batch.seal().into_segments()).unwrap();
        let start = segment.as_ptr() as usize;
        let (first, end) = *allocation.get_or_insert((start, start + segment.len()));
        assert!(
            (first..end).contains(&start) && start + segment.len() <= end,
            "round {round}: built in a new allocation"
        );
        acceptor.handle_input(T0, &segment);
        let got: Vec<Bytes> = events(&mut acceptor)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(frame) => Some(frame.body),
                _ => None,
            })
            .collect();
        assert_eq!(got, sent, "round {round}");
        // Written: the buffer goes back, holding this batch's bytes.
        buffers.reuse(segment.try_into_mut().expect("the batch's only holder"));
        assert_eq!(buffers.len(), 1);
    }
}

#[test]
fn batch_buffers_keep_a_bounded_number_of_bounded_buffers() {
    let mut buffers = BatchBuffers::default();
    buffers.reuse(bytes::BytesMut::with_capacity(BatchBuffers::KEEP_MAX + 1));
    assert!(buffers.is_empty(), "a buffer above the size bound is freed");
    // Also when written bytes hide its allocation behind its start.
    let written = bytes::BytesMut::from(&[1; BatchBuffers::KEEP_MAX + 1][..]).freeze();
    let mut taken_back = written.try_into_mut().unwrap();
    bytes::Buf::advance(&mut taken_back, BatchBuffers::KEEP_MAX + 1);
    assert_eq!(taken_back.capacity(), 0);
    buffers.reuse(taken_back);
    assert!(
        buffers.is_empty(),
        "a written buffer above the size bound is freed"
    );
    // A buffer still shared with another handle could pin anything.
    let mut shared = bytes::BytesMut::from(&[1; 1 << 20][..]);
    let other = shared.split_off(16);
    buffers.reuse(shared);
    assert!(
        buffers.is_empty(),
        "a buffer another handle holds is not kept"
    );
    drop(other);
    buffers.reuse(bytes::BytesMut::with_capacity(BatchBuffers::KEEP_MAX));
    assert_eq!(buffers.len(), 1, "a buffer at the size bound is kept");
    let mut buffers = BatchBuffers::default();
    for _ in 0..BatchBuffers::KEPT + 3 {
        buffers.reuse(bytes::BytesMut::with_capacity(1024));
    }
    assert_eq!(buffers.len(), BatchBuffers::KEPT);
}
