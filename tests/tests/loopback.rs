//! Every adapter on real loopback sockets: each scenario is written once
//! and runs on tokio (multi- and current-thread), smol, and compio on
//! io_uring and on epoll.

use bus_proto::client::ClientParams;
use bus_proto::connection::CloseCause;
use bus_proto::host::{ConnectError, Link, NodeOptions, Transport};
use bus_proto::node::{NodeEvent, ReplyError, RouteError};
use bus_proto::wire::{
    DecodeError, Frame, HEADER_SIZE, Header, Integrity, Kind, Plane, RejectStatus, RequestHeader,
};
use bus_tests::attack::{established_client, outgoing_bytes};
use bus_tests::bus::{Bus, EventsOf, NodeOf};
use bus_tests::cluster::{all_connected, cluster, member, params, until, wait_for, within};
use bus_tests::proxy::Proxy;
use bus_tests::{CLUSTER, PATIENCE, config, keys, quick};
use bytes::Bytes;
use smol::Async;
use smol::future::zip;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::time::Duration;

bus_tests::scenarios!(
    replicas_round_trip_messages_and_clients_get_replies,
    both_sides_dial_and_exactly_one_connection_results,
    a_wrong_key_is_rejected_on_both_sides_with_its_status,
    silent_connections_do_not_delay_a_peer_and_close_at_the_deadline,
    an_oversized_or_corrupt_frame_closes_only_its_connection,
    a_tampered_frame_closes_its_connection_after_the_frames_before_it,
    backpressure_reaches_the_sender_when_the_peer_stops_reading,
    a_batch_is_queued_in_order_and_backpressure_leaves_the_rest_in_it,
    a_late_listener_is_picked_up_by_the_dial_schedule,
    a_dial_waits_for_an_address_named_after_start,
    connection_lost_fires_exactly_once,
    graceful_shutdown_drains_queued_messages,
    a_request_retried_after_reconnect_is_answered_from_the_dedup_window,
    a_client_learns_that_nothing_listens_and_that_it_shut_down,
    a_blocked_send_wait_returns_when_the_node_shuts_down,
    reads_in_flight_survive_constant_wake_ups,
    connected_events_name_the_remote_address,
    a_listener_of_one_plane_refuses_the_other,
);

/// A raw loopback socket, for bytes no adapter would send. async-io's
/// reactor drives it under any runtime.
async fn raw(address: std::net::SocketAddr) -> Async<TcpStream> {
    Async::<TcpStream>::connect(address).await.expect("connect")
}

fn client_params<B: Bus>(target: u8) -> ClientParams {
    ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target,
    }
}

async fn replicas_round_trip_messages_and_clients_get_replies<B: Bus>() {
    let config = config();
    let mut members = cluster::<B>(&config, 3, |_| keys(1)).await;
    all_connected::<B>(&members).await;
    for from in 0..3u8 {
        for to in (0..3u8).filter(|&to| to != from) {
            let body = Bytes::from(format!("{from}->{to}"));
            members[from as usize]
                .node
                .send(to, 7, body.clone())
                .unwrap();
            let got = wait_for::<B>(&mut members[to as usize].events, "the message", |e| {
                matches!(e, NodeEvent::Message { .. })
            })
            .await;
            let NodeEvent::Message {
                from: sender,
                operation,
                body: received,
                ..
            } = got
            else {
                unreachable!()
            };
            assert_eq!((sender, operation, received), (from, 7, body));
        }
    }
    assert_eq!(
        members[0].node.send(0, 1, Bytes::new()),
        Err(RouteError::Local(0))
    );

    let client =
        B::start_client(&config, client_params::<B>(1), keys(1), members[1].address).unwrap();
    let reply = {
        let request = client.request(42, Bytes::from_static(b"ping"));
        let serve = async {
            let NodeEvent::Request { request, body, .. } =
                wait_for::<B>(&mut members[1].events, "the request", |e| {
                    matches!(e, NodeEvent::Request { .. })
                })
                .await
            else {
                unreachable!()
            };
            assert_eq!(body, Bytes::from_static(b"ping"));
            members[1]
                .node
                .reply(request, Bytes::from_static(b"pong"))
                .unwrap();
        };
        let (reply, ()) = zip(request, serve).await;
        reply.unwrap()
    };
    assert_eq!(reply.body, Bytes::from_static(b"pong"));
    assert_eq!(client.link(), Link::Connected { replica: 1 });
    client.shutdown(Duration::from_secs(5)).await;
}

