//! Write-through: a handle that gives a connection output (a send, a
//! reply, a request) writes the batch to the socket itself when the
//! socket's task is idle, instead of waking that task to do it. That
//! takes a task wake-up, two steps and two waits off every message an
//! application sends on a quiet connection (its round trip).
//!
//! A connection is written through at most once per step of its socket
//! task (a request, then the task reads the reply and steps: the next
//! request is written through; a stream of sends without a yield has its
//! first written through and the rest batched by the task), only while
//! that task holds no batch of its own and is not closing, and by one
//! handle at a time
//! (`Entry::through_busy`): bytes leave in the core's order. What the
//! socket does not take at once (a full send buffer, an error) is handed
//! to the socket task as a leftover it writes before anything newer.
//!
//! "Handle" means any caller of [`Shared::with`] and its untimed variant
//! outside a socket task: the application's, and the driver's own timer
//! task, which so writes its heartbeats itself.

use super::Machine;
use super::driver::{Runtime, Shared, State, wake};
use super::outgoing::Outgoing;
use super::socket::discard_output;
use crate::connection::Unsealed;
use crate::node::ConnectionId;
use crate::time::Now;
use std::boxed::Box;
use std::io::{self, IoSlice};
use std::sync::{Arc, Weak};
use std::vec::Vec;

/// A socket any thread may write to without blocking, registered by an
/// adapter whose socket allows it ([`Shared::write_through`]).
///
/// # Examples
///
/// ```
/// use bus_proto::host::TryWrite;
/// use std::io::{self, IoSlice, Write};
/// use std::net::TcpStream;
///
/// /// A non-blocking std socket, as a readiness-based adapter holds it.
/// struct Plain(TcpStream);
///
/// impl TryWrite for Plain {
///     fn try_write(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
///         (&self.0).write_vectored(slices)
///     }
/// }
/// ```
pub trait TryWrite: Send + Sync + 'static {
    /// Writes what the socket takes now of `slices`, in order, without
    /// waiting: the count written, or an error (`WouldBlock` when it takes
    /// nothing now). May be called from any thread, never by two at once
    /// for one socket. It must not panic: the connection's other writers
    /// wait until it returns.
    fn try_write(&self, slices: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// Batches taken for write-through under the lock, written after it is
/// released. Kept in the driver's state between uses, so writing through
/// allocates nothing in steady state.
#[derive(Default)]
pub(super) struct Through {
    /// Each batch is taken out (`None`) as it is written. At most one per
    /// connection, so bounded by the sockets.
    batches: Vec<(ConnectionId, Option<Unsealed>, Arc<dyn TryWrite>)>,
    /// The segment list each batch is sealed into.
    out: Outgoing,
    /// How each batch ended, applied once the lock is taken again; as long
    /// as `batches`, emptied at each use.
    outcomes: Vec<(ConnectionId, Outcome)>,
}

impl core::fmt::Debug for Through {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Through")
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl Through {
    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Held across a handle's call and [`OnUnwind::finished`] at its end: if
/// the call unwinds instead after taking batches to write through (with
/// the lock held), their connections end, as after a failed write, rather
/// than wait on a write nobody will finish or lose those messages
/// unnoticed.
pub(super) struct OnUnwind<'a, M: Machine, R: Runtime>(pub(super) &'a Arc<Shared<M, R>>);

impl<M: Machine, R: Runtime> OnUnwind<'_, M, R> {
    /// The call returned: nothing to undo.
    pub(super) fn finished(self) {
        core::mem::forget(self);
    }
}

impl<M: Machine, R: Runtime> Drop for OnUnwind<'_, M, R> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        let taken = core::mem::take(&mut state.through);
        self.0.end_taken(&mut state, taken);
    }
}

/// [`OnUnwind`] for the writing itself, outside the lock: batches still
/// held when it is dropped were not handed back (a panic unwound).
struct Writing<'a, M: Machine, R: Runtime> {
    shared: &'a Arc<Shared<M, R>>,
    through: Through,
}

impl<M: Machine, R: Runtime> Drop for Writing<'_, M, R> {
    fn drop(&mut self) {
        if !self.through.is_empty() {
            let mut state = self.shared.lock();
            let taken = core::mem::take(&mut self.through);
            self.shared.end_taken(&mut state, taken);
        }
    }
}

