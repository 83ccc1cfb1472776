//! QUIC on real loopback sockets, on every runtime: clients of a node whose
//! replicas talk TCP, replicas over QUIC, many clients on one endpoint, a
//! flood of garbage datagrams beside them, and shutdown.

use bus_proto::client::ClientParams;
use bus_proto::connection::CloseCause;
use bus_proto::host::{ConnectError, Link, NodeOptions, Transport};
use bus_proto::node::NodeEvent;
use bus_proto::transport::BindingPolicy;
use bus_proto::wire::{Plane, RejectStatus};
use bus_tests::bus::{Bus, ClientOf, EventsOf, NodeOf};
use bus_tests::cluster::{Member, member, params, until, wait_for};
use bus_tests::tls::Identity;
use bus_tests::{CLUSTER, config, keys};
use bytes::Bytes;
use smol::future::zip;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

bus_tests::scenarios!(
    quic_clients_of_a_node_whose_replicas_talk_tcp,
    replicas_connect_over_quic,
    many_quic_clients_share_one_endpoint,
    a_quic_listener_serves_through_a_flood_of_garbage_datagrams,
    a_replicas_only_quic_listener_refuses_clients,
);

fn client_params<B: Bus>(target: u8) -> ClientParams {
    ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target,
    }
}

/// A QUIC listener's transport and a dialer's, trusting `identity` for the
/// name `localhost`.
fn quic(identity: &Identity) -> (Transport, Transport) {
    (
        identity.server(BindingPolicy::TlsExporter).quic(),
        identity
            .client("localhost", BindingPolicy::TlsExporter)
            .quic(),
    )
}

async fn start<B: Bus>(replica: u8, count: u8, options: NodeOptions) -> Member<B> {
    member::<B>(&config(), replica, count, keys(1), options).await
}

/// Serves `count` requests on `node` (echo).
async fn serve<B: Bus>(node: &NodeOf<B>, events: &mut EventsOf<B>, count: usize) {
    for _ in 0..count {
        let NodeEvent::Request { request, body, .. } = wait_for::<B>(events, "a request", |e| {
            matches!(e, NodeEvent::Request { .. })
        })
        .await
        else {
            unreachable!()
        };
        node.reply(request, body).expect("reply");
    }
}

async fn quic_clients_of_a_node_whose_replicas_talk_tcp<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let (listen, dial) = quic(&identity);
    let a = start::<B>(0, 2, NodeOptions::default()).await;
    let mut b = start::<B>(1, 2, NodeOptions::default()).await;
    a.node.set_address(1, b.address);
    b.node.set_address(0, a.address);
    let quic_address = b
        .node
        .listen_via("127.0.0.1:0".parse().expect("an address"), listen)
        .await
        .expect("listen over QUIC");
    until::<B>("replicas 0 and 1 connected over TCP", || {
        a.node.is_connected(1) && b.node.is_connected(0)
    })
    .await;
    let client = B::start_client_via(
        &config(),
        client_params::<B>(1),
        keys(1),
        quic_address,
        dial,
    )
    .expect("client starts");
    // Small bodies and one far larger than a QUIC packet.
    let bodies: Vec<Bytes> = vec![
        Bytes::from_static(b"first"),
        Bytes::from(vec![7u8; 300_000]),
        Bytes::from_static(b"third"),
    ];
    for body in &bodies {
        let (reply, ()) = zip(
            client.request(9, body.clone()),
            serve::<B>(&b.node, &mut b.events, 1),
        )
        .await;
        assert_eq!(&reply.expect("a reply").body, body);
    }
    assert_eq!(client.link(), Link::Connected { replica: 1 });
    // Replica traffic still flows over TCP beside it.
    a.node
        .send(1, 3, Bytes::from_static(b"over tcp"))
        .expect("send");
    let NodeEvent::Message { body, .. } = wait_for::<B>(&mut b.events, "the message", |e| {
        matches!(e, NodeEvent::Message { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(body, &b"over tcp"[..]);
    let report = client.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        report.forced, 0,
        "the client's QUIC close completes: {report:?}"
    );
    a.node.shutdown(Duration::from_secs(5)).await;
    let report = b.node.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.forced, 0, "{report:?}");
}

async fn replicas_connect_over_quic<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let (listen, dial) = quic(&identity);
    let mut options = NodeOptions::default();
    options.peer_transports.insert(1, dial);
    let (n0, mut e0) =
        B::start_node(&config(), params(0, 2), keys(1), options).expect("node starts");
    let (n1, mut e1) =
        B::start_node(&config(), params(1, 2), keys(1), NodeOptions::default()).expect("starts");
    let any = || "127.0.0.1:0".parse::<SocketAddr>().expect("an address");
    let a0 = n0.listen(any()).await.expect("listen");
    let a1 = n1.listen_via(any(), listen).await.expect("listen");
    n0.set_address(1, a1);
    n1.set_address(0, a0);
    until::<B>("replica 0 dialled 1 over QUIC", || {
        n0.is_connected(1) && n1.is_connected(0)
    })
    .await;
    for round in 0..50u32 {
        let body = Bytes::from(round.to_be_bytes().repeat(1 + round as usize * 100));
        n0.send(1, round, body.clone()).expect("send");
        n1.send(0, round, body.clone()).expect("send");
        for events in [&mut e1, &mut e0] {
            let NodeEvent::Message {
                operation,
                body: got,
                ..
            } = wait_for::<B>(events, "the message", |e| {
                matches!(e, NodeEvent::Message { .. })
            })
            .await
            else {
                unreachable!()
            };
            assert_eq!((operation, got), (round, body.clone()), "in order");
        }
    }
    let report = n0.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.forced, 0, "{report:?}");
    n1.shutdown(Duration::from_secs(5)).await;
}

