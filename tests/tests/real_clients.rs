//! The TLS transport against clients nobody here wrote: `openssl s_client`
//! (protocol version, ALPN, early data, the exporter) and a Python bus
//! client on pyOpenSSL (`bus-proto/tests/interop/bus_client.py`, written
//! from PROTOCOL.md), whose handshake MACs cover OpenSSL's exporter; the
//! WebSocket transport against Python `websockets` and headless Chromium;
//! QUIC against aioquic (`quic_cases.py`).
//!
//! The tools must be installed; `.ci/run` installs them and sets
//! `BUS_INTEROP_TESTS=1`, which turns a missing tool into a failure.
//! Elsewhere a missing tool skips the test with a message.

use bus_proto::config::ValidConfig;
use bus_proto::connection::{CloseCause, Deadline};
use bus_proto::crypto::{Key, KeyRing};
use bus_proto::host::NodeOptions;
use bus_proto::node::NodeEvent;
use bus_proto::transport::BindingPolicy;
use bus_proto::transport::ws::WsServer;
use bus_tests::cluster::params;
use bus_tests::tls::Identity;
use bus_tests::{CLUSTER, PATIENCE, config};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: [u8; 32] = [0x5a; 32];

/// Whether `program` runs; a failure when CI requires the interop tests.
fn available(program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("BUS_INTEROP_TESTS").is_none(),
            "BUS_INTEROP_TESTS is set but `{program} {}` does not run",
            args.join(" ")
        );
        eprintln!("skipped: `{program}` is not available");
    }
    ok
}

fn python_ready() -> bool {
    available(
        "python3",
        &["-c", "import OpenSSL, xxhash, blake3, websockets"],
    )
}

/// A node on a tokio runtime of its own, listening over TLS, echoing every
/// request, recording handshake failures.
struct EchoNode {
    runtime: tokio::runtime::Runtime,
    node: bus_tokio::Node,
    address: SocketAddr,
    failures: Arc<Mutex<Vec<CloseCause>>>,
    dir: PathBuf,
}

impl EchoNode {
    /// Listening over TLS with `policy`.
    fn start(policy: BindingPolicy, config: &ValidConfig) -> EchoNode {
        Self::start_with(config, |identity| identity.server(policy).transport())
    }

