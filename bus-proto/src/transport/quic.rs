//! QUIC under framing (quinn-proto), driven from memory: one endpoint per
//! UDP socket owns its connections; the host feeds it datagrams and time
//! and sends what it hands out.
//!
//! A bus connection is one QUIC connection carrying one bidirectional
//! stream, opened by the dialer once QUIC is established (the peer allows
//! one bidirectional stream and no unidirectional one). A new connection
//! is admitted by the core ([`QuicCore::accept_pending`]: the same
//! unauthenticated pool and handshake cap as TCP) before any crypto work,
//! and refused with CONNECTION_REFUSED otherwise. The core's handshake
//! deadline covers the QUIC handshake and the bus handshake: a peer that
//! stalls after its Initial is closed then, not at QUIC's idle timeout.
//! TLS 1.3, ALPN `bus/1`, no tickets and no 0-RTT, as on the TLS
//! transport, from the same [`TlsServer`] and [`TlsClient`]; the binding
//! is the QUIC session's exporter (or none, for an `Unbound` policy).
//!
//! Writes keep whole frames: a batch the core hands out is written to the
//! stream completely before the next is asked for. Reads stop while the
//! core pauses the connection, so QUIC's flow control pushes back on the
//! sender; the stream's receive window is a few `max_message_size`.
//!
//! Time: quinn-proto measures time with `std::time::Instant`; the host
//! passes that type's origin once ([`QuicEndpoint::new`]'s `epoch`) and
//! the bus's own time after, so the endpoint reads no clock. quinn-proto
//! draws its connection ids, tokens and reset keys from the operating
//! system (seeded where it allows: its packet-number RNG).

use super::tls::{HostTime, TlsClient, TlsServer};
use super::{BindingPolicy, EXPORTER_LABEL};
use crate::config::ValidConfig;
use crate::connection::Transmit;
use crate::handshake::Binding;
use crate::node::ConnectionId;
use crate::time::{Instant, Now};
use bytes::{Bytes, BytesMut};
use core::net::SocketAddr;
use core::time::Duration;
use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, StreamEvent, StreamId,
    TransportConfig, VarInt,
};
use std::collections::{HashMap, VecDeque};
use std::string::String;
use std::sync::Arc;
use std::vec::Vec;

/// Datagrams an endpoint holds for the host before it stops producing
/// more (a host that does not send them gets none; QUIC retransmits).
pub const MAX_QUEUED_DATAGRAMS: usize = 1024;

/// Most datagrams in one [`Datagrams`] (one GSO send): a GSO send carries
/// at most 64 KiB, and the endpoint's datagrams are at most 1472 bytes
/// (its advertised `max_udp_payload_size`), so 44 fit. A larger send would
/// be refused by the kernel whole.
pub const MAX_SEGMENTS: usize = 44;

/// Datagrams for one address: one, or several of `segment_size` bytes each
/// (the last may be shorter), for a host that sends them with one call
/// (UDP generic segmentation offload; [`QuicEndpoint::set_max_segments`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagrams {
    /// Where to send them.
    pub to: SocketAddr,
    /// Their bytes, back to back.
    pub data: Vec<u8>,
    /// The size of each but the last, when there are several.
    pub segment_size: Option<usize>,
}

impl Datagrams {
    /// The datagrams one by one, for a host that sends them separately.
    ///
    /// ```
    /// use bus_proto::transport::quic::Datagrams;
    /// let batch = Datagrams {
    ///     to: "127.0.0.1:1".parse().unwrap(),
    ///     data: vec![0; 2500],
    ///     segment_size: Some(1200),
    /// };
    /// let sizes: Vec<usize> = batch.segments().map(|d| d.len()).collect();
    /// assert_eq!(sizes, [1200, 1200, 100]);
    /// assert_eq!(batch.count(), 3);
    /// ```
    pub fn segments(&self) -> core::slice::Chunks<'_, u8> {
        let size = self.segment_size.unwrap_or(self.data.len()).max(1);
        self.data.chunks(size)
    }

    /// How many datagrams.
    pub fn count(&self) -> usize {
        self.segments().len()
    }
}

