//! QUIC ports: one UDP socket each, whose endpoint
//! ([`QuicEndpoint`]) one task of the adapter runs.
//!
//! A port carries many connections but has one task: the connections are
//! registered like sockets (so shutdown, pauses and closes see them), and
//! whatever would wake a socket task queues the connection for its port
//! instead. The endpoint runs outside the driver's lock: packet
//! protection and the TLS handshake never hold it; each call into the
//! core takes it for that call only.
//!
//! What an adapter writes for a port (see the `bus-tokio` adapter):
//!
//! ```text
//! loop {
//!     let QuicStep::Run { timeout } = shared.quic_step(&mut port) else { break };
//!     send every datagram of port.poll_datagram(), or batches of
//!     port.poll_datagrams() with UDP GSO (errors: dropped datagrams)
//!     wait for the first of: a datagram (shared.quic_datagram), the timeout,
//!                            shared.quic_woken(&port)
//! }
//! send the last datagrams; shared.quic_closed(port)
//! ```

use super::Machine;
use super::driver::{Entry, Runtime, Shared, State};
use super::error::{ListenError, StartError};
use super::layer::Transport;
use crate::handshake::Binding;
use crate::node::ConnectionId;
use crate::time::{Instant, Now};
use crate::transport::quic::{QuicCore, QuicEndpoint};
use core::future::poll_fn;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::vec::Vec;

/// One UDP socket's QUIC endpoint, as its task drives it.
#[derive(Debug)]
pub struct QuicPort {
    index: usize,
    /// A listener's one plane, if it takes only one.
    plane: Option<crate::wire::Plane>,
    /// The UDP socket's address, for a listener.
    local: Option<SocketAddr>,
    endpoint: QuicEndpoint,
    ready: Vec<ConnectionId>,
    dials: Vec<(ConnectionId, u8)>,
}

impl QuicPort {
    /// The next datagram to send. A send that fails is a lost datagram:
    /// QUIC retransmits.
    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.endpoint.poll_datagram()
    }

    /// The next datagrams to send, several at once for a socket with UDP
    /// GSO (after [`QuicPort::set_max_segments`]).
    pub fn poll_datagrams(&mut self) -> Option<crate::transport::quic::Datagrams> {
        self.endpoint.poll_datagrams()
    }

    /// How many datagrams the socket sends at once (UDP GSO); 1 without.
    pub fn set_max_segments(&mut self, segments: usize) {
        self.endpoint.set_max_segments(segments);
    }

    /// Connections this port carries.
    pub fn connections(&self) -> usize {
        self.endpoint.connections()
    }
}

/// What a port's task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicStep {
    /// Send the port's datagrams, then wait for a datagram, the timeout
    /// (if any) or [`Shared::quic_woken`].
    Run {
        /// When to step again without input.
        timeout: Option<Instant>,
    },
    /// The port is done: send its last datagrams, close the socket, then
    /// call [`Shared::quic_closed`].
    Exit,
}

/// The core, as a port's endpoint sees it: each call takes the driver's
/// lock for itself only.
struct HostCore<'a, M: Machine, R: Runtime> {
    shared: &'a Arc<Shared<M, R>>,
    port: usize,
    plane: Option<crate::wire::Plane>,
    local: Option<SocketAddr>,
}

impl<M: Machine, R: Runtime> HostCore<'_, M, R> {
    /// Runs `f` on the core for connection `id`, inside that connection's
    /// span (naming its peer there once the handshake has).
    fn call<T>(&self, id: ConnectionId, f: impl FnOnce(&mut M) -> T) -> T {
        let mut state = self.shared.lock();
        let span = state.sockets.get(&id).and_then(|e| e.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        let result = f(&mut state.machine);
        self.shared.after(&mut state, Some(id));
        let state = &mut *state;
        if let Some(entry) = state.sockets.get_mut(&id)
            && let Some(span) = &entry.span
            && !entry.named
            && !span.is_disabled()
            && let Some(peer) = state.machine.peer(id)
        {
            super::socket::name_peer(span, peer);
            entry.named = true;
        }
        result
    }
}

