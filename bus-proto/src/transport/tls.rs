//! TLS 1.3 under framing, on rustls (ring), driven from memory.
//!
//! A listener takes a [`TlsServer`] (certificate chain and key, optionally
//! client certificates to require); a dialer a [`TlsClient`] (the roots it
//! trusts and the server name to verify). Both are fixed to what the bus
//! needs: TLS 1.3 only, ALPN [`ALPN`] required on both sides, no session
//! tickets, no resumption, no early data. Once TLS is established the bus
//! handshake runs inside it, bound to it ([`BindingPolicy`]).
//!
//! ```
//! use bus_proto::transport::tls::{TlsClient, TlsServer};
//! # fn run(cert_pem: &str, key_pem: &str) -> Result<(), Box<dyn std::error::Error>> {
//! // A listener's transport, from PEM files:
//! let server = TlsServer::from_pem_files(cert_pem, key_pem)?;
//! let listen_over = server.transport();
//! // A dialer that trusts that certificate (pinned: the only root):
//! let roots = bus_proto::transport::tls::load_roots(cert_pem)?;
//! let dial_over = TlsClient::new(roots, "replica-1.example")?.transport();
//! # let _ = (listen_over, dial_over); Ok(()) }
//! ```

use super::{ALPN, BindingPolicy, EXPORTER_LABEL};
use crate::connection::Transmit;
use crate::handshake::Binding;
use crate::host::{LayerError, LayerFactory, StreamLayer, Transport};
use crate::time::Now;
use bytes::{Bytes, BytesMut};
use core::sync::atomic::{AtomicU64, Ordering};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{ClientConfig, ServerConfig};

/// The certificate and key types the constructors take, and rustls itself
/// for anything else.
pub use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use rustls::{self, RootCertStore};
use std::boxed::Box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::sync::Arc;
use std::vec::Vec;

/// A TLS configuration could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {error}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: rustls::pki_types::pem::Error,
    },
    /// A PEM file held no certificate.
    #[error("{path}: no certificate in the file")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A root certificate was refused.
    #[error("{path}: certificate {index} is not a usable root: {error}")]
    BadRoot {
        /// The file.
        path: PathBuf,
        /// Its position in the file, from 0.
        index: usize,
        /// Why.
        error: rustls::Error,
    },
    /// The server name is not a DNS name or IP address.
    #[error("{name:?} is not a valid TLS server name")]
    ServerName {
        /// The name given.
        name: String,
    },
    /// rustls refused the configuration (a key that does not match its
    /// certificate, an unsupported key type, an empty root store).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client certificate verification: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// Why a TLS connection ended.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the TLS protocol, failed verification, or offered
    /// nothing we accept (an alert is sent where TLS has one).
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// rustls refused more input or output (its bounded buffers).
    #[error("TLS buffer: {0}")]
    Buffer(#[source] std::io::Error),
    /// The handshake completed without ALPN `bus/1`.
    #[error("TLS peer did not agree on ALPN \"bus/1\" (got {got:?})")]
    Alpn {
        /// What was agreed, if anything.
        got: Option<String>,
    },
    /// The peer sent early data, which this bus never accepts.
    #[error("TLS peer sent early data (0-RTT), which is never accepted")]
    EarlyData,
    /// The stream ended without the peer's `close_notify`.
    #[error("TLS stream ended without close_notify (truncated)")]
    Truncated,
}

/// Reads the certificates of a PEM file (a chain: leaf first).
pub fn load_certificates(
    path: impl AsRef<Path>,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let path = path.as_ref();
    let pem = |error| TlsConfigError::Pem {
        path: path.to_path_buf(),
        error,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certificates.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsConfigError::Pem {
        path: path.to_path_buf(),
        error,
    })
}

/// Reads the certificates of a PEM file as trust roots. A self-signed
/// certificate as the only root pins it.
pub fn load_roots(path: impl AsRef<Path>) -> Result<RootCertStore, TlsConfigError> {
    let path = path.as_ref();
    let mut roots = RootCertStore::empty();
    for (index, certificate) in load_certificates(path)?.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|error| TlsConfigError::BadRoot {
                path: path.to_path_buf(),
                index,
                error,
            })?;
    }
    Ok(roots)
}

/// The wall clock rustls checks certificate validity against: the time
/// the host passed with the latest read, so the layer reads no clock.
#[derive(Debug, Default)]
pub(crate) struct HostTime(AtomicU64);

impl HostTime {
    pub(crate) fn set(&self, now: Now) {
        self.0.store(now.wall.as_nanos(), Ordering::Relaxed);
    }
}

