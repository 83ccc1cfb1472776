//! WebSocket under framing (tungstenite), plain or over TLS, driven from
//! memory.
//!
//! One binary message carries exactly one bus frame: its size field must
//! equal the message's length. The subprotocol `bus.v1` is required (a
//! request without it gets HTTP 400). The largest message accepted
//! follows the connection's frame limit: a header until the bus handshake
//! completes, `max_message_size` after, so before authentication a peer
//! holds at most the upgrade request (64 KiB, tungstenite's limit), a
//! 16 KiB read buffer and one header's worth of message. Text messages close
//! with 1003, oversize ones with 1009, a message that is not exactly one
//! frame with 1002. Pings are answered.
//!
//! ```
//! use bus_proto::transport::ws::{WsClient, WsServer};
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listen_over = WsServer::new().transport();
//! let dial_over = WsClient::new("ws://replica-1.example:7000/bus")?.transport();
//! # let _ = (listen_over, dial_over); Ok(()) }
//! ```
//!
//! Over TLS (`wss://`), the TLS session offers ALPN `http/1.1`, as a
//! browser connects, and the bus handshake is bound to the TLS exporter
//! unless the [`TlsServer`] is
//! [`Unbound`](super::BindingPolicy::Unbound) (browsers cannot export).

use super::tls::{TlsClient, TlsError, TlsLayer, TlsServer};
use crate::connection::Transmit;
use crate::handshake::Binding;
use crate::host::{FrameTooLarge, LayerError, LayerFactory, StreamLayer, Transport};
use crate::time::Now;
use crate::wire::HEADER_SIZE;
use crate::wire::layout::HEADER_SIZE_U32;
use bytes::{Buf, Bytes, BytesMut};
use std::boxed::Box;
use std::io::{self, Read, Write};
use std::string::{String, ToString};
use std::sync::{Arc, Mutex, PoisonError};
use std::vec::Vec;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::server::{self, ServerHandshake};
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The WebSocket subprotocol every listener and dialer requires.
pub const SUBPROTOCOL: &str = "bus.v1";

/// Bytes tungstenite reads from the pipe at once (its read buffer is
/// allocated eagerly per connection, so it stays small).
const READ_BUFFER: usize = 16 << 10;

/// Why a WebSocket connection ended.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The upgrade or the WebSocket protocol failed (bad request, missing
    /// subprotocol, bad masking, an oversize message, …).
    #[error("WebSocket: {0}")]
    Protocol(#[from] tungstenite::Error),
    /// A text message: the bus speaks binary only (closed with 1003).
    #[error("WebSocket text message of {len} bytes (only binary messages carry frames)")]
    Text {
        /// Its length.
        len: usize,
    },
    /// A binary message that is not exactly one frame (closed with 1002).
    #[error("WebSocket message of {len} bytes is not one frame (its header says {size})")]
    NotOneFrame {
        /// The message's length.
        len: usize,
        /// The size its header names (0 if it is shorter than a header).
        size: usize,
    },
    /// A message over the frame limit (closed with 1009): the connection
    /// is refused as a frame of that size is on every transport.
    #[error(transparent)]
    TooLarge(FrameTooLarge),
    /// The TLS layer under the WebSocket failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The stream ended without a WebSocket close.
    #[error("WebSocket stream ended without a close frame")]
    Truncated,
}

/// A WebSocket URL could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a usable WebSocket URL: {reason}")]
pub struct WsUrlError {
    /// The URL given.
    pub url: String,
    /// Why.
    pub reason: String,
}

