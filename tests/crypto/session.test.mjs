// E2eeSession end to end in Node, wired through an in-memory relay that behaves like the server
// (or like a malicious one). Node has no encoded transforms, so these sessions run without a media
// worker: the handshake, safety codes, sender-key schedule and chat are the same code as in a browser.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { E2eeSession, deriveLinkSecret } from '../../web/e2ee/index.js';
import { ratchetBaseKey } from '../../web/e2ee/sframe.js';

const CONSULT = 'consult-7';
const A = 'a000000000000001';
const B = 'b000000000000002';
const C = 'c000000000000003';

/** A relay like the server's: delivers {from, kind, data} to `to`, asynchronously, in order. */
function makeRelay() {
  const sessions = new Map();
  const log = [];
  let tamper = null;
  const relay = {
    sessions,
    log,
    setTamper(fn) {
      tamper = fn;
    },
    session(id, opts = {}) {
      const s = new E2eeSession({
        consultId: CONSULT,
        selfId: id,
        ...opts,
        send: (to, kind, data) => {
          log.push({ from: id, to, kind, data });
          const msg = tamper ? tamper({ from: id, to, kind, data }) : { from: id, to, kind, data };
          if (!msg) return;
          setImmediate(() => sessions.get(msg.to)?.onRelay(msg.from, msg.kind, msg.data));
        },
      });
      sessions.set(id, s);
      return s;
    },
  };
  return relay;
}

function waitFor(pred, ms = 3000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error('timeout'));
      setTimeout(tick, 5);
    };
    tick();
  });
}

async function connect(x, y) {
  await Promise.all([x.participantJoined({ id: y.selfId, name: 'y', role: 'patient' }), y.participantJoined({ id: x.selfId, name: 'x', role: 'clinician' })]);
  await waitFor(() => x.peers.get(y.selfId)?.keyed && y.peers.get(x.selfId)?.keyed);
}

test('two participants agree on the safety code and chat both ways', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const b = relay.session(B);
  const statuses = [];
  a.addEventListener('status', (e) => statuses.push(e.detail));
  await Promise.all([a.start(), b.start()]);
  assert.equal(a.safetyCode(B), null, 'no code before the handshake');
  await connect(a, b);
  assert.deepEqual(a.safetyCode(B), b.safetyCode(A));
  assert.match(a.safetyCode(B).digits, /^\d{5} \d{5}$/);
  assert.equal(a.safetyCode(B).words.nl.length, 4);
  // Node has no media worker: the peer is keyed but reported honestly as not media-encrypted here.
  assert.equal(statuses.at(-1).state, 'off');
  assert.equal(statuses.at(-1).code, 'self_unsupported');

  const got = [];
  b.addEventListener('chat', (e) => got.push(e.detail));
  const mine = [];
  a.addEventListener('chat', (e) => mine.push(e.detail));
  assert.equal(await a.sendChat('Hoe gaat het met de wond?'), 1);
  await waitFor(() => got.length === 1);
  assert.equal(got[0].from, A);
  assert.equal(got[0].text, 'Hoe gaat het met de wond?');
  assert.equal(mine[0].from, A, 'the sender sees its own message too');
  // What crossed the relay: never the chat text.
  for (const m of relay.log) assert.ok(!m.data.includes('wond'), 'plaintext on the relay');
  a.stop();
  b.stop();
});

