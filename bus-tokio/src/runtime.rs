//! tokio's half of the driver: the clock, sleeping, dial tasks and the
//! task that owns each socket.

use bus_proto::entropy::Entropy;
use bus_proto::host::{
    Completion, Machine, Outgoing, Platform, ReadInto, Runtime, Shared, Socket, StartError, Step,
    TryWrite, WallClock,
};
use bus_proto::node::ConnectionId;
use bus_proto::time::{Instant, Now};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tracing::Instrument;

/// tokio, as the bus runs on it: its clock (so paused-time tests work)
/// and the runtime the node or client started on, multi- or
/// current-thread. [`Node`](crate::Node) and [`Client`](crate::Client)
/// are the shared handles on this runtime.
pub struct Tokio {
    origin: tokio::time::Instant,
    /// The wall clock, read at most every `WALL_REFRESH`.
    wall: WallClock,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for Tokio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokio").finish_non_exhaustive()
    }
}

impl Tokio {
    /// The bus on `handle`'s runtime, for starting it from outside one
    /// (`Node::start_in`).
    pub fn on(handle: tokio::runtime::Handle) -> Self {
        Tokio {
            origin: tokio::time::Instant::now(),
            wall: WallClock::default(),
            handle,
        }
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        // A deadline beyond tokio's range is as good as never.
        self.origin
            .checked_add(Duration::from_nanos(at.as_nanos()))
            .unwrap_or_else(|| self.origin + Duration::from_secs(86_400 * 365))
    }
}

impl Platform for Tokio {
    const NAME: &'static str = "tokio";
    type Affinity = ();

    /// The runtime of the calling task or `Handle::enter` guard.
    fn current() -> Option<Self> {
        tokio::runtime::Handle::try_current().ok().map(Tokio::on)
    }

    fn entropy() -> Box<dyn Entropy + Send> {
        Box::new(OsEntropy)
    }

    fn launch<M: Machine>(shared: &Arc<Shared<M, Self>>) -> Result<(), StartError> {
        // Registering a UDP socket needs the runtime's context, which a
        // caller of `start_in(Tokio::on(handle), ..)` may be outside of.
        let _context = shared.runtime().handle.enter();
        #[cfg(feature = "quic")]
        crate::quic::start_quic_dialer(shared)?;
        shared
            .runtime()
            .spawn(Shared::run_timers(Arc::clone(shared)));
        Ok(())
    }
}

