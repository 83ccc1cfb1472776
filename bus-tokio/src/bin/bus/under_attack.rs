//! `bus bench`'s "under attack" section: a legitimate client's handshake
//! and request round trip while key-less attackers hold 1,000 silent
//! sockets and flood forged `hello`s, against the same without attack, in
//! one run.

use crate::Failure;
use crate::bench::percentiles;
use bus_tokio::bus_proto::client::ClientParams;
use bus_tokio::bus_proto::config::ValidConfig;
use bus_tokio::bus_proto::connection::{Connection, DialParams};
use bus_tokio::bus_proto::crypto::{Key, KeyRing, PeerId};
use bus_tokio::bus_proto::handshake::Binding;
use bus_tokio::bus_proto::node::NodeEvent;
use bus_tokio::bus_proto::time::{Instant as CoreInstant, UnixNanos};
use bus_tokio::{Client, OsEntropy};
use bytes::Bytes;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const CLUSTER: u128 = 0xa77ac;
/// Silent sockets the attacker holds open at once.
const SILENT: usize = 1000;

/// One scenario's figures.
#[derive(Serialize)]
pub(crate) struct Row {
    scenario: &'static str,
    handshakes: u64,
    handshake_p50_us: f64,
    handshake_p99_us: f64,
    requests: u64,
    request_p50_us: f64,
    request_p99_us: f64,
    /// p99 against the scenario without attack.
    handshake_p99_vs_baseline: f64,
    request_p99_vs_baseline: f64,
    /// p99 against the same attack aimed at another listener: what the
    /// node's handling of the attack adds to sharing the machine with it.
    handshake_p99_vs_control: f64,
    request_p99_vs_control: f64,
    /// Attacker sockets the node evicted, and handshakes that failed.
    evicted: u64,
    failed: u64,
    /// Attack rates while the legitimate client worked, per second.
    silent_per_sec: f64,
    forged_per_sec: f64,
}

async fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Connections each attacker opens per millisecond, at most.
const PER_MS: usize = 4;

