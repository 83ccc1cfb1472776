//! One connection: handshake, send queue, batching, heartbeats, close.
//!
//! A [`Connection`] is a sans-IO state machine over one ordered byte stream
//! (a TCP socket, or the plaintext side of TLS/WebSocket, or one QUIC
//! stream). See the [crate docs](crate) for the driving loop.
//!
//! Inputs: [`Connection::handle_input`] (or [`Connection::read_buffer`] +
//! [`Connection::handle_read`]), [`Connection::handle_timeout`],
//! [`Connection::handle_eof`], and the application's
//! [`Connection::send`] / [`Connection::close`]. On the accepting side,
//! [`Connection::take_hello`] and [`Connection::admit`] pass the dialer's
//! `hello` through the node's [`Gate`](crate::handshake::Gate).
//!
//! Outputs, drained after every input in this order: [`Connection::poll_transmit`]
//! until `None` (write each batch completely), [`Connection::poll_event`]
//! until `None`, then [`Connection::poll_timeout`] (sleep until it, then call
//! `handle_timeout`). Once [`Connection::is_drained`] is true, drop the socket.
//!
//! # Transports
//!
//! A connection consumes and produces one ordered plaintext byte stream, so
//! every transport is a layer around it and the connection API stays the
//! same:
//!
//! - **TLS** (rustls) and **WebSocket** (tungstenite) are byte-stream layers
//!   *under* framing: socket bytes go through the layer, and the plaintext
//!   (or binary-message payloads, which need not align with frames) goes to
//!   `handle_input`; each [`Transmit`]'s segments are written into the
//!   layer. The connection is created once the TLS handshake is done, with
//!   [`Binding::from_bytes`] of a TLS exporter value, so the PSK handshake is
//!   bound to that TLS session. Close-notify and WebSocket close frames share
//!   the connection's `close_grace` deadline.
//! - **QUIC** (quinn-proto): one UDP endpoint demultiplexes datagrams into
//!   QUIC connections; each carries one bidirectional stream whose bytes are
//!   this connection's input and output, bound with QUIC's exporter.
//! - Every transport feeds the same [`FrameDecoder`], so `max_message_size`
//!   is enforced once for all of them (hazard 2).
//!
//! Readiness runtimes read into the spare capacity of
//! [`Connection::read_buffer`] and borrow [`Transmit::segments`] as
//! `IoSlice`s; completion runtimes (owned buffers) take the read buffer with
//! `core::mem::take`, put it back after the read, and write
//! [`Transmit::into_segments`]. Neither copies more than the other.
//!
//! # Callbacks
//!
//! There are none: events are values the caller pulls with `poll_event`, so
//! a handler can never re-enter the state machine while it holds a borrow,
//! and `Closed` is queued exactly once by the one function that closes
//! (hazard 22).

mod error;
mod inbound;
pub use inbound::LentDecoder;
pub(crate) use inbound::Messages;
mod transmit;

pub use error::{CloseCause, Deadline, DialError, SendError, Violation};
pub use transmit::{BatchBuffers, Transmit, Unsealed};

use crate::config::ValidConfig;
use crate::crypto::{KeyRing, PeerId};
use crate::entropy::Entropy;
use crate::handshake::{
    AcceptorHandshake, Admission, Binding, DialerHandshake, DialerStart, IncomingHello,
};
use crate::time::{Instant, UnixNanos};
use crate::wire::{
    AppArea, AppHeader, CloseReason, Command, Frame, FrameDecoder, HEADER_SIZE, Header, Integrity,
    Kind, PROTOCOL_VERSION, Plane, REPLICA_NONE, check_frame, layout::HEADER_SIZE_U32,
};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use bytes::{Bytes, BytesMut};
use core::time::Duration;
use transmit::TransmitBuilder;

/// What a connection reports to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed: `peer` proved possession of the pair's key.
    Established {
        /// The authenticated peer.
        peer: PeerId,
        /// Whether frames now carry keyed tags instead of checksums.
        authenticated_frames: bool,
    },
    /// A data frame (`message`, `request` or `reply`), validated, in order.
    Message(Frame),
    /// The connection closed; no event follows. Reported exactly once.
    Closed {
        /// Why.
        reason: CloseCause,
    },
}

