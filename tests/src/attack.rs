//! Key-less adversaries on real sockets: silent floods and forged `hello`s.
//! Their sockets are async-io's, so they attack a node on any runtime.

use crate::CLUSTER;
use crate::bus::Bus;
use bus_proto::config::ValidConfig;
use bus_proto::connection::{CloseCause, Connection, DialParams};
use bus_proto::crypto::{KeyRing, PeerId};
use bus_proto::entropy::SeededEntropy;
use bus_proto::handshake::Binding;
use bus_proto::time::{Instant, UnixNanos};
use smol::Async;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A TCP connection to `target` from `source` (any port): a loopback
/// address other than 127.0.0.1 stands for another host.
///
/// Never blocks. Loopback connects complete at once while the accept queue
/// has room; once it is full, the connect stays pending (its SYN is
/// retried, still pressing on the listener) instead of blocking the
/// thread, which on a single-threaded runtime also runs the node under
/// attack: a blocking connect there stalled the node's accepts for the
/// seconds of a SYN retry.
pub fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nonblocking(true)?;
    match socket.connect(&target.into()) {
        // A connect under way (std's `ErrorKind::InProgress` is not stable).
        Err(error) if error.raw_os_error() != Some(libc::EINPROGRESS) => return Err(error),
        _ => {}
    }
    Ok(socket.into())
}

/// Holds `hold` silent connections from `source` to `target` and keeps
/// opening `per_round` more every `period`, closing the oldest beyond
/// `hold`: more than any handshake cap, forever. Never completes; race it.
pub async fn silent_flood<B: Bus>(
    source: IpAddr,
    target: SocketAddr,
    hold: usize,
    per_round: usize,
    period: Duration,
) {
    let mut held = VecDeque::new();
    loop {
        for _ in 0..per_round {
            match connect_from(source, target) {
                Ok(stream) => held.push_back(stream),
                // Refused or out of ports: try again next round.
                Err(_) => break,
            }
            while held.len() > hold {
                held.pop_front();
            }
        }
        B::sleep(period).await;
    }
}

/// A dialing client connection (sans-IO) with `keys`, its `hello` fresh
/// by the wall clock.
fn dialer(config: &ValidConfig, keys: &KeyRing, client: u128, acceptor: u8) -> Connection {
    bound_dialer(config, keys, client, acceptor, Binding::NONE)
}

fn bound_dialer(
    config: &ValidConfig,
    keys: &KeyRing,
    client: u128,
    acceptor: u8,
    binding: Binding,
) -> Connection {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let wall = UnixNanos::from_nanos(u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX));
    let params = DialParams {
        cluster: CLUSTER,
        local: PeerId::Client(client),
        acceptor,
        keys,
        binding,
    };
    let mut entropy = SeededEntropy::new(u64::try_from(client & 0xffff_ffff).unwrap_or(0));
    Connection::dial(Instant::ZERO, wall, config, params, &mut entropy).expect("a client may dial")
}

/// Everything `conn` has to send, as bytes.
fn outgoing(conn: &mut Connection) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(transmit) = conn.poll_transmit(Instant::ZERO) {
        transmit.write_to(&mut bytes);
    }
    bytes
}

/// A `hello` from client `client` signed with `keys`, bound to `binding`
/// (a TLS exporter value some other TLS client computed), fresh by the
/// wall clock.
pub fn bound_hello_bytes(
    config: &ValidConfig,
    keys: &KeyRing,
    client: u128,
    acceptor: u8,
    binding: Binding,
) -> Vec<u8> {
    outgoing(&mut bound_dialer(config, keys, client, acceptor, binding))
}

/// A `hello` from client `client` signed with `keys` (the wrong ones, for
/// a forgery), fresh by the wall clock.
pub fn hello_bytes(config: &ValidConfig, keys: &KeyRing, client: u128, acceptor: u8) -> Vec<u8> {
    outgoing(&mut dialer(config, keys, client, acceptor))
}

/// A client that completes its handshake with node `acceptor` at `target`
/// and then says and reads nothing more: a graceful close with it can only
/// end at `close_grace`.
pub async fn established_then_silent(
    config: &ValidConfig,
    keys: &KeyRing,
    client: u128,
    acceptor: u8,
    target: SocketAddr,
) -> Async<TcpStream> {
    let stream = Async::<TcpStream>::connect(target).await.expect("connect");
    match handshake_on(stream, config, keys, client, acceptor).await {
        Ok(stream) => stream,
        Err(cause) => panic!("closed during the handshake: {cause:?}"),
    }
}

/// Runs client `client`'s handshake on an open socket, which then says
/// nothing: the socket once established, or why the node closed it.
pub async fn handshake_on(
    stream: Async<TcpStream>,
    config: &ValidConfig,
    keys: &KeyRing,
    client: u128,
    acceptor: u8,
) -> Result<Async<TcpStream>, Option<CloseCause>> {
    established_client(stream, config, keys, client, acceptor)
        .await
        .map(|(stream, _)| stream)
}

/// Runs client `client`'s handshake on an open socket: the socket and the
/// client's connection state once established, to send with by hand, or
/// why the node closed it.
pub async fn established_client(
    mut stream: Async<TcpStream>,
    config: &ValidConfig,
    keys: &KeyRing,
    client: u128,
    acceptor: u8,
) -> Result<(Async<TcpStream>, Connection), Option<CloseCause>> {
    let mut conn = dialer(config, keys, client, acceptor);
    stream.write_all(&outgoing(&mut conn)).await.expect("hello");
    let mut buf = [0u8; 4096];
    while !conn.is_established() {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return Err(conn.close_cause().cloned());
        }
        conn.handle_input(Instant::ZERO, &buf[..n]);
        if conn.is_closed() {
            return Err(conn.close_cause().cloned());
        }
    }
    stream
        .write_all(&outgoing(&mut conn))
        .await
        .expect("confirm");
    Ok((stream, conn))
}

/// Everything `conn` has to write, as one byte string.
pub fn outgoing_bytes(conn: &mut Connection) -> Vec<u8> {
    outgoing(conn)
}

/// Sends `bursts` bursts of `per_burst` forged `hello`s (signed with
/// `wrong`) to `target`, each on its own connection, pausing `period`
/// between bursts. Returns how many were written.
pub async fn forged_hellos<B: Bus>(
    config: &ValidConfig,
    wrong: &KeyRing,
    target: SocketAddr,
    acceptor: u8,
    bursts: usize,
    per_burst: usize,
    period: Duration,
) -> usize {
    let mut written = 0;
    for burst in 0..bursts {
        let mut open = Vec::new();
        for i in 0..per_burst {
            let client = u128::try_from(burst * per_burst + i).unwrap_or(0) + 1;
            let Ok(mut stream) = Async::<TcpStream>::connect(target).await else {
                continue;
            };
            if stream
                .write_all(&hello_bytes(config, wrong, client, acceptor))
                .await
                .is_ok()
            {
                written += 1;
            }
            open.push(stream);
        }
        B::sleep(period).await;
        drop(open);
    }
    written
}

/// Runs every future to completion, concurrently, on the current task.
pub async fn join_all<T>(futures: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
