//! The identity file (feature `std`): load it, or create it atomically on
//! the first start, and store lease renewals.
//!
//! Every write goes through [`write_atomically`]: a unique temporary file
//! in the same directory, written and synced, renamed over the target,
//! then the directory synced. After a crash at any step the file holds its
//! old record or its new one, never a mix, and no number is issued from a
//! lease until the record that covers it is durable. Stale temporary files
//! from a crash are removed the next time the identity is opened.
//!
//! One process at a time: an exclusive lock on `NAME.lock` beside the file
//! is held for as long as the [`ClientIdentity`] lives (released by the OS
//! if the process dies), and a second open, in this process or another,
//! fails with [`IdentityError::InUse`]. Two processes issuing numbers
//! under one id would collide. For the same reason the file must be a
//! regular file with one name: a symbolic link or a second hard link
//! (two names, two locks) is refused, and so must a copy be avoided
//! (never copy, restore or snapshot an identity file into use). The lock
//! needs a local filesystem; network filesystems may not enforce it.
//! Unix only: durability needs a directory sync.
//!
//! All file access goes through the [`Filesystem`] trait, so tests can
//! inject faults and crashes at every step; [`OsFilesystem`] is the real
//! one. A file that exists but is not a valid record is an error naming
//! the path and the defect, never a silently fresh identity.

use super::{FormatError, IdentityRecord, Lease, NumbersExhausted};
use crate::entropy::Entropy;
use std::any::Any;
use std::boxed::Box;
use std::ffi::{OsStr, OsString};
use std::format;
use std::io;
use std::path::{Path, PathBuf};
use std::vec::Vec;

/// What is at a path, as [`Filesystem::kind`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file with this many names (hard links).
    Regular {
        /// Its link count.
        links: u64,
    },
    /// A symbolic link (not followed).
    Symlink,
    /// A directory, device, FIFO or socket.
    Other,
}

/// File operations, one per step of an atomic write, so that tests can
/// fail or crash each step. Paths are whole paths.
pub trait Filesystem: Send {
    /// What is at `path`, without following a symbolic link; `None` when
    /// nothing is.
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>>;
    /// At most `limit` bytes from the start of the file.
    fn read(&mut self, path: &Path, limit: u64) -> io::Result<Vec<u8>>;
    /// The names of the entries in `dir`.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Creates `path`, which must not exist (else `AlreadyExists`), with
    /// `bytes` as its contents, readable by its owner only.
    fn create_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Makes `path`'s contents durable.
    fn sync_file(&mut self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes `path`.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Makes `dir`'s entries (creations, renames, removals) durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on `path` (created if missing) until the
    /// guard drops; `None` when someone else holds it.
    fn try_lock(&mut self, path: &Path) -> io::Result<Option<LockGuard>>;
}

/// A lock from [`Filesystem::try_lock`]; dropping it releases the lock.
pub struct LockGuard {
    _held: Box<dyn Any + Send + Sync>,
}

impl LockGuard {
    /// A guard that holds `held` (an open locked file, say) until dropped.
    pub fn new(held: impl Any + Send + Sync) -> Self {
        LockGuard {
            _held: Box::new(held),
        }
    }
}

impl core::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LockGuard")
    }
}

/// The operating system's filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFilesystem;

impl Filesystem for OsFilesystem {
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>> {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let kind = metadata.file_type();
        Ok(Some(if kind.is_symlink() {
            FileKind::Symlink
        } else if kind.is_file() {
            #[cfg(unix)]
            let links = std::os::unix::fs::MetadataExt::nlink(&metadata);
            #[cfg(not(unix))]
            let links = 1;
            FileKind::Regular { links }
        } else {
            FileKind::Other
        }))
    }