/// The bytes between tungstenite and the socket (or the TLS session).
#[derive(Debug, Default)]
struct Pipe {
    inbox: BytesMut,
    outbox: Vec<u8>,
    /// During the upgrade, output goes here instead, shared with the layer:
    /// a refused upgrade consumes the handshake with its pipe, and its HTTP
    /// error response must still be written.
    upgrade_out: Option<Arc<Mutex<Vec<u8>>>>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbox.is_empty() {
            // Not EOF: the host reports the end of the stream itself.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbox.len());
        buf[..n].copy_from_slice(&self.inbox[..n]);
        self.inbox.advance(n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.upgrade_out {
            Some(shared) => shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf),
            None => self.outbox.extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Pipe {
    /// A pipe whose upgrade output is shared with the returned handle.
    fn for_upgrade() -> (Pipe, Arc<Mutex<Vec<u8>>>) {
        let shared = Arc::new(Mutex::new(Vec::new()));
        let pipe = Pipe {
            upgrade_out: Some(Arc::clone(&shared)),
            ..Pipe::default()
        };
        (pipe, shared)
    }
}

/// Accepts the upgrade only with subprotocol `bus.v1`, and echoes it.
#[derive(Debug)]
struct RequireSubprotocol;

impl server::Callback for RequireSubprotocol {
    fn on_request(
        self,
        request: &server::Request,
        mut response: server::Response,
    ) -> Result<server::Response, server::ErrorResponse> {
        let offered = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        if !offered {
            let mut refusal = server::ErrorResponse::new(Some(std::format!(
                "the WebSocket subprotocol {SUBPROTOCOL} is required"
            )));
            *refusal.status_mut() = tungstenite::http::StatusCode::BAD_REQUEST;
            let length = refusal.body().as_ref().map_or(0, String::len);
            let headers = refusal.headers_mut();
            headers.insert(
                "Connection",
                tungstenite::http::HeaderValue::from_static("close"),
            );
            headers.insert(
                "Content-Length",
                tungstenite::http::HeaderValue::from(length),
            );
            return Err(refusal);
        }
        response.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(response)
    }
}

fn config(limit: u32) -> WebSocketConfig {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Every message goes straight into the pipe: a batch is one
        // socket write anyway.
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// A WebSocket listener's configuration (`ws://`, or `wss://` over a
/// [`TlsServer`]).
#[derive(Clone, Debug, Default)]
pub struct WsServer {
    tls: Option<TlsServer>,
}

impl WsServer {
    /// Plain WebSocket; the handshake's binding is none.
    pub fn new() -> Self {
        WsServer::default()
    }

    /// WebSocket over TLS with `tls`'s certificates; the binding follows
    /// `tls`'s policy.
    pub fn over_tls(tls: &TlsServer) -> Self {
        WsServer {
            tls: Some(tls.for_http1()),
        }
    }

    /// The transport to listen with.
    pub fn transport(self) -> Transport {
        Transport::layered(Arc::new(self))
    }
}

impl LayerFactory for WsServer {
    fn name(&self) -> &'static str {
        match self.tls {
            Some(_) => "wss",
            None => "ws",
        }
    }

    fn layer(&self) -> Result<Box<dyn StreamLayer>, LayerError> {
        let tls = self.tls.as_ref().map(|t| t.session()).transpose()?;
        let (pipe, upgrade_out) = Pipe::for_upgrade();
        let mid = ServerHandshake::start(pipe, RequireSubprotocol, Some(config(HEADER_SIZE_U32)));
        Ok(Box::new(WsLayer::new(
            tls,
            Upgrade::Server(mid),
            upgrade_out,
        )))
    }
}

/// A WebSocket dialer's configuration for one URL (`ws://host:port/path`,
/// or `wss://` with [`WsClient::over_tls`]).
#[derive(Clone, Debug)]
pub struct WsClient {
    url: String,
    tls: Option<TlsClient>,
}

impl WsClient {
    /// Dials `url`, a `ws://` URL (its host names the `Host` header; the
    /// address dialled is the replica's).
    pub fn new(url: &str) -> Result<Self, WsUrlError> {
        Self::checked(url, "ws", None)
    }

    /// Dials `url`, a `wss://` URL, over `tls` (whose server name is
    /// verified).
    pub fn over_tls(url: &str, tls: &TlsClient) -> Result<Self, WsUrlError> {
        Self::checked(url, "wss", Some(tls.for_http1()))
    }

    fn checked(url: &str, scheme: &str, tls: Option<TlsClient>) -> Result<Self, WsUrlError> {
        let error = |reason: &str| WsUrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: tungstenite::http::Uri = url.parse().map_err(|_| error("not a URI"))?;
        if uri.scheme_str() != Some(scheme) {
            return Err(error(&std::format!("the scheme must be {scheme}://")));
        }
        if uri.host().is_none() {
            return Err(error("no host"));
        }
        Ok(WsClient {
            url: url.to_string(),
            tls,
        })
    }

    /// The transport to dial with.
    pub fn transport(self) -> Transport {
        Transport::layered(Arc::new(self))
    }
}

impl LayerFactory for WsClient {
    fn name(&self) -> &'static str {
        match self.tls {
            Some(_) => "wss",
            None => "ws",
        }
    }

    fn layer(&self) -> Result<Box<dyn StreamLayer>, LayerError> {
        use tungstenite::client::IntoClientRequest;
        let tls = self.tls.as_ref().map(|t| t.session()).transpose()?;
        let mut request = self.url.as_str().into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static(SUBPROTOCOL),
        );
        let (pipe, upgrade_out) = Pipe::for_upgrade();
        let mid = ClientHandshake::start(pipe, request, Some(config(HEADER_SIZE_U32)))?;
        Ok(Box::new(WsLayer::new(
            tls,
            Upgrade::Client(mid),
            upgrade_out,
        )))
    }
}

/// Where the WebSocket is.
enum Upgrade {
    Server(MidHandshake<ServerHandshake<Pipe, RequireSubprotocol>>),
    Client(MidHandshake<ClientHandshake<Pipe>>),
    Open(Box<WebSocket<Pipe>>),
    /// Failed: only the last bytes (an HTTP error, a close) are written.
    Failed(Pipe),
}

/// One WebSocket connection, with TLS under it for `wss`.
pub(crate) struct WsLayer {
    tls: Option<TlsLayer>,
    upgrade: Upgrade,
    /// The binding, once both TLS and the upgrade are done.
    ready: Option<Binding>,
    tls_binding: Option<Binding>,
    frame_limit: u32,
    /// The peer's close frame arrived.
    peer_closed: bool,
    /// Messages wait in the pipe unread: the last read stopped at one
    /// message while the frame limit was a header's.
    more: bool,
    /// Wire bytes to write, in order.
    wire: Vec<Bytes>,
    /// Scratch for TLS plaintext.
    plain: BytesMut,
    /// The upgrade's output, until the WebSocket is open.
    upgrade_out: Option<Arc<Mutex<Vec<u8>>>>,
}

impl WsLayer {
    fn new(tls: Option<TlsLayer>, upgrade: Upgrade, upgrade_out: Arc<Mutex<Vec<u8>>>) -> Self {
        let mut layer = WsLayer {
            tls,
            upgrade,
            ready: None,
            tls_binding: None,
            frame_limit: HEADER_SIZE_U32,
            peer_closed: false,
            more: false,
            wire: Vec::new(),
            plain: BytesMut::new(),
            upgrade_out: Some(upgrade_out),
        };
        // A client's upgrade request is ready at once; a server's start
        // only waits for bytes, so neither fails here.
        let _ = layer.advance_upgrade();
        layer.flush();
        layer
    }

