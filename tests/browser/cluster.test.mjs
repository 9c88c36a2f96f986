// Issue 11, Spreekkamer as a cluster, in real Chromium inside the loopback-only
// test namespace: a real redis-server, ONE edge (`spreekkamer signaling`) and
// two media nodes (`spreekkamer sfu`) announcing 127.0.0.2 and 127.0.0.3
// (lib/cluster.mjs). Each consult is a clinician and a patient the clinician
// admits from the waiting room; "sees the other" means the page decodes the
// other's video on its current peer connection, whose selected ICE pair ends
// at the node Redis places the consult on, and the other's tile shows colour.
//
//  1. two consults land on different nodes; then, ≥ 5 times, the node holding
//     consult A is SIGKILLed: A's pages get the picture back on the other node
//     without an admit click (no waiting-room entry on the clinician's page,
//     the patient never `waiting`), timed from the kill to both colours back;
//     the other consult is untouched (same peer connection, no media-reset,
//     still decoding). The dead node is restarted each round, so the victim
//     alternates.
//  2. SIGTERM drain: /readyz 503, Redis says draining, a new consult goes to
//     the other node, the running one keeps media, and the node exits 0 when
//     its people leave; a second drain with someone still in the call exits 0
//     at --drain-timeout.
//  3. Redis stopped mid-call: the call keeps media, a new join gets the
//     translated `service_unavailable` text promptly, and after Redis is
//     back (same port, nothing restarted) a new consult works.
//
// Figures (failover times) are printed as test diagnostics.

import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { assert, clickLobbyButton, isColour, repoRoot, scenario, sleep, slowdown, tileColour, waitUntil } from './lib/index.mjs';
import { bothSee, framesFrom, KEY_PREFIX, leaveConsult, markPcs, newConsult, probe, startCluster, startConsult, untouched } from './lib/cluster.mjs';

const ROUNDS = Number(process.env.SPREEKKAMER_TEST_FAILOVER_ROUNDS || 5);
// The issue asks for media back within 5 s of the heartbeat expiring (node ttl 3 s here);
// this bound is generous for a busy 2-core machine running four Chromium pages.
const FAILOVER_BOUND_MS = 20_000 * slowdown;

const audit = (edge, event) => edge.auditEvents().filter((e) => e.event === event);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// ---------------------------------------------------------------------------------------------

