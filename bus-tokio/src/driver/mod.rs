//! Runs a sans-IO state machine (a node or a client) on tokio: one task per
//! socket, one timer task, dial tasks. No protocol decisions live here.
//!
//! The machine sits behind one mutex, held only for synchronous calls into
//! the core, never across an `.await`. Each socket task moves a read chunk
//! in, or takes its connection's next batch out, per lock; the core's ready
//! list tells which socket tasks to wake after any input.

mod slots;
mod socket;

use crate::clock::Clock;
use bus_proto::connection::Transmit;
use bus_proto::node::{Action, ConnectionId};
use bus_proto::time::{Instant, Now};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use slots::Slots;
pub(crate) use socket::drive;

/// What the driver needs from a state machine. Implemented by the node and
/// client wrappers, which also decide what happens to their events.
pub(crate) trait Machine: Send + 'static {
    /// Lends `id`'s receive buffer (partial frames included) to the socket
    /// task, which reads into it without the lock and then hands it back
    /// with [`Machine::handle_read`].
    fn take_read_buffer(&mut self, id: ConnectionId) -> Option<BytesMut>;
    /// Returns the buffer with new bytes appended, and processes them.
    fn handle_read(&mut self, now: Now, id: ConnectionId, buffer: BytesMut);
    fn handle_eof(&mut self, now: Now, id: ConnectionId);
    fn handle_timeout(&mut self, now: Now);
    /// The socket for `Connect` is open; false if the id is stale.
    fn connected(&mut self, now: Now, id: ConnectionId) -> bool;
    fn connect_failed(&mut self, now: Now, id: ConnectionId);
    fn poll_transmit_for(&mut self, now: Now, id: ConnectionId) -> Option<Transmit>;
    fn poll_ready(&mut self) -> Option<ConnectionId>;
    fn poll_action(&mut self) -> Option<Action>;
    fn poll_timeout(&self) -> Option<Instant>;
    /// Hands the core's events to the application.
    fn deliver(&mut self);
    /// True while the application's event queue is full: socket tasks stop
    /// reading, so a slow application pushes back on its peers through TCP.
    fn reading_paused(&self) -> bool;
    /// Connections the core still holds.
    fn connections(&self) -> usize;
    /// A dial's TCP connect failed (the core has been told).
    fn dial_error(&mut self, _error: &std::io::Error) {}
}

/// A socket task's entry.
struct Slot {
    wake: Arc<Notify>,
    /// The core said `Disconnect`: write what was handed out, then close.
    closing: bool,
    /// In `State::paused`.
    paused: bool,
}

/// Everything behind the lock.
pub(crate) struct State<M> {
    pub(crate) machine: M,
    sockets: Slots<Slot>,
    /// Replica addresses, by id.
    addresses: HashMap<u8, SocketAddr>,
    /// What the timer task sleeps until.
    timer_at: Option<Instant>,
    /// Socket tasks waiting for room in the application's event queue, at
    /// most one entry per socket.
    paused: Vec<ConnectionId>,
    /// Shutdown's deadline passed: every socket task exits now.
    forced: bool,
    /// The timer task and listeners stop.
    stopped: bool,
    /// Listening sockets still open.
    listeners: usize,
}

/// Shared by the handle, the socket tasks, the timer task and listeners.
pub(crate) struct Shared<M> {
    pub(crate) clock: Clock,
    state: Mutex<State<M>>,
    handle: tokio::runtime::Handle,
    timer: Notify,
    /// A socket task ended, or the driver stopped.
    changed: Notify,
    /// A socket task took a batch: a send queue has room again.
    space: Notify,
    /// A replica's address was set.
    address_set: Notify,
    read_chunk: usize,
    /// How long a closing socket may take to write its last batch.
    linger: std::time::Duration,
}

impl<M: Machine> Shared<M> {
    /// Starts the timer task. Call inside a tokio runtime.
    pub(crate) fn start(
        machine: M,
        clock: Clock,
        handle: tokio::runtime::Handle,
        read_chunk: usize,
        linger: std::time::Duration,
        addresses: impl IntoIterator<Item = (u8, SocketAddr)>,
    ) -> Arc<Self> {
        let shared = Arc::new(Shared {
            clock,
            state: Mutex::new(State {
                machine,
                sockets: Slots::default(),
                addresses: addresses.into_iter().collect(),
                timer_at: None,
                paused: Vec::new(),
                forced: false,
                stopped: false,
                listeners: 0,
            }),
            handle,
            timer: Notify::new(),
            changed: Notify::new(),
            space: Notify::new(),
            address_set: Notify::new(),
            read_chunk: read_chunk.max(4096),
            linger,
        });
        shared.handle.spawn(timers(Arc::clone(&shared)));
        // The core may already want to dial.
        shared.with(|_, _| ());
        shared
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State<M>> {
        // The core does not panic on input; if the application panicked
        // while holding the lock, the state is still the core's own.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the machine, then carries out what it asked for.
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut M, Now) -> R) -> R {
        self.with_from(None, f)
    }

