//! Integration tests for the bus on real loopback sockets.
//!
//! This library holds what the scenarios share: one interface over the
//! three adapters and a macro that runs a scenario on each runtime
//! ([`bus`]), a configuration with short timers, keys, a small cluster on
//! loopback, a TCP proxy that can cut its connections, and waiting helpers
//! with a generous deadline (a liveness bound, not a timing assertion:
//! each names what it waited for).

use bus_proto::config::{Config, ValidConfig};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::entropy::SeededEntropy;
use std::time::Duration;

pub mod attack;
pub mod bus;
pub mod cluster;
pub mod proxy;
pub mod tls;

/// The cluster id every test uses.
pub const CLUSTER: u128 = 0x7e57;

/// How long any wait may take before the test fails, naming what it waited
/// for. Generous: CI machines are slow and loaded.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Short timers so failures and reconnects happen quickly.
pub fn config() -> ValidConfig {
    quick().validate().expect("valid test configuration")
}

/// [`config`] before validation, to adjust.
pub fn quick() -> Config {
    let mut config = Config::default();
    config.heartbeat_interval = Duration::from_millis(100);
    config.liveness_timeout = Duration::from_millis(1000);
    config.handshake_timeout = Duration::from_millis(1500);
    config.close_grace = Duration::from_millis(500);
    config.reconnect_min = Duration::from_millis(10);
    config.reconnect_max = Duration::from_millis(200);
    config.request_timeout = Duration::from_secs(10);
    config
}

/// A key ring from a seed: equal seeds give equal keys.
pub fn keys(seed: u64) -> KeyRing {
    KeyRing::new(Key::generate(&mut SeededEntropy::new(seed)))
}
