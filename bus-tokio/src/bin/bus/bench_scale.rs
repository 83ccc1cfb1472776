//! `bus bench` at scale: handshakes dialled concurrently, and many idle
//! authenticated clients held by one node, whose memory is measured in a
//! process of its own (`bus node`, started by the bench).

use crate::Failure;
use crate::bench::{CLUSTER, lone_node_over};
use bus_tokio::bus_proto::client::ClientParams;
use bus_tokio::bus_proto::config::{Config, ValidConfig};
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use bus_tokio::{Client, OsEntropy, Transport};
use bytes::Bytes;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Handshakes in flight at once: the node's default cap on handshakes.
const CONCURRENCY: usize = 64;

#[derive(Serialize)]
pub(crate) struct ConcurrentHandshakes {
    pub(crate) connections: u64,
    pub(crate) in_flight: usize,
    pub(crate) per_sec: f64,
    /// The same number of raw TCP connections, dialled as many at a time,
    /// each carrying the handshake's three 256-byte messages and dropped
    /// by the dialer: the ceiling the kernel sets on this machine.
    pub(crate) raw_per_sec: Option<f64>,
    pub(crate) bus_vs_raw: Option<f64>,
    /// Why the raw baseline has no figure, if it failed.
    pub(crate) raw_failure: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct IdleClients {
    /// Authenticated client connections held at once.
    pub(crate) connections: usize,
    /// Why fewer than asked for (the open-file limit), if so.
    pub(crate) limited_by: Option<String>,
    /// The node process's resident memory before any client, in KiB.
    pub(crate) node_rss_before_kib: u64,
    /// Its resident memory with every client connected and idle.
    pub(crate) node_rss_idle_kib: u64,
    /// Its resident memory after each client's one request was answered.
    pub(crate) node_rss_after_requests_kib: u64,
    /// Growth per connection: idle, and after the requests.
    pub(crate) bytes_per_idle_connection: f64,
    pub(crate) bytes_per_connection_after_requests: f64,
    /// Requests sent (one per client) and answered.
    pub(crate) requests: usize,
    pub(crate) answered: usize,
    pub(crate) connect_seconds: f64,
}

/// Client connections dialled `CONCURRENCY` at a time to a lone node,
/// each authenticated both ways and dropped: handshakes per second.
pub(crate) async fn concurrent_handshakes(
    config: &ValidConfig,
    connections: u64,
) -> Result<ConcurrentHandshakes, Failure> {
    // Every client dials from 127.0.0.1: let one address hold every
    // handshake place, as many addresses would.
    let mut tuned = Config::clone(config);
    tuned.max_unauthenticated_per_address = tuned.max_handshakes_in_flight;
    // Every client is new: the replay store keeps each one's nonces for
    // the freshness window, and turns clients away (`Busy`) when full.
    tuned.max_replay_peers = usize::try_from(connections).map_or(usize::MAX, |c| c + 64);
    let config = tuned.validate()?;
    // Its events are dropped, not left unread: an unread queue of
    // `ClientConnected` would fill and the node would turn clients away.
    let (node, _, address, key) = lone_node_over(&config, CLUSTER, Transport::tcp()).await?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..CONCURRENCY as u64 {
        let (config, key) = (config.clone(), key.clone());
        let share =
            connections / CONCURRENCY as u64 + u64::from(worker < connections % CONCURRENCY as u64);
        tasks.spawn(async move {
            for _ in 0..share {
                let client = start_client(&config, &key, address)?;
                client
                    .connected()
                    .await
                    .map_err(|cause| Failure(format!("handshake failed: {cause}")))?;
            }
            Ok::<_, Failure>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| Failure(e.to_string()))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    node.shutdown(Duration::from_secs(1)).await;
    let per_sec = connections as f64 / elapsed;
    // A failed baseline costs its row, not the bus's figure.
    let (raw_per_sec, raw_failure) = match raw_concurrent_handshakes(connections).await {
        Ok(rate) => (Some(rate), None),
        Err(Failure(why)) => (None, Some(why)),
    };
    Ok(ConcurrentHandshakes {
        connections,
        in_flight: CONCURRENCY,
        per_sec,
        raw_per_sec,
        bus_vs_raw: raw_per_sec.map(|raw| per_sec / raw),
        raw_failure,
    })
}

/// The size of each message in the raw baseline's exchange: a bus
/// handshake message is one 256-byte header.
const RAW_HANDSHAKE_MESSAGE: usize = 256;

/// How long the raw baseline's dials may take, all together.
const RAW_TIMEOUT: Duration = Duration::from_secs(120);

/// Raw TCP connections dialled `CONCURRENCY` at a time to one listener:
/// the dialer writes a message, reads the answer, writes a third and
/// drops the connection, as the bus's `hello`, reply and `confirm` go.
/// Connections per second.
///
/// The dialer closes first, so its host keeps each connection in
/// TIME_WAIT, and every connect searches the ephemeral ports among them:
/// past about 10,000 connections that search, not the exchange, sets the
/// rate (with the listener closing first, the same exchange runs at about
/// twice the rate on the machines this was measured on). The bus's run
/// before it dialled another listener, so its TIME_WAIT connections are
/// other addresses' and do not collide with these.
async fn raw_concurrent_handshakes(connections: u64) -> Result<f64, Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    // Dropped on every return: the listener and its answering tasks end.
    let mut acceptor = JoinSet::new();
    acceptor.spawn(async move {
        let mut answering = JoinSet::new();
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of descriptors, or a connection reset before it was
                // taken: the dialers' next connections still need answers.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            answering.spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut message = [0u8; RAW_HANDSHAKE_MESSAGE];
                stream.read_exact(&mut message).await?;
                stream.write_all(&message).await?;
                stream.read_exact(&mut message).await?;
                // The dialer closes first, as a bus client does: its
                // side keeps the TIME_WAIT.
                while stream.read(&mut message).await? > 0 {}
                Ok::<_, std::io::Error>(())
            });
            // A dialer that fails says so; the answers' errors follow from it.
            while answering.try_join_next().is_some() {}
        }
    });
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..CONCURRENCY as u64 {
        let share =
            connections / CONCURRENCY as u64 + u64::from(worker < connections % CONCURRENCY as u64);
        tasks.spawn(async move {
            let mut message = [0x5a; RAW_HANDSHAKE_MESSAGE];
            for _ in 0..share {
                let mut stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                stream.write_all(&message).await?;
                stream.read_exact(&mut message).await?;
                stream.write_all(&message).await?;
            }
            Ok::<_, std::io::Error>(())
        });
    }
    let dials = async {
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| Failure(format!("raw handshake baseline: {e}")))?
                .map_err(|e| Failure(format!("raw handshake baseline: {e}")))?;
        }
        Ok::<_, Failure>(())
    };
    tokio::time::timeout(RAW_TIMEOUT, dials)
        .await
        .map_err(|_| {
            Failure(format!(
                "raw handshake baseline: not done in {RAW_TIMEOUT:?}"
            ))
        })??;
    Ok(connections as f64 / started.elapsed().as_secs_f64())
}

