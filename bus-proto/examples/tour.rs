//! A guided tour of the protocol core: frames, integrity, keys, replay
//! protection and the dedup window, each shown doing its job.
//!
//! `cargo run --release -p bus-proto --example tour`

use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{Connection, DialParams, Event};
use bus_proto::crypto::mac::context;
use bus_proto::crypto::{Key, KeyRing, MacKey, Nonce, PeerId};
use bus_proto::dedup::{DedupWindow, Lookup};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::{Binding, Gate, GateParams};
use bus_proto::replay::{NonceStore, ReplayWindow1024};
use bus_proto::time::{Instant, UnixNanos};
use bus_proto::wire::{
    Frame, FrameDecoder, FrameKeys, HEADER_SIZE, Header, Integrity, Kind, RequestHeader,
};
use bytes::Bytes;
use std::time::Duration;

const CLUSTER: u128 = 0xB05;

/// Moves all of `from`'s output into `to`; returns the frames carried.
fn carry(from: &mut Connection, to: &mut Connection, now: Instant) -> usize {
    let mut frames = 0;
    while let Some(t) = from.poll_transmit(now) {
        frames += t.frames();
        for segment in t.segments() {
            to.handle_input(now, segment);
        }
    }
    frames
}

fn print_events(who: &str, conn: &mut Connection) {
    while let Some(event) = conn.poll_event() {
        match event {
            Event::Message(f) => println!("{who}: message {:?}", String::from_utf8_lossy(&f.body)),
            other => println!("{who}: {other:?}"),
        }
    }
}

/// Dials replica 1 from replica 0 with `dialer_keys`, through `gate`.
fn dial_through(
    config: &ValidConfig,
    gate: &mut Gate,
    dialer_keys: &KeyRing,
    entropy: &mut SeededEntropy,
    wall: UnixNanos,
) -> Result<(Connection, Connection, Vec<u8>), Box<dyn std::error::Error>> {
    let now = Instant::ZERO;
    let params = DialParams {
        cluster: CLUSTER,
        local: PeerId::Replica(0),
        acceptor: 1,
        keys: dialer_keys,
        binding: Binding::NONE,
    };
    let mut dialer = Connection::dial(now, wall, config, params, entropy)?;
    let mut acceptor = Connection::accept(now, config, Binding::NONE);
    let mut hello = Vec::new();
    while let Some(t) = dialer.poll_transmit(now) {
        t.write_to(&mut hello);
    }
    acceptor.handle_input(now, &hello);
    if let Some(incoming) = acceptor.take_hello() {
        let admission = gate.admit(wall, incoming, entropy);
        println!("gate: {:?}", admission.outcome());
        acceptor.admit(now, admission);
    }
    carry(&mut acceptor, &mut dialer, now);
    carry(&mut dialer, &mut acceptor, now);
    Ok((dialer, acceptor, hello))
}

