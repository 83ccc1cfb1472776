//! Node slots: incarnations across crashes, stalled applications, and the
//! host loop that drains a node, answers its requests and checks what it
//! delivers and executes.

use super::adversary::IMPOSTOR_BASE;
use super::bodies::{body_for, parse_message, parse_op, reply_for};
use super::network::Host;
use super::{CLUSTER, Sim};
use bus_proto::connection::{CloseCause, Deadline};
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::Binding;
use bus_proto::node::{Action, ConnectionId, Node, NodeEvent, NodeParams, ReplyError};
use bus_proto::time::Instant;
use bus_proto::wire::RequestHeader;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub(super) struct NodeSlot {
    pub(super) node: Option<Node>,
    pub(super) incarnation: u32,
    pub(super) down_until: Option<Instant>,
    /// Requests executed by this incarnation: (client, request) -> count.
    pub(super) executed: BTreeMap<(u128, u64), u32>,
    /// Logical operations executed by this incarnation: body -> count.
    pub(super) ops: BTreeMap<Bytes, u32>,
    /// Replies held back to make retries meet requests in flight, with the
    /// request's body.
    pub(super) delayed: Vec<(Instant, RequestHeader, Bytes)>,
    /// Next message number per destination.
    pub(super) sent: Vec<u64>,
    pub(super) skew: i64,
    /// The application is stalled: the node's sockets are not read.
    pub(super) stall: Option<Stall>,
}

/// A slow application: until `until` the host reads none of the node's
/// sockets (bytes wait in the pipes) and every connection is paused.
pub(super) struct Stall {
    pub(super) started: Instant,
    pub(super) until: Instant,
    /// Connections paused with `set_reading_paused(.., true)`.
    pub(super) paused: BTreeSet<ConnectionId>,
}

impl Sim {
    pub(super) fn start_node(&mut self, i: u8) {
        let seed = self.rng.next_u64();
        let now = self.node_now(i);
        let node = Node::new(
            now,
            &self.config,
            NodeParams {
                cluster: CLUSTER,
                replica: i,
                replica_count: self.shape.nodes,
                accept_clients: true,
            },
            self.keys.clone(),
            Box::new(SeededEntropy::new(seed)),
        )
        .expect("valid node params");
        let slot = &mut self.nodes[usize::from(i)];
        slot.node = Some(node);
        slot.incarnation += 1;
        slot.executed.clear();
        slot.ops.clear();
        slot.delayed.clear();
        slot.down_until = None;
        slot.stall = None;
    }

    pub(super) fn collect_stats(&mut self, i: u8) {
        if let Some(node) = &self.nodes[usize::from(i)].node {
            let s = node.stats();
            self.report.dedup_hits += s.dedup_hits;
            self.report.duplicates_dropped += s.duplicates_dropped;
            self.report.stale += s.stale;
            self.report.unauthenticated_evicted += s.unauthenticated_evicted;
        }
    }

    pub(super) fn crash_node(&mut self, i: u8, downtime: Duration) {
        self.report.restarts += 1;
        self.collect_stats(i);
        self.nodes[usize::from(i)].node = None;
        self.nodes[usize::from(i)].stall = None;
        self.nodes[usize::from(i)].down_until = Some(self.now.saturating_add(downtime));
        let mut mine: Vec<usize> = self
            .by_end
            .iter()
            .filter(|((h, _), _)| *h == Host::Node(i))
            .map(|(_, &s)| s)
            .collect();
        // In socket order, not the hash map's, so a seed replays exactly.
        mine.sort_unstable();
        for s in mine {
            self.reset_socket(s);
        }
        self.adversary.retain(|(n, _)| *n != i);
        self.last_seen.retain(|(n, _), _| *n != i);
    }

    /// Whether node `i`'s application is stalled (its sockets are not read).
    pub(super) fn stalled(&self, i: u8) -> bool {
        self.nodes[usize::from(i)].stall.is_some()
    }

    /// Whether bytes and EOF toward `host` wait in the pipes: a stalled
    /// node reads nothing.
    pub(super) fn reader_stalled(&self, host: Host) -> bool {
        matches!(host, Host::Node(i) if self.stalled(i))
    }

    /// Connection `id` of node `i` opened: paused at once while the node's
    /// application is stalled.
    pub(super) fn opened(&mut self, i: u8, id: ConnectionId) {
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        if let (Some(stall), Some(node)) = (slot.stall.as_mut(), slot.node.as_mut()) {
            node.set_reading_paused(at, id, true);
            stall.paused.insert(id);
        }
    }

