//! The application header on every adapter and runtime: `view`, `release`
//! and the 96-byte application area arrive as sent on a replica's message
//! (header-only, as consensus messages are, and with a body), on a client's
//! request, and on the node's reply.

use bus_proto::client::ClientParams;
use bus_proto::node::NodeEvent;
use bus_proto::wire::{APP_AREA_SIZE, AppArea, AppHeader};
use bus_tests::bus::Bus;
use bus_tests::cluster::{all_connected, cluster, wait_for};
use bus_tests::{CLUSTER, config, keys};
use bytes::Bytes;

bus_tests::scenarios!(application_headers_arrive_as_sent);

/// A header whose area spells `seed` in every byte position.
fn header(view: u32, seed: u8) -> AppHeader {
    let mut area = [0u8; APP_AREA_SIZE];
    for (byte, i) in area.iter_mut().zip(0u8..) {
        *byte = seed.wrapping_add(i);
    }
    AppHeader {
        view,
        release: 7,
        area: AppArea::new(area),
    }
}

async fn application_headers_arrive_as_sent<B: Bus>() {
    let config = config();
    let mut members = cluster::<B>(&config, 2, |_| keys(5)).await;
    all_connected::<B>(&members).await;

    // A header-only "prepare_ok", then a message with a body.
    members[0]
        .node
        .send_with(1, 11, header(3, 1), Bytes::new())
        .unwrap();
    members[0]
        .node
        .send_with(1, 12, header(4, 2), Bytes::from_static(b"entries"))
        .unwrap();
    for (operation, expected, body) in
        [(11, header(3, 1), &b""[..]), (12, header(4, 2), b"entries")]
    {
        let event = wait_for::<B>(&mut members[1].events, "a message", |e| {
            matches!(e, NodeEvent::Message { .. })
        })
        .await;
        let NodeEvent::Message {
            operation: got,
            app,
            body: got_body,
            ..
        } = event
        else {
            unreachable!()
        };
        assert_eq!((got, &got_body[..]), (operation, body), "{}", B::NAME);
        assert_eq!(app, expected, "{}: message {operation}", B::NAME);
    }

    let params = ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target: 1,
    };
    let client = B::start_client(&config, params, keys(5), members[1].address).unwrap();
    let node = members[1].node.clone();
    let serve = async {
        let event = wait_for::<B>(&mut members[1].events, "the request", |e| {
            matches!(e, NodeEvent::Request { .. })
        })
        .await;
        let NodeEvent::Request { request, app, .. } = event else {
            unreachable!()
        };
        assert_eq!(app, header(8, 3), "{}: the request's header", B::NAME);
        node.reply_with(request, header(9, 4), Bytes::new())
            .unwrap();
    };
    let (reply, ()) = smol::future::zip(
        client.request_with(21, header(8, 3), Bytes::from_static(b"op")),
        serve,
    )
    .await;
    let reply = reply.unwrap();
    assert_eq!(reply.app, header(9, 4), "{}: the reply's header", B::NAME);
    assert!(reply.body.is_empty(), "{}", B::NAME);
}
