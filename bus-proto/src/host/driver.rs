//! The state an adapter's handles and tasks share, and every decision the
//! adapter's tasks would otherwise each make: when a socket reads, writes,
//! pauses or closes, who is woken, when the timer fires, how shutdown
//! drains.

use super::Machine;
use super::layer::{StreamLayer, Transport};
use super::outgoing::Outgoing;
use super::signal::{Signal, Waiters};
use super::slots::Slots;
use super::socket::Socket;
use super::through::{self, Through, Writer};
use crate::node::{Action, ConnectionId};
use crate::time::{Instant, Now};
use core::future::{Future, poll_fn};
use core::net::SocketAddr;
use core::pin::pin;
use core::task::{Context, Poll};
use core::time::Duration;
use std::boxed::Box;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::vec::Vec;

/// What the driver needs from an async runtime. The adapter implements it
/// on a small handle (its clock origin, its executor).
pub trait Runtime: Send + Sync + Sized + 'static {
    /// Monotonic and wall-clock time, now.
    fn now(&self) -> Now;
    /// Completes at `at` on the monotonic clock of [`Runtime::now`] (at
    /// once if it has passed).
    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()>;
    /// Starts a task for the dial registered under `id`: wait for the
    /// address ([`Shared::dial_address`]), connect while racing
    /// [`Shared::abandoned`], hand the outcome to [`Shared::dialled`], and
    /// run the socket it returns. Called with the driver's lock held:
    /// spawn, do not run.
    fn dial<M: Machine>(shared: &Arc<Shared<M, Self>>, id: ConnectionId, replica: u8);
    /// Runs `job` on a thread where blocking is allowed (a client
    /// identity's file writes), then `done` with its result on a task of
    /// this runtime. Called without the driver's lock, so a runtime may
    /// also run both inline. If `done` is dropped uncalled (the job
    /// panicked, the runtime shut down), its drop reports the failure.
    fn run_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    );
    /// Whether a handle called on this thread writes an idle socket's
    /// output itself (see [`Shared::write_through`]) rather than waking
    /// the socket's task. By default it does not.
    fn writes_through_here(&self) -> bool {
        false
    }
}

/// Driver settings.
#[derive(Clone, Copy, Debug)]
pub struct SharedOptions {
    /// Bytes each socket reads at once into its reused buffer (at least
    /// 4 KiB).
    pub read_chunk: usize,
    /// How long a closing socket may take to write its last batch.
    pub linger: Duration,
}

impl SharedOptions {
    /// A client's settings: reads of up to 128 KiB, and `close_grace` to write the
    /// last batch.
    pub fn client(config: &crate::config::ValidConfig) -> Self {
        SharedOptions {
            read_chunk: 128 << 10,
            linger: config.close_grace,
        }
    }
}

/// A socket task's registry entry.
#[derive(Debug, Default)]
pub(super) struct Entry {
    pub(super) wake: Signal,
    /// The core said `Disconnect`: write what was handed out, then close.
    pub(super) closing: bool,
    /// In `State::paused`.
    pub(super) paused: bool,
    /// A dial waiting for its replica's address.
    addressless: bool,
    /// The replica a dial connects to.
    dialing: Option<u8>,
    /// In a lingering close (counted in `State::draining`).
    pub(super) draining: bool,
    /// The QUIC port carrying this connection; it has no socket task.
    pub(super) port: Option<usize>,
    /// A QUIC connection's span (a socket task holds its own): entered
    /// while its port works on it. Only QUIC ports read these two.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub(super) span: Option<tracing::Span>,
    /// The span records the peer already.
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    pub(super) named: bool,
    /// Queued in its port's `ready` list.
    pub(super) port_ready: bool,
    /// The socket, for handles to write through ([`Shared::write_through`]).
    pub(super) writer: Option<Writer>,
    /// The socket task steps before a handle may write through: it holds
    /// a batch, was woken to look for one, or a handle wrote through since
    /// its last step.
    pub(super) task_turn: bool,
    /// A handle is writing a batch through (released under the lock).
    pub(super) through_busy: bool,
    /// What a write-through left unwritten, for the socket task to write
    /// first.
    pub(super) leftover: Option<Box<Outgoing>>,
    /// A write-through wrote after the core closed the connection.
    pub(super) wrote_closing: bool,
}

