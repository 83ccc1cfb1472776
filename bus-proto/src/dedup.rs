//! The request dedup window: at-most-once execution of client requests.
//!
//! # What is guaranteed
//!
//! For each client id, the window remembers its last `entries_per_client`
//! requests (in flight or completed, with the reply) and the highest request
//! number it has forgotten (the *floor*). While the client's session is held:
//!
//! - a request that is in flight is reported [`Lookup::InFlight`] (drop the
//!   duplicate);
//! - a completed request is answered with its cached reply
//!   ([`Lookup::Cached`]) and not executed again;
//! - a request at or below the floor is [`Lookup::Stale`]: its reply is gone,
//!   so it is refused rather than executed a second time.
//!
//! So within a session, a request number is executed at most once, full stop.
//! The session ends when:
//!
//! - the client is idle for longer than `ttl` (entries older than `ttl` are
//!   also dropped, raising the floor, so their retries become `Stale`);
//! - the number of sessions or of cached reply bytes exceeds its cap, and
//!   this client is the least recently active one (its id is returned to the
//!   caller, which should tell the client it was evicted);
//! - [`DedupWindow::evict_client`] is called (the node's disconnect policy);
//! - the process exits: the window lives in memory only.
//!
//! A session ended by eviction (the last two but one) leaves a *marker*:
//! the highest request number the session had seen, kept until the session
//! would have expired by `ttl`. A retry at or below it is `Stale`, not
//! `Fresh`, so an eviction cannot make a request run twice, even for a
//! client that could not be told (one that crashed, and retries after a
//! restart). Markers are bounded by `max_clients`; when they are full the
//! oldest goes first, and only then does a retry after an eviction run
//! again. A request retried after a session expired (`ttl`) or after the
//! process restarted is `Fresh` again. Clients must use one id across
//! reconnects (hazard 18) for any of this to apply.
//!
//! # Bounds
//!
//! At most `max_clients` sessions of at most `entries_per_client` entries,
//! at most `max_cached_bytes` of reply bodies in total, and at most
//! `max_clients` eviction markers (24 bytes of state each). When a cap is
//! reached the least recently active *other* sessions are evicted. A full
//! window forgets its oldest completed entry; a window full of requests in
//! flight refuses new ones ([`DedupError::WindowFull`]) rather than dropping
//! a tracked entry. A request left in flight for longer than `ttl` is
//! forgotten (its reply may never come; its retries are `Stale`).

use crate::time::Instant;
use crate::wire::{APP_AREA_SIZE, AppHeader};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::Bytes;
use core::time::Duration;

/// Limits of a [`DedupWindow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupLimits {
    /// Requests remembered per client (ring size).
    pub entries_per_client: usize,
    /// Client sessions held.
    pub max_clients: usize,
    /// Total bytes of cached replies.
    pub max_cached_bytes: usize,
    /// Lifetime of an entry, and idle time after which a session ends.
    pub ttl: Duration,
}

impl Default for DedupLimits {
    fn default() -> Self {
        DedupLimits {
            entries_per_client: 64,
            max_clients: 4096,
            max_cached_bytes: 256 << 20,
            ttl: Duration::from_secs(300),
        }
    }
}

/// A completed request's reply as the window keeps it for retries: its
/// body and the application's header fields, so a retry is answered with
/// exactly what the first reply carried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedReply {
    /// The reply's body.
    pub body: Bytes,
    /// The reply's `view`, `release` and application area.
    pub app: AppHeader,
}

impl CachedReply {
    /// Bytes it counts against `dedup_max_cached_bytes`: the body, plus the
    /// application area when one is set.
    pub fn cost(&self) -> usize {
        let area = if self.app.area.is_zero() {
            0
        } else {
            APP_AREA_SIZE
        };
        self.body.len() + area
    }
}

impl From<Bytes> for CachedReply {
    fn from(body: Bytes) -> Self {
        CachedReply {
            body,
            app: AppHeader::ZERO,
        }
    }
}

/// What the window knows about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Never seen (in this session): execute it, after [`DedupWindow::mark_in_flight`].
    Fresh,
    /// Being executed: drop the duplicate.
    InFlight,
    /// Completed: answer with this reply, do not execute.
    Cached(CachedReply),
    /// Completed and forgotten: refuse it, do not execute.
    Stale,
}

