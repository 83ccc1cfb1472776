#!/usr/bin/env python3
"""An independent client for the bus wire protocol, written from PROTOCOL.md alone.

Speaks the client plane (§8): hello / welcome / confirm with BLAKE3 MACs,
then `request`s and `reply`s in checksum (XXH3-128) or authenticated-frames
(keyed BLAKE3) mode, answering pings, sending its own heartbeats, and closing
with `close`. Core deps: stdlib + `xxhash` + `blake3`. Transports are small
objects with `send_frame(bytes)`, `recv_frame(timeout) -> bytes | None`
(None: timed out, nothing lost), `close()` and `binding` (32 bytes, §8.2).

    python3 bus_client.py --address 127.0.0.1:7000 --cluster 0xb05 --key HEX --client-id 7 --requests 10
"""
import argparse
import hmac
import os
import random
import select
import socket
import struct
import sys
import threading
import time

import blake3
import xxhash

HEADER = 256
HELLO, WELCOME, CONFIRM, REJECT, PING, PONG, CLOSE, MESSAGE, REQUEST, REPLY = range(1, 11)
NAMES = dict(enumerate("hello welcome confirm reject ping pong close message request reply".split(), 1))
CONTROL = {HELLO, WELCOME, CONFIRM, REJECT, PING, PONG, CLOSE}  # header-only commands (§3)
# Bytes of the command area (128..256) each command uses; the rest is reserved (§3.1).
# Data commands end with the application's area, 160..256, which the bus never reads.
APP = (160, 256)
AREA = {HELLO: [(128, 202), (208, 240)], WELCOME: [(128, 193)], CONFIRM: [(128, 160)], REJECT: [(128, 134)],
        PING: [(128, 136)], PONG: [(128, 136)], CLOSE: [(128, 130)], MESSAGE: [(128, 132), APP],
        REQUEST: [(128, 158), APP], REPLY: [(128, 158), APP]}
REJECT_STATUS = {1: "ClusterMismatch", 2: "DirectionalRule", 3: "UnknownPeer", 4: "BadMac", 5: "StaleTimestamp",
                 6: "UnsupportedVersion", 7: "Busy", 8: "WrongAcceptor"}
REPLY_STATUS = {0: "Ok", 1: "Stale", 2: "Busy"}
CLOSE_REASON = {1: "Shutdown", 2: "Timeout", 3: "ProtocolViolation", 4: "Duplicate", 5: "Evicted"}
CLIENT_REPLICA, PLANE_CLIENT, U64_MAX = 255, 2, 2**64 - 1


class ProtocolError(Exception):
    """The peer broke §7 / §8 (or a MAC failed): the connection is unusable."""


class Silent(ConnectionError):
    """Nothing received for `liveness` seconds (§8.5)."""


class Rejected(Exception):
    def __init__(self, status, pmin, pmax):
        super().__init__(f"rejected: {REJECT_STATUS.get(status, status)} (protocol {pmin}..={pmax})")
        self.status = status


class PeerClosed(Exception):
    def __init__(self, reason):
        super().__init__(f"peer closed: {CLOSE_REASON.get(reason, reason)}")
        self.reason = reason


def le(n, width):
    return n.to_bytes(width, "little")


def u(b):
    return int.from_bytes(b, "little")


def derive(context, key):
    return blake3.blake3(key, derive_key_context=context).digest()


def mac(key, msg):
    return blake3.blake3(msg, key=key).digest()


class Checksums:
    """§4 checksum mode: XXH3-128, seed 0, stored little-endian."""
    def header(self, b):
        return xxhash.xxh3_128_intdigest(b).to_bytes(16, "little")
    body = header


class Tags:
    """§4 authenticated frames: keyed BLAKE3 under keys derived from the session secret S, first 16 bytes."""
    def __init__(self, secret):
        self.kh = derive("bus-proto v1 frame header tag", secret)
        self.kb = derive("bus-proto v1 frame body tag", secret)

    def header(self, b):
        return mac(self.kh, b)[:16]

    def body(self, b):
        return mac(self.kb, b)[:16]


def encode(command, area, body, *, cluster, sequence, integrity, replica=CLIENT_REPLICA, view=0, release=0):
    """One frame (§2): body value first, then the header value over 16..256 (§4)."""
    assert len(area) <= 128
    rest = (le(cluster, 16) + struct.pack("<IIIHBBQ", HEADER + len(body), view, release, 1, command, replica, sequence)
            + bytes(56) + area.ljust(128, b"\0"))
    rest = integrity.body(body) + rest
    return integrity.header(rest) + rest + body