test('a relay in the middle that swaps keys yields different safety codes', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const b = relay.session(B);
  // The attacker runs its own sessions: one that poses as B towards A, one as A towards B.
  const mAsB = new E2eeSession({ consultId: CONSULT, selfId: B, send: (to, kind, data) => setImmediate(() => a.onRelay(B, kind, data)) });
  const mAsA = new E2eeSession({ consultId: CONSULT, selfId: A, send: (to, kind, data) => setImmediate(() => b.onRelay(A, kind, data)) });
  relay.setTamper((m) => {
    if (m.from === A) setImmediate(() => mAsB.onRelay(A, m.kind, m.data));
    if (m.from === B) setImmediate(() => mAsA.onRelay(B, m.kind, m.data));
    return null;
  });
  await Promise.all([a.participantJoined({ id: B }), b.participantJoined({ id: A }), mAsB.participantJoined({ id: A }), mAsA.participantJoined({ id: B })]);
  await waitFor(() => a.safetyCode(B) && b.safetyCode(A));
  assert.notEqual(a.safetyCode(B).digits, b.safetyCode(A).digits, 'codes must differ under a MITM');
  for (const s of [a, b, mAsA, mAsB]) s.stop();
});

test('with the link secret on both sides, a relay without it is detected (key_mismatch)', async () => {
  const secret = 'q8Xr2LmP0vN4sT6wY1zA3cq8Xr2LmP0vN4sT6wY1zA';
  const guess = 'Z3Vlc3MtZ3Vlc3MtZ3Vlc3MtZ3Vlc3MtZ3Vlc3MtZ3U';
  const relay = makeRelay();
  const a = relay.session(A, { role: 'clinician', link: { secret, label: null } });
  const b = relay.session(B, { role: 'clinician', link: { secret, label: null } });
  const mAsB = new E2eeSession({ consultId: CONSULT, selfId: B, role: 'clinician', link: { secret: guess, label: null }, send: (to, kind, data) => setImmediate(() => a.onRelay(B, kind, data)) });
  const mAsA = new E2eeSession({ consultId: CONSULT, selfId: A, role: 'clinician', link: { secret: guess, label: null }, send: (to, kind, data) => setImmediate(() => b.onRelay(A, kind, data)) });
  relay.setTamper((m) => {
    if (m.from === A) setImmediate(() => mAsB.onRelay(A, m.kind, m.data));
    if (m.from === B) setImmediate(() => mAsA.onRelay(B, m.kind, m.data));
    return null;
  });
  const aStatus = [];
  a.addEventListener('status', (e) => aStatus.push(e.detail));
  await Promise.all([a.participantJoined({ id: B, role: 'clinician' }), b.participantJoined({ id: A, role: 'clinician' }), mAsB.participantJoined({ id: A, role: 'clinician' }), mAsA.participantJoined({ id: B, role: 'clinician' })]);
  await waitFor(() => aStatus.some((s) => s.code === 'key_mismatch'));
  assert.equal(a.peers.get(B).keyed, false, 'no key accepted from the attacker');
  const chats = [];
  mAsB.addEventListener('chat', (e) => chats.push(e.detail));
  await a.sendChat('geheim');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(chats.length, 0, 'the attacker cannot read chat');
  for (const s of [a, b, mAsA, mAsB]) s.stop();
});

test('honest peers with the same link secret pair link-bound', async () => {
  const relay = makeRelay();
  const secret = 'c2hhcmVkLXNlY3JldC0xMjMtc2hhcmVkLXNlY3JldA';
  const a = relay.session(A, { role: 'clinician', link: { secret, label: null } });
  const b = relay.session(B, { role: 'patient', link: { secret: await deriveLinkSecret(secret, CONSULT, 'patient'), label: 'patient' } });
  const st = [];
  a.addEventListener('status', (e) => st.push(e.detail));
  await connect(a, b);
  assert.equal(st.at(-1).linkBound, true);
  assert.equal(st.at(-1).linkLabel, 'patient');
  assert.deepEqual(a.safetyCode(B), b.safetyCode(A));
  a.stop();
  b.stop();
});