/// What a dialer needs to start a connection.
#[derive(Clone, Copy, Debug)]
pub struct DialParams<'a> {
    /// Our cluster.
    pub cluster: u128,
    /// Who we are: a replica dials on the replica plane, a client on the
    /// client plane.
    pub local: PeerId,
    /// The replica id of the node dialled.
    pub acceptor: u8,
    /// Our keys.
    pub keys: &'a KeyRing,
    /// The transport binding ([`Binding::NONE`] for plain TCP).
    pub binding: Binding,
}

/// Counters since the connection started.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed out by `poll_transmit`.
    pub frames_sent: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Valid frames received.
    pub frames_received: u64,
    /// Batches handed out by `poll_transmit`.
    pub transmits: u64,
    /// Bytes of the valid frames received, headers included.
    pub bytes_received: u64,
    /// Times the host paused reading it ([`Connection::set_reading_paused`]).
    pub pauses: u64,
    /// Time spent paused, the pause under way excluded.
    pub paused: Duration,
}

/// The configuration knobs a connection uses, copied out of [`ValidConfig`].
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_message_size: u32,
    max_batch: usize,
    queue_frames: usize,
    queue_bytes: usize,
    heartbeat: Duration,
    liveness: Duration,
    handshake: Duration,
    hello: Duration,
    close_grace: Duration,
}

impl Limits {
    fn from(config: &ValidConfig) -> Self {
        Limits {
            max_message_size: config.max_message_size,
            max_batch: config.max_batch,
            queue_frames: config.send_queue_frames,
            queue_bytes: config.send_queue_bytes,
            heartbeat: config.heartbeat_interval,
            liveness: config.liveness_timeout,
            handshake: config.handshake_timeout,
            hello: config.hello_timeout,
            close_grace: config.close_grace,
        }
    }
}

enum Phase {
    /// Dialer: `hello` queued or sent, waiting for `welcome`.
    Dialing(Box<DialerHandshake>),
    /// Acceptor: waiting for `hello`.
    AwaitingHello,
    /// Acceptor: `hello` handed to the application, waiting for `admit`.
    HelloParked(Box<IncomingHello>),
    /// Acceptor: `welcome` sent, waiting for `confirm`.
    Welcomed(Box<AcceptorHandshake>),
    /// Handshake done (also while closing gracefully).
    Established,
    /// Closed; only a final control frame may remain to flush.
    Closed,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Dialing(_) => "while waiting for welcome",
            Phase::AwaitingHello => "before hello",
            Phase::HelloParked(_) => "before the hello is admitted",
            Phase::Welcomed(_) => "while waiting for confirm",
            Phase::Established => "after the handshake",
            Phase::Closed => "after close",
        }
    }
}

/// A data frame waiting in the send queue; encoded when transmitted, so it
/// gets the sequence number and integrity mode in force at that moment.
struct Queued {
    app: AppHeader,
    kind: Kind,
    body: Bytes,
}

/// A graceful close in progress.
#[derive(Clone, Copy, Debug)]
struct Closing {
    reason: CloseReason,
    deadline: Instant,
    close_sent: bool,
    /// The peer's `close`, if it arrived; `initiated_by_peer` tells whose
    /// close came first.
    peer_reason: Option<CloseReason>,
    initiated_by_peer: bool,
}

/// Whether we dialled or accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// We sent the `hello`.
    Dialer,
    /// We received it.
    Acceptor,
}

