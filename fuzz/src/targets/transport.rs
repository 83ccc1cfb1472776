//! The transport layers' input: TLS records, WebSocket upgrade requests
//! and responses, and WebSocket frames, fed in arbitrary chunks with the
//! frame limit changing in between.
//!
//! Without the server's key shares a fuzzer cannot complete a TLS
//! handshake, so the TLS target checks that nothing is ever delivered or
//! declared ready; the WebSocket targets can complete their upgrade (the
//! `ws_server` input may start with a valid request) and check that every
//! frame handed on is whole, within the limit in force, and that output
//! stays bounded.

use super::ops;
use arbitrary::{Arbitrary, Unstructured};
use bus_proto::host::{LayerFactory, StreamLayer};
use bus_proto::time::{Instant, Now};
use bus_proto::transport::tls::{CertificateDer, PrivateKeyDer, TlsServer};
use bus_proto::transport::ws::{WsClient, WsServer};
use bus_proto::wire::HEADER_SIZE;
use bus_proto::wire::layout::HEADER_SIZE_U32;
use bytes::BytesMut;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
enum Op {
    /// The next `n` input bytes arrive.
    Read(u16),
    /// The core's frame limit changes.
    Limit(u32),
    /// The core sends a close; the layer starts its own.
    Close,
    /// The stream ends.
    Eof,
}

fn server_identity() -> &'static (CertificateDer<'static>, PrivateKeyDer<'static>) {
    static IDENTITY: OnceLock<(CertificateDer<'static>, PrivateKeyDer<'static>)> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["fuzz".into()]).expect("a certificate");
        (
            certified.cert.der().clone(),
            PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )
    })
}

/// A valid upgrade request, so the WebSocket frame parser gets input too.
const UPGRADE: &[u8] = b"GET /bus HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bus.v1\r\n\r\n";

/// What every layer must do with any input: never panic, hand on only
/// whole frames within the limit in force, keep its output bounded.
fn drive(mut layer: Box<dyn StreamLayer>, prefix: &[u8], data: &[u8], handshake_possible: bool) {
    let now = Now {
        mono: Instant::ZERO,
        wall: super::wall(Instant::ZERO),
    };
    let mut u = Unstructured::new(data);
    let mut input: Vec<u8> = prefix.to_vec();
    let ops: Vec<Op> = ops(&mut u).collect();
    input.extend_from_slice(u.take_rest());
    let mut rest = &input[..];
    let mut limit = HEADER_SIZE_U32;
    let mut out = Vec::new();
    let mut ended = false;
    for op in ops
        .into_iter()
        .chain([Op::Read(u16::MAX), Op::Close, Op::Eof])
    {
        match op {
            Op::Read(n) if !ended => {
                let n = usize::from(n).min(rest.len());
                let mut wire = BytesMut::from(&rest[..n]);
                rest = &rest[n..];
                loop {
                    let mut frames = BytesMut::new();
                    let result = layer.read_wire(now, &mut wire, &mut frames);
                    assert!(wire.is_empty(), "the layer left wire bytes unread");
                    check_frames(&frames, limit);
                    if !handshake_possible {
                        assert!(frames.is_empty(), "frames before any handshake");
                        assert!(layer.take_ready().is_none(), "ready without a handshake");
                    }
                    if result.is_err() {
                        ended = true;
                        break;
                    }
                    if !layer.wants_read() {
                        break;
                    }
                }
            }
            Op::Read(_) => {}
            Op::Limit(l) => {
                limit = l.clamp(HEADER_SIZE_U32, 1 << 20);
                layer.set_frame_limit(limit);
            }
            Op::Close => layer.close(),
            Op::Eof => {
                let _ = layer.read_eof();
                ended = true;
            }
        }
        layer.take_wire(&mut out);
        let written: usize = out.iter().map(|b| b.len()).sum();
        // Output answers input (handshake replies, pongs, closes): a
        // generous bound, far below unbounded growth.
        assert!(
            written <= 64 * 1024 + 4 * input.len(),
            "{written} bytes written for {} read",
            input.len()
        );
    }
}

/// `frames` holds whole frames, each within `limit`.
fn check_frames(frames: &[u8], limit: u32) {
    let mut at = 0;
    while at < frames.len() {
        assert!(
            frames.len() - at >= HEADER_SIZE,
            "a partial header handed on"
        );
        let size = u32::from_le_bytes(frames[at + 48..at + 52].try_into().expect("4 bytes"));
        assert!(
            size as usize >= HEADER_SIZE && size <= limit,
            "a frame of {size} over {limit}"
        );
        assert!(
            frames.len() - at >= size as usize,
            "a partial frame handed on"
        );
        at += size as usize;
    }
}

/// A TLS server fed arbitrary records.
pub fn tls_server(data: &[u8]) {
    let (cert, key) = server_identity();
    let server = TlsServer::new(vec![cert.clone()], key.clone_key()).expect("a config");
    drive(server.layer().expect("a layer"), b"", data, false);
}

/// A WebSocket server fed an arbitrary upgrade (first byte even), or a
/// valid upgrade followed by arbitrary frames (first byte odd).
pub fn ws_server(data: &[u8]) {
    let layer = WsServer::new().layer().expect("a layer");
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => drive(layer, UPGRADE, rest, true),
        Some((_, rest)) => drive(layer, b"", rest, true),
        None => drive(layer, b"", b"", true),
    }
}

/// A WebSocket client fed an arbitrary upgrade response and frames.
pub fn ws_client(data: &[u8]) {
    let client = WsClient::new("ws://fuzz/bus").expect("a URL");
    drive(client.layer().expect("a layer"), b"", data, true);
}
