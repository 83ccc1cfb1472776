//! Sliding anti-replay window over sequence numbers.

/// A sequence number was refused.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Already accepted.
    #[error("sequence {seq} was already accepted")]
    Duplicate {
        /// The sequence number.
        seq: u64,
    },
    /// Older than the window's trailing edge.
    #[error("sequence {seq} is too old: newest is {top}, window is {width}")]
    TooOld {
        /// The sequence number.
        seq: u64,
        /// Newest accepted.
        top: u64,
        /// Window width.
        width: u64,
    },
    /// Further ahead of the newest accepted than the window is wide.
    #[error("sequence {seq} jumps more than {width} ahead of the newest accepted ({top:?})")]
    TooFarAhead {
        /// The sequence number.
        seq: u64,
        /// Newest accepted, if any.
        top: Option<u64>,
        /// Window width.
        width: u64,
    },
    /// `u64::MAX` would pin the window forever.
    #[error("sequence u64::MAX is never valid")]
    Exhausted,
}

/// Accepts each sequence number at most once, within a window of
/// `64 * WORDS` numbers behind the newest accepted.
///
/// - duplicates and numbers older than the window are refused;
/// - a number more than the window width ahead of the newest accepted is
///   refused, not treated as a reset: a reset would make every number behind
///   the new edge look unseen (hazard 13). Before anything is accepted, the
///   newest is taken as "-1", so the first number must be below the width;
/// - `u64::MAX` is refused so the window can never be pinned at the end.
///
/// [`check`](Self::check) does not mutate; [`accept`](Self::accept) records.
///
/// ```
/// use bus_proto::replay::ReplayWindow1024;
/// let mut w = ReplayWindow1024::new();
/// w.accept(0)?;
/// w.accept(5)?;
/// w.accept(3)?; // late but inside the window
/// assert!(w.accept(3).is_err()); // duplicate
/// assert!(w.accept(5 + 1025).is_err()); // jump beyond the window
/// # Ok::<(), bus_proto::replay::WindowError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReplayWindow<const WORDS: usize> {
    top: Option<u64>,
    /// Bit `i` (word `i / 64`, bit `i % 64`) is set when `top - i` was accepted.
    bits: [u64; WORDS],
}

/// A 1024-wide window.
pub type ReplayWindow1024 = ReplayWindow<16>;

impl<const WORDS: usize> Default for ReplayWindow<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const WORDS: usize> ReplayWindow<WORDS> {
    /// Window width in sequence numbers.
    pub const WIDTH: u64 = 64 * WORDS as u64;
    const NONZERO: () = assert!(WORDS > 0, "a ReplayWindow needs at least one word");

    /// A window that has accepted nothing.
    pub const fn new() -> Self {
        let () = Self::NONZERO;
        ReplayWindow {
            top: None,
            bits: [0; WORDS],
        }
    }

    /// The newest accepted sequence number.
    pub const fn newest(&self) -> Option<u64> {
        self.top
    }

    /// Word and mask of the bit for `behind < WIDTH`.
    #[allow(clippy::cast_possible_truncation)] // behind < WIDTH = 64 * WORDS, a usize
    fn slot(behind: u64) -> (usize, u64) {
        ((behind / 64) as usize, 1 << (behind % 64))
    }

    fn bit(&self, behind: u64) -> bool {
        let (word, mask) = Self::slot(behind);
        self.bits[word] & mask != 0
    }

    /// Would `seq` be accepted? Does not record it.
    pub fn check(&self, seq: u64) -> Result<(), WindowError> {
        if seq == u64::MAX {
            return Err(WindowError::Exhausted);
        }
        let width = Self::WIDTH;
        match self.top {
            None if seq >= width => Err(WindowError::TooFarAhead {
                seq,
                top: None,
                width,
            }),
            None => Ok(()),
            Some(top) if seq > top => {
                if seq - top > width {
                    Err(WindowError::TooFarAhead {
                        seq,
                        top: Some(top),
                        width,
                    })
                } else {
                    Ok(())
                }
            }
            Some(top) => {
                let behind = top - seq;
                if behind >= width {
                    Err(WindowError::TooOld { seq, top, width })
                } else if self.bit(behind) {
                    Err(WindowError::Duplicate { seq })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Checks and records `seq`.
    pub fn accept(&mut self, seq: u64) -> Result<(), WindowError> {
        self.check(seq)?;
        let advance = match self.top {
            None => Self::WIDTH, // everything "behind" is unset already
            Some(top) if seq > top => seq - top,
            Some(_) => 0,
        };
        if advance > 0 {
            self.shift(advance);
            self.top = Some(seq);
        }
        let (word, mask) = Self::slot(self.top.unwrap_or(seq) - seq);
        self.bits[word] |= mask;
        Ok(())
    }

    /// Moves every bit `by` positions towards "older", dropping what falls off.
    fn shift(&mut self, by: u64) {
        if by >= Self::WIDTH {
            self.bits = [0; WORDS];
            return;
        }
        let (words, _) = Self::slot(by);
        let bits = by % 64;
        for w in (0..WORDS).rev() {
            let hi = w.checked_sub(words).map_or(0, |s| self.bits[s]);
            let lo = w
                .checked_sub(words + 1)
                .filter(|_| bits > 0)
                .map_or(0, |s| self.bits[s] >> (64 - bits));
            self.bits[w] = (hi << bits) | lo;
        }
    }
}
