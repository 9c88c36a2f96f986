// SFrame (RFC 9605) for media frames, cipher suite AES_128_GCM_SHA256_128 (0x0004), plus the
// media-frame layout of docs/CRYPTO.md: clear codec prefix || SFrame header || ciphertext || tag.
// Pure WebCrypto: runs in the E2EE worker, on the page and in Node 20 (tests/crypto).

import { concat, utf8, u64be } from './bytes.js';

const subtle = globalThis.crypto.subtle;

export const CIPHER_SUITE = 0x0004;
const NK = 16; // AES-128 key
const NN = 12; // GCM nonce
const NT = 16; // GCM tag
const MAX_COUNTER = Number.MAX_SAFE_INTEGER;

/** Minimal big-endian encoding of a non-negative integer (at least one byte). */
function minimalBytes(value) {
  const out = [];
  let v = BigInt(value);
  do {
    out.unshift(Number(v & 0xffn));
    v >>= 8n;
  } while (v > 0n);
  return Uint8Array.from(out);
}

export function encodeHeader(kid, ctr) {
  if (!Number.isSafeInteger(kid) || kid < 0 || !Number.isSafeInteger(ctr) || ctr < 0) {
    throw new Error('sframe_bad_header_value');
  }
  let config = 0;
  let kidBytes = new Uint8Array(0);
  let ctrBytes = new Uint8Array(0);
  if (kid < 8) config |= kid << 4;
  else {
    kidBytes = minimalBytes(kid);
    config |= 0x80 | ((kidBytes.length - 1) << 4);
  }
  if (ctr < 8) config |= ctr;
  else {
    ctrBytes = minimalBytes(ctr);
    config |= 0x08 | (ctrBytes.length - 1);
  }
  return concat(Uint8Array.of(config), kidBytes, ctrBytes);
}

function readUint(bytes, offset, length) {
  let v = 0n;
  for (let i = 0; i < length; i++) v = (v << 8n) | BigInt(bytes[offset + i]);
  if (v > BigInt(MAX_COUNTER)) throw new Error('sframe_value_too_large');
  return Number(v);
}

/** Parses the header at `offset`; throws on truncation. Returns {kid, ctr, length}. */
export function decodeHeader(bytes, offset = 0) {
  if (bytes.length <= offset) throw new Error('sframe_truncated');
  const config = bytes[offset];
  let pos = offset + 1;
  let kid = (config >> 4) & 0x07;
  if (config & 0x80) {
    const n = kid + 1;
    if (bytes.length < pos + n) throw new Error('sframe_truncated');
    kid = readUint(bytes, pos, n);
    pos += n;
  }
  let ctr = config & 0x07;
  if (config & 0x08) {
    const n = ctr + 1;
    if (bytes.length < pos + n) throw new Error('sframe_truncated');
    ctr = readUint(bytes, pos, n);
    pos += n;
  }
  return { kid, ctr, length: pos - offset };
}

async function hkdf(ikm, salt, info, bytes, hash = 'SHA-256') {
  const key = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash, salt, info }, key, bytes * 8));
}

function sframeLabel(kind, kid) {
  const suite = Uint8Array.of(CIPHER_SUITE >> 8, CIPHER_SUITE & 0xff);
  return concat(utf8(`SFrame 1.0 Secret ${kind} `), u64be(kid), suite);
}

/**
 * RFC 9605 §4.4.2 derive_key_salt. `extractable` is only for the known-answer tests; the media path
 * keeps the AES key non-extractable.
 */
export async function deriveKeySalt(baseKey, kid, { extractable = false } = {}) {
  const empty = new Uint8Array(0);
  const rawKey = await hkdf(baseKey, empty, sframeLabel('key', kid), NK);
  const salt = await hkdf(baseKey, empty, sframeLabel('salt', kid), NN);
  const key = await subtle.importKey('raw', rawKey, 'AES-GCM', extractable, ['encrypt', 'decrypt']);
  rawKey.fill(0);
  return { key, salt };
}

export function nonceFor(salt, ctr) {
  const nonce = salt.slice();
  const c = u64be(ctr);
  for (let i = 0; i < 8; i++) nonce[NN - 8 + i] ^= c[i];
  return nonce;
}

