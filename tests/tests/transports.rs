//! Transports under framing on real loopback sockets, on every runtime:
//! both planes over TLS, WebSocket and WebSocket over TLS, a cluster mixing
//! them, channel binding against a relay, binding-policy mismatch, and
//! transport handshakes inside the bus's one handshake budget.

use bus_proto::client::ClientParams;
use bus_proto::connection::CloseCause;
use bus_proto::host::{Link, NodeOptions, Transport};
use bus_proto::node::NodeEvent;
use bus_proto::transport::BindingPolicy;
use bus_proto::transport::ws::{WsClient, WsServer};
use bus_proto::wire::RejectStatus;
use bus_tests::bus::{Bus, ClientOf, EventsOf, NodeOf};
use bus_tests::cluster::{Member, params, until, wait_for};
use bus_tests::tls::{Identity, start_relay};
use bus_tests::{CLUSTER, config, keys};
use bytes::Bytes;
use smol::Async;
use smol::future::zip;
use smol::io::AsyncReadExt;
use std::net::TcpStream;
use std::time::Duration;

bus_tests::scenarios!(
    clients_and_replicas_round_trip_over_tls,
    clients_and_replicas_round_trip_over_ws,
    clients_and_replicas_round_trip_over_wss,
    a_cluster_mixes_transports_per_listener,
    a_silent_websocket_counts_as_a_handshake_and_closes_at_the_deadline,
    a_tls_relay_never_establishes_but_would_without_binding,
    a_binding_policy_mismatch_is_refused_as_bad_mac,
    a_silent_tls_socket_counts_as_a_handshake_and_closes_at_the_deadline,
    a_plain_client_gets_nowhere_on_a_tls_listener,
);

fn client_params<B: Bus>(target: u8) -> ClientParams {
    ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target,
    }
}

/// Starts replica `replica` of `count` listening over `transport`, dialling
/// its peers over `dial`.
async fn tls_member<B: Bus>(
    replica: u8,
    count: u8,
    listen: Transport,
    dial: Option<Transport>,
) -> Member<B> {
    let mut options = NodeOptions::default();
    if let Some(dial) = dial {
        for peer in (0..count).filter(|&p| p != replica) {
            options.peer_transports.insert(peer, dial.clone());
        }
    }
    let (node, events) =
        B::start_node(&config(), params(replica, count), keys(1), options).expect("node starts");
    let address = node
        .listen_via("127.0.0.1:0".parse().expect("an address"), listen)
        .await
        .expect("listen");
    Member {
        node,
        events,
        address,
    }
}

/// Sends `body` as a request from `client` and serves it on `node`
/// (echo); returns the reply's body.
async fn request_served<B: Bus>(
    node: &NodeOf<B>,
    events: &mut EventsOf<B>,
    client: &ClientOf<B>,
    body: &'static [u8],
) -> Bytes {
    let request = client.request(9, Bytes::from_static(body));
    let serve = async {
        let NodeEvent::Request { request, body, .. } = wait_for::<B>(events, "the request", |e| {
            matches!(e, NodeEvent::Request { .. })
        })
        .await
        else {
            unreachable!()
        };
        node.reply(request, body).expect("reply");
    };
    let (reply, ()) = zip(request, serve).await;
    reply.expect("a reply").body
}

/// A listener's transport and a dialer's for `kind` (`tls`, `ws`, `wss`),
/// trusting `identity` for the name `localhost`.
fn transports(identity: &Identity, kind: &str) -> (Transport, Transport) {
    let tls_server = identity.server(BindingPolicy::TlsExporter);
    let tls_client = identity.client("localhost", BindingPolicy::TlsExporter);
    match kind {
        "tls" => (tls_server.transport(), tls_client.transport()),
        "ws" => (
            WsServer::new().transport(),
            WsClient::new("ws://localhost/bus")
                .expect("a URL")
                .transport(),
        ),
        "wss" => (
            WsServer::over_tls(&tls_server).transport(),
            WsClient::over_tls("wss://localhost/bus", &tls_client)
                .expect("a URL")
                .transport(),
        ),
        other => unreachable!("no transport {other}"),
    }
}

