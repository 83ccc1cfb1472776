//! The adapters' shared driver (`bus_proto::host`) driven the way socket
//! tasks drive it, with arbitrary completions: accepts, dials that connect,
//! fail or are abandoned, steps, partial and whole writes, in-place and
//! owned-buffer reads of raw or forged bytes, EOFs, errors, linger
//! deadlines, wake-ups, closes, sends and time.

use super::ops;
use super::{Forged, forge};
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::config::Config;
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::host::{
    Completion, Machine, NodeFront, NodeOptions, Runtime, Shared, SharedOptions, Socket, Step,
};
use bus_proto::node::{ConnectionId, NodeParams, table_capacity};
use bus_proto::time::{Instant, Now};
use bytes::Bytes;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

/// A runtime whose clock moves only when the harness says, whose timers
/// never fire on their own, and whose dials wait for the harness.
#[derive(Default)]
struct Harness {
    mono: AtomicU64,
    dials: Mutex<Vec<ConnectionId>>,
}

impl Runtime for Harness {
    fn now(&self) -> Now {
        let mono = Duration::from_nanos(self.mono.load(Ordering::Relaxed));
        Now::from_elapsed(mono, Duration::from_secs(1_767_225_600) + mono)
    }
    fn sleep_until(&self, _at: Instant) -> impl Future<Output = ()> {
        std::future::pending()
    }
    fn dial<M: Machine>(shared: &Arc<Shared<M, Self>>, id: ConnectionId, _replica: u8) {
        shared.runtime().dials.lock().unwrap().push(id);
    }
    fn run_blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
        done: impl FnOnce(T) + Send + 'static,
    ) {
        done(job());
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Forged(Forged),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Accept,
    /// The oldest dial: 0 connects, 1 fails, otherwise abandoned.
    Dial(u8),
    Step(u8),
    /// A readiness-style write of `written` bytes, or a failed one.
    Write {
        socket: u8,
        written: u16,
        fail: bool,
    },
    /// A whole-batch owned write (completion-style).
    WriteOwned {
        socket: u8,
        fail: bool,
    },
    /// Bytes appended in place; empty is EOF.
    Read {
        socket: u8,
        bytes: Input,
    },
    /// Bytes through a lent buffer (completion-style).
    ReadOwned {
        socket: u8,
        bytes: Input,
    },
    ReadError(u8),
    Linger(u8),
    Woken(u8),
    Close(u8),
    Send {
        to: u8,
        len: u16,
    },
    Time(u16),
    DrainEvents,
}

/// A socket task as the harness runs it.
struct Task {
    socket: Socket,
    /// Its loop ended (`Exit`, or a completion said the connection is over).
    over: bool,
}

fn bytes_of(bytes: &Input) -> Vec<u8> {
    match bytes {
        Input::Raw(raw) => raw.iter().copied().take(4096).collect(),
        Input::Forged(frame) => forge(frame),
    }
}

