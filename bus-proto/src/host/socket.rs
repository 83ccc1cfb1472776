//! The task that owns one socket, as every adapter runs it: what it does
//! next ([`Shared::step`]) and what each completion means
//! ([`Shared::complete`]). The adapter only performs the reads, writes and
//! waits.

use super::Machine;
use super::driver::{MAX_DRAINING, Runtime, Shared, State};
use super::layer::{FrameTooLarge, MAX_PENDING_WIRE, StreamLayer};
use super::outgoing::Outgoing;
use super::recycle::{self, KEEP_MIN, Spares};
use crate::connection::{LentDecoder, Unsealed};
use crate::node::ConnectionId;
use crate::time::Instant;
use bytes::BytesMut;
use core::future::poll_fn;
use core::ops::ControlFlow;
use std::boxed::Box;
use std::sync::Arc;

/// What a socket task does next, decided under the lock by
/// [`Shared::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Wait for whichever comes first of: the write of the loaded batch
    /// (if `write`), a read into the lent buffer (if `read`), the `linger`
    /// deadline (if set), and [`Shared::woken`].
    Run {
        /// A batch is loaded and not yet handed to a write.
        write: bool,
        /// Reading is allowed and the buffer is lent.
        read: bool,
        /// Closing: give up on the peer at this instant
        /// ([`Completion::Lingered`]).
        linger: Option<Instant>,
        /// Our last bytes are written: shut down the socket's write side
        /// (once) before waiting. Reads then only drain what the peer still
        /// sends, until its end of stream, so closing a socket with unread
        /// data does not reset the connection and destroy the peer's copy
        /// of our last bytes (a close frame, a reject).
        shutdown: bool,
    },
    /// The connection is over: close the socket.
    Exit,
}

/// What a socket task's wait saw, for [`Shared::complete`].
#[derive(Debug)]
pub enum Completion {
    /// A write ended: the loaded batch advanced ([`Outgoing::advance`]), or
    /// a lent batch was written whole, or the write failed.
    Wrote(std::io::Result<()>),
    /// A read ended: how many bytes (0 is end of stream), and the lent
    /// buffer if an owned-buffer read took it (`None` if the bytes were
    /// appended in place).
    Read(std::io::Result<usize>, Option<BytesMut>),
    /// The `linger` deadline of [`Step::Run`] passed.
    Lingered,
    /// [`Shared::woken`] completed.
    Woken,
}

/// The least room a socket reserves for a read. Room grows from here while
/// reads fill it, so an idle connection holds a small receive buffer
/// instead of a whole read chunk.
pub const MIN_READ_ROOM: usize = 1024;

/// A socket task's own state: the batch it writes, the receive buffer it
/// has borrowed from the core, and the transport layer, if any.
#[derive(Debug)]
pub struct Socket {
    id: ConnectionId,
    out: Outgoing,
    inbox: Option<Inbox>,
    /// The batch was handed whole to an owned-buffer write still running.
    writing: bool,
    /// The buffer was handed to an owned-buffer read still running.
    reading: bool,
    /// The stream ended (or failed): nothing more can be read.
    eof: bool,
    /// Nothing more is processed (the layer failed, or the peer closed
    /// within it), though the stream may still deliver bytes.
    finished: bool,
    linger: Option<Instant>,
    /// Bytes were written after the core closed the connection: its last
    /// words, worth a lingering close.
    closing_wrote: bool,
    /// In a lingering close: the write side is shut; reads are discarded.
    draining: bool,
    layer: Option<Layered>,
    /// The connection's tracing span: the adapter runs the socket task in
    /// it, so everything logged for the connection carries its id, side,
    /// transport and remote address.
    span: tracing::Span,
    /// The span records the peer already.
    named: bool,
    /// Room to reserve for the next read: [`MIN_READ_ROOM`] at first,
    /// doubled after each read that filled it, up to the node's read
    /// chunk.
    read_room: usize,
    /// The room grew since the buffer last got room.
    read_room_grew: bool,
    /// Earlier receive buffers, reused once their bodies are dropped.
    spares: Option<Box<Spares>>,
}

/// What a socket reads into.
#[derive(Debug)]
enum Inbox {
    /// A plain socket's: the connection's decoder, lent by the core.
    Decoder(LentDecoder),
    /// The socket's own buffer: a layer's wire bytes, or what a lingering
    /// close discards.
    Wire(BytesMut),
}

impl Inbox {
    fn buffer(&mut self) -> &mut BytesMut {
        match self {
            Inbox::Decoder(decoder) => decoder.buffer_mut(),
            Inbox::Wire(buffer) => buffer,
        }
    }
}

/// The receive buffer lent to a socket's next read, given the room for
/// that read only when asked ([`ReadInto::buffer`]).
///
/// A readiness-based adapter asks once the socket is readable: by then the
/// application has often dropped the bodies of the last read, which pinned
/// the buffer, so the buffer takes the next read in place instead of being
/// replaced by a fresh allocation.
#[derive(Debug)]
pub struct ReadInto<'a> {
    inbox: &'a mut Inbox,
    room: usize,
    grew: &'a mut bool,
    spares: &'a mut Option<Box<Spares>>,
}