    fn read(&mut self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(limit)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn create_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)?.write_all(bytes)
    }

    fn sync_file(&mut self, path: &Path) -> io::Result<()> {
        // fsync flushes the file's data whichever descriptor asks.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        return std::fs::File::open(dir)?.sync_all();
        #[cfg(not(unix))]
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("cannot sync directory {} on this system", dir.display()),
        ));
    }

    fn try_lock(&mut self, path: &Path) -> io::Result<Option<LockGuard>> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        // Some filesystems lock per process (NFS emulates flock with POSIX
        // locks): a registry refuses a second holder in this process too.
        let Some(held) = Held::take(std::fs::canonicalize(path)?) else {
            return Ok(None);
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard::new((file, held)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// A lock path held by this process; released on drop.
struct Held(PathBuf);

/// Every lock path this process holds through [`OsFilesystem`].
static HELD: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

impl Held {
    fn take(path: PathBuf) -> Option<Held> {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        // Lazily: a `Held` made for nothing would release the path on drop.
        held.insert(path.clone()).then(|| Held(path))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// A step of [`write_atomically`], named in its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Creating and writing the temporary file.
    Create,
    /// Syncing the temporary file.
    SyncFile,
    /// Renaming it over the target.
    Rename,
    /// Syncing the directory.
    SyncDir,
}

impl core::fmt::Display for Step {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Step::Create => "writing the temporary file",
            Step::SyncFile => "syncing the temporary file",
            Step::Rename => "renaming it into place",
            Step::SyncDir => "syncing the directory",
        })
    }
}

/// [`write_atomically`] failed; the target holds its old contents (or, if
/// only the directory sync failed, maybe the new ones).
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct WriteError {
    /// The step that failed.
    pub step: Step,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Replaces `path`'s contents with `bytes` so that a crash leaves either
/// the old contents or the new, never a mix: a temporary file beside it
/// (`.NAME.PID.N.tmp`), written and synced, renamed over `path`, then the
/// directory synced. On error the temporary file is removed (best effort).
/// For an application's own outbox records as much as for identities.
///
/// ```
/// use bus_proto::client::identity::file::{OsFilesystem, write_atomically};
///
/// let dir = std::env::temp_dir().join(format!("bus-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("outbox");
/// write_atomically(&mut OsFilesystem, &path, b"request 4096")?;
/// assert_eq!(std::fs::read(&path)?, b"request 4096");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_atomically(
    fs: &mut dyn Filesystem,
    path: &Path,
    bytes: &[u8],
) -> Result<(), WriteError> {
    let fail = |step| move |source| WriteError { step, source };
    let (dir, name) = split(path).map_err(fail(Step::Create))?;
    let mut attempt = 0u32;
    let temp = loop {
        let temp = dir.join(temp_name(name, attempt));
        match fs.create_new(&temp, bytes) {
            Ok(()) => break temp,
            // Someone else's (a crashed process with our pid): not ours to
            // remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if attempt == 15 {
                    return Err(fail(Step::Create)(e));
                }
                attempt += 1;
            }
            Err(e) => {
                // Ours, and it may exist half-written.
                let _ = fs.remove(&temp);
                return Err(fail(Step::Create)(e));
            }
        }
    };
    let placed = fs
        .sync_file(&temp)
        .map_err(fail(Step::SyncFile))
        .and_then(|()| fs.rename(&temp, path).map_err(fail(Step::Rename)));
    if let Err(error) = placed {
        let _ = fs.remove(&temp);
        return Err(error);
    }
    fs.sync_dir(dir).map_err(fail(Step::SyncDir))
}

/// The directory (`.` for a bare name) and the file name of `path`.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

fn temp_prefix(name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    prefix
}

fn temp_name(name: &OsStr, attempt: u32) -> OsString {
    let mut temp = temp_prefix(name);
    temp.push(format!("{}.{attempt}.tmp", std::process::id()));
    temp
}

/// Whether `entry` is exactly a temporary file [`write_atomically`] makes
/// for `name` (`.NAME.PID.N.tmp`), and not, say, one for `NAME.2`.
fn is_temp_of(entry: &OsStr, name: &OsStr) -> bool {
    let prefix = temp_prefix(name);
    let Some(rest) = entry
        .as_encoded_bytes()
        .strip_prefix(prefix.as_encoded_bytes())
        .and_then(|rest| rest.strip_suffix(b".tmp"))
    else {
        return false;
    };
    let mut parts = rest.split(|&b| b == b'.');
    let number = |part: Option<&[u8]>| {
        part.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
    };
    number(parts.next()) && number(parts.next()) && parts.next().is_none()
}

