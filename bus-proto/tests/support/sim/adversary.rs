//! The adversary: impostors with the wrong key, replayed handshakes and
//! frames, and bursts of silent sockets from a few addresses. None of its
//! connections may ever be established.

use super::Sim;
use super::clients::ClientSlot;
use super::network::Host;
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::handshake::Binding;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Client ids of impostors (wrong key) start here.
pub(super) const IMPOSTOR_BASE: u128 = 0xBAD << 100;

/// The adversary's first address (10.0.0.66); a burst may use a few more.
const ADVERSARY_HOST: u8 = 66;

impl Sim {
    /// The adversary's `k`th address, 10.0.0.(66 + k).
    pub(super) fn adversary_address(&mut self, k: u8) -> SocketAddr {
        let host = ADVERSARY_HOST.saturating_add(k);
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)), self.port())
    }

    /// The silent-connection adversary: a burst of sockets into one node,
    /// more than its unauthenticated pool holds, from one adversary address
    /// or a few, never written on. The node's bounds hold after every
    /// accept.
    pub(super) fn silent_burst(&mut self) -> Result<(), String> {
        let i = self.pick_node();
        let Some(node) = self.nodes[usize::from(i)].node.as_ref() else {
            return Ok(());
        };
        // Closed ones can never be established: forget them.
        self.adversary
            .retain(|&(n, id)| n != i || node.connection(id).is_some());
        let cap = self.config.max_handshakes_in_flight;
        let count = cap + 1 + self.pick(2 * cap);
        let addresses = if self.chance(333) {
            2 + self.rand(3)
        } else {
            1
        };
        for k in 0..count {
            let which = u8::try_from(self.rand(addresses)).unwrap_or(0);
            let remote = self.adversary_address(which);
            let at = self.node_now(i);
            let Some(node) = self.nodes[usize::from(i)].node.as_mut() else {
                return Ok(());
            };
            let accepted = node.accept_from(at, Some(remote), Binding::NONE);
            self.report.silent_sockets += 1;
            if let Ok(id) = accepted {
                self.adversary.insert((i, id));
                self.opened(i, id);
            }
            self.check_admission(i).map_err(|e| {
                format!("{e}, after silent socket {k} of a burst of {count} from {remote}")
            })?;
            // Sometimes the host runs the node between accepts.
            if self.chance(500) {
                self.drain_node(i)?;
            }
        }
        Ok(())
    }

    pub(super) fn impostor_dial(&mut self) {
        if self.clients.len() >= self.shape.clients + 2 {
            return;
        }
        let target = self.pick_node();
        let id = IMPOSTOR_BASE + self.clients.len() as u128;
        let wrong = KeyRing::new(Key::from_bytes([0x33; 32]));
        let client = self.new_client(id, target, wrong);
        let mut slot = ClientSlot::new(id, target, 0, true);
        slot.client = Some(client);
        self.clients.push(slot);
        self.report.impostor_dials += 1;
    }

    /// Replays a captured dialer handshake into a fresh connection.
    pub(super) fn replay_handshake(&mut self) {
        let candidates: Vec<(u8, Vec<Vec<u8>>)> = self
            .sockets
            .iter()
            .flatten()
            .filter_map(|s| match s.ends[1].0 {
                Host::Node(i) if !s.captured.is_empty() => Some((i, s.captured.clone())),
                _ => None,
            })
            .collect();
        for c in candidates {
            if self.captured.len() >= 16 {
                self.captured.pop_front();
            }
            self.captured.push_back(c);
        }
        if self.captured.is_empty() {
            return;
        }
        let pick = self.pick(self.captured.len());
        let (i, transmits) = self.captured[pick].clone();
        if self.stalled(i) {
            // Its application is stalled: the node reads nothing.
            return;
        }
        let at = self.node_now(i);
        let Some(node) = self.nodes[usize::from(i)].node.as_mut() else {
            return;
        };
        let Ok(id) = node.accept(at, Binding::NONE) else {
            return;
        };
        self.adversary.insert((i, id));
        self.report.handshake_replays += 1;
        for bytes in transmits {
            let _ = node.handle_input(at, id, &bytes);
        }
    }

    /// Replays a captured frame into a live connection (authenticated
    /// frames only: in checksum mode an on-path attacker is out of scope).
    pub(super) fn replay_frame(&mut self) {
        if !self.report.authenticated_frames {
            return;
        }
        let live: Vec<usize> = (0..self.sockets.len())
            .filter(|&s| {
                self.sockets[s]
                    .as_ref()
                    .is_some_and(|s| s.captured.len() >= 3)
            })
            .collect();
        if live.is_empty() {
            return;
        }
        let s = live[self.pick(live.len())];
        let Some(socket) = self.sockets[s].as_mut() else {
            return;
        };
        let bytes = socket.captured[2].clone();
        let at = socket.pipes[0].last;
        socket.pipes[0].chunks.push_back((at, bytes));
        self.report.frame_replays += 1;
    }
}
