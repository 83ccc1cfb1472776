//! compio's half of the driver: the clock, timers, dial tasks and the task
//! that owns each socket.

use crate::through::Held;
use bus_proto::entropy::Entropy;
use bus_proto::host::{
    Completion, First, MAX_IOVECS, Machine, Platform, Runtime, Shared, Socket, StartError, Step,
    WallClock, first,
};
use bus_proto::node::ConnectionId;
use bus_proto::time::{Instant, Now};
use bytes::{Bytes, BytesMut};
use compio::BufResult;
use compio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread::ThreadId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// compio, as the bus runs on it: a monotonic clock from an origin,
/// compio's timers, and the compio runtime of the thread that started the
/// node or client, where its `!Send` tasks stay. [`Node`](crate::Node)
/// and [`Client`](crate::Client) are the shared handles on this runtime,
/// `!Send` like the tasks.
pub struct Compio {
    origin: std::time::Instant,
    /// The wall clock, read at most every `WALL_REFRESH`.
    wall: WallClock,
    /// The runtime's thread, where the tasks and handles run.
    thread: ThreadId,
}

impl std::fmt::Debug for Compio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compio").finish_non_exhaustive()
    }
}

impl Compio {
    /// Runs `task` on this thread's compio runtime.
    pub(crate) fn spawn(task: impl Future<Output = ()> + 'static) {
        compio::runtime::spawn(task).detach();
    }
}

impl Platform for Compio {
    const NAME: &'static str = "compio";
    type Affinity = Rc<()>;

    /// This thread's compio runtime, if it runs one.
    fn current() -> Option<Self> {
        compio::runtime::Runtime::try_current()?;
        Some(Compio {
            origin: std::time::Instant::now(),
            wall: WallClock::default(),
            thread: std::thread::current().id(),
        })
    }

    fn entropy() -> Box<dyn Entropy + Send> {
        Box::new(OsEntropy)
    }

    fn launch<M: Machine>(shared: &Arc<Shared<M, Self>>) -> Result<(), StartError> {
        // The tasks go to the calling thread's runtime, whichever thread
        // the `Compio` value came from.
        if compio::runtime::Runtime::try_current().is_none() {
            return Err(StartError::NoRuntime {
                runtime: Self::NAME,
            });
        }
        #[cfg(feature = "quic")]
        crate::quic::start_quic_dialer(shared)?;
        Compio::spawn(Shared::run_timers(Arc::clone(shared)));
        Ok(())
    }
}

impl Runtime for Compio {
    fn now(&self) -> Now {
        self.wall.now(self.origin.elapsed(), || {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH);
            wall.unwrap_or(Duration::ZERO)
        })
    }

    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> {
        let deadline = self.origin.checked_add(Duration::from_nanos(at.as_nanos()));
        async move {
            match deadline {
                Some(deadline) => compio::time::sleep_until(deadline).await,
                // Beyond `std::time::Instant`'s range: never.
                None => std::future::pending().await,
            }
        }
    }

    fn dial<M: Machine>(shared: &Arc<Shared<M, Self>>, id: ConnectionId, replica: u8) {
        // The handles are `!Send`, so this runs on the runtime's thread.
        Compio::spawn(dial(Arc::clone(shared), id, replica));
    }

    /// On the runtime's thread, where the `!Send` handles run: a handle's
    /// own `send(2)` saves waking the socket's task and a trip through the
    /// completion queue. (Only where sockets register a writer: Unix.)
    fn writes_through_here(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn run_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) {
        // Called from the client's API, on the runtime's thread.
        Compio::spawn(async move {
            // An error means the job panicked: nothing to hand over.
            if let Ok(result) = compio::runtime::spawn_blocking(job).await {
                done(result);
            }
        });
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
async fn dial<M: Machine>(shared: Arc<Shared<M, Compio>>, id: ConnectionId, replica: u8) {
    let Some(address) = shared.dial_address(id, replica).await else {
        return shared.closed(id);
    };
    let outcome = match first(TcpStream::connect(address), shared.abandoned(id)).await {
        First::Left(result) => Some(result),
        First::Right(()) => None,
    };
    if let Some((socket, stream)) = shared.dialled(id, address, outcome) {
        shared.note_local(&socket, stream.local_addr().ok());
        drive(shared, socket, stream).await;
    }
}

/// Runs one connection's socket until the core says it is over, the socket
/// fails, or shutdown forces it, inside the connection's span.
pub(crate) async fn drive<M: Machine>(
    shared: Arc<Shared<M, Compio>>,
    socket: Socket,
    stream: TcpStream,
) {
    let span = socket.span().clone();
    run_socket(shared, socket, stream).instrument(span).await;
}

async fn run_socket<M: Machine>(
    shared: Arc<Shared<M, Compio>>,
    mut socket: Socket,
    stream: TcpStream,
) {
    let id = socket.id();
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%id, %error, "TCP_NODELAY not set");
    }
    // The application's handles write a quiet connection's output to the
    // socket themselves, until the task is done with it.
    let held = Held::new(stream);
    if let Some(writer) = held.writer() {
        shared.write_through(&socket, writer);
    }
    run(&shared, &mut socket, held.stream()).await;
    held.stop_writes();
    // Best effort: tell the peer we are done writing.
    let _ = held.stream().shutdown().await;
    drop(held);
    shared.closed(id);
}

