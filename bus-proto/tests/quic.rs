//! QUIC under framing in memory, with virtual time: two endpoints carry a
//! client's bus connection to a node through a seeded datagram network
//! (loss, duplication, reordering); a client that stalls after its
//! Initial is closed at the bus's handshake deadline, not at QUIC's idle
//! timeout.

use bus_proto::client::{Client, ClientEvent, ClientParams};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, Node, NodeEvent, NodeParams};
use bus_proto::time::{Instant, Now, UnixNanos};
use bus_proto::transport::BindingPolicy;
use bus_proto::transport::quic::QuicEndpoint;
use bus_proto::transport::tls::{PrivateKeyDer, RootCertStore, TlsClient, TlsServer};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const WALL_BASE: u64 = 1_767_225_600_000_000_000;
const CLUSTER: u128 = 0xC1;

fn server_addr() -> SocketAddr {
    "10.0.0.1:4433".parse().expect("an address")
}

fn client_addr() -> SocketAddr {
    "10.0.0.2:5000".parse().expect("an address")
}

/// Datagram faults, per mille.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    loss: u32,
    duplicate: u32,
    /// Extra delay up to this, which reorders.
    jitter: Duration,
    /// Drop everything the client sends after its first datagram.
    stall_client: bool,
}

struct World {
    now: Duration,
    config: ValidConfig,
    node: Node,
    client: Client,
    server: QuicEndpoint,
    dialer: QuicEndpoint,
    /// In flight: (arrival, sequence) -> (to, from, bytes).
    wire: BTreeMap<(Duration, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    sequence: u64,
    rng: SeededEntropy,
    faults: Faults,
    client_sent: u64,
    /// The first byte of each datagram the server sent.
    server_sent: Vec<u8>,
    /// Requests the node delivered.
    requests_seen: usize,
    /// Batches of several datagrams the endpoints made (GSO).
    batches: usize,
    /// The node answers the requests it delivers.
    answer: bool,
    replies: Vec<Bytes>,
    /// The server's certificate.
    cert: bus_proto::transport::tls::CertificateDer<'static>,
    /// The endpoints' `std::time::Instant` origin.
    epoch: std::time::Instant,
}

fn at(now: Duration) -> Now {
    Now {
        mono: Instant::from_nanos(u64::try_from(now.as_nanos()).expect("small")),
        wall: UnixNanos::from_nanos(WALL_BASE + u64::try_from(now.as_nanos()).expect("small")),
    }
}

impl World {
    fn new(seed: u64, faults: Faults) -> World {
        World::with_config(seed, faults, Config::default().validate().expect("valid"))
    }

    fn with_config(seed: u64, faults: Faults, config: ValidConfig) -> World {
        let certified =
            rcgen::generate_simple_self_signed(vec!["replica-0".into()]).expect("a certificate");
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let tls_server = TlsServer::new(vec![cert.clone()], key)
            .expect("server config")
            .binding(BindingPolicy::TlsExporter);
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).expect("a root");
        let tls_client = TlsClient::new(roots, "replica-0").expect("client config");
        let epoch = std::time::Instant::now();
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let server = QuicEndpoint::new(epoch, &config, Some(&tls_server), None, seed_bytes)
            .expect("server endpoint");
        seed_bytes[8] = 1;
        let dialer = QuicEndpoint::new(epoch, &config, None, Some(&tls_client), seed_bytes)
            .expect("client endpoint");
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        let node = Node::new(
            at(Duration::ZERO),
            &config,
            NodeParams {
                cluster: CLUSTER,
                replica: 0,
                replica_count: 1,
                accept_clients: true,
            },
            keys.clone(),
            Box::new(SeededEntropy::new(seed ^ 1)),
        )
        .expect("a node");
        let client = Client::new(
            at(Duration::ZERO),
            &config,
            ClientParams {
                cluster: CLUSTER,
                id: 42,
                target: 0,
            },
            keys,
            Box::new(SeededEntropy::new(seed ^ 2)),
        );
        World {
            now: Duration::ZERO,
            config,
            node,
            client,
            server,
            dialer,
            wire: BTreeMap::new(),
            sequence: 0,
            rng: SeededEntropy::new(seed),
            faults,
            client_sent: 0,
            server_sent: Vec::new(),
            requests_seen: 0,
            batches: 0,
            answer: true,
            replies: Vec::new(),
            cert,
            epoch,
        }
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.next_u64() % 1000 < u64::from(per_mille)
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if from == server_addr() {
            self.server_sent.push(bytes[0]);
        }
        if from == client_addr() {
            self.client_sent += 1;
            if self.faults.stall_client && self.client_sent > 1 {
                return;
            }
        }
        if self.roll(self.faults.loss) {
            return;
        }
        let copies = if self.roll(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = u64::try_from(self.faults.jitter.as_nanos()).expect("small");
            let delay = Duration::from_micros(200)
                + Duration::from_nanos(if jitter == 0 {
                    0
                } else {
                    self.rng.next_u64() % jitter
                });
            self.sequence += 1;
            self.wire
                .insert((self.now + delay, self.sequence), (to, from, bytes.clone()));
        }
    }

