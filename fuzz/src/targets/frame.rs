//! The frame decoder and the header parser.

use super::FUZZ_MAX_MESSAGE;
use bus_proto::wire::layout::{CHECKSUM, CHECKSUM_BODY, CHECKSUMMED, HEADER_SIZE, HEADER_SIZE_U32};
use bus_proto::wire::{DecodeError, Frame, FrameDecoder, Header, Integrity};
use bytes::Bytes;

/// Decodes `stream` with a fresh decoder fed in `chunks` (sizes cycle; a 0
/// chunk size is read as 1), collecting frames until the stream ends or fails.
pub fn decode_chunked(stream: &[u8], chunks: &[usize]) -> (Vec<Frame>, Option<DecodeError>) {
    decode_chunked_with(stream, chunks, false)
}

/// [`decode_chunked`], verifying each chunk's frames ahead first (as a
/// socket task does outside its lock) if `ahead`.
fn decode_chunked_with(
    stream: &[u8],
    chunks: &[usize],
    ahead: bool,
) -> (Vec<Frame>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new(Integrity::Checksum, FUZZ_MAX_MESSAGE);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (now, later) = rest.split_at(n);
        rest = later;
        decoder.feed(now);
        if ahead {
            decoder.verify_ahead();
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
        // Bounded: at most one partial frame is buffered.
        assert!(decoder.buffered() < FUZZ_MAX_MESSAGE as usize + n);
    }
    (frames, None)
}

/// Frame decoder: the first byte picks how many chunk sizes follow (one byte
/// each); the rest is the stream. Whole and chunked decoding, and chunked
/// decoding that verifies ahead, must agree on the frames and on the error.
pub fn frame_decoder(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (chunk_bytes, stream) = rest.split_at(n);
    let chunks: Vec<usize> = chunk_bytes.iter().map(|&b| usize::from(b)).collect();
    let whole = decode_chunked(stream, &[stream.len().max(1)]);
    let chunks = if chunks.is_empty() { &[1][..] } else { &chunks };
    let chunked = decode_chunked(stream, chunks);
    assert_eq!(whole, chunked, "chunking changed the decoded frames");
    let ahead = decode_chunked_with(stream, chunks, true);
    assert_eq!(whole, ahead, "verifying ahead changed the decoded frames");
}

/// Header parse and per-command validation. The first byte's low bit asks
/// the target to fix up the header checksum, so the fuzzer reaches the
/// checks behind it; the next 256 bytes (zero-padded) are the header.
///
/// A header that parses must re-encode to the same bytes outside the two
/// integrity fields (one encoding per header: nothing malleable), and the
/// re-encoded header must parse to the same value.
pub fn header(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut h = [0u8; HEADER_SIZE];
    let n = rest.len().min(HEADER_SIZE);
    h[..n].copy_from_slice(&rest[..n]);
    if flags & 1 == 1 {
        let sum = Integrity::Checksum.header_sum(&h[CHECKSUMMED]);
        h[CHECKSUM].copy_from_slice(&sum.to_le_bytes());
    }
    let Ok((parsed, size)) = Header::decode(&h, &Integrity::Checksum, FUZZ_MAX_MESSAGE) else {
        return;
    };
    assert!((HEADER_SIZE_U32..=FUZZ_MAX_MESSAGE).contains(&size));
    let body = Bytes::from(vec![0u8; size as usize - HEADER_SIZE]);
    let frame = Frame {
        header: parsed.clone(),
        body,
    };
    let encoded = match frame.encode(&Integrity::Checksum, FUZZ_MAX_MESSAGE) {
        Ok(encoded) => encoded,
        Err(e) => panic!("a parsed header does not re-encode: {e}"),
    };
    let again: &[u8; HEADER_SIZE] = &encoded.header;
    let outside = |b: &[u8; HEADER_SIZE]| {
        let mut b = *b;
        b[CHECKSUM].fill(0);
        b[CHECKSUM_BODY].fill(0);
        b
    };
    assert_eq!(outside(again), outside(&h), "two encodings of one header");
    assert_eq!(
        Header::decode(again, &Integrity::Checksum, FUZZ_MAX_MESSAGE),
        Ok((parsed, size))
    );
}
