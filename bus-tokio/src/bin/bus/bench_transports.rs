//! The transport rows of `bus bench`: the bus over TLS, WebSocket,
//! WebSocket over TLS and QUIC against tokio-rustls with tokio-util's
//! `LengthDelimitedCodec`, against tokio-tungstenite and against quinn
//! (`bench_quic`), carrying payloads of the bus's frame sizes in the same
//! run; the QUIC round trip against quinn's; and handshakes per second per
//! transport.

use crate::Failure;
use crate::bench::{bus_throughput_over, handshakes_over};
use bus_tokio::Transport;
use bus_tokio::bus_proto::config::ValidConfig;
use bus_tokio::bus_proto::transport::tls::{
    CertificateDer, PrivateKeyDer, RootCertStore, TlsClient, TlsServer,
};
use bus_tokio::bus_proto::transport::ws::{WsClient, WsServer};
use bus_tokio::bus_proto::wire::layout::HEADER_SIZE;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, rustls};
use tokio_tungstenite::tungstenite::Message;

/// One transport's throughput against its baseline.
#[derive(Serialize)]
pub(crate) struct Row {
    transport: &'static str,
    body_bytes: usize,
    messages: u64,
    bus_per_sec: f64,
    baseline: &'static str,
    baseline_per_sec: f64,
    bus_vs_baseline: f64,
}

/// Handshakes per second on one transport, the bus's (transport then bus
/// handshake, both ways) and the baseline's (its transport alone).
#[derive(Serialize)]
pub(crate) struct Handshakes {
    transport: &'static str,
    connections: u64,
    bus_per_sec: f64,
    baseline: &'static str,
    baseline_per_sec: f64,
}

/// The round trip of one transport against its baseline.
#[derive(Serialize)]
pub(crate) struct Latency {
    transport: &'static str,
    body_bytes: usize,
    iterations: u64,
    bus_p50_us: f64,
    bus_p99_us: f64,
    baseline: &'static str,
    baseline_p50_us: f64,
    baseline_p99_us: f64,
    p50_bus_vs_baseline: f64,
}

/// What the transport rows measured.
pub(crate) struct Measured {
    pub(crate) throughput: Vec<Row>,
    pub(crate) round_trip: Vec<Latency>,
    pub(crate) handshakes: Vec<Handshakes>,
}

/// A certificate for `localhost` and the configurations around it.
pub(crate) struct Pki {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Result<Pki, Failure> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| Failure(format!("bench certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| Failure(format!("bench key: {e}")))?;
        Ok(Pki {
            cert: CertificateDer::from(certified.cert.der().to_vec()),
            key,
        })
    }

    fn roots(&self) -> Result<RootCertStore, Failure> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone())?;
        Ok(roots)
    }

    /// The bus's listen and dial transports for `kind`.
    fn bus(&self, kind: &str) -> Result<(Transport, Transport), Failure> {
        let server = TlsServer::new(vec![self.cert.clone()], self.key.clone_key())?;
        let client = TlsClient::new(self.roots()?, "localhost")?;
        Ok(match kind {
            "tls" => (server.transport(), client.transport()),
            "ws" => (
                WsServer::new().transport(),
                WsClient::new("ws://localhost/bus")?.transport(),
            ),
            "quic" => (server.quic(), client.quic()),
            _ => (
                WsServer::over_tls(&server).transport(),
                WsClient::over_tls("wss://localhost/bus", &client)?.transport(),
            ),
        })
    }

    /// tokio-rustls configured as the bus configures rustls: TLS 1.3, ring.
    fn baseline_tls(&self, alpn: &[u8]) -> Result<(TlsAcceptor, TlsConnector), Failure> {
        let (server, client) = self.baseline_rustls(alpn)?;
        Ok((TlsAcceptor::from(server), TlsConnector::from(client)))
    }

    /// rustls configured as the bus configures it: TLS 1.3, ring, no
    /// tickets.
    pub(crate) fn baseline_rustls(
        &self,
        alpn: &[u8],
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), Failure> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        server.alpn_protocols = vec![alpn.to_vec()];
        server.send_tls13_tickets = 0;
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        Ok((Arc::new(server), Arc::new(client)))
    }
}

