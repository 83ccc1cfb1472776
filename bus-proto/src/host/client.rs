//! A client as the adapters run it: the core client plus reply waiters and
//! the connection's state.

use super::Machine;
use super::driver::{Runtime, Shared, State, first};
use super::error::{ClientError, ConnectError};
use super::shutdown::{ShutdownReport, Tally};
use super::signal::Waiters;
use crate::client::identity::file::{ClientIdentity, IdentityError};
use crate::client::{self, ClientEvent, ClientParams, ClientStats, RequestFailure, Reservation};
use crate::config::ValidConfig;
use crate::connection::{CloseCause, LentDecoder, Transmit, Unsealed};
use crate::crypto::KeyRing;
use crate::entropy::Entropy;
use crate::handshake::Binding;
use crate::node::{Action, ConnectionId};
use crate::sorted_deque::SortedDeque;
use crate::time::{Instant, Now};
use crate::wire::AppHeader;
use bytes::{Bytes, BytesMut};
use core::future::poll_fn;
use core::task::{Poll, Waker};
use core::time::Duration;
use std::boxed::Box;
use std::string::{String, ToString};
use std::sync::{Arc, Mutex};

/// A reply to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request's number.
    pub request: u64,
    /// The reply's operation tag.
    pub operation: u32,
    /// The reply's header fields: `view`, `release`, application area.
    pub app: AppHeader,
    /// The body.
    pub body: Bytes,
}

/// The state of a client's connection.
#[non_exhaustive]
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
        /// The OS error's kind (`ConnectionRefused`, `TimedOut`, ...).
        kind: std::io::ErrorKind,
        /// The OS error, as text.
        error: String,
    },
    /// Shut down.
    ShutDown,
}

/// One outstanding request's answer, and the task waiting for it.
#[derive(Default)]
struct Waiting {
    answer: Option<Result<Reply, RequestFailure>>,
    waker: Option<Waker>,
}

/// The core client plus what its application waits on.
pub struct ClientFront {
    client: client::Client,
    /// One per request whose caller still waits, so bounded by
    /// `client_max_outstanding`. Sorted by request number, which mostly
    /// rises: a request is an append and its answer a front removal.
    waiting: SortedDeque<u64, Waiting>,
    link: Link,
    link_waiters: Waiters,
    tally: Option<Tally>,
    /// The persistent identity whose lease the client renews; written
    /// off the runtime's threads ([`Runtime::run_blocking`]).
    identity: Option<Arc<Mutex<ClientIdentity>>>,
    /// Requests waiting for a lease renewal to land.
    lease_waiters: Waiters,
}

impl ClientFront {
    /// A client started at `now` under an id drawn for this process.
    pub fn new(
        now: Now,
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        entropy: Box<dyn Entropy + Send>,
    ) -> Self {
        Self::front(
            client::Client::new(now, config, params, keys, entropy),
            None,
        )
    }

    /// A client started at `now` under a persistent `identity`, of replica
    /// `target` in `cluster`.
    pub fn with_identity(
        now: Now,
        config: &ValidConfig,
        cluster: u128,
        target: u8,
        identity: ClientIdentity,
        keys: KeyRing,
        entropy: Box<dyn Entropy + Send>,
    ) -> Self {
        let params = ClientParams {
            cluster,
            id: identity.id(),
            target,
        };
        let lease = identity.lease();
        let client = client::Client::with_lease(now, config, params, lease, keys, entropy);
        Self::front(client, Some(Arc::new(Mutex::new(identity))))
    }

    /// The identity and the mark to store, when the client asks for one.
    fn renewal(&mut self, now: Now) -> Option<(Arc<Mutex<ClientIdentity>>, u64)> {
        // The identity is cloned only when a renewal is asked for.
        let identity = self.identity.as_ref()?;
        let until = self.client.poll_lease(now)?;
        Some((Arc::clone(identity), until))
    }

