//! Frame encoding and decoding: round trips, chunking, and every error path.

use bus_proto::crypto::{Nonce, Tag};
use bus_proto::time::UnixNanos;
use bus_proto::wire::layout::{self, HEADER_SIZE};
use bus_proto::wire::*;
use bytes::Bytes;
use proptest::prelude::*;

const MAX: u32 = 1 << 20;

fn arb_kind() -> impl Strategy<Value = Kind> {
    let bytes32 = any::<[u8; 32]>();
    prop_oneof![
        (
            prop::sample::select(Plane::ALL),
            any::<u128>(),
            any::<u128>(),
            bytes32,
            any::<u64>(),
            any::<bool>(),
            bytes32
        )
            .prop_map(
                |(plane, dialer, acceptor, n, ts, auth, mac)| Kind::Hello(Box::new(Hello {
                    plane,
                    dialer,
                    acceptor,
                    nonce: Nonce::from_bytes(n),
                    timestamp: UnixNanos::from_nanos(ts),
                    authenticated_frames: auth,
                    mac: Tag::from_bytes(mac),
                }))
            ),
        (bytes32, any::<bool>(), bytes32).prop_map(|(n, auth, m)| Kind::Welcome(Box::new(
            Welcome {
                nonce: Nonce::from_bytes(n),
                authenticated_frames: auth,
                mac: Tag::from_bytes(m)
            }
        ))),
        bytes32.prop_map(|m| Kind::Confirm {
            mac: Tag::from_bytes(m)
        }),
        (
            prop::sample::select(RejectStatus::ALL),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(status, protocol_min, protocol_max)| Kind::Reject(Reject {
                status,
                protocol_min,
                protocol_max
            })),
        any::<u64>().prop_map(|token| Kind::Ping { token }),
        any::<u64>().prop_map(|token| Kind::Pong { token }),
        prop::sample::select(CloseReason::ALL).prop_map(|reason| Kind::Close { reason }),
        any::<u32>().prop_map(|operation| Kind::Message { operation }),
        (any::<u128>(), 0..u64::MAX, any::<u32>()).prop_map(|(client, request, operation)| {
            Kind::Request(RequestHeader {
                client,
                request,
                operation,
            })
        }),
        (
            any::<u128>(),
            0..u64::MAX,
            any::<u32>(),
            prop::sample::select(ReplyStatus::ALL)
        )
            .prop_map(|(client, request, operation, status)| Kind::Reply {
                request: RequestHeader {
                    client,
                    request,
                    operation,
                },
                status,
            }),
    ]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        arb_kind(),
        any::<u128>(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..600),
        prop::option::of(any::<[u8; 96]>()),
    )
        .prop_map(
            |(kind, cluster, view, release, replica, sequence, body, area)| {
                // Only data frames carry an application area.
                let data = kind.command().allows_body();
                let body = if data {
                    Bytes::from(body)
                } else {
                    Bytes::new()
                };
                let app = match area {
                    Some(bytes) if data => AppArea::new(bytes),
                    _ => AppArea::ZERO,
                };
                Frame {
                    header: Header {
                        cluster,
                        view,
                        release,
                        replica,
                        sequence,
                        kind,
                        app,
                    },
                    body,
                }
            },
        )
}

fn encode_all(frames: &[Frame], integrity: &Integrity) -> Vec<u8> {
    let mut wire = Vec::new();
    for f in frames {
        f.encode(integrity, MAX).unwrap().write_to(&mut wire);
    }
    wire
}

/// Feeds `wire` in chunks of the given sizes (cycled) and drains frames after each.
fn decode_in_chunks(
    wire: &[u8],
    chunks: &[usize],
    integrity: Integrity,
) -> Result<Vec<Frame>, DecodeError> {
    let mut decoder = FrameDecoder::new(integrity, MAX);
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        decoder.feed(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = decoder.next_frame()? {
            out.push(f);
        }
    }
    assert_eq!(decoder.buffered(), 0, "bytes left over after whole frames");
    Ok(out)
}