async fn both_sides_dial_and_exactly_one_connection_results<B: Bus>() {
    let config = config();
    // Both know each other's address and listen; only the lower id dials.
    let members = cluster::<B>(&config, 2, |_| keys(2)).await;
    all_connected::<B>(&members).await;
    // Let any extra dial surface before counting.
    B::sleep(Duration::from_millis(300)).await;
    for m in &members {
        assert_eq!(m.node.connections(), 1, "one connection per node");
        assert_eq!(m.node.stats().duplicates_refused, 0);
    }
    assert_eq!(members[0].node.stats().dials, 1, "replica 0 dials once");
    assert_eq!(members[1].node.stats().dials, 0, "replica 1 never dials 0");
}

async fn a_wrong_key_is_rejected_on_both_sides_with_its_status<B: Bus>() {
    let config = config();
    // Replica 0 holds another key than replica 1.
    let mut members = cluster::<B>(&config, 2, |replica| keys(10 + u64::from(replica))).await;
    let dialer = wait_for::<B>(&mut members[0].events, "the dialer's rejection", |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. })
    })
    .await;
    let NodeEvent::HandshakeFailed { dialed, cause, .. } = dialer else {
        unreachable!()
    };
    assert_eq!(dialed, Some(1));
    assert!(
        matches!(&cause, CloseCause::Rejected(r) if r.status == RejectStatus::BadMac),
        "dialer sees the acceptor's status: {cause}"
    );
    let acceptor = wait_for::<B>(&mut members[1].events, "the acceptor's refusal", |e| {
        matches!(e, NodeEvent::HandshakeFailed { .. })
    })
    .await;
    let NodeEvent::HandshakeFailed { dialed, cause, .. } = acceptor else {
        unreachable!()
    };
    assert_eq!(dialed, None);
    assert_eq!(cause, CloseCause::Refused(RejectStatus::BadMac));
    assert!(!members[0].node.is_connected(1));

    // A client with the wrong key learns the node's status too.
    let client =
        B::start_client(&config, client_params::<B>(1), keys(99), members[1].address).unwrap();
    let refused = within::<B, _>(PATIENCE, client.connected())
        .await
        .expect("the client's handshake ends");
    assert!(
        matches!(&refused, Err(ConnectError::Handshake(CloseCause::Rejected(r))) if r.status == RejectStatus::BadMac),
        "{refused:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
}

async fn silent_connections_do_not_delay_a_peer_and_close_at_the_deadline<B: Bus>() {
    let mut tuned = quick();
    tuned.max_handshakes_in_flight = 256;
    tuned.max_unauthenticated_per_address = 256;
    tuned.handshake_timeout = Duration::from_secs(3);
    tuned.hello_timeout = Duration::from_secs(3);
    let config = tuned.validate().unwrap();
    let acceptor = member::<B>(&config, 1, 2, keys(3), NodeOptions::default()).await;
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(raw(acceptor.address).await);
    }
    until::<B>("100 silent connections accepted", || {
        acceptor.node.inspect(|n| n.handshakes_in_flight()) == 100
    })
    .await;
    let mut options = NodeOptions::default();
    options.peers.insert(1, acceptor.address);
    let mut dialer = member::<B>(&config, 0, 2, keys(3), options).await;
    wait_for::<B>(
        &mut dialer.events,
        "the legitimate peer's connection",
        |e| matches!(e, NodeEvent::PeerConnected { replica: 1, .. }),
    )
    .await;
    // The peer got in while every silent socket was still held open.
    until::<B>("the acceptor registers the peer", || {
        acceptor.node.is_connected(0)
    })
    .await;
    assert_eq!(acceptor.node.inspect(|n| n.handshakes_in_flight()), 100);
    // Each silent socket is closed at the handshake deadline.
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = within::<B, _>(PATIENCE, socket.read(&mut byte))
            .await
            .expect("the silent socket is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    until::<B>("only the peer's connection left", || {
        acceptor.node.connections() == 1
    })
    .await;
    assert!(acceptor.node.is_connected(0));
}