/// Connections closed but still draining (QUIC keeps a closed connection
/// for three probe timeouts to answer late packets) an endpoint keeps;
/// beyond, it refuses new connections until some have drained.
pub const MAX_CLOSING: usize = 1024;

/// Datagrams one connection may produce per pass, so one busy connection
/// cannot starve the others.
const DATAGRAMS_PER_PASS: usize = 64;

/// The QUIC application error code of a bus close.
const CLOSE_CODE: u32 = 0;

/// What the endpoint needs from a node's or a client's core.
pub trait QuicCore {
    /// A new connection from `remote`: its id in the unauthenticated pool,
    /// or `None` to refuse it.
    fn accept_pending(&mut self, now: Now, remote: SocketAddr) -> Option<ConnectionId>;
    /// The QUIC handshake of `id` completed with this binding.
    fn transport_ready(&mut self, now: Now, id: ConnectionId, binding: Binding) -> bool;
    /// Stream bytes from `id`'s peer.
    fn handle_input(&mut self, now: Now, id: ConnectionId, bytes: &[u8]);
    /// Several chunks of stream bytes from `id`'s peer, in order (one call
    /// where a host would otherwise lock once per chunk).
    fn handle_chunks(&mut self, now: Now, id: ConnectionId, chunks: &[Bytes]) {
        for chunk in chunks {
            self.handle_input(now, id, chunk);
        }
    }
    /// `id`'s stream or connection ended.
    fn handle_eof(&mut self, now: Now, id: ConnectionId);
    /// `id`'s next batch of frames.
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit>;
    /// Drops what `id` still has to write: nothing can carry it any more.
    /// A core that seals its batches separately skips the sealing.
    fn discard_output(&mut self, now: Now, id: ConnectionId) {
        while self.poll_transmit_for(now, id).is_some() {}
    }
    /// True while `id` should not be read (its deliveries wait). Asked
    /// before each read, so a core may note the pause.
    fn reading_paused(&mut self, now: Now, id: ConnectionId) -> bool;
    /// True once `id` is over and has handed out its last bytes.
    fn is_over(&self, id: ConnectionId) -> bool;
    /// True if a new peer at `remote` must prove it owns that address (a
    /// QUIC Retry round trip) before the endpoint spends a handshake and a
    /// place in the pool on it.
    fn wants_address_proof(&self, _remote: SocketAddr) -> bool {
        false
    }
    /// The QUIC connection of `id` is gone (after its close, or refused):
    /// the endpoint holds nothing of it any more.
    fn released(&mut self, _id: ConnectionId) {}
}

/// A QUIC configuration could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum QuicConfigError {
    /// rustls's configuration is not usable for QUIC (it needs TLS 1.3
    /// and TLS13_AES_128_GCM_SHA256).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Crypto(String),
}

/// A QUIC listener's or dialer's TLS configuration, carried by a
/// [`Transport`](crate::host::Transport) ([`TlsServer::quic`],
/// [`TlsClient::quic`]).
#[derive(Clone, Debug)]
pub(crate) struct QuicSetup {
    pub(crate) server: Option<TlsServer>,
    pub(crate) client: Option<TlsClient>,
}

/// One QUIC connection and the bus connection on it.
struct QuicConn {
    quinn: quinn_proto::Connection,
    bus: ConnectionId,
    dialer: bool,
    policy: BindingPolicy,
    stream: Option<StreamId>,
    /// The rest of the batch being written, in order.
    pending: Vec<Bytes>,
    /// The bus connection was told the transport is ready.
    ready: bool,
    /// Our side of the stream is finished (the bus closed).
    finished: bool,
    /// The QUIC close was sent.
    closed: bool,
    /// Close at this instant even if the peer never acknowledges.
    close_by: Option<Instant>,
    /// Queued in `QuicEndpoint::touched`.
    touched: bool,
}