fn message(body: &'static [u8]) -> Frame {
    Frame {
        header: Header::new(9, Kind::Message { operation: 3 }),
        body: Bytes::from_static(body),
    }
}

fn authenticated(secret: u8) -> Integrity {
    Integrity::Authenticated(FrameKeys::derive(&[secret; 32]))
}

proptest! {
    #[test]
    fn every_valid_frame_round_trips(frame in arb_frame(), auth in any::<bool>()) {
        let integrity = if auth { authenticated(1) } else { Integrity::Checksum };
        let encoded = frame.encode(&integrity, MAX).unwrap();
        prop_assert_eq!(encoded.len(), HEADER_SIZE + frame.body.len());
        let (header, size) = Header::decode(&encoded.header, &integrity, MAX).unwrap();
        prop_assert_eq!(size as usize, encoded.len());
        prop_assert_eq!(&header, &frame.header);
        let decoded = decode_in_chunks(&encode_all(std::slice::from_ref(&frame), &integrity), &[usize::MAX], integrity).unwrap();
        prop_assert_eq!(decoded, vec![frame]);
    }

    /// Hazard 1: any chunking of the same stream yields the same frames.
    #[test]
    fn any_chunking_yields_the_same_frames(
        frames in prop::collection::vec(arb_frame(), 1..6),
        chunks in prop::collection::vec(1usize..700, 1..20),
    ) {
        let wire = encode_all(&frames, &Integrity::Checksum);
        let whole = decode_in_chunks(&wire, &[wire.len()], Integrity::Checksum).unwrap();
        let chunked = decode_in_chunks(&wire, &chunks, Integrity::Checksum).unwrap();
        let bytewise = decode_in_chunks(&wire, &[1], Integrity::Checksum).unwrap();
        prop_assert_eq!(&whole, &frames);
        prop_assert_eq!(&chunked, &frames);
        prop_assert_eq!(&bytewise, &frames);
    }

    /// Flipping any bit of an encoded frame is detected and never yields a frame.
    #[test]
    fn any_bit_flip_is_detected(frame in arb_frame(), at in any::<prop::sample::Index>(), bit in 0u8..8, auth in any::<bool>()) {
        let integrity = if auth { authenticated(2) } else { Integrity::Checksum };
        let mut wire = encode_all(&[frame], &integrity);
        let i = at.index(wire.len());
        wire[i] ^= 1 << bit;
        let mut decoder = FrameDecoder::new(integrity, MAX);
        decoder.feed(&wire);
        // A flip in `size` may leave the decoder waiting for more bytes; it
        // must never produce a frame.
        prop_assert!(!matches!(decoder.next_frame(), Ok(Some(_))));
    }

    /// Verifying frames ahead (as a socket task does outside its lock)
    /// changes nothing the decoder returns: the same frames, then the same
    /// error at the same place, whatever the chunking or the corruption.
    #[test]
    fn verifying_ahead_yields_the_same_frames_and_errors(
        frames in prop::collection::vec(arb_frame(), 1..6),
        chunks in prop::collection::vec(1usize..700, 1..20),
        flip in prop::option::of((any::<prop::sample::Index>(), 0u8..8)),
        auth in any::<bool>(),
    ) {
        let integrity = if auth { authenticated(3) } else { Integrity::Checksum };
        let mut wire = encode_all(&frames, &integrity);
        if let Some((at, bit)) = flip {
            let i = at.index(wire.len());
            wire[i] ^= 1 << bit;
        }
        let run = |ahead: bool| {
            let mut decoder = FrameDecoder::new(integrity.clone(), MAX);
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let mut sizes = chunks.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).clamp(1, rest.len());
                decoder.buffer_mut().extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if ahead {
                    decoder.verify_ahead();
                }
                loop {
                    match decoder.next_frame() {
                        Ok(Some(frame)) => out.push(Ok(frame)),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(Err(e));
                            return out;
                        }
                    }
                }
            }
            out
        };
        let plain = run(false);
        prop_assert_eq!(&run(true), &plain);
        if flip.is_none() {
            let decoded: Vec<_> = plain.into_iter().map(Result::unwrap).collect();
            prop_assert_eq!(decoded, frames);
        }
    }

    /// Nothing a peer sends can panic the decoder, in any chunking.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..300) {
        let mut decoder = FrameDecoder::new(Integrity::Checksum, MAX);
        for piece in bytes.chunks(chunk) {
            decoder.feed(piece);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }
        prop_assert!(decoder.buffered() <= bytes.len());
    }
}

