//! Persistent client identities (hazard 18, issue: at-most-once across
//! restarts): the file survives a crash at every step of every write, bad
//! files are refused by name, one process holds an identity at a time, and
//! a restarted client's resends are answered from the node's dedup window.

mod support {
    pub mod net;
}

use bus_proto::client::identity::file::{
    ClientIdentity, FileKind, Filesystem, IdentityError, LockGuard, OsFilesystem, Step,
    write_atomically,
};
use bus_proto::client::identity::{FormatError, IdentityRecord, Lease};
use bus_proto::client::{ClientEvent, RequestError, Reservation};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::node::NodeEvent;
use bus_proto::time::{Now, UnixNanos};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::net::{Net, config, replies};

// ---------------------------------------------------------------------------
// An in-memory filesystem with a crash model.
// ---------------------------------------------------------------------------

/// A file's contents and whether they were synced since written.
#[derive(Clone, Debug)]
struct Inode {
    data: Vec<u8>,
    synced: bool,
}

/// A directory change not yet synced.
#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

/// One directory's worth of state: what the running process sees, and
/// what a crash leaves. Data not synced may be torn; directory changes not
/// synced survive a crash as an ordered prefix (each one atomic).
#[derive(Clone, Debug, Default)]
struct Disk {
    names: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    unsynced: Vec<DirOp>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    locks: BTreeSet<PathBuf>,
}

fn apply(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link(path, inode) => {
            names.insert(path.clone(), *inode);
        }
        DirOp::Unlink(path) => {
            names.remove(path);
        }
        DirOp::Rename(from, to) => {
            if let Some(inode) = names.remove(from) {
                names.insert(to.clone(), inode);
            }
        }
    }
}

/// A number in `0..=n`.
fn upto(rng: &mut SeededEntropy, n: usize) -> usize {
    let bound = u64::try_from(n).expect("fits") + 1;
    usize::try_from(rng.next_u64() % bound).expect("fits")
}

impl Disk {
    /// The machine loses power: `seed` picks how much unsynced state made
    /// it. Locks die with their process.
    fn crash(&mut self, seed: u64) {
        let mut rng = SeededEntropy::new(seed);
        let kept = upto(&mut rng, self.unsynced.len());
        for op in &self.unsynced[..kept] {
            apply(&mut self.durable, op);
        }
        self.unsynced.clear();
        self.names = self.durable.clone();
        for inode in self.inodes.values_mut() {
            if !inode.synced {
                let keep = upto(&mut rng, inode.data.len());
                inode.data.truncate(keep);
                inode.synced = true;
            }
        }
        self.locks.clear();
    }

    fn file(&self, path: &Path) -> Option<&[u8]> {
        let inode = self.names.get(path)?;
        Some(&self.inodes[inode].data)
    }

    fn temporaries(&self) -> Vec<PathBuf> {
        self.names
            .keys()
            .filter(|p| p.to_string_lossy().ends_with(".tmp"))
            .cloned()
            .collect()
    }
}

/// When the injected fault strikes: the `at`-th mutating step (0-based).
#[derive(Clone, Copy, Debug)]
struct Fault {
    at: usize,
    /// The step takes effect before the fault (else the fault comes first).
    after_effect: bool,
    /// The process dies (every later call fails); else only this step
    /// fails, like a full disk, and the process goes on.
    fatal: bool,
}

/// A crash at step `at`.
fn crash_at(at: usize, after_effect: bool) -> Fault {
    Fault {
        at,
        after_effect,
        fatal: true,
    }
}

#[derive(Default)]
struct FaultState {
    fault: Option<Fault>,
    steps: usize,
    /// The fault struck: the process is dead and every later call fails.
    struck: bool,
}

/// A handle on a [`Disk`] for one process.
#[derive(Clone)]
struct MemFs {
    disk: Arc<Mutex<Disk>>,
    faults: Arc<Mutex<FaultState>>,
}

fn dead() -> io::Error {
    io::Error::other("injected fault")
}

impl MemFs {
    fn new(disk: &Arc<Mutex<Disk>>, fault: Option<Fault>) -> MemFs {
        MemFs {
            disk: Arc::clone(disk),
            faults: Arc::new(Mutex::new(FaultState {
                fault,
                ..FaultState::default()
            })),
        }
    }

    fn struck(&self) -> bool {
        self.faults.lock().unwrap().struck
    }

