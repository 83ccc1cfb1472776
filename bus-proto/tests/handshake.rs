//! Handshake hazards (hazards.md 5–12, 14, 15): each test is named after what
//! it proves.

#[allow(unreachable_pub)]
mod support {
    pub mod pair;
}

use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{CloseCause, Connection, DialParams, Event};
use bus_proto::crypto::{Key, KeyRing, KeySet, Nonce, PeerId, Tag};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::{AdmissionOutcome, Binding, Gate, GateParams, IgnoreReason};
use bus_proto::time::{Instant, UnixNanos};
use bus_proto::wire::{
    ErrorClass, Frame, HEADER_SIZE, Header, Integrity, Kind, Plane, REPLICA_NONE, RejectStatus,
    Welcome,
};
use std::time::Duration;
use support::pair::{CLUSTER, Setup, WALL_BASE};

fn config() -> ValidConfig {
    Config::default().validate().unwrap()
}

fn key(b: u8) -> Key {
    Key::from_bytes([b; 32])
}

fn wall(secs: u64) -> UnixNanos {
    UnixNanos::from_nanos(WALL_BASE + secs * 1_000_000_000)
}

fn gate(local: u8, keys: KeyRing) -> Gate {
    gate_in(CLUSTER, local, keys)
}

fn gate_in(cluster: u128, local: u8, keys: KeyRing) -> Gate {
    Gate::new(
        &config(),
        GateParams {
            cluster,
            local,
            replica_count: 4,
            accept_clients: true,
        },
        keys,
    )
}

/// The `hello` bytes `local` sends to `acceptor`.
fn hello(
    local: PeerId,
    acceptor: u8,
    keys: &KeyRing,
    binding: Binding,
    at: UnixNanos,
    seed: u64,
) -> Vec<u8> {
    hello_with(
        local,
        acceptor,
        keys,
        binding,
        at,
        &mut SeededEntropy::new(seed),
    )
}

fn hello_with(
    local: PeerId,
    acceptor: u8,
    keys: &KeyRing,
    binding: Binding,
    at: UnixNanos,
    entropy: &mut dyn Entropy,
) -> Vec<u8> {
    let mut conn = Connection::dial(
        Instant::ZERO,
        at,
        &config(),
        DialParams {
            cluster: CLUSTER,
            local,
            acceptor,
            keys,
            binding,
        },
        entropy,
    )
    .unwrap();
    let mut out = Vec::new();
    conn.poll_transmit(Instant::ZERO)
        .unwrap()
        .write_to(&mut out);
    assert_eq!(out.len(), HEADER_SIZE);
    out
}

/// Presents `bytes` to a fresh accepting connection (as after a listener
/// restart) in front of `gate`.
fn present(gate: &mut Gate, bytes: &[u8], now: UnixNanos) -> AdmissionOutcome {
    present_bound(gate, bytes, now, Binding::NONE)
}

fn present_bound(
    gate: &mut Gate,
    bytes: &[u8],
    now: UnixNanos,
    binding: Binding,
) -> AdmissionOutcome {
    let mut conn = Connection::accept(Instant::ZERO, &config(), binding);
    conn.handle_input(Instant::ZERO, bytes);
    let hello = conn.take_hello().expect("a hello is parked");
    gate.admit(now, hello, &mut SeededEntropy::new(99))
        .outcome()
}

/// Decodes a header-only frame, edits it, re-encodes it with a valid checksum.
fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Header)) -> Vec<u8> {
    let (mut header, _) = Header::decode(
        bytes[..HEADER_SIZE].try_into().unwrap(),
        &Integrity::Checksum,
        256,
    )
    .unwrap();
    edit(&mut header);
    let mut out = Vec::new();
    Frame::control(header)
        .encode(&Integrity::Checksum, 256)
        .unwrap()
        .write_to(&mut out);
    out
}