def check_header(header, integrity, max_size):
    """§7 steps 2-7 on a 256-byte header; returns the frame size."""
    if not hmac.compare_digest(header[0:16], integrity.header(header[16:256])):
        raise ProtocolError("header integrity value does not verify")
    protocol, command = u(header[60:62]), header[62]
    if protocol != 1:
        raise ProtocolError(f"UnsupportedProtocol {protocol} (command byte {command})")
    size = u(header[48:52])
    if not HEADER <= size <= max_size:
        raise ProtocolError(f"size {size} outside 256..={max_size}")
    if command not in AREA:
        raise ProtocolError(f"UnknownCommand {command}")
    used = set().union(*(range(a, b) for a, b in AREA[command]))
    for off in list(range(72, 128)) + [o for o in range(128, 256) if o not in used]:
        if header[off]:
            raise ProtocolError(f"ReservedNonZero at {off}")
    if command in CONTROL and size != HEADER:
        raise ProtocolError(f"BodyNotAllowed in {NAMES[command]}")
    # Field rules for the commands a client receives.
    if (command == WELCOME and header[192] & ~1) or (command == REPLY and u(header[156:158]) not in REPLY_STATUS) \
            or (command == CLOSE and u(header[128:130]) not in CLOSE_REASON) \
            or (command in (REQUEST, REPLY) and u(header[144:152]) == U64_MAX) \
            or (command == REQUEST and header[156:158] != b"\0\0"):
        raise ProtocolError(f"invalid field in {NAMES[command]}")
    return size


class _StreamFrames:
    """Frames split from a byte stream (TCP, TLS, a QUIC stream) by the header's size field."""
    def take_frame(self):
        """The first whole frame in `buf`, removed from it, or None. A bad header fails before its
        size is trusted; the size must be within 256..=max_size (§7)."""
        if len(self.buf) < HEADER:
            return None
        header = bytes(self.buf[:HEADER])
        size = self.check_header(header) if self.check_header else u(header[48:52])
        if not HEADER <= size <= self.max_size:
            raise ProtocolError(f"frame size {size}")
        if len(self.buf) < size:
            return None
        frame = bytes(self.buf[:size])
        del self.buf[:size]
        return frame


