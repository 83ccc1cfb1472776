//! What operators see, on every adapter and runtime: per-connection
//! snapshots (peer, side, remote and local addresses, counters each way, queue depth,
//! pauses, round trip) and the node's gauges, taken while traffic flows
//! and the application falls behind.

use bus_proto::client::ClientParams;
use bus_proto::connection::Side;
use bus_proto::crypto::PeerId;
use bus_proto::host::NodeOptions;
use bus_proto::node::{ConnectionInfo, NodeEvent};
use bus_tests::bus::{Bus, NodeOf};
use bus_tests::cluster::{member, until, wait_for};
use bus_tests::{CLUSTER, config, keys};
use bytes::Bytes;
use std::time::Duration;

bus_tests::scenarios!(connection_snapshots_show_peers_traffic_pauses_and_round_trips);

/// `node`'s connection to `peer`, now.
fn info_for<B: Bus>(node: &NodeOf<B>, peer: PeerId) -> Option<ConnectionInfo> {
    node.connection_infos()
        .into_iter()
        .find(|c| c.peer == Some(peer))
}

async fn connection_snapshots_show_peers_traffic_pauses_and_round_trips<B: Bus>() {
    let config = config();
    let zero = member::<B>(&config, 0, 2, keys(3), NodeOptions::default()).await;
    // Replica 1 holds at most 4 unread messages: then it stops reading.
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 4;
        tuned
    };
    let mut one = member::<B>(&config, 1, 2, keys(3), options).await;
    zero.node.set_address(1, one.address);
    until::<B>("replica 0 connected to 1", || zero.node.is_connected(1)).await;

    // The dialer's view: replica 1 at the address it dialled.
    let dialled = info_for::<B>(&zero.node, PeerId::Replica(1)).expect("a connection to 1");
    assert_eq!(dialled.side, Side::Dialer, "{}", B::NAME);
    assert_eq!(dialled.remote, Some(one.address), "{}", B::NAME);
    assert!(
        dialled
            .local
            .is_some_and(|l| l.ip().is_loopback() && l != one.address),
        "{}: {dialled:?}",
        B::NAME
    );
    assert!(dialled.established && !dialled.connecting, "{}", B::NAME);
    // A ping answered within a few heartbeats gives a round trip.
    until::<B>("a ping round trip", || {
        info_for::<B>(&zero.node, PeerId::Replica(1)).is_some_and(|c| c.rtt.is_some())
    })
    .await;

    // The application on replica 1 stops reading: its connection from 0
    // pauses once 4 messages wait.
    const SENT: u32 = 64;
    for operation in 0..SENT {
        let body = Bytes::from(vec![7u8; 1000]);
        zero.node.send_wait(1, operation, body).await.unwrap();
    }
    until::<B>("replica 1 paused reading replica 0", || {
        one.node.stats().connections_paused == 1
    })
    .await;
    let paused = info_for::<B>(&one.node, PeerId::Replica(0)).expect("a connection from 0");
    assert!(paused.reading_paused, "{}: {paused:?}", B::NAME);
    assert_eq!(paused.side, Side::Acceptor, "{}", B::NAME);
    assert!(
        paused.remote.is_some_and(|r| r.ip().is_loopback()),
        "{}",
        B::NAME
    );
    assert_eq!(
        paused.local,
        Some(one.address),
        "{}: accepted on its listener",
        B::NAME
    );
    assert!(one.node.stats().events_waiting >= 4, "{}", B::NAME);
    B::sleep(Duration::from_millis(50)).await;

    for operation in 0..SENT {
        let event = wait_for::<B>(&mut one.events, "a message", |e| {
            matches!(e, NodeEvent::Message { .. })
        })
        .await;
        let NodeEvent::Message { operation: got, .. } = event else {
            unreachable!()
        };
        assert_eq!(got, operation, "{}", B::NAME);
    }
    until::<B>("replica 1 reading again", || {
        one.node.stats().connections_paused == 0
    })
    .await;
    let after = info_for::<B>(&one.node, PeerId::Replica(0)).expect("a connection from 0");
    assert!(!after.reading_paused, "{}", B::NAME);
    assert!(after.stats.pauses >= 1, "{}: {after:?}", B::NAME);
    assert!(
        after.stats.paused >= Duration::from_millis(50),
        "{}: {after:?}",
        B::NAME
    );
    assert!(
        after.stats.frames_received >= u64::from(SENT),
        "{}",
        B::NAME
    );
    // Every data frame is 256 header bytes and 1000 body bytes.
    assert!(
        after.stats.bytes_received >= u64::from(SENT) * 1256,
        "{}",
        B::NAME
    );
    let sent = info_for::<B>(&zero.node, PeerId::Replica(1)).unwrap();
    assert!(
        sent.stats.bytes_sent >= u64::from(SENT) * 1256,
        "{}",
        B::NAME
    );
    assert!(
        sent.stats.transmits >= 1 && sent.queued_frames == 0,
        "{}",
        B::NAME
    );

    // A client as both ends see it.
    let params = ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target: 1,
    };
    let client = B::start_client(&config, params, keys(3), one.address).unwrap();
    let reply = async {
        let event = wait_for::<B>(&mut one.events, "the request", |e| {
            matches!(e, NodeEvent::Request { .. })
        })
        .await;
        let NodeEvent::Request { request, body, .. } = event else {
            unreachable!()
        };
        one.node.reply(request, body).unwrap();
    };
    let (answer, ()) = smol::future::zip(client.request(1, "ping".into()), reply).await;
    assert_eq!(&answer.unwrap().body[..], b"ping");
    let mine = client.connection_info().expect("the client's connection");
    assert_eq!(mine.peer, Some(PeerId::Replica(1)), "{}", B::NAME);
    assert_eq!(mine.side, Side::Dialer, "{}", B::NAME);
    assert_eq!(mine.remote, Some(one.address), "{}", B::NAME);
    assert!(mine.local.is_some(), "{}", B::NAME);
    assert!(mine.stats.frames_sent >= 2 && mine.stats.frames_received >= 2);
    let theirs = info_for::<B>(&one.node, PeerId::Client(params.id)).expect("the client");
    assert_eq!(theirs.side, Side::Acceptor, "{}", B::NAME);
    assert!(theirs.established_for.is_some(), "{}", B::NAME);
    assert_eq!(one.node.connection_infos().len(), 2, "{}", B::NAME);
}