/// A dedup operation was refused.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DedupError {
    /// `mark_in_flight` on a request that is not fresh.
    #[error("client {client:#x} request {request} is not fresh ({state:?})")]
    NotFresh {
        /// Client id.
        client: u128,
        /// Request number.
        request: u64,
        /// What the window knows about it.
        state: Lookup,
    },
    /// The client's oldest entry is still in flight, so no slot can be freed.
    #[error("client {client:#x} has {in_flight} requests in flight, the window's whole capacity")]
    WindowFull {
        /// Client id.
        client: u128,
        /// Requests in flight.
        in_flight: usize,
    },
    /// `complete` on a request that is not in flight (never marked, already
    /// completed, or its session ended meanwhile).
    #[error("client {client:#x} request {request} is not in flight")]
    NotInFlight {
        /// Client id.
        client: u128,
        /// Request number.
        request: u64,
    },
    /// The reply alone exceeds `max_cached_bytes`; it is not cached and its
    /// retries will be `Stale`.
    #[error("reply of {len} bytes exceeds max_cached_bytes {max}")]
    ReplyTooLarge {
        /// Reply length.
        len: usize,
        /// The cap.
        max: usize,
    },
}

#[derive(Clone, Debug)]
enum State {
    InFlight,
    Done(CachedReply),
}

#[derive(Clone, Debug)]
struct Entry {
    request: u64,
    state: State,
    at: Instant,
}

#[derive(Clone, Debug)]
struct Session {
    entries: VecDeque<Entry>,
    floor: Option<u64>,
    /// The highest request number ever entered: a higher one is in no
    /// entry and above the floor, so it is `Fresh` without a scan (the
    /// common case, as clients number upwards).
    high: Option<u64>,
    last_active: Instant,
    /// The time this session is filed under in the LRU order: its
    /// `last_active` when filed, so never later. Refiled lazily, only when
    /// the order is walked: activity costs no B-tree update.
    filed_at: Instant,
}

impl Session {
    /// Forgets entry `index`: its bytes leave the cache and its request
    /// number joins the floor, so a retry of it is `Stale`, never `Fresh`.
    fn remove(&mut self, index: usize, cached_bytes: &mut usize) {
        if let Some(e) = self.entries.remove(index) {
            if let State::Done(b) = &e.state {
                *cached_bytes -= b.cost();
            }
            self.floor = Some(self.floor.map_or(e.request, |f| f.max(e.request)));
        }
    }

    fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| match &e.state {
                State::Done(b) => b.cost(),
                State::InFlight => 0,
            })
            .sum()
    }
}

/// Client ids evicted by an operation; tell those clients their session ended.
pub type Evicted = Vec<u128>;

/// What the window keeps of an evicted session: its highest request number,
/// until the session's `ttl` would have run out.
#[derive(Clone, Copy, Debug)]
struct Marker {
    floor: u64,
    last_active: Instant,
}

/// The dedup window. All times are inputs; see the [module docs](self) for
/// exactly what it guarantees.
#[derive(Clone, Debug)]
pub struct DedupWindow {
    limits: DedupLimits,
    sessions: BTreeMap<u128, Session>,
    /// `(filed_at, client)` for every session: the LRU order, once entries
    /// whose session was active since are refiled ([`DedupWindow::refile`]).
    lru: BTreeSet<(Instant, u128)>,
    cached_bytes: usize,
    /// Evicted sessions' markers, and their `(last_active, client)` order.
    markers: BTreeMap<u128, Marker>,
    marker_order: BTreeSet<(Instant, u128)>,
    /// Markers dropped at the cap before their time.
    markers_dropped: u64,
    /// How far, in nanoseconds, a session's activity may run ahead of the
    /// time it is filed under before `touch` refiles it: a quarter of the
    /// TTL.
    refile_lag: u64,
}

impl DedupWindow {
    /// An empty window. Limits of zero are raised to one.
    pub fn new(limits: DedupLimits) -> Self {
        DedupWindow {
            limits: DedupLimits {
                entries_per_client: limits.entries_per_client.max(1),
                max_clients: limits.max_clients.max(1),
                ..limits
            },
            sessions: BTreeMap::new(),
            lru: BTreeSet::new(),
            cached_bytes: 0,
            markers: BTreeMap::new(),
            marker_order: BTreeSet::new(),
            markers_dropped: 0,
            refile_lag: u64::try_from(limits.ttl.as_nanos() / 4).unwrap_or(u64::MAX),
        }
    }

    /// Markers dropped at the cap (`max_clients`) before their session's
    /// TTL ran out: a late retry of that client's earlier requests would
    /// be `Fresh` again.
    pub fn markers_dropped(&self) -> u64 {
        self.markers_dropped
    }

    /// Markers of evicted sessions held.
    pub fn markers(&self) -> usize {
        self.markers.len()
    }

