// Pairwise key agreement, transcript, safety code and sealed boxes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hex, utf8 } from '../../web/e2ee/bytes.js';
import {
  BOX_KIND,
  commitment,
  createKeyPairs,
  decodeHello,
  decodeLinkSecret,
  deriveLinkSecret,
  derivePair,
  encodeHello,
  helloBytes,
  makeHello,
  open,
  pairLinkSecret,
  safetyCode,
  seal,
  transcript,
} from '../../web/e2ee/handshake.js';
import { WORDS } from '../../web/e2ee/words.js';

const CONSULT = 'consult-42';

// A party holds a link claim (null, '*' or a label) and the matching secret (base64url).
async function party(id, { claim = null, secret = null, x25519 = true } = {}) {
  const pairs = await createKeyPairs({ x25519 });
  const hello = makeHello(pairs, { link: claim, media: 'e2ee' });
  return { id, pairs, hello, claim, secret: secret ? decodeLinkSecret(secret) : null };
}

async function pairBetween(me, peer, peerHello = peer.hello) {
  const pairSecret = await pairLinkSecret(CONSULT, { claim: me.claim, secret: me.secret }, peerHello.k);
  return derivePair({
    consultId: CONSULT,
    selfId: me.id,
    peerId: peer.id,
    pairs: me.pairs,
    selfHello: me.hello,
    peerHello,
    pairSecret,
  });
}

const MASTER = 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8'; // bytes 0..31

test('both sides derive matching directional keys and the same safety code (X25519)', async () => {
  const a = await party('aaaa');
  const b = await party('bbbb');
  const ab = await pairBetween(a, b);
  const ba = await pairBetween(b, a);
  assert.equal(ab.curve, 'X25519');
  assert.deepEqual(ab.safetyCode, ba.safetyCode);
  assert.match(ab.safetyCode.digits, /^\d{5} \d{5}$/);
  assert.deepEqual(await open(ba, BOX_KIND.chat, await seal(ab, BOX_KIND.chat, utf8('hallo'))), utf8('hallo'));
  assert.deepEqual(await open(ab, BOX_KIND.chat, await seal(ba, BOX_KIND.chat, utf8('hoi'))), utf8('hoi'));
});

test('a side without X25519 makes both use P-256, still agreeing', async () => {
  const a = await party('aaaa');
  const b = await party('bbbb', { x25519: false });
  const ab = await pairBetween(a, b);
  const ba = await pairBetween(b, a);
  assert.equal(ab.curve, 'P-256');
  assert.equal(ba.curve, 'P-256');
  assert.deepEqual(ab.safetyCode, ba.safetyCode);
  assert.deepEqual(await open(ba, BOX_KIND.key, await seal(ab, BOX_KIND.key, utf8('k'))), utf8('k'));
});

test('a relay that swaps public keys (man in the middle) gives different safety codes', async () => {
  const a = await party('aaaa');
  const b = await party('bbbb');
  const m = await party('mmmm'); // the attacker's keys, presented to each side under the other's id
  const aSees = await pairBetween(a, { id: 'bbbb' }, m.hello);
  const bSees = await pairBetween(b, { id: 'aaaa' }, m.hello);
  assert.notDeepEqual(aSees.safetyCode.digits, bSees.safetyCode.digits);
  assert.notDeepEqual(aSees.safetyCode.words.en, bSees.safetyCode.words.en);
});

test('with a link secret, a relay that lacks it cannot complete the pairing', async () => {
  const a = await party('aaaa', { claim: '*', secret: MASTER });
  const b = await party('bbbb', { claim: '*', secret: MASTER });
  const ab = await pairBetween(a, b);
  const ba = await pairBetween(b, a);
  assert.equal(ab.linkBound, true);
  assert.deepEqual(await open(ba, BOX_KIND.key, await seal(ab, BOX_KIND.key, utf8('ok'))), utf8('ok'));
  // The attacker runs ECDH with A under B's name but has to guess the link secret.
  const m = await party('bbbb', { claim: '*', secret: 'd3JvbmctZ3Vlc3Mtd3JvbmctZ3Vlc3M' });
  const aToM = await pairBetween(a, { id: 'bbbb' }, m.hello);
  const mToA = await pairBetween(m, a);
  await assert.rejects(open(mToA, BOX_KIND.key, await seal(aToM, BOX_KIND.key, utf8('x'))), /box_auth_failed/);
});

