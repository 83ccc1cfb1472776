//! Every adapter against raw TCP on its own runtime, in one run: messages
//! per second one way (64 B and 4 KiB bodies) and the round trip of a
//! 64 B message, on loopback. Figures are printed, not asserted.
//!
//! ```sh
//! cargo bench -p bus-tests --bench runtimes            # best of 3 runs
//! cargo bench -p bus-tests --bench runtimes -- --quick # a tenth of the work, 1 run
//! cargo bench -p bus-tests --bench runtimes -- compio  # the runtimes whose name has "compio"
//! ```
//!
//! `--round-trips N` runs only the bus's round trip, N times, for callgrind:
//! the instructions of two runs' difference over their N's difference are
//! what one round trip costs on that runtime, start-up excluded.
//!
//! Beside each throughput it prints what a message cost the process: CPU
//! time summed over its threads, and minor page faults (Linux `/proc`).
//!
//! The raw baseline writes the very frames the bus would send, pre-encoded,
//! in batches of the bus's `max_batch`, and counts them on arrival by size;
//! its round trip echoes one frame. Bus and baseline each run sender and
//! receiver as two futures of one task, so both see the same scheduling.

use bus_proto::config::{Config, ValidConfig};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::host::NodeOptions;
use bus_proto::node::NodeEvent;
use bus_proto::wire::{Frame, Header, Integrity, Kind};
use bus_tests::bus::{
    Bus, Compio, CompioPoll, CompioUring, EventsOf, NodeOf, Smol, SmolExecutor, Tokio,
    TokioCurrent, TokioMulti,
};
use bus_tests::cluster::{params, until};
use bytes::Bytes;
use smol::future::zip;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BODIES: [(usize, u64); 2] = [(64, 1_000_000), (4096, 100_000)];
const ROUND_TRIPS: u64 = 10_000;

/// One runtime's figures.
struct Row {
    runtime: &'static str,
    /// (body bytes, bus msg/s, raw msg/s) per body size.
    throughput: Vec<(usize, f64, f64)>,
    /// (bus, raw) cost per message of the best run of each, per body size.
    costs: Vec<(Option<Cost>, Option<Cost>)>,
    /// (bus p50, bus p99, raw p50, raw p99) in microseconds.
    round_trip: (f64, f64, f64, f64),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let (scale, runs) = if quick { (10, 1) } else { (1, 3) };
    let round_trips = args.iter().position(|a| a == "--round-trips").map(|at| {
        match args.get(at + 1).and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => n,
            None => panic!("--round-trips wants a count, as in --round-trips 2000"),
        }
    });
    // Other arguments (cargo's own `--bench` and the count aside) pick
    // runtimes by name.
    let names: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with("--") && a.parse::<u64>().is_err())
        .collect();
    let wanted = |name: &str| names.is_empty() || names.iter().any(|n| name.contains(n.as_str()));
    let config = Config::default().validate().expect("default config");
    let mut rows = Vec::new();
    let mut run = |name: &str,
                   measure: fn(&ValidConfig, u64, u32) -> Row,
                   round_trips_only: fn(&ValidConfig, u64)| {
        if !wanted(name) {
            return;
        }
        match round_trips {
            Some(n) => round_trips_only(&config, n),
            None => rows.push(measure(&config, scale, runs)),
        }
    };
    run(
        TokioMulti::NAME,
        measure::<TokioMulti>,
        round_trips_only::<TokioMulti>,
    );
    run(
        TokioCurrent::NAME,
        measure::<TokioCurrent>,
        round_trips_only::<TokioCurrent>,
    );
    run(Smol::NAME, measure::<Smol>, round_trips_only::<Smol>);
    run(
        SmolExecutor::NAME,
        measure::<SmolExecutor>,
        round_trips_only::<SmolExecutor>,
    );
    run(
        CompioUring::NAME,
        measure::<CompioUring>,
        round_trips_only::<CompioUring>,
    );
    run(
        CompioPoll::NAME,
        measure::<CompioPoll>,
        round_trips_only::<CompioPoll>,
    );
    if round_trips.is_none() {
        print(&rows, config.max_batch, runs);
    }
}