    /// One pass at the current instant: deliveries, timers, the cores'
    /// actions and events, the endpoints, their datagrams.
    fn step(&mut self) {
        let now = at(self.now);
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, from, bytes) = entry.remove();
            match to == server_addr() {
                true => self
                    .server
                    .handle_datagram(now, from, &bytes, &mut self.node),
                false => self
                    .dialer
                    .handle_datagram(now, from, &bytes, &mut self.client),
            }
        }
        self.node.handle_timeout(now);
        self.client.handle_timeout(now);
        while let Some(action) = self.client.poll_action() {
            if let Action::Connect { connection, .. } = action {
                self.client
                    .connected_pending(now, connection)
                    .expect("a pending dial");
                assert!(self.dialer.connect(now, connection, server_addr()));
            }
        }
        while self.node.poll_action().is_some() {}
        while let Some(event) = self.node.poll_event() {
            if let NodeEvent::Request { request, body, .. } = event {
                self.requests_seen += 1;
                if self.answer {
                    let _ = self.node.reply(now, request, body);
                }
            }
        }
        self.server.drive(now, &mut self.node);
        self.dialer.drive(now, &mut self.client);
        while let Some(event) = self.client.poll_event() {
            if let ClientEvent::Reply { body, .. } = event {
                self.replies.push(body);
            }
        }
        // Batches (GSO) reach the wire as their separate datagrams.
        while let Some(batch) = self.server.poll_datagrams() {
            self.batches += usize::from(batch.count() > 1);
            for datagram in batch.segments() {
                self.send(server_addr(), batch.to, datagram.to_vec());
            }
        }
        while let Some(batch) = self.dialer.poll_datagrams() {
            self.batches += usize::from(batch.count() > 1);
            for datagram in batch.segments() {
                self.send(client_addr(), batch.to, datagram.to_vec());
            }
        }
    }

    fn run_until(&mut self, until: Duration, mut done: impl FnMut(&World) -> bool) {
        while self.now <= until && !done(self) {
            self.step();
            self.step();
            let nanos = |i: Instant| Duration::from_nanos(i.as_nanos());
            let next = [
                self.wire.keys().next().map(|k| k.0),
                self.server.poll_timeout().map(nanos),
                self.dialer.poll_timeout().map(nanos),
                self.node.poll_timeout().map(nanos),
                self.client.poll_timeout().map(nanos),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(until + Duration::from_secs(1));
            self.now = next.max(self.now + Duration::from_micros(1));
        }
    }
}

fn requests_answered(seed: u64, faults: Faults, count: usize) -> Result<(), TestCaseError> {
    println!("QUIC_SEED={seed} {faults:?}");
    let mut world = World::new(seed, faults);
    let bodies: Vec<Bytes> = (0..count)
        .map(|i| Bytes::from(format!("request {i} ").repeat(1 + i * 40)))
        .collect();
    for body in &bodies {
        world
            .client
            .request(at(Duration::ZERO), 1, body.clone())
            .expect("room for the request");
    }
    world.run_until(Duration::from_secs(60), |w| w.replies.len() == count);
    let mut replies = world.replies.clone();
    replies.sort();
    let mut expected = bodies.clone();
    expected.sort();
    prop_assert_eq!(replies.len(), count, "seed {}: replies", seed);
    prop_assert!(
        replies == expected,
        "seed {}: a reply differs from its request",
        seed
    );
    Ok(())
}

#[test]
fn a_client_gets_every_reply_over_quic() {
    requests_answered(1, Faults::default(), 32).expect("all answered");
}