    /// Runs a mutating step unless the fault strikes here.
    fn step(&self, effect: impl FnOnce(&mut Disk) -> io::Result<()>) -> io::Result<()> {
        let mut faults = self.faults.lock().unwrap();
        if faults.struck {
            return Err(dead());
        }
        let index = faults.steps;
        faults.steps += 1;
        match faults.fault {
            Some(f) if f.at == index => {
                faults.struck = f.fatal;
                if f.after_effect {
                    effect(&mut self.disk.lock().unwrap())?;
                }
                Err(dead())
            }
            _ => effect(&mut self.disk.lock().unwrap()),
        }
    }
}

struct MemLock {
    disk: Arc<Mutex<Disk>>,
    path: PathBuf,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        self.disk.lock().unwrap().locks.remove(&self.path);
    }
}

impl Filesystem for MemFs {
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>> {
        if self.struck() {
            return Err(dead());
        }
        let disk = self.disk.lock().unwrap();
        Ok(disk
            .names
            .contains_key(path)
            .then_some(FileKind::Regular { links: 1 }))
    }

    fn read(&mut self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        if self.struck() {
            return Err(dead());
        }
        let disk = self.disk.lock().unwrap();
        let bytes = disk.file(path).ok_or(io::ErrorKind::NotFound)?;
        let limit = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        Ok(bytes[..limit].to_vec())
    }

    fn list(&mut self, _dir: &Path) -> io::Result<Vec<OsString>> {
        let disk = self.disk.lock().unwrap();
        Ok(disk
            .names
            .keys()
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn create_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.step(|disk| {
            if disk.names.contains_key(path) {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            let inode = disk.next_inode;
            disk.next_inode += 1;
            disk.inodes.insert(
                inode,
                Inode {
                    data: bytes.to_vec(),
                    synced: false,
                },
            );
            disk.names.insert(path.to_path_buf(), inode);
            disk.unsynced.push(DirOp::Link(path.to_path_buf(), inode));
            Ok(())
        })
    }

    fn sync_file(&mut self, path: &Path) -> io::Result<()> {
        self.step(|disk| {
            let inode = *disk.names.get(path).ok_or(io::ErrorKind::NotFound)?;
            disk.inodes.get_mut(&inode).expect("inode").synced = true;
            Ok(())
        })
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.step(|disk| {
            if !disk.names.contains_key(from) {
                return Err(io::ErrorKind::NotFound.into());
            }
            let op = DirOp::Rename(from.to_path_buf(), to.to_path_buf());
            apply(&mut disk.names, &op);
            disk.unsynced.push(op);
            Ok(())
        })
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.step(|disk| {
            disk.names.remove(path).ok_or(io::ErrorKind::NotFound)?;
            disk.unsynced.push(DirOp::Unlink(path.to_path_buf()));
            Ok(())
        })
    }

    fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
        self.step(|disk| {
            let ops = std::mem::take(&mut disk.unsynced);
            for op in &ops {
                apply(&mut disk.durable, op);
            }
            Ok(())
        })
    }

    fn try_lock(&mut self, path: &Path) -> io::Result<Option<LockGuard>> {
        if self.struck() {
            return Err(dead());
        }
        let mut disk = self.disk.lock().unwrap();
        if !disk.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(LockGuard::new(MemLock {
            disk: Arc::clone(&self.disk),
            path: path.to_path_buf(),
        })))
    }
}

const PATH: &str = "/ids/client.id";

fn open(
    disk: &Arc<Mutex<Disk>>,
    fault: Option<Fault>,
    block: u64,
    seed: u64,
) -> Result<ClientIdentity, IdentityError> {
    open_on(MemFs::new(disk, fault), block, seed)
}

fn open_on(fs: MemFs, block: u64, seed: u64) -> Result<ClientIdentity, IdentityError> {
    let mut entropy = SeededEntropy::new(seed);
    ClientIdentity::open(Box::new(fs), Path::new(PATH), block, &mut entropy)
}

/// The record a fresh process would read now, if any (valid or not).
fn stored(disk: &Arc<Mutex<Disk>>) -> Option<Result<IdentityRecord, FormatError>> {
    let disk = disk.lock().unwrap();
    disk.file(Path::new(PATH)).map(IdentityRecord::decode)
}

