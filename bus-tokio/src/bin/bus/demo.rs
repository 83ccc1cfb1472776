//! `bus demo`: a small cluster on loopback, narrated.

use crate::Failure;
use bus_tokio::bus_proto::client::ClientParams;
use bus_tokio::bus_proto::config::{Config, ValidConfig};
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use bus_tokio::bus_proto::node::{NodeEvent, NodeParams, ReplyError};
use bus_tokio::bus_proto::wire::{APP_AREA_SIZE, AppArea, AppHeader, RequestHeader};
use bus_tokio::{Client, Events, Node, NodeOptions, OsEntropy};
use bytes::Bytes;
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const CLUSTER: u128 = 0xb05;
/// Requests with this operation are held by the application until the demo
/// releases them (to break the link first).
const OP_HELD: u32 = 99;
/// Consensus-style header-only messages: a prepare and its acknowledgement,
/// their metadata in the application area (op number, then commit number).
const OP_PREPARE: u32 = 1 << 31;
const OP_PREPARE_OK: u32 = OP_PREPARE + 1;
/// Prepares replica 0 sends to each other replica.
const PREPARES: u64 = 100;

/// `bus demo` flags.
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Replicas to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=16))]
    replicas: u8,
    /// Clients to start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// Messages each replica sends to each other replica.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Requests each client sends.
    #[arg(long, default_value_t = 1_000)]
    requests: u64,
}

/// What each replica's application counted.
#[derive(Default)]
struct Tally {
    messages: AtomicU64,
    /// Messages whose operation did not follow the sender's previous one.
    out_of_order: AtomicU64,
    requests: AtomicU64,
    /// `prepare_ok`s whose op number matched a prepare this replica sent.
    prepare_oks: AtomicU64,
}

/// A consensus header: `view`, and the op and commit numbers in the first
/// 16 bytes of the application area.
fn consensus_header(view: u32, op: u64, commit: u64) -> AppHeader {
    let mut area = [0u8; APP_AREA_SIZE];
    area[..8].copy_from_slice(&op.to_le_bytes());
    area[8..16].copy_from_slice(&commit.to_le_bytes());
    AppHeader {
        view,
        release: 1,
        area: AppArea::new(area),
    }
}

/// The op number of a consensus header.
fn op_number(app: &AppHeader) -> u64 {
    let mut op = [0u8; 8];
    op.copy_from_slice(&app.area.bytes()[..8]);
    u64::from_le_bytes(op)
}

struct Replica {
    node: Node,
    address: SocketAddr,
    tally: Arc<Tally>,
    app: JoinHandle<()>,
}

fn config() -> Result<ValidConfig, Failure> {
    Ok({
        let mut tuned = Config::default();
        tuned.reconnect_min = Duration::from_millis(20);
        tuned.reconnect_max = Duration::from_millis(500);
        tuned
    }
    .validate()?)
}

/// The application: counts messages, executes requests (echo), and hands
/// held requests to the demo.
fn application(
    node: Node,
    mut events: Events,
    tally: Arc<Tally>,
    held: mpsc::Sender<RequestHeader>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut batch = Vec::new();
        // Senders number their messages 0, 1, 2...: the next one expected.
        let mut next = [0u32; 256];
        while events.recv_many(&mut batch, 1024).await > 0 {
            for event in batch.drain(..) {
                match event {
                    // Header-only consensus traffic: a prepare is answered
                    // with a prepare_ok naming the same op.
                    NodeEvent::Message {
                        from,
                        operation: OP_PREPARE,
                        app,
                        ..
                    } => {
                        let ok = consensus_header(app.view, op_number(&app), op_number(&app));
                        if let Err(error) = node.send_with(from, OP_PREPARE_OK, ok, Bytes::new()) {
                            println!("  ! prepare_ok not sent: {error}");
                        }
                    }
                    NodeEvent::Message {
                        operation: OP_PREPARE_OK,
                        app,
                        body,
                        ..
                    } if body.is_empty() && app.view == 1 && op_number(&app) < PREPARES => {
                        tally.prepare_oks.fetch_add(1, Ordering::Relaxed);
                    }
                    NodeEvent::Message {
                        from, operation, ..
                    } => {
                        tally.messages.fetch_add(1, Ordering::Relaxed);
                        let expected = &mut next[usize::from(from)];
                        if operation != *expected {
                            tally.out_of_order.fetch_add(1, Ordering::Relaxed);
                        }
                        *expected = operation.wrapping_add(1);
                    }
                    NodeEvent::Request { request, body, .. } => {
                        tally.requests.fetch_add(1, Ordering::Relaxed);
                        if request.operation == OP_HELD {
                            let _ = held.send(request).await;
                        } else if let Err(error) = node.reply(request, body) {
                            println!("  ! reply not sent: {error}");
                        }
                    }
                    NodeEvent::PeerConnected { replica, .. } => {
                        let local = node.inspect(|n| n.params().replica);
                        println!("  replica {local} <-> replica {replica}: authenticated");
                    }
                    NodeEvent::HandshakeFailed {
                        dialed: None,
                        cause,
                        ..
                    } => {
                        let local = node.inspect(|n| n.params().replica);
                        println!("  replica {local} refused an inbound connection: {cause}");
                    }
                    _ => {}
                }
            }
        }
    })
}

