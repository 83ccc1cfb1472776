//! `bus bench`: the bus against raw TCP and tokio-util's
//! `LengthDelimitedCodec`, side by side in one run, on loopback.

use crate::Failure;
use bus_tokio::bus_proto::client::ClientParams;
use bus_tokio::bus_proto::config::{Config, ValidConfig};
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
use bus_tokio::bus_proto::wire::{Frame, Header, Integrity, Kind, layout};
use bus_tokio::{Client, Events, Node, NodeOptions, OsEntropy, Transport};
use bytes::{Buf, Bytes, BytesMut};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

pub(crate) const CLUSTER: u128 = 0xbe7c;

/// `bus bench` flags.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Print the results as JSON (every figure and ratio) instead of a table.
    #[arg(long)]
    json: bool,
    /// A tenth of the work: a quick check, noisier figures.
    #[arg(long)]
    quick: bool,
    /// Runs of each throughput measurement; the best is kept.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
}

#[derive(Serialize)]
struct Throughput {
    body_bytes: usize,
    frame_bytes: usize,
    messages: u64,
    bus_per_sec: f64,
    raw_per_sec: f64,
    codec_per_sec: f64,
    bus_vs_raw: f64,
    bus_vs_codec: f64,
    /// `LengthDelimitedCodec` carrying payloads of the bus frame's size:
    /// the same bytes on the wire.
    codec_same_bytes_per_sec: f64,
    bus_vs_codec_same_bytes: f64,
    /// CPU time (every thread of the process) and minor page faults per
    /// message, from the best run of each; `None` where Linux's
    /// `/proc/self` is not there to read them.
    bus_cost: Option<Cost>,
    raw_cost: Option<Cost>,
    codec_cost: Option<Cost>,
    codec_same_bytes_cost: Option<Cost>,
    /// Frames per vectored write on the bus's sending socket (best run).
    bus_frames_per_write: f64,
}

/// What one message cost the process: CPU time summed over its threads,
/// and minor page faults.
#[derive(Serialize, Clone, Copy)]
struct Cost {
    cpu_ns: f64,
    minor_faults: f64,
}

/// The process's CPU time (nanoseconds, every thread: `/proc/self/task/*/schedstat`)
/// and minor page faults (`/proc/self/stat`), on Linux.
fn usage() -> Option<(u64, u64)> {
    let mut cpu = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        cpu += stat.split(' ').next()?.parse::<u64>().ok()?;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which ends at the last ')'.
    let faults = stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(7)?
        .parse()
        .ok()?;
    Some((cpu, faults))
}

/// Runs `work` (which returns messages per second for `messages`
/// messages) and what each message cost the process.
async fn costed(
    messages: u64,
    work: impl std::future::Future<Output = Result<f64, Failure>>,
) -> Result<(f64, Option<Cost>), Failure> {
    let before = usage();
    let rate = work.await?;
    let cost = before
        .zip(usage())
        .map(|((cpu0, faults0), (cpu1, faults1))| {
            let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / messages.max(1) as f64;
            Cost {
                cpu_ns: per(cpu0, cpu1),
                minor_faults: per(faults0, faults1),
            }
        });
    Ok((rate, cost))
}

/// The best of several runs: the highest rate, and that run's cost.
#[derive(Default, Clone, Copy)]
struct Best {
    rate: f64,
    cost: Option<Cost>,
}

impl Best {
    fn keep(&mut self, (rate, cost): (f64, Option<Cost>)) -> bool {
        let better = rate > self.rate;
        if better {
            *self = Best { rate, cost };
        }
        better
    }
}

#[derive(Serialize)]
struct RoundTrip {
    runtime: &'static str,
    body_bytes: usize,
    iterations: u64,
    bus_p50_us: f64,
    bus_p99_us: f64,
    raw_p50_us: f64,
    raw_p99_us: f64,
    p50_bus_vs_raw: f64,
    p99_bus_vs_raw: f64,
}

#[derive(Serialize)]
struct Handshakes {
    connections: u64,
    per_sec: f64,
}

