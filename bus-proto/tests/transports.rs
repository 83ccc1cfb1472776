//! Connections over transport layers in memory: the pair property under
//! TLS (seeded chunking, stalls, corruption), close_notify and truncation,
//! large records, and the one handshake budget in the core.

mod support {
    pub mod layered;
}

use bus_proto::client::{Client, ClientParams};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{CloseCause, Connection, Deadline};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::Binding;
use bus_proto::host::{LayerFactory, StreamLayer};
use bus_proto::node::{Action, Node, NodeParams};
use bus_proto::time::{Instant, Now, UnixNanos};
use bus_proto::transport::BindingPolicy;
use bus_proto::transport::tls::{TlsClient, TlsServer};
use bus_proto::transport::ws::{WsClient, WsServer};
use bytes::Bytes;
use proptest::prelude::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::OnceLock;
use std::time::Duration;
use support::layered::{ACCEPTOR, DIALER, Faults, LayeredPair, WALL_BASE};

/// One self-signed certificate for every test (generating one per case
/// would dominate the run).
fn identity() -> &'static (CertificateDer<'static>, PrivateKeyDer<'static>) {
    static IDENTITY: OnceLock<(CertificateDer<'static>, PrivateKeyDer<'static>)> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["replica-1".into()]).expect("a certificate");
        (
            certified.cert.der().clone(),
            PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )
    })
}

fn tls_layers(policy: BindingPolicy) -> (Box<dyn StreamLayer>, Box<dyn StreamLayer>) {
    let (cert, key) = identity();
    let server = TlsServer::new(vec![cert.clone()], key.clone_key())
        .expect("server config")
        .binding(policy);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("a root");
    let client = TlsClient::new(roots, "replica-1")
        .expect("client config")
        .binding(policy);
    (
        client.layer().expect("a client layer"),
        server.layer().expect("a server layer"),
    )
}

fn ws_layers() -> (Box<dyn StreamLayer>, Box<dyn StreamLayer>) {
    let client = WsClient::new("ws://replica-1:7000/bus").expect("a ws URL");
    (
        client.layer().expect("a client layer"),
        WsServer::new().layer().expect("a server layer"),
    )
}

fn wss_layers(policy: BindingPolicy) -> (Box<dyn StreamLayer>, Box<dyn StreamLayer>) {
    let (cert, key) = identity();
    let server = TlsServer::new(vec![cert.clone()], key.clone_key())
        .expect("server config")
        .binding(policy);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("a root");
    let tls = TlsClient::new(roots, "replica-1")
        .expect("client config")
        .binding(policy);
    let client = WsClient::over_tls("wss://replica-1:7000/bus", &tls).expect("a wss URL");
    (
        client.layer().expect("a client layer"),
        WsServer::over_tls(&server).layer().expect("a server layer"),
    )
}

/// Plain TCP as a layer: bytes pass through, ready at once, no binding.
struct Plain {
    ready: bool,
    wire: Vec<Bytes>,
}

impl StreamLayer for Plain {
    fn read_wire(
        &mut self,
        _: Now,
        wire: &mut bytes::BytesMut,
        frames: &mut bytes::BytesMut,
    ) -> Result<(), bus_proto::host::LayerError> {
        frames.extend_from_slice(wire);
        wire.clear();
        Ok(())
    }
    fn read_eof(&mut self) -> Result<(), bus_proto::host::LayerError> {
        Ok(())
    }
    fn take_ready(&mut self) -> Option<Binding> {
        (!std::mem::replace(&mut self.ready, true)).then_some(Binding::NONE)
    }
    fn write_frames(
        &mut self,
        batch: bus_proto::connection::Transmit,
    ) -> Result<(), bus_proto::host::LayerError> {
        self.wire.extend(batch.into_segments());
        Ok(())
    }
    fn close(&mut self) {}
    fn take_wire(&mut self, out: &mut Vec<Bytes>) {
        out.append(&mut self.wire);
    }
}

fn plain() -> Box<dyn StreamLayer> {
    Box::new(Plain {
        ready: false,
        wire: Vec::new(),
    })
}

/// The transports under test, by name.
fn layers(transport: &str) -> (Box<dyn StreamLayer>, Box<dyn StreamLayer>) {
    match transport {
        "tcp" => (plain(), plain()),
        "tls" => tls_layers(BindingPolicy::TlsExporter),
        "ws" => ws_layers(),
        "wss" => wss_layers(BindingPolicy::TlsExporter),
        other => unreachable!("no transport {other}"),
    }
}