/// With GSO batches of up to 16 datagrams on both endpoints: the same
/// requests, lossy, every reply intact, and batches were made.
#[test]
fn gso_batches_carry_the_same_bytes() {
    let faults = Faults {
        loss: 20,
        ..Faults::default()
    };
    let mut world = World::new(23, faults);
    world.server.set_max_segments(16);
    world.dialer.set_max_segments(16);
    let bodies: Vec<Bytes> = (0..8u8).map(|i| Bytes::from(vec![i; 50_000])).collect();
    for body in &bodies {
        world
            .client
            .request(at(Duration::ZERO), 1, body.clone())
            .expect("room");
    }
    world.run_until(Duration::from_secs(30), |w| w.replies.len() == bodies.len());
    let mut replies = world.replies.clone();
    replies.sort();
    assert_eq!(replies, bodies);
    assert!(world.batches > 0, "no batch of several datagrams was made");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Lost, duplicated and reordered datagrams: every request is answered
    /// exactly once, each reply intact.
    #[test]
    fn quic_carries_requests_through_loss_duplication_and_reordering(
        seed in any::<u64>(),
        loss in 0u32..100,
        duplicate in 0u32..50,
        jitter_ms in 0u64..30,
    ) {
        let faults = Faults {
            loss,
            duplicate,
            jitter: Duration::from_millis(jitter_ms),
            stall_client: false,
        };
        requests_answered(seed, faults, 16)?;
    }
}

#[test]
fn a_quic_client_that_stalls_after_its_initial_is_closed_at_the_bus_deadline() {
    let faults = Faults {
        stall_client: true,
        ..Faults::default()
    };
    let mut world = World::new(3, faults);
    world.run_until(Duration::from_millis(100), |_| false);
    assert_eq!(
        world.node.handshakes_in_flight(),
        1,
        "admitted at its Initial"
    );
    assert_eq!(world.server.connections(), 1);
    let deadline = world
        .config
        .hello_timeout
        .min(world.config.handshake_timeout);
    // Just past the bus's deadline, far before QUIC's idle timeout.
    world.run_until(deadline + Duration::from_millis(50), |_| false);
    assert_eq!(
        world.node.handshakes_in_flight(),
        0,
        "closed at the bus deadline"
    );
    assert!(world.node.stats().handshakes_failed >= 1);
    // The endpoint forgets it after QUIC's draining period.
    world.run_until(deadline + Duration::from_secs(5), |w| {
        w.server.connections() == 0
    });
    assert_eq!(world.server.connections(), 0);
}

/// A peer gets one bidirectional stream and no unidirectional one: a raw
/// quinn-proto client connected to the bus's endpoint can open its first
/// bidirectional stream, but QUIC's own limits refuse a second and any
/// unidirectional stream; and the session accepted no 0-RTT.
#[test]
fn a_quic_peer_gets_one_bidirectional_stream_and_no_unidirectional_one() {
    use quinn_proto::{Dir, Event};

    let mut world = World::new(5, Faults::default());
    let (mut raw, mut conn) = raw_client(&world, quinn_proto::TransportConfig::default());
    let mut connected = false;
    for round in 0..200u64 {
        pump_raw(
            &mut world,
            &mut raw,
            &mut conn,
            Duration::from_millis(round),
        );
        while let Some(event) = conn.poll() {
            connected |= matches!(event, Event::Connected);
        }
        if connected {
            break;
        }
    }
    assert!(connected, "the raw client never connected");
    assert!(!conn.accepted_0rtt());
    assert!(
        conn.streams().open(Dir::Bi).is_some(),
        "the first bidi stream"
    );
    assert!(
        conn.streams().open(Dir::Bi).is_none(),
        "a second bidi stream"
    );
    assert!(
        conn.streams().open(Dir::Uni).is_none(),
        "a unidirectional stream"
    );
}

/// A QUIC v1 Retry packet: long header, type 3.
fn is_retry(first_byte: u8) -> bool {
    first_byte & 0x80 != 0 && (first_byte >> 4) & 0x3 == 3
}

