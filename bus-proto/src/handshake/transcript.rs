//! The exact bytes each handshake MAC covers (PROTOCOL.md §8).
//!
//! Every field has a fixed width, so concatenations are unambiguous, and each
//! MAC starts with its own 8-byte label, so no message's tag can stand in for
//! another's (a `welcome` tag can never be reflected as a `hello` tag).

use super::Binding;
use crate::crypto::mac::context;
use crate::crypto::{Key, MacKey, Nonce, Tag};
use crate::wire::{Hello, PROTOCOL_VERSION};

/// Label of the dialer's first MAC.
const LABEL_HELLO: &[u8; 8] = b"hello\0\0\0";
/// Label of the acceptor's MAC.
const LABEL_WELCOME: &[u8; 8] = b"welcome\0";
/// Label of the dialer's key confirmation.
const LABEL_CONFIRM: &[u8; 8] = b"confirm\0";
/// Label of the session secret.
const LABEL_SESSION: &[u8; 8] = b"session\0";

/// Length of [`HelloFields`]: version 2, plane 1, cluster 16, dialer 16,
/// acceptor 16, nonce 32, timestamp 8, flags 1, binding 32.
pub(crate) const HELLO_FIELDS_LEN: usize = 2 + 1 + 16 + 16 + 16 + 32 + 8 + 1 + 32;

/// The `hello` fields every MAC of one handshake covers.
#[derive(Clone)]
pub(crate) struct HelloFields([u8; HELLO_FIELDS_LEN]);

impl HelloFields {
    pub(crate) fn new(cluster: u128, hello: &Hello, binding: &Binding) -> Self {
        let mut b = [0u8; HELLO_FIELDS_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            b[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&PROTOCOL_VERSION.to_le_bytes());
        put(&[hello.plane.to_wire()]);
        put(&cluster.to_le_bytes());
        put(&hello.dialer.to_le_bytes());
        put(&hello.acceptor.to_le_bytes());
        put(hello.nonce.as_bytes());
        put(&hello.timestamp.as_nanos().to_le_bytes());
        put(&[u8::from(hello.authenticated_frames)]);
        put(binding.as_bytes());
        HelloFields(b)
    }
}

/// The two keys a handshake derives from one pre-shared key.
#[derive(Clone)]
pub(crate) struct HandshakeKeys {
    mac: MacKey,
    session: MacKey,
}

impl HandshakeKeys {
    pub(crate) fn derive(psk: &Key) -> Self {
        HandshakeKeys {
            mac: MacKey::derive(psk, context::HANDSHAKE),
            session: MacKey::derive(psk, context::SESSION),
        }
    }

    /// True if `mac` is the `hello` MAC under these keys over `fields`.
    pub(crate) fn verifies_hello(&self, fields: &HelloFields, mac: &Tag) -> bool {
        self.hello_mac(fields) == *mac
    }

    /// `hello.mac`.
    pub(crate) fn hello_mac(&self, fields: &HelloFields) -> Tag {
        self.mac.sign(&[LABEL_HELLO, &fields.0])
    }

    /// `welcome.mac`: binds the whole `hello` (its tag included), the
    /// acceptor's nonce and the negotiated flags.
    pub(crate) fn welcome_mac(&self, t: &WelcomeFields<'_>) -> Tag {
        t.sign(&self.mac, LABEL_WELCOME, &[])
    }

    /// `confirm.mac`: everything `welcome.mac` covers plus `welcome.mac`.
    pub(crate) fn confirm_mac(&self, t: &WelcomeFields<'_>, welcome_mac: &Tag) -> Tag {
        t.sign(&self.mac, LABEL_CONFIRM, welcome_mac.as_bytes())
    }

    /// The session secret `S`: unique per handshake (both nonces), known only
    /// to holders of the pre-shared key.
    pub(crate) fn session_secret(&self, t: &WelcomeFields<'_>, welcome_mac: &Tag) -> [u8; 32] {
        *t.sign(&self.session, LABEL_SESSION, welcome_mac.as_bytes())
            .as_bytes()
    }
}

/// Everything `welcome.mac` covers.
pub(crate) struct WelcomeFields<'a> {
    pub(crate) hello: &'a HelloFields,
    pub(crate) hello_mac: &'a Tag,
    pub(crate) acceptor_nonce: &'a Nonce,
    pub(crate) authenticated_frames: bool,
}

impl WelcomeFields<'_> {
    /// `MAC(key, label ‖ T ‖ mac_h ‖ nonce_a ‖ flags_w ‖ tail)`.
    fn sign(&self, key: &MacKey, label: &[u8; 8], tail: &[u8]) -> Tag {
        key.sign(&[
            label,
            &self.hello.0,
            self.hello_mac.as_bytes(),
            self.acceptor_nonce.as_bytes(),
            &[u8::from(self.authenticated_frames)],
            tail,
        ])
    }
}