#[cfg(feature = "quic")]
impl Entry {
    /// A connection carried by QUIC port `port`.
    pub(super) fn on_port(port: usize, span: tracing::Span) -> Self {
        Entry {
            port: Some(port),
            span: Some(span),
            ..Entry::default()
        }
    }
}

/// A QUIC port's share of the state: one UDP socket's task, woken for
/// the connections it carries.
#[derive(Debug, Default)]
pub(super) struct Port {
    pub(super) wake: Signal,
    /// Connections with output, a close, or reading resumed: at most one
    /// entry each (`Entry::port_ready`).
    pub(super) ready: Vec<ConnectionId>,
    /// Dials for this port to start, with their replica.
    pub(super) dials: Vec<(ConnectionId, u8)>,
}

/// Wakes `id`'s socket task, or queues it for its QUIC port.
pub(super) fn wake(sockets: &mut Slots<Entry>, ports: &mut [Port], id: ConnectionId) {
    let Some(entry) = sockets.get_mut(&id) else {
        return;
    };
    match entry.port.and_then(|p| ports.get_mut(p)) {
        None => entry.wake.notify(),
        Some(port) => {
            if !core::mem::replace(&mut entry.port_ready, true) {
                port.ready.push(id);
            }
            port.wake.notify();
        }
    }
}

/// Most sockets in a lingering close at once (each drains its peer's
/// unread bytes for at most `linger` after its last bytes, so they are not
/// lost to a reset). When this many linger, a closing socket closes at
/// once instead.
pub const MAX_DRAINING: usize = 64;

/// Everything behind the lock.
pub(super) struct State<M> {
    pub(super) machine: M,
    pub(super) sockets: Slots<Entry>,
    /// Replica addresses, by id.
    pub(super) addresses: HashMap<u8, SocketAddr>,
    /// How each replica is dialled; plain TCP if absent.
    pub(super) transports: HashMap<u8, Transport>,
    /// What the timer task sleeps until.
    timer_at: Option<Instant>,
    timer: Signal,
    /// Sockets waiting for room in the application's event queue, at most
    /// one entry per socket.
    pub(super) paused: Vec<ConnectionId>,
    /// Shutdown's deadline passed: every socket task exits now.
    pub(super) forced: bool,
    /// Sockets in a lingering close, at most [`MAX_DRAINING`].
    pub(super) draining: usize,
    /// QUIC ports (UDP sockets), by index; never removed.
    pub(super) ports: Vec<Port>,
    /// The port that dials replicas whose transport is QUIC.
    pub(super) dial_port: Option<usize>,
    /// The timer task and listeners stop.
    pub(super) stopped: bool,
    /// Listening sockets still open.
    listeners: usize,
    /// A socket task or listener ended, or the driver stopped.
    changed: Waiters,
    /// A send queue may have room: bumped whenever a batch leaves a queue.
    space_epoch: u64,
    space: Waiters,
    /// Batches taken for write-through, written once the lock is released.
    pub(super) through: Through,
}

fn changed<M>(state: &mut State<M>) -> &mut Waiters {
    &mut state.changed
}

fn space<M>(state: &mut State<M>) -> &mut Waiters {
    &mut state.space
}

impl<M: Machine> State<M> {
    pub(super) fn more_space(&mut self) {
        self.space_epoch = self.space_epoch.wrapping_add(1);
        self.space.notify_all();
    }

    /// Whether `id` should stop reading for the application now, noting a
    /// change (the paused list, and the core, which suspends the liveness
    /// deadline meanwhile). For a connection about to read.
    pub(super) fn note_pause(&mut self, now: impl FnOnce() -> Now, id: ConnectionId) -> bool {
        let pause = self.machine.reading_paused(id);
        if let Some(entry) = self.sockets.get_mut(&id)
            && pause != entry.paused
        {
            entry.paused = pause;
            match pause {
                true => self.paused.push(id),
                false => self.paused.retain(|&p| p != id),
            }
            self.machine.set_reading_paused(now(), id, pause);
        }
        pause
    }

