// E2eeSession against a malicious relay (the server as an active attacker), in Node: honest
// sessions and attacker-run sessions (the same code, driven by the attacker) wired through a relay
// that injects, rewrites, drops and redirects messages. Each session gets a recording stand-in for
// the media worker, so "who received my media key" is observable: the worker's `set-recv-key`.
// Findings 1–3 of issue 9 and removal; see docs/CRYPTO.md §4.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { E2eeSession, deriveLinkSecret } from '../../web/e2ee/index.js';
import { commitment, decodeHello, encodeHello } from '../../web/e2ee/handshake.js';

const CONSULT = 'consult-adv';
const C = 'c1inician000001'; // clinician, holds the master secret M
const P = 'pat1ent00000002'; // patient, holds K_patient
const G = 'gue5t0000000003'; // guest, holds K_guest-1
const I = 'invented0000009'; // an id the server made up
const M = 'bWFzdGVyLXNlY3JldC1vZi1jb25zdWx0LWFkdi0xMjM'; // 32 bytes, base64url

const roles = { [C]: 'clinician', [P]: 'patient', [G]: 'guest', [I]: 'guest' };

function fakeWorker() {
  const w = { msgs: [], postMessage: (m) => w.msgs.push(m), addEventListener() {}, removeEventListener() {}, terminate() {} };
  return w;
}

/** Epochs of `from`'s sender key that reached session `s` (its worker got them). */
function recvEpochs(s, from) {
  return s.worker.msgs.filter((m) => m.op === 'set-recv-key' && m.participantId === from).map((m) => m.epoch);
}

/**
 * Relay network. Nodes are sessions by name; by default a message to id X goes to node X as from
 * the sender's id. `route(m)` (the attacker) returns [[node, asId, data?], ...] deliveries instead.
 */
function makeNet() {
  const net = {
    nodes: new Map(),
    log: [],
    route: null,
    add(name, opts) {
      const s = new E2eeSession({
        consultId: CONSULT,
        worker: fakeWorker(),
        ...opts,
        send: (to, kind, data) => {
          const m = { node: name, from: s.selfId, to, kind, data };
          net.log.push(m);
          const targets = net.route ? net.route(m) : [[to, s.selfId]];
          for (const [node, as, rewritten = data] of targets) setImmediate(() => net.nodes.get(node)?.onRelay(as, kind, rewritten));
        },
      });
      net.nodes.set(name, s);
      return s;
    },
    stop() {
      for (const s of net.nodes.values()) s.stop();
    },
  };
  return net;
}

async function links() {
  return {
    clinician: { role: 'clinician', link: { secret: M, label: null } },
    patient: { role: 'patient', link: { secret: await deriveLinkSecret(M, CONSULT, 'patient'), label: 'patient' } },
    guest: { role: 'guest', link: { secret: await deriveLinkSecret(M, CONSULT, 'guest-1'), label: 'guest-1' } },
  };
}

function show(s, id) {
  return s.participantJoined({ id, name: `name-${id}`, role: roles[id] });
}

