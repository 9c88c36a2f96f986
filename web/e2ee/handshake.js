// Key agreement between two participants, the pairwise keys, the safety code and the sealed
// envelopes ("boxes") that carry sender keys, chat and photo chunks over the server's `relay`.
// Pure WebCrypto: runs on the page and in Node 20 (tests/crypto). See docs/CRYPTO.md.

import { concat, equalBytes, fromBase64, fromBase64url, lp, readU64be, toBase64, toBase64url, u64be } from './bytes.js';
import { WORDS } from './words.js';

const subtle = globalThis.crypto.subtle;

export const PROTOCOL_LABEL = 'Spreekkamer E2EE v2';
export const PROTOCOL_VERSION = 2;
/** A link label: the public name of a derived link secret (`kl=` in the link). */
export const LINK_LABEL_PATTERN = /^[a-z0-9-]{1,32}$/;
const LINK_SECRET_MIN = 16;
const LINK_SECRET_MAX = 64;
const X25519_LEN = 32;
const P256_LEN = 65; // uncompressed point
const MEDIA_STATES = new Set(['e2ee', 'none']);

let x25519Support;
/** Whether this WebCrypto has X25519 (Chromium ≥ 133, Firefox ≥ 130, Safari 17, Node ≥ 20). */
export async function hasX25519() {
  if (x25519Support === undefined) {
    try {
      await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
      x25519Support = true;
    } catch {
      x25519Support = false;
    }
  }
  return x25519Support;
}

/**
 * A participant's ephemeral key pairs for one call: always P-256 (every WebCrypto has it), plus
 * X25519 where available. Private keys are non-extractable and live only in memory.
 */
export async function createKeyPairs({ x25519 = true } = {}) {
  const pairs = {};
  if (x25519 && (await hasX25519())) {
    const kp = await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
    pairs.x25519 = { privateKey: kp.privateKey, publicKey: new Uint8Array(await subtle.exportKey('raw', kp.publicKey)) };
  }
  const kp = await subtle.generateKey({ name: 'ECDH', namedCurve: 'P-256' }, false, ['deriveBits']);
  pairs.p256 = { privateKey: kp.privateKey, publicKey: new Uint8Array(await subtle.exportKey('raw', kp.publicKey)) };
  return pairs;
}

/**
 * The public part of a participant's handshake: what `hello` carries. `link` is the link claim:
 * null (no usable link secret), '*' (holds the consult's master secret M) or a label L (holds K_L).
 */
export function makeHello(pairs, { link = null, media }) {
  if (!validClaim(link)) throw new Error('bad_link_claim');
  return {
    x: pairs.x25519 ? pairs.x25519.publicKey : null,
    p: pairs.p256.publicKey,
    k: link,
    m: media,
  };
}

function validClaim(k) {
  return k === null || k === '*' || (typeof k === 'string' && LINK_LABEL_PATTERN.test(k));
}

/**
 * Canonical bytes of a hello: this, not the JSON text, is what commitments and transcripts hash.
 * The link claim is in it, so a relay that rewrites `k` changes what both sides commit to.
 */
export function helloBytes(h) {
  return concat(
    lp('x25519'),
    lp(h.x ?? new Uint8Array(0)),
    lp('p256'),
    lp(h.p),
    lp('link'),
    lp(h.k ?? ''),
    lp(h.m),
  );
}

export function encodeHello(h) {
  const o = { t: 'hello', v: PROTOCOL_VERSION, p: toBase64(h.p), k: h.k ?? null, m: h.m };
  if (h.x) o.x = toBase64(h.x);
  return o;
}

/** Validates a received hello object (hostile input). Throws Error('bad_hello') on anything odd. */
export function decodeHello(o) {
  const bad = () => new Error('bad_hello');
  if (!o || typeof o !== 'object' || o.t !== 'hello' || o.v !== PROTOCOL_VERSION) throw bad();
  if (typeof o.p !== 'string' || o.p.length > 200) throw bad();
  if (o.x !== undefined && (typeof o.x !== 'string' || o.x.length > 100)) throw bad();
  if (o.k === undefined || !validClaim(o.k)) throw bad();
  if (!MEDIA_STATES.has(o.m)) throw bad();
  let p;
  let x = null;
  try {
    p = fromBase64(o.p);
    if (o.x !== undefined) x = fromBase64(o.x);
  } catch {
    throw bad();
  }
  if (p.length !== P256_LEN || p[0] !== 0x04) throw bad();
  if (x && x.length !== X25519_LEN) throw bad();
  return { x, p, k: o.k, m: o.m };
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest('SHA-256', bytes));
}

/**
 * Commitment to a hello, sent before the hello itself. A participant reveals its hello only after it
 * holds the other side's commitment, so a man in the middle must fix its own keys before it learns
 * ours and cannot search for keys that make both safety codes equal.
 */
export async function commitment(consultId, participantId, hello) {
  return sha256(concat(lp(PROTOCOL_LABEL), lp('commit'), lp(consultId), lp(participantId), helloBytes(hello)));
}

