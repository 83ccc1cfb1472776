//! Fixed workloads for instruction counts, on one current-thread runtime
//! over loopback:
//!
//! - `count N` (or `count messages N`): replica 0 sends `N` messages to
//!   replica 1, one `send_wait` each, and replica 1 reads them all;
//! - `count batches N`: the same, sent 64 at a time with `send_batch_wait`
//!   (`COUNT_RECV_MANY=1`: and taken 64 at a time with `recv_many`);
//! - `count requests N`: a client sends `N` requests to replica 0 one after
//!   another, and the node's application answers each;
//! - `count handshakes N`: `N` clients connect to replica 0 one after
//!   another, each through the handshake, and are dropped
//!   (`COUNT_IN_FLIGHT=K`: K at a time);
//! - baselines: `count ldc N` sends `N` payloads through tokio-util's
//!   `LengthDelimitedCodec`, flushed every 64 (it also writes whenever
//!   8 KiB are buffered, its default); `count raw N` writes `N` frames of
//!   the bus's size (256-byte header + body) with plain `write_all` in
//!   batches of 64 and reads them back; `count raw-requests N` is a
//!   ping-pong of such frames, the floor of a request round trip; `count
//!   raw-handshakes N` dials `N` TCP connections, each carrying three
//!   header-sized messages, the floor of `count handshakes`.
//!
//! Bodies are 64 bytes; `COUNT_BODY=B` sets another size (the `ldc`
//! payload is the body). `COUNT_AUTH=1` turns on authenticated frames (a
//! keyed BLAKE3 tag per frame instead of the checksum). It prints the minor
//! page faults the workload took (Linux). With `COUNT_THREADS=N` it runs on
//! a multi-thread runtime of `N` workers; with
//! `COUNT_TRANSPORT=tls|ws|wss|quic` the replicas' messages go over that
//! transport (a certificate made at start). With `COUNT_SPAWN=1`, `count
//! requests` runs the client's and the node's application loops as
//! spawned tasks instead of inside `block_on`.
//!
//! Run it under callgrind at two sizes; the difference divided by the
//! difference in `N` is the cost per message (or request round trip), free
//! of start-up. `.ci/instructions` does that for every workload and prints
//! the table:
//!
//! ```sh
//! cargo build --release -p bus-tokio --example count
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/count 20000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/count 40000
//! ```

use bus_tokio::bus_proto::client::ClientParams;
use bus_tokio::bus_proto::config::{Config, ValidConfig};
use bus_tokio::bus_proto::crypto::{Key, KeyRing};
use bus_tokio::bus_proto::node::{NodeEvent, NodeParams};
use bus_tokio::{Client, Events, Node, NodeOptions, Transport};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    let (workload, n) = match first.as_deref() {
        Some(
            name @ ("requests" | "messages" | "batches" | "handshakes" | "ldc" | "raw"
            | "raw-requests" | "raw-handshakes"),
        ) => (name.to_owned(), args.next()),
        _ => ("messages".to_owned(), first),
    };
    let n: u32 = n.and_then(|n| n.parse().ok()).unwrap_or(20_000);
    // `COUNT_THREADS=N`: a multi-thread runtime of N workers instead.
    let threads = std::env::var("COUNT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    let runtime = match threads {
        Some(workers) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("a runtime");
    let body: usize = std::env::var("COUNT_BODY")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(64);
    let mut config = Config::default();
    config.authenticated_frames = std::env::var("COUNT_AUTH").is_ok_and(|a| a == "1");
    let config = config.validate().expect("a valid configuration");
    let keys = KeyRing::new(Key::from_bytes([7; 32]));
    let faults = minor_faults();
    runtime.block_on(async {
        match workload.as_str() {
            "requests" => round_trips(&config, keys, n, body).await,
            "batches" => messages(&config, keys, n, 64, body).await,
            "handshakes" => handshakes(&config, keys, n).await,
            "ldc" => baseline::codec(n, 64, body).await,
            "raw" => baseline::raw(n, 64, body).await,
            "raw-requests" => baseline::raw_round_trips(n, body).await,
            "raw-handshakes" => baseline::raw_handshakes(n, in_flight()).await,
            _ => messages(&config, keys, n, 1, body).await,
        }
    });
    let what = if workload.contains("requests") {
        "requests"
    } else if workload.ends_with("handshakes") {
        "handshakes"
    } else {
        "messages"
    };
    match (faults, minor_faults()) {
        (Some(before), Some(after)) => {
            let faults = after - before;
            let per = faults as f64 / f64::from(n.max(1));
            println!(
                "{n} {what}; {faults} minor page faults ({per:.3} per {})",
                what.trim_end_matches('s')
            );
        }
        _ => println!("{n} {what}"),
    }
}

