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

/// Runs a QUIC port on its UDP socket until the port is done.
pub(crate) async fn run_quic<M: Machine>(
    shared: Arc<Shared<M, Smol>>,
    mut port: QuicPort,
    socket: Async<std::net::UdpSocket>,
) {
    /// Datagrams taken per wake-up before the port runs again.
    const BURST: usize = 64;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        let step = shared.quic_step(&mut port);
        send_datagrams(&mut port, &socket).await;
        let QuicStep::Run { timeout } = step else {
            break;
        };
        let readable = async { Some(socket.readable().await) };
        let timer = async {
            match timeout {
                Some(at) => shared.runtime().sleep_until(at).await,
                None => future::pending().await,
            }
            None
        };
        let woken = async {
            shared.quic_woken(&port).await;
            None
        };
        if readable.or(timer.or(woken)).await.is_none() {
            continue;
        }
        for _ in 0..BURST {
            match socket.get_ref().recv_from(&mut buffer) {
                Ok((len, from)) => shared.quic_datagram(&mut port, from, &buffer[..len]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier send (port unreachable) is
                // reported here on Linux: not this socket's failure.
                Err(error) => tracing::trace!(%error, "UDP receive error ignored"),
            }
        }
    }
    send_datagrams(&mut port, &socket).await;
    drop(socket);
    shared.quic_closed(port);
}

/// Sends the port's datagrams. A failed send (`EMSGSIZE`, no route) is a
/// lost datagram, which QUIC recovers from.
async fn send_datagrams(port: &mut QuicPort, socket: &Async<std::net::UdpSocket>) {
    while let Some((to, datagram)) = port.poll_datagram() {
        if let Err(error) = socket.send_to(&datagram, to).await {
            tracing::debug!(%to, %error, "UDP send failed: datagram dropped");
        }
    }
}

/// Opens the port that dials replicas over QUIC, if any replica is.
pub(crate) fn start_quic_dialer<M: Machine>(
    shared: &Arc<Shared<M, Smol>>,
) -> Result<(), StartError> {
    if let Some((port, local)) = shared.quic_dialer(std::time::Instant::now(), quic_seed())? {
        match Async::<std::net::UdpSocket>::bind(local) {
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
