//! Client slots: processes that crash and boot again from a simulated disk
//! (identity record, lease renewals, outbox), and the application that
//! issues operations through the outbox and checks every reply.

use super::bodies::{op_body, reply_for};
use super::network::Host;
use super::{CLUSTER, Sim};
use bus_proto::client::identity::IdentityRecord;
use bus_proto::client::{
    Client, ClientEvent, ClientParams, RequestError, RequestFailure, Reservation,
};
use bus_proto::crypto::KeyRing;
use bus_proto::entropy::{Entropy, SeededEntropy};
use bus_proto::handshake::Binding;
use bus_proto::node::Action;
use bus_proto::time::Instant;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub(super) struct ClientSlot {
    /// The running process; `None` while crashed.
    pub(super) client: Option<Client>,
    pub(super) id: u128,
    pub(super) target: u8,
    /// Outstanding request numbers of the running process: the outbox's.
    pub(super) waiting: BTreeSet<u64>,
    pub(super) completed: u64,
    pub(super) failures: BTreeMap<u64, RequestFailure>,
    pub(super) impostor: bool,
    /// What survives a crash.
    pub(super) disk: Disk,
    /// The lease block of this client's identity.
    pub(super) block: u64,
    /// A lease renewal write under way.
    pub(super) write: Option<LeaseWrite>,
    /// A renewal write failed: `poll_lease` asks again at this time.
    pub(super) lease_retry: Option<Instant>,
    /// Crashed until then.
    pub(super) down_until: Option<Instant>,
}

/// A client's durable state. Writes to it are durable when they complete
/// (the simulated writes are atomic, like a rename).
pub(super) struct Disk {
    /// The persisted identity record.
    pub(super) record: IdentityRecord,
    /// The application's outbox: request number -> what was sent under it.
    pub(super) outbox: BTreeMap<u64, Outgoing>,
    /// The next logical operation's number.
    pub(super) next_op: u64,
}

/// An outbox entry: recorded after `reserve`, before `submit`.
pub(super) struct Outgoing {
    pub(super) reservation: Reservation,
    pub(super) operation: u32,
    pub(super) body: Bytes,
}

/// A lease renewal being written to the disk.
pub(super) struct LeaseWrite {
    pub(super) mark: u64,
    pub(super) done_at: Instant,
    pub(super) fails: bool,
}

impl ClientSlot {
    /// A client that has never run: a new identity, an empty outbox.
    pub(super) fn new(id: u128, target: u8, block: u64, impostor: bool) -> ClientSlot {
        ClientSlot {
            client: None,
            id,
            target,
            waiting: BTreeSet::new(),
            completed: 0,
            failures: BTreeMap::new(),
            impostor,
            disk: Disk {
                record: IdentityRecord::new(id),
                outbox: BTreeMap::new(),
                next_op: 0,
            },
            block,
            write: None,
            lease_retry: None,
            down_until: None,
        }
    }
}

impl Sim {
    pub(super) fn new_client(&mut self, id: u128, target: u8, keys: KeyRing) -> Client {
        let seed = self.rng.next_u64();
        Client::new(
            self.now_for(0),
            &self.config,
            ClientParams {
                cluster: CLUSTER,
                id,
                target,
            },
            keys,
            Box::new(SeededEntropy::new(seed)),
        )
    }

    pub(super) fn drain_client(&mut self, j: usize) -> Result<bool, String> {
        let at = self.now_for(0);
        let mut moved = false;
        loop {
            let Some(c) = self.clients[j].client.as_mut() else {
                return Ok(moved);
            };
            if let Some((id, transmit)) = c.poll_transmit(at) {
                moved = true;
                let bytes: Vec<u8> = transmit.segments().concat();
                self.write((Host::Client(j), id), bytes);
                continue;
            }
            if let Some(action) = c.poll_action() {
                moved = true;
                self.client_action(j, action);
                continue;
            }
            if let Some(event) = c.poll_event() {
                moved = true;
                self.client_event(j, event)?;
                continue;
            }
            return Ok(moved);
        }
    }

    fn client_action(&mut self, j: usize, action: Action) {
        let at = self.now_for(0);
        match action {
            Action::Connect {
                connection,
                replica,
            } => {
                let rat = self.node_now(replica);
                let remote = self.remote_of(Host::Client(j));
                let accepted = self.nodes[usize::from(replica)]
                    .node
                    .as_mut()
                    .and_then(|n| n.accept_from(rat, Some(remote), Binding::NONE).ok());
                match accepted {
                    Some(accepted) => {
                        self.opened(replica, accepted);
                        self.open_socket(
                            (Host::Client(j), connection),
                            (Host::Node(replica), accepted),
                        );
                        if let Some(client) = self.clients[j].client.as_mut() {
                            let _ = client.connected(at, connection, Binding::NONE);
                        }
                    }
                    None => {
                        if let Some(client) = self.clients[j].client.as_mut() {
                            client.connect_failed(at, connection);
                        }
                    }
                }
            }
            Action::Disconnect { connection } => self.close_end((Host::Client(j), connection)),
        }
    }

