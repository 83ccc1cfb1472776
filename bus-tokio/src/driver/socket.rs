//! The task that owns one socket: reads into a reused buffer, writes each
//! batch with vectored writes until done.

use super::{Machine, Shared, State};
use bus_proto::connection::Transmit;
use bus_proto::node::ConnectionId;
use bytes::{Buf, Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most segments passed to one `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 1024;

/// One batch being written, resumable after a partial write.
#[derive(Default)]
pub(crate) struct Outgoing {
    segments: Vec<Bytes>,
    /// First segment not fully written.
    next: usize,
}

impl Outgoing {
    pub(crate) fn load(&mut self, transmit: Transmit) {
        self.segments = transmit.into_segments();
        self.next = 0;
    }

    pub(crate) fn is_done(&self) -> bool {
        self.next >= self.segments.len()
    }

    /// One vectored write, then advances past what it wrote. Cancel-safe:
    /// a write that did not complete wrote nothing, and the position moves
    /// only when it did.
    pub(crate) async fn write_some<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> io::Result<()> {
        let end = self.segments.len().min(self.next + MAX_IOVECS);
        let slices: Vec<IoSlice<'_>> = self.segments[self.next..end]
            .iter()
            .map(|s| IoSlice::new(s))
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let segment = &mut self.segments[self.next];
            let step = written.min(segment.len());
            segment.advance(step);
            written -= step;
            if segment.is_empty() {
                self.next += 1;
            }
        }
        if self.is_done() {
            self.segments.clear();
            self.next = 0;
        }
        Ok(())
    }
}

/// What the socket task does next, decided under the lock.
enum Step {
    /// Write the loaded batch, read, or wait to be woken; `closing`: the
    /// core said `Disconnect` and the last batch is still being written.
    Run { read: bool, closing: bool },
    /// The connection is over: close the socket.
    Exit,
}

impl<M: Machine> Shared<M> {
    /// Loads `id`'s next batch into `out` if it is empty, and decides
    /// whether to read.
    fn step(
        self: &Arc<Self>,
        id: ConnectionId,
        out: &mut Outgoing,
        inbox: &mut Option<BytesMut>,
    ) -> Step {
        let mut state = self.lock();
        if state.forced {
            return Step::Exit;
        }
        if out.is_done() {
            if let Some(transmit) = state.machine.poll_transmit_for(self.clock.now(), id) {
                out.load(transmit);
                self.space.notify_waiters();
            }
            self.after(&mut state, Some(id));
        }
        let closing = state.sockets.get(&id).is_none_or(|s| s.closing);
        if closing && out.is_done() {
            return Step::Exit;
        }
        let mut read = !closing && !state.machine.reading_paused();
        if !closing && !read {
            let State {
                sockets, paused, ..
            } = &mut *state;
            if let Some(slot) = sockets.get_mut(&id).filter(|s| !s.paused) {
                slot.paused = true;
                paused.push(id);
            }
        }
        if read && inbox.is_none() {
            *inbox = state.machine.take_read_buffer(id);
            read = inbox.is_some();
        }
        Step::Run { read, closing }
    }

    /// The socket failed or gave up: the core learns it, and whatever it
    /// still had to write for `id` is discarded so the connection is freed.
    fn abandon(self: &Arc<Self>, id: ConnectionId) {
        self.with_from(Some(id), |m, now| {
            m.handle_eof(now, id);
            // Bounded: a closed connection hands out at most its close.
            for _ in 0..1024 {
                if m.poll_transmit_for(now, id).is_none() {
                    break;
                }
            }
        });
    }
}

/// Runs one connection's socket until the core says it is over, the socket
/// fails, or shutdown forces it.
pub(crate) async fn drive<M: Machine>(
    shared: Arc<Shared<M>>,
    id: ConnectionId,
    mut stream: TcpStream,
    wake: Arc<Notify>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%id, %error, "TCP_NODELAY not set");
    }
    let (mut reader, mut writer) = stream.split();
    run(&shared, id, &mut reader, &mut writer, &wake).await;
    // Dropping the stream closes the socket.
    drop(stream);
    shared.closed(id);
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Reads into the spare capacity of the borrowed buffer. Cancel-safe: a
/// read that did not complete appended nothing.
async fn read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    inbox: &mut Option<BytesMut>,
    chunk: usize,
) -> io::Result<usize> {
    let Some(buffer) = inbox.as_mut() else {
        return Ok(0);
    };
    if buffer.capacity() - buffer.len() < chunk {
        buffer.reserve(chunk);
    }
    reader.read_buf(buffer).await
}

async fn run<M, R, W>(
    shared: &Arc<Shared<M>>,
    id: ConnectionId,
    reader: &mut R,
    writer: &mut W,
    wake: &Arc<Notify>,
) where
    M: Machine,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The connection's own receive buffer, borrowed while reading.
    let mut inbox: Option<BytesMut> = None;
    let mut out = Outgoing::default();
    let mut eof = false;
    // Set once closing: a peer that stops reading cannot hold the socket
    // open past this.
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let read = match shared.step(id, &mut out, &mut inbox) {
            Step::Exit => break,
            Step::Run { read, closing } => {
                if closing && linger.is_none() {
                    linger = Some(tokio::time::Instant::now() + shared.linger);
                }
                read && !eof
            }
        };
        tokio::select! {
            biased;
            result = out.write_some(writer), if !out.is_done() => {
                if let Err(error) = result {
                    // The batch is not atomic: a failed write ends the
                    // connection (hazard 23).
                    tracing::debug!(%id, %error, "write failed");
                    shared.abandon(id);
                    break;
                }
            }
            () = sleep_until_some(linger), if linger.is_some() => {
                tracing::debug!(%id, "the peer did not take the last bytes in time");
                shared.abandon(id);
                break;
            }
            result = read_into(reader, &mut inbox, shared.read_chunk), if read => match result {
                Ok(0) => {
                    eof = true;
                    shared.with_from(Some(id), |m, now| m.handle_eof(now, id));
                }
                Ok(_) => {
                    if let Some(buffer) = inbox.take() {
                        shared.with_from(Some(id), |m, now| m.handle_read(now, id, buffer));
                    }
                }
                Err(error) => {
                    tracing::debug!(%id, %error, "read failed");
                    eof = true;
                    shared.with_from(Some(id), |m, now| m.handle_eof(now, id));
                }
            },
            () = wake.notified() => {}
        }
    }
    // Best effort: tell the peer we are done writing.
    let _ = writer.shutdown().await;
}