async fn clients_and_replicas_round_trip_over_tls<B: Bus>() {
    round_trip_over::<B>("tls").await;
}

async fn clients_and_replicas_round_trip_over_ws<B: Bus>() {
    round_trip_over::<B>("ws").await;
}

async fn clients_and_replicas_round_trip_over_wss<B: Bus>() {
    round_trip_over::<B>("wss").await;
}

async fn round_trip_over<B: Bus>(kind: &str) {
    let identity = Identity::new(&["localhost"]);
    let (_, dial) = transports(&identity, kind);
    let listen = || transports(&identity, kind).0;
    let mut a = tls_member::<B>(0, 2, listen(), Some(dial.clone())).await;
    let mut b = tls_member::<B>(1, 2, listen(), Some(dial.clone())).await;
    a.node.set_address(1, b.address);
    b.node.set_address(0, a.address);
    until::<B>("replicas 0 and 1 connected", || {
        a.node.is_connected(1) && b.node.is_connected(0)
    })
    .await;
    // Messages both ways, small and larger than a TLS record.
    for (size, operation, fill) in [(10usize, 1u32, b'a'), (100_000, 2, b'b')] {
        let body = Bytes::from(vec![fill; size]);
        a.node.send(1, operation, body.clone()).expect("send");
        b.node.send(0, operation, body.clone()).expect("send");
        for events in [&mut b.events, &mut a.events] {
            let NodeEvent::Message {
                operation: got_op,
                body: got,
                ..
            } = wait_for::<B>(events, "the message", |e| {
                matches!(e, NodeEvent::Message { .. })
            })
            .await
            else {
                unreachable!()
            };
            assert_eq!((got_op, got), (operation, body.clone()));
        }
    }

    let client = B::start_client_via(&config(), client_params::<B>(1), keys(1), b.address, dial)
        .expect("client starts");
    for body in [&b"first"[..], b"second", b"third"] {
        assert_eq!(
            request_served::<B>(&b.node, &mut b.events, &client, body).await,
            body
        );
    }
    assert_eq!(client.link(), Link::Connected { replica: 1 });
    client.shutdown(Duration::from_secs(5)).await;
    a.node.shutdown(Duration::from_secs(5)).await;
    b.node.shutdown(Duration::from_secs(5)).await;
}

async fn a_tls_relay_never_establishes_but_would_without_binding<B: Bus>() {
    let node_identity = Identity::new(&["localhost"]);
    let relay_identity = Identity::new(&["localhost"]);
    for policy in [BindingPolicy::TlsExporter, BindingPolicy::Unbound] {
        let mut member =
            tls_member::<B>(0, 1, node_identity.server(policy).transport(), None).await;
        let relay = start_relay(&relay_identity, member.address, &node_identity);
        // The client trusts the relay's certificate, as a victim of a
        // mis-issued certificate would.
        let dial = relay_identity.client("localhost", policy).transport();
        let client = B::start_client_via(&config(), client_params::<B>(0), keys(1), relay, dial)
            .expect("client starts");
        match policy {
            BindingPolicy::TlsExporter => {
                // The two TLS sessions export different bindings: the
                // node finds the hello's MAC wrong, every time.
                for _ in 0..2 {
                    let event = wait_for::<B>(&mut member.events, "a failed handshake", |e| {
                        matches!(e, NodeEvent::HandshakeFailed { .. })
                    })
                    .await;
                    let NodeEvent::HandshakeFailed { cause, .. } = event else {
                        unreachable!()
                    };
                    assert_eq!(cause, CloseCause::Refused(RejectStatus::BadMac));
                }
                assert_eq!(member.node.inspect(|n| n.admitted_clients()), 0);
                assert!(!matches!(client.link(), Link::Connected { .. }));
            }
            BindingPolicy::Unbound => {
                // Without binding the same relay carries the session: the
                // failure above is the binding's doing.
                assert_eq!(
                    request_served::<B>(&member.node, &mut member.events, &client, b"via relay")
                        .await,
                    &b"via relay"[..]
                );
            }
        }
        client.shutdown(Duration::from_secs(5)).await;
        member.node.shutdown(Duration::from_secs(5)).await;
    }
}

