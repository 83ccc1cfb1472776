//! One cluster across three runtimes: each replica runs on its own thread
//! under a different adapter. The replicas exchange messages, each
//! runtime's client is answered by a node on another runtime, and each
//! node refuses an impostor client from another runtime.

use bus_proto::client::ClientParams;
use bus_proto::connection::CloseCause;
use bus_proto::host::{ConnectError, NodeOptions};
use bus_proto::node::NodeEvent;
use bus_proto::wire::RejectStatus;
use bus_tests::bus::{Bus, CompioPoll, CompioUring, Smol, TokioCurrent, TokioMulti};
use bus_tests::cluster::{params, until, within};
use bus_tests::{CLUSTER, PATIENCE, config, keys};
use bytes::Bytes;
use smol::future::zip;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const REPLICAS: u8 = 3;

/// What the replica threads share: where each listens, and how many have
/// finished their part.
#[derive(Default)]
struct Board {
    addresses: Mutex<[Option<SocketAddr>; REPLICAS as usize]>,
    finished: AtomicUsize,
}

impl Board {
    fn addresses(&self) -> Option<[SocketAddr; REPLICAS as usize]> {
        let known = *self.addresses.lock().unwrap();
        let mut all = [SocketAddr::from(([0, 0, 0, 0], 0)); REPLICAS as usize];
        for (slot, address) in all.iter_mut().zip(known) {
            *slot = address?;
        }
        Some(all)
    }

    fn all_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst) == usize::from(REPLICAS)
    }
}

/// What a replica saw, for the main thread to check.
struct Seen {
    runtime: &'static str,
    messages: Vec<(u8, Bytes)>,
    requests: u64,
}

fn client_params<B: Bus>(target: u8) -> ClientParams {
    ClientParams {
        cluster: CLUSTER,
        id: B::random_id(),
        target,
    }
}

/// Replica `me` on runtime `B`.
async fn replica<B: Bus>(me: u8, board: &Board) -> Seen {
    let config = config();
    let (node, mut events) = B::start_node(
        &config,
        params(me, REPLICAS),
        keys(40),
        NodeOptions::default(),
    )
    .unwrap();
    let address = node.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    board.addresses.lock().unwrap()[usize::from(me)] = Some(address);
    until::<B>("every replica's address", || board.addresses().is_some()).await;
    let addresses = board.addresses().unwrap();
    for (replica, address) in (0..REPLICAS).zip(addresses) {
        node.set_address(replica, address);
    }
    let others = || (0..REPLICAS).filter(move |&r| r != me);

    // Answers requests and collects messages until every replica has done
    // its part and this one has heard from both others.
    let serve = async {
        let mut messages = Vec::new();
        while !(board.all_finished() && messages.len() == others().count()) {
            match within::<B, _>(Duration::from_millis(20), events.recv()).await {
                Some(Some(NodeEvent::Request { request, body, .. })) => {
                    let mut answer = format!("{me}:").into_bytes();
                    answer.extend_from_slice(&body);
                    node.reply(request, Bytes::from(answer)).unwrap();
                }
                Some(Some(NodeEvent::Message { from, body, .. })) => messages.push((from, body)),
                Some(Some(_)) | None => {}
                Some(None) => panic!("{}: the event stream ended", B::NAME),
            }
        }
        messages
    };
    let act = async {
        until::<B>("connected to both peers", || {
            others().all(|r| node.is_connected(r))
        })
        .await;
        for to in others() {
            node.send(to, 1, Bytes::from(format!("{me}->{to}")))
                .unwrap();
        }
        // A client here, a node on the next runtime.
        let next = (me + 1) % REPLICAS;
        let client = B::start_client(
            &config,
            client_params::<B>(next),
            keys(40),
            addresses[usize::from(next)],
        )
        .unwrap();
        let asked = format!("hello from {}", B::NAME);
        let reply = within::<B, _>(PATIENCE, client.request(2, Bytes::from(asked.clone())))
            .await
            .unwrap_or_else(|| panic!("{}: no reply from replica {next}", B::NAME))
            .unwrap();
        assert_eq!(reply.body, Bytes::from(format!("{next}:{asked}")));
        client.shutdown(Duration::from_secs(2)).await;
        // An impostor here, refused by the node on the previous runtime.
        let previous = (me + REPLICAS - 1) % REPLICAS;
        let impostor = B::start_client(
            &config,
            client_params::<B>(previous),
            keys(666),
            addresses[usize::from(previous)],
        )
        .unwrap();
        let refused = within::<B, _>(PATIENCE, impostor.connected())
            .await
            .unwrap_or_else(|| panic!("{}: the impostor's handshake did not end", B::NAME));
        assert!(
            matches!(&refused, Err(ConnectError::Handshake(CloseCause::Rejected(r))) if r.status == RejectStatus::BadMac),
            "{}: {refused:?}",
            B::NAME
        );
        impostor.shutdown(Duration::from_secs(1)).await;
        board.finished.fetch_add(1, Ordering::SeqCst);
    };
    let (messages, ()) = within::<B, _>(PATIENCE * 2, zip(serve, act))
        .await
        .unwrap_or_else(|| panic!("{}: replica {me} did not finish", B::NAME));
    let requests = node.stats().requests;
    node.shutdown(Duration::from_secs(2)).await;
    Seen {
        runtime: B::NAME,
        messages,
        requests,
    }
}

/// Replicas 0, 1, 2 on runtimes `A`, `B`, `C`, each on its own thread.
fn cluster_across<A: Bus, B: Bus, C: Bus>() {
    let board = Board::default();
    let seen: Vec<Seen> = std::thread::scope(|scope| {
        let board = &board;
        let threads = [
            scope.spawn(move || A::run(replica::<A>(0, board))),
            scope.spawn(move || B::run(replica::<B>(1, board))),
            scope.spawn(move || C::run(replica::<C>(2, board))),
        ];
        threads
            .into_iter()
            .map(|t| t.join().expect("a replica thread panicked"))
            .collect()
    });
    for (me, seen) in (0..REPLICAS).zip(&seen) {
        let mut from: Vec<(u8, Bytes)> = seen.messages.clone();
        from.sort();
        let expected: Vec<(u8, Bytes)> = (0..REPLICAS)
            .filter(|&r| r != me)
            .map(|r| (r, Bytes::from(format!("{r}->{me}"))))
            .collect();
        assert_eq!(from, expected, "replica {me} on {}", seen.runtime);
        // One honest client asked each node once; the impostor got nowhere.
        assert_eq!(seen.requests, 1, "replica {me} on {}", seen.runtime);
    }
}

#[test]
fn tokio_smol_and_compio_io_uring_replicas_form_one_cluster() {
    cluster_across::<TokioMulti, Smol, CompioUring>();
}

#[test]
fn compio_epoll_smol_and_tokio_current_thread_replicas_form_one_cluster() {
    cluster_across::<CompioPoll, Smol, TokioCurrent>();
}
