//! smol's half of the driver: the clock, async-io timers, dial tasks and
//! the task that owns each socket.

use bus_proto::entropy::Entropy;
use bus_proto::host::{Completion, Machine, Outgoing, Runtime, Shared, Socket, Step, WallClock};
use bus_proto::node::ConnectionId;
use bus_proto::time::{Instant, Now};
use bytes::BytesMut;
use smol::future::{self, FutureExt};
use smol::{Async, Executor, Timer};
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// The driver's runtime: the monotonic clock from an origin, async-io
/// timers, and the executor the tasks run on.
pub(crate) struct Smol {
    origin: std::time::Instant,
    /// The wall clock, read at most every `WALL_REFRESH`.
    wall: WallClock,
    /// `None`: smol's global executor.
    executor: Option<Arc<Executor<'static>>>,
}

impl Smol {
    pub(crate) fn new(executor: Option<Arc<Executor<'static>>>) -> Self {
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
    run(&shared, &mut socket, &stream).await;
    // Best effort: tell the peer we are done writing.
    let _ = stream.get_ref().shutdown(Shutdown::Write);
    drop(stream);
    shared.closed(id);
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
    chunk: usize,
) -> io::Result<usize> {
    if buffer.capacity() - buffer.len() < chunk {
        buffer.reserve(chunk);
    }
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
    let chunk = shared.read_chunk();
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
                Some(buffer) if read => {
                    Completion::Read(read_some(buffer, stream, chunk).await, None)
                }
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
            // A small chunk so the payload takes many reads.
            while read_some(&mut buffer, &receiver, 4096).await.expect("read") > 0 {
                reads += 1;
                assert!(buffer.len() <= buffer.capacity());
            }
            assert!(reads > 1, "{reads} reads");
            assert_eq!(&buffer[..4], b"kept");
            assert_eq!(&buffer[4..], &payload[..]);
        });
    }
}