    /// [`Shared::with`] for calls that take no time (sends): skips reading
    /// the clocks.
    pub(crate) fn with_untimed<R>(self: &Arc<Self>, f: impl FnOnce(&mut M) -> R) -> R {
        let mut state = self.lock();
        let result = f(&mut state.machine);
        self.after(&mut state, None);
        result
    }

    /// [`Shared::with`] from `caller`'s socket task, which checks its own
    /// output before it waits again and so is not woken.
    pub(crate) fn with_from<R>(
        self: &Arc<Self>,
        caller: Option<ConnectionId>,
        f: impl FnOnce(&mut M, Now) -> R,
    ) -> R {
        let mut state = self.lock();
        let result = f(&mut state.machine, self.clock.now());
        self.after(&mut state, caller);
        result
    }

    /// After any input: wake sockets with output (but not `caller`), open
    /// and close sockets, deliver events, and move the timer earlier if
    /// needed.
    pub(crate) fn after(self: &Arc<Self>, state: &mut State<M>, caller: Option<ConnectionId>) {
        while let Some(id) = state.machine.poll_ready() {
            if Some(id) == caller {
                continue;
            }
            if let Some(slot) = state.sockets.get(&id) {
                slot.wake.notify_one();
            }
        }
        while let Some(action) = state.machine.poll_action() {
            match action {
                Action::Connect {
                    connection,
                    replica,
                } => {
                    let wake = self.register(state, connection);
                    self.handle
                        .spawn(dial(Arc::clone(self), connection, replica, wake));
                }
                Action::Disconnect { connection } => {
                    if let Some(slot) = state.sockets.get_mut(&connection) {
                        slot.closing = true;
                        slot.wake.notify_one();
                    }
                }
            }
        }
        state.machine.deliver();
        if let Some(at) = state.machine.poll_timeout() {
            if state.timer_at.is_none_or(|t| at < t) {
                state.timer_at = Some(at);
                self.timer.notify_one();
            }
        }
    }

    /// Retries `attempt` while it reports a full queue (`full`), waking
    /// each time a socket task takes a batch off a queue.
    pub(crate) async fn retry_when_full<T, E>(
        &self,
        mut attempt: impl FnMut() -> Result<T, E>,
        full: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        // The common case, a queue with room, registers no waiter.
        match attempt() {
            Err(error) if full(&error) => {}
            result => return result,
        }
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match attempt() {
                Err(error) if full(&error) && !self.lock().stopped => space.await,
                result => return result,
            }
        }
    }

    /// Records a socket task for `id`; returns its wake signal.
    pub(crate) fn register(&self, state: &mut State<M>, id: ConnectionId) -> Arc<Notify> {
        let wake = Arc::new(Notify::new());
        state.sockets.insert(
            id,
            Slot {
                wake: Arc::clone(&wake),
                closing: false,
                paused: false,
            },
        );
        wake
    }

    /// Spawns the task for an open socket registered under `id`.
    pub(crate) fn spawn_socket(
        self: &Arc<Self>,
        id: ConnectionId,
        stream: TcpStream,
        wake: Arc<Notify>,
    ) {
        self.handle.spawn(drive(Arc::clone(self), id, stream, wake));
    }

    /// Sets where replica `replica` listens; the next dial, or one waiting
    /// for it, uses it.
    pub(crate) fn set_address(&self, replica: u8, address: SocketAddr) {
        self.lock().addresses.insert(replica, address);
        self.address_set.notify_waiters();
    }

    /// Wakes every task waiting for room in the event queue.
    pub(crate) fn resume_readers(state: &mut State<M>) {
        let State {
            paused, sockets, ..
        } = state;
        for id in paused.drain(..) {
            if let Some(slot) = sockets.get_mut(&id) {
                slot.paused = false;
                slot.wake.notify_one();
            }
        }
    }

    /// A socket task ended.
    fn closed(&self, id: ConnectionId) {
        self.lock().sockets.remove(&id);
        self.changed.notify_waiters();
        self.space.notify_waiters();
    }

    /// True once the socket task should stop waiting and close.
    fn should_close(&self, id: ConnectionId) -> bool {
        let state = self.lock();
        state.forced || state.sockets.get(&id).is_none_or(|s| s.closing)
    }

    /// Waits until no socket task runs and the core holds no connection.
    async fn idle(&self) {
        self.wait(|state| {
            state.sockets.is_empty() && (state.forced || state.machine.connections() == 0)
        })
        .await;
    }

    /// After the core started shutting down: waits until every connection
    /// finished or `deadline` passed, then closes the rest and stops the
    /// timer and listeners. Returns how many sockets it had to close.
    pub(crate) async fn drain(&self, deadline: std::time::Duration) -> usize {
        let drained = tokio::time::timeout(deadline, self.idle()).await.is_ok();
        let stragglers = if drained {
            0
        } else {
            // Connections the core still holds; sockets that are only
            // flushing a close the core already counted are not stragglers.
            let open = self.lock().machine.connections();
            self.force_close();
            self.idle().await;
            open
        };
        self.stop();
        // Shutdown returns once the listening ports are free again.
        self.wait(|state| state.listeners == 0).await;
        stragglers
    }

    /// A listener task started.
    pub(crate) fn listener_opened(&self) {
        self.lock().listeners += 1;
    }

    /// A listener task ended and closed its socket.
    pub(crate) fn listener_closed(&self) {
        self.lock().listeners -= 1;
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds; rechecked whenever a socket task or
    /// listener ends.
    async fn wait(&self, done: impl Fn(&State<M>) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.lock()) {
                return;
            }
            changed.await;
        }
    }

    /// Makes every socket task close its socket now.
    fn force_close(&self) {
        let mut state = self.lock();
        state.forced = true;
        for slot in state.sockets.values() {
            slot.wake.notify_one();
        }
        drop(state);
        self.space.notify_waiters();
    }

    /// Stops the timer task.
    fn stop(&self) {
        self.lock().stopped = true;
        self.timer.notify_one();
        self.changed.notify_waiters();
        self.space.notify_waiters();
    }

    /// Waits until [`Shared::stop`].
    pub(crate) async fn stopped(&self) {
        self.wait(|state| state.stopped).await;
    }
}

