//! A program on the async-std executor uses bus-smol: the bus's tasks run
//! on smol's executor and async-io's reactor, which async-std shares.
//! (async-std is discontinued; it is only a dev-dependency here.)

use bus_smol::bus_proto::client::ClientParams;
use bus_smol::bus_proto::config::Config;
use bus_smol::bus_proto::crypto::{Key, KeyRing};
use bus_smol::bus_proto::entropy::SeededEntropy;
use bus_smol::bus_proto::node::{NodeEvent, NodeParams};
use bus_smol::{Client, Link, Node, NodeOptions};
use bytes::Bytes;
use std::time::Duration;

#[test]
fn a_cluster_and_a_client_run_under_async_std_block_on() {
    async_std::task::block_on(async {
        let config = {
            let mut tuned = Config::default();
            tuned.reconnect_min = Duration::from_millis(10);
            tuned
        }
        .validate()
        .unwrap();
        let keys = KeyRing::new(Key::generate(&mut SeededEntropy::new(5)));
        let start = |replica| {
            let params = NodeParams {
                cluster: 9,
                replica,
                replica_count: 2,
                accept_clients: true,
            };
            Node::start(&config, params, keys.clone(), NodeOptions::default()).unwrap()
        };
        let (zero, _zero_events) = start(0);
        let (one, mut one_events) = start(1);
        let address = one.listen("127.0.0.1:0").await.unwrap();
        zero.set_address(1, address);

        // Replica to replica, with async-std's own timer pacing the retries.
        let mut sent = false;
        let message = loop {
            if !sent && zero.send(1, 4, Bytes::from_static(b"over")).is_ok() {
                sent = true;
            }
            let next = async_std::future::timeout(Duration::from_millis(20), one_events.recv());
            match next.await {
                Ok(Some(NodeEvent::Message { from, body, .. })) => break (from, body),
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("the event stream ended"),
            }
        };
        assert_eq!(message, (0, Bytes::from_static(b"over")));

        // A client's request, answered by the node.
        let params = ClientParams {
            cluster: 9,
            id: Client::random_id(),
            target: 1,
        };
        let client = Client::start(&config, params, keys.clone(), address).unwrap();
        let request = async_std::task::spawn({
            let client = client.clone();
            async move { client.request(8, Bytes::from_static(b"ping")).await }
        });
        let reply_to = loop {
            match one_events.recv().await {
                Some(NodeEvent::Request { request, body, .. }) => break (request, body),
                Some(_) => {}
                None => panic!("the event stream ended"),
            }
        };
        assert_eq!(reply_to.1, Bytes::from_static(b"ping"));
        one.reply(reply_to.0, Bytes::from_static(b"pong")).unwrap();
        let reply = async_std::future::timeout(Duration::from_secs(20), request)
            .await
            .expect("the reply came")
            .unwrap();
        assert_eq!(reply.body, Bytes::from_static(b"pong"));
        assert_eq!(client.link(), Link::Connected { replica: 1 });

        let report = client.shutdown(Duration::from_secs(2)).await;
        assert_eq!((report.total, report.clean), (1, 1), "{report}");
        let report = zero.shutdown(Duration::from_secs(2)).await;
        assert_eq!(report.total, 1, "{report}");
        one.shutdown(Duration::from_secs(2)).await;
    });
}
