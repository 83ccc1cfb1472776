//! Validated configuration.
//!
//! [`Config`] holds every knob with a documented default;
//! [`Config::validate`] turns it into a [`ValidConfig`], the only form the
//! state machines accept, or a [`ConfigError`] naming the field and value.
//! Zero values that would busy-loop or evict everything are refused, and so
//! are orderings that cannot work (hazard 28). Nothing is checked later at
//! runtime, so nothing panics there.

use crate::dedup::DedupLimits;
use crate::wire::MAX_MESSAGE_SIZE_LIMIT;
use crate::wire::layout::HEADER_SIZE_U32;
use alloc::format;
use alloc::string::String;
use core::time::Duration;

/// Largest allowed `max_batch`: within Linux's `IOV_MAX` of 1024 iovecs at
/// two slices (header, body) per frame (hazard 23).
pub const MAX_BATCH_LIMIT: usize = 512;

/// Bus configuration. Field docs give the default and the accepted range.
/// Start from the defaults and set what differs (new settings will be
/// added, so it cannot be built with a struct literal), or read it from
/// TOML ([`Config::from_toml`]); then [`Config::validate`] it.
///
/// ```
/// use bus_proto::config::Config;
/// use std::time::Duration;
/// let mut config = Config::default();
/// config.heartbeat_interval = Duration::from_millis(250);
/// config.liveness_timeout = Duration::from_secs(2);
/// let config = config.validate()?;
/// # Ok::<(), bus_proto::config::ConfigError>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "toml", derive(serde::Deserialize))]
#[cfg_attr(feature = "toml", serde(default, deny_unknown_fields))]
pub struct Config {
    /// Largest frame, header included, in bytes. Default 1 MiB;
    /// `256..=64 MiB`.
    pub max_message_size: u32,
    /// Most frames per vectored write. Default 64; `1..=512`.
    pub max_batch: usize,
    /// Frames a connection's send queue holds before `send` reports
    /// backpressure. Default 1024; `>= max_batch`.
    pub send_queue_frames: usize,
    /// Sent frames a connection may have queued, in bytes. Default 64 MiB;
    /// `>= max_message_size`.
    pub send_queue_bytes: usize,
    /// Idle time after which a ping is sent. Default 1 s; `>= 10 ms`.
    #[cfg_attr(
        feature = "toml",
        serde(rename = "heartbeat_interval_ms", with = "millis")
    )]
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is declared dead. Default 5 s;
    /// `>= 2 * heartbeat_interval`.
    #[cfg_attr(
        feature = "toml",
        serde(rename = "liveness_timeout_ms", with = "millis")
    )]
    pub liveness_timeout: Duration,
    /// Deadline for completing a handshake, from accept or from the
    /// dialled socket's opening; a transport's handshake (TLS) counts
    /// against it. Default 10 s; `>= 10 ms`.
    #[cfg_attr(
        feature = "toml",
        serde(rename = "handshake_timeout_ms", with = "millis")
    )]
    pub handshake_timeout: Duration,
    /// Accepted wall-clock skew of a dialer's timestamp, either way.
    /// Default 30 s; `1 s..=1 h`.
    #[cfg_attr(
        feature = "toml",
        serde(rename = "freshness_window_ms", with = "millis")
    )]
    pub freshness_window: Duration,
    /// One bounded grace period for a graceful close (flush, close frames),
    /// after which the connection is dropped regardless. Default 2 s;
    /// `>= 1 ms`.
    #[cfg_attr(feature = "toml", serde(rename = "close_grace_ms", with = "millis"))]
    pub close_grace: Duration,
    /// First reconnect delay. Default 100 ms; `>= 1 ms`.
    #[cfg_attr(feature = "toml", serde(rename = "reconnect_min_ms", with = "millis"))]
    pub reconnect_min: Duration,
    /// Reconnect delay cap. Default 10 s; `>= reconnect_min`.
    #[cfg_attr(feature = "toml", serde(rename = "reconnect_max_ms", with = "millis"))]
    pub reconnect_max: Duration,
    /// Acceptor: how long a new connection may take, from accept, to
    /// deliver its whole `hello` (its first 256 bytes), a transport's
    /// handshake (TLS) included. A socket that proves nothing is closed
    /// this soon, long before `handshake_timeout`. Default 2 s; `>= 10 ms`;
    /// above `handshake_timeout` it is that.
    #[cfg_attr(feature = "toml", serde(rename = "hello_timeout_ms", with = "millis"))]
    pub hello_timeout: Duration,
    /// Accepted connections whose `hello` has not verified yet (the
    /// unauthenticated pool). At the cap a new connection evicts the
    /// oldest one of the address holding the most (closed at once), so
    /// silent or garbage sockets never lock legitimate dialers out.
    /// Default 64; `>= 1`.
    pub max_handshakes_in_flight: usize,
    /// The unauthenticated pool's share for one remote address (an IPv4
    /// address, an IPv6 /64): a new connection beyond it evicts that
    /// address's oldest. Default 16;
    /// `>= 1`; above `max_handshakes_in_flight` it is that.
    pub max_unauthenticated_per_address: usize,
    /// Admitted clients (their `hello` verified) a node holds at once; a
    /// client beyond it is told `reject Busy`. Replicas and the
    /// unauthenticated pool have room of their own beyond it. Default 1024;
    /// `>= max_handshakes_in_flight`.
    pub max_connections: usize,
    /// Peers tracked by the replay store. Default 4096; `>= 1`.
    pub max_replay_peers: usize,
    /// Use keyed tags instead of checksums after the handshake. Default false.
    pub authenticated_frames: bool,
    /// Requests remembered per client. Default 64; `1..=65536`.
    pub dedup_entries_per_client: usize,
    /// Client sessions held by the dedup window. Default 4096; `>= 1`.
    pub dedup_max_clients: usize,
    /// Bytes of cached replies. Default 256 MiB; `>= max_message_size`.
    pub dedup_max_cached_bytes: usize,
    /// Dedup entry lifetime and session idle timeout. Default 300 s; `>= 1 s`.
    #[cfg_attr(feature = "toml", serde(rename = "dedup_ttl_ms", with = "millis"))]
    pub dedup_ttl: Duration,
    /// Client: requests outstanding at once; more are refused. Default 64;
    /// `1..=send_queue_frames`, so a reconnect can resend them all, and at
    /// most `dedup_entries_per_client`, the node's window: a node answers
    /// `Busy` to a request that finds its client's window full of requests
    /// in flight, so the nodes a client talks to must run with a window at
    /// least this large (the same config file on both sides does).
    pub client_max_outstanding: usize,
    /// Client: how long a request may stay unanswered (resends included)
    /// before it is reported expired. Default 30 s; `>= 1 ms` and below
    /// `dedup_ttl`, so a node still remembers every request a client may
    /// resend.
    #[cfg_attr(
        feature = "toml",
        serde(rename = "request_timeout_ms", with = "millis")
    )]
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let dedup = DedupLimits::default();
        Config {
            max_message_size: 1 << 20,
            max_batch: 64,
            send_queue_frames: 1024,
            send_queue_bytes: 64 << 20,
            heartbeat_interval: Duration::from_secs(1),
            liveness_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            freshness_window: Duration::from_secs(30),
            close_grace: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(2),
            max_handshakes_in_flight: 64,
            max_unauthenticated_per_address: 16,
            max_connections: 1024,
            max_replay_peers: 4096,
            authenticated_frames: false,
            dedup_entries_per_client: dedup.entries_per_client,
            dedup_max_clients: dedup.max_clients,
            dedup_max_cached_bytes: dedup.max_cached_bytes,
            dedup_ttl: dedup.ttl,
            client_max_outstanding: 64,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A configuration field is invalid.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field is out of range or breaks an ordering with another field.
    #[error("config field `{field}` = {value}: {rule}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value, as configured.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// The TOML text could not be parsed.
    #[error("config file: {0}")]
    Parse(String),
}