/// Held by the application's handles: when the last one is dropped, every
/// socket closes and the driver's tasks end.
pub(crate) struct Owner<M: Machine>(pub(crate) Arc<Shared<M>>);

impl<M: Machine> std::ops::Deref for Owner<M> {
    type Target = Arc<Shared<M>>;
    fn deref(&self) -> &Arc<Shared<M>> {
        &self.0
    }
}

impl<M: Machine> Drop for Owner<M> {
    fn drop(&mut self) {
        self.0.force_close();
        self.0.stop();
    }
}

/// Sleeps until the core's next deadline and runs its timers.
async fn timers<M: Machine>(shared: Arc<Shared<M>>) {
    let mut ran_due = false;
    loop {
        let at = {
            let mut state = shared.lock();
            if state.stopped {
                return;
            }
            state.timer_at = state.machine.poll_timeout();
            state.timer_at
        };
        match at {
            // Due already: the timer wheel would add up to a millisecond
            // (a new client's first dial, say). Once in a row only, so a
            // deadline the core failed to move cannot spin this task.
            Some(at) if !ran_due && at <= shared.clock.now().mono => {
                ran_due = true;
                shared.with(|m, now| m.handle_timeout(now));
                continue;
            }
            Some(at) => {
                ran_due = false;
                tokio::select! {
                    () = tokio::time::sleep_until(shared.clock.deadline(at)) => {
                        shared.with(|m, now| m.handle_timeout(now));
                    }
                    () = shared.timer.notified() => {}
                }
            }
            None => {
                ran_due = false;
                shared.timer.notified().await;
            }
        }
    }
}

/// Opens the socket for an `Action::Connect`, then runs it. A replica
/// whose address is not known yet is dialled as soon as
/// [`Shared::set_address`] names it, within the core's dial deadline.
async fn dial<M: Machine>(
    shared: Arc<Shared<M>>,
    id: ConnectionId,
    replica: u8,
    wake: Arc<Notify>,
) {
    let address = loop {
        let named = shared.address_set.notified();
        tokio::pin!(named);
        named.as_mut().enable();
        if let Some(&address) = shared.lock().addresses.get(&replica) {
            break address;
        }
        tracing::debug!(%id, replica, "waiting for the dialled replica's address");
        tokio::select! {
            () = named => {}
            () = wake.notified() => {
                // The core abandoned the dial (its deadline passed).
                if shared.should_close(id) {
                    shared.closed(id);
                    return;
                }
            }
        }
    };
    let connect = TcpStream::connect(address);
    tokio::pin!(connect);
    let result = loop {
        tokio::select! {
            result = &mut connect => break result,
            () = wake.notified() => {
                // The core abandoned the dial (its deadline passed).
                if shared.should_close(id) {
                    shared.closed(id);
                    return;
                }
            }
        }
    };
    match result {
        Ok(stream) => {
            if shared.with(|m, now| m.connected(now, id)) {
                drive(shared, id, stream, wake).await;
            } else {
                shared.closed(id);
            }
        }
        Err(error) => {
            tracing::debug!(%id, %address, %error, "connect failed");
            shared.with(|m, now| {
                m.connect_failed(now, id);
                m.dial_error(&error);
            });
            shared.closed(id);
        }
    }
}
