//! Configuration validation and parsing: every rule names its field.

use bus_proto::config::*;
use std::time::Duration;

fn field_of(err: ConfigError) -> &'static str {
    match err {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn defaults_are_valid() {
    let valid = Config::default().validate().unwrap();
    assert_eq!(valid.max_batch, 64);
    assert_eq!(valid.dedup_limits().entries_per_client, 64);
    assert_eq!(ValidConfig::default(), valid);
}

/// Hazard 28: zero values that would busy-loop or evict everything, and
/// impossible orderings, are refused with the field named.
#[test]
fn each_rule_names_its_field() {
    let d = Config::default;
    let cases: Vec<(Config, &str)> = vec![
        (
            {
                let mut tuned = d();
                tuned.max_message_size = 255;
                tuned
            },
            "max_message_size",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_message_size = (64 << 20) + 1;
                tuned
            },
            "max_message_size",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_batch = 0;
                tuned
            },
            "max_batch",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_batch = 513;
                tuned
            },
            "max_batch",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_batch = 64;
                tuned.send_queue_frames = 63;
                tuned
            },
            "send_queue_frames",
        ),
        (
            {
                let mut tuned = d();
                tuned.send_queue_bytes = 1000;
                tuned
            },
            "send_queue_bytes",
        ),
        (
            {
                let mut tuned = d();
                tuned.heartbeat_interval = Duration::ZERO;
                tuned
            },
            "heartbeat_interval_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.liveness_timeout = Duration::from_millis(1999);
                tuned.heartbeat_interval = Duration::from_secs(1);
                tuned
            },
            "liveness_timeout_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.handshake_timeout = Duration::ZERO;
                tuned
            },
            "handshake_timeout_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.freshness_window = Duration::ZERO;
                tuned
            },
            "freshness_window_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.freshness_window = Duration::from_secs(3601);
                tuned
            },
            "freshness_window_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.close_grace = Duration::ZERO;
                tuned
            },
            "close_grace_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.reconnect_min = Duration::ZERO;
                tuned
            },
            "reconnect_min_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.reconnect_max = Duration::from_millis(50);
                tuned
            },
            "reconnect_max_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_handshakes_in_flight = 0;
                tuned
            },
            "max_handshakes_in_flight",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_replay_peers = 0;
                tuned
            },
            "max_replay_peers",
        ),
        (
            {
                let mut tuned = d();
                tuned.hello_timeout = Duration::from_millis(5);
                tuned
            },
            "hello_timeout_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_unauthenticated_per_address = 0;
                tuned
            },
            "max_unauthenticated_per_address",
        ),
        (
            {
                let mut tuned = d();
                tuned.client_max_outstanding = 65;
                tuned
            },
            "client_max_outstanding",
        ),
        (
            {
                let mut tuned = d();
                tuned.dedup_entries_per_client = 0;
                tuned
            },
            "dedup_entries_per_client",
        ),
        (
            {
                let mut tuned = d();
                tuned.dedup_entries_per_client = 65537;
                tuned
            },
            "dedup_entries_per_client",
        ),
        (
            {
                let mut tuned = d();
                tuned.dedup_max_clients = 0;
                tuned
            },
            "dedup_max_clients",
        ),
        (
            {
                let mut tuned = d();
                tuned.dedup_max_cached_bytes = 1000;
                tuned
            },
            "dedup_max_cached_bytes",
        ),
        (
            {
                let mut tuned = d();
                tuned.dedup_ttl = Duration::ZERO;
                tuned
            },
            "dedup_ttl_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.max_connections = 10;
                tuned
            },
            "max_connections",
        ),
        (
            {
                let mut tuned = d();
                tuned.client_max_outstanding = 0;
                tuned
            },
            "client_max_outstanding",
        ),
        (
            {
                let mut tuned = d();
                tuned.client_max_outstanding = 2000;
                tuned
            },
            "client_max_outstanding",
        ),
        (
            {
                let mut tuned = d();
                tuned.request_timeout = Duration::ZERO;
                tuned
            },
            "request_timeout_ms",
        ),
        (
            {
                let mut tuned = d();
                tuned.request_timeout = Duration::from_secs(300);
                tuned
            },
            "request_timeout_ms",
        ),
    ];
    for (config, field) in cases {
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
        assert_eq!(field_of(err), field);
    }
}

