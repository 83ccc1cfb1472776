//! Per-socket entries indexed by the core's dense connection slot, so the
//! hot path looks a socket up without hashing.

use crate::node::ConnectionId;
use std::vec::Vec;

/// A map from live connection ids to `T`. Holds at most as many entries as
/// the core has connection slots; a stale id (same slot, older generation)
/// finds nothing.
pub(crate) struct Slots<T> {
    entries: Vec<Option<(ConnectionId, T)>>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub(crate) fn get(&self, id: &ConnectionId) -> Option<&T> {
        match self.entries.get(id.slot())? {
            Some((held, value)) if held == id => Some(value),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, id: &ConnectionId) -> Option<&mut T> {
        match self.entries.get_mut(id.slot())? {
            Some((held, value)) if held == id => Some(value),
            _ => None,
        }
    }

    /// Sets `id`'s entry, replacing whatever its slot held.
    pub(crate) fn insert(&mut self, id: ConnectionId, value: T) {
        let slot = id.slot();
        if self.entries.len() <= slot {
            self.entries.resize_with(slot + 1, || None);
        }
        if self.entries[slot].replace((id, value)).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, id: &ConnectionId) -> Option<T> {
        let entry = self.entries.get_mut(id.slot())?;
        if entry.as_ref().is_some_and(|(held, _)| held == id) {
            self.len -= 1;
            return entry.take().map(|(_, value)| value);
        }
        None
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().flatten().map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;
    use crate::config::Config;
    use crate::crypto::{Key, KeyRing};
    use crate::entropy::SeededEntropy;
    use crate::node::{Action, Node, NodeParams};
    use crate::time::{Instant, Now, UnixNanos};

    fn at(seconds: u64) -> Now {
        Now {
            mono: Instant::from_nanos(seconds * 1_000_000_000),
            wall: UnixNanos::from_nanos(seconds * 1_000_000_000),
        }
    }

    fn dial(node: &mut Node) -> crate::node::ConnectionId {
        loop {
            match node.poll_action() {
                Some(Action::Connect { connection, .. }) => return connection,
                Some(_) => {}
                None => panic!("the node did not dial"),
            }
        }
    }

    /// Real ids from a core node: a failed dial and its retry reuse one
    /// slot under different generations.
    #[test]
    fn a_stale_id_finds_nothing_after_its_slot_is_reused() {
        let config = Config::default().validate().expect("default config");
        let params = NodeParams {
            cluster: 1,
            replica: 0,
            replica_count: 2,
            accept_clients: false,
        };
        let keys = KeyRing::new(Key::from_bytes([3; 32]));
        let entropy = std::boxed::Box::new(SeededEntropy::new(7));
        let mut node = Node::new(at(0), &config, params, keys, entropy).expect("node");
        node.handle_timeout(at(0));
        let first = dial(&mut node);
        node.connect_failed(at(1), first);
        node.handle_timeout(at(1000));
        let second = dial(&mut node);
        assert_eq!(first.slot(), second.slot());
        assert_ne!(first, second);

        let mut slots = Slots::default();
        slots.insert(first, "first");
        assert_eq!(slots.get(&first), Some(&"first"));
        slots.insert(second, "second");
        assert_eq!(slots.get(&first), None, "stale id");
        assert_eq!(slots.remove(&first), None, "a stale id removes nothing");
        assert_eq!(slots.get(&second), Some(&"second"));
        assert_eq!(slots.values_mut().count(), 1);
        assert_eq!(slots.remove(&second), Some("second"));
        assert!(slots.is_empty());
    }
}