async fn an_oversized_or_corrupt_frame_closes_only_its_connection<B: Bus>() {
    let config = config();
    let mut members = cluster::<B>(&config, 2, |_| keys(4)).await;
    all_connected::<B>(&members).await;
    // A frame larger than the handshake allows, valid otherwise.
    let big = Frame {
        header: Header::new(CLUSTER, Kind::Message { operation: 1 }),
        body: Bytes::from(vec![7u8; 4096]),
    }
    .encode(&Integrity::Checksum, 1 << 20)
    .unwrap();
    let mut oversized = Vec::new();
    big.write_to(&mut oversized);
    // A header-only frame with one bit flipped.
    let mut corrupt = Vec::new();
    Frame::control(Header::new(CLUSTER, Kind::Message { operation: 1 }))
        .encode(&Integrity::Checksum, 1 << 20)
        .unwrap()
        .write_to(&mut corrupt);
    corrupt[100] ^= 1;
    for (what, bytes) in [("oversized", oversized), ("corrupt", corrupt)] {
        let mut socket = raw(members[1].address).await;
        socket.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        let read = within::<B, _>(PATIENCE, socket.read_to_end(&mut rest)).await;
        assert!(read.is_some(), "the {what} frame's connection is closed");
        let NodeEvent::HandshakeFailed { cause, .. } =
            wait_for::<B>(&mut members[1].events, "the decode failure", |e| {
                matches!(e, NodeEvent::HandshakeFailed { .. })
            })
            .await
        else {
            unreachable!()
        };
        assert!(
            matches!(cause, CloseCause::Decode(_)),
            "{what}: closed for {cause}"
        );
        // The replica connection is untouched and still carries traffic.
        members[0]
            .node
            .send(1, 3, Bytes::from_static(b"still here"))
            .unwrap();
        wait_for::<B>(
            &mut members[1].events,
            "a message after the bad frame",
            |e| matches!(e, NodeEvent::Message { body, .. } if body.as_ref() == b"still here"),
        )
        .await;
    }
    assert_eq!(members[1].node.stats().handshakes_failed, 2);
    assert_eq!(members[0].node.stats().dials, 1, "never reconnected");
}

/// Authenticated frames are verified by the socket task before the node
/// sees them: in one write of three requests whose last body was changed
/// in flight, the first two are delivered, and the third closes the
/// connection with the body tag's error. With 50-byte bodies the three
/// fit in the socket's first read (1 KiB of room); with 100-byte bodies
/// the third frame's header comes in that read and its body in the next.
async fn a_tampered_frame_closes_its_connection_after_the_frames_before_it<B: Bus>() {
    let mut tuned = quick();
    tuned.authenticated_frames = true;
    let config = tuned.validate().expect("valid");
    let mut members = cluster::<B>(&config, 1, |_| keys(6)).await;
    for body_len in [50usize, 100] {
        let stream = raw(members[0].address).await;
        let client = B::random_id();
        let (mut stream, mut conn) = established_client(stream, &config, &keys(6), client, 0)
            .await
            .expect("the handshake completes");
        assert!(conn.authenticated_frames());
        // Once the node has the client's confirm, its socket task verifies
        // what it reads next outside the lock.
        wait_for::<B>(&mut members[0].events, "the client", |e| {
            matches!(e, NodeEvent::ClientConnected { .. })
        })
        .await;
        for request in 1..=3u64 {
            let header = RequestHeader {
                client,
                request,
                operation: 7,
            };
            let body = Bytes::from(vec![u8::try_from(request).unwrap(); body_len]);
            conn.send(Kind::Request(header), body).expect("queued");
        }
        let mut wire = outgoing_bytes(&mut conn);
        let frame = HEADER_SIZE + body_len;
        assert_eq!(wire.len(), 3 * frame, "one batch of three");
        wire[2 * frame + HEADER_SIZE + body_len / 2] ^= 1;
        stream.write_all(&wire).await.expect("written");
        for request in 1..=2u64 {
            wait_for::<B>(
                &mut members[0].events,
                "a request before it",
                |e| matches!(e, NodeEvent::Request { request: r, .. } if r.request == request),
            )
            .await;
        }
        let NodeEvent::ClientDisconnected { cause, .. } =
            wait_for::<B>(&mut members[0].events, "the close", |e| {
                matches!(
                    e,
                    NodeEvent::ClientDisconnected { .. } | NodeEvent::Request { .. }
                )
            })
            .await
        else {
            panic!("{body_len}-byte bodies: the tampered request was delivered");
        };
        assert_eq!(
            cause,
            CloseCause::Decode(DecodeError::BodyTag { size: body_len }),
            "{body_len}-byte bodies: closed for {cause}"
        );
    }
}