fn edit_hello(bytes: &[u8], edit: impl FnOnce(&mut bus_proto::wire::Hello)) -> Vec<u8> {
    rewrite(bytes, |h| match &mut h.kind {
        Kind::Hello(hello) => edit(hello),
        other => panic!("not a hello: {other:?}"),
    })
}

const fn rejected(status: RejectStatus) -> AdmissionOutcome {
    AdmissionOutcome::Rejected(status)
}

fn accepted(outcome: AdmissionOutcome) -> bool {
    matches!(outcome, AdmissionOutcome::Accepted { .. })
}

const REPLAYED: AdmissionOutcome = AdmissionOutcome::Ignored(IgnoreReason::Replayed);

#[test]
fn forged_hello_never_consumes_a_replay_slot() {
    let ring = KeyRing::new(key(1));
    let mut gate = gate(1, ring.clone());
    let legit = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    // Forgeries with the legitimate nonce and with many fresh nonces, all
    // fresh in time, none with a valid MAC.
    let mut forgeries = vec![edit_hello(&legit, |h| h.mac = Tag::from_bytes([0xEE; 32]))];
    let mut entropy = SeededEntropy::new(5);
    for _ in 0..200 {
        forgeries.push(edit_hello(&legit, |h| {
            h.nonce = Nonce::generate(&mut entropy);
            h.mac = Tag::from_bytes([0x11; 32]);
        }));
    }
    for forged in &forgeries {
        assert_eq!(
            present(&mut gate, forged, wall(1)),
            rejected(RejectStatus::BadMac)
        );
    }
    assert_eq!(gate.replay_peers(), 0, "a forged hello was recorded");
    assert_eq!(
        present(&mut gate, &legit, wall(1)),
        AdmissionOutcome::Accepted {
            peer: PeerId::Replica(0)
        }
    );
    assert_eq!(present(&mut gate, &legit, wall(2)), REPLAYED);
}

#[test]
fn replay_store_outlives_a_listener_restart() {
    let ring = KeyRing::new(key(1));
    let mut gate = gate(1, ring.clone());
    let captured = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    assert!(accepted(present(&mut gate, &captured, wall(0))));
    // Every `present` uses a new connection: only the gate carries state.
    for at in [1, 10, 29, 30] {
        assert_eq!(
            present(&mut gate, &captured, wall(at)),
            REPLAYED,
            "at {at}s"
        );
    }
    // Past the freshness window the timestamp refuses it instead.
    assert_eq!(
        present(&mut gate, &captured, wall(31)),
        rejected(RejectStatus::StaleTimestamp)
    );
}

#[test]
fn replay_state_is_per_peer_so_a_noisy_peer_cannot_evict_another() {
    let ring = KeyRing::new(key(1));
    let mut gate = gate(3, ring.clone());
    let first = hello(PeerId::Replica(0), 3, &ring, Binding::NONE, wall(0), 0);
    assert!(accepted(present(&mut gate, &first, wall(0))));
    for seed in 1..bus_proto::handshake::NONCE_RING_SLOTS as u64 {
        let h = hello(PeerId::Replica(0), 3, &ring, Binding::NONE, wall(0), seed);
        assert!(accepted(present(&mut gate, &h, wall(0))));
    }
    // Replica 0 filled its ring within the window: refused, not evicting.
    let noisy = hello(PeerId::Replica(0), 3, &ring, Binding::NONE, wall(1), 1000);
    assert_eq!(
        present(&mut gate, &noisy, wall(1)),
        rejected(RejectStatus::Busy)
    );
    assert_eq!(
        present(&mut gate, &first, wall(1)),
        REPLAYED,
        "first nonce was evicted"
    );
    // Replica 1 is unaffected.
    let other = hello(PeerId::Replica(1), 3, &ring, Binding::NONE, wall(1), 7);
    assert_eq!(
        present(&mut gate, &other, wall(1)),
        AdmissionOutcome::Accepted {
            peer: PeerId::Replica(1)
        }
    );
    // Once replica 0's nonces are stale, it gets in again.
    let later = hello(PeerId::Replica(0), 3, &ring, Binding::NONE, wall(40), 2000);
    assert!(accepted(present(&mut gate, &later, wall(40))));
}

