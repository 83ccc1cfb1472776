//! The client side of the client plane, sans-IO like the node.
//!
//! A [`Client`] keeps one connection to one replica (its *target*),
//! numbers its requests, and correlates replies by request number. Its id
//! stays the same across reconnects, and requests still outstanding when a
//! connection drops are resent, with the same numbers, on the next one, so
//! the node's dedup window answers a request it already executed from its
//! cache instead of executing it again (hazard 18).
//!
//! Outstanding requests are bounded (`client_max_outstanding`: more are
//! refused with [`RequestError::TooManyOutstanding`]) and expire after
//! `request_timeout` ([`ClientEvent::Failed`] with
//! [`RequestFailure::Expired`]). A reply that matches nothing outstanding
//! is dropped and counted (hazard 27). Reconnects back off like the node's
//! dials.
//!
//! The driving loop is the node's: after every input drain
//! [`Client::poll_transmit`], [`Client::poll_action`],
//! [`Client::poll_event`], then sleep until [`Client::poll_timeout`].
//!
//! # Ids and restarts
//!
//! A node remembers the requests of an id for `dedup_ttl`. A process that
//! reuses an id must never reuse a request number under it: the node would
//! answer the new request with the old one's reply. So either draw a fresh
//! id at each start ([`Client::random_id`], numbers from zero), or keep a
//! persistent [identity]: its id, and a leased high-water mark
//! of numbers ([`Client::with_lease`], [`Client::poll_lease`]).
//!
//! With a persistent identity a restarted process can also finish what the
//! last one started. An application that keeps an outbox takes a number
//! first ([`Client::reserve`]), stores the [`Reservation`] with the body,
//! then sends ([`Client::submit`]); after a crash it submits the stored
//! reservations again, and the node answers each from its dedup window
//! instead of executing it twice. PROTOCOL.md §9.1 states the guarantee
//! and its limits (same replica, no node restart or cap eviction, a
//! resend within `request_timeout` of the first send).

pub mod identity;
mod outstanding;

use crate::config::ValidConfig;
use crate::connection::{
    BatchBuffers, CloseCause, Connection, DialParams, Event, LentDecoder, Transmit, Unsealed,
};
use crate::crypto::{KeyRing, PeerId};
use crate::entropy::Entropy;
use crate::handshake::Binding;
use crate::node::table::{Entry, Input, Next, Origin, Socket, Table};
use crate::node::{Action, Backoff, ConnectionId, SocketError};
use crate::time::{Instant, Now};
use crate::wire::{AppHeader, CloseReason, EncodeError, Header, Kind, ReplyStatus, RequestHeader};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use bytes::{Bytes, BytesMut};
use core::time::Duration;
use outstanding::{Outstanding, Pending};

pub use identity::{Lease, Reservation};

/// Who a client is and whom it talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientParams {
    /// The cluster id.
    pub cluster: u128,
    /// This client's id; keep it for the life of the process.
    pub id: u128,
    /// The replica to connect to.
    pub target: u8,
}

/// What the client reports to the application.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Connected and authenticated to `replica`.
    Connected {
        /// The replica.
        replica: u8,
    },
    /// The connection ended; outstanding requests are resent on the next.
    Disconnected {
        /// Why.
        cause: CloseCause,
    },
    /// A connection closed before it was established: the node rejected
    /// the dial (`cause` is [`CloseCause::Rejected`] with its status), the
    /// node failed to prove the key, or the handshake timed out. The client
    /// redials after a backoff.
    HandshakeFailed {
        /// Why.
        cause: CloseCause,
    },
    /// The reply to a request.
    Reply {
        /// The request number [`Client::request`] returned.
        request: u64,
        /// The reply's operation tag.
        operation: u32,
        /// The reply's header fields: `view`, `release`, application area.
        app: AppHeader,
        /// The reply.
        body: Bytes,
    },
    /// A request ended without a reply.
    Failed {
        /// The request number.
        request: u64,
        /// Why.
        reason: RequestFailure,
    },
}

/// Why a request ended without a reply.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// No reply within `request_timeout`. It may or may not have executed.
    Expired,
    /// The node no longer remembers this request number: it will not run it
    /// again, and its reply is gone. It may or may not have executed.
    Stale,
    /// The node's window for this client was full; it did not execute.
    Busy,
    /// The node evicted this client's session (`close Evicted`) while the
    /// request was outstanding. It is not resent, since the node could no
    /// longer recognise a retry; it may or may not have executed.
    Unknown,
}

