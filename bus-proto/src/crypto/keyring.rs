//! Which key signs and which keys verify, per peer.

use super::Key;
use crate::handshake::HandshakeKeys;
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
#[derive(Clone)]
pub struct KeyRing {
    cluster: Entry,
    peers: BTreeMap<PeerId, Entry>,
}

/// A key set and the handshake keys derived from it: derived once, when
/// the ring is built, rather than at every handshake (and every forged
/// `hello` costs the acceptor one MAC per candidate key, no derivation).
#[derive(Clone)]
struct Entry {
    keys: KeySet,
    current: HandshakeKeys,
    previous: Option<HandshakeKeys>,
}

impl Entry {
    fn new(keys: KeySet) -> Self {
        Entry {
            current: HandshakeKeys::derive(&keys.current),
            previous: keys.previous.as_ref().map(HandshakeKeys::derive),
            keys,
        }
    }
}

impl core::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let peers = self.peers.iter().map(|(peer, entry)| (peer, &entry.keys));
        f.debug_struct("KeyRing")
            .field("cluster", &self.cluster.keys)
            .field("peers", &BTreeMap::from_iter(peers))
            .finish()
    }
}

impl KeyRing {
    /// A ring with one cluster key.
    pub fn new(current: Key) -> Self {
        KeyRing {
            cluster: Entry::new(KeySet::new(current)),
            peers: BTreeMap::new(),
        }
    }

    /// Adds the previous cluster key (verify only).
    pub fn with_previous(mut self, previous: Key) -> Self {
        self.cluster.previous = Some(HandshakeKeys::derive(&previous));
        self.cluster.keys.previous = Some(previous);
        self
    }

    /// Gives `peer` its own key set, replacing the cluster keys for it.
    pub fn with_peer(mut self, peer: PeerId, keys: KeySet) -> Self {
        self.peers.insert(peer, Entry::new(keys));
        self
    }

    /// The cluster key set: for every peer without keys of its own.
    pub fn cluster(&self) -> &KeySet {
        &self.cluster.keys
    }

    /// The key set that applies to `peer`.
    pub fn keys_for(&self, peer: PeerId) -> &KeySet {
        &self.entry(peer).keys
    }

    /// The key this node signs with when talking to `peer`.
    pub fn signing_key(&self, peer: PeerId) -> &Key {
        &self.keys_for(peer).current
    }

    /// The keys a MAC from `peer` may verify under, current first.
    pub fn verifying_keys(&self, peer: PeerId) -> impl Iterator<Item = &Key> {
        self.keys_for(peer).verifying()
    }

    /// The handshake keys of [`KeyRing::signing_key`].
    pub(crate) fn signing_handshake_keys(&self, peer: PeerId) -> &HandshakeKeys {
        &self.entry(peer).current
    }

    /// The handshake keys of [`KeyRing::verifying_keys`], in that order.
    pub(crate) fn verifying_handshake_keys(
        &self,
        peer: PeerId,
    ) -> impl Iterator<Item = &HandshakeKeys> {
        let entry = self.entry(peer);
        core::iter::once(&entry.current).chain(entry.previous.as_ref())
    }

    /// Number of peers with their own keys.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn entry(&self, peer: PeerId) -> &Entry {
        self.peers.get(&peer).unwrap_or(&self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Nonce, Tag};
    use crate::handshake::HelloFields;
    use crate::time::UnixNanos;
    use crate::wire::{Hello, Plane};

    /// The cached handshake keys are those of the keys the ring names, for
    /// the cluster set, its previous key, and a peer's own set.
    #[test]
    fn cached_handshake_keys_follow_the_ring() {
        let hello = Hello {
            plane: Plane::Replica,
            dialer: 1,
            acceptor: 2,
            nonce: Nonce::from_bytes([3; 32]),
            timestamp: UnixNanos::from_nanos(4),
            authenticated_frames: false,
            mac: Tag::from_bytes([0; 32]),
        };
        let fields = HelloFields::new(5, &hello, &crate::handshake::Binding::NONE);
        let own = KeySet {
            current: Key::from_bytes([6; 32]),
            previous: Some(Key::from_bytes([7; 32])),
        };
        let ring = KeyRing::new(Key::from_bytes([8; 32]))
            .with_previous(Key::from_bytes([9; 32]))
            .with_peer(PeerId::Replica(3), own);
        for peer in [PeerId::Replica(1), PeerId::Replica(3), PeerId::Client(7)] {
            let keys: alloc::vec::Vec<_> = ring.verifying_keys(peer).collect();
            let cached: alloc::vec::Vec<_> = ring.verifying_handshake_keys(peer).collect();
            assert_eq!(keys.len(), 2);
            assert_eq!(cached.len(), 2);
            for (key, cached) in keys.iter().zip(&cached) {
                let mac = HandshakeKeys::derive(key).hello_mac(&fields);
                assert_eq!(cached.hello_mac(&fields), mac, "{peer:?}");
                assert!(cached.verifies_hello(&fields, &mac));
            }
            let signing = HandshakeKeys::derive(ring.signing_key(peer)).hello_mac(&fields);
            assert_eq!(
                ring.signing_handshake_keys(peer).hello_mac(&fields),
                signing
            );
        }
    }
}