/// One Retry case: `preload` takes a place in the pool before the client
/// dials (from the client's own address, or another), under `config`.
fn retry_case(config: &ValidConfig, preload: SocketAddr, stall: bool) -> World {
    let faults = Faults {
        stall_client: stall,
        ..Faults::default()
    };
    let mut world = World::with_config(11, faults, config.clone());
    world
        .node
        .accept_pending(at(Duration::ZERO), Some(preload))
        .expect("admitted");
    assert!(world.node.wants_address_proof(client_addr()));
    world
        .client
        .request(at(Duration::ZERO), 1, Bytes::from_static(b"retried"))
        .expect("room");
    world.run_until(Duration::from_millis(300), |w| !w.replies.is_empty());
    let retries = world.server_sent.iter().filter(|&&b| is_retry(b)).count();
    assert_eq!(retries, 1, "stall {stall}: one Retry");
    assert!(is_retry(world.server_sent[0]), "the Retry came first");
    match stall {
        false => assert_eq!(world.replies, vec![Bytes::from_static(b"retried")]),
        true => {
            assert!(world.replies.is_empty());
            assert_eq!(world.server.connections(), 0, "no connection state");
            assert_eq!(
                world.node.handshakes_in_flight(),
                1,
                "no place taken, none evicted"
            );
        }
    }
    world
}

/// Under load (the unauthenticated pool half full), a new peer first gets
/// a Retry: one that proves its address is served; one that never answers
/// (a spoofed source) costs no place in the pool and no handshake.
#[test]
fn under_load_a_new_quic_peer_proves_its_address_with_a_retry_first() {
    let config = {
        let mut tuned = Config::default();
        tuned.max_handshakes_in_flight = 2;
        tuned
    }
    .validate()
    .expect("valid");
    for stall in [false, true] {
        retry_case(&config, "10.0.0.9:1".parse().expect("addr"), stall);
    }
}

/// An address that already holds a place proves it owns that address
/// before it gets another, load or not: a spoofed source cannot make the
/// node evict that address's real handshakes.
#[test]
fn an_address_holding_a_place_proves_itself_before_another() {
    let config = Config::default().validate().expect("valid");
    let same_host: SocketAddr = "10.0.0.2:6000".parse().expect("addr");
    for stall in [false, true] {
        let world = retry_case(&config, same_host, stall);
        assert!(!world.node.under_handshake_load());
        assert_eq!(world.node.stats().unauthenticated_evicted, 0);
    }
}

/// Requests a paused connection has not read yet still reach the core
/// when the peer's QUIC connection ends: nothing received is lost to the
/// pause.
#[test]
fn data_waiting_behind_a_pause_reaches_the_core_when_the_peer_closes() {
    let mut world = World::new(17, Faults::default());
    world
        .client
        .request(at(Duration::ZERO), 1, Bytes::from_static(b"first"))
        .expect("room");
    world.run_until(Duration::from_secs(5), |w| !w.replies.is_empty());
    assert_eq!(world.requests_seen, 1);
    let id = world
        .node
        .client_connection(42)
        .expect("the client's connection");
    world.node.set_reading_paused(at(world.now), id, true);
    world.answer = false;
    for body in [&b"second"[..], b"third"] {
        world
            .client
            .request(at(world.now), 1, Bytes::from_static(body))
            .expect("room");
    }
    let until = world.now + Duration::from_millis(100);
    world.run_until(until, |_| false);
    assert_eq!(world.requests_seen, 1, "paused: not read");
    // The client's QUIC connection ends abruptly.
    let now = at(world.now);
    world.dialer.close_all(now, &mut world.client);
    while let Some((to, bytes)) = world.dialer.poll_datagram() {
        world.send(client_addr(), to, bytes);
    }
    let until = world.now + Duration::from_millis(100);
    world.run_until(until, |w| w.requests_seen == 3);
    assert_eq!(world.requests_seen, 3, "handed over before the end");
}