/// Why an identity could not be loaded, created or extended. Each names
/// the file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The path names no file (it ends in `..` or is a root).
    #[error("identity file {}: the path names no file", .path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The directory that should hold the file does not exist.
    #[error("identity file {}: the directory {} does not exist", .path.display(), .dir.display())]
    NoDirectory {
        /// The path given.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Another process (or another handle in this one) holds the identity.
    #[error("identity file {}: in use by another client (lock {} is held)", .path.display(), .lock.display())]
    InUse {
        /// The path given.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The file exists and is not a valid identity record.
    #[error("identity file {}: {error}", .path.display())]
    Format {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        error: FormatError,
    },
    /// Reading, locking or listing failed.
    #[error("identity file {}: {what}: {source}", .path.display())]
    Access {
        /// The path given.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Storing the record failed.
    #[error("identity file {}: {source}", .path.display())]
    Write {
        /// The path given.
        path: PathBuf,
        /// The step and the OS error.
        #[source]
        source: WriteError,
    },
    /// A symbolic link, a second hard link, a directory or a device where
    /// the file should be: two names would mean two locks on one id.
    #[error("identity file {}: {what}; it must be a regular file with one name", .path.display())]
    NotPlain {
        /// The path given.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// [`ClientIdentity::open`] with a block of zero or above 2^63.
    #[error("identity file {}: lease block {block} is not in 1..=2^63", .path.display())]
    Block {
        /// The path given.
        path: PathBuf,
        /// The block asked for.
        block: u64,
    },
    /// A lease write that never reported its outcome (its job panicked or
    /// was dropped with the runtime).
    #[error("the lease write was abandoned before it reported")]
    Abandoned,
    /// The id's request numbers are spent.
    #[error("identity file {}: {error}", .path.display())]
    Exhausted {
        /// The path given.
        path: PathBuf,
        /// The stored mark.
        error: NumbersExhausted,
    },
}

/// A persistent client identity: the id, and the lease of request numbers
/// this process may issue. Holds the file's lock while it lives.
///
/// ```
/// use bus_proto::client::identity::file::{ClientIdentity, OsFilesystem};
/// use bus_proto::entropy::SeededEntropy;
///
/// let dir = std::env::temp_dir().join(format!("bus-doc-identity-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("client.id");
/// // Adapters pass the OS generator; it draws the id on the first start.
/// let mut entropy = SeededEntropy::new(1);
/// let first = ClientIdentity::load_or_create(&path, &mut entropy)?;
/// let (id, lease) = (first.id(), first.lease());
/// assert_eq!(lease.next, 0);
/// drop(first); // a process exits (or crashes)
///
/// let second = ClientIdentity::load_or_create(&path, &mut entropy)?;
/// assert_eq!(second.id(), id);
/// assert!(second.lease().next >= lease.until); // never a number twice
/// # drop(second);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ClientIdentity {
    path: PathBuf,
    stored: IdentityRecord,
    lease: Lease,
    created: bool,
    fs: Box<dyn Filesystem>,
    _lock: LockGuard,
}

impl core::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("path", &self.path)
            .field("id", &format_args!("{:#x}", self.stored.id))
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Loads the identity at `path`, or creates it on the first start
    /// with an id drawn from `entropy`; then stores a raised mark, so the
    /// returned lease starts past every number any earlier process could
    /// have issued. Uses the OS filesystem and [`Lease::DEFAULT_BLOCK`].
    ///
    /// Blocks on two fsyncs: call it before starting the runtime's work,
    /// or on its blocking pool. A relative path is resolved once, here.
    pub fn load_or_create(
        path: impl AsRef<Path>,
        entropy: &mut dyn Entropy,
    ) -> Result<ClientIdentity, IdentityError> {
        Self::open(
            Box::new(OsFilesystem),
            path.as_ref(),
            Lease::DEFAULT_BLOCK,
            entropy,
        )
    }

    /// [`ClientIdentity::load_or_create`] on `fs`, leasing `block` numbers
    /// at a time.
    pub fn open(
        mut fs: Box<dyn Filesystem>,
        path: &Path,
        block: u64,
        entropy: &mut dyn Entropy,
    ) -> Result<ClientIdentity, IdentityError> {
        if !(1..=1 << 63).contains(&block) {
            let path = path.to_path_buf();
            return Err(IdentityError::Block { path, block });
        }
        // A later `chdir` must not move the file renewals write.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let Ok((dir, name)) = split(&path) else {
            return Err(IdentityError::NotAFile { path });
        };
        let (dir, name) = (dir.to_path_buf(), name.to_os_string());
        let access = |what, source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => IdentityError::NoDirectory {
                path: path.clone(),
                dir: dir.clone(),
            },
            _ => IdentityError::Access {
                path: path.clone(),
                what,
                source,
            },
        };
        let mut lock_name = name.clone();
        lock_name.push(".lock");
        let lock = dir.join(lock_name);
        let Some(guard) = fs.try_lock(&lock).map_err(|e| access("locking", e))? else {
            return Err(IdentityError::InUse {
                path: path.clone(),
                lock,
            });
        };
        // Under the lock nobody else writes: temporaries left are a crash's.
        // (Cleaning up is a courtesy: a directory we cannot list is fine.)
        for entry in fs.list(&dir).unwrap_or_default() {
            if is_temp_of(&entry, &name) {
                let _ = fs.remove(&dir.join(&entry));
            }
        }
        let not_plain = |what| IdentityError::NotPlain {
            path: path.clone(),
            what,
        };
        let kind = fs.kind(&path).map_err(|e| access("inspecting", e))?;
        let (record, created) = match kind {
            Some(FileKind::Symlink) => return Err(not_plain("a symbolic link")),
            Some(FileKind::Other) => return Err(not_plain("not a regular file")),
            Some(FileKind::Regular { links }) if links > 1 => {
                return Err(not_plain("a file with more than one hard link"));
            }
            Some(FileKind::Regular { .. }) => {
                // One byte more than a record: a longer file is refused whole.
                let limit = IdentityRecord::LEN as u64 + 1;
                let bytes = fs.read(&path, limit).map_err(|e| access("reading", e))?;
                match IdentityRecord::decode(&bytes) {
                    Ok(record) => (record, false),
                    Err(error) => return Err(IdentityError::Format { path, error }),
                }
            }
            None => {
                let mut id = [0u8; 16];
                entropy.fill_bytes(&mut id);
                (IdentityRecord::new(u128::from_le_bytes(id)), true)
            }
        };
        let (stored, lease) = match record.start(block) {
            Ok(started) => started,
            Err(error) => return Err(IdentityError::Exhausted { path, error }),
        };
        if let Err(source) = write_atomically(&mut *fs, &path, &stored.encode()) {
            return Err(IdentityError::Write { path, source });
        }
        Ok(ClientIdentity {
            path,
            stored,
            lease,
            created,
            fs,
            _lock: guard,
        })
    }

    /// The client id.
    pub fn id(&self) -> u128 {
        self.stored.id
    }

    /// The numbers this process may issue (as started, raised by
    /// [`ClientIdentity::extend`]): hand it to exactly one client, at its
    /// start (two clients from one lease would issue the same numbers).
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// True if this start created the file (the id is new).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `until` as the mark (a client's `poll_lease`), so numbers
    /// below it may be issued. A lower mark is a no-op.
    pub fn extend(&mut self, until: u64) -> Result<(), IdentityError> {
        if until <= self.stored.reserved_until {
            return Ok(());
        }
        let record = IdentityRecord {
            reserved_until: until,
            ..self.stored
        };
        write_atomically(&mut *self.fs, &self.path, &record.encode()).map_err(|source| {
            IdentityError::Write {
                path: self.path.clone(),
                source,
            }
        })?;
        self.stored = record;
        self.lease.until = until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_temporaries_are_recognised() {
        let name = OsStr::new("client.id");
        assert!(is_temp_of(OsStr::new(".client.id.4242.0.tmp"), name));
        assert!(is_temp_of(&temp_name(name, 3), name));
        for other in [
            ".client.id.2.4242.0.tmp", // the temporary of `client.id.2`
            ".client.id.outbox.4242.0.tmp",
            ".client.id.4242.tmp",
            ".client.id..0.tmp",
            ".client.id.42x.0.tmp",
            "client.id",
            "client.id.lock",
        ] {
            assert!(!is_temp_of(OsStr::new(other), name), "{other}");
        }
    }
}
