//! The authenticated message bus on compio.
//!
//! Binds the sans-IO state machines of [`bus_proto`] to compio's
//! completion-based sockets, with the same API as `bus-tokio`: a [`Node`]
//! is a replica (listen, dial the higher-numbered peers, send by replica
//! id, answer client requests, report on its [`Events`] stream); a
//! [`Client`] sends requests to one replica and awaits replies.
//!
//! compio runs one runtime per thread with `!Send` tasks, and so are this
//! crate's handles: start and use a node or client on the thread whose
//! runtime runs it. The runtime uses io_uring where the kernel offers it
//! and falls back to epoll otherwise; a runtime built with
//! `ProactorBuilder::driver_type` picks one explicitly.
//!
//! ```no_run
//! use bus_compio::{Client, Node, NodeOptions};
//! use bus_compio::bus_proto::client::ClientParams;
//! use bus_compio::bus_proto::config::Config;
//! use bus_compio::bus_proto::crypto::{Key, KeyRing};
//! use bus_compio::bus_proto::node::{NodeEvent, NodeParams};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! compio::runtime::Runtime::new()?.block_on(async {
//!     let config = Config::default().validate()?;
//!     let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
//!     let params = NodeParams { cluster: 7, replica: 0, replica_count: 1, accept_clients: true };
//!     let (node, mut events) = Node::start(&config, params, keys.clone(), NodeOptions::default())?;
//!     let address = node.listen("127.0.0.1:0").await?;
//!
//!     let client_params = ClientParams { cluster: 7, id: Client::random_id(), target: 0 };
//!     let client = Client::start(&config, client_params, keys, address)?;
//!     let reply = compio::runtime::spawn(async move { client.request(1, "ping".into()).await });
//!     if let Some(NodeEvent::Request { request, body, .. }) = events.recv().await {
//!         node.reply(request, body)?; // echo
//!     }
//!     assert_eq!(&reply.await.expect("task")?.body[..], b"ping");
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # Shape
//!
//! Each socket has one task that owns it. Reads and writes are owned-buffer
//! operations that stay in flight across the task's wake-ups (cancelling a
//! completion-based read could lose bytes already received): a read takes
//! the core's receive buffer and gives it back with the new bytes, a write
//! takes a whole batch as one vectored send. One timer task sleeps until
//! the core's next deadline. Protocol decisions and the
//! runtime-independent driver live in `bus_proto` (and `bus_proto::host`);
//! this crate moves bytes, sleeps and spawns.

#![deny(unsafe_code)]

mod listen;
#[cfg(feature = "quic")]
mod quic;
mod runtime;
mod through;

pub use bus_proto;
pub use bus_proto::client::Reservation;
pub use bus_proto::client::identity::file::ClientIdentity;
pub use bus_proto::host::{
    ClientError, ConnectError, Link, ListenError, NodeOptions, Reply, ShutdownReport, StartError,
    Transport,
};
pub use runtime::{Compio, OsEntropy};

/// A replica's node on compio: [`bus_proto::host::Node`] on [`Compio`]
/// (the crate's documentation starts one and a client).
/// `!Send`: it lives on the thread whose runtime started it.
///
/// The handles cannot leave their thread:
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// fn check(node: bus_compio::Node) {
///     send(node);
/// }
/// ```
pub type Node = bus_proto::host::Node<Compio>;

/// A node's event stream on compio: [`bus_proto::host::Events`], `!Send`.
pub type Events = bus_proto::host::Events<Compio>;

/// A client of one replica on compio: [`bus_proto::host::Client`] on
/// [`Compio`], `!Send`; a persistent identity's file is written on
/// compio's blocking pool.
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// fn check(client: bus_compio::Client) {
///     send(client);
/// }
/// ```
pub type Client = bus_proto::host::Client<Compio>;