/** The pair's transcript: label, consult, chosen curve, and both (id, hello) sorted by participant id. */
export function transcript(consultId, idA, helloA, idB, helloB) {
  const curve = helloA.x && helloB.x ? 'X25519' : 'P-256';
  const [lo, hi] = idA < idB ? [[idA, helloA], [idB, helloB]] : [[idB, helloB], [idA, helloA]];
  const bytes = concat(
    lp(PROTOCOL_LABEL),
    lp(consultId),
    lp(curve),
    lp(lo[0]),
    lp(helloBytes(lo[1])),
    lp(hi[0]),
    lp(helloBytes(hi[1])),
  );
  return { curve, bytes };
}

async function hkdfBits(ikm, salt, info, bytes) {
  const key = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info }, key, bytes * 8));
}

async function ecdh(curve, pairs, peerHello) {
  let privateKey;
  let publicKey;
  if (curve === 'X25519') {
    privateKey = pairs.x25519.privateKey;
    publicKey = await subtle.importKey('raw', peerHello.x, { name: 'X25519' }, true, []);
  } else {
    privateKey = pairs.p256.privateKey;
    // importKey validates that the point is on the curve.
    publicKey = await subtle.importKey('raw', peerHello.p, { name: 'ECDH', namedCurve: 'P-256' }, true, []);
  }
  const name = curve === 'X25519' ? 'X25519' : 'ECDH';
  const shared = new Uint8Array(await subtle.deriveBits({ name, public: publicKey }, privateKey, 256));
  // A low-order X25519 point yields all zeros; refuse it rather than derive keys from a constant.
  if (shared.every((b) => b === 0)) throw new Error('bad_public_key');
  return shared;
}

export async function linkSalt(secretBytes) {
  return sha256(concat(lp(PROTOCOL_LABEL), lp('link secret'), lp(secretBytes)));
}

// ---- link secrets -----------------------------------------------------------------------------

/** Decodes a link secret from a fragment (unpadded base64url, 16–64 bytes); null if unusable. */
export function decodeLinkSecret(text) {
  try {
    const bytes = fromBase64url(text);
    return bytes.length >= LINK_SECRET_MIN && bytes.length <= LINK_SECRET_MAX ? bytes : null;
  } catch {
    return null;
  }
}

async function linkLabelBytes(masterBytes, consultId, label) {
  const info = concat(lp(PROTOCOL_LABEL), lp('link label'), lp(String(consultId)), lp(label));
  return hkdfBits(masterBytes, new Uint8Array(0), info, 32);
}

/**
 * The secret for the link labelled `label` of consult `consultId`, from the consult's master
 * secret M (both unpadded base64url):
 * K_L = HKDF-SHA256(ikm = M, salt = "", info = lp(LABEL) || lp("link label") || lp(consult) || lp(L), 32).
 * The same function as `spreekkamer link` (signaling/src/config.rs) and the EHR recipe.
 */
export async function deriveLinkSecret(master, consultId, label) {
  if (typeof label !== 'string' || !LINK_LABEL_PATTERN.test(label)) throw new Error('bad_link_label');
  const m = decodeLinkSecret(master);
  if (!m) throw new Error('bad_link_secret');
  return toBase64url(await linkLabelBytes(m, consultId, label));
}

/**
 * The link secret a pair shares, or null (unbound). Both sides compute the same value or none:
 * both '*' -> M; '*' and L -> K_L (the master side derives it); L and the same L -> K_L.
 * `self.secret` is the decoded secret this page holds (M when its claim is '*', else K_L).
 */
export async function pairLinkSecret(consultId, self, peerClaim) {
  if (!self || !self.secret || self.claim === null || peerClaim === null || peerClaim === undefined) return null;
  if (self.claim === '*') {
    if (peerClaim === '*') return self.secret.slice();
    return linkLabelBytes(self.secret, consultId, peerClaim);
  }
  if (peerClaim === '*' || peerClaim === self.claim) return self.secret.slice();
  return null;
}

async function importWrapKey(raw, usage) {
  return subtle.importKey('raw', raw, 'AES-GCM', false, [usage]);
}

/**
 * Everything two participants share after the handshake. Two directional AES-256-GCM keys (so the
 * two sides never encrypt under the same key and the per-direction sequence number can be the
 * nonce), the transcript hash and the safety code.
 *
 * ikm  = ECDH(own private, peer public)
 * salt = SHA-256(label, "link secret", pair link secret)   if the pair is bound (pairLinkSecret), else ""
 * k_{A→B} = HKDF-SHA256(ikm, salt, info = label || "wrap" || th || A || B), 32 bytes
 */
export async function derivePair({ consultId, selfId, peerId, pairs, selfHello, peerHello, pairSecret = null }) {
  const { curve, bytes } = transcript(consultId, selfId, selfHello, peerId, peerHello);
  const th = await sha256(bytes);
  const useLink = Boolean(pairSecret);
  const salt = useLink ? await linkSalt(pairSecret) : new Uint8Array(0);
  const shared = await ecdh(curve, pairs, peerHello);
  const info = (from, to) => concat(lp(PROTOCOL_LABEL), lp('wrap'), th, lp(from), lp(to));
  const sendRaw = await hkdfBits(shared, salt, info(selfId, peerId), 32);
  const recvRaw = await hkdfBits(shared, salt, info(peerId, selfId), 32);
  shared.fill(0);
  const pair = {
    curve,
    th,
    linkBound: useLink,
    sendKey: await importWrapKey(sendRaw, 'encrypt'),
    recvKey: await importWrapKey(recvRaw, 'decrypt'),
    sendSeq: 0,
    recvSeq: 0,
    safetyCode: await safetyCode(th),
  };
  sendRaw.fill(0);
  recvRaw.fill(0);
  return pair;
}

