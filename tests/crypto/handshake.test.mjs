// Pairwise key agreement, transcript, safety code and sealed boxes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hex, utf8 } from '../../web/e2ee/bytes.js';
import {
  BOX_KIND,
  commitment,
  createKeyPairs,
  decodeHello,
  derivePair,
  encodeHello,
  makeHello,
  open,
  safetyCode,
  seal,
  transcript,
} from '../../web/e2ee/handshake.js';
import { WORDS } from '../../web/e2ee/words.js';

const CONSULT = 'consult-42';

async function party(id, { linkSecret = null, x25519 = true } = {}) {
  const pairs = await createKeyPairs({ x25519 });
  const hello = makeHello(pairs, { hasLinkSecret: Boolean(linkSecret), media: 'e2ee' });
  return { id, pairs, hello, linkSecret };
}

function pairBetween(me, peer, peerHello = peer.hello) {
  return derivePair({
    consultId: CONSULT,
    selfId: me.id,
    peerId: peer.id,
    pairs: me.pairs,
    selfHello: me.hello,
    peerHello,
    linkSecret: me.linkSecret,
  });
}

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
  const secret = 'Zk3p9QyXb7M2vW1rT8uA5e';
  const a = await party('aaaa', { linkSecret: secret });
  const b = await party('bbbb', { linkSecret: secret });
  const ab = await pairBetween(a, b);
  const ba = await pairBetween(b, a);
  assert.equal(ab.linkBound, true);
  assert.deepEqual(await open(ba, BOX_KIND.key, await seal(ab, BOX_KIND.key, utf8('ok'))), utf8('ok'));
  // The attacker runs ECDH with A under B's name but has to guess the link secret.
  const m = await party('bbbb', { linkSecret: 'wrong-guess' });
  m.hello = { ...m.hello, l: 1 };
  const aToM = await pairBetween(a, { id: 'bbbb' }, m.hello);
  const mToA = await pairBetween(m, a);
  await assert.rejects(open(mToA, BOX_KIND.key, await seal(aToM, BOX_KIND.key, utf8('x'))), /box_auth_failed/);
});

test('the link-secret flag is part of the transcript (stripping it changes the code)', async () => {
  const a = await party('aaaa', { linkSecret: 's' });
  const b = await party('bbbb', { linkSecret: 's' });
  const honest = await pairBetween(a, b);
  const stripped = await pairBetween(a, b, { ...b.hello, l: 0 });
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
    { ...good, v: 2 },
    { ...good, p: 'AAAA' },
    { ...good, p: good.p.replace(/^B/, 'A') }, // first byte not 0x04
    { ...good, x: 'AAAA' },
    { ...good, l: 2 },
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
    digits: '83201 63727',
    words: { nl: ['brief', 'bel', 'trui', 'kruik'], en: ['bike', 'bean', 'nail', 'tulip'] },
  });
  for (const lang of ['nl', 'en']) {
    assert.equal(WORDS[lang].length, 256);
    assert.equal(new Set(WORDS[lang]).size, 256, `${lang} words are unique`);
    for (const w of WORDS[lang]) assert.match(w, /^[a-z]{2,8}$/);
  }
});

test('transcript known answer: sorted by id, curve chosen from both hellos', async () => {
  const hA = { x: new Uint8Array(32).fill(1), p: Uint8Array.of(4, ...new Array(64).fill(2)), l: 1, m: 'e2ee' };
  const hB = { x: null, p: Uint8Array.of(4, ...new Array(64).fill(3)), l: 0, m: 'none' };
  const t1 = transcript('consult-1', 'bbbb', hA, 'aaaa', hB);
  const t2 = transcript('consult-1', 'aaaa', hB, 'bbbb', hA);
  assert.equal(t1.curve, 'P-256');
  assert.deepEqual(t1.bytes, t2.bytes, 'independent of who computes it');
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', t1.bytes));
  assert.equal(hex(digest), '28ee10c05a3517503cc8fc4dc1ea97929fd0c44539143d5444c1eb11b4a148a1');
});