impl rustls::time_provider::TimeProvider for HostTime {
    fn current_time(&self) -> Option<UnixTime> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(UnixTime::since_unix_epoch(
                core::time::Duration::from_nanos(nanos),
            )),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS listener's configuration: makes one server-side layer per
/// accepted connection.
#[derive(Clone, Debug)]
pub struct TlsServer {
    config: Arc<ServerConfig>,
    time: Arc<HostTime>,
    policy: BindingPolicy,
    /// The ALPN protocol a connection must agree on, if any.
    alpn: Option<&'static [u8]>,
}

impl TlsServer {
    /// A server presenting `chain` (leaf first) with its `key`; clients
    /// need no certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsConfigError> {
        Self::build(chain, key, None)
    }

    /// [`TlsServer::new`] from PEM files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        Self::new(load_certificates(chain)?, load_private_key(key)?)
    }

    /// A server that also requires every client to present a certificate
    /// issued under `client_roots` (mutual TLS).
    pub fn with_client_auth(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_roots: RootCertStore,
    ) -> Result<Self, TlsConfigError> {
        Self::build(chain, key, Some(client_roots))
    }

    fn build(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_roots: Option<RootCertStore>,
    ) -> Result<Self, TlsConfigError> {
        let time = Arc::new(HostTime::default());
        let provider = provider();
        let builder = ServerConfig::builder_with_details(provider.clone(), time.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = std::vec![ALPN.to_vec()];
        // No tickets and no session cache: no resumption, so no 0-RTT.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.max_early_data_size = 0;
        Ok(TlsServer {
            config: Arc::new(config),
            time,
            policy: BindingPolicy::TlsExporter,
            alpn: Some(ALPN),
        })
    }

    /// Sets the binding policy (default [`BindingPolicy::TlsExporter`]).
    pub fn binding(mut self, policy: BindingPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The transport to listen with.
    pub fn transport(self) -> Transport {
        Transport::layered(Arc::new(self))
    }

    /// The QUIC transport to listen with (UDP): the same certificates,
    /// ALPN `bus/1`, and binding policy, over QUIC's TLS 1.3.
    ///
    /// ```no_run
    /// use bus_proto::transport::tls::TlsServer;
    /// let quic = TlsServer::from_pem_files("cert.pem", "key.pem")?.quic();
    /// assert!(quic.is_quic());
    /// // node.listen_via("0.0.0.0:7443", quic) in an adapter
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "quic")]
    pub fn quic(self) -> Transport {
        Transport::quic(super::quic::QuicSetup {
            server: Some(self),
            client: None,
        })
    }

    /// The same certificates for HTTP/1.1 (WebSocket over TLS): ALPN
    /// `http/1.1` offered, none required, as browsers connect.
    #[cfg(feature = "ws")]
    pub(crate) fn for_http1(&self) -> TlsServer {
        let mut config = (*self.config).clone();
        config.alpn_protocols = std::vec![b"http/1.1".to_vec()];
        TlsServer {
            config: Arc::new(config),
            time: Arc::clone(&self.time),
            policy: self.policy,
            alpn: None,
        }
    }

    /// The rustls configuration, its clock and its binding policy, for
    /// QUIC.
    #[cfg(feature = "quic")]
    pub(crate) fn parts(&self) -> (Arc<ServerConfig>, Arc<HostTime>, BindingPolicy) {
        (
            Arc::clone(&self.config),
            Arc::clone(&self.time),
            self.policy,
        )
    }

    /// A server-side session for one connection.
    pub(crate) fn session(&self) -> Result<TlsLayer, rustls::Error> {
        let conn = rustls::ServerConnection::new(Arc::clone(&self.config))?;
        Ok(TlsLayer::new(
            conn.into(),
            Arc::clone(&self.time),
            self.policy,
            self.alpn,
        ))
    }
}

impl LayerFactory for TlsServer {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn layer(&self) -> Result<Box<dyn StreamLayer>, LayerError> {
        Ok(Box::new(self.session()?))
    }
}

/// A TLS dialer's configuration for one server name: makes one
/// client-side layer per dial.
#[derive(Clone, Debug)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    time: Arc<HostTime>,
    server_name: ServerName<'static>,
    policy: BindingPolicy,
    /// The ALPN protocol a connection must agree on, if any.
    alpn: Option<&'static [u8]>,
}

impl TlsClient {
    /// A dialer that verifies the server's certificate against `roots`
    /// for `server_name` (a DNS name or an IP address).
    pub fn new(roots: RootCertStore, server_name: &str) -> Result<Self, TlsConfigError> {
        Self::build(roots, None, server_name)
    }

    /// [`TlsClient::new`], presenting `chain` with `key` to servers that
    /// require client certificates (mutual TLS).
    pub fn with_client_certificate(
        roots: RootCertStore,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        server_name: &str,
    ) -> Result<Self, TlsConfigError> {
        Self::build(roots, Some((chain, key)), server_name)
    }

