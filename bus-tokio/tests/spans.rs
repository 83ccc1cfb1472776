//! Every socket task runs in a tracing span naming its connection: id,
//! side (accepted or dialled), transport and remote address, so whatever
//! is logged for a connection says which one it is.

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
    fn record(&self, _: &Id, _: &Record<'_>) {}
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
            let client = Client::start(&config, params, keys, address).expect("client starts");
            let serve = async {
                while let Some(event) = events.recv().await {
                    if let NodeEvent::Request { request, body, .. } = event {
                        node.reply(request, body).expect("reply");
                        break;
                    }
                }
            };
            let (reply, ()) = tokio::join!(client.request(1, "traced".into()), serve);
            assert_eq!(&reply.expect("a reply").body[..], b"traced");
            client.shutdown(Duration::from_secs(1)).await;
            node.shutdown(Duration::from_secs(1)).await;
            address
        })
    });
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
    let dialled = spans
        .iter()
        .find(|s| field(s, "side").as_deref() == Some("dialled"))
        .unwrap_or_else(|| panic!("no dialled connection's span in {spans:?}"));
    assert_eq!(
        field(dialled, "remote"),
        Some(format!("Some({node_address})")),
        "{dialled:?}"
    );
}
