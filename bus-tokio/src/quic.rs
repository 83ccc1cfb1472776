//! QUIC ports on tokio's UDP sockets: one task per port runs the
//! endpoint of `QuicPort` (datagrams in and out, its
//! timer, its wake-ups).

use crate::runtime::{OsEntropy, Tokio};
use bus_proto::entropy::Entropy;
use bus_proto::host::{Machine, QuicPort, QuicStep, Runtime, Shared, StartError};
use bus_proto::time::Instant;
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
    shared: Arc<Shared<M, Tokio>>,
    mut port: QuicPort,
    socket: tokio::net::UdpSocket,
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
        let received = tokio::select! {
            biased;
            received = socket.recv_from(&mut buffer) => Some(received),
            () = shared.runtime().sleep_until(timeout.unwrap_or(Instant::from_nanos(0))), if timeout.is_some() => None,
            () = shared.quic_woken(&port) => None,
        };
        let mut received = received;
        for _ in 0..BURST {
            match received {
                Some(Ok((len, from))) => shared.quic_datagram(&mut port, from, &buffer[..len]),
                // An ICMP error for an earlier send (port unreachable) is
                // reported here on Linux: not this socket's failure.
                Some(Err(error)) => tracing::trace!(%error, "UDP receive error ignored"),
                None => break,
            }
            received = match socket.try_recv_from(&mut buffer) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
                other => Some(other),
            };
        }
    }
    send_datagrams(&mut port, &socket).await;
    drop(socket);
    shared.quic_closed(port);
}

/// Sends the port's datagrams. A failed send (`EMSGSIZE`, no route) is a
/// lost datagram, which QUIC recovers from.
async fn send_datagrams(port: &mut QuicPort, socket: &tokio::net::UdpSocket) {
    while let Some((to, datagram)) = port.poll_datagram() {
        if let Err(error) = socket.send_to(&datagram, to).await {
            tracing::debug!(%to, %error, "UDP send failed: datagram dropped");
        }
    }
}

/// Opens the port that dials replicas over QUIC, if any replica is.
pub(crate) fn start_quic_dialer<M: Machine>(
    shared: &Arc<Shared<M, Tokio>>,
) -> Result<(), StartError> {
    if let Some((port, local)) = shared.quic_dialer(std::time::Instant::now(), quic_seed())? {
        let bound = std::net::UdpSocket::bind(local).and_then(|socket| {
            socket.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(socket)
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
