//! smol's half of the driver: the clock, async-io timers, dial tasks and
//! the task that owns each socket.

use bus_proto::entropy::Entropy;
use bus_proto::host::{
    Completion, Machine, Outgoing, Platform, Runtime, Shared, Socket, StartError, Step, TryWrite,
    WallClock,
};
use bus_proto::node::ConnectionId;
use bus_proto::time::{Instant, Now};
use bytes::BytesMut;
use smol::future::{self, FutureExt};
use smol::{Async, Executor, Timer};
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// smol, as the bus runs on it: a monotonic clock from an origin,
/// async-io's timers and sockets, and the executor the bus's tasks run on.
/// [`Node`](crate::Node) and [`Client`](crate::Client) are the shared
/// handles on this runtime.
pub struct Smol {
    origin: std::time::Instant,
    /// The wall clock, read at most every `WALL_REFRESH`.
    wall: WallClock,
    /// `None`: smol's global executor.
    executor: Option<Arc<Executor<'static>>>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smol")
            .field("own_executor", &self.executor.is_some())
            .finish_non_exhaustive()
    }
}

impl Smol {
    /// The bus's tasks on smol's global executor, which runs on threads of
    /// its own (`SMOL_THREADS`): the handles then work under any executor.
    /// What [`Node::start`](crate::Node::start) uses.
    pub fn global() -> Self {
        Smol::with(None)
    }

    /// The bus's tasks on `executor`, which the program runs
    /// (`executor.run(..)`): the application and the bus can then share
    /// one thread, with no wake-up across threads. Pass it to
    /// `Node::start_in` or `Client::start_in`.
    ///
    /// ```no_run
    /// use bus_smol::{Node, NodeOptions, Smol};
    /// use bus_smol::bus_proto::config::Config;
    /// use bus_smol::bus_proto::crypto::{Key, KeyRing};
    /// use bus_smol::bus_proto::node::NodeParams;
    /// use std::sync::Arc;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let executor = Arc::new(smol::Executor::new());
    /// let config = Config::default().validate()?;
    /// let keys = KeyRing::new(Key::from_hex(&std::env::var("BUS_KEY")?)?);
    /// let params = NodeParams { cluster: 7, replica: 0, replica_count: 1, accept_clients: true };
    /// let runtime = Smol::on(executor.clone());
    /// let (node, mut events) = Node::start_in(runtime, &config, params, keys, NodeOptions::default())?;
    /// smol::block_on(executor.run(async {
    ///     node.listen("127.0.0.1:7000").await?;
    ///     while let Some(event) = events.recv().await {
    ///         println!("{event:?}");
    ///     }
    ///     Ok(())
    /// }))
    /// # }
    /// ```
    pub fn on(executor: Arc<Executor<'static>>) -> Self {
        Smol::with(Some(executor))
    }

    fn with(executor: Option<Arc<Executor<'static>>>) -> Self {
        Smol {
            origin: std::time::Instant::now(),
            wall: WallClock::default(),
            executor,
        }
    }

    /// Runs `task` on the chosen executor.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match &self.executor {
            Some(executor) => executor.spawn(task).detach(),
            None => smol::spawn(task).detach(),
        }
    }
}

impl Platform for Smol {
    const NAME: &'static str = "smol";
    type Affinity = ();

    /// Always [`Smol::global`]: smol has no current executor to find.
    fn current() -> Option<Self> {
        Some(Smol::global())
    }

    fn entropy() -> Box<dyn Entropy + Send> {
        Box::new(OsEntropy)
    }

    fn launch<M: Machine>(shared: &Arc<Shared<M, Self>>) -> Result<(), StartError> {
        #[cfg(feature = "quic")]
        crate::quic::start_quic_dialer(shared)?;
        let timers = Shared::run_timers(Arc::clone(shared));
        shared.runtime().spawn(timers);
        Ok(())
    }
}

impl Runtime for Smol {
    fn now(&self) -> Now {
        self.wall.now(self.origin.elapsed(), || {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH);
            wall.unwrap_or(Duration::ZERO)
        })
    }

    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> {
        // A deadline beyond `std::time::Instant`'s range is never.
        let timer = match self.origin.checked_add(Duration::from_nanos(at.as_nanos())) {
            Some(deadline) => Timer::at(deadline),
            None => Timer::never(),
        };
        async move {
            timer.await;
        }
    }

    fn dial<M: Machine>(shared: &Arc<Shared<M, Self>>, id: ConnectionId, replica: u8) {
        shared
            .runtime()
            .spawn(dial(Arc::clone(shared), id, replica));
    }

    /// Everywhere: async-io keeps no readiness of its own to disturb, and
    /// a handle's own write saves waking a socket task that runs on an
    /// executor thread of its own.
    fn writes_through_here(&self) -> bool {
        true
    }

    fn run_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) {
        self.spawn(async move { done(smol::unblock(job).await) });
    }
}

/// The operating system's random generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // Without OS randomness no nonce is safe to send; there is no
        // sensible way to continue.
        getrandom::fill(dest).expect("the OS random generator failed");
    }
}

/// Opens the socket for a dial, then runs it.
async fn dial<M: Machine>(shared: Arc<Shared<M, Smol>>, id: ConnectionId, replica: u8) {
    let Some(address) = shared.dial_address(id, replica).await else {
        return shared.closed(id);
    };
    let connect = async { Some(Async::<TcpStream>::connect(address).await) };
    let abandoned = async {
        shared.abandoned(id).await;
        None
    };
    let outcome = connect.or(abandoned).await;
    if let Some((socket, stream)) = shared.dialled(id, address, outcome) {
        shared.note_local(&socket, stream.get_ref().local_addr().ok());
        drive(shared, socket, stream).await;
    }
}