/// Polls `future` once.
fn poll_once<F: Future>(future: Pin<&mut F>) -> bool {
    future
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

/// Drives the adapters' shared driver; panics if an invariant breaks.
pub fn host(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let config = {
        let mut tuned = Config::default();
        tuned.max_connections = 8;
        tuned.max_handshakes_in_flight = 4;
        tuned
    };
    let Ok(config) = config.validate() else {
        return;
    };
    let params = NodeParams {
        cluster: super::CLUSTER,
        replica: 0,
        replica_count: 3,
        accept_clients: true,
    };
    let keys = KeyRing::new(Key::from_bytes([9; 32]));
    let options = {
        let mut tuned = NodeOptions::default();
        tuned.message_capacity = 4;
        tuned.request_capacity = 4;
        tuned
    };
    let runtime = Harness::default();
    let front = NodeFront::new(
        runtime.now(),
        &config,
        params,
        keys,
        Box::new(SeededEntropy::new(1)),
        &options,
    )
    .expect("valid node");
    let driver = SharedOptions {
        read_chunk: 4096,
        linger: config.close_grace,
    };
    let peers = [(1, SocketAddr::from(([127, 0, 0, 1], 7001)))];
    let shared = Shared::new(front, runtime, driver, peers, []);
    let mut timers = Box::pin(Shared::run_timers(Arc::clone(&shared)));
    poll_once(timers.as_mut());
    let mut tasks: Vec<Task> = Vec::new();
    let mut events = Vec::new();

    for op in ops::<Op>(&mut u).take(256) {
        // The socket task an operation names, if any runs.
        let pick =
            |i: u8, tasks: &[Task]| (!tasks.is_empty()).then(|| usize::from(i) % tasks.len());
        match op {
            Op::Accept => {
                if let Ok(socket) = shared.accept_socket(None, &bus_proto::host::Transport::tcp()) {
                    tasks.push(Task {
                        socket,
                        over: false,
                    });
                }
            }
            Op::Dial(how) => {
                let id = {
                    let mut dials = shared.runtime().dials.lock().unwrap();
                    if dials.is_empty() {
                        continue;
                    }
                    dials.remove(0)
                };
                let address = SocketAddr::from(([127, 0, 0, 1], 7001));
                let outcome = match how % 3 {
                    0 => Some(Ok(())),
                    1 => Some(Err(std::io::ErrorKind::ConnectionRefused.into())),
                    _ => None,
                };
                if let Some((socket, ())) = shared.dialled(id, address, outcome) {
                    tasks.push(Task {
                        socket,
                        over: false,
                    });
                }
            }
            Op::Step(i) => {
                let Some(i) = pick(i, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                if task.over {
                    continue;
                }
                match shared.step(&mut task.socket) {
                    Step::Exit => task.over = true,
                    Step::Run { write, read, .. } => {
                        let (out, inbox) = task.socket.io();
                        assert!(!write || !out.is_done(), "write with nothing loaded");
                        assert!(!read || inbox.is_some(), "read with no buffer lent");
                    }
                }
            }
            Op::Write {
                socket,
                written,
                fail,
            } => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                if task.over || task.socket.io().0.is_done() {
                    continue;
                }
                let result = if fail {
                    Err(std::io::ErrorKind::BrokenPipe.into())
                } else {
                    task.socket.io().0.advance(usize::from(written).max(1));
                    Ok(())
                };
                task.over = shared
                    .complete(&mut task.socket, Completion::Wrote(result))
                    .is_break();
            }
            Op::WriteOwned { socket, fail } => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                if task.over || task.socket.io().0.is_done() {
                    continue;
                }
                let _batch = task.socket.lend_batch();
                assert!(task.socket.io().0.is_done());
                let result = if fail {
                    Err(std::io::ErrorKind::BrokenPipe.into())
                } else {
                    Ok(())
                };
                task.over = shared
                    .complete(&mut task.socket, Completion::Wrote(result))
                    .is_break();
            }
            Op::Read { socket, bytes } => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                let Some(inbox) = task.socket.io().1.filter(|_| !task.over) else {
                    continue;
                };
                let bytes = bytes_of(&bytes);
                inbox.extend_from_slice(&bytes);
                let done = Completion::Read(Ok(bytes.len()), None);
                task.over = shared.complete(&mut task.socket, done).is_break();
            }
            Op::ReadOwned { socket, bytes } => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                if task.over {
                    continue;
                }
                let Some(mut buffer) = task.socket.lend_inbox() else {
                    continue;
                };
                assert!(
                    task.socket.io().1.is_none(),
                    "a lent buffer is gone from the task"
                );
                let bytes = bytes_of(&bytes);
                buffer.extend_from_slice(&bytes);
                let done = Completion::Read(Ok(bytes.len()), Some(buffer));
                task.over = shared.complete(&mut task.socket, done).is_break();
            }
            Op::ReadError(socket) => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                if task.over || task.socket.io().1.is_none() {
                    continue;
                }
                let done = Completion::Read(Err(std::io::ErrorKind::ConnectionReset.into()), None);
                task.over = shared.complete(&mut task.socket, done).is_break();
            }
            Op::Linger(socket) => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let task = &mut tasks[i];
                if !task.over {
                    task.over = shared
                        .complete(&mut task.socket, Completion::Lingered)
                        .is_break();
                }
            }
            Op::Woken(socket) => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                let id = tasks[i].socket.id();
                poll_once(pin!(shared.woken(id)));
                // A socket task that has not closed keeps its entry: with no
                // input since, it must wait (a ready `woken` with nothing to
                // do spins the task).
                assert!(
                    !poll_once(pin!(shared.woken(id))),
                    "woken ready twice in a row for {id}"
                );
            }
            Op::Close(socket) => {
                let Some(i) = pick(socket, &tasks) else {
                    continue;
                };
                if tasks[i].over {
                    let task = tasks.swap_remove(i);
                    shared.closed(task.socket.id());
                }
            }
            Op::Send { to, len } => {
                let body = Bytes::from(vec![0x5a; usize::from(len) % 2048]);
                let _ = shared.send(to % 3, 1, body);
            }
            Op::Time(ms) => {
                let step = Duration::from_millis(u64::from(ms)).as_nanos();
                let step = u64::try_from(step).unwrap_or(u64::MAX);
                shared.runtime().mono.fetch_add(step, Ordering::Relaxed);
                poll_once(timers.as_mut());
            }
            // Without it the queue fills and sockets pause reading.
            Op::DrainEvents => {
                events.clear();
                let mut cx = Context::from_waker(Waker::noop());
                let _ = shared.poll_events(&mut cx, &mut events, 64);
            }
        }
        // The core holds at most its configured connections: 8 admitted
        // clients, and the table's capacity in all.
        let (clients, capacity) = shared.inspect(|n| {
            (
                n.admitted_clients(),
                table_capacity(&config, n.params().replica_count),
            )
        });
        assert!(clients <= 8, "{clients} clients admitted");
        assert!(
            shared.connections() <= capacity,
            "{} connections",
            shared.connections()
        );
    }
}