function waitFor(pred, what, ms = 8000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - t0 > ms) return reject(new Error(`timeout waiting for ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

const settle = (ms = 200) => new Promise((r) => setTimeout(r, ms));

function chats(s) {
  const got = [];
  s.addEventListener('chat', (e) => got.push(e.detail));
  return got;
}

test('(a) a relay from an invented id gets no key and no chat, and is reported as refused', async () => {
  const net = makeNet();
  const a = net.add(C, { selfId: C, role: 'clinician' }); // no link secrets at all: roster gating alone
  const b = net.add(P, { selfId: P, role: 'patient' });
  const inv = net.add(I, { selfId: I, role: 'guest' }); // the attacker's own session under an invented id
  const refused = [];
  a.addEventListener('refused', (e) => refused.push(e.detail));
  const invChat = chats(inv);
  await Promise.all([show(a, P), show(b, C)]);
  await waitFor(() => a.peerStatus(P)?.trust === 'encrypted' && recvEpochs(b, C).length > 0, 'A–B keyed');
  // The server never shows I to A, but relays I's handshake to A (and keeps retrying).
  await show(inv, C);
  await waitFor(() => refused.length > 0, "'refused' event", 10_000);
  assert.deepEqual(refused, [{ participantId: I, reason: 'not_in_roster' }]);
  assert.equal(a.counters.refused, 1);
  assert.equal(a.peerStatus(I), null, 'not a participant of the page');
  assert.equal(await a.sendChat('alleen voor B'), 1, 'chat goes to B only');
  await settle();
  // A never answered I at all: no commit, no hello, no sealed key, no chat.
  assert.deepEqual(net.log.filter((m) => m.from === C && m.to === I), []);
  assert.deepEqual(recvEpochs(inv, C), []);
  assert.equal(invChat.filter((c) => c.from === C).length, 0);
  assert.equal(a.summary(), 'encrypted', 'the summary covers B only, the one participant shown');
  net.stop();
});

/** Relay in the middle: `mitm` maps a victim id to the attacker node that impersonates its peer. */
function mitmRoute(net, impersonators) {
  // impersonators: { victimNode: {peerId, node} } — messages from victim to peerId go to node;
  // messages from node go to the victim as from peerId.
  return (m) => {
    const imp = impersonators[m.node];
    if (imp && m.to === imp.peerId) return [[imp.node, m.from]];
    for (const [victim, v] of Object.entries(impersonators)) if (m.node === v.node) return [[victim, v.peerId]];
    return [[m.to, m.from]];
  };
}

test('(b) a full MITM that strips the link claim gets no key until the clinician admits it; the patient still withholds', async () => {
  const L = await links();
  const net = makeNet();
  const c = net.add(C, { selfId: C, ...L.clinician });
  const p = net.add(P, { selfId: P, ...L.patient });
  // The attacker's sessions: k:null (it holds no secret), posing as P towards C and as C towards P.
  const mAsP = net.add('mAsP', { selfId: P, role: 'patient' });
  const mAsC = net.add('mAsC', { selfId: C, role: 'clinician' });
  net.route = mitmRoute(net, { [C]: { peerId: P, node: 'mAsP' }, [P]: { peerId: C, node: 'mAsC' } });
  const mChatsFromC = chats(mAsP);
  const mChatsFromP = chats(mAsC);
  await Promise.all([show(c, P), show(p, C), show(mAsP, C), show(mAsC, P)]);
  await waitFor(() => c.peerStatus(P)?.trust === 'needs-decision' && p.peerStatus(C)?.trust === 'needs-decision', 'needs-decision on both');
  assert.equal(c.peerStatus(P).code, 'link_unbound');
  assert.equal(c.peerStatus(P).keyWithheld, true);
  assert.equal(c.summary(), 'needs-decision');
  assert.equal(await c.sendChat('geheim voor de patiënt'), 0);
  assert.equal(await p.sendChat('geheim voor de arts'), 0);
  await settle(300);
  assert.deepEqual(recvEpochs(mAsP, C), [], "no clinician's key for the MITM");
  assert.deepEqual(recvEpochs(mAsC, P), [], "no patient's key for the MITM");
  assert.equal(mChatsFromC.length + mChatsFromP.length, 0);
  // The patient cannot admit anyone itself.
  assert.equal(await p.acceptUnbound(C), false);
  // The clinician decides to admit "P" without the link check: that is its (visible) decision.
  assert.equal(await c.acceptUnbound(P), true);
  await waitFor(() => recvEpochs(mAsP, C).length > 0, 'key after the decision');
  assert.equal(c.peerStatus(P).code, 'accepted_unbound');
  assert.equal(c.peerStatus(P).trust, 'encrypted');
  // ... but the patient side still withholds: its decision was not taken.
  assert.equal(await p.sendChat('nog steeds geheim'), 0);
  await settle(300);
  assert.deepEqual(recvEpochs(mAsC, P), []);
  assert.equal(mChatsFromP.length, 0);
  assert.equal(p.peerStatus(C).trust, 'needs-decision');
  // The two sides show different safety codes (what a spoken comparison reveals).
  assert.notEqual(c.safetyCode(P).digits, p.safetyCode(C).digits);
  net.stop();
});

test('(c) a guest-link holder working with the relay cannot pass for the patient (finding 3)', async () => {
  const L = await links();
  // The guest's own secret, used by the attacker under the patient's id with three different claims.
  for (const [claim, expectTrust, expectCode] of [
    ['patient', 'failed', 'key_mismatch'], // claims the patient label: needs K_patient, has K_guest-1
    ['*', 'failed', 'key_mismatch'], // claims the master secret: needs M
    ['guest-1', 'needs-decision', 'link_role_mismatch'], // its real label, but shown as the patient
  ]) {
    const net = makeNet();
    const c = net.add(C, { selfId: C, ...L.clinician });
    const p = net.add(P, { selfId: P, ...L.patient });
    const gAsP = net.add('gAsP', { selfId: P, role: claim === '*' ? 'clinician' : 'patient', link: { secret: L.guest.link.secret, label: claim === '*' ? null : claim } });
    assert.equal(gAsP.linkClaim, claim);
    // C's messages for P go to the attacker; the attacker's reach C as from P; the real P is cut off.
    net.route = (m) => {
      if (m.node === C && m.to === P) return [['gAsP', C]];
      if (m.node === 'gAsP') return [[C, P]];
      if (m.node === P) return [];
      return [[m.to, m.from]];
    };
    const gChats = chats(gAsP);
    await Promise.all([show(c, P), show(p, C), show(gAsP, C)]);
    await waitFor(() => c.peerStatus(P)?.trust === expectTrust, `${claim}: trust ${expectTrust}`);
    assert.equal(c.peerStatus(P).code, expectCode, claim);
    assert.equal(await c.sendChat('voor de patiënt'), 0, claim);
    await settle(300);
    assert.deepEqual(recvEpochs(gAsP, C), [], `${claim}: no clinician's key`);
    assert.equal(gChats.length, 0, claim);
    net.stop();
  }
});