test('the link claim is part of the transcript (stripping it changes the code)', async () => {
  const a = await party('aaaa', { claim: '*', secret: MASTER });
  const b = await party('bbbb', { claim: '*', secret: MASTER });
  const honest = await pairBetween(a, b);
  const stripped = await pairBetween(a, b, { ...b.hello, k: null });
  assert.equal(stripped.linkBound, false);
  assert.notEqual(honest.safetyCode.digits, stripped.safetyCode.digits);
});

test('commitment binds the hello and the sender id', async () => {
  const a = await party('aaaa');
  const other = await party('aaaa');
  const c = await commitment(CONSULT, 'aaaa', a.hello);
  assert.equal(c.length, 32);
  assert.notEqual(hex(c), hex(await commitment(CONSULT, 'aaaa', other.hello)));
  assert.notEqual(hex(c), hex(await commitment(CONSULT, 'zzzz', a.hello)));
  assert.notEqual(hex(c), hex(await commitment('other-consult', 'aaaa', a.hello)));
});

test('boxes: replay, reordering, kind confusion and bit flips are refused', async () => {
  const a = await party('aaaa');
  const b = await party('bbbb');
  const ab = await pairBetween(a, b);
  const ba = await pairBetween(b, a);
  const first = await seal(ab, BOX_KIND.chat, utf8('1'));
  const second = await seal(ab, BOX_KIND.chat, utf8('2'));
  assert.deepEqual(await open(ba, BOX_KIND.chat, second), utf8('2'));
  await assert.rejects(open(ba, BOX_KIND.chat, first), /replayed_box/);
  await assert.rejects(open(ba, BOX_KIND.chat, second), /replayed_box/);
  const asKey = await seal(ab, BOX_KIND.chat, utf8('3'));
  await assert.rejects(open(ba, BOX_KIND.key, asKey), /bad_box/);
  const fourth = Buffer.from(await seal(ab, BOX_KIND.chat, utf8('4')), 'base64');
  fourth[fourth.length - 3] ^= 1;
  await assert.rejects(open(ba, BOX_KIND.chat, fourth.toString('base64')), /box_auth_failed/);
  await assert.rejects(open(ba, BOX_KIND.chat, 'not base64!'), /bad_box/);
  await assert.rejects(open(ba, BOX_KIND.chat, 'A'.repeat(200_000)), /bad_box/);
  // Our own box cannot be reflected back to us: the directions use different keys.
  const mine = await seal(ab, BOX_KIND.chat, utf8('5'));
  await assert.rejects(open(ab, BOX_KIND.chat, mine));
});

test('hostile hellos are rejected', async () => {
  const a = await party('aaaa');
  const good = encodeHello(a.hello);
  assert.deepEqual(decodeHello(JSON.parse(JSON.stringify(good))).p, a.hello.p);
  const bad = [
    null,
    'hello',
    { ...good, t: 'commit' },
    { ...good, v: 1 }, // protocol v1 is refused
    { ...good, v: 3 },
    { ...good, p: 'AAAA' },
    { ...good, p: good.p.replace(/^B/, 'A') }, // first byte not 0x04
    { ...good, x: 'AAAA' },
    { ...good, k: 2 },
    { ...good, k: undefined },
    { ...good, k: 'Patient' },
    { ...good, k: 'x'.repeat(33) },
    { ...good, k: '**' },
    { ...good, m: 'maybe' },
    { ...good, p: 'A'.repeat(10_000) },
  ];
  for (const h of bad) assert.throws(() => decodeHello(h), /bad_hello/, JSON.stringify(h)?.slice(0, 60));
});