fn start_client(config: &ValidConfig, key: &Key, address: SocketAddr) -> Result<Client, Failure> {
    let params = ClientParams {
        cluster: CLUSTER,
        id: Client::random_id(),
        target: 0,
    };
    Ok(Client::start(
        config,
        params,
        KeyRing::new(key.clone()),
        address,
    )?)
}

/// `bus node` in a child process (killed when dropped), and where it
/// listens.
struct NodeProcess {
    child: Child,
    address: SocketAddr,
    _scratch: Scratch,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long `bus node` may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(10);

impl NodeProcess {
    async fn start(config: &Config, key: &Key) -> Result<Self, Failure> {
        let scratch = Scratch::new()?;
        let config_path = scratch.0.join("node.toml");
        std::fs::write(&config_path, config.to_toml())
            .map_err(|e| Failure(format!("{}: {e}", config_path.display())))?;
        let program = std::env::current_exe()?;
        let child = Command::new(&program)
            .args(["node", "--replica", "0", "--replicas", "1"])
            .args(["--listen", "127.0.0.1:0", "--cluster"])
            .arg(format!("{CLUSTER:x}"))
            .arg("--config")
            .arg(&config_path)
            .args(["--key-env", "BUS_BENCH_KEY"])
            .env("BUS_BENCH_KEY", &*key.to_hex())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure(format!("{} node: {e}", program.display())))?;
        // From here on, every way out kills and reaps it.
        let mut node = NodeProcess {
            child,
            address: SocketAddr::from(([0, 0, 0, 0], 0)),
            _scratch: scratch,
        };
        let stderr = node
            .child
            .stderr
            .take()
            .ok_or_else(|| Failure("bus node: no stderr".into()))?;
        // A thread reads its log: the listening line, then the rest (so
        // it never blocks on a full pipe).
        let (found, address) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
            for line in lines.by_ref() {
                // "replica 0 of 1 listening on ADDR (ENDPOINT)"
                if let Some(rest) = line.split(" listening on ").nth(1) {
                    let address = rest.split(' ').next().unwrap_or_default().to_owned();
                    let _ = found.send(Ok(address));
                    lines.for_each(drop);
                    return;
                }
                // Its last lines only: enough to say why it stopped.
                if seen.len() == 20 {
                    seen.remove(0);
                }
                seen.push(line);
            }
            let _ = found.send(Err(seen.join(" | ")));
        });
        let address = match tokio::time::timeout(START_TIMEOUT, address).await {
            Ok(Ok(Ok(address))) => address,
            Ok(Ok(Err(log))) => {
                return Err(Failure(format!(
                    "bus node exited before it listened: {log}"
                )));
            }
            Ok(Err(_)) => return Err(Failure("bus node: its log reader stopped".into())),
            Err(_) => {
                return Err(Failure(format!(
                    "bus node did not listen within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
        };
        node.address = address
            .parse()
            .map_err(|e| Failure(format!("bus node's address {address:?}: {e}")))?;
        Ok(node)
    }

    /// Resident memory in KiB (`VmRSS` in `/proc/PID/status`).
    fn rss_kib(&self) -> Result<u64, Failure> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).map_err(|e| Failure(format!("{path}: {e}")))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| Failure(format!("{path}: no VmRSS line")))
    }
}

