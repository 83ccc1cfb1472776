//! Node and client hazards (`../shared/docs/hazards.md` items 12, 16–19,
//! 21–22, 26–27), each test named after what it proves.

mod support {
    pub mod net;
}

use bus_proto::client::{ClientEvent, RequestError, RequestFailure};
use bus_proto::config::{Config, ValidConfig};
use bus_proto::connection::{CloseCause, Event};
use bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_proto::handshake::Binding;
use bus_proto::node::{AcceptError, Action, NodeEvent, ReplyError, RouteError, SocketError};
use bus_proto::wire::{
    APP_AREA_SIZE, AppArea, AppHeader, CloseReason, FrameDecoder, Integrity, Kind, RejectStatus,
    RequestHeader,
};
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use support::net::{Host, Net, config, replies};

fn valid(c: Config) -> ValidConfig {
    c.validate().expect("valid test config")
}

fn requests(events: &[NodeEvent]) -> Vec<RequestHeader> {
    events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Request { request, .. } => Some(*request),
            _ => None,
        })
        .collect()
}

/// Three replicas connect, each pair once, and route messages by id.
#[test]
fn replicas_connect_pairwise_and_route_messages_by_id() {
    let mut net = Net::new(valid(config()), 3);
    net.run_for(Duration::from_millis(50));
    for i in 0..3 {
        for r in 0..3u8 {
            assert_eq!(net.node(i).is_connected(r), usize::from(r) != i, "{i}->{r}");
        }
    }
    net.node(2)
        .send(0, 5, Bytes::from_static(b"to zero"))
        .unwrap();
    net.run_for(Duration::from_millis(1));
    let got = net.take_node_events(0);
    assert!(got.iter().any(|e| matches!(e,
        NodeEvent::Message { from: 2, operation: 5, body, .. } if body == "to zero")));
    assert_eq!(
        net.node(0).send(9, 1, Bytes::new()),
        Err(RouteError::UnknownReplica {
            replica: 9,
            replica_count: 3
        })
    );
    assert_eq!(
        net.node(0).send(0, 1, Bytes::new()),
        Err(RouteError::Local(0))
    );
    // Each pair dialled exactly once: the lower id dials.
    assert_eq!(net.connects.len(), 3, "{:?}", net.connects);
}

/// Hazard 21: a second connection from an already registered replica is
/// refused with `Duplicate`; the winner keeps working and is never
/// announced as lost.
#[test]
fn duplicate_replica_connection_is_refused_without_disturbing_the_winner() {
    let mut net = Net::new(valid(config()), 2);
    net.run_for(Duration::from_millis(20));
    let winner = match net.take_node_events(1).as_slice() {
        [
            NodeEvent::PeerConnected {
                replica: 0,
                connection,
                ..
            },
        ] => *connection,
        other => panic!("{other:?}"),
    };
    // A second instance of replica 0 (same key) dials replica 1, with a
    // message queued to follow its handshake.
    let raw = net.raw_dial(PeerId::Replica(0), 1, &support::net::keys());
    net.raws[raw]
        .conn
        .send(
            bus_proto::wire::Kind::Message { operation: 1 },
            Bytes::from_static(b"loser"),
        )
        .unwrap();
    net.run_for(Duration::from_millis(20));
    let events = &net.raws[raw].events;
    assert!(matches!(events[0], Event::Established { .. }), "{events:?}");
    assert!(
        matches!(
            events.last(),
            Some(Event::Closed {
                reason: CloseCause::Peer(CloseReason::Duplicate)
            })
        ),
        "{events:?}"
    );
    assert_eq!(net.node(1).stats().duplicates_refused, 1);
    assert!(net.node(1).is_connected(0));
    assert!(
        net.take_node_events(1).is_empty(),
        "no event for the loser or the winner"
    );
    // The winner still carries traffic.
    net.node(0)
        .send(1, 1, Bytes::from_static(b"still here"))
        .unwrap();
    net.run_for(Duration::from_millis(1));
    assert!(matches!(net.take_node_events(1).as_slice(),
        [NodeEvent::Message { connection, body, .. }] if *connection == winner && body == "still here"));
}