async fn backpressure_reaches_the_sender_when_the_peer_stops_reading<B: Bus>() {
    let config = config();
    let sender = member::<B>(&config, 0, 2, keys(5), NodeOptions::default()).await;
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 8;
        tuned
    };
    let mut receiver = member::<B>(&config, 1, 2, keys(5), options).await;
    sender.node.set_address(1, receiver.address);
    wait_for::<B>(&mut receiver.events, "the connection", |e| {
        matches!(e, NodeEvent::PeerConnected { .. })
    })
    .await;
    until::<B>("the sender sees the peer", || sender.node.is_connected(1)).await;
    // The receiver's application reads nothing now: its queue fills, its
    // socket task stops reading, TCP fills, then the sender's queue.
    let body = Bytes::from(vec![0u8; 64 << 10]);
    let mut sent = 0u64;
    let refused = loop {
        match sender.node.send(1, 9, body.clone()) {
            Ok(()) => sent += 1,
            Err(error) => break error,
        }
        if sent.is_multiple_of(64) {
            B::sleep(Duration::from_millis(1)).await;
        }
        assert!(sent < 1_000_000, "no backpressure after {sent} messages");
    };
    assert!(
        matches!(refused, RouteError::Backpressure { .. }),
        "{refused}"
    );
    // Everything accepted arrives, in order, once the application reads.
    let mut received = 0u64;
    while received < sent {
        let event = wait_for::<B>(&mut receiver.events, "the queued messages", |e| {
            matches!(e, NodeEvent::Message { .. })
        })
        .await;
        assert!(matches!(event, NodeEvent::Message { operation: 9, .. }));
        received += 1;
    }
    assert!(sender.node.is_connected(1), "backpressure is not a failure");
}

/// `send_batch` queues from the front of the batch in order, under one
/// lock; when the queue fills it stops, and the refused message and those
/// after it stay in the batch. `send_batch_wait` finishes the rest once the
/// receiver reads. Every message arrives once, in order.
async fn a_batch_is_queued_in_order_and_backpressure_leaves_the_rest_in_it<B: Bus>() {
    let config = config();
    let sender = member::<B>(&config, 0, 2, keys(15), NodeOptions::default()).await;
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 8;
        tuned
    };
    let mut receiver = member::<B>(&config, 1, 2, keys(15), options).await;
    sender.node.set_address(1, receiver.address);
    until::<B>("the sender sees the peer", || sender.node.is_connected(1)).await;
    // A batch of 64 small messages goes in whole.
    let mut batch: VecDeque<(u32, Bytes)> = (0..64)
        .map(|op| (op, Bytes::from(format!("small {op}"))))
        .collect();
    sender.node.send_batch(1, &mut batch).unwrap();
    assert!(batch.is_empty());
    // The receiver reads nothing now: a batch of large messages meets
    // backpressure part way, and what was refused stays in the batch.
    let body = Bytes::from(vec![7u8; 64 << 10]);
    let mut batch: VecDeque<(u32, Bytes)> = (64..64 + 2048).map(|op| (op, body.clone())).collect();
    let refused = loop {
        match sender.node.send_batch(1, &mut batch) {
            Ok(()) => panic!("no backpressure for 2048 messages of 64 KiB"),
            Err(error @ RouteError::Backpressure { .. }) if batch.len() < 2048 => break error,
            Err(_) => B::sleep(Duration::from_millis(1)).await,
        }
    };
    let queued = 2048 - batch.len();
    assert!(
        batch
            .front()
            .is_some_and(|(op, _)| *op == 64 + u32::try_from(queued).unwrap()),
        "{refused}"
    );
    // The rest goes in as the receiver reads.
    let (remaining, mut next) = (batch.len(), 0u32);
    let send = async {
        sender.node.send_batch_wait(1, &mut batch).await.unwrap();
        assert!(batch.is_empty());
    };
    let read = async {
        while next < 64 + 2048 {
            let NodeEvent::Message {
                operation, body, ..
            } = wait_for::<B>(&mut receiver.events, "the messages", |e| {
                matches!(e, NodeEvent::Message { .. })
            })
            .await
            else {
                unreachable!()
            };
            assert_eq!(operation, next, "in order, each once");
            if next < 64 {
                assert_eq!(body, Bytes::from(format!("small {next}")));
            }
            next += 1;
        }
    };
    within::<B, _>(PATIENCE, zip(send, read))
        .await
        .expect("the whole batch arrives");
    assert!(
        remaining > 0 && queued > 0,
        "{queued} queued, {remaining} left"
    );
}