impl Runtime for Tokio {
    fn now(&self) -> Now {
        self.wall.now(self.origin.elapsed(), || {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH);
            wall.unwrap_or(Duration::ZERO)
        })
    }

    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> {
        let deadline = self.deadline(at);
        async move { tokio::time::sleep_until(deadline).await }
    }

    fn dial<M: Machine>(shared: &Arc<Shared<M, Self>>, id: ConnectionId, replica: u8) {
        shared
            .runtime()
            .spawn(dial(Arc::clone(shared), id, replica));
    }

    /// On a current-thread runtime, and on a multi-thread one's tasks.
    /// A thread outside the workers (`block_on`'s, say) wakes the socket's
    /// task instead: measured on one multi-thread process holding both
    /// ends of a loopback round trip, its own writes were about 20%
    /// slower than handing them to a worker.
    fn writes_through_here(&self) -> bool {
        match self.handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => true,
            _ => tokio::task::try_id().is_some(),
        }
    }

    fn run_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) {
        let blocking = self.handle.spawn_blocking(job);
        self.spawn(async move {
            // An error means the job panicked: nothing to hand over.
            if let Ok(result) = blocking.await {
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
async fn dial<M: Machine>(shared: Arc<Shared<M, Tokio>>, id: ConnectionId, replica: u8) {
    let Some(address) = shared.dial_address(id, replica).await else {
        return shared.closed(id);
    };
    let outcome = tokio::select! {
        result = TcpStream::connect(address) => Some(result),
        () = shared.abandoned(id) => None,
    };
    if let Some((socket, stream)) = shared.dialled(id, address, outcome) {
        shared.note_local(&socket, stream.local_addr().ok());
        drive(shared, socket, stream).await;
    }
}

/// Runs one connection's socket until the core says it is over, the socket
/// fails, or shutdown forces it, inside the connection's span.
pub(crate) async fn drive<M: Machine>(
    shared: Arc<Shared<M, Tokio>>,
    socket: Socket,
    stream: TcpStream,
) {
    let span = socket.span().clone();
    run_socket(shared, socket, stream).instrument(span).await;
}

async fn run_socket<M: Machine>(
    shared: Arc<Shared<M, Tokio>>,
    mut socket: Socket,
    stream: TcpStream,
) {
    let id = socket.id();
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%id, %error, "TCP_NODELAY not set");
    }
    // The write half is shared with the application's handles, which write
    // a quiet connection's output through it themselves.
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(ThroughStream(writer));
    shared.write_through(&socket, Arc::clone(&writer) as Arc<dyn TryWrite>);
    run(&shared, &mut socket, &mut reader, writer.0.as_ref()).await;
    // Dropping the write half tells the peer we are done writing (best
    // effort); the socket closes once both halves are gone.
    drop((reader, writer));
    shared.closed(id);
}

/// A TCP socket's write half the application's handles may write to
/// ([`TryWrite`]): a non-blocking write that never waits.
struct ThroughStream(OwnedWriteHalf);

impl TryWrite for ThroughStream {
    fn try_write(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(slices)
    }
}

/// Shuts the socket's write side; the write half is shared, so not through
/// `AsyncWrite::shutdown`, which needs it exclusively.
fn shut_down(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// One vectored write of the loaded batch. Cancel-safe: a write that did
/// not complete wrote nothing.
async fn write_some(out: &mut Outgoing, stream: &TcpStream) -> io::Result<()> {
    // The slices are made at each poll, so the socket's future (one per
    // connection, idle ones included) does not hold them while it waits.
    let written = poll_fn(|cx| {
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(&out.slices()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    })
    .await?;
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    out.advance(written);
    Ok(())
}

/// Reads into the spare capacity of the lent buffer. Cancel-safe: a read
/// that did not complete appended nothing.
async fn read_some(inbox: Option<ReadInto<'_>>, reader: &mut OwnedReadHalf) -> io::Result<usize> {
    let Some(mut inbox) = inbox else {
        return Ok(0);
    };
    if !inbox.has_room() {
        // Room is made once bytes are there: by then the application has
        // often released the buffer, which is then reused in place.
        poll_fn(|cx| reader.as_ref().poll_read_ready(cx)).await?;
    }
    // tokio's own read: after a short read it forgets the socket's
    // readiness, so the next read waits instead of failing with
    // `WouldBlock`.
    reader.read_buf(inbox.buffer()).await
}

async fn run<M: Machine>(
    shared: &Arc<Shared<M, Tokio>>,
    socket: &mut Socket,
    reader: &mut OwnedReadHalf,
    stream: &TcpStream,
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
            let _ = shut_down(stream);
        }
        let (out, inbox) = socket.io_deferred();
        let done = tokio::select! {
            biased;
            result = write_some(out, stream), if write => Completion::Wrote(result),
            // Made and boxed when first polled (only a lingering close
            // is): `select!` builds disabled branches' futures on every
            // wait, and the timer's state need not be in every
            // connection's future.
            () = async { Box::pin(shared.runtime().sleep_until(linger.unwrap_or(Instant::from_nanos(0)))).await }, if linger.is_some() => Completion::Lingered,
            result = read_some(inbox, reader), if read => Completion::Read(result, None),
            () = shared.woken(id) => Completion::Woken,
        };
        if shared.complete(socket, done).is_break() {
            return;
        }
    }
}