/// Minor page faults of this process so far (Linux: `/proc/self/stat`).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(7)?.parse().ok()
}

fn params(replica: u8, replica_count: u8, accept_clients: bool) -> NodeParams {
    NodeParams {
        cluster: 1,
        replica,
        replica_count,
        accept_clients,
    }
}

/// The listen and dial transports `COUNT_TRANSPORT` names (TCP if unset).
fn transports() -> (Transport, Transport) {
    use bus_tokio::bus_proto::transport::tls::{
        CertificateDer, PrivateKeyDer, RootCertStore, TlsClient, TlsServer,
    };
    use bus_tokio::bus_proto::transport::ws::{WsClient, WsServer};
    let kind = std::env::var("COUNT_TRANSPORT").unwrap_or_default();
    if kind.is_empty() || kind == "tcp" {
        return (Transport::tcp(), Transport::tcp());
    }
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der()).expect("a key");
    let server = TlsServer::new(vec![cert.clone()], key).expect("a TLS server");
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("a root");
    let client = TlsClient::new(roots, "localhost").expect("a TLS client");
    match kind.as_str() {
        "tls" => (server.transport(), client.transport()),
        "quic" => (server.quic(), client.quic()),
        "ws" => (
            WsServer::new().transport(),
            WsClient::new("ws://localhost/bus")
                .expect("a URL")
                .transport(),
        ),
        "wss" => (
            WsServer::over_tls(&server).transport(),
            WsClient::over_tls("wss://localhost/bus", &client)
                .expect("a URL")
                .transport(),
        ),
        other => panic!("COUNT_TRANSPORT={other}: tcp, tls, ws or wss"),
    }
}

/// `messages` from replica 0 to replica 1, `batch` at a time.
async fn messages(config: &ValidConfig, keys: KeyRing, messages: u32, batch: u32, body: usize) {
    let (one, mut events) = Node::start(
        config,
        params(1, 2, false),
        keys.clone(),
        NodeOptions::default(),
    )
    .expect("node 1");
    let (listen, dial) = transports();
    let address = one.listen_via("127.0.0.1:0", listen).await.expect("listen");
    let mut options = NodeOptions::default();
    options.peers.insert(1, address);
    options.peer_transports.insert(1, dial);
    let (zero, _zero_events) =
        Node::start(config, params(0, 2, false), keys, options).expect("node 0");
    let body = Bytes::from(vec![0u8; body]);
    let send = async {
        while !zero.is_connected(1) {
            tokio::task::yield_now().await;
        }
        if batch == 1 {
            for i in 0..messages {
                zero.send_wait(1, i, body.clone()).await.expect("sent");
            }
            return;
        }
        let mut queue = VecDeque::with_capacity(batch as usize);
        for start in (0..messages).step_by(batch as usize) {
            queue.extend((start..(start + batch).min(messages)).map(|i| (i, body.clone())));
            zero.send_batch_wait(1, &mut queue).await.expect("sent");
        }
    };
    // `COUNT_RECV_MANY=1`: the application takes its events `batch` at a
    // time (`recv_many`) instead of one by one.
    let many = std::env::var("COUNT_RECV_MANY").is_ok_and(|m| m == "1");
    let receive = async {
        let mut received = 0;
        let mut taken = Vec::with_capacity(batch as usize);
        while received < messages {
            if many {
                events.recv_many(&mut taken, batch as usize).await;
                for event in taken.drain(..) {
                    received += u32::from(matches!(event, NodeEvent::Message { .. }));
                }
            } else if let Some(NodeEvent::Message { .. }) = events.recv().await {
                received += 1;
            }
        }
    };
    tokio::join!(send, receive);
}