/// Entropy that yields only zero bytes.
struct Zeros;
impl Entropy for Zeros {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
    }
}

#[test]
fn all_zero_nonce_is_not_mistaken_for_an_empty_ring_slot() {
    let ring = KeyRing::new(key(1));
    let mut gate = gate(1, ring.clone());
    let zero = hello_with(
        PeerId::Replica(0),
        1,
        &ring,
        Binding::NONE,
        wall(0),
        &mut Zeros,
    );
    assert_eq!(
        present(&mut gate, &zero, wall(0)),
        AdmissionOutcome::Accepted {
            peer: PeerId::Replica(0)
        },
        "an empty slot matched the zero nonce"
    );
    assert_eq!(present(&mut gate, &zero, wall(0)), REPLAYED);
}

#[test]
fn captured_hello_is_bound_to_acceptor_plane_cluster_time_and_flags() {
    let ring = KeyRing::new(key(1));
    let captured = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    // Same key everywhere: only the MAC's bindings stop these.
    let mut node2 = gate(2, ring.clone());
    assert_eq!(
        present(&mut node2, &captured, wall(0)),
        rejected(RejectStatus::WrongAcceptor)
    );
    let to_node2 = edit_hello(&captured, |h| h.acceptor = 2);
    assert_eq!(
        present(&mut node2, &to_node2, wall(0)),
        rejected(RejectStatus::BadMac)
    );

    let mut node1 = gate(1, ring.clone());
    let client_plane = rewrite(&captured, |h| {
        h.replica = REPLICA_NONE;
        if let Kind::Hello(hello) = &mut h.kind {
            hello.plane = Plane::Client;
        }
    });
    assert_eq!(
        present(&mut node1, &client_plane, wall(0)),
        rejected(RejectStatus::BadMac)
    );
    let retimed = edit_hello(&captured, |h| h.timestamp = wall(100));
    assert_eq!(
        present(&mut node1, &retimed, wall(100)),
        rejected(RejectStatus::BadMac)
    );
    let upgraded = edit_hello(&captured, |h| h.authenticated_frames = true);
    assert_eq!(
        present(&mut node1, &upgraded, wall(0)),
        rejected(RejectStatus::BadMac)
    );

    let mut other_cluster = gate_in(CLUSTER + 1, 1, ring.clone());
    assert_eq!(
        present(&mut other_cluster, &captured, wall(0)),
        rejected(RejectStatus::ClusterMismatch)
    );
    let recluster = rewrite(&captured, |h| h.cluster = CLUSTER + 1);
    assert_eq!(
        present(&mut other_cluster, &recluster, wall(0)),
        rejected(RejectStatus::BadMac)
    );

    assert_eq!(
        present(&mut node1, &captured, wall(31)),
        rejected(RejectStatus::StaleTimestamp)
    );
    assert_eq!(
        present(&mut node1, &captured, wall(0)),
        AdmissionOutcome::Accepted {
            peer: PeerId::Replica(0)
        },
        "the untouched hello is accepted"
    );
}