    fn pipe(&mut self) -> &mut Pipe {
        match &mut self.upgrade {
            Upgrade::Server(mid) => mid.get_mut().get_mut(),
            Upgrade::Client(mid) => mid.get_mut().get_mut(),
            Upgrade::Open(ws) => ws.get_mut(),
            Upgrade::Failed(pipe) => pipe,
        }
    }

    /// Runs the upgrade as far as the bytes allow.
    fn advance_upgrade(&mut self) -> Result<(), WsError> {
        let upgrade = core::mem::replace(&mut self.upgrade, Upgrade::Failed(Pipe::default()));
        let outcome = match upgrade {
            Upgrade::Server(mid) => match mid.handshake() {
                Ok(ws) => Ok(Some(ws)),
                Err(HandshakeError::Interrupted(mid)) => {
                    self.upgrade = Upgrade::Server(mid);
                    Ok(None)
                }
                Err(HandshakeError::Failure(error)) => Err(error),
            },
            Upgrade::Client(mid) => match mid.handshake() {
                Ok((ws, _response)) => Ok(Some(ws)),
                Err(HandshakeError::Interrupted(mid)) => {
                    self.upgrade = Upgrade::Client(mid);
                    Ok(None)
                }
                Err(HandshakeError::Failure(error)) => Err(error),
            },
            done => {
                self.upgrade = done;
                return Ok(());
            }
        };
        match outcome {
            Ok(Some(ws)) => {
                let mut ws = Box::new(ws);
                let limit = self.frame_limit;
                ws.set_config(|c| *c = config(limit));
                // From now on output stays in the pipe (after what the
                // upgrade wrote, which `flush` takes first).
                ws.get_mut().upgrade_out = None;
                self.upgrade = Upgrade::Open(ws);
                Ok(())
            }
            Ok(None) => Ok(()),
            // The HTTP error response (a 400) is in `upgrade_out`; the
            // upgrade stays `Failed`.
            Err(error) => Err(error.into()),
        }
    }