/// Every step of the first start fails or crashes, before or after its
/// effect, under many crash outcomes: afterwards there is no file (the
/// next start creates one) or a complete valid one, never a torn one,
/// and the next start succeeds.
#[test]
fn a_crash_at_any_step_of_the_first_start_leaves_no_file_or_a_valid_one() {
    let mut outcomes = BTreeMap::new();
    for at in 0..8 {
        for after_effect in [false, true] {
            for seed in 0..32 {
                let disk = Arc::new(Mutex::new(Disk::default()));
                let fault = crash_at(at, after_effect);
                let crashed = open(&disk, Some(fault), 100, 7);
                let Err(error) = crashed else {
                    // Fewer steps than `at`: nothing to inject.
                    continue;
                };
                assert!(
                    matches!(error, IdentityError::Write { .. }),
                    "{fault:?}: {error}"
                );
                disk.lock().unwrap().crash(seed);
                let left = stored(&disk);
                if let Some(record) = &left {
                    let record = record.unwrap_or_else(|e| {
                        panic!("{fault:?} crash seed {seed}: a torn identity file: {e}")
                    });
                    assert_eq!(record.reserved_until, 100, "{fault:?} seed {seed}");
                }
                let identity = open(&disk, None, 100, 8).expect("the next start succeeds");
                let label = match left {
                    Some(_) => {
                        assert!(!identity.created(), "{fault:?} seed {seed}");
                        assert_eq!(identity.lease().next, 100, "{fault:?} seed {seed}");
                        "loaded"
                    }
                    None => {
                        assert!(identity.created(), "{fault:?} seed {seed}");
                        "created"
                    }
                };
                *outcomes.entry(label).or_insert(0u32) += 1;
                assert!(
                    disk.lock().unwrap().temporaries().is_empty(),
                    "{fault:?} seed {seed}: a stale temporary file was left"
                );
            }
        }
    }
    println!("after a crash in the first start: {outcomes:?}");
    assert!(outcomes.contains_key("loaded") && outcomes.contains_key("created"));
}

/// Incarnations of one identity, each crashing at a random step of a
/// random write (its start or a lease renewal) after issuing numbers from
/// its lease: every next incarnation starts past every number any earlier
/// one issued, under the same id.
#[test]
fn every_incarnation_starts_past_every_number_issued_before_a_crash() {
    for seed in 0..300u64 {
        let mut rng = SeededEntropy::new(seed);
        let disk = Arc::new(Mutex::new(Disk::default()));
        let block = 1 + rng.next_u64() % 50;
        let mut id = None;
        let mut issued_max: Option<u64> = None;
        for incarnation in 0..12 {
            // Some starts crash before they hand out a lease.
            let crash_start = rng.next_u64().is_multiple_of(4);
            let fault =
                crash_start.then(|| crash_at(upto(&mut rng, 5), rng.next_u64().is_multiple_of(2)));
            let fs = MemFs::new(&disk, fault);
            let faults = Arc::clone(&fs.faults);
            let mut identity = match open_on(fs, block, seed * 100 + incarnation) {
                Ok(identity) => identity,
                Err(error) => {
                    assert!(fault.is_some(), "seed {seed}: {error}");
                    disk.lock().unwrap().crash(rng.next_u64());
                    continue;
                }
            };
            assert_eq!(
                *id.get_or_insert(identity.id()),
                identity.id(),
                "seed {seed}"
            );
            let mut lease = identity.lease();
            if let Some(max) = issued_max {
                assert!(
                    lease.next > max,
                    "seed {seed} incarnation {incarnation}: lease {lease:?} reuses number {max}"
                );
            }
            // Sometimes the process dies in the middle of a renewal.
            if rng.next_u64().is_multiple_of(2) {
                let mut faults = faults.lock().unwrap();
                let at = faults.steps + upto(&mut rng, 15);
                faults.fault = Some(crash_at(at, rng.next_u64().is_multiple_of(2)));
            }
            // Issue numbers from the lease, renewing it as a client would,
            // until the process dies.
            for _ in 0..(rng.next_u64() % 6) {
                let n = rng.next_u64() % (lease.until - lease.next + 1);
                if n > 0 {
                    lease.next += n;
                    issued_max = Some(lease.next - 1);
                }
                let until = lease.until + block;
                match identity.extend(until) {
                    Ok(()) => lease.until = until,
                    Err(_) => break,
                }
            }
            drop(identity);
            disk.lock().unwrap().crash(rng.next_u64());
            match stored(&disk) {
                None | Some(Ok(_)) => {}
                Some(Err(e)) => panic!("seed {seed}: a torn identity file: {e}"),
            }
        }
    }
}

