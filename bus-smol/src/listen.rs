//! Listeners on smol: TCP accept loops and QUIC ports.

use crate::runtime::{Smol, drive};
use bus_proto::host::{Listen, ListenError, NodeFront, Shared, Transport};
use smol::future::FutureExt;
use smol::net::{AsyncToSocketAddrs, TcpListener};
use smol::{Async, Timer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Driver = Shared<NodeFront, Smol>;

/// Any address async-net resolves: a `SocketAddr`, `"host:port"` text, an
/// `(IpAddr, u16)` tuple.
impl<A: AsyncToSocketAddrs> Listen<A> for Smol {
    async fn listen(
        node: &Arc<Driver>,
        address: A,
        transport: Transport,
    ) -> Result<SocketAddr, ListenError> {
        #[cfg(feature = "quic")]
        if transport.is_quic() {
            return listen_quic(node, address, &transport).await;
        }
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ListenError { source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ListenError { source })?;
        tracing::info!(%local, transport = transport.name(), "listening");
        node.listener_opened();
        let shared = Arc::clone(node);
        // async-net resolves the address; accepting through async-io
        // directly yields the stream type the socket task runs.
        let listener: Arc<Async<std::net::TcpListener>> = listener.into();
        node.runtime().spawn(async move {
            accept_loop(&shared, listener, &transport).await;
            shared.listener_closed();
        });
        Ok(local)
    }
}

#[cfg(feature = "quic")]
async fn listen_quic(
    node: &Arc<Driver>,
    address: impl AsyncToSocketAddrs,
    transport: &Transport,
) -> Result<SocketAddr, ListenError> {
    let socket = smol::net::UdpSocket::bind(address)
        .await
        .map_err(|source| ListenError { source })?;
    let local = socket
        .local_addr()
        .map_err(|source| ListenError { source })?;
    // async-net resolves the address; async-io's socket is the one the
    // port task reads without waiting.
    let socket: Arc<Async<std::net::UdpSocket>> = socket.into();
    let socket = Arc::into_inner(socket).ok_or_else(|| ListenError {
        source: std::io::Error::other("the UDP socket is shared"),
    })?;
    let udp = crate::quic::Udp::new(socket).map_err(|source| ListenError { source })?;
    let port = node.quic_listener(
        transport,
        local,
        std::time::Instant::now(),
        crate::quic::quic_seed(),
    )?;
    tracing::info!(%local, transport = transport.name(), "listening");
    node.runtime()
        .spawn(crate::quic::run_quic(Arc::clone(node), port, udp));
    Ok(local)
}

async fn accept_loop(
    shared: &Arc<Driver>,
    listener: Arc<Async<std::net::TcpListener>>,
    transport: &Transport,
) {
    loop {
        let accepted = async { Some(listener.accept().await) };
        let stopped = async {
            shared.stopped().await;
            None
        };
        match accepted.or(stopped).await {
            None => return,
            Some(Ok((stream, remote))) => match shared.accept_socket(Some(remote), transport) {
                Ok(socket) => {
                    shared.note_local(&socket, stream.get_ref().local_addr().ok());
                    let task = drive(Arc::clone(shared), socket, stream);
                    shared.runtime().spawn(task);
                }
                // Non-blocking, and a new socket's send buffer is empty:
                // the reject fits.
                Err(refused) => {
                    if let Some(reject) = refused.reject() {
                        drop(std::io::Write::write(&mut stream.get_ref(), &reject));
                    }
                }
            },
            Some(Err(error)) => {
                // Out of file descriptors and the like: wait instead of
                // spinning; the listener itself is still fine.
                tracing::warn!(%error, "accept failed");
                Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
}
