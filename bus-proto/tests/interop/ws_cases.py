#!/usr/bin/env python3
"""The WebSocket transport's rules, checked with Python `websockets` (a client
nobody on the bus wrote) against a node listening on ws:// or wss://:

- a full bus handshake and requests, one frame per binary message;
- a request split into WebSocket fragments is one frame;
- keepalive pings get pongs with no bus traffic;
- no subprotocol: HTTP 400;
- a text message: close 1003; an oversize message: close 1009;
  two frames in one message: close 1002;
- a WebSocket close completes within close_grace.

Prints one line per case; exits non-zero on the first failure.
Usage: ws_cases.py --url ws://127.0.0.1:PORT/bus --cluster N --key HEX [--cafile PEM]
"""
import argparse
import ssl
import sys
import time

import bus_client
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

CLOSE_GRACE = 2.0


def fail(case, why):
    print(f"FAIL {case}: {why}")
    sys.exit(1)


def ok(case, detail=""):
    print(f"ok   {case}{': ' + detail if detail else ''}")


def options(args, subprotocols=("bus.v1",)):
    opts = dict(compression=None, max_size=2 << 20, open_timeout=5, close_timeout=CLOSE_GRACE)
    if subprotocols:
        opts["subprotocols"] = list(subprotocols)
    if args.url.startswith("wss:"):
        context = ssl.create_default_context(cafile=args.cafile)
        opts.update(ssl=context, server_hostname="localhost")
    return opts


def bus_session(args):
    """A handshaken bus client over the WebSocket transport of bus_client.py (pyOpenSSL
    for wss, so the binding is the TLS exporter when the listener is bound)."""
    transport = bus_client.WsTransport(args.url, server_hostname="localhost", cafile=args.cafile)
    if args.unbound:
        transport.binding = bytes(32)
    client = bus_client.Client(transport, cluster=args.cluster, key=args.key, client_id=int(time.time_ns()))
    return client.handshake(), transport.ws


def expect_close(case, ws, code):
    try:
        while True:
            ws.recv(timeout=5)
    except ConnectionClosed as e:
        got = e.rcvd.code if e.rcvd else None
        if got != code:
            fail(case, f"closed with {got}, expected {code}")
        ok(case, f"close {code}")
    except TimeoutError:
        fail(case, f"not closed (expected {code})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--cluster", type=lambda t: int(t, 0), required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--cafile")
    p.add_argument("--unbound", action="store_true", help="binding of zeros (an Unbound wss listener)")
    args = p.parse_args()

    client, ws = bus_session(args)
    for i in range(5):
        number, status, _, body = client.request(1, b"ws %d" % i)
        if status != 0 or body != b"ws %d" % i:
            fail("requests", f"request {number}: status {status}, body {body!r}")
    ok("handshake and requests", "5 echoed")

    # One request frame sent as three WebSocket fragments.
    frame = bus_client.encode(bus_client.REQUEST,
                              bus_client.le(client.client_id, 16) + bus_client.le(client.next_request, 8)
                              + bus_client.le(1, 4), b"fragmented", cluster=client.cluster,
                              sequence=client.send_seq, integrity=client.send_mode)
    client.outstanding[client.next_request] = (1, b"fragmented")
    client.next_request += 1
    client.send_seq += 1
    ws.send(iter([frame[:100], frame[100:300], frame[300:]]))
    _, status, _, body = client.recv_reply(5)
    if body != b"fragmented":
        fail("fragmented message", f"got {body!r}")
    ok("fragmented message", "one frame")

    # Pings with no bus traffic get pongs.
    for _ in range(3):
        if not ws.ping().wait(5):
            fail("ping", "no pong")
    ok("ping", "3 pongs")

    # Two frames in one message, after the handshake.
    two = frame + frame
    ws.send(two)
    expect_close("two frames in one message", ws, 1002)

    # A text message.
    _, ws = bus_session(args)
    ws.send("hello")
    expect_close("text message", ws, 1003)

    # An oversize message before authentication (the limit is one header).
    with connect(args.url, **options(args)) as raw:
        raw.send(bytes(300))
        expect_close("oversize before authentication", raw, 1009)

    # An oversize message after authentication (the limit is max_message_size).
    _, ws = bus_session(args)
    try:
        ws.send(bytes((1 << 20) + 1))
    except ConnectionClosed:
        pass  # refused from the header while the rest was still being sent
    expect_close("oversize after authentication", ws, 1009)

    # No subprotocol: refused with HTTP 400 before any WebSocket.
    try:
        connect(args.url, **options(args, subprotocols=None)).close()
        fail("no subprotocol", "the upgrade was accepted")
    except InvalidStatus as e:
        if e.response.status_code != 400:
            fail("no subprotocol", f"status {e.response.status_code}")
        ok("no subprotocol", "HTTP 400")

    # A WebSocket close is answered (websockets gives up after close_grace
    # and reports 1006 if no close frame came back).
    _, ws = bus_session(args)
    ws.close(1000)
    if ws.close_code != 1000:
        fail("close", f"code {ws.close_code}")
    ok("close", "answered with 1000")
    print("all WebSocket cases passed")


if __name__ == "__main__":
    main()
