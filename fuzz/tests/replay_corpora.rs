//! Replays every committed corpus through its target function on stable, so
//! targets cannot silently stop compiling or regress (no libFuzzer needed).

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (path.display().to_string(), data)
        })
        .collect();
    files.sort();
    files
}

/// Every target has a seed corpus, and every file in it runs clean.
#[test]
fn every_corpus_replays_without_a_failure() {
    for &(target, run) in bus_fuzz::TARGETS {
        let files = corpus(target);
        assert!(files.len() >= 3, "{target}: seed corpus missing");
        for (path, data) in files {
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{target} failed on {path}");
        }
    }
}

/// Every libFuzzer binary has its entry in `TARGETS`, so none is skipped.
#[test]
fn every_fuzz_binary_is_replayed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().path();
        let name = name.file_stem().unwrap().to_str().unwrap().to_owned();
        assert!(
            bus_fuzz::TARGETS.iter().any(|(t, _)| *t == name),
            "{name} is not in TARGETS"
        );
    }
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
