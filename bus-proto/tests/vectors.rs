//! The test vectors printed in `PROTOCOL.md` match what the code produces,
//! and decode back to the frames they were made from.

#[allow(dead_code, unreachable_pub)]
mod support {
    pub mod vectors;
}
use bus_proto::wire::FrameDecoder;
use support::vectors;

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

#[test]
fn protocol_md_vectors_match_the_code() {
    let documented = vectors::parse(PROTOCOL_MD);
    let computed = vectors::all();
    let names: Vec<&str> = documented.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<&str> = computed.iter().map(|v| v.name).collect();
    assert_eq!(
        names, expected,
        "PROTOCOL.md lists other vectors than the code"
    );
    for ((name, bytes), v) in documented.iter().zip(&computed) {
        assert_eq!(
            hex::encode(bytes),
            hex::encode(&v.bytes),
            "vector {name} differs; regenerate with `cargo run -p bus-proto --example vectors`"
        );
    }
}

#[test]
fn documented_frames_decode_to_their_inputs() {
    for (name, bytes) in vectors::parse(PROTOCOL_MD) {
        let Some(v) = vectors::all().into_iter().find(|v| v.name == name) else {
            panic!("unknown vector {name}");
        };
        let Some((frame, integrity)) = v.frame else {
            continue;
        };
        let mut decoder = FrameDecoder::new(integrity, vectors::MAX);
        decoder.feed(&bytes);
        assert_eq!(decoder.next_frame().unwrap(), Some(frame), "vector {name}");
        assert_eq!(decoder.buffered(), 0, "vector {name} has trailing bytes");
    }
}