async fn many_quic_clients_share_one_endpoint<B: Bus>() {
    const CLIENTS: usize = 24;
    const REQUESTS: usize = 5;
    let identity = Identity::new(&["localhost"]);
    let (listen, dial) = quic(&identity);
    let mut member = start::<B>(0, 1, NodeOptions::default()).await;
    let address = member
        .node
        .listen_via("127.0.0.1:0".parse().expect("an address"), listen)
        .await
        .expect("listen over QUIC");
    let clients: Vec<ClientOf<B>> = (0..CLIENTS)
        .map(|_| {
            B::start_client_via(
                &config(),
                client_params::<B>(0),
                keys(1),
                address,
                dial.clone(),
            )
            .expect("client starts")
        })
        .collect();
    let requests = async {
        let mut all = Vec::new();
        for (index, client) in clients.iter().enumerate() {
            for request in 0..REQUESTS {
                let body = Bytes::from(format!("client {index} request {request}"));
                all.push(Box::pin(async move {
                    let reply = client.request(1, body.clone()).await.expect("a reply");
                    assert_eq!(reply.body, body);
                })
                    as std::pin::Pin<Box<dyn Future<Output = ()>>>);
            }
        }
        bus_tests::attack::join_all(all).await.len()
    };
    let (answered, ()) = zip(
        requests,
        serve::<B>(&member.node, &mut member.events, CLIENTS * REQUESTS),
    )
    .await;
    assert_eq!(answered, CLIENTS * REQUESTS);
    assert_eq!(
        member.node.inspect(|n| n.admitted_clients()),
        CLIENTS,
        "one connection per client"
    );
    for client in &clients {
        let report = client.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.forced, 0, "a client's close completes: {report:?}");
    }
    let report = member.node.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.forced, 0, "{report:?}");
    // The event stream ends after shutdown.
    while member.events.recv().await.is_some() {}
}

async fn a_quic_listener_serves_through_a_flood_of_garbage_datagrams<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let (listen, dial) = quic(&identity);
    let mut member = start::<B>(0, 1, NodeOptions::default()).await;
    let address = member
        .node
        .listen_via("127.0.0.1:0".parse().expect("an address"), listen)
        .await
        .expect("listen over QUIC");
    // Garbage, and datagrams shaped like long-header Initials with junk
    // inside, from many ports: none is a QUIC connection.
    let flood = std::thread::spawn(move || {
        let mut sent = 0usize;
        let sockets: Vec<UdpSocket> = (0..16)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20_000usize {
            let mut datagram = vec![0u8; 1200];
            for byte in &mut datagram {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state.to_le_bytes()[0];
            }
            if round % 2 == 0 {
                // Long header, QUIC v1, an Initial.
                datagram[0] = 0xc0;
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
                datagram[5] = 8;
            }
            if sockets[round % sockets.len()]
                .send_to(&datagram, address)
                .is_ok()
            {
                sent += 1;
            }
        }
        sent
    });
    let client = B::start_client_via(&config(), client_params::<B>(0), keys(1), address, dial)
        .expect("client starts");
    for request in 0..20u32 {
        let body = Bytes::from(request.to_be_bytes().to_vec());
        let (reply, ()) = zip(
            client.request(2, body.clone()),
            serve::<B>(&member.node, &mut member.events, 1),
        )
        .await;
        assert_eq!(reply.expect("a reply through the flood").body, body);
    }
    let sent = flood.join().expect("the flood thread");
    println!("garbage datagrams sent: {sent}");
    assert!(sent > 0);
    assert!(
        member.node.inspect(|n| n.handshakes_in_flight()) <= config().max_handshakes_in_flight,
        "the unauthenticated pool stays within its cap"
    );
    client.shutdown(Duration::from_secs(5)).await;
    member.node.shutdown(Duration::from_secs(5)).await;
}

/// A QUIC listener for the replica plane only refuses a client with
/// `UnknownPeer` (the port passes its plane to the core), and a listener
/// for clients on the same node serves it.
async fn a_replicas_only_quic_listener_refuses_clients<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let (listen, dial) = quic(&identity);
    let (node, _events) =
        B::start_node(&config(), params(0, 1), keys(1), NodeOptions::default()).expect("starts");
    let any = || "127.0.0.1:0".parse::<SocketAddr>().expect("an address");
    let replicas = node
        .listen_via(any(), listen.clone().only(Plane::Replica))
        .await
        .expect("listen");
    let clients = node
        .listen_via(any(), listen.only(Plane::Client))
        .await
        .expect("listen");
    let refused = B::start_client_via(
        &config(),
        client_params::<B>(0),
        keys(1),
        replicas,
        dial.clone(),
    )
    .expect("client starts");
    match refused.connected().await {
        Err(ConnectError::Handshake(CloseCause::Rejected(r))) => {
            assert_eq!(r.status, RejectStatus::UnknownPeer, "{}", B::NAME);
        }
        other => panic!("{}: a client on the replica port: {other:?}", B::NAME),
    }
    let served = B::start_client_via(&config(), client_params::<B>(0), keys(1), clients, dial)
        .expect("client starts");
    assert_eq!(served.connected().await, Ok(0), "{}", B::NAME);
}