    fn front(client: client::Client, identity: Option<Arc<Mutex<ClientIdentity>>>) -> Self {
        ClientFront {
            client,
            waiting: SortedDeque::default(),
            link: Link::Connecting,
            link_waiters: Waiters::default(),
            tally: None,
            identity,
            lease_waiters: Waiters::default(),
        }
    }

    fn set_link(&mut self, link: Link) {
        self.link = link;
        self.link_waiters.notify_all();
    }

    fn answer(&mut self, request: u64, answer: Result<Reply, RequestFailure>) {
        // No entry: the caller stopped waiting.
        if let Some(waiting) = self.waiting.get_mut(request) {
            waiting.answer = Some(answer);
            if let Some(waker) = waiting.waker.take() {
                waker.wake();
            }
        }
    }
}

impl Machine for ClientFront {
    forward_socket_io!(client);

    fn handle_read(&mut self, now: Now, id: ConnectionId, buffer: BytesMut) {
        // A stale id means the connection is already gone; the socket
        // task learns that from `Disconnect`.
        if let Some(slot) = self.client.read_buffer(id) {
            *slot = buffer;
            let _ = self.client.handle_read(now, id);
        }
    }

    fn handle_verified(&mut self, now: Now, id: ConnectionId, decoder: LentDecoder) {
        self.client.handle_verified(now, id, decoder);
    }

    fn deliver(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::Reply {
                    request,
                    operation,
                    app,
                    body,
                } => self.answer(
                    request,
                    Ok(Reply {
                        request,
                        operation,
                        app,
                        body,
                    }),
                ),
                ClientEvent::Failed { request, reason } => self.answer(request, Err(reason)),
                ClientEvent::Connected { replica } => {
                    tracing::debug!(replica, "client connected");
                    self.set_link(Link::Connected { replica });
                }
                ClientEvent::Disconnected { cause } => {
                    tracing::debug!(%cause, "client disconnected");
                    if let Some(tally) = &mut self.tally {
                        tally.closed(&cause);
                    }
                    self.set_link(Link::Disconnected { cause });
                }
                ClientEvent::HandshakeFailed { cause } => {
                    tracing::debug!(%cause, "client handshake failed");
                    if let Some(tally) = &mut self.tally {
                        tally.closed(&cause);
                    }
                    self.set_link(Link::HandshakeFailed { cause });
                }
            }
        }
    }
    fn dial_error(&mut self, error: &std::io::Error) {
        if self.tally.is_none() {
            self.set_link(Link::Unreachable {
                kind: error.kind(),
                error: error.to_string(),
            });
        }
    }
}

fn link_waiters(state: &mut State<ClientFront>) -> &mut Waiters {
    &mut state.machine.link_waiters
}

fn lease_waiters(state: &mut State<ClientFront>) -> &mut Waiters {
    &mut state.machine.lease_waiters
}

/// Reports a lease write's outcome to the client, exactly once: a job that
/// never reports (it panicked, or its task was dropped) counts as failed,
/// so no request waits for it forever.
struct LeaseOutcome<R: Runtime> {
    shared: Option<Arc<Shared<ClientFront, R>>>,
    until: u64,
}

impl<R: Runtime> LeaseOutcome<R> {
    fn report(&mut self, stored: Result<(), IdentityError>) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        if let Err(error) = &stored {
            tracing::warn!(%error, "client identity: the next lease is not stored");
        }
        let now = shared.runtime().now();
        // Not `with`: this may run while the runtime winds down.
        let mut state = shared.lock();
        let front = &mut state.machine;
        match stored {
            Ok(()) => front.client.lease_extended(self.until),
            Err(_) => front.client.lease_failed(now),
        }
        front.lease_waiters.notify_all();
    }
}

impl<R: Runtime> Drop for LeaseOutcome<R> {
    fn drop(&mut self) {
        if self.shared.is_some() {
            self.report(Err(IdentityError::Abandoned));
        }
    }
}

/// Forgets a request when its caller stops waiting: its waiter, and its
/// slot among the client's outstanding requests, so a loop of abandoned
/// requests cannot lock the client out with `TooManyOutstanding`.
struct Forget<'a, R: Runtime> {
    shared: &'a Shared<ClientFront, R>,
    request: u64,
}