    fn client_event(&mut self, j: usize, event: ClientEvent) -> Result<(), String> {
        let seed = self.seed;
        let slot = &mut self.clients[j];
        match event {
            ClientEvent::Connected { .. } if slot.impostor => {
                return Err(format!("impostor client {j} connected without the key"));
            }
            ClientEvent::Reply {
                request,
                operation,
                body,
                ..
            } => {
                if !slot.waiting.remove(&request) {
                    return Err(format!(
                        "seed {seed}: client {j}: reply to request {request} not outstanding"
                    ));
                }
                // The answer leaves the outbox; it must answer what was
                // sent under this number.
                let Some(sent) = slot.disk.outbox.remove(&request) else {
                    return Err(format!(
                        "seed {seed}: client {j}: reply to request {request}, not in the outbox"
                    ));
                };
                if body != reply_for(slot.id, request, &sent.body) || operation != sent.operation {
                    return Err(format!(
                        "seed {seed}: client {j}: wrong reply to request {request} (operation \
                         {}, {:?}): operation {operation}, {body:?}",
                        sent.operation, sent.body
                    ));
                }
                slot.completed += 1;
                self.report.replies_received += 1;
            }
            ClientEvent::Failed { request, reason } => {
                if !slot.waiting.remove(&request) {
                    return Err(format!(
                        "seed {seed}: client {j}: failure of request {request} not outstanding"
                    ));
                }
                // The client will not resend it: the application gives up
                // (`Busy`: it did not run; otherwise the outcome is unknown).
                if !slot.impostor && slot.disk.outbox.remove(&request).is_none() {
                    return Err(format!(
                        "seed {seed}: client {j}: failure of request {request}, not in the outbox"
                    ));
                }
                slot.failures.insert(request, reason);
            }
            _ => {}
        }
        Ok(())
    }

    /// The application issues a new logical operation through its outbox:
    /// reserve a number, record the entry durably, then submit. Returns
    /// the number, or `None` when the client is down, its window is full
    /// or its lease is exhausted (nothing was issued then).
    pub(super) fn issue(&mut self, j: usize, operation: u32) -> Result<Option<u64>, String> {
        let seed = self.seed;
        let at = self.now_for(0);
        let max = self.config.client_max_outstanding;
        let slot = &mut self.clients[j];
        if slot.impostor {
            return Ok(None);
        }
        let Some(client) = slot.client.as_mut() else {
            return Ok(None);
        };
        if client.outstanding() >= max {
            return Ok(None);
        }
        let reservation = match client.reserve(at) {
            Ok(r) => r,
            Err(RequestError::LeaseExhausted { until }) => {
                let lease = client.lease();
                if lease.next != until || until > slot.disk.record.reserved_until {
                    return Err(format!(
                        "seed {seed}: client {j}: LeaseExhausted at {until} with lease \
                         {lease:?} and {:?} stored",
                        slot.disk.record
                    ));
                }
                self.report.lease_exhausted += 1;
                return Ok(None);
            }
            Err(e) => return Err(format!("seed {seed}: client {j}: reserve failed: {e}")),
        };
        let number = reservation.request;
        // Every issued number is covered by the stored record.
        if number >= slot.disk.record.reserved_until {
            return Err(format!(
                "seed {seed}: client {j} issued request {number}, but the stored record is \
                 {:?}",
                slot.disk.record
            ));
        }
        let body = op_body(j, slot.disk.next_op);
        slot.disk.next_op += 1;
        let numbers = self.issued.entry(slot.id).or_default();
        if let Some(earlier) = numbers.insert(number, body.clone()) {
            return Err(format!(
                "seed {seed}: client {j} (id {:#x}) issued request {number} twice: for {earlier:?} \
                 and for {body:?}",
                slot.id
            ));
        }
        slot.disk.outbox.insert(
            number,
            Outgoing {
                reservation,
                operation,
                body: body.clone(),
            },
        );
        if let Err(e) = client.submit(at, reservation, operation, body) {
            return Err(format!(
                "seed {seed}: client {j}: submit of fresh request {number} failed: {e}"
            ));
        }
        slot.waiting.insert(number);
        Ok(Some(number))
    }