/// One connection's state machine. See the [module docs](self).
pub struct Connection {
    limits: Limits,
    side: Side,
    phase: Phase,
    /// Boxed, so lending it to a socket task moves a pointer; `None` while
    /// lent ([`LentDecoder`]).
    decoder: Option<Box<FrameDecoder>>,
    integrity_out: Integrity,
    /// The transport's channel binding; `None` while the transport (TLS,
    /// WebSocket) is still handshaking: nothing is decoded until it is set.
    binding: Option<Binding>,
    cluster: u128,
    plane: Option<Plane>,
    /// Our `replica` header value.
    local_replica: u8,
    /// Our client id, on the client side of the client plane.
    local_client: Option<u128>,
    peer: Option<PeerId>,
    /// The `replica` header value the peer must use.
    peer_replica: u8,
    send_seq: u64,
    recv_seq: u64,
    /// Control lane, served before data: a pre-encoded handshake frame, a
    /// fatal `close`, the latest pong, one ping. Each slot holds at most one
    /// frame, so a ping flood cannot grow it.
    handshake_out: Option<[u8; HEADER_SIZE]>,
    fatal_close: Option<CloseReason>,
    pong: Option<u64>,
    ping: Option<u64>,
    /// Data lane: bounded by `send_queue_frames` and `send_queue_bytes`.
    data: VecDeque<Queued>,
    queued_bytes: usize,
    /// Events: at most a few per frame fed in, drained by `poll_event`.
    events: VecDeque<Event>,
    handshake_deadline: Instant,
    /// Acceptor: the `hello` must be complete by then (a short deadline
    /// for unauthenticated sockets, within the handshake's).
    hello_deadline: Instant,
    /// We stopped reading (the application's deliveries wait): the peer
    /// is not judged by the liveness deadline meanwhile.
    reading_paused: bool,
    /// When the pause under way started.
    paused_since: Option<Instant>,
    last_sent: Instant,
    last_received: Instant,
    closing: Option<Closing>,
    closed: Option<CloseCause>,
    rtt: Option<Duration>,
    stats: Stats,
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("phase", &self.phase.name())
            .field("peer", &self.peer)
            .field("queued_frames", &self.data.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        now: Instant,
        config: &ValidConfig,
        side: Side,
        phase: Phase,
        binding: Option<Binding>,
    ) -> Self {
        let limits = Limits::from(config);
        Connection {
            limits,
            side,
            phase,
            // Handshake frames have no body: an unauthenticated peer cannot
            // make us reserve more than a header.
            decoder: Some(Box::new(FrameDecoder::new(
                Integrity::Checksum,
                HEADER_SIZE_U32,
            ))),
            integrity_out: Integrity::Checksum,
            binding,
            cluster: 0,
            plane: None,
            local_replica: REPLICA_NONE,
            local_client: None,
            peer: None,
            peer_replica: REPLICA_NONE,
            send_seq: 0,
            recv_seq: 0,
            handshake_out: None,
            fatal_close: None,
            pong: None,
            ping: None,
            data: VecDeque::new(),
            queued_bytes: 0,
            events: VecDeque::new(),
            handshake_deadline: now.saturating_add(limits.handshake),
            hello_deadline: now.saturating_add(limits.hello.min(limits.handshake)),
            reading_paused: false,
            paused_since: None,
            last_sent: now,
            last_received: now,
            closing: None,
            closed: None,
            rtt: None,
            stats: Stats::default(),
        }
    }

    /// Starts dialling: queues the `hello`. `wall` is the current wall-clock
    /// time (checked by the acceptor's freshness window); `entropy` supplies
    /// the nonce.
    pub fn dial(
        now: Instant,
        wall: UnixNanos,
        config: &ValidConfig,
        params: DialParams<'_>,
        entropy: &mut dyn Entropy,
    ) -> Result<Connection, DialError> {
        if params.acceptor == REPLICA_NONE {
            return Err(DialError::ReservedReplicaId(params.acceptor));
        }
        let (plane, local_replica, local_client) = match params.local {
            PeerId::Replica(id) if id == REPLICA_NONE => {
                return Err(DialError::ReservedReplicaId(id));
            }
            PeerId::Replica(id) if id >= params.acceptor => {
                return Err(DialError::DirectionalRule {
                    local: id,
                    acceptor: params.acceptor,
                });
            }
            PeerId::Replica(id) => (Plane::Replica, id, None),
            PeerId::Client(id) => (Plane::Client, REPLICA_NONE, Some(id)),
        };
        let (handshake, hello) = DialerHandshake::start(
            DialerStart {
                cluster: params.cluster,
                local: params.local,
                acceptor: params.acceptor,
                keys: params.keys,
                binding: params.binding,
                authenticated_frames: config.authenticated_frames,
            },
            wall,
            entropy,
        );
        let mut conn = Connection::new(
            now,
            config,
            Side::Dialer,
            Phase::Dialing(Box::new(handshake)),
            Some(params.binding),
        );
        conn.cluster = params.cluster;
        conn.plane = Some(plane);
        conn.local_replica = local_replica;
        conn.local_client = local_client;
        conn.peer_replica = params.acceptor;
        conn.queue_handshake(Kind::Hello(Box::new(hello)));
        Ok(conn)
    }