scenario(`cluster: two consults on two nodes; ${ROUNDS}× kill -9 of the node holding one → it comes back on the other node without re-admission, the other consult untouched`, { timeout: 900_000 }, async (sc) => {
  const cl = await startCluster(sc, { nodes: 2, nodeTtl: '3s' });
  sc.log(`redis ${cl.redis.url}, edge ${cl.edge.url}, nodes ${cl.nodes.map((n) => `${n.id}@${n.ip}`).join(', ')}`);
  const viewport = { width: 640, height: 480 };
  const [ca, pa, cb, pb] = [
    await sc.chromium('A-clinician', { viewport }),
    await sc.chromium('A-patient', { viewport }),
    await sc.chromium('B-clinician', { viewport }),
    await sc.chromium('B-patient', { viewport }),
  ];

  // --- two consults on two nodes -----------------------------------------------------------------
  const A = await startConsult(sc, cl, 'A', ca, pa);
  let nodeA = await cl.waitPlacement(A.consult);
  await bothSee(sc, A, nodeA, 'A before');
  // Give the node's load a chance to reach Redis before B is placed (logged, not asserted: the
  // assertion is where B lands).
  await waitUntil(async () => Number((await cl.nodeEntry(nodeA))?.consults || 0) >= 1, { timeout: 10_000, what: 'x' }).catch(() =>
    sc.log(`note: ${nodeA.id}'s Redis entry did not show consults >= 1 within 10 s`),
  );
  let B = await startConsult(sc, cl, 'B', cb, pb);
  let nodeB = await cl.waitPlacement(B.consult);
  sc.log(`placement: A (${A.consult}) on ${nodeA.id}, B (${B.consult}) on ${nodeB.id}; entries ${JSON.stringify(await cl.nodeEntry(nodeA))} ${JSON.stringify(await cl.nodeEntry(nodeB))}`);
  assert.notEqual(nodeA.id, nodeB.id, `both consults were placed on ${nodeA.id}: the least-loaded node should take the second`);
  await bothSee(sc, B, nodeB, 'B before');
  const admitsBefore = audit(cl.edge, 'admit').length;
  const waitsBefore = audit(cl.edge, 'waiting_room_entered').length;

  // --- kill -9 rounds ------------------------------------------------------------------------------
  const results = [];
  for (let round = 1; round <= ROUNDS; round++) {
    if (round > 1) {
      // A is on the node that survived the last round, alone; the restarted node is empty. A fresh
      // bystander consult must go there, so this round's victim (A's node) is the other node than
      // last round's and the bystander lives on the survivor.
      await leaveConsult(B);
      B = await startConsult(sc, cl, `B${round}`, cb, pb);
      nodeB = await cl.waitPlacement(B.consult);
      assert.notEqual(nodeB.id, nodeA.id, `round ${round}: the new consult B was placed on ${nodeA.id} (A's node, load 1) instead of the empty restarted node`);
      await bothSee(sc, B, nodeB, `round ${round} B`);
    }
    const victim = nodeA;
    const survivor = nodeB;
    const mark = `round-${round}`;
    await markPcs([A.clin, A.pat, B.clin, B.pat], mark);
    const resetsBefore = (await probe(A.clin)).resets;

    const t0 = await cl.killNode(victim);
    const timings = { expired: null, placed: null };
    const violations = [];
    let done = false;
    // Redis: when the dead node's entry is gone, when the placement moves.
    const watchRedis = (async () => {
      while (!done && (timings.expired === null || timings.placed === null)) {
        if (timings.expired === null && !(await cl.nodeEntry(victim).catch(() => ({})))) timings.expired = Date.now() - t0;
        if (timings.placed === null) {
          const at = await cl.placement(A.consult);
          if (at && at !== victim.id) timings.placed = Date.now() - t0;
        }
        await sleep(100);
      }
    })();
    const watchBack = async (p, other, who) => {
      let last;
      await waitUntil(
        async () => {
          last = await probe(p, other());
          if (last.state === 'waiting' || last.state === 'error' || last.state === 'left' || last.lobby > 0) {
            violations.push(`${p.name} at +${Date.now() - t0} ms: state ${last.state}, ${last.lobby} waiting-room entries, error ${JSON.stringify(last.error)}`);
          }
          if (last.mark === mark || last.connectionState !== 'connected' || last.remote !== survivor.ip || !last.tileOnPc) return false;
          last.frames = await framesFrom(p, other());
          if (last.frames < 3) return false;
          last.colour = await tileColour(p, other());
          return isColour(last.colour);
        },
        { timeout: FAILOVER_BOUND_MS + 10_000, interval: 150, what: `round ${round}: ${p.name} sees ${who} in colour again via ${survivor.ip} on a new peer connection`, describe: () => JSON.stringify(last) },
      );
      return Date.now() - t0;
    };
    let back;
    try {
      back = await Promise.all([watchBack(A.clin, () => A.patId, 'the patient'), watchBack(A.pat, () => A.clinId, 'the clinician')]);
    } finally {
      done = true;
      await watchRedis;
    }
    const ms = Math.max(...back);
    const r = { round, victim: victim.id, survivor: survivor.id, ms, clinMs: back[0], patMs: back[1], ...timings };
    results.push(r);
    sc.log(`round ${round}: kill -9 ${victim.id} → node entry gone +${timings.expired} ms, placement on ${survivor.id} +${timings.placed} ms, clinician sees colour +${back[0]} ms, patient +${back[1]} ms`);

    assert.deepEqual(violations, [], `round ${round}: someone was sent to the waiting room or out of the call during the failover`);
    assert.ok(ms <= FAILOVER_BOUND_MS, `round ${round}: both colours back after ${ms} ms, bound ${FAILOVER_BOUND_MS} ms`);
    assert.equal(await cl.placement(A.consult), survivor.id, `round ${round}: Redis places A on the survivor`);
    const pr = await probe(A.clin);
    assert.ok(pr.resets > resetsBefore, `round ${round}: the clinician's page got a media-reset (call.resets ${resetsBefore} → ${pr.resets})`);
    assert.equal(await A.clin.youId(), A.clinId, `round ${round}: the clinician kept the participant id (no re-join)`);
    assert.equal(await A.pat.youId(), A.patId, `round ${round}: the patient kept the participant id (no re-join)`);
    await bothSee(sc, A, survivor, `round ${round} A after`);
    await untouched(sc, B, mark, survivor.ip, `round ${round} B`);
    assert.equal(audit(cl.edge, 'admit').length, admitsBefore + (round - 1), `round ${round}: no admit after the failover (one per new B consult only)`);
    assert.equal(audit(cl.edge, 'waiting_room_entered').length, waitsBefore + (round - 1), `round ${round}: nobody entered a waiting room in the failover`);
    assert.ok(await cl.edge.healthy(), 'the edge is alive');

    await cl.restartNode(victim);
    nodeA = survivor;
    nodeB = victim; // where the next round's fresh B will (must) go
  }

  const times = results.map((r) => r.ms);
  const summary = `failover over ${results.length} kills: median ${median(times)} ms, worst ${Math.max(...times)} ms (kill → both colours back); ` +
    `node entry expired median ${median(results.map((r) => r.expired ?? NaN))} ms, re-placed median ${median(results.map((r) => r.placed ?? NaN))} ms; ` +
    `rounds ${JSON.stringify(results)}`;
  sc.log(summary);
  console.log(`# ${summary}`);
  assert.ok(new Set(results.map((r) => r.victim)).size === 2, `both nodes were killed at least once: ${results.map((r) => r.victim)}`);
});