pub(crate) async fn measure(
    config: &ValidConfig,
    scale: u64,
    runs: u32,
    quiet: bool,
) -> Result<Measured, Failure> {
    let pki = Pki::new()?;
    let mut rows = Vec::new();
    for kind in ["tls", "ws", "wss", "quic"] {
        for (body, messages) in [(64usize, 500_000u64), (4096, 100_000)] {
            let messages = messages / scale;
            if !quiet {
                eprintln!(
                    "{kind} throughput, {body} B bodies: {messages} messages, {runs} runs ..."
                );
            }
            let (mut bus, mut baseline) = (0f64, 0f64);
            for _ in 0..runs {
                let transports = pki.bus(kind)?;
                bus = bus.max(
                    bus_throughput_over(config, transports, body, messages)
                        .await?
                        .0,
                );
                let frame = HEADER_SIZE + body;
                baseline = baseline.max(match kind {
                    "tls" => tls_codec(&pki, frame, messages, config.max_batch).await?,
                    "ws" => ws_baseline(None, frame, messages, config.max_batch).await?,
                    "quic" => {
                        crate::bench_quic::codec(&pki, config, frame, messages, config.max_batch)
                            .await?
                    }
                    _ => ws_baseline(Some(&pki), frame, messages, config.max_batch).await?,
                });
            }
            rows.push(Row {
                transport: kind,
                body_bytes: body,
                messages,
                bus_per_sec: bus,
                baseline: baseline_name(kind),
                baseline_per_sec: baseline,
                bus_vs_baseline: bus / baseline,
            });
        }
    }
    let iterations = 20_000 / scale;
    if !quiet {
        eprintln!("quic round trip, {iterations} pings each ...");
    }
    let bus = crate::bench::bus_round_trip_over(config, pki.bus("quic")?, 64, iterations).await?;
    let frame = crate::bench::encoded_frame(64)?;
    let baseline = crate::bench_quic::round_trip(&pki, config, &frame, iterations).await?;
    let round_trip = vec![Latency {
        transport: "quic",
        body_bytes: 64,
        iterations,
        bus_p50_us: bus.0,
        bus_p99_us: bus.1,
        baseline: baseline_name("quic"),
        baseline_p50_us: baseline.0,
        baseline_p99_us: baseline.1,
        p50_bus_vs_baseline: bus.0 / baseline.0,
    }];
    let connections = 200 / scale;
    let mut handshakes = Vec::new();
    for kind in ["tcp", "tls", "ws", "wss", "quic"] {
        if !quiet {
            eprintln!("{kind} handshakes, {connections} connections ...");
        }
        let bus = bus_handshakes(config, &pki, kind, connections).await?;
        let baseline = match kind {
            "tcp" => tcp_connects(connections).await?,
            "tls" => tls_handshakes(&pki, connections).await?,
            "ws" => ws_handshakes(None, connections).await?,
            "quic" => crate::bench_quic::handshakes(&pki, config, connections).await?,
            _ => ws_handshakes(Some(&pki), connections).await?,
        };
        handshakes.push(Handshakes {
            transport: kind,
            connections,
            bus_per_sec: bus,
            baseline: match kind {
                "tcp" => "TCP connect",
                other => baseline_name(other),
            },
            baseline_per_sec: baseline,
        });
    }
    Ok(Measured {
        throughput: rows,
        round_trip,
        handshakes,
    })
}

fn baseline_name(kind: &str) -> &'static str {
    match kind {
        "tls" => "tokio-rustls + LDC",
        "ws" => "tokio-tungstenite",
        "quic" => "quinn + LDC",
        _ => "tokio-tungstenite + tokio-rustls",
    }
}

pub(crate) fn print(rows: &[Row], round_trip: &[Latency], handshakes: &[Handshakes]) {
    println!(
        "\n{:<28} {:>11} {:>11} {:>7}  baseline",
        "transports (msg/s)", "bus-tokio", "baseline", "ratio"
    );
    for r in rows {
        println!(
            "{:<28} {:>11.0} {:>11.0} {:>6.2}x  {}",
            format!("{} {} B body", r.transport, r.body_bytes),
            r.bus_per_sec,
            r.baseline_per_sec,
            r.bus_vs_baseline,
            r.baseline
        );
    }
    println!(
        "\n{:<28} {:>11} {:>11} {:>7}  baseline",
        "round trip (64 B), p50 / p99", "bus-tokio", "baseline", "ratio"
    );
    for l in round_trip {
        println!(
            "{:<28} {:>9.1}us {:>9.1}us {:>6.2}x  {} (p99 {:.1}us / {:.1}us)",
            format!("{} p50", l.transport),
            l.bus_p50_us,
            l.baseline_p50_us,
            l.p50_bus_vs_baseline,
            l.baseline,
            l.bus_p99_us,
            l.baseline_p99_us
        );
    }
    println!(
        "\n{:<28} {:>11} {:>11}  baseline (its transport alone)",
        "handshakes per second", "bus-tokio", "baseline"
    );
    for h in handshakes {
        println!(
            "{:<28} {:>11.0} {:>11.0}  {}",
            format!("{} ({} sequential)", h.transport, h.connections),
            h.bus_per_sec,
            h.baseline_per_sec,
            h.baseline
        );
    }
}

