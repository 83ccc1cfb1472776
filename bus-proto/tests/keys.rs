//! Keys, key rings and MACs.

use bus_proto::crypto::mac::context;
use bus_proto::crypto::*;
use bus_proto::entropy::SeededEntropy;

const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

#[test]
fn hex_keys_parse_trimmed_and_case_insensitive() {
    let lower = Key::from_hex(HEX).unwrap();
    let upper = Key::from_hex(&format!("\t {}\r\n", HEX.to_uppercase())).unwrap();
    assert_eq!(lower, upper);
    let bytes: [u8; 32] = core::array::from_fn(|i| u8::try_from(i).unwrap());
    assert_eq!(lower, Key::from_bytes(bytes));
    assert_eq!(Key::from_hex(&lower.to_hex()).unwrap(), lower);
}

#[test]
fn bad_hex_names_the_offset_in_the_original_text_and_the_byte() {
    let mut text = format!("  {HEX}");
    text.replace_range(2 + 17..2 + 18, "g");
    match Key::from_hex(&text).unwrap_err() {
        KeyError::InvalidHex { offset, byte } => {
            assert_eq!((offset, byte), (19, b'g'));
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = Key::from_hex(&text).unwrap_err().to_string();
    assert!(err.contains("offset 19") && err.contains("0x67"), "{err}");
}

#[test]
fn wrong_lengths_are_named() {
    for (text, found) in [("", 0), ("abcd", 4), (&*format!("{HEX}00"), 66)] {
        match Key::from_hex(text).unwrap_err() {
            KeyError::Length { found: f } => assert_eq!(f, found),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Multi-byte characters are counted in bytes and never split.
    let with_unicode = format!("{}é", &HEX[..62]);
    assert!(Key::from_hex(&with_unicode).is_err());
}

#[test]
fn debug_never_prints_the_key() {
    let key = Key::from_hex(HEX).unwrap();
    let shown = format!("{key:?} {:?}", KeyRing::new(key.clone()));
    assert!(!shown.contains(&HEX[..16]), "{shown}");
    assert!(shown.contains(&key.fingerprint().to_string()));
    let mac = MacKey::derive(&key, context::HANDSHAKE);
    assert!(!format!("{mac:?}").contains(&HEX[..8]));
}

#[test]
fn fingerprints_differ_between_keys_and_are_stable() {
    let a = Key::from_bytes([1; 32]);
    let b = Key::from_bytes([2; 32]);
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint(), a.clone().fingerprint());
}

#[test]
fn generated_keys_come_from_the_entropy_source() {
    let a = Key::generate(&mut SeededEntropy::new(1));
    let b = Key::generate(&mut SeededEntropy::new(1));
    let c = Key::generate(&mut SeededEntropy::new(2));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn macs_are_bound_to_key_context_and_message() {
    let key = Key::from_bytes([7; 32]);
    let mac = MacKey::derive(&key, context::HANDSHAKE);
    let tag = mac.sign(&[b"cluster", b"dialer"]);
    mac.verify(&[b"cluster", b"dialer"], &tag).unwrap();
    mac.verify(&[b"clusterdialer"], &tag).unwrap(); // parts concatenate: fields must be fixed-size
    assert_eq!(
        mac.verify(&[b"cluster", b"dialeR"], &tag).unwrap_err(),
        MacError {
            purpose: context::HANDSHAKE
        }
    );
    let other_purpose = MacKey::derive(&key, context::SESSION);
    assert!(
        other_purpose
            .verify(&[b"cluster", b"dialer"], &tag)
            .is_err()
    );
    let other_key = MacKey::derive(&Key::from_bytes([8; 32]), context::HANDSHAKE);
    assert!(other_key.verify(&[b"cluster", b"dialer"], &tag).is_err());
}

#[test]
fn tags_compare_by_value() {
    let mut bytes = [9u8; 32];
    let a = Tag::from_bytes(bytes);
    assert_eq!(a, Tag::from_bytes(bytes));
    bytes[31] ^= 1;
    assert_ne!(a, Tag::from_bytes(bytes));
    let mut out = [0u8; 32];
    a.write_to(&mut out);
    assert_eq!(out, [9u8; 32]);
}

/// Hazard 11: a per-peer key replaces the cluster key for that peer only.
#[test]
fn per_peer_keys_override_the_cluster_key() {
    let cluster = Key::from_bytes([1; 32]);
    let own = Key::from_bytes([2; 32]);
    let ring =
        KeyRing::new(cluster.clone()).with_peer(PeerId::Replica(3), KeySet::new(own.clone()));
    assert_eq!(ring.signing_key(PeerId::Replica(3)), &own);
    assert_eq!(
        ring.verifying_keys(PeerId::Replica(3)).collect::<Vec<_>>(),
        [&own]
    );
    assert_eq!(ring.signing_key(PeerId::Replica(4)), &cluster);
    assert_eq!(ring.signing_key(PeerId::Client(3)), &cluster);
    assert_eq!(ring.peer_count(), 1);
}

/// Rotation: the previous key verifies but never signs.
#[test]
fn previous_key_verifies_but_never_signs() {
    let old = Key::from_bytes([1; 32]);
    let new = Key::from_bytes([2; 32]);
    let ring = KeyRing::new(new.clone()).with_previous(old.clone());
    let peer = PeerId::Client(77);
    assert_eq!(ring.signing_key(peer), &new);
    assert_eq!(ring.verifying_keys(peer).collect::<Vec<_>>(), [&new, &old]);
    let set = KeySet {
        current: new.clone(),
        previous: Some(old.clone()),
    };
    let ring = KeyRing::new(Key::from_bytes([5; 32])).with_peer(peer, set);
    assert_eq!(ring.verifying_keys(peer).collect::<Vec<_>>(), [&new, &old]);
}

mod loading {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn key_file(name: &str, content: &str, mode: u32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bus-proto-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn owner_only_key_file_loads() {
        let path = key_file("ok.key", &format!("{HEX}\n"), 0o600);
        assert_eq!(Key::from_file(&path).unwrap(), Key::from_hex(HEX).unwrap());
        assert_eq!(
            Key::load(None, Some(&path)).unwrap(),
            Key::from_hex(HEX).unwrap()
        );
    }

    #[test]
    fn group_or_world_readable_key_file_is_refused() {
        for mode in [0o640, 0o604, 0o660] {
            let path = key_file(&format!("open{mode:o}.key"), HEX, mode);
            match Key::from_file(&path).unwrap_err() {
                KeyError::Permissions { mode: m, path: p } => {
                    assert_eq!((m, p), (mode, path.clone()))
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                Key::from_file(&path)
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
        }
    }

    #[test]
    fn bad_key_file_content_names_the_file_and_offset() {
        let path = key_file("bad.key", &format!("x{}", &HEX[1..]), 0o600);
        let err = Key::from_file(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("bad.key") && text.contains("offset 0"),
            "{text}"
        );
    }

    #[test]
    fn missing_key_file_is_an_io_error_naming_the_path() {
        let err = Key::from_file(std::path::Path::new("/nonexistent/bus.key")).unwrap_err();
        assert!(matches!(err, KeyError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/bus.key"));
    }

    #[test]
    fn a_key_ring_file_holds_a_signing_key_and_during_a_rotation_a_verify_only_one() {
        let other = "ab".repeat(32);
        let one = key_file("ring1.key", &format!("{HEX}\n"), 0o600);
        let ring = KeyRing::from_file(&one).unwrap();
        let peer = PeerId::Replica(1);
        assert_eq!(ring.signing_key(peer), &Key::from_hex(HEX).unwrap());
        assert_eq!(ring.verifying_keys(peer).count(), 1);
        let two = key_file("ring2.key", &format!("\n{other}\n\n{HEX}\n"), 0o600);
        let ring = KeyRing::load(None, Some(&two)).unwrap();
        assert_eq!(ring.signing_key(peer), &Key::from_hex(&other).unwrap());
        let verifying: Vec<_> = ring.verifying_keys(peer).cloned().collect();
        let expected = [Key::from_hex(&other).unwrap(), Key::from_hex(HEX).unwrap()];
        assert_eq!(verifying, expected);

        let three = key_file("ring3.key", &format!("{HEX}\n{other}\n{HEX}\n"), 0o600);
        let err = KeyRing::from_file(&three).unwrap_err();
        assert!(err.to_string().contains("ring3.key"), "{err}");
        assert!(err.to_string().contains("found 3"), "{err}");
        let empty = key_file("ring0.key", "\n \n", 0o600);
        assert!(
            KeyRing::from_file(&empty)
                .unwrap_err()
                .to_string()
                .contains("found 0")
        );
        let bad = key_file("ringbad.key", &format!("{HEX}\n{}x\n", &other[1..]), 0o600);
        let err = KeyRing::from_file(&bad).unwrap_err().to_string();
        assert!(
            err.contains("ringbad.key") && err.contains("line 2"),
            "{err}"
        );
        let open = key_file("ringopen.key", HEX, 0o644);
        assert!(matches!(
            KeyRing::from_file(&open).unwrap_err(),
            KeyError::Permissions { mode: 0o644, .. }
        ));
    }

    #[test]
    fn oversized_files_and_non_files_are_refused_not_truncated() {
        let big = key_file("big.key", &format!("{HEX}\n{}", " ".repeat(5000)), 0o600);
        let err = KeyRing::from_file(&big).unwrap_err().to_string();
        assert!(
            err.contains("big.key") && err.contains("larger than 4096"),
            "{err}"
        );
        let dir = big.parent().unwrap().join("a-directory.key");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = Key::from_file(&dir).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn exactly_one_key_source_is_required() {
        let path = key_file("one.key", HEX, 0o600);
        assert!(matches!(
            Key::load(None, None).unwrap_err(),
            KeyError::Source { given: 0 }
        ));
        assert!(matches!(
            Key::load(Some("BUS_TEST_KEY_UNUSED"), Some(&path)).unwrap_err(),
            KeyError::Source { given: 2 }
        ));
    }

    const ENV: &str = "BUS_PROTO_TEST_KEY_ENV";

    /// Runs in a child process (below) with the variable set; on its own it
    /// checks the missing-variable error.
    #[test]
    fn environment_variable_child() {
        match std::env::var_os(ENV) {
            Some(_) => assert_eq!(
                Key::load(Some(ENV), None).unwrap(),
                Key::from_hex(HEX).unwrap()
            ),
            None => {
                let err = Key::from_env(ENV).unwrap_err();
                assert!(
                    matches!(err, KeyError::Env { .. }) && err.to_string().contains(ENV),
                    "{err}"
                );
            }
        }
    }

    /// Sets the variable for a child copy of this test binary instead of
    /// mutating this process's environment.
    #[test]
    fn environment_variable_source() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "loading::environment_variable_child", "--quiet"])
            .env(ENV, format!(" {HEX} "))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child test failed: {status}");
    }
}