impl<M: Machine, R: Runtime> QuicCore for HostCore<'_, M, R> {
    fn accept_pending(&mut self, now: Now, remote: SocketAddr) -> Option<ConnectionId> {
        let mut state = self.shared.lock();
        if state.stopped || state.forced {
            return None;
        }
        let id = state.machine.accept_pending(now, remote, self.plane)?;
        let span = super::socket::connection_span(id, "accepted", "quic", Some(remote));
        if let Some(local) = self.local {
            state.machine.note_local(id, local);
            span.record("local", tracing::field::debug(local));
        }
        state.sockets.insert(id, Entry::on_port(self.port, span));
        self.shared.after(&mut state, Some(id));
        Some(id)
    }

    fn transport_ready(&mut self, now: Now, id: ConnectionId, binding: Binding) -> bool {
        self.call(id, |m| m.transport_ready(now, id, binding))
    }

    fn handle_input(&mut self, now: Now, id: ConnectionId, bytes: &[u8]) {
        self.call(id, |m| {
            if let Some(mut buffer) = m.take_read_buffer(id) {
                buffer.extend_from_slice(bytes);
                m.handle_read(now, id, buffer);
            }
        });
    }

    fn handle_chunks(&mut self, now: Now, id: ConnectionId, chunks: &[bytes::Bytes]) {
        self.call(id, |m| {
            if let Some(mut buffer) = m.take_read_buffer(id) {
                for chunk in chunks {
                    buffer.extend_from_slice(chunk);
                }
                m.handle_read(now, id, buffer);
            }
        });
    }

    fn handle_eof(&mut self, now: Now, id: ConnectionId) {
        self.call(id, |m| m.handle_eof(now, id));
    }

    fn poll_transmit_for(
        &mut self,
        now: Now,
        id: ConnectionId,
    ) -> Option<crate::connection::Transmit> {
        let batch = {
            let mut state = self.shared.lock();
            let batch = state.machine.poll_unsealed_for(now, id);
            if batch.is_some() {
                state.more_space();
            }
            self.shared.after(&mut state, Some(id));
            batch
        };
        // Sealed after the lock is released, as a socket task seals.
        batch.map(crate::connection::Unsealed::seal)
    }

    fn discard_output(&mut self, now: Now, id: ConnectionId) {
        let discarded = self.call(id, |m| super::socket::discard_output(m, now, id));
        if discarded > 0 {
            self.shared.lock().more_space();
        }
    }

    fn reading_paused(&mut self, now: Now, id: ConnectionId) -> bool {
        self.shared.lock().note_pause(|| now, id)
    }

    fn is_over(&self, id: ConnectionId) -> bool {
        let state = self.shared.lock();
        state.forced || state.sockets.get(&id).is_none_or(|e| e.closing)
    }

    fn wants_address_proof(&self, remote: SocketAddr) -> bool {
        self.shared.lock().machine.wants_address_proof(remote)
    }

    fn released(&mut self, id: ConnectionId) {
        self.shared.closed(id);
    }
}

impl<M: Machine, R: Runtime> Shared<M, R> {
    fn open_port(&self, endpoint: QuicEndpoint, plane: Option<crate::wire::Plane>) -> QuicPort {
        let mut state = self.lock();
        state.ports.push(super::driver::Port::default());
        QuicPort {
            index: state.ports.len() - 1,
            plane,
            local: None,
            endpoint,
            ready: Vec::new(),
            dials: Vec::new(),
        }
    }

    /// A port accepting connections with `transport` (a QUIC transport
    /// with a server configuration): bind the UDP socket first (at `local`),
    /// then run the port until [`QuicStep::Exit`]. `epoch` is any
    /// `std::time::Instant` (the endpoint's time counts from it); `seed`
    /// seeds QUIC's packet-number randomness.
    pub fn quic_listener(
        self: &Arc<Self>,
        transport: &Transport,
        local: SocketAddr,
        epoch: std::time::Instant,
        seed: [u8; 32],
    ) -> Result<QuicPort, ListenError> {
        let invalid = |message: std::string::String| ListenError {
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
        };
        let Some(server) = transport.quic_setup().and_then(|s| s.server.as_ref()) else {
            return Err(invalid(std::format!(
                "a {} transport cannot listen for QUIC (use TlsServer::quic)",
                transport.name()
            )));
        };
        let config = self.read(|m| m.config().clone());
        let endpoint = QuicEndpoint::new(epoch, &config, Some(server), None, seed)
            .map_err(|e| invalid(std::format!("{e}")))?;
        self.listener_opened();
        let mut port = self.open_port(endpoint, transport.plane());
        port.local = Some(local);
        Ok(port)
    }

