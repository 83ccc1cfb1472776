//! Which key signs and which keys verify, per peer.

use super::Key;
use alloc::collections::BTreeMap;

/// Who a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerId {
    /// A replica, by replica id.
    Replica(u8),
    /// A client, by client id.
    Client(u128),
}

/// A current key and, during a rotation, the previous one.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// Signs and verifies.
    pub current: Key,
    /// Verify-only: during a rotation, the key the other nodes sign with
    /// (old or new) that this node does not sign with.
    pub previous: Option<Key>,
}

impl KeySet {
    /// A set with no previous key.
    pub const fn new(current: Key) -> Self {
        KeySet {
            current,
            previous: None,
        }
    }

    /// The keys a MAC may verify under, current first.
    pub fn verifying(&self) -> impl Iterator<Item = &Key> {
        core::iter::once(&self.current).chain(self.previous.as_ref())
    }
}

/// The node's keys: a cluster key set, and per-peer sets that override it.
///
/// A peer with its own key set is verified *only* under it: the cluster key
/// no longer admits that identity, so a member holding the cluster key
/// cannot impersonate it (hazard 11). The key set for a connection is named
/// by the other replica on the replica plane and by the client on the client
/// plane, so both ends look up the same key.
///
/// Rotation without a refused dial, in three phases: (1) on every node, add
/// the new key as the verify-only `previous`; (2) node by node, make the new
/// key `current` and the old one `previous`; (3) once every node signs with
/// the new key, drop `previous`.
///
/// ```
/// use bus_proto::crypto::{Key, KeyRing, PeerId};
/// let old = Key::from_bytes([1; 32]);
/// let new = Key::from_bytes([2; 32]);
/// let ring = KeyRing::new(new.clone()).with_previous(old.clone());
/// assert_eq!(ring.signing_key(PeerId::Replica(3)), &new);
/// assert_eq!(ring.verifying_keys(PeerId::Replica(3)).count(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct KeyRing {
    cluster: KeySet,
    peers: BTreeMap<PeerId, KeySet>,
}

impl KeyRing {
    /// A ring with one cluster key.
    pub fn new(current: Key) -> Self {
        KeyRing {
            cluster: KeySet::new(current),
            peers: BTreeMap::new(),
        }
    }

    /// Adds the previous cluster key (verify only).
    pub fn with_previous(mut self, previous: Key) -> Self {
        self.cluster.previous = Some(previous);
        self
    }

    /// Gives `peer` its own key set, replacing the cluster keys for it.
    pub fn with_peer(mut self, peer: PeerId, keys: KeySet) -> Self {
        self.peers.insert(peer, keys);
        self
    }

    /// The cluster key set: for every peer without keys of its own.
    pub fn cluster(&self) -> &KeySet {
        &self.cluster
    }

    /// The key set that applies to `peer`.
    pub fn keys_for(&self, peer: PeerId) -> &KeySet {
        self.peers.get(&peer).unwrap_or(&self.cluster)
    }

    /// The key this node signs with when talking to `peer`.
    pub fn signing_key(&self, peer: PeerId) -> &Key {
        &self.keys_for(peer).current
    }

    /// The keys a MAC from `peer` may verify under, current first.
    pub fn verifying_keys(&self, peer: PeerId) -> impl Iterator<Item = &Key> {
        self.keys_for(peer).verifying()
    }

    /// Number of peers with their own keys.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}
