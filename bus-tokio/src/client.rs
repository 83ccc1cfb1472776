//! A client on tokio: requests that resolve to replies.

use crate::clock::{Clock, OsEntropy};
use crate::driver::{Machine, Owner, Shared};
use crate::error::{ClientError, ConnectError, StartError};
use crate::shutdown::{ShutdownReport, Tally};
use bus_proto::client::{self, ClientEvent, ClientParams, ClientStats, RequestFailure};
use bus_proto::config::ValidConfig;
use bus_proto::connection::{CloseCause, Transmit};
use bus_proto::crypto::KeyRing;
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, ConnectionId};
use bus_proto::time::{Instant, Now};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// A reply to [`Client::request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's number.
    pub request: u64,
    /// The reply's operation tag.
    pub operation: u32,
    /// The body.
    pub body: Bytes,
}

/// The state of the client's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Dialling (first connection or after a loss).
    Connecting,
    /// Authenticated to this replica.
    Connected {
        /// The replica.
        replica: u8,
    },
    /// The last connection ended; redialling after a backoff.
    Disconnected {
        /// Why it ended.
        cause: CloseCause,
    },
    /// The last dial failed its handshake (for instance the node rejected
    /// our key); redialling after a backoff.
    HandshakeFailed {
        /// Why, with the node's status if it answered.
        cause: CloseCause,
    },
    /// The last TCP connect failed (nothing listens, unreachable);
    /// redialling after a backoff.
    Unreachable {
        /// The OS error.
        error: String,
    },
    /// Shut down.
    ShutDown,
}

type Waiter = oneshot::Sender<Result<Reply, RequestFailure>>;

pub(crate) struct ClientMachine {
    client: client::Client,
    /// One per outstanding request, so bounded by `client_max_outstanding`.
    waiting: HashMap<u64, Waiter>,
    link: watch::Sender<Link>,
    tally: Option<Tally>,
}

impl Machine for ClientMachine {
    fn take_read_buffer(&mut self, id: ConnectionId) -> Option<BytesMut> {
        self.client.read_buffer(id).map(std::mem::take)
    }
    fn handle_read(&mut self, now: Now, id: ConnectionId, buffer: BytesMut) {
        // A stale id means the connection is already gone; the socket task
        // learns that from `Disconnect`.
        if let Some(slot) = self.client.read_buffer(id) {
            *slot = buffer;
            let _ = self.client.handle_read(now, id);
        }
    }
    fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        self.client.handle_eof(now, id);
    }
    fn handle_timeout(&mut self, now: Now) {
        self.client.handle_timeout(now);
    }
    fn connected(&mut self, now: Now, id: ConnectionId) -> bool {
        self.client.connected(now, id, Binding::NONE).is_ok()
    }
    fn connect_failed(&mut self, now: Now, id: ConnectionId) {
        self.client.connect_failed(now, id);
    }
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit> {
        self.client.poll_transmit_for(now, id)
    }
    fn poll_ready(&mut self) -> Option<ConnectionId> {
        self.client.poll_ready()
    }
    fn poll_action(&mut self) -> Option<Action> {
        self.client.poll_action()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }
    fn deliver(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::Reply {
                    request,
                    operation,
                    body,
                } => {
                    if let Some(waiter) = self.waiting.remove(&request) {
                        // The caller may have stopped waiting; that is fine.
                        let _ = waiter.send(Ok(Reply {
                            request,
                            operation,
                            body,
                        }));
                    }
                }
                ClientEvent::Failed { request, reason } => {
                    if let Some(waiter) = self.waiting.remove(&request) {
                        let _ = waiter.send(Err(reason));
                    }
                }
                ClientEvent::Connected { replica } => {
                    tracing::debug!(replica, "client connected");
                    self.link.send_replace(Link::Connected { replica });
                }
                ClientEvent::Disconnected { cause } => {
                    tracing::debug!(%cause, "client disconnected");
                    if let Some(tally) = &mut self.tally {
                        tally.closed(&cause);
                    }
                    self.link.send_replace(Link::Disconnected { cause });
                }
                ClientEvent::HandshakeFailed { cause } => {
                    tracing::debug!(%cause, "client handshake failed");
                    if let Some(tally) = &mut self.tally {
                        tally.closed(&cause);
                    }
                    self.link.send_replace(Link::HandshakeFailed { cause });
                }
            }
        }
    }
    fn reading_paused(&self) -> bool {
        // Replies go straight to their waiters.
        false
    }
    fn connections(&self) -> usize {
        self.client.connections()
    }
    fn dial_error(&mut self, error: &std::io::Error) {
        if self.tally.is_none() {
            self.link.send_replace(Link::Unreachable {
                error: error.to_string(),
            });
        }
    }
}

