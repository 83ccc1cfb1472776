//! Received frames: validation against the connection's state.

use super::{CloseCause, Closing, Connection, Event, Phase, Side, Violation};
use crate::crypto::PeerId;
use crate::handshake::{Binding, IncomingHello};
use crate::time::Instant;
use crate::wire::{
    CloseReason, Command, DecodeError, Frame, FrameDecoder, FrameKeys, HEADER_SIZE, Integrity,
    Kind, Plane, RejectStatus,
};
use alloc::boxed::Box;
use bytes::BytesMut;

/// Where a connection puts the replica-plane messages it decodes: its event
/// queue (`None`), or straight to its owner.
pub(crate) type Messages<'a, 's> = Option<&'a mut (dyn FnMut(Frame) + 's)>;

/// A connection's decoder (its receive buffer, any partial frame, and the
/// keys frames are verified with), lent to a socket task so that frames
/// are verified without the lock the connection sits behind: the bytes
/// read go into [`LentDecoder::buffer_mut`], [`LentDecoder::verify`]
/// checks their checksums or tags, and the decoder goes back to the
/// connection (in `bus_proto::host`, `Machine::handle_verified`), which
/// then only parses the frames and decides what they mean.
#[derive(Debug)]
pub struct LentDecoder {
    decoder: Box<FrameDecoder>,
    /// The handshake is over, so nothing decoded can change how the frames
    /// after it are verified or how large they may be.
    settled: bool,
}

impl LentDecoder {
    /// The receive buffer, to read into. Only append.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        self.decoder.buffer_mut()
    }

    /// Checks the checksums or tags of the complete frames buffered
    /// ([`FrameDecoder::verify_ahead`]). Checks nothing while the
    /// connection is handshaking (a handshake frame changes how the next
    /// ones verify): those frames are checked once the decoder is back.
    pub fn verify(&mut self) {
        if self.settled {
            self.decoder.verify_ahead();
        }
    }
}

impl Connection {
    /// Lends the decoder to a socket task; see [`LentDecoder`]. `None`
    /// while it is already lent.
    pub(crate) fn lend_decoder(&mut self) -> Option<LentDecoder> {
        let decoder = self.decoder.take()?;
        let settled = matches!(self.phase, Phase::Established);
        Some(LentDecoder { decoder, settled })
    }

    /// Takes back the lent decoder, with new bytes and perhaps frames
    /// already verified, and processes what it holds.
    #[cfg_attr(not(feature = "host"), allow(dead_code))]
    pub(crate) fn handle_verified(
        &mut self,
        now: Instant,
        lent: LentDecoder,
        messages: Messages<'_, '_>,
    ) {
        self.decoder = Some(lent.decoder);
        self.handle_read_with(now, messages);
    }