/// Why a request was not accepted. Nothing was recorded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `client_max_outstanding` requests are waiting for replies.
    #[error("{outstanding} requests outstanding, the limit is {max}")]
    TooManyOutstanding {
        /// Requests outstanding.
        outstanding: usize,
        /// The limit.
        max: usize,
    },
    /// The request cannot be encoded (too large).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The client is shutting down.
    #[error("the client is shutting down")]
    ShuttingDown,
    /// Request numbers are exhausted (after 2^64 - 1 requests).
    #[error("request numbers are exhausted")]
    Exhausted,
    /// Every number of the persisted lease is issued and the next lease is
    /// not stored yet (its write is under way or failed; see
    /// [`Client::poll_lease`], which must be called again after this too).
    /// Nothing was issued.
    #[error(
        "request numbers below {until} are all issued and the identity's next lease is not stored yet"
    )]
    LeaseExhausted {
        /// The end of the current lease.
        until: u64,
    },
    /// [`Client::submit`] with a number at or above the next one to issue:
    /// sending it could collide with a later request.
    #[error("request {request} was never reserved (the next number is {next})")]
    NotReserved {
        /// The number submitted.
        request: u64,
        /// The next number [`Client::reserve`] would issue.
        next: u64,
    },
    /// [`Client::submit`] with a number that is already outstanding.
    #[error("request {request} is already outstanding")]
    AlreadyOutstanding {
        /// The number submitted.
        request: u64,
    },
    /// [`Client::submit`] of a reservation issued `request_timeout` or longer
    /// ago: a node may have forgotten the first send, so a resend could run
    /// it twice. It may or may not have executed.
    #[error("request {request} was issued {age:?} ago, at or past request_timeout {timeout:?}")]
    TooOld {
        /// The number submitted.
        request: u64,
        /// Time since it was issued, by the wall clock.
        age: Duration,
        /// `request_timeout`.
        timeout: Duration,
    },
    /// [`Client::submit`] of a reservation issued more than a second in the
    /// future by this wall clock: the clock stepped back, so its age is
    /// unknown and a resend could come after the node forgot it. It may or
    /// may not have executed.
    #[error("request {request} was issued {ahead:?} in the future: the wall clock stepped back")]
    IssuedInFuture {
        /// The number submitted.
        request: u64,
        /// How far ahead of now it was issued.
        ahead: Duration,
    },
    /// [`Client::submit`] of another client id's reservation.
    #[error("request {request} belongs to client {owner:#x}, not {client:#x}")]
    WrongClient {
        /// The number submitted.
        request: u64,
        /// The id the reservation was issued under.
        owner: u128,
        /// This client's id.
        client: u128,
    },
    /// [`Client::submit`] of a number issued before the node evicted this
    /// client's session (`close Evicted`): the node no longer knows whether
    /// it ran, so a resend could run it twice. It may or may not have
    /// executed.
    #[error("request {request} was issued before the node evicted this client's session")]
    SessionLost {
        /// The number submitted.
        request: u64,
    },
}

/// Counters since the client started.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connections attempted.
    pub dials: u64,
    /// Requests sent again on a new connection.
    pub resent: u64,
    /// Replies that matched no outstanding request, dropped.
    pub unmatched_replies: u64,
    /// Requests that expired.
    pub expired: u64,
}

/// The client state machine. See the [module docs](self).
pub struct Client {
    config: ValidConfig,
    params: ClientParams,
    keys: KeyRing,
    entropy: Box<dyn Entropy + Send>,
    table: Table,
    /// The current connection (connecting or open).
    current: Option<ConnectionId>,
    /// When to dial next, while there is no connection.
    due: Option<Instant>,
    backoff: Backoff,
    established: bool,
    lease: Lease,
    renewal: Renewal,
    /// Numbers below this were issued before the node evicted our session:
    /// never resent.
    evicted_below: u64,
    outstanding: Outstanding,
    /// Some outstanding request is not on the current connection yet.
    unsent: bool,
    events: VecDeque<ClientEvent>,
    shutting_down: bool,
    stats: ClientStats,
    /// Buffers of written batches, for the next ones.
    batch_buffers: BatchBuffers,
}

/// The lease's next block, for persistent identities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Renewal {
    /// No renewal under way.
    Idle,
    /// [`Client::poll_lease`] asked for this mark to be stored.
    Asked(u64),
    /// The last write failed; ask again from this time.
    RetryAt(Instant),
}