/// Hazard 21: removal is guarded by the connection id's generation, so a
/// late loser's events cannot evict the newer connection, and a stale id
/// never addresses the connection that reused its slot.
#[test]
fn a_late_loser_cannot_evict_the_newer_connection() {
    let mut net = Net::new(valid(config()), 2);
    net.run_for(Duration::from_millis(20));
    let first = net.node(1).params().replica;
    assert_eq!(first, 1);
    let old = match net.take_node_events(1).as_slice() {
        [NodeEvent::PeerConnected { connection, .. }] => *connection,
        other => panic!("{other:?}"),
    };
    // The link resets; replica 0 redials and a new connection registers.
    net.reset((Host::Node(1), old));
    net.run_for(Duration::from_millis(200));
    let events = net.take_node_events(1);
    let new = match events.as_slice() {
        [
            NodeEvent::PeerDisconnected {
                connection: lost, ..
            },
            NodeEvent::PeerConnected { connection, .. },
        ] if *lost == old => *connection,
        other => panic!("{other:?}"),
    };
    assert_ne!(old, new);
    // Late input and EOF for the old id are refused or ignored.
    let at = net.at();
    assert_eq!(
        net.node(1).handle_input(at, old, b"late bytes"),
        Err(SocketError::UnknownConnection(old))
    );
    net.node(1).handle_eof(at, old);
    net.run_for(Duration::from_millis(1));
    assert!(net.node(1).is_connected(0));
    assert!(net.take_node_events(1).is_empty());
}

/// Hazard 21, client plane: a client's new connection replaces its old one
/// (newest wins); the old one's disconnect does not remove the new route.
#[test]
fn a_client_reconnect_replaces_its_old_connection_and_keeps_the_route() {
    let mut net = Net::new(valid(config()), 1);
    let c = net.add_client(0xC11E, 0);
    net.run_for(Duration::from_millis(10));
    let old = net.node(0).client_connection(0xC11E).unwrap();
    // A second connection for the same client id (same key) arrives while
    // the first still looks alive to the node.
    let raw = net.raw_dial(PeerId::Client(0xC11E), 0, &support::net::keys());
    net.run_for(Duration::from_millis(10));
    let new = net.node(0).client_connection(0xC11E).unwrap();
    assert_ne!(old, new);
    assert!(matches!(net.raws[raw].events[0], Event::Established { .. }));
    let events = net.take_node_events(0);
    let connected: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, NodeEvent::ClientConnected { .. }))
        .collect();
    let disconnected: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::ClientDisconnected { connection, .. } => Some(*connection),
            _ => None,
        })
        .collect();
    assert_eq!(connected.len(), 2);
    assert_eq!(
        disconnected,
        vec![old],
        "exactly the old connection is reported lost"
    );
    assert!(net.take_client_events(c).iter().any(|e| matches!(
        e,
        ClientEvent::Disconnected {
            cause: CloseCause::Peer(CloseReason::Duplicate)
        }
    )));
}

/// Hazard 22: every announced connection is reported lost exactly once,
/// whether it ends by reset, liveness timeout, or shutdown.
#[test]
fn every_announced_connection_is_reported_lost_exactly_once() {
    let mut net = Net::new(valid(config()), 3);
    net.add_client(7, 2);
    net.run_for(Duration::from_millis(20));
    // A reset, then a silent partition (liveness), then shutdown.
    let (_, conn) = net.client_socket(0).unwrap();
    net.reset((Host::Node(2), conn));
    net.run_for(Duration::from_millis(300));
    let link = net
        .peer
        .keys()
        .find(|(h, _)| *h == Host::Node(0))
        .copied()
        .unwrap();
    net.peer.remove(&link); // bytes from node 0 on this link vanish
    net.run_for(Duration::from_secs(2));
    let at = net.at();
    for i in 0..3 {
        net.node(i).shutdown(at);
    }
    net.run_for(Duration::from_secs(1));
    for i in 0..3 {
        assert_eq!(net.node(i).connections(), 0, "node {i} drained");
        let mut open = std::collections::BTreeSet::new();
        for e in net.take_node_events(i) {
            match e {
                NodeEvent::PeerConnected { connection, .. }
                | NodeEvent::ClientConnected { connection, .. } => {
                    assert!(open.insert(connection), "{connection} announced twice");
                }
                NodeEvent::PeerDisconnected { connection, .. }
                | NodeEvent::ClientDisconnected { connection, .. } => {
                    assert!(
                        open.remove(&connection),
                        "{connection} lost twice or never announced"
                    );
                }
                _ => {}
            }
        }
        assert!(open.is_empty(), "node {i}: never reported lost: {open:?}");
    }
}

/// Hazard 26: a peer that cannot be reached is redialled after delays that
/// double within a jitter band and stop at the cap; never while a dial to
/// it is in progress.
#[test]
fn reconnects_back_off_exponentially_with_jitter_up_to_the_cap() {
    let c = config();
    let mut net = Net::new(valid(c.clone()), 2);
    net.unreachable.push(1);
    net.run_for(Duration::from_secs(10));
    let times: Vec<_> = net.connects.iter().map(|(t, _, _)| *t).collect();
    assert!(times.len() > 8, "{times:?}");
    let mut ceiling = c.reconnect_min;
    for pair in times.windows(2) {
        let gap = pair[1].saturating_duration_since(pair[0]);
        assert!(
            gap >= ceiling / 2 && gap <= ceiling,
            "gap {gap:?} outside [{:?}, {ceiling:?}]",
            ceiling / 2
        );
        ceiling = (ceiling * 2).min(c.reconnect_max);
    }
    assert_eq!(ceiling, c.reconnect_max, "the cap was reached");
    // Reachable again: connected. A connection that holds for
    // `reconnect_max` resets the backoff, so its loss is redialled fast.
    net.unreachable.clear();
    net.run_for(c.reconnect_max);
    assert!(net.node(0).is_connected(1));
    net.run_for(c.reconnect_max);
    let link = *net.peer.keys().find(|(h, _)| *h == Host::Node(0)).unwrap();
    let lost_at = net.now;
    net.reset(link);
    net.run_for(c.reconnect_max);
    let (redial, _, _) = *net.connects.last().unwrap();
    assert!(redial.saturating_duration_since(lost_at) <= c.reconnect_min);
    assert!(net.node(0).is_connected(1));
}