    /// Listening over the transport `listen` makes from a fresh
    /// certificate for `localhost`.
    fn start_with(
        config: &ValidConfig,
        listen: impl FnOnce(&Identity) -> bus_proto::host::Transport,
    ) -> EchoNode {
        let identity = Identity::new(&["localhost"]);
        let transport = listen(&identity);
        let dir = std::env::temp_dir().join(format!(
            "bus-real-clients-{}-{}",
            std::process::id(),
            bus_tokio::Client::random_id()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("cert.pem"), &identity.cert_pem).expect("write cert");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (node, address) = runtime.block_on(async {
            let (node, mut events) = bus_tokio::Node::start(
                config,
                params(0, 1),
                KeyRing::new(Key::from_bytes(KEY)),
                NodeOptions::default(),
            )
            .expect("node starts");
            let address = node
                .listen_via("127.0.0.1:0", transport)
                .await
                .expect("listen");
            let (echo, failures) = (node.clone(), failures.clone());
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    match event {
                        // The body and the application header come back.
                        NodeEvent::Request {
                            request, app, body, ..
                        } => {
                            let _ = echo.reply_with(request, app, body);
                        }
                        NodeEvent::HandshakeFailed { cause, .. } => {
                            failures.lock().expect("lock").push(cause);
                        }
                        _ => {}
                    }
                }
            });
            (node, address)
        });
        EchoNode {
            runtime,
            node,
            address,
            failures,
            dir,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// Waits until a handshake failure was recorded, and returns it.
    fn failure(&self) -> CloseCause {
        let started = std::time::Instant::now();
        loop {
            if let Some(cause) = self.failures.lock().expect("lock").first() {
                return cause.clone();
            }
            assert!(
                started.elapsed() < PATIENCE,
                "no handshake failure within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for EchoNode {
    fn drop(&mut self) {
        self.runtime
            .block_on(self.node.shutdown(Duration::from_secs(2)));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `openssl s_client` against `node` with `extra` options, its input
/// `stdin` (then EOF, which makes it send close_notify and exit).
fn s_client(node: &EchoNode, extra: &[&str], stdin: &[u8]) -> Output {
    let connect = node.address.to_string();
    let cert = node.cert();
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-servername", "localhost"])
        .arg("-CAfile")
        .arg(&cert)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write to openssl");
    child.wait_with_output().expect("openssl finishes")
}

/// What a tool printed, also echoed to the test's (captured) output.
fn text(output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("--- {}\n{text}", output.status);
    text
}

#[test]
fn openssl_s_client_agrees_tls13_and_alpn_and_exports_a_binding() {
    if !available("openssl", &["version"]) {
        return;
    }
    let node = EchoNode::start(BindingPolicy::TlsExporter, &config());
    let output = s_client(
        &node,
        &[
            "-tls1_3",
            "-alpn",
            "bus/1",
            "-keymatexport",
            "EXPORTER-Channel-Binding",
            "-keymatexportlen",
            "32",
        ],
        b"",
    );
    let out = text(&output);
    assert!(out.contains("TLSv1.3"), "not TLS 1.3:\n{out}");
    assert!(
        out.contains("ALPN protocol: bus/1"),
        "ALPN not agreed:\n{out}"
    );
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "not verified:\n{out}"
    );
    assert!(
        out.contains("Keying material:"),
        "no exporter value:\n{out}"
    );
    // A TLS session that ends before the bus hello: the node closed it as
    // a handshake that never finished, not as an error in TLS.
    assert!(matches!(
        node.failure(),
        CloseCause::Reset | CloseCause::Timeout(Deadline::Handshake | Deadline::Hello)
    ));
}

/// `openssl s_client` exports keying material with the binding's label;
/// a `hello` bound to exactly that value, sent through s_client's TLS
/// session, passes the node's MAC check (the node then waits for a
/// `confirm` that never comes: a handshake timeout), while the same hello
/// with one bit of the binding flipped is refused `BadMac`. So OpenSSL's
/// exporter and the node's binding are the same 32 bytes.
#[test]
fn openssl_s_client_exported_keying_material_is_the_nodes_binding() {
    if !available("openssl", &["version"]) {
        return;
    }
    for flip in [false, true] {
        let node = EchoNode::start(BindingPolicy::TlsExporter, &config());
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &node.address.to_string()])
            .args(["-servername", "localhost", "-tls1_3", "-alpn", "bus/1"])
            .args([
                "-keymatexport",
                "EXPORTER-Channel-Binding",
                "-keymatexportlen",
                "32",
            ])
            .args(["-ign_eof", "-nocommands"])
            .arg("-CAfile")
            .arg(node.cert())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl runs");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut exported = None;
        let mut line = Vec::new();
        while exported.is_none() {
            line.clear();
            let n = std::io::BufRead::read_until(&mut stdout, b'\n', &mut line).expect("read");
            assert!(n > 0, "s_client printed no keying material");
            let text = String::from_utf8_lossy(&line);
            if let Some(hex_value) = text.trim().strip_prefix("Keying material:") {
                let bytes = hex::decode(hex_value.trim()).expect("hex keying material");
                exported = Some(<[u8; 32]>::try_from(bytes).expect("32 bytes"));
            }
        }
        let mut binding = exported.expect("keying material");
        if flip {
            binding[0] ^= 1;
        }
        let hello = bus_tests::attack::bound_hello_bytes(
            &config(),
            &KeyRing::new(Key::from_bytes(KEY)),
            0x5c11e47,
            0,
            bus_proto::handshake::Binding::from_bytes(binding),
        );
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&hello).expect("hello to s_client");
        let cause = node.failure();
        let _ = child.kill();
        let _ = child.wait();
        match flip {
            false => assert!(
                matches!(cause, CloseCause::Timeout(Deadline::Handshake)),
                "the hello bound to s_client's keying material: {cause}"
            ),
            true => assert_eq!(
                cause,
                CloseCause::Refused(bus_proto::wire::RejectStatus::BadMac),
                "a binding one bit off"
            ),
        }
    }
}

#[test]
fn openssl_s_client_offering_tls12_only_is_refused() {
    if !available("openssl", &["version"]) {
        return;
    }
    let node = EchoNode::start(BindingPolicy::TlsExporter, &config());
    let output = s_client(&node, &["-tls1_2", "-alpn", "bus/1"], b"");
    let out = text(&output);
    assert!(!output.status.success(), "TLS 1.2 was accepted:\n{out}");
    assert!(
        out.contains("protocol version"),
        "no protocol_version alert:\n{out}"
    );
}

#[test]
fn openssl_s_client_with_another_alpn_is_refused() {
    if !available("openssl", &["version"]) {
        return;
    }
    let node = EchoNode::start(BindingPolicy::TlsExporter, &config());
    let output = s_client(&node, &["-tls1_3", "-alpn", "h2"], b"");
    let out = text(&output);
    assert!(!output.status.success(), "ALPN h2 was accepted:\n{out}");
    assert!(
        out.contains("no application protocol"),
        "no ALPN alert:\n{out}"
    );
}

#[test]
fn openssl_s_client_without_alpn_is_closed_by_the_node() {
    if !available("openssl", &["version"]) {
        return;
    }
    // A long handshake budget: the close must come from the ALPN check.
    let mut config = bus_tests::quick();
    config.handshake_timeout = Duration::from_secs(60);
    config.hello_timeout = Duration::from_secs(60);
    let config = config.validate().expect("valid config");
    let node = EchoNode::start(BindingPolicy::TlsExporter, &config);
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &node.address.to_string(), "-tls1_3"])
        .arg("-CAfile")
        .arg(node.cert())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    // Its input stays open: it exits only because the node closed.
    let stdin = child.stdin.take();
    assert_eq!(node.failure(), CloseCause::Reset);
    let output = child.wait_with_output().expect("openssl finishes");
    drop(stdin);
    assert!(
        text(&output).contains("No ALPN negotiated"),
        "{}",
        text(&output)
    );
}

