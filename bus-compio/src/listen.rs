//! Listeners on compio: TCP accept loops and QUIC ports.

use crate::runtime::{Compio, drive};
use bus_proto::host::{First, Listen, ListenError, NodeFront, Shared, Transport, first};
use compio::net::{TcpListener, ToSocketAddrsAsync};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Driver = Shared<NodeFront, Compio>;

/// Any address compio resolves: a `SocketAddr`, `"host:port"` text, an
/// `(IpAddr, u16)` tuple.
impl<A: ToSocketAddrsAsync> Listen<A> for Compio {
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
        Compio::spawn(async move {
            accept_loop(&shared, listener, &transport).await;
            shared.listener_closed();
        });
        Ok(local)
    }
}

#[cfg(feature = "quic")]
async fn listen_quic(
    node: &Arc<Driver>,
    address: impl ToSocketAddrsAsync,
    transport: &Transport,
) -> Result<SocketAddr, ListenError> {
    let socket = compio::net::UdpSocket::bind(address)
        .await
        .map_err(|source| ListenError { source })?;
    let local = socket
        .local_addr()
        .map_err(|source| ListenError { source })?;
    let port = node.quic_listener(
        transport,
        local,
        std::time::Instant::now(),
        crate::quic::quic_seed(),
    )?;
    tracing::info!(%local, transport = transport.name(), "listening");
    Compio::spawn(crate::quic::run_quic(Arc::clone(node), port, socket));
    Ok(local)
}

async fn refuse(stream: compio::net::TcpStream, reject: Option<[u8; 256]>, linger: Duration) {
    use compio::io::AsyncWriteExt;
    let mut stream = stream;
    if let Some(reject) = reject {
        let write = stream.write_all(reject.to_vec());
        let _ = first(write, compio::time::sleep(linger)).await;
    }
}

async fn accept_loop(shared: &Arc<Driver>, listener: TcpListener, transport: &Transport) {
    loop {
        match first(listener.accept(), shared.stopped()).await {
            First::Right(()) => return,
            First::Left(Ok((stream, remote))) => {
                match shared.accept_socket(Some(remote), transport) {
                    Ok(socket) => {
                        shared.note_local(&socket, stream.local_addr().ok());
                        Compio::spawn(drive(Arc::clone(shared), socket, stream));
                    }
                    Err(refused) => {
                        Compio::spawn(refuse(stream, refused.reject(), shared.linger()))
                    }
                }
            }
            First::Left(Err(error)) => {
                // Out of file descriptors and the like: wait instead of
                // spinning; the listener itself is still fine.
                tracing::warn!(%error, "accept failed");
                compio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
