//! Availability under pressure (hazards 31–36), on every runtime: a slow
//! application, a dropped event stream, client floods, and key-less
//! adversaries. Each adversary runs while the legitimate peers connect;
//! nothing here asserts a duration, only that the legitimate work gets done
//! while the pressure is on.

use bus_proto::client::ClientParams;
use bus_proto::host::{ClientError, NodeOptions};
use bus_proto::node::{NodeEvent, NodeStats};
use bus_tests::attack::{
    established_then_silent, forged_hellos, handshake_on, join_all, silent_flood,
};
use bus_tests::bus::{Bus, EventsOf, NodeOf};
use bus_tests::cluster::{Member, member, until, wait_for, within};
use bus_tests::{CLUSTER, PATIENCE, config, keys, quick};
use bytes::Bytes;
use smol::future::{or, zip};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

bus_tests::scenarios!(
    a_stalled_application_keeps_its_connections_and_loses_nothing,
    a_client_flood_never_pauses_replica_traffic,
    a_dropped_event_stream_keeps_the_node_connected,
    a_silent_flood_from_another_host_never_locks_out_peers,
    a_silent_flood_from_the_same_host_still_lets_peers_in,
    forged_hello_bursts_do_not_keep_a_client_out,
    abandoned_requests_free_their_slots,
    a_node_shutting_down_refuses_new_sockets_with_busy,
    a_client_accepted_while_the_queue_was_full_gets_in_once_it_is_read,
);

fn client_params<B: Bus>(target: u8) -> ClientParams {
    ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target,
    }
}

/// Two replicas, 0 dialling 1, with `options` on both; returns once both
/// registered the connection.
async fn pair<B: Bus>(
    config: &bus_proto::config::ValidConfig,
    seed: u64,
    options: NodeOptions,
) -> (Member<B>, Member<B>) {
    let one = member::<B>(config, 1, 2, keys(seed), options.clone()).await;
    let mut dialer = options;
    dialer.peers.insert(1, one.address);
    let zero = member::<B>(config, 0, 2, keys(seed), dialer).await;
    until::<B>("the pair connected", || {
        zero.node.is_connected(1) && one.node.is_connected(0)
    })
    .await;
    (zero, one)
}

/// Sends numbered 4 KiB messages to `to` until the queue pushes back;
/// returns how many were accepted.
async fn send_until_full<B: Bus>(node: &NodeOf<B>, to: u8) -> u32 {
    let body = Bytes::from(vec![7u8; 4096]);
    let mut sent = 0u32;
    while node.send(to, sent, body.clone()).is_ok() {
        sent += 1;
        if sent.is_multiple_of(256) {
            // Let the socket tasks move what they can.
            B::sleep(Duration::from_millis(1)).await;
        }
        assert!(sent < 1_000_000, "no backpressure");
    }
    sent
}

/// Reads `count` messages, checking they are numbered 0.. in order and
/// that the connection never dropped.
async fn read_in_order<B: Bus>(events: &mut EventsOf<B>, count: u32) {
    let mut next = 0u32;
    while next < count {
        let event = wait_for::<B>(events, "the queued messages", |e| {
            matches!(
                e,
                NodeEvent::Message { .. } | NodeEvent::PeerDisconnected { .. }
            )
        })
        .await;
        match event {
            NodeEvent::Message { operation, .. } => {
                assert_eq!(operation, next, "{}: out of order", B::NAME);
                next += 1;
            }
            other => panic!("{}: {other:?} after {next} of {count}", B::NAME),
        }
    }
}