    /// The port that dials the replicas whose transport is QUIC, with the
    /// local address to bind its UDP socket to (any address of the first
    /// such replica's family, any port); `None` if no replica is dialled
    /// over QUIC. Run it like a listener's port.
    pub fn quic_dialer(
        self: &Arc<Self>,
        epoch: std::time::Instant,
        seed: [u8; 32],
    ) -> Result<Option<(QuicPort, SocketAddr)>, StartError> {
        let (config, family) = {
            let state = self.lock();
            if state.dial_port.is_some() {
                return Ok(None);
            }
            let mut quic = state.transports.iter().filter(|(_, t)| t.is_quic());
            let Some((replica, _)) = quic.next() else {
                return Ok(None);
            };
            let ipv6 = state.addresses.get(replica).is_some_and(|a| a.is_ipv6());
            (state.machine.config().clone(), ipv6)
        };
        let endpoint = QuicEndpoint::new(epoch, &config, None, None, seed).map_err(|e| {
            StartError::Transport {
                transport: "quic",
                error: std::format!("{e}"),
            }
        })?;
        let port = self.open_port(endpoint, None);
        let mut state = self.lock();
        state.dial_port = Some(port.index);
        drop(state);
        self.listener_opened();
        let any = match family {
            true => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            false => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        Ok(Some((port, SocketAddr::new(any, 0))))
    }

    /// Runs the port: dials it was given, connections queued for it, and
    /// QUIC timers due now. Then send its datagrams.
    pub fn quic_step(self: &Arc<Self>, port: &mut QuicPort) -> QuicStep {
        let now = self.runtime.now();
        let (forced, stopped) = {
            let mut state = self.lock();
            let State { ports, sockets, .. } = &mut *state;
            let shared = &mut ports[port.index];
            core::mem::swap(&mut port.ready, &mut shared.ready);
            shared.ready.clear();
            port.dials.append(&mut shared.dials);
            for id in &port.ready {
                if let Some(entry) = sockets.get_mut(id) {
                    entry.port_ready = false;
                }
            }
            (state.forced, state.stopped)
        };
        let mut core = HostCore {
            shared: self,
            port: port.index,
            plane: port.plane,
            local: port.local,
        };
        if forced {
            port.endpoint.close_all(now, &mut core);
            for (id, _) in port.dials.drain(..) {
                self.closed(id);
            }
            return QuicStep::Exit;
        }
        let dials = core::mem::take(&mut port.dials);
        for &(id, replica) in &dials {
            self.start_quic_dial(port, now, id, replica);
        }
        port.dials = dials;
        port.dials.clear();
        for &id in &port.ready {
            port.endpoint.drive_connection(now, id, &mut core);
        }
        port.endpoint.drive_due(now, &mut core);
        if stopped && port.endpoint.connections() == 0 {
            return QuicStep::Exit;
        }
        QuicStep::Run {
            timeout: port.endpoint.poll_timeout(),
        }
    }

    /// Opens dial `id` to `replica` on the port's endpoint.
    fn start_quic_dial(
        self: &Arc<Self>,
        port: &mut QuicPort,
        now: Now,
        id: ConnectionId,
        replica: u8,
    ) {
        let target = {
            let state = self.lock();
            let closing = state.forced || state.sockets.get(&id).is_none_or(|e| e.closing);
            let address = state.addresses.get(&replica).copied();
            let tls = state
                .transports
                .get(&replica)
                .and_then(|t| t.quic_setup())
                .and_then(|s| s.client.clone());
            (!closing).then_some((address, tls))
        };
        match target {
            Some((Some(address), Some(tls))) => {
                if !self.with(|m, now| m.connected_pending(now, id, address)) {
                    return self.closed(id);
                }
                if let Some(span) = self.lock().sockets.get(&id).and_then(|e| e.span.as_ref()) {
                    span.record("remote", tracing::field::debug(Some(address)));
                }
                let mut core = HostCore {
                    shared: self,
                    port: port.index,
                    plane: port.plane,
                    local: port.local,
                };
                if !port.endpoint.connect_with(now, id, address, &tls) {
                    core.handle_eof(now, id);
                    self.closed(id);
                }
            }
            Some((address, tls)) => {
                tracing::warn!(
                    %id,
                    replica,
                    known_address = address.is_some(),
                    client_configuration = tls.is_some(),
                    "cannot dial over QUIC"
                );
                self.with(|m, now| m.connect_failed(now, id));
                self.closed(id);
            }
            None => self.closed(id),
        }
    }

    /// A datagram of `data` arrived on the port from `from`.
    pub fn quic_datagram(self: &Arc<Self>, port: &mut QuicPort, from: SocketAddr, data: &[u8]) {
        let now = self.runtime.now();
        let mut core = HostCore {
            shared: self,
            port: port.index,
            plane: port.plane,
            local: port.local,
        };
        port.endpoint.handle_datagram(now, from, data, &mut core);
    }

    /// Completes when the port has work: a connection to drive, a dial, or
    /// the driver stopping.
    pub async fn quic_woken(&self, port: &QuicPort) {
        poll_fn(|cx| self.lock().ports[port.index].wake.poll(cx)).await;
    }

    /// The port's task ended and closed its socket. Dials queued for it
    /// meanwhile fail.
    pub fn quic_closed(self: &Arc<Self>, port: QuicPort) {
        let dials = {
            let mut state = self.lock();
            if state.dial_port == Some(port.index) {
                state.dial_port = None;
            }
            core::mem::take(&mut state.ports[port.index].dials)
        };
        for (id, _) in dials {
            self.with(|m, now| m.connect_failed(now, id));
            self.closed(id);
        }
        self.listener_closed();
    }
}