    /// The slow-application fault: a random live node stops reading its
    /// sockets for 1-3 times `liveness_timeout`; every open connection is
    /// paused, and so is every connection opened meanwhile.
    pub(super) fn start_stall(&mut self) {
        let candidates: Vec<u8> = (0..self.shape.nodes)
            .filter(|&i| self.nodes[usize::from(i)].node.is_some() && !self.stalled(i))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let i = candidates[self.pick(candidates.len())];
        let per_mille = 1000 + u32::try_from(self.rand(2001)).unwrap_or(0);
        let length = self.config.liveness_timeout.saturating_mul(per_mille) / 1000;
        // Sorted, so the pauses replay in one order.
        let mut ids: Vec<ConnectionId> = self
            .by_end
            .keys()
            .filter(|(host, _)| *host == Host::Node(i))
            .map(|&(_, id)| id)
            .collect();
        ids.extend(
            self.adversary
                .iter()
                .filter(|(n, _)| *n == i)
                .map(|&(_, id)| id),
        );
        ids.sort();
        ids.dedup();
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        let mut paused = BTreeSet::new();
        for id in ids {
            if node.connection(id).is_some_and(|c| !c.is_closed()) {
                node.set_reading_paused(at, id, true);
                paused.insert(id);
            }
        }
        slot.stall = Some(Stall {
            started: self.now,
            until: self.now.saturating_add(length),
            paused,
        });
        self.report.stalls += 1;
    }

    /// Node `i`'s application catches up: every paused connection resumes
    /// (the peer gets a fresh `liveness_timeout`) and the bytes that
    /// waited in the pipes are delivered, in order.
    pub(super) fn end_stall(&mut self, i: u8) -> Result<(), String> {
        let seed = self.seed;
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        let Some(stall) = slot.stall.take() else {
            return Ok(());
        };
        let Some(node) = slot.node.as_mut() else {
            return Ok(());
        };
        for id in stall.paused {
            if node.connection(id).is_some_and(|c| !c.reading_paused()) {
                return Err(format!(
                    "seed {seed}: node {i} connection {id:?} was no longer paused at the end \
                     of the stall {:?}..{:?}",
                    stall.started, stall.until
                ));
            }
            node.set_reading_paused(at, id, false);
        }
        Ok(())
    }

    /// Stalls due to end at `now` end.
    pub(super) fn end_due_stalls(&mut self) -> Result<(), String> {
        for i in 0..self.shape.nodes {
            let due = self.nodes[usize::from(i)]
                .stall
                .as_ref()
                .is_some_and(|s| s.until <= self.now);
            if due {
                self.end_stall(i)?;
            }
        }
        Ok(())
    }

    pub(super) fn drain_node(&mut self, i: u8) -> Result<bool, String> {
        let at = self.node_now(i);
        let mut moved = false;
        let idx = usize::from(i);
        // Replies whose delay passed.
        let due: Vec<(RequestHeader, Bytes)> = {
            let slot = &mut self.nodes[idx];
            let now = self.now;
            let (due, keep): (Vec<_>, Vec<_>) =
                slot.delayed.drain(..).partition(|(t, _, _)| *t <= now);
            slot.delayed = keep;
            due.into_iter().map(|(_, r, b)| (r, b)).collect()
        };
        for (request, body) in due {
            moved |= self.reply(i, request, body);
        }
        loop {
            let Some(node) = self.nodes[idx].node.as_mut() else {
                return Ok(moved);
            };
            if let Some((id, transmit)) = node.poll_transmit(at) {
                moved = true;
                let bytes: Vec<u8> = transmit.segments().concat();
                self.write((Host::Node(i), id), bytes);
                continue;
            }
            if let Some(action) = node.poll_action() {
                moved = true;
                self.node_action(i, action);
                continue;
            }
            if let Some(event) = node.poll_event() {
                moved = true;
                self.node_event(i, event)?;
                continue;
            }
            return Ok(moved);
        }
    }

    /// The application answers; a full queue means trying again shortly.
    fn reply(&mut self, i: u8, request: RequestHeader, body: Bytes) -> bool {
        let at = self.node_now(i);
        let slot = &mut self.nodes[usize::from(i)];
        let Some(node) = slot.node.as_mut() else {
            return false;
        };
        let reply = reply_for(request.client, request.request, &body);
        if let Err(ReplyError::Backpressure { .. }) = node.reply(at, request, reply) {
            let retry = self.now.saturating_add(Duration::from_millis(10));
            slot.delayed.push((retry, request, body));
        }
        true
    }

