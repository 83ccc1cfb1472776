//! The mutual handshake: `hello` → `welcome` (or `reject`) → `confirm`.
//!
//! Both sides prove possession of the pre-shared key for the pair, and each
//! proof covers a fresh nonce chosen by the *other* side, so no captured
//! message can complete a handshake again. The full rationale, with the
//! attacks considered, is in PROTOCOL.md §8.
//!
//! | step | sender | checks by the receiver |
//! |---|---|---|
//! | `hello` | dialer | cluster, plane, acceptor id, directional rule, peer known, timestamp within the freshness window, nonce not seen, MAC; **then** the nonce is recorded |
//! | `welcome` | acceptor | MAC over the `hello` (dialer's nonce) and the acceptor's nonce |
//! | `confirm` | dialer | MAC over the whole transcript (acceptor's nonce) |
//!
//! The acceptor-side checks that need node-wide state (key ring, replay
//! store) live in [`Gate`]; the per-connection state lives in the
//! [`Connection`](crate::connection::Connection).

mod gate;
mod transcript;

pub(crate) use gate::Verdict;
pub use gate::{Admission, AdmissionOutcome, Gate, GateParams, IgnoreReason, IncomingHello};

use crate::crypto::{KeyRing, Nonce, PeerId, Tag};
use crate::entropy::Entropy;
use crate::time::UnixNanos;
use crate::wire::{FrameKeys, Hello, Plane, Welcome};
use transcript::WelcomeFields;
pub(crate) use transcript::{HandshakeKeys, HelloFields};
use zeroize::Zeroizing;

/// Nonces remembered per dialer by a [`Gate`]: a peer that completes more
/// `hello`s than this within one freshness window is refused with `Busy`.
pub const NONCE_RING_SLOTS: usize = 32;

/// Transport binding bytes mixed into every handshake MAC: all zero for
/// plain TCP, the TLS exporter value under TLS, so a handshake relayed
/// through a TLS man-in-the-middle fails (hazard 10).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Binding([u8; 32]);

impl core::fmt::Debug for Binding {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Exporter output is keying material: say only whether there is one.
        if *self == Binding::NONE {
            f.write_str("Binding(none)")
        } else {
            f.write_str("Binding(<redacted>)")
        }
    }
}

impl Binding {
    /// No binding: a plain byte stream.
    pub const NONE: Binding = Binding([0; 32]);

    /// A binding from transport keying material (e.g. a TLS exporter).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Binding(bytes)
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A handshake failed after the first message.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The acceptor's `welcome` MAC did not verify: the acceptor does not
    /// hold our key for this pair (an impostor, or a key mismatch), or the
    /// transport binding differs (a relay).
    #[error("acceptor failed to prove the key: welcome MAC does not verify")]
    WelcomeMac,
    /// The dialer's `confirm` MAC did not verify.
    #[error("dialer failed key confirmation: confirm MAC does not verify")]
    ConfirmMac,
    /// We asked for authenticated frames and the acceptor declined.
    #[error("acceptor declined the authenticated frames we require")]
    Downgrade,
}

/// The dialer's side between `hello` and `welcome`.
pub(crate) struct DialerHandshake {
    keys: HandshakeKeys,
    fields: HelloFields,
    hello_mac: Tag,
    requested_auth: bool,
}

/// What a verified `welcome` yields to the dialer.
pub(crate) struct DialerDone {
    pub(crate) confirm_mac: Tag,
    pub(crate) frame_keys: Option<FrameKeys>,
}

/// What a dialer needs to start.
pub(crate) struct DialerStart<'a> {
    pub(crate) cluster: u128,
    pub(crate) local: PeerId,
    pub(crate) acceptor: u8,
    pub(crate) keys: &'a KeyRing,
    pub(crate) binding: Binding,
    pub(crate) authenticated_frames: bool,
}

