// SFrame (RFC 9605) and the media-frame layout: known answers, round trips, tamper detection,
// nonce uniqueness, replay, keyring and the sender-key ratchet.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fromHex, hex, randomBytes } from '../../web/e2ee/bytes.js';
import {
  ReceiveKeyring,
  ReplayWindow,
  SendKey,
  decodeHeader,
  deriveKeySalt,
  encodeHeader,
  nonceFor,
  parseProtectedFrame,
  protectFrame,
  ratchetBaseKey,
  sframeDecrypt,
  sframeEncrypt,
} from '../../web/e2ee/sframe.js';

// RFC 9605 Appendix C.4, cipher suite 0x0004 (AES_128_GCM_SHA256_128).
const RFC = {
  kid: 0x123,
  ctr: 0x4567,
  baseKey: '000102030405060708090a0b0c0d0e0f',
  key: 'd34f547f4ca4f9a7447006fe7fcbf768',
  salt: '75234edefe07819026751816',
  metadata: '4945544620534672616d65205747',
  nonce: '75234edefe07819026755d71',
  pt: '64726166742d696574662d736672616d652d656e63',
  ct: '9901234567b7412c2513a1b66dbb48841bbaf17f598751176ad847681a69c6d0b091c07018ce4adb34eb',
};

test('key, salt and nonce derivation match RFC 9605 test vector (suite 0x0004)', async () => {
  const ctx = await deriveKeySalt(fromHex(RFC.baseKey), RFC.kid, { extractable: true });
  assert.equal(hex(new Uint8Array(await crypto.subtle.exportKey('raw', ctx.key))), RFC.key);
  assert.equal(hex(ctx.salt), RFC.salt);
  assert.equal(hex(nonceFor(ctx.salt, RFC.ctr)), RFC.nonce);
});

test('encryption matches RFC 9605 test vector and decrypts back', async () => {
  const ctx = await deriveKeySalt(fromHex(RFC.baseKey), RFC.kid);
  const ct = await sframeEncrypt(ctx, RFC.kid, RFC.ctr, fromHex(RFC.metadata), fromHex(RFC.pt));
  assert.equal(hex(ct), RFC.ct);
  const pt = await sframeDecrypt(ctx, fromHex(RFC.ct), fromHex(RFC.metadata));
  assert.equal(hex(pt), RFC.pt);
});

test('decryption with different metadata fails (metadata is authenticated)', async () => {
  const ctx = await deriveKeySalt(fromHex(RFC.baseKey), RFC.kid);
  const md = fromHex(RFC.metadata);
  md[0] ^= 1;
  await assert.rejects(sframeDecrypt(ctx, fromHex(RFC.ct), md));
});

test('header encoding: short and long forms round trip', () => {
  const cases = [
    [0, 0, '00'],
    [7, 7, '77'],
    [5, 9, '5809'],
    [0x123, 0x4567, '9901234567'],
    [8, 0, '8008'],
    [2 ** 40, 255, 'd8010000000000ff'],
  ];
  for (const [kid, ctr, h] of cases) {
    assert.equal(hex(encodeHeader(kid, ctr)), h, `kid ${kid} ctr ${ctr}`);
    const d = decodeHeader(fromHex(h));
    assert.deepEqual([d.kid, d.ctr, d.length], [kid, ctr, h.length / 2]);
  }
  assert.throws(() => decodeHeader(fromHex('99012345')), /truncated/);
  assert.throws(() => decodeHeader(new Uint8Array(0)), /truncated/);
});

// Our own pinned known answer: VP8 delta frame (first byte odd), kid 5, ctr 9, base key 00..1f.
test('media frame known answer: clear prefix, SFrame header, ciphertext', async () => {
  const base = Uint8Array.from({ length: 32 }, (_, i) => i);
  const ctx = await deriveKeySalt(base, 5);
  const frame = Uint8Array.from({ length: 20 }, (_, i) => i * 2); // byte0 = 0: VP8 keyframe
  const out = await protectFrame(ctx, 5, 9, 'video', frame);
  assert.equal(
    hex(out),
    '00020406080a0c0e1012580991d0c17c5a44a14b7f7f1fcc50148ef468e12cbc43acfb8f7887',
  );
  // 10 clear bytes, then header 58 09 (kid 5, ctr 9 long form), then 10 bytes ct + 16 tag.
  assert.equal(hex(out.subarray(0, 10)), hex(frame.subarray(0, 10)));
  assert.equal(out.length, 10 + 2 + 10 + 16);
});