/// Hazard 26: while a connect is in progress or the peer is connected, no
/// second dial starts; an unanswered connect is abandoned at the handshake
/// deadline and only then retried.
#[test]
fn a_peer_that_is_connected_or_mid_dial_is_never_dialled_again() {
    let c = config();
    let mut net = Net::new(valid(c.clone()), 2);
    // Take node 0's connect action by hand and never answer it.
    let at = net.at();
    net.node(0).handle_timeout(at);
    let action = net.node(0).poll_action();
    let Some(bus_proto::node::Action::Connect {
        connection,
        replica: 1,
    }) = action
    else {
        panic!("{action:?}")
    };
    for ms in [10, 100, 250] {
        net.now = bus_proto::time::Instant::from_nanos(ms * 1_000_000);
        let at = net.at();
        net.node(0).handle_timeout(at);
        assert_eq!(net.node(0).poll_action(), None, "no second dial at {ms} ms");
    }
    net.now = bus_proto::time::Instant::from_nanos(300_000_000);
    let at = net.at();
    net.node(0).handle_timeout(at);
    assert_eq!(
        net.node(0).poll_action(),
        Some(bus_proto::node::Action::Disconnect { connection })
    );
    // Now connect normally; a connected peer is not dialled again.
    net.run_for(Duration::from_secs(3));
    assert!(net.node(0).is_connected(1));
    let dials = net.connects.len();
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.connects.len(), dials);
}