    fn build(
        roots: RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        server_name: &str,
    ) -> Result<Self, TlsConfigError> {
        let time = Arc::new(HostTime::default());
        let builder = ClientConfig::builder_with_details(provider(), time.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        };
        config.alpn_protocols = std::vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok(TlsClient {
            config: Arc::new(config),
            time,
            server_name: parse_server_name(server_name)?,
            policy: BindingPolicy::TlsExporter,
            alpn: Some(ALPN),
        })
    }

    /// The same configuration for another server name (one per replica).
    pub fn for_server(&self, server_name: &str) -> Result<Self, TlsConfigError> {
        Ok(TlsClient {
            server_name: parse_server_name(server_name)?,
            ..self.clone()
        })
    }

    /// Sets the binding policy (default [`BindingPolicy::TlsExporter`]);
    /// it must match the listener's.
    pub fn binding(mut self, policy: BindingPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The transport to dial with.
    pub fn transport(self) -> Transport {
        Transport::layered(Arc::new(self))
    }

    /// The QUIC transport to dial with (UDP): the same roots and server
    /// name, ALPN `bus/1`, and binding policy, over QUIC's TLS 1.3.
    ///
    /// ```no_run
    /// use bus_proto::transport::tls::{TlsClient, load_roots};
    /// let quic = TlsClient::new(load_roots("ca.pem")?, "replica-0.example")?.quic();
    /// assert_eq!(quic.name(), "quic");
    /// // Client::start_via(&config, params, keys, address, quic) in an adapter
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "quic")]
    pub fn quic(self) -> Transport {
        Transport::quic(super::quic::QuicSetup {
            server: None,
            client: Some(self),
        })
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsConfigError::ServerName {
        name: name.to_string(),
    })
}

impl TlsClient {
    /// The same roots for HTTP/1.1 (WebSocket over TLS): ALPN `http/1.1`
    /// offered, none required.
    #[cfg(feature = "ws")]
    pub(crate) fn for_http1(&self) -> TlsClient {
        let mut config = (*self.config).clone();
        config.alpn_protocols = std::vec![b"http/1.1".to_vec()];
        TlsClient {
            config: Arc::new(config),
            alpn: None,
            ..self.clone()
        }
    }

    /// The rustls configuration, its clock, the server name and the
    /// binding policy, for QUIC.
    #[cfg(feature = "quic")]
    pub(crate) fn parts(&self) -> (Arc<ClientConfig>, Arc<HostTime>, String, BindingPolicy) {
        let name = self.server_name.to_str().into_owned();
        (
            Arc::clone(&self.config),
            Arc::clone(&self.time),
            name,
            self.policy,
        )
    }

    /// A client-side session for one dial.
    pub(crate) fn session(&self) -> Result<TlsLayer, rustls::Error> {
        let conn =
            rustls::ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())?;
        Ok(TlsLayer::new(
            conn.into(),
            Arc::clone(&self.time),
            self.policy,
            self.alpn,
        ))
    }
}

impl LayerFactory for TlsClient {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn layer(&self) -> Result<Box<dyn StreamLayer>, LayerError> {
        Ok(Box::new(self.session()?))
    }
}

/// One TLS connection as a [`StreamLayer`], made by [`TlsServer`] or
/// [`TlsClient`].
pub(crate) struct TlsLayer {
    conn: rustls::Connection,
    time: Arc<HostTime>,
    policy: BindingPolicy,
    alpn: Option<&'static [u8]>,
    /// The handshake completed and was checked.
    established: bool,
    /// The binding, until the host takes it.
    ready: Option<Binding>,
    /// The peer's `close_notify` arrived.
    peer_closed: bool,
    /// Ciphertext to write, in order.
    wire: Vec<Bytes>,
}

impl core::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("established", &self.established)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl TlsLayer {
    fn new(
        conn: rustls::Connection,
        time: Arc<HostTime>,
        policy: BindingPolicy,
        alpn: Option<&'static [u8]>,
    ) -> Self {
        TlsLayer {
            conn,
            time,
            policy,
            alpn,
            established: false,
            ready: None,
            peer_closed: false,
            wire: Vec::new(),
        }
    }

