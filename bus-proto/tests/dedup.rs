//! The request dedup window's documented guarantees, one by one. (The
//! model-based property tests are in `fuzz/tests/models.rs`.)

use bus_proto::dedup::*;
use bus_proto::time::Instant;
use bytes::Bytes;
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
        Lookup::Cached(Bytes::from_static(b"ok").into())
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

/// Activity after a session was filed in the LRU order moves its expiry:
/// activity within a quarter of the TTL of the filing is refiled when the
/// order is walked, later activity at once, so a session ends exactly a
/// TTL after its last activity, never earlier.
#[test]
fn a_session_active_since_it_was_filed_expires_a_ttl_after_its_last_activity() {
    let just_past = |ms| t(ms).saturating_add(Duration::from_nanos(1));
    let mut w = DedupWindow::new(limits(8, 10, 1000, 100));
    run(&mut w, 1, 1, b"a", t(0));
    run(&mut w, 2, 1, b"b", t(10));
    // Within a quarter of the TTL: left filed at 0 until a walk.
    let _ = w.lookup(1, 1, t(20));
    assert_eq!(w.next_expiry(), Some(just_past(100)), "early, never late");
    assert_eq!(w.expire(t(111)), 1, "only client 2, idle since 10");
    assert_eq!(w.next_expiry(), Some(just_past(120)), "refiled at 20");
    // Past a quarter of the TTL: refiled at once.
    let _ = w.lookup(1, 1, t(60));
    assert_eq!(w.next_expiry(), Some(just_past(160)));
    assert_eq!(w.expire(t(160)), 0);
    assert_eq!(w.expire(just_past(160)), 1);
    assert_eq!(w.clients(), 0);
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
    // The evicted session's retries are refused, never run again; its
    // new numbers run.
    assert_eq!(w.lookup(2, 1, t(4)), Lookup::Stale);
    assert_eq!(w.lookup(2, 2, t(4)), Lookup::Fresh);
    assert!(matches!(w.lookup(1, 1, t(4)), Lookup::Cached(_)));
}

/// An eviction leaves a marker (the session's highest number) until the
/// session would have expired: a client that could not be told (it had
/// crashed) and retries after a restart gets `Stale`, not a second run.
/// Markers are bounded by `max_clients`, the oldest dropped first.
#[test]
fn an_evicted_session_leaves_a_marker_until_its_ttl_and_markers_are_bounded() {
    let mut w = DedupWindow::new(limits(4, 2, 1000, 100));
    run(&mut w, 1, 7, b"a", t(0));
    assert!(w.evict_client(1));
    assert_eq!(w.markers(), 1);
    assert_eq!(w.lookup(1, 7, t(50)), Lookup::Stale);
    assert_eq!(w.lookup(1, 3, t(50)), Lookup::Stale);
    // A new session of the same client starts from the marker.
    w.mark_in_flight(1, 8, t(60)).unwrap();
    assert_eq!(w.markers(), 0);
    assert_eq!(w.lookup(1, 7, t(61)), Lookup::Stale);
    assert_eq!(w.lookup(1, 8, t(61)), Lookup::InFlight);
    // Past the TTL the marker is gone, as the session would have been.
    let mut w = DedupWindow::new(limits(4, 2, 1000, 100));
    run(&mut w, 1, 7, b"a", t(0));
    w.evict_client(1);
    assert_eq!(w.lookup(1, 7, t(100)), Lookup::Stale);
    assert_eq!(w.lookup(1, 7, t(101)), Lookup::Fresh);
    assert_eq!(w.markers(), 0);
    // At most max_clients (2) markers: the oldest goes first.
    for (client, at) in [(1, 0), (2, 1), (3, 2)] {
        run(&mut w, client, 5, b"x", t(200 + at));
        w.evict_client(client);
    }
    assert_eq!(w.markers(), 2);
    assert_eq!(w.markers_dropped(), 1);
    assert_eq!(
        w.lookup(1, 5, t(210)),
        Lookup::Fresh,
        "the oldest marker went"
    );
    assert_eq!(w.lookup(2, 5, t(210)), Lookup::Stale);
    assert_eq!(w.lookup(3, 5, t(210)), Lookup::Stale);
    assert_eq!(w.expire(t(303)), 0);
    assert_eq!(w.markers(), 0, "expire drops old markers too");
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
        Lookup::Cached(Bytes::from_static(b"three").into())
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
    assert_eq!(&held.body[..], b"the reply");
}

#[test]
fn evict_client_reports_whether_a_session_existed() {
    let mut w = DedupWindow::new(DedupLimits::default());
    assert!(!w.evict_client(9));
    run(&mut w, 9, 0, b"", t(0));
    assert!(w.evict_client(9));
    assert_eq!(w.lookup(9, 0, t(1)), Lookup::Stale);
    assert_eq!(w.lookup(9, 1, t(1)), Lookup::Fresh);
}
