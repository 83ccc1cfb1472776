//! The public handles every adapter offers, written once: [`Node`],
//! [`Events`] and [`Client`], generic over the runtime ([`Platform`]).
//!
//! An adapter supplies its runtime type and implements [`Platform`] (start
//! its background tasks, draw OS randomness) and [`Listen`] (bind a
//! listener and run its accept loop); its crate then exports
//! `type Node = bus_proto::host::Node<Tokio>` and the like. So the three
//! adapters have one API by construction: a method added here is on all
//! of them, with one set of docs.
//!
//! A handle is `Send` and `Sync` when the runtime's tasks may move
//! between threads, and neither when they are bound to the thread that
//! started them ([`Platform::Affinity`]).

mod client;
#[cfg(feature = "metrics")]
mod metrics;
mod node;

pub use client::Client;
pub use node::{Events, Node};

use super::{ListenError, Machine, NodeFront, Runtime, Shared, StartError, Transport};
use crate::entropy::Entropy;
use core::future::Future;
use core::net::SocketAddr;
use std::boxed::Box;
use std::sync::Arc;

/// A runtime the bus runs on, as its adapter binds it: what the public
/// handles need beyond the driver's [`Runtime`].
pub trait Platform: Runtime {
    /// Names the runtime in errors (`StartError::NoRuntime`).
    const NAME: &'static str;
    /// Marks the handles: `()` when the runtime's tasks may run on any
    /// thread, a `!Send` type (such as `Rc<()>`) when they stay on the
    /// thread that started them, which makes the handles `!Send` too.
    type Affinity: Unpin + 'static;

    /// The runtime the caller runs under, or `None` outside of one.
    fn current() -> Option<Self>;

    /// The operating system's random generator, for nonces and ids.
    fn entropy() -> Box<dyn Entropy + Send>;

    /// Starts the background tasks of a new node or client: the timer
    /// loop ([`Shared::run_timers`]) and, where the adapter carries QUIC,
    /// the UDP port its dials go out on.
    fn launch<M: Machine>(shared: &Arc<Shared<M, Self>>) -> Result<(), StartError>;
}

/// The runtime the caller runs under, or why there is none.
fn current_runtime<R: Platform>() -> Result<R, StartError> {
    R::current().ok_or(StartError::NoRuntime { runtime: R::NAME })
}

/// Binding a listener to addresses of type `A` (each runtime takes the
/// address forms its own sockets resolve: a `SocketAddr`, `"host:port"`
/// text, a tuple).
pub trait Listen<A>: Platform {
    /// Binds `address` for `transport` (TCP, or UDP for QUIC), starts the
    /// tasks that accept on it until shutdown, and returns the bound
    /// address.
    fn listen(
        node: &Arc<Shared<NodeFront, Self>>,
        address: A,
        transport: Transport,
    ) -> impl Future<Output = Result<SocketAddr, ListenError>>;
}
