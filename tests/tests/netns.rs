//! Across a real (virtual) network: three replicas in three network
//! namespaces joined through a bridge by veth pairs, with nftables dropping
//! 5% of the packets each host receives, then cutting one replica off and
//! healing. Replica traffic and client requests resume; nothing is
//! delivered twice or out of order; no request executes twice.
//!
//! QUIC gets the same network: a client in one namespace sends requests to
//! a node in another over `quic://` while each host drops 10% of the
//! packets it receives; every request is answered, once, intact.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Without them the test
//! says so and does nothing, unless `BUS_NETNS_TESTS=1` (CI sets it), when
//! it fails instead. Each replica runs on its own thread, entered into its
//! namespace before its runtime starts, so every socket it opens is there.
//! Runtimes whose tasks stay on that thread take part: tokio
//! current-thread, smol on its own executor, and compio.

use bus_proto::client::ClientParams;
use bus_proto::host::NodeOptions;
use bus_proto::node::{NodeEvent, NodeParams};
use bus_tests::bus::{Bus, CompioPoll, SmolExecutor, TokioCurrent};
use bus_tests::{CLUSTER, keys, quick};
use bytes::Bytes;
use smol::future::or;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPLICAS: u8 = 3;
const PORT: u16 = 7700;
/// Each host drops this share of the packets it receives, in percent.
const LOSS_PERCENT: u32 = 5;

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn address(replica: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, replica + 1)), PORT)
}

/// The namespaces, their links and the fault rules; removed on drop.
struct Network {
    prefix: String,
}