/// Forwards loopback connections to `upstream` until cut, to break a link
/// on purpose.
struct Link {
    address: SocketAddr,
    pairs: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Link {
    async fn start(upstream: SocketAddr) -> Result<Link, Failure> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let pairs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let list = Arc::clone(&pairs);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pair = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap_or_else(|e| e.into_inner()).push(pair);
            }
        });
        Ok(Link { address, pairs })
    }

    fn cut(&self) {
        for pair in self
            .pairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            pair.abort();
        }
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let config = config()?;
    let key = Key::generate(&mut OsEntropy);
    println!(
        "bus demo: {} replicas and {} clients on loopback, cluster {CLUSTER:x}, key fingerprint {}",
        args.replicas,
        args.clients,
        key.fingerprint()
    );

    step("Replicas start, listen, and dial each other (the lower id dials the higher)");
    let (held_tx, mut held_rx) = mpsc::channel(16);
    let mut replicas = Vec::new();
    for replica in 0..args.replicas {
        let params = NodeParams {
            cluster: CLUSTER,
            replica,
            replica_count: args.replicas,
            accept_clients: true,
        };
        let (node, events) = Node::start(
            &config,
            params,
            KeyRing::new(key.clone()),
            NodeOptions::default(),
        )?;
        let address = node.listen("127.0.0.1:0").await?;
        println!("  replica {replica} listening on {address}");
        let tally = Arc::new(Tally::default());
        let app = application(node.clone(), events, Arc::clone(&tally), held_tx.clone());
        replicas.push(Replica {
            node,
            address,
            tally,
            app,
        });
    }
    for r in &replicas {
        for (id, other) in (0..args.replicas).zip(&replicas) {
            r.node.set_address(id, other.address);
        }
    }
    wait("every pair authenticated", || {
        (0..args.replicas).zip(&replicas).all(|(i, r)| {
            (0..args.replicas)
                .filter(|&j| j != i)
                .all(|j| r.node.is_connected(j))
        })
    })
    .await?;
    let pairs = u64::from(args.replicas) * u64::from(args.replicas - 1) / 2;
    println!("  {pairs} connections, one per pair, each after a mutual BLAKE3 MAC handshake");

    step("Replica traffic: every replica sends to every other, 64-byte messages");
    let traffic_started = Instant::now();
    let expected = args.messages * u64::from(args.replicas) * u64::from(args.replicas - 1);
    let mut senders = Vec::new();
    for (from, r) in (0..args.replicas).zip(&replicas) {
        let node = r.node.clone();
        let (count, messages) = (args.replicas, args.messages);
        senders.push(tokio::spawn(async move {
            let body = Bytes::from(vec![from; 64]);
            for i in 0..messages {
                for to in (0..count).filter(|&to| to != from) {
                    // Wraps like the receiver's expectation does.
                    let operation = u32::try_from(i & 0xffff_ffff).unwrap_or(0);
                    node.send_wait(to, operation, body.clone()).await?;
                }
            }
            Ok::<_, bus_tokio::bus_proto::node::RouteError>(())
        }));
    }
    let delivered = || {
        replicas
            .iter()
            .map(|r| r.tally.messages.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    progress("messages delivered", expected, delivered).await?;
    for sender in senders {
        sender
            .await
            .map_err(|e| Failure(e.to_string()))?
            .map_err(|e| Failure(format!("send: {e}")))?;
    }
    let seconds = traffic_started.elapsed().as_secs_f64();
    let disordered: u64 = replicas
        .iter()
        .map(|r| r.tally.out_of_order.load(Ordering::Relaxed))
        .sum();
    if disordered > 0 {
        return Err(Failure(format!(
            "{disordered} messages arrived out of order"
        )));
    }
    println!(
        "  {expected} messages delivered, each sender's in order, in {seconds:.2}s ({:.0} per second)",
        expected as f64 / seconds
    );

    step("Consensus-style header-only messages: op and commit in the 96-byte application area");
    let leader = &replicas[0];
    for op in 0..PREPARES {
        for to in 1..args.replicas {
            let header = consensus_header(1, op, op.saturating_sub(1));
            leader
                .node
                .send_with(to, OP_PREPARE, header, Bytes::new())
                .map_err(|e| Failure(format!("prepare: {e}")))?;
        }
    }
    let acks = PREPARES * u64::from(args.replicas - 1);
    progress("prepare_oks received", acks, || {
        leader.tally.prepare_oks.load(Ordering::Relaxed)
    })
    .await?;
    println!(
        "  {acks} prepare_oks received by replica 0, each naming its op: 256-byte frames, no body"
    );

    step("Clients: each sends requests to a replica and waits for every reply");
    let client_started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let target = u8::try_from(c % u32::from(args.replicas)).unwrap_or(0);
        let params = ClientParams {
            cluster: CLUSTER,
            id: Client::random_id(),
            target,
        };
        let client = Client::start(
            &config,
            params,
            KeyRing::new(key.clone()),
            replicas[usize::from(target)].address,
        )?;
        let requests = args.requests;
        clients.push(tokio::spawn(async move {
            for i in 0..requests {
                let body = Bytes::from(format!("request {i}"));
                let reply = client.request(1, body.clone()).await?;
                if reply.body != body {
                    return Err(Failure(format!("reply {i} does not match its request")));
                }
            }
            client.shutdown(Duration::from_secs(2)).await;
            Ok::<_, Failure>((target, requests))
        }));
    }
    for client in clients {
        let (target, n) = client.await.map_err(|e| Failure(e.to_string()))??;
        println!("  a client got {n} correct replies from replica {target}");
    }
    println!("  done in {:.2}s", client_started.elapsed().as_secs_f64());

    step("Clients on every transport: TCP, TLS, WebSocket, WebSocket over TLS and QUIC");
    transports(&config, &key, &replicas[0]).await?;

    step("A request retried after a broken link is answered from the dedup window");
    let front = &replicas[0];
    let link = Link::start(front.address).await?;
    let params = ClientParams {
        cluster: CLUSTER,
        id: Client::random_id(),
        target: 0,
    };
    let client = Client::start(&config, params, KeyRing::new(key.clone()), link.address)?;
    let pending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(OP_HELD, Bytes::from_static(b"transfer 10"))
                .await
        })
    };
    let request = tokio::time::timeout(Duration::from_secs(10), held_rx.recv())
        .await
        .map_err(|_| Failure("the held request never arrived".into()))?
        .ok_or_else(|| Failure("the application stopped".into()))?;
    println!(
        "  replica 0 executes request {} of client {:x}...",
        request.request, request.client
    );
    link.cut();
    wait("the client's connection is gone", || {
        front
            .node
            .inspect(|n| n.client_connection(request.client).is_none())
    })
    .await?;
    println!("  ...the link breaks before the reply is sent");
    let hits_before = front.node.stats().dedup_hits;
    match front
        .node
        .reply(request, Bytes::from_static(b"transferred"))
    {
        Err(ReplyError::Disconnected { cached: true, .. }) => {
            println!("  the reply is kept in the dedup window");
        }
        other => println!("  ! unexpected reply outcome: {other:?}"),
    }
    let reply = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .map_err(|_| Failure("the retried request was not answered".into()))?
        .map_err(|e| Failure(e.to_string()))??;
    let stats = front.node.stats();
    println!(
        "  the client reconnected and resent it; reply {:?}, answered from the cache (dedup hits {} -> {}); executed once",
        String::from_utf8_lossy(&reply.body),
        hits_before,
        stats.dedup_hits
    );
    client.shutdown(Duration::from_secs(2)).await;

    step("A client process killed mid-request restarts under its identity file");
    restarted_client(&key, front, &mut held_rx).await?;

    step("An impostor with the wrong key is rejected");
    let params = ClientParams {
        cluster: CLUSTER,
        id: Client::random_id(),
        target: 1,
    };
    let impostor_key = Key::generate(&mut OsEntropy);
    let impostor = Client::start(
        &config,
        params,
        KeyRing::new(impostor_key.clone()),
        replicas[1].address,
    )?;
    match tokio::time::timeout(Duration::from_secs(10), impostor.connected()).await {
        Ok(Err(cause)) => println!(
            "  the impostor (key {}) was told: {cause}",
            impostor_key.fingerprint()
        ),
        Ok(Ok(_)) => return Err(Failure("an impostor was accepted".into())),
        Err(_) => return Err(Failure("the impostor's handshake never ended".into())),
    }
    impostor.shutdown(Duration::from_secs(1)).await;
    // Let the replica's log line for the refusal print first.
    tokio::time::sleep(Duration::from_millis(50)).await;

    step("Graceful shutdown");
    for (id, r) in (0..args.replicas).zip(&replicas) {
        let report = r.node.shutdown(Duration::from_secs(5)).await;
        println!("  replica {id}: {report}");
    }

    step("Summary");
    println!(
        "  {:<8} {:>10} {:>9} {:>10} {:>8} {:>10} {:>10}",
        "replica", "messages", "requests", "dedup hit", "dials", "refused", "hs failed"
    );
    for (id, r) in (0..args.replicas).zip(replicas) {
        let stats = r.node.stats();
        println!(
            "  {:<8} {:>10} {:>9} {:>10} {:>8} {:>10} {:>10}",
            id,
            r.tally.messages.load(Ordering::Relaxed),
            r.tally.requests.load(Ordering::Relaxed),
            stats.dedup_hits,
            stats.dials,
            stats.accepts_refused,
            stats.handshakes_failed
        );
        let _ = r.app.await;
    }
    println!(
        "\nall steps passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Replica 0 also listens on TLS, WS, WSS and QUIC (a certificate made
/// for the demo); a client on each transport sends requests. TLS binds the
/// handshake to the session (a relay with its own certificate could not
/// complete it).
async fn transports(config: &ValidConfig, key: &Key, front: &Replica) -> Result<(), Failure> {
    use bus_tokio::Transport;
    use bus_tokio::bus_proto::transport::tls::{
        CertificateDer, PrivateKeyDer, RootCertStore, TlsClient, TlsServer,
    };
    use bus_tokio::bus_proto::transport::ws::{WsClient, WsServer};
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| Failure(format!("demo certificate: {e}")))?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let private = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| Failure(format!("demo key: {e}")))?;
    let server = TlsServer::new(vec![cert.clone()], private)?;
    let mut roots = RootCertStore::empty();
    roots.add(cert)?;
    let client_tls = TlsClient::new(roots, "localhost")?;
    let legs: [(&str, Transport, Transport); 5] = [
        ("tcp", Transport::tcp(), Transport::tcp()),
        (
            "tls",
            server.clone().transport(),
            client_tls.clone().transport(),
        ),
        (
            "ws",
            WsServer::new().transport(),
            WsClient::new("ws://localhost/bus")?.transport(),
        ),
        (
            "wss",
            WsServer::over_tls(&server).transport(),
            WsClient::over_tls("wss://localhost/bus", &client_tls)?.transport(),
        ),
        ("quic", server.clone().quic(), client_tls.clone().quic()),
    ];
    for (name, listen, dial) in legs {
        let address = match name {
            "tcp" => front.address,
            _ => front.node.listen_via("127.0.0.1:0", listen).await?,
        };
        let params = ClientParams {
            cluster: CLUSTER,
            id: Client::random_id(),
            target: 0,
        };
        let client = Client::start_via(config, params, KeyRing::new(key.clone()), address, dial)?;
        let started = Instant::now();
        for i in 0..100 {
            let body = Bytes::from(format!("{name} request {i}"));
            let reply = client.request(1, body.clone()).await?;
            if reply.body != body {
                return Err(Failure(format!("{name}: reply {i} does not match")));
            }
        }
        let bound = match name {
            "tls" | "wss" => "bound to the TLS session",
            "quic" => "bound to the QUIC connection's TLS session, over UDP",
            _ => "no TLS to bind to",
        };
        println!(
            "  {name:<4} {address}: 100 replies in {:.1} ms ({bound})",
            started.elapsed().as_secs_f64() * 1e3
        );
        client.shutdown(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// `bus client --identity` as a separate process: it is killed with
/// SIGKILL while replica 0 executes its request, then started again under
/// the same identity file; it resends the request from its outbox and the
/// replica answers from its dedup window.
async fn restarted_client(
    key: &Key,
    front: &Replica,
    held: &mut mpsc::Receiver<RequestHeader>,
) -> Result<(), Failure> {
    let scratch = std::env::temp_dir().join(format!("bus-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Failure(format!("{}: {e}", scratch.display())))?;
    let identity = scratch.join("client.id");
    let client = |extra: &[&str]| {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .args(["client", "--cluster", &format!("{CLUSTER:x}")])
            .args(["--key-env", "BUS_DEMO_KEY", "--connect"])
            .arg(front.address.to_string())
            .arg("--identity")
            .arg(&identity)
            .args(extra)
            .env("BUS_DEMO_KEY", &*key.to_hex())
            .stdin(std::process::Stdio::null());
        Ok::<_, std::io::Error>(command)
    };
    let mut first = client(&["--operation", "99", "--message", "transfer 20"])?
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let request = tokio::time::timeout(Duration::from_secs(10), held.recv())
        .await
        .map_err(|_| Failure("the client process's request never arrived".into()))?
        .ok_or_else(|| Failure("the application stopped".into()))?;
    println!(
        "  process {} (client {:x}, identity {}) sent request {}; replica 0 executes it...",
        first.id(),
        request.client,
        identity.display(),
        request.request
    );
    first.kill()?;
    first.wait()?;
    println!("  ...the process is killed (SIGKILL) before the reply");
    wait("the killed client's connection to go", || {
        front
            .node
            .inspect(|n| n.client_connection(request.client).is_none())
    })
    .await?;
    let executed = front.tally.requests.load(Ordering::Relaxed);
    let hits_before = front.node.stats().dedup_hits;
    match front
        .node
        .reply(request, Bytes::from_static(b"transferred"))
    {
        Err(ReplyError::Disconnected { cached: true, .. }) => {
            println!("  the execution ends; its reply is kept in the dedup window");
        }
        other => println!("  ! unexpected reply outcome: {other:?}"),
    }
    let restarted = client(&["--count", "0"])?;
    let output = tokio::task::spawn_blocking(move || {
        let mut restarted = restarted;
        restarted.output()
    })
    .await
    .map_err(|e| Failure(e.to_string()))??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Failure(format!(
            "the restarted client failed: {}",
            stderr.trim()
        )));
    }
    for line in stderr.lines().filter(|l| l.starts_with("client ")) {
        println!("  restarted: {line}");
    }
    for line in stdout.lines() {
        println!("  restarted: {line}");
    }
    let stats = front.node.stats();
    let again = front.tally.requests.load(Ordering::Relaxed) - executed;
    if !stdout.contains("(resent from the outbox): transferred") || again != 0 {
        return Err(Failure(format!(
            "the resend was not answered from the window (ran {again} more times):\n{stdout}{stderr}"
        )));
    }
    println!(
        "  answered from the cache (dedup hits {hits_before} -> {}); executed once",
        stats.dedup_hits
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Waits until `done`, for at most 20 s.
async fn wait(what: &str, mut done: impl FnMut() -> bool) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        if Instant::now() > deadline {
            return Err(Failure(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Waits until `count()` reaches `target`, printing progress every second;
/// fails if it stalls for 20 s.
async fn progress(what: &str, target: u64, count: impl Fn() -> u64) -> Result<(), Failure> {
    let mut last = (0, Instant::now());
    let mut printed = Instant::now();
    loop {
        let now = count();
        if now >= target {
            return Ok(());
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(20) {
            return Err(Failure(format!("{what}: stalled at {now} of {target}")));
        }
        if printed.elapsed() >= Duration::from_secs(1) {
            println!("  ... {now} of {target} {what}");
            printed = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