/// A QUIC endpoint on one UDP socket, as a sans-IO state machine.
pub struct QuicEndpoint {
    endpoint: quinn_proto::Endpoint,
    epoch: std::time::Instant,
    client: Option<TlsClient>,
    server: Option<(Arc<HostTime>, BindingPolicy)>,
    /// The clocks of every TLS configuration in use, set before each input.
    times: Vec<Arc<HostTime>>,
    transport: Arc<TransportConfig>,
    close_grace: Duration,
    conns: HashMap<ConnectionHandle, QuicConn>,
    by_bus: HashMap<ConnectionId, ConnectionHandle>,
    out: VecDeque<Datagrams>,
    /// Datagrams in `out` (a batch counts each of its segments).
    queued: usize,
    /// Datagrams one transmit may carry (1 without GSO).
    max_segments: usize,
    scratch: Vec<u8>,
    /// The handles one `drive` visits (reused, not allocated per call).
    handles: Vec<ConnectionHandle>,
    /// Connections that received datagrams since they were last driven
    /// (at most one entry each).
    touched: Vec<ConnectionHandle>,
    /// Stream chunks read for the core (reused).
    chunks: Vec<Bytes>,
    /// Connections we closed that are still draining.
    closing: usize,
}

impl core::fmt::Debug for QuicEndpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("QuicEndpoint")
            .field("connections", &self.conns.len())
            .field("queued_datagrams", &self.queued)
            .finish_non_exhaustive()
    }
}

/// The transport parameters of every bus connection.
fn transport(config: &ValidConfig, server: bool) -> Arc<TransportConfig> {
    let mut transport = TransportConfig::default();
    let window = u64::from(config.max_message_size).saturating_mul(4);
    let window = VarInt::from_u64(window).unwrap_or(VarInt::MAX);
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(u32::from(server)))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(window)
        .receive_window(window)
        .datagram_receive_buffer_size(None)
        // The bus's pings keep connections alive; QUIC's idle timeout is a
        // backstop beyond the bus's liveness deadline.
        .keep_alive_interval(None)
        .max_idle_timeout(
            (config.liveness_timeout * 2)
                .try_into()
                .ok()
                .or_else(|| Duration::from_secs(60).try_into().ok()),
        )
        // Batches only as large as the host allows (`set_max_segments`).
        .enable_segmentation_offload(true);
    Arc::new(transport)
}