/** RFC 9605 encrypt: returns header || ciphertext || tag. */
export async function sframeEncrypt(ctx, kid, ctr, metadata, plaintext) {
  const header = encodeHeader(kid, ctr);
  const ct = await subtle.encrypt(
    { name: 'AES-GCM', iv: nonceFor(ctx.salt, ctr), additionalData: concat(header, metadata), tagLength: NT * 8 },
    ctx.key,
    plaintext,
  );
  return concat(header, new Uint8Array(ct));
}

/** RFC 9605 decrypt of `sframe` (header first) with the given metadata; throws if it does not authenticate. */
export async function sframeDecrypt(ctx, sframe, metadata, header = decodeHeader(sframe)) {
  if (sframe.length < header.length + NT) throw new Error('sframe_truncated');
  const headerBytes = sframe.subarray(0, header.length);
  const pt = await subtle.decrypt(
    { name: 'AES-GCM', iv: nonceFor(ctx.salt, header.ctr), additionalData: concat(headerBytes, metadata), tagLength: NT * 8 },
    ctx.key,
    sframe.subarray(header.length),
  );
  return new Uint8Array(pt);
}

// ---- media frames ---------------------------------------------------------------------------

/**
 * How many leading bytes stay in clear so the packetiser and the SFU still work:
 * Opus: the TOC byte; VP8: the 10-byte keyframe header (frame tag, start code, dimensions) or the
 * 3-byte frame tag of a delta frame. The keyframe bit is bit 0 of the first byte (0 = keyframe).
 */
export function clearPrefixLength(kind, firstByte) {
  if (kind === 'audio') return 1;
  return (firstByte & 0x01) === 0 ? 10 : 3;
}

export function isVp8Keyframe(frame) {
  return frame.length > 0 && (frame[0] & 0x01) === 0;
}

// A shared screen is a second VP8 track of the same sender under the same key. Its frames carry
// this tag in their authenticated metadata, so a server that moves camera frames into the screen
// slot (or a screen into the camera's) makes them fail authentication instead of presenting one
// as the other. Camera and microphone frames keep the plain prefix as metadata.
const SCREEN_TAG = utf8('Spreekkamer screen');

/** What a frame's clear prefix is authenticated with: the prefix, plus the tag for a screen. */
function metadataFor(kind, prefix) {
  return kind === 'screen' ? concat(prefix, SCREEN_TAG) : prefix;
}

/** Encrypts one encoded frame: clear prefix || SFrame(header || ct || tag), prefix authenticated as metadata. */
export async function protectFrame(ctx, kid, ctr, kind, frame) {
  if (frame.length === 0) throw new Error('frame_empty');
  const p = clearPrefixLength(kind, frame[0]);
  if (frame.length < p) throw new Error('frame_too_short');
  const prefix = frame.subarray(0, p);
  const sframe = await sframeEncrypt(ctx, kid, ctr, metadataFor(kind, prefix), frame.subarray(p));
  return concat(prefix, sframe);
}

/** Splits a protected frame into {prefix, sframe, header} without decrypting. Throws if malformed. */
export function parseProtectedFrame(kind, data) {
  if (data.length === 0) throw new Error('frame_empty');
  const p = clearPrefixLength(kind, data[0]);
  if (data.length < p + 1 + NT) throw new Error('frame_too_short');
  const sframe = data.subarray(p);
  const header = decodeHeader(sframe);
  if (sframe.length < header.length + NT) throw new Error('frame_too_short');
  return { prefix: data.subarray(0, p), sframe, header, metadata: metadataFor(kind, data.subarray(0, p)) };
}

export async function unprotectFrame(ctx, parsed) {
  const body = await sframeDecrypt(ctx, parsed.sframe, parsed.metadata || parsed.prefix, parsed.header);
  return concat(parsed.prefix, body);
}

// ---- sender keys, ratchet, keyring ----------------------------------------------------------

const RATCHET_INFO = utf8('Spreekkamer E2EE v1 sender key ratchet');
export const BASE_KEY_BYTES = 32;

/** One ratchet step: base_key(epoch+1) = HKDF-SHA256(ikm = base_key(epoch), salt = "", info). One-way. */
export async function ratchetBaseKey(baseKey) {
  return hkdf(baseKey, new Uint8Array(0), RATCHET_INFO, BASE_KEY_BYTES);
}

/** Anti-replay window over SFrame counters (the SFU could replay old frames; GCM alone would accept them). */
export class ReplayWindow {
  constructor(size = 1024) {
    this.size = size;
    this.seen = new Uint8Array(size);
    this.highest = -1;
  }