    /// Reads whole messages from the pipe into `frames`.
    fn read_messages(&mut self, frames: &mut BytesMut) -> Result<(), WsError> {
        let Upgrade::Open(ws) = &mut self.upgrade else {
            return Ok(());
        };
        self.more = false;
        loop {
            let message = match ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(());
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(());
                }
                Err(tungstenite::Error::Capacity(
                    tungstenite::error::CapacityError::MessageTooLong { size, .. },
                )) => {
                    refuse(ws, CloseCode::Size, "message too large");
                    let size = u32::try_from(size).unwrap_or(u32::MAX);
                    return Err(WsError::TooLarge(FrameTooLarge {
                        size,
                        max: self.frame_limit,
                    }));
                }
                Err(e @ tungstenite::Error::Capacity(_)) => {
                    refuse(ws, CloseCode::Size, "message too large");
                    return Err(e.into());
                }
                Err(e @ tungstenite::Error::Utf8(_)) => {
                    refuse(ws, CloseCode::Invalid, "invalid UTF-8");
                    return Err(e.into());
                }
                Err(e @ tungstenite::Error::Protocol(_)) => {
                    refuse(ws, CloseCode::Protocol, "WebSocket protocol error");
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            match message {
                Message::Binary(payload) => {
                    let size = match payload.get(48..52) {
                        Some(field) => {
                            u32::from_le_bytes(field.try_into().unwrap_or([0; 4])) as usize
                        }
                        None => 0,
                    };
                    if payload.len() < HEADER_SIZE || size != payload.len() {
                        refuse(ws, CloseCode::Protocol, "one message must be one frame");
                        let len = payload.len();
                        return Err(WsError::NotOneFrame { len, size });
                    }
                    frames.extend_from_slice(&payload);
                    // Before authentication the frame limit may change
                    // with this frame: the host reads again after it.
                    if self.frame_limit <= HEADER_SIZE_U32 {
                        self.more = true;
                        return Ok(());
                    }
                }
                Message::Text(text) => {
                    refuse(ws, CloseCode::Unsupported, "binary messages only");
                    return Err(WsError::Text { len: text.len() });
                }
                Message::Close(_) => {
                    self.peer_closed = true;
                    return Ok(());
                }
                // Pongs to our pings (we send none); pings are answered
                // by tungstenite at the next flush.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Moves the pipe's output (through TLS for `wss`) into `self.wire`.
    fn flush(&mut self) {
        if let Upgrade::Open(ws) = &mut self.upgrade {
            // Queued pongs and close replies; errors surface on read.
            let _ = ws.flush();
        }
        let upgrade = match &self.upgrade_out {
            Some(shared) => {
                core::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner))
            }
            None => Vec::new(),
        };
        if matches!(self.upgrade, Upgrade::Open(_) | Upgrade::Failed(_)) {
            self.upgrade_out = None;
        }
        // Taken, not copied: the pipe keeps no capacity of a past batch.
        let written = core::mem::take(&mut self.pipe().outbox);
        let out = match upgrade.is_empty() {
            true => written,
            false => [upgrade, written].concat(),
        };
        match &mut self.tls {
            Some(tls) => {
                if !out.is_empty() && tls.write_bytes(&out).is_err() {
                    tracing::debug!("TLS refused WebSocket output");
                }
                tls.take_records(&mut self.wire);
            }
            None if !out.is_empty() => self.wire.push(Bytes::from(out)),
            None => {}
        }
    }

    fn read(
        &mut self,
        now: Now,
        wire: &mut BytesMut,
        frames: &mut BytesMut,
    ) -> Result<(), WsError> {
        match &mut self.tls {
            Some(tls) => {
                let mut plain = core::mem::take(&mut self.plain);
                let result = tls.read(now, wire, &mut plain);
                if let Some(binding) = tls.take_binding() {
                    self.tls_binding = Some(binding);
                }
                self.pipe().inbox.extend_from_slice(&plain);
                plain.clear();
                self.plain = plain;
                wire.clear();
                result?;
            }
            None => {
                let bytes = wire.split();
                self.pipe().inbox.unsplit(bytes);
            }
        }
        let was_open = matches!(self.upgrade, Upgrade::Open(_));
        self.advance_upgrade()?;
        if !was_open && matches!(self.upgrade, Upgrade::Open(_)) {
            self.ready = match &self.tls {
                None => Some(Binding::NONE),
                Some(_) => self.tls_binding,
            };
        }
        self.read_messages(frames)
    }
}

/// Closes `ws` with `code`, refusing what the peer sent.
fn refuse(ws: &mut WebSocket<Pipe>, code: CloseCode, reason: &'static str) {
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
}

/// Splits a batch into its frames, by the size in each header: zero-copy
/// where a frame lies in one segment.
fn frames_of(batch: &Transmit) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(batch.frames());
    let mut pending = BytesMut::new();
    let mut need = 0usize;
    for segment in batch.segments() {
        let mut segment = segment.clone();
        while !segment.is_empty() {
            if need == 0 && pending.is_empty() {
                // A frame starts here.
                if segment.len() >= HEADER_SIZE {
                    let size = frame_size(&segment[..HEADER_SIZE]);
                    if segment.len() >= size {
                        frames.push(segment.split_to(size));
                        continue;
                    }
                    need = size;
                } else {
                    need = HEADER_SIZE;
                }
            }
            let take = (need - pending.len()).min(segment.len());
            pending.extend_from_slice(&segment.split_to(take));
            if pending.len() == HEADER_SIZE && need == HEADER_SIZE {
                need = frame_size(&pending);
            }
            if pending.len() == need {
                frames.push(pending.split().freeze());
                need = 0;
            }
        }
    }
    frames
}

/// The size field of our own frame's header.
fn frame_size(header: &[u8]) -> usize {
    let mut field = [0u8; 4];
    field.copy_from_slice(&header[48..52]);
    (u32::from_le_bytes(field) as usize).max(HEADER_SIZE)
}

impl StreamLayer for WsLayer {
    fn read_wire(
        &mut self,
        now: Now,
        wire: &mut BytesMut,
        frames: &mut BytesMut,
    ) -> Result<(), LayerError> {
        let result = self.read(now, wire, frames);
        self.flush();
        if result.is_err()
            && let Some(tls) = &mut self.tls
        {
            // After the WebSocket close (or the HTTP refusal), end the TLS
            // session properly too.
            tls.send_close();
            tls.take_records(&mut self.wire);
        }
        match result {
            // The host hands this one to the core, which refuses it as the
            // decoder refuses an oversize frame on TCP.
            Err(WsError::TooLarge(too_large)) => Err(Box::new(too_large)),
            other => Ok(other?),
        }
    }

