//! A client identity that survives restarts: its id, and request numbers
//! that never repeat (hazard 18).
//!
//! A node's dedup window recognises a retry by `(client id, request
//! number)`. A client that restarts under a fresh id turns its retries into
//! new requests, and one that restarts under its old id but counts from
//! zero again reuses numbers the node may still hold replies for. So a
//! persistent identity keeps two things: the id, and a *high-water mark*
//! of request numbers.
//!
//! # Leases
//!
//! The mark is leased in blocks. The stored record says "no request number
//! at or above `reserved_until` has been issued under this id". A process
//! that loads it may issue `[reserved_until, reserved_until + block)`, but
//! only after it has durably stored the raised mark. A crash therefore
//! leaves a record at or above every number issued, and the next process
//! skips ahead of all of them. The client asks for the next block when half
//! of the current one is left ([`Client::poll_lease`]), so renewals are
//! rare (with the default block, the first after 2³¹ requests, then one per
//! 2³²) and are written off the request path; a client whose renewal has not landed when its lease
//! runs out refuses requests rather than risk a number twice
//! ([`RequestError::LeaseExhausted`]).
//!
//! This module is the format and the arithmetic, with no I/O; the file
//! (atomic writes, locking, fault injection) is in [`file`](mod@file) (feature `std`).
//!
//! # The record (48 bytes, little-endian)
//!
//! | bytes | field | |
//! |---|---|---|
//! | 0..8 | magic | `BUSIDENT` |
//! | 8..10 | version | 1 |
//! | 10..16 | reserved | zero |
//! | 16..32 | client id | `u128` |
//! | 32..40 | `reserved_until` | `u64`: no number at or above it was issued |
//! | 40..48 | checksum | XXH3-64 of bytes 0..40 |
//!
//! [`Client::poll_lease`]: super::Client::poll_lease
//! [`RequestError::LeaseExhausted`]: super::RequestError::LeaseExhausted

#[cfg(feature = "std")]
pub mod file;

use crate::time::UnixNanos;

/// The request numbers a client may issue now: `[next, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The next number to issue.
    pub next: u64,
    /// The first number not covered: issuing it needs a renewal.
    pub until: u64,
    /// How far a renewal raises `until`; zero for a lease that is never
    /// renewed ([`Lease::UNBOUNDED`]).
    pub block: u64,
}

impl Lease {
    /// Every number from zero, never persisted: the client of a process
    /// that draws a fresh id at each start.
    pub const UNBOUNDED: Lease = Lease {
        next: 0,
        until: u64::MAX,
        block: 0,
    };

    /// The default renewal block, 2³²: at a million requests per second a
    /// renewal every 72 minutes, and 2³² restarts before numbers run out.
    pub const DEFAULT_BLOCK: u64 = 1 << 32;

    /// Numbers left before `until`.
    pub fn remaining(&self) -> u64 {
        self.until.saturating_sub(self.next)
    }
}

/// A request number handed out by [`Client::reserve`](super::Client::reserve),
/// with the client id it belongs to and the wall-clock time it was issued:
/// what an application that keeps its own outbox stores before sending, so
/// that after a restart it can resend the request under the same number
/// ([`Client::submit`](super::Client::submit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// The client id that issued it; a client refuses another's.
    pub client: u128,
    /// The request number.
    pub request: u64,
    /// When it was issued. A resend is refused once `request_timeout` has
    /// passed since (the node may have forgotten the first send).
    pub issued_at: UnixNanos,
}

impl Reservation {
    /// The encoded length.
    pub const LEN: usize = 32;

    /// Its encoding, 32 bytes little-endian: client id, number, time.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..16].copy_from_slice(&self.client.to_le_bytes());
        out[16..24].copy_from_slice(&self.request.to_le_bytes());
        out[24..].copy_from_slice(&self.issued_at.as_nanos().to_le_bytes());
        out
    }

    /// Decodes [`Reservation::to_bytes`].
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Reservation {
        let mut client = [0u8; 16];
        client.copy_from_slice(&bytes[..16]);
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        Reservation {
            client: u128::from_le_bytes(client),
            request: word(&bytes[16..24]),
            issued_at: UnixNanos::from_nanos(word(&bytes[24..])),
        }
    }
}

/// The stored identity: see the [module docs](self) for the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The client id.
    pub id: u128,
    /// No request number at or above this was issued under `id`.
    pub reserved_until: u64,
}

/// Why bytes are not an identity record.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not 48 bytes long (a truncated file, or not an identity file).
    #[error("{len} bytes, an identity record is {expected}")]
    Length {
        /// The length found.
        len: usize,
        /// [`IdentityRecord::LEN`].
        expected: usize,
    },
    /// The magic is not `BUSIDENT`: some other file.
    #[error("not a bus client identity (magic {found:02x?})")]
    Magic {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// A version this build does not know.
    #[error("identity format version {found}, this build reads version {supported}")]
    Version {
        /// The version found.
        found: u16,
        /// [`IdentityRecord::VERSION`].
        supported: u16,
    },
    /// The reserved bytes are not zero.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// The checksum does not match: the file is corrupt.
    #[error("checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): corrupt")]
    Checksum {
        /// The stored checksum.
        stored: u64,
        /// The checksum of the stored bytes.
        computed: u64,
    },
}