/// `connections` clients connected one after another, each dropped once
/// the handshake completed.
async fn handshakes(config: &ValidConfig, keys: KeyRing, connections: u32) {
    // Every client is new: the replay store must hold them all.
    let mut tuned = Config::clone(config);
    tuned.max_replay_peers = connections as usize + 64;
    let in_flight = in_flight();
    tuned.max_unauthenticated_per_address = tuned.max_handshakes_in_flight;
    let config = tuned.validate().expect("a valid configuration");
    // Events dropped: unread, `ClientConnected` would fill the queue.
    let (_node, _, address) = lone_node(&config, &keys).await;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..in_flight {
        let (config, keys) = (config.clone(), keys.clone());
        tasks.spawn(async move {
            for i in (task..connections).step_by(in_flight as usize) {
                let client_params = ClientParams {
                    cluster: 1,
                    id: 0xC0DE_0000 + u128::from(i),
                    target: 0,
                };
                let client =
                    Client::start(&config, client_params, keys.clone(), address).expect("client");
                client.connected().await.expect("connected");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a dialling task");
    }
}

/// `COUNT_IN_FLIGHT=K`: K dialling tasks at once, all from 127.0.0.1.
fn in_flight() -> u32 {
    std::env::var("COUNT_IN_FLIGHT")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Replica 0 of 1, accepting clients, listening on loopback.
async fn lone_node(config: &ValidConfig, keys: &KeyRing) -> (Node, Events, SocketAddr) {
    let (node, events) = Node::start(
        config,
        params(0, 1, true),
        keys.clone(),
        NodeOptions::default(),
    )
    .expect("node");
    let address = node.listen("127.0.0.1:0").await.expect("listen");
    (node, events, address)
}

async fn round_trips(config: &ValidConfig, keys: KeyRing, requests: u32, body: usize) {
    let (node, mut events, address) = lone_node(config, &keys).await;
    let client_params = ClientParams {
        cluster: 1,
        id: 0xC0DE,
        target: 0,
    };
    let client = Client::start(config, client_params, keys, address).expect("client");
    let body = Bytes::from(vec![0u8; body]);
    let asker = client.clone();
    let ask = async move {
        for _ in 0..requests {
            asker.request(1, body.clone()).await.expect("answered");
        }
    };
    // The node outlives the answering loop, so its last reply is written.
    let replier = node.clone();
    let answer = async move {
        let mut answered = 0;
        while answered < requests {
            if let Some(NodeEvent::Request { request, body, .. }) = events.recv().await {
                replier.reply(request, body).expect("replied");
                answered += 1;
            }
        }
    };
    join_maybe_spawned(ask, answer).await;
    drop((client, node));
}

/// Runs both ends of a round trip to completion: inside `block_on`, or
/// with `COUNT_SPAWN=1` as tasks of the runtime (on a multi-thread one,
/// on its workers).
async fn join_maybe_spawned(
    ask: impl Future<Output = ()> + Send + 'static,
    answer: impl Future<Output = ()> + Send + 'static,
) {
    if std::env::var("COUNT_SPAWN").is_ok_and(|s| s == "1") {
        let (asked, answered) = tokio::join!(tokio::spawn(ask), tokio::spawn(answer));
        asked.expect("the asking task");
        answered.expect("the answering task");
    } else {
        tokio::join!(ask, answer);
    }
}

/// The baselines: the same loopback and runtime, no bus.
mod baseline {
    use bytes::{Bytes, BytesMut};
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

    /// The size of a bus frame carrying `body` bytes.
    fn frame_size(body: usize) -> usize {
        bus_tokio::bus_proto::wire::layout::HEADER_SIZE + body
    }

    async fn loopback() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (dialled, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let (dialled, accepted) = (dialled.expect("connect"), accepted.expect("accept").0);
        dialled.set_nodelay(true).expect("nodelay");
        accepted.set_nodelay(true).expect("nodelay");
        (dialled, accepted)
    }

    /// `messages` payloads of `size` bytes through `LengthDelimitedCodec`,
    /// flushed every `batch` (and at 8 KiB buffered, its default).
    pub(crate) async fn codec(messages: u32, batch: u32, size: usize) {
        let (writer, reader) = loopback().await;
        let payload = Bytes::from(vec![0u8; size]);
        let send = async move {
            let mut sink = FramedWrite::new(writer, LengthDelimitedCodec::new());
            // tokio-util's default: it also writes whenever 8 KiB are buffered,
            // which costs it fewer instructions than holding a whole batch.
            for i in 0..messages {
                sink.feed(payload.clone()).await.expect("fed");
                if (i + 1) % batch == 0 {
                    SinkExt::<Bytes>::flush(&mut sink).await.expect("flushed");
                }
            }
            SinkExt::<Bytes>::flush(&mut sink).await.expect("flushed");
        };
        let receive = async move {
            let mut stream = FramedRead::new(reader, LengthDelimitedCodec::new());
            for _ in 0..messages {
                stream.next().await.expect("a frame").expect("read");
            }
        };
        tokio::join!(send, receive);
    }

    /// `messages` bus-sized frames written `batch` at a time with
    /// `write_all` and read back into one buffer, split by size.
    pub(crate) async fn raw(messages: u32, batch: u32, body: usize) {
        let (mut writer, mut reader) = loopback().await;
        let size = frame_size(body);
        let frames = vec![0u8; size * batch as usize];
        let send = async move {
            let mut left = messages as usize;
            while left > 0 {
                let n = left.min(batch as usize);
                writer
                    .write_all(&frames[..n * size])
                    .await
                    .expect("written");
                left -= n;
            }
        };
        let receive = async move {
            let mut buffer = BytesMut::with_capacity(64 << 10);
            let mut received = 0;
            while received < messages {
                if buffer.capacity() - buffer.len() < size {
                    buffer.reserve(64 << 10);
                }
                assert!(reader.read_buf(&mut buffer).await.expect("read") > 0, "EOF");
                while buffer.len() >= size {
                    drop(buffer.split_to(size).freeze());
                    received += 1;
                }
            }
        };
        tokio::join!(send, receive);
    }

    /// `requests` bus-sized frames sent one at a time and echoed back.
    pub(crate) async fn raw_round_trips(requests: u32, body: usize) {
        let (mut asker, mut answerer) = loopback().await;
        let size = frame_size(body);
        let ask = async move {
            let mut frame = vec![0u8; size];
            for _ in 0..requests {
                asker.write_all(&frame).await.expect("written");
                asker.read_exact(&mut frame).await.expect("answered");
            }
        };
        let answer = async move {
            let mut frame = vec![0u8; size];
            for _ in 0..requests {
                answerer.read_exact(&mut frame).await.expect("read");
                answerer.write_all(&frame).await.expect("answered");
            }
        };
        super::join_maybe_spawned(ask, answer).await;
    }

    /// `connections` TCP connections to one listener, `in_flight` at a
    /// time, each carrying a handshake's three header-sized messages
    /// (the dialer's, the answer, the dialer's confirm) and dropped: the
    /// floor of `count handshakes`.
    pub(crate) async fn raw_handshakes(connections: u32, in_flight: u32) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let size = frame_size(0);
        tokio::spawn(async move {
            loop {
                // An accept error (a connection reset before it was taken)
                // must not leave the dialers unanswered.
                let Ok((mut accepted, _)) = listener.accept().await else {
                    continue;
                };
                let _ = accepted.set_nodelay(true);
                tokio::spawn(async move {
                    let mut message = vec![0u8; size];
                    accepted.read_exact(&mut message).await?;
                    accepted.write_all(&message).await?;
                    accepted.read_exact(&mut message).await?;
                    // The dialer closes first, as a bus client does.
                    accepted.read(&mut message).await
                });
            }
        });
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..in_flight {
            tasks.spawn(async move {
                let mut message = vec![0u8; size];
                for _ in (task..connections).step_by(in_flight as usize) {
                    let mut dialled = TcpStream::connect(address).await.expect("connect");
                    dialled.set_nodelay(true).expect("nodelay");
                    dialled.write_all(&message).await.expect("hello");
                    dialled.read_exact(&mut message).await.expect("answer");
                    dialled.write_all(&message).await.expect("confirm");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a dialling task");
        }
    }
}
