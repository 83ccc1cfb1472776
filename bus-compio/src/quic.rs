//! QUIC ports on compio's UDP sockets: one task per port runs the
//! endpoint of `QuicPort` (datagrams in and out, its
//! timer, its wake-ups).

use crate::runtime::{Compio, OsEntropy};
use bus_proto::entropy::Entropy;
use bus_proto::host::{Machine, QuicPort, QuicStep, Runtime, Shared, StartError};
use compio::BufResult;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::Poll;

use std::sync::Arc;

/// A seed for a QUIC endpoint's packet-number randomness.
pub(crate) fn quic_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    OsEntropy.fill_bytes(&mut seed);
    seed
}

/// An operation kept in flight across wake-ups.
type Op<T> = Pin<Box<dyn Future<Output = T>>>;

/// A datagram's length and sender, with the buffer it was read into.
type Received = (io::Result<(usize, std::net::SocketAddr)>, Vec<u8>);

/// One receive into an owned buffer, handed back with the result.
async fn receive(socket: compio::net::UdpSocket, buffer: Vec<u8>) -> Received {
    let BufResult(result, buffer) = socket.recv_from(buffer).await;
    (result, buffer)
}

/// Runs a QUIC port on its UDP socket until the port is done. The
/// receive stays in flight across wake-ups, owning its buffer, so no
/// datagram is lost to a cancelled operation.
pub(crate) async fn run_quic<M: Machine>(
    shared: Arc<Shared<M, Compio>>,
    mut port: QuicPort,
    socket: compio::net::UdpSocket,
) {
    let mut receiving: Op<Received> = Box::pin(receive(socket.clone(), vec![0u8; 64 << 10]));
    loop {
        let step = shared.quic_step(&mut port);
        send_datagrams(&mut port, &socket).await;
        let QuicStep::Run { timeout } = step else {
            break;
        };
        let received = {
            let mut woken = std::pin::pin!(shared.quic_woken(&port));
            let mut timer = timeout.map(|at| Box::pin(shared.runtime().sleep_until(at)));
            poll_fn(|cx| {
                if let Poll::Ready(received) = receiving.as_mut().poll(cx) {
                    return Poll::Ready(Some(received));
                }
                if let Some(sleep) = timer.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                woken.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        if let Some((result, buffer)) = received {
            match result {
                Ok((len, from)) => shared.quic_datagram(&mut port, from, &buffer[..len]),
                // An ICMP error for an earlier send (port unreachable) is
                // reported here on Linux: not this socket's failure.
                Err(error) => tracing::trace!(%error, "UDP receive error ignored"),
            }
            receiving = Box::pin(receive(socket.clone(), buffer));
        }
    }
    send_datagrams(&mut port, &socket).await;
    drop(receiving);
    drop(socket);
    shared.quic_closed(port);
}

/// Sends the port's datagrams. A failed send (`EMSGSIZE`, no route) is a
/// lost datagram, which QUIC recovers from.
async fn send_datagrams(port: &mut QuicPort, socket: &compio::net::UdpSocket) {
    while let Some((to, datagram)) = port.poll_datagram() {
        let BufResult(result, _) = socket.send_to(datagram, to).await;
        if let Err(error) = result {
            tracing::debug!(%to, %error, "UDP send failed: datagram dropped");
        }
    }
}

/// Opens the port that dials replicas over QUIC, if any replica is.
pub(crate) fn start_quic_dialer<M: Machine>(
    shared: &Arc<Shared<M, Compio>>,
) -> Result<(), StartError> {
    if let Some((port, local)) = shared.quic_dialer(std::time::Instant::now(), quic_seed())? {
        let bound = std::net::UdpSocket::bind(local).and_then(|socket| {
            socket.set_nonblocking(true)?;
            compio::net::UdpSocket::from_std(socket)
        });
        match bound {
            Ok(socket) => Compio::spawn(run_quic(Arc::clone(shared), port, socket)),
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
