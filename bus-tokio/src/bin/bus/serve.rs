//! `bus node` and `bus client`.

use crate::endpoint::{Endpoint, TlsArgs};
use crate::outbox::{Entry, Outbox};
use crate::{Common, Failure};
use bus_tokio::bus_proto::client::{ClientParams, RequestError};
use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
use bus_tokio::{Client, ClientError, ClientIdentity, Node, NodeOptions, OsEntropy};
use bytes::Bytes;
use clap::Args;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `bus node` flags.
#[derive(Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    common: Common,
    /// This replica's id.
    #[arg(long)]
    replica: u8,
    /// Replicas in the cluster.
    #[arg(long)]
    replicas: u8,
    /// Where to listen, as a URL: tcp://HOST:PORT (or just HOST:PORT),
    /// tls://HOST:PORT, ws://HOST:PORT/PATH, wss://HOST:PORT/PATH or
    /// quic://HOST:PORT (UDP); add `?unbound` to a tls://, wss:// or
    /// quic:// listener for clients that cannot bind the handshake to TLS
    /// (browsers, aioquic). Repeat to listen on several.
    #[arg(long, required = true)]
    listen: Vec<Endpoint>,
    /// A peer as ID=URL (tcp://, tls://, ws://, wss://, quic://; a bare HOST:PORT
    /// is TCP); repeat for each higher-numbered replica (this node dials
    /// those).
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(u8, Endpoint)>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Refuse client connections.
    #[arg(long)]
    no_clients: bool,
    /// Serve metrics in the Prometheus text format over HTTP at this
    /// address (any path, e.g. http://ADDR/metrics), refreshed every
    /// second: the node's counters, gauges and per-peer connection state.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Log connection-level detail too.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_peer(text: &str) -> Result<(u8, Endpoint), String> {
    let (id, target) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected ID=URL"))?;
    let id = id
        .parse()
        .map_err(|e| format!("`{id}` is not a replica id: {e}"))?;
    Ok((id, target.parse()?))
}

fn logging(verbose: bool) {
    let level = if verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        // Colours only on a terminal, not in a journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a replica that echoes client requests until SIGTERM or SIGINT,
/// then shuts down gracefully: every peer gets a `close`.
pub(crate) async fn node(args: NodeArgs) -> Result<(), Failure> {
    logging(args.verbose);
    let stop = crate::stop::stop_signal()?;
    let mut stop = std::pin::pin!(stop);
    let mut reload = crate::stop::Reload::new()?;
    let config = args.common.config()?;
    let keys = args.common.keys()?;
    let params = NodeParams {
        cluster: args.common.cluster,
        replica: args.replica,
        replica_count: args.replicas,
        accept_clients: !args.no_clients,
    };
    let mut options = NodeOptions::default();
    for (id, peer) in &args.peers {
        options.peers.insert(*id, peer.address);
        options.peer_transports.insert(*id, peer.dialer(&args.tls)?);
    }
    let listeners = args
        .listen
        .iter()
        .map(|endpoint| Ok((endpoint, endpoint.listener(&args.tls)?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    let (node, mut events) = Node::start(&config, params, keys, options)?;
    for (endpoint, transport) in listeners {
        let address = node
            .listen_via(endpoint.address, transport)
            .await
            .map_err(|e| Failure(format!("{endpoint}: {e}")))?;
        eprintln!(
            "replica {} of {} listening on {address} ({endpoint})",
            args.replica, args.replicas
        );
    }
    if let Some(address) = args.metrics {
        serve_metrics(&node, address)?;
        eprintln!("metrics on http://{address}/metrics");
    }
    eprintln!("SIGTERM or Ctrl-C stops it; SIGHUP reads the key file again");
    loop {
        tokio::select! {
            event = events.recv() => match event {
                // An echo: the body and the application header come back.
                Some(NodeEvent::Request { request, app, body, .. }) => {
                    if let Err(error) = node.reply_with(request, app, body) {
                        tracing::warn!(%error, "reply not sent");
                    }
                }
                Some(NodeEvent::Message { from, operation, body, .. }) => {
                    tracing::info!(from, operation, bytes = body.len(), "message");
                }
                Some(_) => {}
                None => break,
            },
            () = reload.next() => reload_keys(&node, &args.common),
            signal = &mut stop => {
                eprintln!("{signal}: shutting down");
                let report = node.shutdown(Duration::from_secs(5)).await;
                eprintln!("{report}");
                break;
            }
        }
    }
    Ok(())
}

/// Installs the Prometheus recorder with its HTTP listener at `address`,
/// and a task that publishes the node's state into it every second.
fn serve_metrics(node: &Node, address: std::net::SocketAddr) -> Result<(), Failure> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
        .map_err(|e| Failure(format!("metrics on {address}: {e}")))?;
    let node = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            node.publish_metrics();
        }
    });
    Ok(())
}

/// SIGHUP: the key file's keys for every handshake from now on;
/// established connections keep theirs. A file that cannot be read keeps
/// the keys in use, and says why.
fn reload_keys(node: &Node, common: &crate::Common) {
    match common.keys() {
        Ok(keys) => {
            let set = keys.cluster();
            let verify_only = match &set.previous {
                Some(key) => format!(", verify-only key {}", key.fingerprint()),
                None => String::new(),
            };
            eprintln!(
                "SIGHUP: keys reloaded: signing key {}{verify_only}; new handshakes use them",
                set.current.fingerprint()
            );
            node.set_keys(keys);
        }
        Err(Failure(error)) => eprintln!("SIGHUP: keys kept: {error}"),
    }
}