async fn a_late_listener_is_picked_up_by_the_dial_schedule<B: Bus>() {
    let config = config();
    // Reserve a port, then free it: nothing listens there yet.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut options = NodeOptions::default();
    options.peers.insert(1, port);
    let mut dialer = member::<B>(&config, 0, 2, keys(6), options).await;
    until::<B>("a few refused dials", || {
        dialer.node.inspect(|n| n.dial_failures(1)) >= 3
    })
    .await;
    let late = {
        let (node, events) =
            B::start_node(&config, params(1, 2), keys(6), NodeOptions::default()).unwrap();
        node.listen(port).await.unwrap();
        (node, events)
    };
    wait_for::<B>(
        &mut dialer.events,
        "the connection to the late listener",
        |e| matches!(e, NodeEvent::PeerConnected { replica: 1, .. }),
    )
    .await;
    until::<B>("the late listener registers the dialer", || {
        late.0.is_connected(0)
    })
    .await;
}

async fn a_dial_waits_for_an_address_named_after_start<B: Bus>() {
    let config = config();
    let acceptor = member::<B>(&config, 1, 2, keys(16), NodeOptions::default()).await;
    // Replica 0 starts knowing no address, so its first dial has nowhere
    // to go yet.
    let mut dialer = member::<B>(&config, 0, 2, keys(16), NodeOptions::default()).await;
    until::<B>("the first dial starts", || dialer.node.stats().dials == 1).await;
    dialer.node.set_address(1, acceptor.address);
    wait_for::<B>(&mut dialer.events, "the connection", |e| {
        matches!(e, NodeEvent::PeerConnected { replica: 1, .. })
    })
    .await;
    assert_eq!(dialer.node.stats().dials, 1, "the waiting dial connected");
    assert_eq!(dialer.node.inspect(|n| n.dial_failures(1)), 0);
}

async fn connection_lost_fires_exactly_once<B: Bus>() {
    let config = config();
    let mut members = cluster::<B>(&config, 2, |_| keys(7)).await;
    let NodeEvent::PeerConnected { connection, .. } =
        wait_for::<B>(&mut members[0].events, "the first connection", |e| {
            matches!(e, NodeEvent::PeerConnected { .. })
        })
        .await
    else {
        unreachable!()
    };
    // Replica 1 goes away abruptly, then comes back on the same port.
    let address = members[1].address;
    let gone = members.pop().unwrap();
    gone.node.shutdown(Duration::ZERO).await;
    drop(gone);
    let (back, _back_events) =
        B::start_node(&config, params(1, 2), keys(7), NodeOptions::default()).unwrap();
    back.listen(address).await.unwrap();
    let mut losses = Vec::new();
    let mut seen = Vec::new();
    wait_for::<B>(&mut members[0].events, "the reconnection", |e| {
        seen.push(e.clone());
        matches!(e, NodeEvent::PeerConnected { connection: c, .. } if *c != connection)
    })
    .await;
    for event in &seen {
        if let NodeEvent::PeerDisconnected { connection: c, .. } = event {
            losses.push(*c);
        }
    }
    assert_eq!(
        losses,
        vec![connection],
        "one loss for the first connection"
    );
    // Nothing more about it later.
    members[0].node.send(1, 1, Bytes::new()).unwrap();
    B::sleep(Duration::from_millis(200)).await;
    while let Some(Some(event)) =
        within::<B, _>(Duration::from_millis(50), members[0].events.recv()).await
    {
        assert!(
            !matches!(event, NodeEvent::PeerDisconnected { connection: c, .. } if c == connection),
            "a second loss event"
        );
    }
}