/// Whether a handle may write `id`'s output itself now.
pub(super) fn eligible<M>(state: &State<M>, id: ConnectionId) -> bool {
    !state.forced
        && state.sockets.get(&id).is_some_and(|e| {
            e.writer.is_some()
                && !e.task_turn
                && !e.through_busy
                && !e.closing
                && e.leftover.is_none()
        })
}

/// A socket registered for write-through. Weak: the socket task owns the
/// socket, which closes when the task ends, whatever the registry holds.
#[derive(Clone)]
pub(super) struct Writer(Weak<dyn TryWrite>);

impl core::fmt::Debug for Writer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Writer")
    }
}

/// How one written-through batch ended.
enum Outcome {
    /// Written whole: its buffer, if it came back, for the next batch.
    Written(Option<bytes::BytesMut>),
    /// The rest, for the socket task.
    Leftover(Box<Outgoing>),
}

impl<M: Machine, R: Runtime> Shared<M, R> {
    /// Lets the application's handles write `socket`'s output to `writer`
    /// themselves while the socket's task is idle, on the threads where
    /// [`Runtime::writes_through_here`] says so. An adapter calls it before
    /// its socket task's first step, for a socket any thread may write to
    /// without blocking (a readiness-based TCP socket). A socket under a
    /// transport layer (TLS, WebSocket) writes the layer's bytes, not the
    /// frames: it is not registered.
    pub fn write_through(&self, socket: &super::Socket, writer: Arc<dyn TryWrite>) {
        if socket.is_layered() {
            return;
        }
        if let Some(entry) = self.lock().sockets.get_mut(&socket.id()) {
            entry.writer = Some(Writer(Arc::downgrade(&writer)));
        }
    }

    /// Takes `id`'s next batch to write through, under the lock; false if
    /// there was none. `now` is the time of the call, read here if the
    /// caller has not.
    pub(super) fn take_through(
        &self,
        state: &mut State<M>,
        id: ConnectionId,
        now: &mut Option<Now>,
    ) -> bool {
        let writer = state.sockets.get(&id).and_then(|e| e.writer.as_ref());
        // Gone if the socket task ended without reaching `closed`.
        let Some(writer) = writer.and_then(|Writer(w)| w.upgrade()) else {
            return false;
        };
        let now = *now.get_or_insert_with(|| self.runtime.now());
        let Some(batch) = state.machine.poll_unsealed_for(now, id) else {
            return false;
        };
        if let Some(entry) = state.sockets.get_mut(&id) {
            entry.through_busy = true;
            // Once per turn of the socket task: until it next steps
            // (after a read, say), later output waits for it, so an
            // application sending message after message without yielding
            // has them written in batches, not a write each.
            entry.task_turn = true;
        }
        state.through.batches.push((id, Some(batch), writer));
        state.more_space();
        true
    }

    /// Writes the batches taken under the lock (which the caller has
    /// released), then hands back their buffers, or what the sockets did
    /// not take to their tasks.
    pub(super) fn finish_through(self: &Arc<Self>, through: Through) {
        let mut writing = Writing {
            shared: self,
            through,
        };
        let Through {
            batches,
            out,
            outcomes,
        } = &mut writing.through;
        for (id, batch, writer) in batches.iter_mut() {
            let Some(batch) = batch.take() else { continue };
            out.load_unsealed(batch);
            let outcome = match write_now(out, &**writer) {
                true => Outcome::Written(out.take_spare()),
                false => Outcome::Leftover(Box::new(core::mem::take(out))),
            };
            outcomes.push((*id, outcome));
        }
        // The sockets are let go of before the lock is taken.
        batches.clear();
        let mut through = core::mem::take(&mut writing.through);
        drop(writing);
        let mut state = self.lock();
        for (id, outcome) in through.outcomes.drain(..) {
            let State {
                machine,
                sockets,
                ports,
                ..
            } = &mut *state;
            let Some(entry) = sockets.get_mut(&id) else {
                continue;
            };
            entry.through_busy = false;
            // Bytes written once the core had closed the connection are
            // its last words: the socket lingers for them.
            entry.wrote_closing |= entry.closing;
            let more = match outcome {
                Outcome::Written(spare) => {
                    if let Some(spare) = spare {
                        machine.reuse_batch_buffer(spare);
                    }
                    entry.closing || machine.has_output(id)
                }
                Outcome::Leftover(rest) => {
                    entry.leftover = Some(rest);
                    true
                }
            };
            if more {
                entry.task_turn = true;
                wake(sockets, ports, id);
            }
        }
        // Hand the (empty) lists back for the next write-through.
        if state.through.batches.capacity() == 0 {
            state.through = through;
        }
    }
}