/// `bus client` flags.
#[derive(Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    common: Common,
    /// The replica, as a URL: tcp://HOST:PORT (or just HOST:PORT),
    /// tls://HOST:PORT, ws://HOST:PORT/PATH, wss://HOST:PORT/PATH or
    /// quic://HOST:PORT (`?unbound` if its listener is).
    #[arg(long)]
    connect: Endpoint,
    #[command(flatten)]
    tls: TlsArgs,
    /// The replica's id.
    #[arg(long, default_value_t = 0)]
    target: u8,
    /// Requests to send, one after another (0: only resend the outbox).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// The request body.
    #[arg(long, default_value = "hello")]
    message: String,
    /// Operation tag of each request.
    #[arg(long, default_value_t = 1)]
    operation: u32,
    /// Keep the client's id and request numbers in this file (created on
    /// the first start), and the request in flight in FILE.outbox: a
    /// client restarted after a crash resends it under its number, so the
    /// node answers it from its dedup window instead of running it twice.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// Sends `count` requests and prints replies and latency; SIGTERM or
/// SIGINT stops it early, gracefully. With `--identity`, first resends
/// what a previous process left in the outbox.
pub(crate) async fn client(args: ClientArgs) -> Result<(), Failure> {
    let stop = crate::stop::stop_signal()?;
    let mut stop = std::pin::pin!(stop);
    let config = args.common.config()?;
    let keys = args.common.keys()?;
    let cluster = args.common.cluster;
    let transport = args.connect.dialer(&args.tls)?;
    let address = args.connect.address;
    let (client, outbox) = match &args.identity {
        None => {
            let params = ClientParams {
                cluster,
                id: Client::random_id(),
                target: args.target,
            };
            let client = Client::start_via(&config, params, keys, address, transport)?;
            (client, None)
        }
        Some(path) => {
            let identity = ClientIdentity::load_or_create(path, &mut OsEntropy)?;
            eprintln!(
                "client {:x} ({} {}), request numbers from {}",
                identity.id(),
                if identity.created() { "new in" } else { "from" },
                path.display(),
                identity.lease().next
            );
            let client = Client::start_with_identity_via(
                &config,
                cluster,
                args.target,
                identity,
                keys,
                address,
                transport,
            )?;
            (client, Some(Outbox::beside(path)))
        }
    };
    match tokio::time::timeout(config.handshake_timeout, client.connected()).await {
        Ok(Ok(replica)) => eprintln!("connected to replica {replica} at {}", args.connect),
        Ok(Err(cause)) => return Err(Failure(format!("{}: {cause}", args.connect))),
        Err(_) => {
            return Err(Failure(format!(
                "{}: no connection within {:?}",
                args.connect, config.handshake_timeout
            )));
        }
    }
    if let Some(outbox) = &outbox
        && let Some(entry) = outbox.load()?
    {
        resend(&client, outbox, entry).await?;
    }
    let body = Bytes::from(args.message.into_bytes());
    let mut latencies = Vec::new();
    for _ in 0..args.count {
        let started = Instant::now();
        let sent = async {
            let Some(outbox) = &outbox else {
                return Ok::<_, Failure>(client.request(args.operation, body.clone()).await?);
            };
            let entry = Entry {
                reservation: client.reserve()?,
                operation: args.operation,
                body: body.clone(),
            };
            // On disk before it can reach the node.
            outbox.store(&entry)?;
            Ok(client
                .submit(entry.reservation, entry.operation, entry.body)
                .await?)
        };
        let reply = tokio::select! {
            reply = sent => reply?,
            signal = &mut stop => {
                eprintln!("{signal}: stopping after {} replies", latencies.len());
                if outbox.is_some() {
                    eprintln!("the request in flight stays in the outbox for the next start");
                }
                break;
            }
        };
        if let Some(outbox) = &outbox {
            outbox.clear()?;
        }
        latencies.push(started.elapsed());
        if args.count <= 10 {
            println!(
                "reply to request {}: {}",
                reply.request,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    latencies.sort();
    if let (Some(p50), Some(p99)) = (
        latencies.get(latencies.len() / 2),
        latencies.get(latencies.len() * 99 / 100),
    ) {
        println!(
            "{} replies; round trip p50 {p50:?}, p99 {p99:?}",
            latencies.len()
        );
    }
    client.shutdown(Duration::from_secs(2)).await;
    Ok(())
}

/// Resends the request a previous process left unanswered, under its
/// number; prints the reply, or why its outcome stays unknown.
async fn resend(client: &Client, outbox: &Outbox, entry: Entry) -> Result<(), Failure> {
    let number = entry.reservation.request;
    match client
        .submit(entry.reservation, entry.operation, entry.body)
        .await
    {
        Ok(reply) => println!(
            "reply to request {number} (resent from the outbox): {}",
            String::from_utf8_lossy(&reply.body)
        ),
        Err(ClientError::Request(error @ RequestError::TooOld { .. })) => {
            eprintln!("outbox: {error}; not resent, it may or may not have run");
        }
        Err(ClientError::Failed { reason, .. }) => {
            eprintln!("outbox: request {number} failed ({reason:?}); it may or may not have run");
        }
        Err(error) => return Err(Failure(format!("outbox: request {number}: {error}"))),
    }
    outbox.clear()
}
