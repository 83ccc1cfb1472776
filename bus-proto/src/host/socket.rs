//! The task that owns one socket, as every adapter runs it: what it does
//! next ([`Shared::step`]) and what each completion means
//! ([`Shared::complete`]). The adapter only performs the reads, writes and
//! waits.

use super::Machine;
use super::driver::{Runtime, Shared, State};
use super::layer::StreamLayer;
use super::outgoing::Outgoing;
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

/// A socket task's own state: the batch it writes, the receive buffer it
/// has borrowed from the core, and the transport layer, if any.
#[derive(Debug)]
pub struct Socket {
    id: ConnectionId,
    out: Outgoing,
    inbox: Option<BytesMut>,
    /// The batch was handed whole to an owned-buffer write still running.
    writing: bool,
    /// The buffer was handed to an owned-buffer read still running.
    reading: bool,
    eof: bool,
    linger: Option<Instant>,
    layer: Option<Layered>,
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
            linger: None,
            layer: None,
        }
    }

    /// A socket task for connection `id` whose bytes pass through `layer`.
    pub(super) fn layered(id: ConnectionId, layer: Box<dyn StreamLayer>) -> Self {
        let mut socket = Socket::new(id);
        // The socket's own wire buffer, always lent to reads.
        socket.inbox = Some(BytesMut::new());
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
    /// buffer (append what is read, then report [`Completion::Read`]), for an
    /// adapter that writes and reads in place, both at once.
    pub fn io(&mut self) -> (&mut Outgoing, Option<&mut BytesMut>) {
        (&mut self.out, self.inbox.as_mut())
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
        let buffer = self.inbox.take()?;
        self.reading = true;
        Some(buffer)
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
        let (closing, read) = {
            let mut state = self.lock();
            if state.forced {
                return Step::Exit;
            }
            if !socket.writing && socket.out.is_done() {
                let now = self.runtime.now();
                if let Some(batch) = state.machine.poll_transmit_for(now, id) {
                    match socket.layer {
                        None => socket.out.load(batch),
                        Some(_) => transmit = Some(batch),
                    }
                    state.more_space();
                }
                self.after(&mut state, Some(id));
            }
            let closing = state.sockets.get(&id).is_none_or(|e| e.closing);
            let read = self.decide_read(&mut state, socket, closing);
            if socket.layer.is_some() {
                frame_limit = state.machine.frame_limit(id);
            }
            (closing, read)
        };
        if let Some(layered) = &mut socket.layer {
            if let Some(batch) = transmit
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
        }
        if closing {
            if socket.out.is_done() && !socket.writing {
                return Step::Exit;
            }
            if socket.linger.is_none() {
                let at = self.runtime.now().mono.saturating_add(self.linger);
                socket.linger = Some(at);
            }
        }
        Step::Run {
            write: !socket.out.is_done() && !socket.writing,
            read,
            linger: socket.linger,
        }
    }

    /// Whether the socket reads now, under the lock: not while closing,
    /// after EOF, or while this connection's deliveries wait for the
    /// application (the core is told, so it does not count our pause as
    /// the peer's silence). Lends the core's receive buffer to a plain
    /// socket.
    fn decide_read(&self, state: &mut State<M>, socket: &mut Socket, closing: bool) -> bool {
        let id = socket.id;
        let mut read = !closing && !socket.eof && !socket.reading;
        let pause = read && state.machine.reading_paused(id);
        let State {
            sockets,
            paused,
            machine,
            ..
        } = state;
        if let Some(entry) = sockets.get_mut(&id)
            && pause != entry.paused
            && (pause || read)
        {
            entry.paused = pause;
            match pause {
                true => paused.push(id),
                false => paused.retain(|&p| p != id),
            }
            machine.set_reading_paused(self.runtime.now(), id, pause);
        }
        read &= !pause;
        if read && socket.inbox.is_none() && socket.layer.is_none() {
            socket.inbox = machine.take_read_buffer(id);
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
            }
            Completion::Lingered => {
                tracing::debug!(%id, "the peer did not take the last bytes in time");
                self.abandon(socket);
                return ControlFlow::Break(());
            }
            Completion::Read(result, buffer) => {
                socket.reading = false;
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

    /// Bytes were read into the lent buffer (in place, or returned by an
    /// owned-buffer read as `buffer`): the core processes them.
    fn handle_read(self: &Arc<Self>, socket: &mut Socket, buffer: Option<BytesMut>) {
        let id = socket.id;
        if let Some(buffer) = buffer.or_else(|| socket.inbox.take()) {
            self.with_from(Some(id), |m, now| m.handle_read(now, id, buffer));
        }
    }

    /// Wire bytes were read on a layered socket: the layer turns them
    /// into frame bytes outside the lock; then the core learns that the
    /// layer is ready (first) and gets the frames, moved into its receive
    /// buffer without a copy when that is empty.
    fn handle_wire(self: &Arc<Self>, socket: &mut Socket, buffer: Option<BytesMut>) {
        let id = socket.id;
        if let Some(buffer) = buffer {
            socket.inbox = Some(buffer);
        }
        let (Some(layered), Some(wire)) = (&mut socket.layer, &mut socket.inbox) else {
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
            // A failed layer, or a peer that closed within it, reads no more.
            let ended = result.is_err() || layered.layer.peer_closed();
            socket.eof |= ended;
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
                if ended {
                    m.handle_eof(now, id);
                }
                m.frame_limit(id)
            });
            if let Some(limit) = limit
                && limit != layered.frame_limit
            {
                layered.frame_limit = limit;
                layered.layer.set_frame_limit(limit);
            }
            if ended || !layered.layer.wants_read() {
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
        if let Some(layered) = &mut socket.layer {
            socket.inbox = buffer.or(socket.inbox.take());
            if let Err(error) = layered.layer.read_eof() {
                tracing::debug!(%id, %error, "transport ended without its close");
            }
        }
        self.with_from(Some(id), |m, now| m.handle_eof(now, id));
    }

    /// The socket failed or gave up (write error, linger passed): the core
    /// learns it, and whatever it still had to write is discarded so the
    /// connection is freed.
    fn abandon(self: &Arc<Self>, socket: &Socket) {
        let id = socket.id;
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

#[cfg(test)]
mod tests {
    use super::{Completion, Step};
    use crate::config::Config;
    use crate::crypto::{Key, KeyRing};
    use crate::entropy::SeededEntropy;
    use crate::host::{Machine, NodeFront, NodeOptions, Runtime, Shared, SharedOptions};
    use crate::node::{ConnectionId, NodeParams};
    use crate::time::{Instant, Now};
    use core::future::Future;
    use core::pin::pin;
    use core::task::{Context, Waker};
    use core::time::Duration;
    use std::boxed::Box;
    use std::sync::Arc;

    /// A runtime whose clock stands still and whose timers never fire.
    struct Frozen;

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
    }

    fn woken_now(shared: &Shared<NodeFront, Frozen>, id: ConnectionId) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        pin!(shared.woken(id)).poll(&mut cx).is_ready()
    }

    /// The core frees a slot at `Disconnect` and may give it to the next
    /// socket while the old one still closes. The old task must still find
    /// its own entry: a missing entry made `woken` ready forever, and the
    /// task spun.
    #[test]
    fn a_closing_socket_keeps_its_entry_when_its_slot_is_reused() {
        let config = Config::default().validate().expect("default config");
        let params = NodeParams {
            cluster: 1,
            replica: 0,
            replica_count: 1,
            accept_clients: true,
        };
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
        let shared = Shared::new(front, Frozen, options, [], []);
        let tcp = crate::host::Transport::tcp();

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