impl QuicEndpoint {
    /// An endpoint that accepts connections with `server` (if given) and
    /// dials with `client` (if given). `epoch` is the `std::time::Instant`
    /// the host's time counts from (its zero); `seed` seeds quinn-proto's
    /// endpoint RNG.
    pub fn new(
        epoch: std::time::Instant,
        config: &ValidConfig,
        server: Option<&TlsServer>,
        client: Option<&TlsClient>,
        seed: [u8; 32],
    ) -> Result<Self, QuicConfigError> {
        let crypto = |e: &dyn core::fmt::Display| QuicConfigError::Crypto(std::format!("{e}"));
        let (server_config, server_parts) = match server {
            None => (None, None),
            Some(tls) => {
                let (rustls, time, policy) = tls.parts();
                let quic = QuicServerConfig::try_from(rustls).map_err(|e| crypto(&e))?;
                let mut server = quinn_proto::ServerConfig::with_crypto(Arc::new(quic));
                server.transport_config(transport(config, true));
                (Some(Arc::new(server)), Some((time, policy)))
            }
        };
        let mut times = Vec::new();
        if let Some((time, _)) = &server_parts {
            times.push(Arc::clone(time));
        }
        if let Some(tls) = client {
            // Checked now, so a dial cannot fail on it later.
            let (rustls, time, _, _) = tls.parts();
            QuicClientConfig::try_from(rustls).map_err(|e| crypto(&e))?;
            if !times.iter().any(|t| Arc::ptr_eq(t, &time)) {
                times.push(time);
            }
        }
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(EndpointConfig::default()),
            server_config,
            false,
            Some(seed),
        );
        Ok(QuicEndpoint {
            endpoint,
            epoch,
            client: client.cloned(),
            server: server_parts,
            times,
            transport: transport(config, false),
            close_grace: config.close_grace,
            conns: HashMap::new(),
            by_bus: HashMap::new(),
            out: VecDeque::new(),
            queued: 0,
            max_segments: 1,
            scratch: Vec::new(),
            handles: Vec::new(),
            touched: Vec::new(),
            chunks: Vec::new(),
            closing: 0,
        })
    }

    fn at(&self, now: Now) -> std::time::Instant {
        self.epoch + Duration::from_nanos(now.mono.as_nanos())
    }

    fn set_time(&self, now: Now) {
        for time in &self.times {
            time.set(now);
        }
    }

    /// Bus connections this endpoint carries.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Dials `to` for the core's connection `id` (after the core's
    /// `Connect` and `connected_pending`) with the endpoint's own client
    /// configuration. `false` if this endpoint cannot dial or quinn-proto
    /// refused the address.
    pub fn connect(&mut self, now: Now, id: ConnectionId, to: SocketAddr) -> bool {
        match self.client.clone() {
            Some(tls) => self.connect_with(now, id, to, &tls),
            None => false,
        }
    }

    /// [`QuicEndpoint::connect`] verifying the server with `tls` (one
    /// server name per replica).
    pub fn connect_with(
        &mut self,
        now: Now,
        id: ConnectionId,
        to: SocketAddr,
        tls: &TlsClient,
    ) -> bool {
        let (rustls, time, name, policy) = tls.parts();
        let quic = match QuicClientConfig::try_from(rustls) {
            Ok(quic) => quic,
            Err(error) => {
                tracing::warn!(%id, %to, %error, "TLS configuration unusable for QUIC");
                return false;
            }
        };
        let mut config = quinn_proto::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::clone(&self.transport));
        if !self.times.iter().any(|t| Arc::ptr_eq(t, &time)) {
            self.times.push(Arc::clone(&time));
        }
        time.set(now);
        let at = self.at(now);
        match self.endpoint.connect(at, config, to, &name) {
            Ok((handle, quinn)) => {
                self.insert(handle, quinn, id, true, policy);
                true
            }
            Err(error) => {
                tracing::debug!(%id, %to, %error, "QUIC connect refused");
                false
            }
        }
    }

    fn insert(
        &mut self,
        handle: ConnectionHandle,
        quinn: quinn_proto::Connection,
        bus: ConnectionId,
        dialer: bool,
        policy: BindingPolicy,
    ) {
        self.by_bus.insert(bus, handle);
        self.conns.insert(
            handle,
            QuicConn {
                quinn,
                bus,
                dialer,
                policy,
                stream: None,
                pending: Vec::new(),
                ready: false,
                finished: false,
                closed: false,
                close_by: None,
                touched: false,
            },
        );
    }

    /// A datagram arrived from `from`. A new connection is admitted (or
    /// refused) at once; datagrams of known connections are processed by
    /// QUIC now and reach the core at the next [`QuicEndpoint::drive`] or
    /// [`QuicEndpoint::drive_due`], once per burst.
    pub fn handle_datagram(
        &mut self,
        now: Now,
        from: SocketAddr,
        data: &[u8],
        core: &mut dyn QuicCore,
    ) {
        self.set_time(now);
        let at = self.at(now);
        let mut buf = core::mem::take(&mut self.scratch);
        buf.clear();
        let event = self
            .endpoint
            .handle(at, from, None, None, BytesMut::from(data), &mut buf);
        match event {
            Some(DatagramEvent::NewConnection(incoming)) => {
                let policy = self.server.as_ref().map(|(_, p)| *p);
                // A peer proves it owns its address (a Retry round trip,
                // no state kept) before it takes a place in the pool or
                // costs a handshake, when the core asks: under load, or
                // when its address already holds a place (a spoofed source
                // could otherwise evict that address's real handshakes).
                if policy.is_some()
                    && !incoming.remote_address_validated()
                    && incoming.may_retry()
                    && core.wants_address_proof(from)
                {
                    if let Ok(response) = self.endpoint.retry(incoming, &mut buf) {
                        self.queue(response.destination, &buf[..response.size]);
                    }
                    self.scratch = buf;
                    return;
                }
                let admitted = match policy {
                    Some(_) if self.closing >= MAX_CLOSING => None,
                    Some(policy) => core.accept_pending(now, from).map(|bus| (policy, bus)),
                    None => None,
                };
                match admitted {
                    Some((policy, bus)) => {
                        match self.endpoint.accept(incoming, at, &mut buf, None) {
                            Ok((handle, quinn)) => {
                                self.insert(handle, quinn, bus, false, policy);
                                self.drive_one(now, handle, core);
                            }
                            Err(error) => {
                                core.handle_eof(now, bus);
                                core.released(bus);
                                if let Some(response) = error.response {
                                    self.queue(response.destination, &buf[..response.size]);
                                }
                            }
                        }
                    }
                    None => {
                        let response = self.endpoint.refuse(incoming, &mut buf);
                        self.queue(response.destination, &buf[..response.size]);
                    }
                }
            }
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                // Driven once per burst of datagrams, by the next `drive*`.
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.quinn.handle_event(event);
                    if !core::mem::replace(&mut conn.touched, true) {
                        self.touched.push(handle);
                    }
                }
            }
            Some(DatagramEvent::Response(response)) => {
                self.queue(response.destination, &buf[..response.size]);
            }
            None => {}
        }
        self.scratch = buf;
    }

    fn queue(&mut self, to: SocketAddr, datagram: &[u8]) {
        if self.queued < MAX_QUEUED_DATAGRAMS {
            self.queued += 1;
            self.out.push_back(Datagrams {
                to,
                data: datagram.to_vec(),
                segment_size: None,
            });
        }
    }

    /// How many datagrams one [`Datagrams`] may carry: what the host's
    /// socket can send at once (UDP GSO), from 1 (the default) to
    /// [`MAX_SEGMENTS`]. A host may lower it at any time (a kernel that
    /// refused GSO).
    pub fn set_max_segments(&mut self, segments: usize) {
        self.max_segments = segments.clamp(1, MAX_SEGMENTS);
    }

    /// Runs the connection carrying the core's connection `bus`: its
    /// timers, the core's output and close. Call when the core has output
    /// for it or resumed reading it.
    pub fn drive_connection(&mut self, now: Now, bus: ConnectionId, core: &mut dyn QuicCore) {
        self.set_time(now);
        if let Some(&handle) = self.by_bus.get(&bus) {
            self.drive_one(now, handle, core);
        }
    }

    /// Runs the connections that received datagrams since they were last
    /// driven, and those whose timers (QUIC's, or a close deadline) are due
    /// at `now`.
    pub fn drive_due(&mut self, now: Now, core: &mut dyn QuicCore) {
        self.set_time(now);
        let at = self.at(now);
        let mut handles = core::mem::take(&mut self.handles);
        handles.clear();
        handles.append(&mut self.touched);
        handles.extend(self.conns.iter_mut().filter_map(|(&handle, c)| {
            let quic = c.quinn.poll_timeout().is_some_and(|t| t <= at);
            let close = !c.closed && c.close_by.is_some_and(|t| t <= now.mono);
            (!c.touched && (quic || close)).then_some(handle)
        }));
        for &handle in &handles {
            self.drive_one(now, handle, core);
        }
        self.handles = handles;
    }

    /// Closes every connection at once (a forced shutdown): each gets
    /// QUIC's close, and the core hears its end and its release.
    pub fn close_all(&mut self, now: Now, core: &mut dyn QuicCore) {
        let at = self.at(now);
        for (_, mut conn) in self.conns.drain() {
            if !conn.closed {
                conn.quinn.close(
                    at,
                    VarInt::from_u32(CLOSE_CODE),
                    Bytes::from_static(b"bus shut down"),
                );
            }
            let mut buf = core::mem::take(&mut self.scratch);
            buf.clear();
            if self.queued < MAX_QUEUED_DATAGRAMS
                && let Some(t) = conn.quinn.poll_transmit(at, 1, &mut buf)
            {
                self.queued += 1;
                self.out.push_back(Datagrams {
                    to: t.destination,
                    data: buf[..t.size].to_vec(),
                    segment_size: None,
                });
            }
            self.scratch = buf;
            core.handle_eof(now, conn.bus);
            core.released(conn.bus);
        }
        self.by_bus.clear();
        self.closing = 0;
    }

    /// Runs every connection: timers due at `now`, the core's output, the
    /// core's closes. Call after any input to the core, and at
    /// [`QuicEndpoint::poll_timeout`].
    pub fn drive(&mut self, now: Now, core: &mut dyn QuicCore) {
        self.set_time(now);
        let mut handles = core::mem::take(&mut self.handles);
        handles.clear();
        self.touched.clear();
        handles.extend(self.conns.keys().copied());
        for &handle in &handles {
            self.drive_one(now, handle, core);
        }
        self.handles = handles;
    }

    fn drive_one(&mut self, now: Now, handle: ConnectionHandle, core: &mut dyn QuicCore) {
        let at = self.at(now);
        let Some(conn) = self.conns.get_mut(&handle) else {
            return;
        };
        conn.touched = false;
        if conn.quinn.poll_timeout().is_some_and(|t| t <= at) {
            conn.quinn.handle_timeout(at);
        }
        let bus = conn.bus;
        // The stream or connection ended: what was received is still
        // handed to the core (paused or not) before the end.
        let mut ended = false;
        while let Some(event) = conn.quinn.poll() {
            match event {
                Event::Connected => {
                    if conn.quinn.accepted_0rtt() {
                        // Defence in depth: the configuration allows none.
                        conn.quinn
                            .close(at, VarInt::from_u32(CLOSE_CODE), Bytes::new());
                        conn.closed = true;
                        self.closing += 1;
                        core.handle_eof(now, bus);
                        continue;
                    }
                    if conn.dialer {
                        conn.stream = conn.quinn.streams().open(Dir::Bi);
                    }
                    let binding = binding(&conn.quinn, conn.policy);
                    conn.ready = true;
                    core.transport_ready(now, bus, binding);
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    while let Some(id) = conn.quinn.streams().accept(Dir::Bi) {
                        if conn.stream.is_none() && !conn.dialer {
                            conn.stream = Some(id);
                        } else {
                            // One stream per bus connection.
                            let _ = conn
                                .quinn
                                .recv_stream(id)
                                .stop(VarInt::from_u32(CLOSE_CODE));
                        }
                    }
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                    while let Some(id) = conn.quinn.streams().accept(Dir::Uni) {
                        let _ = conn
                            .quinn
                            .recv_stream(id)
                            .stop(VarInt::from_u32(CLOSE_CODE));
                    }
                }
                Event::Stream(StreamEvent::Available { dir: Dir::Bi })
                    if conn.dialer && conn.ready && conn.stream.is_none() =>
                {
                    // The server granted its stream only now.
                    conn.stream = conn.quinn.streams().open(Dir::Bi);
                }
                Event::Stream(StreamEvent::Finished { .. }) if conn.finished => {
                    // Everything we wrote was acknowledged: close now.
                    conn.close_by = Some(now.mono);
                }
                Event::Stream(StreamEvent::Stopped { .. }) => {
                    // The peer will not read what we write.
                    conn.pending.clear();
                    ended = true;
                }
                Event::ConnectionLost { .. } => ended = true,
                _ => {}
            }
        }
        // Stream data to the core, unless it pauses this connection (an
        // ending connection hands over what it has: at most its window).
        if let Some(id) = conn.stream
            && conn.ready
            && (ended || !core.reading_paused(now, bus))
        {
            let mut stream = conn.quinn.recv_stream(id);
            if let Ok(mut chunks) = stream.read(true) {
                self.chunks.clear();
                loop {
                    match chunks.next(usize::MAX) {
                        Ok(Some(chunk)) => self.chunks.push(chunk.bytes),
                        // Finished, or reset by the peer: the end.
                        Ok(None) | Err(quinn_proto::ReadError::Reset(_)) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let _ = chunks.finalize();
                if !self.chunks.is_empty() {
                    core.handle_chunks(now, bus, &self.chunks);
                    self.chunks.clear();
                }
            }
        }
        if ended {
            core.handle_eof(now, bus);
            // Nothing more can be written: what the core still holds for
            // this connection (a hello queued as the peer left) is handed
            // out and dropped, so the core can free it.
            conn.pending.clear();
            core.discard_output(now, bus);
        }
        // The core's batches to the stream, whole, in order.
        if let Some(id) = conn.stream
            && conn.ready
            && !conn.finished
        {
            loop {
                if conn.pending.is_empty() {
                    match core.poll_transmit_for(now, bus) {
                        Some(batch) => conn.pending = batch.into_segments(),
                        None => break,
                    }
                }
                match conn.quinn.send_stream(id).write_chunks(&mut conn.pending) {
                    Ok(written) => {
                        conn.pending.drain(..written.chunks);
                        if !conn.pending.is_empty() {
                            break;
                        }
                    }
                    // Flow control: the peer's next datagram brings us back.
                    Err(quinn_proto::WriteError::Blocked) => break,
                    // Stopped or gone: nothing more will be read.
                    Err(_) => {
                        conn.pending.clear();
                        core.handle_eof(now, bus);
                        core.discard_output(now, bus);
                        break;
                    }
                }
            }
        }
        // The bus connection is over: finish the stream once its last
        // bytes are written, then close after the peer acknowledged them,
        // so the last reply is not dropped by the close; in any case at
        // `close_grace` from now (a peer that stops acknowledging, or
        // grants no credit, gets no longer).
        if !conn.closed && core.is_over(bus) {
            if conn.close_by.is_none() {
                conn.close_by = Some(match conn.stream {
                    Some(_) => now.mono.saturating_add(self.close_grace),
                    None => now.mono,
                });
            }
            if let Some(id) = conn.stream
                && !conn.finished
                && conn.pending.is_empty()
            {
                conn.finished = true;
                let _ = conn.quinn.send_stream(id).finish();
            }
        }
        if !conn.closed && conn.close_by.is_some_and(|t| t <= now.mono) {
            conn.closed = true;
            self.closing += 1;
            conn.quinn.close(
                at,
                VarInt::from_u32(CLOSE_CODE),
                Bytes::from_static(b"bus closed"),
            );
        }
        // Endpoint events, and the connection's datagrams.
        let mut drained = false;
        while let Some(event) = conn.quinn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(back) = self.endpoint.handle_event(handle, event) {
                conn.quinn.handle_event(back);
            }
        }
        let mut buf = core::mem::take(&mut self.scratch);
        let mut more = true;
        let mut produced = 0;
        while produced < DATAGRAMS_PER_PASS && self.queued < MAX_QUEUED_DATAGRAMS {
            let room = (DATAGRAMS_PER_PASS - produced).min(MAX_QUEUED_DATAGRAMS - self.queued);
            buf.clear();
            let Some(t) = conn
                .quinn
                .poll_transmit(at, room.min(self.max_segments), &mut buf)
            else {
                more = false;
                break;
            };
            let batch = Datagrams {
                to: t.destination,
                data: buf[..t.size].to_vec(),
                segment_size: t.segment_size.filter(|&s| s < t.size),
            };
            let count = batch.count();
            produced += count;
            self.queued += count;
            self.out.push_back(batch);
        }
        self.scratch = buf;
        // Datagrams left unasked (the queue was full, or this pass's share
        // was spent): drive it again once the host has sent the queue.
        if more && !core::mem::replace(&mut conn.touched, true) {
            self.touched.push(handle);
        }
        if drained || conn.quinn.is_drained() {
            if conn.closed {
                self.closing -= 1;
            }
            self.by_bus.remove(&bus);
            self.conns.remove(&handle);
            core.handle_eof(now, bus);
            core.discard_output(now, bus);
            core.released(bus);
        }
    }

    /// The next datagram to send, one at a time.
    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let batch = self.out.pop_front()?;
        let Some(size) = batch.segment_size.filter(|&s| s < batch.data.len()) else {
            self.queued -= 1;
            return Some((batch.to, batch.data));
        };
        // A batch for a host that sends one by one after all: split it.
        let mut rest = batch.data;
        let first: Vec<u8> = rest.drain(..size).collect();
        self.queued -= 1;
        self.out.push_front(Datagrams {
            to: batch.to,
            data: rest,
            segment_size: Some(size),
        });
        Some((batch.to, first))
    }

    /// The next datagrams to send: several at once when
    /// [`QuicEndpoint::set_max_segments`] allows (send them with UDP GSO,
    /// `segment_size` per datagram).
    pub fn poll_datagrams(&mut self) -> Option<Datagrams> {
        let batch = self.out.pop_front()?;
        self.queued -= batch.count();
        Some(batch)
    }

    /// When [`QuicEndpoint::drive`] must run again (QUIC's timers and the
    /// close deadlines).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.touched.is_empty() {
            // Datagrams wait to be processed or produced: at once.
            return Some(Instant::from_nanos(0));
        }
        let epoch = self.epoch;
        self.conns
            .values_mut()
            .flat_map(|c| {
                let quic = c.quinn.poll_timeout().map(|t| {
                    let since = t.saturating_duration_since(epoch);
                    Instant::from_nanos(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
                });
                [quic, c.close_by.filter(|_| !c.closed)]
            })
            .flatten()
            .min()
    }
}