/// `messages` payloads of `frame` bytes through tokio-rustls, framed by
/// `LengthDelimitedCodec`, flushed every `batch`.
async fn tls_codec(pki: &Pki, frame: usize, messages: u64, batch: usize) -> Result<f64, Failure> {
    let (acceptor, connector) = pki.baseline_tls(b"bus/1")?;
    let (client, server) = crate::bench::loopback().await?;
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(|e| Failure(e.to_string()))?;
    let (client, server) = tokio::join!(connector.connect(name, client), acceptor.accept(server));
    let (client, server) = (client?, server?);
    crate::bench::codec_over(client, server, frame, messages, batch).await
}

/// A connected WebSocket pair over loopback, over TLS if `pki` is given.
async fn ws_pair(
    pki: Option<&Pki>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<Box<dyn Stream>>,
        tokio_tungstenite::WebSocketStream<Box<dyn Stream>>,
    ),
    Failure,
> {
    let (client, server) = crate::bench::loopback().await?;
    let (client, server): (Box<dyn Stream>, Box<dyn Stream>) = match pki {
        None => (Box::new(client), Box::new(server)),
        Some(pki) => {
            let (acceptor, connector) = pki.baseline_tls(b"http/1.1")?;
            let name = rustls::pki_types::ServerName::try_from("localhost")
                .map_err(|e| Failure(e.to_string()))?;
            let (client, server) =
                tokio::join!(connector.connect(name, client), acceptor.accept(server));
            (Box::new(client?), Box::new(server?))
        }
    };
    let (client, server) = tokio::join!(
        tokio_tungstenite::client_async("ws://localhost/bus", client),
        tokio_tungstenite::accept_async(server)
    );
    Ok((
        client.map_err(|e| Failure(e.to_string()))?.0,
        server.map_err(|e| Failure(e.to_string()))?,
    ))
}

/// A byte stream either plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// `messages` binary messages of `frame` bytes through tokio-tungstenite,
/// flushed every `batch`.
async fn ws_baseline(
    pki: Option<&Pki>,
    frame: usize,
    messages: u64,
    batch: usize,
) -> Result<f64, Failure> {
    let (mut sink, mut stream) = ws_pair(pki).await?;
    let payload = Bytes::from(vec![0xab; frame]);
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..messages {
            sink.feed(Message::Binary(payload.clone())).await?;
            if (i + 1) % batch as u64 == 0 {
                sink.flush().await?;
            }
        }
        sink.flush().await?;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(sink)
    });
    let mut received = 0;
    while received < messages {
        match stream.next().await {
            Some(Ok(Message::Binary(_))) => received += 1,
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Failure(format!("WebSocket baseline: {e}"))),
            None => return Err(Failure("WebSocket baseline: early EOF".into())),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    producer
        .await
        .map_err(|e| Failure(e.to_string()))?
        .map_err(|e| Failure(e.to_string()))?;
    Ok(messages as f64 / elapsed)
}

/// Sequential client connections over `kind`, each through the transport
/// handshake and the bus handshake.
async fn bus_handshakes(
    config: &ValidConfig,
    pki: &Pki,
    kind: &str,
    connections: u64,
) -> Result<f64, Failure> {
    let transports = match kind {
        "tcp" => (Transport::tcp(), Transport::tcp()),
        other => pki.bus(other)?,
    };
    handshakes_over(config, transports, connections).await
}

async fn tcp_connects(connections: u64) -> Result<f64, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let started = Instant::now();
    for _ in 0..connections {
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        drop((client?, accepted?));
    }
    Ok(connections as f64 / started.elapsed().as_secs_f64())
}

async fn tls_handshakes(pki: &Pki, connections: u64) -> Result<f64, Failure> {
    let (acceptor, connector) = pki.baseline_tls(b"bus/1")?;
    let started = Instant::now();
    for _ in 0..connections {
        let (client, server) = crate::bench::loopback().await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .map_err(|e| Failure(e.to_string()))?;
        let (client, server) =
            tokio::join!(connector.connect(name, client), acceptor.accept(server));
        drop((client?, server?));
    }
    Ok(connections as f64 / started.elapsed().as_secs_f64())
}

async fn ws_handshakes(pki: Option<&Pki>, connections: u64) -> Result<f64, Failure> {
    let started = Instant::now();
    for _ in 0..connections {
        drop(ws_pair(pki).await?);
    }
    Ok(connections as f64 / started.elapsed().as_secs_f64())
}
