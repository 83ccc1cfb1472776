//! The request dedup window against a brute-force reference model, and its
//! documented guarantees one by one.

use bus_proto::dedup::*;
use bus_proto::time::Instant;
use bytes::Bytes;
use proptest::prelude::*;
use std::time::Duration;

const MS: u64 = 1_000_000;

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * MS)
}

fn limits(entries: usize, clients: usize, bytes: usize, ttl_ms: u64) -> DedupLimits {
    DedupLimits {
        entries_per_client: entries,
        max_clients: clients,
        max_cached_bytes: bytes,
        ttl: Duration::from_millis(ttl_ms),
    }
}

fn reply(n: usize) -> Bytes {
    Bytes::from(vec![0xEE; n])
}

// ---------------------------------------------------------------------------
// Reference model: the same policy written with vectors and linear scans.

#[derive(Clone, Debug)]
struct MEntry {
    request: u64,
    reply: Option<Bytes>,
    at: Instant,
}

#[derive(Clone, Debug)]
struct MSession {
    client: u128,
    entries: Vec<MEntry>,
    floor: Option<u64>,
    last: Instant,
}

#[derive(Debug)]
struct Model {
    l: DedupLimits,
    sessions: Vec<MSession>,
}

fn raise(floor: &mut Option<u64>, request: u64) {
    *floor = Some(floor.map_or(request, |f| f.max(request)));
}