// ---------------------------------------------------------------------------------------------

scenario('cluster: SIGTERM drains a node — /readyz 503, new consults elsewhere, the running one keeps media, exit 0 when it ends or at --drain-timeout', { timeout: 480_000 }, async (sc) => {
  const cl = await startCluster(sc, { nodes: 2, nodeTtl: '3s', drainTimeout: '120s' });
  const viewport = { width: 640, height: 480 };
  const [cc, pc, cd, pd] = [
    await sc.chromium('C-clinician', { viewport }),
    await sc.chromium('C-patient', { viewport }),
    await sc.chromium('D-clinician', { viewport }),
    await sc.chromium('D-patient', { viewport }),
  ];
  for (const n of cl.nodes) assert.equal(await cl.readyz(n), 200, `${n.id} /readyz before the drain`);

  const C = await startConsult(sc, cl, 'C', cc, pc);
  const x = await cl.waitPlacement(C.consult);
  const y = cl.nodes.find((n) => n !== x);
  await bothSee(sc, C, x, 'C before');
  await markPcs([C.clin, C.pat], 'drain');

  // --- SIGTERM: not ready, no new consults ------------------------------------------------------------
  const tTerm = cl.drainNode(x);
  let ready;
  await waitUntil(async () => (ready = await cl.readyz(x)) === 503, { timeout: 10_000, interval: 100, what: `${x.id} /readyz to answer 503 after SIGTERM`, describe: () => String(ready) });
  sc.log(`drain: ${x.id} /readyz 503 ${Date.now() - tTerm} ms after SIGTERM; /healthz ${await cl.healthz(x)}`);
  let entry;
  await waitUntil(async () => (entry = await cl.nodeEntry(x))?.draining === '1', { timeout: 10_000, interval: 100, what: `Redis ${KEY_PREFIX}node:${x.id} draining=1`, describe: () => JSON.stringify(entry) });
  assert.equal(await cl.readyz(y), 200, `${y.id} /readyz stays 200`);

  const D = await startConsult(sc, cl, 'D', cd, pd);
  const dNode = await cl.waitPlacement(D.consult);
  assert.equal(dNode.id, y.id, `a consult started while ${x.id} drains must go to ${y.id}`);
  await bothSee(sc, D, y, 'D (during the drain)');
  await markPcs([D.clin, D.pat], 'drainD');

  // --- the running consult keeps its media, on the draining node --------------------------------
  const held = Date.now() - tTerm;
  if (held < 5_000) await sleep(5_000 - held);
  assert.equal(x.server.exit, null, `${x.id} exited while consult C still ran: ${JSON.stringify(x.server.exit)}\n${x.server.logs().slice(-2000)}`);
  await untouched(sc, C, 'drain', x.ip, `C ${Date.now() - tTerm} ms into the drain`);
  assert.equal(await cl.readyz(x), 503, `${x.id} still not ready`);

  // --- its people leave: the node exits 0 ---------------------------------------------------------
  const tLeave = Date.now();
  await leaveConsult(C);
  const ex = await Promise.race([x.server.exited, sleep(30_000 * slowdown).then(() => null)]);
  assert.ok(ex, `${x.id} did not exit within ${30 * slowdown} s of its last consult ending (drain-timeout 120 s); last output:\n${x.server.logs().slice(-3000)}`);
  const afterLeave = Date.now() - tLeave;
  sc.log(`drain: ${x.id} exited ${JSON.stringify(ex)} ${afterLeave} ms after the last participant left (${Date.now() - tTerm} ms after SIGTERM)`);
  assert.equal(ex.code, 0, `${x.id} exit after the drain: ${JSON.stringify(ex)}`);
  await untouched(sc, D, 'drainD', y.ip, 'D after the drain');
  await waitUntil(async () => !(await cl.nodeEntry(x)), { timeout: 15_000, what: `${x.id}'s Redis entry gone after its exit` }).catch(async () =>
    sc.log(`note: ${x.id}'s entry still in Redis after exit: ${JSON.stringify(await cl.nodeEntry(x))}`),
  );

  // --- drain with someone still in the call: exit 0 at --drain-timeout -------------------------------
  await cl.restartNode(x, { drainTimeout: '10s' });
  const E = await startConsult(sc, cl, 'E', cc, pc);
  const eNode = await cl.waitPlacement(E.consult);
  assert.equal(eNode.id, x.id, `consult E should go to the empty restarted ${x.id}, not ${eNode.id} (load 1)`);
  await bothSee(sc, E, x, 'E before the second drain');
  await markPcs([E.clin, E.pat], 'drain2');
  const tTerm2 = cl.drainNode(x);
  const ex2 = await Promise.race([x.server.exited, sleep(40_000 * slowdown).then(() => null)]);
  const took = Date.now() - tTerm2;
  assert.ok(ex2, `${x.id} (drain-timeout 10 s, consult E still running) did not exit within ${40 * slowdown} s of SIGTERM`);
  sc.log(`drain-timeout: ${x.id} exited ${JSON.stringify(ex2)} ${took} ms after SIGTERM with consult E still running`);
  assert.equal(ex2.code, 0, `exit at drain-timeout: ${JSON.stringify(ex2)}`);
  assert.ok(took >= 9_000, `${x.id} exited ${took} ms after SIGTERM, before its 10 s drain-timeout, while consult E still ran`);
  // What E's people see afterwards is not specified by the issue (moved to the other node, or
  // ended?): reported, not asserted.
  const tAfter = Date.now();
  await bothSee(sc, E, y, 'E after the drain-timeout')
    .then(() => sc.log(`after the drain-timeout, consult E sees colour again via ${y.ip} ${Date.now() - tAfter} ms after ${x.id} exited`))
    .catch(async (e) => sc.log(`after the drain-timeout, consult E did not come back on ${y.id}: ${e.message.slice(0, 400)}; pages ${JSON.stringify([await probe(E.clin, E.patId), await probe(E.pat, E.clinId)])}`));
});