    /// Decodes and handles every complete frame buffered, stopping at a
    /// parked `hello` or a close.
    pub(super) fn process(&mut self, now: Instant, mut messages: Messages<'_, '_>) {
        if self.binding.is_none() {
            // The transport is still handshaking: its bytes wait, at most
            // a header's worth (a host feeds none before the binding).
            let bytes = self.buffered();
            if bytes > HEADER_SIZE {
                self.finish(CloseCause::Unauthenticated(Violation::EarlyData { bytes }));
            }
            return;
        }
        if matches!(self.phase, Phase::HelloParked(_)) && self.buffered() > 0 {
            // An honest dialer sends nothing between `hello` and `welcome`;
            // refuse to buffer an unauthenticated stream while we decide.
            let bytes = self.buffered();
            return self.finish(CloseCause::Unauthenticated(Violation::EarlyData { bytes }));
        }
        while self.closed.is_none() && !matches!(self.phase, Phase::HelloParked(_)) {
            // Lent: the bytes are with the socket task, which verifies them.
            let Some(decoder) = &mut self.decoder else {
                break;
            };
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    self.last_received = now;
                    self.stats.frames_received += 1;
                    self.stats.bytes_received += (HEADER_SIZE + frame.body.len()) as u64;
                    self.on_frame(now, frame, messages.as_deref_mut());
                }
                Ok(None) => break,
                Err(e) => self.on_decode_error(e),
            }
        }
        if self.closed.is_none()
            && matches!(self.phase, Phase::HelloParked(_))
            && self.buffered() > 0
        {
            // Bytes that came with the `hello` (in the same read) are early
            // data too: refused before the gate runs (PROTOCOL.md §8.3).
            let bytes = self.buffered();
            self.finish(CloseCause::Unauthenticated(Violation::EarlyData { bytes }));
        }
    }

    /// Bytes received but not yet decoded (none while the decoder is lent).
    fn buffered(&self) -> usize {
        self.decoder.as_ref().map_or(0, |d| d.buffered())
    }

    /// The transport refused a frame of `size` bytes over the limit
    /// before buffering it (a WebSocket message): closed exactly as the
    /// decoder closes on an oversize frame.
    pub fn refuse_frame_size(&mut self, size: u32) {
        if self.closed.is_none() {
            let max = self.frame_limit();
            self.on_decode_error(DecodeError::SizeTooLarge { size, max });
        }
    }

    fn on_decode_error(&mut self, e: DecodeError) {
        if matches!(self.phase, Phase::AwaitingHello)
            && let DecodeError::UnsupportedProtocol { command, .. } = e
            && command == Command::Hello.to_wire()
        {
            // A dialer speaking another version learns which we speak.
            self.queue_handshake(Kind::Reject(crate::wire::Reject {
                status: RejectStatus::UnsupportedVersion,
                protocol_min: crate::wire::PROTOCOL_VERSION,
                protocol_max: crate::wire::PROTOCOL_VERSION,
            }));
            self.finish(CloseCause::Refused(RejectStatus::UnsupportedVersion));
            return;
        }
        self.fail(CloseCause::Decode(e), CloseReason::ProtocolViolation);
    }

    /// A violation before the peer authenticated is closed silently and
    /// classed unauthenticated; after, the peer is told.
    fn violation(&mut self, v: Violation) {
        if self.is_established() {
            self.fail(CloseCause::Violation(v), CloseReason::ProtocolViolation);
        } else {
            self.finish(CloseCause::Unauthenticated(v));
        }
    }

    fn unexpected(&mut self, command: Command) {
        let state = self.phase.name();
        self.violation(Violation::Unexpected { command, state });
    }

    fn on_frame(&mut self, now: Instant, frame: Frame, messages: Messages<'_, '_>) {
        let h = &frame.header;
        // `u64::MAX` is never valid, so the counter cannot pin at its maximum.
        if h.sequence != self.recv_seq || h.sequence == u64::MAX {
            let expected = self.recv_seq;
            return self.violation(Violation::Sequence {
                expected,
                received: h.sequence,
            });
        }
        self.recv_seq = self.recv_seq.saturating_add(1);
        let command = h.command();
        // Header fields are checked once the peer's identity is known; a
        // `reject` is unauthenticated whatever it says, so it is not.
        let identity_known = !matches!(self.phase, Phase::AwaitingHello);
        if identity_known && command != Command::Reject {
            if h.cluster != self.cluster {
                let (expected, received) = (self.cluster, h.cluster);
                return self.violation(Violation::Cluster { expected, received });
            }
            if h.replica != self.peer_replica {
                let (expected, received) = (self.peer_replica, h.replica);
                return self.violation(Violation::Replica { expected, received });
            }
        }
        match core::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::AwaitingHello => match frame.header.kind {
                Kind::Hello(hello) => {
                    self.phase = Phase::HelloParked(Box::new(IncomingHello {
                        cluster: frame.header.cluster,
                        replica: frame.header.replica,
                        hello: *hello,
                        // Set: nothing is decoded before it is.
                        binding: self.binding.unwrap_or(Binding::NONE),
                    }));
                }
                _ => {
                    self.phase = Phase::AwaitingHello;
                    self.unexpected(command);
                }
            },
            Phase::Dialing(handshake) => match &frame.header.kind {
                Kind::Welcome(welcome) => match handshake.on_welcome(welcome) {
                    Ok(done) => {
                        self.phase = Phase::Established;
                        self.queue_handshake(Kind::Confirm {
                            mac: done.confirm_mac,
                        });
                        self.established(now, done.frame_keys);
                    }
                    Err(e) => self.finish(CloseCause::Handshake(e)),
                },
                Kind::Reject(reject) => self.finish(CloseCause::Rejected(*reject)),
                _ => {
                    self.phase = Phase::Dialing(handshake);
                    self.unexpected(command);
                }
            },
            Phase::Welcomed(handshake) => match &frame.header.kind {
                Kind::Confirm { mac } => match handshake.on_confirm(mac) {
                    Ok(keys) => {
                        self.phase = Phase::Established;
                        self.established(now, keys);
                    }
                    Err(e) => self.finish(CloseCause::Handshake(e)),
                },
                _ => {
                    self.phase = Phase::Welcomed(handshake);
                    self.unexpected(command);
                }
            },
            Phase::Established => {
                self.phase = Phase::Established;
                self.on_established_frame(frame, messages);
            }
            parked @ (Phase::HelloParked(_) | Phase::Closed) => self.phase = parked,
        }
    }

    /// Switches both directions to the negotiated integrity mode and the
    /// full size limit. Called right after the last handshake frame of each
    /// direction is encoded (ours) or decoded (theirs).
    fn established(&mut self, now: Instant, keys: Option<FrameKeys>) {
        let integrity = keys.map_or(Integrity::Checksum, Integrity::Authenticated);
        // Called while processing what the decoder holds: it is here.
        if let Some(decoder) = &mut self.decoder {
            decoder.set_integrity(integrity.clone());
            decoder.set_max_message_size(self.limits.max_message_size);
        }
        self.integrity_out = integrity;
        self.last_received = now;
        self.last_sent = now;
        // The acceptor learned the peer at admission; the dialer dialled it.
        let peer = *self.peer.get_or_insert(PeerId::Replica(self.peer_replica));
        self.events.push_back(Event::Established {
            peer,
            authenticated_frames: self.integrity_out.is_authenticated(),
        });
    }

    fn on_established_frame(&mut self, frame: Frame, messages: Messages<'_, '_>) {
        let command = frame.header.command();
        if self.closing.is_some_and(|c| c.peer_reason.is_some()) {
            // The peer's `close` is its last frame.
            return self.violation(Violation::Unexpected {
                command,
                state: "after the peer's close",
            });
        }
        match &frame.header.kind {
            Kind::Ping { token } => self.pong = Some(*token),
            Kind::Pong { token } => {
                // The token is our monotonic time when we pinged.
                let sent = Instant::from_nanos(*token);
                self.rtt = Some(self.last_received.saturating_duration_since(sent));
            }
            Kind::Close { reason } => self.on_peer_close(*reason),
            Kind::Message { .. } if self.plane == Some(Plane::Replica) => match messages {
                Some(deliver) => deliver(frame),
                None => self.events.push_back(Event::Message(frame)),
            },
            Kind::Request(r)
                if self.plane == Some(Plane::Client) && self.side == Side::Acceptor =>
            {
                match self.peer {
                    Some(PeerId::Client(id)) if r.client != id => {
                        let received = r.client;
                        self.violation(Violation::Client {
                            expected: id,
                            received,
                        });
                    }
                    _ => self.events.push_back(Event::Message(frame)),
                }
            }
            Kind::Reply { request: r, .. }
                if self.plane == Some(Plane::Client) && self.side == Side::Dialer =>
            {
                match self.local_client {
                    Some(id) if r.client != id => {
                        let received = r.client;
                        self.violation(Violation::Client {
                            expected: id,
                            received,
                        });
                    }
                    _ => self.events.push_back(Event::Message(frame)),
                }
            }
            _ => self.unexpected(command),
        }
    }

    fn on_peer_close(&mut self, reason: CloseReason) {
        match self.closing.as_mut() {
            Some(closing) => {
                closing.peer_reason = Some(reason);
                if closing.close_sent {
                    let ours = closing.reason;
                    self.finish(CloseCause::Local(ours));
                }
            }
            None => {
                // Answer with our own `close` after flushing what is queued,
                // within the grace period.
                self.closing = Some(Closing {
                    reason,
                    deadline: self.last_received.saturating_add(self.limits.close_grace),
                    close_sent: false,
                    peer_reason: Some(reason),
                    initiated_by_peer: true,
                });
            }
        }
    }
}