test('(d) vouch: patient and guest become link-bound through the clinician; a different guest shown to the patient is vouch_mismatch', async () => {
  const L = await links();
  {
    const net = makeNet();
    const c = net.add(C, { selfId: C, ...L.clinician });
    const p = net.add(P, { selfId: P, ...L.patient });
    const g = net.add(G, { selfId: G, ...L.guest });
    await Promise.all([show(c, P), show(c, G), show(p, C), show(p, G), show(g, C), show(g, P)]);
    await waitFor(() => p.peerStatus(G)?.trust === 'link-bound' && g.peerStatus(P)?.trust === 'link-bound', 'vouched both ways');
    assert.equal(p.peerStatus(G).vouchedBy, C);
    assert.equal(p.peerStatus(G).code, 'keyed_vouched');
    assert.equal(p.peerStatus(C).trust, 'link-bound');
    assert.equal(p.summary(), 'link-bound');
    await waitFor(() => recvEpochs(g, P).length > 0 && recvEpochs(p, G).length > 0, 'keys exchanged after the vouch');
    net.stop();
  }
  {
    const net = makeNet();
    const c = net.add(C, { selfId: C, ...L.clinician });
    const p = net.add(P, { selfId: P, ...L.patient });
    const g = net.add(G, { selfId: G, ...L.guest });
    // The relay shows P a different "G" (the attacker's keys); C and G see each other honestly.
    const fakeG = net.add('fakeG', { selfId: G, role: 'guest' });
    net.route = (m) => {
      if (m.node === P && m.to === G) return [['fakeG', P]];
      if (m.node === 'fakeG') return [[P, G]];
      if (m.node === G && m.to === P) return [];
      return [[m.to, m.from]];
    };
    const pStatus = [];
    p.addEventListener('status', (e) => pStatus.push(e.detail));
    await Promise.all([show(c, P), show(c, G), show(p, C), show(p, G), show(g, C), show(g, P), show(fakeG, P)]);
    await waitFor(() => p.peerStatus(G)?.code === 'vouch_mismatch', 'vouch_mismatch');
    assert.equal(p.peerStatus(G).trust, 'failed');
    assert.equal(p.summary(), 'failed');
    assert.ok(!pStatus.some((s) => s.participantId === G && s.trust === 'link-bound'), 'never shown as link-bound');
    assert.equal(await p.sendChat('alleen voor de arts'), 1);
    await settle(300);
    assert.deepEqual(recvEpochs(fakeG, P), [], "the fake guest never got the patient's key");
    net.stop();
  }
});

test('(e) after removed(X), new sender keys never reach X even if the relay keeps X in the roster', async () => {
  const L = await links();
  const net = makeNet();
  const c = net.add(C, { selfId: C, ...L.clinician });
  const p = net.add(P, { selfId: P, ...L.patient });
  const x = net.add(G, { selfId: G, ...L.guest });
  await Promise.all([show(c, P), show(c, G), show(p, C), show(p, G), show(x, C), show(x, P)]);
  await waitFor(() => recvEpochs(x, P).length > 0 && recvEpochs(x, C).length > 0 && recvEpochs(c, P).length > 0, 'all keyed');
  const removedAtP = [];
  p.addEventListener('removed', (e) => removedAtP.push(e.detail.participantId));
  const before = { c: c.latest.epoch, p: p.latest.epoch };
  const xToP = net.log.filter((m) => m.from === G && m.to === P);
  await c.removed(G);
  await waitFor(() => removedAtP.includes(G), "patient page got the sealed 'gone'");
  assert.ok(c.latest.epoch > before.c && p.latest.epoch > before.p, 'both rekeyed');
  // The server keeps X in the roster and keeps relaying X's handshake and chat to everyone.
  await Promise.all([show(p, G), show(c, G)]);
  for (const m of xToP) await p.onRelay(G, m.kind, m.data);
  await x.sendChat('ik ben er nog');
  assert.equal(p.peerStatus(G), null, 'X is gone from the page for good');
  assert.equal(c.peerStatus(G), null);
  await c.sendChat('na de verwijdering');
  await p.sendChat('na de verwijdering');
  await waitFor(() => recvEpochs(c, P).includes(p.latest.epoch) && recvEpochs(p, C).includes(c.latest.epoch), 'the others have the new keys');
  await settle(300);
  assert.ok(Math.max(...recvEpochs(x, P)) < p.latest.epoch, "X never got the patient's new epoch");
  assert.ok(Math.max(...recvEpochs(x, C)) < c.latest.epoch, "X never got the clinician's new epoch");
  net.stop();
});

