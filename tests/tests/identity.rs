//! Persistent client identities on every adapter and runtime: a client
//! dropped mid-request (its sockets closed at once, as a crash would) and
//! restarted under the same identity file resends its request, which the
//! node runs once; lease renewals are written on each runtime's blocking
//! pool while requests flow.

use bus_proto::client::identity::IdentityRecord;
use bus_proto::client::identity::file::{
    ClientIdentity, FileKind, Filesystem, IdentityError, LockGuard, OsFilesystem,
};
use bus_proto::client::{Lease, RequestError, Reservation};
use bus_proto::entropy::SeededEntropy;
use bus_proto::host::ClientError;
use bus_proto::host::NodeOptions;
use bus_proto::node::NodeEvent;
use bus_tests::bus::Bus;
use bus_tests::cluster::{member, until, wait_for, within};
use bus_tests::{CLUSTER, PATIENCE, config, keys};
use bytes::Bytes;
use smol::future::{or, zip};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

bus_tests::scenarios!(
    a_client_restarted_under_its_identity_resends_and_the_node_runs_it_once,
    lease_renewals_are_written_while_requests_flow,
    a_failing_identity_disk_refuses_requests_and_the_client_recovers,
);

/// A fresh directory for one scenario on one runtime.
fn scratch<B: Bus>(scenario: &str) -> PathBuf {
    let runtime: String = B::NAME
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = std::env::temp_dir().join(format!(
        "bus-tests-identity-{}-{scenario}-{runtime}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Opens the identity, waiting while the previous client (its tasks still
/// closing) holds it.
async fn reopen<B: Bus>(path: &Path, seed: u64) -> ClientIdentity {
    let mut held = None;
    until::<B>(
        "the dropped client to release its identity",
        || match ClientIdentity::load_or_create(path, &mut SeededEntropy::new(seed)) {
            Ok(identity) => {
                held = Some(identity);
                true
            }
            Err(IdentityError::InUse { .. }) => false,
            Err(error) => panic!("{error}"),
        },
    )
    .await;
    held.expect("opened")
}

async fn a_client_restarted_under_its_identity_resends_and_the_node_runs_it_once<B: Bus>() {
    let config = config();
    let dir = scratch::<B>("restart");
    let path = dir.join("client.id");
    let mut node = member::<B>(&config, 0, 1, keys(21), NodeOptions::default()).await;

    let identity = ClientIdentity::load_or_create(&path, &mut SeededEntropy::new(1)).unwrap();
    assert!(identity.created());
    let (id, first_lease) = (identity.id(), identity.lease());
    let first =
        B::start_client_with_identity(&config, CLUSTER, 0, identity, keys(21), node.address)
            .unwrap();
    let reservation = first.reserve().unwrap();
    assert_eq!(reservation.request, first_lease.next);
    // The application's outbox: stored before the request is sent.
    let outbox = (
        reservation.to_bytes(),
        5u32,
        Bytes::from_static(b"transfer 10"),
    );
    let submitted = first.submit(reservation, outbox.1, outbox.2.clone());
    let arrived = wait_for::<B>(&mut node.events, "the request", |e| {
        matches!(e, NodeEvent::Request { .. })
    });
    // The node holds the request (never answers yet): the arrival wins.
    let raced = or(async { Err(submitted.await) }, async { Ok(arrived.await) });
    let Ok(NodeEvent::Request { request, .. }) = within::<B, _>(PATIENCE, raced)
        .await
        .expect("the request arrives")
    else {
        panic!("the request was answered before the node replied")
    };
    assert_eq!((request.client, request.request), (id, reservation.request));

    // The process dies mid-request: its sockets close at once.
    drop(first);
    wait_for::<B>(&mut node.events, "the client's disconnect", |e| {
        matches!(e, NodeEvent::ClientDisconnected { .. })
    })
    .await;

    // Its successor continues past every number of the first lease and
    // resends the outbox entry under its number.
    let identity = reopen::<B>(&path, 2).await;
    assert_eq!(identity.id(), id);
    assert!(!identity.created());
    assert!(identity.lease().next >= first_lease.until);
    let second =
        B::start_client_with_identity(&config, CLUSTER, 0, identity, keys(21), node.address)
            .unwrap();
    let (stored, operation, body) = outbox;
    let resent = second.submit(Reservation::from_bytes(stored), operation, body);
    let serve = async {
        // The resend meets the execution in flight: dropped as a duplicate.
        until::<B>("the resend to arrive", || {
            node.node.stats().duplicates_dropped == 1
        })
        .await;
        node.node
            .reply(request, Bytes::from_static(b"done"))
            .expect("the reply goes to the new connection");
    };
    let (reply, ()) = within::<B, _>(PATIENCE, zip(resent, serve))
        .await
        .expect("the resend is answered");
    let reply = reply.unwrap();
    assert_eq!(
        (reply.request, reply.body),
        (reservation.request, Bytes::from_static(b"done"))
    );

    // A fresh request gets a fresh number and runs.
    let fresh = second.request(6, Bytes::from_static(b"next"));
    let serve = async {
        let NodeEvent::Request { request, body, .. } =
            wait_for::<B>(&mut node.events, "the fresh request", |e| {
                matches!(e, NodeEvent::Request { .. })
            })
            .await
        else {
            unreachable!()
        };
        node.node.reply(request, body).unwrap();
        request.request
    };
    let (reply, number) = within::<B, _>(PATIENCE, zip(fresh, serve))
        .await
        .expect("the fresh request is answered");
    assert_eq!(reply.unwrap().request, number);
    assert!(
        number >= first_lease.until,
        "{number} reuses the first lease"
    );
    let stats = node.node.stats();
    assert_eq!(
        (stats.requests, stats.duplicates_dropped),
        (2, 1),
        "{stats:?}"
    );
    second.shutdown(Duration::from_secs(1)).await;
    node.node.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn lease_renewals_are_written_while_requests_flow<B: Bus>() {
    const REQUESTS: u64 = 40;
    const BLOCK: u64 = 4;
    let config = config();
    let dir = scratch::<B>("renewals");
    let path = dir.join("client.id");
    let mut node = member::<B>(&config, 0, 1, keys(22), NodeOptions::default()).await;
    let identity = ClientIdentity::open(
        Box::new(OsFilesystem),
        &path,
        BLOCK,
        &mut SeededEntropy::new(3),
    )
    .unwrap();
    assert_eq!(
        identity.lease(),
        Lease {
            next: 0,
            until: BLOCK,
            block: BLOCK
        }
    );
    let client =
        B::start_client_with_identity(&config, CLUSTER, 0, identity, keys(22), node.address)
            .unwrap();
    let requests = async {
        let mut numbers = Vec::new();
        for i in 0..REQUESTS {
            let body = Bytes::from(format!("request {i}"));
            let reply = client.request(1, body.clone()).await.unwrap();
            assert_eq!(reply.body, body);
            numbers.push(reply.request);
        }
        numbers
    };
    let serve = async {
        for _ in 0..REQUESTS {
            let NodeEvent::Request { request, body, .. } =
                wait_for::<B>(&mut node.events, "a request", |e| {
                    matches!(e, NodeEvent::Request { .. })
                })
                .await
            else {
                unreachable!()
            };
            node.node.reply(request, body).unwrap();
        }
    };
    let (numbers, ()) = within::<B, _>(PATIENCE, zip(requests, serve))
        .await
        .expect("every request is answered");
    // Every number in turn: no request was refused for want of a lease.
    assert_eq!(numbers, (0..REQUESTS).collect::<Vec<_>>());
    let stored = IdentityRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        stored.reserved_until >= REQUESTS,
        "the file covers every number issued: {stored:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
    node.node.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The OS filesystem, whose writes fail (`FAILING`) or panic (`PANICKING`)
/// while the test says so.
struct Flaky {
    mode: Arc<AtomicU8>,
    panics: Arc<AtomicU8>,
}

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const PANICKING: u8 = 2;

impl Filesystem for Flaky {
    fn kind(&mut self, path: &Path) -> io::Result<Option<FileKind>> {
        OsFilesystem.kind(path)
    }
    fn read(&mut self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        OsFilesystem.read(path, limit)
    }
    fn list(&mut self, dir: &Path) -> io::Result<Vec<OsString>> {
        OsFilesystem.list(dir)
    }
    fn create_new(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        match self.mode.load(Ordering::SeqCst) {
            FAILING => Err(io::Error::other("the disk is full")),
            PANICKING => {
                self.panics.fetch_add(1, Ordering::SeqCst);
                panic!("a filesystem bug")
            }
            _ => OsFilesystem.create_new(path, bytes),
        }
    }
    fn sync_file(&mut self, path: &Path) -> io::Result<()> {
        OsFilesystem.sync_file(path)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        OsFilesystem.rename(from, to)
    }
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        OsFilesystem.remove(path)
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        OsFilesystem.sync_dir(dir)
    }
    fn try_lock(&mut self, path: &Path) -> io::Result<Option<LockGuard>> {
        OsFilesystem.try_lock(path)
    }
}

/// Lease writes that fail, then panic: requests past the stored lease are
/// refused (`LeaseExhausted`), never hang and never issue a number the file
/// does not cover; once the disk heals the client renews and goes on.
async fn a_failing_identity_disk_refuses_requests_and_the_client_recovers<B: Bus>() {
    const BLOCK: u64 = 4;
    let config = config();
    let dir = scratch::<B>("flaky");
    let path = dir.join("client.id");
    let mut node = member::<B>(&config, 0, 1, keys(23), NodeOptions::default()).await;
    let (mode, panics) = (Arc::new(AtomicU8::new(HEALTHY)), Arc::new(AtomicU8::new(0)));
    let fs = Flaky {
        mode: Arc::clone(&mode),
        panics: Arc::clone(&panics),
    };
    let identity =
        ClientIdentity::open(Box::new(fs), &path, BLOCK, &mut SeededEntropy::new(4)).unwrap();
    let client =
        B::start_client_with_identity(&config, CLUSTER, 0, identity, keys(23), node.address)
            .unwrap();
    let stored = || IdentityRecord::decode(&std::fs::read(&path).unwrap()).unwrap();
    let requests = async {
        let mut answered = Vec::new();
        for broken in [FAILING, PANICKING] {
            mode.store(broken, Ordering::SeqCst);
            // A failed write is retried a second later.
            B::sleep(Duration::from_millis(1100)).await;
            // Requests run until the lease is spent, then are refused.
            loop {
                match client.request(1, Bytes::from_static(b"x")).await {
                    Ok(reply) => answered.push(reply.request),
                    Err(ClientError::Request(RequestError::LeaseExhausted { until })) => {
                        assert_eq!(until, stored().reserved_until, "the file's mark");
                        break;
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        }
        assert!(panics.load(Ordering::SeqCst) > 0, "the panicking write ran");
        mode.store(HEALTHY, Ordering::SeqCst);
        B::sleep(Duration::from_millis(1100)).await;
        loop {
            match client.request(1, Bytes::from_static(b"x")).await {
                Ok(reply) => {
                    answered.push(reply.request);
                    break;
                }
                Err(ClientError::Request(RequestError::LeaseExhausted { .. })) => {
                    B::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
        answered
    };
    let serve = async {
        loop {
            if let NodeEvent::Request { request, body, .. } =
                wait_for::<B>(&mut node.events, "a request", |e| {
                    matches!(e, NodeEvent::Request { .. })
                })
                .await
            {
                node.node.reply(request, body).unwrap();
            }
        }
    };
    let answered = within::<B, _>(PATIENCE, or(requests, serve))
        .await
        .expect("refused, then recovered, without hanging");
    let mut sorted = answered.clone();
    sorted.dedup();
    assert_eq!(sorted, answered, "no number twice");
    assert!(answered.iter().all(|&n| n < stored().reserved_until));
    assert!(
        *answered.last().unwrap() >= BLOCK,
        "numbers past the first lease after recovery: {answered:?}"
    );
    client.shutdown(Duration::from_secs(1)).await;
    node.node.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