async fn graceful_shutdown_drains_queued_messages<B: Bus>() {
    let config = config();
    let mut members = cluster::<B>(&config, 2, |_| keys(8)).await;
    all_connected::<B>(&members).await;
    let count = 500u32;
    for i in 0..count {
        members[0]
            .node
            .send(1, i, Bytes::from(vec![1u8; 1000]))
            .unwrap();
    }
    let sender = members[0].node.clone();
    let receive = async {
        let mut next = 0u32;
        let lost = loop {
            match wait_for::<B>(
                &mut members[1].events,
                "the messages, then the close",
                |e| {
                    matches!(
                        e,
                        NodeEvent::Message { .. } | NodeEvent::PeerDisconnected { .. }
                    )
                },
            )
            .await
            {
                NodeEvent::Message { operation, .. } => {
                    assert_eq!(operation, next, "in order, none lost");
                    next += 1;
                }
                NodeEvent::PeerDisconnected { cause, .. } => break cause,
                _ => unreachable!(),
            }
        };
        (next, lost)
    };
    let (report, (next, lost)) = zip(sender.shutdown(Duration::from_secs(10)), receive).await;
    assert_eq!(next, count, "every queued message arrived before the close");
    assert!(
        matches!(lost, CloseCause::Peer(_)),
        "closed in order: {lost}"
    );
    assert_eq!(
        (report.total, report.clean, report.forced),
        (1, 1, 0),
        "{report}"
    );
    // The event stream of a shut-down node ends.
    let mut events = members.remove(0).events;
    let rest = within::<B, _>(PATIENCE, async { while events.recv().await.is_some() {} }).await;
    assert!(rest.is_some(), "the event stream ends after shutdown");
}

async fn a_request_retried_after_reconnect_is_answered_from_the_dedup_window<B: Bus>() {
    let config = config();
    let mut node = member::<B>(&config, 0, 1, keys(9), NodeOptions::default()).await;
    let proxy = Proxy::start(node.address).await.unwrap();
    let client = B::start_client(&config, client_params::<B>(0), keys(9), proxy.address()).unwrap();
    let pending = client.request(5, Bytes::from_static(b"once"));
    let serve = async {
        let NodeEvent::Request { request, .. } =
            wait_for::<B>(&mut node.events, "the request", |e| {
                matches!(e, NodeEvent::Request { .. })
            })
            .await
        else {
            unreachable!()
        };
        // The link breaks before the reply is sent.
        assert_eq!(proxy.cut(), 1);
        wait_for::<B>(&mut node.events, "the client's disconnect", |e| {
            matches!(e, NodeEvent::ClientDisconnected { .. })
        })
        .await;
        let answered = node.node.reply(request, Bytes::from_static(b"done"));
        assert!(
            matches!(answered, Err(ReplyError::Disconnected { cached: true, .. })),
            "{answered:?}"
        );
    };
    // The client reconnects and resends; the node answers from the cache.
    let (reply, ()) = within::<B, _>(PATIENCE, zip(pending, serve))
        .await
        .expect("the retried request is answered");
    assert_eq!(reply.unwrap().body, Bytes::from_static(b"done"));
    let stats = node.node.stats();
    assert_eq!((stats.requests, stats.dedup_hits), (1, 1), "{stats:?}");
    assert!(client.stats().resent >= 1);
    // The application saw the request once.
    while let Some(Some(event)) =
        within::<B, _>(Duration::from_millis(100), node.events.recv()).await
    {
        assert!(!matches!(event, NodeEvent::Request { .. }), "ran twice");
    }
    client.shutdown(Duration::from_secs(1)).await;
}