/// A failing step (not a crash: a full disk, say) is an error naming the
/// step; the write leaves no temporary file behind, and the old contents
/// unless only the directory sync failed (the rename is then visible but
/// may not be durable).
#[test]
fn a_failed_write_names_its_step_and_leaves_the_old_contents() {
    let steps = [Step::Create, Step::SyncFile, Step::Rename, Step::SyncDir];
    for (at, step) in steps.into_iter().enumerate() {
        let disk = Arc::new(Mutex::new(Disk::default()));
        let mut fs = MemFs::new(&disk, None);
        write_atomically(&mut fs, Path::new(PATH), b"old").unwrap();
        let fault = Fault {
            at,
            after_effect: false,
            fatal: false,
        };
        let mut failing = MemFs::new(&disk, Some(fault));
        let error = write_atomically(&mut failing, Path::new(PATH), b"new").unwrap_err();
        assert_eq!(error.step, step);
        assert!(error.to_string().contains(&step.to_string()), "{error}");
        let disk = disk.lock().unwrap();
        let expected: &[u8] = if step == Step::SyncDir {
            b"new"
        } else {
            b"old"
        };
        assert_eq!(disk.file(Path::new(PATH)), Some(expected), "{step:?}");
        assert!(disk.temporaries().is_empty(), "{step:?}");
    }
}

// ---------------------------------------------------------------------------
// The real filesystem: bad files, the lock, racing starts.
// ---------------------------------------------------------------------------

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bus-identity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Held by the tests that take real locks or spawn processes: a fork
/// holds a copy of every open descriptor (and so every lock) until its
/// exec, which would make a lock test in another thread see `InUse`.
static REAL_LOCKS: Mutex<()> = Mutex::new(());

fn load(path: &Path) -> Result<ClientIdentity, IdentityError> {
    ClientIdentity::load_or_create(path, &mut SeededEntropy::new(3))
}