test('a P-256 point that is not on the curve is refused', async () => {
  const a = await party('aaaa', { x25519: false });
  const b = await party('bbbb', { x25519: false });
  const p = b.hello.p.slice();
  p[64] ^= 1;
  await assert.rejects(pairBetween(a, b, { ...b.hello, p }));
});

test('an all-zero (low-order) X25519 public key is refused', async () => {
  const a = await party('aaaa');
  const b = await party('bbbb');
  await assert.rejects(pairBetween(a, b, { ...b.hello, x: new Uint8Array(32) }));
});

test('safety code known answer and word lists', async () => {
  const th = Uint8Array.from({ length: 32 }, (_, i) => i);
  assert.deepEqual(await safetyCode(th), {
    digits: '97750 16385',
    words: { nl: ['bol', 'vos', 'kam', 'bezem'], en: ['scarf', 'paper', 'cup', 'rope'] },
  });
  for (const lang of ['nl', 'en']) {
    assert.equal(WORDS[lang].length, 256);
    assert.equal(new Set(WORDS[lang]).size, 256, `${lang} words are unique`);
    for (const w of WORDS[lang]) assert.match(w, /^[a-z]{2,8}$/);
  }
});

test('transcript known answer: sorted by id, curve chosen from both hellos', async () => {
  const hA = { x: new Uint8Array(32).fill(1), p: Uint8Array.of(4, ...new Array(64).fill(2)), k: '*', m: 'e2ee' };
  const hB = { x: null, p: Uint8Array.of(4, ...new Array(64).fill(3)), k: null, m: 'none' };
  const t1 = transcript('consult-1', 'bbbb', hA, 'aaaa', hB);
  const t2 = transcript('consult-1', 'aaaa', hB, 'bbbb', hA);
  assert.equal(t1.curve, 'P-256');
  assert.deepEqual(t1.bytes, t2.bytes, 'independent of who computes it');
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', t1.bytes));
  assert.equal(hex(digest), '5604f8a547e9aad7add7c48996900ba90454717c776023c189f7cd122fa7d18c');
});

// ---- v2: link claim, label derivation (vectors computed independently with Python's hashlib/hmac;
// the same label vectors are in signaling/src/config.rs's tests) ------------------------------

test('label derivation known answer (HKDF-SHA256 of the master secret, per consult and label)', async () => {
  assert.equal(MASTER, Buffer.from(Uint8Array.from({ length: 32 }, (_, i) => i)).toString('base64url'));
  assert.equal(await deriveLinkSecret(MASTER, 'consult-42', 'patient'), 'RxtAi-A6HCVjXqxgWB-soZfAgDGFT2a1-gW-Qz-u0Bk');
  assert.equal(await deriveLinkSecret(MASTER, 'consult-42', 'guest-3f9a2c'), 'eVrYjAQpZebBG6pDUoIqHYAsp_lpe8ZEDSOIebCrifo');
  // Another consult, another label: another secret.
  assert.notEqual(await deriveLinkSecret(MASTER, 'consult-43', 'patient'), 'RxtAi-A6HCVjXqxgWB-soZfAgDGFT2a1-gW-Qz-u0Bk');
  await assert.rejects(deriveLinkSecret(MASTER, 'consult-42', 'Patient'), /bad_link_label/);
  await assert.rejects(deriveLinkSecret('short', 'consult-42', 'patient'), /bad_link_secret/);
  await assert.rejects(deriveLinkSecret(MASTER + '=', 'consult-42', 'patient'), /bad_link_secret/);
});

