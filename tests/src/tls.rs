//! Certificates for TLS tests (rcgen, self-signed, made fresh per test)
//! and a TLS-terminating relay: the man in the middle that channel
//! binding must defeat.

use bus_proto::transport::BindingPolicy;
use bus_proto::transport::tls::{TlsClient, TlsServer};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

/// A self-signed certificate and its key.
pub struct Identity {
    /// The certificate.
    pub cert: CertificateDer<'static>,
    /// Its key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: String,
}

impl Identity {
    /// A fresh self-signed certificate for `names` (DNS names or IPs).
    pub fn new(names: &[&str]) -> Identity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("a test certificate");
        Identity {
            cert: certified.cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        }
    }

    /// A TLS listener presenting this certificate.
    pub fn server(&self, policy: BindingPolicy) -> TlsServer {
        TlsServer::new(vec![self.cert.clone()], self.key.clone_key())
            .expect("a TLS server configuration")
            .binding(policy)
    }

    /// A TLS dialer that trusts only this certificate, for `name`.
    pub fn client(&self, name: &str, policy: BindingPolicy) -> TlsClient {
        TlsClient::new(self.roots(), name)
            .expect("a TLS client configuration")
            .binding(policy)
    }

    /// A root store holding only this certificate (pinned).
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).expect("a usable root");
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A relay that terminates TLS with its own certificate (`front`) and
/// dials `upstream` over TLS trusting `upstream_identity`, copying the
/// plaintext both ways: every byte of the bus protocol passes unchanged,
/// only the TLS sessions differ. Runs on plain threads until the listener
/// is dropped with the process; returns its address.
pub fn start_relay(
    front: &Identity,
    upstream: SocketAddr,
    upstream_identity: &Identity,
) -> SocketAddr {
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![front.cert.clone()], front.key.clone_key())
        .expect("relay server config");
    server.alpn_protocols = vec![b"bus/1".to_vec()];
    let server = Arc::new(server);
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(upstream_identity.roots())
        .with_no_client_auth();
    client.alpn_protocols = vec![b"bus/1".to_vec()];
    let client = Arc::new(client);
    let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
    let address = listener.local_addr().expect("relay address");
    thread::spawn(move || {
        for downstream in listener.incoming().flatten() {
            let (server, client) = (server.clone(), client.clone());
            thread::spawn(move || relay_one(downstream, upstream, server, client));
        }
    });
    address
}

fn relay_one(
    downstream: TcpStream,
    upstream: SocketAddr,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) {
    let Ok(up) = TcpStream::connect(upstream) else {
        return;
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let (Ok(down_tls), Ok(up_tls)) = (
        rustls::ServerConnection::new(server),
        rustls::ClientConnection::new(client, name),
    ) else {
        return;
    };
    let mut down = Leg::new(downstream, down_tls.into());
    let mut up = Leg::new(up, up_tls.into());
    // One thread polls both legs (short read timeouts): each direction's
    // plaintext is re-encrypted for the other session.
    while down.pass_to(&mut up) && up.pass_to(&mut down) {}
    down.close();
    up.close();
}

/// One side of the relay: a socket and its TLS session.
struct Leg {
    socket: TcpStream,
    tls: rustls::Connection,
}

impl Leg {
    fn new(socket: TcpStream, tls: rustls::Connection) -> Leg {
        let _ = socket.set_read_timeout(Some(std::time::Duration::from_millis(2)));
        Leg { socket, tls }
    }

    /// Reads what arrived, decrypts it and writes it to `other`; false
    /// once this leg ended.
    fn pass_to(&mut self, other: &mut Leg) -> bool {
        let open = match self.tls.read_tls(&mut self.socket) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        if self.tls.process_new_packets().is_err() {
            self.flush();
            return false;
        }
        let mut buffer = [0u8; 16 << 10];
        loop {
            match self.tls.reader().read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if other.tls.writer().write_all(&buffer[..n]).is_err() {
                        return false;
                    }
                }
            }
        }
        self.flush() && other.flush() && open
    }

    fn flush(&mut self) -> bool {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.socket).is_err() {
                return false;
            }
        }
        true
    }

    fn close(&mut self) {
        self.tls.send_close_notify();
        self.flush();
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}
