//! The client identity: its record parser, and the client's lease of
//! request numbers driven by arbitrary reserves, submits, renewals that
//! land or fail, and time.

use super::ops;
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::client::identity::{IdentityRecord, Lease};
use bus_proto::client::{Client, ClientParams, RequestError, Reservation};
use bus_proto::config::Config;
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::time::{Instant, Now, UnixNanos};
use bytes::Bytes;
use std::collections::BTreeSet;

#[derive(Arbitrary, Debug)]
enum Op {
    Reserve,
    /// Submit the `pick`-th number reserved so far (or one never issued),
    /// issued `age_ms` before now.
    Submit {
        pick: u16,
        age_ms: u16,
    },
    Request,
    PollLease,
    /// The asked-for renewal is stored.
    Stored,
    /// It failed.
    Failed,
    /// A renewal with an arbitrary mark (stale, lower, or far above).
    Extended(u64),
    Later(u16),
}

/// The record parser: what decodes encodes back to the same bytes; what
/// does not is refused with an error, never a panic; starting a lease from
/// a decoded record never moves the mark down.
///
/// The lease machine: no number is ever issued twice, none at or above a
/// mark not yet stored, and a submit is refused unless its number was
/// issued and it is younger than `request_timeout`.
pub fn identity(data: &[u8]) {
    if let Ok(record) = IdentityRecord::decode(data) {
        assert_eq!(record.encode().as_slice(), data, "decode is canonical");
        let block = u64::try_from(data.len()).unwrap_or(0) * 977;
        if let Ok((stored, lease)) = record.start(block) {
            assert_eq!(lease.next, record.reserved_until);
            assert!(lease.until > lease.next && stored.reserved_until == lease.until);
        }
    }
    lease_machine(data);
}

fn lease_machine(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(start), Ok(block)) = (u.arbitrary::<u64>(), u.int_in_range(1u64..=16)) else {
        return;
    };
    let start = start.min(u64::MAX - 2 * block);
    let lease = Lease {
        next: start,
        until: start + block,
        block,
    };
    let config = {
        let mut tuned = Config::default();
        tuned.client_max_outstanding = 8;
        tuned.dedup_entries_per_client = 8;
        tuned
    }
    .validate()
    .expect("a valid config");
    let timeout = config.request_timeout;
    let params = ClientParams {
        cluster: 1,
        id: 7,
        target: 0,
    };
    let keys = KeyRing::new(Key::from_bytes([1; 32]));
    let mut now = Now {
        mono: Instant::from_nanos(1),
        wall: UnixNanos::from_nanos(1 << 60),
    };
    let entropy = Box::new(SeededEntropy::new(0));
    let mut client = Client::with_lease(now, &config, params, lease, keys, entropy);
    // What the "disk" holds: numbers below it may be issued.
    let mut stored = lease.until;
    let mut asked = None;
    let mut issued = BTreeSet::new();
    let mut outstanding = BTreeSet::new();
    let issue = |issued: &mut BTreeSet<u64>, number: u64, stored: u64| {
        assert!(number >= start, "{number} is below the lease");
        assert!(
            number < stored,
            "{number} issued before mark {stored} was stored"
        );
        assert!(issued.insert(number), "{number} issued twice");
    };
    for op in ops::<Op>(&mut u) {
        match op {
            Op::Reserve => match client.reserve(now) {
                Ok(r) => issue(&mut issued, r.request, stored),
                Err(RequestError::LeaseExhausted { .. } | RequestError::Exhausted) => {}
                Err(e) => panic!("reserve: {e}"),
            },
            Op::Request => match client.request(now, 1, Bytes::new()) {
                Ok(n) => {
                    issue(&mut issued, n, stored);
                    outstanding.insert(n);
                }
                Err(
                    RequestError::LeaseExhausted { .. }
                    | RequestError::Exhausted
                    | RequestError::TooManyOutstanding { .. },
                ) => {}
                Err(e) => panic!("request: {e}"),
            },
            Op::Submit { pick, age_ms } => {
                let request = issued
                    .iter()
                    .nth(usize::from(pick))
                    .copied()
                    .unwrap_or_else(|| client.lease().next.saturating_add(u64::from(pick)));
                let age = std::time::Duration::from_millis(u64::from(age_ms) * 4);
                let age_nanos = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
                let issued_at = UnixNanos::from_nanos(now.wall.as_nanos() - age_nanos);
                let reservation = Reservation {
                    client: 7,
                    request,
                    issued_at,
                };
                let result = client.submit(now, reservation, 1, Bytes::new());
                match &result {
                    Ok(()) => {
                        assert!(issued.contains(&request), "{request} was never issued");
                        assert!(age < timeout);
                        assert!(outstanding.insert(request), "{request} submitted twice");
                    }
                    Err(RequestError::NotReserved { .. }) => {
                        assert!(!issued.contains(&request));
                    }
                    Err(RequestError::TooOld { .. }) => assert!(age >= timeout),
                    Err(RequestError::AlreadyOutstanding { .. }) => {
                        assert!(outstanding.contains(&request));
                    }
                    Err(RequestError::TooManyOutstanding { .. }) => {}
                    Err(e) => panic!("submit: {e}"),
                }
            }
            Op::PollLease => {
                if let Some(mark) = client.poll_lease(now) {
                    assert!(mark > stored.min(client.lease().until));
                    asked = Some(mark);
                }
            }
            Op::Stored => {
                if let Some(mark) = asked.take() {
                    stored = stored.max(mark);
                    client.lease_extended(mark);
                }
            }
            Op::Failed => {
                if asked.take().is_some() {
                    client.lease_failed(now);
                }
            }
            Op::Extended(mark) => {
                // Only a mark that is stored may be passed in; a lower one
                // must not shrink what the client believes.
                let mark = mark.min(stored);
                client.lease_extended(mark);
            }
            Op::Later(ms) => {
                let step = u64::from(ms) * 10_000_000;
                now.mono = Instant::from_nanos(now.mono.as_nanos().saturating_add(step));
                now.wall = UnixNanos::from_nanos(now.wall.as_nanos().saturating_add(step));
                client.handle_timeout(now);
                while let Some(event) = client.poll_event() {
                    if let bus_proto::client::ClientEvent::Failed { request, .. } = event {
                        outstanding.remove(&request);
                    }
                }
            }
        }
        assert!(
            client.lease().until <= stored,
            "the client issues past the stored mark"
        );
    }
}