/// Hazard 31: both applications stop reading for three liveness timeouts
/// with messages queued both ways. Reading pauses on those connections
/// only, and our own pause never counts as the peer's silence: no
/// connection closes, nobody redials, and every message arrives in order.
async fn a_stalled_application_keeps_its_connections_and_loses_nothing<B: Bus>() {
    let config = config();
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 16;
        tuned
    };
    let (mut zero, mut one) = pair::<B>(&config, 31, options).await;
    let (to_one, to_zero) = (
        send_until_full::<B>(&zero.node, 1).await,
        send_until_full::<B>(&one.node, 0).await,
    );
    // The stall: nobody reads events.
    B::sleep(config.liveness_timeout * 3).await;
    assert!(zero.node.is_connected(1) && one.node.is_connected(0));
    read_in_order::<B>(&mut one.events, to_one).await;
    read_in_order::<B>(&mut zero.events, to_zero).await;
    assert!(zero.node.is_connected(1) && one.node.is_connected(0));
    assert_eq!(zero.node.stats().dials, 1, "{}: redialled", B::NAME);
}

/// Hazard 32: clients flood a node whose application does not read, so
/// the client plane's budget is spent and client sockets pause; replica
/// messages are still read off the socket. Then everything is delivered.
async fn a_client_flood_never_pauses_replica_traffic<B: Bus>() {
    let config = config();
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.request_capacity = 8;
        tuned
    };
    let (zero, mut one) = pair::<B>(&config, 32, options).await;
    let ids: Vec<u128> = (0..16).map(|_| B::random_id()).collect();
    let clients: Vec<_> = ids
        .iter()
        .map(|&id| {
            let params = ClientParams {
                cluster: CLUSTER,
                id,
                target: 1,
            };
            B::start_client(&config, params, keys(32), one.address).expect("client starts")
        })
        .collect();
    let flood: Vec<Pin<Box<dyn Future<Output = Result<_, ClientError>>>>> = clients
        .iter()
        .flat_map(|c| (0..4u32).map(move |i| (c, i)))
        .map(|(c, i)| {
            let c = c.clone();
            Box::pin(async move { c.request(i, Bytes::from_static(b"work")).await }) as Pin<Box<_>>
        })
        .collect();
    let replica_traffic = async {
        until::<B>(
            "client sockets pause: the client plane's budget is spent",
            || {
                one.node.inspect(|n| {
                    ids.iter().any(|&id| {
                        n.client_connection(id)
                            .and_then(|c| n.connection(c))
                            .is_some_and(|c| c.reading_paused())
                    })
                })
            },
        )
        .await;
        let received = |node: &NodeOf<B>| {
            node.inspect(|n| {
                let id = n.peer_connection(0).expect("the replica connection");
                n.connection(id).expect("open").stats().frames_received
            })
        };
        let before = received(&one.node);
        for i in 0..100u32 {
            zero.node
                .send(1, i, Bytes::from_static(b"replica"))
                .unwrap();
        }
        until::<B>("the replica messages are read while clients wait", || {
            received(&one.node) >= before + 100
        })
        .await;
        // The replica connection reads on while client sockets wait.
        assert!(one.node.inspect(|n| {
            let id = n.peer_connection(0).expect("the replica connection");
            !n.connection(id).expect("open").reading_paused()
        }));
        // Now the application catches up: messages in order, every request
        // answered.
        let mut next = 0;
        let mut answered = 0;
        while next < 100 || answered < 64 {
            match one.events.recv().await.expect("events") {
                NodeEvent::Message { operation, .. } => {
                    assert_eq!(operation, next);
                    next += 1;
                }
                NodeEvent::Request { request, body, .. } => {
                    one.node.reply(request, body).unwrap();
                    answered += 1;
                }
                _ => {}
            }
        }
    };
    let (replies, ()) = within::<B, _>(PATIENCE, zip(join_all(flood), replica_traffic))
        .await
        .expect("the flood and the replica traffic finish");
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    for c in &clients {
        c.shutdown(Duration::from_secs(1)).await;
    }
}