impl<'a> ReadInto<'a> {
    /// The buffer has the room for the next read already: asking for it
    /// costs nothing, so there is no reason to wait for readiness first.
    /// False also right after the room grew: the buffer then moves to a
    /// larger allocation.
    pub fn has_room(&mut self) -> bool {
        let buffer = self.inbox.buffer();
        !*self.grew && buffer.capacity() - buffer.len() >= self.room
    }

    /// The buffer, with the room for the next read: append what is read,
    /// then report [`Completion::Read`].
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.make_room();
        self.inbox.buffer()
    }

    /// [`ReadInto::buffer`], for as long as the borrow it came from.
    pub fn into_buffer(mut self) -> &'a mut BytesMut {
        self.make_room();
        self.inbox.buffer()
    }

    /// Gives the receive buffer at least the room for the next read. Right
    /// after the room grew, the buffer is moved to a fresh allocation of
    /// the new size: `BytesMut` sizes later allocations by a buffer's
    /// first one, so this keeps a busy connection's buffers uniform once
    /// the room is at its largest. A buffer still pinned by delivered
    /// bodies is set aside ([`Spares`]) and an earlier one the application
    /// has released takes its place, so a busy connection cycles through a
    /// few allocations instead of faulting in fresh pages.
    fn make_room(&mut self) {
        let room = self.room;
        let grew = core::mem::take(self.grew);
        let buffer = self.inbox.buffer();
        if buffer.capacity() - buffer.len() >= room {
            return;
        }
        // No longer pinned by delivered bodies: the partial frame moves to
        // the front. (`reserve` would instead reallocate, copying the
        // consumed bytes too.)
        if !grew && buffer.try_reclaim(room) {
            return;
        }
        if room < KEEP_MIN {
            *buffer = recycle::moved(buffer, room);
            return;
        }
        // Boxed, and only for busy connections: idle ones stay small.
        let spares = self.spares.get_or_insert_with(Box::default);
        spares.replace(buffer, room, !grew);
    }
}

/// A socket under a transport layer: the socket reads wire bytes into its
/// own buffer; the layer turns them into frame bytes for the core.
struct Layered {
    layer: Box<dyn StreamLayer>,
    /// Frame bytes the layer produced, not yet handed to the core.
    frames: BytesMut,
    /// The core's frame limit the layer was last told.
    frame_limit: u32,
    /// The layer's close was started.
    closed: bool,
    /// The layer failed: only its last bytes (an alert) are still written.
    failed: bool,
}