#[test]
fn openssl_s_client_early_data_is_never_accepted() {
    if !available("openssl", &["version"]) {
        return;
    }
    let node = EchoNode::start(BindingPolicy::TlsExporter, &config());
    let session = node.dir.join("session.pem");
    let early = node.dir.join("early.bin");
    std::fs::write(&early, [0u8; 256]).expect("write early data");
    let session_arg = session.to_string_lossy().into_owned();
    let early_arg = early.to_string_lossy().into_owned();
    let first = s_client(
        &node,
        &["-tls1_3", "-alpn", "bus/1", "-sess_out", &session_arg],
        b"",
    );
    let out = text(&first);
    assert!(out.contains("TLSv1.3"), "{out}");
    // No ticket is issued, so a client has nothing to send 0-RTT under.
    assert!(
        !out.contains("New Session Ticket"),
        "a ticket was issued:\n{out}"
    );
    // Should a session have been written anyway, it must not resume.
    if session.exists() {
        let second = s_client(
            &node,
            &[
                "-tls1_3",
                "-alpn",
                "bus/1",
                "-sess_in",
                &session_arg,
                "-early_data",
                &early_arg,
            ],
            b"",
        );
        let out = text(&second);
        assert!(!out.contains("Early data was accepted"), "{out}");
        assert!(
            !out.contains("Reused, TLSv1.3"),
            "the session resumed:\n{out}"
        );
    }
}

/// `python3` running `bus-proto/tests/interop/<name>` with the cluster and
/// key every script takes.
fn interop_script(name: &str) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bus-proto/tests/interop")
        .join(name);
    let mut command = Command::new("python3");
    command
        .arg(script)
        .args(["--cluster", &CLUSTER.to_string()])
        .args(["--key", &hex::encode(KEY)]);
    command
}

/// Runs the Python bus client over TLS against `node`.
fn python_client(node: &EchoNode, binding: &str, requests: usize) -> Output {
    python_client_over(node, "tls", binding, requests)
}

/// Runs the Python bus client over `transport` (`tls`, `quic`) against
/// `node`: `requests` of 3000 bytes, 8 in flight.
fn python_client_over(node: &EchoNode, transport: &str, binding: &str, requests: usize) -> Output {
    interop_script("bus_client.py")
        .args(["--transport", transport, "--server-name", "localhost"])
        .arg("--address")
        .arg(node.address.to_string())
        .arg("--cafile")
        .arg(node.cert())
        .args(["--binding", binding])
        .args(["--requests", &requests.to_string(), "--window", "8"])
        .args(["--body-size", "3000"])
        .output()
        .expect("python3 runs")
}

#[test]
fn a_python_client_on_openssl_completes_the_bound_handshake_and_requests() {
    if !python_ready() {
        return;
    }
    let node = EchoNode::start(BindingPolicy::TlsExporter, &config());
    let output = python_client(&node, "exporter", 40);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("summary: 40 requests, 40 ok, 0 failed"),
        "{out}"
    );
}

#[test]
fn a_python_client_without_binding_fails_on_a_bound_listener_and_passes_on_an_unbound_one() {
    if !python_ready() {
        return;
    }
    let bound = EchoNode::start(BindingPolicy::TlsExporter, &config());
    let output = python_client(&bound, "none", 1);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("BadMac"), "{}", text(&output));

    let unbound = EchoNode::start(BindingPolicy::Unbound, &config());
    let output = python_client(&unbound, "none", 5);
    assert!(output.status.success(), "{}", text(&output));
    // And the other mismatch: an exporter binding on an Unbound listener.
    let output = python_client(&unbound, "exporter", 1);
    assert!(!output.status.success(), "{}", text(&output));
}

/// Runs `ws_cases.py` (Python `websockets`) against `node` at `url`.
fn ws_cases(node: &EchoNode, scheme: &str, unbound: bool) -> Output {
    let mut command = interop_script("ws_cases.py");
    command
        .arg("--url")
        .arg(format!("{scheme}://localhost:{}/bus", node.address.port()))
        .arg("--cafile")
        .arg(node.cert());
    if unbound {
        command.arg("--unbound");
    }
    command.output().expect("python3 runs")
}