fn config(max_message_size: u32) -> ValidConfig {
    {
        let mut tuned = Config::default();
        tuned.max_message_size = max_message_size;
        tuned
    }
    .validate()
    .expect("valid config")
}

fn tls_pair(seed: u64, faults: Faults) -> LayeredPair {
    pair("tls", seed, faults)
}

fn pair(transport: &str, seed: u64, faults: Faults) -> LayeredPair {
    let (dialer, acceptor) = layers(transport);
    LayeredPair::new(seed, config(1 << 20), dialer, acceptor, faults)
}

/// Bodies of assorted sizes: under, around and over a TLS record (16 KiB).
fn bodies(seed: u64, count: usize) -> Vec<Bytes> {
    let sizes = [0usize, 1, 100, 16_000, 16_384, 16_500, 70_000, 300_000];
    (0..count)
        .map(|i| {
            let pick = (seed % 8) as usize + i * 7;
            let size = sizes[pick % sizes.len()];
            let fill = u8::try_from((i + (seed % 200) as usize) % 251).expect("below 251");
            Bytes::from(vec![fill; size])
        })
        .collect()
}

/// What each end received is what the other sent, in order, intact and
/// once (a prefix of it); if not all of it, the exchange ended with a
/// typed reason.
fn check_delivery(pair: &LayeredPair, seed: u64) {
    for (from, to) in [(DIALER, ACCEPTOR), (ACCEPTOR, DIALER)] {
        let sent = &pair.sides[from].sent;
        let received = &pair.sides[to].received;
        assert!(
            received.len() <= sent.len() && received[..] == sent[..received.len()],
            "seed {seed}: side {to} received something other than a prefix of what side {from} sent"
        );
        let complete = received.len() == sent.len() && pair.sides[from].outbox.is_empty();
        assert!(
            complete || pair.sides.iter().any(|s| s.failure().is_some()),
            "seed {seed}: side {to} got {} of {} bodies, and nothing says why",
            received.len(),
            sent.len() + pair.sides[from].outbox.len()
        );
    }
}

fn faults(max_chunk: usize, corrupt: u32, stall: bool) -> Faults {
    Faults {
        max_chunk,
        max_delay: Duration::from_millis(5),
        stall_per_mille: if stall { 20 } else { 0 },
        stall: Duration::from_millis(800),
        corrupt_per_mille: corrupt,
    }
}

