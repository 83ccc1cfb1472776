//! Compile-time checks of the public API the three adapters share: each
//! adapter's handles are the one generic definition on its runtime, the
//! handles of the thread-agnostic runtimes (and their futures) can move
//! between threads, and compio's cannot (`compile_fail` doc tests in
//! `bus-compio`).

use bus_proto::host::{Client, Events, Node};
use std::net::SocketAddr;
use std::time::Duration;

/// Compiles only if `A` and `B` are the same type.
fn same_type<A, B>(a: A) -> B
where
    A: Into<B>,
    B: From<A>,
{
    a.into()
}

fn send_sync<T: Send + Sync>(_: &T) {}
fn send<T: Send>(_: T) {}

// Each adapter's handles are the generic ones on its runtime.
const _: fn(bus_tokio::Node) -> Node<bus_tokio::Tokio> = same_type;
const _: fn(bus_tokio::Events) -> Events<bus_tokio::Tokio> = same_type;
const _: fn(bus_tokio::Client) -> Client<bus_tokio::Tokio> = same_type;
const _: fn(bus_smol::Node) -> Node<bus_smol::Smol> = same_type;
const _: fn(bus_smol::Events) -> Events<bus_smol::Smol> = same_type;
const _: fn(bus_smol::Client) -> Client<bus_smol::Smol> = same_type;
const _: fn(bus_compio::Node) -> Node<bus_compio::Compio> = same_type;
const _: fn(bus_compio::Events) -> Events<bus_compio::Compio> = same_type;
const _: fn(bus_compio::Client) -> Client<bus_compio::Compio> = same_type;

/// Only has to compile (never called). A multi-threaded application moves
/// handles and their futures into spawned tasks.
#[allow(dead_code)]
async fn thread_agnostic_handles_and_futures_are_send(
    tokio_node: bus_tokio::Node,
    tokio_client: bus_tokio::Client,
    smol_node: bus_smol::Node,
    smol_client: bus_smol::Client,
    events: bus_tokio::Events,
) {
    send_sync(&tokio_node);
    send_sync(&tokio_client);
    send_sync(&smol_node);
    send_sync(&smol_client);
    send(events);
    let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
    send(tokio_node.listen(address));
    send(tokio_node.listen("127.0.0.1:0"));
    send(smol_node.listen(address));
    send(tokio_node.send_wait(1, 0, bytes::Bytes::new()));
    send(tokio_node.shutdown(Duration::ZERO));
    send(tokio_client.request(1, bytes::Bytes::new()));
    send(smol_client.request(1, bytes::Bytes::new()));
    send(smol_client.connected());
}

/// `start_in` names the runtime, so a node may be started from a thread
/// outside it: on tokio the QUIC dial port registers in the named runtime
/// (it used to need the caller's context); on compio, whose tasks stay on
/// the starting thread, a thread without a compio runtime is refused with
/// `NoRuntime` instead of panicking.
#[test]
fn start_in_works_from_outside_the_runtime() {
    use bus_proto::host::{NodeOptions, Platform, StartError};
    use bus_proto::transport::BindingPolicy;
    use bus_tests::tls::Identity;
    use bus_tests::{cluster::params, config, keys};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let identity = Identity::new(&["localhost"]);
    let mut options = NodeOptions::default();
    let dial = identity
        .client("localhost", BindingPolicy::TlsExporter)
        .quic();
    options.peer_transports.insert(1, dial);
    let tokio = bus_tokio::Tokio::on(runtime.handle().clone());
    let (node, _events) = Node::start_in(tokio, &config(), params(0, 2), keys(1), options)
        .expect("a QUIC dial port opens in the named runtime");
    let connections = runtime.block_on(async { node.connections() });
    assert_eq!(connections, 0, "nothing dialled without an address");
    drop(node);

    let compio = std::thread::spawn(|| {
        let compio = compio::runtime::Runtime::new().unwrap();
        compio.block_on(async { bus_compio::Compio::current() })
    })
    .join()
    .unwrap()
    .expect("a compio runtime on that thread");
    let refused = Node::start_in(
        compio,
        &config(),
        params(0, 1),
        keys(1),
        NodeOptions::default(),
    );
    assert!(
        matches!(refused, Err(StartError::NoRuntime { runtime: "compio" })),
        "{refused:?}"
    );
}
