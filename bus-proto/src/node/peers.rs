//! The replica peer table and dial schedule (hazards 21 and 26).

use super::backoff::Backoff;
use super::table::ConnectionId;
use crate::config::ValidConfig;
use crate::entropy::Entropy;
use crate::time::Instant;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// One peer's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// No connection; dial at `due` (we dial only higher ids).
    Idle { due: Option<Instant> },
    /// A dial is under way.
    Dialing(ConnectionId),
    /// The registered connection.
    Connected(ConnectionId),
}

/// Every peer's link, backoff and dial time.
pub(crate) struct Peers {
    local: u8,
    links: Vec<Link>,
    backoff: Vec<Backoff>,
    /// `(due, replica)` for every `Idle { due: Some(_) }` link.
    due: BTreeSet<(Instant, u8)>,
    /// How long a connection must stay up to reset its backoff.
    stable: core::time::Duration,
    stopped: bool,
}

impl Peers {
    /// Every higher-numbered peer is due for a dial at `now`.
    pub(crate) fn new(now: Instant, config: &ValidConfig, local: u8, count: u8) -> Self {
        let mut peers = Peers {
            local,
            links: Vec::with_capacity(usize::from(count)),
            backoff: Vec::with_capacity(usize::from(count)),
            due: BTreeSet::new(),
            stable: config.reconnect_max,
            stopped: false,
        };
        for replica in 0..count {
            let due = (replica > local).then_some(now);
            peers.links.push(Link::Idle { due });
            peers
                .backoff
                .push(Backoff::new(config.reconnect_min, config.reconnect_max));
            if let Some(at) = due {
                peers.due.insert((at, replica));
            }
        }
        peers
    }

    fn link(&self, replica: u8) -> Option<Link> {
        self.links.get(usize::from(replica)).copied()
    }

    /// The registered connection of `replica`.
    pub(crate) fn connected(&self, replica: u8) -> Option<ConnectionId> {
        match self.link(replica)? {
            Link::Connected(id) => Some(id),
            _ => None,
        }
    }

    /// Consecutive failed dials of `replica`.
    pub(crate) fn failures(&self, replica: u8) -> u32 {
        self.backoff
            .get(usize::from(replica))
            .map_or(0, Backoff::failures)
    }

    /// The earliest dial time.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|&(at, _)| at)
    }

    /// A peer whose dial is due at `now`; it leaves the schedule and must be
    /// passed to `dialing` or `retry_later`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<u8> {
        let &(at, replica) = self.due.first().filter(|(at, _)| *at <= now)?;
        self.due.remove(&(at, replica));
        let link = self.links.get_mut(usize::from(replica))?;
        *link = Link::Idle { due: None };
        Some(replica)
    }

    /// A dial to `replica` started.
    pub(crate) fn dialing(&mut self, replica: u8, id: ConnectionId) {
        if let Some(link) = self.links.get_mut(usize::from(replica)) {
            *link = Link::Dialing(id);
        }
    }

    /// `id` is now `replica`'s registered connection.
    pub(crate) fn install(&mut self, replica: u8, id: ConnectionId) {
        self.cancel(replica);
        if let Some(link) = self.links.get_mut(usize::from(replica)) {
            *link = Link::Connected(id);
        }
    }

    /// The registered connection `id` ended after `lasted`. A later
    /// connection (a different id) is left alone. The backoff starts over
    /// only after a connection that stayed up for `reconnect_max`: one
    /// refused right after its handshake (a duplicate, a flapping link)
    /// keeps backing off instead of redialling at the minimum delay.
    pub(crate) fn lost(
        &mut self,
        now: Instant,
        replica: u8,
        id: ConnectionId,
        lasted: Option<core::time::Duration>,
        entropy: &mut dyn Entropy,
    ) {
        if self.link(replica) == Some(Link::Connected(id)) {
            if let Some(b) = self.backoff.get_mut(usize::from(replica))
                && lasted.is_some_and(|d| d >= self.stable)
            {
                b.reset();
            }
            self.schedule(now, replica, entropy);
        }
    }

    /// The dial `id` ended without registering (connect failed, refused,
    /// handshake failed or timed out).
    pub(crate) fn dial_ended(
        &mut self,
        now: Instant,
        replica: u8,
        id: ConnectionId,
        entropy: &mut dyn Entropy,
    ) {
        if self.link(replica) == Some(Link::Dialing(id)) {
            self.schedule(now, replica, entropy);
        }
    }

    /// A due dial could not start (no free slot): try again after a backoff.
    pub(crate) fn retry_later(&mut self, now: Instant, replica: u8, entropy: &mut dyn Entropy) {
        self.schedule(now, replica, entropy);
    }

    /// Shutdown: no more dials, ever.
    pub(crate) fn cancel_all(&mut self) {
        self.stopped = true;
        self.due.clear();
        for link in &mut self.links {
            if let Link::Idle { due } = link {
                *due = None;
            }
        }
    }

    fn cancel(&mut self, replica: u8) {
        if let Some(Link::Idle { due: Some(at) }) = self.link(replica) {
            self.due.remove(&(at, replica));
        }
    }

    /// Back to idle; a peer we dial gets its next dial time.
    fn schedule(&mut self, now: Instant, replica: u8, entropy: &mut dyn Entropy) {
        self.cancel(replica);
        let due = if replica > self.local && !self.stopped {
            let delay = match self.backoff.get_mut(usize::from(replica)) {
                Some(b) => b.next_delay(entropy),
                None => return,
            };
            let at = now.saturating_add(delay);
            self.due.insert((at, replica));
            Some(at)
        } else {
            None
        };
        if let Some(link) = self.links.get_mut(usize::from(replica)) {
            *link = Link::Idle { due };
        }
    }
}