async fn a_binding_policy_mismatch_is_refused_as_bad_mac<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let listen = identity.server(BindingPolicy::Unbound).transport();
    let mut member = tls_member::<B>(0, 1, listen, None).await;
    let dial = identity
        .client("localhost", BindingPolicy::TlsExporter)
        .transport();
    let client = B::start_client_via(
        &config(),
        client_params::<B>(0),
        keys(1),
        member.address,
        dial,
    )
    .expect("client starts");
    let NodeEvent::HandshakeFailed { cause, .. } =
        wait_for::<B>(&mut member.events, "a failed handshake", |e| {
            matches!(e, NodeEvent::HandshakeFailed { .. })
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(cause, CloseCause::Refused(RejectStatus::BadMac));
    until::<B>("the client learns of the refusal", || {
        matches!(client.link(), Link::HandshakeFailed { .. })
    })
    .await;
    client.shutdown(Duration::from_secs(5)).await;
    member.node.shutdown(Duration::from_secs(5)).await;
}

async fn a_silent_tls_socket_counts_as_a_handshake_and_closes_at_the_deadline<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let listen = identity.server(BindingPolicy::TlsExporter).transport();
    let member = tls_member::<B>(0, 1, listen, None).await;
    // One socket says nothing; another sends half a ClientHello.
    let mut silent = Async::<TcpStream>::connect(member.address)
        .await
        .expect("connect");
    let mut partial = Async::<TcpStream>::connect(member.address)
        .await
        .expect("connect");
    smol::io::AsyncWriteExt::write_all(&mut partial, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    until::<B>("both sockets counted as handshakes in flight", || {
        member.node.inspect(|n| n.handshakes_in_flight()) == 2
    })
    .await;
    // The node closes both at the handshake deadline: EOF, no answer.
    for socket in [&mut silent, &mut partial] {
        let mut rest = Vec::new();
        let read =
            bus_tests::cluster::within::<B, _>(bus_tests::PATIENCE, socket.read_to_end(&mut rest))
                .await;
        assert!(
            read.is_some(),
            "{}: the node never closed a stalled TLS handshake",
            B::NAME
        );
    }
    until::<B>("no handshake left in flight", || {
        member.node.inspect(|n| n.handshakes_in_flight()) == 0
    })
    .await;
    member.node.shutdown(Duration::from_secs(5)).await;
}

async fn a_plain_client_gets_nowhere_on_a_tls_listener<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let listen = identity.server(BindingPolicy::TlsExporter).transport();
    let member = tls_member::<B>(0, 1, listen, None).await;
    let client = B::start_client(&config(), client_params::<B>(0), keys(1), member.address)
        .expect("client starts");
    until::<B>("the plain client's dials fail", || {
        client.stats().dials >= 2
    })
    .await;
    assert!(!matches!(client.link(), Link::Connected { .. }));
    assert_eq!(member.node.inspect(|n| n.admitted_clients()), 0);
    client.shutdown(Duration::from_secs(5)).await;
    member.node.shutdown(Duration::from_secs(5)).await;
}