impl<R: Runtime> Drop for Forget<'_, R> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let waiting = state.machine.waiting.remove(self.request);
        // Answered requests already left the outstanding set.
        if waiting.is_some_and(|w| w.answer.is_none()) {
            state.machine.client.abandon(self.request);
        }
    }
}

/// What every adapter's `Client` forwards to.
impl<R: Runtime> Shared<ClientFront, R> {
    /// Sends a request and waits for its reply; see `Client::request`.
    pub async fn request(
        self: &Arc<Self>,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.send_and_wait(|m, now| {
            m.client
                .request_with(now, operation, app.clone(), body.clone())
        })
        .await
    }

    /// Issues the next request number; see `Client::reserve`. Unlike a
    /// request, it does not wait for a lease renewal under way.
    pub fn reserve(self: &Arc<Self>) -> Result<Reservation, ClientError> {
        let (reserved, renewal) = self.with(|m, now| {
            let reserved = m.client.reserve(now);
            (reserved, m.renewal(now))
        });
        self.store_lease(renewal);
        Ok(reserved?)
    }

    /// Sends the request `reservation` numbers and waits for its reply;
    /// see `Client::submit`.
    pub async fn submit(
        self: &Arc<Self>,
        reservation: Reservation,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        let request = reservation.request;
        self.send_and_wait(|m, now| {
            // A caller still waits for this number's reply.
            if m.waiting.contains_key(request) {
                return Err(client::RequestError::AlreadyOutstanding { request });
            }
            m.client
                .submit_with(now, reservation, operation, app.clone(), body.clone())
                .map(|()| request)
        })
        .await
    }