impl<M: Machine, R: Runtime> Shared<M, R> {
    /// Ends the connections whose batches a panicking handle had taken:
    /// what reached their sockets is unknown, so they end as after a
    /// failed write, and their tasks are woken to close them.
    fn end_taken(self: &Arc<Self>, state: &mut State<M>, mut taken: Through) {
        if taken.is_empty() {
            return;
        }
        let now = self.runtime.now();
        for (id, ..) in taken.batches.drain(..) {
            if let Some(entry) = state.sockets.get_mut(&id) {
                entry.through_busy = false;
                entry.task_turn = true;
            }
            state.machine.handle_eof(now, id);
            discard_output(&mut state.machine, now, id);
        }
        self.after(state, None);
    }
}

/// Writes the loaded batch while the socket takes it; true once it is all
/// written. An error leaves the rest to the socket task, whose own write
/// then fails and ends the connection as any failed write does.
fn write_now(out: &mut Outgoing, writer: &dyn TryWrite) -> bool {
    while !out.is_done() {
        match writer.try_write(&out.slices()) {
            Ok(0) => return false,
            Ok(written) => out.advance(written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::TryWrite;
    use crate::connection::{Connection, Event};
    use crate::crypto::PeerId;
    use crate::host::socket::tests::{
        Frozen, HoardingFactory, frozen_dialer, node_driver_as, woken_now,
    };
    use crate::host::{Completion, NodeFront, Runtime, Shared, Socket, Step, Transport};
    use crate::node::NodeParams;
    use bytes::Bytes;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::boxed::Box;
    use std::io::{self, IoSlice};
    use std::sync::{Arc, Mutex};
    use std::vec;
    use std::vec::Vec;

    /// Runs once, inside the next write.
    type Hook = Box<dyn FnOnce() + Send>;

    /// A socket's send buffer that takes `room` more bytes, then refuses.
    #[derive(Default)]
    struct Pipe {
        bytes: Mutex<Vec<u8>>,
        room: AtomicUsize,
        during_write: Mutex<Option<Hook>>,
    }

    impl Pipe {
        fn take(&self) -> Vec<u8> {
            core::mem::take(&mut *self.bytes.lock().unwrap())
        }
    }

    impl TryWrite for Pipe {
        fn try_write(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
            let hook = self.during_write.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
            let room = self.room.load(Ordering::Relaxed);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut bytes = self.bytes.lock().unwrap();
            let mut written = 0;
            for slice in slices {
                let take = slice.len().min(room - written);
                bytes.extend_from_slice(&slice[..take]);
                written += take;
            }
            self.room.fetch_sub(written, Ordering::Relaxed);
            Ok(written)
        }
    }

    /// Replica 1's driver with a socket accepted from replica 0 (a
    /// sans-IO dialer here), registered for write-through to `pipe`, the
    /// handshake done and the socket task idle.
    struct Accepted {
        shared: Arc<Shared<NodeFront, Frozen>>,
        socket: Socket,
        pipe: Arc<Pipe>,
        dialer: Connection,
    }

    impl Accepted {
        fn new() -> Self {
            let shared = node_driver_as(NodeParams {
                cluster: 1,
                replica: 1,
                replica_count: 2,
                accept_clients: false,
            });
            let socket = shared
                .accept_socket(None, &Transport::tcp())
                .expect("accepted");
            let pipe = Arc::new(Pipe {
                room: AtomicUsize::new(usize::MAX),
                ..Pipe::default()
            });
            shared.write_through(&socket, Arc::clone(&pipe) as Arc<dyn TryWrite>);
            // The node's key (`node_driver_as`).
            let dialer = frozen_dialer([5; 32], PeerId::Replica(0), 1);
            let mut accepted = Accepted {
                shared,
                socket,
                pipe,
                dialer,
            };
            for _ in 0..4 {
                accepted.carry_to_node();
                accepted.task_writes();
                accepted.carry_to_dialer();
            }
            assert!(accepted.dialer.is_established(), "no handshake");
            assert!(accepted.shared.is_connected(0), "replica 0 not registered");
            accepted
        }

        /// The dialer's output, read by the socket task.
        fn carry_to_node(&mut self) {
            let mut bytes = Vec::new();
            while let Some(transmit) = self.dialer.poll_transmit(Frozen.now().mono) {
                transmit.write_to(&mut bytes);
            }
            if bytes.is_empty() {
                return;
            }
            assert!(matches!(
                self.shared.step(&mut self.socket),
                Step::Run { read: true, .. }
            ));
            let (_, into) = self.socket.io_deferred();
            into.expect("the receive buffer")
                .buffer()
                .extend_from_slice(&bytes);
            let read = Completion::Read(Ok(bytes.len()), None);
            assert!(self.shared.complete(&mut self.socket, read).is_continue());
        }

        /// The socket task steps and writes everything it loads, as its
        /// own writes do (they wait for room); how many batches it wrote.
        fn task_writes(&mut self) -> usize {
            let mut wrote = 0;
            while let Step::Run { write: true, .. } = self.shared.step(&mut self.socket) {
                let (out, _) = self.socket.io_deferred();
                let mut bytes = self.pipe.bytes.lock().unwrap();
                let written: usize = out.slices().iter().map(|s| s.len()).sum();
                for slice in out.slices().iter() {
                    bytes.extend_from_slice(slice);
                }
                drop(bytes);
                out.advance(written);
                let wrote_ok = Completion::Wrote(Ok(()));
                assert!(
                    self.shared
                        .complete(&mut self.socket, wrote_ok)
                        .is_continue()
                );
                wrote += 1;
            }
            wrote
        }

        /// What reached the pipe, read by the dialer: the bodies of the
        /// messages in it.
        fn carry_to_dialer(&mut self) -> Vec<Bytes> {
            let bytes = self.pipe.take();
            self.dialer.handle_input(Frozen.now().mono, &bytes);
            let mut bodies = Vec::new();
            while let Some(event) = self.dialer.poll_event() {
                match event {
                    Event::Message(frame) => bodies.push(frame.body),
                    Event::Established { .. } => {}
                    Event::Closed { reason } => panic!("closed: {reason:?}"),
                }
            }
            bodies
        }

        fn send(&self, body: &'static [u8]) {
            self.shared
                .send(0, 7, Bytes::from_static(body))
                .expect("queued");
        }
    }

    /// A send on a connection whose socket task is idle is written by the
    /// sender: the bytes are in the socket when the call returns, and the
    /// task is not woken.
    #[test]
    fn a_send_on_an_idle_socket_is_written_by_the_sender() {
        let mut accepted = Accepted::new();
        let id = accepted.socket.id();
        let _ = woken_now(&accepted.shared, id);
        accepted.send(b"through");
        assert!(!woken_now(&accepted.shared, id), "the task was woken");
        assert_eq!(accepted.task_writes(), 0, "the task had something to write");
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"through")]
        );
    }

    /// Once a handle wrote through, later output waits for the socket
    /// task's next step and goes out in one batch: an application sending
    /// without yielding gets batches, not a write per message. Once the
    /// task has stepped, the next send is written through again.
    #[test]
    fn one_write_through_per_step_of_the_socket_task() {
        let mut accepted = Accepted::new();
        let id = accepted.socket.id();
        let _ = woken_now(&accepted.shared, id);
        accepted.send(b"first");
        assert!(!woken_now(&accepted.shared, id));
        accepted.send(b"second");
        accepted.send(b"third");
        assert!(woken_now(&accepted.shared, id), "the task was not told");
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"first")]
        );
        assert_eq!(accepted.task_writes(), 1, "not one batch");
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"second"), Bytes::from_static(b"third")]
        );
        accepted.send(b"fourth");
        assert!(!woken_now(&accepted.shared, id));
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"fourth")]
        );
    }

    /// What the socket does not take at once is left to its task, which
    /// writes it before anything sent later: bytes leave whole and in
    /// order.
    #[test]
    fn a_partial_write_through_is_finished_by_the_task_before_later_output() {
        let mut accepted = Accepted::new();
        let id = accepted.socket.id();
        let _ = woken_now(&accepted.shared, id);
        accepted.pipe.room.store(100, Ordering::Relaxed);
        accepted.send(&[1; 300]);
        assert_eq!(accepted.pipe.bytes.lock().unwrap().len(), 100);
        assert!(woken_now(&accepted.shared, id), "the task was not told");
        // The leftover goes first: a later send is not written through.
        accepted.pipe.room.store(usize::MAX, Ordering::Relaxed);
        accepted.send(b"later");
        assert_eq!(accepted.pipe.bytes.lock().unwrap().len(), 100);
        assert_eq!(accepted.task_writes(), 2);
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(&[1; 300]), Bytes::from_static(b"later")]
        );
        // Idle again: the next send is written through.
        accepted.send(b"again");
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"again")]
        );
    }

    /// While the socket task holds a batch (here the leftover of a write
    /// the socket refused), a send wakes the task instead of writing: its
    /// bytes follow the task's batch.
    #[test]
    fn a_socket_task_holding_a_batch_keeps_the_output_in_order() {
        let mut accepted = Accepted::new();
        let id = accepted.socket.id();
        accepted.pipe.room.store(0, Ordering::Relaxed);
        accepted.send(b"first");
        assert!(accepted.pipe.bytes.lock().unwrap().is_empty());
        // The task loads the leftover and has not written it yet.
        assert!(matches!(
            accepted.shared.step(&mut accepted.socket),
            Step::Run { write: true, .. }
        ));
        accepted.pipe.room.store(usize::MAX, Ordering::Relaxed);
        let _ = woken_now(&accepted.shared, id);
        accepted.send(b"second");
        assert!(accepted.pipe.bytes.lock().unwrap().is_empty());
        assert!(woken_now(&accepted.shared, id), "the task was not told");
        assert_eq!(accepted.task_writes(), 2);
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")]
        );
    }

    /// A send while another handle writes the connection through is left
    /// to the socket task, which the writer wakes once it is done: the
    /// second message follows the first.
    #[test]
    fn a_send_during_a_write_through_follows_it() {
        let mut accepted = Accepted::new();
        let id = accepted.socket.id();
        let shared = Arc::clone(&accepted.shared);
        let send_inner = move || {
            let inner = Bytes::from_static(b"inner");
            shared.send(0, 7, inner).expect("queued");
            // The writer wakes the task once done, not this send.
            assert!(
                !woken_now(&shared, id),
                "the busy connection's task was woken"
            );
        };
        *accepted.pipe.during_write.lock().unwrap() = Some(Box::new(send_inner));
        let _ = woken_now(&accepted.shared, id);
        accepted.send(b"outer");
        assert!(woken_now(&accepted.shared, id), "the task was not told");
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"outer")]
        );
        assert_eq!(accepted.task_writes(), 1);
        assert_eq!(
            accepted.carry_to_dialer(),
            vec![Bytes::from_static(b"inner")]
        );
    }

    /// A writer that panics mid-write leaves its connection's byte stream
    /// unknown: the connection ends, as after a failed write, and its task
    /// is woken to close the socket, instead of waiting on a writer that
    /// will never finish.
    #[test]
    fn a_panic_while_writing_through_ends_the_connection() {
        let accepted = Accepted::new();
        let id = accepted.socket.id();
        let _ = woken_now(&accepted.shared, id);
        let panics = || panic!("a writer failed");
        *accepted.pipe.during_write.lock().unwrap() = Some(Box::new(panics));
        let sent = std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| {
            accepted.send(b"lost");
        }));
        assert!(sent.is_err(), "the writer did not panic");
        assert!(
            !accepted.shared.is_connected(0),
            "the connection is still up"
        );
        assert!(woken_now(&accepted.shared, id), "the task was not told");
        let state = accepted.shared.lock();
        let entry = state
            .sockets
            .get(&id)
            .expect("registered until the task ends");
        assert!(entry.closing && !entry.through_busy);
    }

    /// A socket under a transport layer writes the layer's bytes: frames
    /// are never written through to it.
    #[test]
    fn a_layered_socket_is_not_written_through() {
        let shared = node_driver_as(NodeParams {
            cluster: 1,
            replica: 1,
            replica_count: 2,
            accept_clients: false,
        });
        let pending = Arc::new(AtomicUsize::new(0));
        let layered = Transport::layered(Arc::new(HoardingFactory(pending)));
        let socket = shared.accept_socket(None, &layered).expect("accepted");
        let pipe = Arc::new(Pipe::default());
        shared.write_through(&socket, pipe as Arc<dyn TryWrite>);
        let state = shared.lock();
        let entry = state.sockets.get(&socket.id()).expect("registered");
        assert!(entry.writer.is_none());
    }
}