/// A configuration that passed [`Config::validate`] (the default does).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidConfig(Config);

impl core::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

impl ValidConfig {
    /// The dedup window limits.
    pub fn dedup_limits(&self) -> DedupLimits {
        DedupLimits {
            entries_per_client: self.dedup_entries_per_client,
            max_clients: self.dedup_max_clients,
            max_cached_bytes: self.dedup_max_cached_bytes,
            ttl: self.dedup_ttl,
        }
    }
}

fn invalid(
    field: &'static str,
    value: impl core::fmt::Debug,
    rule: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: format!("{value:?}"),
        rule: rule.into(),
    }
}

fn at_least<T: PartialOrd + core::fmt::Debug>(
    field: &'static str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(field, value, format!("must be at least {min:?}")));
    }
    Ok(())
}

fn at_most<T: PartialOrd + core::fmt::Debug>(
    field: &'static str,
    value: T,
    max: T,
) -> Result<(), ConfigError> {
    if value > max {
        return Err(invalid(field, value, format!("must be at most {max:?}")));
    }
    Ok(())
}

impl Config {
    /// Checks every field; the first failure is returned.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let c = &self;
        at_least("max_message_size", c.max_message_size, HEADER_SIZE_U32)?;
        at_most(
            "max_message_size",
            c.max_message_size,
            MAX_MESSAGE_SIZE_LIMIT,
        )?;
        at_least("max_batch", c.max_batch, 1)?;
        at_most("max_batch", c.max_batch, MAX_BATCH_LIMIT)?;
        if c.send_queue_frames < c.max_batch {
            return Err(invalid(
                "send_queue_frames",
                c.send_queue_frames,
                format!("must be at least max_batch ({})", c.max_batch),
            ));
        }
        if c.send_queue_bytes < c.max_message_size as usize {
            return Err(invalid(
                "send_queue_bytes",
                c.send_queue_bytes,
                format!(
                    "must hold one frame of max_message_size ({})",
                    c.max_message_size
                ),
            ));
        }
        at_least(
            "heartbeat_interval_ms",
            c.heartbeat_interval,
            Duration::from_millis(10),
        )?;
        if c.liveness_timeout < c.heartbeat_interval.saturating_mul(2) {
            return Err(invalid(
                "liveness_timeout_ms",
                c.liveness_timeout,
                format!(
                    "must be at least twice heartbeat_interval ({:?})",
                    c.heartbeat_interval
                ),
            ));
        }
        at_least(
            "handshake_timeout_ms",
            c.handshake_timeout,
            Duration::from_millis(10),
        )?;
        at_least(
            "freshness_window_ms",
            c.freshness_window,
            Duration::from_secs(1),
        )?;
        at_most(
            "freshness_window_ms",
            c.freshness_window,
            Duration::from_secs(3600),
        )?;
        at_least("close_grace_ms", c.close_grace, Duration::from_millis(1))?;
        at_least(
            "reconnect_min_ms",
            c.reconnect_min,
            Duration::from_millis(1),
        )?;
        if c.reconnect_max < c.reconnect_min {
            return Err(invalid(
                "reconnect_max_ms",
                c.reconnect_max,
                format!("must be at least reconnect_min ({:?})", c.reconnect_min),
            ));
        }
        at_least(
            "hello_timeout_ms",
            c.hello_timeout,
            Duration::from_millis(10),
        )?;
        at_least("max_handshakes_in_flight", c.max_handshakes_in_flight, 1)?;
        at_least(
            "max_unauthenticated_per_address",
            c.max_unauthenticated_per_address,
            1,
        )?;