/// Re-signs a header after a test edits it, so later checks are reached.
fn reseal(h: &mut [u8; HEADER_SIZE]) {
    let sum = Integrity::Checksum.header_sum(&h[layout::CHECKSUMMED]);
    h[layout::CHECKSUM].copy_from_slice(&sum.to_le_bytes());
}

fn encoded_header(frame: &Frame) -> [u8; HEADER_SIZE] {
    frame.encode(&Integrity::Checksum, MAX).unwrap().header
}

fn decode_header(h: &[u8; HEADER_SIZE]) -> DecodeError {
    Header::decode(h, &Integrity::Checksum, MAX).unwrap_err()
}

/// Hazard 3: a peer declaring a 4 GiB body is refused from the header alone,
/// before any body buffer is reserved.
#[test]
fn oversized_size_is_refused_before_any_allocation() {
    let mut h = encoded_header(&message(b""));
    h[layout::SIZE].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut h);
    let mut decoder = FrameDecoder::new(Integrity::Checksum, MAX);
    decoder.feed(&h);
    let err = decoder.next_frame().unwrap_err();
    assert_eq!(
        err,
        DecodeError::SizeTooLarge {
            size: u32::MAX,
            max: MAX
        }
    );
    assert!(
        decoder.buffer_mut().capacity() < 4096,
        "reserved {} bytes",
        decoder.buffer_mut().capacity()
    );
    assert!(err.to_string().contains("4294967295"), "{err}");
}

#[test]
fn size_smaller_than_a_header_is_refused() {
    let mut h = encoded_header(&message(b""));
    h[layout::SIZE].copy_from_slice(&255u32.to_le_bytes());
    reseal(&mut h);
    assert_eq!(decode_header(&h), DecodeError::SizeTooSmall { size: 255 });
}

/// Hazard 2: one limit in the one decoder, whatever transport feeds it.
#[test]
fn the_size_limit_applies_at_exactly_max_message_size() {
    let body = Bytes::from(vec![7u8; 1000]);
    let frame = Frame {
        header: Header::new(1, Kind::Message { operation: 0 }),
        body,
    };
    let limit = layout::HEADER_SIZE_U32 + 1000;
    assert!(frame.encode(&Integrity::Checksum, limit).is_ok());
    assert_eq!(
        frame.encode(&Integrity::Checksum, limit - 1).unwrap_err(),
        EncodeError::TooLarge {
            body: 1000,
            max: limit - 1
        }
    );
    let mut wire = Vec::new();
    frame
        .encode(&Integrity::Checksum, limit)
        .unwrap()
        .write_to(&mut wire);
    let mut strict = FrameDecoder::new(Integrity::Checksum, limit - 1);
    strict.feed(&wire);
    assert_eq!(
        strict.next_frame().unwrap_err(),
        DecodeError::SizeTooLarge {
            size: limit,
            max: limit - 1
        }
    );
}

#[test]
fn errors_are_sticky_and_later_input_is_ignored() {
    let mut wire = encode_all(&[message(b"abc")], &Integrity::Checksum);
    wire[HEADER_SIZE] ^= 1; // corrupt the body
    let good = encode_all(&[message(b"fine")], &Integrity::Checksum);
    let mut decoder = FrameDecoder::new(Integrity::Checksum, MAX);
    decoder.feed(&wire);
    let err = decoder.next_frame().unwrap_err();
    assert!(
        matches!(err, DecodeError::BodyChecksum { size: 3, .. }),
        "{err:?}"
    );
    decoder.feed(&good);
    assert_eq!(decoder.next_frame().unwrap_err(), err);
    assert_eq!(decoder.error(), Some(&err));
    assert_eq!(decoder.buffered(), 0);
}

