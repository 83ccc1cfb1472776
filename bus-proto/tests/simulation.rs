//! The deterministic cluster simulation, over many seeds.
//!
//! `SIM_SEEDS=N` runs seeds `0..N` (default 16) on every core
//! (`SIM_SEED_START=S` shifts the range to `S..S+N`);
//! `SIM_SEED=<seed>` replays one. A failure names its seed and the broken
//! invariant.

mod support {
    pub mod sim;
}

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::sim::{Report, Shape, Sim};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn run_seed(seed: u64) -> Result<Report, String> {
    let outcome = std::panic::catch_unwind(|| Sim::new(seed, Shape::default()).run());
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
    }
}

fn add(totals: &mut Report, r: &Report) {
    totals.virtual_time += r.virtual_time;
    totals.steps += r.steps;
    totals.messages_delivered += r.messages_delivered;
    totals.requests_executed += r.requests_executed;
    totals.replies_received += r.replies_received;
    totals.dedup_hits += r.dedup_hits;
    totals.duplicates_dropped += r.duplicates_dropped;
    totals.stale += r.stale;
    totals.resent += r.resent;
    totals.resets += r.resets;
    totals.restarts += r.restarts;
    totals.partitions += r.partitions;
    totals.corruptions += r.corruptions;
    totals.impostor_dials += r.impostor_dials;
    totals.handshake_replays += r.handshake_replays;
    totals.frame_replays += r.frame_replays;
    totals.stalls += r.stalls;
    totals.silent_sockets += r.silent_sockets;
    totals.unauthenticated_evicted += r.unauthenticated_evicted;
    totals.client_restarts += r.client_restarts;
    totals.outbox_resends += r.outbox_resends;
    totals.resends_too_old += r.resends_too_old;
    totals.lease_renewals += r.lease_renewals;
    totals.renewal_failures += r.renewal_failures;
    totals.crashes_during_renewal += r.crashes_during_renewal;
    totals.lease_exhausted += r.lease_exhausted;
    totals.authenticated_frames |= r.authenticated_frames;
}

#[test]
fn cluster_invariants_hold_under_faults_for_every_seed() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let start = env_u64("SIM_SEED_START").unwrap_or(0);
            (start..start + env_u64("SIM_SEEDS").unwrap_or(16)).collect()
        }
    };
    let next = AtomicUsize::new(0);
    let totals = Mutex::new(Report::default());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    if i > 0 && i.is_multiple_of(10_000) {
                        eprintln!("{i} seeds started after {:.0?}", started.elapsed());
                    }
                    match run_seed(seed) {
                        Ok(r) => add(&mut totals.lock().unwrap(), &r),
                        Err(e) => {
                            eprintln!(
                                "simulation seed {seed} failed: {e}\nreplay with SIM_SEED={seed}"
                            );
                            failures.lock().unwrap().push(seed);
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "failing seeds (replay each with SIM_SEED=<seed>): {failures:?}"
    );
    let totals = totals.into_inner().unwrap();
    let wall = started.elapsed();
    println!(
        "{} seeds passed in {wall:.1?} on {threads} threads: {:.0} virtual s per wall s\n{totals:#?}",
        seeds.len(),
        totals.virtual_time.as_secs_f64() / wall.as_secs_f64(),
    );
    assert!(
        totals.messages_delivered > 0 && totals.replies_received > 0,
        "{totals:?}"
    );
}
