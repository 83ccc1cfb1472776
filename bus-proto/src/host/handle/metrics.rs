//! Export through the `metrics` facade (feature `metrics`): whatever
//! recorder the program installed (Prometheus, StatsD, OpenTelemetry)
//! receives the node's counters and gauges.

use super::{Node, Platform};
use crate::crypto::PeerId;
use crate::node::{ConnectionInfo, NodeStats};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use std::string::ToString;

/// Each counter of [`NodeStats`]: metric name, value, help text.
fn counters(stats: &NodeStats) -> [(&'static str, u64, &'static str); 14] {
    [
        (
            "bus_accepts_refused_total",
            stats.accepts_refused,
            "Inbound connections refused (shutting down, table full, client cap).",
        ),
        (
            "bus_unauthenticated_evicted_total",
            stats.unauthenticated_evicted,
            "Unauthenticated connections evicted for newer ones.",
        ),
        (
            "bus_handshakes_failed_total",
            stats.handshakes_failed,
            "Connections closed before their handshake completed.",
        ),
        (
            "bus_duplicates_refused_total",
            stats.duplicates_refused,
            "Second connections from a registered replica, refused.",
        ),
        ("bus_dials_total", stats.dials, "Dials started."),
        (
            "bus_frames_unregistered_total",
            stats.frames_unregistered,
            "Frames dropped on connections not registered.",
        ),
        (
            "bus_requests_total",
            stats.requests,
            "Requests handed to the application.",
        ),
        (
            "bus_dedup_hits_total",
            stats.dedup_hits,
            "Retried requests answered from the dedup cache.",
        ),
        (
            "bus_duplicates_dropped_total",
            stats.duplicates_dropped,
            "Duplicates of requests in flight, dropped.",
        ),
        ("bus_stale_total", stats.stale, "Requests answered Stale."),
        ("bus_busy_total", stats.busy, "Requests answered Busy."),
        (
            "bus_sessions_evicted_total",
            stats.sessions_evicted,
            "Client sessions evicted at the dedup caps.",
        ),
        (
            "bus_dedup_markers_dropped_total",
            stats.dedup_markers_dropped,
            "Evicted-session markers dropped before their TTL.",
        ),
        (
            "bus_deliveries_discarded_total",
            stats.deliveries_discarded,
            "Messages and requests discarded after the event stream was dropped.",
        ),
    ]
}

/// The gauges: metric name, help text.
const GAUGES: [(&str, &str); 11] = [
    (
        "bus_events_waiting",
        "Events queued for the application, unread.",
    ),
    (
        "bus_connections_paused",
        "Connections not read because the application is behind.",
    ),
    ("bus_connections", "Connections held, by state."),
    ("bus_clients", "Clients connected."),
    (
        "bus_peer_connected",
        "1 while the replica peer is connected.",
    ),
    (
        "bus_peer_rtt_seconds",
        "Latest ping round trip to the peer.",
    ),
    (
        "bus_peer_queued_frames",
        "Frames waiting in the peer's send queue.",
    ),
    (
        "bus_peer_queued_bytes",
        "Bytes waiting in the peer's send queue.",
    ),
    (
        "bus_peer_sent_bytes",
        "Bytes sent on the peer's current connection.",
    ),
    (
        "bus_peer_received_bytes",
        "Bytes received on the peer's current connection.",
    ),
    (
        "bus_peer_paused_seconds",
        "Time the peer's current connection was not read.",
    ),
];

impl<R: Platform> Node<R> {
    /// Records the node's state through the `metrics` facade, labelled
    /// `replica="<this replica's id>"`: every [`NodeStats`] counter as
    /// `bus_<name>_total`; the gauges `bus_events_waiting`,
    /// `bus_connections_paused`, `bus_connections{state}` (handshaking or
    /// established) and `bus_clients`; and per replica peer (label
    /// `peer`), the state of its current connection: `bus_peer_connected`,
    /// `bus_peer_rtt_seconds`, `bus_peer_queued_frames`,
    /// `bus_peer_queued_bytes`, `bus_peer_sent_bytes`,
    /// `bus_peer_received_bytes`, `bus_peer_paused_seconds`. Those start
    /// again from zero on a new connection, so they are gauges.
    ///
    /// Call it periodically, or before each scrape; it takes the node's
    /// lock a few times and allocates one snapshot.
    ///
    /// ```no_run
    /// # use bus_proto::host::{Node, Platform};
    /// # async fn run<R: Platform>(node: Node<R>, tick: impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()>>>) {
    /// // With a recorder installed (e.g. metrics-exporter-prometheus):
    /// loop {
    ///     node.publish_metrics();
    ///     tick().await; // every second or so
    /// }
    /// # }
    /// ```
    pub fn publish_metrics(&self) {
        let (id, peers) = self.inspect(|node| (node.params().replica, node.params().replica_count));
        let replica = id.to_string();
        let stats = self.stats();
        for (name, value, help) in counters(&stats) {
            describe_counter!(name, help);
            counter!(name, "replica" => replica.clone()).absolute(value);
        }
        for (name, help) in GAUGES {
            describe_gauge!(name, help);
        }
        gauge!("bus_events_waiting", "replica" => replica.clone()).set(stats.events_waiting as f64);
        gauge!("bus_connections_paused", "replica" => replica.clone())
            .set(stats.connections_paused as f64);
        let connections = self.connection_infos();
        let established = connections.iter().filter(|c| c.established).count();
        let clients = connections
            .iter()
            .filter(|c| c.established && matches!(c.peer, Some(PeerId::Client(_))))
            .count();
        for (state, count) in [
            ("handshaking", connections.len() - established),
            ("established", established),
        ] {
            gauge!("bus_connections", "replica" => replica.clone(), "state" => state)
                .set(count as f64);
        }
        gauge!("bus_clients", "replica" => replica.clone()).set(clients as f64);
        for peer in (0..peers).filter(|&peer| peer != id) {
            let info = connections
                .iter()
                .find(|c| c.established && c.peer == Some(PeerId::Replica(peer)));
            let labels = [("replica", replica.clone()), ("peer", peer.to_string())];
            let set = |name: &'static str, value: f64| gauge!(name, &labels).set(value);
            set("bus_peer_connected", f64::from(u8::from(info.is_some())));
            // A peer without a connection shows zeros (and no round trip),
            // not its last connection's values.
            let rtt = info.and_then(|c| c.rtt);
            set(
                "bus_peer_rtt_seconds",
                rtt.map_or(f64::NAN, |rtt| rtt.as_secs_f64()),
            );
            let value = |f: fn(&ConnectionInfo) -> f64| info.map_or(0.0, f);
            set("bus_peer_queued_frames", value(|c| c.queued_frames as f64));
            set("bus_peer_queued_bytes", value(|c| c.queued_bytes as f64));
            set("bus_peer_sent_bytes", value(|c| c.stats.bytes_sent as f64));
            set(
                "bus_peer_received_bytes",
                value(|c| c.stats.bytes_received as f64),
            );
            set(
                "bus_peer_paused_seconds",
                value(|c| c.stats.paused.as_secs_f64()),
            );
        }
    }
}