/// `--round-trips`: only the bus's round trip, `n` times.
fn round_trips_only<B: Bus>(config: &ValidConfig, n: u64) {
    let (p50, p99) = B::run(bus_round_trip::<B>(config, n));
    println!(
        "{}: {n} round trips, p50 {p50:.1}us, p99 {p99:.1}us",
        B::NAME
    );
}

/// CPU time (ns, every thread) and minor page faults, per message.
#[derive(Clone, Copy)]
struct Cost {
    cpu_ns: f64,
    faults: f64,
}

/// The process's CPU time in nanoseconds (every thread:
/// `/proc/self/task/*/schedstat`) and minor page faults (`/proc/self/stat`).
fn usage() -> Option<(u64, u64)> {
    let mut cpu = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        cpu += stat.split(' ').next()?.parse::<u64>().ok()?;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let faults = stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(7)?
        .parse()
        .ok()?;
    Some((cpu, faults))
}

/// What `messages` messages cost since `before` ([`usage`]).
fn cost_since(before: Option<(u64, u64)>, messages: u64) -> Option<Cost> {
    let ((cpu0, faults0), (cpu1, faults1)) = before.zip(usage())?;
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / messages.max(1) as f64;
    Some(Cost {
        cpu_ns: per(cpu0, cpu1),
        faults: per(faults0, faults1),
    })
}

fn measure<B: Raw>(config: &ValidConfig, scale: u64, runs: u32) -> Row {
    eprintln!("{} ...", B::NAME);
    B::run(async {
        let mut throughput = Vec::new();
        let mut costs = Vec::new();
        for (body, messages) in BODIES {
            let messages = messages / scale;
            let frame = encoded_frame(body);
            let (mut bus, mut raw) = (0f64, 0f64);
            let (mut bus_cost, mut raw_cost) = (None, None);
            for _ in 0..runs {
                let before = usage();
                let rate = bus_throughput::<B>(config, body, messages).await;
                if rate > bus {
                    (bus, bus_cost) = (rate, cost_since(before, messages));
                }
                let before = usage();
                let started = Instant::now();
                B::raw_throughput(&frame, config.max_batch, messages)
                    .await
                    .expect("raw throughput");
                let rate = messages as f64 / started.elapsed().as_secs_f64();
                if rate > raw {
                    (raw, raw_cost) = (rate, cost_since(before, messages));
                }
            }
            throughput.push((body, bus, raw));
            costs.push((bus_cost, raw_cost));
        }
        let iterations = ROUND_TRIPS / scale;
        let (bus_p50, bus_p99) = bus_round_trip::<B>(config, iterations).await;
        let samples = B::raw_round_trip(&encoded_frame(64), iterations)
            .await
            .expect("raw round trip");
        let (raw_p50, raw_p99) = percentiles(samples);
        Row {
            runtime: B::NAME,
            throughput,
            costs,
            round_trip: (bus_p50, bus_p99, raw_p50, raw_p99),
        }
    })
}

fn print(rows: &[Row], batch: usize, runs: u32) {
    println!(
        "runtimes bench: one TCP connection on loopback, batches of {batch} frames, best of {runs}"
    );
    println!(
        "\n{:<24} {:>12} {:>12} {:>7}   {:>12} {:>12} {:>7}",
        "throughput (msg/s)", "bus 64 B", "raw 64 B", "vs raw", "bus 4 KiB", "raw 4 KiB", "vs raw"
    );
    for row in rows {
        let [(_, b64, r64), (_, b4k, r4k)] = row.throughput[..] else {
            continue;
        };
        println!(
            "{:<24} {:>12.0} {:>12.0} {:>6.2}x   {:>12.0} {:>12.0} {:>6.2}x",
            row.runtime,
            b64,
            r64,
            b64 / r64,
            b4k,
            r4k,
            b4k / r4k
        );
    }
    println!(
        "\n{:<24} {:>12} {:>12} {:>12} {:>12}   {:>9} {:>9}",
        "per message",
        "CPU bus 64B",
        "CPU raw 64B",
        "CPU bus 4KiB",
        "CPU raw 4KiB",
        "flt bus64",
        "flt bus4K"
    );
    for row in rows {
        let [(bus64, raw64), (bus4k, raw4k)] = row.costs[..] else {
            continue;
        };
        let cpu =
            |c: Option<Cost>| c.map_or_else(|| "-".to_owned(), |c| format!("{:.0} ns", c.cpu_ns));
        let faults =
            |c: Option<Cost>| c.map_or_else(|| "-".to_owned(), |c| format!("{:.4}", c.faults));
        println!(
            "{:<24} {:>12} {:>12} {:>12} {:>12}   {:>9} {:>9}",
            row.runtime,
            cpu(bus64),
            cpu(raw64),
            cpu(bus4k),
            cpu(raw4k),
            faults(bus64),
            faults(bus4k)
        );
    }
    println!(
        "(CPU time of every thread of the process; flt: minor page faults per message of the bus)"
    );
    println!(
        "\n{:<24} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "round trip (64 B)", "bus p50", "raw p50", "vs raw", "bus p99", "raw p99", "vs raw"
    );
    for row in rows {
        let (b50, b99, r50, r99) = row.round_trip;
        println!(
            "{:<24} {:>8.1}us {:>8.1}us {:>6.2}x   {:>8.1}us {:>8.1}us {:>6.2}x",
            row.runtime,
            b50,
            r50,
            b50 / r50,
            b99,
            r99,
            b99 / r99
        );
    }
    println!(
        "\n(throughput: higher is better, ratio bus/raw; round trip: lower is better, ratio bus/raw)"
    );
}