/// Runs one connection's socket until the core says it is over, the socket
/// fails, or shutdown forces it, inside the connection's span.
pub(crate) async fn drive<M: Machine>(
    shared: Arc<Shared<M, Smol>>,
    socket: Socket,
    stream: Async<TcpStream>,
) {
    let span = socket.span().clone();
    run_socket(shared, socket, stream).instrument(span).await;
}

async fn run_socket<M: Machine>(
    shared: Arc<Shared<M, Smol>>,
    mut socket: Socket,
    stream: Async<TcpStream>,
) {
    let id = socket.id();
    if let Err(error) = stream.get_ref().set_nodelay(true) {
        tracing::debug!(%id, %error, "TCP_NODELAY not set");
    }
    // Shared with the application's handles, which write a quiet
    // connection's output through it themselves.
    let stream = Arc::new(ThroughStream(stream));
    shared.write_through(&socket, Arc::clone(&stream) as Arc<dyn TryWrite>);
    run(&shared, &mut socket, &stream.0).await;
    // Best effort: tell the peer we are done writing.
    let _ = stream.0.get_ref().shutdown(Shutdown::Write);
    drop(stream);
    shared.closed(id);
}

/// A TCP socket the application's handles may write to ([`TryWrite`]):
/// async-io keeps it non-blocking, so a write never waits.
struct ThroughStream(Async<TcpStream>);

impl TryWrite for ThroughStream {
    fn try_write(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut socket = self.0.get_ref();
        socket.write_vectored(slices)
    }
}

/// One vectored write of the loaded batch. Cancel-safe: a write that did
/// not complete wrote nothing.
async fn write_some(out: &mut Outgoing, stream: &Async<TcpStream>) -> io::Result<()> {
    let written = stream
        .write_with(|mut s| s.write_vectored(&out.slices()))
        .await?;
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    out.advance(written);
    Ok(())
}

/// Reads straight into the spare capacity of the lent buffer. Cancel-safe:
/// a read that did not complete appended nothing.
pub(crate) async fn read_some(
    buffer: &mut BytesMut,
    stream: &Async<TcpStream>,
) -> io::Result<usize> {
    let n = stream
        .read_with(|s| socket2::SockRef::from(s).recv(buffer.spare_capacity_mut()))
        .await?;
    let len = buffer.len() + n.min(buffer.capacity() - buffer.len());
    // SAFETY: `recv` returns how many bytes it wrote at the start of the
    // spare capacity it was given (recv(2) writes no more than the length
    // passed, and socket2 passes exactly that slice), so the bytes up to
    // `len` are initialised; the `min` keeps `len` within the capacity.
    #[allow(unsafe_code)]
    unsafe {
        buffer.set_len(len);
    }
    Ok(n)
}

async fn run<M: Machine>(
    shared: &Arc<Shared<M, Smol>>,
    socket: &mut Socket,
    stream: &Async<TcpStream>,
) {
    let id = socket.id();
    let mut shut = false;
    loop {
        let Step::Run {
            write,
            read,
            linger,
            shutdown,
        } = shared.step(socket)
        else {
            return;
        };
        if shutdown && !shut {
            // A lingering close: our side is done; reads drain the peer.
            shut = true;
            let _ = stream.get_ref().shutdown(Shutdown::Write);
        }
        let (out, inbox) = socket.io();
        // In order of priority, as `or` polls its left side first.
        let wrote = async {
            match write {
                true => Completion::Wrote(write_some(out, stream).await),
                false => future::pending().await,
            }
        };
        let lingered = async {
            match linger {
                Some(at) => {
                    shared.runtime().sleep_until(at).await;
                    Completion::Lingered
                }
                None => future::pending().await,
            }
        };
        let got = async {
            match inbox {
                Some(buffer) if read => Completion::Read(read_some(buffer, stream).await, None),
                _ => future::pending().await,
            }
        };
        let woken = async {
            shared.woken(id).await;
            Completion::Woken
        };
        let done = wrote.or(lingered).or(got).or(woken).await;
        if shared.complete(socket, done).is_break() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_some;
    use bytes::BytesMut;
    use smol::Async;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// The one `unsafe` block: bytes land after what the buffer held, in
    /// order, and the length never passes what was received.
    #[test]
    fn reads_append_exactly_what_arrived() {
        smol::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let mut sender =
                TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (receiver, _) = listener.accept().expect("accept");
            let receiver = Async::new(receiver).expect("async");
            let payload: Vec<u8> = (0..=250u8).cycle().take(50_000).collect();
            sender.write_all(&payload).expect("send");
            drop(sender);

            let mut buffer = BytesMut::from(&b"kept"[..]);
            let mut reads = 0;
            // A small room so the payload takes many reads.
            loop {
                buffer.reserve(4096);
                if read_some(&mut buffer, &receiver).await.expect("read") == 0 {
                    break;
                }
                reads += 1;
                assert!(buffer.len() <= buffer.capacity());
            }
            assert!(reads > 1, "{reads} reads");
            assert_eq!(&buffer[..4], b"kept");
            assert_eq!(&buffer[4..], &payload[..]);
        });
    }
}
