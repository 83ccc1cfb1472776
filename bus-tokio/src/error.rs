//! The adapter's own errors; protocol errors come from `bus_proto`.

use bus_proto::client::{RequestError, RequestFailure};
use bus_proto::node::NodeError;

/// A node or client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Started outside a tokio runtime.
    #[error("no tokio runtime: start the bus from inside one")]
    NoRuntime,
    /// The node's parameters are invalid.
    #[error(transparent)]
    Node(#[from] NodeError),
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
