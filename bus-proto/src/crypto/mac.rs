//! BLAKE3 keyed MACs with context-separated keys.

use super::Key;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Versioned `derive_key` contexts, one per purpose. A key derived for one
/// purpose is useless for any other; bump the version to change a derivation.
pub mod context {
    /// Handshake MACs.
    pub const HANDSHAKE: &str = "bus-proto v1 handshake mac";
    /// The session secret established by a handshake.
    pub const SESSION: &str = "bus-proto v1 session secret";
    /// Header tags of authenticated frames.
    pub const FRAME_HEADER: &str = "bus-proto v1 frame header tag";
    /// Body tags of authenticated frames.
    pub const FRAME_BODY: &str = "bus-proto v1 frame body tag";
    /// Public key fingerprints (for operators comparing keys).
    pub const FINGERPRINT: &str = "bus-proto v1 key fingerprint";
}

/// A 32-byte MAC. Equality is constant-time, and the bytes can only be
/// copied out to be written on the wire ([`Tag::write_to`]), so nothing
/// outside this type compares tags with a short-circuiting `==` (hazard 14).
#[derive(Clone, Copy)]
pub struct Tag([u8; 32]);

impl Tag {
    /// A tag read off the wire.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Tag(bytes)
    }

    /// The bytes, for feeding into a later MAC of the same transcript.
    pub(crate) const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Writes the tag into a 32-byte wire field.
    ///
    /// # Panics
    /// If `out` is not 32 bytes long (a layout bug, never peer input).
    pub fn write_to(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.0);
    }
}

impl PartialEq for Tag {
    #[cfg(not(fuzzing))]
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }

    /// Fuzzing builds only (`cargo fuzz` sets `--cfg fuzzing`; no other
    /// build does): every MAC verifies, so the fuzzer reaches the handshake
    /// states behind the checks.
    #[cfg(fuzzing)]
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for Tag {}

impl core::fmt::Debug for Tag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Tag({self})")
    }
}

impl core::fmt::Display for Tag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        super::write_hex(f, &self.0)
    }
}

/// A MAC did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("MAC does not verify under the {purpose} key")]
pub struct MacError {
    /// The `derive_key` context of the key tried.
    pub purpose: &'static str,
}

/// A key bound to one purpose by `derive_key`. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MacKey {
    key: [u8; 32],
    #[zeroize(skip)]
    context: &'static str,
}

impl core::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MacKey({:?}, <redacted>)", self.context)
    }
}

impl MacKey {
    /// Derives the `context` key from a pre-shared key.
    pub fn derive(key: &Key, context: &'static str) -> Self {
        MacKey {
            key: blake3::derive_key(context, key.secret_bytes()),
            context,
        }
    }

    /// Derives the `context` key from other secret material (e.g. a session
    /// secret).
    pub fn derive_from(material: &[u8], context: &'static str) -> Self {
        MacKey {
            key: blake3::derive_key(context, material),
            context,
        }
    }

    /// MAC over the concatenation of `parts`. Callers give every part a fixed
    /// length (or a length prefix) so the concatenation is unambiguous.
    pub fn sign(&self, parts: &[&[u8]]) -> Tag {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        for part in parts {
            hasher.update(part);
        }
        Tag(*hasher.finalize().as_bytes())
    }

    /// Checks `tag` over `parts`, in constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &Tag) -> Result<(), MacError> {
        if self.sign(parts) == *tag {
            Ok(())
        } else {
            Err(MacError {
                purpose: self.context,
            })
        }
    }
}
