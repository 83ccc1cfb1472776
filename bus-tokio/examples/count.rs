//! A fixed workload for instruction counts: on one current-thread runtime,
//! replica 0 sends `N` messages of 64 B to replica 1 over loopback and
//! replica 1 reads them all. Run it under callgrind at two sizes; the
//! difference divided by the difference in `N` is the cost per message,
//! free of start-up:
//!
//! ```sh
//! cargo build --release -p bus-tokio --example count
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/count 20000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/count 40000
//! ```

use bus_tokio::bus_proto::config::Config;
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
use bus_tokio::{Node, NodeOptions};
use bytes::Bytes;

fn main() {
    let messages: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let config = Config::default().validate().expect("defaults are valid");
        let keys = KeyRing::new(Key::from_bytes([7; 32]));
        let params = |replica| NodeParams {
            cluster: 1,
            replica,
            replica_count: 2,
            accept_clients: false,
        };
        let (one, mut events) =
            Node::start(&config, params(1), keys.clone(), NodeOptions::default()).expect("node 1");
        let address = one.listen("127.0.0.1:0").await.expect("listen");
        let mut options = NodeOptions::default();
        options.peers.insert(1, address);
        let (zero, _zero_events) = Node::start(&config, params(0), keys, options).expect("node 0");
        let body = Bytes::from(vec![0u8; 64]);
        let send = async {
            while !zero.is_connected(1) {
                tokio::task::yield_now().await;
            }
            for i in 0..messages {
                zero.send_wait(1, i, body.clone()).await.expect("sent");
            }
        };
        let receive = async {
            let mut received = 0;
            while received < messages {
                if let Some(NodeEvent::Message { .. }) = events.recv().await {
                    received += 1;
                }
            }
        };
        tokio::join!(send, receive);
        println!("{messages} messages");
    });
}