/// The bus handshake's binding for an established QUIC connection.
fn binding(quinn: &quinn_proto::Connection, policy: BindingPolicy) -> Binding {
    match policy {
        BindingPolicy::Unbound => Binding::NONE,
        BindingPolicy::TlsExporter => {
            let mut out = [0u8; 32];
            match quinn
                .crypto_session()
                .export_keying_material(&mut out, EXPORTER_LABEL, b"")
            {
                Ok(()) => Binding::from_bytes(out),
                // No exporter: a binding no peer can match, so the bus
                // handshake fails closed.
                Err(_) => Binding::from_bytes([0xff; 32]),
            }
        }
    }
}

impl QuicCore for crate::node::Node {
    fn accept_pending(&mut self, now: Now, remote: SocketAddr) -> Option<ConnectionId> {
        crate::node::Node::accept_pending(self, now, Some(remote)).ok()
    }
    fn transport_ready(&mut self, now: Now, id: ConnectionId, binding: Binding) -> bool {
        crate::node::Node::transport_ready(self, now, id, binding).is_ok()
    }
    fn handle_input(&mut self, now: Now, id: ConnectionId, bytes: &[u8]) {
        let _ = crate::node::Node::handle_input(self, now, id, bytes);
    }
    fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        crate::node::Node::handle_eof(self, now, id);
    }
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit> {
        crate::node::Node::poll_transmit_for(self, now, id)
    }
    fn discard_output(&mut self, now: Now, id: ConnectionId) {
        while crate::node::Node::poll_unsealed_for(self, now, id).is_some() {}
    }
    fn reading_paused(&mut self, _: Now, id: ConnectionId) -> bool {
        self.connection(id).is_some_and(|c| c.reading_paused())
    }
    fn is_over(&self, id: ConnectionId) -> bool {
        !self.holds(id)
    }
    fn wants_address_proof(&self, remote: SocketAddr) -> bool {
        self.wants_address_proof(remote)
    }
}

impl QuicCore for crate::client::Client {
    /// A client accepts nothing.
    fn accept_pending(&mut self, _: Now, _: SocketAddr) -> Option<ConnectionId> {
        None
    }
    fn transport_ready(&mut self, now: Now, id: ConnectionId, binding: Binding) -> bool {
        crate::client::Client::transport_ready(self, now, id, binding).is_ok()
    }
    fn handle_input(&mut self, now: Now, id: ConnectionId, bytes: &[u8]) {
        let _ = crate::client::Client::handle_input(self, now, id, bytes);
    }
    fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        crate::client::Client::handle_eof(self, now, id);
    }
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit> {
        crate::client::Client::poll_transmit_for(self, now, id)
    }
    fn discard_output(&mut self, now: Now, id: ConnectionId) {
        while crate::client::Client::poll_unsealed_for(self, now, id).is_some() {}
    }
    fn reading_paused(&mut self, _: Now, _: ConnectionId) -> bool {
        false
    }
    fn is_over(&self, id: ConnectionId) -> bool {
        !self.holds(id)
    }
}
