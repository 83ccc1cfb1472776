//! Every connection has a tracing span naming it: id, side (accepted or
//! dialled), transport and remote address, and once the handshake names
//! the peer, its plane and id. A socket task runs inside its span; a QUIC
//! port enters a connection's span while it works on that connection. So
//! whatever is logged for a connection says which one it is.

use bus_tokio::bus_proto::client::ClientParams;
use bus_tokio::bus_proto::config::Config;
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
use bus_tokio::{Client, Node, NodeOptions};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The fields of every `connection` span opened.
type Spans = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// A subscriber that only collects the fields of `connection` spans, and
/// how often one was entered (a task polled inside it).
struct Collect {
    spans: Spans,
    next: AtomicU64,
    connection_ids: Mutex<Vec<u64>>,
    entered: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Collect {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attributes: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        if attributes.metadata().name() == "connection" {
            let mut fields = BTreeMap::new();
            attributes.record(&mut Fields(&mut fields));
            self.spans.lock().expect("lock").push(fields);
            self.connection_ids.lock().expect("lock").push(id);
        }
        Id::from_u64(id)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let ids = self.connection_ids.lock().expect("lock");
        if let Some(index) = ids.iter().position(|&c| c == id.into_u64()) {
            let mut spans = self.spans.lock().expect("lock");
            values.record(&mut Fields(&mut spans[index]));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, id: &Id) {
        if self
            .connection_ids
            .lock()
            .expect("lock")
            .contains(&id.into_u64())
        {
            self.entered.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn exit(&self, _: &Id) {}
}

#[test]
fn every_socket_task_runs_in_a_span_naming_its_connection() {
    let spans = Spans::default();
    let entered = Arc::new(AtomicU64::new(0));
    let subscriber = Collect {
        spans: Arc::clone(&spans),
        next: AtomicU64::new(0),
        connection_ids: Mutex::new(Vec::new()),
        entered: Arc::clone(&entered),
    };
    let node_address = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let config = Config::default().validate().expect("valid");
            let keys = KeyRing::new(Key::from_bytes([4; 32]));
            let params = NodeParams {
                cluster: 9,
                replica: 0,
                replica_count: 1,
                accept_clients: true,
            };
            let (node, mut events) =
                Node::start(&config, params, keys.clone(), NodeOptions::default())
                    .expect("node starts");
            let address = node.listen("127.0.0.1:0").await.expect("listen");
            let params = ClientParams {
                cluster: 9,
                id: Client::random_id(),
                target: 0,
            };
            let client =
                Client::start(&config, params, keys.clone(), address).expect("client starts");
            let (server, dialer) = quic_pair();
            let quic_address = node
                .listen_via("127.0.0.1:0", server)
                .await
                .expect("listen");
            let quic_params = ClientParams {
                cluster: 9,
                id: Client::random_id(),
                target: 0,
            };
            let quic_client = Client::start_via(&config, quic_params, keys, quic_address, dialer)
                .expect("client starts");
            let serve = async {
                let mut served = 0;
                while let Some(event) = events.recv().await {
                    if let NodeEvent::Request { request, body, .. } = event {
                        node.reply(request, body).expect("reply");
                        served += 1;
                        if served == 2 {
                            break;
                        }
                    }
                }
            };
            let (reply, quic_reply, ()) = tokio::join!(
                client.request(1, "traced".into()),
                quic_client.request(1, "over quic".into()),
                serve
            );
            assert_eq!(&reply.expect("a reply").body[..], b"traced");
            assert_eq!(&quic_reply.expect("a reply").body[..], b"over quic");
            client.shutdown(Duration::from_secs(1)).await;
            quic_client.shutdown(Duration::from_secs(1)).await;
            node.shutdown(Duration::from_secs(1)).await;
            (address, quic_address, params.id, quic_params.id)
        })
    });
    let (node_address, quic_address, client_id, quic_client_id) = node_address;
    // The socket tasks were polled inside their spans.
    assert!(
        entered.load(Ordering::Relaxed) > 0,
        "no connection span entered"
    );
    let spans = spans.lock().expect("lock");
    let field = |span: &BTreeMap<String, String>, name: &str| span.get(name).cloned();
    let accepted = spans
        .iter()
        .find(|s| field(s, "side").as_deref() == Some("accepted"))
        .unwrap_or_else(|| panic!("no accepted connection's span in {spans:?}"));
    assert_eq!(field(accepted, "transport").as_deref(), Some("tcp"));
    assert!(
        field(accepted, "remote").is_some_and(|r| r.starts_with("Some(127.0.0.1:")),
        "{accepted:?}"
    );
    assert!(
        field(accepted, "id").is_some_and(|id| id.starts_with("connection ")),
        "{accepted:?}"
    );
    assert_eq!(
        field(accepted, "local"),
        Some(node_address.to_string()),
        "{accepted:?}"
    );
    // Once the handshake named it: the client's plane and id.
    assert_eq!(
        field(accepted, "plane").as_deref(),
        Some("client"),
        "{accepted:?}"
    );
    assert_eq!(
        field(accepted, "peer"),
        Some(format!("{client_id:#x}")),
        "{accepted:?}"
    );
    let dialled = spans
        .iter()
        .find(|s| {
            field(s, "side").as_deref() == Some("dialled")
                && field(s, "transport").as_deref() == Some("tcp")
        })
        .unwrap_or_else(|| panic!("no dialled connection's span in {spans:?}"));
    assert_eq!(
        field(dialled, "remote"),
        Some(format!("Some({node_address})")),
        "{dialled:?}"
    );
    assert_eq!(
        field(dialled, "plane").as_deref(),
        Some("replica"),
        "{dialled:?}"
    );
    assert_eq!(field(dialled, "peer").as_deref(), Some("0"), "{dialled:?}");
    // QUIC connections share their port's task but have spans of their own.
    let quic = |side: &str| {
        spans
            .iter()
            .find(|s| {
                field(s, "side").as_deref() == Some(side)
                    && field(s, "transport").as_deref() == Some("quic")
            })
            .unwrap_or_else(|| panic!("no {side} QUIC connection's span in {spans:?}"))
    };
    let accepted = quic("accepted");
    assert!(
        field(accepted, "remote").is_some_and(|r| r.starts_with("Some(127.0.0.1:")),
        "{accepted:?}"
    );
    assert_eq!(
        field(accepted, "peer"),
        Some(format!("{quic_client_id:#x}")),
        "{accepted:?}"
    );
    assert_eq!(
        field(accepted, "local"),
        Some(quic_address.to_string()),
        "{accepted:?}"
    );
    let dialled = quic("dialled");
    assert_eq!(
        field(dialled, "remote"),
        Some(format!("Some({quic_address})")),
        "{dialled:?}"
    );
    assert_eq!(
        field(dialled, "plane").as_deref(),
        Some("replica"),
        "{dialled:?}"
    );
}

/// A QUIC listener's and dialler's transports, with a fresh certificate.
fn quic_pair() -> (bus_tokio::Transport, bus_tokio::Transport) {
    use bus_tokio::bus_proto::transport::tls::{
        CertificateDer, PrivateKeyDer, RootCertStore, TlsClient, TlsServer,
    };
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).expect("a key");
    let server = TlsServer::new(vec![cert.clone()], key).expect("a TLS server");
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("a root");
    let client = TlsClient::new(roots, "localhost").expect("a TLS client");
    (server.quic(), client.quic())
}
