//! The adapters' own errors; protocol errors come from the core modules.

use crate::client::{RequestError, RequestFailure};
use crate::connection::CloseCause;
use crate::node::NodeError;
use std::string::String;

/// A node or client could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Started outside the adapter's runtime.
    #[error("no {runtime} runtime: start the bus from inside one")]
    NoRuntime {
        /// Which runtime was missing.
        runtime: &'static str,
    },
    /// The node's parameters are invalid.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A dial transport could not be set up.
    #[error("the {transport} transport could not start: {error}")]
    Transport {
        /// The transport's name.
        transport: &'static str,
        /// What went wrong.
        error: String,
    },
}

/// Binding the listening socket failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen: {source}")]
pub struct ListenError {
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A client request did not get a reply.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request was not accepted; nothing was sent.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The request ended without a reply.
    #[error("request {request} failed: {reason:?}")]
    Failed {
        /// The request number.
        request: u64,
        /// Why.
        reason: RequestFailure,
    },
    /// The client shut down before the reply came.
    #[error("the client shut down")]
    ShutDown,
}

/// A client's connection attempt did not succeed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection was made but the handshake failed; a node that
    /// rejected us says why ([`CloseCause::Rejected`] with its status).
    #[error("handshake failed: {0}")]
    Handshake(CloseCause),
    /// The TCP connect failed.
    #[error("cannot connect: {error}")]
    Unreachable {
        /// The OS error's kind, to act on (`ConnectionRefused`: nothing
        /// listens; `TimedOut`, `HostUnreachable`: the network).
        kind: std::io::ErrorKind,
        /// The OS error, as text.
        error: String,
    },
    /// The client shut down.
    #[error("the client shut down")]
    ShutDown,
}