        if c.max_connections < c.max_handshakes_in_flight {
            return Err(invalid(
                "max_connections",
                c.max_connections,
                format!(
                    "must be at least max_handshakes_in_flight ({})",
                    c.max_handshakes_in_flight
                ),
            ));
        }
        at_least("max_replay_peers", c.max_replay_peers, 1)?;
        at_least("dedup_entries_per_client", c.dedup_entries_per_client, 1)?;
        at_most(
            "dedup_entries_per_client",
            c.dedup_entries_per_client,
            65536,
        )?;
        at_least("dedup_max_clients", c.dedup_max_clients, 1)?;
        if c.dedup_max_cached_bytes < c.max_message_size as usize {
            return Err(invalid(
                "dedup_max_cached_bytes",
                c.dedup_max_cached_bytes,
                format!(
                    "must hold one reply of max_message_size ({})",
                    c.max_message_size
                ),
            ));
        }
        at_least("dedup_ttl_ms", c.dedup_ttl, Duration::from_secs(1))?;
        at_least("client_max_outstanding", c.client_max_outstanding, 1)?;
        if c.client_max_outstanding > c.dedup_entries_per_client {
            return Err(invalid(
                "client_max_outstanding",
                c.client_max_outstanding,
                format!(
                    "must be at most dedup_entries_per_client ({}): a node answers `Busy` to requests beyond its window",
                    c.dedup_entries_per_client
                ),
            ));
        }
        if c.client_max_outstanding > c.send_queue_frames {
            return Err(invalid(
                "client_max_outstanding",
                c.client_max_outstanding,
                format!(
                    "must be at most send_queue_frames ({})",
                    c.send_queue_frames
                ),
            ));
        }
        at_least(
            "request_timeout_ms",
            c.request_timeout,
            Duration::from_millis(1),
        )?;
        if c.request_timeout >= c.dedup_ttl {
            return Err(invalid(
                "request_timeout_ms",
                c.request_timeout,
                format!(
                    "must be below dedup_ttl ({:?}), so a resent request is still remembered",
                    c.dedup_ttl
                ),
            ));
        }
        Ok(ValidConfig(self))
    }

    /// Parses TOML (durations as integer `*_ms` fields, unknown fields
    /// refused), fills the rest with defaults, and validates. Feature
    /// `toml` (part of `std`).
    ///
    /// ```
    /// use bus_proto::config::Config;
    /// let config = Config::from_toml("max_batch = 32\nheartbeat_interval_ms = 500\n")?;
    /// assert_eq!(config.max_batch, 32);
    /// let err = Config::from_toml("heartbeat_interval_ms = 0").unwrap_err();
    /// assert!(err.to_string().contains("heartbeat_interval_ms"));
    /// # Ok::<(), bus_proto::config::ConfigError>(())
    /// ```
    #[cfg(feature = "toml")]
    pub fn from_toml(text: &str) -> Result<ValidConfig, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(format!("{e}")))?;
        config.validate()
    }
}