// ---------------------------------------------------------------------------------------------

scenario('cluster: Redis stopped mid-call — the call keeps media, a new join gets the translated service_unavailable error promptly, and after Redis returns a new consult works without restarting anything', { timeout: 420_000 }, async (sc) => {
  const { DICTIONARIES } = await import(pathToFileURL(path.join(repoRoot, 'web/i18n.js')).href);
  const cl = await startCluster(sc, { nodes: 2, nodeTtl: '3s' });
  const viewport = { width: 640, height: 480 };
  const [c1, p1, c2, p2] = [
    await sc.chromium('F-clinician', { viewport }),
    await sc.chromium('F-patient', { viewport }),
    await sc.chromium('G-clinician', { viewport }),
    await sc.chromium('G-patient', { viewport }),
  ];
  const F = await startConsult(sc, cl, 'F', c1, p1);
  const fNode = await cl.waitPlacement(F.consult);
  await bothSee(sc, F, fNode, 'F before');
  await markPcs([F.clin, F.pat], 'redis');

  // --- Redis goes away --------------------------------------------------------------------------------
  const stop = await cl.redis.stop();
  sc.log(`redis-server SIGTERM: ${JSON.stringify(stop)}`);
  assert.equal(stop.code, 0, `redis-server exit: ${JSON.stringify(stop)}`);
  const tDown = Date.now();

  // A new join, on another consult: a clear, translated error, soon.
  const en = DICTIONARIES.en['error.service_unavailable'];
  const nl = DICTIONARIES.nl['error.service_unavailable'];
  const G0 = newConsult('G');
  await c2.open(await cl.link({ consult: G0, role: 'clinician', name: 'Dr. G' }));
  const tJoin = Date.now();
  await c2.join({ waitFor: null });
  // The edge admits a clinician to the room at once (`welcome`, state in-call) and places the
  // consult's media after that, so the page may show the call screen for a moment before the
  // refusal arrives. What must not happen: media connecting, or no error at all.
  let seen;
  let connected = null;
  await c2.waitFor(
    async () => {
      seen = await probe(c2);
      if (seen.connectionState === 'connected' && !connected) connected = seen;
      return seen.error || (en && seen.notice === en);
    },
    { timeout: 20_000, what: 'G-clinician: an error (or notice) for the join while Redis is down', describe: () => JSON.stringify(seen) },
  );
  sc.log(`join while Redis is down: after ${Date.now() - tJoin} ms the page shows ${JSON.stringify(seen)}`);
  assert.equal(connected, null, `a join while Redis is down must not get media (no node can be chosen); seen: ${JSON.stringify(connected)}`);
  assert.notEqual(seen.state, 'in-call', `after the refusal the page must not stay on the call screen: ${JSON.stringify(seen)}`);
  assert.ok(
    typeof en === 'string' && typeof nl === 'string',
    `web/i18n.js has no 'error.service_unavailable' text (en: ${JSON.stringify(en)}, nl: ${JSON.stringify(nl)}); the page showed ${JSON.stringify(seen)}`,
  );
  const shown = seen.error ? seen.error.text : seen.notice;
  assert.equal(shown, en, `the page must show the translated service_unavailable text; it showed ${JSON.stringify(seen)}`);
  if (seen.error) assert.equal(seen.error.code, 'service_unavailable', `#error[data-code]: ${JSON.stringify(seen)}`);
  assert.ok(await cl.edge.healthy(), 'the edge still answers /healthz while Redis is down (nothing hangs)');

  // The running call keeps its media, 5 s and more after Redis went.
  const held = Date.now() - tDown;
  if (held < 5_000) await sleep(5_000 - held);
  await untouched(sc, F, 'redis', fNode.ip, `F ${Date.now() - tDown} ms after Redis stopped`);

  // --- Redis is back (same port, empty): new consults work again ------------------------------------
  await cl.redis.restart(sc);
  const tUp = Date.now();
  await Promise.all(cl.nodes.map((n) => cl.waitRegistered(n, { timeout: 20_000 })));
  sc.log(`redis back: both nodes registered again ${Date.now() - tUp} ms after it started`);
  // A clinician joining a fresh consult, once, as soon as both nodes are back in the directory;
  // if refused, again every 2 s (as a person pressing "Try again" would) to see when it recovers.
  // The first attempt must work: nothing else changes after this point.
  const attempts = [];
  for (let i = 0; i < 15; i++) {
    await c2.page.goto('about:blank');
    await c2.open(await cl.link({ consult: newConsult('G-try'), role: 'clinician', name: 'Dr. G' }));
    const at = Date.now() - tUp;
    await c2.join({ waitFor: null });
    let s2;
    await c2.waitFor(async () => (s2 = await probe(c2)).state === 'in-call' || s2.error, { timeout: 20_000, what: 'G-clinician: in the call or an error', describe: () => JSON.stringify(s2) });
    attempts.push({ atMs: at, outcome: s2.state === 'in-call' ? 'in-call' : s2.error.code });
    if (s2.state === 'in-call') break;
    await sleep(2_000);
  }
  sc.log(`joins after Redis returned (ms after redis-server started): ${JSON.stringify(attempts)}`);
  assert.equal(attempts[0].outcome, 'in-call', `the first join after Redis returned (both nodes registered again) was refused; attempts: ${JSON.stringify(attempts)}`);
  const G = await startConsult(sc, cl, 'G', c2, p2);
  const gNode = await cl.waitPlacement(G.consult);
  await bothSee(sc, G, gNode, 'G after Redis returned');
  sc.log(`new consult ${Date.now() - tUp} ms after Redis returned: placed on ${gNode.id}, both see colour`);
  await untouched(sc, F, 'redis', fNode.ip, 'F after Redis returned');
});