fn handshake_tour(config: &ValidConfig) -> Result<(), Box<dyn std::error::Error>> {
    step("8. a mutual handshake: hello -> welcome -> confirm, then authenticated frames");
    let strict = {
        let mut tuned = (**config).clone();
        tuned.authenticated_frames = true;
        tuned
    }
    .validate()?;
    let keys = KeyRing::new(Key::from_bytes([0x5A; 32]));
    let mut entropy = SeededEntropy::new(8);
    let wall = UnixNanos::from_nanos(1_767_225_600_000_000_000);
    let params = GateParams {
        cluster: CLUSTER,
        local: 1,
        replica_count: 3,
        accept_clients: true,
    };
    let mut gate = Gate::new(&strict, params, keys.clone());
    let (mut dialer, mut acceptor, captured) =
        dial_through(&strict, &mut gate, &keys, &mut entropy, wall)?;
    dialer.send(
        Kind::Message { operation: 1 },
        Bytes::from_static(b"prepare op 7"),
    )?;
    carry(&mut dialer, &mut acceptor, Instant::ZERO);
    print_events("replica 0", &mut dialer);
    print_events("replica 1", &mut acceptor);

    step("9. an impostor with the wrong key is refused, and learns only that");
    let impostor = KeyRing::new(Key::from_bytes([0x66; 32]));
    let (mut dialer, _, _) = dial_through(&strict, &mut gate, &impostor, &mut entropy, wall)?;
    print_events("impostor", &mut dialer);

    step("10. a captured hello replayed on a new connection is dropped without an answer");
    let mut replayed = Connection::accept(Instant::ZERO, &strict, Binding::NONE);
    replayed.handle_input(Instant::ZERO, &captured);
    if let Some(incoming) = replayed.take_hello() {
        let admission = gate.admit(wall, incoming, &mut entropy);
        println!("gate: {:?}", admission.outcome());
        replayed.admit(Instant::ZERO, admission);
    }
    print_events("replica 1", &mut replayed);
    println!(
        "replica 1 answered the replay with {} bytes",
        replayed.poll_transmit(Instant::ZERO).map_or(0, |t| t.len())
    );
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_toml("max_batch = 32\n")?;
    println!(
        "config: max_message_size {} B, max_batch {}, heartbeat {:?}, freshness ±{:?}",
        config.max_message_size,
        config.max_batch,
        config.heartbeat_interval,
        config.freshness_window
    );
    let max = config.max_message_size;

    step("1. a request frame: 256-byte header + body, split for one vectored write");
    let request = Frame {
        header: Header::new(
            CLUSTER,
            Kind::Request(RequestHeader {
                client: 0xC11E47,
                request: 1,
                operation: 7,
            }),
        ),
        body: Bytes::from_static(b"transfer 10 from alice to bob"),
    };
    let encoded = request.encode(&Integrity::Checksum, max)?;
    let [header, body] = encoded.slices();
    println!(
        "encoded: header {} B + body {} B, checksums XXH3-128",
        header.len(),
        body.len()
    );

    step("2. the decoder owns its buffer: the same bytes one at a time give the same frame");
    let mut wire = Vec::new();
    encoded.write_to(&mut wire);
    let mut decoder = FrameDecoder::new(Integrity::Checksum, max);
    let mut frames = Vec::new();
    for byte in &wire {
        decoder.feed(std::slice::from_ref(byte));
        while let Some(f) = decoder.next_frame()? {
            frames.push(f);
        }
    }
    println!(
        "fed {} one-byte chunks -> {} frame(s), identical: {}",
        wire.len(),
        frames.len(),
        frames == [request.clone()]
    );

    step("3. corruption and oversize claims are refused with typed errors");
    let mut corrupt = wire.clone();
    corrupt[HEADER_SIZE + 3] ^= 0x01;
    let mut d = FrameDecoder::new(Integrity::Checksum, max);
    d.feed(&corrupt);
    println!("flipped one body bit  -> {}", d.next_frame().unwrap_err());
    let mut small = FrameDecoder::new(Integrity::Checksum, 260);
    small.feed(&wire);
    println!(
        "limit of 260 bytes    -> {}",
        small.next_frame().unwrap_err()
    );
    small.feed(&wire);
    println!(
        "after an error        -> still failed: {}",
        small.next_frame().is_err()
    );

    step("4. authenticated frames: keyed BLAKE3 tags under a session secret");
    let keyed = Integrity::Authenticated(FrameKeys::derive(&[0x42; 32]));
    let mut tagged = Vec::new();
    request.encode(&keyed, max)?.write_to(&mut tagged);
    let mut tampered = tagged.clone();
    tampered[HEADER_SIZE + 9] = b'9';
    let mut d = FrameDecoder::new(keyed.clone(), max);
    d.feed(&tampered);
    println!("tampered body         -> {}", d.next_frame().unwrap_err());
    let mut d = FrameDecoder::new(
        Integrity::Authenticated(FrameKeys::derive(&[0x43; 32])),
        max,
    );
    d.feed(&tagged);
    println!("wrong session secret  -> {}", d.next_frame().unwrap_err());

    step("5. keys: per-purpose MAC keys and rotation");
    let mut entropy = SeededEntropy::new(2026);
    let old = Key::generate(&mut entropy);
    let new = Key::generate(&mut entropy);
    println!("keys print as fingerprints only: old {old:?}, new {new:?}");
    let ring = KeyRing::new(new.clone()).with_previous(old.clone());
    let transcript: &[&[u8]] = &[b"cluster", b"dialer", b"acceptor"];
    let from_lagging_peer = MacKey::derive(&old, context::HANDSHAKE).sign(transcript);
    let accepted = ring.verifying_keys(PeerId::Replica(1)).any(|k| {
        MacKey::derive(k, context::HANDSHAKE)
            .verify(transcript, &from_lagging_peer)
            .is_ok()
    });
    println!("MAC under the previous key verifies during rotation: {accepted}");
    let impostor =
        MacKey::derive(&Key::generate(&mut entropy), context::HANDSHAKE).sign(transcript);
    let admitted = ring.verifying_keys(PeerId::Replica(1)).any(|k| {
        MacKey::derive(k, context::HANDSHAKE)
            .verify(transcript, &impostor)
            .is_ok()
    });
    println!("MAC under an unknown key verifies: {admitted}");

    step("6. replay protection");
    let mut nonces =
        NonceStore::<PeerId, 64>::new(config.max_replay_peers, config.freshness_window);
    let now = UnixNanos::from_nanos(1_800_000_000 * 1_000_000_000);
    let nonce = Nonce::generate(&mut entropy);
    nonces.record(PeerId::Replica(1), nonce, now, now)?;
    println!(
        "same hello nonce again -> {}",
        nonces
            .record(PeerId::Replica(1), nonce, now, now)
            .unwrap_err()
    );
    let mut window = ReplayWindow1024::new();
    window.accept(1)?;
    window.accept(2)?;
    println!(
        "sequence 2 again       -> {}",
        window.accept(2).unwrap_err()
    );
    println!(
        "sequence 5000          -> {}",
        window.accept(5000).unwrap_err()
    );

    step("7. at-most-once: a retried request is answered from the dedup window");
    let mut dedup = DedupWindow::new(config.dedup_limits());
    let t0 = Instant::from_nanos(0);
    let (client, number) = (0xC11E47, 1);
    println!("first arrival  -> {:?}", dedup.lookup(client, number, t0));
    dedup.mark_in_flight(client, number, t0)?;
    println!(
        "duplicate while executing -> {:?}",
        dedup.lookup(client, number, t0)
    );
    dedup.complete(
        client,
        number,
        Bytes::from_static(b"ok: balance 90"),
        t0.saturating_add(Duration::from_millis(2)),
    )?;
    if let Lookup::Cached(reply) =
        dedup.lookup(client, number, t0.saturating_add(Duration::from_millis(5)))
    {
        println!(
            "retry after completion -> cached reply {:?}, not executed again",
            std::str::from_utf8(&reply.body)?
        );
    }

    handshake_tour(&config)?;

    println!(
        "\nSpecification: PROTOCOL.md. Figures: cargo run --release -p bus-proto --example bench"
    );
    Ok(())
}