/// Holds `SILENT` silent sockets from `source`, opening `PER_MS` new ones
/// every millisecond and closing the oldest beyond `SILENT`, until stopped.
async fn silent(source: IpAddr, target: SocketAddr, opened: Arc<AtomicU64>) {
    let mut held = VecDeque::new();
    loop {
        for _ in 0..PER_MS {
            if let Ok(stream) = connect_from(source, target).await {
                held.push_back(stream);
                opened.fetch_add(1, Ordering::Relaxed);
            }
            while held.len() > SILENT {
                held.pop_front();
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A fresh `hello` signed with a key the node does not have.
fn forged_hello(config: &ValidConfig, wrong: &KeyRing, client: u128) -> Vec<u8> {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let wall = UnixNanos::from_nanos(u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX));
    let params = DialParams {
        cluster: CLUSTER,
        local: PeerId::Client(client),
        acceptor: 0,
        keys: wrong,
        binding: Binding::NONE,
    };
    let mut bytes = Vec::new();
    if let Ok(mut conn) = Connection::dial(CoreInstant::ZERO, wall, config, params, &mut OsEntropy)
        && let Some(hello) = conn.poll_transmit(CoreInstant::ZERO)
    {
        hello.write_to(&mut bytes);
    }
    bytes
}

/// Sends `PER_MS` forged `hello`s from `source` every millisecond, each on
/// a new connection, until stopped.
async fn forgeries(config: ValidConfig, source: IpAddr, target: SocketAddr, sent: Arc<AtomicU64>) {
    let wrong = KeyRing::new(Key::generate(&mut OsEntropy));
    let mut open = VecDeque::new();
    for client in 1u128.. {
        if let Ok(mut stream) = connect_from(source, target).await
            && stream
                .write_all(&forged_hello(&config, &wrong, client))
                .await
                .is_ok()
        {
            open.push_back(stream);
            sent.fetch_add(1, Ordering::Relaxed);
        }
        while open.len() > 100 {
            open.pop_front();
        }
        if client % PER_MS as u128 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Where the silent sockets and the forged hellos come from, and what
/// they attack.
type Attackers = (IpAddr, IpAddr, SocketAddr);

/// A task on its own thread and current-thread runtime (as on its own
/// machine, though this one shares its cores), stopped and joined on drop.
struct Background {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn spawn<F: Future<Output = ()> + 'static>(task: impl FnOnce() -> F + Send + 'static) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                tokio::select! {
                    () = task() => {}
                    _ = stopped => {}
                }
            });
        });
        Background {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The attackers, in the background.
struct Attack {
    _task: Background,
    silent: Arc<AtomicU64>,
    forged: Arc<AtomicU64>,
}

impl Attack {
    fn start(
        config: &ValidConfig,
        silent_from: IpAddr,
        forged_from: IpAddr,
        target: SocketAddr,
    ) -> Attack {
        let (opened, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (o, s, config) = (Arc::clone(&opened), Arc::clone(&sent), config.clone());
        let task = Background::spawn(move || async move {
            tokio::join!(
                silent(silent_from, target, o),
                forgeries(config, forged_from, target, s)
            );
        });
        Attack {
            _task: task,
            silent: opened,
            forged: sent,
        }
    }

    fn totals(&self) -> (u64, u64) {
        (
            self.silent.load(Ordering::Relaxed),
            self.forged.load(Ordering::Relaxed),
        )
    }
}

/// A plain listener in the background: it accepts, reads until the peer
/// closes, and keeps nothing.
struct Bystander {
    address: SocketAddr,
    _task: Background,
}

impl Bystander {
    fn start() -> Result<Bystander, Failure> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let task = Background::spawn(move || async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = [0u8; 256];
                    while let Ok(1..) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await
                    {
                    }
                });
            }
        });
        Ok(Bystander {
            address,
            _task: task,
        })
    }
}

/// Handshake and round-trip samples of one legitimate client, `handshakes`
/// new clients then `requests` requests on one.
async fn legitimate(
    config: &ValidConfig,
    key: &Key,
    address: SocketAddr,
    handshakes: u64,
    requests: u64,
) -> Result<(Vec<Duration>, Vec<Duration>), Failure> {
    let params = || ClientParams {
        cluster: CLUSTER,
        id: Client::random_id(),
        target: 0,
    };
    let mut connects = Vec::new();
    for _ in 0..handshakes {
        let started = Instant::now();
        let client = Client::start(config, params(), KeyRing::new(key.clone()), address)?;
        // A dial evicted before its hello was read sees a reset, or one
        // refused is told Busy; the client retries on its own, and that
        // time counts.
        while client.connected().await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        connects.push(started.elapsed());
        client.shutdown(Duration::from_secs(1)).await;
    }
    let client = Client::start(config, params(), KeyRing::new(key.clone()), address)?;
    let mut round_trips = Vec::new();
    for i in 0..requests {
        let started = Instant::now();
        client
            .request(1, Bytes::from(i.to_le_bytes().to_vec()))
            .await?;
        round_trips.push(started.elapsed());
    }
    client.shutdown(Duration::from_secs(1)).await;
    Ok((connects, round_trips))
}