async function ring(epoch, base) {
  const r = new ReceiveKeyring();
  await r.setKey(epoch, base);
  return r;
}

test('VP8 keyframe, VP8 delta and Opus frames round trip with the right clear prefix', async () => {
  const base = randomBytes(32);
  const sender = await SendKey.create(3, base);
  const receiver = await ring(3, base);
  const key = Uint8Array.from({ length: 300 }, (_, i) => (i === 0 ? 0x10 : i & 255)); // bit0 = 0
  const delta = Uint8Array.from({ length: 120 }, (_, i) => (i === 0 ? 0x31 : (i * 7) & 255)); // bit0 = 1
  const opus = Uint8Array.from({ length: 60 }, (_, i) => (i === 0 ? 0x78 : (i * 3) & 255));
  for (const [kind, frame, clear] of [['video', key, 10], ['video', delta, 3], ['audio', opus, 1]]) {
    const p = await sender.protect(kind, frame);
    assert.deepEqual(p.subarray(0, clear), frame.subarray(0, clear), 'prefix stays clear');
    assert.notDeepEqual(p.subarray(clear + 2, clear + 12), frame.subarray(clear, clear + 10), 'rest is not');
    assert.deepEqual(await receiver.unprotect(kind, p), frame);
  }
});

test('a shared screen and the camera cannot be passed off as each other', async () => {
  // Same sender, same key, same counter space: only the screen tag in the metadata tells them
  // apart, so a server moving frames between the two slots makes them fail.
  const base = randomBytes(32);
  const sender = await SendKey.create(2, base);
  const frame = Uint8Array.from({ length: 200 }, (_, i) => (i === 0 ? 0x10 : (i * 5) & 255));
  const screen = await sender.protect('screen', frame);
  const camera = await sender.protect('video', frame);
  assert.deepEqual(screen.subarray(0, 10), frame.subarray(0, 10), 'a screen keeps the VP8 clear prefix');
  await assert.rejects((await ring(2, base)).unprotect('video', screen), /auth_failed/, 'screen shown as camera');
  await assert.rejects((await ring(2, base)).unprotect('screen', camera), /auth_failed/, 'camera shown as screen');
  const r = await ring(2, base);
  assert.deepEqual(await r.unprotect('screen', screen), frame);
  assert.deepEqual(await r.unprotect('video', camera), frame);
});

test('flipping any ciphertext, tag, header or clear-prefix bit is rejected', async () => {
  const base = randomBytes(32);
  const sender = await SendKey.create(1, base);
  const frame = Uint8Array.from({ length: 64 }, (_, i) => (i === 0 ? 0x01 : i)); // delta
  const p = await sender.protect('video', frame);
  for (const pos of [0, 1, 2, 3, 4, 10, p.length - 1]) {
    const r = await ring(1, base); // fresh replay window each time
    const t = p.slice();
    t[pos] ^= pos === 0 ? 0x04 : 0x01; // keep bit 0 of byte 0 so the prefix length is unchanged
    await assert.rejects(r.unprotect('video', t), `bit flip at ${pos} must be rejected`);
  }
  const r = await ring(1, base);
  assert.deepEqual(await r.unprotect('video', p), frame, 'the untouched frame still decrypts');
});

test('counters never repeat: 2000 frames give 2000 distinct (kid, ctr) nonces', async () => {
  const base = randomBytes(32);
  const sender = await SendKey.create(0, base);
  const seen = new Set();
  const frame = Uint8Array.of(0x01, 2, 3, 4, 5, 6);
  for (let i = 0; i < 2000; i++) {
    const p = await sender.protect(i % 2 ? 'audio' : 'video', frame);
    const { header } = parseProtectedFrame(i % 2 ? 'audio' : 'video', p);
    const nonce = hex(nonceFor(sender.ctx.salt, header.ctr));
    assert.ok(!seen.has(nonce), `nonce reused at frame ${i}`);
    seen.add(nonce);
  }
  assert.equal(seen.size, 2000);
});