test('v2 hello bytes, commitment and wire form known answer', async () => {
  const h = { x: new Uint8Array(32).fill(1), p: Uint8Array.of(4, ...new Array(64).fill(2)), k: '*', m: 'e2ee' };
  assert.equal(
    hex(helloBytes(h)),
    '0000000678323535313900000020' + '01'.repeat(32) + '0000000470323536000000410' + '4' + '02'.repeat(64) +
      '000000046c696e6b000000012a0000000465326565',
  );
  assert.equal(hex(await commitment('consult-1', 'bbbb', h)), '4406ce5e0a6295fdd4c2cc5bf3b8215bff49e1c93c65ae132eabeb78562d75b6');
  assert.equal(
    hex(await commitment('consult-1', 'bbbb', { ...h, k: null })),
    '72cbfc47848d8df866d2001579a8318d7c53d99f10e17e2c2d00621ccda73a15',
    'the link claim is committed to',
  );
  const wire = encodeHello(h);
  assert.equal(wire.v, 2);
  assert.equal(wire.k, '*');
  assert.deepEqual(decodeHello(JSON.parse(JSON.stringify(wire))), h);
  assert.equal(decodeHello(JSON.parse(JSON.stringify(encodeHello({ ...h, k: null })))).k, null);
  assert.equal(decodeHello(JSON.parse(JSON.stringify(encodeHello({ ...h, k: 'guest-3f9a2c' })))).k, 'guest-3f9a2c');
});

test('pair binding: who shares which secret', async () => {
  const m = decodeLinkSecret(MASTER);
  const kp = decodeLinkSecret(await deriveLinkSecret(MASTER, CONSULT, 'patient'));
  const kg = decodeLinkSecret(await deriveLinkSecret(MASTER, CONSULT, 'guest-1'));
  const clin = { claim: '*', secret: m };
  const pat = { claim: 'patient', secret: kp };
  const guest = { claim: 'guest-1', secret: kg };
  assert.deepEqual(await pairLinkSecret(CONSULT, clin, '*'), m);
  assert.deepEqual(await pairLinkSecret(CONSULT, clin, 'patient'), kp, 'the master side derives K_L');
  assert.deepEqual(await pairLinkSecret(CONSULT, pat, '*'), kp);
  assert.deepEqual(await pairLinkSecret(CONSULT, pat, 'patient'), kp);
  assert.equal(await pairLinkSecret(CONSULT, pat, 'guest-1'), null, 'different labels: unbound');
  assert.equal(await pairLinkSecret(CONSULT, guest, 'patient'), null);
  assert.equal(await pairLinkSecret(CONSULT, pat, null), null);
  assert.equal(await pairLinkSecret(CONSULT, { claim: null, secret: null }, '*'), null);
});

// The relay rewrites the peer's `k` claim, in either direction, between two real parties.
for (const [name, aClaim, bClaim, rewritten] of [
  ['stripping (* -> null)', '*', '*', null],
  ['adding (null -> *)', null, null, '*'],
  ['relabelling (patient -> guest-1)', '*', 'patient', 'guest-1'],
]) {
  test(`rewriting the link claim ${name} gives different transcripts and the key box fails`, async () => {
    const secretOf = async (c) => (c === '*' ? MASTER : c ? deriveLinkSecret(MASTER, CONSULT, c) : null);
    const a = await party('aaaa', { claim: aClaim, secret: await secretOf(aClaim) });
    const b = await party('bbbb', { claim: bClaim, secret: await secretOf(bClaim) });
    const aSees = await pairBetween(a, b, { ...b.hello, k: rewritten }); // A got B's hello, rewritten
    const bSees = await pairBetween(b, a); // B got A's hello untouched
    assert.notEqual(hex(aSees.th), hex(bSees.th), 'different transcripts');
    assert.notEqual(aSees.safetyCode.digits, bSees.safetyCode.digits, 'different safety codes');
    // B's sealed sender key does not open for A: the session reports key_mismatch on this.
    await assert.rejects(open(aSees, BOX_KIND.key, await seal(bSees, BOX_KIND.key, utf8('key'))), /box_auth_failed/);
    await assert.rejects(open(bSees, BOX_KIND.key, await seal(aSees, BOX_KIND.key, utf8('key'))), /box_auth_failed/);
    // And the commitment B made does not match the rewritten hello (commit_mismatch).
    assert.notEqual(hex(await commitment(CONSULT, 'bbbb', b.hello)), hex(await commitment(CONSULT, 'bbbb', { ...b.hello, k: rewritten })));
  });
}
