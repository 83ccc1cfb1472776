//! The 32-byte pre-shared key.

use super::mac::context;
use crate::entropy::Entropy;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Hex characters in a key's text form.
pub const KEY_HEX_LEN: usize = 64;

/// A 32-byte pre-shared key. Zeroized on drop; `Debug` shows only its
/// [`Fingerprint`]; equality is constant-time.
///
/// ```
/// use bus_proto::crypto::Key;
/// let key: Key = " 000102030405060708090A0B0C0D0E0F101112131415161718191a1b1c1d1e1f\n".parse()?;
/// assert_eq!(format!("{key:?}"), format!("Key({})", key.fingerprint()));
/// assert!("00zz".parse::<Key>().is_err());
/// # Ok::<(), bus_proto::crypto::KeyError>(())
/// ```
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key([u8; 32]);

/// A public 8-byte digest of a key, so operators can tell whether two nodes
/// hold the same key without showing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 8]);

impl core::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        super::write_hex(f, &self.0)
    }
}

impl core::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A key could not be parsed or loaded.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The trimmed text is not 64 bytes long.
    #[error("key must be {KEY_HEX_LEN} hex characters, found {found} (after trimming whitespace)")]
    Length {
        /// Length found, in bytes.
        found: usize,
    },
    /// A byte of the text is not a hex digit.
    #[error("key has non-hex byte {byte:#04x} ({}) at offset {offset}", char::from(*byte).escape_default())]
    InvalidHex {
        /// Offset in the original (untrimmed) text.
        offset: usize,
        /// The offending byte.
        byte: u8,
    },
    /// Neither or both of the environment variable and the file were given.
    #[cfg(feature = "std")]
    #[error("give exactly one key source: an environment variable or a key file (got {given})")]
    Source {
        /// How many sources were given (0 or 2).
        given: usize,
    },
    /// The environment variable is missing or not Unicode.
    #[cfg(feature = "std")]
    #[error("key environment variable {name}: {source}")]
    Env {
        /// Variable name.
        name: std::string::String,
        /// Why it could not be read.
        source: std::env::VarError,
    },
    /// The key file could not be read.
    #[cfg(feature = "std")]
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[cfg(feature = "std")]
    #[error("key file {} has mode {mode:o}: group/other access is refused, run `chmod 600` on it", path.display())]
    Permissions {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file's content is not a key.
    #[cfg(feature = "std")]
    #[error("key file {}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with its content.
        source: std::boxed::Box<KeyError>,
    },
    /// A line of a key ring file is not a key.
    #[cfg(feature = "std")]
    #[error("line {line}: {source}")]
    Line {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        source: std::boxed::Box<KeyError>,
    },
    /// A key ring file holds no key, or more than two.
    #[cfg(feature = "std")]
    #[error(
        "expected one key (signs and verifies) and optionally a second (verify-only, during a rotation), one per line; found {found}"
    )]
    KeyCount {
        /// Keys found.
        found: usize,
    },
}

impl Key {
    /// A key from raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Key(bytes)
    }

    /// A fresh random key.
    pub fn generate(entropy: &mut impl Entropy) -> Self {
        let mut key = Key([0; 32]);
        entropy.fill_bytes(&mut key.0);
        key
    }

    /// Parses 64 hex characters, case-insensitive, surrounding whitespace
    /// ignored. Errors name the offset and byte in the original text.
    /// Feature `hex` (part of `std`).
    #[cfg(feature = "hex")]
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let trimmed = text.trim();
        let lead = text.len() - text.trim_start().len();
        if trimmed.len() != KEY_HEX_LEN {
            return Err(KeyError::Length {
                found: trimmed.len(),
            });
        }
        let mut key = Key([0; 32]);
        hex::decode_to_slice(trimmed, &mut key.0).map_err(|e| match e {
            hex::FromHexError::InvalidHexCharacter { index, .. } => KeyError::InvalidHex {
                offset: lead + index,
                byte: trimmed.as_bytes()[index],
            },
            // Unreachable after the length check; report it as one anyway.
            _ => KeyError::Length {
                found: trimmed.len(),
            },
        })?;
        Ok(key)
    }

    /// The key as 64 lowercase hex characters, zeroized on drop. Feature
    /// `hex` (part of `std`).
    #[cfg(feature = "hex")]
    pub fn to_hex(&self) -> zeroize::Zeroizing<alloc::string::String> {
        zeroize::Zeroizing::new(hex::encode(self.0))
    }

    /// The key's public fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = blake3::derive_key(context::FINGERPRINT, &self.0);
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        Fingerprint(out)
    }

    pub(crate) fn secret_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(feature = "hex")]
impl core::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Key::from_hex(s)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Key {}

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Key({})", self.fingerprint())
    }
}