async fn a_client_learns_that_nothing_listens_and_that_it_shut_down<B: Bus>() {
    let config = config();
    let nowhere = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let client = B::start_client(&config, client_params::<B>(0), keys(11), nowhere).unwrap();
    let first = within::<B, _>(PATIENCE, client.connected())
        .await
        .expect("the connect fails");
    assert!(
        matches!(
            first,
            Err(ConnectError::Unreachable {
                kind: std::io::ErrorKind::ConnectionRefused,
                ..
            })
        ),
        "{first:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
    assert_eq!(client.connected().await, Err(ConnectError::ShutDown));
}

async fn a_blocked_send_wait_returns_when_the_node_shuts_down<B: Bus>() {
    let config = config();
    let sender = member::<B>(&config, 0, 2, keys(12), NodeOptions::default()).await;
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 8;
        tuned
    };
    let receiver = member::<B>(&config, 1, 2, keys(12), options).await;
    sender.node.set_address(1, receiver.address);
    until::<B>("connected", || sender.node.is_connected(1)).await;
    // The receiver never reads: the sender's queue fills and send_wait
    // blocks until shutdown releases it.
    let node = sender.node.clone();
    let blocked = async {
        let body = Bytes::from(vec![0u8; 64 << 10]);
        loop {
            if let Err(error) = node.send_wait(1, 1, body.clone()).await {
                return error;
            }
        }
    };
    let stop = async {
        until::<B>("the sender's queue is full", || {
            sender.node.send(1, 1, Bytes::new()).is_err()
        })
        .await;
        sender.node.shutdown(Duration::from_millis(300)).await
    };
    let (error, report) = within::<B, _>(PATIENCE, zip(blocked, stop))
        .await
        .expect("send_wait returned");
    assert_eq!(report.total, 1);
    assert!(matches!(error, RouteError::Disconnected(1)), "{error}");
}

/// Hazard 1 (lost bytes on cancellation) at the adapter: both replicas
/// stream to each other at once, so every socket task is woken for output
/// over and over while its read is pending (or, on compio, in flight).
/// Every message must arrive intact, in order, with the connection intact.
async fn reads_in_flight_survive_constant_wake_ups<B: Bus>() {
    let config = config();
    let mut members = cluster::<B>(&config, 2, |_| keys(17)).await;
    all_connected::<B>(&members).await;
    let count = 3000u32;
    let (zero, one) = members.split_at_mut(1);
    let (a, b) = (&mut zero[0], &mut one[0]);
    zip(
        zip(
            send_varied::<B>(&a.node, 1, count),
            send_varied::<B>(&b.node, 0, count),
        ),
        zip(
            receive_varied::<B>(&mut a.events, count),
            receive_varied::<B>(&mut b.events, count),
        ),
    )
    .await;
    let dials = a.node.stats().dials + b.node.stats().dials;
    assert_eq!(dials, 1, "{}: never reconnected", B::NAME);
}

/// Message `i`'s body: sizes vary so frames straddle read boundaries.
fn varied_body(i: u32) -> Bytes {
    let fill = u8::try_from(i % 251).unwrap();
    Bytes::from(vec![fill; (i as usize * 37) % 3000])
}

async fn send_varied<B: Bus>(node: &NodeOf<B>, to: u8, count: u32) {
    for i in 0..count {
        node.send_wait(to, i, varied_body(i)).await.unwrap();
    }
}

async fn receive_varied<B: Bus>(events: &mut EventsOf<B>, count: u32) {
    for i in 0..count {
        let event = wait_for::<B>(events, "the next message", |e| {
            matches!(
                e,
                NodeEvent::Message { .. } | NodeEvent::PeerDisconnected { .. }
            )
        })
        .await;
        let NodeEvent::Message {
            operation, body, ..
        } = event
        else {
            panic!("{}: the connection broke: {event:?}", B::NAME);
        };
        assert_eq!(operation, i, "{}: in order, none lost", B::NAME);
        assert_eq!(body, varied_body(i), "{}: message {i} intact", B::NAME);
    }
}

