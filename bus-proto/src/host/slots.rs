//! Per-socket entries indexed by the core's dense connection slot, so the
//! hot path looks a socket up without hashing.

use crate::node::ConnectionId;
use std::vec::Vec;

/// A map from connection ids to `T`, looked up by the id's slot.
///
/// The core frees a slot when it says `Disconnect`, while the old socket
/// may still be writing its last batch, and may hand the slot to a new
/// connection at once. The old entry then moves aside (`displaced`) until
/// its task removes it, so both stay reachable by their own id. Holds at
/// most one entry per core slot plus one per socket still closing.
pub(crate) struct Slots<T> {
    entries: Vec<Option<(ConnectionId, T)>>,
    /// Entries whose slot was reused before their socket task ended.
    displaced: Vec<(ConnectionId, T)>,
    len: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            displaced: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    pub(crate) fn get(&self, id: &ConnectionId) -> Option<&T> {
        match self.entries.get(id.slot()) {
            Some(Some((held, value))) if held == id => Some(value),
            _ => self
                .displaced
                .iter()
                .find(|(held, _)| held == id)
                .map(|(_, v)| v),
        }
    }

    pub(crate) fn get_mut(&mut self, id: &ConnectionId) -> Option<&mut T> {
        match self.entries.get_mut(id.slot()) {
            Some(Some((held, value))) if held == id => Some(value),
            _ => self
                .displaced
                .iter_mut()
                .find(|(held, _)| held == id)
                .map(|(_, v)| v),
        }
    }

    /// Sets `id`'s entry; an entry of another id in its slot moves aside.
    pub(crate) fn insert(&mut self, id: ConnectionId, value: T) {
        let slot = id.slot();
        if self.entries.len() <= slot {
            self.entries.resize_with(slot + 1, || None);
        }
        match self.entries[slot].replace((id, value)) {
            None => self.len += 1,
            Some((held, _)) if held == id => {}
            Some(other) => {
                self.displaced.push(other);
                self.len += 1;
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &ConnectionId) -> Option<T> {
        if let Some(entry) = self.entries.get_mut(id.slot())
            && entry.as_ref().is_some_and(|(held, _)| held == id)
        {
            self.len -= 1;
            return entry.take().map(|(_, value)| value);
        }
        let at = self.displaced.iter().position(|(held, _)| held == id)?;
        self.len -= 1;
        Some(self.displaced.swap_remove(at).1)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        let displaced = self.displaced.iter_mut().map(|(_, value)| value);
        self.entries
            .iter_mut()
            .flatten()
            .map(|(_, value)| value)
            .chain(displaced)
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
    /// slot under different generations. The first entry, if its task has
    /// not ended, stays reachable by its own id only.
    #[test]
    fn a_reused_slot_keeps_both_entries_apart() {
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
        assert_eq!(
            slots.get(&first),
            Some(&"first"),
            "moved aside, still found"
        );
        assert_eq!(slots.get(&second), Some(&"second"));
        assert_eq!(slots.values_mut().count(), 2);
        assert_eq!(slots.remove(&first), Some("first"));
        assert_eq!(slots.get(&first), None, "gone once removed");
        assert_eq!(slots.remove(&first), None);
        assert_eq!(slots.get(&second), Some(&"second"));
        assert_eq!(slots.remove(&second), Some("second"));
        assert!(slots.is_empty());
    }
}