/// How long after a failed lease write [`Client::poll_lease`] asks again.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// How far in the future a reservation may claim to have been issued (the
/// wall clock stepped back a little) and still count as issued now.
const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(1);

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("params", &self.params)
            .field("established", &self.established)
            .field("outstanding", &self.outstanding.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that connects to `params.target` at `now`, numbering its
    /// requests from zero: for an id drawn afresh by this process.
    pub fn new(
        now: Now,
        config: &ValidConfig,
        params: ClientParams,
        keys: KeyRing,
        entropy: Box<dyn Entropy + Send>,
    ) -> Client {
        Self::with_lease(now, config, params, Lease::UNBOUNDED, keys, entropy)
    }

    /// A client whose id is persistent: it issues numbers from `lease`,
    /// which its [identity] stored before the client starts
    /// (`file::ClientIdentity::lease` with feature `std`).
    ///
    /// ```
    /// use bus_proto::client::identity::IdentityRecord;
    /// use bus_proto::client::{Client, ClientParams};
    /// use bus_proto::config::Config;
    /// use bus_proto::crypto::{Key, KeyRing};
    /// use bus_proto::entropy::SeededEntropy;
    /// use bus_proto::time::Now;
    ///
    /// // What the last process stored: nothing at or above 4096 was issued.
    /// let stored = IdentityRecord { id: 0xc1, reserved_until: 4096 };
    /// // Store `raised` before issuing from `lease` (the file module does both).
    /// let (raised, lease) = stored.start(4096)?;
    /// assert_eq!((lease.next, raised.reserved_until), (4096, 8192));
    ///
    /// let config = Config::default().validate()?;
    /// let params = ClientParams { cluster: 7, id: stored.id, target: 0 };
    /// let keys = KeyRing::new(Key::from_bytes([9; 32]));
    /// let entropy = Box::new(SeededEntropy::new(1));
    /// let mut client = Client::with_lease(Now::default(), &config, params, lease, keys, entropy);
    /// assert_eq!(client.reserve(Now::default())?.request, 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_lease(
        now: Now,
        config: &ValidConfig,
        params: ClientParams,
        lease: Lease,
        keys: KeyRing,
        entropy: Box<dyn Entropy + Send>,
    ) -> Client {
        Client {
            config: config.clone(),
            params,
            keys,
            entropy,
            // The current connection, plus one still flushing its close.
            table: Table::new(2),
            current: None,
            due: Some(now.mono),
            backoff: Backoff::new(config.reconnect_min, config.reconnect_max),
            established: false,
            lease,
            renewal: Renewal::Idle,
            evicted_below: 0,
            outstanding: Outstanding::new(config.client_max_outstanding),
            unsent: false,
            events: VecDeque::new(),
            shutting_down: false,
            stats: ClientStats::default(),
            batch_buffers: BatchBuffers::default(),
        }
    }

    /// A fresh client id from `entropy` (the OS generator in production).
    pub fn random_id(entropy: &mut dyn Entropy) -> u128 {
        let mut b = [0u8; 16];
        entropy.fill_bytes(&mut b);
        u128::from_le_bytes(b)
    }

    /// This client's id, the same for every connection.
    pub fn id(&self) -> u128 {
        self.params.id
    }

    /// Whether a connection is established.
    pub fn is_connected(&self) -> bool {
        self.established
    }

    /// Requests waiting for replies.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Connections held (at most two: the current one and one closing).
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// True while `id` names a connection this core holds (connecting,
    /// open or closing); false once it is over and freed.
    pub fn holds(&self, id: ConnectionId) -> bool {
        self.table.get(id).is_some()
    }

    /// The connection behind `id` (read-only: for metrics and tests).
    pub fn connection(&self, id: ConnectionId) -> Option<&Connection> {
        self.table.conn(id)
    }

    /// Queues a request and returns its number. It is sent now if
    /// connected, else once connected, and resent after a reconnect until
    /// answered or expired.
    pub fn request(&mut self, now: Now, operation: u32, body: Bytes) -> Result<u64, RequestError> {
        self.request_with(now, operation, AppHeader::ZERO, body)
    }

    /// [`Client::request`] with the application's header fields (`view`,
    /// `release`, application area), sent with every copy of the request.
    pub fn request_with(
        &mut self,
        now: Now,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<u64, RequestError> {
        self.check_room()?;
        // Checked before a number is spent on it.
        self.check_size(0, operation, &body)?;
        let reservation = self.reserve(now)?;
        let request = (reservation.request, operation, app);
        self.queue(now, request, body, Duration::ZERO);
        Ok(reservation.request)
    }

    /// Issues the next request number without sending anything, for an
    /// application that records each request in its own outbox before
    /// sending it ([`Client::submit`]).
    pub fn reserve(&mut self, now: Now) -> Result<Reservation, RequestError> {
        if self.shutting_down {
            return Err(RequestError::ShuttingDown);
        }
        let number = self.lease.next;
        if number == u64::MAX {
            return Err(RequestError::Exhausted);
        }
        if number >= self.lease.until {
            return Err(RequestError::LeaseExhausted {
                until: self.lease.until,
            });
        }
        self.lease.next += 1;
        Ok(Reservation {
            client: self.params.id,
            request: number,
            issued_at: now.wall,
        })
    }

    /// Sends the request numbered by `reservation`: one this process
    /// reserved, or one a previous process under the same identity reserved
    /// and stored, resent after a restart so that the node answers it from
    /// its dedup window if it already ran it. Its deadline counts from
    /// `reservation.issued_at`; a reservation at or past `request_timeout`
    /// is refused ([`RequestError::TooOld`]).
    ///
    /// The body must be the one first sent under this number: the node
    /// matches by number only. After a restart, submit what the outbox
    /// holds first, to the same replica, before new requests: the node
    /// keeps only the last `dedup_entries_per_client` requests, and older
    /// ones come back [`RequestFailure::Stale`].
    pub fn submit(
        &mut self,
        now: Now,
        reservation: Reservation,
        operation: u32,
        body: Bytes,
    ) -> Result<(), RequestError> {
        self.submit_with(now, reservation, operation, AppHeader::ZERO, body)
    }

    /// [`Client::submit`] with the application's header fields, which must
    /// also be the ones first sent under this number.
    pub fn submit_with(
        &mut self,
        now: Now,
        reservation: Reservation,
        operation: u32,
        app: AppHeader,
        body: Bytes,
    ) -> Result<(), RequestError> {
        let request = reservation.request;
        self.check_room()?;
        if reservation.client != self.params.id {
            return Err(RequestError::WrongClient {
                request,
                owner: reservation.client,
                client: self.params.id,
            });
        }
        if request >= self.lease.next {
            return Err(RequestError::NotReserved {
                request,
                next: self.lease.next,
            });
        }
        if self.outstanding.contains(request) {
            return Err(RequestError::AlreadyOutstanding { request });
        }
        if request < self.evicted_below {
            return Err(RequestError::SessionLost { request });
        }
        let (issued, wall) = (reservation.issued_at.as_nanos(), now.wall.as_nanos());
        let ahead = Duration::from_nanos(issued.saturating_sub(wall));
        if ahead > CLOCK_STEP_TOLERANCE {
            return Err(RequestError::IssuedInFuture { request, ahead });
        }
        let age = Duration::from_nanos(wall.saturating_sub(issued));
        let timeout = self.config.request_timeout;
        if age >= timeout {
            return Err(RequestError::TooOld {
                request,
                age,
                timeout,
            });
        }
        self.check_size(request, operation, &body)?;
        self.queue(now, (request, operation, app), body, age);
        Ok(())
    }

    /// The next lease mark to store, when half of the current lease is
    /// issued (persistent identities only). Store it durably, then call
    /// [`Client::lease_extended`]; on failure [`Client::lease_failed`].
    /// Asks once at a time; call it after every attempt to issue a number,
    /// refused ones included (after a failed write it asks again only a
    /// second later, and only when called).
    #[must_use]
    pub fn poll_lease(&mut self, now: Now) -> Option<u64> {
        let Lease { until, block, .. } = self.lease;
        if block == 0 || self.lease.remaining() > block / 2 {
            return None;
        }
        match self.renewal {
            Renewal::Asked(_) => return None,
            Renewal::RetryAt(at) if at > now.mono => return None,
            Renewal::Idle | Renewal::RetryAt(_) => {}
        }
        // Past the last block the lease simply runs out.
        let next = until.checked_add(block).filter(|&n| n < u64::MAX)?;
        self.renewal = Renewal::Asked(next);
        Some(next)
    }

    /// The mark from [`Client::poll_lease`] is stored: numbers below it may
    /// be issued.
    pub fn lease_extended(&mut self, until: u64) {
        if self.renewal == Renewal::Asked(until) {
            self.renewal = Renewal::Idle;
        }
        self.lease.until = self.lease.until.max(until);
    }

    /// Storing the mark from [`Client::poll_lease`] failed; it is asked
    /// again a second after `now`.
    pub fn lease_failed(&mut self, now: Now) {
        self.renewal = Renewal::RetryAt(now.mono.saturating_add(LEASE_RETRY));
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ValidConfig {
        &self.config
    }

    /// The adapter's socket for `id` has local address `local` (reported
    /// in [`ConnectionInfo`](crate::node::ConnectionInfo)).
    pub fn note_local(&mut self, id: ConnectionId, local: core::net::SocketAddr) {
        self.table.note_local(id, local);
    }

    /// The adapter's socket for dial `id` reached `remote` (before
    /// [`Client::connected`](Self::connected)): its events and infos name it.
    pub fn dialled_to(&mut self, id: ConnectionId, remote: core::net::SocketAddr) {
        self.table.dialled_to(id, remote);
    }

    /// The current connection (connecting or open), as of `now`.
    pub fn connection_info(&self, now: Instant) -> Option<crate::node::ConnectionInfo> {
        self.table.info(self.current?, now)
    }

    /// Replaces the client's keys for its next handshakes; an established
    /// session keeps the keys it derived, and requests in flight continue.
    pub fn set_keys(&mut self, keys: KeyRing) {
        self.keys = keys;
    }

    /// The numbers this client may still issue.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// True while a mark from [`Client::poll_lease`] is being stored.
    pub fn lease_pending(&self) -> bool {
        matches!(self.renewal, Renewal::Asked(_))
    }

    fn check_room(&self) -> Result<(), RequestError> {
        if self.shutting_down {
            return Err(RequestError::ShuttingDown);
        }
        if self.outstanding.is_full() {
            return Err(RequestError::TooManyOutstanding {
                outstanding: self.outstanding.len(),
                max: self.config.client_max_outstanding,
            });
        }
        Ok(())
    }

    /// The request's frame fits `max_message_size` (its application
    /// header cannot make it invalid: a request may carry one).
    fn check_size(&self, request: u64, operation: u32, body: &Bytes) -> Result<(), RequestError> {
        let header = RequestHeader {
            client: self.params.id,
            request,
            operation,
        };
        Header::new(self.params.cluster, Kind::Request(header))
            .check(body.len(), self.config.max_message_size)?;
        Ok(())
    }

    /// Makes request `(number, operation, app)` outstanding, `age` after it
    /// was first issued.
    fn queue(&mut self, now: Now, request: (u64, u32, AppHeader), body: Bytes, age: Duration) {
        let (number, operation, app) = request;
        let timeout = self.config.request_timeout.saturating_sub(age);
        self.outstanding.insert(
            number,
            Pending {
                operation,
                app,
                body,
                deadline: now.mono.saturating_add(timeout),
                sent_on: None,
            },
        );
        // Unless others wait already, only this one is unsent: queued
        // alone instead of by a scan of everything outstanding.
        match self.unsent {
            true => self.flush(),
            false => self.unsent = !self.send_outstanding(number),
        }
    }

    /// The replica this client connects to.
    pub fn target(&self) -> u8 {
        self.params.target
    }

    /// Moves to another replica: the current connection closes and the
    /// next one goes to `replica`. Outstanding requests are resent there
    /// (that replica's dedup window does not know them).
    pub fn retarget(&mut self, now: Now, replica: u8) {
        if self.shutting_down {
            return;
        }
        self.params.target = replica;
        self.backoff.reset();
        match self.current {
            Some(id) => self.close_current(now.mono, id),
            None => self.due = Some(now.mono),
        }
    }

    /// The socket for an [`Action::Connect`] is open, and its transport
    /// (TLS, a WebSocket upgrade) starts handshaking; see
    /// [`Node::connected_pending`](crate::node::Node::connected_pending).
    pub fn connected_pending(&mut self, now: Now, id: ConnectionId) -> Result<(), SocketError> {
        let deadline = now.mono.saturating_add(self.config.handshake_timeout);
        self.table.start_transport(id, deadline)
    }

    /// The transport under `id` finished its handshake with this channel
    /// `binding`: the `hello` goes out, and the bus handshake must end
    /// within the budget that started at [`Client::connected_pending`].
    pub fn transport_ready(
        &mut self,
        now: Now,
        id: ConnectionId,
        binding: Binding,
    ) -> Result<(), SocketError> {
        let deadline = self.table.check_connecting(id, true)?;
        self.dial_on(now, id, binding, Some(deadline))
    }

    /// The socket for an [`Action::Connect`] is open.
    pub fn connected(
        &mut self,
        now: Now,
        id: ConnectionId,
        binding: Binding,
    ) -> Result<(), SocketError> {
        self.table.check_connecting(id, false)?;
        self.dial_on(now, id, binding, None)
    }

    /// Starts the bus handshake on `id`'s open socket, within `deadline`
    /// if the transport's handshake already spent part of the budget.
    fn dial_on(
        &mut self,
        now: Now,
        id: ConnectionId,
        binding: Binding,
        deadline: Option<Instant>,
    ) -> Result<(), SocketError> {
        let params = DialParams {
            cluster: self.params.cluster,
            local: PeerId::Client(self.params.id),
            acceptor: self.params.target,
            keys: &self.keys,
            binding,
        };
        match Connection::dial(now.mono, now.wall, &self.config, params, &mut *self.entropy) {
            Ok(mut conn) => {
                if let Some(deadline) = deadline {
                    conn.limit_handshake_deadline(deadline);
                }
                self.table.open(id, conn);
                Ok(())
            }
            Err(error) => {
                self.connect_failed(now, id);
                Err(SocketError::Dial {
                    connection: id,
                    error,
                })
            }
        }
    }

    /// The connect for an [`Action::Connect`] failed; retried after a
    /// backoff. Stale ids are ignored.
    pub fn connect_failed(&mut self, now: Now, id: ConnectionId) {
        if matches!(
            self.table.get(id).map(|e| &e.socket),
            Some(Socket::Connecting { .. })
        ) {
            self.follow(now.mono, id, Next::ConnectFailed);
        }
    }

    /// Bytes read from `id`'s socket, in order.
    pub fn handle_input(
        &mut self,
        now: Now,
        id: ConnectionId,
        bytes: &[u8],
    ) -> Result<(), SocketError> {
        self.table.input(now.mono, id, Input::Bytes(bytes), None)?;
        self.settle(now.mono, id);
        Ok(())
    }

    /// `id`'s receive buffer; see [`Connection::read_buffer`].
    pub fn read_buffer(&mut self, id: ConnectionId) -> Option<&mut BytesMut> {
        self.table.conn_mut(id).and_then(|c| c.read_buffer())
    }

    /// Processes bytes appended to [`Client::read_buffer`].
    pub fn handle_read(&mut self, now: Now, id: ConnectionId) -> Result<(), SocketError> {
        self.table.input(now.mono, id, Input::Read, None)?;
        self.settle(now.mono, id);
        Ok(())
    }

    /// Lends `id`'s decoder to its socket task; see [`LentDecoder`].
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    pub(crate) fn lend_decoder(&mut self, id: ConnectionId) -> Option<LentDecoder> {
        self.table.conn_mut(id)?.lend_decoder()
    }

    /// The lent decoder is back with new bytes, perhaps verified.
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    pub(crate) fn handle_verified(&mut self, now: Now, id: ConnectionId, decoder: LentDecoder) {
        if self
            .table
            .input(now.mono, id, Input::Verified(decoder), None)
            .is_ok()
        {
            self.settle(now.mono, id);
        }
    }

    /// `id`'s transport refused a frame of `size` bytes over the frame
    /// limit before buffering it (a WebSocket message): the connection
    /// closes as it would on an oversize frame from its decoder.
    pub fn frame_too_large(&mut self, now: Now, id: ConnectionId, size: u32) {
        if let Some(conn) = self.table.conn_mut(id) {
            conn.refuse_frame_size(size);
            self.settle(now.mono, id);
        }
    }

    /// `id`'s socket reached EOF or failed.
    pub fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        let next = self.table.eof(now.mono, id);
        self.follow(now.mono, id, next);
    }

    /// Runs every timer due at `now`. Harmless when called early.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some((id, next)) = self.table.fire_expired(now.mono) {
            self.follow(now.mono, id, next);
        }
        while let Some((request, _)) = self.outstanding.pop_expired(now.mono) {
            self.stats.expired += 1;
            self.events.push_back(ClientEvent::Failed {
                request,
                reason: RequestFailure::Expired,
            });
        }
        if self.due.is_some_and(|at| at <= now.mono) {
            self.due = None;
            if !self.shutting_down {
                self.dial(now.mono);
            }
        }
    }

    /// The caller stopped waiting for `request` (its future was dropped):
    /// it leaves the outstanding set at once, freeing its slot, and a later
    /// reply is counted as unmatched. A copy already queued on the
    /// connection may still be sent; the node runs it at most once either
    /// way. Returns whether it was outstanding.
    pub fn abandon(&mut self, request: u64) -> bool {
        self.outstanding.take(request).is_some()
    }

    /// Closes gracefully; outstanding requests are dropped without events.
    pub fn shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        self.due = None;
        while self.outstanding.pop_first().is_some() {}
        self.unsent = false;
        if let Some(id) = self.current {
            self.close_current(now.mono, id);
        }
    }

    /// The next batch to write, and to which connection.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Now) -> Option<(ConnectionId, Transmit)> {
        loop {
            let id = self.table.first_ready()?;
            if let Some(transmit) = self.poll_transmit_for(now, id) {
                return Some((id, transmit));
            }
            self.table.pop_ready();
        }
    }

    /// The next batch for one connection, for adapters with a task per
    /// socket; pair it with [`Client::poll_ready`].
    #[must_use]
    pub fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit> {
        self.poll_unsealed_for(now, id).map(Unsealed::seal)
    }

    /// [`Client::poll_transmit_for`] but for the checksums or tags: seal
    /// the batch ([`Unsealed::seal`]) after releasing any lock around the
    /// client.
    #[must_use]
    #[inline]
    pub fn poll_unsealed_for(&mut self, now: Now, id: ConnectionId) -> Option<Unsealed> {
        let conn = self.table.conn_mut(id)?;
        let transmit = conn.poll_unsealed_in(now.mono, &mut self.batch_buffers);
        self.settle(now.mono, id);
        if transmit.is_some() {
            // The queue has room again for requests a flush left.
            self.flush();
        }
        transmit
    }

    /// Keeps the buffer of a written batch for a later one: taken back
    /// with [`bytes::Bytes::try_into_mut`] from the batch's segment cut
    /// last from it, once written and the others dropped. Bounded, see
    /// [`BatchBuffers`].
    pub fn reuse_batch_buffer(&mut self, buffer: BytesMut) {
        self.batch_buffers.reuse(buffer);
    }

    /// A connection that may have output, taken off the ready list: wake
    /// its socket's task. Spurious entries are harmless.
    #[must_use]
    pub fn poll_ready(&mut self) -> Option<ConnectionId> {
        self.table.take_ready()
    }

    /// The next socket action.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.table.poll_action()
    }

    /// The next application event.
    ///
    /// The queue is not capped here: it holds what the inputs since the
    /// last drain produced, and each input adds at most one event per
    /// frame it completes (at most its bytes / 256) plus one per
    /// connection that changed state. So a host that drains it after every
    /// input holds it to one input's worth, and a host that must stop
    /// draining stops feeding that connection's input too (the adapters resolve each reply to its waiting request as it is polled).
    /// [`Client::pending_events`] tells how many wait.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Events waiting for [`Client::poll_event`].
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// When to call [`Client::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.table.next_timeout(),
            self.due,
            self.outstanding.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn dial(&mut self, now: Instant) {
        let deadline = now.saturating_add(self.config.handshake_timeout);
        match self.table.insert(Entry {
            origin: Origin::Dialed(self.params.target),
            socket: Socket::Connecting {
                deadline,
                socket_open: false,
            },
            announced: false,
            unauthenticated: false,
            counted: false,
            remote: None,
            established_at: None,
            plane: None,
            local: None,
        }) {
            Some(id) => {
                self.stats.dials += 1;
                self.current = Some(id);
                self.table.push_action(Action::Connect {
                    connection: id,
                    replica: self.params.target,
                });
            }
            // The previous connection is still flushing its close.
            None => self.schedule(now),
        }
    }

    fn close_current(&mut self, now: Instant, id: ConnectionId) {
        match self.table.get(id).map(|e| &e.socket) {
            Some(Socket::Connecting { .. }) => self.follow(now, id, Next::ConnectFailed),
            Some(Socket::Open(_)) => {
                if let Some(conn) = self.table.conn_mut(id) {
                    conn.close(now, CloseReason::Shutdown);
                }
                self.settle(now, id);
            }
            None => {}
        }
    }

    fn follow(&mut self, now: Instant, id: ConnectionId, next: Next) {
        match next {
            Next::Settle => self.settle(now, id),
            Next::ConnectFailed => {
                self.table.remove(id);
                self.lost(now, id);
            }
            Next::Nothing => {}
        }
    }

    /// Handles `id`'s events, reschedules it, frees it once it is over.
    fn settle(&mut self, now: Instant, id: ConnectionId) {
        while let Some(event) = self.table.conn_mut(id).and_then(|c| c.poll_event()) {
            match event {
                Event::Established { .. } => {
                    self.established = true;
                    if let Some(entry) = self.table.get_mut(id) {
                        entry.announced = true;
                        entry.established_at = Some(now);
                    }
                    self.events.push_back(ClientEvent::Connected {
                        replica: self.params.target,
                    });
                    self.unsent = true;
                    self.flush();
                }
                Event::Message(frame) => {
                    let mut header = frame.header;
                    let app = header.take_app();
                    if let Kind::Reply { request, status } = header.kind {
                        self.on_reply(request, status, app, frame.body);
                    }
                }
                Event::Closed { reason } => {
                    let entry = self.table.get(id);
                    let announced = entry.is_some_and(|e| e.announced);
                    // Back off afresh only after a connection that held.
                    let lasted = entry
                        .and_then(|e| e.established_at)
                        .map(|t| now.saturating_duration_since(t));
                    if lasted.is_some_and(|d| d >= self.config.reconnect_max) {
                        self.backoff.reset();
                    }
                    if reason == CloseCause::Peer(CloseReason::Evicted) {
                        self.forget_outstanding();
                    }
                    let event = if announced {
                        ClientEvent::Disconnected { cause: reason }
                    } else {
                        ClientEvent::HandshakeFailed { cause: reason }
                    };
                    self.events.push_back(event);
                    self.lost(now, id);
                }
            }
        }
        match self.table.conn_mut(id) {
            Some(conn) if conn.is_drained() => {
                self.table.remove(id);
            }
            Some(_) => self.table.touch(id),
            None => {}
        }
    }

    /// The node evicted this client's session: it no longer knows which
    /// requests ran, so resending them could run one twice. Each ends as
    /// [`RequestFailure::Unknown`].
    fn forget_outstanding(&mut self) {
        self.evicted_below = self.lease.next;
        while let Some((request, _)) = self.outstanding.pop_first() {
            self.events.push_back(ClientEvent::Failed {
                request,
                reason: RequestFailure::Unknown,
            });
        }
        self.unsent = false;
    }

    /// The current connection `id` is gone: dial again after a backoff.
    fn lost(&mut self, now: Instant, id: ConnectionId) {
        if self.current != Some(id) {
            return;
        }
        self.current = None;
        self.established = false;
        if !self.shutting_down {
            self.schedule(now);
        }
    }

    fn schedule(&mut self, now: Instant) {
        let delay = self.backoff.next_delay(&mut *self.entropy);
        self.due = Some(now.saturating_add(delay));
    }

    fn on_reply(
        &mut self,
        request: RequestHeader,
        status: ReplyStatus,
        app: AppHeader,
        body: Bytes,
    ) {
        if self.outstanding.take(request.request).is_none() {
            self.stats.unmatched_replies += 1;
            return;
        }
        let number = request.request;
        self.events.push_back(match status {
            ReplyStatus::Ok => ClientEvent::Reply {
                request: number,
                operation: request.operation,
                app,
                body,
            },
            ReplyStatus::Stale => ClientEvent::Failed {
                request: number,
                reason: RequestFailure::Stale,
            },
            ReplyStatus::Busy => ClientEvent::Failed {
                request: number,
                reason: RequestFailure::Busy,
            },
        });
    }

    /// Queues every outstanding request not yet on the current connection.
    /// A full queue leaves the rest for the next flush.
    fn flush(&mut self) {
        if !self.unsent {
            return;
        }
        let Some(id) = self.current.filter(|_| self.established) else {
            return;
        };
        let Some(conn) = self.table.conn_mut(id) else {
            return;
        };
        let (client, mut resent, mut all) = (self.params.id, 0, true);
        for (&number, pending) in self.outstanding.unsent_on(id) {
            let resending = pending.sent_on.is_some();
            if !send_pending(conn, id, client, number, pending) {
                all = false;
                break;
            }
            resent += u64::from(resending);
        }
        self.unsent = !all;
        self.stats.resent += resent;
        self.table.mark_ready(id);
    }

    /// Queues outstanding request `number` on the current connection;
    /// false if it could not be (no established connection, or the
    /// connection refused it: a full queue, or closing).
    fn send_outstanding(&mut self, number: u64) -> bool {
        let Some(id) = self.current.filter(|_| self.established) else {
            return false;
        };
        let (Some(conn), Some(pending)) =
            (self.table.conn_mut(id), self.outstanding.get_mut(number))
        else {
            return false;
        };
        if !send_pending(conn, id, self.params.id, number, pending) {
            return false;
        }
        self.table.mark_ready(id);
        true
    }
}

/// Queues `pending`, request `number` of `client`, on `conn` (connection
/// `id`); false if the connection refused it (a full queue, or closing).
fn send_pending(
    conn: &mut Connection,
    id: ConnectionId,
    client: u128,
    number: u64,
    pending: &mut Pending,
) -> bool {
    let header = RequestHeader {
        client,
        request: number,
        operation: pending.operation,
    };
    let app = pending.app.clone();
    if conn
        .send_with(app, Kind::Request(header), pending.body.clone())
        .is_err()
    {
        return false;
    }
    pending.sent_on = Some(id);
    true
}