test('a replayed frame is rejected; reordering inside the window is accepted', async () => {
  const base = randomBytes(32);
  const sender = await SendKey.create(0, base);
  const r = await ring(0, base);
  const f = Uint8Array.of(0x01, 9, 9, 9, 9);
  const a = await sender.protect('video', f);
  const b = await sender.protect('video', f);
  await r.unprotect('video', b);
  await r.unprotect('video', a);
  await assert.rejects(r.unprotect('video', a), /replayed/);
  const w = new ReplayWindow(16);
  w.commit(100);
  assert.equal(w.check(84), false, 'outside window');
  assert.equal(w.check(90), true);
  w.commit(90);
  assert.equal(w.check(90), false);
});

test('keyring keeps the previous epoch so a key switch loses no frames', async () => {
  const k0 = randomBytes(32);
  const k1 = randomBytes(32);
  const old = await SendKey.create(0, k0);
  const inFlight = await old.protect('audio', Uint8Array.of(0x78, 1, 2, 3));
  const next = await SendKey.create(1, k1);
  const fresh = await next.protect('audio', Uint8Array.of(0x78, 4, 5, 6));
  const r = await ring(0, k0);
  await r.setKey(1, k1);
  assert.deepEqual(await r.unprotect('audio', fresh), Uint8Array.of(0x78, 4, 5, 6));
  assert.deepEqual(await r.unprotect('audio', inFlight), Uint8Array.of(0x78, 1, 2, 3));
});

test('ratchet known answer (HKDF-SHA256, checked against an independent HKDF)', async () => {
  const base = Uint8Array.from({ length: 32 }, (_, i) => i);
  const r1 = await ratchetBaseKey(base);
  assert.equal(hex(r1), 'aa72c1c4f86d34350924450372f49cb4df99f8388bd4fbbac4fdfe9d714bac6b');
  assert.equal(hex(await ratchetBaseKey(r1)), '7044d71515dd65607245bcb5ea7a44f3214d4a3e3eb4c0c28742d696270329bf');
});

test('join ratchet: existing receivers derive the next epoch, the newcomer cannot go back', async () => {
  const k0 = randomBytes(32);
  const k1 = await ratchetBaseKey(k0);
  const before = await (await SendKey.create(0, k0)).protect('video', Uint8Array.of(0x01, 1, 2, 3, 4));
  const after = await (await SendKey.create(1, k1)).protect('video', Uint8Array.of(0x01, 5, 6, 7, 8));
  const existing = await ring(0, k0);
  assert.deepEqual(await existing.unprotect('video', after), Uint8Array.of(0x01, 5, 6, 7, 8), 'derived by ratchet');
  const newcomer = await ring(1, k1);
  await assert.rejects(newcomer.unprotect('video', before), /unknown_key/, 'no key for epoch 0');
  // Even told to use its key for epoch 0, the newcomer's key does not open the old frame.
  const confused = await ring(0, k1);
  await assert.rejects(confused.unprotect('video', before), /auth_failed/);
});

test('leave rekey: a departed receiver with every old key cannot decrypt the fresh epoch', async () => {
  const k0 = randomBytes(32);
  const departed = await ring(0, k0);
  const k1 = randomBytes(32); // fresh random key, not a ratchet of k0
  const afterLeave = await (await SendKey.create(1, k1)).protect('video', Uint8Array.of(0x01, 1, 2, 3, 4));
  // The departed keyring ratchets k0 forward to guess epoch 1: that guess must fail.
  await assert.rejects(departed.unprotect('video', afterLeave), /auth_failed/);
  // and the wrong guess is forgotten, so the real key still installs and works for others.
  const remaining = await ring(0, k0);
  await remaining.setKey(1, k1);
  assert.deepEqual(await remaining.unprotect('video', afterLeave), Uint8Array.of(0x01, 1, 2, 3, 4));
});

test('explicit keys replace ratchet guesses; a far-future key id is not derived', async () => {
  const k0 = randomBytes(32);
  const r = await ring(0, k0);
  assert.equal(await r.entryFor(50), null, 'more than maxRatchet steps ahead');
  const guess = await r.entryFor(1);
  assert.equal(guess.explicit, false);
  const k1 = randomBytes(32);
  await r.setKey(1, k1);
  assert.equal(r.entries.get(1).explicit, true);
  assert.deepEqual(r.entries.get(1).base, k1);
});

test('malformed frames are rejected, never passed through', async () => {
  const r = await ring(0, randomBytes(32));
  for (const bad of [new Uint8Array(0), Uint8Array.of(0x01), Uint8Array.of(0x01, 2, 3, 0xff), new Uint8Array(30)]) {
    await assert.rejects(r.unprotect('video', bad));
  }
});
