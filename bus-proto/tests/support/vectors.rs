//! The inputs of the test vectors in `PROTOCOL.md`, shared by the `vectors`
//! example (which prints them) and the `vectors` test (which checks them).

use bus_proto::crypto::mac::context;
use bus_proto::crypto::{Key, MacKey};
use bus_proto::wire::{
    APP_AREA_SIZE, AppArea, Frame, FrameKeys, Header, Integrity, Kind, RequestHeader,
};
use bytes::Bytes;

/// One vector: a name and the bytes it must produce.
pub struct Vector {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    /// The frame and integrity it encodes, for decode checks (MAC vectors have none).
    pub frame: Option<(Frame, Integrity)>,
}

pub const CLUSTER: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
pub const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const MAX: u32 = 1 << 20;

fn frame_vector(name: &'static str, frame: Frame, integrity: Integrity) -> Vector {
    let mut bytes = Vec::new();
    frame
        .encode(&integrity, MAX)
        .expect("vector frames are valid")
        .write_to(&mut bytes);
    Vector {
        name,
        bytes,
        frame: Some((frame, integrity)),
    }
}

pub fn all() -> Vec<Vector> {
    let key = Key::from_hex(KEY_HEX).expect("valid key");
    let ping = Frame::control(Header {
        cluster: CLUSTER,
        view: 7,
        release: 1,
        replica: 2,
        sequence: 1,
        kind: Kind::Ping {
            token: 0x1122_3344_5566_7788,
        },
        app: AppArea::ZERO,
    });
    let request = Frame {
        header: Header {
            cluster: CLUSTER,
            view: 0,
            release: 1,
            replica: 255,
            sequence: 5,
            kind: Kind::Request(RequestHeader {
                client: 0xa1a2_a3a4_a5a6_a7a8_a9aa_abac_adae_afb0,
                request: 42,
                operation: 3,
            }),
            app: AppArea::ZERO,
        },
        body: Bytes::from_static(b"transfer 10 from a to b"),
    };
    let message = Frame {
        header: Header {
            cluster: CLUSTER,
            view: 1,
            release: 1,
            replica: 0,
            sequence: 9,
            kind: Kind::Message {
                operation: 0xdead_beef,
            },
            app: AppArea::ZERO,
        },
        body: Bytes::from_static(b"authenticated body"),
    };
    // A consensus-style header-only message: its metadata in the
    // application area (bytes 0x00..0x5f), no body.
    let mut area = [0u8; APP_AREA_SIZE];
    for (byte, value) in area.iter_mut().zip(0u8..) {
        *byte = value;
    }
    let app_message = Frame {
        header: Header {
            cluster: CLUSTER,
            view: 3,
            release: 2,
            replica: 1,
            sequence: 4,
            kind: Kind::Message { operation: 5 },
            app: AppArea::new(area),
        },
        body: Bytes::new(),
    };
    let handshake_key = MacKey::derive(&key, context::HANDSHAKE);
    let mut tag = [0u8; 32];
    handshake_key
        .sign(&[b"bus-proto test vector"])
        .write_to(&mut tag);
    vec![
        frame_vector("ping-checksum", ping, Integrity::Checksum),
        frame_vector("request-checksum", request, Integrity::Checksum),
        frame_vector("message-app-area", app_message, Integrity::Checksum),
        frame_vector(
            "message-authenticated",
            message,
            Integrity::Authenticated(FrameKeys::derive(&[0x42; 32])),
        ),
        Vector {
            name: "key-fingerprint",
            bytes: hex_bytes(&key.fingerprint().to_string()),
            frame: None,
        },
        Vector {
            name: "handshake-key",
            bytes: blake3::derive_key(context::HANDSHAKE, &hex_bytes(KEY_HEX)).to_vec(),
            frame: None,
        },
        Vector {
            name: "handshake-mac",
            bytes: tag.to_vec(),
            frame: None,
        },
        Vector {
            name: "frame-header-key",
            bytes: blake3::derive_key(context::FRAME_HEADER, &[0x42; 32]).to_vec(),
            frame: None,
        },
        Vector {
            name: "xxh3-128-empty",
            bytes: twox_hash::XxHash3_128::oneshot(b"").to_le_bytes().to_vec(),
            frame: None,
        },
        Vector {
            name: "tls-exporter-binding",
            bytes: tls_exporter_binding(&[0x11; 32]),
            frame: None,
        },
    ]
    .into_iter()
    .chain(handshake(&key))
    .collect()
}

