#!/usr/bin/env python3
"""Recomputes PROTOCOL.md's test vectors from the document's rules alone,
with independent XXH3 and BLAKE3 implementations (pip: xxhash, blake3).
Shows the spec is enough to interoperate. Run from the repository root."""
import re
import sys

import blake3
import xxhash

doc = open("PROTOCOL.md").read()
vec = {m[1]: bytes.fromhex(m[2].replace("\n", "")) for m in re.finditer(r"```vector\nname = (\S+)\n(.*?)```", doc, re.S)}


def xxh(b):
    return xxhash.xxh3_128_intdigest(b).to_bytes(16, "little")


def check(cond, what):
    if not cond:
        sys.exit(f"vector mismatch: {what}")


for name in ("ping-checksum", "request-checksum", "message-app-area"):
    f = vec[name]
    check(int.from_bytes(f[48:52], "little") == len(f), f"{name} size")
    check(f[16:32] == xxh(f[256:]), f"{name} body checksum")
    check(f[0:16] == xxh(f[16:256]), f"{name} header checksum")

# The application's area (§3.1): bytes 160..256 of a data frame, carried as
# set and covered by the header checksum; view and release at 52 and 56.
f = vec["message-app-area"]
check(f[62] == 8 and len(f) == 256, "message-app-area is a header-only message")
check(f[160:256] == bytes(range(96)), "message-app-area application area")
check(int.from_bytes(f[52:56], "little") == 3, "message-app-area view")
check(int.from_bytes(f[56:60], "little") == 2, "message-app-area release")
check(f[132:160] == bytes(28), "message-app-area reserved bytes")

secret = bytes([0x42]) * 32
k_header = blake3.blake3(secret, derive_key_context="bus-proto v1 frame header tag").digest()
k_body = blake3.blake3(secret, derive_key_context="bus-proto v1 frame body tag").digest()
f = vec["message-authenticated"]
check(k_header == vec["frame-header-key"], "frame-header-key")
check(f[16:32] == blake3.blake3(f[256:], key=k_body).digest()[:16], "authenticated body tag")
check(f[0:16] == blake3.blake3(f[16:256], key=k_header).digest()[:16], "authenticated header tag")

key = bytes(range(32))
hk = blake3.blake3(key, derive_key_context="bus-proto v1 handshake mac").digest()
check(hk == vec["handshake-key"], "handshake-key")
check(blake3.blake3(b"bus-proto test vector", key=hk).digest() == vec["handshake-mac"], "handshake-mac")
fp = blake3.blake3(key, derive_key_context="bus-proto v1 key fingerprint").digest()[:8]
check(fp == vec["key-fingerprint"], "key-fingerprint")
check(vec["xxh3-128-empty"] == xxh(b""), "xxh3-128-empty")
# The handshake (§8.2), from the frames' own fields.
h, w, c, m = (vec[f"handshake-{n}"] for n in ("hello", "welcome", "confirm", "first-message"))
for name, f in (("hello", h), ("welcome", w), ("confirm", c)):
    check(len(f) == 256 and f[0:16] == xxh(f[16:256]) and f[16:32] == xxh(b""), f"handshake-{name} checksums")
check([h[62], w[62], c[62], m[62]] == [1, 2, 3, 8], "handshake commands")
check([int.from_bytes(f[64:72], "little") for f in (h, w, c, m)] == [0, 0, 1, 2], "handshake sequences")
T = h[60:62] + h[200:201] + h[32:48] + h[128:144] + h[144:160] + h[160:192] + h[192:200] + h[201:202] + bytes(32)
check(len(T) == 124 and int.from_bytes(h[192:200], "little") == 1767225600000000000, "handshake transcript")
mac_h = blake3.blake3(b"hello\0\0\0" + T, key=hk).digest()
check(h[208:240] == mac_h, "hello mac")
nonce_a, mac_w, flags_w = w[128:160], w[160:192], w[192:193]
check(flags_w == b"\x01", "welcome flags: authenticated frames")
check(mac_w == blake3.blake3(b"welcome\0" + T + mac_h + nonce_a + flags_w, key=hk).digest(), "welcome mac")
check(c[128:160] == blake3.blake3(b"confirm\0" + T + mac_h + nonce_a + flags_w + mac_w, key=hk).digest(), "confirm mac")
ks = blake3.blake3(key, derive_key_context="bus-proto v1 session secret").digest()
S = blake3.blake3(b"session\0" + T + mac_h + nonce_a + flags_w + mac_w, key=ks).digest()
kh = blake3.blake3(S, derive_key_context="bus-proto v1 frame header tag").digest()
kb = blake3.blake3(S, derive_key_context="bus-proto v1 frame body tag").digest()
check(m[256:] == b"first message", "first message body")
check(m[16:32] == blake3.blake3(m[256:], key=kb).digest()[:16], "first message body tag")
check(m[0:16] == blake3.blake3(m[16:256], key=kh).digest()[:16], "first message header tag")

# The TLS channel binding (§8.9): RFC 8446 §7.5 exporter over SHA-256, with
# exporter_master_secret = 32 bytes of 0x11, label EXPORTER-Channel-Binding,
# empty context, 32 bytes.
import hashlib
import hmac


def expand_label(secret, label, context, length):
    label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(label)]) + label + bytes([len(context)]) + context
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + block, i + 1
    return out[:length]


empty = hashlib.sha256(b"").digest()
derived = expand_label(bytes([0x11]) * 32, b"EXPORTER-Channel-Binding", empty, 32)
check(expand_label(derived, b"exporter", empty, 32) == vec["tls-exporter-binding"], "tls-exporter-binding")

print(f"interop: {len(vec)} vectors recomputed independently from PROTOCOL.md")
