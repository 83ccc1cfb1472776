//! The sans-IO protocol core of the bus.
//!
//! This crate performs no I/O, reads no clock and draws no randomness: bytes,
//! time ([`time::Instant`], [`time::UnixNanos`]) and entropy
//! ([`entropy::Entropy`]) are inputs, and bytes to send are outputs. That
//! makes every behaviour reproducible in tests and lets any async runtime
//! drive it. The one exception is the transport engines behind features
//! `tls` and `ws` (`transport`): rustls draws its key shares and
//! tungstenite its masks from the operating system, as TLS and WebSocket
//! require; their time is still an input.
//!
//! | module | what it holds |
//! |---|---|
//! | [`wire`] | the 256-byte header, frames, checksums/tags, the incremental decoder |
//! | [`node`] | a replica's connections, peer table, dial schedule, client plane, routing |
//! | [`client`] | the client side: one connection, outstanding requests, resends |
//! | [`connection`] | one connection's state machine: queues, batching, heartbeats, close |
//! | [`handshake`] | the mutual handshake and the acceptor's [`Gate`](handshake::Gate) |
//! | [`crypto`] | pre-shared keys, key rings, BLAKE3 MACs, nonces |
//! | [`replay`] | nonce rings and the sliding sequence window |
//! | [`dedup`] | the at-most-once request window |
//! | [`config`] | the validated configuration |
//! | `host` | (feature `host`) the runtime-independent half of the adapters |
//! | `transport` | (features `tls`, `ws`) transports under framing: TLS on rustls, WebSocket on tungstenite |
//!
//! The wire format is specified in `PROTOCOL.md` at the repository root.
//!
//! # Encoding and decoding a frame
//!
//! ```
//! use bus_proto::wire::{Frame, FrameDecoder, Header, Integrity, Kind, RequestHeader};
//! use bytes::Bytes;
//!
//! let request = Frame {
//!     header: Header::new(
//!         0xC1u128,
//!         Kind::Request(RequestHeader { client: 42, request: 1, operation: 7 }),
//!     ),
//!     body: Bytes::from_static(b"transfer 10"),
//! };
//! let encoded = request.encode(&Integrity::Checksum, 1 << 20)?;
//! let [header, body] = encoded.slices(); // hand both to one vectored write
//!
//! let mut decoder = FrameDecoder::new(Integrity::Checksum, 1 << 20);
//! decoder.feed(header);
//! decoder.feed(body);
//! assert_eq!(decoder.next_frame()?, Some(request));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Driving a connection
//!
//! A [`Connection`](connection::Connection) never touches a socket or a
//! clock. The caller (an adapter, a simulator, a test) runs this loop:
//!
//! 1. **Create** it: [`Connection::dial`](connection::Connection::dial) with
//!    the current monotonic time, wall-clock time, configuration, identity
//!    and entropy; or [`Connection::accept`](connection::Connection::accept)
//!    for an inbound socket.
//! 2. **Feed input**: bytes read from the socket go to `handle_input` (or
//!    straight into `read_buffer()` followed by `handle_read`); EOF goes to
//!    `handle_eof`; an expired timer to `handle_timeout`; the application's
//!    frames to `send` (which reports backpressure instead of blocking).
//! 3. **Accepting side only**: when `take_hello()` returns a `hello`, pass it
//!    to the node's [`Gate`](handshake::Gate) and hand the decision to
//!    `admit`. The gate holds node-wide state (keys, replay store).
//! 4. **Drain output, in this order**: `poll_transmit` until `None`, writing
//!    each batch completely (a short write means tearing the connection
//!    down); `poll_event` until `None`; then `poll_timeout`, the instant to
//!    wake up and call `handle_timeout` (calling it early is harmless).
//! 5. When `is_drained()` is true the connection is over: drop the socket.
//!
//! Here two endpoints run in memory, passing bytes by hand:
//!
//! ```
//! use bus_proto::config::Config;
//! use bus_proto::connection::{Connection, DialParams, Event};
//! use bus_proto::crypto::{Key, KeyRing, PeerId};
//! use bus_proto::entropy::SeededEntropy;
//! use bus_proto::handshake::{Binding, Gate, GateParams};
//! use bus_proto::time::{Instant, UnixNanos};
//! use bus_proto::wire::Kind;
//! use bytes::Bytes;
//!
//! let config = Config::default().validate()?;
//! let keys = KeyRing::new(Key::from_bytes([7; 32])); // use Key::load in real code
//! let mut entropy = SeededEntropy::new(1); // use the OS generator in real code
//! let (now, wall) = (Instant::ZERO, UnixNanos::from_nanos(1_767_225_600_000_000_000));
//!
//! // Replica 1 accepts; its gate admits replicas 0..3 and clients.
//! let mut gate = Gate::new(
//!     &config,
//!     GateParams { cluster: 0xC1, local: 1, replica_count: 3, accept_clients: true },
//!     keys.clone(),
//! );
//! let mut acceptor = Connection::accept(now, &config, Binding::NONE);
//! // Replica 0 dials replica 1 (the lower id dials the higher).
//! let params = DialParams {
//!     cluster: 0xC1,
//!     local: PeerId::Replica(0),
//!     acceptor: 1,
//!     keys: &keys,
//!     binding: Binding::NONE,
//! };
//! let mut dialer = Connection::dial(now, wall, &config, params, &mut entropy)?;
//! dialer.send(Kind::Message { operation: 7 }, Bytes::from_static(b"hello, replica 1"))?;
//!
//! // Moves one side's output to the other: a socket write and read.
//! fn carry(from: &mut Connection, to: &mut Connection, now: Instant) -> bool {
//!     let mut moved = false;
//!     while let Some(transmit) = from.poll_transmit(now) {
//!         for segment in transmit.segments() {
//!             to.handle_input(now, segment);
//!         }
//!         moved = true;
//!     }
//!     moved
//! }
//!
//! // Run both ends until neither has anything to say.
//! let mut received = Vec::new();
//! loop {
//!     let mut moved = carry(&mut dialer, &mut acceptor, now);
//!     moved |= carry(&mut acceptor, &mut dialer, now);
//!     if let Some(hello) = acceptor.take_hello() {
//!         let admission = gate.admit(wall, hello, &mut entropy);
//!         acceptor.admit(now, admission);
//!         moved = true;
//!     }
//!     while let Some(event) = acceptor.poll_event() {
//!         received.push(event);
//!     }
//!     while dialer.poll_event().is_some() {}
//!     if !moved {
//!         break;
//!     }
//! }
//! assert!(matches!(received[0], Event::Established { peer: PeerId::Replica(0), .. }));
//! assert!(matches!(&received[1], Event::Message(f) if f.body == "hello, replica 1"));
//! // Nothing more to do until the heartbeat is due.
//! assert_eq!(acceptor.poll_timeout(), Some(Instant::from_nanos(1_000_000_000)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod client;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod dedup;
pub mod entropy;
pub mod handshake;
#[cfg(feature = "host")]
pub mod host;
pub mod node;
pub mod replay;
mod sorted_deque;
pub mod time;
#[cfg(feature = "tls")]
pub mod transport;
pub mod wire;