    /// Sessions held.
    pub fn clients(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes of cached replies held.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// What is known about `(client, request)`.
    pub fn lookup(&mut self, client: u128, request: u64, now: Instant) -> Lookup {
        let Some(session) = self.touch(client, now) else {
            return match self.marker(client, now) {
                Some(floor) if request <= floor => Lookup::Stale,
                _ => Lookup::Fresh,
            };
        };
        if session.high.is_none_or(|high| request > high) {
            return Lookup::Fresh;
        }
        // Recent entries are the likely ones: search from the back.
        match session.entries.iter().rev().find(|e| e.request == request) {
            Some(Entry {
                state: State::InFlight,
                ..
            }) => Lookup::InFlight,
            // A cheap `Bytes` clone: the caller owns it, the window keeps its own (hazard 19).
            Some(Entry {
                state: State::Done(reply),
                ..
            }) => Lookup::Cached(reply.clone()),
            None if session.floor.is_some_and(|f| request <= f) => Lookup::Stale,
            None => Lookup::Fresh,
        }
    }

    /// Records that a fresh request is being executed. Returns the clients
    /// evicted to make room for a new session.
    pub fn mark_in_flight(
        &mut self,
        client: u128,
        request: u64,
        now: Instant,
    ) -> Result<Evicted, DedupError> {
        let state = self.lookup(client, request, now);
        if state != Lookup::Fresh {
            return Err(DedupError::NotFresh {
                client,
                request,
                state,
            });
        }
        let mut evicted = Vec::new();
        if !self.sessions.contains_key(&client) {
            while self.sessions.len() >= self.limits.max_clients {
                match self.evict_lru(client) {
                    Some(c) => evicted.push(c),
                    None => break,
                }
            }
            // An evicted session's successor starts from its marker.
            let floor = self.marker(client, now);
            self.forget_marker(client);
            self.sessions.insert(
                client,
                Session {
                    entries: VecDeque::new(),
                    floor,
                    // Everything up to the floor was seen.
                    high: floor,
                    last_active: now,
                    filed_at: now,
                },
            );
            self.lru.insert((now, client));
        }
        let cap = self.limits.entries_per_client;
        let Some(session) = self.sessions.get_mut(&client) else {
            return Ok(evicted);
        };
        if session.entries.len() >= cap {
            // Forget the oldest completed entry; requests in flight stay
            // tracked, so a window full of them refuses instead.
            let Some(oldest_done) = session
                .entries
                .iter()
                .position(|e| matches!(e.state, State::Done(_)))
            else {
                let in_flight = session.entries.len();
                return Err(DedupError::WindowFull { client, in_flight });
            };
            session.remove(oldest_done, &mut self.cached_bytes);
        }
        session.high = Some(session.high.map_or(request, |high| high.max(request)));
        session.entries.push_back(Entry {
            request,
            state: State::InFlight,
            at: now,
        });
        Ok(evicted)
    }

    /// Records the reply of an in-flight request, evicting the least recently
    /// active other sessions if the byte cap requires it.
    pub fn complete(
        &mut self,
        client: u128,
        request: u64,
        reply: impl Into<CachedReply>,
        now: Instant,
    ) -> Result<Evicted, DedupError> {
        let reply = reply.into();
        let cost = reply.cost();
        let not_in_flight = DedupError::NotInFlight { client, request };
        let max = self.limits.max_cached_bytes;
        let Some(session) = self.touch(client, now) else {
            return Err(not_in_flight);
        };
        let Some(index) = session
            .entries
            .iter()
            .rposition(|e| e.request == request && matches!(e.state, State::InFlight))
        else {
            return Err(not_in_flight);
        };
        if cost > max {
            if let Some(session) = self.sessions.get_mut(&client) {
                session.remove(index, &mut self.cached_bytes);
            }
            return Err(DedupError::ReplyTooLarge { len: cost, max });
        }
        let mut evicted = Vec::new();
        while self.cached_bytes + cost > max {
            match self.evict_lru(client) {
                Some(c) => evicted.push(c),
                None => break,
            }
        }
        let Some(session) = self.sessions.get_mut(&client) else {
            return Err(not_in_flight);
        };
        // Still over: only this client's own older replies are left to drop.
        while self.cached_bytes + cost > max {
            let Some(front) = session
                .entries
                .iter()
                .position(|e| matches!(e.state, State::Done(_)))
            else {
                break;
            };
            session.remove(front, &mut self.cached_bytes);
        }
        let Some(entry) = session
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.request == request)
        else {
            return Err(not_in_flight);
        };
        self.cached_bytes += cost;
        entry.state = State::Done(reply);
        entry.at = now;
        Ok(evicted)
    }

    /// Ends a client's session (e.g. on disconnect, per the node's policy),
    /// leaving a marker so that its retries are `Stale`, not `Fresh`.
    /// Returns whether it existed.
    pub fn evict_client(&mut self, client: u128) -> bool {
        let Some(session) = self.end_session(client) else {
            return false;
        };
        let seen = session
            .entries
            .iter()
            .map(|e| e.request)
            .chain(session.floor);
        if let Some(floor) = seen.max() {
            if self.markers.len() >= self.limits.max_clients
                && let Some(&(_, oldest)) = self.marker_order.first()
            {
                self.forget_marker(oldest);
                self.markers_dropped += 1;
            }
            let last_active = session.last_active;
            self.markers.insert(client, Marker { floor, last_active });
            self.marker_order.insert((last_active, client));
        }
        true
    }

