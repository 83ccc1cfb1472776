//! The request dedup window's policy, written with vectors and linear
//! scans.

use bus_proto::dedup::{DedupLimits, Lookup};
use bus_proto::time::Instant;
use bytes::Bytes;

#[derive(Clone, Debug)]
struct Entry {
    request: u64,
    reply: Option<Bytes>,
    at: Instant,
}

#[derive(Clone, Debug)]
struct Session {
    client: u128,
    entries: Vec<Entry>,
    floor: Option<u64>,
    last: Instant,
}

/// The dedup window's policy over a vector of sessions.
#[derive(Debug)]
pub struct DedupModel {
    l: DedupLimits,
    sessions: Vec<Session>,
    /// Evicted sessions: (client, highest number seen, last active).
    markers: Vec<(u128, u64, Instant)>,
}

fn raise(floor: &mut Option<u64>, request: u64) {
    *floor = Some(floor.map_or(request, |f| f.max(request)));
}

impl DedupModel {
    /// An empty window with `limits`.
    pub fn new(limits: DedupLimits) -> Self {
        DedupModel {
            l: limits,
            sessions: Vec::new(),
            markers: Vec::new(),
        }
    }

    /// Sessions held.
    pub fn clients(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes of cached replies.
    pub fn bytes(&self) -> usize {
        self.sessions
            .iter()
            .flat_map(|s| &s.entries)
            .filter_map(|e| e.reply.as_ref())
            .map(Bytes::len)
            .sum()
    }

    fn idx(&self, client: u128) -> Option<usize> {
        self.sessions.iter().position(|s| s.client == client)
    }

    /// Markers held.
    pub fn markers(&self) -> usize {
        self.markers.len()
    }

    /// The live marker of `client` (an expired one is dropped).
    fn marker(&mut self, client: u128, now: Instant) -> Option<u64> {
        let i = self.markers.iter().position(|m| m.0 == client)?;
        let (_, floor, last) = self.markers[i];
        if now.saturating_duration_since(last) > self.l.ttl {
            self.markers.remove(i);
            return None;
        }
        Some(floor)
    }

    fn touch(&mut self, client: u128, now: Instant) -> Option<usize> {
        let i = self.idx(client)?;
        let ttl = self.l.ttl;
        if now.saturating_duration_since(self.sessions[i].last) > ttl {
            self.sessions.remove(i);
            return None;
        }
        let s = &mut self.sessions[i];
        while let Some(e) = s.entries.first() {
            if now.saturating_duration_since(e.at) > ttl {
                let e = s.entries.remove(0);
                raise(&mut s.floor, e.request);
            } else {
                break;
            }
        }
        s.last = s.last.max(now);
        Some(i)
    }

    /// What a request finds.
    pub fn lookup(&mut self, client: u128, request: u64, now: Instant) -> Lookup {
        let Some(i) = self.touch(client, now) else {
            return match self.marker(client, now) {
                Some(floor) if request <= floor => Lookup::Stale,
                _ => Lookup::Fresh,
            };
        };
        let s = &self.sessions[i];
        match s.entries.iter().find(|e| e.request == request) {
            Some(Entry { reply: None, .. }) => Lookup::InFlight,
            Some(Entry { reply: Some(r), .. }) => Lookup::Cached(r.clone().into()),
            None if s.floor.is_some_and(|f| request <= f) => Lookup::Stale,
            None => Lookup::Fresh,
        }
    }

    fn evict_lru(&mut self, keep: u128) -> Option<u128> {
        let victim = self
            .sessions
            .iter()
            .filter(|s| s.client != keep)
            .min_by_key(|s| (s.last, s.client))?
            .client;
        self.evict(victim);
        Some(victim)
    }

    /// Ends `client`'s session, leaving a marker; whether there was one.
    pub fn evict(&mut self, client: u128) -> bool {
        let Some(i) = self.idx(client) else {
            return false;
        };
        let s = self.sessions.remove(i);
        let seen = s.entries.iter().map(|e| e.request).chain(s.floor).max();
        if let Some(floor) = seen {
            if self.markers.len() >= self.l.max_clients {
                let oldest = (0..self.markers.len())
                    .min_by_key(|&j| (self.markers[j].2, self.markers[j].0))
                    .unwrap();
                self.markers.remove(oldest);
            }
            self.markers.push((client, floor, s.last));
        }
        true
    }

    /// Marks a fresh request in flight; the clients evicted for room.
    pub fn mark(&mut self, client: u128, request: u64, now: Instant) -> Option<Vec<u128>> {
        if self.lookup(client, request, now) != Lookup::Fresh {
            return None;
        }
        let mut evicted = vec![];
        if self.idx(client).is_none() {
            while self.sessions.len() >= self.l.max_clients {
                evicted.push(self.evict_lru(client).unwrap());
            }
            let floor = self.marker(client, now);
            self.markers.retain(|m| m.0 != client);
            self.sessions.push(Session {
                client,
                entries: vec![],
                floor,
                last: now,
            });
        }
        let cap = self.l.entries_per_client;
        let i = self.idx(client).unwrap();
        let s = &mut self.sessions[i];
        if s.entries.len() >= cap {
            let oldest_done = s.entries.iter().position(|e| e.reply.is_some())?;
            let e = s.entries.remove(oldest_done);
            raise(&mut s.floor, e.request);
        }
        s.entries.push(Entry {
            request,
            reply: None,
            at: now,
        });
        Some(evicted)
    }

    /// Caches a reply; the clients evicted for room.
    pub fn complete(
        &mut self,
        client: u128,
        request: u64,
        r: Bytes,
        now: Instant,
    ) -> Option<Vec<u128>> {
        let i = self.touch(client, now)?;
        let pos = self.sessions[i]
            .entries
            .iter()
            .position(|e| e.request == request && e.reply.is_none())?;
        let max = self.l.max_cached_bytes;
        if r.len() > max {
            let s = &mut self.sessions[i];
            let e = s.entries.remove(pos);
            raise(&mut s.floor, e.request);
            return None;
        }
        let mut evicted = vec![];
        while self.bytes() + r.len() > max {
            match self.evict_lru(client) {
                Some(c) => evicted.push(c),
                None => break,
            }
        }
        while self.bytes() + r.len() > max {
            let i = self.idx(client).unwrap();
            let s = &mut self.sessions[i];
            let Some(p) = s.entries.iter().position(|e| e.reply.is_some()) else {
                break;
            };
            let e = s.entries.remove(p);
            raise(&mut s.floor, e.request);
        }
        let i = self.idx(client).unwrap();
        let e = self.sessions[i]
            .entries
            .iter_mut()
            .find(|e| e.request == request)
            .unwrap();
        e.reply = Some(r);
        e.at = now;
        Some(evicted)
    }

    /// Ends idle sessions; how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.l.ttl;
        let before = self.sessions.len();
        self.sessions
            .retain(|s| now.saturating_duration_since(s.last) <= ttl);
        self.markers
            .retain(|m| now.saturating_duration_since(m.2) <= ttl);
        before - self.sessions.len()
    }
}
