//! One function per fuzz target, each taking the raw fuzzer input.

mod connection;
mod dedup;
mod frame;
mod host;
mod identity;
mod node;
mod quic;
mod replay;
mod text;
mod transport;

pub use connection::{connection, handshake};
pub use dedup::dedup_window;
pub use frame::{decode_chunked, frame_decoder, header};
pub use host::host;
pub use identity::identity;
pub use node::node;
pub use quic::quic_endpoint;
pub use replay::{nonce_ring, replay_window};
pub use text::{config, key_hex};
pub use transport::{tls_server, ws_client, ws_server};

use arbitrary::Arbitrary;
use bus_proto::time::{Instant, UnixNanos};
use bus_proto::wire::Integrity;
use bus_proto::wire::layout::{
    AREA, CHECKSUM, CHECKSUM_BODY, CHECKSUMMED, CLUSTER as CLUSTER_FIELD, COMMAND, HEADER_SIZE,
    PROTOCOL, REPLICA, SEQUENCE, SIZE,
};

/// Largest frame the fuzzed decoders accept (small, so bodies complete).
pub const FUZZ_MAX_MESSAGE: u32 = 64 << 10;

/// The cluster every harness runs.
pub const CLUSTER: u128 = 0xC1;

/// Wall-clock time at virtual `now` (2026-01-01 plus `now`).
pub fn wall(now: Instant) -> UnixNanos {
    UnixNanos::from_nanos(1_767_225_600_000_000_000 + now.as_nanos())
}

/// A frame with valid framing (cluster, protocol version, size and
/// checksums) around fuzzer-chosen command, sequence and command area, so
/// state machines see frames their decoder accepts.
#[derive(Arbitrary, Debug)]
pub struct Forged {
    command: u8,
    replica: u8,
    sequence: u64,
    area: Vec<u8>,
    body: Vec<u8>,
}

/// Encodes `frame` with checksums (authenticated-frames tags verify only
/// under `cfg(fuzzing)`).
pub fn forge(frame: &Forged) -> Vec<u8> {
    let mut h = [0u8; HEADER_SIZE];
    let body = &frame.body[..frame.body.len().min(1024)];
    let size = u32::try_from(HEADER_SIZE + body.len()).unwrap_or(u32::MAX);
    h[CLUSTER_FIELD].copy_from_slice(&CLUSTER.to_le_bytes());
    h[SIZE].copy_from_slice(&size.to_le_bytes());
    h[PROTOCOL].copy_from_slice(&bus_proto::wire::PROTOCOL_VERSION.to_le_bytes());
    h[COMMAND][0] = frame.command % 10 + 1;
    h[REPLICA][0] = frame.replica;
    h[SEQUENCE].copy_from_slice(&frame.sequence.to_le_bytes());
    let area = &frame.area[..frame.area.len().min(AREA.len())];
    h[AREA.start..AREA.start + area.len()].copy_from_slice(area);
    let body_sum = Integrity::Checksum.body_sum(body);
    h[CHECKSUM_BODY].copy_from_slice(&body_sum.to_le_bytes());
    let sum = Integrity::Checksum.header_sum(&h[CHECKSUMMED]);
    h[CHECKSUM].copy_from_slice(&sum.to_le_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(body);
    out
}

/// The operations encoded in the rest of the input; ends when the input
/// runs out (`arbitrary` itself would go on producing zeros).
fn ops<'a, 'b, T: Arbitrary<'a>>(
    u: &'b mut arbitrary::Unstructured<'a>,
) -> impl Iterator<Item = T> + use<'a, 'b, T> {
    u.arbitrary_iter::<T>()
        .into_iter()
        .flatten()
        .map_while(Result::ok)
}
