//! Transports under framing (features `tls`, `ws`, `quic`): sans-IO engines the host
//! runs between a socket and the core, as [`StreamLayer`](crate::host::StreamLayer)s.
//!
//! Every transport ends in the same frame decoder with the same
//! `max_message_size`; a transport adds its own handshake in front of the
//! bus's, within the same `handshake_timeout`, and on TLS gives the bus
//! handshake a channel binding (PROTOCOL.md §8.2): the TLS exporter with
//! label [`EXPORTER_LABEL`], 32 bytes, empty context (RFC 9266
//! `tls-exporter`). A relay that terminates TLS sees two sessions with two
//! exporters, so the handshake MACs fail on it.
//!
//! # Randomness
//!
//! These engines are the one place the bus does not take randomness as an
//! input: rustls (with ring) draws its key shares and nonces from the
//! operating system, as TLS requires, tungstenite its client masks and
//! handshake keys, as WebSocket requires, and quinn-proto its connection
//! ids, tokens and reset keys, as QUIC requires. Time stays an input: the host
//! passes the wall clock with every read, and certificate validity is
//! checked against it.

#[cfg(feature = "quic")]
pub mod quic;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "ws")]
pub mod ws;

/// The ALPN protocol every TLS listener and dialer requires.
pub const ALPN: &[u8] = b"bus/1";

/// The TLS exporter label of the channel binding (RFC 9266).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// Whether a TLS connection's bus handshake is bound to its TLS session.
///
/// Fixed per listener and per dial target, never negotiated: a dialer
/// whose handshake fails is never retried with the other policy, which
/// would reopen the relay attack binding closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindingPolicy {
    /// The binding is the TLS exporter ([`EXPORTER_LABEL`]): a relay that
    /// terminates TLS cannot complete the bus handshake. The default.
    #[default]
    TlsExporter,
    /// No binding ([`Binding::NONE`](crate::handshake::Binding::NONE)),
    /// for clients that cannot export keying material (browsers, Python's
    /// `ssl`). Gives up relay resistance: opt in per listener.
    Unbound,
}