impl DialerHandshake {
    /// Builds the `hello`. The key is the pair's signing key: for a replica
    /// dialling replica `b`, the set for `Replica(b)`; for a client, the set
    /// for its own `Client(id)`.
    pub(crate) fn start(
        p: DialerStart<'_>,
        wall: UnixNanos,
        entropy: &mut dyn Entropy,
    ) -> (Self, Hello) {
        let (plane, dialer, owner) = match p.local {
            PeerId::Replica(id) => (Plane::Replica, u128::from(id), PeerId::Replica(p.acceptor)),
            PeerId::Client(id) => (Plane::Client, id, p.local),
        };
        let keys = p.keys.signing_handshake_keys(owner).clone();
        let mut nonce = [0u8; 32];
        entropy.fill_bytes(&mut nonce);
        let mut hello = Hello {
            plane,
            dialer,
            acceptor: u128::from(p.acceptor),
            nonce: Nonce::from_bytes(nonce),
            timestamp: wall,
            authenticated_frames: p.authenticated_frames,
            mac: Tag::from_bytes([0; 32]),
        };
        let fields = HelloFields::new(p.cluster, &hello, &p.binding);
        hello.mac = keys.hello_mac(&fields);
        let state = DialerHandshake {
            keys,
            fields,
            hello_mac: hello.mac,
            requested_auth: p.authenticated_frames,
        };
        (state, hello)
    }

    /// Verifies the acceptor's proof and produces the confirmation.
    pub(crate) fn on_welcome(&self, welcome: &Welcome) -> Result<DialerDone, HandshakeError> {
        let t = WelcomeFields {
            hello: &self.fields,
            hello_mac: &self.hello_mac,
            acceptor_nonce: &welcome.nonce,
            authenticated_frames: welcome.authenticated_frames,
        };
        if self.keys.welcome_mac(&t) != welcome.mac {
            return Err(HandshakeError::WelcomeMac);
        }
        if self.requested_auth && !welcome.authenticated_frames {
            return Err(HandshakeError::Downgrade);
        }
        Ok(DialerDone {
            confirm_mac: self.keys.confirm_mac(&t, &welcome.mac),
            frame_keys: frame_keys(&self.keys, &t, &welcome.mac),
        })
    }
}

/// The acceptor's side between `welcome` and `confirm`.
pub(crate) struct AcceptorHandshake {
    keys: HandshakeKeys,
    fields: HelloFields,
    hello_mac: Tag,
    acceptor_nonce: Nonce,
    authenticated_frames: bool,
    welcome_mac: Tag,
    /// Who the dialer proved to be.
    pub(crate) peer: PeerId,
    /// Our own replica id.
    pub(crate) local: u8,
    /// The cluster.
    pub(crate) cluster: u128,
}

impl AcceptorHandshake {
    fn fields(&self) -> WelcomeFields<'_> {
        WelcomeFields {
            hello: &self.fields,
            hello_mac: &self.hello_mac,
            acceptor_nonce: &self.acceptor_nonce,
            authenticated_frames: self.authenticated_frames,
        }
    }

    /// The `welcome` to send.
    pub(crate) fn welcome(&self) -> Welcome {
        Welcome {
            nonce: self.acceptor_nonce,
            authenticated_frames: self.authenticated_frames,
            mac: self.welcome_mac,
        }
    }

    /// Verifies the dialer's confirmation; returns the frame keys if
    /// authenticated frames were negotiated.
    pub(crate) fn on_confirm(&self, mac: &Tag) -> Result<Option<FrameKeys>, HandshakeError> {
        let t = self.fields();
        if self.keys.confirm_mac(&t, &self.welcome_mac) != *mac {
            return Err(HandshakeError::ConfirmMac);
        }
        Ok(frame_keys(&self.keys, &t, &self.welcome_mac))
    }
}

fn frame_keys(keys: &HandshakeKeys, t: &WelcomeFields<'_>, welcome_mac: &Tag) -> Option<FrameKeys> {
    t.authenticated_frames.then(|| {
        let secret = Zeroizing::new(keys.session_secret(t, welcome_mac));
        FrameKeys::derive(&secret)
    })
}
