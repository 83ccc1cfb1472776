//! The QUIC endpoint's datagram input: arbitrary datagrams from arbitrary
//! addresses, and time, into a server endpoint whose core is a node.
//! Nothing may panic; the endpoint's connections stay within the node's
//! unauthenticated pool and its queued datagrams within their bound.
//!
//! The input is a sequence of records `[from: u8][length: u16 BE][bytes]`
//! (simple to seed with real datagrams); a record of length 0 lets
//! `from` × 10 ms pass instead.

use bus_proto::config::Config;
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::node::{Node, NodeParams};
use bus_proto::time::{Instant, Now};
use bus_proto::transport::quic::{MAX_QUEUED_DATAGRAMS, QuicEndpoint};
use bus_proto::transport::tls::{PrivateKeyDer, TlsServer};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

fn server() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["fuzz".into()]).expect("a certificate");
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        TlsServer::new(vec![certified.cert.der().clone()], key).expect("a config")
    })
}

/// Drives a QUIC server endpoint with fuzzer-chosen datagrams and time.
pub fn quic_endpoint(data: &[u8]) {
    let config = Config::default().validate().expect("defaults are valid");
    let mut elapsed = Duration::ZERO;
    let now = |elapsed: Duration| Now {
        mono: Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)),
        wall: super::wall(Instant::from_nanos(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        )),
    };
    let mut node = Node::new(
        now(elapsed),
        &config,
        NodeParams {
            cluster: super::CLUSTER,
            replica: 0,
            replica_count: 1,
            accept_clients: true,
        },
        KeyRing::new(Key::from_bytes([3; 32])),
        Box::new(SeededEntropy::new(1)),
    )
    .expect("a node");
    let epoch = std::time::Instant::now();
    let mut endpoint =
        QuicEndpoint::new(epoch, &config, Some(server()), None, [7; 32]).expect("an endpoint");
    let mut rest = data;
    while let [from, high, low, tail @ ..] = rest {
        let length = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (bytes, after) = tail.split_at(length);
        rest = after;
        if bytes.is_empty() {
            elapsed += Duration::from_millis(10 * u64::from(*from));
            node.handle_timeout(now(elapsed));
        } else {
            let from = SocketAddr::from((Ipv4Addr::new(10, 0, 0, *from), 4433));
            endpoint.handle_datagram(now(elapsed), from, bytes, &mut node);
        }
        endpoint.drive(now(elapsed), &mut node);
        assert!(endpoint.connections() <= config.max_handshakes_in_flight + 1);
        let mut queued = 0;
        while endpoint.poll_datagram().is_some() {
            queued += 1;
        }
        assert!(queued <= MAX_QUEUED_DATAGRAMS);
    }
}