#[cfg(feature = "std")]
mod load {
    use super::{Key, KeyError};
    use crate::crypto::KeyRing;
    use std::boxed::Box;
    use std::path::Path;
    use std::string::String;
    use std::vec::Vec;
    use zeroize::Zeroizing;

    /// Longest key file read; a key is 64 characters plus whitespace.
    const MAX_KEY_FILE: usize = 4096;

    impl Key {
        /// Loads the key from exactly one source: the environment variable
        /// `env` or the file `file`.
        pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<Key, KeyError> {
            match (env, file) {
                (Some(name), None) => Key::from_env(name),
                (None, Some(path)) => Key::from_file(path),
                (None, None) => Err(KeyError::Source { given: 0 }),
                (Some(_), Some(_)) => Err(KeyError::Source { given: 2 }),
            }
        }

        /// Reads the key from an environment variable.
        pub fn from_env(name: &str) -> Result<Key, KeyError> {
            let value = Zeroizing::new(std::env::var(name).map_err(|source| KeyError::Env {
                name: name.into(),
                source,
            })?);
            Key::from_hex(&value)
        }

        /// Reads the key from a file. On Unix the file must not be
        /// accessible to group or others (mode `600` or stricter): a key
        /// that other local users can read is not a secret, so this is an
        /// error rather than a warning.
        pub fn from_file(path: &Path) -> Result<Key, KeyError> {
            let text = read_key_file(path)?;
            Key::from_hex(&text).map_err(|e| KeyError::File {
                path: path.into(),
                source: Box::new(e),
            })
        }
    }

    impl KeyRing {
        /// The cluster keys from exactly one source: the environment
        /// variable `env` (one key) or the key ring file `file`
        /// ([`KeyRing::from_file`]).
        pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<KeyRing, KeyError> {
            match (env, file) {
                (Some(name), None) => Key::from_env(name).map(KeyRing::new),
                (None, Some(path)) => KeyRing::from_file(path),
                (None, None) => Err(KeyError::Source { given: 0 }),
                (Some(_), Some(_)) => Err(KeyError::Source { given: 2 }),
            }
        }

        /// Reads the cluster keys from a file, one hex key per line (blank
        /// lines ignored): the key this node signs and verifies with, and
        /// during a rotation a second one it only verifies
        /// ([`KeyRing::with_previous`]). A file with one key is also a
        /// valid [`Key::from_file`]. Same permission rule as there.
        ///
        /// ```no_run
        /// use bus_proto::crypto::KeyRing;
        /// // /etc/bus/cluster.key during phase 2 of a rotation:
        /// //   <new key, hex>
        /// //   <old key, hex>
        /// let keys = KeyRing::from_file("/etc/bus/cluster.key".as_ref())?;
        /// # Ok::<(), bus_proto::crypto::KeyError>(())
        /// ```
        pub fn from_file(path: &Path) -> Result<KeyRing, KeyError> {
            let text = read_key_file(path)?;
            let in_file = |source| KeyError::File {
                path: path.into(),
                source: Box::new(source),
            };
            let mut keys = text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(index, line)| {
                    Key::from_hex(line).map_err(|e| {
                        in_file(KeyError::Line {
                            line: index + 1,
                            source: Box::new(e),
                        })
                    })
                });
            let (Some(current), previous, None) = (keys.next(), keys.next(), keys.next()) else {
                let found = text.lines().filter(|l| !l.trim().is_empty()).count();
                return Err(in_file(KeyError::KeyCount { found }));
            };
            let ring = KeyRing::new(current?);
            match previous {
                Some(previous) => Ok(ring.with_previous(previous?)),
                None => Ok(ring),
            }
        }
    }

    /// The text of a key file no one else may read: a regular file (not a
    /// FIFO a reader would block on) of at most `MAX_KEY_FILE` bytes, read
    /// into one buffer that is wiped when dropped (no reallocation leaves
    /// copies behind).
    fn read_key_file(path: &Path) -> Result<Zeroizing<String>, KeyError> {
        use std::io::Read;
        let io = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        let invalid = |why: String| io(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(invalid("not a regular file".into()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.into(),
                    mode,
                });
            }
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE + 1));
        file.take(MAX_KEY_FILE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() > MAX_KEY_FILE {
            return Err(invalid(std::format!(
                "larger than {MAX_KEY_FILE} bytes: not a key file"
            )));
        }
        match String::from_utf8(core::mem::take(&mut *bytes)) {
            Ok(text) => Ok(Zeroizing::new(text)),
            Err(error) => {
                // Wipe the bytes the error carries back.
                drop(Zeroizing::new(error.into_bytes()));
                Err(invalid("not UTF-8 text".into()))
            }
        }
    }
}
