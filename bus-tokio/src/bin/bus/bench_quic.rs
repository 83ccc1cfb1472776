//! The QUIC baselines of `bus bench`: quinn (with its own tokio glue,
//! GSO and GRO where the kernel has them) under the same TLS 1.3
//! configuration, ALPN and stream windows as the bus's QUIC transport,
//! carrying the same payloads: a length-delimited stream, a ping-pong of
//! encoded frames, and sequential connections.

use crate::Failure;
use crate::bench_transports::Pki;
use bus_tokio::bus_proto::config::ValidConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A quinn server endpoint and a client endpoint that trusts it.
struct Quinn {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

impl Quinn {
    fn new(pki: &Pki, config: &ValidConfig) -> Result<Quinn, Failure> {
        let (server_tls, client_tls) = pki.baseline_rustls(b"bus/1")?;
        let quic = |e: &dyn std::fmt::Display| Failure(format!("quinn configuration: {e}"));
        let server_crypto = QuicServerConfig::try_from(server_tls).map_err(|e| quic(&e))?;
        let client_crypto = QuicClientConfig::try_from(client_tls).map_err(|e| quic(&e))?;
        // The bus's stream and connection windows: 4 x max_message_size.
        let window = u32::try_from(u64::from(config.max_message_size) * 4).unwrap_or(u32::MAX);
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window(window.into())
            .receive_window(window.into());
        let transport = Arc::new(transport);
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(Arc::clone(&transport));
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut client_endpoint = quinn::Endpoint::client(loopback)?;
        client_endpoint.set_default_client_config(client);
        Ok(Quinn {
            server: quinn::Endpoint::server(server, loopback)?,
            client: client_endpoint,
        })
    }

    /// A connection from the client endpoint to the server: both sides.
    async fn connect(&self) -> Result<(quinn::Connection, quinn::Connection), Failure> {
        let to = self.server.local_addr()?;
        let connecting = self
            .client
            .connect(to, "localhost")
            .map_err(|e| Failure(format!("quinn connect: {e}")))?;
        let accept = async {
            let incoming = self
                .server
                .accept()
                .await
                .ok_or_else(|| Failure("quinn server closed".into()))?;
            incoming
                .await
                .map_err(|e| Failure(format!("quinn accept: {e}")))
        };
        let (client, server) = tokio::join!(connecting, accept);
        let client = client.map_err(|e| Failure(format!("quinn handshake: {e}")))?;
        Ok((client, server?))
    }

    /// One bidirectional stream: the client's send and receive halves and
    /// the server's.
    async fn stream(
        &self,
    ) -> Result<
        (
            (quinn::SendStream, quinn::RecvStream),
            (quinn::SendStream, quinn::RecvStream),
        ),
        Failure,
    > {
        let (client, server) = self.connect().await?;
        let (mut send, recv) = client
            .open_bi()
            .await
            .map_err(|e| Failure(format!("quinn open_bi: {e}")))?;
        // The server sees the stream once it carries data.
        send.write_all(&[0])
            .await
            .map_err(|e| Failure(format!("quinn write: {e}")))?;
        let (server_send, mut server_recv) = server
            .accept_bi()
            .await
            .map_err(|e| Failure(format!("quinn accept_bi: {e}")))?;
        let mut first = [0u8; 1];
        server_recv
            .read_exact(&mut first)
            .await
            .map_err(|e| Failure(format!("quinn read: {e}")))?;
        Ok(((send, recv), (server_send, server_recv)))
    }
}

/// `messages` payloads of `frame` bytes over one quinn stream, framed by
/// `LengthDelimitedCodec`, flushed every `batch`: messages per second.
pub(crate) async fn codec(
    pki: &Pki,
    config: &ValidConfig,
    frame: usize,
    messages: u64,
    batch: usize,
) -> Result<f64, Failure> {
    let quinn = Quinn::new(pki, config)?;
    let ((send, _), (_, recv)) = quinn.stream().await?;
    crate::bench::codec_over(send, recv, frame, messages, batch).await
}

/// p50 and p99 of a ping-pong of `frame` bytes over one quinn stream, in
/// microseconds.
pub(crate) async fn round_trip(
    pki: &Pki,
    config: &ValidConfig,
    frame: &[u8],
    iterations: u64,
) -> Result<(f64, f64), Failure> {
    let quinn = Quinn::new(pki, config)?;
    let ((mut send, mut recv), (mut echo_send, mut echo_recv)) = quinn.stream().await?;
    let size = frame.len();
    let echoer = tokio::spawn(async move {
        let mut buf = vec![0u8; size];
        while echo_recv.read_exact(&mut buf).await.is_ok() {
            if echo_send.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; size];
    let mut samples = Vec::new();
    for _ in 0..iterations {
        let started = Instant::now();
        send.write_all(frame)
            .await
            .map_err(|e| Failure(format!("quinn write: {e}")))?;
        recv.read_exact(&mut buf)
            .await
            .map_err(|e| Failure(format!("quinn read: {e}")))?;
        samples.push(started.elapsed());
    }
    drop((send, recv));
    echoer.abort();
    Ok(crate::bench::percentiles(samples))
}

/// Sequential quinn connections from one client endpoint: handshakes per
/// second. (Each bus client binds a UDP socket of its own, which this
/// baseline is spared: a quinn endpoint takes milliseconds to set up.)
pub(crate) async fn handshakes(
    pki: &Pki,
    config: &ValidConfig,
    connections: u64,
) -> Result<f64, Failure> {
    let quinn = Quinn::new(pki, config)?;
    let started = Instant::now();
    for _ in 0..connections {
        let (client, server) = quinn.connect().await?;
        client.close(0u32.into(), b"");
        drop(server);
    }
    Ok(connections as f64 / started.elapsed().as_secs_f64())
}
