//! A small cluster on loopback, and waiting helpers, for any adapter.

use crate::bus::{Bus, EventsOf, NodeOf};
use crate::{CLUSTER, PATIENCE};
use bus_proto::config::ValidConfig;
use bus_proto::crypto::KeyRing;
use bus_proto::host::NodeOptions;
use bus_proto::node::{NodeEvent, NodeParams};
use smol::future::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// One replica of a test cluster.
pub struct Member<B: Bus> {
    /// The node.
    pub node: NodeOf<B>,
    /// Its events.
    pub events: EventsOf<B>,
    /// Where it listens.
    pub address: SocketAddr,
}

/// `future`'s output, or `None` if `limit` passes first (on `B`'s timer).
pub async fn within<B: Bus, T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    let give_up = async {
        B::sleep(limit).await;
        None
    };
    async { Some(future.await) }.or(give_up).await
}

/// Node parameters for replica `replica` of `count` in the test cluster.
pub fn params(replica: u8, count: u8) -> NodeParams {
    NodeParams {
        cluster: CLUSTER,
        replica,
        replica_count: count,
        accept_clients: true,
    }
}

/// Starts replica `replica` of `count` listening on an ephemeral port.
pub async fn member<B: Bus>(
    config: &ValidConfig,
    replica: u8,
    count: u8,
    keys: KeyRing,
    options: NodeOptions,
) -> Member<B> {
    let (node, events) =
        B::start_node(config, params(replica, count), keys, options).expect("node starts");
    let address = node
        .listen("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("listen");
    Member {
        node,
        events,
        address,
    }
}

/// Starts `count` replicas with the keys `keys(replica)` and tells each the
/// others' addresses.
pub async fn cluster<B: Bus>(
    config: &ValidConfig,
    count: u8,
    keys: impl Fn(u8) -> KeyRing,
) -> Vec<Member<B>> {
    let mut members = Vec::new();
    for replica in 0..count {
        members.push(
            member::<B>(
                config,
                replica,
                count,
                keys(replica),
                NodeOptions::default(),
            )
            .await,
        );
    }
    for a in &members {
        for (b, other) in (0..count).zip(&members) {
            a.node.set_address(b, other.address);
        }
    }
    members
}

/// Reads events until one matches; panics naming `what` after the patience
/// deadline or if the stream ends. Other events are dropped.
pub async fn wait_for<B: Bus>(
    events: &mut EventsOf<B>,
    what: &str,
    mut matches: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    let found = within::<B, _>(PATIENCE, async {
        while let Some(event) = events.recv().await {
            if matches(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Some(Some(event)) => event,
        Some(None) => panic!("{}: event stream ended while waiting for {what}", B::NAME),
        None => panic!("{}: no {what} within {PATIENCE:?}", B::NAME),
    }
}

/// Polls `done` every 5 ms; panics naming `what` after the deadline.
pub async fn until<B: Bus>(what: &str, mut done: impl FnMut() -> bool) {
    let waited = within::<B, _>(PATIENCE, async {
        while !done() {
            B::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_some(),
        "{}: {what}: not within {PATIENCE:?}",
        B::NAME
    );
}

/// Waits until every pair of members is connected.
pub async fn all_connected<B: Bus>(members: &[Member<B>]) {
    let count = u8::try_from(members.len()).expect("at most 255 replicas");
    until::<B>("every replica pair connected", || {
        (0..count).zip(members).all(|(i, m)| {
            (0..count)
                .filter(|&j| j != i)
                .all(|j| m.node.is_connected(j))
        })
    })
    .await;
}