#[derive(Serialize)]
struct Report {
    runtime: &'static str,
    batch_frames: usize,
    throughput: Vec<Throughput>,
    round_trip: Vec<RoundTrip>,
    handshakes: Handshakes,
    concurrent_handshakes: crate::bench_scale::ConcurrentHandshakes,
    idle_clients: Option<crate::bench_scale::IdleClients>,
    transports: Vec<crate::bench_transports::Row>,
    transport_round_trip: Vec<crate::bench_transports::Latency>,
    transport_handshakes: Vec<crate::bench_transports::Handshakes>,
    under_attack: Vec<crate::under_attack::Row>,
}

fn config() -> Result<ValidConfig, Failure> {
    Ok(Config::default().validate()?)
}

pub(crate) fn run(args: BenchArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(measure(&args))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Failure(e.to_string()))?
        );
    } else {
        print_table(&report);
    }
    Ok(())
}

async fn measure(args: &BenchArgs) -> Result<Report, Failure> {
    let config = config()?;
    let scale = if args.quick { 10 } else { 1 };
    let mut throughput = Vec::new();
    for (body, messages) in [(64usize, 2_000_000u64), (4096, 200_000)] {
        let messages = messages / scale;
        let [mut bus, mut raw, mut codec, mut same_bytes] = [Best::default(); 4];
        let mut frames_per_write = 0f64;
        for run in 0..args.runs {
            if !args.json {
                eprintln!(
                    "throughput, {body} B bodies, run {} of {}: {messages} messages each ...",
                    run + 1,
                    args.runs
                );
            }
            let mut per_write = 0.0;
            let measured = costed(messages, async {
                let (rate, frames) = bus_throughput(&config, body, messages).await?;
                per_write = frames;
                Ok(rate)
            })
            .await?;
            if bus.keep(measured) {
                frames_per_write = per_write;
            }
            let batch = config.max_batch;
            let frame = layout::HEADER_SIZE + body;
            raw.keep(costed(messages, raw_throughput(body, messages, batch)).await?);
            codec.keep(costed(messages, codec_throughput(body, messages, batch)).await?);
            same_bytes.keep(costed(messages, codec_throughput(frame, messages, batch)).await?);
        }
        throughput.push(Throughput {
            body_bytes: body,
            frame_bytes: layout::HEADER_SIZE + body,
            messages,
            bus_per_sec: bus.rate,
            raw_per_sec: raw.rate,
            codec_per_sec: codec.rate,
            bus_vs_raw: bus.rate / raw.rate,
            bus_vs_codec: bus.rate / codec.rate,
            codec_same_bytes_per_sec: same_bytes.rate,
            bus_vs_codec_same_bytes: bus.rate / same_bytes.rate,
            bus_cost: bus.cost,
            raw_cost: raw.cost,
            codec_cost: codec.cost,
            codec_same_bytes_cost: same_bytes.cost,
            bus_frames_per_write: frames_per_write,
        });
    }
    let iterations = 20_000 / scale;
    if !args.json {
        eprintln!("round trip, {iterations} pings each ...");
    }
    let mut round_trip =
        vec![round_trip_pair("multi-thread, 2 workers", &config, iterations).await?];
    // The same pings with every task on one thread: no cross-thread wakeups.
    let single = {
        let config = config.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(round_trip_pair("current-thread", &config, iterations))
        })
        .join()
        .map_err(|_| Failure("the current-thread round trip panicked".into()))??
    };
    round_trip.push(single);
    let connections = 500 / scale;
    if !args.json {
        eprintln!("handshakes, {connections} connections ...");
    }
    let handshakes = handshake_rate(&config, connections).await?;
    let concurrent = 20_000 / scale;
    if !args.json {
        eprintln!("concurrent handshakes, {concurrent} connections ...");
    }
    let concurrent_handshakes =
        crate::bench_scale::concurrent_handshakes(&config, concurrent).await?;
    let idle = if args.quick { 2_000 } else { 10_000 };
    if !args.json {
        eprintln!("idle clients, {idle} connections to a bus node process ...");
    }
    let idle_clients = crate::bench_scale::idle_clients(&config, idle).await?;
    let transports = crate::bench_transports::measure(&config, scale, args.runs, args.json).await?;
    let under_attack = crate::under_attack::measure(&config, scale).await?;
    Ok(Report {
        runtime: "tokio multi-thread, 2 workers",
        batch_frames: config.max_batch,
        throughput,
        round_trip,
        handshakes,
        concurrent_handshakes,
        idle_clients,
        transports: transports.throughput,
        transport_round_trip: transports.round_trip,
        transport_handshakes: transports.handshakes,
        under_attack,
    })
}