class TcpTransport(_StreamFrames):
    """Plain TCP; frames are split by the header's size field (§1); binding is 32 zero bytes.
    The client sets `check_header` so a bad header fails before its size is trusted (§7)."""
    binding, max_size, check_header = bytes(32), 1 << 20, None

    def __init__(self, host, port, connect_timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send_frame(self, frame):
        self.sock.settimeout(None)
        self.sock.sendall(frame)

    def recv_frame(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if (frame := self.take_frame()) is not None:
                return frame
            self.sock.settimeout(None if deadline is None else max(0.0, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None  # a partial frame stays in buf
            if not data:
                raise ConnectionError("EOF" + (" mid-frame" if self.buf else ""))
            self.buf += data

    def close(self):
        self.sock.close()


class _TlsSocket:
    """pyOpenSSL connection behind a socket-like face (recv/sendall/settimeout/...), shared by
    TlsTransport and WsTransport (wss, handed to websockets as its `ssl` wrapper). Non-blocking
    underneath so timeouts work; the binding is the TLS exporter (label and context per the brief:
    PROTOCOL.md §8.2 does not name them)."""
    def __init__(self, sock, server_hostname, cafile=None, insecure=False, alpn=None):
        from OpenSSL import SSL
        self.SSL, self.sock, self.timeout, self.lock = SSL, sock, None, threading.Lock()
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        if alpn:
            ctx.set_alpn_protos(alpn)
        if not insecure:
            ctx.load_verify_locations(cafile) if cafile else ctx.set_default_verify_paths()
            ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_tlsext_host_name(server_hostname.encode())
        self.conn.set_connect_state()
        sock.setblocking(False)
        self._io(self.conn.do_handshake, 10.0)
        if not insecure:
            self._check_hostname(server_hostname)
        if alpn and self.conn.get_alpn_proto_negotiated() not in alpn:
            raise ConnectionError(f"ALPN not agreed: {self.conn.get_alpn_proto_negotiated()!r}")
        self.binding = self.conn.export_keying_material(b"EXPORTER-Channel-Binding", 32, b"")

    def _check_hostname(self, name):  # exact DNS name or IP address in the SAN (no wildcards)
        from cryptography import x509
        san = self.conn.get_peer_certificate().to_cryptography().extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName) + [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        if name not in names:
            raise ConnectionError(f"certificate does not name {name}")

    def _io(self, op, timeout, *args):
        """Run one OpenSSL call, waiting on the socket while it wants I/O. One call at a time:
        websockets reads on a thread of its own while we send, and an SSL object is not thread-safe."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                with self.lock:
                    return op(*args)
            except (self.SSL.WantReadError, self.SSL.WantWriteError) as e:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                r, w = ([self.sock], []) if isinstance(e, self.SSL.WantReadError) else ([], [self.sock])
                if not any(select.select(r, w, [], left)[:2]):
                    raise socket.timeout("TLS timed out")

    def recv(self, n):
        try:
            return self._io(self.conn.recv, self.timeout, n)
        except (self.SSL.ZeroReturnError, self.SSL.SysCallError):
            return b""

    def sendall(self, data):
        view = memoryview(data)
        while view:
            view = view[self._io(self.conn.send, self.timeout, view):]

    def settimeout(self, t):
        self.timeout = t

    def shutdown(self, how=None):
        try:
            self.conn.shutdown()
        except self.SSL.Error:
            pass

    def close(self):
        self.sock.close()

    def fileno(self):
        return self.sock.fileno()

    def getsockname(self):
        return self.sock.getsockname()

    def getpeername(self):
        return self.sock.getpeername()


class TlsTransport(TcpTransport):
    """TLS over TCP with pyOpenSSL, ALPN b"bus/1", binding = TLS exporter (PROTOCOL.md §8.9).
    Run against the node by tests/tests/real_clients.rs."""
    def __init__(self, host, port, server_hostname=None, cafile=None, insecure=False):
        super().__init__(host, port)
        self.sock = _TlsSocket(self.sock, server_hostname or host, cafile, insecure, alpn=[b"bus/1"])
        self.binding = self.sock.binding

    def close(self):
        self.sock.shutdown()
        self.sock.close()


class WsTransport:
    """WebSocket (websockets.sync.client), subprotocol "bus.v1", no compression, one binary
    message = one frame. wss:// does TLS with pyOpenSSL so the binding is the TLS exporter;
    ws:// has a zero binding. Run against the node by tests/tests/real_clients.rs."""
    def __init__(self, url, server_hostname=None, cafile=None, insecure=False, max_size=1 << 20):
        from websockets.sync.client import connect
        self.binding, self.max_size, self.check_header = bytes(32), max_size, None
        opts = dict(subprotocols=["bus.v1"], compression=None, max_size=max_size)
        if url.startswith("wss:"):
            outer = self

            class Wrap:  # websockets calls ssl.wrap_socket(sock, server_hostname=...)
                def wrap_socket(self, sock, server_hostname):
                    tls = _TlsSocket(sock, server_hostname, cafile, insecure)
                    outer.binding = tls.binding
                    return tls
            opts.update(ssl=Wrap(), server_hostname=server_hostname)
        self.ws = connect(url, **opts).__enter__()  # a connection in websockets 12 through 17
        if self.ws.subprotocol != "bus.v1":
            raise ConnectionError(f"subprotocol not agreed: {self.ws.subprotocol!r}")

    def send_frame(self, frame):
        from websockets.exceptions import ConnectionClosed
        try:
            self.ws.send(frame)
        except ConnectionClosed as e:
            raise ConnectionError(f"WebSocket closed: {e}") from e

    def recv_frame(self, timeout=None):
        from websockets.exceptions import ConnectionClosed
        try:
            frame = self.ws.recv(timeout)
        except TimeoutError:
            return None
        except ConnectionClosed as e:
            raise ConnectionError(f"WebSocket closed: {e}") from e
        if not isinstance(frame, bytes) or len(frame) < HEADER:
            raise ProtocolError("not one binary frame per message")
        size = self.check_header(frame[:HEADER]) if self.check_header else u(frame[48:52])
        if size != len(frame):
            raise ProtocolError(f"message of {len(frame)} bytes holds a frame of {size}")
        return frame

    def close(self):
        self.ws.close()


class QuicTransport(_StreamFrames):
    """QUIC with aioquic's sans-IO connection on a UDP socket: TLS 1.3, ALPN b"bus/1", the bus
    frames on the one bidirectional stream this client opens (PROTOCOL.md §8.9). aioquic exposes
    no TLS exporter, so the binding is 32 zero bytes: the listener must be `unbound`. Run against
    the node by tests/tests/real_clients.rs (and `quic_cases.py`)."""
    binding, max_size, check_header = bytes(32), 1 << 20, None

    def __init__(self, host, port, server_hostname=None, cafile=None, insecure=False, alpn=("bus/1",),
                 connect_timeout=10.0, stall=False):
        import ssl
        from aioquic.quic import events
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
        self.ev = events
        config = QuicConfiguration(is_client=True, alpn_protocols=list(alpn), server_name=server_hostname or host)
        if insecure:
            config.verify_mode = ssl.CERT_NONE
        elif cafile:
            config.load_verify_locations(cafile)
        family, _, _, _, self.addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.conn = QuicConnection(configuration=config)
        self.buf, self.stream, self.others = bytearray(), None, {}
        self.connected = self.eof = False
        self.closed = None  # why the connection ended (ConnectionTerminated), once it has
        self.stall = stall  # send the first flight only, then never again
        self.conn.connect(self.addr, now=time.monotonic())
        self._flush(force=True)
        deadline = time.monotonic() + connect_timeout
        while not self.connected:
            if self.closed:
                raise ConnectionError(self.closed)
            if not self.pump(deadline):
                raise socket.timeout("QUIC handshake timed out")
        self.stream = self.conn.get_next_available_stream_id()

    def _flush(self, force=False):
        if self.stall and not force:
            return
        for data, addr in self.conn.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, addr)

    def pump(self, deadline):
        """Waits for one datagram or the connection's timer, at most until `deadline` (None:
        forever); handles events and sends what is due. False once the deadline has passed."""
        now = time.monotonic()
        waits = [t - now for t in (deadline, self.conn.get_timer()) if t is not None]
        readable = select.select([self.sock], [], [], max(0.0, min(waits)) if waits else None)[0]
        now = time.monotonic()
        if readable:
            data, addr = self.sock.recvfrom(65536)
            self.conn.receive_datagram(data, addr, now)
        timer = self.conn.get_timer()
        if timer is not None and now >= timer:
            self.conn.handle_timer(now)
        while (event := self.conn.next_event()) is not None:
            if isinstance(event, self.ev.HandshakeCompleted):
                self.connected = True
            elif isinstance(event, self.ev.StreamDataReceived) and event.stream_id == self.stream:
                self.buf += event.data
                self.eof |= event.end_stream
            elif isinstance(event, (self.ev.StreamDataReceived, self.ev.StreamReset,
                                    self.ev.StopSendingReceived)):
                self.others.setdefault(event.stream_id, []).append(event)
            elif isinstance(event, self.ev.ConnectionTerminated):
                self.closed = f"QUIC closed: error {event.error_code:#x} {event.reason_phrase!r}"
        self._flush()
        return deadline is None or time.monotonic() < deadline

    def send_frame(self, frame, stream=None):
        if self.closed:
            raise ConnectionError(self.closed)
        self.conn.send_stream_data(self.stream if stream is None else stream, frame, end_stream=False)
        self._flush()

    def recv_frame(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if (frame := self.take_frame()) is not None:
                return frame
            if self.eof:
                raise ConnectionError("EOF" + (" mid-frame" if self.buf else ""))
            if self.closed:
                raise ConnectionError(self.closed)
            if not self.pump(deadline):
                return None  # a partial frame stays in buf

    def close(self):
        """Finishes the stream, lets it be delivered (at most a second), then closes QUIC."""
        if not self.closed and self.stream is not None:
            try:
                self.conn.send_stream_data(self.stream, b"", end_stream=True)
                self._flush()
                deadline = time.monotonic() + 1.0
                while not self.eof and not self.closed and self.pump(deadline):
                    pass
            except Exception:  # the stream may already be gone: the close still goes out
                pass
        self.conn.close()
        self._flush()
        self.sock.close()


class Client:
    """One client-plane connection (§8). `request()` sends and waits; `send_request()` and
    `recv_reply()` allow pipelining. Defaults mirror §8.8. Synchronous: pings are answered only
    inside `recv_reply()`, so an idle caller should call it at least every `liveness` seconds
    (the node closes with Timeout after 5 s of silence)."""
    def __init__(self, transport, *, cluster, key, client_id, acceptor=0, authenticated=False, binding=None,
                 first_request=0, max_message_size=1 << 20, heartbeat=1.0, liveness=5.0, handshake_timeout=10.0,
                 close_grace=2.0):
        self.t, self.cluster, self.client_id, self.acceptor = transport, cluster, client_id, acceptor
        self.key = bytes.fromhex(key) if isinstance(key, str) else key
        self.binding = binding if binding is not None else getattr(transport, "binding", bytes(32))
        assert len(self.key) == 32 and len(self.binding) == 32
        self.ask_auth, self.authenticated = authenticated, False
        self.max_size, self.heartbeat, self.liveness = max_message_size, heartbeat, liveness
        self.handshake_timeout, self.close_grace = handshake_timeout, close_grace
        self.send_mode = self.recv_mode = Checksums()
        self.send_seq = self.recv_seq = 0
        self.next_request, self.outstanding, self.last_app = first_request, {}, None
        self.closed = False
        self.last_sent = self.last_recv = time.monotonic()
        # Stream transports verify a header before trusting its size (§7), in the current mode.
        transport.check_header = lambda h: check_header(h, self.recv_mode, self.max_size)
        transport.max_size = max_message_size

    # -- frames ---------------------------------------------------------------------------------
    def _send(self, command, area, body=b"", view=0, release=0):
        self.t.send_frame(encode(command, area, body, cluster=self.cluster, sequence=self.send_seq,
                                 integrity=self.send_mode, view=view, release=release))
        self.send_seq += 1
        self.last_sent = time.monotonic()

    def _recv(self, timeout):
        """One verified frame (§7, §8.5), or None on timeout."""
        frame = self.t.recv_frame(timeout)
        if frame is None:
            return None
        self.last_recv = time.monotonic()
        h, body = frame[:HEADER], frame[HEADER:]
        check_header(h, self.recv_mode, self.max_size)
        if u(h[48:52]) != len(frame) or not hmac.compare_digest(h[16:32], self.recv_mode.body(body)):
            raise ProtocolError("body integrity value does not verify")
        command, seq = h[62], u(h[64:72])
        # Identity (§8.5). A reject is unauthenticated, carries replica 255, and a refusal at accept
        # names the acceptor's cluster rather than ours (§8.3): it is reported whatever it says.
        if command != REJECT and (u(h[32:48]) != self.cluster or h[63] != self.acceptor):
            raise ProtocolError(f"frame from cluster {u(h[32:48]):#x} replica {h[63]}: not our acceptor")
        if seq != self.recv_seq:
            raise ProtocolError(f"sequence {seq}, expected {self.recv_seq}")
        self.recv_seq += 1
        return command, h, body

    # -- handshake (§8.2, §8.4) -----------------------------------------------------------------
    def handshake(self):
        k_hs = derive("bus-proto v1 handshake mac", self.key)
        nonce_d, flags = os.urandom(32), int(self.ask_auth)
        ids = le(self.cluster, 16) + le(self.client_id, 16) + le(self.acceptor, 16)
        T = struct.pack("<HB", 1, PLANE_CLIENT) + ids + nonce_d + le(time.time_ns(), 8) + bytes([flags]) + self.binding
        mac_h = mac(k_hs, b"hello\0\0\0" + T)
        self._send(HELLO, ids[16:] + T[51:91] + bytes([PLANE_CLIENT, flags]) + bytes(6) + mac_h)
        got = self._recv(self.handshake_timeout)
        if got is None:
            raise TimeoutError("no answer to hello")
        command, h, _ = got
        if command == REJECT:
            raise Rejected(u(h[128:130]), u(h[130:132]), u(h[132:134]))
        if command != WELCOME:
            raise ProtocolError(f"expected welcome, got {NAMES[command]}")
        nonce_a, mac_w, flags_w = h[128:160], h[160:192], h[192:193]
        transcript = T + mac_h + nonce_a + flags_w
        if not hmac.compare_digest(mac_w, mac(k_hs, b"welcome\0" + transcript)):
            raise ProtocolError("mac_w does not verify: the acceptor did not prove the key")
        if self.ask_auth and not flags_w[0] & 1:
            raise ProtocolError("downgrade: asked for authenticated frames, welcome says no")
        self.authenticated = bool(flags_w[0] & 1)
        secret = mac(derive("bus-proto v1 session secret", self.key), b"session\0" + transcript + mac_w)
        if self.authenticated:  # the acceptor switched after welcome, we switch after confirm (§8.5)
            self.recv_mode = Tags(secret)
        self._send(CONFIRM, mac(k_hs, b"confirm\0" + transcript + mac_w))
        if self.authenticated:
            self.send_mode = self.recv_mode
        return self

    # -- requests (§3.1, §9) --------------------------------------------------------------------
    def send_request(self, operation, body, app=None):
        """`app`: the application header (view, release, 96-byte area, §3.1), or none (zeros)."""
        view, release, area = app or (0, 0, bytes(96))
        number, self.next_request = self.next_request, self.next_request + 1
        fields = le(self.client_id, 16) + le(number, 8) + le(operation, 4) + bytes(4) + area
        self._send(REQUEST, fields, body, view=view, release=release)
        self.outstanding[number] = (operation, body)
        return number

    def recv_reply(self, timeout=30.0):
        """(request number, status, operation, body) of the next reply; answers pings, sends
        heartbeats, and gives up after `liveness` seconds of silence (close Timeout). The reply's
        application header (view, release, area) is left in `last_app`."""
        deadline = time.monotonic() + timeout
        heard = max(self.last_recv, time.monotonic())  # time not spent reading does not count (§8.5)
        while True:
            now = time.monotonic()
            if now - self.last_sent >= self.heartbeat:
                self._send(PING, le(time.monotonic_ns(), 8))
            wait = min(deadline, heard + self.liveness, self.last_sent + self.heartbeat) - now
            try:
                got = self._recv(max(wait, 0.001))
            except ProtocolError as e:
                self._finish(e)
            if got is None:
                if time.monotonic() - heard >= self.liveness:
                    self._finish(Silent("nothing received for liveness_timeout"))
                if time.monotonic() >= deadline:
                    raise TimeoutError("no reply")
                continue
            heard = self.last_recv
            command, h, body = got
            if command == PING:
                self._send(PONG, h[128:136])
            elif command == PONG:
                pass
            elif command == CLOSE:
                self._finish(PeerClosed(u(h[128:130])))
            elif command == REPLY:
                number = u(h[144:152])
                if u(h[128:144]) != self.client_id or number not in self.outstanding:
                    self._finish(ProtocolError(f"reply to a request we did not send ({number})"))
                del self.outstanding[number]
                self.last_app = (u(h[52:56]), u(h[56:60]), h[160:256])
                return number, u(h[156:158]), u(h[152:156]), body
            else:
                self._finish(ProtocolError(f"{NAMES[command]} on the client plane after the handshake"))

    def request(self, operation, body, timeout=30.0):
        number = self.send_request(operation, body)
        got = self.recv_reply(timeout)
        assert got[0] == number, "replies to one-at-a-time requests come in order"
        return got

    # -- closing (§8.5) -------------------------------------------------------------------------
    def _finish(self, error):
        """Send our close (answering the peer's, or Timeout, or ProtocolViolation), drop the
        connection, raise `error`."""
        reason = {PeerClosed: 1, Silent: 2, ProtocolError: 3}[type(error)]
        try:
            self._send(CLOSE, le(reason, 2))
        except OSError:
            pass
        self.closed = True
        self.t.close()
        raise error

    def close(self):
        """Graceful close: send close Shutdown, then wait close_grace for the peer's close or EOF."""
        if self.closed:
            return
        self.closed = True
        self._send(CLOSE, le(1, 2))
        deadline = time.monotonic() + self.close_grace
        try:
            while (left := deadline - time.monotonic()) > 0:
                got = self._recv(left)
                if got is None or got[0] == CLOSE:
                    break  # a reply arriving meanwhile is dropped: we may not send after close
        except (OSError, ProtocolError):
            pass  # EOF (ConnectionError) ends the close as well
        self.t.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])

    def num(text):  # decimal or 0x-hex
        return int(text, 0)
    p.add_argument("--address", required=True, help="HOST:PORT (tcp, tls, quic); ws/wss URL is built from it")
    p.add_argument("--transport", choices=["tcp", "tls", "ws", "wss", "quic"], default="tcp")
    p.add_argument("--ws-path", default="/")
    p.add_argument("--cafile"), p.add_argument("--insecure", action="store_true")
    p.add_argument("--server-name", default=None, help="TLS name to verify (default: the host)")
    p.add_argument("--binding", choices=["exporter", "none"], default="exporter",
                   help="tls/wss: bind the handshake to the TLS exporter, or not (an Unbound listener)")
    p.add_argument("--cluster", type=num, required=True, help="decimal or 0x-hex (`bus node` default: 0xb05)")
    p.add_argument("--key", required=True, help="pre-shared key, 64 hex characters")
    p.add_argument("--client-id", type=num, default=None, help="default: random u128")
    p.add_argument("--acceptor", type=num, default=0, help="the node's replica id")
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--first-request", type=int, default=0, help="first request number")
    p.add_argument("--window", type=int, default=1, help="requests in flight at once")
    p.add_argument("--body-size", type=int, default=32)
    p.add_argument("--operation", type=num, default=1)
    p.add_argument("--authenticated", action="store_true", help="ask for authenticated frames")
    p.add_argument("--pause", type=float, default=0.0, help="seconds idle before the requests (heartbeats)")
    a = p.parse_args()
    host, _, port = a.address.rpartition(":")
    client_id = a.client_id if a.client_id is not None else random.getrandbits(128)
    if a.transport == "tcp":
        transport = TcpTransport(host, int(port))
    elif a.transport == "tls":
        transport = TlsTransport(host, int(port), server_hostname=a.server_name, cafile=a.cafile,
                                 insecure=a.insecure)
    elif a.transport == "quic":
        transport = QuicTransport(host, int(port), server_hostname=a.server_name, cafile=a.cafile,
                                  insecure=a.insecure)
    else:
        transport = WsTransport(f"{a.transport}://{a.address}{a.ws_path}", server_hostname=a.server_name,
                                cafile=a.cafile, insecure=a.insecure)
    if a.binding == "none":
        transport.binding = bytes(32)
    c = Client(transport, cluster=a.cluster, key=a.key.strip(), client_id=client_id, acceptor=a.acceptor,
               authenticated=a.authenticated, first_request=a.first_request)
    try:
        c.handshake()
    except (Rejected, ProtocolError, OSError) as e:
        transport.close()  # errors before authentication close silently (§8.5)
        print(f"handshake failed: {type(e).__name__}: {e}")
        return 1
    mode = "authenticated frames" if c.authenticated else "checksums"
    print(f"connected: client {client_id:#x}, {mode}")
    ok = failed = sent = 0
    started = {}
    try:
        end = time.monotonic() + a.pause
        while (left := end - time.monotonic()) > 0:  # idle: the node pings, we pong, we ping too
            try:
                c.recv_reply(left)
            except TimeoutError:
                pass
        while ok + failed < a.requests:
            while sent < a.requests and len(c.outstanding) < a.window:
                number = a.first_request + sent
                body = (f"request {number} ".encode() * (a.body_size // 8 + 1))[:a.body_size]
                # Every request carries an application header; the echo returns it (§3.1).
                app = (number & 0xFFFFFFFF, 7, bytes((number + i) % 256 for i in range(96)))
                started[c.send_request(a.operation, body, app)] = (time.monotonic(), body, app)
                sent += 1
            number, status, operation, body = c.recv_reply()
            t0, expected, app = started.pop(number)
            ms = (time.monotonic() - t0) * 1e3
            if status == 0 and c.last_app != app:
                failed += 1
                print(f"request {number}: FAIL application header not echoed: {c.last_app}")
            elif status == 0 and body == expected and operation == a.operation:
                ok += 1
                print(f"request {number}: ok, {len(body)} bytes echoed, {ms:.2f} ms")
            else:
                failed += 1
                print(f"request {number}: FAIL status {REPLY_STATUS[status]}, operation {operation}, "
                      f"body {'matches' if body == expected else f'differs ({len(body)} bytes)'}")
        c.close()
    except (ProtocolError, PeerClosed, OSError, TimeoutError) as e:
        failed += a.requests - ok - failed
        print(f"connection failed: {type(e).__name__}: {e}")
    print(f"summary: {a.requests} requests, {ok} ok, {failed} failed ({mode}, {a.transport})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
