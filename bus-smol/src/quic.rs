//! QUIC ports on smol's UDP sockets: one task per port runs the
//! endpoint of `QuicPort` (datagrams in and out, its
//! timer, its wake-ups).

use crate::runtime::{OsEntropy, Smol};
use bus_proto::entropy::Entropy;
use bus_proto::host::{Machine, QuicPort, QuicStep, Runtime, Shared, StartError};
use smol::Async;
use smol::future::{self, FutureExt};
use std::io;

use std::sync::Arc;

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
    socket: Async<std::net::UdpSocket>,
    state: quinn_udp::UdpSocketState,
}

impl Udp {
    pub(crate) fn new(socket: Async<std::net::UdpSocket>) -> io::Result<Udp> {
        let state = quinn_udp::UdpSocketState::new(socket.get_ref().into())?;
        // Room for bursts while the port task is busy (the kernel caps it
        // at net.core.rmem_max).
        let _ = state.set_recv_buffer_size(socket.get_ref().into(), RECV_BUFFER);
        Ok(Udp { socket, state })
    }

    /// One receive without waiting: the bytes (several datagrams of
    /// `stride` bytes each under GRO), their length, stride and sender.
    fn try_receive(&self, buffer: &mut [u8]) -> io::Result<quinn_udp::RecvMeta> {
        let mut meta = [quinn_udp::RecvMeta::default()];
        let mut slices = [io::IoSliceMut::new(buffer)];
        self.state
            .recv(self.socket.get_ref().into(), &mut slices, &mut meta)?;
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
            let sent = self
                .socket
                .write_with(|socket| self.state.send(socket.into(), &transmit))
                .await;
            if let Err(error) = sent {
                tracing::debug!(to = %batch.to, %error, "UDP send failed: datagrams dropped");
            }
        }
    }
}

/// Runs a QUIC port on its UDP socket until the port is done.
pub(crate) async fn run_quic<M: Machine>(
    shared: Arc<Shared<M, Smol>>,
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
        let readable = async {
            let _ = udp.socket.readable().await;
        };
        let timer = async {
            match timeout {
                Some(at) => shared.runtime().sleep_until(at).await,
                None => future::pending().await,
            }
        };
        let woken = shared.quic_woken(&port);
        readable.or(timer.or(woken)).await;
    }
    udp.send_all(&mut port).await;
    drop(udp);
    shared.quic_closed(port);
}

/// Opens the port that dials replicas over QUIC, if any replica is.
pub(crate) fn start_quic_dialer<M: Machine>(
    shared: &Arc<Shared<M, Smol>>,
) -> Result<(), StartError> {
    if let Some((port, local)) = shared.quic_dialer(std::time::Instant::now(), quic_seed())? {
        match Async::<std::net::UdpSocket>::bind(local).and_then(Udp::new) {
            Ok(udp) => {
                let task = run_quic(Arc::clone(shared), port, udp);
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
