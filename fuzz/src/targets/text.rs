//! Text the operator supplies: keys in hex and the TOML configuration.

use bus_proto::config::{Config, MAX_BATCH_LIMIT};
use bus_proto::crypto::{Key, KeyError, KeyRing};
use bus_proto::entropy::SeededEntropy;
use bus_proto::node::{Node, NodeParams};
use bus_proto::time::{Instant, Now, UnixNanos};

/// Key hex parsing. A parsed key prints back to hex that parses to the same
/// key; an error names an offset and byte that are really in the text.
pub fn key_hex(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Key::from_hex(&text) {
        Ok(key) => {
            let again = Key::from_hex(&key.to_hex());
            assert!(
                again.is_ok_and(|again| again == key),
                "hex round trip changed the key"
            );
        }
        Err(KeyError::InvalidHex { offset, byte }) => {
            assert_eq!(text.as_bytes().get(offset), Some(&byte), "{offset}");
        }
        Err(error) => {
            // Every error renders to one line.
            assert!(!error.to_string().contains('\n'));
        }
    }
}

/// Configuration parsing. What validates keeps the documented bounds,
/// validates again unchanged, and starts a node without panicking.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(valid) = Config::from_toml(&text) else {
        return;
    };
    assert!((1..=MAX_BATCH_LIMIT).contains(&valid.max_batch));
    assert!(valid.send_queue_frames >= valid.max_batch);
    assert!(valid.send_queue_bytes >= valid.max_message_size as usize);
    assert!(valid.liveness_timeout >= valid.heartbeat_interval * 2);
    assert!(valid.reconnect_max >= valid.reconnect_min);
    assert!(valid.max_connections >= valid.max_handshakes_in_flight);
    let again = Config::clone(&valid).validate();
    assert!(again.is_ok_and(|again| *again == *valid));
    let params = NodeParams {
        cluster: 1,
        replica: 0,
        replica_count: 3,
        accept_clients: true,
    };
    let now = Now {
        mono: Instant::from_nanos(0),
        wall: UnixNanos::from_nanos(1 << 60),
    };
    let keys = KeyRing::new(Key::from_bytes([1; 32]));
    let entropy = Box::new(SeededEntropy::new(0));
    let mut node =
        Node::new(now, &valid, params, keys, entropy).expect("a valid config starts a node");
    node.handle_timeout(now);
    while node.poll_action().is_some() {}
}
