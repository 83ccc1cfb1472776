//! A small cluster of tokio nodes on loopback, and waiting helpers.

use crate::{CLUSTER, PATIENCE};
use bus_proto::config::ValidConfig;
use bus_proto::crypto::KeyRing;
use bus_proto::node::{NodeEvent, NodeParams};
use bus_tokio::{Events, Node, NodeOptions};
use std::net::SocketAddr;

/// One replica of a test cluster.
pub struct Member {
    /// The node.
    pub node: Node,
    /// Its events.
    pub events: Events,
    /// Where it listens.
    pub address: SocketAddr,
}

/// Starts replica `replica` of `count` listening on an ephemeral port.
pub async fn member(
    config: &ValidConfig,
    replica: u8,
    count: u8,
    keys: KeyRing,
    options: NodeOptions,
) -> Member {
    let params = NodeParams {
        cluster: CLUSTER,
        replica,
        replica_count: count,
        accept_clients: true,
    };
    let (node, events) = Node::start(config, params, keys, options).expect("node starts");
    let address = node.listen("127.0.0.1:0").await.expect("listen");
    Member {
        node,
        events,
        address,
    }
}

/// Starts `count` replicas with the keys `keys(replica)` and tells each the
/// others' addresses.
pub async fn cluster(config: &ValidConfig, count: u8, keys: impl Fn(u8) -> KeyRing) -> Vec<Member> {
    let mut members = Vec::new();
    for replica in 0..count {
        members.push(
            member(
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
pub async fn wait_for(
    events: &mut Events,
    what: &str,
    mut matches: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.recv().await {
            if matches(&event) {
                return Some(event);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {PATIENCE:?}"),
    }
}

/// Polls `done` every 5 ms; panics naming `what` after the deadline.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: not within {PATIENCE:?}");
}

/// Waits until every pair of members is connected.
pub async fn all_connected(members: &[Member]) {
    let count = u8::try_from(members.len()).expect("at most 255 replicas");
    until("every replica pair connected", || {
        (0..count).zip(members).all(|(i, m)| {
            (0..count)
                .filter(|&j| j != i)
                .all(|j| m.node.is_connected(j))
        })
    })
    .await;
}