// ---------------------------------------------------------------------------------------------

scenario("cluster: two edges — a clinician on one and a patient on the other meet in one room; kill -9 of the room's home edge → both back in the call through the other edge, no admit click", { timeout: 300_000 }, async (sc) => {
  const cl = await startCluster(sc, { nodes: 1, edges: 2, nodeTtl: '3s' });
  const node = cl.nodes[0];
  const viewport = { width: 640, height: 480 };
  const clin = await sc.chromium('K-clinician', { viewport });
  const pat = await sc.chromium('K-patient', { viewport });
  const consult = newConsult('K');
  const wsFrom = (i) => cl.front.routed.slice(i).map((r) => r.edge);

  // The clinician's WebSockets go to edge-0, the patient's to edge-1.
  cl.front.wsTo = 0;
  await clin.open(await cl.link({ consult, role: 'clinician', name: 'Dr. K' }));
  let mark = cl.front.routed.length;
  await clin.join({ timeout: 45_000 });
  assert.deepEqual([...new Set(wsFrom(mark))], ['edge-0'], `the clinician's join went through ${JSON.stringify(wsFrom(mark))}`);
  cl.front.wsTo = 1;
  await pat.open(await cl.link({ consult, role: 'patient', name: 'Patiënt K' }));
  mark = cl.front.routed.length;
  await pat.join({ waitFor: 'waiting', timeout: 45_000 });
  assert.deepEqual([...new Set(wsFrom(mark))], ['edge-1'], `the patient's join went through ${JSON.stringify(wsFrom(mark))}`);
  // The clinician on edge-0 sees the patient who joined on edge-1 waiting, and admits.
  const patWaitingId = await pat.youId();
  const admit = `#lobby-list .lobby-entry[data-participant-id="${patWaitingId}"] .admit`;
  await clin.waitFor(() => clin.evaluate((sel) => !!document.querySelector(sel), admit), { what: 'K-clinician: the admit button for the patient who joined on the other edge', timeout: 45_000 });
  await clickLobbyButton(clin, patWaitingId);
  await pat.waitForState('in-call', { timeout: 45_000 });
  const c = { consult, clin, pat, clinId: await clin.youId(), patId: await pat.youId() };
  await bothSee(sc, c, node, 'K across two edges');
  const home = await cl.edgePlacement(consult);
  const homeEdge = cl.edges.find((e) => e.edgeId === home);
  const other = cl.edges.find((e) => e.edgeId !== home);
  assert.ok(homeEdge, `the room's home edge in Redis: ${JSON.stringify(home)}`);
  sc.log(`room of ${consult} lives on ${home}; the other edge passes its participant on`);
  assert.equal(audit(homeEdge, 'admit').length, 1, 'the admission is audited on the home edge');
  assert.equal(audit(other, 'admit').length, 0, 'no room on the other edge');

  // --- the home edge dies ------------------------------------------------------------------------
  const rounds = [];
  const tKill = await cl.killEdge(homeEdge);
  mark = cl.front.routed.length;
  const [clinNew, patNew] = await Promise.all(
    [[clin, c.clinId], [pat, c.patId]].map(async ([p, oldId]) => {
      let id;
      await p.waitFor(
        async () => {
          id = await p.youId();
          return id && id !== oldId && (await p.state()) === 'in-call';
        },
        { timeout: FAILOVER_BOUND_MS, what: `${p.name}: back in the call (new participant id) after ${home} was killed`, describe: () => `id ${id}` },
      );
      rounds.push({ who: p.name, ms: Date.now() - tKill });
      return id;
    }),
  );
  const c2 = { ...c, clinId: clinNew, patId: patNew };
  await bothSee(sc, c2, node, `K after ${home} was killed`);
  const took = Date.now() - tKill;
  sc.log(`edge failover: kill -9 of ${home} → both back in the call ${JSON.stringify(rounds)}, both see colour ${took} ms after the kill (node ttl 3 s); WebSockets since: ${JSON.stringify(wsFrom(mark))}`);
  assert.ok(wsFrom(mark).every((e) => e === other.edgeId), `reconnects went only to the live edge: ${JSON.stringify(wsFrom(mark))}`);
  assert.equal(await cl.edgePlacement(consult), other.edgeId, 'the room moved to the surviving edge');
  assert.equal(audit(other, 'admit').length, 0, 'nobody clicked admit after the edge died');
  assert.equal(audit(other, 'waiting_room_entered').length, 0, 'nobody waited after the edge died');
  assert.equal(audit(other, 'join_resumed').length, 2, 'both resumed on the surviving edge');
  assert.equal((await probe(clin)).lobby, 0, 'the clinician has no one to admit');
});

// ---------------------------------------------------------------------------------------------

scenario("cluster: the preview's connectivity check reaches a media node", { timeout: 180_000 }, async (sc) => {
  const cl = await startCluster(sc, { nodes: 2, nodeTtl: '3s' });
  const p = await sc.chromium('preview', { viewport: { width: 640, height: 480 } });
  await p.open(await cl.link({ consult: newConsult('H'), role: 'patient', name: 'Patiënt H' }));
  let last;
  await p.waitFor(
    async () => {
      last = await p.evaluate(() => {
        const el = document.getElementById('connectivity');
        return el ? { result: el.dataset.result || null, text: el.textContent.trim() } : null;
      });
      return last && last.result && last.result !== 'checking' && last;
    },
    { timeout: 60_000, what: 'preview: #connectivity[data-result] final', describe: () => JSON.stringify(last) },
  );
  sc.log(`preview connectivity check in the cluster: ${JSON.stringify(last)}`);
  assert.equal(last.result, 'udp', `the preview's connectivity check should reach a media node over UDP; the page says ${JSON.stringify(last)}`);
});