    fn wants_read(&self) -> bool {
        self.more
    }

    fn read_eof(&mut self) -> Result<(), LayerError> {
        match self.peer_closed {
            true => Ok(()),
            false => Err(WsError::Truncated.into()),
        }
    }

    fn take_ready(&mut self) -> Option<Binding> {
        self.ready.take()
    }

    fn peer_closed(&self) -> bool {
        self.peer_closed || self.tls.as_ref().is_some_and(|t| t.is_peer_closed())
    }

    fn pending_wire(&self) -> usize {
        self.wire.iter().map(Bytes::len).sum()
    }

    fn write_frames(&mut self, batch: Transmit) -> Result<(), LayerError> {
        let Upgrade::Open(ws) = &mut self.upgrade else {
            return Err(WsError::Protocol(tungstenite::Error::AlreadyClosed).into());
        };
        for frame in frames_of(&batch) {
            ws.write(Message::Binary(frame)).map_err(WsError::from)?;
        }
        self.flush();
        Ok(())
    }

    fn set_frame_limit(&mut self, limit: u32) {
        self.frame_limit = limit;
        if let Upgrade::Open(ws) = &mut self.upgrade {
            ws.set_config(|c| *c = config(limit));
        }
    }

    fn close(&mut self) {
        if let Upgrade::Open(ws) = &mut self.upgrade {
            let _ = ws.close(None);
        }
        self.flush();
        if let Some(tls) = &mut self.tls {
            tls.send_close();
            tls.take_records(&mut self.wire);
        }
    }

    fn take_wire(&mut self, out: &mut Vec<Bytes>) {
        self.flush();
        out.append(&mut self.wire);
    }
}

impl core::fmt::Debug for WsLayer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WsLayer")
            .field("tls", &self.tls.is_some())
            .field("frame_limit", &self.frame_limit)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}