/// The channel binding a TLS 1.3 session with SHA-256 (e.g.
/// TLS_AES_128_GCM_SHA256) and this `exporter_master_secret` exports
/// (RFC 8446 §7.5, RFC 9266): label `EXPORTER-Channel-Binding`, empty
/// context, 32 bytes. Derived here with ring's HKDF, independently of
/// rustls.
fn tls_exporter_binding(exporter_master_secret: &[u8]) -> Vec<u8> {
    use ring::{digest, hkdf};
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    fn expand_label(secret: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
        let label = [&b"tls13 "[..], label].concat();
        let mut info = Vec::new();
        info.extend_from_slice(&u16::try_from(len).expect("short").to_be_bytes());
        info.push(u8::try_from(label.len()).expect("short label"));
        info.extend_from_slice(&label);
        info.push(u8::try_from(context.len()).expect("short context"));
        info.extend_from_slice(context);
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret);
        let mut out = vec![0; len];
        prk.expand(&[&info], Len(len))
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF output within bounds");
        out
    }
    let empty = digest::digest(&digest::SHA256, b"");
    let secret = expand_label(
        exporter_master_secret,
        b"EXPORTER-Channel-Binding",
        empty.as_ref(),
        32,
    );
    // The context is empty: its hash is the empty string's.
    expand_label(&secret, b"exporter", empty.as_ref(), 32)
}

/// A complete handshake with authenticated frames, from real connections:
/// replica 0 dials replica 1, then sends one message.
fn handshake(key: &Key) -> Vec<Vector> {
    use bus_proto::config::Config;
    use bus_proto::connection::{Connection, DialParams};
    use bus_proto::crypto::{KeyRing, PeerId};
    use bus_proto::entropy::SeededEntropy;
    use bus_proto::handshake::{Binding, Gate, GateParams};
    use bus_proto::time::{Instant, UnixNanos};

    let config = {
        let mut tuned = Config::default();
        tuned.authenticated_frames = true;
        tuned
    }
    .validate()
    .expect("valid config");
    let keys = KeyRing::new(key.clone());
    let mut entropy = SeededEntropy::new(2026);
    let (now, wall) = (Instant::ZERO, UnixNanos::from_nanos(HANDSHAKE_WALL));
    let params = DialParams {
        cluster: CLUSTER,
        local: PeerId::Replica(0),
        acceptor: 1,
        keys: &keys,
        binding: Binding::NONE,
    };
    let mut dialer = Connection::dial(now, wall, &config, params, &mut entropy).expect("dial");
    let mut acceptor = Connection::accept(now, &config, Binding::NONE);
    let mut gate = Gate::new(
        &config,
        GateParams {
            cluster: CLUSTER,
            local: 1,
            replica_count: 2,
            accept_clients: false,
        },
        keys,
    );
    let out = |conn: &mut Connection| {
        let mut bytes = Vec::new();
        while let Some(t) = conn.poll_transmit(now) {
            t.write_to(&mut bytes);
        }
        bytes
    };
    let hello = out(&mut dialer);
    acceptor.handle_input(now, &hello);
    let incoming = acceptor.take_hello().expect("hello parked");
    acceptor.admit(now, gate.admit(wall, incoming, &mut entropy));
    let welcome = out(&mut acceptor);
    dialer.handle_input(now, &welcome);
    dialer
        .send(
            Kind::Message { operation: 1 },
            Bytes::from_static(b"first message"),
        )
        .expect("queued");
    let both = out(&mut dialer);
    let (confirm, message) = both.split_at(256);
    let named = |name, bytes: &[u8]| Vector {
        name,
        bytes: bytes.to_vec(),
        frame: None,
    };
    vec![
        named("handshake-hello", &hello),
        named("handshake-welcome", &welcome),
        named("handshake-confirm", confirm),
        named("handshake-first-message", message),
    ]
}

/// Wall clock of the handshake vector's `hello` (2026-01-01T00:00:00Z).
pub const HANDSHAKE_WALL: u64 = 1_767_225_600_000_000_000;

pub fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text).expect("valid hex")
}

/// The `PROTOCOL.md` block for a vector: 32 bytes (64 hex digits) a line.
pub fn render(v: &Vector) -> String {
    let mut out = format!("```vector\nname = {}\n", v.name);
    for chunk in v.bytes.chunks(32) {
        out.push_str(&hex::encode(chunk));
        out.push('\n');
    }
    out.push_str("```\n");
    out
}

/// Parses every `vector` block of a document into (name, bytes).
pub fn parse(doc: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```vector" {
            continue;
        }
        let name = lines
            .next()
            .and_then(|l| l.strip_prefix("name = "))
            .expect("vector block starts with a name");
        let mut hex = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            hex.push_str(l.trim());
        }
        out.push((name.to_string(), hex_bytes(&hex)));
    }
    out
}