async fn round_trip_pair(
    runtime: &'static str,
    config: &ValidConfig,
    iterations: u64,
) -> Result<RoundTrip, Failure> {
    let bus = bus_round_trip(config, 64, iterations).await?;
    let raw = raw_round_trip(64, iterations).await?;
    Ok(RoundTrip {
        runtime,
        body_bytes: 64,
        iterations,
        bus_p50_us: bus.0,
        bus_p99_us: bus.1,
        raw_p50_us: raw.0,
        raw_p99_us: raw.1,
        p50_bus_vs_raw: bus.0 / raw.0,
        p99_bus_vs_raw: bus.1 / raw.1,
    })
}

fn print_table(report: &Report) {
    println!(
        "bus bench ({}; one TCP connection on loopback; batches of {} frames)",
        report.runtime, report.batch_frames
    );
    println!(
        "\n{:<26} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>8} {:>8}",
        "throughput (msg/s)",
        "bus-tokio",
        "raw tokio",
        "LDC codec",
        "LDC bytes",
        "vs raw",
        "vs LDC",
        "vs bytes",
        "frames/w"
    );
    for t in &report.throughput {
        println!(
            "{:<26} {:>11.0} {:>11.0} {:>11.0} {:>11.0} {:>6.2}x {:>6.2}x {:>7.2}x {:>8.1}",
            format!("{} B body ({} B frame)", t.body_bytes, t.frame_bytes),
            t.bus_per_sec,
            t.raw_per_sec,
            t.codec_per_sec,
            t.codec_same_bytes_per_sec,
            t.bus_vs_raw,
            t.bus_vs_codec,
            t.bus_vs_codec_same_bytes,
            t.bus_frames_per_write
        );
    }
    println!(
        "(LDC codec: the same bodies; LDC bytes: payloads of the bus frame's size; frames/w: bus frames per vectored write)"
    );
    println!(
        "\n{:<26} {:>11} {:>11} {:>11} {:>11}",
        "per message: CPU, faults", "bus-tokio", "raw tokio", "LDC codec", "LDC bytes"
    );
    for t in &report.throughput {
        let costs = [
            t.bus_cost,
            t.raw_cost,
            t.codec_cost,
            t.codec_same_bytes_cost,
        ];
        let show =
            |f: fn(&Cost) -> String| costs.map(|c| c.as_ref().map_or_else(|| "-".to_owned(), f));
        let cpu = show(|c| format!("{:.0} ns", c.cpu_ns));
        let faults = show(|c| format!("{:.4}", c.minor_faults));
        for (what, row) in [("CPU time", cpu), ("minor faults", faults)] {
            println!(
                "{:<26} {:>11} {:>11} {:>11} {:>11}",
                format!("{} B body, {what}", t.body_bytes),
                row[0],
                row[1],
                row[2],
                row[3]
            );
        }
    }
    println!("(CPU time summed over every thread of the process: sender, receiver and runtime)");
    println!(
        "\n{:<34} {:>11} {:>11} {:>7}",
        "round trip (64 B), p50 / p99", "bus-tokio", "raw tokio", "vs raw"
    );
    for r in &report.round_trip {
        for (name, bus, raw, ratio) in [
            ("p50", r.bus_p50_us, r.raw_p50_us, r.p50_bus_vs_raw),
            ("p99", r.bus_p99_us, r.raw_p99_us, r.p99_bus_vs_raw),
        ] {
            println!(
                "{:<34} {:>9.1}us {:>9.1}us {:>6.2}x",
                format!("{name}, {}", r.runtime),
                bus,
                raw,
                ratio
            );
        }
    }
    println!(
        "\nhandshakes: {:.0} per second ({} sequential client connections, each dialled, authenticated both ways and dropped)",
        report.handshakes.per_sec, report.handshakes.connections
    );
    crate::bench_scale::print(&report.concurrent_handshakes, report.idle_clients.as_ref());
    crate::bench_transports::print(
        &report.transports,
        &report.transport_round_trip,
        &report.transport_handshakes,
    );
    crate::under_attack::print(&report.under_attack);
}