/// Hazard 36: a send-only program drops its event stream. The node keeps
/// its connection for three liveness timeouts of traffic, keeps sending,
/// and counts what it discarded.
async fn a_dropped_event_stream_keeps_the_node_connected<B: Bus>() {
    let config = config();
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 4;
        tuned
    };
    let (mut zero, one) = pair::<B>(&config, 36, options).await;
    let Member {
        node: one, events, ..
    } = one;
    drop(events);
    let rounds = 3 * config.liveness_timeout.as_millis() / 10;
    for i in 0..rounds {
        zero.node
            .send(
                1,
                u32::try_from(i).unwrap(),
                Bytes::from_static(b"to the void"),
            )
            .unwrap();
        B::sleep(Duration::from_millis(10)).await;
    }
    until::<B>("every message discarded", || {
        one.stats().deliveries_discarded == u64::try_from(rounds).unwrap()
    })
    .await;
    assert!(zero.node.is_connected(1) && one.is_connected(0));
    assert_eq!(zero.node.stats().dials, 1, "{}: redialled", B::NAME);
    // Sends still work.
    one.send(0, 9, Bytes::from_static(b"still here")).unwrap();
    wait_for::<B>(&mut zero.events, "the message from the deaf node", |e| {
        matches!(e, NodeEvent::Message { operation: 9, .. })
    })
    .await;
}

/// Answers every request, forever; race it.
async fn serve<B: Bus>(node: NodeOf<B>, events: &mut EventsOf<B>) {
    while let Some(event) = events.recv().await {
        if let NodeEvent::Request { request, body, .. } = event {
            let _ = node.reply(request, body);
        }
    }
}

/// A replica dials the node at `address` and a client gets a reply from
/// it; returns once both happened.
async fn legitimate_peers<B: Bus>(
    config: &bus_proto::config::ValidConfig,
    seed: u64,
    acceptor: &NodeOf<B>,
    address: SocketAddr,
) {
    let mut options = NodeOptions::default();
    options.peers.insert(1, address);
    let dialer = member::<B>(config, 0, 2, keys(seed), options).await;
    let client =
        B::start_client(config, client_params::<B>(1), keys(seed), address).expect("client starts");
    let reply = client
        .request(1, Bytes::from_static(b"let me in"))
        .await
        .expect("a reply");
    assert_eq!(reply.body.as_ref(), b"let me in");
    until::<B>("the replica connected", || {
        dialer.node.is_connected(1) && acceptor.is_connected(0)
    })
    .await;
    client.shutdown(Duration::from_secs(1)).await;
    dialer.node.shutdown(Duration::from_secs(1)).await;
}

/// A configuration where only admission can help: silent sockets would
/// hold their slots for a long time.
fn patient() -> bus_proto::config::ValidConfig {
    let mut c = quick();
    c.handshake_timeout = Duration::from_secs(60);
    c.hello_timeout = Duration::from_secs(60);
    c.validate().expect("valid")
}

/// Runs `legit` against the node while `attack` runs and the node's
/// application answers requests; panics if `legit` does not finish.
async fn under_attack<B: Bus>(
    acceptor: &mut Member<B>,
    attack: impl Future<Output = ()>,
    legit: impl Future<Output = ()>,
) {
    let node = acceptor.node.clone();
    let serving = serve::<B>(node, &mut acceptor.events);
    within::<B, _>(PATIENCE, or(legit, or(attack, serving)))
        .await
        .expect("the legitimate peers got in while the attack was on");
}

/// A node whose pool an attacker at `attacker` keeps full of silent
/// sockets (200 held, `per_round` more every 2 ms, deadlines too long to
/// help): once the attack is in full swing, a replica and a client connect
/// and get answers while it goes on. Returns the node's counters.
async fn peers_get_in_during_a_silent_flood<B: Bus>(
    seed: u64,
    attacker: Ipv4Addr,
    per_round: usize,
) -> NodeStats {
    let config = patient();
    let mut acceptor = member::<B>(&config, 1, 2, keys(seed), NodeOptions::default()).await;
    let (node, address) = (acceptor.node.clone(), acceptor.address);
    let flood = silent_flood::<B>(
        IpAddr::V4(attacker),
        address,
        200,
        per_round,
        Duration::from_millis(2),
    );
    let legit = async {
        until::<B>("the attack fills the pool", || {
            node.stats().unauthenticated_evicted > 100
        })
        .await;
        legitimate_peers::<B>(&config, seed, &node, address).await;
    };
    under_attack(&mut acceptor, flood, legit).await;
    acceptor.node.stats()
}