/// Hazards 12 and 33 at the node: the unauthenticated pool is capped, a
/// new socket evicts the oldest (closed at once, its slot freed) instead of
/// being refused, and silent sockets close at the `hello` deadline.
#[test]
fn a_full_unauthenticated_pool_evicts_its_oldest_and_silent_sockets_expire() {
    let c = {
        let mut tuned = config();
        tuned.max_handshakes_in_flight = 4;
        tuned.hello_timeout = Duration::from_millis(200);
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    let at = net.at();
    let first: Vec<_> = (0..4)
        .map(|_| net.node(0).accept(at, Binding::NONE).unwrap())
        .collect();
    let newest = net
        .node(0)
        .accept(at, Binding::NONE)
        .expect("never refused");
    assert_eq!(net.node(0).handshakes_in_flight(), 4);
    assert_eq!(net.node(0).stats().unauthenticated_evicted, 1);
    assert_eq!(net.node(0).stats().accepts_refused, 0);
    // The oldest is closed without an answer, and its slot is free.
    assert!(net.node(0).poll_transmit(at).is_none());
    assert_eq!(
        net.node(0).poll_action(),
        Some(Action::Disconnect {
            connection: first[0]
        })
    );
    assert_eq!(net.node(0).connections(), 4);
    let failed = net.node(0).poll_event();
    assert!(
        matches!(
            &failed,
            Some(NodeEvent::HandshakeFailed { connection, cause: CloseCause::Evicted, .. })
                if *connection == first[0]
        ),
        "{failed:?}"
    );
    assert!(net.node(0).connection(newest).is_some());
    // Before the whole handshake deadline, the hello deadline closes the
    // rest.
    net.now = bus_proto::time::Instant::from_nanos(250_000_000);
    let at = net.at();
    net.node(0).handle_timeout(at);
    let mut dropped = 0;
    while let Some(a) = net.node(0).poll_action() {
        assert!(matches!(a, Action::Disconnect { .. }));
        dropped += 1;
    }
    assert_eq!(dropped, 4);
    assert_eq!(net.node(0).handshakes_in_flight(), 0);
    assert_eq!(net.node(0).stats().handshakes_failed, 5);
    let at = net.at();
    assert!(net.node(0).accept(at, Binding::NONE).is_ok());
}

/// Sockets whose address the adapter did not give are not lumped into
/// one address's share: only the node-wide cap applies to them.
#[test]
fn sockets_without_an_address_share_only_the_node_wide_cap() {
    let c = {
        let mut tuned = config();
        tuned.max_handshakes_in_flight = 8;
        tuned.max_unauthenticated_per_address = 2;
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    let at = net.at();
    for _ in 0..8 {
        net.node(0).accept(at, Binding::NONE).unwrap();
    }
    assert_eq!(net.node(0).handshakes_in_flight(), 8);
    assert_eq!(net.node(0).stats().unauthenticated_evicted, 0);
}

/// `max_connections` counts admitted clients only: with it full, a client
/// whose `hello` verifies is told `Busy`, while a replica still gets in.
#[test]
fn clients_beyond_max_connections_are_told_busy_and_replicas_still_get_in() {
    let c = {
        let mut tuned = config();
        tuned.max_handshakes_in_flight = 1;
        tuned.max_connections = 1;
        tuned
    };
    let mut net = Net::new(valid(c), 2);
    let first = net.add_client(0xc1, 1);
    net.run_for(Duration::from_millis(100));
    assert!(net.node(1).client_connection(0xc1).is_some());
    let second = net.add_client(0xc2, 1);
    net.run_for(Duration::from_millis(100));
    let refused = net.take_client_events(second);
    assert!(
        refused.iter().any(|e| matches!(
            e,
            ClientEvent::HandshakeFailed { cause: CloseCause::Rejected(r) } if r.status == RejectStatus::Busy
        )),
        "{refused:?}"
    );
    assert!(net.node(1).client_connection(0xc2).is_none());
    assert!(net.node(1).is_connected(0) && net.node(0).is_connected(1));
    assert_eq!(net.node(1).admitted_clients(), 1);
    assert!(net.node(1).stats().accepts_refused >= 1);
    let _ = first;
}

/// One address over its share of the pool evicts its own oldest, never
/// another address's connection; a full pool evicts from the address
/// holding the most.
#[test]
fn eviction_takes_from_the_address_that_holds_the_most() {
    let c = {
        let mut tuned = config();
        tuned.max_handshakes_in_flight = 6;
        tuned.max_unauthenticated_per_address = 4;
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    let at = net.at();
    let honest = SocketAddr::from(([10, 0, 0, 1], 4000));
    let attacker = |port| SocketAddr::from(([10, 0, 0, 66], port));
    let kept = net
        .node(0)
        .accept_from(at, Some(honest), Binding::NONE)
        .unwrap();
    for port in 0..100 {
        net.node(0)
            .accept_from(at, Some(attacker(port)), Binding::NONE)
            .unwrap();
        assert!(
            net.node(0).connection(kept).is_some(),
            "the honest socket stays"
        );
    }
    assert_eq!(net.node(0).handshakes_in_flight(), 5);
    assert_eq!(net.node(0).stats().unauthenticated_evicted, 96);
    // Another address fills the pool: the attacker's address, holding the
    // most, pays.
    let other = SocketAddr::from(([10, 0, 0, 2], 4000));
    for _ in 0..3 {
        net.node(0)
            .accept_from(at, Some(other), Binding::NONE)
            .unwrap();
    }
    assert!(net.node(0).connection(kept).is_some());
    assert_eq!(net.node(0).remote(kept), Some(honest));
    assert_eq!(net.node(0).handshakes_in_flight(), 6);
}

/// A refused accept (shutting down, or the table full) carries a
/// `reject Busy` for the adapter to write.
#[test]
fn a_refused_accept_carries_a_busy_reject() {
    let error = AcceptError::ShuttingDown { cluster: 7 };
    let mut decoder = FrameDecoder::new(Integrity::Checksum, 256);
    decoder.feed(&error.reject());
    let frame = decoder.next_frame().unwrap().expect("a whole frame");
    assert_eq!(frame.header.cluster, 7);
    assert!(matches!(frame.header.kind, Kind::Reject(r) if r.status == RejectStatus::Busy));
}

/// Wrong keys never establish, on either plane.
#[test]
fn a_dial_with_the_wrong_key_never_establishes() {
    let mut net = Net::new(valid(config()), 2);
    let wrong = KeyRing::new(Key::from_bytes([1; 32]));
    let raw = net.raw_dial(PeerId::Replica(0), 1, &wrong);
    let raw_client = net.raw_dial(PeerId::Client(5), 1, &wrong);
    net.run_for(Duration::from_millis(500));
    for r in [raw, raw_client] {
        assert!(
            !net.raws[r]
                .events
                .iter()
                .any(|e| matches!(e, Event::Established { .. })),
            "{:?}",
            net.raws[r].events
        );
    }
    assert!(
        !net.take_node_events(1)
            .iter()
            .any(|e| matches!(e, NodeEvent::ClientConnected { .. }))
    );
}

/// Hazard 18: a retry after a reconnect keeps the client id and request
/// number, so the node answers it from the dedup cache instead of running
/// it again.
#[test]
fn a_retry_after_reconnect_is_answered_from_the_cache_not_run_twice() {
    let mut net = Net::new(valid(config()), 1);
    let c = net.add_client(0xAB, 0);
    net.run_for(Duration::from_millis(10));
    let at = net.at();
    let n = net.clients[c]
        .request(at, 3, Bytes::from_static(b"pay 10"))
        .unwrap();
    net.run_for(Duration::from_millis(1));
    let [request] = requests(&net.take_node_events(0))[..] else {
        panic!("one request")
    };
    // The connection dies before the reply; the application still answers.
    let end = net.client_socket(c).unwrap();
    net.reset(end);
    let at = net.at();
    assert_eq!(
        net.node(0).reply(at, request, Bytes::from_static(b"paid")),
        Err(ReplyError::Disconnected {
            client: 0xAB,
            cached: true
        })
    );
    // The client reconnects with the same id and resends request `n`.
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.clients[c].id(), 0xAB);
    assert_eq!(net.clients[c].stats().resent, 1);
    assert!(
        requests(&net.take_node_events(0)).is_empty(),
        "not run twice"
    );
    assert_eq!(net.node(0).stats().dedup_hits, 1);
    assert_eq!(
        replies(&net.take_client_events(c)),
        vec![(n, Bytes::from_static(b"paid"))]
    );
}

/// The application header (view, release, the 96-byte area) travels with a
/// request and its reply, and a retry answered from the dedup cache gets
/// the first reply's header byte for byte, not zeros.
#[test]
fn application_headers_travel_with_requests_and_cached_replies() {
    let mut net = Net::new(valid(config()), 1);
    let c = net.add_client(0xAC, 0);
    net.run_for(Duration::from_millis(10));
    let header = |view, fill| AppHeader {
        view,
        release: 9,
        area: AppArea::new([fill; APP_AREA_SIZE]),
    };
    let at = net.at();
    let n = net.clients[c]
        .request_with(at, 3, header(4, 0x11), Bytes::new())
        .unwrap();
    net.run_for(Duration::from_millis(1));
    let requests: Vec<_> = net
        .take_node_events(0)
        .into_iter()
        .filter_map(|e| match e {
            NodeEvent::Request { request, app, .. } => Some((request, app)),
            _ => None,
        })
        .collect();
    let [(request, app)] = &requests[..] else {
        panic!("one request: {requests:?}")
    };
    assert_eq!(*app, header(4, 0x11), "the request's header arrived");
    let request = *request;
    // The reply is lost with the connection; the retry finds it cached.
    let end = net.client_socket(c).unwrap();
    net.reset(end);
    let at = net.at();
    let reply = net
        .node(0)
        .reply_with(at, request, header(5, 0x22), Bytes::new());
    assert!(matches!(
        reply,
        Err(ReplyError::Disconnected { cached: true, .. })
    ));
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.node(0).stats().dedup_hits, 1);
    let replies: Vec<_> = net
        .take_client_events(c)
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Reply { request, app, .. } => Some((request, app)),
            _ => None,
        })
        .collect();
    assert_eq!(replies, vec![(n, header(5, 0x22))]);
    // A control frame may not carry an application area.
    let control = bus_proto::wire::Header::new(1, Kind::Ping { token: 1 }).with_app(header(0, 1));
    assert!(control.check(0, 1 << 20).is_err());
}

