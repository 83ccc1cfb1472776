//! The authenticated message bus on smol.
//!
//! Binds the sans-IO state machines of [`bus_proto`] to async-io's
//! sockets and timers, with the same API as `bus-tokio`: a [`Node`] is a
//! replica (listen, dial the higher-numbered peers, send by replica id,
//! answer client requests, report on its [`Events`] stream); a [`Client`]
//! sends requests to one replica and awaits replies.
//!
//! # Executors
//!
//! By default the bus's tasks run on smol's global executor
//! (`smol::spawn`), which runs on its own threads (`SMOL_THREADS`, default
//! 1), and its sockets and timers on async-io's process-wide reactor. So
//! the handles work under any executor: `smol::block_on`,
//! `async_std::task::block_on` (async-std is discontinued; this crate is
//! its replacement for the bus), `futures::executor::block_on`.
//!
//! `Node::start_in` and `Client::start_in` with [`Smol::on`] put the tasks
//! on an [`smol::Executor`] the program runs instead; with the application on
//! the same executor thread, no wake-up crosses threads, which shortens
//! the round trip several-fold (`cargo bench -p bus-tests --bench
//! runtimes` shows both).
//!
//! ```no_run
//! use bus_smol::{Client, Node, NodeOptions};
//! use bus_smol::bus_proto::client::ClientParams;
//! use bus_smol::bus_proto::config::Config;
//! use bus_smol::bus_proto::crypto::{Key, KeyRing};
//! use bus_smol::bus_proto::node::{NodeEvent, NodeParams};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let config = Config::default().validate()?;
//!     let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
//!     let params = NodeParams { cluster: 7, replica: 0, replica_count: 1, accept_clients: true };
//!     let (node, mut events) = Node::start(&config, params, keys.clone(), NodeOptions::default())?;
//!     let address = node.listen("127.0.0.1:0").await?;
//!
//!     let client_params = ClientParams { cluster: 7, id: Client::random_id(), target: 0 };
//!     let client = Client::start(&config, client_params, keys, address)?;
//!     let reply = smol::spawn(async move { client.request(1, "ping".into()).await });
//!     if let Some(NodeEvent::Request { request, body, .. }) = events.recv().await {
//!         node.reply(request, body)?; // echo
//!     }
//!     assert_eq!(&reply.await?.body[..], b"ping");
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # Shape
//!
//! Each socket has one task that owns it: it reads straight into the
//! core's receive buffer and writes the core's batches with vectored
//! writes. One timer task sleeps until the core's next deadline. Protocol
//! decisions and the runtime-independent driver live in `bus_proto` (and
//! `bus_proto::host`); this crate moves bytes, sleeps and spawns.

#![deny(unsafe_code)]

mod listen;
#[cfg(feature = "quic")]
mod quic;
mod runtime;

pub use bus_proto;
pub use bus_proto::client::Reservation;
pub use bus_proto::client::identity::file::ClientIdentity;
pub use bus_proto::host::{
    ClientError, ConnectError, Link, ListenError, NodeOptions, Reply, ShutdownReport, StartError,
    Transport,
};
pub use runtime::{OsEntropy, Smol};

/// A replica's node on smol: [`bus_proto::host::Node`] on [`Smol`]
/// (the crate's documentation starts one and a client).
pub type Node = bus_proto::host::Node<Smol>;

/// A node's event stream on smol: [`bus_proto::host::Events`].
pub type Events = bus_proto::host::Events<Smol>;

/// A client of one replica on smol: [`bus_proto::host::Client`] on
/// [`Smol`]; a persistent identity's file is written on smol's blocking
/// pool.
pub type Client = bus_proto::host::Client<Smol>;
