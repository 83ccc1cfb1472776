//! The sans-IO protocol core of the bus.
//!
//! This crate performs no I/O, reads no clock and draws no randomness: bytes,
//! time ([`time::Instant`], [`time::UnixNanos`]) and entropy
//! ([`entropy::Entropy`]) are inputs, and bytes to send are outputs. That
//! makes every behaviour reproducible in tests and lets any async runtime
//! drive it.
//!
//! | module | what it holds |
//! |---|---|
//! | [`wire`] | the 256-byte header, frames, checksums/tags, the incremental decoder |
//! | [`crypto`] | pre-shared keys, key rings, BLAKE3 MACs, nonces |
//! | [`replay`] | nonce rings and the sliding sequence window |
//! | [`dedup`] | the at-most-once request window |
//! | [`config`] | the validated configuration |
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

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod connection;
pub mod crypto;
pub mod dedup;
pub mod entropy;
pub mod handshake;
pub mod replay;
pub mod time;
pub mod wire;