    /// Moves client `j`'s lease renewal along: a write that finished is
    /// reported to the client, and a renewal the client asks for starts
    /// one (taking virtual time, failing sometimes while faults are on).
    /// Returns whether anything happened.
    pub(super) fn service_lease(&mut self, j: usize) -> Result<bool, String> {
        let seed = self.seed;
        let now = self.now;
        let at = self.now_for(0);
        if self.clients[j].impostor || self.clients[j].client.is_none() {
            return Ok(false);
        }
        let mut moved = false;
        if self.clients[j]
            .write
            .as_ref()
            .is_some_and(|w| w.done_at <= now)
        {
            moved = true;
            let slot = &mut self.clients[j];
            let write = slot.write.take().expect("checked");
            let Some(client) = slot.client.as_mut() else {
                return Ok(moved);
            };
            if write.fails {
                client.lease_failed(at);
                slot.lease_retry = Some(now.saturating_add(Duration::from_secs(1)));
                self.report.renewal_failures += 1;
            } else {
                slot.disk.record.reserved_until = slot.disk.record.reserved_until.max(write.mark);
                client.lease_extended(write.mark);
                self.report.lease_renewals += 1;
            }
        }
        if self.clients[j].write.is_some() {
            return Ok(moved);
        }
        let Some(mark) = self.clients[j]
            .client
            .as_mut()
            .and_then(|c| c.poll_lease(at))
        else {
            // A retry time that passed is not a timer any more.
            let slot = &mut self.clients[j];
            if slot.lease_retry.is_some_and(|t| t <= now) {
                slot.lease_retry = None;
            }
            return Ok(moved);
        };
        let slot = &self.clients[j];
        let lease = slot.client.as_ref().map(Client::lease);
        if lease.is_none_or(|l| mark <= l.until || mark != l.until + slot.block) {
            return Err(format!(
                "seed {seed}: client {j} asked to store mark {mark} with lease {lease:?} \
                 (block {})",
                slot.block
            ));
        }
        // Mostly a quick write; sometimes an fsync stall that outlasts
        // the half lease left; sometimes a failure.
        let delay = if self.chance(50) {
            200 + self.rand(1500)
        } else {
            1 + self.rand(60)
        };
        let fails = self.faults_on && self.chance(100);
        let slot = &mut self.clients[j];
        slot.lease_retry = None;
        slot.write = Some(LeaseWrite {
            mark,
            done_at: now.saturating_add(Duration::from_millis(delay)),
            fails,
        });
        Ok(true)
    }

    /// Client `j`'s process crashes: its memory is gone, its sockets
    /// reset, a renewal write under way landed or not. Its disk stays.
    pub(super) fn crash_client(&mut self, j: usize, downtime: Duration) {
        let Some(client) = self.clients[j].client.take() else {
            return;
        };
        self.report.client_restarts += 1;
        self.resent_by_crashed += client.stats().resent;
        drop(client);
        if let Some(write) = self.clients[j].write.take() {
            self.report.crashes_during_renewal += 1;
            if !write.fails && self.chance(500) {
                let record = &mut self.clients[j].disk.record;
                record.reserved_until = record.reserved_until.max(write.mark);
            }
        }
        let slot = &mut self.clients[j];
        slot.lease_retry = None;
        slot.waiting.clear();
        slot.down_until = Some(self.now.saturating_add(downtime));
        // Every socket of the process, also ones it was closing, so that
        // no byte meant for it reaches the next process's connections.
        let mut mine: Vec<usize> = (0..self.sockets.len())
            .filter(|&s| {
                self.sockets[s]
                    .as_ref()
                    .is_some_and(|k| k.ends.iter().any(|e| e.0 == Host::Client(j)))
            })
            .collect();
        mine.sort_unstable();
        for s in mine {
            self.reset_socket(s);
        }
    }

    /// Client `j`'s process starts: it loads its record, stores the raised
    /// one before issuing anything, and resubmits its outbox.
    pub(super) fn boot_client(&mut self, j: usize) -> Result<(), String> {
        let seed = self.seed;
        let slot = &mut self.clients[j];
        slot.down_until = None;
        let block = slot.block;
        let start = |record: IdentityRecord| {
            record
                .start(block)
                .map_err(|e| format!("seed {seed}: client {j}: {e}"))
        };
        let (mut raised, mut lease) = start(slot.disk.record)?;
        if lease.next != slot.disk.record.reserved_until || raised.reserved_until != lease.until {
            return Err(format!(
                "seed {seed}: client {j}: start from {:?} gave {raised:?} and {lease:?}",
                slot.disk.record
            ));
        }
        slot.disk.record = raised;
        if self.faults_on && self.chance(100) {
            // The process died right after storing its record, and the
            // next one starts from there: the numbers of that lease are
            // never issued.
            let slot = &mut self.clients[j];
            (raised, lease) = start(slot.disk.record)?;
            slot.disk.record = raised;
        }
        let entropy = self.rng.next_u64();
        let at = self.now_for(0);
        let slot = &mut self.clients[j];
        let mut client = Client::with_lease(
            at,
            &self.config,
            ClientParams {
                cluster: CLUSTER,
                id: slot.id,
                target: slot.target,
            },
            lease,
            self.keys.clone(),
            Box::new(SeededEntropy::new(entropy)),
        );
        let mut too_old = Vec::new();
        for (&number, sent) in &slot.disk.outbox {
            match client.submit(at, sent.reservation, sent.operation, sent.body.clone()) {
                Ok(()) => {
                    slot.waiting.insert(number);
                    self.report.outbox_resends += 1;
                }
                Err(RequestError::TooOld { .. }) => too_old.push(number),
                Err(e) => {
                    return Err(format!(
                        "seed {seed}: client {j}: resubmitting request {number} ({:?}) after a \
                         restart failed: {e}",
                        sent.body
                    ));
                }
            }
        }
        // Issued a request_timeout or more ago: a node may have forgotten
        // it, so its outcome stays unknown.
        for number in too_old {
            slot.disk.outbox.remove(&number);
            self.report.resends_too_old += 1;
        }
        slot.client = Some(client);
        Ok(())
    }
}