    /// Sends with `send` and waits for the reply. A request that finds the
    /// lease spent while its renewal is being written waits for the write,
    /// for at most `request_timeout`.
    async fn send_and_wait(
        self: &Arc<Self>,
        mut send: impl FnMut(&mut ClientFront, Now) -> Result<u64, client::RequestError>,
    ) -> Result<Reply, ClientError> {
        let mut deadline = None;
        let request = loop {
            let (sent, renewal) = self.with(|m, now| {
                // Asked before the attempt too: a spent lease whose failed
                // write may be retried now is renewed, and this request
                // waits for it.
                let early = m.renewal(now);
                let sent = match send(m, now) {
                    Ok(request) => {
                        m.waiting.insert(request, Waiting::default());
                        Ok(Ok(Some(request)))
                    }
                    Err(client::RequestError::LeaseExhausted { until })
                        if m.client.lease_pending() =>
                    {
                        let timeout = m.client.config().request_timeout;
                        let at = *deadline.get_or_insert(now.mono.saturating_add(timeout));
                        Ok((at > now.mono).then_some(None).ok_or(until))
                    }
                    Err(error) => Err(error),
                };
                // Asked after every attempt, refused ones too, so that a
                // failed write is retried.
                (sent, early.or_else(|| m.renewal(now)))
            });
            self.store_lease(renewal);
            match sent? {
                Ok(Some(request)) => break request,
                Err(until) => {
                    return Err(client::RequestError::LeaseExhausted { until }.into());
                }
                Ok(None) => {
                    let Some(at) = deadline else { continue };
                    let landed = self.wait_in(lease_waiters, |state| {
                        let (front, client) = (&state.machine, &state.machine.client);
                        let done = !client.lease_pending() || front.tally.is_some();
                        (done || client.lease().remaining() > 0).then_some(())
                    });
                    // Past the deadline the next attempt reports the error.
                    first(landed, self.runtime().sleep_until(at)).await;
                }
            }
        };
        let _forget = Forget {
            shared: self,
            request,
        };
        poll_fn(|cx| {
            let mut state = self.lock();
            let Some(waiting) = state.machine.waiting.get_mut(request) else {
                return Poll::Ready(Err(ClientError::ShutDown));
            };
            match waiting.answer.take() {
                Some(Ok(reply)) => Poll::Ready(Ok(reply)),
                Some(Err(reason)) => Poll::Ready(Err(ClientError::Failed { request, reason })),
                None => {
                    waiting.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Stores the identity's next lease mark, if the client asked for one,
    /// on a thread that may block; the client issues past the current lease
    /// only once the write is durable. However the job ends (stored,
    /// failed, panicked, cancelled), the client learns of it.
    fn store_lease(self: &Arc<Self>, renewal: Option<(Arc<Mutex<ClientIdentity>>, u64)>) {
        let Some((identity, until)) = renewal else {
            return;
        };
        let mut outcome = LeaseOutcome {
            shared: Some(Arc::clone(self)),
            until,
        };
        self.runtime().run_blocking(
            move || {
                // A panicking `Filesystem` must not take a runtime thread
                // (or smol's executor) down with it.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut identity = identity.lock().unwrap_or_else(|e| e.into_inner());
                    identity.extend(until)
                }))
                .unwrap_or(Err(IdentityError::Abandoned))
            },
            move |stored| outcome.report(stored),
        );
    }

    /// The connection's state now.
    pub fn link(&self) -> Link {
        self.read(|m| m.link.clone())
    }

    /// Waits until the connection attempt under way finishes; see
    /// `Client::connected`.
    pub async fn connected(&self) -> Result<u8, ConnectError> {
        self.wait_in(link_waiters, |state| match &state.machine.link {
            Link::Connected { replica } => Some(Ok(*replica)),
            Link::HandshakeFailed { cause } => Some(Err(ConnectError::Handshake(cause.clone()))),
            Link::Unreachable { kind, error } => Some(Err(ConnectError::Unreachable {
                kind: *kind,
                error: error.clone(),
            })),
            Link::ShutDown => Some(Err(ConnectError::ShutDown)),
            Link::Connecting | Link::Disconnected { .. } => None,
        })
        .await
    }

    /// Moves the client to replica `replica`, listening at `address`.
    pub fn retarget(self: &Arc<Self>, replica: u8, address: core::net::SocketAddr) {
        self.set_address(replica, address);
        // The new replica is dialled as the old one was: never a silent
        // fall back to plain TCP from TLS or QUIC.
        self.keep_transport(|m| m.client.target(), replica);
        self.with(|m, now| m.client.retarget(now, replica));
    }

    /// The client's id.
    pub fn id(&self) -> u128 {
        self.read(|m| m.client.id())
    }

    /// The client's connection (connecting or open), now.
    pub fn connection_info(&self) -> Option<crate::node::ConnectionInfo> {
        let now = self.runtime().now().mono;
        self.read(|m| m.client.connection_info(now))
    }

    /// Replaces the client's keys for its next handshakes.
    pub fn set_keys(&self, keys: crate::crypto::KeyRing) {
        self.lock().machine.client.set_keys(keys);
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        self.read(|m| m.client.stats())
    }

    /// Closes the connection within `deadline`; requests still waiting
    /// fail with [`ClientError::ShutDown`].
    pub async fn shutdown(self: &Arc<Self>, deadline: Duration) -> ShutdownReport {
        let Some(total) = self.with(|m, now| {
            if m.tally.is_some() {
                return None;
            }
            m.tally = Some(Tally::default());
            let total = m.client.connections();
            m.client.shutdown(now);
            // Requests waiting for a lease give up.
            m.lease_waiters.notify_all();
            // Replies that already came are still handed over.
            m.waiting.retain(|_, waiting| {
                if waiting.answer.is_some() {
                    return true;
                }
                if let Some(waker) = waiting.waker.take() {
                    waker.wake();
                }
                false
            });
            Some(total)
        }) else {
            return ShutdownReport::default();
        };
        let stragglers = self.drain(deadline).await;
        let mut state = self.lock();
        state.machine.set_link(Link::ShutDown);
        let timed_out = state.machine.tally.map_or(0, |t| t.forced);
        ShutdownReport::new(total, timed_out + stragglers)
    }
}