    fn node_action(&mut self, i: u8, action: Action) {
        match action {
            Action::Connect {
                connection,
                replica,
            } => {
                let at = self.node_now(i);
                let target_up = self.nodes[usize::from(replica)].node.is_some();
                if !target_up || self.partitioned(Host::Node(i), Host::Node(replica)) {
                    // Half the time the SYN is lost and the dial times out.
                    if self.chance(500)
                        && let Some(node) = self.nodes[usize::from(i)].node.as_mut()
                    {
                        node.connect_failed(at, connection);
                    }
                    return;
                }
                let rat = self.node_now(replica);
                let remote = self.remote_of(Host::Node(i));
                let Some(target) = self.nodes[usize::from(replica)].node.as_mut() else {
                    return;
                };
                match target.accept_from(rat, Some(remote), Binding::NONE) {
                    Ok(accepted) => {
                        self.opened(replica, accepted);
                        self.open_socket(
                            (Host::Node(i), connection),
                            (Host::Node(replica), accepted),
                        );
                        if let Some(node) = self.nodes[usize::from(i)].node.as_mut() {
                            let _ = node.connected(at, connection, Binding::NONE);
                        }
                        self.opened(i, connection);
                    }
                    Err(_) => {
                        if let Some(node) = self.nodes[usize::from(i)].node.as_mut() {
                            node.connect_failed(at, connection);
                        }
                    }
                }
            }
            Action::Disconnect { connection } => self.close_end((Host::Node(i), connection)),
        }
    }

    fn node_event(&mut self, i: u8, event: NodeEvent) -> Result<(), String> {
        let seed = self.seed;
        if let NodeEvent::PeerDisconnected {
            connection, cause, ..
        }
        | NodeEvent::ClientDisconnected {
            connection, cause, ..
        } = &event
        {
            let paused = self.nodes[usize::from(i)]
                .stall
                .as_ref()
                .filter(|s| s.paused.contains(connection));
            if let (CloseCause::Timeout(Deadline::Liveness), Some(stall)) = (cause, paused) {
                return Err(format!(
                    "seed {seed}: node {i} (incarnation {}) closed with a liveness timeout at \
                     {:?} while its reading was paused by the stall {:?}..{:?}: {event:?}",
                    self.nodes[usize::from(i)].incarnation,
                    self.now,
                    stall.started,
                    stall.until
                ));
            }
        }
        match event {
            NodeEvent::PeerConnected { connection, .. }
            | NodeEvent::ClientConnected { connection, .. }
                if self.adversary.contains(&(i, connection)) =>
            {
                return Err(format!(
                    "seed {seed}: node {i} established the adversary's {connection}"
                ));
            }
            NodeEvent::ClientConnected { client, .. } if client >= IMPOSTOR_BASE => {
                return Err(format!("node {i} admitted impostor client {client:#x}"));
            }
            NodeEvent::Message {
                from,
                connection,
                body,
                ..
            } => {
                let Some((f, to, k, _)) = parse_message(&body) else {
                    return Err(format!("node {i}: corrupted message from {from}: {body:?}"));
                };
                if f != from || to != i || body != body_for(f, to, k, body.len()) {
                    return Err(format!(
                        "node {i}: corrupted or misrouted message {f}>{to}#{k}"
                    ));
                }
                // In order, never duplicated: on one connection the
                // sender's numbers only grow.
                let last = self.last_seen.insert((i, connection), k);
                if last.is_some_and(|l| k <= l) {
                    return Err(format!(
                        "node {i}: message {from}>{i}#{k} after #{} on one connection",
                        last.unwrap_or(0)
                    ));
                }
                self.report.messages_delivered += 1;
            }
            NodeEvent::Request { request, body, .. } => {
                let (client, number) = (request.client, request.request);
                let incarnation = self.nodes[usize::from(i)].incarnation;
                // The request is one its client issued, with that body.
                let issued = self.issued.get(&client).and_then(|m| m.get(&number));
                if issued != Some(&body) || parse_op(&body).is_none() {
                    return Err(format!(
                        "seed {seed}: node {i} (incarnation {incarnation}) executed client \
                         {client:#x} request {number} with body {body:?}, issued with {issued:?}"
                    ));
                }
                let slot = &mut self.nodes[usize::from(i)];
                let count = slot.executed.entry((client, number)).or_insert(0);
                *count += 1;
                if *count > 1 {
                    return Err(format!(
                        "seed {seed}: node {i} (incarnation {incarnation}) executed client \
                         {client:#x} request {number} twice"
                    ));
                }
                // No logical operation runs twice, under any number.
                let count = slot.ops.entry(body.clone()).or_insert(0);
                *count += 1;
                if *count > 1 {
                    return Err(format!(
                        "seed {seed}: node {i} (incarnation {incarnation}) executed operation \
                         {body:?} twice (the second time as client {client:#x} request {number})"
                    ));
                }
                self.report.requests_executed += 1;
                if self.rand(4) == 0 {
                    let at = self
                        .now
                        .saturating_add(Duration::from_millis(self.rand(300)));
                    self.nodes[usize::from(i)].delayed.push((at, request, body));
                } else {
                    self.reply(i, request, body);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