#[test]
fn damaged_foreign_and_unreadable_files_are_refused_by_name() {
    let _serial = REAL_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("damaged");
    let path = dir.join("client.id");
    let good = {
        let identity = load(&path).unwrap();
        assert!(identity.created());
        identity.id()
    };
    let valid = std::fs::read(&path).unwrap();

    type Expected = fn(&FormatError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
        ("truncated", valid[..30].to_vec(), |e| {
            matches!(e, FormatError::Length { len: 30, .. })
        }),
        ("empty", Vec::new(), |e| {
            matches!(e, FormatError::Length { len: 0, .. })
        }),
        ("foreign", b"[client]\nid = 7\n".repeat(3), |e| {
            matches!(e, FormatError::Magic { .. })
        }),
        (
            "wrong version",
            {
                let mut v = valid.clone();
                v[8] = 9;
                v
            },
            |e| {
                matches!(
                    e,
                    FormatError::Version {
                        found: 9,
                        supported: 1
                    }
                )
            },
        ),
        (
            "corrupt",
            {
                let mut v = valid.clone();
                v[20] ^= 1;
                v
            },
            |e| matches!(e, FormatError::Checksum { .. }),
        ),
    ];
    for (what, bytes, expected) in cases {
        std::fs::write(&path, &bytes).unwrap();
        match load(&path) {
            Err(IdentityError::Format { path: named, error }) => {
                assert_eq!(named, path, "{what}");
                assert!(expected(&error), "{what}: {error}");
                let line = IdentityError::Format { path: named, error }.to_string();
                assert!(line.contains(&*path.to_string_lossy()), "{what}: {line}");
                println!("{what}: {line}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{what}: left as it was"
        );
    }

    // Not a plain file: a directory, a symbolic link (even to the valid
    // record, and dangling ones above all), a second hard link.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let error = load(&path).unwrap_err();
    assert!(matches!(error, IdentityError::NotPlain { .. }), "{error}");
    println!("a directory: {error}");
    std::fs::remove_dir(&path).unwrap();
    let real = dir.join("real.id");
    std::fs::write(&real, &valid).unwrap();
    std::os::unix::fs::symlink(&real, &path).unwrap();
    let error = load(&path).unwrap_err();
    assert!(
        matches!(
            error,
            IdentityError::NotPlain {
                what: "a symbolic link",
                ..
            }
        ),
        "{error}"
    );
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(dir.join("unmounted/volume.id"), &path).unwrap();
    let error = load(&path).unwrap_err();
    assert!(
        matches!(error, IdentityError::NotPlain { .. }),
        "dangling: {error}"
    );
    println!("a dangling symbolic link: {error}");
    std::fs::remove_file(&path).unwrap();
    std::fs::hard_link(&real, &path).unwrap();
    let error = load(&path).unwrap_err();
    assert!(matches!(error, IdentityError::NotPlain { .. }), "{error}");
    println!("a second hard link: {error}");
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&real).unwrap();

    let missing = dir.join("no-such-dir").join("client.id");
    let error = load(&missing).unwrap_err();
    assert!(
        matches!(error, IdentityError::NoDirectory { .. }),
        "{error}"
    );
    println!("missing directory: {error}");
    assert!(matches!(
        load(Path::new("/")),
        Err(IdentityError::NotAFile { .. })
    ));

    // The good record still loads where it is.
    std::fs::write(&path, &valid).unwrap();
    assert_eq!(load(&path).unwrap().id(), good);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn racing_first_starts_on_threads_end_with_one_holder_and_one_valid_file() {
    let _serial = REAL_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    for round in 0..20 {
        let dir = scratch(&format!("race-{round}"));
        let path = dir.join("client.id");
        let barrier = std::sync::Barrier::new(6);
        let results: Vec<Result<ClientIdentity, IdentityError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|t| {
                    let (path, barrier) = (&path, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        ClientIdentity::load_or_create(path, &mut SeededEntropy::new(t))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let holders: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(holders.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, IdentityError::InUse { .. }),
                    "round {round}: {e}"
                );
            }
        }
        let record = IdentityRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(record.id, holders[0].id());
        drop(results);
        // Released: the next start loads the same id.
        assert_eq!(load(&path).unwrap().id(), record.id);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The child side of the process race: opens the identity named by
/// `BUS_IDENTITY_CHILD` and prints one line; a holder keeps the lock until
/// its stdin closes. Run by the parent test; on its own it checks a start
/// in a scratch directory.
#[test]
#[ignore = "a child process of racing_first_starts_in_processes"]
fn identity_child_process() {
    let path = match std::env::var_os("BUS_IDENTITY_CHILD") {
        Some(path) => PathBuf::from(path),
        None => scratch("child").join("client.id"),
    };
    let mut entropy = SeededEntropy::new(u64::from(std::process::id()));
    match ClientIdentity::load_or_create(&path, &mut entropy) {
        Ok(identity) => {
            println!("HOLD {:x} {}", identity.id(), identity.lease().next);
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        }
        Err(IdentityError::InUse { .. }) => println!("INUSE"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn racing_first_starts_in_processes_end_with_one_holder_and_one_valid_file() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let _serial = REAL_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = scratch("processes");
    let path = dir.join("client.id");
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "identity_child_process",
                "--nocapture",
                "--quiet",
            ])
            .env("BUS_IDENTITY_CHILD", &path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The child's line, then the rest of its output (read to the end, so
    // that the child never writes into a closed pipe).
    let first_line = |child: &mut std::process::Child| {
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = out
            .by_ref()
            .map(Result::unwrap)
            .find(|l| l.starts_with("HOLD") || l.starts_with("INUSE"))
            .unwrap_or_default();
        (line, std::thread::spawn(move || out.count()))
    };
    let mut children: Vec<_> = (0..4).map(|_| spawn()).collect();
    let (lines, rests): (Vec<String>, Vec<_>) = children.iter_mut().map(first_line).unzip();
    let holders: Vec<&String> = lines.iter().filter(|l| l.starts_with("HOLD")).collect();
    assert_eq!(holders.len(), 1, "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| *l == "INUSE").count(),
        3,
        "{lines:?}"
    );
    for (mut child, rest) in children.into_iter().zip(rests) {
        drop(child.stdin.take());
        rest.join().unwrap();
        assert!(child.wait().unwrap().success());
    }
    let record = IdentityRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
    let held: Vec<&str> = holders[0].split(' ').collect();
    assert_eq!(format!("{:x}", record.id), held[1]);
    // A later process gets the same id, numbers past the holder's lease.
    let mut later = spawn();
    let (line, rest) = first_line(&mut later);
    drop(later.stdin.take());
    rest.join().unwrap();
    assert!(later.wait().unwrap().success());
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[1], held[1], "{line}");
    let next: u64 = fields[2].parse().unwrap();
    assert!(next >= Lease::DEFAULT_BLOCK, "{line}");
    println!("holder {}, later start {line}", holders[0]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn write_atomically_on_the_os_replaces_whole_and_cleans_up() {
    let dir = scratch("atomic");
    let path = dir.join("outbox");
    write_atomically(&mut OsFilesystem, &path, b"one").unwrap();
    write_atomically(&mut OsFilesystem, &path, b"two").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![OsString::from("outbox")]);
    // A target in a missing directory fails at the first step.
    let error = write_atomically(&mut OsFilesystem, &dir.join("x/y"), b"z").unwrap_err();
    assert_eq!(error.step, Step::Create);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------
// The client: reservations, submits, leases.
// ---------------------------------------------------------------------------

fn requests(events: &[NodeEvent]) -> Vec<(u64, Bytes)> {
    events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Request { request, body, .. } => Some((request.request, body.clone())),
            _ => None,
        })
        .collect()
}

/// The requests that failed, among client events.
fn failed(events: &[ClientEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Failed { request, .. } => Some(*request),
            _ => None,
        })
        .collect()
}

fn lease(next: u64, until: u64, block: u64) -> Lease {
    Lease { next, until, block }
}

#[test]
fn submit_accepts_only_issued_numbers_not_outstanding_and_young_enough() {
    let mut net = Net::new(config().validate().unwrap(), 1);
    let j = net.add_client_with_lease(0x1D, 0, lease(1000, 2000, 1000));
    let at = net.at();
    let client = &mut net.clients[j];
    let reserved = client.reserve(at).unwrap();
    assert_eq!(reserved.request, 1000);
    assert_eq!(reserved.issued_at, at.wall);
    let unissued = Reservation {
        client: 0x1D,
        request: 1001,
        issued_at: at.wall,
    };
    assert_eq!(
        client.submit(at, unissued, 1, Bytes::new()),
        Err(RequestError::NotReserved {
            request: 1001,
            next: 1001
        })
    );
    client.submit(at, reserved, 1, Bytes::new()).unwrap();
    assert_eq!(
        client.submit(at, reserved, 1, Bytes::new()),
        Err(RequestError::AlreadyOutstanding { request: 1000 })
    );
    // A number of an earlier incarnation, issued 2 s ago: too old.
    let old = Reservation {
        client: 0x1D,
        request: 17,
        issued_at: UnixNanos::from_nanos(at.wall.as_nanos() - 2_000_000_000),
    };
    assert!(matches!(
        client.submit(at, old, 1, Bytes::new()),
        Err(RequestError::TooOld { request: 17, .. })
    ));
    // Issued 1.5 s ago: accepted, and it expires 0.5 s from now.
    // Another client's reservation, or one issued in this clock's future
    // (the clock stepped back: its age is unknown), is refused.
    let foreign = Reservation {
        client: 0xBEEF,
        ..old
    };
    assert_eq!(
        client.submit(at, foreign, 1, Bytes::new()),
        Err(RequestError::WrongClient {
            request: 17,
            owner: 0xBEEF,
            client: 0x1D
        })
    );
    let future = Reservation {
        issued_at: UnixNanos::from_nanos(at.wall.as_nanos() + 5_000_000_000),
        ..old
    };
    assert!(matches!(
        client.submit(at, future, 1, Bytes::new()),
        Err(RequestError::IssuedInFuture { request: 17, .. })
    ));
    let aging = Reservation {
        client: 0x1D,
        request: 18,
        issued_at: UnixNanos::from_nanos(at.wall.as_nanos() - 1_500_000_000),
    };
    client.submit(at, aging, 1, Bytes::new()).unwrap();
    let expires = net.clients[j].poll_timeout().unwrap();
    assert!(expires <= at.mono.saturating_add(Duration::from_millis(500)));
    net.run_for(Duration::from_millis(600));
    let failed = failed(&net.take_client_events(j));
    assert_eq!(failed, vec![18], "only the aged resend expired");
}

#[test]
fn the_lease_is_renewed_at_half_and_never_issued_past_before_it_is_stored() {
    let mut net = Net::new(config().validate().unwrap(), 1);
    let j = net.add_client_with_lease(0x1E, 0, lease(0, 4, 4));
    let at = net.at();
    let client = &mut net.clients[j];
    assert_eq!(client.poll_lease(at), None, "all four left");
    client.reserve(at).unwrap();
    assert_eq!(client.poll_lease(at), None, "three left");
    client.reserve(at).unwrap();
    assert_eq!(client.poll_lease(at), Some(8), "half left: renew");
    assert_eq!(client.poll_lease(at), None, "asked once at a time");
    assert!(client.lease_pending());
    client.reserve(at).unwrap();
    client.reserve(at).unwrap();
    assert_eq!(
        client.reserve(at),
        Err(RequestError::LeaseExhausted { until: 4 })
    );
    assert_eq!(
        client.request(at, 1, Bytes::new()),
        Err(RequestError::LeaseExhausted { until: 4 })
    );
    // The write failed: asked again only a second later.
    client.lease_failed(at);
    assert!(!client.lease_pending());
    assert_eq!(client.poll_lease(at), None);
    let later = Now {
        mono: at.mono.saturating_add(Duration::from_secs(1)),
        wall: at.wall,
    };
    assert_eq!(client.poll_lease(later), Some(8));
    client.lease_extended(8);
    assert_eq!(client.reserve(later).unwrap().request, 4);
    assert_eq!(client.lease(), lease(5, 8, 4));
    // An unbounded client never asks.
    let k = net.add_client(0x1F, 0);
    let at = net.at();
    for _ in 0..10 {
        net.clients[k].reserve(at).unwrap();
    }
    assert_eq!(net.clients[k].poll_lease(at), None);
}

/// The scenario the identity exists for: a client process dies while its
/// request executes; its successor, under the same identity, resends the
/// request from its outbox and continues with fresh numbers. The node
/// executes the request once, and answers the resend with the one reply:
/// routed to the new connection when the execution ends after the
/// restart, from the dedup window's cache when it ended before.
#[test]
fn a_restarted_client_resends_its_outbox_and_the_node_executes_it_once() {
    for reply_while_down in [false, true] {
        let mut net = Net::new(config().validate().unwrap(), 1);
        let record = IdentityRecord::new(0xC0FFEE);
        let (record, first_lease) = record.start(64).unwrap();
        let a = net.add_client_with_lease(record.id, 0, first_lease);
        net.run_for(Duration::from_millis(10));
        let at = net.at();
        let reservation = net.clients[a].reserve(at).unwrap();
        let body = Bytes::from_static(b"transfer 10");
        // The outbox entry: (reservation, operation, body), stored first.
        let outbox = (reservation.to_bytes(), 3u32, body.clone());
        net.clients[a]
            .submit(at, reservation, 3, body.clone())
            .unwrap();
        net.run_for(Duration::from_millis(5));
        let executing = requests(&net.take_node_events(0));
        assert_eq!(executing, vec![(0, body.clone())]);

        // The process dies: its socket resets, it never dials again.
        let end = net.client_socket(a).unwrap();
        net.reset(end);
        let at = net.at();
        net.clients[a].shutdown(at);
        net.run_for(Duration::from_millis(20));
        let request = bus_proto::wire::RequestHeader {
            client: record.id,
            request: 0,
            operation: 3,
        };
        if reply_while_down {
            let at = net.at();
            assert!(
                net.node(0)
                    .reply(at, request, Bytes::from_static(b"done"))
                    .is_err()
            );
        }

        // The successor loads the identity: numbers past the old lease.
        let (record, second_lease) = record.start(64).unwrap();
        assert_eq!((second_lease.next, record.reserved_until), (64, 128));
        let b = net.add_client_with_lease(record.id, 0, second_lease);
        net.run_for(Duration::from_millis(10));
        let at = net.at();
        let (stored, operation, body) = outbox;
        let resend = Reservation::from_bytes(stored);
        net.clients[b]
            .submit(at, resend, operation, body.clone())
            .unwrap();
        let fresh = net.clients[b]
            .request(at, 4, Bytes::from_static(b"next"))
            .unwrap();
        assert_eq!(fresh, 64, "fresh numbers continue past the old lease");
        net.run_for(Duration::from_millis(10));
        let executed = requests(&net.take_node_events(0));
        assert_eq!(
            executed,
            vec![(64, Bytes::from_static(b"next"))],
            "the resend is not executed again"
        );
        let at = net.at();
        if !reply_while_down {
            assert_eq!(net.node(0).stats().duplicates_dropped, 1);
            net.node(0)
                .reply(at, request, Bytes::from_static(b"done"))
                .unwrap();
        }
        let fresh_header = bus_proto::wire::RequestHeader {
            client: record.id,
            request: 64,
            operation: 4,
        };
        net.node(0)
            .reply(at, fresh_header, Bytes::from_static(b"ok"))
            .unwrap();
        net.run_for(Duration::from_millis(10));
        let mut got = replies(&net.take_client_events(b));
        got.sort();
        assert_eq!(
            got,
            vec![
                (0, Bytes::from_static(b"done")),
                (64, Bytes::from_static(b"ok"))
            ]
        );
        if reply_while_down {
            assert_eq!(net.node(0).stats().dedup_hits, 1, "answered from the cache");
        }
        assert_eq!(
            net.node(0).stats().requests,
            2,
            "two executions, one per request"
        );
    }
}

#[test]
fn deadlines_follow_issue_time_not_request_number() {
    let mut net = Net::new(config().validate().unwrap(), 1);
    let j = net.add_client_with_lease(0x2A, 0, lease(100, 200, 100));
    let at = net.at();
    // A fresh high number, then lower numbers resent after a restart:
    // the one issued 1.9 s ago expires first, whatever its number.
    let fresh = net.clients[j].request(at, 1, Bytes::new()).unwrap();
    let resend = Reservation {
        client: 0x2A,
        request: 5,
        issued_at: UnixNanos::from_nanos(at.wall.as_nanos() - 1_900_000_000),
    };
    net.clients[j].submit(at, resend, 1, Bytes::new()).unwrap();
    let younger = Reservation {
        client: 0x2A,
        request: 6,
        issued_at: UnixNanos::from_nanos(at.wall.as_nanos() - 500_000_000),
    };
    net.clients[j].submit(at, younger, 1, Bytes::new()).unwrap();
    let next = net.clients[j].poll_timeout().unwrap();
    assert!(
        next <= at.mono.saturating_add(Duration::from_millis(100)),
        "{next:?}"
    );
    net.run_for(Duration::from_millis(200));
    let failed = failed(&net.take_client_events(j));
    assert_eq!(failed, vec![5]);
    assert_eq!(net.clients[j].outstanding(), 2, "{fresh} and 6 still wait");
}

/// A node that evicts a client's session at its cap can no longer say
/// whether the client's earlier requests ran. The client, told by
/// `close Evicted`, refuses to resubmit anything it issued before; and a
/// client that could not be told (it had crashed) and resends after a
/// restart is answered `Stale` from the session's marker, not run again.
#[test]
fn after_an_eviction_earlier_requests_are_never_run_again() {
    let c = {
        let mut tuned = config();
        tuned.dedup_max_clients = 1;
        tuned
    };
    let mut net = Net::new(c.validate().unwrap(), 1);
    let a = net.add_client_with_lease(0xA, 0, lease(0, 100, 100));
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    let first = net.clients[a].reserve(at).unwrap();
    net.clients[a]
        .submit(at, first, 1, Bytes::from_static(b"one"))
        .unwrap();
    net.run_for(Duration::from_millis(5));
    assert_eq!(requests(&net.take_node_events(0)).len(), 1);
    // Another client's session takes the only place: A's is evicted while
    // A's request still runs, and A is told.
    let b = net.add_client(0xB, 0);
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    net.clients[b].request(at, 1, Bytes::new()).unwrap();
    net.run_for(Duration::from_millis(5));
    assert_eq!(net.node(0).stats().sessions_evicted, 1);
    assert_eq!(net.node(0).dedup().markers(), 1);
    net.run_for(Duration::from_millis(100));
    net.take_node_events(0);
    let at = net.at();
    assert_eq!(
        net.clients[a].submit(at, first, 1, Bytes::from_static(b"one")),
        Err(RequestError::SessionLost { request: 0 })
    );
    // A successor that never heard of the eviction resends: `Stale`.
    let (_, later) = IdentityRecord {
        id: 0xA,
        reserved_until: 100,
    }
    .start(100)
    .unwrap();
    let successor = net.add_client_with_lease(0xA, 0, later);
    net.run_for(Duration::from_millis(5));
    let at = net.at();
    net.clients[successor]
        .submit(at, first, 1, Bytes::from_static(b"one"))
        .unwrap();
    net.run_for(Duration::from_millis(5));
    assert!(
        requests(&net.take_node_events(0)).is_empty(),
        "not run again"
    );
    assert!(net.take_client_events(successor).iter().any(|e| matches!(
        e,
        ClientEvent::Failed {
            request: 0,
            reason: bus_proto::client::RequestFailure::Stale
        }
    )));
}