test('join ratchets the sender key; leave replaces it with a fresh random key for those who remain', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const b = relay.session(B);
  await connect(a, b);
  const before = { epoch: a.latest.epoch, key: a.latest.baseKey.slice() };
  const c = relay.session(C);
  await connect(a, c);
  assert.equal(a.latest.epoch, before.epoch + 1, 'join moves to the next epoch');
  assert.deepEqual(a.latest.baseKey, await ratchetBaseKey(before.key), 'by one ratchet step');
  const joined = { epoch: a.latest.epoch, key: a.latest.baseKey.slice() };

  const sentAfter = relay.log.length;
  await a.participantLeft(C);
  // The fresh key is sealed and sent on B's send chain, after participantLeft resolves (CI once
  // looked before it was sent): wait for that chain, not for time.
  await a.peers.get(B).sendChain;
  assert.equal(a.latest.epoch, joined.epoch + 1);
  assert.notDeepEqual(a.latest.baseKey, await ratchetBaseKey(joined.key), 'not derivable from what C held');
  const keyMsgs = relay.log.slice(sentAfter).filter((m) => m.from === A && m.kind === 'key');
  assert.deepEqual(keyMsgs.map((m) => m.to), [B], 'the new key goes to B only');
  assert.ok(!keyMsgs[0].data.includes(Buffer.from(a.latest.baseKey).toString('base64')), 'key travels sealed');
  for (const s of [a, b, c]) s.stop();
});

test('hostile relay input is counted and ignored, never thrown or shown', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const b = relay.session(B);
  await connect(a, b);
  const chats = [];
  a.addEventListener('chat', (e) => chats.push(e));
  const before = a.counters.rejected;
  const junk = [
    [B, 'key', '{'],
    [B, 'key', JSON.stringify({ t: 'commit', v: 1, c: 'x' })],
    [B, 'key', JSON.stringify({ t: 'box', b: 'AAAA' })],
    [B, 'chat', 'AAAA'],
    [B, 'chat', 'Z'.repeat(70_000)],
    [B, 'photo', '!!!'],
    [B, 'weird', 'AAAA'],
    [B, 'chat', 12345],
    ['../../etc', 'chat', 'AAAA'],
    [A, 'key', '{}'],
  ];
  for (const [from, kind, data] of junk) await a.onRelay(from, kind, data);
  assert.equal(a.counters.rejected - before, junk.length);
  assert.equal(chats.length, 0);
  // The real pair still works afterwards.
  const got = [];
  a.addEventListener('chat', (e) => got.push(e.detail.text));
  await b.sendChat('nog steeds goed');
  await waitFor(() => got.length === 1);
  a.stop();
  b.stop();
});

test('a second, different commitment from the same participant is flagged', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const b = relay.session(B);
  await connect(a, b);
  const st = [];
  a.addEventListener('status', (e) => st.push(e.detail));
  await a.onRelay(B, 'key', JSON.stringify({ t: 'commit', v: 2, c: Buffer.alloc(32, 7).toString('base64') }));
  assert.equal(st.at(-1).code, 'handshake_conflict');
  a.stop();
  b.stop();
});

test('stop wipes keys and ends the session', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const b = relay.session(B);
  await connect(a, b);
  const key = a.latest.baseKey;
  a.stop();
  assert.ok(key.every((x) => x === 0), 'sender key zeroed');
  assert.equal(a.safetyCode(B), null);
  assert.equal(a.peers.size, 0);
  b.stop();
});

/** A media worker stand-in: records what the session posts to it. */
function fakeWorker() {
  const w = new EventTarget();
  w.posted = [];
  w.postMessage = (m) => w.posted.push(m);
  w.terminate = () => {};
  return w;
}