/// A configuration key as it appears in TOML.
struct Key {
    name: &'static str,
    doc: &'static str,
    value: fn(&Config) -> u128,
    boolean: bool,
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Every key of the TOML form, in the order `Config::to_toml` prints them.
const KEYS: &[Key] = &[
    Key {
        name: "max_message_size",
        doc: "Largest frame, header included, in bytes. 256..=67108864.",
        value: |c| c.max_message_size.into(),
        boolean: false,
    },
    Key {
        name: "max_batch",
        doc: "Most frames per vectored write. 1..=512.",
        value: |c| c.max_batch as u128,
        boolean: false,
    },
    Key {
        name: "send_queue_frames",
        doc: "Frames a connection's send queue holds before sends report backpressure. >= max_batch.",
        value: |c| c.send_queue_frames as u128,
        boolean: false,
    },
    Key {
        name: "send_queue_bytes",
        doc: "Bytes a connection's send queue holds. >= max_message_size.",
        value: |c| c.send_queue_bytes as u128,
        boolean: false,
    },
    Key {
        name: "heartbeat_interval_ms",
        doc: "Idle time before a ping is sent. >= 10.",
        value: |c| ms(c.heartbeat_interval),
        boolean: false,
    },
    Key {
        name: "liveness_timeout_ms",
        doc: "Silence after which a connection is dead. >= 2 * heartbeat_interval_ms.",
        value: |c| ms(c.liveness_timeout),
        boolean: false,
    },
    Key {
        name: "handshake_timeout_ms",
        doc: "Whole handshake, a transport's (TLS, QUIC) included, from accept or dial. >= 10.",
        value: |c| ms(c.handshake_timeout),
        boolean: false,
    },
    Key {
        name: "freshness_window_ms",
        doc: "Accepted skew of a dialer's wall clock, either way. 1000..=3600000.",
        value: |c| ms(c.freshness_window),
        boolean: false,
    },
    Key {
        name: "close_grace_ms",
        doc: "One bound on a graceful close (flush, close frames, acknowledgements). >= 1.",
        value: |c| ms(c.close_grace),
        boolean: false,
    },
    Key {
        name: "reconnect_min_ms",
        doc: "First reconnect delay. >= 1.",
        value: |c| ms(c.reconnect_min),
        boolean: false,
    },
    Key {
        name: "reconnect_max_ms",
        doc: "Reconnect delay cap. >= reconnect_min_ms.",
        value: |c| ms(c.reconnect_max),
        boolean: false,
    },
    Key {
        name: "hello_timeout_ms",
        doc: "Acceptor: time from accept to a whole hello. >= 10; at most handshake_timeout_ms in effect.",
        value: |c| ms(c.hello_timeout),
        boolean: false,
    },
    Key {
        name: "max_handshakes_in_flight",
        doc: "Connections not yet authenticated (the pool); at the cap a new one evicts the oldest. >= 1.",
        value: |c| c.max_handshakes_in_flight as u128,
        boolean: false,
    },
    Key {
        name: "max_unauthenticated_per_address",
        doc: "The pool's share of one address (IPv4, IPv6 /64). >= 1.",
        value: |c| c.max_unauthenticated_per_address as u128,
        boolean: false,
    },
    Key {
        name: "max_connections",
        doc: "Admitted clients held at once; more are told Busy. >= max_handshakes_in_flight.",
        value: |c| c.max_connections as u128,
        boolean: false,
    },
    Key {
        name: "max_replay_peers",
        doc: "Peers the replay store tracks. >= 1.",
        value: |c| c.max_replay_peers as u128,
        boolean: false,
    },
    Key {
        name: "authenticated_frames",
        doc: "Keyed tags instead of checksums after the handshake.",
        value: |c| c.authenticated_frames.into(),
        boolean: true,
    },
    Key {
        name: "dedup_entries_per_client",
        doc: "Requests remembered per client. 1..=65536.",
        value: |c| c.dedup_entries_per_client as u128,
        boolean: false,
    },
    Key {
        name: "dedup_max_clients",
        doc: "Client sessions the dedup window holds. >= 1.",
        value: |c| c.dedup_max_clients as u128,
        boolean: false,
    },
    Key {
        name: "dedup_max_cached_bytes",
        doc: "Bytes of cached replies. >= max_message_size.",
        value: |c| c.dedup_max_cached_bytes as u128,
        boolean: false,
    },
    Key {
        name: "dedup_ttl_ms",
        doc: "Lifetime of a dedup entry and idle timeout of a session. >= 1000.",
        value: |c| ms(c.dedup_ttl),
        boolean: false,
    },
    Key {
        name: "client_max_outstanding",
        doc: "Client: requests outstanding at once. 1..=send_queue_frames, <= dedup_entries_per_client.",
        value: |c| c.client_max_outstanding as u128,
        boolean: false,
    },
    Key {
        name: "request_timeout_ms",
        doc: "Client: how long a request may go unanswered. >= 1, below dedup_ttl_ms.",
        value: |c| ms(c.request_timeout),
        boolean: false,
    },
];

impl Config {
    /// The configuration as TOML, each key after a comment naming what it
    /// is and its range; [`Config::from_toml`] reads it back to the same
    /// configuration. `bus config` prints the defaults this way.
    ///
    /// ```
    /// use bus_proto::config::Config;
    /// let text = Config::default().to_toml();
    /// assert!(text.contains("# Idle time before a ping is sent. >= 10.\nheartbeat_interval_ms = 1000\n"));
    /// # #[cfg(feature = "toml")]
    /// assert_eq!(Config::from_toml(&text)?, Config::default().validate()?);
    /// # Ok::<(), bus_proto::config::ConfigError>(())
    /// ```
    pub fn to_toml(&self) -> String {
        use core::fmt::Write;
        let mut out = String::new();
        for key in KEYS {
            let value = (key.value)(self);
            // Writing to a String cannot fail.
            let _ = match key.boolean {
                true => writeln!(out, "# {}\n{} = {}\n", key.doc, key.name, value != 0),
                false => writeln!(out, "# {}\n{} = {}\n", key.doc, key.name, value),
            };
        }
        out
    }

    /// The names of every TOML key, in order.
    pub fn toml_keys() -> impl Iterator<Item = &'static str> {
        KEYS.iter().map(|k| k.name)
    }
}

/// Durations as integer milliseconds.
#[cfg(feature = "toml")]
mod millis {
    use core::time::Duration;
    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