async fn a_cluster_mixes_transports_per_listener<B: Bus>() {
    let identity = Identity::new(&["localhost"]);
    let (tls_listen, tls_dial) = transports(&identity, "tls");
    let (ws_listen, ws_dial) = transports(&identity, "ws");
    let (wss_listen, wss_dial) = transports(&identity, "wss");
    // Replica 0 dials 1 over TLS and 2 over TCP; 1 dials 2 over TCP.
    let start = |replica: u8, peers: Vec<(u8, Transport)>| {
        let mut options = NodeOptions::default();
        options.peer_transports.extend(peers);
        B::start_node(&config(), params(replica, 3), keys(1), options).expect("node starts")
    };
    let any = || "127.0.0.1:0".parse().expect("an address");
    let (n0, mut e0) = start(0, vec![(1, tls_dial.clone())]);
    let (n1, mut e1) = start(1, vec![]);
    let (n2, mut e2) = start(2, vec![]);
    // Node 0: TCP for replicas, WSS for clients. Node 1: TLS for
    // replicas and clients, WS for clients. Node 2: TCP only.
    let a0 = n0.listen(any()).await.expect("listen");
    let a0_wss = n0.listen_via(any(), wss_listen).await.expect("listen");
    let a1_tls = n1.listen_via(any(), tls_listen).await.expect("listen");
    let a1_ws = n1.listen_via(any(), ws_listen).await.expect("listen");
    let a2 = n2.listen(any()).await.expect("listen");
    for node in [&n0, &n1, &n2] {
        node.set_address(0, a0);
        node.set_address(1, a1_tls);
        node.set_address(2, a2);
    }
    until::<B>("every replica pair connected", || {
        n0.is_connected(1) && n0.is_connected(2) && n1.is_connected(2)
    })
    .await;
    let clients = [
        (0, a0_wss, wss_dial),
        (1, a1_tls, tls_dial),
        (1, a1_ws, ws_dial),
    ];
    let mut served = 0;
    for (target, address, dial) in clients {
        let client = B::start_client_via(
            &config(),
            client_params::<B>(target),
            keys(1),
            address,
            dial.clone(),
        )
        .expect("client starts");
        let (node, events) = match target {
            0 => (&n0, &mut e0),
            _ => (&n1, &mut e1),
        };
        let body = request_served::<B>(node, events, &client, b"mixed").await;
        assert_eq!(body, &b"mixed"[..], "{} client", dial.name());
        served += 1;
        client.shutdown(Duration::from_secs(5)).await;
    }
    assert_eq!(served, 3);
    // Replica traffic crosses TLS (0 -> 1) and TCP (1 -> 2).
    n0.send(1, 5, Bytes::from_static(b"over tls"))
        .expect("send");
    n1.send(2, 5, Bytes::from_static(b"over tcp"))
        .expect("send");
    for (events, body) in [(&mut e1, &b"over tls"[..]), (&mut e2, &b"over tcp"[..])] {
        let NodeEvent::Message { body: got, .. } = wait_for::<B>(events, "the message", |e| {
            matches!(e, NodeEvent::Message { .. })
        })
        .await
        else {
            unreachable!()
        };
        assert_eq!(got, body);
    }
    for node in [&n0, &n1, &n2] {
        node.shutdown(Duration::from_secs(5)).await;
    }
}

async fn a_silent_websocket_counts_as_a_handshake_and_closes_at_the_deadline<B: Bus>() {
    let member = tls_member::<B>(0, 1, WsServer::new().transport(), None).await;
    // One socket says nothing; another sends half an upgrade request.
    let mut silent = Async::<TcpStream>::connect(member.address)
        .await
        .expect("connect");
    let mut partial = Async::<TcpStream>::connect(member.address)
        .await
        .expect("connect");
    smol::io::AsyncWriteExt::write_all(&mut partial, b"GET /bus HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    until::<B>("both sockets counted as handshakes in flight", || {
        member.node.inspect(|n| n.handshakes_in_flight()) == 2
    })
    .await;
    for socket in [&mut silent, &mut partial] {
        let mut rest = Vec::new();
        let read =
            bus_tests::cluster::within::<B, _>(bus_tests::PATIENCE, socket.read_to_end(&mut rest))
                .await;
        assert!(
            read.is_some(),
            "{}: a stalled upgrade was never closed",
            B::NAME
        );
        assert!(
            rest.is_empty(),
            "{}: an answer to nothing: {rest:?}",
            B::NAME
        );
    }
    until::<B>("no handshake left in flight", || {
        member.node.inspect(|n| n.handshakes_in_flight()) == 0
    })
    .await;
    member.node.shutdown(Duration::from_secs(5)).await;
}
