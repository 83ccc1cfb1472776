//! Keys, MACs and nonces.
//!
//! [`Key`] is a 32-byte pre-shared key; [`KeyRing`] picks which key signs and
//! which keys verify for a given peer; [`MacKey`] is a purpose-bound key
//! derived from a [`Key`] with BLAKE3's `derive_key`, and [`Tag`] is its
//! output, compared only in constant time.

mod key;
mod keyring;
pub mod mac;

pub use key::{Fingerprint, KEY_HEX_LEN, Key, KeyError};
pub use keyring::{KeyRing, KeySet, PeerId};
pub use mac::{MacError, MacKey, Tag};

use crate::entropy::Entropy;

/// A 32-byte single-use random value (handshakes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Nonce([u8; 32]);

impl Nonce {
    /// From raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Nonce(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A fresh nonce from `entropy`.
    pub fn generate(entropy: &mut (impl Entropy + ?Sized)) -> Self {
        let mut b = [0u8; 32];
        entropy.fill_bytes(&mut b);
        Nonce(b)
    }
}

impl core::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Nonce(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

/// Writes up to 32 public bytes (nonces, tags, fingerprints) as lowercase hex
/// without allocating.
pub(crate) fn write_hex(f: &mut core::fmt::Formatter<'_>, bytes: &[u8]) -> core::fmt::Result {
    bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
}