/// The frame the bus writes for a message with a `body`-byte body.
fn encoded_frame(body: usize) -> Vec<u8> {
    let frame = Frame {
        header: Header::new(bus_tests::CLUSTER, Kind::Message { operation: 1 }),
        body: Bytes::from(vec![0xab; body]),
    };
    let mut out = Vec::new();
    frame
        .encode(&Integrity::Checksum, 1 << 20)
        .expect("encodes")
        .write_to(&mut out);
    out
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: usize| {
        samples
            .get((samples.len() * q / 100).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    (at(50), at(99))
}

/// Replica 0 and replica 1, connected.
async fn pair<B: Bus>(
    config: &ValidConfig,
) -> ((NodeOf<B>, EventsOf<B>), (NodeOf<B>, EventsOf<B>)) {
    let keys = KeyRing::new(Key::generate(&mut SeededEntropy::new(1)));
    let start = |replica| {
        B::start_node(
            config,
            params(replica, 2),
            keys.clone(),
            NodeOptions::default(),
        )
        .expect("node")
    };
    let (receiver, receiver_events) = start(1);
    let address = receiver.listen(loopback()).await.expect("listen");
    let (sender, sender_events) = start(0);
    sender.set_address(1, address);
    until::<B>("the pair connects", || {
        sender.is_connected(1) && receiver.is_connected(0)
    })
    .await;
    ((sender, sender_events), (receiver, receiver_events))
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn bus_throughput<B: Bus>(config: &ValidConfig, body: usize, messages: u64) -> f64 {
    let ((sender, _sender_events), (receiver, mut events)) = pair::<B>(config).await;
    let payload = Bytes::from(vec![0xab; body]);
    let started = Instant::now();
    let produce = async {
        for i in 0..messages {
            let operation = u32::try_from(i & 0xffff_ffff).unwrap_or(0);
            sender
                .send_wait(1, operation, payload.clone())
                .await
                .expect("send");
        }
    };
    let consume = async {
        let mut received = 0u64;
        let mut batch = Vec::with_capacity(4096);
        while received < messages {
            assert!(
                events.recv_many(&mut batch, 4096).await > 0,
                "the receiver stopped"
            );
            let arrived = batch
                .drain(..)
                .filter(|e| matches!(e, NodeEvent::Message { .. }));
            received += arrived.count() as u64;
        }
    };
    zip(produce, consume).await;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    sender.shutdown(Duration::from_secs(1)).await;
    receiver.shutdown(Duration::from_secs(1)).await;
    rate
}

async fn bus_round_trip<B: Bus>(config: &ValidConfig, iterations: u64) -> (f64, f64) {
    let ((pinger, mut replies), (echo, mut requests)) = pair::<B>(config).await;
    let echoing = async {
        while let Some(event) = requests.recv().await {
            if let NodeEvent::Message {
                operation, body, ..
            } = event
            {
                let _ = echo.send(0, operation, body);
            }
        }
    };
    let pinging = async {
        let payload = Bytes::from(vec![0xab; 64]);
        let mut samples = Vec::new();
        for i in 0..iterations {
            let operation = u32::try_from(i & 0xffff_ffff).unwrap_or(0);
            let started = Instant::now();
            pinger.send(1, operation, payload.clone()).expect("ping");
            loop {
                match replies.recv().await {
                    Some(NodeEvent::Message { operation: o, .. }) if o == operation => break,
                    Some(_) => {}
                    None => panic!("the pinger stopped"),
                }
            }
            samples.push(started.elapsed());
        }
        pinger.shutdown(Duration::from_secs(1)).await;
        echo.shutdown(Duration::from_secs(1)).await;
        samples
    };
    let ((), samples) = zip(echoing, pinging).await;
    percentiles(samples)
}

/// Raw TCP on a runtime's own sockets.
trait Raw: Bus {
    /// Writes `messages` copies of `frame`, `batch` per write, and reads
    /// them back on the other end of a loopback connection.
    async fn raw_throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()>;
    /// Sends `frame` and waits for it to be echoed, `iterations` times.
    async fn raw_round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>>;
}

/// How many frames are in each write of a raw sender.
fn batches(messages: u64, batch: usize) -> impl Iterator<Item = usize> {
    let batch = batch as u64;
    (0..messages.div_ceil(batch))
        .map(move |i| usize::try_from(batch.min(messages - i * batch)).unwrap_or(0))
}

mod tokio_raw {
    use super::{Duration, Instant, batches, io, zip};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn connection() -> io::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (client, accepted) = zip(TcpStream::connect(address), listener.accept()).await;
        let (client, (server, _)) = (client?, accepted?);
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok((client, server))
    }

    pub(super) async fn throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()> {
        let (mut writer, mut reader) = connection().await?;
        let full = frame.repeat(batch);
        let write = async {
            for n in batches(messages, batch) {
                writer.write_all(&full[..n * frame.len()]).await?;
            }
            Ok::<_, io::Error>(())
        };
        let read = async {
            let total = messages * frame.len() as u64;
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0u64;
            while got < total {
                match reader.read(&mut buf).await? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => got += n as u64,
                }
            }
            Ok(())
        };
        let (w, r) = zip(write, read).await;
        w.and(r)
    }

    pub(super) async fn round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>> {
        let (mut pinger, mut echo) = connection().await?;
        let echoing = async {
            let mut buf = vec![0u8; frame.len()];
            while echo.read_exact(&mut buf).await.is_ok() {
                if echo.write_all(&buf).await.is_err() {
                    break;
                }
            }
        };
        let pinging = async {
            let mut buf = vec![0u8; frame.len()];
            let mut samples = Vec::new();
            for _ in 0..iterations {
                let started = Instant::now();
                pinger.write_all(frame).await?;
                pinger.read_exact(&mut buf).await?;
                samples.push(started.elapsed());
            }
            pinger.shutdown().await?;
            Ok(samples)
        };
        zip(echoing, pinging).await.1
    }
}

impl<const MULTI: bool> Raw for Tokio<MULTI> {
    async fn raw_throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()> {
        tokio_raw::throughput(frame, batch, messages).await
    }
    async fn raw_round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>> {
        tokio_raw::round_trip(frame, iterations).await
    }
}

impl Raw for SmolExecutor {
    async fn raw_throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()> {
        Smol::raw_throughput(frame, batch, messages).await
    }
    async fn raw_round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>> {
        Smol::raw_round_trip(frame, iterations).await
    }
}

impl Raw for Smol {
    async fn raw_throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()> {
        use smol::io::{AsyncReadExt, AsyncWriteExt};
        let (writer, reader) = smol_connection().await?;
        let full = frame.repeat(batch);
        let write = async {
            for n in batches(messages, batch) {
                (&writer).write_all(&full[..n * frame.len()]).await?;
            }
            Ok::<_, io::Error>(())
        };
        let read = async {
            let total = messages * frame.len() as u64;
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0u64;
            while got < total {
                match (&reader).read(&mut buf).await? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => got += n as u64,
                }
            }
            Ok(())
        };
        let (w, r) = zip(write, read).await;
        w.and(r)
    }

    async fn raw_round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>> {
        use smol::io::{AsyncReadExt, AsyncWriteExt};
        let (pinger, echo) = smol_connection().await?;
        let echoing = async {
            let mut buf = vec![0u8; frame.len()];
            while (&echo).read_exact(&mut buf).await.is_ok() {
                if (&echo).write_all(&buf).await.is_err() {
                    break;
                }
            }
        };
        let pinging = async {
            let mut buf = vec![0u8; frame.len()];
            let mut samples = Vec::new();
            for _ in 0..iterations {
                let started = Instant::now();
                (&pinger).write_all(frame).await?;
                (&pinger).read_exact(&mut buf).await?;
                samples.push(started.elapsed());
            }
            pinger.get_ref().shutdown(std::net::Shutdown::Write)?;
            Ok(samples)
        };
        zip(echoing, pinging).await.1
    }
}

