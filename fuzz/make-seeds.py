#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/ (run from anywhere; idempotent).

Seeds are real shapes: the client messages of docs/PROTOCOL.md, HS256 join
tokens signed with the made-up secret of fuzz_targets/token.rs, RTP/RTCP/VP8
packets as Chromium sends them, STUN binding requests as a browser sends
them (plain and RFC 4571-framed). The Chromium SDP answer is
corpus/sdp_answer/chromium-simulcast-answer.sdp, captured once (see
docs/FUZZING.md); this script leaves it alone.
"""
import base64, hashlib, hmac, json, os, struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# ---- client_message --------------------------------------------------------
TOKEN = None
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
SECRET = b"fuzz-secret-0123456789abcdef0123"
NOW = 1_800_000_000
def jwt(header, claims):
    si = b64(json.dumps(header, separators=(",", ":")).encode()) + "." + \
         b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(SECRET, si.encode(), hashlib.sha256).digest()
    return si + "." + b64(sig)
CLAIMS = {"iss": "spreekkamer", "aud": "spreekkamer", "exp": NOW + 3600, "nbf": NOW - 10,
          "iat": NOW - 10, "sub": "user-1", "role": "patient", "consult": "consult-1",
          "name": "Mw. De Vries", "jti": "3f2a9c1e"}
TOKEN = jwt({"alg": "HS256", "typ": "JWT"}, CLAIMS)

messages = {
    "join": {"type": "join", "v": 1, "token": TOKEN},
    "probe": {"type": "probe", "v": 1, "token": TOKEN},
    "answer": {"type": "answer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"},
    "candidate": {"type": "candidate", "candidate": {"candidate": "candidate:842163049 1 udp 1677729535 192.0.2.7 61331 typ srflx raddr 0.0.0.0 rport 0 generation 0 ufrag Xy2a network-cost 999", "sdpMid": "0", "sdpMLineIndex": 0}},
    "ice-restart": {"type": "ice-restart"},
    "mute": {"type": "mute", "audio": False, "video": True},
    "relay-key": {"type": "relay", "to": "00112233aabbccdd", "kind": "key", "data": "AAECAwQFBgcICQoLDA0ODw=="},
    "relay-chat": {"type": "relay", "to": "*", "kind": "chat", "data": "q83vASNFZ4k="},
    "e2ee": {"type": "e2ee", "state": "on", "verified": ["00112233aabbccdd"]},
    "video-prefs": {"type": "video-prefs", "audioOnly": False, "quality": {"00112233aabbccdd": "low", "aabbccdd00112233": "high"}},
    "leave": {"type": "leave"},
    "ping": {"type": "ping"},
    "admit": {"type": "admit", "id": "00112233aabbccdd"},
    "deny": {"type": "deny", "id": "00112233aabbccdd"},
    "remove": {"type": "remove", "id": "00112233aabbccdd"},
    "lock": {"type": "lock", "locked": True},
    "end": {"type": "end"},
    "invite": {"type": "invite", "role": "guest", "name": "Tolk", "ttl_secs": 3600},
    "revoke-invite": {"type": "revoke-invite", "jti": "3f2a9c1e"},
}
for name, m in messages.items():
    put("client_message", name + ".json", json.dumps(m, ensure_ascii=False))
put("client_message", "unicode-escapes.json", '{"type":"relay","to":"\\u0041","kind":"chat","data":"\\ud83d\\ude00"}')

# ---- token -----------------------------------------------------------------
put("token", "hs256-patient", b"\x00" + TOKEN.encode())
put("token", "hs256-clinician-aud-list", b"\x00" + jwt({"alg": "HS256", "typ": "JWT"}, dict(CLAIMS, role="clinician", aud=["ehr", "spreekkamer"])).encode())
put("token", "kid-rs256", b"\x00" + jwt({"alg": "RS256", "kid": "ehr-2026"}, CLAIMS).encode())
put("token", "alg-none", b"\x00" + b64(b'{"alg":"none"}').encode() + b"." + b64(json.dumps(CLAIMS).encode()).encode() + b".")
put("token", "signed-claims", b"\x01" + b'{"alg":"HS256","typ":"JWT"}\n' + json.dumps(CLAIMS).encode())
put("token", "signed-claims-float-exp", b"\x01" + b'{"alg":"HS256"}\n' + json.dumps(dict(CLAIMS, exp=1.8e9 + 3600.5, jti=None)).encode())
put("token", "jwks", b"\x02" + json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ehr-ed", "use": "sig",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}, {"kty": "EC", "crv": "P-256", "kid": "ehr-ec", "alg": "ES256",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}).encode())

# ---- media_port ------------------------------------------------------------
def stun_request(ufrag_local, ufrag_remote, txid=b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c"):
    attrs = b""
    def attr(kind, value):
        pad = (4 - len(value) % 4) % 4
        return struct.pack("!HH", kind, len(value)) + value + b"\x00" * pad
    attrs += attr(0x0006, f"{ufrag_local}:{ufrag_remote}".encode())   # USERNAME
    attrs += attr(0xC057, b"\x00\x01\x03\xe7")                        # GOOG-NETWORK-INFO
    attrs += attr(0x802A, b"\x8c\x1f\x4e\x12\x0a\x33\xe5\x01")        # ICE-CONTROLLING
    attrs += attr(0x0025, b"")                                        # USE-CANDIDATE
    attrs += attr(0x0024, b"\x6e\x7f\x1e\xff")                        # PRIORITY
    attrs += attr(0x0008, b"\x00" * 20)                               # MESSAGE-INTEGRITY (dummy)
    attrs += attr(0x8028, b"\x00\x00\x00\x00")                        # FINGERPRINT (dummy)
    return struct.pack("!HHI", 0x0001, len(attrs), 0x2112A442) + txid + attrs
stun = stun_request("Qw3rTyUi0pAsDfGh", "aB1c")
put("media_port", "udp-stun-binding", b"\x00" + stun)
put("media_port", "udp-dtls-clienthello-start", b"\x00" + bytes([22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40]) + b"\x01" + b"\x00" * 20)
framed = struct.pack("!H", len(stun)) + stun
put("media_port", "tcp-stun-binding", b"\x01" + framed + struct.pack("!H", 12) + b"\x80\x60\x00\x01" + b"\x00" * 8)
put("media_port", "tcp-stun-split-reads", bytes([1 | (3 << 1)]) + bytes([0, 9, 40]) + framed + framed)
put("media_port", "tcp-too-large", b"\x01" + b"\xff\xff" + b"\x00" * 8)

# ---- media_plane -----------------------------------------------------------
def rtp(pt, seq, ts, ssrc, payload, marker=False, exts=None):
    b0 = 0x80
    ext = b""
    if exts:
        b0 |= 0x10
        body = b""
        for i, v in exts:
            body += bytes([(i << 4) | (len(v) - 1)]) + v
        body += b"\x00" * ((4 - len(body) % 4) % 4)
        ext = struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc) + ext + payload
def vp8(start, key, pic, tl0, body=b"\x9d\x01\x2a"):
    b0 = 0x90 if start else 0x80          # X, S
    b1 = 0xE0                              # I, L, T
    frame = bytes([0x10 if key else 0x11]) + body  # P bit = !keyframe
    return bytes([b0, b1, 0x80 | (pic >> 8), pic & 0xff, tl0, 0x20]) + frame
def op(code, body):
    assert len(body) < 256
    return bytes([code, len(body)]) + body
ops = b""
ops += op(5, bytes([2, 0]))  # target h
for i, (layer, ssrc) in enumerate([(0, 0x1000), (1, 0x2000), (2, 0x3000)]):
    ops += op(layer, rtp(96, 100 + i, 3000 * i, ssrc, vp8(True, True, 200 + i, 10 + i), exts=[(4, b"\x00\x01"), (9, b"h")]))
for k in range(3):
    ops += op(2, rtp(96, 103 + k, 3000 * (k + 3), 0x3000, vp8(k == 0, False, 203 + k, 13)))
ops += op(2, rtp(96, 106, 12000, 0x3000, b""))  # padding only
ops += op(5, bytes([0, 40]))  # switch down to l after 160 ms
ops += op(0, rtp(96, 400, 90000, 0x1000, vp8(True, True, 900, 50)))
ops += op(3, bytes([1, 1]) + rtp(111, 7, 960, 0x4000, b"\xfc\xff\xfe", exts=[(1, b"\x1e")]))
ops += op(3, bytes([2, 1]) + rtp(111, 9, 960, 0x5000, b"\xfc\xff\xfe", exts=[(1, b"\x7f")]))
pli = struct.pack("!BBHII", 0x81, 206, 2, 0x1111, 0x3000)
rr = struct.pack("!BBHI", 0x81, 201, 7, 0x9999) + struct.pack("!IIIIII", 0x1111, (12 << 24) | 3, 106, 20, 0, 0)
nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 0x1111, 0x3000, 104, 0)
ops += op(4, rr + pli)
ops += op(4, nack)
ops += op(6, bytes([1]))
ops += op(7, struct.pack("!QIi", NOW, 123456789, 30))
put("media_plane", "simulcast-session", ops)
put("media_plane", "keyframe-h", op(2, rtp(96, 1, 0, 0x3000, vp8(True, True, 1, 1))))
fir = struct.pack("!BBHII", 0x84, 206, 4, 0x1111, 0) + struct.pack("!IBBH", 0x3000, 7, 0, 0)
put("media_plane", "rtcp-fir", op(4, fir))
