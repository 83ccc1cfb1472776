//! Whole-cluster invariants: bounds on every node and client, and whether
//! the replicas are all connected. Per-event checks sit with the handler
//! that sees the event (`nodes.rs`, `clients.rs`).

use super::Sim;

impl Sim {
    /// The admission bounds, which hold at every instant.
    pub(super) fn check_admission(&self, i: u8) -> Result<(), String> {
        let Some(node) = self.nodes[usize::from(i)].node.as_ref() else {
            return Ok(());
        };
        let seed = self.seed;
        let now = self.now;
        if node.handshakes_in_flight() > self.config.max_handshakes_in_flight {
            return Err(format!(
                "seed {seed}: node {i} holds {} unauthenticated connections at {now:?}, over \
                 max_handshakes_in_flight {}",
                node.handshakes_in_flight(),
                self.config.max_handshakes_in_flight
            ));
        }
        if node.admitted_clients() > self.config.max_connections {
            return Err(format!(
                "seed {seed}: node {i} counts {} admitted clients at {now:?}, over \
                 max_connections {}",
                node.admitted_clients(),
                self.config.max_connections
            ));
        }
        Ok(())
    }

    pub(super) fn check_bounds(&self) -> Result<(), String> {
        let max_conns = self.config.max_connections + usize::from(self.shape.nodes);
        for (i, slot) in self.nodes.iter().enumerate() {
            if let Some(node) = &slot.node {
                if node.connections() > max_conns {
                    return Err(format!("node {i} holds {} connections", node.connections()));
                }
                if node.dedup().clients() > self.clients.len() {
                    return Err(format!(
                        "node {i} holds {} dedup sessions",
                        node.dedup().clients()
                    ));
                }
                if node.handshakes_in_flight() > self.config.max_handshakes_in_flight {
                    return Err(format!(
                        "node {i}: {} handshakes",
                        node.handshakes_in_flight()
                    ));
                }
            }
        }
        for (j, c) in self.clients.iter().enumerate() {
            let Some(client) = c.client.as_ref() else {
                continue;
            };
            if client.outstanding() > self.config.client_max_outstanding || client.connections() > 2
            {
                return Err(format!("client {j} exceeds its bounds"));
            }
            // The outbox is exactly what the process has outstanding.
            if !c.impostor
                && (client.outstanding() != c.waiting.len()
                    || !c.disk.outbox.keys().eq(c.waiting.iter()))
            {
                return Err(format!(
                    "client {j}: outbox {:?} but outstanding {:?} ({})",
                    c.disk.outbox.keys().collect::<Vec<_>>(),
                    c.waiting,
                    client.outstanding()
                ));
            }
        }
        Ok(())
    }

    pub(super) fn all_connected(&self) -> bool {
        self.nodes.iter().enumerate().all(|(i, slot)| {
            slot.node.as_ref().is_some_and(|node| {
                (0..self.shape.nodes)
                    .filter(|&r| usize::from(r) != i)
                    .all(|r| node.is_connected(r))
            })
        })
    }

    pub(super) fn connectivity(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, slot)| match &slot.node {
                None => format!("{i}: down"),
                Some(node) => format!(
                    "{i}: [{}]",
                    (0..self.shape.nodes)
                        .map(|r| if node.is_connected(r) { "+" } else { "-" })
                        .collect::<String>()
                ),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}
