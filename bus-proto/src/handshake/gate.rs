//! The acceptor's admission check: node-wide state (keys, replay store)
//! applied to each incoming `hello`.

use super::transcript::{HelloFields, WelcomeFields};
use super::{AcceptorHandshake, Binding, NONCE_RING_SLOTS};
use crate::config::ValidConfig;
use crate::crypto::{KeyRing, Nonce, PeerId};
use crate::entropy::Entropy;
use crate::replay::{NonceStore, ReplayError};
use crate::time::UnixNanos;
use crate::wire::{Hello, Plane, REPLICA_NONE, RejectStatus};
use alloc::boxed::Box;
use core::time::Duration;

/// Who the gate admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateParams {
    /// Our cluster.
    pub cluster: u128,
    /// Our replica id.
    pub local: u8,
    /// Replicas in the cluster: ids `0..replica_count` are peers.
    pub replica_count: u8,
    /// Whether clients may dial this node (client plane).
    pub accept_clients: bool,
}

/// A `hello` received by an accepting connection, waiting for
/// [`Gate::admit`]. Taken from
/// [`Connection::take_hello`](crate::connection::Connection::take_hello).
#[derive(Clone, Debug)]
pub struct IncomingHello {
    pub(crate) cluster: u128,
    pub(crate) replica: u8,
    pub(crate) hello: Hello,
    pub(crate) binding: Binding,
}

impl IncomingHello {
    /// The dialer's claimed id (not yet authenticated).
    pub fn dialer(&self) -> u128 {
        self.hello.dialer
    }

    /// The plane dialled.
    pub fn plane(&self) -> Plane {
        self.hello.plane
    }
}

/// Why a `hello` is dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason {
    /// Its nonce was already used by this dialer: a captured `hello` replayed.
    /// The replayer learns nothing, not even that the replay was noticed.
    #[error("hello replayed: nonce already used by this dialer")]
    Replayed,
    /// The header's `replica` field contradicts the claimed identity.
    #[error("hello header says replica {replica}, inconsistent with the claimed dialer")]
    InconsistentReplica {
        /// The header's replica field.
        replica: u8,
    },
}

/// The gate's decision on one `hello`; hand it to
/// [`Connection::admit`](crate::connection::Connection::admit).
pub struct Admission(pub(crate) Verdict);

pub(crate) enum Verdict {
    Accept(Box<AcceptorHandshake>),
    Reject(RejectStatus),
    Ignore(IgnoreReason),
}

/// What [`Gate::admit`] decided, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionOutcome {
    /// The MAC verified and the nonce was recorded; a `welcome` follows.
    Accepted {
        /// The authenticated dialer.
        peer: PeerId,
    },
    /// A `reject` with this status follows, then the connection closes.
    Rejected(RejectStatus),
    /// The connection closes without an answer.
    Ignored(IgnoreReason),
}

impl Admission {
    /// The decision.
    pub fn outcome(&self) -> AdmissionOutcome {
        match &self.0 {
            Verdict::Accept(a) => AdmissionOutcome::Accepted { peer: a.peer },
            Verdict::Reject(status) => AdmissionOutcome::Rejected(*status),
            Verdict::Ignore(reason) => AdmissionOutcome::Ignored(*reason),
        }
    }
}

impl core::fmt::Debug for Admission {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Admission({:?})", self.outcome())
    }
}

/// Node-wide acceptor state: the key ring and the per-dialer nonce rings.
///
/// One gate serves every listener of a node and should outlive them, so a
/// listener restart does not forget recent nonces (hazard 6). The replay
/// store is bounded: [`NONCE_RING_SLOTS`] nonces per dialer and
/// `max_replay_peers` dialers; when either is full of nonces still inside
/// the freshness window, new handshakes get `Busy` rather than evicting a
/// nonce that could still be replayed.
#[derive(Debug)]
pub struct Gate {
    params: GateParams,
    keys: KeyRing,
    /// Replicas: one ring per configured replica, so never full.
    replica_replay: NonceStore<u8, NONCE_RING_SLOTS>,
    /// Clients: `max_replay_peers` rings; a full store refuses new clients
    /// with `Busy` but can never lock a replica out.
    client_replay: NonceStore<u128, NONCE_RING_SLOTS>,
    freshness: Duration,
    require_authenticated_frames: bool,
}

impl Gate {
    /// Verifies `hello`s under `keys` from now on; the replay store stays.
    pub fn set_keys(&mut self, keys: KeyRing) {
        self.keys = keys;
    }

    /// A gate for this node.
    pub fn new(config: &ValidConfig, params: GateParams, keys: KeyRing) -> Self {
        Gate {
            params,
            keys,
            replica_replay: NonceStore::new(
                usize::from(params.replica_count),
                config.freshness_window,
            ),
            client_replay: NonceStore::new(config.max_replay_peers, config.freshness_window),
            freshness: config.freshness_window,
            require_authenticated_frames: config.authenticated_frames,
        }
    }