impl core::fmt::Debug for Layered {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Layered")
            .field("frame_limit", &self.frame_limit)
            .field("closed", &self.closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Socket {
    /// The state of a new socket task for connection `id`.
    pub fn new(id: ConnectionId) -> Self {
        Socket {
            id,
            out: Outgoing::default(),
            inbox: None,
            writing: false,
            reading: false,
            eof: false,
            finished: false,
            linger: None,
            closing_wrote: false,
            draining: false,
            layer: None,
            span: tracing::Span::none(),
            named: false,
            read_room: MIN_READ_ROOM,
            read_room_grew: false,
            spares: None,
        }
    }

    /// Adapts the room for the next read to this one's `n` bytes: a read
    /// that filled its room doubles it, up to `max`. It never shrinks: a
    /// busy connection keeps reading into large buffers of one size, and
    /// only connections that never read much stay small.
    fn note_read(&mut self, n: usize, max: usize) {
        if n < self.read_room / 2 {
            self.spares = None;
        }
        let max = max.max(MIN_READ_ROOM);
        if n >= self.read_room && self.read_room < max {
            self.read_room = self.read_room.saturating_mul(2).min(max);
            self.read_room_grew = true;
        }
    }

    /// Names the connection for logs: the socket task's span.
    pub(super) fn traced(
        mut self,
        side: &'static str,
        transport: &'static str,
        remote: Option<core::net::SocketAddr>,
    ) -> Self {
        self.span = connection_span(self.id, side, transport, remote);
        self
    }

    /// The span to run this socket's task in (`tracing::Instrument`).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A socket task for connection `id` whose bytes pass through `layer`.
    /// Runs under a transport layer: what it writes is the layer's.
    pub(super) fn is_layered(&self) -> bool {
        self.layer.is_some()
    }

    pub(super) fn layered(id: ConnectionId, layer: Box<dyn StreamLayer>) -> Self {
        let mut socket = Socket::new(id);
        // The socket's own wire buffer, always lent to reads.
        socket.inbox = Some(Inbox::Wire(BytesMut::new()));
        socket.layer = Some(Layered {
            layer,
            frames: BytesMut::new(),
            frame_limit: 0,
            closed: false,
            failed: false,
        });
        socket
    }

    /// The connection.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The batch being written ([`Outgoing::slices`], then
    /// [`Outgoing::advance`] by what was written) and the lent receive
    /// buffer, with room for the next read (append what is read, then
    /// report [`Completion::Read`]), for an adapter that writes and reads
    /// in place, both at once.
    pub fn io(&mut self) -> (&mut Outgoing, Option<&mut BytesMut>) {
        let (out, into) = self.io_deferred();
        (out, into.map(ReadInto::into_buffer))
    }

    /// [`Socket::io`], but the receive buffer is given its room only when
    /// the read asks for it ([`ReadInto`]).
    pub fn io_deferred(&mut self) -> (&mut Outgoing, Option<ReadInto<'_>>) {
        if self.reading {
            // Lent to an owned-buffer read ([`Socket::lend_inbox`]).
            return (&mut self.out, None);
        }
        let into = self.inbox.as_mut().map(|inbox| ReadInto {
            inbox,
            room: self.read_room,
            grew: &mut self.read_room_grew,
            spares: &mut self.spares,
        });
        (&mut self.out, into)
    }

    /// Hands the whole loaded batch to an owned-buffer write; report its
    /// end as [`Completion::Wrote`].
    pub fn lend_batch(&mut self) -> std::vec::Vec<bytes::Bytes> {
        self.writing = true;
        self.out.take()
    }

    /// Hands the receive buffer to an owned-buffer read; the read gives
    /// it back in [`Completion::Read`].
    pub fn lend_inbox(&mut self) -> Option<BytesMut> {
        // `None` while already lent.
        let buffer = core::mem::take(self.io_deferred().1?.buffer());
        self.reading = true;
        Some(buffer)
    }

    /// A buffer an owned-buffer read gives back goes where it was taken
    /// from.
    fn put_back(&mut self, buffer: Option<BytesMut>) {
        if let Some(buffer) = buffer {
            match &mut self.inbox {
                Some(inbox) => *inbox.buffer() = buffer,
                None => self.inbox = Some(Inbox::Wire(buffer)),
            }
        }
    }
}

impl<M: Machine, R: Runtime> Shared<M, R> {
    /// Loads the socket's next batch if it has none, and decides what it
    /// does next. A layered socket runs its layer after the lock is
    /// released.
    pub fn step(self: &Arc<Self>, socket: &mut Socket) -> Step {
        let id = socket.id;
        let mut transmit = None;
        let mut frame_limit = None;
        let mut busy = false;
        let (closing, read) = {
            let mut state = self.lock();
            if state.forced {
                return Step::Exit;
            }
            if let Some(buffer) = socket.out.take_spare() {
                state.machine.reuse_batch_buffer(buffer);
            }
            let idle = !socket.writing && socket.out.is_done();
            // A handle writing through holds the connection's output until
            // it is done; what it left unwritten goes first.
            if let Some(entry) = state.sockets.get_mut(&id) {
                busy = entry.through_busy;
                socket.closing_wrote |= core::mem::take(&mut entry.wrote_closing);
                if let Some(rest) = entry.leftover.take_if(|_| idle && !busy) {
                    socket.out = *rest;
                }
            }
            if !busy && socket.out.is_done() && !socket.writing && state.machine.has_output(id) {
                let now = self.runtime.now();
                transmit = state.machine.poll_unsealed_for(now, id);
                if transmit.is_some() {
                    state.more_space();
                }
                self.after(&mut state, Some(id));
            }
            let loaded = socket.writing || !socket.out.is_done() || transmit.is_some();
            let closing = match state.sockets.get_mut(&id) {
                Some(entry) => {
                    entry.task_turn = loaded;
                    entry.closing
                }
                None => true,
            };
            // Once per connection, and only while a subscriber listens.
            if !socket.named
                && !socket.span.is_disabled()
                && let Some(peer) = state.machine.peer(id)
            {
                name_peer(&socket.span, peer);
                socket.named = true;
            }
            let read = self.decide_read(&mut state, socket, closing);
            if socket.layer.is_some() {
                frame_limit = state.machine.frame_limit(id);
            }
            (closing, read)
        };
        // Sealed outside the lock: the hashing is most of a frame's cost.
        if let Some(layered) = &mut socket.layer {
            if let Some(batch) = transmit.map(Unsealed::seal)
                && let Err(error) = layered.layer.write_frames(batch)
            {
                tracing::debug!(%id, %error, "transport layer refused a batch");
                layered.failed = true;
                self.with_from(Some(id), |m, now| m.handle_eof(now, id));
            }
            if let Some(limit) = frame_limit
                && limit != layered.frame_limit
            {
                layered.frame_limit = limit;
                layered.layer.set_frame_limit(limit);
            }
            if closing && !layered.closed && !layered.failed {
                layered.layer.close();
            }
            layered.closed |= closing;
            if !socket.writing && socket.out.is_done() {
                socket.out.load_with(|wire| layered.layer.take_wire(wire));
            }
        } else if let Some(batch) = transmit {
            socket.out.load_unsealed(batch);
        }
        if closing {
            if socket.out.is_done() && !socket.writing && !busy {
                if socket.eof || !self.start_draining(socket) {
                    return Step::Exit;
                }
                // Whatever is still lent is discarded into.
                if socket.inbox.is_none() && !socket.reading {
                    socket.inbox = Some(Inbox::Wire(BytesMut::new()));
                }
            }
            if socket.linger.is_none() {
                let at = self.runtime.now().mono.saturating_add(self.linger);
                socket.linger = Some(at);
            }
        }
        let read = match socket.draining {
            true => !socket.reading && socket.inbox.is_some(),
            false => read,
        };
        Step::Run {
            write: !socket.out.is_done() && !socket.writing,
            read,
            linger: socket.linger,
            shutdown: socket.draining,
        }
    }

    /// Whether a closing socket whose last bytes are written lingers to
    /// drain the peer's: only if it wrote after the close (a close frame,
    /// a reject, an alert: worth delivering), and only while fewer than
    /// [`MAX_DRAINING`] sockets do (beyond, it closes at once: a flood of
    /// rejected peers cannot hold sockets open).
    fn start_draining(&self, socket: &mut Socket) -> bool {
        if socket.draining {
            return true;
        }
        if !socket.closing_wrote {
            return false;
        }
        let mut state = self.lock();
        if state.draining >= MAX_DRAINING {
            return false;
        }
        let Some(entry) = state.sockets.get_mut(&socket.id) else {
            return false;
        };
        entry.draining = true;
        state.draining += 1;
        socket.draining = true;
        true
    }

    /// Whether the socket reads now, under the lock: not while closing,
    /// after EOF, or while this connection's deliveries wait for the
    /// application (the core is told, so it does not count our pause as
    /// the peer's silence). Lends the core's receive buffer to a plain
    /// socket.
    fn decide_read(&self, state: &mut State<M>, socket: &mut Socket, closing: bool) -> bool {
        let id = socket.id;
        let mut read = !closing && !socket.eof && !socket.finished && !socket.reading;
        // Only a socket about to read decides to pause or resume.
        let pause = read && state.note_pause(|| self.runtime.now(), id);
        read &= !pause;
        // A layer with answers piling up (pongs to a peer that does not
        // read) reads no more until they are written.
        read &= socket
            .layer
            .as_ref()
            .is_none_or(|l| l.layer.pending_wire() <= MAX_PENDING_WIRE);
        if read && socket.inbox.is_none() && socket.layer.is_none() {
            socket.inbox = state.machine.lend_decoder(id).map(Inbox::Decoder);
        }
        read && socket.inbox.is_some()
    }

    /// Acts on what the socket task's wait saw. [`ControlFlow::Break`]
    /// means the connection is over: close the socket, then call
    /// [`Shared::closed`].
    pub fn complete(self: &Arc<Self>, socket: &mut Socket, done: Completion) -> ControlFlow<()> {
        let id = socket.id;
        match done {
            Completion::Woken => {}
            Completion::Wrote(result) => {
                socket.writing = false;
                if let Err(error) = result {
                    // The batch is not atomic: a failed write ends the
                    // connection (hazard 23).
                    tracing::debug!(%id, %error, "write failed");
                    self.abandon(socket);
                    return ControlFlow::Break(());
                }
                socket.closing_wrote |= socket.linger.is_some();
            }
            Completion::Lingered => {
                tracing::debug!(%id, "the peer did not take the last bytes in time");
                self.abandon(socket);
                return ControlFlow::Break(());
            }
            Completion::Read(result, buffer) if socket.draining => {
                // A lingering close: what the peer still sends is dropped.
                socket.reading = false;
                socket.put_back(buffer);
                socket
                    .inbox
                    .get_or_insert_with(|| Inbox::Wire(BytesMut::new()))
                    .buffer()
                    .clear();
                socket.eof |= !matches!(result, Ok(n) if n > 0);
            }
            Completion::Read(result, buffer) => {
                socket.reading = false;
                if let Ok(n) = result {
                    socket.note_read(n, self.read_chunk());
                }
                match result {
                    Ok(0) => self.handle_eof(socket, buffer),
                    Ok(_) if socket.layer.is_some() => self.handle_wire(socket, buffer),
                    Ok(_) => self.handle_read(socket, buffer),
                    Err(error) => {
                        tracing::debug!(%id, %error, "read failed");
                        self.handle_eof(socket, buffer);
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Completes when the socket should step again: it has output, it may
    /// read again, or it is closing.
    pub async fn woken(&self, id: ConnectionId) {
        poll_fn(|cx| Self::poll_entry(&mut self.lock(), id, cx)).await;
    }

    /// Bytes were read into the lent decoder's buffer (in place, or
    /// returned by an owned-buffer read as `buffer`): their frames'
    /// checksums or tags are checked here, outside the lock, and the core
    /// then only parses and handles them.
    fn handle_read(self: &Arc<Self>, socket: &mut Socket, buffer: Option<BytesMut>) {
        let id = socket.id;
        socket.put_back(buffer);
        let Some(Inbox::Decoder(mut decoder)) = socket.inbox.take() else {
            return;
        };
        decoder.verify();
        self.with_from(Some(id), |m, now| m.handle_verified(now, id, decoder));
    }

    /// Wire bytes were read on a layered socket: the layer turns them
    /// into frame bytes outside the lock; then the core learns that the
    /// layer is ready (first) and gets the frames, moved into its receive
    /// buffer without a copy when that is empty.
    fn handle_wire(self: &Arc<Self>, socket: &mut Socket, buffer: Option<BytesMut>) {
        let id = socket.id;
        socket.put_back(buffer);
        let (Some(layered), Some(Inbox::Wire(wire))) = (&mut socket.layer, &mut socket.inbox)
        else {
            return;
        };
        // A layer that stops at a frame which may change the frame limit
        // is read again once the core has it; each round consumes a frame.
        loop {
            let now = self.runtime.now();
            let result = layered.layer.read_wire(now, wire, &mut layered.frames);
            wire.clear();
            let ready = layered.layer.take_ready();
            if let Err(error) = &result {
                tracing::debug!(%id, %error, "transport layer failed");
                layered.failed = true;
            }
            let too_large = result
                .as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<FrameTooLarge>())
                .map(|e| e.size);
            // A failed layer, or a peer that closed within it, reads no more.
            let ended = result.is_err() || layered.layer.peer_closed();
            socket.finished |= ended;
            let frames = &mut layered.frames;
            let limit = self.with_from(Some(id), |m, now| {
                if let Some(binding) = ready
                    && !m.transport_ready(now, id, binding)
                {
                    tracing::debug!(%id, "transport ready for a connection that was not waiting");
                }
                if !frames.is_empty() {
                    match m.take_read_buffer(id) {
                        Some(mut buffer) => {
                            if buffer.is_empty() {
                                core::mem::swap(&mut buffer, frames);
                            } else {
                                buffer.extend_from_slice(frames);
                                frames.clear();
                            }
                            m.handle_read(now, id, buffer);
                        }
                        // The connection is gone: nothing reads them.
                        None => frames.clear(),
                    }
                }
                match too_large {
                    Some(size) => m.frame_too_large(now, id, size),
                    None if ended => m.handle_eof(now, id),
                    None => {}
                }
                m.frame_limit(id)
            });
            if let Some(limit) = limit
                && limit != layered.frame_limit
            {
                layered.frame_limit = limit;
                layered.layer.set_frame_limit(limit);
            }
            // Closed meanwhile (say, early data after the hello): the
            // rest is not worth reading.
            if ended || limit.is_none() || !layered.layer.wants_read() {
                return;
            }
        }
    }

    /// The peer closed its side, or the read failed: no more reads. A
    /// layer learns it first, and says whether the end was its clean
    /// close; the core sees EOF either way (without the bus's own `close`
    /// that is a reset).
    fn handle_eof(self: &Arc<Self>, socket: &mut Socket, buffer: Option<BytesMut>) {
        socket.eof = true;
        let id = socket.id;
        socket.put_back(buffer);
        if let Some(layered) = &mut socket.layer
            && let Err(error) = layered.layer.read_eof()
        {
            tracing::debug!(%id, %error, "transport ended without its close");
        }
        // A lent decoder goes back first (its frames were all handled; a
        // partial one stays partial), so the core holds it for good.
        let decoder = match socket.inbox.take() {
            Some(Inbox::Decoder(decoder)) => Some(decoder),
            other => {
                socket.inbox = other;
                None
            }
        };
        self.with_from(Some(id), |m, now| {
            if let Some(decoder) = decoder {
                m.handle_verified(now, id, decoder);
            }
            m.handle_eof(now, id);
        });
    }

    /// The socket failed or gave up (write error, linger passed): the core
    /// learns it, and whatever it still had to write is discarded so the
    /// connection is freed.
    fn abandon(self: &Arc<Self>, socket: &Socket) {
        let id = socket.id;
        self.with_from(Some(id), |m, now| {
            m.handle_eof(now, id);
            discard_output(m, now, id);
        });
    }
}

/// Drops what `id` still had to write, unsealed (nothing will carry it),
/// so the core frees the connection; returns how many batches went.
/// Bounded: a closed connection hands out at most its close.
pub(super) fn discard_output<M: Machine>(
    m: &mut M,
    now: crate::time::Now,
    id: ConnectionId,
) -> usize {
    (0..1024)
        .take_while(|_| m.poll_unsealed_for(now, id).is_some())
        .count()
}

/// The span of one connection: its id, whether we accepted or dialled it,
/// its transport, and the remote address where known.
pub(super) fn connection_span(
    id: ConnectionId,
    side: &'static str,
    transport: &'static str,
    remote: Option<core::net::SocketAddr>,
) -> tracing::Span {
    tracing::info_span!(
        "connection",
        id = %id,
        side,
        transport,
        remote = ?remote,
        local = tracing::field::Empty,
        plane = tracing::field::Empty,
        peer = tracing::field::Empty,
    )
}

/// Records who is at the other end of `span`'s connection once the
/// handshake names them: the plane, and the replica or client id.
pub(super) fn name_peer(span: &tracing::Span, peer: crate::crypto::PeerId) {
    match peer {
        crate::crypto::PeerId::Replica(replica) => {
            span.record("plane", "replica");
            span.record("peer", replica);
        }
        crate::crypto::PeerId::Client(client) => {
            span.record("plane", "client");
            span.record("peer", tracing::field::display(format_args!("{client:#x}")));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::{Completion, Step};
    use crate::config::Config;
    use crate::crypto::{Key, KeyRing};
    use crate::entropy::SeededEntropy;
    use crate::host::{LayerError, LayerFactory, MAX_PENDING_WIRE, StreamLayer, Transport};
    use crate::host::{Machine, NodeFront, NodeOptions, Runtime, Shared, SharedOptions};
    use crate::node::{ConnectionId, NodeParams};
    use crate::time::{Instant, Now};
    use bytes::BytesMut;
    use core::future::Future;
    use core::pin::pin;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use core::task::{Context, Waker};
    use core::time::Duration;
    use std::boxed::Box;
    use std::sync::Arc;
    use std::vec::Vec;

    /// A runtime whose clock stands still and whose timers never fire.
    pub(crate) struct Frozen;

    impl Runtime for Frozen {
        fn now(&self) -> Now {
            Now::from_elapsed(Duration::from_secs(1), Duration::from_secs(1_700_000_000))
        }
        fn sleep_until(&self, _at: Instant) -> impl Future<Output = ()> {
            core::future::pending()
        }
        fn dial<M: Machine>(_: &Arc<Shared<M, Self>>, _: ConnectionId, _: u8) {}
        fn run_blocking<T: Send + 'static>(
            &self,
            job: impl FnOnce() -> T + Send + 'static,
            done: impl FnOnce(T) + Send + 'static,
        ) {
            done(job());
        }
        fn writes_through_here(&self) -> bool {
            true
        }
    }

    fn node_driver() -> Arc<Shared<NodeFront, Frozen>> {
        node_driver_as(NodeParams {
            cluster: 1,
            replica: 0,
            replica_count: 1,
            accept_clients: true,
        })
    }

    /// A node's driver on the frozen clock, with the key `[5; 32]`.
    pub(crate) fn node_driver_as(params: NodeParams) -> Arc<Shared<NodeFront, Frozen>> {
        let config = Config::default().validate().expect("default config");
        let keys = KeyRing::new(Key::from_bytes([5; 32]));
        let entropy = Box::new(SeededEntropy::new(3));
        let front = NodeFront::new(
            Frozen.now(),
            &config,
            params,
            keys,
            entropy,
            &NodeOptions::default(),
        )
        .expect("node");
        let options = SharedOptions {
            read_chunk: 4096,
            linger: Duration::from_secs(1),
        };
        Shared::new(front, Frozen, options, [], [])
    }

    /// A layer that never finishes its handshake and says it holds
    /// `pending` bytes for the wire.
    struct Hoarding {
        pending: Arc<AtomicUsize>,
    }

    impl StreamLayer for Hoarding {
        fn read_wire(
            &mut self,
            _: Now,
            wire: &mut BytesMut,
            _: &mut BytesMut,
        ) -> Result<(), LayerError> {
            wire.clear();
            Ok(())
        }
        fn read_eof(&mut self) -> Result<(), LayerError> {
            Ok(())
        }
        fn pending_wire(&self) -> usize {
            self.pending.load(Ordering::Relaxed)
        }
        fn take_ready(&mut self) -> Option<crate::handshake::Binding> {
            None
        }
        fn write_frames(&mut self, _: crate::connection::Transmit) -> Result<(), LayerError> {
            Ok(())
        }
        fn close(&mut self) {}
        fn take_wire(&mut self, _: &mut Vec<bytes::Bytes>) {}
    }

    pub(crate) struct HoardingFactory(pub(crate) Arc<AtomicUsize>);

    impl LayerFactory for HoardingFactory {
        fn name(&self) -> &'static str {
            "hoarding"
        }
        fn layer(&self) -> Result<Box<dyn StreamLayer>, LayerError> {
            Ok(Box::new(Hoarding {
                pending: Arc::clone(&self.0),
            }))
        }
    }

    /// An accepted plain TCP socket, stepped once: the core has lent it
    /// its receive buffer.
    fn reading_socket(shared: &Arc<Shared<NodeFront, Frozen>>) -> super::Socket {
        let mut socket = shared
            .accept_socket(None, &Transport::tcp())
            .expect("accepted");
        assert!(matches!(
            shared.step(&mut socket),
            Step::Run { read: true, .. }
        ));
        socket
    }

    /// An idle connection holds a small receive buffer; one whose reads
    /// fill their room reads in chunks up to the node's read chunk.
    #[test]
    fn read_room_starts_small_and_grows_with_full_reads() {
        let shared = node_driver();
        let mut socket = reading_socket(&shared);
        let (_, inbox) = socket.io();
        let inbox = inbox.expect("a TCP socket reads into the core's buffer");
        assert!(inbox.capacity() - inbox.len() >= super::MIN_READ_ROOM);
        assert!(
            inbox.capacity() < 4 * super::MIN_READ_ROOM,
            "{}",
            inbox.capacity()
        );
        // A short read leaves the room as it is.
        socket.note_read(100, 16 << 10);
        assert_eq!(socket.read_room, super::MIN_READ_ROOM);
        // Full reads double it, up to the read chunk.
        for expected in [2048, 4096, 8192, 16384, 16384] {
            socket.note_read(socket.read_room, 16 << 10);
            assert_eq!(socket.read_room, expected);
        }
        // A partial frame moves with the buffer to its larger allocation.
        let inbox = socket.inbox.as_mut().expect("lent");
        inbox.buffer().extend_from_slice(b"partial");
        let (_, inbox) = socket.io();
        let inbox = inbox.expect("still reading");
        assert_eq!(&inbox[..], b"partial");
        assert!(inbox.capacity() - inbox.len() >= 16 << 10);
    }

    /// A full buffer still pinned by a delivered body is set aside; once
    /// the body is dropped, a later read goes into that same allocation
    /// again, with the partial frame carried over.
    #[test]
    fn a_released_receive_buffer_is_read_into_again() {
        let shared = node_driver();
        let mut socket = reading_socket(&shared);
        socket.read_room = 32 << 10;
        socket.io();
        // Fills the buffer, leaving a 7-byte partial frame, and delivers a
        // body that pins it; then makes room for the next read.
        let cycle = |socket: &mut super::Socket| {
            let inbox = socket.inbox.as_mut().expect("lent").buffer();
            let room = inbox.capacity() - inbox.len();
            inbox.extend_from_slice(&std::vec![1; room]);
            let body = inbox.len() - 7;
            let body = inbox.split_to(body).freeze();
            socket.io();
            body
        };
        // Every buffer from here on is sized for the room and a partial
        // frame.
        let _warm_up = cycle(&mut socket);
        let first = cycle(&mut socket);
        let second = cycle(&mut socket);
        assert_ne!(
            first.as_ptr(),
            second.as_ptr(),
            "a pinned buffer is set aside"
        );
        let first_address = first.as_ptr() as usize;
        drop(first);
        let _third = cycle(&mut socket);
        let inbox = socket.inbox.as_mut().expect("lent").buffer();
        assert_eq!(
            inbox.as_ptr() as usize,
            first_address,
            "the released one is reused"
        );
        assert_eq!(&inbox[..], &[1; 7], "with the partial frame");
        assert!(inbox.capacity() - inbox.len() >= 32 << 10);
        // A read of less than half the room lets the spares go.
        assert!(socket.spares.is_some());
        socket.note_read(100, 128 << 10);
        assert!(socket.spares.is_none());
    }

    /// A small buffer pinned by the last read's body gets no room until
    /// the read asks for it: asked after the application released the
    /// body, the buffer takes the next read in place, without a new
    /// allocation.
    #[test]
    fn room_made_when_the_read_asks_reuses_a_released_buffer() {
        let shared = node_driver();
        let mut socket = reading_socket(&shared);
        let (_, into) = socket.io_deferred();
        let inbox = into.expect("lent").into_buffer();
        let start = inbox.as_ptr() as usize;
        inbox.extend_from_slice(&[1; 300]);
        let body = inbox.split_to(300).freeze();
        let (_, into) = socket.io_deferred();
        assert!(
            !into.expect("lent").has_room(),
            "room is short while pinned"
        );
        drop(body);
        let (_, into) = socket.io_deferred();
        let inbox = into.expect("lent").into_buffer();
        assert_eq!(inbox.as_ptr() as usize, start, "the same allocation");
        assert!(inbox.capacity() - inbox.len() >= super::MIN_READ_ROOM);
        // Room made early, while pinned, is a fresh allocation.
        inbox.extend_from_slice(&[2; 300]);
        let body = inbox.split_to(300).freeze();
        let (_, inbox) = socket.io();
        assert_ne!(inbox.expect("lent").as_ptr() as usize, start);
        drop(body);
    }

    /// A peer that sends pings and never reads makes a WebSocket layer
    /// queue pongs: past `MAX_PENDING_WIRE` of them the socket stops
    /// reading until they are written, so they cannot pile up.
    #[test]
    fn a_layer_holding_too_much_output_stops_its_socket_reading() {
        let shared = node_driver();
        let pending = Arc::new(AtomicUsize::new(0));
        let transport = Transport::layered(Arc::new(HoardingFactory(Arc::clone(&pending))));
        let mut socket = shared.accept_socket(None, &transport).expect("accepted");
        assert!(matches!(
            shared.step(&mut socket),
            Step::Run { read: true, .. }
        ));
        pending.store(MAX_PENDING_WIRE + 1, Ordering::Relaxed);
        assert!(matches!(
            shared.step(&mut socket),
            Step::Run { read: false, .. }
        ));
        pending.store(0, Ordering::Relaxed);
        assert!(matches!(
            shared.step(&mut socket),
            Step::Run { read: true, .. }
        ));
    }

    /// A sans-IO connection dialling replica `acceptor` of cluster 1 as
    /// `local`, under `key`, on the frozen clock.
    pub(crate) fn frozen_dialer(
        key: [u8; 32],
        local: crate::crypto::PeerId,
        acceptor: u8,
    ) -> crate::connection::Connection {
        let config = Config::default().validate().expect("default config");
        let keys = KeyRing::new(Key::from_bytes(key));
        let params = crate::connection::DialParams {
            cluster: 1,
            local,
            acceptor,
            keys: &keys,
            binding: crate::handshake::Binding::NONE,
        };
        let now = Frozen.now();
        crate::connection::Connection::dial(
            now.mono,
            now.wall,
            &config,
            params,
            &mut SeededEntropy::new(4),
        )
        .expect("a dial")
    }

    /// A hello under the wrong key: the node answers `reject BadMac`.
    fn impostor_hello() -> BytesMut {
        let now = Frozen.now();
        let mut dialer = frozen_dialer([9; 32], crate::crypto::PeerId::Client(7), 0);
        let mut hello = Vec::new();
        dialer
            .poll_transmit(now.mono)
            .expect("the hello")
            .write_to(&mut hello);
        BytesMut::from(&hello[..])
    }

    /// After its last words (here a reject) a socket shuts its write side
    /// and drains what the peer still sends until the peer's end of stream:
    /// closing with unread data would reset the connection and could
    /// destroy the peer's copy of the reject.
    #[test]
    fn a_socket_lingers_after_its_last_bytes_until_the_peer_ends() {
        let shared = node_driver();
        let mut socket = reading_socket(&shared);
        let lent = socket.lend_inbox().expect("the read buffer");
        let mut hello = impostor_hello();
        let n = hello.len();
        let mut buffer = lent;
        buffer.unsplit(hello.split());
        let read = Completion::Read(Ok(n), Some(buffer));
        assert!(shared.complete(&mut socket, read).is_continue());
        // The reject goes out; nothing is read meanwhile.
        let Step::Run {
            write: true,
            shutdown: false,
            ..
        } = shared.step(&mut socket)
        else {
            panic!("the reject is not written");
        };
        let reject = socket.lend_batch();
        assert_eq!(reject.iter().map(|b| b.len()).sum::<usize>(), 256);
        assert!(
            shared
                .complete(&mut socket, Completion::Wrote(Ok(())))
                .is_continue()
        );
        // Then: shut the write side, drain.
        let Step::Run {
            read: true,
            shutdown: true,
            linger: Some(_),
            ..
        } = shared.step(&mut socket)
        else {
            panic!("no lingering close");
        };
        let drained = socket.lend_inbox().expect("a discard buffer");
        let read = Completion::Read(Ok(100), Some(BytesMut::from(&[0u8; 100][..])));
        drop(drained);
        assert!(shared.complete(&mut socket, read).is_continue());
        assert!(matches!(
            shared.step(&mut socket),
            Step::Run { shutdown: true, .. }
        ));
        let _ = socket.lend_inbox();
        let eof = Completion::Read(Ok(0), Some(BytesMut::new()));
        assert!(shared.complete(&mut socket, eof).is_continue());
        assert_eq!(shared.step(&mut socket), Step::Exit);
        shared.closed(socket.id());
    }

    pub(crate) fn woken_now(shared: &Shared<NodeFront, Frozen>, id: ConnectionId) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        pin!(shared.woken(id)).poll(&mut cx).is_ready()
    }

    /// The core frees a slot at `Disconnect` and may give it to the next
    /// socket while the old one still closes. The old task must still find
    /// its own entry: a missing entry made `woken` ready forever, and the
    /// task spun.
    #[test]
    fn a_closing_socket_keeps_its_entry_when_its_slot_is_reused() {
        let shared = node_driver();
        let tcp = Transport::tcp();
        let mut old = shared.accept_socket(None, &tcp).expect("accepted");
        assert!(matches!(
            shared.step(&mut old),
            Step::Run { read: true, .. }
        ));
        // The peer hangs up: the core says `Disconnect` and frees the slot.
        assert!(
            shared
                .complete(&mut old, Completion::Read(Ok(0), None))
                .is_continue()
        );
        let new = shared.accept_socket(None, &tcp).expect("accepted");
        assert_eq!(new.id().slot(), old.id().slot(), "the slot was reused");
        assert_ne!(new.id(), old.id());

        // The old task is woken once for its close, then waits again.
        assert!(woken_now(&shared, old.id()));
        assert!(!woken_now(&shared, old.id()), "no endless wake-up");
        assert_eq!(shared.step(&mut old), Step::Exit, "nothing left to write");
        shared.closed(old.id());
        // The new connection keeps its own entry: at most a wake-up it
        // already had, then it waits.
        woken_now(&shared, new.id());
        assert!(!woken_now(&shared, new.id()));
        assert_eq!(shared.read(|m| m.connections()), 1);
    }
}
