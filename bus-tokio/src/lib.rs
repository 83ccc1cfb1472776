//! The authenticated message bus on tokio.
//!
//! Binds the sans-IO state machines of [`bus_proto`] to tokio's TCP and UDP
//! sockets and timers. A [`Node`] is a replica: it listens, dials its
//! higher-numbered peers on a backoff schedule, sends to replicas by id,
//! and answers client requests, reporting everything on its [`Events`]
//! stream. A [`Client`] sends requests to one replica and awaits replies,
//! resending across reconnects; the node runs each at most once.
//!
//! # Shape
//!
//! Each socket has one task that owns it: it reads into a reused buffer,
//! hands the bytes to the core, and writes the core's batches with
//! vectored writes until done. A QUIC listener (or a client dialling over
//! QUIC) has one task per UDP socket, running every connection on it. One
//! timer task sleeps until the core's next deadline. Works on
//! multi-threaded and current-thread runtimes.
//!
//! Protocol decisions (who dials, handshakes, replay and dedup, backoff,
//! routing) live in `bus_proto`, and so does the runtime-independent
//! driver (`bus_proto::host`: when sockets read, write and close, the
//! event queues and per-connection pauses, admission, reply waiters,
//! shutdown). This crate moves bytes, sleeps and spawns.

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
pub use runtime::{OsEntropy, Tokio};

/// A replica's node on tokio: [`bus_proto::host::Node`] on [`Tokio`].
///
/// ```no_run
/// use bus_tokio::{Node, NodeOptions};
/// use bus_tokio::bus_proto::config::Config;
/// use bus_tokio::bus_proto::crypto::{Key, KeyRing};
/// use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::default().validate()?;
/// let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
/// let params = NodeParams { cluster: 7, replica: 0, replica_count: 3, accept_clients: true };
/// let options = NodeOptions::default()
///     .peer(1, "127.0.0.1:7001".parse()?)
///     .peer(2, "127.0.0.1:7002".parse()?);
/// let (node, mut events) = Node::start(&config, params, keys, options)?;
/// node.listen("127.0.0.1:7000").await?;
/// while let Some(event) = events.recv().await {
///     if let NodeEvent::Request { request, body, .. } = event {
///         node.reply(request, body)?; // echo
///     }
/// }
/// # Ok(()) }
/// ```
pub type Node = bus_proto::host::Node<Tokio>;

/// A node's event stream on tokio: [`bus_proto::host::Events`].
pub type Events = bus_proto::host::Events<Tokio>;

/// A client of one replica on tokio: [`bus_proto::host::Client`] on
/// [`Tokio`]; a persistent identity's file is written on tokio's blocking
/// pool.
///
/// ```no_run
/// use bus_tokio::Client;
/// use bus_tokio::bus_proto::client::ClientParams;
/// use bus_tokio::bus_proto::config::Config;
/// use bus_tokio::bus_proto::crypto::{Key, KeyRing};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::default().validate()?;
/// let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
/// let params = ClientParams { cluster: 7, id: Client::random_id(), target: 0 };
/// let client = Client::start(&config, params, keys, "127.0.0.1:7000".parse()?)?;
/// let reply = client.request(1, "hello".into()).await?;
/// println!("{:?}", reply.body);
/// client.shutdown(std::time::Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
pub type Client = bus_proto::host::Client<Tokio>;