#[test]
fn header_checksum_mismatch_names_both_values() {
    let mut h = encoded_header(&message(b""));
    h[40] ^= 0xFF;
    match decode_header(&h) {
        DecodeError::HeaderChecksum { received, computed } => {
            assert_ne!(received, computed);
            let text = DecodeError::HeaderChecksum { received, computed }.to_string();
            assert!(text.contains(&format!("{received:#034x}")), "{text}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_command_and_zero_command_are_named_and_unauthenticated() {
    for value in [0u8, 11, 200, 255] {
        let mut h = encoded_header(&message(b""));
        h[layout::COMMAND][0] = value;
        reseal(&mut h);
        let err = decode_header(&h);
        assert_eq!(err, DecodeError::UnknownCommand { value });
        // Hazard 15: old or foreign envelope kinds are triaged as unauthenticated.
        assert_eq!(err.class(), ErrorClass::Unauthenticated);
        assert!(err.to_string().contains(&value.to_string()));
    }
}

#[test]
fn unsupported_protocol_version_keeps_the_command_byte() {
    let mut h = encoded_header(&message(b""));
    h[layout::PROTOCOL].copy_from_slice(&2u16.to_le_bytes());
    reseal(&mut h);
    let err = decode_header(&h);
    assert_eq!(
        err,
        DecodeError::UnsupportedProtocol {
            version: 2,
            command: Command::Message.to_wire()
        }
    );
    assert_eq!(err.class(), ErrorClass::Unauthenticated);
}

#[test]
fn reserved_bytes_must_be_zero_everywhere() {
    // The frame reserved area and each command's reserved area.
    let cases: Vec<(Frame, usize)> = vec![
        (message(b""), layout::RESERVED_FRAME.start + 5),
        (message(b""), layout::area::message::RESERVED.end - 1),
        (
            Frame::control(Header::new(1, Kind::Ping { token: 1 })),
            layout::area::ping::RESERVED.start,
        ),
        (
            Frame::control(Header::new(
                1,
                Kind::Close {
                    reason: CloseReason::Shutdown,
                },
            )),
            layout::area::close::RESERVED.start,
        ),
    ];
    for (frame, offset) in cases {
        let mut h = encoded_header(&frame);
        h[offset] = 0xAB;
        reseal(&mut h);
        let err = decode_header(&h);
        assert_eq!(
            err,
            DecodeError::ReservedNonZero {
                command: frame.header.command().to_wire(),
                offset,
                byte: 0xAB
            }
        );
        assert_eq!(err.class(), ErrorClass::ProtocolViolation);
    }
}

#[test]
fn control_commands_carry_no_body() {
    let ping = Frame {
        header: Header::new(1, Kind::Ping { token: 0 }),
        body: Bytes::from_static(b"x"),
    };
    assert_eq!(
        ping.encode(&Integrity::Checksum, MAX).unwrap_err(),
        EncodeError::BodyNotAllowed {
            command: Command::Ping,
            body: 1
        }
    );
    let mut h = encoded_header(&Frame::control(Header::new(1, Kind::Ping { token: 0 })));
    h[layout::SIZE].copy_from_slice(&300u32.to_le_bytes());
    reseal(&mut h);
    assert_eq!(
        decode_header(&h),
        DecodeError::BodyNotAllowed {
            command: Command::Ping,
            size: 44
        }
    );
}

#[test]
fn enumerated_fields_reject_unknown_values() {
    let hello = Frame::control(Header::new(
        1,
        Kind::Hello(Box::new(Hello {
            plane: Plane::Replica,
            dialer: 1,
            acceptor: 2,
            nonce: Nonce::from_bytes([0; 32]),
            timestamp: UnixNanos::from_nanos(0),
            authenticated_frames: false,
            mac: Tag::from_bytes([0; 32]),
        })),
    ));
    let mut h = encoded_header(&hello);
    h[layout::area::hello::PLANE][0] = 3;
    reseal(&mut h);
    assert_eq!(decode_header(&h), DecodeError::UnknownPlane { value: 3 });

    let mut h = encoded_header(&hello);
    h[layout::area::hello::FLAGS][0] = 2;
    reseal(&mut h);
    assert_eq!(
        decode_header(&h),
        DecodeError::InvalidField {
            command: Command::Hello,
            field: "flags",
            value: 2
        }
    );

    let close = Frame::control(Header::new(
        1,
        Kind::Close {
            reason: CloseReason::Timeout,
        },
    ));
    let mut h = encoded_header(&close);
    h[layout::area::close::REASON].copy_from_slice(&0u16.to_le_bytes());
    reseal(&mut h);
    assert_eq!(
        decode_header(&h),
        DecodeError::UnknownCloseReason { value: 0 }
    );

    let reject = Frame::control(Header::new(
        1,
        Kind::Reject(Reject {
            status: RejectStatus::BadMac,
            protocol_min: 1,
            protocol_max: 1,
        }),
    ));
    let mut h = encoded_header(&reject);
    h[layout::area::reject::STATUS].copy_from_slice(&99u16.to_le_bytes());
    reseal(&mut h);
    assert_eq!(
        decode_header(&h),
        DecodeError::UnknownRejectStatus { value: 99 }
    );
}

/// Hazard 30: `u64::MAX` request numbers are refused on both sides.
#[test]
fn request_number_u64_max_is_refused_both_ways() {
    let r = RequestHeader {
        client: 5,
        request: u64::MAX,
        operation: 0,
    };
    let frame = Frame::control(Header::new(1, Kind::Request(r)));
    assert_eq!(
        frame.encode(&Integrity::Checksum, MAX).unwrap_err(),
        EncodeError::InvalidField {
            command: Command::Request,
            field: "request",
            value: u128::from(u64::MAX)
        }
    );
    let ok = Frame::control(Header::new(
        1,
        Kind::Reply {
            request: RequestHeader { request: 1, ..r },
            status: ReplyStatus::Ok,
        },
    ));
    let mut h = encoded_header(&ok);
    h[layout::area::request::REQUEST].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut h);
    assert_eq!(
        decode_header(&h),
        DecodeError::InvalidField {
            command: Command::Reply,
            field: "request",
            value: u128::from(u64::MAX)
        }
    );
}

#[test]
fn authenticated_frames_refuse_other_keys_and_checksum_mode() {
    let wire = encode_all(&[message(b"secret")], &authenticated(1));
    for integrity in [authenticated(2), Integrity::Checksum] {
        let mut decoder = FrameDecoder::new(integrity.clone(), MAX);
        decoder.feed(&wire);
        let err = decoder.next_frame().unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::HeaderTag | DecodeError::HeaderChecksum { .. }
            ),
            "{err:?}"
        );
        assert_eq!(err.class(), ErrorClass::Unauthenticated);
    }
    let mut ok = FrameDecoder::new(authenticated(1), MAX);
    ok.feed(&wire);
    assert_eq!(ok.next_frame().unwrap(), Some(message(b"secret")));
}