/// Hazard 18: a retry that arrives while the original is still executing is
/// dropped, and the one reply reaches the client on its new connection.
#[test]
fn a_retry_of_a_request_in_flight_is_dropped_and_answered_once() {
    let mut net = Net::new(valid(config()), 1);
    let c = net.add_client(0xCD, 0);
    net.run_for(Duration::from_millis(10));
    let at = net.at();
    let n = net.clients[c]
        .request(at, 3, Bytes::from_static(b"slow"))
        .unwrap();
    net.run_for(Duration::from_millis(1));
    let [request] = requests(&net.take_node_events(0))[..] else {
        panic!("one request")
    };
    let end = net.client_socket(c).unwrap();
    net.reset(end);
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.node(0).stats().duplicates_dropped, 1);
    assert!(requests(&net.take_node_events(0)).is_empty());
    let at = net.at();
    net.node(0)
        .reply(at, request, Bytes::from_static(b"done"))
        .unwrap();
    net.run_for(Duration::from_millis(1));
    let events = net.take_client_events(c);
    assert_eq!(replies(&events), vec![(n, Bytes::from_static(b"done"))]);
    assert_eq!(
        net.node(0).reply(at, request, Bytes::from_static(b"again")),
        Err(ReplyError::AlreadyReplied {
            client: 0xCD,
            request: n
        })
    );
}