    /// Moves the timer earlier if the core's next deadline is.
    fn rearm_timer(&mut self) {
        if let Some(at) = self.machine.poll_timeout()
            && self.timer_at.is_none_or(|t| at < t)
        {
            self.timer_at = Some(at);
            self.timer.notify();
        }
    }
}

/// Shared by an adapter's handles, socket tasks, timer task and
/// listeners.
pub struct Shared<M, R> {
    pub(super) runtime: R,
    state: Mutex<State<M>>,
    read_chunk: usize,
    pub(super) linger: Duration,
}

impl<M: Machine, R: Runtime> Shared<M, R> {
    /// The driver for `machine`. The adapter then spawns
    /// [`Shared::run_timers`], which also starts the first dials.
    /// `addresses` and `transports` say where and how each replica is
    /// dialled (plain TCP where no transport is given).
    pub fn new(
        machine: M,
        runtime: R,
        options: SharedOptions,
        addresses: impl IntoIterator<Item = (u8, SocketAddr)>,
        transports: impl IntoIterator<Item = (u8, Transport)>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            runtime,
            state: Mutex::new(State {
                machine,
                sockets: Slots::default(),
                addresses: addresses.into_iter().collect(),
                transports: transports
                    .into_iter()
                    .filter(|(_, t)| !t.is_tcp())
                    .collect(),
                timer_at: None,
                timer: Signal::default(),
                paused: Vec::new(),
                forced: false,
                draining: 0,
                ports: Vec::new(),
                dial_port: None,
                stopped: false,
                listeners: 0,
                changed: Waiters::default(),
                space_epoch: 0,
                space: Waiters::default(),
                through: Through::default(),
            }),
            read_chunk: options.read_chunk.max(4096),
            linger: options.linger,
        })
    }

    /// The adapter's runtime handle.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// How long a closing socket may take to write its last bytes.
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Bytes to read at once.
    pub fn read_chunk(&self) -> usize {
        self.read_chunk
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State<M>> {
        // The core does not panic on input; if the application panicked
        // while holding the lock, the state is still the core's own.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the machine, then carries out what it asked for.
    pub fn with<T>(self: &Arc<Self>, f: impl FnOnce(&mut M, Now) -> T) -> T {
        self.with_from(None, f)
    }

    /// [`Shared::with`] for calls that take no time (sends): skips reading
    /// the clocks.
    pub fn with_untimed<T>(self: &Arc<Self>, f: impl FnOnce(&mut M) -> T) -> T {
        let unwind = through::OnUnwind(self);
        let mut state = self.lock();
        let result = f(&mut state.machine);
        self.after_writing(&mut state, None, Some(None));
        self.unlock_writing_through(state);
        unwind.finished();
        result
    }

    /// Reads the machine.
    pub fn read<T>(&self, f: impl FnOnce(&M) -> T) -> T {
        f(&self.lock().machine)
    }

    /// [`Shared::with`] from `caller`'s socket task, which checks its own
    /// output before it waits again and so is not woken.
    pub(super) fn with_from<T>(
        self: &Arc<Self>,
        caller: Option<ConnectionId>,
        f: impl FnOnce(&mut M, Now) -> T,
    ) -> T {
        let unwind = through::OnUnwind(self);
        let mut state = self.lock();
        let now = self.runtime.now();
        let result = f(&mut state.machine, now);
        let write_through = caller.is_none().then_some(Some(now));
        self.after_writing(&mut state, caller, write_through);
        self.unlock_writing_through(state);
        unwind.finished();
        result
    }

    /// Releases the lock, then writes the batches [`Shared::after`] took
    /// for write-through.
    fn unlock_writing_through(self: &Arc<Self>, mut state: MutexGuard<'_, State<M>>) {
        if state.through.is_empty() {
            return;
        }
        let through = core::mem::take(&mut state.through);
        drop(state);
        self.finish_through(through);
    }

    /// After any input: wake sockets with output (but not `caller`),
    /// open and close sockets, deliver events, and move the timer earlier
    /// if needed.
    pub(super) fn after(self: &Arc<Self>, state: &mut State<M>, caller: Option<ConnectionId>) {
        self.after_writing(state, caller, None);
    }

    /// [`Shared::after`]; with `write_through`, a socket whose task is idle
    /// is not woken but its batch taken, for the caller to write once it
    /// releases the lock ([`through`]). It holds the time of the call if
    /// the caller read it: taking a batch reads the clock only otherwise.
    fn after_writing(
        self: &Arc<Self>,
        state: &mut State<M>,
        caller: Option<ConnectionId>,
        mut write_through: Option<Option<Now>>,
    ) {
        while let Some(id) = state.machine.poll_ready() {
            if Some(id) == caller {
                continue;
            }
            // A handle writing it through (this one: taking a batch marks
            // its connection ready again) wakes the task when it is done
            // if there is more.
            if state.sockets.get(&id).is_some_and(|e| e.through_busy) {
                continue;
            }
            if let Some(now) = &mut write_through
                && through::eligible(state, id)
                && self.runtime.writes_through_here()
                && self.take_through(state, id, now)
            {
                continue;
            }
            if let Some(entry) = state.sockets.get_mut(&id) {
                entry.task_turn = true;
            }
            wake(&mut state.sockets, &mut state.ports, id);
        }
        while let Some(action) = state.machine.poll_action() {
            match action {
                Action::Connect {
                    connection,
                    replica,
                } => {
                    let port = state
                        .dial_port
                        .filter(|_| state.transports.get(&replica).is_some_and(|t| t.is_quic()));
                    // A QUIC dial's span; a TCP dial's task makes its own.
                    let span = port.map(|_| {
                        super::socket::connection_span(connection, "dialled", "quic", None)
                    });
                    let entry = Entry {
                        dialing: Some(replica),
                        port,
                        span,
                        ..Entry::default()
                    };
                    state.sockets.insert(connection, entry);
                    match port.and_then(|p| state.ports.get_mut(p)) {
                        Some(port) => {
                            port.dials.push((connection, replica));
                            port.wake.notify();
                        }
                        None => R::dial(self, connection, replica),
                    }
                }
                Action::Disconnect { connection } => {
                    if let Some(entry) = state.sockets.get_mut(&connection) {
                        entry.closing = true;
                    }
                    wake(&mut state.sockets, &mut state.ports, connection);
                }
            }
        }
        state.machine.deliver();
        state.rearm_timer();
    }

    /// Wakes the sockets paused for the application whose deliveries have
    /// been read (or are no longer wanted).
    pub(super) fn resume_readers(&self, state: &mut State<M>) {
        let now = self.runtime.now();
        let State {
            machine,
            sockets,
            paused,
            ports,
            ..
        } = state;
        paused.retain(|&id| {
            let Some(entry) = sockets.get_mut(&id) else {
                return false;
            };
            if machine.reading_paused(id) {
                return true;
            }
            entry.paused = false;
            machine.set_reading_paused(now, id, false);
            wake(sockets, ports, id);
            false
        });
        state.rearm_timer();
    }

    /// Retries `attempt` while it reports a full queue (`full`), waiting
    /// each time until a socket takes a batch off a queue. Once the driver
    /// stopped, the full-queue error is returned.
    pub async fn retry_when_full<T, E>(
        &self,
        mut attempt: impl FnMut() -> Result<T, E>,
        full: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        // The common case, a queue with room, takes no extra lock.
        match attempt() {
            Err(error) if full(&error) => {}
            result => return result,
        }
        loop {
            let (epoch, stopped) = {
                let state = self.lock();
                (state.space_epoch, state.stopped)
            };
            match attempt() {
                Err(error) if full(&error) && !stopped => {}
                result => return result,
            }
            self.wait_in(space, |state| {
                (state.space_epoch != epoch || state.stopped).then_some(())
            })
            .await;
        }
    }

    /// Sets where replica `replica` listens; the next dial, or one waiting
    /// for it, uses it.
    pub fn set_address(&self, replica: u8, address: SocketAddr) {
        let mut state = self.lock();
        state.addresses.insert(replica, address);
        for entry in state.sockets.values_mut().filter(|e| e.addressless) {
            entry.wake.notify();
        }
    }

    /// Sets how replica `replica` is dialled (plain TCP by default), from
    /// the next dial on.
    pub fn set_transport(&self, replica: u8, transport: Transport) {
        let mut state = self.lock();
        match transport.is_tcp() {
            true => state.transports.remove(&replica),
            false => state.transports.insert(replica, transport),
        };
    }

    /// Dials `replica` with the transport of the replica `from` names,
    /// unless it has one of its own.
    pub(super) fn keep_transport(&self, from: impl FnOnce(&M) -> u8, replica: u8) {
        let mut state = self.lock();
        let current = from(&state.machine);
        if !state.transports.contains_key(&replica)
            && let Some(transport) = state.transports.get(&current).cloned()
        {
            state.transports.insert(replica, transport);
        }
    }

    /// A dial's address: waits until it is known, or returns `None` once
    /// the core abandoned the dial (its deadline passed); then call
    /// [`Shared::closed`].
    pub async fn dial_address(&self, id: ConnectionId, replica: u8) -> Option<SocketAddr> {
        let mut logged = false;
        poll_fn(|cx| {
            let mut state = self.lock();
            loop {
                let closing = Self::should_close(&state, id);
                let address = match closing {
                    true => None,
                    false => state.addresses.get(&replica).copied(),
                };
                if closing || address.is_some() {
                    if let Some(entry) = state.sockets.get_mut(&id) {
                        entry.addressless = false;
                    }
                    return Poll::Ready(address);
                }
                // Woken by `set_address`, or for output before the socket
                // exists, which needs no answer: the socket task's first
                // step takes the output.
                if Self::poll_entry(&mut state, id, cx).is_pending() {
                    break;
                }
            }
            if let Some(entry) = state.sockets.get_mut(&id) {
                entry.addressless = true;
            }
            if !logged {
                logged = true;
                tracing::debug!(%id, replica, "waiting for the dialled replica's address");
            }
            Poll::Pending
        })
        .await
    }

    /// Completes once the core abandoned dial `id` (race it against the
    /// connect; then call [`Shared::closed`]).
    pub async fn abandoned(&self, id: ConnectionId) {
        poll_fn(|cx| {
            let mut state = self.lock();
            loop {
                if Self::should_close(&state, id) {
                    return Poll::Ready(());
                }
                if Self::poll_entry(&mut state, id, cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await;
    }

    /// Polls `id`'s wake-up; ready if it came or the entry is gone.
    pub(super) fn poll_entry(
        state: &mut State<M>,
        id: ConnectionId,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        match state.sockets.get_mut(&id) {
            Some(entry) => entry.wake.poll(cx),
            None => Poll::Ready(()),
        }
    }

    /// Reports `socket`'s local address (from the OS socket after accept
    /// or connect): it appears in the connection's snapshot and span.
    pub fn note_local(&self, socket: &Socket, local: Option<SocketAddr>) {
        let Some(local) = local else { return };
        self.lock().machine.note_local(socket.id(), local);
        socket.span().record("local", tracing::field::debug(local));
    }

    /// How dial `id` to `address` ended: `None` if it was
    /// [`abandoned`](Shared::abandoned), else the connect's result. Returns
    /// the socket to run (under the replica's transport layer, if it has
    /// one), or `None` once the dial is over and its registration
    /// released (failed, or the core gave up meanwhile).
    pub fn dialled<S>(
        self: &Arc<Self>,
        id: ConnectionId,
        address: SocketAddr,
        outcome: Option<std::io::Result<S>>,
    ) -> Option<(Socket, S)> {
        match outcome {
            Some(Ok(stream)) => {
                let transport = {
                    let state = self.lock();
                    let replica = state.sockets.get(&id).and_then(|e| e.dialing);
                    replica.and_then(|r| state.transports.get(&r).cloned())
                };
                // Outside the lock: a TLS layer draws its key share here.
                let transport = transport.unwrap_or_default();
                let name = transport.name();
                match transport.new_layer() {
                    Ok(None) if self.with(|m, now| m.connected(now, id, address)) => {
                        let socket = Socket::new(id).traced("dialled", name, Some(address));
                        return Some((socket, stream));
                    }
                    Ok(Some(layer))
                        if self.with(|m, now| m.connected_pending(now, id, address)) =>
                    {
                        let socket =
                            Socket::layered(id, layer).traced("dialled", name, Some(address));
                        return Some((socket, stream));
                    }
                    // The core gave up on the dial meanwhile.
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%id, %address, %error, "transport layer could not start");
                        self.with(|m, now| m.connect_failed(now, id));
                    }
                }
            }
            Some(Err(error)) => {
                tracing::debug!(%id, %address, %error, "connect failed");
                self.with(|m, now| {
                    m.connect_failed(now, id);
                    m.dial_error(&error);
                });
            }
            None => {}
        }
        self.closed(id);
        None
    }

    fn should_close(state: &State<M>, id: ConnectionId) -> bool {
        state.forced || state.sockets.get(&id).is_none_or(|e| e.closing)
    }

    /// A socket task (or a dial that never opened one) ended.
    pub fn closed(&self, id: ConnectionId) {
        let mut state = self.lock();
        if let Some(entry) = state.sockets.remove(&id) {
            if entry.paused {
                state.paused.retain(|&p| p != id);
            }
            if entry.draining {
                state.draining -= 1;
            }
        }
        state.changed.notify_all();
        state.more_space();
    }

    /// Registers a socket accepted from `remote` on a listener of
    /// `transport` with the core via `accept` (which returns its connection
    /// id, or an error to refuse it). Returns the [`Socket`] to run, under
    /// `layer` if given.
    pub fn accept<E>(
        self: &Arc<Self>,
        layer: Option<Box<dyn StreamLayer>>,
        (transport, remote): (&'static str, Option<SocketAddr>),
        accept: impl FnOnce(&mut M, Now) -> Result<ConnectionId, E>,
    ) -> Result<Socket, E> {
        let mut state = self.lock();
        let id = accept(&mut state.machine, self.runtime.now())?;
        state.sockets.insert(id, Entry::default());
        self.after(&mut state, None);
        let socket = match layer {
            Some(layer) => Socket::layered(id, layer),
            None => Socket::new(id),
        };
        Ok(socket.traced("accepted", transport, remote))
    }

    /// A listener task started.
    pub fn listener_opened(&self) {
        self.lock().listeners += 1;
    }

    /// A listener task ended and closed its socket.
    pub fn listener_closed(&self) {
        let mut state = self.lock();
        state.listeners -= 1;
        state.changed.notify_all();
    }

    /// Completes once the driver stopped (listeners then close).
    pub async fn stopped(&self) {
        self.wait(|state| state.stopped).await;
    }

    /// Waits until `done` holds; rechecked whenever a socket task or
    /// listener ends or the driver stops.
    async fn wait(&self, done: impl Fn(&State<M>) -> bool) {
        self.wait_in(changed, |state| done(state).then_some(()))
            .await;
    }

    /// Waits until `ready` returns a value, rechecked whenever the
    /// `waiters` that `select` picks are notified. The registration ends
    /// with the wait, also when the wait is dropped.
    pub(super) async fn wait_in<T>(
        &self,
        select: fn(&mut State<M>) -> &mut Waiters,
        mut ready: impl FnMut(&mut State<M>) -> Option<T>,
    ) -> T {
        let mut registration = Registration {
            shared: self,
            select,
            key: None,
        };
        poll_fn(|cx| {
            let mut state = self.lock();
            if let Some(value) = ready(&mut state) {
                return Poll::Ready(value);
            }
            select(&mut state).register(&mut registration.key, cx);
            Poll::Pending
        })
        .await
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
    /// timer and listeners. Returns how many connections it had to drop.
    pub(super) async fn drain(&self, deadline: Duration) -> usize {
        let until = self.runtime.now().mono.saturating_add(deadline);
        let drained = matches!(
            first(self.idle(), self.runtime.sleep_until(until)).await,
            First::Left(())
        );
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

    /// Makes every socket task close its socket now.
    fn force_close(&self) {
        let mut state = self.lock();
        state.forced = true;
        let State {
            sockets,
            space,
            ports,
            ..
        } = &mut *state;
        for entry in sockets.values_mut() {
            entry.wake.notify();
        }
        for port in ports {
            port.wake.notify();
        }
        space.notify_all();
    }

    /// Stops the timer task and listeners.
    fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.timer.notify();
        for port in &mut state.ports {
            port.wake.notify();
        }
        state.changed.notify_all();
        state.more_space();
    }

    /// Sleeps until the core's next deadline and runs its timers, until
    /// the driver stops. Spawn it once, right after [`Shared::new`].
    pub async fn run_timers(self: Arc<Self>) {
        // The core may already want to dial.
        self.with(|_, _| ());
        let mut ran_due = false;
        loop {
            let at = {
                let mut state = self.lock();
                if state.stopped {
                    return;
                }
                state.timer_at = state.machine.poll_timeout();
                state.timer_at
            };
            let notified = poll_fn(|cx| self.lock().timer.poll(cx));
            let now = self.runtime.now().mono;
            match at {
                // Due already: a timer would add a tick (a new client's
                // first dial, say).
                Some(at) if !ran_due && at <= now => {
                    ran_due = true;
                    self.with(|m, now| m.handle_timeout(now));
                }
                Some(at) => {
                    // Still due right after running: a deadline the core
                    // did not move must not spin this task, and some
                    // runtimes' timers complete at once for a past instant.
                    let at = if at <= now {
                        now.saturating_add(Duration::from_millis(1))
                    } else {
                        at
                    };
                    ran_due = false;
                    let slept = first(self.runtime.sleep_until(at), notified).await;
                    if matches!(slept, First::Left(())) {
                        self.with(|m, now| m.handle_timeout(now));
                    }
                }
                None => {
                    ran_due = false;
                    notified.await;
                }
            }
        }
    }
}

/// A wait's place in a [`Waiters`], given up when the wait ends.
struct Registration<'a, M: Machine, R: Runtime> {
    shared: &'a Shared<M, R>,
    select: fn(&mut State<M>) -> &mut Waiters,
    key: Option<u64>,
}

impl<M: Machine, R: Runtime> Drop for Registration<'_, M, R> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            (self.select)(&mut self.shared.lock()).deregister(key);
        }
    }
}

/// Which of two futures finished first, with its output.
#[derive(Debug)]
pub enum First<A, B> {
    /// The first future's output.
    Left(A),
    /// The second future's output.
    Right(B),
}

/// Runs both futures until one completes (`a` is polled first); the other
/// is dropped. For adapters whose runtime has no select of its own.
pub async fn first<A: Future, B: Future>(a: A, b: B) -> First<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx: &mut Context<'_>| {
        if let Poll::Ready(out) = a.as_mut().poll(cx) {
            return Poll::Ready(First::Left(out));
        }
        if let Poll::Ready(out) = b.as_mut().poll(cx) {
            return Poll::Ready(First::Right(out));
        }
        Poll::Pending
    })
    .await
}

/// Held by the application's handles: when the last one is dropped, every
/// socket closes and the driver's tasks end.
pub struct Owner<M: Machine, R: Runtime>(pub Arc<Shared<M, R>>);

impl<M: Machine, R: Runtime> core::ops::Deref for Owner<M, R> {
    type Target = Arc<Shared<M, R>>;
    fn deref(&self) -> &Arc<Shared<M, R>> {
        &self.0
    }
}

impl<M: Machine, R: Runtime> Drop for Owner<M, R> {
    fn drop(&mut self) {
        self.0.force_close();
        self.0.stop();
    }
}