/// Hazard 33: an attacker on another host holds and keeps reopening far
/// more silent connections than the handshake cap. Its address may only
/// churn its own share of the pool, so the peers get in, and nothing is
/// ever refused.
async fn a_silent_flood_from_another_host_never_locks_out_peers<B: Bus>() {
    let stats = peers_get_in_during_a_silent_flood::<B>(33, Ipv4Addr::new(127, 0, 0, 2), 16).await;
    assert!(stats.unauthenticated_evicted > 100, "{stats:?}");
    assert_eq!(stats.accepts_refused, 0, "{stats:?}");
}

/// Hazard 33 when the attacker shares the legitimate peers' address (all
/// on 127.0.0.1): oldest-first eviction and the prompt `hello` of honest
/// dialers still let a replica and a client in (a dialer evicted before
/// its `hello` was read sees a reset and redials).
async fn a_silent_flood_from_the_same_host_still_lets_peers_in<B: Bus>() {
    peers_get_in_during_a_silent_flood::<B>(34, Ipv4Addr::LOCALHOST, 4).await;
}

/// 2,000 forged `hello`s (the wrong key) in bursts while a legitimate
/// client connects: each forgery costs one MAC check and closes, and the
/// client gets its reply.
async fn forged_hello_bursts_do_not_keep_a_client_out<B: Bus>() {
    let config = config();
    let mut acceptor = member::<B>(&config, 1, 2, keys(35), NodeOptions::default()).await;
    let (node, address) = (acceptor.node.clone(), acceptor.address);
    let wrong = keys(666);
    let forgeries = async {
        let written = forged_hellos::<B>(
            &config,
            &wrong,
            address,
            1,
            20,
            100,
            Duration::from_millis(5),
        )
        .await;
        assert!(written >= 1900, "{written} forged hellos written");
    };
    let legit = async {
        // The client starts while the bursts are under way.
        until::<B>("the forgeries are being refused", || {
            node.stats().handshakes_failed >= 100
        })
        .await;
        let client = B::start_client(&config, client_params::<B>(1), keys(35), address)
            .expect("client starts");
        let reply = client.request(1, Bytes::from_static(b"real")).await;
        assert_eq!(reply.expect("a reply").body.as_ref(), b"real");
        client.shutdown(Duration::from_secs(1)).await;
    };
    let serving = serve::<B>(node.clone(), &mut acceptor.events);
    within::<B, _>(
        PATIENCE,
        or(
            async {
                zip(forgeries, legit).await;
            },
            serving,
        ),
    )
    .await
    .expect("the client got in and every burst was sent");
    until::<B>("every forgery failed", || {
        acceptor.node.stats().handshakes_failed >= 1900
    })
    .await;
}

/// A request whose caller gave up (its future dropped) frees its slot at
/// once, so a loop of abandoned requests never locks the client out with
/// `TooManyOutstanding`.
async fn abandoned_requests_free_their_slots<B: Bus>() {
    let mut tuned = quick();
    tuned.client_max_outstanding = 2;
    let config = tuned.validate().expect("valid");
    let mut acceptor = member::<B>(&config, 1, 2, keys(37), NodeOptions::default()).await;
    let client = B::start_client(&config, client_params::<B>(1), keys(37), acceptor.address)
        .expect("client starts");
    client.connected().await.expect("connected");
    // The application never answers these: each caller gives up.
    for i in 0..10u32 {
        let gave_up = within::<B, _>(
            Duration::from_millis(20),
            client.request(i, Bytes::from_static(b"slow")),
        )
        .await;
        assert!(gave_up.is_none(), "{gave_up:?}");
    }
    let answered = async {
        let reply = client.request(99, Bytes::from_static(b"answer me")).await;
        assert_eq!(reply.expect("a reply").body.as_ref(), b"answer me");
    };
    let node = acceptor.node.clone();
    let answering = async {
        while let Some(event) = acceptor.events.recv().await {
            if let NodeEvent::Request { request, body, .. } = event
                && request.operation == 99
            {
                node.reply(request, body).unwrap();
            }
        }
    };
    within::<B, _>(PATIENCE, or(answered, answering))
        .await
        .expect("the eleventh request is answered");
    client.shutdown(Duration::from_secs(1)).await;
}