/// An accepting node's `PeerConnected` and `ClientConnected` name the
/// remote address and the local one they came in on, and so does the
/// dialer's: the address it dialled, and its own end.
async fn connected_events_name_the_remote_address<B: Bus>() {
    let mut members = cluster::<B>(&config(), 2, |_| keys(1)).await;
    all_connected::<B>(&members).await;
    let loopback = |remote: &Option<Box<std::net::SocketAddr>>| {
        remote.as_ref().is_some_and(|r| r.ip().is_loopback())
    };
    // Replica 0 dials replica 1: 1 accepted it, on its listener.
    let NodeEvent::PeerConnected { remote, local, .. } =
        wait_for::<B>(&mut members[1].events, "replica 0's connection", |e| {
            matches!(e, NodeEvent::PeerConnected { replica: 0, .. })
        })
        .await
    else {
        unreachable!()
    };
    assert!(loopback(&remote), "{remote:?}");
    assert_eq!(local.as_deref(), Some(&members[1].address), "{}", B::NAME);
    let NodeEvent::PeerConnected { remote, local, .. } =
        wait_for::<B>(&mut members[0].events, "replica 1's connection", |e| {
            matches!(e, NodeEvent::PeerConnected { replica: 1, .. })
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(
        remote.as_deref(),
        Some(&members[1].address),
        "a dialled connection"
    );
    assert!(loopback(&local), "{local:?}");
    let client = B::start_client(
        &config(),
        client_params::<B>(1),
        keys(1),
        members[1].address,
    )
    .expect("client starts");
    client.connected().await.expect("connected");
    let NodeEvent::ClientConnected { remote, local, .. } =
        wait_for::<B>(&mut members[1].events, "the client's connection", |e| {
            matches!(e, NodeEvent::ClientConnected { .. })
        })
        .await
    else {
        unreachable!()
    };
    assert!(loopback(&remote), "{remote:?}");
    assert_eq!(local.as_deref(), Some(&members[1].address), "{}", B::NAME);
    client.shutdown(Duration::from_secs(1)).await;
    for m in &members {
        m.node.shutdown(Duration::from_secs(1)).await;
    }
}

/// Per-plane listeners: a port for the replicas' own network and one for
/// applications. A client on the replica port and a replica on the client
/// port are refused with `UnknownPeer` before any MAC work; each is
/// served on its own port.
async fn a_listener_of_one_plane_refuses_the_other<B: Bus>() {
    let config = config();
    let (one, mut events) =
        B::start_node(&config, params(1, 2), keys(1), NodeOptions::default()).expect("starts");
    let any = || {
        "127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .expect("an address")
    };
    let replica_port = one
        .listen_via(any(), Transport::tcp().only(Plane::Replica))
        .await
        .expect("listen");
    let client_port = one
        .listen_via(any(), Transport::tcp().only(Plane::Client))
        .await
        .expect("listen");

    let wrong = B::start_client(&config, client_params::<B>(1), keys(1), replica_port).unwrap();
    match wrong.connected().await {
        Err(ConnectError::Handshake(CloseCause::Rejected(r))) => {
            assert_eq!(r.status, RejectStatus::UnknownPeer, "{}", B::NAME);
        }
        other => panic!("{}: a client on the replica port: {other:?}", B::NAME),
    }
    drop(wrong);
    let client = B::start_client(&config, client_params::<B>(1), keys(1), client_port).unwrap();
    assert_eq!(client.connected().await, Ok(1), "{}", B::NAME);

    // Replica 0 first dials the client port, is refused, then finds the
    // replica port.
    let zero = member::<B>(&config, 0, 2, keys(1), NodeOptions::default()).await;
    zero.node.set_address(1, client_port);
    let refused_before = one.stats().accepts_refused;
    until::<B>("the client port refusing replica 0", || {
        one.stats().accepts_refused > refused_before
    })
    .await;
    assert!(!one.is_connected(0), "{}", B::NAME);
    zero.node.set_address(1, replica_port);
    wait_for::<B>(&mut events, "replica 0 on the replica port", |e| {
        matches!(e, NodeEvent::PeerConnected { replica: 0, .. })
    })
    .await;
}