/// A peer that never grants stream credit cannot keep a connection the
/// core is done with: it closes at `close_grace`, and the endpoint
/// forgets it once QUIC's draining ends.
#[test]
fn a_peer_granting_no_stream_credit_is_closed_at_close_grace() {
    use quinn_proto::{Dir, Event};

    let mut world = World::new(19, Faults::default());
    let mut transport = quinn_proto::TransportConfig::default();
    transport.stream_receive_window(0u32.into());
    let (mut raw, mut conn) = raw_client(&world, transport);
    let mut pump = |world: &mut World, conn: &mut quinn_proto::Connection, now: Duration| {
        pump_raw(world, &mut raw, conn, now)
    };
    let mut stream = None;
    let mut round = 0u64;
    while stream.is_none() && round < 200 {
        pump(&mut world, &mut conn, Duration::from_millis(round));
        while let Some(event) = conn.poll() {
            if matches!(event, Event::Connected) {
                stream = conn.streams().open(Dir::Bi);
            }
        }
        round += 1;
    }
    let stream = stream.expect("connected, with a stream");
    // A hello for another cluster: the node answers with a reject it can
    // never write, and is done with the connection.
    let hello = foreign_hello(&world.config);
    conn.send_stream(stream)
        .write(&hello)
        .expect("room for the hello");
    let grace = world.config.close_grace;
    let mut now = Duration::from_millis(round);
    while now < Duration::from_millis(round) + grace + Duration::from_secs(3) {
        pump(&mut world, &mut conn, now);
        while conn.poll().is_some() {}
        now += Duration::from_millis(10);
    }
    assert!(world.node.stats().handshakes_failed >= 1);
    assert_eq!(
        world.server.connections(),
        0,
        "closed at close_grace, not held by the peer's missing credit"
    );
}

/// A `hello` from a client of another cluster, as the client core writes
/// it.
fn foreign_hello(config: &ValidConfig) -> Vec<u8> {
    let mut client = Client::new(
        at(Duration::ZERO),
        config,
        ClientParams {
            cluster: CLUSTER + 1,
            id: 7,
            target: 0,
        },
        KeyRing::new(Key::from_bytes([7; 32])),
        Box::new(SeededEntropy::new(5)),
    );
    client
        .request(at(Duration::ZERO), 1, Bytes::from_static(b"x"))
        .expect("room");
    client.handle_timeout(at(Duration::ZERO));
    let Some(Action::Connect { connection, .. }) = client.poll_action() else {
        panic!("the client dials");
    };
    client
        .connected_pending(at(Duration::ZERO), connection)
        .expect("pending");
    client
        .transport_ready(at(Duration::ZERO), connection, Binding::NONE)
        .expect("ready");
    let transmit = client
        .poll_transmit_for(at(Duration::ZERO), connection)
        .expect("the hello");
    transmit
        .into_segments()
        .iter()
        .flat_map(|b| b.iter().copied())
        .collect()
}

/// A raw quinn-proto client of the world's server endpoint, trusting its
/// certificate, offering ALPN `bus/1`.
fn raw_client(
    world: &World,
    transport: quinn_proto::TransportConfig,
) -> (quinn_proto::Endpoint, quinn_proto::Connection) {
    use quinn_proto::crypto::rustls::QuicClientConfig;
    use std::sync::Arc;

    let mut roots = bus_proto::transport::tls::rustls::RootCertStore::empty();
    roots.add(world.cert.clone()).expect("a root");
    let provider = Arc::new(bus_proto::transport::tls::rustls::crypto::ring::default_provider());
    let mut rustls =
        bus_proto::transport::tls::rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&bus_proto::transport::tls::rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
    rustls.alpn_protocols = vec![b"bus/1".to_vec()];
    let quic = QuicClientConfig::try_from(rustls).expect("a QUIC client config");
    let mut config = quinn_proto::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport));
    let mut raw = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        Some([9; 32]),
    );
    let (_, conn) = raw
        .connect(world.epoch, config, server_addr(), "replica-0")
        .expect("a connect");
    (raw, conn)
}

/// One exchange between a raw client and the world's server at `now`.
fn pump_raw(
    world: &mut World,
    raw: &mut quinn_proto::Endpoint,
    conn: &mut quinn_proto::Connection,
    now: Duration,
) {
    use quinn_proto::DatagramEvent;
    let instant = world.epoch + now;
    world.now = now;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let Some(t) = conn.poll_transmit(instant, 1, &mut buf) else {
            break;
        };
        world
            .server
            .handle_datagram(at(now), client_addr(), &buf[..t.size], &mut world.node);
    }
    world.node.handle_timeout(at(now));
    while world.node.poll_action().is_some() {}
    while world.node.poll_event().is_some() {}
    world.server.drive(at(now), &mut world.node);
    while let Some((_, datagram)) = world.server.poll_datagram() {
        let mut scratch = Vec::new();
        if let Some(DatagramEvent::ConnectionEvent(_, event)) = raw.handle(
            instant,
            server_addr(),
            None,
            None,
            datagram.as_slice().into(),
            &mut scratch,
        ) {
            conn.handle_event(event);
        }
    }
    conn.handle_timeout(instant);
}