#[test]
fn python_websockets_over_ws_meets_every_websocket_rule() {
    if !python_ready() {
        return;
    }
    let node = EchoNode::start_with(&config(), |_| WsServer::new().transport());
    let output = ws_cases(&node, "ws", false);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("all WebSocket cases passed"), "{out}");
}

#[test]
fn python_websockets_over_wss_meets_every_websocket_rule_bound_and_unbound() {
    if !python_ready() {
        return;
    }
    // Bound: the Python client exports keying material through pyOpenSSL.
    let node = EchoNode::start_with(&config(), |identity| {
        WsServer::over_tls(&identity.server(BindingPolicy::TlsExporter)).transport()
    });
    let output = ws_cases(&node, "wss", false);
    assert!(output.status.success(), "{}", text(&output));
    // Unbound, as for clients that cannot export (Python's ssl, browsers).
    let node = EchoNode::start_with(&config(), |identity| {
        WsServer::over_tls(&identity.server(BindingPolicy::Unbound)).transport()
    });
    let output = ws_cases(&node, "wss", true);
    assert!(output.status.success(), "{}", text(&output));
}

/// Runs `browser_relay.py`: headless Chromium relays a Python bus client's
/// session to `node` over its own WebSocket stack.
fn browser_relay(node: &EchoNode, scheme: &str) -> Output {
    interop_script("browser_relay.py")
        .arg("--url")
        .arg(format!("{scheme}://127.0.0.1:{}/bus", node.address.port()))
        .output()
        .expect("python3 runs")
}

#[test]
fn headless_chromium_carries_a_bus_session_over_ws_and_wss() {
    if !python_ready() || !available("chromium", &["--version"]) {
        return;
    }
    let node = EchoNode::start_with(&config(), |_| WsServer::new().transport());
    let output = browser_relay(&node, "ws");
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("all echoed"), "{out}");
    // A browser cannot export keying material: an Unbound wss listener.
    let node = EchoNode::start_with(&config(), |identity| {
        WsServer::over_tls(&identity.server(BindingPolicy::Unbound)).transport()
    });
    let output = browser_relay(&node, "wss");
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(out.contains("all echoed"), "{out}");
}

fn aioquic_ready() -> bool {
    available("python3", &["-c", "import aioquic, xxhash, blake3"])
}

/// A node listening on QUIC with `policy`.
fn quic_node(policy: BindingPolicy) -> EchoNode {
    EchoNode::start_with(&config(), |identity| identity.server(policy).quic())
}

/// Runs one case of `quic_cases.py` (aioquic) against `node`.
fn quic_case(node: &EchoNode, case: &str) -> Output {
    interop_script("quic_cases.py")
        .arg("--address")
        .arg(node.address.to_string())
        .arg("--cafile")
        .arg(node.cert())
        .args(["--case", case])
        .output()
        .expect("python3 runs")
}

#[test]
fn aioquic_carries_a_bus_client_on_one_stream_and_meets_the_stream_and_alpn_rules() {
    if !aioquic_ready() {
        return;
    }
    let node = quic_node(BindingPolicy::Unbound);
    for case in ["requests", "streams", "alpn"] {
        let output = quic_case(&node, case);
        let out = text(&output);
        assert!(output.status.success(), "{case}: {out}");
        assert!(out.contains(&format!("ok   {case}")), "{out}");
        println!("{}", out.trim());
    }
    // The PROTOCOL.md client over aioquic, pipelining.
    let output = python_client_over(&node, "quic", "none", 40);
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("summary: 40 requests, 40 ok, 0 failed"),
        "{out}"
    );
}

#[test]
fn an_aioquic_client_that_stalls_after_its_first_flight_is_closed_at_the_handshake_deadline() {
    if !aioquic_ready() {
        return;
    }
    let node = quic_node(BindingPolicy::Unbound);
    let output = quic_case(&node, "stall");
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    println!("{}", out.trim());
    // The bus's handshake deadlines closed it, not QUIC's idle timeout.
    let cause = node.failure();
    assert!(
        matches!(
            cause,
            CloseCause::Timeout(Deadline::Hello | Deadline::Handshake)
        ),
        "{cause:?}"
    );
    let started = std::time::Instant::now();
    while node.node.connections() > 0 {
        assert!(started.elapsed() < PATIENCE, "the connection is still held");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_bound_quic_listener_refuses_aioquic_which_has_no_exporter() {
    if !aioquic_ready() {
        return;
    }
    let node = quic_node(BindingPolicy::TlsExporter);
    let output = quic_case(&node, "requests");
    assert!(!output.status.success(), "{}", text(&output));
    assert_eq!(
        node.failure(),
        CloseCause::Refused(bus_proto::wire::RejectStatus::BadMac)
    );
    assert!(text(&output).contains("BadMac"), "{}", text(&output));
}