test('a relay that overtakes participant-joined is held and handled once the id is shown; holding is bounded', async () => {
  const net = makeNet();
  const a = net.add(C, { selfId: C, role: 'clinician' });
  const b = net.add(P, { selfId: P, role: 'patient' });
  const refused = [];
  a.addEventListener('refused', (e) => refused.push(e.detail.participantId));
  await show(b, C); // B's commit reaches A before A is told about B
  await waitFor(() => a.held.has(P), 'held');
  assert.deepEqual(net.log.filter((m) => m.from === C), [], 'A answers nothing while P is not shown');
  await show(a, P);
  await waitFor(() => a.peerStatus(P)?.trust === 'encrypted' && b.peerStatus(C)?.trust === 'encrypted', 'pair completes');
  assert.deepEqual(refused, []);
  // Invented ids beyond the hold bound (4 ids) are refused at once; each id reported once.
  for (let i = 0; i < 6; i++) for (let j = 0; j < 10; j++) await a.onRelay(`ghost${i}`, 'key', '{}');
  assert.equal(a.held.size, 4);
  assert.deepEqual(refused, ['ghost4', 'ghost5']);
  await waitFor(() => refused.length === 6, 'the held ones are refused after the hold', 10_000);
  assert.equal(a.held.size, 0);
  assert.equal(a.counters.refused, 6);
  net.stop();
});

// The relay rewrites the patient's link claim on its way to the clinician, and recomputes the
// commitment to match (both are public values), so only the transcript binding can catch it.
for (const [name, rewritten] of [['stripped to null', null], ['raised to *', '*'], ['relabelled', 'guest-1']]) {
  test(`a link claim ${name} by the relay ends in key_mismatch, with no key accepted`, async () => {
    const L = await links();
    const net = makeNet();
    const c = net.add(C, { selfId: C, ...L.clinician });
    const p = net.add(P, { selfId: P, ...L.patient });
    net.route = (m) => {
      if (m.node !== P || m.to !== C || m.kind !== 'key') return [[m.to, m.from]];
      const msg = JSON.parse(m.data);
      if (msg.t === 'hello') return [[C, P, JSON.stringify({ ...msg, k: rewritten })]];
      return [[C, P]];
    };
    // The commit is rewritten too: the relay computes it from P's hello with the claim changed.
    const honestSend = p.sendRelay;
    await p.start();
    const forged = await commitment(CONSULT, P, { ...decodeHello(encodeHello(p.hello)), k: rewritten });
    p.sendRelay = (to, kind, data) => {
      const msg = kind === 'key' ? JSON.parse(data) : null;
      if (msg && msg.t === 'commit') data = JSON.stringify({ ...msg, c: Buffer.from(forged).toString('base64') });
      honestSend(to, kind, data);
    };
    const cStatus = [];
    c.addEventListener('status', (e) => cStatus.push(e.detail));
    await Promise.all([show(c, P), show(p, C)]);
    await waitFor(() => cStatus.some((s) => s.code === 'key_mismatch') || p.peerStatus(C)?.code === 'key_mismatch', 'key_mismatch');
    assert.ok(!cStatus.some((s) => s.trust === 'link-bound' || s.trust === 'encrypted'), 'never shown as protected');
    assert.notEqual(c.safetyCode(P).digits, p.safetyCode(C).digits);
    await settle(300);
    assert.deepEqual(recvEpochs(c, P), [], "the clinician accepted no key from 'P'");
    assert.deepEqual(recvEpochs(p, C), [], "the patient accepted no key from 'C'");
    net.stop();
  });
}