/// Hazard 16: at-most-once covers the last `dedup_entries_per_client`
/// requests of a client: beyond them a retry is refused as `Stale`, never
/// run again; after `dedup_ttl` of silence the session ends and the same
/// number counts as new.
#[test]
fn at_most_once_covers_the_last_n_requests_and_says_stale_beyond_them() {
    let c = {
        let mut tuned = config();
        tuned.dedup_entries_per_client = 4;
        tuned.dedup_ttl = Duration::from_secs(5);
        tuned.client_max_outstanding = 4;
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    let client = net.add_client(0xEF, 0);
    net.run_for(Duration::from_millis(10));
    for _ in 0..6 {
        let at = net.at();
        net.clients[client]
            .request(at, 1, Bytes::from_static(b"op"))
            .unwrap();
        net.run_for(Duration::from_millis(1));
        for r in requests(&net.take_node_events(0)) {
            let at = net.at();
            net.node(0).reply(at, r, Bytes::from_static(b"ok")).unwrap();
        }
        net.run_for(Duration::from_millis(1));
    }
    // Retry request 0 (slid out of the window) and 5 (still in it) by hand.
    let raw = net.raw_dial(PeerId::Client(0xEF), 0, &support::net::keys());
    net.run_for(Duration::from_millis(5));
    for number in [0, 5] {
        let header = RequestHeader {
            client: 0xEF,
            request: number,
            operation: 1,
        };
        net.raws[raw]
            .conn
            .send(
                bus_proto::wire::Kind::Request(header),
                Bytes::from_static(b"op"),
            )
            .unwrap();
    }
    net.run_for(Duration::from_millis(5));
    assert!(
        requests(&net.take_node_events(0)).is_empty(),
        "neither runs again"
    );
    let stats = net.node(0).stats();
    assert_eq!((stats.stale, stats.dedup_hits), (1, 1));
    let statuses: Vec<_> = net.raws[raw]
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(f) => match f.header.kind {
                bus_proto::wire::Kind::Reply { request, status } => Some((request.request, status)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    use bus_proto::wire::ReplyStatus;
    assert_eq!(
        statuses,
        vec![(0, ReplyStatus::Stale), (5, ReplyStatus::Ok)]
    );
    // After the TTL of silence the session ends (the guarantee with it).
    assert_eq!(net.node(0).dedup().clients(), 1);
    net.run_for(Duration::from_secs(6));
    assert_eq!(net.node(0).dedup().clients(), 0);
}

/// Hazard 17: the node's client sessions are capped; the least recently
/// active session is evicted and its client told (`close Evicted`).
#[test]
fn client_sessions_are_capped_and_the_evicted_client_is_told() {
    let c = {
        let mut tuned = config();
        tuned.dedup_max_clients = 2;
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    for id in 1..=3u128 {
        let j = net.add_client(id, 0);
        net.run_for(Duration::from_millis(5));
        let at = net.at();
        net.clients[j].request(at, 1, Bytes::new()).unwrap();
        net.run_for(Duration::from_millis(5));
    }
    assert_eq!(net.node(0).dedup().clients(), 2);
    assert_eq!(net.node(0).stats().sessions_evicted, 1);
    assert!(net.take_client_events(0).iter().any(|e| matches!(
        e,
        ClientEvent::Disconnected {
            cause: CloseCause::Peer(CloseReason::Evicted)
        }
    )));
    // Routes are released on disconnect: the map of clients shrinks too.
    let at = net.at();
    for j in 0..3 {
        net.clients[j].shutdown(at);
    }
    net.run_for(Duration::from_millis(50));
    for id in 1..=3u128 {
        assert_eq!(net.node(0).client_connection(id), None);
    }
}

/// Hazard 19: the reply a retry receives from the cache is the reply
/// recorded, byte for byte, even after the session holding it is evicted.
#[test]
fn a_cached_reply_is_served_intact_after_the_store_changes() {
    let c = {
        let mut tuned = config();
        tuned.dedup_max_clients = 1;
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    let a = net.add_client(0xA, 0);
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    net.clients[a].request(at, 1, Bytes::new()).unwrap();
    net.run_for(Duration::from_millis(1));
    let [request] = requests(&net.take_node_events(0))[..] else {
        panic!()
    };
    let reply = Bytes::from(vec![0x5A; 300]);
    let end = net.client_socket(a).unwrap();
    net.reset(end);
    let at = net.at();
    let _ = net.node(0).reply(at, request, reply.clone());
    // The reconnect's retry is served from the cache...
    net.run_for(Duration::from_millis(200));
    let served = replies(&net.take_client_events(a));
    assert_eq!(served, vec![(0, reply.clone())]);
    let cached_before = net.node(0).dedup().cached_bytes();
    assert_eq!(cached_before, 300);
    // ...and another client's session then evicts it (cap of one).
    let b = net.add_client(0xB, 0);
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    net.clients[b].request(at, 1, Bytes::new()).unwrap();
    net.run_for(Duration::from_millis(1));
    assert_eq!(net.node(0).dedup().clients(), 1);
    assert_eq!(
        net.node(0).dedup().cached_bytes(),
        0,
        "A's reply left the store"
    );
    assert_eq!(
        served[0].1,
        Bytes::from(vec![0x5A; 300]),
        "what A got is intact"
    );
}

/// Hazard 27: outstanding requests are bounded and expire; a reply that
/// matches nothing outstanding (late, duplicated, forged) is dropped.
#[test]
fn outstanding_requests_are_bounded_and_expire_and_unmatched_replies_are_dropped() {
    let c = {
        let mut tuned = config();
        tuned.client_max_outstanding = 2;
        tuned
    };
    let timeout = c.request_timeout;
    let mut net = Net::new(valid(c), 1);
    let j = net.add_client(0x77, 0);
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    let first = net.clients[j].request(at, 1, Bytes::new()).unwrap();
    net.clients[j].request(at, 1, Bytes::new()).unwrap();
    assert_eq!(
        net.clients[j].request(at, 1, Bytes::new()),
        Err(RequestError::TooManyOutstanding {
            outstanding: 2,
            max: 2
        })
    );
    net.run_for(Duration::from_millis(1));
    let executing = requests(&net.take_node_events(0));
    net.run_for(timeout);
    let failed: Vec<_> = net
        .take_client_events(j)
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Failed {
                    reason: RequestFailure::Expired,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(failed.len(), 2);
    assert_eq!(net.clients[j].outstanding(), 0);
    // The late replies, and one for a number never sent, are dropped.
    let at = net.at();
    for r in executing {
        net.node(0)
            .reply(at, r, Bytes::from_static(b"late"))
            .unwrap();
    }
    let forged = RequestHeader {
        client: 0x77,
        request: 99,
        operation: 1,
    };
    net.node(0)
        .reply(at, forged, Bytes::from_static(b"forged"))
        .unwrap();
    net.run_for(Duration::from_millis(1));
    assert!(replies(&net.take_client_events(j)).is_empty());
    assert_eq!(net.clients[j].stats().unmatched_replies, 3);
    assert_eq!(first, 0);
}

/// Requests submitted faster than the connection's queue takes them wait
/// their turn: each reaches the node once, in the order submitted, and is
/// answered, however the full queue splits them.
#[test]
fn requests_beyond_a_full_send_queue_follow_in_order_once_it_drains() {
    let c = {
        let mut tuned = config();
        tuned.max_message_size = 4096;
        // Two 1,500-byte requests fill it.
        tuned.send_queue_bytes = 4096;
        tuned
    };
    let mut net = Net::new(valid(c), 1);
    let j = net.add_client(0x77, 0);
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    let submitted: Vec<u64> = (0..10u8)
        .map(|i| {
            net.clients[j]
                .request(at, 1, Bytes::from(vec![i; 1500]))
                .unwrap()
        })
        .collect();
    let mut executed = Vec::new();
    for _ in 0..50 {
        net.run_for(Duration::from_millis(1));
        let at = net.at();
        for request in requests(&net.take_node_events(0)) {
            executed.push(request.request);
            net.node(0).reply(at, request, Bytes::new()).unwrap();
        }
    }
    assert_eq!(executed, submitted, "each once, in order");
    net.run_for(Duration::from_millis(1));
    assert_eq!(replies(&net.take_client_events(j)).len(), submitted.len());
    assert_eq!(net.clients[j].outstanding(), 0);
}

/// A client that is shut down stays quiet: a later retarget neither dials
/// nor arms a timer that is already due (no busy loop).
#[test]
fn a_shut_down_client_never_dials_again() {
    let mut net = Net::new(valid(config()), 2);
    let j = net.add_client(0x99, 0);
    net.run_for(Duration::from_millis(10));
    let at = net.at();
    net.clients[j].request(at, 1, Bytes::new()).unwrap();
    net.clients[j].shutdown(at);
    net.clients[j].retarget(at, 1);
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.clients[j].poll_timeout(), None);
    assert_eq!(net.clients[j].connections(), 0);
    assert_eq!(net.clients[j].outstanding(), 0);
    let dials = net
        .connects
        .iter()
        .filter(|(_, h, _)| *h == Host::Client(j))
        .count();
    assert_eq!(dials, 1);
}

/// Raw connection `r` (replica 0, dialling node 1) takes node 1's
/// `welcome`: its side is established; its `confirm` is the next batch.
fn welcome_raw_replica(net: &mut Net, r: usize) {
    let at = net.at();
    let (_, welcome) = net.node(1).poll_transmit(at).expect("welcome");
    net.raws[r]
        .conn
        .handle_input(at.mono, &welcome.segments().concat());
    assert!(matches!(
        net.raws[r].conn.poll_event(),
        Some(Event::Established { .. })
    ));
}

/// Raw connection `r` queues one message per operation, its body the
/// operation's bytes.
fn send_numbered(net: &mut Net, r: usize, operations: std::ops::Range<u32>) {
    for operation in operations {
        let body = Bytes::from(operation.to_le_bytes().to_vec());
        net.raws[r]
            .conn
            .send_with(AppHeader::ZERO, Kind::Message { operation }, body)
            .expect("queued");
    }
}

/// Every event node 1 has waiting.
fn poll_all(net: &mut Net) -> Vec<NodeEvent> {
    std::iter::from_fn(|| net.node(1).poll_event()).collect()
}

/// The operations of `events`, each a message from replica 0 whose body
/// is [`send_numbered`]'s.
fn numbered_operations(events: &[NodeEvent]) -> Vec<u32> {
    events
        .iter()
        .map(|e| match e {
            NodeEvent::Message {
                from: 0,
                operation,
                body,
                ..
            } => {
                assert_eq!(body[..], operation.to_le_bytes());
                *operation
            }
            other => panic!("not a message from replica 0: {other:?}"),
        })
        .collect()
}

/// Messages that arrive in the same input as the `confirm` that completes
/// the handshake wait behind the peer's `PeerConnected`; once the peer is
/// registered, its messages go straight to the application's queue. Either
/// way none is lost and their order holds.
#[test]
fn messages_behind_the_confirm_follow_peer_connected_in_order() {
    let mut net = Net::new(valid(config()), 2);
    // Replica 0 is played by hand: a bare connection that dials node 1.
    net.nodes[0] = None;
    let keys = support::net::keys();
    let r = net.raw_dial(PeerId::Replica(0), 1, &keys);
    let node_id = net.raws[r].id;
    let pump_raw = |net: &mut Net| {
        let at = net.at();
        let transmit = net.raws[r].conn.poll_transmit(at.mono).expect("a batch");
        let bytes = transmit.segments().concat();
        net.node(1).handle_input(at, node_id, &bytes).expect("open");
    };
    pump_raw(&mut net); // hello
    welcome_raw_replica(&mut net, r);
    // The confirm and three messages in one input, then three more.
    send_numbered(&mut net, r, 0..3);
    pump_raw(&mut net);
    send_numbered(&mut net, r, 3..6);
    pump_raw(&mut net);
    let events = poll_all(&mut net);
    assert!(
        matches!(
            events.first(),
            Some(NodeEvent::PeerConnected { replica: 0, .. })
        ),
        "{events:?}"
    );
    assert_eq!(
        numbered_operations(&events[1..]),
        (0..6).collect::<Vec<_>>()
    );
    assert_eq!(net.node(1).stats().frames_unregistered, 0);
}

/// `handle_read_into` hands a registered replica's messages to the
/// caller's queue, in order, but only behind nothing: while an event
/// still waits in the node's queue, messages queue behind it there.
#[test]
fn messages_read_into_the_callers_queue_never_overtake_a_waiting_event() {
    let mut net = Net::new(valid(config()), 2);
    net.nodes[0] = None;
    let keys = support::net::keys();
    let r = net.raw_dial(PeerId::Replica(0), 1, &keys);
    let node_id = net.raws[r].id;
    // The raw connection's next batch, read by node 1 through its buffer.
    let pump_into = |net: &mut Net, direct: &mut Vec<NodeEvent>| {
        let at = net.at();
        let transmit = net.raws[r].conn.poll_transmit(at.mono).expect("a batch");
        let node = net.node(1);
        let buffer = node.read_buffer(node_id).expect("open");
        buffer.extend_from_slice(&transmit.segments().concat());
        node.handle_read_into(at, node_id, &mut |event| direct.push(event))
            .expect("open");
    };
    let mut direct = Vec::new();
    pump_into(&mut net, &mut direct); // hello
    welcome_raw_replica(&mut net, r);
    // The confirm and two messages: the peer is not announced yet, so
    // the messages follow its `PeerConnected` in the node's queue.
    send_numbered(&mut net, r, 0..2);
    pump_into(&mut net, &mut direct);
    assert!(direct.is_empty(), "{direct:?}");
    // `PeerConnected` and messages 0 and 1 still wait, unpolled: messages
    // 2 and 3 queue behind them, not in the caller's queue.
    send_numbered(&mut net, r, 2..4);
    pump_into(&mut net, &mut direct);
    assert!(direct.is_empty(), "{direct:?}");
    let waiting = poll_all(&mut net);
    assert!(
        matches!(
            waiting.first(),
            Some(NodeEvent::PeerConnected { replica: 0, .. })
        ),
        "{waiting:?}"
    );
    assert_eq!(numbered_operations(&waiting[1..]), vec![0, 1, 2, 3]);
    // With the node's queue drained, the next messages go to the caller.
    send_numbered(&mut net, r, 4..7);
    pump_into(&mut net, &mut direct);
    assert_eq!(numbered_operations(&direct), vec![4, 5, 6]);
    assert!(net.node(1).poll_event().is_none());
    assert_eq!(net.node(1).stats().frames_unregistered, 0);
}