    /// Starts accepting: waits for the dialer's `hello`.
    pub fn accept(now: Instant, config: &ValidConfig, binding: Binding) -> Connection {
        Connection::new(
            now,
            config,
            Side::Acceptor,
            Phase::AwaitingHello,
            Some(binding),
        )
    }

    /// Starts accepting on a transport that is still handshaking (TLS, a
    /// WebSocket upgrade): the handshake deadlines run from `now`, and
    /// input waits, undecoded, until [`Connection::bind`] gives the
    /// transport's binding. One budget covers both handshakes.
    pub fn accept_pending(now: Instant, config: &ValidConfig) -> Connection {
        Connection::new(now, config, Side::Acceptor, Phase::AwaitingHello, None)
    }

    /// The transport under an [`accept_pending`](Connection::accept_pending)
    /// connection is ready, with this channel binding. Ignored once a
    /// binding is set: it never changes.
    pub fn bind(&mut self, now: Instant, binding: Binding) {
        if self.binding.is_none() {
            self.binding = Some(binding);
            self.process(now, None);
        }
    }

    /// True while the transport under this connection is still
    /// handshaking ([`Connection::accept_pending`]).
    pub fn is_transport_pending(&self) -> bool {
        self.binding.is_none()
    }

    /// Moves the handshake deadline earlier to `at`: a dialer created once
    /// its transport was ready keeps the budget that started at the TCP
    /// connect.
    pub(crate) fn limit_handshake_deadline(&mut self, at: Instant) {
        self.handshake_deadline = self.handshake_deadline.min(at);
    }

    /// The largest frame the decoder accepts now: a header until the
    /// handshake completes, `max_message_size` after. A transport that
    /// frames messages itself (WebSocket) applies the same limit.
    pub fn frame_limit(&self) -> u32 {
        match &self.decoder {
            Some(decoder) => decoder.max_message_size(),
            // Lent: the limit is the one `established` sets on it, or the
            // handshake's.
            None if self.is_established() => self.limits.max_message_size,
            None => HEADER_SIZE_U32,
        }
    }

    /// Acceptor: the dialer's `hello`, once received. Pass it to
    /// [`Gate::admit`](crate::handshake::Gate::admit) and the result to
    /// [`Connection::admit`]; frames after the `hello` wait until then.
    pub fn take_hello(&mut self) -> Option<IncomingHello> {
        match &mut self.phase {
            Phase::HelloParked(hello) => Some((**hello).clone()),
            _ => None,
        }
    }

    /// Acceptor: applies the gate's decision. A `welcome` or `reject` is
    /// queued; an ignored dial closes without an answer. Ignored unless a
    /// `hello` is waiting.
    pub fn admit(&mut self, now: Instant, admission: Admission) {
        if !matches!(self.phase, Phase::HelloParked(_)) {
            return;
        }
        let Phase::HelloParked(hello) = core::mem::replace(&mut self.phase, Phase::AwaitingHello)
        else {
            return;
        };
        use crate::handshake::Verdict;
        match admission.0 {
            Verdict::Accept(handshake) => {
                self.cluster = handshake.cluster;
                self.local_replica = handshake.local;
                self.peer = Some(handshake.peer);
                self.plane = Some(hello.hello.plane);
                self.peer_replica = match handshake.peer {
                    PeerId::Replica(id) => id,
                    PeerId::Client(_) => REPLICA_NONE,
                };
                let welcome = handshake.welcome();
                self.phase = Phase::Welcomed(handshake);
                self.queue_handshake(Kind::Welcome(Box::new(welcome)));
                self.process(now, None);
            }
            Verdict::Reject(status) => {
                // Echo the dialer's cluster: a reject is unauthenticated
                // either way, and the dialer can match it to its dial.
                self.cluster = hello.cluster;
                self.queue_handshake(Kind::Reject(crate::wire::Reject {
                    status,
                    protocol_min: PROTOCOL_VERSION,
                    protocol_max: PROTOCOL_VERSION,
                }));
                self.finish(CloseCause::Refused(status));
            }
            Verdict::Ignore(reason) => self.finish(CloseCause::Ignored(reason)),
        }
    }