/**
 * The safety code people read aloud: from the transcript hash only (public values), so a relay
 * that swaps public keys gives the two sides different transcripts and so different codes.
 * 10 digits (33 bits) from bytes 0–4; 4 words (32 bits) from bytes 5–8, one byte a word.
 */
export async function safetyCode(th) {
  const h = await sha256(concat(lp(PROTOCOL_LABEL), lp('safety code'), th));
  let n = 0n;
  for (let i = 0; i < 5; i++) n = (n << 8n) | BigInt(h[i]);
  const digits = (n % 10_000_000_000n).toString().padStart(10, '0');
  const idx = [h[5], h[6], h[7], h[8]];
  return {
    digits: `${digits.slice(0, 5)} ${digits.slice(5)}`,
    words: { nl: idx.map((i) => WORDS.nl[i]), en: idx.map((i) => WORDS.en[i]) },
  };
}

// ---- boxes: sealed relay payloads -----------------------------------------------------------

export const BOX_KIND = Object.freeze({ key: 1, chat: 2, photo: 3, vouch: 4, gone: 5 });
const BOX_VERSION = 1;
const BOX_HEADER = 10; // version u8, kind u8, seq u64
const MAX_BOX_BYTES = 40 * 1024;

function boxNonce(seq) {
  return concat(new Uint8Array(4), u64be(seq));
}

/**
 * Seals `plaintext` for the peer. The per-direction sequence number is the GCM nonce (a directional
 * key never sees a nonce twice) and lets the receiver refuse replays and reordering by the relay.
 */
export async function seal(pair, kind, plaintext) {
  const seq = ++pair.sendSeq;
  const header = concat(Uint8Array.of(BOX_VERSION, kind), u64be(seq));
  const ct = await subtle.encrypt({ name: 'AES-GCM', iv: boxNonce(seq), additionalData: header }, pair.sendKey, plaintext);
  return toBase64(concat(header, new Uint8Array(ct)));
}

/** Opens a box of the expected kind. Throws Error('bad_box'|'replayed_box'|'box_auth_failed'). */
export async function open(pair, kind, data) {
  if (typeof data !== 'string' || data.length > Math.ceil(MAX_BOX_BYTES / 3) * 4) throw new Error('bad_box');
  let bytes;
  try {
    bytes = fromBase64(data);
  } catch {
    throw new Error('bad_box');
  }
  if (bytes.length < BOX_HEADER + 16 || bytes[0] !== BOX_VERSION || bytes[1] !== kind) throw new Error('bad_box');
  const seq = readU64be(bytes, 2);
  if (seq <= pair.recvSeq) throw new Error('replayed_box');
  let pt;
  try {
    pt = await subtle.decrypt(
      { name: 'AES-GCM', iv: boxNonce(seq), additionalData: bytes.subarray(0, BOX_HEADER) },
      pair.recvKey,
      bytes.subarray(BOX_HEADER),
    );
  } catch {
    throw new Error('box_auth_failed');
  }
  pair.recvSeq = seq;
  return new Uint8Array(pt);
}

/** Sender-key message body: epoch (u32) || base key (32 bytes). */
export function encodeSenderKey(epoch, baseKey) {
  const out = new Uint8Array(4 + baseKey.length);
  new DataView(out.buffer).setUint32(0, epoch);
  out.set(baseKey, 4);
  return out;
}

export function decodeSenderKey(bytes) {
  if (bytes.length !== 36) throw new Error('bad_sender_key');
  return { epoch: new DataView(bytes.buffer, bytes.byteOffset).getUint32(0), baseKey: bytes.slice(4) };
}

/** Vouch body: lp(X id) || SHA-256(helloBytes(X's hello as the voucher received it)). */
export async function encodeVouch(participantId, hello) {
  return concat(lp(participantId), await sha256(helloBytes(hello)));
}

export function decodeVouch(bytes) {
  if (bytes.length < 4 + 1 + 32) throw new Error('bad_vouch');
  const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0);
  if (n < 1 || n > 64 || bytes.length !== 4 + n + 32) throw new Error('bad_vouch');
  const id = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(4, 4 + n));
  return { participantId: id, hash: bytes.slice(4 + n) };
}

/** Gone body (the clinician removed X): lp(X id). */
export function encodeGone(participantId) {
  return lp(participantId);
}

export function decodeGone(bytes) {
  if (bytes.length < 5) throw new Error('bad_gone');
  const n = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0);
  if (n < 1 || n > 64 || bytes.length !== 4 + n) throw new Error('bad_gone');
  return new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(4));
}

export { equalBytes };