/// A refused accept is told why: while a node shuts down (its drain held
/// open by a client that never answers the close), a new socket receives
/// a `reject Busy` frame before it is closed, on every adapter.
async fn a_node_shutting_down_refuses_new_sockets_with_busy<B: Bus>() {
    use bus_proto::wire::{FrameDecoder, Integrity, Kind, RejectStatus};
    use smol::io::AsyncReadExt;
    let config = config();
    let acceptor = member::<B>(&config, 1, 2, keys(38), NodeOptions::default()).await;
    let address = acceptor.address;
    let _silent = established_then_silent(&config, &keys(38), 0xfeed, 1, address).await;
    until::<B>("the silent client is established", || {
        acceptor
            .node
            .inspect(|n| n.client_connection(0xfeed).is_some())
    })
    .await;
    let node = acceptor.node.clone();
    let probe = async {
        until::<B>("the node is shutting down", || {
            node.inspect(|n| n.is_shutting_down())
        })
        .await;
        let mut socket = smol::Async::<std::net::TcpStream>::connect(address)
            .await
            .expect("the listener still accepts during the drain");
        let mut frame = [0u8; 256];
        socket.read_exact(&mut frame).await.expect("a whole frame");
        let mut decoder = FrameDecoder::new(Integrity::Checksum, 256);
        decoder.feed(&frame);
        let frame = decoder.next_frame().unwrap().expect("a frame");
        assert_eq!(frame.header.cluster, CLUSTER);
        assert!(
            matches!(frame.header.kind, Kind::Reject(r) if r.status == RejectStatus::Busy),
            "{:?}",
            frame.header.kind
        );
    };
    let (report, ()) = within::<B, _>(
        PATIENCE,
        zip(acceptor.node.shutdown(Duration::from_secs(5)), probe),
    )
    .await
    .expect("the drain ends at close_grace");
    assert_eq!(report.total, 1);
    assert!(acceptor.node.stats().accepts_refused >= 1);
}

/// A node turns clients away (`Busy`) while its client queue is full, and
/// lets them in again as soon as the application reads that queue, not at
/// its next input: a client whose socket was accepted while the queue was
/// full, and whose `hello` arrives after the application read it, gets in.
async fn a_client_accepted_while_the_queue_was_full_gets_in_once_it_is_read<B: Bus>() {
    let config = config();
    let options = NodeOptions::default().request_capacity(1);
    let mut acceptor = member::<B>(&config, 0, 1, keys(41), options).await;
    let address = acceptor.address;
    // Two admitted clients fill the client plane: twice its budget of 1.
    let _first = established_then_silent(&config, &keys(41), 0xa1, 0, address).await;
    let _second = established_then_silent(&config, &keys(41), 0xa2, 0, address).await;
    until::<B>("both clients are admitted", || {
        acceptor.node.inspect(|n| n.admitted_clients()) == 2
    })
    .await;
    // A third socket is accepted while the queue is full; it waits.
    let third = smol::Async::<std::net::TcpStream>::connect(address)
        .await
        .expect("connect");
    until::<B>("the third socket is accepted", || {
        acceptor.node.connections() == 3
    })
    .await;
    // The application reads its queue.
    for _ in 0..2 {
        let event = within::<B, _>(PATIENCE, acceptor.events.recv())
            .await
            .expect("an event");
        assert!(
            matches!(event, Some(NodeEvent::ClientConnected { .. })),
            "{event:?}"
        );
    }
    // Now the third client says hello, and is let in.
    let admitted = handshake_on(third, &config, &keys(41), 0xa3, 0).await;
    assert!(
        admitted.is_ok(),
        "refused after the application read its queue: {:?}",
        admitted.err()
    );
    assert_eq!(acceptor.node.inspect(|n| n.admitted_clients()), 3);
}