    /// Removes a session without a marker.
    fn end_session(&mut self, client: u128) -> Option<Session> {
        let session = self.sessions.remove(&client)?;
        self.lru.remove(&(session.filed_at, client));
        self.cached_bytes -= session.bytes();
        Some(session)
    }

    /// `client`'s marker floor, if it has one still within `ttl`.
    fn marker(&mut self, client: u128, now: Instant) -> Option<u64> {
        let marker = *self.markers.get(&client)?;
        if now.saturating_duration_since(marker.last_active) > self.limits.ttl {
            self.forget_marker(client);
            return None;
        }
        Some(marker.floor)
    }

    fn forget_marker(&mut self, client: u128) {
        if let Some(marker) = self.markers.remove(&client) {
            self.marker_order.remove(&(marker.last_active, client));
        }
    }

    /// When [`DedupWindow::expire`] may next end a session or drop a
    /// marker: never later than that, and earlier (by at most a quarter of
    /// the TTL) only if a session was active since it was last filed;
    /// calling `expire` then refiles it.
    pub fn next_expiry(&self) -> Option<Instant> {
        let oldest = [self.lru.first(), self.marker_order.first()];
        oldest
            .into_iter()
            .flatten()
            .map(|&(at, _)| at)
            .min()
            .map(|at| {
                at.saturating_add(self.limits.ttl)
                    .saturating_add(Duration::from_nanos(1))
            })
    }

    /// Ends every session idle for longer than the TTL, and drops markers
    /// as old; returns how many sessions ended. Costs
    /// `O((expired + refiled) * log n)`: it walks both orders from the
    /// oldest, refiling the sessions active since they were filed (each
    /// at most a quarter of the TTL behind, see `touch`).
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut count = 0;
        while let Some(&(at, client)) = self.lru.first() {
            if now.saturating_duration_since(at) <= self.limits.ttl {
                break;
            }
            if self.refile(at, client) {
                continue;
            }
            self.end_session(client);
            count += 1;
        }
        while let Some(&(at, client)) = self.marker_order.first() {
            if now.saturating_duration_since(at) <= self.limits.ttl {
                break;
            }
            self.forget_marker(client);
        }
        count
    }

    /// Refreshes a session's activity and drops what the TTL expired. Returns
    /// `None` if there is no (live) session.
    fn touch(&mut self, client: u128, now: Instant) -> Option<&mut Session> {
        let ttl = self.limits.ttl;
        let last = self.sessions.get(&client)?.last_active;
        if now.saturating_duration_since(last) > ttl {
            self.end_session(client);
            return None;
        }
        let session = self.sessions.get_mut(&client)?;
        // Expired entries leave from the front (an older one behind a newer
        // completion waits its turn). One left in flight for longer than the
        // TTL is forgotten too: its reply may never come; retries are `Stale`.
        while session
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > ttl)
        {
            session.remove(0, &mut self.cached_bytes);
        }
        if now > last {
            session.last_active = now;
            // Refiled now and then, not on every request: an active
            // session's entry then lags at most a quarter of the TTL, so it
            // neither wakes the timer early nor lengthens a later walk.
            let lag = now.as_nanos().saturating_sub(session.filed_at.as_nanos());
            if lag > self.refile_lag {
                file(&mut self.lru, session, client, now);
            }
        }
        Some(session)
    }

    /// Moves `client`'s LRU entry, filed at `at`, to its session's last
    /// activity if that is later; returns whether it moved. A walk of the
    /// order from the oldest that refiles each entry it meets finds the
    /// sessions in their exact order of last activity: every other entry
    /// is filed no earlier than the one in front, and active no earlier
    /// than it is filed.
    fn refile(&mut self, at: Instant, client: u128) -> bool {
        let Some(session) = self.sessions.get_mut(&client) else {
            return false;
        };
        let last = session.last_active;
        if last == at {
            return false;
        }
        file(&mut self.lru, session, client, last);
        true
    }

    /// Evicts the least recently active session other than `keep`.
    fn evict_lru(&mut self, keep: u128) -> Option<u128> {
        loop {
            let &(at, victim) = self.lru.iter().find(|&&(_, c)| c != keep)?;
            if !self.refile(at, victim) {
                self.evict_client(victim);
                return Some(victim);
            }
        }
    }
}

/// Moves `client`'s entry in the LRU order from where `session` is filed to
/// `at`.
fn file(lru: &mut BTreeSet<(Instant, u128)>, session: &mut Session, client: u128, at: Instant) {
    lru.remove(&(session.filed_at, client));
    lru.insert((at, client));
    session.filed_at = at;
}