#[test]
fn acceptor_applies_the_directional_rule_and_knows_its_peers() {
    let ring = KeyRing::new(key(1));
    let mut node1 = gate(1, ring.clone());
    let from0 = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    let from2 = edit_hello(&from0, |h| h.dialer = 2);
    let from2 = rewrite(&from2, |h| h.replica = 2);
    assert_eq!(
        present(&mut node1, &from2, wall(0)),
        rejected(RejectStatus::DirectionalRule)
    );
    let from9 = rewrite(&edit_hello(&from0, |h| h.dialer = 9), |h| h.replica = 9);
    assert_eq!(
        present(&mut node1, &from9, wall(0)),
        rejected(RejectStatus::UnknownPeer)
    );
    let lying = rewrite(&from0, |h| h.replica = 0x7);
    assert_eq!(
        present(&mut node1, &lying, wall(0)),
        AdmissionOutcome::Ignored(IgnoreReason::InconsistentReplica { replica: 7 })
    );
    // The dialer refuses to break the rule itself.
    let err = Connection::dial(
        Instant::ZERO,
        wall(0),
        &config(),
        DialParams {
            cluster: CLUSTER,
            local: PeerId::Replica(2),
            acceptor: 1,
            keys: &ring,
            binding: Binding::NONE,
        },
        &mut SeededEntropy::new(1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("only a lower id dials"), "{err}");
}

#[test]
fn dialer_with_the_wrong_key_is_rejected_and_learns_why() {
    let mut setup = Setup::replicas(3, config());
    setup.dialer_keys = KeyRing::new(key(9));
    let mut pair = setup.build();
    pair.drive_for(Duration::from_secs(1));
    assert_eq!(pair.admissions, vec![rejected(RejectStatus::BadMac)]);
    let reason = &pair.dialer.closed[0];
    assert!(
        matches!(reason, CloseCause::Rejected(r) if r.status == RejectStatus::BadMac),
        "{reason:?}"
    );
    assert_eq!(
        pair.acceptor.closed,
        vec![CloseCause::Refused(RejectStatus::BadMac)]
    );
    assert!(pair.dialer.established.is_none() && pair.acceptor.established.is_none());
}

#[test]
fn impostor_acceptor_without_the_key_is_detected_by_the_dialer() {
    let ring = KeyRing::new(key(1));
    let mut dialer = Connection::dial(
        Instant::ZERO,
        wall(0),
        &config(),
        DialParams {
            cluster: CLUSTER,
            local: PeerId::Replica(0),
            acceptor: 1,
            keys: &ring,
            binding: Binding::NONE,
        },
        &mut SeededEntropy::new(1),
    )
    .unwrap();
    let _hello = dialer.poll_transmit(Instant::ZERO).unwrap();
    // The impostor answers with a welcome it cannot MAC correctly.
    let mut welcome = Header::new(
        CLUSTER,
        Kind::Welcome(Box::new(Welcome {
            nonce: Nonce::from_bytes([3; 32]),
            authenticated_frames: false,
            mac: Tag::from_bytes([4; 32]),
        })),
    );
    welcome.replica = 1;
    let mut bytes = Vec::new();
    Frame::control(welcome)
        .encode(&Integrity::Checksum, 256)
        .unwrap()
        .write_to(&mut bytes);
    dialer.handle_input(Instant::ZERO, &bytes);
    assert_eq!(
        dialer.poll_event(),
        Some(Event::Closed {
            reason: CloseCause::Handshake(bus_proto::handshake::HandshakeError::WelcomeMac)
        })
    );
    assert!(
        dialer.poll_transmit(Instant::ZERO).is_none(),
        "no confirm to an impostor"
    );
}

#[test]
fn handshake_relayed_across_different_transport_bindings_fails() {
    let mut setup = Setup::replicas(4, config());
    setup.dialer_binding = Binding::from_bytes([1; 32]);
    setup.acceptor_binding = Binding::from_bytes([2; 32]);
    let mut relayed = setup.clone().build();
    relayed.drive_for(Duration::from_secs(1));
    assert_eq!(relayed.admissions, vec![rejected(RejectStatus::BadMac)]);

    setup.acceptor_binding = setup.dialer_binding;
    let mut direct = setup.build();
    direct.drive_for(Duration::from_secs(1));
    assert!(direct.dialer.established.is_some() && direct.acceptor.established.is_some());
}

#[test]
fn per_peer_key_stops_other_members_impersonating_that_peer() {
    let cluster_key = key(1);
    let pair_key = key(2);
    let acceptor_ring = KeyRing::new(cluster_key.clone())
        .with_peer(PeerId::Replica(0), KeySet::new(pair_key.clone()));
    let mut node2 = gate(2, acceptor_ring);
    // Replica 1 holds the cluster key and claims to be replica 0.
    let impostor = hello(
        PeerId::Replica(0),
        2,
        &KeyRing::new(cluster_key.clone()),
        Binding::NONE,
        wall(0),
        1,
    );
    assert_eq!(
        present(&mut node2, &impostor, wall(0)),
        rejected(RejectStatus::BadMac)
    );
    let genuine_ring =
        KeyRing::new(cluster_key).with_peer(PeerId::Replica(2), KeySet::new(pair_key));
    let genuine = hello(
        PeerId::Replica(0),
        2,
        &genuine_ring,
        Binding::NONE,
        wall(0),
        2,
    );
    assert_eq!(
        present(&mut node2, &genuine, wall(0)),
        AdmissionOutcome::Accepted {
            peer: PeerId::Replica(0)
        }
    );
}

#[test]
fn key_rotation_with_a_verify_only_key_never_refuses_a_dial() {
    let (old, new) = (key(1), key(2));
    // Phase 1: everyone verifies `new` but signs with `old`.
    // Phase 2: nodes switch one by one to signing with `new`, verifying `old`.
    // Phase 3: `old` is dropped once every node signs with `new`.
    let phase1 = KeyRing::new(old.clone()).with_previous(new.clone());
    let phase2 = KeyRing::new(new.clone()).with_previous(old.clone());
    let phase3 = KeyRing::new(new);
    let mut seed = 0;
    for (dialer, acceptor) in [
        (&phase1, &phase1),
        (&phase1, &phase2),
        (&phase2, &phase1),
        (&phase2, &phase2),
        (&phase2, &phase3),
        (&phase3, &phase2),
        (&phase3, &phase3),
    ] {
        seed += 1;
        let mut setup = Setup::replicas(seed, config());
        setup.dialer_keys = dialer.clone();
        setup.acceptor_keys = acceptor.clone();
        let mut pair = setup.build();
        pair.drive_for(Duration::from_secs(1));
        assert!(
            pair.dialer.established.is_some() && pair.acceptor.established.is_some(),
            "rotation step {seed} refused: {:?}",
            pair.admissions
        );
    }
}

#[test]
fn silent_peer_is_closed_at_the_hello_deadline() {
    let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    // The default `hello_timeout`: far shorter than the whole handshake's.
    let deadline = Instant::from_nanos(2_000_000_000);
    assert_eq!(conn.poll_timeout(), Some(deadline));
    // Trickling a partial frame does not extend the deadline.
    for ms in (100..2000).step_by(100) {
        let now = Instant::from_nanos(ms * 1_000_000);
        conn.handle_input(now, &[0]);
        conn.handle_timeout(now);
        assert!(conn.poll_event().is_none());
        assert_eq!(conn.poll_timeout(), Some(deadline));
    }
    conn.handle_timeout(deadline);
    assert_eq!(
        conn.poll_event(),
        Some(Event::Closed {
            reason: CloseCause::Timeout(bus_proto::connection::Deadline::Hello)
        })
    );
    assert!(conn.is_drained() && conn.poll_timeout().is_none());
}

#[test]
fn unauthenticated_peer_cannot_make_us_reserve_a_body() {
    let ring = KeyRing::new(key(1));
    let legit = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    // A message header declaring a 1 MiB body, before any handshake.
    let mut header = Header::new(CLUSTER, Kind::Message { operation: 0 });
    header.replica = 0;
    let frame = Frame {
        header,
        body: vec![0; (1 << 20) - HEADER_SIZE].into(),
    };
    let mut bytes = Vec::new();
    frame
        .encode(&Integrity::Checksum, 1 << 20)
        .unwrap()
        .write_to(&mut bytes);
    let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    conn.handle_input(Instant::ZERO, &bytes[..HEADER_SIZE]);
    let Some(Event::Closed {
        reason: CloseCause::Decode(e),
    }) = conn.poll_event()
    else {
        panic!("expected a decode error");
    };
    assert!(
        e.to_string().contains("exceeds max_message_size 256"),
        "{e}"
    );
    let reserved = conn.read_buffer().map(|b| b.capacity());
    assert!(reserved.is_some_and(|r| r < 4096), "reserved {reserved:?}");
    drop(legit);
}

#[test]
fn tags_are_only_compared_in_constant_time() {
    // `Tag` exposes no bytes outside the crate; inside, every comparison goes
    // through its constant-time `PartialEq`. Guard against raw compares of
    // MAC or tag bytes creeping back in.
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut offenders = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(src)];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let raw_compare = (line.contains(".as_bytes() ==")
                    || line.contains(".as_bytes() !="))
                    && (line.contains("mac") || line.contains("tag"));
                if raw_compare {
                    offenders.push(format!("{}:{}: {line}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "raw tag comparisons: {offenders:#?}");
    let a = Tag::from_bytes([1; 32]);
    let mut b_bytes = [1; 32];
    b_bytes[31] = 2;
    assert!(a == Tag::from_bytes([1; 32]) && a != Tag::from_bytes(b_bytes));
}

#[test]
fn old_or_foreign_frames_land_in_the_unauthenticated_bucket() {
    let ring = KeyRing::new(key(1));
    let legit = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    // Command 0 (and any unknown command) from an old peer.
    for command in [0u8, 11, 200] {
        let mut bytes = legit.clone();
        bytes[62] = command;
        fix_checksum(&mut bytes);
        let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
        conn.handle_input(Instant::ZERO, &bytes);
        let Some(Event::Closed { reason }) = conn.poll_event() else {
            panic!("not closed")
        };
        assert_eq!(
            reason.class(),
            Some(ErrorClass::Unauthenticated),
            "command {command}: {reason}"
        );
    }
    // A hello of another protocol version is answered with the range we
    // speak, and the dialer surfaces it.
    let mut v2 = legit.clone();
    v2[60..62].copy_from_slice(&2u16.to_le_bytes());
    fix_checksum(&mut v2);
    let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    conn.handle_input(Instant::ZERO, &v2);
    let Some(Event::Closed { reason }) = conn.poll_event() else {
        panic!("not closed")
    };
    assert_eq!(
        reason,
        CloseCause::Refused(RejectStatus::UnsupportedVersion)
    );
    assert_eq!(reason.class(), Some(ErrorClass::Unauthenticated));
    let mut reject = Vec::new();
    conn.poll_transmit(Instant::ZERO)
        .unwrap()
        .write_to(&mut reject);
    let (header, _) = Header::decode(
        reject[..HEADER_SIZE].try_into().unwrap(),
        &Integrity::Checksum,
        256,
    )
    .unwrap();
    let Kind::Reject(r) = header.kind else {
        panic!("not a reject")
    };
    assert_eq!(
        (r.status, r.protocol_min, r.protocol_max),
        (RejectStatus::UnsupportedVersion, 1, 1)
    );
    // A sequence-less unauthenticated frame before the hello is also noise.
    let mut ping = Header::new(CLUSTER, Kind::Ping { token: 1 });
    ping.replica = 0;
    let mut bytes = Vec::new();
    Frame::control(ping)
        .encode(&Integrity::Checksum, 256)
        .unwrap()
        .write_to(&mut bytes);
    let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    conn.handle_input(Instant::ZERO, &bytes);
    let Some(Event::Closed { reason }) = conn.poll_event() else {
        panic!("not closed")
    };
    assert_eq!(
        reason.class(),
        Some(ErrorClass::Unauthenticated),
        "{reason}"
    );
    assert!(
        conn.poll_transmit(Instant::ZERO).is_none(),
        "no answer to noise"
    );
}

fn fix_checksum(bytes: &mut [u8]) {
    let sum = twox_hash::XxHash3_128::oneshot(&bytes[16..HEADER_SIZE]);
    bytes[..16].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn clients_filling_the_replay_store_cannot_lock_out_replicas() {
    let ring = KeyRing::new(key(1));
    let small = {
        let mut tuned = Config::default();
        tuned.max_replay_peers = 4;
        tuned
    }
    .validate()
    .unwrap();
    let params = GateParams {
        cluster: CLUSTER,
        local: 3,
        replica_count: 4,
        accept_clients: true,
    };
    let mut gate = Gate::new(&small, params, ring.clone());
    for (i, client) in (100u128..104).enumerate() {
        let h = hello(
            PeerId::Client(client),
            3,
            &ring,
            Binding::NONE,
            wall(0),
            i as u64,
        );
        assert!(accepted(present(&mut gate, &h, wall(0))));
    }
    let fifth = hello(PeerId::Client(104), 3, &ring, Binding::NONE, wall(0), 50);
    assert_eq!(
        present(&mut gate, &fifth, wall(0)),
        rejected(RejectStatus::Busy)
    );
    for replica in 0..3u8 {
        let h = hello(
            PeerId::Replica(replica),
            3,
            &ring,
            Binding::NONE,
            wall(0),
            60 + u64::from(replica),
        );
        assert_eq!(
            present(&mut gate, &h, wall(0)),
            AdmissionOutcome::Accepted {
                peer: PeerId::Replica(replica)
            }
        );
    }
}

#[test]
fn bytes_after_the_hello_before_the_answer_close_the_dial() {
    let ring = KeyRing::new(key(1));
    let legit = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    conn.handle_input(Instant::ZERO, &legit);
    assert!(conn.take_hello().is_some());
    conn.handle_input(Instant::ZERO, &[0u8; 4096]);
    assert_eq!(
        conn.poll_event(),
        Some(Event::Closed {
            reason: CloseCause::Unauthenticated(bus_proto::connection::Violation::EarlyData {
                bytes: 4096
            })
        })
    );
    let buffered = conn.read_buffer().map(|b| b.len());
    assert_eq!(buffered, Some(0), "the early bytes were dropped");
}

/// PROTOCOL.md §8.3: bytes that arrive in the same read as the `hello`
/// are early data too, refused before the gate runs.
#[test]
fn bytes_in_the_same_read_as_the_hello_close_the_dial_before_admission() {
    let ring = KeyRing::new(key(1));
    let mut stream = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 1);
    stream.extend_from_slice(&[0u8; 100]);
    let mut conn = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    conn.handle_input(Instant::ZERO, &stream);
    assert!(conn.take_hello().is_none(), "nothing reaches the gate");
    assert_eq!(
        conn.poll_event(),
        Some(Event::Closed {
            reason: CloseCause::Unauthenticated(bus_proto::connection::Violation::EarlyData {
                bytes: 100
            })
        })
    );
}

#[test]
fn an_admission_only_applies_to_a_parked_hello() {
    let mut pair = Setup::replicas(5, config()).build();
    pair.drive_for(Duration::from_secs(1));
    assert!(pair.acceptor.conn.is_established());
    // A second admission (e.g. a stale one) must not reset the connection.
    let ring = KeyRing::new(key(7));
    let again = hello(PeerId::Replica(0), 1, &ring, Binding::NONE, wall(0), 77);
    let mut other = Connection::accept(Instant::ZERO, &config(), Binding::NONE);
    other.handle_input(Instant::ZERO, &again);
    let admission = pair.gate.admit(
        wall(0),
        other.take_hello().unwrap(),
        &mut SeededEntropy::new(3),
    );
    assert!(matches!(
        admission.outcome(),
        AdmissionOutcome::Accepted { .. }
    ));
    pair.acceptor.conn.admit(pair.now, admission);
    assert!(pair.acceptor.conn.is_established());
    pair.acceptor.outbox.push_back("still here".into());
    pair.drive_for(Duration::from_secs(1));
    assert_eq!(pair.dialer.received.len(), 1);
    assert!(pair.acceptor.closed.is_empty() && pair.dialer.closed.is_empty());
}
