//! Write-through on compio: the application's handles write a quiet
//! connection's batch to its socket themselves (`bus_proto::host::TryWrite`),
//! with `sendmsg(2)` and `MSG_DONTWAIT` on the descriptor compio's own
//! operations use, instead of waking the socket task to submit an
//! owned-buffer write and wait for its completion.
//!
//! The descriptor is borrowed, not duplicated: a node with 10,000
//! connections keeps 10,000 descriptors, not 20,000. What keeps the borrow
//! sound is [`Held`], the socket as its task holds it. Unix only; elsewhere
//! the socket task writes everything.

use compio::net::TcpStream;
#[cfg(unix)]
use std::sync::Arc;

/// A connection's socket as its task holds it: the stream, and on Unix the
/// writer lent to the handles. Every write through the writer fails once
/// [`Held::stop_writes`] is called or this is dropped, and its drop runs
/// before the stream's, so before the descriptor can close however the
/// task ends (returned, or dropped with its runtime).
pub(crate) struct Held {
    #[cfg(unix)]
    writer: Arc<unix::ThroughStream>,
    stream: TcpStream,
}

impl Held {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Held {
            #[cfg(unix)]
            writer: Arc::new(unix::ThroughStream::new(&stream)),
            stream,
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The writer to register for write-through, where there is one.
    pub(crate) fn writer(&self) -> Option<std::sync::Arc<dyn bus_proto::host::TryWrite>> {
        #[cfg(unix)]
        return Some(Arc::clone(&self.writer) as _);
        #[cfg(not(unix))]
        None
    }

    /// No handle writes to the socket from now on.
    pub(crate) fn stop_writes(&self) {
        #[cfg(unix)]
        self.writer.stop();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_writes();
    }
}

#[cfg(unix)]
mod unix {
    use bus_proto::host::TryWrite;
    use compio::net::TcpStream;
    use std::io::{self, IoSlice};
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::ThreadId;

    /// A socket's descriptor, written with `MSG_DONTWAIT` so a write never
    /// waits whatever mode the driver keeps the socket in. The socket task
    /// writes only while it holds a batch, and the driver lets no handle
    /// write through then, so the two never interleave.
    pub(super) struct ThroughStream {
        fd: RawFd,
        /// The runtime's thread, the only one that writes to `fd`.
        thread: ThreadId,
        /// Cleared before the descriptor can close ([`super::Held`]).
        open: AtomicBool,
    }

    impl ThroughStream {
        pub(super) fn new(stream: &TcpStream) -> Self {
            ThroughStream {
                fd: stream.as_raw_fd(),
                thread: std::thread::current().id(),
                open: AtomicBool::new(true),
            }
        }

        pub(super) fn stop(&self) {
            self.open.store(false, Ordering::Release);
        }
    }

    impl TryWrite for ThroughStream {
        fn try_write(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
            if std::thread::current().id() != self.thread || !self.open.load(Ordering::Acquire) {
                return Err(io::ErrorKind::NotConnected.into());
            }
            // SAFETY: `fd` is the descriptor of the `TcpStream` in `Held`,
            // which closes only once the last handle on that stream is
            // dropped, and so only after `Held` has cleared `open` (in
            // `stop_writes`, or in its drop, which runs before its fields').
            // `open` is cleared on `thread`, as this call runs; nothing here
            // yields, so a call that saw it set returns before it can be
            // cleared, and the descriptor stays open for the whole borrow.
            #[allow(unsafe_code)]
            let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
            // MSG_NOSIGNAL: a peer gone mid-write is an error, not SIGPIPE
            // in a program that has not ignored it.
            socket2::SockRef::from(&fd)
                .send_vectored_with_flags(slices, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::Held;
    use bus_proto::host::TryWrite;
    use compio::driver::{DriverType, ProactorBuilder};
    use compio::net::TcpStream;
    use std::io::{ErrorKind, IoSlice, Read};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// Runs `test` on a compio runtime with each driver, given a connected
    /// socket's holder, its writer and the peer's end (a std socket).
    fn on_each_driver(test: impl Fn(Held, Arc<dyn TryWrite>, std::net::TcpStream)) {
        for driver in [DriverType::IoUring, DriverType::Poll] {
            let mut proactor = ProactorBuilder::new();
            proactor.driver_type(driver);
            let runtime = compio::runtime::RuntimeBuilder::new()
                .with_proactor(proactor)
                .build();
            let Ok(runtime) = runtime else {
                // io_uring refused by the kernel: the other driver still runs.
                eprintln!("{driver:?} unavailable here");
                continue;
            };
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let address = listener.local_addr().expect("address");
            runtime.block_on(async {
                let stream = TcpStream::connect(address).await.expect("connect");
                let (peer, _) = listener.accept().expect("accept");
                let held = Held::new(stream);
                let writer = held.writer().expect("a writer on Unix");
                test(held, writer, peer);
            });
        }
    }

    /// The one `unsafe` block: a handle's write reaches the peer in order
    /// on the runtime's thread, and is refused on any other thread, after
    /// `stop_writes`, and after the socket's holder is dropped.
    #[test]
    fn writes_through_only_on_the_runtime_thread_while_held() {
        on_each_driver(|held, writer, mut peer| {
            let slices = [IoSlice::new(b"through "), IoSlice::new(b"the socket")];
            assert_eq!(writer.try_write(&slices).expect("write"), 18);
            let mut received = [0u8; 18];
            peer.read_exact(&mut received).expect("read");
            assert_eq!(&received, b"through the socket");

            let elsewhere = Arc::clone(&writer);
            let refused = std::thread::spawn(move || elsewhere.try_write(&[IoSlice::new(b"x")]))
                .join()
                .expect("thread");
            assert_eq!(
                refused.expect_err("another thread").kind(),
                ErrorKind::NotConnected
            );

            held.stop_writes();
            let late = writer.try_write(&[IoSlice::new(b"late")]);
            assert_eq!(late.expect_err("stopped").kind(), ErrorKind::NotConnected);
            drop(held);
            let late = writer.try_write(&[IoSlice::new(b"later")]);
            assert_eq!(late.expect_err("dropped").kind(), ErrorKind::NotConnected);
            // Nothing but the first write reached the peer.
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).expect("read to the end");
            assert!(rest.is_empty(), "{rest:?}");
        });
    }

    /// A write-through never waits: with the peer not reading, the socket
    /// fills and the write says `WouldBlock` (the batch then goes to the
    /// socket task), on either driver's socket.
    #[test]
    fn a_full_socket_refuses_a_write_through_at_once() {
        on_each_driver(|_held, writer, _peer| {
            let chunk = vec![0u8; 64 << 10];
            let mut written = 0usize;
            let error = loop {
                match writer.try_write(&[IoSlice::new(&chunk)]) {
                    Ok(n) => written += n,
                    Err(error) => break error,
                }
                assert!(
                    written < 1 << 30,
                    "{written} bytes and the socket never filled"
                );
            };
            assert_eq!(error.kind(), ErrorKind::WouldBlock, "{error}");
            assert!(written > 0);
        });
    }
}
