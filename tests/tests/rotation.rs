//! Live key rotation across a running cluster, on every adapter and
//! runtime: three replicas and their clients move from one cluster key to
//! another through the three phases of `Node::set_keys` while requests and
//! messages flow. No connection is dropped, every handshake made during
//! the rotation succeeds (replicas joining mid-way, new clients with either
//! key), and only after the last phase is the old key refused.

use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::host::{ConnectError, NodeOptions};
use bus_proto::node::NodeEvent;
use bus_tests::bus::{Bus, ClientOf, EventsOf};
use bus_tests::cluster::{Member, member, until, wait_for};
use bus_tests::{CLUSTER, config};
use bytes::Bytes;
use smol::future::{or, zip};
use std::cell::Cell;
use std::net::SocketAddr;

bus_tests::scenarios!(a_running_cluster_rotates_its_key_without_dropping_a_connection);

/// `current`, and `previous` as the verify-only key.
fn ring(current: &Key, previous: Option<&Key>) -> KeyRing {
    let ring = KeyRing::new(current.clone());
    match previous {
        Some(previous) => ring.with_previous(previous.clone()),
        None => ring,
    }
}

/// Answers every request and counts every connection lost, forever.
async fn serve<B: Bus>(member: Member<B>, dropped: &Cell<u32>, messages: &Cell<u32>) {
    let Member {
        node, mut events, ..
    } = member;
    serve_events::<B>(&node, &mut events, dropped, messages).await;
}

async fn serve_events<B: Bus>(
    node: &bus_tests::bus::NodeOf<B>,
    events: &mut EventsOf<B>,
    dropped: &Cell<u32>,
    messages: &Cell<u32>,
) {
    while let Some(event) = events.recv().await {
        match event {
            NodeEvent::Request { request, body, .. } => node.reply(request, body).unwrap(),
            NodeEvent::Message { .. } => messages.set(messages.get() + 1),
            NodeEvent::PeerDisconnected { .. } | NodeEvent::ClientDisconnected { .. } => {
                dropped.set(dropped.get() + 1);
            }
            _ => {}
        }
    }
}

/// A client of `replica` at `address` under `keys`, and its first reply.
async fn client<B: Bus>(replica: u8, address: SocketAddr, keys: KeyRing) -> ClientOf<B> {
    let params = bus_proto::client::ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target: replica,
    };
    let client = B::start_client(&config(), params, keys, address).unwrap();
    let reply = client.request(1, Bytes::from_static(b"hello")).await;
    assert_eq!(&reply.unwrap().body[..], b"hello", "{}", B::NAME);
    client
}

/// Every client still answered, on the connection it had.
async fn still_served<B: Bus>(clients: &[(&ClientOf<B>, u64)]) {
    for (client, dials) in clients {
        let reply = client.request(2, Bytes::from_static(b"again")).await;
        assert_eq!(&reply.unwrap().body[..], b"again", "{}", B::NAME);
        assert_eq!(
            client.stats().dials,
            *dials,
            "{}: a client reconnected",
            B::NAME
        );
    }
}

async fn a_running_cluster_rotates_its_key_without_dropping_a_connection<B: Bus>() {
    let config = config();
    let old = Key::generate(&mut SeededEntropy::new(71));
    let new = Key::generate(&mut SeededEntropy::new(72));
    let zero = member::<B>(&config, 0, 3, ring(&old, None), NodeOptions::default()).await;
    let one = member::<B>(&config, 1, 3, ring(&old, None), NodeOptions::default()).await;
    zero.node.set_address(1, one.address);
    let (node0, node1) = (zero.node.clone(), one.node.clone());
    let (address0, address1) = (zero.address, one.address);
    let (dropped, messages) = (Cell::new(0), Cell::new(0));

    let rotation = async {
        until::<B>("replicas 0 and 1 connected", || node0.is_connected(1)).await;
        let a = client::<B>(0, address0, ring(&old, None)).await;
        let b = client::<B>(1, address1, ring(&old, None)).await;
        let before = [(&a, a.stats().dials), (&b, b.stats().dials)];

        // Phase 1, every node: the new key verifies too.
        for node in [&node0, &node1] {
            node.set_keys(ring(&old, Some(&new)));
        }
        let c = client::<B>(0, address0, ring(&new, None)).await;
        still_served::<B>(&before).await;

        // Phase 2, node by node: sign with the new key. Replica 2 joins
        // between the two, so it is dialled under both keys at once.
        node0.set_keys(ring(&new, Some(&old)));
        let mut two = member::<B>(
            &config,
            2,
            3,
            ring(&new, Some(&old)),
            NodeOptions::default(),
        )
        .await;
        node0.set_address(2, two.address);
        node1.set_address(2, two.address);
        until::<B>("replica 2 connected to 0 and 1", || {
            two.node.is_connected(0) && two.node.is_connected(1)
        })
        .await;
        node1.set_keys(ring(&new, Some(&old)));
        let d = client::<B>(1, address1, ring(&old, None)).await;
        let e = client::<B>(1, address1, ring(&new, None)).await;
        still_served::<B>(&before).await;

        // Phase 3: the old key is gone; clients switch for their next
        // connection.
        for node in [&node0, &node1, &two.node] {
            node.set_keys(ring(&new, None));
        }
        for client in [&a, &b, &d] {
            client.set_keys(ring(&new, None));
        }
        let params = bus_proto::client::ClientParams {
            cluster: CLUSTER,
            id: B::random_id(),
            target: 0,
        };
        let stale = B::start_client(&config, params, ring(&old, None), address0).unwrap();
        match stale.connected().await {
            Err(ConnectError::Handshake(_)) => {}
            other => panic!("{}: the old key was not refused: {other:?}", B::NAME),
        }
        drop(stale);
        let f = client::<B>(0, address0, ring(&new, None)).await;
        still_served::<B>(&before).await;
        for client in [&c, &d, &e, &f] {
            let reply = client.request(3, Bytes::from_static(b"after")).await;
            assert_eq!(&reply.unwrap().body[..], b"after", "{}", B::NAME);
        }

        // The replicas' connections from before the rotation still carry
        // messages, and so do replica 2's.
        node0
            .send_wait(1, 7, Bytes::from_static(b"m"))
            .await
            .unwrap();
        node1
            .send_wait(0, 7, Bytes::from_static(b"m"))
            .await
            .unwrap();
        until::<B>("the messages between 0 and 1", || messages.get() == 2).await;
        node0
            .send_wait(2, 7, Bytes::from_static(b"m"))
            .await
            .unwrap();
        wait_for::<B>(&mut two.events, "a message on replica 2", |event| {
            matches!(event, NodeEvent::Message { from: 0, .. })
        })
        .await;
        assert!(node0.is_connected(1) && node0.is_connected(2) && node1.is_connected(2));
        assert_eq!(dropped.get(), 0, "{}: a connection was dropped", B::NAME);
        assert_eq!(
            node0.stats().dials,
            2,
            "{}: replica 0 dialled again",
            B::NAME
        );
    };
    let servers = zip(
        serve::<B>(zero, &dropped, &messages),
        serve::<B>(one, &dropped, &messages),
    );
    or(rotation, async {
        servers.await;
        panic!("{}: a node's events ended", B::NAME);
    })
    .await;
}
