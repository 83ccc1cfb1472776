#!/usr/bin/env python3
"""A real browser's WebSocket stack carrying a bus session: headless Chromium
opens a page that connects to the node (ws:// or wss://, subprotocol bus.v1)
and to a local WebSocket server here, and relays every binary message
between the two. Behind the local server runs the Python bus client
(bus_client.py), so the full handshake and requests cross Chromium's
framing, masking, subprotocol check and close handling unchanged.

Browsers cannot export TLS keying material: over wss:// the node's listener
is Unbound and the client's binding is zeros.

Usage: browser_relay.py --url ws://127.0.0.1:PORT/bus --cluster N --key HEX
       [--chromium /usr/bin/chromium] [--requests K]
Prints one line per step; exits non-zero on failure.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import bus_client
from websockets.sync.server import serve

PAGE = """<!doctype html>
<title>starting</title>
<script>
const node = new WebSocket(%(node)s, ["bus.v1"]);
const local = new WebSocket(%(local)s, ["bus.v1"]);
node.binaryType = local.binaryType = "arraybuffer";
const early = [];
local.onmessage = (e) => node.readyState === 1 ? node.send(e.data) : early.push(e.data);
node.onopen = () => { document.title = "open " + node.protocol; early.splice(0).forEach((d) => node.send(d)); };
node.onmessage = (e) => local.send(e.data);
node.onclose = (e) => { document.title = "node closed " + e.code; local.close(); };
local.onclose = () => node.close(1000);
</script>
"""


class ServerSide:
    """The local WebSocket server's connection, as a bus_client transport."""
    binding = bytes(32)

    def __init__(self, ws):
        self.ws, self.max_size, self.check_header = ws, 1 << 20, None

    def send_frame(self, frame):
        self.ws.send(frame)

    def recv_frame(self, timeout=None):
        try:
            frame = self.ws.recv(timeout)
        except TimeoutError:
            return None
        if not isinstance(frame, bytes) or bus_client.u(frame[48:52]) != len(frame):
            raise bus_client.ProtocolError("not one frame per binary message")
        return frame

    def close(self):
        self.ws.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--cluster", type=lambda t: int(t, 0), required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    p.add_argument("--requests", type=int, default=20)
    args = p.parse_args()

    outcome = {"ok": 0, "error": None}
    done = threading.Event()

    def session(ws):
        try:
            if ws.subprotocol != "bus.v1":
                raise bus_client.ProtocolError(f"subprotocol {ws.subprotocol!r}")
            client = bus_client.Client(ServerSide(ws), cluster=args.cluster, key=args.key,
                                       client_id=int.from_bytes(os.urandom(16), "little"))
            client.handshake()
            print("handshake through the browser: ok", flush=True)
            for i in range(args.requests):
                body = b"through chromium %d " % i * (1 + i * 37)
                _, status, _, reply = client.request(1, body)
                if status != 0 or reply != body:
                    raise bus_client.ProtocolError(f"request {i}: status {status}")
                outcome["ok"] += 1
            client.close()
        except Exception as e:  # reported by the main thread
            outcome["error"] = f"{type(e).__name__}: {e}"
        finally:
            done.set()

    with serve(session, "127.0.0.1", 0, subprotocols=["bus.v1"], compression=None,
               max_size=2 << 20) as server:
        local = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with tempfile.TemporaryDirectory() as scratch:
            page = os.path.join(scratch, "relay.html")
            with open(page, "w") as f:
                f.write(PAGE % {"node": repr(args.url), "local": repr(local)})
            browser = subprocess.Popen(
                [args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--ignore-certificate-errors",
                 f"--user-data-dir={scratch}/profile", "file://" + page],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                finished = done.wait(60)
            finally:
                browser.kill()
                _, stderr = browser.communicate()
        server.shutdown()
    if not finished:
        tail = stderr.decode(errors="replace")[-2000:]
        print(f"FAIL: no bus session through the browser within 60 s\n{tail}")
        return 1
    if outcome["error"]:
        print(f"FAIL after {outcome['ok']} requests: {outcome['error']}")
        return 1
    print(f"summary: {outcome['ok']} requests through Chromium, all echoed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