    /// Feeds bytes received from the transport, in order.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_input_with(now, bytes, None);
    }

    /// [`Connection::handle_input`] handing replica-plane messages to
    /// `messages`; see [`Connection::handle_read_with`].
    pub(crate) fn handle_input_with(
        &mut self,
        now: Instant,
        bytes: &[u8],
        messages: Messages<'_, '_>,
    ) {
        if self.closed.is_none()
            && let Some(decoder) = &mut self.decoder
        {
            decoder.feed(bytes);
            self.process(now, messages);
        }
    }

    /// The receive buffer, for reading straight into it without a copy: a
    /// readiness runtime reads into its spare capacity (e.g. tokio's
    /// `read_buf`); a completion runtime takes it with `core::mem::take`,
    /// lends it to the kernel and puts it back. Only append; then call
    /// [`Connection::handle_read`]. `None` only while a host socket task
    /// has the whole decoder ([`LentDecoder`]).
    pub fn read_buffer(&mut self) -> Option<&mut BytesMut> {
        self.decoder.as_deref_mut().map(FrameDecoder::buffer_mut)
    }

    /// Processes bytes appended to [`Connection::read_buffer`].
    pub fn handle_read(&mut self, now: Instant) {
        self.handle_read_with(now, None);
    }

    /// [`Connection::handle_read`], handing replica-plane messages to
    /// `messages` instead of queuing them as events: a node whose peer is
    /// already registered takes them without a second queue. Other events
    /// are queued as ever.
    pub(crate) fn handle_read_with(&mut self, now: Instant, messages: Messages<'_, '_>) {
        if self.closed.is_none() {
            self.process(now, messages);
        } else {
            self.clear_received();
        }
    }

    /// Drops whatever was received and not yet decoded: the connection is
    /// closed.
    fn clear_received(&mut self) {
        if let Some(decoder) = &mut self.decoder {
            decoder.buffer_mut().clear();
        }
    }

    /// The transport's read side ended (EOF or reset).
    pub fn handle_eof(&mut self, _now: Instant) {
        let cause = match self.closing {
            Some(c) if c.close_sent || c.peer_reason.is_some() => match c.peer_reason {
                Some(r) if c.initiated_by_peer => CloseCause::Peer(r),
                _ => CloseCause::Local(c.reason),
            },
            _ => CloseCause::Reset,
        };
        self.finish(cause);
    }

    /// The host stopped (`true`) or resumed (`false`) reading this
    /// connection's transport because the application has not taken its
    /// deliveries. While paused the liveness deadline is suspended (our
    /// own pause says nothing about the peer; hazard 31); on resume the
    /// peer gets a whole `liveness_timeout` again. Heartbeats and the close
    /// deadline keep running.
    pub fn set_reading_paused(&mut self, now: Instant, paused: bool) {
        if self.reading_paused && !paused {
            self.last_received = self.last_received.max(now);
            let since = self.paused_since.take().unwrap_or(now);
            self.stats.paused = self
                .stats
                .paused
                .saturating_add(now.saturating_duration_since(since));
        }
        if !self.reading_paused && paused {
            self.stats.pauses += 1;
            self.paused_since = Some(now);
        }
        self.reading_paused = paused;
    }

    /// Whether reading is paused ([`Connection::set_reading_paused`]).
    pub fn reading_paused(&self) -> bool {
        self.reading_paused
    }

    /// Acceptor, before a `hello` was admitted: refuse the dialer with
    /// `status` (a `reject` naming `cluster`, ours), then close. Used when
    /// the node has no room for a client whose `hello` verified. Ignored in
    /// any other state.
    pub fn refuse(&mut self, cluster: u128, status: crate::wire::RejectStatus) {
        if self.side != Side::Acceptor
            || !matches!(self.phase, Phase::AwaitingHello | Phase::HelloParked(_))
        {
            return;
        }
        self.cluster = cluster;
        self.queue_handshake(Kind::Reject(crate::wire::Reject {
            status,
            protocol_min: PROTOCOL_VERSION,
            protocol_max: PROTOCOL_VERSION,
        }));
        self.finish(CloseCause::Refused(status));
    }

    /// Acceptor, before a whole `hello` arrived: close at once, without an
    /// answer, to make room for newer connections. Ignored in any other
    /// state.
    pub fn evict(&mut self) {
        if self.side == Side::Acceptor && matches!(self.phase, Phase::AwaitingHello) {
            self.finish(CloseCause::Evicted);
        }
    }

    /// Advances timers. Harmless when called early or more than once.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if !self.is_established() {
            if matches!(self.phase, Phase::AwaitingHello) && now >= self.hello_deadline {
                self.finish(CloseCause::Timeout(Deadline::Hello));
            } else if now >= self.handshake_deadline {
                self.finish(CloseCause::Timeout(Deadline::Handshake));
            }
            return;
        }
        if let Some(closing) = self.closing
            && now >= closing.deadline
        {
            self.finish(CloseCause::Timeout(Deadline::CloseGrace));
            return;
        }
        if !self.reading_paused && now >= self.last_received.saturating_add(self.limits.liveness) {
            self.fail(
                CloseCause::Timeout(Deadline::Liveness),
                CloseReason::Timeout,
            );
            return;
        }
        let heartbeat_due = self.last_sent.saturating_add(self.limits.heartbeat);
        if self.closing.is_none() && self.ping.is_none() && now >= heartbeat_due {
            self.ping = Some(now.as_nanos());
        }
    }

    /// Queues a data frame (`message` on the replica plane, `request` from a
    /// client, `reply` to a client). Never blocks: a full queue is reported
    /// as [`SendError::Backpressure`] and nothing is queued. Frames queued
    /// during the handshake are sent once it completes.
    pub fn send(&mut self, kind: Kind, body: Bytes) -> Result<(), SendError> {
        self.send_with(AppHeader::ZERO, kind, body)
    }

    /// [`Connection::send`] with the application's header fields: `view`,
    /// `release` and the application area.
    pub fn send_with(&mut self, app: AppHeader, kind: Kind, body: Bytes) -> Result<(), SendError> {
        if self.closed.is_some() || self.closing.is_some() {
            return Err(SendError::Closed);
        }
        let command = kind.command();
        let allowed = matches!(
            (self.plane, command, self.side),
            (Some(Plane::Replica), Command::Message, _)
                | (Some(Plane::Client), Command::Request, Side::Dialer)
                | (Some(Plane::Client), Command::Reply, Side::Acceptor)
        );
        if !allowed {
            return Err(SendError::NotAllowed {
                command,
                plane: plane_name(self.plane),
            });
        }
        let max = self.limits.max_message_size;
        let size = check_frame(&kind, &app.area, body.len(), max)? as usize;
        if self.data.len() >= self.limits.queue_frames
            || self.queued_bytes.saturating_add(size) > self.limits.queue_bytes
        {
            return Err(SendError::Backpressure {
                queued_frames: self.data.len(),
                queued_bytes: self.queued_bytes,
                max_frames: self.limits.queue_frames,
                max_bytes: self.limits.queue_bytes,
            });
        }
        self.queued_bytes += size;
        self.data.push_back(Queued { app, kind, body });
        Ok(())
    }

    /// Starts a graceful close: no more sends; queued frames are flushed,
    /// then a `close` is sent and the peer's `close` (or EOF) awaited, all
    /// within one `close_grace` period, after which the connection closes
    /// regardless (hazard 24). Before the handshake completes it closes at
    /// once.
    pub fn close(&mut self, now: Instant, reason: CloseReason) {
        if self.closed.is_some() || self.closing.is_some() {
            return;
        }
        if !self.is_established() {
            self.finish(CloseCause::Local(reason));
            return;
        }
        self.closing = Some(Closing {
            reason,
            deadline: now.saturating_add(self.limits.close_grace),
            close_sent: false,
            peer_reason: None,
            initiated_by_peer: false,
        });
    }

    /// The next batch to write: control frames first, then data, at most
    /// `max_batch` frames in all.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.poll_unsealed(now).map(Unsealed::seal)
    }

    /// [`Connection::poll_transmit`] but for the checksums or tags, which
    /// [`Unsealed::seal`] computes: a caller that keeps the connection
    /// behind a lock seals the batch after releasing it.
    #[must_use]
    pub fn poll_unsealed(&mut self, now: Instant) -> Option<Unsealed> {
        self.poll_unsealed_in(now, &mut BatchBuffers::default())
    }

    /// [`Connection::poll_unsealed`], building the batch in a buffer from
    /// `buffers`: give the buffer back ([`BatchBuffers::reuse`]) once the
    /// batch is written, and the next batch allocates nothing.
    #[must_use]
    pub fn poll_unsealed_in(
        &mut self,
        now: Instant,
        buffers: &mut BatchBuffers,
    ) -> Option<Unsealed> {
        let max = self.limits.max_batch;
        // Sized up front: growing the buffer frame by frame would copy the
        // batch several times over.
        let data = self.data.len().min(max);
        let small: usize = (self.data.iter().take(data))
            .map(|q| TransmitBuilder::copied(&q.body))
            .sum();
        let control = [
            self.handshake_out.is_some(),
            self.fatal_close.is_some(),
            self.pong.is_some(),
            self.ping.is_some(),
            self.closing.is_some(),
        ];
        let control = control.iter().filter(|&&c| c).count();
        let mut batch = TransmitBuilder::in_buffer(buffers, data + control, small);
        if let Some(header) = self.handshake_out.take() {
            batch.push_sealed(&header);
        }
        if let Some(reason) = self.fatal_close.take() {
            self.push_control(&mut batch, Kind::Close { reason });
        }
        if matches!(self.phase, Phase::Established) {
            if let Some(token) = self.pong.take() {
                self.push_control(&mut batch, Kind::Pong { token });
            }
            if let Some(token) = self.ping.take() {
                self.push_control(&mut batch, Kind::Ping { token });
            }
            while batch.frames() < max {
                let Some(queued) = self.data.pop_front() else {
                    break;
                };
                let size = HEADER_SIZE + queued.body.len();
                self.queued_bytes = self.queued_bytes.saturating_sub(size);
                let header = self.header(queued.kind).with_app(queued.app);
                self.push_encoded(&mut batch, &header, &queued.body);
            }
            self.maybe_send_close(&mut batch, max);
        }
        let transmit = batch.finish(&self.integrity_out, buffers)?;
        self.last_sent = now;
        self.stats.transmits += 1;
        self.stats.frames_sent += transmit.frames() as u64;
        self.stats.bytes_sent += transmit.bytes() as u64;
        Some(transmit)
    }

    /// The next application event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Connection::handle_timeout`] next; `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        if !self.is_established() {
            if matches!(self.phase, Phase::AwaitingHello) {
                return Some(self.hello_deadline.min(self.handshake_deadline));
            }
            return Some(self.handshake_deadline);
        }
        let mut next = match self.reading_paused {
            // Not reading: nothing can arrive, so silence proves nothing.
            true => Instant::from_nanos(u64::MAX),
            false => self.last_received.saturating_add(self.limits.liveness),
        };
        match self.closing {
            // Closing: no more heartbeats, just the grace deadline.
            Some(closing) => next = next.min(closing.deadline),
            None if self.ping.is_none() => {
                next = next.min(self.last_sent.saturating_add(self.limits.heartbeat));
            }
            None => {}
        }
        Some(next)
    }

    /// Whether the handshake completed (true also while closing gracefully).
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established)
    }

    /// Whether [`Connection::poll_transmit`] may have a batch: false only
    /// for an established connection, neither closing nor closed, with
    /// nothing queued, whose `poll_transmit` would return `None` at once.
    pub fn has_output(&self) -> bool {
        !self.is_established()
            || self.closing.is_some()
            || self.closed.is_some()
            || self.handshake_out.is_some()
            || self.fatal_close.is_some()
            || self.pong.is_some()
            || self.ping.is_some()
            || !self.data.is_empty()
    }

    /// Whether the connection has closed (its `Closed` event is queued or
    /// delivered).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Closed, and every final frame has been handed to `poll_transmit`:
    /// the socket can be dropped.
    pub fn is_drained(&self) -> bool {
        self.closed.is_some() && self.handshake_out.is_none() && self.fatal_close.is_none()
    }

    /// Why the connection closed, once it has.
    pub fn close_cause(&self) -> Option<&CloseCause> {
        self.closed.as_ref()
    }

    /// The authenticated peer, once known.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// Whether we dialled or accepted.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether frames carry keyed tags (after an authenticated-frames handshake).
    pub fn authenticated_frames(&self) -> bool {
        self.integrity_out.is_authenticated()
    }

    /// Frames and bytes waiting in the send queue.
    pub fn queued(&self) -> (usize, usize) {
        (self.data.len(), self.queued_bytes)
    }

    /// The latest ping round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Counters as of `now`: [`Connection::stats`] with the pause under way
    /// counted up to `now`.
    pub fn stats_at(&self, now: Instant) -> Stats {
        let mut stats = self.stats;
        if let Some(since) = self.paused_since {
            stats.paused = stats
                .paused
                .saturating_add(now.saturating_duration_since(since));
        }
        stats
    }

    /// Encodes a handshake frame now (the handshake fixes its sequence and
    /// integrity mode) into the control lane's handshake slot.
    fn queue_handshake(&mut self, kind: Kind) {
        let header = self.header(kind);
        let encoded = header.encode(&[], &self.integrity_out, HEADER_SIZE_U32);
        debug_assert!(encoded.is_ok(), "handshake frames are header-only");
        self.handshake_out = encoded.ok();
    }

    fn header(&mut self, kind: Kind) -> Header {
        let sequence = self.send_seq;
        self.send_seq = self.send_seq.saturating_add(1);
        Header {
            cluster: self.cluster,
            view: 0,
            release: 0,
            replica: self.local_replica,
            sequence,
            kind,
            app: AppArea::ZERO,
        }
    }

    fn push_control(&mut self, batch: &mut TransmitBuilder, kind: Kind) {
        let header = self.header(kind);
        self.push_encoded(batch, &header, &Bytes::new());
    }

    fn push_encoded(&mut self, batch: &mut TransmitBuilder, header: &Header, body: &Bytes) {
        // Queued frames passed `check_frame` in `send`, and control frames
        // are header-only, so encoding cannot fail.
        let max = self.limits.max_message_size;
        let encoded = batch.push_unsealed(body, |h| header.encode_unsealed(h, body.len(), max));
        if let Err(e) = encoded {
            debug_assert!(false, "checked frame failed to encode: {e}");
        }
    }

    fn maybe_send_close(&mut self, batch: &mut TransmitBuilder, max: usize) {
        let Some(closing) = self.closing.as_mut() else {
            return;
        };
        if closing.close_sent || !self.data.is_empty() || batch.frames() >= max {
            return;
        }
        closing.close_sent = true;
        let closing = *closing;
        self.push_control(
            batch,
            Kind::Close {
                reason: closing.reason,
            },
        );
        if let Some(peer_reason) = closing.peer_reason {
            self.finish(if closing.initiated_by_peer {
                CloseCause::Peer(peer_reason)
            } else {
                CloseCause::Local(closing.reason)
            });
        }
    }

    /// Closes for good, reporting `cause` exactly once.
    fn finish(&mut self, cause: CloseCause) {
        if self.closed.is_some() {
            return;
        }
        self.phase = Phase::Closed;
        self.data.clear();
        self.queued_bytes = 0;
        self.ping = None;
        self.pong = None;
        self.closing = None;
        self.clear_received();
        self.events.push_back(Event::Closed {
            reason: cause.clone(),
        });
        self.closed = Some(cause);
    }

    /// A fatal error on an established connection: tell the peer why (a
    /// `close` ahead of any queued data), then close.
    fn fail(&mut self, cause: CloseCause, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        let tell_peer = self.is_established();
        self.finish(cause);
        if tell_peer {
            self.fatal_close = Some(reason);
        }
    }
}

fn plane_name(plane: Option<Plane>) -> &'static str {
    match plane {
        Some(Plane::Replica) => "replica-plane",
        Some(Plane::Client) => "client-plane",
        None => "not yet admitted",
    }
}