    /// Moves the ciphertext rustls holds into `self.wire`; false if there
    /// was none.
    pub(crate) fn drain(&mut self) -> bool {
        if !self.conn.wants_write() {
            return false;
        }
        let mut out = Vec::new();
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(&mut out).is_err() {
                break;
            }
        }
        self.wire.push(Bytes::from(out));
        true
    }

    /// Once the handshake is done: checks what was agreed and computes the
    /// binding.
    fn check_established(&mut self) -> Result<(), TlsError> {
        if self.established || self.conn.is_handshaking() {
            return Ok(());
        }
        self.established = true;
        if let Some(required) = self.alpn
            && self.conn.alpn_protocol() != Some(required)
        {
            let got = self
                .conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            return Err(TlsError::Alpn { got });
        }
        // Defence in depth: the configuration never allows early data.
        if let rustls::Connection::Server(server) = &mut self.conn
            && server.early_data().is_some()
        {
            return Err(TlsError::EarlyData);
        }
        self.ready = Some(match self.policy {
            BindingPolicy::TlsExporter => Binding::from_bytes(self.conn.export_keying_material(
                [0u8; 32],
                EXPORTER_LABEL,
                Some(&[]),
            )?),
            BindingPolicy::Unbound => Binding::NONE,
        });
        Ok(())
    }

    /// Decrypts `wire` into `plain`; the handshake's replies and alerts
    /// wait in `self.wire`.
    pub(crate) fn read(
        &mut self,
        now: Now,
        wire: &[u8],
        plain: &mut BytesMut,
    ) -> Result<(), TlsError> {
        self.time.set(now);
        let mut input = wire;
        // After the peer's close_notify rustls takes nothing more (it
        // returns 0): whatever follows is ignored, as TLS requires.
        while !input.is_empty() && !self.peer_closed {
            // rustls takes at most a few KiB at a time, and at most 16 KiB
            // of plaintext may wait: take it after every step.
            if self.conn.read_tls(&mut input).map_err(TlsError::Buffer)? == 0 {
                break;
            }
            let state = self.conn.process_new_packets()?;
            let plaintext = state.plaintext_bytes_to_read();
            if plaintext > 0 {
                let start = plain.len();
                plain.resize(start + plaintext, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .map_err(TlsError::Buffer)?;
            }
            self.peer_closed |= state.peer_has_closed();
        }
        self.check_established()
    }

    /// Encrypts `data`; the records wait in `self.wire`.
    pub(crate) fn write_bytes(&mut self, data: &[u8]) -> Result<(), TlsError> {
        let mut rest = data;
        while !rest.is_empty() {
            let taken = self.conn.writer().write(rest).map_err(TlsError::Buffer)?;
            rest = &rest[taken..];
            // rustls buffers a bounded amount: move its ciphertext out, and
            // give up if that frees nothing.
            if taken == 0 && !self.drain() {
                return Err(TlsError::Buffer(std::io::ErrorKind::WriteZero.into()));
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: &Transmit) -> Result<(), TlsError> {
        for segment in batch.segments() {
            self.write_bytes(segment)?;
        }
        self.drain();
        Ok(())
    }

    /// The handshake is done and checked: its binding, once.
    pub(crate) fn take_binding(&mut self) -> Option<Binding> {
        self.ready.take()
    }

    /// The peer's `close_notify` arrived.
    pub(crate) fn is_peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Starts our side's close.
    pub(crate) fn send_close(&mut self) {
        self.conn.send_close_notify();
        self.drain();
    }

    /// Moves the records to write into `out`.
    pub(crate) fn take_records(&mut self, out: &mut Vec<Bytes>) {
        self.drain();
        out.append(&mut self.wire);
    }

    /// Ends the session after one of our own checks refused it.
    pub(crate) fn refuse(&mut self) {
        self.conn.send_close_notify();
    }
}

impl StreamLayer for TlsLayer {
    fn read_wire(
        &mut self,
        now: Now,
        wire: &mut BytesMut,
        frames: &mut BytesMut,
    ) -> Result<(), LayerError> {
        let result = self.read(now, wire, frames);
        wire.clear();
        if matches!(result, Err(TlsError::Alpn { .. } | TlsError::EarlyData)) {
            // Refused by our own checks, not by rustls: end the session
            // properly rather than with a bare EOF.
            self.refuse();
        }
        // An alert rustls queued goes out before the socket closes.
        self.drain();
        Ok(result?)
    }

    fn read_eof(&mut self) -> Result<(), LayerError> {
        match self.peer_closed {
            true => Ok(()),
            false => Err(TlsError::Truncated.into()),
        }
    }

    fn take_ready(&mut self) -> Option<Binding> {
        self.take_binding()
    }

    fn peer_closed(&self) -> bool {
        self.is_peer_closed()
    }

    fn pending_wire(&self) -> usize {
        self.wire.iter().map(Bytes::len).sum()
    }

    fn write_frames(&mut self, batch: Transmit) -> Result<(), LayerError> {
        Ok(self.write(&batch)?)
    }

    fn close(&mut self) {
        self.send_close();
    }

    fn take_wire(&mut self, out: &mut Vec<Bytes>) {
        self.take_records(out);
    }
}