  /** True if `ctr` is new and inside the window. Does not record it. */
  check(ctr) {
    if (ctr > this.highest) return true;
    if (ctr <= this.highest - this.size) return false;
    return this.seen[ctr % this.size] === 0;
  }

  /** Records `ctr`; call only after the frame authenticated. */
  commit(ctr) {
    if (ctr > this.highest) {
      const gap = Math.min(ctr - this.highest, this.size);
      for (let i = 1; i <= gap; i++) this.seen[(this.highest + i + this.size) % this.size] = 0;
      this.highest = ctr;
    }
    this.seen[ctr % this.size] = 1;
  }
}

/**
 * The send side of one participant: the current epoch's key and a counter that never repeats for a
 * key (a new epoch means a new key, so the counter restarts at 0 with fresh key and salt).
 */
export class SendKey {
  static async create(epoch, baseKey) {
    const s = new SendKey();
    s.epoch = epoch;
    s.ctx = await deriveKeySalt(baseKey, epoch);
    s.ctr = 0;
    return s;
  }

  async protect(kind, frame) {
    if (this.ctr >= MAX_COUNTER) throw new Error('counter_exhausted');
    const ctr = this.ctr++;
    return protectFrame(this.ctx, this.epoch, ctr, kind, frame);
  }
}

/**
 * What a receiver holds for one sender: up to `maxEpochs` keys by key id (= epoch), so frames
 * already in flight under the previous key still decrypt after a switch. Keys sent explicitly
 * (wrapped) replace keys derived by ratchet; an unknown newer epoch is derived by ratcheting
 * forward from the newest known key, at most `maxRatchet` steps.
 */
export class ReceiveKeyring {
  constructor({ maxEpochs = 4, maxRatchet = 8 } = {}) {
    this.maxEpochs = maxEpochs;
    this.maxRatchet = maxRatchet;
    this.entries = new Map(); // epoch -> {base, ctx, replay, explicit}
  }

  async setKey(epoch, baseKey, explicit = true) {
    const existing = this.entries.get(epoch);
    // Idempotent: the first explicit key for an epoch wins, and a ratchet-derived key never replaces
    // an explicit one (derivation is async; an explicit key may have arrived meanwhile).
    if (existing && existing.explicit) return existing;
    const entry = {
      base: baseKey.slice(),
      ctx: await deriveKeySalt(baseKey, epoch),
      replay: new ReplayWindow(),
      explicit,
    };
    this.entries.set(epoch, entry);
    this.prune();
    return entry;
  }

  newestEpoch() {
    let max = -1;
    for (const e of this.entries.keys()) if (e > max) max = e;
    return max;
  }

  prune() {
    const epochs = [...this.entries.keys()].sort((a, b) => b - a);
    for (const e of epochs.slice(this.maxEpochs)) {
      this.entries.get(e).base.fill(0);
      this.entries.delete(e);
    }
  }

  async entryFor(epoch) {
    const found = this.entries.get(epoch);
    if (found) return found;
    const newest = this.newestEpoch();
    if (newest < 0 || epoch <= newest || epoch - newest > this.maxRatchet) return null;
    let base = this.entries.get(newest).base;
    for (let e = newest + 1; e <= epoch; e++) base = await ratchetBaseKey(base);
    return this.setKey(epoch, base, false);
  }

  /** Decrypts a protected frame; returns the plaintext frame or throws with a reason code. */
  async unprotect(kind, data) {
    const parsed = parseProtectedFrame(kind, data);
    const entry = await this.entryFor(parsed.header.kid);
    if (!entry) throw new Error('unknown_key');
    if (!entry.replay.check(parsed.header.ctr)) throw new Error('replayed');
    let plain;
    try {
      plain = await unprotectFrame(entry.ctx, parsed);
    } catch {
      // A ratchet-derived key that never decrypted anything was a wrong guess (e.g. the sender
      // switched to a fresh random key whose wrapped copy has not arrived yet): forget it.
      if (!entry.explicit && entry.replay.highest < 0) this.entries.delete(parsed.header.kid);
      throw new Error('auth_failed');
    }
    entry.replay.commit(parsed.header.ctr);
    return plain;
  }

  wipe() {
    for (const e of this.entries.values()) e.base.fill(0);
    this.entries.clear();
  }
}