/// A tampered body under authenticated frames fails without revealing tags.
#[test]
fn authenticated_body_tamper_is_a_body_tag_error() {
    let mut wire = encode_all(&[message(b"pay 10")], &authenticated(1));
    wire[HEADER_SIZE + 4] = b'9';
    let mut decoder = FrameDecoder::new(authenticated(1), MAX);
    decoder.feed(&wire);
    assert_eq!(
        decoder.next_frame().unwrap_err(),
        DecodeError::BodyTag { size: 6 }
    );
}

/// A body that happens to be valid header bytes cannot be spliced in as a
/// header: header and body tags use different keys.
#[test]
fn a_body_tag_never_verifies_as_a_header_tag() {
    let inner = encoded_header(&message(b""));
    let carrier = Frame {
        header: Header::new(9, Kind::Message { operation: 3 }),
        body: Bytes::copy_from_slice(&inner[layout::CHECKSUMMED]),
    };
    let integrity = authenticated(1);
    let encoded = carrier.encode(&integrity, MAX).unwrap();
    // Splice: the carrier's body tag as the checksum of a header made of its body.
    let mut spliced = [0u8; HEADER_SIZE];
    spliced[layout::CHECKSUM].copy_from_slice(&encoded.header[layout::CHECKSUM_BODY]);
    spliced[layout::CHECKSUMMED].copy_from_slice(&carrier.body);
    assert_eq!(
        Header::decode(&spliced, &integrity, MAX).unwrap_err(),
        DecodeError::HeaderTag
    );
}