/// Two nodes, replica 0 dialling replica 1 over `dial`, which listens over
/// `listen`.
pub(crate) async fn pair_over(
    config: &ValidConfig,
    listen: Transport,
    dial: Transport,
) -> Result<((Node, Events), (Node, Events)), Failure> {
    let key = Key::generate(&mut OsEntropy);
    let start = |replica, options| {
        let params = NodeParams {
            cluster: CLUSTER,
            replica,
            replica_count: 2,
            accept_clients: true,
        };
        Node::start(config, params, KeyRing::new(key.clone()), options)
    };
    let (receiver, receiver_events) = start(1, NodeOptions::default())?;
    let address = receiver.listen_via("127.0.0.1:0", listen).await?;
    let mut options = NodeOptions::default();
    options.peer_transports.insert(1, dial);
    let (sender, sender_events) = start(0, options)?;
    sender.set_address(1, address);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(sender.is_connected(1) && receiver.is_connected(0)) {
        if Instant::now() > deadline {
            return Err(Failure("the benchmark pair did not connect".into()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(((sender, sender_events), (receiver, receiver_events)))
}

/// Messages per second, and frames per vectored write on the sender.
async fn bus_throughput(
    config: &ValidConfig,
    body: usize,
    messages: u64,
) -> Result<(f64, f64), Failure> {
    bus_throughput_over(config, (Transport::tcp(), Transport::tcp()), body, messages).await
}

/// [`bus_throughput`] between nodes that listen and dial over
/// `transports`.
pub(crate) async fn bus_throughput_over(
    config: &ValidConfig,
    transports: (Transport, Transport),
    body: usize,
    messages: u64,
) -> Result<(f64, f64), Failure> {
    let ((sender, _sender_events), (receiver, mut events)) =
        pair_over(config, transports.0, transports.1).await?;
    let payload = Bytes::from(vec![0xab; body]);
    let started = Instant::now();
    let producer = {
        let sender = sender.clone();
        tokio::spawn(async move {
            for i in 0..messages {
                let operation = u32::try_from(i & 0xffff_ffff).unwrap_or(0);
                sender.send_wait(1, operation, payload.clone()).await?;
            }
            Ok::<_, bus_tokio::bus_proto::node::RouteError>(())
        })
    };
    let mut received = 0u64;
    let mut batch = Vec::with_capacity(4096);
    while received < messages {
        if events.recv_many(&mut batch, 4096).await == 0 {
            return Err(Failure("the receiver stopped".into()));
        }
        received += batch
            .drain(..)
            .filter(|e| matches!(e, NodeEvent::Message { .. }))
            .count() as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = sender.inspect(|node| {
        let id = node.peer_connection(1)?;
        Some(node.connection(id)?.stats())
    });
    let per_write = sent.map_or(0.0, |s| s.frames_sent as f64 / s.transmits.max(1) as f64);
    producer
        .await
        .map_err(|e| Failure(e.to_string()))?
        .map_err(|e| Failure(format!("send: {e}")))?;
    sender.shutdown(Duration::from_secs(1)).await;
    receiver.shutdown(Duration::from_secs(1)).await;
    Ok((messages as f64 / elapsed, per_write))
}

/// The frame the bus would write for a message with this body.
pub(crate) fn encoded_frame(body: usize) -> Result<Vec<u8>, Failure> {
    let frame = Frame {
        header: Header::new(CLUSTER, Kind::Message { operation: 1 }),
        body: Bytes::from(vec![0xab; body]),
    };
    let mut out = Vec::new();
    frame
        .encode(&Integrity::Checksum, 1 << 20)
        .map_err(|e| Failure(e.to_string()))?
        .write_to(&mut out);
    Ok(out)
}

pub(crate) async fn loopback() -> Result<(TcpStream, TcpStream), Failure> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    let (client, (server, _)) = (client?, accepted?);
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

/// Counts whole frames in `buf` by their size field, as a minimal framed
/// reader would (no integrity checks).
fn take_frames(buf: &mut BytesMut) -> u64 {
    let mut frames = 0;
    while buf.len() >= layout::HEADER_SIZE {
        let mut size = [0u8; 4];
        size.copy_from_slice(&buf[layout::SIZE]);
        let size = u32::from_le_bytes(size) as usize;
        if buf.len() < size {
            break;
        }
        buf.advance(size);
        frames += 1;
    }
    frames
}

/// Raw tokio: pre-encoded frames written in batches, read back and split by
/// their size field.
async fn raw_throughput(body: usize, messages: u64, batch: usize) -> Result<f64, Failure> {
    let (mut writer, mut reader) = loopback().await?;
    let frame = encoded_frame(body)?;
    let full = frame.repeat(batch);
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        let mut left = messages;
        while left > 0 {
            let n = usize::try_from(left).map_or(batch, |left| left.min(batch));
            writer.write_all(&full[..n * frame.len()]).await?;
            left -= n as u64;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut received = 0;
    while received < messages {
        if buf.capacity() - buf.len() < (16 << 10) {
            buf.reserve(64 << 10);
        }
        if reader.read_buf(&mut buf).await? == 0 {
            return Err(Failure("raw baseline: early EOF".into()));
        }
        received += take_frames(&mut buf);
    }
    let elapsed = started.elapsed().as_secs_f64();
    producer.await.map_err(|e| Failure(e.to_string()))??;
    Ok(messages as f64 / elapsed)
}

/// tokio-util `Framed` with `LengthDelimitedCodec`, the same bodies,
/// flushed every `batch` frames (and whenever 8 KiB are buffered: its default).
async fn codec_throughput(body: usize, messages: u64, batch: usize) -> Result<f64, Failure> {
    let (writer, reader) = loopback().await?;
    codec_over(writer, reader, body, messages, batch).await
}

/// `messages` payloads of `size` bytes from `writer` to `reader` through
/// `LengthDelimitedCodec`, flushed every `batch` (and at 8 KiB buffered): messages per second.
pub(crate) async fn codec_over(
    writer: impl AsyncWrite + Send + Unpin + 'static,
    reader: impl AsyncRead + Unpin,
    size: usize,
    messages: u64,
    batch: usize,
) -> Result<f64, Failure> {
    let payload = Bytes::from(vec![0xab; size]);
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(writer, LengthDelimitedCodec::new());
        // tokio-util's default: it also writes whenever 8 KiB are buffered,
        // which costs it fewer instructions than holding a whole batch.
        for i in 0..messages {
            sink.feed(payload.clone()).await?;
            if (i + 1) % batch as u64 == 0 {
                SinkExt::<Bytes>::flush(&mut sink).await?;
            }
        }
        SinkExt::<Bytes>::flush(&mut sink).await?;
        Ok::<_, std::io::Error>(sink)
    });
    let mut stream = FramedRead::new(reader, LengthDelimitedCodec::new());
    let mut received = 0;
    while received < messages {
        match stream.next().await {
            Some(frame) => {
                frame?;
                received += 1;
            }
            None => return Err(Failure("codec baseline: early EOF".into())),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    producer.await.map_err(|e| Failure(e.to_string()))??;
    Ok(messages as f64 / elapsed)
}

/// p50 and p99 of `samples`, in microseconds.
pub(crate) fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: usize| {
        samples
            .get((samples.len() * q / 100).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    (at(50), at(99))
}

async fn bus_round_trip(
    config: &ValidConfig,
    body: usize,
    iterations: u64,
) -> Result<(f64, f64), Failure> {
    bus_round_trip_over(
        config,
        (Transport::tcp(), Transport::tcp()),
        body,
        iterations,
    )
    .await
}

/// p50 and p99 of message ping-pongs between two nodes over
/// `transports`, in microseconds.
pub(crate) async fn bus_round_trip_over(
    config: &ValidConfig,
    transports: (Transport, Transport),
    body: usize,
    iterations: u64,
) -> Result<(f64, f64), Failure> {
    let ((pinger, mut replies), (echo, mut requests)) =
        pair_over(config, transports.0, transports.1).await?;
    let echoer = {
        let echo = echo.clone();
        tokio::spawn(async move {
            while let Some(event) = requests.recv().await {
                if let NodeEvent::Message {
                    operation, body, ..
                } = event
                {
                    let _ = echo.send(0, operation, body);
                }
            }
        })
    };
    let payload = Bytes::from(vec![0xab; body]);
    let mut samples = Vec::new();
    for i in 0..iterations {
        let operation = u32::try_from(i & 0xffff_ffff).unwrap_or(0);
        let started = Instant::now();
        pinger.send(1, operation, payload.clone())?;
        loop {
            match replies.recv().await {
                Some(NodeEvent::Message { operation: o, .. }) if o == operation => break,
                Some(_) => {}
                None => return Err(Failure("the pinger stopped".into())),
            }
        }
        samples.push(started.elapsed());
    }
    pinger.shutdown(Duration::from_secs(1)).await;
    echo.shutdown(Duration::from_secs(1)).await;
    let _ = echoer.await;
    Ok(percentiles(samples))
}

async fn raw_round_trip(body: usize, iterations: u64) -> Result<(f64, f64), Failure> {
    let (mut pinger, mut echo) = loopback().await?;
    let frame = encoded_frame(body)?;
    let size = frame.len();
    let echoer = tokio::spawn(async move {
        let mut buf = vec![0u8; size];
        while echo.read_exact(&mut buf).await.is_ok() {
            if echo.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; size];
    let mut samples = Vec::new();
    for _ in 0..iterations {
        let started = Instant::now();
        pinger.write_all(&frame).await?;
        pinger.read_exact(&mut buf).await?;
        samples.push(started.elapsed());
    }
    drop(pinger);
    let _ = echoer.await;
    Ok(percentiles(samples))
}

/// A one-replica cluster `cluster` that accepts clients, listening on
/// loopback under a fresh key.
pub(crate) async fn lone_node(
    config: &ValidConfig,
    cluster: u128,
) -> Result<(Node, Events, std::net::SocketAddr, Key), Failure> {
    lone_node_over(config, cluster, Transport::tcp()).await
}

/// [`lone_node`] listening over `transport`.
pub(crate) async fn lone_node_over(
    config: &ValidConfig,
    cluster: u128,
    transport: Transport,
) -> Result<(Node, Events, std::net::SocketAddr, Key), Failure> {
    let key = Key::generate(&mut OsEntropy);
    let params = NodeParams {
        cluster,
        replica: 0,
        replica_count: 1,
        accept_clients: true,
    };
    let keys = KeyRing::new(key.clone());
    let (node, events) = Node::start(config, params, keys, NodeOptions::default())?;
    let address = node.listen_via("127.0.0.1:0", transport).await?;
    Ok((node, events, address, key))
}

async fn handshake_rate(config: &ValidConfig, connections: u64) -> Result<Handshakes, Failure> {
    let per_sec =
        handshakes_over(config, (Transport::tcp(), Transport::tcp()), connections).await?;
    Ok(Handshakes {
        connections,
        per_sec,
    })
}

/// Sequential client connections to a lone node listening and dialled
/// over `transports`, each through the transport's handshake and the
/// bus's: handshakes per second.
pub(crate) async fn handshakes_over(
    config: &ValidConfig,
    (listen, dial): (Transport, Transport),
    connections: u64,
) -> Result<f64, Failure> {
    let name = dial.name();
    let (node, _events, address, key) = lone_node_over(config, CLUSTER, listen).await?;
    let started = Instant::now();
    for _ in 0..connections {
        let params = ClientParams {
            cluster: CLUSTER,
            id: Client::random_id(),
            target: 0,
        };
        let keys = KeyRing::new(key.clone());
        let client = Client::start_via(config, params, keys, address, dial.clone())?;
        client
            .connected()
            .await
            .map_err(|cause| Failure(format!("{name} handshake failed: {cause}")))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    node.shutdown(Duration::from_secs(1)).await;
    Ok(connections as f64 / elapsed)
}