/// A new scratch directory of this process, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Self, Failure> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("bus-bench-{}-{stamp}", std::process::id());
        let path = std::env::temp_dir().join(name);
        // Not `create_dir_all`: a directory already there is not ours.
        std::fs::create_dir(&path).map_err(|e| Failure(format!("{}: {e}", path.display())))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The soft limit on open files (`/proc/self/limits`), if known.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `connections` authenticated clients connected to one `bus node` and
/// left idle; then one 64-byte request from each, answered. The node's
/// resident memory is read before, while idle and after the requests.
pub(crate) async fn idle_clients(
    config: &ValidConfig,
    connections: usize,
) -> Result<Option<IdleClients>, Failure> {
    // Memory is read from /proc (Linux).
    if !std::path::Path::new("/proc/self/status").exists() {
        return Ok(None);
    }
    // Both processes hold one descriptor per connection, plus some spare.
    let (connections, limited_by) = match open_file_limit() {
        Some(limit) if limit < connections + 256 => (
            limit.saturating_sub(256),
            Some(format!("open-file limit {limit} (ulimit -n)")),
        ),
        _ => (connections, None),
    };
    let mut tuned = Config::clone(config);
    tuned.max_connections = connections + 64;
    tuned.dedup_max_clients = connections + 64;
    tuned.max_replay_peers = connections + 64;
    tuned.max_unauthenticated_per_address = tuned.max_handshakes_in_flight;
    // Idle means idle: no heartbeat during the measurement.
    tuned.heartbeat_interval = Duration::from_secs(60);
    tuned.liveness_timeout = Duration::from_secs(180);
    let client_config = tuned.clone().validate()?;
    let key = Key::generate(&mut OsEntropy);
    let node = NodeProcess::start(&tuned, &key).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = node.rss_kib()?;
    let started = Instant::now();
    let mut clients = Vec::with_capacity(connections);
    let mut connecting = JoinSet::new();
    for _ in 0..connections {
        if connecting.len() >= CONCURRENCY
            && let Some(done) = connecting.join_next().await
        {
            clients.push(done.map_err(|e| Failure(e.to_string()))??);
        }
        let client = start_client(&client_config, &key, node.address)?;
        connecting.spawn(async move {
            client
                .connected()
                .await
                .map_err(|cause| Failure(format!("client handshake failed: {cause}")))?;
            Ok::<_, Failure>(client)
        });
    }
    while let Some(done) = connecting.join_next().await {
        clients.push(done.map_err(|e| Failure(e.to_string()))??);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = node.rss_kib()?;
    let mut asking = JoinSet::new();
    let body = Bytes::from(vec![0x5a; 64]);
    for (i, client) in clients.iter().enumerate() {
        let (client, body) = (client.clone(), body.clone());
        asking.spawn(async move {
            client
                .request(u32::try_from(i).unwrap_or(0), body)
                .await
                .is_ok()
        });
    }
    let mut answered = 0;
    while let Some(done) = asking.join_next().await {
        answered += usize::from(done.map_err(|e| Failure(e.to_string()))?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = node.rss_kib()?;
    drop(clients);
    let per = |kib: u64| kib.saturating_sub(before) as f64 * 1024.0 / connections.max(1) as f64;
    Ok(Some(IdleClients {
        connections,
        limited_by,
        node_rss_before_kib: before,
        node_rss_idle_kib: idle,
        node_rss_after_requests_kib: after,
        bytes_per_idle_connection: per(idle),
        bytes_per_connection_after_requests: per(after),
        requests: connections,
        answered,
        connect_seconds,
    }))
}

pub(crate) fn print(handshakes: &ConcurrentHandshakes, idle: Option<&IdleClients>) {
    println!(
        "concurrent handshakes: {:.0} per second ({} client connections, {} in flight at once, each authenticated both ways and dropped)",
        handshakes.per_sec, handshakes.connections, handshakes.in_flight
    );
    let raw = "  raw TCP, same exchange (three 256-byte messages, no crypto, dialer closes first)";
    match (handshakes.raw_per_sec, handshakes.bus_vs_raw) {
        (Some(rate), Some(ratio)) => println!("{raw}: {rate:.0} per second; bus {ratio:.2}x raw"),
        _ => println!(
            "{raw}: not measured ({})",
            handshakes.raw_failure.as_deref().unwrap_or("no figure")
        ),
    }
    let Some(idle) = idle else {
        println!("\nidle clients: not measured (no /proc to read memory from)");
        return;
    };
    println!(
        "\nidle clients held by one `bus node` process: {} authenticated connections ({} s to connect{})",
        idle.connections,
        format_args!("{:.1}", idle.connect_seconds),
        idle.limited_by
            .as_deref()
            .map_or(String::new(), |why| format!(
                "; fewer than asked for: {why}"
            ))
    );
    println!(
        "  node memory (RSS): {} KiB before, {} KiB idle, {} KiB after one request each",
        idle.node_rss_before_kib, idle.node_rss_idle_kib, idle.node_rss_after_requests_kib
    );
    println!(
        "  per connection: {:.0} B idle, {:.0} B after the requests; requests answered: {} of {}",
        idle.bytes_per_idle_connection,
        idle.bytes_per_connection_after_requests,
        idle.answered,
        idle.requests
    );
}
