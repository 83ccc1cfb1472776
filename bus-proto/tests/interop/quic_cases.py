#!/usr/bin/env python3
"""The QUIC transport's rules, checked with aioquic (a QUIC stack nobody on the bus wrote)
against a node listening on quic:// with an unbound listener (aioquic exposes no exporter):

- requests on the client's one bidirectional stream, small and larger than a packet;
- the node allows one bidirectional stream and no unidirectional one: a second stream of
  either kind stays blocked by QUIC's own limits, and the first keeps working;
- a client offering another ALPN is refused during the QUIC handshake;
- a client that sends its first flight and then stalls is closed by the node (the node's
  handshake deadline, checked by the Rust side).

Prints one line per case; exits non-zero on the first failure.
Usage: quic_cases.py --address 127.0.0.1:PORT --cafile PEM --cluster N --key HEX --case NAME
"""
import argparse
import sys
import time

import bus_client


def fail(case, why):
    print(f"FAIL {case}: {why}")
    sys.exit(1)


def ok(case, detail=""):
    print(f"ok   {case}{': ' + detail if detail else ''}")


def transport(args, **extra):
    host, _, port = args.address.rpartition(":")
    return bus_client.QuicTransport(host, int(port), server_hostname="localhost", cafile=args.cafile, **extra)


def client(args, t):
    c = bus_client.Client(t, cluster=args.cluster, key=args.key, client_id=int.from_bytes(bus_client.os.urandom(16), "little"))
    c.handshake()
    return c


def requests(args):
    t = transport(args)
    c = client(args, t)
    for i, size in enumerate([16, 3000, 200_000, 16]):
        body = bytes([i % 251]) * size
        number, status, _, got = c.request(1, body)
        if status != 0 or got != body:
            fail("requests", f"request {number}: status {status}, {len(got)} bytes back of {size}")
    c.close()
    ok("requests", "4 requests echoed over the one stream, up to 200000 bytes")


def streams(args):
    t = transport(args)
    c = client(args, t)
    limits = (t.conn._remote_max_streams_bidi, t.conn._remote_max_streams_uni)
    if limits != (1, 0):
        fail("streams", f"the node allows {limits[0]} bidirectional and {limits[1]} unidirectional streams")
    # A request on a second bidirectional stream and bytes on a unidirectional one: QUIC's
    # limits keep both from being opened at all.
    second = t.conn.get_next_available_stream_id()
    uni = t.conn.get_next_available_stream_id(is_unidirectional=True)
    t.send_frame(b"\0" * 256, stream=second)
    t.send_frame(b"\0" * 256, stream=uni)
    try:  # a second of bus traffic (pings answered) for any answer on the other streams
        c.recv_reply(1.0)
        fail("streams", "a reply to a request never sent on the first stream")
    except TimeoutError:
        pass
    if t.others:
        fail("streams", f"the node answered on other streams: {t.others}")
    body = b"still served"
    number, status, _, got = c.request(1, body)
    if status != 0 or got != body:
        fail("streams", f"the first stream stopped working: status {status}")
    c.close()
    ok("streams", f"limits {limits}: streams {second} and {uni} stayed blocked; the first still serves")


def alpn(args):
    try:
        t = transport(args, alpn=("h3",), connect_timeout=5.0)
    except ConnectionError as e:
        ok("alpn", f"refused: {e}")
        return
    except OSError as e:
        fail("alpn", f"no answer at all: {e}")
    fail("alpn", f"the node agreed to ALPN h3 ({t.closed})")


def stall(args):
    # The node may not answer an address that never proved itself beyond 3x what it sent
    # (RFC 9000 §8.1), so its close may never arrive here: the Rust side checks that the node
    # dropped the connection at its deadline; this side waits for either end.
    started = time.monotonic()
    t = transport(args, stall=True)
    while not t.closed:
        if not t.pump(started + 30.0):
            fail("stall", "still open after 30 s")
    ok("stall", f"ended after {time.monotonic() - started:.2f} s: {t.closed}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--cluster", type=lambda x: int(x, 0), required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--case", choices=["requests", "streams", "alpn", "stall"], required=True)
    args = p.parse_args()
    {"requests": requests, "streams": streams, "alpn": alpn, "stall": stall}[args.case](args)


if __name__ == "__main__":
    main()
