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

mod client;
mod node;
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
pub use client::Client;
pub use node::{Events, Node};
pub use runtime::OsEntropy;