/// Runs the four scenarios against one node.
pub(crate) async fn measure(config: &ValidConfig, scale: u64) -> Result<Vec<Row>, Failure> {
    let (node, mut events, address, key) = crate::bench::lone_node(config, CLUSTER).await?;
    let server = node.clone();
    let echo = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let NodeEvent::Request { request, body, .. } = event {
                let _ = server.reply(request, body);
            }
        }
    });
    let (handshakes, requests) = (200 / scale, 5000 / scale);
    let other = |last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    let bystander = Bystander::start()?;
    // The control row aims the same attack at a plain listener: what the
    // legitimate client loses there is the cost of sharing the machine
    // with the attackers, not of the node's defences.
    let scenarios: [(&'static str, Option<Attackers>); 4] = [
        ("no attack", None),
        (
            "same attack at another listener",
            Some((other(2), other(3), bystander.address)),
        ),
        (
            "attackers on other hosts",
            Some((other(2), other(3), address)),
        ),
        (
            "attackers on the client's host",
            Some((other(1), other(1), address)),
        ),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (scenario, attackers) in scenarios {
        eprintln!("under attack: {scenario} ...");
        let attack = attackers.map(|(silent_from, forged_from, target)| {
            Attack::start(config, silent_from, forged_from, target)
        });
        if let Some(attack) = &attack {
            // Let the attack reach full strength first: the pool is full
            // and the attacker holds its sockets.
            while attack.totals().0 < SILENT as u64 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let before = node.stats();
        let totals = attack.as_ref().map(Attack::totals);
        let started = Instant::now();
        let (connects, round_trips) =
            legitimate(config, &key, address, handshakes, requests).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let after = node.stats();
        let rates = match (&attack, totals) {
            (Some(attack), Some((s0, f0))) => {
                let (s1, f1) = attack.totals();
                ((s1 - s0) as f64 / elapsed, (f1 - f0) as f64 / elapsed)
            }
            _ => (0.0, 0.0),
        };
        drop(attack);
        let (handshake_p50_us, handshake_p99_us) = percentiles(connects);
        let (request_p50_us, request_p99_us) = percentiles(round_trips);
        let baseline = rows.first();
        let control = rows.get(1);
        rows.push(Row {
            scenario,
            handshakes,
            handshake_p50_us,
            handshake_p99_us,
            requests,
            request_p50_us,
            request_p99_us,
            handshake_p99_vs_baseline: baseline
                .map_or(1.0, |b| handshake_p99_us / b.handshake_p99_us),
            request_p99_vs_baseline: baseline.map_or(1.0, |b| request_p99_us / b.request_p99_us),
            handshake_p99_vs_control: control
                .map_or(1.0, |c| handshake_p99_us / c.handshake_p99_us),
            request_p99_vs_control: control.map_or(1.0, |c| request_p99_us / c.request_p99_us),
            evicted: after.unauthenticated_evicted - before.unauthenticated_evicted,
            failed: after.handshakes_failed - before.handshakes_failed,
            silent_per_sec: rates.0,
            forged_per_sec: rates.1,
        });
        // Let the node shed the attack before the next scenario.
        tokio::time::sleep(config.hello_timeout.min(Duration::from_millis(500))).await;
    }
    node.shutdown(Duration::from_secs(2)).await;
    echo.abort();
    Ok(rows)
}

/// Prints the section.
pub(crate) fn print(rows: &[Row]) {
    println!(
        "\nunder attack: a legitimate client while attackers hold {SILENT} silent sockets and flood forged hellos"
    );
    println!("(p99 ratios: against no attack / against the same attack aimed at another listener)");
    println!(
        "{:<32} {:>19} {:>13} {:>19} {:>13} {:>8} {:>7} {:>15}",
        "",
        "handshake p50/p99",
        "p99 vs",
        "request p50/p99",
        "p99 vs",
        "evicted",
        "failed",
        "silent/forged/s"
    );
    for r in rows {
        println!(
            "{:<32} {:>8.0}/{:>8.0}us {:>5.2}x/{:>5.2}x {:>8.1}/{:>8.1}us {:>5.2}x/{:>5.2}x {:>8} {:>7} {:>7.0}/{:>7.0}",
            r.scenario,
            r.handshake_p50_us,
            r.handshake_p99_us,
            r.handshake_p99_vs_baseline,
            r.handshake_p99_vs_control,
            r.request_p50_us,
            r.request_p99_us,
            r.request_p99_vs_baseline,
            r.request_p99_vs_control,
            r.evicted,
            r.failed,
            r.silent_per_sec,
            r.forged_per_sec
        );
    }
}
