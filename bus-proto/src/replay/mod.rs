//! Replay protection primitives.
//!
//! - [`NonceRing`]: the last `CAP` handshake nonces of one peer, fixed inline
//!   storage, FIFO eviction.
//! - [`NonceStore`]: one ring per peer, bounded in peers, so a noisy peer can
//!   only evict its own entries (hazard 6). It belongs to the node, not to a
//!   listener, so it survives listener restarts.
//! - [`ReplayWindow`]: a sliding bitmap over per-connection sequence numbers.
//!
//! Callers check before verifying a MAC and record only after (hazard 5):
//! `check` never mutates, `record`/`accept` are called once the MAC verified.

mod nonce_ring;
mod nonce_store;
mod window;

pub use nonce_ring::NonceRing;
pub use nonce_store::{NonceStore, ReplayError};
pub use window::{ReplayWindow, ReplayWindow1024, WindowError};
