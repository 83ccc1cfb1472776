//! Randomness as input.
//!
//! The core never draws randomness itself: whatever needs nonces or jitter
//! takes an [`Entropy`]. Adapters implement it with the OS generator; tests and
//! simulators use [`SeededEntropy`] so every run replays from its seed.

/// A source of random bytes.
pub trait Entropy {
    /// Fills `dest` with random bytes.
    fn fill_bytes(&mut self, dest: &mut [u8]);

    /// A random `u64`.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
}

impl<E: Entropy + ?Sized> Entropy for &mut E {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (**self).fill_bytes(dest)
    }
}

/// A deterministic stream of bytes expanded from a 64-bit seed with the
/// BLAKE3 XOF. For tests and simulations only: anyone who knows the seed
/// knows every byte.
#[derive(Clone)]
pub struct SeededEntropy {
    reader: blake3::OutputReader,
}

impl SeededEntropy {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("bus-proto v1 seeded entropy (tests only)");
        hasher.update(&seed.to_le_bytes());
        SeededEntropy {
            reader: hasher.finalize_xof(),
        }
    }
}

impl core::fmt::Debug for SeededEntropy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SeededEntropy")
    }
}

impl Entropy for SeededEntropy {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.reader.fill(dest);
    }
}