/// Only bytes that verified are trusted: a change to the buffer, or to how
/// frames verify, after `verify_ahead` makes the decoder check again.
#[test]
fn frames_verified_ahead_are_checked_again_after_a_change() {
    let frames = [message(b"first"), message(b"second")];
    let integrity = authenticated(4);
    let wire = encode_all(&frames, &integrity);

    // A body changed through `buffer_mut` after it verified.
    let mut decoder = FrameDecoder::new(integrity.clone(), MAX);
    decoder.feed(&wire);
    decoder.verify_ahead();
    let body_at = HEADER_SIZE + 1;
    decoder.buffer_mut()[body_at] ^= 1;
    assert_eq!(decoder.next_frame(), Err(DecodeError::BodyTag { size: 5 }));

    // Other keys after the frames verified under the first ones.
    let mut decoder = FrameDecoder::new(integrity.clone(), MAX);
    decoder.feed(&wire);
    decoder.verify_ahead();
    decoder.set_integrity(authenticated(5));
    assert_eq!(decoder.next_frame(), Err(DecodeError::HeaderTag));

    // A smaller limit after they verified under a larger one.
    let mut decoder = FrameDecoder::new(integrity.clone(), MAX);
    decoder.feed(&wire);
    decoder.verify_ahead();
    decoder.set_max_message_size(layout::HEADER_SIZE_U32 + 2);
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::SizeTooLarge { .. })
    ));

    // Unchanged, both come out, and a third, fed later, is checked.
    let mut decoder = FrameDecoder::new(integrity.clone(), MAX);
    decoder.feed(&wire);
    decoder.verify_ahead();
    let mut third = encode_all(&[message(b"third")], &integrity);
    third[HEADER_SIZE] ^= 1;
    decoder.feed(&third);
    assert_eq!(decoder.next_frame(), Ok(Some(frames[0].clone())));
    assert_eq!(decoder.next_frame(), Ok(Some(frames[1].clone())));
    assert_eq!(decoder.next_frame(), Err(DecodeError::BodyTag { size: 5 }));
}

#[test]
fn switching_integrity_applies_from_the_next_header() {
    let mut wire = encode_all(&[message(b"plain")], &Integrity::Checksum);
    wire.extend(encode_all(&[message(b"tagged")], &authenticated(4)));
    let mut decoder = FrameDecoder::new(Integrity::Checksum, MAX);
    decoder.feed(&wire);
    assert_eq!(decoder.next_frame().unwrap(), Some(message(b"plain")));
    decoder.set_integrity(authenticated(4));
    assert_eq!(decoder.next_frame().unwrap(), Some(message(b"tagged")));
}

#[test]
fn the_decoded_body_shares_the_receive_buffer() {
    let wire = encode_all(&[message(b"zero-copy body")], &Integrity::Checksum);
    let mut decoder = FrameDecoder::new(Integrity::Checksum, MAX);
    decoder.buffer_mut().extend_from_slice(&wire);
    let base = decoder.buffer_mut().as_ptr() as usize;
    let frame = decoder.next_frame().unwrap().unwrap();
    assert_eq!(
        frame.body.as_ptr() as usize,
        base + HEADER_SIZE,
        "body was copied"
    );
    assert_eq!(&frame.body[..], b"zero-copy body");
}

#[test]
fn command_numbers_and_lanes_are_as_specified() {
    let numbers: Vec<u8> = Command::ALL.iter().map(|c| c.to_wire()).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<u8>>());
    let data: Vec<Command> = Command::ALL
        .iter()
        .copied()
        .filter(|c| !c.is_control())
        .collect();
    assert_eq!(data, [Command::Message, Command::Request, Command::Reply]);
    assert!(
        Command::ALL
            .iter()
            .all(|c| c.allows_body() != c.is_control())
    );
}