#[test]
fn the_error_shows_the_value_and_the_rule() {
    let err = {
        let mut tuned = Config::default();
        tuned.max_batch = 1000;
        tuned
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config field `max_batch` = 1000: must be at most 512"
    );
}

#[test]
fn toml_fills_defaults_and_converts_milliseconds() {
    let c = Config::from_toml("max_batch = 16\nheartbeat_interval_ms = 250\nliveness_timeout_ms = 1000\nauthenticated_frames = true\n").unwrap();
    assert_eq!(c.max_batch, 16);
    assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
    assert!(c.authenticated_frames);
    assert_eq!(c.max_message_size, Config::default().max_message_size);
    assert_eq!(Config::from_toml("").unwrap(), ValidConfig::default());
}

#[test]
fn toml_refuses_unknown_fields_wrong_types_and_invalid_values() {
    for (text, needle) in [
        ("max_bach = 3", "max_bach"),
        ("max_batch = \"many\"", "max_batch"),
        ("max_batch = -1", "max_batch"),
        ("heartbeat_interval = 5", "heartbeat_interval"),
        ("reconnect_min_ms = 0", "reconnect_min_ms"),
        ("[section", "config file"),
    ] {
        let err = Config::from_toml(text).unwrap_err();
        assert!(err.to_string().contains(needle), "{text:?}: {err}");
    }
}

/// `to_toml` prints every key: a configuration with every field changed
/// reads back to itself, the defaults too, and the README documents each
/// key.
#[test]
fn every_key_round_trips_through_toml_and_is_documented() {
    // Every key, each away from its default (the printed lines are
    // checked to differ below).
    let mut changed = Config::default();
    changed.max_message_size = 2 << 20;
    changed.max_batch = 32;
    changed.send_queue_frames = 2048;
    changed.send_queue_bytes = 128 << 20;
    changed.heartbeat_interval = Duration::from_millis(500);
    changed.liveness_timeout = Duration::from_secs(3);
    changed.handshake_timeout = Duration::from_secs(8);
    changed.freshness_window = Duration::from_secs(60);
    changed.close_grace = Duration::from_millis(1500);
    changed.reconnect_min = Duration::from_millis(50);
    changed.reconnect_max = Duration::from_secs(5);
    changed.hello_timeout = Duration::from_millis(1500);
    changed.max_handshakes_in_flight = 32;
    changed.max_unauthenticated_per_address = 8;
    changed.max_connections = 512;
    changed.max_replay_peers = 1000;
    changed.authenticated_frames = true;
    changed.dedup_entries_per_client = 128;
    changed.dedup_max_clients = 1000;
    changed.dedup_max_cached_bytes = 128 << 20;
    changed.dedup_ttl = Duration::from_secs(600);
    changed.client_max_outstanding = 100;
    changed.request_timeout = Duration::from_secs(60);
    let valid = changed.clone().validate().expect("a valid configuration");
    let text = changed.to_toml();
    assert_eq!(
        Config::from_toml(&text).expect("it parses"),
        valid,
        "{text}"
    );
    // Every key's value differs from its default, so a field the printer
    // left out (or printed from the wrong field) would not read back equal.
    let defaults = Config::default();
    let lines = |c: &Config| -> Vec<String> {
        c.to_toml()
            .lines()
            .filter(|l| l.contains(" = "))
            .map(str::to_owned)
            .collect()
    };
    for (default, changed) in lines(&defaults).iter().zip(lines(&changed)) {
        assert_ne!(default, &changed, "the test leaves a key at its default");
    }
    assert_eq!(
        Config::from_toml(&defaults.to_toml()).expect("defaults parse"),
        defaults.validate().expect("valid defaults")
    );
    let readme = include_str!("../../README.md");
    let keys: Vec<&str> = Config::toml_keys().collect();
    assert_eq!(keys.len(), 23);
    for key in keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "README does not document `{key}`"
        );
        assert!(text.contains(&format!("\n{key} = ")), "`{key}` not printed");
    }
}