async fn smol_connection() -> io::Result<(
    smol::Async<std::net::TcpStream>,
    smol::Async<std::net::TcpStream>,
)> {
    let listener = smol::Async::<std::net::TcpListener>::bind(loopback())?;
    let address = listener.get_ref().local_addr()?;
    let (client, accepted) = zip(
        smol::Async::<std::net::TcpStream>::connect(address),
        listener.accept(),
    )
    .await;
    let (client, (server, _)) = (client?, accepted?);
    client.get_ref().set_nodelay(true)?;
    server.get_ref().set_nodelay(true)?;
    Ok((client, server))
}

mod compio_raw {
    use super::{Duration, Instant, batches, io, loopback, zip};
    use bytes::Bytes;
    use compio::BufResult;
    use compio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use compio::net::{TcpListener, TcpStream};

    async fn connection() -> io::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind(loopback()).await?;
        let address = listener.local_addr()?;
        let (client, accepted) = zip(TcpStream::connect(address), listener.accept()).await;
        let (client, (server, _)) = (client?, accepted?);
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok((client, server))
    }

    pub(super) async fn throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()> {
        let (writer, reader) = connection().await?;
        let full = Bytes::from(frame.repeat(batch));
        let write = async {
            let mut writer = &writer;
            for n in batches(messages, batch) {
                let BufResult(result, _) = writer.write_all(full.slice(..n * frame.len())).await;
                result?;
            }
            Ok::<_, io::Error>(())
        };
        let read = async {
            let mut reader = &reader;
            let total = messages * frame.len() as u64;
            let mut buf = Vec::with_capacity(64 << 10);
            let mut got = 0u64;
            while got < total {
                let BufResult(result, back) = reader.read(buf).await;
                buf = back;
                match result? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => got += n as u64,
                }
            }
            Ok(())
        };
        let (w, r) = zip(write, read).await;
        w.and(r)
    }

    pub(super) async fn round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>> {
        let (pinger, echo) = connection().await?;
        let echoing = async {
            let mut echo = &echo;
            let mut buf = Vec::with_capacity(frame.len());
            loop {
                let BufResult(result, back) = echo.read_exact(buf).await;
                if result.is_err() {
                    break;
                }
                let BufResult(result, back) = echo.write_all(back).await;
                if result.is_err() {
                    break;
                }
                buf = back;
                buf.clear();
            }
        };
        let pinging = async {
            let mut pinger = &pinger;
            let ping = Bytes::copy_from_slice(frame);
            let mut buf = Vec::with_capacity(frame.len());
            let mut samples = Vec::new();
            for _ in 0..iterations {
                let started = Instant::now();
                let BufResult(result, _) = pinger.write_all(ping.clone()).await;
                result?;
                let BufResult(result, back) = pinger.read_exact(buf).await;
                result?;
                buf = back;
                buf.clear();
                samples.push(started.elapsed());
            }
            pinger.shutdown().await?;
            Ok(samples)
        };
        zip(echoing, pinging).await.1
    }
}

impl<const IO_URING: bool> Raw for Compio<IO_URING> {
    async fn raw_throughput(frame: &[u8], batch: usize, messages: u64) -> io::Result<()> {
        compio_raw::throughput(frame, batch, messages).await
    }
    async fn raw_round_trip(frame: &[u8], iterations: u64) -> io::Result<Vec<Duration>> {
        compio_raw::round_trip(frame, iterations).await
    }
}
