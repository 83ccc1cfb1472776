//! QUIC ports on tokio's UDP sockets: one task per port runs the
//! endpoint of `QuicPort` (datagrams in and out, its
//! timer, its wake-ups).

use crate::runtime::{OsEntropy, Tokio};
use bus_proto::entropy::Entropy;
use bus_proto::host::{Machine, QuicPort, QuicStep, Runtime, Shared, StartError};
use bus_proto::time::Instant;
use std::io;
use std::sync::Arc;
use tokio::io::Interest;

/// A seed for a QUIC endpoint's packet-number randomness.
pub(crate) fn quic_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    OsEntropy.fill_bytes(&mut seed);
    seed
}

/// The receive buffer a QUIC port asks the kernel for.
const RECV_BUFFER: usize = 2 << 20;

/// A UDP socket with the kernel's offloads where it has them: several
/// datagrams per send (GSO) and per receive (GRO), through quinn-udp,
/// which falls back to one per call when the kernel refuses them.
pub(crate) struct Udp {
    socket: tokio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl Udp {
    pub(crate) fn new(socket: tokio::net::UdpSocket) -> io::Result<Udp> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        // Room for bursts while the port task is busy (the kernel caps it
        // at net.core.rmem_max).
        let _ = state.set_recv_buffer_size((&socket).into(), RECV_BUFFER);
        Ok(Udp { socket, state })
    }

    /// One receive without waiting: the bytes (several datagrams of
    /// `stride` bytes each under GRO), their length, stride and sender.
    fn try_receive(&self, buffer: &mut [u8]) -> io::Result<quinn_udp::RecvMeta> {
        let mut meta = [quinn_udp::RecvMeta::default()];
        let mut slices = [io::IoSliceMut::new(buffer)];
        self.socket.try_io(Interest::READABLE, || {
            self.state
                .recv((&self.socket).into(), &mut slices, &mut meta)
        })?;
        Ok(meta[0])
    }

    /// Sends every datagram the port has. A failed send (`EMSGSIZE`, no
    /// route) is a lost datagram, which QUIC recovers from.
    async fn send_all(&self, port: &mut QuicPort) {
        while let Some(batch) = port.poll_datagrams() {
            let transmit = quinn_udp::Transmit {
                destination: batch.to,
                ecn: None,
                contents: &batch.data,
                segment_size: batch.segment_size,
                src_ip: None,
            };
            loop {
                let sent = self.socket.try_io(Interest::WRITABLE, || {
                    self.state.send((&self.socket).into(), &transmit)
                });
                match sent {
                    Ok(()) => break,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        if self.socket.writable().await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(to = %batch.to, %error, "UDP send failed: datagrams dropped");
                        break;
                    }
                }
            }
        }
    }
}

/// Runs a QUIC port on its UDP socket until the port is done.
pub(crate) async fn run_quic<M: Machine>(
    shared: Arc<Shared<M, Tokio>>,
    mut port: QuicPort,
    udp: Udp,
) {
    /// Receives taken per wake-up before the port runs again.
    const BURST: usize = 64;
    // Room for a full GRO batch: QUIC's datagrams here are at most 1472
    // bytes (the endpoint's advertised limit); a larger one that does not
    // fit is truncated and dropped, as any lost datagram.
    let mut buffer = vec![0u8; (1500 * udp.state.gro_segments()).max(64 << 10)];
    loop {
        port.set_max_segments(udp.state.max_gso_segments());
        let step = shared.quic_step(&mut port);
        udp.send_all(&mut port).await;
        let QuicStep::Run { timeout } = step else {
            break;
        };
        // What already arrived, then wait for more.
        let mut received = 0;
        for _ in 0..BURST {
            match udp.try_receive(&mut buffer) {
                Ok(meta) => {
                    received += 1;
                    let stride = meta.stride.max(1);
                    for datagram in buffer[..meta.len].chunks(stride) {
                        shared.quic_datagram(&mut port, meta.addr, datagram);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier send (port unreachable) is
                // reported here on Linux: not this socket's failure.
                Err(error) => tracing::trace!(%error, "UDP receive error ignored"),
            }
        }
        if received > 0 {
            continue;
        }
        tokio::select! {
            biased;
            _ = udp.socket.readable() => {}
            () = shared.runtime().sleep_until(timeout.unwrap_or(Instant::from_nanos(0))), if timeout.is_some() => {}
            () = shared.quic_woken(&port) => {}
        }
    }
    udp.send_all(&mut port).await;
    drop(udp);
    shared.quic_closed(port);
}

/// Opens the port that dials replicas over QUIC, if any replica is.
pub(crate) fn start_quic_dialer<M: Machine>(
    shared: &Arc<Shared<M, Tokio>>,
) -> Result<(), StartError> {
    if let Some((port, local)) = shared.quic_dialer(std::time::Instant::now(), quic_seed())? {
        let bound = std::net::UdpSocket::bind(local).and_then(|socket| {
            socket.set_nonblocking(true)?;
            Udp::new(tokio::net::UdpSocket::from_std(socket)?)
        });
        match bound {
            Ok(socket) => {
                let task = run_quic(Arc::clone(shared), port, socket);
                shared.runtime().spawn(task);
            }
            Err(error) => {
                shared.quic_closed(port);
                return Err(StartError::Transport {
                    transport: "quic",
                    error: format!("cannot bind UDP {local}: {error}"),
                });
            }
        }
    }
    Ok(())
}
