//! Admission before authentication: who gets a connection slot while
//! nobody has proved anything yet (hazards 12 and 33).
//!
//! An accepted connection starts in the *unauthenticated pool*, holding no
//! more than a header buffer, until its `hello` verifies. The pool is
//! bounded node-wide (`max_handshakes_in_flight`) and per remote IP address
//! (`max_unauthenticated_per_address`). A new connection is never refused
//! for a full pool: it evicts the oldest connection of the address that
//! holds the most of the pool (or of its own address, when that address is
//! over its share). Each pooled connection must deliver its `hello` within
//! `hello_timeout`. So whatever a key-less attacker does with silent, slow
//! or garbage sockets, a dialer that sends its `hello` promptly is read
//! before it can be evicted, and an address holding few slots (a replica,
//! an honest client) is evicted last.
//!
//! Evicted connections are closed at once, without an answer: they have
//! not said who they are, and an honest dialer evicted with its `hello`
//! still unread sees a reset and redials. Evictions are counted in
//! [`NodeStats::unauthenticated_evicted`](super::NodeStats).
//!
//! Addresses are grouped as an attacker would have to vary them: IPv4 by
//! address (IPv4-mapped IPv6 included), IPv6 by /64 prefix.

use super::table::ConnectionId;
use alloc::collections::{BTreeMap, VecDeque};
use core::net::IpAddr;

/// The group `ip` counts in: IPv4 addresses alone (an IPv4-mapped IPv6
/// address as its IPv4 address), IPv6 addresses by their /64 prefix, which
/// one host typically holds whole.
pub(super) fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(core::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// The unauthenticated pool's bookkeeping: members in accept order and
/// their count per address. Membership itself is the table entry's
/// `unauthenticated` flag; entries here that left the pool are skipped and
/// compacted away.
#[derive(Debug, Default)]
pub(super) struct Pool {
    /// Accept order, oldest first; may hold ids that already left.
    order: VecDeque<(ConnectionId, Option<IpAddr>)>,
    /// Members per remote address (`None`: the adapter did not say).
    by_address: BTreeMap<Option<IpAddr>, usize>,
    len: usize,
}

impl Pool {
    /// Members.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Members from `address`.
    pub(super) fn count(&self, address: Option<IpAddr>) -> usize {
        self.by_address.get(&address).copied().unwrap_or(0)
    }

    /// A new member. `bound` caps stale entries kept for lazy removal.
    pub(super) fn join(
        &mut self,
        id: ConnectionId,
        address: Option<IpAddr>,
        bound: usize,
        is_member: impl Fn(ConnectionId) -> bool,
    ) {
        if self.order.len() >= bound.saturating_mul(2).saturating_add(16) {
            self.order.retain(|&(id, _)| is_member(id));
        }
        self.order.push_back((id, address));
        *self.by_address.entry(address).or_insert(0) += 1;
        self.len += 1;
    }

    /// A member left (its `hello` verified, or it closed).
    pub(super) fn leave(&mut self, address: Option<IpAddr>) {
        self.len = self.len.saturating_sub(1);
        if let Some(count) = self.by_address.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                self.by_address.remove(&address);
            }
        }
    }

    /// The member to evict: the oldest of `address` if given, else the
    /// oldest of the address holding the most members.
    pub(super) fn victim(
        &mut self,
        address: Option<Option<IpAddr>>,
        is_member: impl Fn(ConnectionId) -> bool,
    ) -> Option<ConnectionId> {
        while let Some(&(id, _)) = self.order.front() {
            if is_member(id) {
                break;
            }
            self.order.pop_front();
        }
        let target = match address {
            Some(address) => address,
            None => {
                let most = self.by_address.values().copied().max()?;
                // Ties go to the address whose member is oldest.
                let (_, address) = self
                    .order
                    .iter()
                    .find(|&&(id, a)| self.count(a) == most && is_member(id))?;
                *address
            }
        };
        self.order
            .iter()
            .find(|&&(id, a)| a == target && is_member(id))
            .map(|&(id, _)| id)
    }
}
