//! Listeners on tokio: TCP accept loops and QUIC ports.

use crate::runtime::{Tokio, drive};
use bus_proto::host::{Listen, ListenError, NodeFront, Shared, Transport};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};

type Driver = Shared<NodeFront, Tokio>;

/// Any address tokio resolves: a `SocketAddr`, `"host:port"` text (looked
/// up on the blocking pool), an `(IpAddr, u16)` tuple.
impl<A: ToSocketAddrs> Listen<A> for Tokio {
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
    address: impl ToSocketAddrs,
    transport: &Transport,
) -> Result<SocketAddr, ListenError> {
    let socket = tokio::net::UdpSocket::bind(address)
        .await
        .map_err(|source| ListenError { source })?;
    let local = socket
        .local_addr()
        .map_err(|source| ListenError { source })?;
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

async fn accept_loop(shared: &Arc<Driver>, listener: TcpListener, transport: &Transport) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.stopped() => return,
        };
        match accepted {
            Ok((stream, remote)) => match shared.accept_socket(Some(remote), transport) {
                Ok(socket) => {
                    shared.note_local(&socket, stream.local_addr().ok());
                    let task = drive(Arc::clone(shared), socket, stream);
                    shared.runtime().spawn(task);
                }
                // tokio's `try_write` waits for a readiness event a new
                // socket has not had yet; the std socket writes at once
                // (non-blocking, and a new socket's send buffer is empty).
                Err(refused) => {
                    if let (Some(reject), Ok(stream)) = (refused.reject(), stream.into_std()) {
                        drop(std::io::Write::write(&mut &stream, &reject));
                    }
                }
            },
            Err(error) => {
                // Out of file descriptors and the like: wait instead of
                // spinning; the listener itself is still fine.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