/// The lease cannot be extended: the numbers are spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("request numbers are exhausted at {reserved_until}: this client id cannot issue more")]
pub struct NumbersExhausted {
    /// The stored mark.
    pub reserved_until: u64,
}

impl IdentityRecord {
    /// The encoded length.
    pub const LEN: usize = 48;
    /// The format version written.
    pub const VERSION: u16 = 1;
    const MAGIC: [u8; 8] = *b"BUSIDENT";

    /// A new identity: `id`, nothing issued yet.
    pub fn new(id: u128) -> Self {
        IdentityRecord {
            id,
            reserved_until: 0,
        }
    }

    /// The encoding.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&Self::MAGIC);
        out[8..10].copy_from_slice(&Self::VERSION.to_le_bytes());
        out[16..32].copy_from_slice(&self.id.to_le_bytes());
        out[32..40].copy_from_slice(&self.reserved_until.to_le_bytes());
        let checksum = twox_hash::XxHash3_64::oneshot(&out[..40]);
        out[40..].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Decodes and checks a record.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let length = FormatError::Length {
            len: bytes.len(),
            expected: Self::LEN,
        };
        // Magic and version come first: another version may differ in length.
        let (Some(head), Some(version)) = (bytes.get(..8), bytes.get(8..10)) else {
            return Err(length);
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(head);
        if magic != Self::MAGIC {
            return Err(FormatError::Magic { found: magic });
        }
        let version = u16::from_le_bytes([version[0], version[1]]);
        if version != Self::VERSION {
            return Err(FormatError::Version {
                found: version,
                supported: Self::VERSION,
            });
        }
        let bytes: &[u8; Self::LEN] = bytes.try_into().map_err(|_| length)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[40..]);
        let stored = u64::from_le_bytes(word);
        let computed = twox_hash::XxHash3_64::oneshot(&bytes[..40]);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        if bytes[10..16].iter().any(|&b| b != 0) {
            return Err(FormatError::Reserved);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[16..32]);
        word.copy_from_slice(&bytes[32..40]);
        Ok(IdentityRecord {
            id: u128::from_le_bytes(id),
            reserved_until: u64::from_le_bytes(word),
        })
    }

    /// The record to store before this process issues any number, and the
    /// lease it then holds: numbers from the stored mark, one `block` of
    /// them.
    pub fn start(&self, block: u64) -> Result<(IdentityRecord, Lease), NumbersExhausted> {
        let until = self.raise(self.reserved_until, block)?;
        let lease = Lease {
            next: self.reserved_until,
            until,
            block,
        };
        Ok((
            IdentityRecord {
                reserved_until: until,
                ..*self
            },
            lease,
        ))
    }

    /// `from + block`, or the error when it would pass `u64::MAX` (the
    /// last number is never issued: it marks exhaustion).
    fn raise(&self, from: u64, block: u64) -> Result<u64, NumbersExhausted> {
        match from.checked_add(block.max(1)) {
            Some(until) => Ok(until),
            None => Err(NumbersExhausted {
                reserved_until: self.reserved_until,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_refuses_damage() {
        let record = IdentityRecord {
            id: 0xa1a2_a3a4_a5a6_a7a8_a9aa_abac_adae_afb0,
            reserved_until: 1 << 40,
        };
        let bytes = record.encode();
        assert_eq!(IdentityRecord::decode(&bytes), Ok(record));
        assert_eq!(
            IdentityRecord::decode(&bytes[..47]),
            Err(FormatError::Length {
                len: 47,
                expected: 48
            })
        );
        let mut foreign = bytes;
        foreign[..8].copy_from_slice(b"#!/bin/s");
        assert!(matches!(
            IdentityRecord::decode(&foreign),
            Err(FormatError::Magic { .. })
        ));
        for i in 8..48 {
            let mut flipped = bytes;
            flipped[i] ^= 0x10;
            let error = IdentityRecord::decode(&flipped).unwrap_err();
            if i < 10 {
                assert!(matches!(error, FormatError::Version { .. }), "byte {i}");
            } else {
                assert!(matches!(error, FormatError::Checksum { .. }), "byte {i}");
            }
        }
    }

    #[test]
    fn start_skips_past_every_number_a_previous_lease_covered() {
        let record = IdentityRecord::new(7);
        let (stored, lease) = record.start(100).unwrap();
        assert_eq!(
            lease,
            Lease {
                next: 0,
                until: 100,
                block: 100
            }
        );
        assert_eq!(stored.reserved_until, 100);
        let (stored, lease) = stored.start(100).unwrap();
        assert_eq!(
            (lease.next, lease.until, stored.reserved_until),
            (100, 200, 200)
        );
        let near_end = IdentityRecord {
            id: 7,
            reserved_until: u64::MAX - 10,
        };
        assert_eq!(
            near_end.start(100),
            Err(NumbersExhausted {
                reserved_until: u64::MAX - 10
            })
        );
    }

    #[test]
    fn reservation_round_trips() {
        let r = Reservation {
            client: 0xa1a2_a3a4_a5a6_a7a8_a9aa_abac_adae_afb0,
            request: 0x0102_0304_0506_0708,
            issued_at: UnixNanos::from_nanos(1_767_225_600_000_000_000),
        };
        assert_eq!(Reservation::from_bytes(r.to_bytes()), r);
    }
}
