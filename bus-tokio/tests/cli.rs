//! The `bus` command, run as a user would.

use std::process::{Command, Output};

fn bus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bus"))
        .args(args)
        .output()
        .expect("the bus binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help() {
    for command in [
        &["--help"][..],
        &["keygen", "--help"],
        &["node", "--help"],
        &["client", "--help"],
        &["demo", "--help"],
        &["bench", "--help"],
    ] {
        let out = bus(command);
        assert!(out.status.success(), "{command:?}");
        assert!(text(&out.stdout).contains("Usage"), "{command:?}");
    }
}

#[test]
fn keygen_prints_a_fresh_hex_key() {
    let (a, b) = (bus(&["keygen"]), bus(&["keygen"]));
    let (a, b) = (text(&a.stdout), text(&b.stdout));
    let a = a.trim();
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b.trim(), "two keys differ");
}

#[test]
fn keygen_writes_an_owner_only_file_and_never_overwrites() {
    let dir = std::env::temp_dir().join(format!("bus-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.key");
    let _ = std::fs::remove_file(&path);
    let path_text = path.to_str().unwrap();
    let out = bus(&["keygen", "--out", path_text]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let key = std::fs::read_to_string(&path).unwrap();
    let again = bus(&["keygen", "--out", path_text]);
    assert!(!again.status.success());
    let error = text(&again.stderr);
    assert_eq!(error.lines().count(), 1, "one line: {error}");
    assert!(
        error.starts_with("bus: error:") && error.contains("cluster.key"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key, "kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    // No key source given.
    let out = bus(&[
        "node",
        "--replica",
        "0",
        "--replicas",
        "3",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("key"), "{error}");
    // A malformed flag value names it.
    let out = bus(&["client", "--connect", "nowhere", "--key-env", "X"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nowhere"));
}

#[test]
fn the_demo_runs_every_step() {
    let out = bus(&["demo", "--messages", "2000", "--requests", "50"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for expected in [
        "authenticated",
        "messages delivered, each sender's in order",
        "correct replies",
        "answered from the cache (dedup hits 0 -> 1); executed once",
        "BadMac",
        "0 forced",
        "all steps passed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