test('the handshake completes while the media worker is still starting; what the worker is sent waits for it; the peer shows as encrypted only once it runs', async () => {
  const relay = makeRelay();
  const secret = 'c2hhcmVkLXNlY3JldC0xMjMtc2hhcmVkLXNlY3JldA';
  let started;
  const worker = fakeWorker();
  const a = relay.session(A, { role: 'clinician', link: { secret, label: null }, worker, workerReady: new Promise((r) => (started = r)) });
  const b = relay.session(B, {
    role: 'patient',
    link: { secret: await deriveLinkSecret(secret, CONSULT, 'patient'), label: 'patient' },
    worker: fakeWorker(),
  });
  const seen = [];
  a.addEventListener('status', (e) => seen.push(e.detail));
  let mediaUp = false;
  a.media().then(() => (mediaUp = true));
  // Before the worker runs: keys, commitments, hellos and sender keys all go through.
  await connect(a, b);
  assert.deepEqual(a.safetyCode(B), b.safetyCode(A));
  assert.equal(mediaUp, false, 'the worker has not started');
  const ops = worker.posted.map((m) => m.op);
  assert.ok(ops.includes('set-send-key'), `own sender key handed to the worker: ${ops}`);
  assert.ok(worker.posted.some((m) => m.op === 'set-recv-key' && m.participantId === B), `B's key handed to the worker: ${ops}`);
  // The hello said media is end-to-end encrypted (a worker exists), as before.
  assert.equal(JSON.parse(relay.log.find((m) => m.from === A && JSON.parse(m.data).t === 'hello').data).m, 'e2ee');
  // Keyed, but not claimed as encrypted while nothing of ours can encrypt yet.
  assert.equal(a.peerStatus(B).trust, 'pending', JSON.stringify(a.peerStatus(B)));
  assert.equal(a.summary(), 'pending');
  assert.ok(seen.length > 0 && seen.every((d) => d.trust === 'pending' || d.trust === 'needs-decision'), JSON.stringify(seen.map((d) => d.trust)));
  started();
  await waitFor(() => mediaUp);
  // The worker runs: the status is told again, now link-bound.
  await waitFor(() => seen.at(-1).trust === 'link-bound');
  assert.equal(a.peerStatus(B).trust, 'link-bound');
  a.stop();
  b.stop();
});

test('the first to join gets a ratcheted key: what was sent while alone stays closed to them', async () => {
  const relay = makeRelay();
  const a = relay.session(A);
  const bWorker = fakeWorker();
  const b = relay.session(B, { worker: bWorker });
  await a.start();
  const alone = { epoch: a.latest.epoch, key: a.latest.baseKey.slice() };
  await connect(a, b);
  assert.equal(a.latest.epoch, alone.epoch + 1, 'the join moved to the next epoch');
  assert.deepEqual(a.latest.baseKey, await ratchetBaseKey(alone.key), 'by one ratchet step');
  const got = bWorker.posted.filter((m) => m.op === 'set-recv-key' && m.participantId === A);
  assert.ok(got.length > 0, 'B got a key from A');
  for (const m of got) {
    assert.ok(m.epoch > alone.epoch, `B was given epoch ${m.epoch}, used while A was alone`);
    assert.notDeepEqual(new Uint8Array(m.baseKey), alone.key, 'the key A used alone');
  }
  a.stop();
  b.stop();
});

test('stopped while a join ratchet is under way: no key survives the stop, no peer is added', async () => {
  // B holds our key (keySent), so a newcomer ratchets it; the stop lands at every point of the
  // join in turn (0–11 event-loop turns after it began), among them while the ratchet is awaited.
  let during = 0;
  for (let turns = 0; turns < 12; turns++) {
    const relay = makeRelay();
    const a = relay.session(A);
    const b = relay.session(B);
    await connect(a, b);
    const epoch = a.latest.epoch;
    const joining = a.participantJoined({ id: C, name: 'c', role: 'patient' });
    for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
    if (a.latest.epoch === epoch && a.peers.size === 1) during++;
    a.stop();
    await joining;
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(a.latest, null, `no sender key after a stop ${turns} turns into the join`);
    assert.equal(a.peers.size, 0, `no peer added after a stop ${turns} turns into the join`);
    b.stop();
  }
  assert.ok(during > 0, 'some stop landed before the join finished');
});

test('a media worker that never starts fails the session\'s media, not silently', async () => {
  const relay = makeRelay();
  const a = relay.session(A, { worker: fakeWorker(), workerReady: new Promise(() => {}), workerStartMs: 50 });
  await a.start();
  await assert.rejects(a.media(), /e2ee_worker_failed/);
  a.stop();
});
