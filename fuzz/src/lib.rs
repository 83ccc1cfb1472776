//! Fuzz target bodies, shared by the libFuzzer binaries in `fuzz_targets/`
//! and by the corpus replay test that runs on stable in CI.
//!
//! Every target takes the fuzzer's raw bytes; structured inputs are derived
//! from them with `arbitrary`, so a committed corpus file replays the same
//! way under libFuzzer and under `cargo test`.

pub mod model;
mod targets;

pub use targets::*;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decoder", frame_decoder),
    ("header", header),
    ("key_hex", key_hex),
    ("config", config),
    ("replay_window", replay_window),
    ("nonce_ring", nonce_ring),
    ("dedup_window", dedup_window),
    ("handshake", handshake),
    ("connection", connection),
    ("node", node),
    ("host", host),
    ("identity", identity),
    ("tls_server", tls_server),
    ("ws_server", ws_server),
    ("ws_client", ws_client),
    ("quic_endpoint", quic_endpoint),
];
