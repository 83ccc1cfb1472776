//! The authenticated message bus on tokio.
//!
//! Binds the sans-IO state machines of [`bus_proto`] to tokio's TCP
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
//! vectored writes until done. One timer task sleeps until the core's next
//! deadline. The core sits behind one mutex that is never held across an
//! `.await`; every queue is bounded (the core's send queues, the event
//! queue, which pauses reading when full). Works on multi-threaded and
//! current-thread runtimes.
//!
//! Protocol decisions (who dials, handshakes, replay and dedup, backoff,
//! routing) all live in `bus_proto`; this crate moves bytes, sleeps and
//! spawns.

#![deny(unsafe_code)]

mod client;
mod clock;
mod driver;
mod error;
mod node;
mod shutdown;

pub use bus_proto;
pub use client::{Client, Link, Reply};
pub use clock::OsEntropy;
pub use error::{ClientError, ConnectError, ListenError, StartError};
pub use node::{Events, Node, NodeOptions};
pub use shutdown::ShutdownReport;
