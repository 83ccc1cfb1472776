//! Replays every committed corpus through its target function on stable, so
//! targets cannot silently stop compiling or regress (no libFuzzer needed).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target} panicked on {}", path.display());
        count += 1;
    }
    count
}

#[test]
fn frame_decoder_corpus() {
    assert!(
        replay("frame_decoder", bus_fuzz::frame_decoder) >= 4,
        "seed corpus missing"
    );
}

/// The seeds really reach the decoder's success path: the committed
/// two-frame stream decodes to two frames in any chunking.
#[test]
fn frame_decoder_seeds_decode() {
    let data = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/frame_decoder/two-frames-chunked"),
    )
    .unwrap();
    let stream = &data[4..];
    let (frames, error) = bus_fuzz::decode_chunked(stream, &[1, 7, 200]);
    assert_eq!((frames.len(), error), (2, None));
}