    /// Who this gate admits.
    pub fn params(&self) -> &GateParams {
        &self.params
    }

    /// Dialers with nonces in the replay stores.
    pub fn replay_peers(&self) -> usize {
        self.replica_replay.peer_count() + self.client_replay.peer_count()
    }

    /// Decides on a `hello`. `wall` is the current wall-clock time; `entropy`
    /// supplies the acceptor's nonce.
    ///
    /// Checks, in order (the first failure decides): cluster, acceptor id,
    /// plane and dialer id, timestamp freshness, nonce not yet used, MAC
    /// under each accepted key; only then is the nonce recorded (hazard 5),
    /// so a forged `hello` never consumes a replay slot.
    pub fn admit(
        &mut self,
        wall: UnixNanos,
        incoming: IncomingHello,
        entropy: &mut dyn Entropy,
    ) -> Admission {
        Admission(match self.check(wall, &incoming, entropy) {
            Ok(accepted) => Verdict::Accept(accepted),
            Err(verdict) => verdict,
        })
    }

    fn check(
        &mut self,
        wall: UnixNanos,
        incoming: &IncomingHello,
        entropy: &mut dyn Entropy,
    ) -> Result<Box<AcceptorHandshake>, Verdict> {
        let p = self.params;
        let hello = &incoming.hello;
        if incoming.cluster != p.cluster {
            return Err(Verdict::Reject(RejectStatus::ClusterMismatch));
        }
        if hello.acceptor != u128::from(p.local) {
            return Err(Verdict::Reject(RejectStatus::WrongAcceptor));
        }
        let peer = self.identify(incoming)?;
        if !hello.timestamp.is_fresh(wall, self.freshness) {
            return Err(Verdict::Reject(RejectStatus::StaleTimestamp));
        }
        let seen = match peer {
            PeerId::Replica(id) => self.replica_replay.check(id, &hello.nonce),
            PeerId::Client(id) => self.client_replay.check(id, &hello.nonce),
        };
        if seen.is_err() {
            return Err(Verdict::Ignore(IgnoreReason::Replayed));
        }
        let fields = HelloFields::new(p.cluster, hello, &incoming.binding);
        let keys = self
            .keys
            .verifying_handshake_keys(peer)
            .find(|keys| keys.verifies_hello(&fields, &hello.mac))
            .cloned()
            .ok_or(Verdict::Reject(RejectStatus::BadMac))?;
        let recorded = match peer {
            PeerId::Replica(id) => {
                self.replica_replay
                    .record(id, hello.nonce, hello.timestamp, wall)
            }
            PeerId::Client(id) => self
                .client_replay
                .record(id, hello.nonce, hello.timestamp, wall),
        };
        recorded.map_err(|e| match e {
            ReplayError::Replayed { .. } => Verdict::Ignore(IgnoreReason::Replayed),
            ReplayError::PeerSaturated { .. } | ReplayError::StoreFull { .. } => {
                Verdict::Reject(RejectStatus::Busy)
            }
        })?;
        let acceptor_nonce = Nonce::generate(entropy);
        let authenticated_frames = hello.authenticated_frames || self.require_authenticated_frames;
        let welcome_mac = keys.welcome_mac(&WelcomeFields {
            hello: &fields,
            hello_mac: &hello.mac,
            acceptor_nonce: &acceptor_nonce,
            authenticated_frames,
        });
        Ok(Box::new(AcceptorHandshake {
            keys,
            fields,
            hello_mac: hello.mac,
            acceptor_nonce,
            authenticated_frames,
            welcome_mac,
            peer,
            local: p.local,
            cluster: p.cluster,
        }))
    }

    /// The dialer's identity if this node admits it on that plane. The key
    /// set for the pair is named by the dialer: `Replica(id)` or `Client(id)`.
    fn identify(&self, incoming: &IncomingHello) -> Result<PeerId, Verdict> {
        let p = self.params;
        let hello = &incoming.hello;
        match hello.plane {
            Plane::Replica => {
                let id = u8::try_from(hello.dialer)
                    .ok()
                    .filter(|&id| id < p.replica_count)
                    .ok_or(Verdict::Reject(RejectStatus::UnknownPeer))?;
                if id >= p.local {
                    return Err(Verdict::Reject(RejectStatus::DirectionalRule));
                }
                if incoming.replica != id {
                    return Err(Verdict::Ignore(IgnoreReason::InconsistentReplica {
                        replica: incoming.replica,
                    }));
                }
                Ok(PeerId::Replica(id))
            }
            Plane::Client => {
                if !p.accept_clients {
                    return Err(Verdict::Reject(RejectStatus::UnknownPeer));
                }
                if incoming.replica != REPLICA_NONE {
                    return Err(Verdict::Ignore(IgnoreReason::InconsistentReplica {
                        replica: incoming.replica,
                    }));
                }
                Ok(PeerId::Client(hello.dialer))
            }
        }
    }
}
