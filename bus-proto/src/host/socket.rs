//! The task that owns one socket, as every adapter runs it: what it does
//! next ([`Shared::step`]) and what each completion means
//! ([`Shared::complete`]). The adapter only performs the reads, writes and
//! waits.

use super::Machine;
use super::driver::{Runtime, Shared, State};
use super::outgoing::Outgoing;
use crate::node::ConnectionId;
use crate::time::Instant;
use bytes::BytesMut;
use core::future::poll_fn;
use core::ops::ControlFlow;
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

/// A socket task's own state: the batch it writes and the receive buffer
/// it has borrowed from the core.
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
        }
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
    /// does next.
    pub fn step(self: &Arc<Self>, socket: &mut Socket) -> Step {
        let id = socket.id;
        let mut state = self.lock();
        if state.forced {
            return Step::Exit;
        }
        if !socket.writing && socket.out.is_done() {
            let now = self.runtime.now();
            if let Some(transmit) = state.machine.poll_transmit_for(now, id) {
                socket.out.load(transmit);
                state.more_space();
            }
            self.after(&mut state, Some(id));
        }
        let closing = state.sockets.get(&id).is_none_or(|e| e.closing);
        if closing {
            if socket.out.is_done() && !socket.writing {
                return Step::Exit;
            }
            if socket.linger.is_none() {
                let at = self.runtime.now().mono.saturating_add(self.linger);
                socket.linger = Some(at);
            }
        }
        let mut read = !closing && !socket.eof && !socket.reading;
        // Reading pauses while this connection's deliveries wait for the
        // application; the core is told, so it does not count our pause as
        // the peer's silence.
        let pause = read && state.machine.reading_paused(id);
        let State {
            sockets,
            paused,
            machine,
            ..
        } = &mut *state;
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
        if read && socket.inbox.is_none() {
            socket.inbox = state.machine.take_read_buffer(id);
            read = socket.inbox.is_some();
        }
        Step::Run {
            write: !socket.out.is_done() && !socket.writing,
            read,
            linger: socket.linger,
        }
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
                    Ok(0) => self.handle_eof(socket),
                    Ok(_) => self.handle_read(socket, buffer),
                    Err(error) => {
                        tracing::debug!(%id, %error, "read failed");
                        self.handle_eof(socket);
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

    /// The peer closed its side, or the read failed: no more reads.
    fn handle_eof(self: &Arc<Self>, socket: &mut Socket) {
        socket.eof = true;
        let id = socket.id;
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
        let shared = Shared::new(front, Frozen, options, []);

        let mut old = shared.accept_socket(None).expect("accepted");
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
        let new = shared.accept_socket(None).expect("accepted");
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
