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
        "prepare_oks received by replica 0, each naming its op",
        "correct replies",
        "answered from the cache (dedup hits 0 -> 1); executed once",
        "the process is killed (SIGKILL) before the reply",
        "(resent from the outbox): transferred",
        "answered from the cache (dedup hits 1 -> 2); executed once",
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

/// A fresh, empty directory for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bus-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `bus node` whose stderr is read line by line on a thread.
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_bus"))
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the bus binary runs");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line from now on containing `needle`; panics naming it
    /// (and what was printed) if none comes within a generous deadline.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?}; printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The address the node printed it listens on next.
    fn listening_address(&mut self) -> String {
        let line = self.wait_for("listening on ");
        let rest = line.split("listening on ").nth(1).unwrap_or_default();
        rest.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// A line containing `needle`, printed already or from now on (for
    /// lines whose order against others is not fixed).
    fn saw_or_wait_for(&mut self, needle: &str) -> String {
        match self.seen.iter().find(|line| line.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hazard 34: a service manager stops `bus node` with SIGTERM; it closes
/// every connection with a `close` (the peer sees `Shutdown`, not a
/// reset or a liveness timeout) and exits 0. SIGINT does the same.
#[test]
#[cfg(unix)]
fn sigterm_and_sigint_stop_a_node_gracefully() {
    let dir = std::env::temp_dir().join(format!("bus-cli-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("cluster.key");
    let _ = std::fs::remove_file(&key);
    assert!(
        bus(&["keygen", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let key = key.to_str().unwrap();
    let node = |replica: &str, peer: Option<&str>| {
        let mut args = vec![
            "node",
            "--replica",
            replica,
            "--replicas",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            key,
        ];
        if let Some(peer) = peer {
            args.extend(["--peer", peer]);
        }
        Running::start(&args)
    };
    for signal in ["TERM", "INT"] {
        let mut one = node("1", None);
        let address = one.listening_address();
        let mut zero = node("0", Some(&format!("1={address}")));
        one.wait_for("peer connected");
        zero.wait_for("peer connected");
        zero.signal(signal);
        zero.wait_for("shutting down");
        let status = zero.child.wait().expect("exits");
        assert!(status.success(), "SIG{signal}: {status:?}");
        let closed = one.wait_for("peer disconnected");
        assert!(closed.contains("Shutdown"), "SIG{signal}: {closed}");
        one.signal(signal);
        assert!(one.child.wait().expect("exits").success());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The at-most-once guarantee across a crash: `bus client --identity` is
/// killed with SIGKILL while the node executes its request, and started
/// again under the same identity file. It resends the request from its
/// outbox, under its number, and gets the one reply: from the dedup
/// window's cache when the execution ended while it was down, or routed to
/// its new connection when the execution ends after the resend arrived.
/// The node's application counts executions: one.
#[test]
#[cfg(unix)]
fn a_client_killed_mid_request_and_restarted_under_its_identity_runs_it_once() {
    use bus_tokio::bus_proto::config::Config;
    use bus_tokio::bus_proto::crypto::{Key, KeyRing};
    use bus_tokio::bus_proto::node::{NodeEvent, NodeParams, ReplyError};
    use bus_tokio::{Node, NodeOptions, OsEntropy};
    use std::time::Duration;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let key = Key::generate(&mut OsEntropy);
        let config = Config::default().validate().unwrap();
        let params = NodeParams {
            cluster: 0xb05,
            replica: 0,
            replica_count: 1,
            accept_clients: true,
        };
        let (node, mut events) = Node::start(
            &config,
            params,
            KeyRing::new(key.clone()),
            NodeOptions::default(),
        )
        .unwrap();
        let address = node.listen("127.0.0.1:0").await.unwrap();
        let dir = std::env::temp_dir().join(format!("bus-cli-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();

        for (round, reply_while_down) in [true, false].into_iter().enumerate() {
            let identity = dir.join(format!("client-{round}.id"));
            let message = format!("transfer {round}");
            let client = |count: &str| {
                let mut command = Command::new(env!("CARGO_BIN_EXE_bus"));
                command
                    .args(["client", "--cluster", "b05", "--key-env", "BUS_TEST_KEY"])
                    .args(["--connect", &address.to_string(), "--count", count])
                    .args(["--message", &message, "--identity"])
                    .arg(&identity)
                    .env("BUS_TEST_KEY", &*key.to_hex())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                command
            };
            let mut executions = 0;
            let mut first = client("1").spawn().unwrap();
            // The node's application starts executing the request, and
            // does not finish before the client is gone.
            let request = loop {
                let event = tokio::time::timeout(Duration::from_secs(30), events.recv())
                    .await
                    .expect("the request arrives")
                    .expect("events");
                if let NodeEvent::Request { request, body, .. } = event {
                    assert_eq!(body, message.as_bytes());
                    executions += 1;
                    break request;
                }
            };
            first.kill().unwrap(); // SIGKILL
            assert!(!first.wait().unwrap().success());
            let gone = async {
                while node.inspect(|n| n.client_connection(request.client).is_some()) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), gone)
                .await
                .expect("the killed client's connection closes");
            if reply_while_down {
                let answered = node.reply(request, "done".into());
                assert!(
                    matches!(answered, Err(ReplyError::Disconnected { cached: true, .. })),
                    "{answered:?}"
                );
            }
            let before = node.stats();
            let second = client("0").spawn().unwrap();
            if !reply_while_down {
                let resent = async {
                    while node.stats().duplicates_dropped == before.duplicates_dropped {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(30), resent)
                    .await
                    .expect("the restarted client resends");
                node.reply(request, "done".into()).unwrap();
            }
            let output = tokio::task::spawn_blocking(|| second.wait_with_output())
                .await
                .unwrap()
                .unwrap();
            let stdout = text(&output.stdout);
            assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
            assert!(
                stdout.contains(&format!(
                    "reply to request {} (resent from the outbox): done",
                    request.request
                )),
                "{stdout}"
            );
            // Nothing else reached the application: executed once.
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(200), events.recv()).await
            {
                if let NodeEvent::Request { .. } = event {
                    executions += 1;
                }
            }
            assert_eq!(executions, 1, "round {round}");
            let after = node.stats();
            if reply_while_down {
                assert_eq!(after.dedup_hits, before.dedup_hits + 1);
            }
            assert!(
                !dir.join(format!("client-{round}.id.outbox")).exists(),
                "the answered request left the outbox"
            );
        }
        node.shutdown(Duration::from_secs(2)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

/// `bus cert` makes a development certificate; a node listens on TLS and
/// WSS with it (and TCP), and `bus client` gets replies over each,
/// trusting that certificate.
#[test]
#[cfg(unix)]
fn a_node_serves_clients_over_tcp_tls_ws_and_wss_with_a_development_certificate() {
    let dir = scratch("tls");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (cert, key_pem, key) = (path("cert.pem"), path("key.pem"), path("cluster.key"));
    let made = bus(&["cert", "--cert-out", &cert, "--key-out", &key_pem]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_pem).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the private key is readable by its owner only"
    );
    let again = bus(&["cert", "--cert-out", &cert, "--key-out", &key_pem]);
    assert!(!again.status.success(), "bus cert overwrote a key");
    assert!(bus(&["keygen", "--out", &key]).status.success());

    let mut node = Running::start(&[
        "node",
        "--replica",
        "0",
        "--replicas",
        "1",
        "--key-file",
        &key,
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "tls://127.0.0.1:0",
        "--listen",
        "ws://127.0.0.1:0/bus",
        "--listen",
        "wss://127.0.0.1:0/bus",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key_pem,
    ]);
    let mut targets = Vec::new();
    for _ in 0..4 {
        let line = node.wait_for("listening on ");
        let address = line.split("listening on ").nth(1).unwrap();
        let address = address.split_whitespace().next().unwrap().to_owned();
        let scheme = line
            .split('(')
            .nth(1)
            .unwrap()
            .split("://")
            .next()
            .unwrap()
            .to_owned();
        let path = if scheme.starts_with("ws") { "/bus" } else { "" };
        targets.push(format!("{scheme}://{address}{path}"));
    }
    for target in &targets {
        let out = bus(&[
            "client",
            "--connect",
            target,
            "--key-file",
            &key,
            "--tls-ca",
            &cert,
            "--count",
            "2",
            "--message",
            "over the wire",
        ]);
        assert!(out.status.success(), "{target}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("reply to request 1: over the wire"),
            "{target}: {stdout}"
        );
    }
    // A TLS target without roots to trust is refused in one line.
    let tls = targets.iter().find(|t| t.starts_with("tls://")).unwrap();
    let out = bus(&["client", "--connect", tls, "--key-file", &key]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--tls-ca"),
        "{}",
        text(&out.stderr)
    );
    node.signal("TERM");
    assert!(node.child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_prints_the_defaults_and_checks_a_file() {
    use bus_tokio::bus_proto::config::Config;
    let out = bus(&["config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let defaults = text(&out.stdout);
    assert_eq!(
        Config::from_toml(&defaults).expect("the printed defaults parse"),
        Config::default().validate().expect("valid defaults")
    );
    assert!(
        defaults
            .contains("# Idle time before a ping is sent. >= 10.\nheartbeat_interval_ms = 1000\n")
    );
    // A partial file comes back complete; a bad one is refused, named.
    let dir = std::env::temp_dir().join(format!("bus-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let partial = dir.join("partial.toml");
    std::fs::write(&partial, "max_batch = 32\n").expect("write");
    let out = bus(&["config", "--check", partial.to_str().expect("a path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let full = text(&out.stdout);
    assert!(
        full.contains("\nmax_batch = 32\n") && full.contains("\nmax_connections = 1024\n"),
        "{full}"
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "heartbeat_interval_ms = 0\n").expect("write");
    let out = bus(&["config", "--check", bad.to_str().expect("a path")]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("heartbeat_interval_ms"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Live key rotation from the command line: `bus node` reads its key file
/// again on SIGHUP, and new handshakes use what it holds, while a file it
/// cannot read keeps the keys in use.
#[test]
#[cfg(unix)]
fn sighup_reloads_the_key_file_for_new_handshakes() {
    let dir = scratch("rotate");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let (ring, old, new) = (path("ring.key"), path("old.key"), path("new.key"));
    for file in [&ring, &old, &new] {
        assert!(bus(&["keygen", "--out", file]).status.success());
    }
    std::fs::copy(&old, &ring).unwrap();
    let hex = |file: &str| std::fs::read_to_string(file).unwrap().trim().to_owned();
    let (old_hex, new_hex) = (hex(&old), hex(&new));

    let mut node = Running::start(&[
        "node",
        "--replica",
        "0",
        "--replicas",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        &ring,
    ]);
    let address = node.listening_address();
    let served = |key: &str| {
        let out = bus(&["client", "--connect", &address, "--key-file", key]);
        out.status.success()
    };
    let rotate = |node: &mut Running, content: String, expect: &str| {
        std::fs::write(&ring, content).unwrap();
        node.signal("HUP");
        node.wait_for(expect)
    };
    assert!(served(&old) && !served(&new), "before: the old key only");

    let reloaded = rotate(
        &mut node,
        format!("{old_hex}\n{new_hex}\n"),
        "keys reloaded",
    );
    assert!(reloaded.contains("verify-only"), "{reloaded}");
    assert!(served(&old) && served(&new), "phase 1: both keys");
    rotate(
        &mut node,
        format!("{new_hex}\n{old_hex}\n"),
        "keys reloaded",
    );
    assert!(served(&old) && served(&new), "phase 2: both keys");
    let reloaded = rotate(&mut node, format!("{new_hex}\n"), "keys reloaded");
    assert!(!reloaded.contains("verify-only"), "{reloaded}");
    assert!(!served(&old) && served(&new), "phase 3: the new key only");

    let kept = rotate(&mut node, "not a key\n".into(), "keys kept");
    assert!(kept.contains("line 1"), "{kept}");
    assert!(!served(&old) && served(&new), "a bad file changes nothing");
    node.signal("TERM");
    assert!(node.child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bus node --metrics ADDR` serves Prometheus text that real scrapers
/// read: curl, and Python's standard HTTP client. The counters follow
/// what the node did (three requests from a client) and each peer's
/// connection shows up with its labels.
#[test]
#[cfg(unix)]
fn metrics_are_scraped_by_curl_and_python() {
    let dir = scratch("metrics");
    let key = dir.join("cluster.key").to_str().unwrap().to_owned();
    assert!(bus(&["keygen", "--out", &key]).status.success());
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let metrics = free_port();
    let mut one = Running::start(&[
        "node",
        "--replica",
        "1",
        "--replicas",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        &key,
    ]);
    let address = one.listening_address();
    let mut zero = Running::start(&[
        "node",
        "--replica",
        "0",
        "--replicas",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        &key,
        "--peer",
        &format!("1={address}"),
        "--metrics",
        &metrics,
    ]);
    let zero_address = zero.listening_address();
    zero.wait_for(&format!("metrics on http://{metrics}/metrics"));
    zero.saw_or_wait_for("peer connected");
    let out = bus(&[
        "client",
        "--connect",
        &zero_address,
        "--key-file",
        &key,
        "--count",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let url = format!("http://{metrics}/metrics");
    let curl = || {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", &url])
            .output()
            .expect("curl runs (CI installs it)");
        assert!(out.status.success(), "curl: {}", text(&out.stderr));
        text(&out.stdout)
    };
    // Published every second: wait for the requests to show.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let page = loop {
        let page = curl();
        if page.contains("bus_requests_total{replica=\"0\"} 3") {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never 3 requests:\n{page}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for expected in [
        "# TYPE bus_requests_total counter",
        "bus_peer_connected{replica=\"0\",peer=\"1\"} 1",
        "bus_connections{replica=\"0\",state=\"established\"} 1",
        "bus_dials_total{replica=\"0\"} 1",
        "bus_handshakes_failed_total{replica=\"0\"} 0",
        "bus_peer_rtt_seconds{replica=\"0\",peer=\"1\"}",
        "bus_peer_sent_bytes{replica=\"0\",peer=\"1\"}",
    ] {
        assert!(page.contains(expected), "missing {expected:?} in:\n{page}");
    }

    // Python's standard library parses the same page line by line into
    // samples: every sample line is NAME{LABELS} VALUE with a number.
    let script = r##"
import sys, urllib.request
page = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
samples = {}
for line in page.splitlines():
    if not line or line.startswith("#"):
        continue
    name, value = line.rsplit(" ", 1)
    samples[name] = float(value)
print(len(samples), samples['bus_requests_total{replica="0"}'], samples['bus_peer_connected{replica="0",peer="1"}'])
"##;
    let out = Command::new("python3")
        .args(["-c", script, &url])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python: {}", text(&out.stderr));
    let printed = text(&out.stdout);
    let fields: Vec<&str> = printed.split_whitespace().collect();
    assert!(fields[0].parse::<u32>().unwrap() >= 20, "{printed}");
    assert_eq!(&fields[1..], ["3.0", "1.0"], "{printed}");

    // A port already taken is a one-line error naming it.
    let taken = Command::new(env!("CARGO_BIN_EXE_bus"))
        .args([
            "node",
            "--replica",
            "1",
            "--replicas",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--key-file",
            &key,
            "--metrics",
            &metrics,
        ])
        .output()
        .unwrap();
    assert!(!taken.status.success());
    assert!(
        text(&taken.stderr).contains(&metrics),
        "{}",
        text(&taken.stderr)
    );

    zero.signal("TERM");
    assert!(zero.child.wait().unwrap().success());
    one.signal("TERM");
    assert!(one.child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