/// Writes a whole batch, at most [`MAX_IOVECS`] segments per send.
async fn write_batch(stream: TcpStream, mut segments: Vec<Bytes>) -> io::Result<()> {
    let mut writer = &stream;
    while !segments.is_empty() {
        let rest = segments.split_off(segments.len().min(MAX_IOVECS));
        let BufResult(result, _) = writer.write_vectored_all(segments).await;
        result?;
        segments = rest;
    }
    Ok(())
}

/// Appends one read to the buffer and gives it back. `Socket::lend_inbox`
/// left room in it: with none, a read would return 0 and look like EOF.
async fn read_into(stream: TcpStream, buffer: BytesMut) -> (io::Result<usize>, BytesMut) {
    let mut reader = &stream;
    let BufResult(result, buffer) = reader.append(buffer).await;
    (result, buffer)
}

type Op<T> = Pin<Box<dyn Future<Output = T>>>;

async fn run<M: Machine>(shared: &Arc<Shared<M, Compio>>, socket: &mut Socket, stream: &TcpStream) {
    let id = socket.id();
    // In flight across wake-ups; dropped (cancelled) only when the
    // connection is over.
    let mut writing: Option<Op<io::Result<()>>> = None;
    let mut reading: Option<Op<(io::Result<usize>, BytesMut)>> = None;
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
            let _ = (&*stream).shutdown().await;
        }
        if write && writing.is_none() {
            writing = Some(Box::pin(write_batch(stream.clone(), socket.lend_batch())));
        }
        if read
            && reading.is_none()
            && let Some(buffer) = socket.lend_inbox()
        {
            reading = Some(Box::pin(read_into(stream.clone(), buffer)));
        }
        let done = {
            let mut woken = std::pin::pin!(shared.woken(id));
            let mut lingered = linger.map(|at| Box::pin(shared.runtime().sleep_until(at)));
            poll_fn(|cx| {
                if let Some(op) = writing.as_mut()
                    && let Poll::Ready(result) = op.as_mut().poll(cx)
                {
                    writing = None;
                    return Poll::Ready(Completion::Wrote(result));
                }
                if let Some(sleep) = lingered.as_mut()
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Completion::Lingered);
                }
                if let Some(op) = reading.as_mut()
                    && let Poll::Ready((result, buffer)) = op.as_mut().poll(cx)
                {
                    reading = None;
                    return Poll::Ready(Completion::Read(result, Some(buffer)));
                }
                woken.as_mut().poll(cx).map(|()| Completion::Woken)
            })
            .await
        };
        if shared.complete(socket, done).is_break() {
            return;
        }
    }
}
