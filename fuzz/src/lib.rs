//! Fuzz target bodies, shared by the libFuzzer binaries in `fuzz_targets/`
//! and by the corpus replay test that runs on stable in CI.

use bus_proto::wire::{Frame, FrameDecoder, Integrity};

/// Largest frame the fuzzed decoders accept (small, so bodies complete).
pub const FUZZ_MAX_MESSAGE: u32 = 64 << 10;

/// Decodes `stream` with a fresh decoder fed in `chunks` (sizes cycle; a 0
/// chunk size is read as 1), collecting frames until the stream ends or fails.
pub fn decode_chunked(
    stream: &[u8],
    chunks: &[usize],
) -> (Vec<Frame>, Option<bus_proto::wire::DecodeError>) {
    let mut decoder = FrameDecoder::new(Integrity::Checksum, FUZZ_MAX_MESSAGE);
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (now, later) = rest.split_at(n);
        rest = later;
        decoder.feed(now);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Frame decoder target: the first byte picks how many chunk sizes follow
/// (one byte each); the rest is the stream. Whole and chunked decoding must
/// agree on frames and on the error.
pub fn frame_decoder(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (chunk_bytes, stream) = rest.split_at(n);
    let chunks: Vec<usize> = chunk_bytes.iter().map(|&b| usize::from(b)).collect();
    let whole = decode_chunked(stream, &[stream.len().max(1)]);
    let chunked = decode_chunked(stream, if chunks.is_empty() { &[1] } else { &chunks });
    assert_eq!(whole, chunked, "chunking changed the decoded frames");
}