impl Network {
    fn namespace(&self, replica: u8) -> String {
        format!("{}r{replica}", self.prefix)
    }

    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    fn build(prefix: String) -> Result<Network, String> {
        let net = Network { prefix };
        let hub = net.hub();
        sh(&["ip", "netns", "add", &hub])?;
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for replica in 0..REPLICAS {
            let ns = net.namespace(replica);
            let port = format!("b{replica}");
            let ip = format!("10.77.0.{}/24", replica + 1);
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ])?;
            sh(&["ip", "-n", &ns, "addr", "add", &ip, "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&[
                "ip", "-n", &hub, "link", "set", &port, "master", "br0", "up",
            ])?;
            let nft = |rule: &str| sh(&["ip", "netns", "exec", &ns, "nft", rule]);
            nft("add table inet fault")?;
            nft("add chain inet fault loss { type filter hook input priority 0; }")?;
            nft("add chain inet fault cut { type filter hook input priority 1; }")?;
        }
        Ok(net)
    }

    fn nft(&self, replica: u8, rule: &str) {
        let ns = self.namespace(replica);
        sh(&["ip", "netns", "exec", &ns, "nft", rule]).expect("nft rule");
    }

    fn set_loss(&self, percent: u32) {
        for replica in 0..REPLICAS {
            self.nft(replica, "flush chain inet fault loss");
            if percent > 0 {
                self.nft(
                    replica,
                    &format!(
                        "add rule inet fault loss iifname \"eth0\" numgen random mod 100 < {percent} counter drop"
                    ),
                );
            }
        }
    }

    /// Packets the loss rules dropped so far.
    fn dropped(&self) -> u64 {
        (0..REPLICAS)
            .map(|replica| {
                let ns = self.namespace(replica);
                let out = Command::new("ip")
                    .args([
                        "netns", "exec", &ns, "nft", "list", "chain", "inet", "fault", "loss",
                    ])
                    .output()
                    .expect("nft runs");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.split_once("packets ")
                    .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn cut(&self, replica: u8, cut: bool) {
        self.nft(replica, "flush chain inet fault cut");
        if cut {
            self.nft(replica, "add rule inet fault cut iifname \"eth0\" drop");
        }
    }

    /// Moves the calling thread into `replica`'s namespace.
    fn enter(&self, replica: u8) {
        let path = format!("/var/run/netns/{}", self.namespace(replica));
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for replica in 0..REPLICAS {
            let _ = sh(&["ip", "netns", "del", &self.namespace(replica)]);
        }
        let _ = sh(&["ip", "netns", "del", &self.hub()]);
    }
}

/// The network, or why it cannot be built here.
fn network(tag: &str) -> Option<Network> {
    let required = std::env::var("BUS_NETNS_TESTS").is_ok_and(|v| v == "1");
    let prefix = format!("bus{}{tag}", std::process::id() % 100_000);
    let built = if nix::unistd::Uid::effective().is_root() {
        Network::build(prefix)
    } else {
        Err("not root".to_owned())
    };
    match built {
        Ok(net) => Some(net),
        Err(why) if required => panic!("BUS_NETNS_TESTS=1 but no test network: {why}"),
        Err(why) => {
            eprintln!("skipped: no test network ({why}); needs root, ip and nft");
            None
        }
    }
}

/// What the replicas and the test share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Per (sender, receiver): the last message number received.
    last: Mutex<BTreeMap<(u8, u8), u64>>,
    /// Messages received per (sender, receiver) since `mark`.
    since_mark: Mutex<BTreeMap<(u8, u8), u64>>,
    /// (client, request) pairs executed by replica 2.
    executed: Mutex<BTreeSet<(u128, u64)>>,
    violations: Mutex<Vec<String>>,
    replies: AtomicU64,
    received: AtomicU64,
    connected: Mutex<BTreeSet<(u8, u8)>>,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

/// One replica: sends numbered messages to each peer every few
/// milliseconds, checks what it receives, executes requests; replica 0
/// also runs the client, whose requests go to replica 2.
async fn replica<B: Bus>(id: u8, shared: Arc<Shared>) {
    let mut c = quick();
    c.request_timeout = Duration::from_secs(120);
    let config = c.validate().expect("valid");
    let mut options = NodeOptions::default();
    for peer in (id + 1)..REPLICAS {
        options.peers.insert(peer, address(peer));
    }
    let params = NodeParams {
        cluster: CLUSTER,
        replica: id,
        replica_count: REPLICAS,
        accept_clients: true,
    };
    let (node, mut events) = B::start_node(&config, params, keys(77), options).expect("starts");
    node.listen(address(id)).await.expect("listens");
    let send = async {
        let mut next = [0u64; REPLICAS as usize];
        while !shared.stop.load(Ordering::Relaxed) {
            for peer in (0..REPLICAS).filter(|&p| p != id) {
                let n = next[usize::from(peer)];
                let body = Bytes::from(n.to_le_bytes().to_vec());
                if node.send(peer, 1, body).is_ok() {
                    next[usize::from(peer)] += 1;
                }
                let up = node.is_connected(peer);
                let mut connected = shared.connected.lock().unwrap();
                if up {
                    connected.insert((id, peer));
                } else {
                    connected.remove(&(id, peer));
                }
            }
            B::sleep(Duration::from_millis(5)).await;
        }
    };
    let receive = async {
        while let Some(event) = events.recv().await {
            match event {
                NodeEvent::Message { from, body, .. } => {
                    let n = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                    let mut last = shared.last.lock().unwrap();
                    if let Some(&previous) = last.get(&(from, id))
                        && n <= previous
                    {
                        shared.violation(format!(
                            "{}: {id} got {n} from {from} after {previous}",
                            B::NAME
                        ));
                    }
                    last.insert((from, id), n);
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    *shared
                        .since_mark
                        .lock()
                        .unwrap()
                        .entry((from, id))
                        .or_default() += 1;
                }
                NodeEvent::Request { request, body, .. } => {
                    let fresh = shared
                        .executed
                        .lock()
                        .unwrap()
                        .insert((request.client, request.request));
                    if !fresh {
                        shared.violation(format!("{}: request {request:?} ran twice", B::NAME));
                    }
                    let _ = node.reply(request, body);
                }
                _ => {}
            }
        }
    };
    let client = async {
        if id != 0 {
            return std::future::pending().await;
        }
        let params = ClientParams {
            cluster: CLUSTER,
            id: B::random_id(),
            target: 2,
        };
        let client = B::start_client(&config, params, keys(77), address(2)).expect("client");
        // One request after another, through every phase: across the
        // partition a request's reply is lost and it is resent.
        for i in 0u64.. {
            let body = Bytes::from(i.to_le_bytes().to_vec());
            match client.request(1, body.clone()).await {
                Ok(reply) if reply.body == body => {
                    shared.replies.fetch_add(1, Ordering::Relaxed);
                }
                other => shared.violation(format!("{}: request {i}: {other:?}", B::NAME)),
            }
            B::sleep(Duration::from_millis(20)).await;
        }
    };
    let stopped = async {
        while !shared.stop.load(Ordering::Relaxed) {
            B::sleep(Duration::from_millis(20)).await;
        }
    };
    or(stopped, or(send, or(receive, client))).await;
    node.shutdown(Duration::from_secs(2)).await;
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn all_pairs_connected(shared: &Shared) -> bool {
    shared.connected.lock().unwrap().len() == usize::from(REPLICAS * (REPLICAS - 1))
}

fn every_pair_received(shared: &Shared) -> bool {
    let counts = shared.since_mark.lock().unwrap();
    (0..REPLICAS).all(|a| {
        (0..REPLICAS)
            .filter(|&b| b != a)
            .all(|b| counts.get(&(a, b)).is_some_and(|&n| n > 0))
    })
}

fn across_namespaces<B: Bus>(tag: &str) {
    let Some(net) = network(tag) else {
        return;
    };
    let net = Arc::new(net);
    let shared = Arc::new(Shared::default());
    let threads: Vec<_> = (0..REPLICAS)
        .map(|id| {
            let (net, shared) = (Arc::clone(&net), Arc::clone(&shared));
            std::thread::spawn(move || {
                net.enter(id);
                B::run(replica::<B>(id, shared));
            })
        })
        .collect();
    let patience = Duration::from_secs(30);
    wait("every pair connected", patience, || {
        all_pairs_connected(&shared)
    });
    // Loss: traffic keeps flowing (TCP retransmits), in order.
    net.set_loss(LOSS_PERCENT);
    std::thread::sleep(Duration::from_secs(2));
    shared.since_mark.lock().unwrap().clear();
    wait("messages flow under 5% loss", patience, || {
        every_pair_received(&shared)
    });
    // A partition: replica 2 hears nothing for longer than liveness.
    let replies_before = shared.replies.load(Ordering::Relaxed);
    net.cut(2, true);
    wait("replica 2's connections time out", patience, || {
        !shared.connected.lock().unwrap().contains(&(0, 2))
    });
    std::thread::sleep(Duration::from_secs(1));
    net.cut(2, false);
    shared.since_mark.lock().unwrap().clear();
    wait("every pair reconnected after the heal", patience, || {
        all_pairs_connected(&shared)
    });
    wait("messages flow again both ways", patience, || {
        every_pair_received(&shared)
    });
    wait("client requests resume", patience, || {
        shared.replies.load(Ordering::Relaxed) > replies_before + 10
    });
    net.set_loss(0);
    shared.stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("replica thread");
    }
    let violations = shared.violations.lock().unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
    // Every answered request ran once; the one in flight at the stop may
    // have run without its reply arriving.
    let (executed, replies) = (
        shared.executed.lock().unwrap().len() as u64,
        shared.replies.load(Ordering::Relaxed),
    );
    assert!(
        (replies..=replies + 1).contains(&executed),
        "{executed} executed, {replies} answered"
    );
    eprintln!(
        "{}: {} messages checked in order, {replies} requests answered, each executed once",
        B::NAME,
        shared.received.load(Ordering::Relaxed)
    );
}

#[test]
fn tokio_current_thread_across_namespaces() {
    across_namespaces::<TokioCurrent>("t");
}

#[test]
fn smol_own_executor_across_namespaces() {
    across_namespaces::<SmolExecutor>("s");
}

#[test]
fn compio_across_namespaces() {
    across_namespaces::<CompioPoll>("c");
}

/// Requests the QUIC client sends through the lossy network.
const QUIC_REQUESTS: u64 = 300;
/// The share of packets each host drops in the QUIC test, in percent.
const QUIC_LOSS_PERCENT: u32 = 10;

/// A node in namespace 1 listening on QUIC; a client in namespace 0
/// sending requests one after another (every tenth 20 KB, so it spans
/// many packets) while every host drops 10% of what it receives.
fn quic_through_loss<B: Bus>(tag: &str) {
    let Some(net) = network(tag) else {
        return;
    };
    let net = Arc::new(net);
    net.set_loss(QUIC_LOSS_PERCENT);
    let identity = Arc::new(bus_tests::tls::Identity::new(&["replica-1"]));
    let listen_at = SocketAddr::new(address(1).ip(), PORT + 1);
    let mut c = quick();
    c.request_timeout = Duration::from_secs(120);
    let config = c.validate().expect("valid");
    let stop = Arc::new(AtomicBool::new(false));
    let executed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let node = {
        let (net, identity, config) = (Arc::clone(&net), Arc::clone(&identity), config.clone());
        let (stop, executed) = (Arc::clone(&stop), Arc::clone(&executed));
        std::thread::spawn(move || {
            net.enter(1);
            B::run(async move {
                let params = NodeParams {
                    cluster: CLUSTER,
                    replica: 0,
                    replica_count: 1,
                    accept_clients: true,
                };
                let (node, mut events) =
                    B::start_node(&config, params, keys(78), NodeOptions::default())
                        .expect("starts");
                let quic = identity
                    .server(bus_proto::transport::BindingPolicy::TlsExporter)
                    .quic();
                node.listen_via(listen_at, quic).await.expect("listens");
                let serve = async {
                    while let Some(event) = events.recv().await {
                        if let NodeEvent::Request { request, body, .. } = event {
                            executed.lock().unwrap().push(request.request);
                            let _ = node.reply(request, body);
                        }
                    }
                };
                let stopped = async {
                    while !stop.load(Ordering::Relaxed) {
                        B::sleep(Duration::from_millis(20)).await;
                    }
                };
                or(stopped, serve).await;
                node.shutdown(Duration::from_secs(2)).await;
            });
        })
    };
    let client = {
        let (net, identity) = (Arc::clone(&net), Arc::clone(&identity));
        std::thread::spawn(move || {
            net.enter(0);
            B::run(async move {
                let params = ClientParams {
                    cluster: CLUSTER,
                    id: B::random_id(),
                    target: 0,
                };
                let dial = identity
                    .client(
                        "replica-1",
                        bus_proto::transport::BindingPolicy::TlsExporter,
                    )
                    .quic();
                let client = B::start_client_via(&config, params, keys(78), listen_at, dial)
                    .expect("client");
                let mut answered = 0u64;
                for i in 0..QUIC_REQUESTS {
                    let size = if i % 10 == 9 { 20_000 } else { 64 };
                    let body = Bytes::from(i.to_le_bytes().repeat(size / 8));
                    let reply = client.request(1, body.clone()).await.expect("a reply");
                    assert_eq!(reply.body, body, "request {i}");
                    answered += 1;
                }
                client.shutdown(Duration::from_secs(2)).await;
                answered
            })
        })
    };
    let answered = client.join().expect("the client thread");
    let dropped = net.dropped();
    net.set_loss(0);
    stop.store(true, Ordering::Relaxed);
    node.join().expect("the node thread");
    let executed = executed.lock().unwrap();
    let unique: BTreeSet<u64> = executed.iter().copied().collect();
    assert_eq!(answered, QUIC_REQUESTS);
    assert_eq!(unique.len(), executed.len(), "a request ran twice");
    assert_eq!(unique.len() as u64, QUIC_REQUESTS);
    eprintln!(
        "{}: {answered} requests over QUIC answered once each; {dropped} packets dropped",
        B::NAME
    );
    assert!(dropped > 0, "the loss rules dropped nothing");
}

#[test]
fn tokio_current_thread_quic_through_loss() {
    quic_through_loss::<TokioCurrent>("tq");
}

#[test]
fn smol_own_executor_quic_through_loss() {
    quic_through_loss::<SmolExecutor>("sq");
}

#[test]
fn compio_quic_through_loss() {
    quic_through_loss::<CompioPoll>("cq");
}