/// The pair property over `transport`: with arbitrary chunking everything
/// arrives in order, intact and exactly once; with stalls or corruption,
/// what arrives is still a clean prefix and the rest ends in a typed
/// close.
fn pair_property(
    transport: &str,
    seed: u64,
    max_chunk: usize,
    corrupt: u32,
    stall: bool,
) -> Result<(), TestCaseError> {
    println!(
        "TRANSPORT={transport} SEED={seed} max_chunk={max_chunk} corrupt={corrupt} stall={stall}"
    );
    let mut pair = pair(transport, seed, faults(max_chunk, corrupt, stall));
    pair.sides[DIALER].outbox.extend(bodies(seed, 12));
    pair.sides[ACCEPTOR].outbox.extend(bodies(seed ^ 1, 12));
    pair.drive_for(Duration::from_secs(30));
    check_delivery(&pair, seed);
    // Stalls on a byte-at-a-time pipe can outlast the handshake budget:
    // that is a typed close (checked above), not a failure to deliver.
    if corrupt == 0 && !stall {
        for side in &pair.sides {
            prop_assert!(side.established, "seed {seed}: not established");
            prop_assert!(
                side.failure().is_none(),
                "seed {seed}: {:?}",
                side.failure()
            );
        }
        prop_assert_eq!(pair.sides[DIALER].binding, pair.sides[ACCEPTOR].binding);
        if transport != "ws" {
            prop_assert_ne!(pair.sides[DIALER].binding, Some(Binding::NONE));
        }
        prop_assert_eq!(pair.sides[ACCEPTOR].received.len(), 12);
        prop_assert_eq!(pair.sides[DIALER].received.len(), 12);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn tls_pairs_deliver_in_order_exactly_once_or_close(
        seed in any::<u64>(),
        max_chunk in prop_oneof![Just(0usize), 1usize..64, 64usize..20_000],
        corrupt in prop_oneof![Just(0u32), 1u32..30],
        stall in any::<bool>(),
    ) {
        pair_property("tls", seed, max_chunk, corrupt, stall)?;
    }

    #[test]
    fn ws_pairs_deliver_in_order_exactly_once_or_close(
        seed in any::<u64>(),
        max_chunk in prop_oneof![Just(0usize), 1usize..64, 64usize..20_000],
        corrupt in prop_oneof![Just(0u32), 1u32..30],
        stall in any::<bool>(),
    ) {
        pair_property("ws", seed, max_chunk, corrupt, stall)?;
    }

    #[test]
    fn wss_pairs_deliver_in_order_exactly_once_or_close(
        seed in any::<u64>(),
        max_chunk in prop_oneof![Just(0usize), 1usize..64, 64usize..20_000],
        corrupt in prop_oneof![Just(0u32), 1u32..30],
        stall in any::<bool>(),
    ) {
        pair_property("wss", seed, max_chunk, corrupt, stall)?;
    }
}

#[test]
fn a_graceful_close_ends_in_close_notify_after_the_bus_close() {
    let mut pair = tls_pair(1, Faults::default());
    pair.sides[DIALER]
        .outbox
        .push_back(Bytes::from_static(b"last words"));
    pair.drive_for(Duration::from_secs(1));
    pair.close(DIALER);
    pair.drive_for(Duration::from_secs(5));
    assert_eq!(
        pair.sides[ACCEPTOR].received,
        vec![Bytes::from_static(b"last words")]
    );
    for side in [DIALER, ACCEPTOR] {
        assert!(
            matches!(
                pair.sides[side].closed,
                Some(CloseCause::Local(_) | CloseCause::Peer(_))
            ),
            "side {side}: {:?}",
            pair.sides[side].closed
        );
        assert!(
            pair.sides[side].layer_closed,
            "side {side} sent no close_notify"
        );
        // The TCP FIN after it: the layer saw close_notify first.
        pair.cut(side);
        assert_eq!(pair.sides[side].eof, Some(Ok(())), "side {side}");
    }
}

#[test]
fn bytes_after_close_notify_are_ignored_and_the_read_ends() {
    let mut pair = tls_pair(5, Faults::default());
    pair.drive_for(Duration::from_secs(1));
    pair.close(DIALER);
    pair.drive_for(Duration::from_secs(5));
    assert!(pair.sides[ACCEPTOR].layer.peer_closed());
    // A peer that keeps writing after its close_notify, more than rustls
    // takes in one read: ignored, and the read returns.
    pair.inject(ACCEPTOR, vec![0x17; 64 << 10]);
    pair.drive_for(Duration::from_secs(1));
    assert!(pair.sides[ACCEPTOR].layer_error.is_none());
    assert!(pair.sides[ACCEPTOR].received.is_empty());
}

#[test]
fn a_stream_cut_without_close_notify_is_a_truncation_and_a_reset() {
    let mut pair = tls_pair(2, Faults::default());
    pair.drive_for(Duration::from_secs(1));
    assert!(pair.sides[ACCEPTOR].established);
    pair.cut(ACCEPTOR);
    pair.drive_for(Duration::from_secs(1));
    assert!(
        matches!(&pair.sides[ACCEPTOR].eof, Some(Err(e)) if e.contains("close_notify")),
        "{:?}",
        pair.sides[ACCEPTOR].eof
    );
    assert_eq!(pair.sides[ACCEPTOR].closed, Some(CloseCause::Reset));
}

#[test]
fn a_megabyte_frame_arrives_whole_from_one_read_of_many_records() {
    let mut pair = tls_pair(3, Faults::default());
    let body = Bytes::from(
        (0..(1 << 20) - 256)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    pair.sides[DIALER].outbox.push_back(body.clone());
    pair.drive_for(Duration::from_secs(2));
    assert_eq!(pair.sides[ACCEPTOR].received, vec![body]);
}

#[test]
fn a_binding_policy_mismatch_fails_the_bus_handshake() {
    let (dialer, _) = tls_layers(BindingPolicy::TlsExporter);
    let (_, acceptor) = tls_layers(BindingPolicy::Unbound);
    let mut pair = LayeredPair::new(4, config(1 << 20), dialer, acceptor, Faults::default());
    pair.drive_for(Duration::from_secs(2));
    assert!(!pair.sides[DIALER].established && !pair.sides[ACCEPTOR].established);
    assert_eq!(
        pair.sides[ACCEPTOR].closed,
        Some(CloseCause::Refused(bus_proto::wire::RejectStatus::BadMac))
    );
}

#[test]
fn frames_wait_undecoded_until_the_transport_gives_its_binding() {
    let config = config(1 << 20);
    let mut acceptor = Connection::accept_pending(Instant::ZERO, &config);
    // A complete hello arrives before the binding: nothing is decoded.
    let keys = KeyRing::new(Key::from_bytes([7; 32]));
    let dialer = Connection::dial(
        Instant::ZERO,
        UnixNanos::from_nanos(WALL_BASE),
        &config,
        bus_proto::connection::DialParams {
            cluster: 1,
            local: bus_proto::crypto::PeerId::Replica(0),
            acceptor: 1,
            keys: &keys,
            binding: Binding::NONE,
        },
        &mut SeededEntropy::new(5),
    );
    let mut dialer = dialer.expect("a dial");
    let mut hello = Vec::new();
    dialer
        .poll_transmit(Instant::ZERO)
        .expect("the hello")
        .write_to(&mut hello);
    acceptor.handle_input(Instant::ZERO, &hello);
    assert!(acceptor.is_transport_pending());
    assert!(
        acceptor.take_hello().is_none(),
        "decoded before the binding"
    );
    acceptor.bind(Instant::ZERO, Binding::NONE);
    assert!(acceptor.take_hello().is_some());
}

fn now(at: Duration) -> Now {
    Now {
        mono: Instant::ZERO.saturating_add(at),
        wall: UnixNanos::from_nanos(WALL_BASE + u64::try_from(at.as_nanos()).expect("small")),
    }
}

#[test]
fn a_late_transport_handshake_leaves_the_bus_handshake_no_extra_time() {
    let config = Config::default().validate().expect("valid");
    let params = ClientParams {
        cluster: 1,
        id: 77,
        target: 0,
    };
    let keys = KeyRing::new(Key::from_bytes([7; 32]));
    let mut client = Client::new(
        now(Duration::ZERO),
        &config,
        params,
        keys,
        Box::new(SeededEntropy::new(6)),
    );
    client.handle_timeout(now(Duration::ZERO));
    let Some(Action::Connect { connection, .. }) = client.poll_action() else {
        panic!("the client dials");
    };
    client
        .connected_pending(now(Duration::from_secs(1)), connection)
        .expect("socket open");
    // The TLS handshake takes 9.9 s of the 10 s budget.
    let late = now(Duration::from_millis(10_900));
    client
        .transport_ready(late, connection, Binding::NONE)
        .expect("transport ready");
    let deadline = client
        .connection(connection)
        .and_then(|c| c.poll_timeout())
        .expect("a deadline");
    assert!(
        deadline <= now(Duration::from_secs(11)).mono,
        "the bus handshake got extra time: {deadline:?}"
    );
    // And at that deadline the dial is over.
    client.handle_timeout(now(Duration::from_secs(11)));
    assert!(client.connection(connection).is_none_or(|c| c.is_closed()));
}

#[test]
fn an_accepted_socket_whose_transport_never_finishes_is_closed_at_the_hello_deadline() {
    let config = Config::default().validate().expect("valid");
    let mut node = Node::new(
        now(Duration::ZERO),
        &config,
        NodeParams {
            cluster: 1,
            replica: 0,
            replica_count: 1,
            accept_clients: true,
        },
        KeyRing::new(Key::from_bytes([7; 32])),
        Box::new(SeededEntropy::new(7)),
    )
    .expect("a node");
    let id = node
        .accept_pending(now(Duration::ZERO), None)
        .expect("accepted");
    assert_eq!(node.handshakes_in_flight(), 1, "counted in the cap");
    node.handle_timeout(now(config.hello_timeout));
    assert!(
        node.connection(id).is_none_or(|c| matches!(
            c.close_cause(),
            Some(CloseCause::Timeout(Deadline::Hello | Deadline::Handshake))
        )),
        "still open after the hello deadline"
    );
    assert_eq!(node.handshakes_in_flight(), 0);
}

/// One batch of frames leaves a layer as one wire buffer: one socket write
/// per batch on TLS, WS and WSS, as on TCP.
#[test]
fn a_batch_leaves_every_layer_as_one_wire_buffer() {
    for transport in ["tls", "ws", "wss"] {
        let mut pair = pair(transport, 6, Faults::default());
        pair.drive_for(Duration::from_secs(1));
        let side = &mut pair.sides[DIALER];
        assert!(side.established, "{transport}: not established");
        let conn = side.conn.as_mut().expect("a connection");
        for i in 0..64u32 {
            let body = Bytes::from(vec![
                u8::try_from(i).expect("small");
                100 + 300 * (i as usize % 3)
            ]);
            conn.send(bus_proto::wire::Kind::Message { operation: i }, body)
                .expect("room in the queue");
        }
        let batch = conn.poll_transmit(pair.now).expect("a batch");
        assert_eq!(batch.frames(), 64, "{transport}");
        side.layer.write_frames(batch).expect("encoded");
        let mut wire = Vec::new();
        side.layer.take_wire(&mut wire);
        assert_eq!(
            wire.len(),
            1,
            "{transport}: {} buffers for one batch",
            wire.len()
        );
    }
}

/// The same oversize frame is refused the same way on every transport: the
/// acceptor (max 64 KiB) closes with the decoder's `SizeTooLarge` naming
/// the frame's size and the limit, whether its decoder read the header
/// (TCP, TLS) or the WebSocket layer refused the message from its header.
#[test]
fn the_same_oversize_frame_is_refused_identically_on_every_transport() {
    let body = Bytes::from(vec![7u8; 100_000]);
    let size = u32::try_from(body.len() + bus_proto::wire::HEADER_SIZE).expect("small");
    let mut causes = Vec::new();
    for transport in ["tcp", "tls", "ws", "wss"] {
        let (dialer, acceptor) = layers(transport);
        let configs = (config(1 << 20), config(64 << 10));
        let mut pair = LayeredPair::with_configs(7, configs, dialer, acceptor, Faults::default());
        pair.drive_for(Duration::from_secs(1));
        assert!(
            pair.sides[ACCEPTOR].established,
            "{transport}: not established"
        );
        pair.sides[DIALER].outbox.push_back(body.clone());
        pair.drive_for(Duration::from_secs(5));
        assert!(
            pair.sides[ACCEPTOR].received.is_empty(),
            "{transport}: delivered"
        );
        let cause = pair.sides[ACCEPTOR].closed.clone();
        assert_eq!(
            cause,
            Some(CloseCause::Decode(
                bus_proto::wire::DecodeError::SizeTooLarge {
                    size,
                    max: 64 << 10
                }
            )),
            "{transport}"
        );
        causes.push(cause);
    }
    assert!(causes.windows(2).all(|w| w[0] == w[1]));
}

/// Mutual TLS: a listener that requires client certificates admits a
/// dialer presenting one it trusts, and refuses one presenting none.
#[test]
fn mutual_tls_admits_only_dialers_with_a_trusted_certificate() {
    let (cert, key) = identity();
    let client_certified =
        rcgen::generate_simple_self_signed(vec!["client".into()]).expect("a certificate");
    let client_cert = client_certified.cert.der().clone();
    let client_key = PrivateKeyDer::Pkcs8(client_certified.signing_key.serialize_der().into());
    let mut client_roots = rustls::RootCertStore::empty();
    client_roots.add(client_cert.clone()).expect("a root");
    let server = TlsServer::with_client_auth(vec![cert.clone()], key.clone_key(), client_roots)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).expect("a root");
    let with_cert = TlsClient::with_client_certificate(
        roots.clone(),
        vec![client_cert],
        client_key,
        "replica-1",
    )
    .expect("client config");
    let without = TlsClient::new(roots, "replica-1").expect("client config");
    for (client, admitted) in [(with_cert, true), (without, false)] {
        let mut pair = LayeredPair::new(
            8,
            config(1 << 20),
            client.layer().expect("a layer"),
            server.layer().expect("a layer"),
            Faults::default(),
        );
        pair.drive_for(Duration::from_secs(2));
        assert_eq!(pair.sides[ACCEPTOR].established, admitted);
        if !admitted {
            let error = pair.sides[ACCEPTOR].layer_error.clone().unwrap_or_default();
            assert!(error.contains("certificate"), "{error}");
        }
    }
}