impl Model {
    fn bytes(&self) -> usize {
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

    fn lookup(&mut self, client: u128, request: u64, now: Instant) -> Lookup {
        let Some(i) = self.touch(client, now) else {
            return Lookup::Fresh;
        };
        let s = &self.sessions[i];
        match s.entries.iter().find(|e| e.request == request) {
            Some(MEntry { reply: None, .. }) => Lookup::InFlight,
            Some(MEntry { reply: Some(r), .. }) => Lookup::Cached(r.clone()),
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

    fn evict(&mut self, client: u128) -> bool {
        let before = self.sessions.len();
        self.sessions.retain(|s| s.client != client);
        before != self.sessions.len()
    }

    fn mark(&mut self, client: u128, request: u64, now: Instant) -> Result<Vec<u128>, ()> {
        if self.lookup(client, request, now) != Lookup::Fresh {
            return Err(());
        }
        let mut evicted = vec![];
        if self.idx(client).is_none() {
            while self.sessions.len() >= self.l.max_clients {
                evicted.push(self.evict_lru(client).unwrap());
            }
            self.sessions.push(MSession {
                client,
                entries: vec![],
                floor: None,
                last: now,
            });
        }
        let cap = self.l.entries_per_client;
        let i = self.idx(client).unwrap();
        let s = &mut self.sessions[i];
        if s.entries.len() >= cap {
            let Some(oldest_done) = s.entries.iter().position(|e| e.reply.is_some()) else {
                return Err(());
            };
            let e = s.entries.remove(oldest_done);
            raise(&mut s.floor, e.request);
        }
        s.entries.push(MEntry {
            request,
            reply: None,
            at: now,
        });
        Ok(evicted)
    }

    fn complete(
        &mut self,
        client: u128,
        request: u64,
        r: Bytes,
        now: Instant,
    ) -> Result<Vec<u128>, ()> {
        let i = self.touch(client, now).ok_or(())?;
        let pos = self.sessions[i]
            .entries
            .iter()
            .position(|e| e.request == request && e.reply.is_none())
            .ok_or(())?;
        let max = self.l.max_cached_bytes;
        if r.len() > max {
            let s = &mut self.sessions[i];
            let e = s.entries.remove(pos);
            raise(&mut s.floor, e.request);
            return Err(());
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
        Ok(evicted)
    }

    fn expire(&mut self, now: Instant) -> usize {
        let ttl = self.l.ttl;
        let before = self.sessions.len();
        self.sessions
            .retain(|s| now.saturating_duration_since(s.last) <= ttl);
        before - self.sessions.len()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Lookup(u8, u64),
    Mark(u8, u64),
    Complete(u8, u64, usize),
    Evict(u8),
    Expire,
}

fn arb_op() -> impl Strategy<Value = (u64, Op)> {
    let client = 0u8..6;
    let request = 0u64..12;
    let op = prop_oneof![
        3 => (client.clone(), request.clone()).prop_map(|(c, r)| Op::Lookup(c, r)),
        3 => (client.clone(), request.clone()).prop_map(|(c, r)| Op::Mark(c, r)),
        3 => (client.clone(), request, 0usize..120).prop_map(|(c, r, n)| Op::Complete(c, r, n)),
        1 => client.prop_map(Op::Evict),
        1 => Just(Op::Expire),
    ];
    (prop_oneof![4 => 0u64..5, 1 => 0u64..400], op)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn window_matches_the_reference_model(
        entries in 1usize..5,
        clients in 1usize..5,
        bytes in 50usize..300,
        ttl in 10u64..300,
        ops in prop::collection::vec(arb_op(), 0..200),
    ) {
        let l = limits(entries, clients, bytes, ttl);
        let mut window = DedupWindow::new(l);
        let mut model = Model { l, sessions: vec![] };
        let mut now = 0;
        for (dt, op) in ops {
            now += dt;
            let at = t(now);
            match op {
                Op::Lookup(c, r) => {
                    prop_assert_eq!(window.lookup(c.into(), r, at), model.lookup(c.into(), r, at));
                }
                Op::Mark(c, r) => {
                    let real = window.mark_in_flight(c.into(), r, at);
                    prop_assert_eq!(real.ok(), model.mark(c.into(), r, at).ok());
                }
                Op::Complete(c, r, n) => {
                    let real = window.complete(c.into(), r, reply(n), at);
                    prop_assert_eq!(real.ok(), model.complete(c.into(), r, reply(n), at).ok());
                }
                Op::Evict(c) => prop_assert_eq!(window.evict_client(c.into()), model.evict(c.into())),
                Op::Expire => prop_assert_eq!(window.expire(at), model.expire(at)),
            }
            prop_assert_eq!(window.clients(), model.sessions.len());
            prop_assert_eq!(window.cached_bytes(), model.bytes());
            prop_assert!(window.clients() <= clients);
            prop_assert!(window.cached_bytes() <= bytes);
        }
    }

    /// Arbitrary (even backwards) times never panic and keep the bounds.
    #[test]
    fn arbitrary_times_keep_the_bounds(ops in prop::collection::vec((any::<u64>(), arb_op()), 0..150)) {
        let mut window = DedupWindow::new(limits(3, 3, 200, 50));
        for (time, (_, op)) in ops {
            let at = Instant::from_nanos(time);
            match op {
                Op::Lookup(c, r) => { let _ = window.lookup(c.into(), r, at); }
                Op::Mark(c, r) => { let _ = window.mark_in_flight(c.into(), r, at); }
                Op::Complete(c, r, n) => { let _ = window.complete(c.into(), r, reply(n), at); }
                Op::Evict(c) => { window.evict_client(c.into()); }
                Op::Expire => { window.expire(at); }
            }
            prop_assert!(window.clients() <= 3 && window.cached_bytes() <= 200);
        }
    }
}

// ---------------------------------------------------------------------------
// The guarantees, one at a time.

fn run(w: &mut DedupWindow, client: u128, request: u64, body: &[u8], now: Instant) {
    assert_eq!(w.lookup(client, request, now), Lookup::Fresh);
    w.mark_in_flight(client, request, now).unwrap();
    w.complete(client, request, Bytes::copy_from_slice(body), now)
        .unwrap();
}

#[test]
fn a_completed_request_is_answered_from_the_cache() {
    let mut w = DedupWindow::new(DedupLimits::default());
    assert_eq!(w.lookup(1, 10, t(0)), Lookup::Fresh);
    w.mark_in_flight(1, 10, t(0)).unwrap();
    assert_eq!(w.lookup(1, 10, t(1)), Lookup::InFlight);
    w.complete(1, 10, Bytes::from_static(b"ok"), t(2)).unwrap();
    assert_eq!(
        w.lookup(1, 10, t(3)),
        Lookup::Cached(Bytes::from_static(b"ok"))
    );
    assert_eq!(w.lookup(2, 10, t(3)), Lookup::Fresh, "per client");
}

#[test]
fn duplicates_cannot_be_marked_or_completed_twice() {
    let mut w = DedupWindow::new(DedupLimits::default());
    run(&mut w, 1, 1, b"x", t(0));
    assert!(matches!(
        w.mark_in_flight(1, 1, t(1)),
        Err(DedupError::NotFresh {
            state: Lookup::Cached(_),
            ..
        })
    ));
    assert_eq!(
        w.complete(1, 1, reply(1), t(1)),
        Err(DedupError::NotInFlight {
            client: 1,
            request: 1
        })
    );
    assert_eq!(
        w.complete(1, 2, reply(1), t(1)),
        Err(DedupError::NotInFlight {
            client: 1,
            request: 2
        })
    );
}

/// Hazard 16: past the window a request is refused as stale, never re-executed.
#[test]
fn requests_that_slid_out_of_the_window_are_stale_not_fresh() {
    let mut w = DedupWindow::new(limits(2, 10, 1000, 60_000));
    for r in 1..=3 {
        run(&mut w, 1, r, b"r", t(r));
    }
    assert_eq!(w.lookup(1, 1, t(10)), Lookup::Stale);
    assert!(matches!(w.lookup(1, 2, t(10)), Lookup::Cached(_)));
    assert_eq!(w.lookup(1, 4, t(10)), Lookup::Fresh);
}

#[test]
fn entries_older_than_the_ttl_become_stale() {
    let mut w = DedupWindow::new(limits(8, 10, 1000, 100));
    run(&mut w, 1, 1, b"a", t(0));
    run(&mut w, 1, 2, b"b", t(90));
    assert_eq!(w.lookup(1, 1, t(150)), Lookup::Stale);
    assert!(matches!(w.lookup(1, 2, t(150)), Lookup::Cached(_)));
    assert_eq!(w.cached_bytes(), 1);
}

#[test]
fn an_idle_session_ends_after_the_ttl_and_its_requests_are_fresh_again() {
    let mut w = DedupWindow::new(limits(8, 10, 1000, 100));
    run(&mut w, 1, 1, b"a", t(0));
    assert_eq!(w.expire(t(100)), 0);
    assert_eq!(w.expire(t(101)), 1);
    assert_eq!(w.clients(), 0);
    assert_eq!(
        w.lookup(1, 1, t(102)),
        Lookup::Fresh,
        "documented: the guarantee ends with the session"
    );
}

/// Hazard 17: the map of clients is capped; the least recently active goes.
#[test]
fn the_client_map_is_capped_and_evicts_the_least_recently_active() {
    let mut w = DedupWindow::new(limits(4, 2, 1000, 60_000));
    run(&mut w, 1, 1, b"a", t(0));
    run(&mut w, 2, 1, b"b", t(1));
    let _ = w.lookup(1, 1, t(2)); // client 1 is now the more recent
    w.lookup(3, 1, t(3));
    assert_eq!(w.mark_in_flight(3, 1, t(3)).unwrap(), vec![2]);
    assert_eq!(w.clients(), 2);
    assert_eq!(w.lookup(2, 1, t(4)), Lookup::Fresh);
    assert!(matches!(w.lookup(1, 1, t(4)), Lookup::Cached(_)));
}

#[test]
fn cached_bytes_are_capped_by_evicting_other_sessions_first() {
    let mut w = DedupWindow::new(limits(4, 10, 100, 60_000));
    run(&mut w, 1, 1, &[1; 60], t(0));
    w.mark_in_flight(2, 1, t(1)).unwrap();
    assert_eq!(w.complete(2, 1, reply(50), t(2)).unwrap(), vec![1]);
    assert_eq!(w.cached_bytes(), 50);
    // Alone and still over: the client's own older replies go, becoming stale.
    w.mark_in_flight(2, 2, t(3)).unwrap();
    assert!(w.complete(2, 2, reply(60), t(4)).unwrap().is_empty());
    assert_eq!(w.lookup(2, 1, t(5)), Lookup::Stale);
    assert_eq!(w.cached_bytes(), 60);
}

#[test]
fn a_reply_larger_than_the_cap_is_refused_and_its_retries_are_stale() {
    let mut w = DedupWindow::new(limits(4, 10, 100, 60_000));
    w.mark_in_flight(1, 1, t(0)).unwrap();
    assert_eq!(
        w.complete(1, 1, reply(101), t(1)),
        Err(DedupError::ReplyTooLarge { len: 101, max: 100 })
    );
    assert_eq!(w.lookup(1, 1, t(2)), Lookup::Stale);
}

/// Hazard 20: a window full of in-flight requests refuses; it never drops a
/// tracked entry to make room.
#[test]
fn a_window_full_of_in_flight_requests_refuses_new_ones() {
    let mut w = DedupWindow::new(limits(2, 10, 100, 60_000));
    w.mark_in_flight(1, 1, t(0)).unwrap();
    w.mark_in_flight(1, 2, t(0)).unwrap();
    assert_eq!(
        w.mark_in_flight(1, 3, t(0)),
        Err(DedupError::WindowFull {
            client: 1,
            in_flight: 2
        })
    );
    assert_eq!(w.lookup(1, 1, t(0)), Lookup::InFlight);
}

/// A slow request at the front does not block the window while later ones
/// complete: the oldest *completed* entry makes room.
#[test]
fn a_slow_request_in_flight_does_not_block_a_window_of_completed_ones() {
    let mut w = DedupWindow::new(limits(3, 10, 1000, 60_000));
    w.mark_in_flight(1, 1, t(0)).unwrap();
    run(&mut w, 1, 2, b"two", t(1));
    run(&mut w, 1, 3, b"three", t(2));
    w.mark_in_flight(1, 4, t(3)).unwrap();
    assert_eq!(w.lookup(1, 1, t(3)), Lookup::InFlight);
    assert_eq!(w.lookup(1, 2, t(3)), Lookup::Stale);
    assert_eq!(
        w.lookup(1, 3, t(3)),
        Lookup::Cached(Bytes::from_static(b"three"))
    );
}

/// A request the application never answers is forgotten after the TTL, so
/// it cannot hold a window slot forever; its retry is `Stale`, not run again.
#[test]
fn a_request_in_flight_past_the_ttl_is_forgotten_as_stale() {
    let mut w = DedupWindow::new(limits(2, 10, 1000, 100));
    w.mark_in_flight(1, 1, t(0)).unwrap();
    run(&mut w, 1, 2, b"two", t(50));
    assert_eq!(w.lookup(1, 1, t(101)), Lookup::Stale);
    w.mark_in_flight(1, 3, t(120)).unwrap();
}

/// Hazard 19: a cached reply handed out stays intact when the store changes.
#[test]
fn a_cached_reply_outlives_its_eviction() {
    let mut w = DedupWindow::new(DedupLimits::default());
    run(&mut w, 1, 1, b"the reply", t(0));
    let Lookup::Cached(held) = w.lookup(1, 1, t(1)) else {
        panic!("not cached")
    };
    assert!(w.evict_client(1));
    assert_eq!(w.cached_bytes(), 0);
    assert_eq!(&held[..], b"the reply");
}

#[test]
fn evict_client_reports_whether_a_session_existed() {
    let mut w = DedupWindow::new(DedupLimits::default());
    assert!(!w.evict_client(9));
    run(&mut w, 9, 0, b"", t(0));
    assert!(w.evict_client(9));
    assert_eq!(w.lookup(9, 0, t(1)), Lookup::Fresh);
}