/// A client of one replica, on tokio. Cheap to clone; clones share the
/// connection and the request numbering.
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
#[derive(Clone)]
pub struct Client {
    shared: Arc<Owner<ClientMachine>>,
    link: watch::Receiver<Link>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("link", &*self.link.borrow())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A fresh random client id. Keep it for the life of the process: the
    /// node recognises retries by it.
    pub fn random_id() -> u128 {
        client::Client::random_id(&mut OsEntropy)
    }

    /// Starts a client of `params.target`, which listens at `address`, on
    /// the current tokio runtime.
    pub fn start(
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        address: SocketAddr,
    ) -> Result<Client, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let clock = Clock::new();
        let (link, receiver) = watch::channel(Link::Connecting);
        let machine = ClientMachine {
            client: client::Client::new(clock.now(), config, params, keys, Box::new(OsEntropy)),
            waiting: HashMap::new(),
            link,
            tally: None,
        };
        let shared = Shared::start(
            machine,
            clock,
            handle,
            64 << 10,
            config.close_grace,
            [(params.target, address)],
        );
        let shared = Arc::new(Owner(shared));
        Ok(Client {
            shared,
            link: receiver,
        })
    }

    /// Sends a request and waits for its reply. A request is resent on
    /// every reconnect until answered or `request_timeout` passes; the node
    /// runs it at most once. Dropping the future does not cancel the
    /// request.
    pub async fn request(&self, operation: u32, body: Bytes) -> Result<Reply, ClientError> {
        let (tx, rx) = oneshot::channel();
        let number = self.shared.with(|m, now| {
            let number = m.client.request(now, operation, body)?;
            m.waiting.insert(number, tx);
            Ok::<_, ClientError>(number)
        })?;
        match rx.await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(reason)) => Err(ClientError::Failed {
                request: number,
                reason,
            }),
            Err(_) => Err(ClientError::ShutDown),
        }
    }

    /// The connection's state now.
    pub fn link(&self) -> Link {
        self.link.borrow().clone()
    }

    /// Waits for the next connection attempt to finish: the replica it
    /// reached, or why it failed (with the node's status when it rejected
    /// us). Returns at once if connected or shut down.
    pub async fn connected(&self) -> Result<u8, ConnectError> {
        let mut link = self.link.clone();
        loop {
            match &*link.borrow_and_update() {
                Link::Connected { replica } => return Ok(*replica),
                Link::HandshakeFailed { cause } => {
                    return Err(ConnectError::Handshake(cause.clone()));
                }
                Link::Unreachable { error } => {
                    return Err(ConnectError::Unreachable(error.clone()));
                }
                Link::ShutDown => return Err(ConnectError::ShutDown),
                Link::Connecting | Link::Disconnected { .. } => {}
            }
            if link.changed().await.is_err() {
                return Err(ConnectError::ShutDown);
            }
        }
    }

    /// Moves to another replica, listening at `address`.
    pub fn retarget(&self, replica: u8, address: SocketAddr) {
        self.shared.set_address(replica, address);
        self.shared.with(|m, now| m.client.retarget(now, replica));
    }

    /// This client's id.
    pub fn id(&self) -> u128 {
        self.shared.lock().machine.client.id()
    }

    /// Counters since the client started.
    pub fn stats(&self) -> ClientStats {
        self.shared.lock().machine.client.stats()
    }

    /// Closes the connection gracefully within `deadline`. Requests still
    /// waiting fail with [`ClientError::ShutDown`].
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let Some(total) = self.shared.with(|m, now| {
            if m.tally.is_some() {
                return None;
            }
            m.tally = Some(Tally::default());
            let total = m.client.connections();
            m.client.shutdown(now);
            m.waiting.clear();
            Some(total)
        }) else {
            return ShutdownReport::default();
        };
        let stragglers = self.shared.drain(deadline).await;
        let state = self.shared.lock();
        state.machine.link.send_replace(Link::ShutDown);
        let timed_out = state.machine.tally.map_or(0, |t| t.forced);
        ShutdownReport::new(total, timed_out + stragglers)
    }
}
