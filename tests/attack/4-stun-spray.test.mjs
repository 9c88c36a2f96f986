// Finding 4: the media address table. A participant sends STUN binding
// requests with its own ICE ufrag (signed with its own ICE password, which
// it knows from its offer) from 16,400 source addresses, on every media
// worker (spoofed on a raw socket by lib/spray.py); a new clinician +
// patient must still get media, while the spray goes on and afterwards.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startServer, legitimateConsult, sleep, fmt, RSS_LIMIT_MIB } from './lib/server.mjs';
import { join } from './lib/ws.mjs';
import { iceOf, answerFor } from './lib/stun.mjs';
import { record } from './lib/report.mjs';

const execFileP = promisify(execFile);

const SOURCES = Number(process.env.ATTACK_STUN_SOURCES || 16400);
const sprayScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'lib/spray.py');

/** One spray round (lib/spray.py): every source sends one signed binding request per target. */
async function sprayRound(targets) {
  const { stdout } = await execFileP('python3', [sprayScript, String(SOURCES), JSON.stringify(targets)], { timeout: 120_000 });
  return JSON.parse(stdout);
}

describe('finding 4: STUN spray with a real ufrag from 16,400 addresses', () => {
  let server;
  const r = {};
  const attackers = [];
  before(async () => {
    server = await startServer({ name: 'stun-spray' });
    r.baseline = server.stats();
    // The attacker joins consults until it holds a ufrag on every media worker (one UDP port each).
    const targets = new Map();
    // Consults go to the least loaded worker, so a port seen twice means all are covered.
    for (let c = 0; c < 16; c++) {
      const { ws } = await join({ port: server.port, token: server.token({ consult: `spray-${c}`, role: 'clinician' }) });
      attackers.push(ws);
      const offer = await ws.ofType('offer');
      // Answer like a browser would, so the server's ICE agent takes our checks as real.
      ws.send({ type: 'answer', sdp: answerFor(offer.sdp, 'spray') });
      const ice = iceOf(offer.sdp);
      const fresh = ice.udp.filter((u) => !targets.has(u.port));
      for (const u of fresh) targets.set(u.port, { ...u, ufrag: ice.ufrag, pwd: ice.pwd });
      if (fresh.length === 0) break;
    }
    r.workersTargeted = targets.size;
    const stopWatch = server.watch(200);
    const t0 = Date.now();
    r.firstRound = await sprayRound([...targets.values()]);
    r.firstRoundSecs = (Date.now() - t0) / 1000;
    // Keep spraying while a new consult joins.
    let spraying = true;
    let rounds = 1;
    const loop = (async () => {
      while (spraying) {
        await sprayRound([...targets.values()]);
        rounds++;
        await sleep(200);
      }
    })();
    r.legitDuring = await legitimateConsult(server, { label: 'during-spray', seconds: 4 });
    spraying = false;
    await loop;
    r.rounds = rounds;
    r.legitAfterSpray = await legitimateConsult(server, { label: 'after-spray' });
    stopWatch();
    r.peak = { ...server.peak };
    for (const ws of attackers) ws.close();
    await sleep(1500);
    r.legitAfterLeave = await legitimateConsult(server, { label: 'after-attacker-left' });
    r.after = server.stats();
    record('4 STUN spray', {
      baseline: fmt(r.baseline),
      after: fmt(r.after),
      peakRssMiB: Math.round(r.peak.rssMiB),
      workersTargeted: r.workersTargeted,
      firstRound: { ...r.firstRound, secs: r.firstRoundSecs },
      rounds: r.rounds,
      legitDuring: r.legitDuring,
      legitAfterSpray: r.legitAfterSpray,
      legitAfterAttackerLeft: r.legitAfterLeave,
    });
  });
  after(async () => {
    for (const ws of attackers) ws.close();
    await server?.stop();
  });

  it('the spray reached the server (the harness itself is sound)', () => {
    assert.ok(r.firstRound.sent >= SOURCES * r.workersTargeted * 0.99, JSON.stringify(r.firstRound));
  });
  it('a new clinician and patient get media while the spray goes on', () => {
    assert.ok(r.legitDuring.ok, JSON.stringify(r.legitDuring));
  });
  it('a new clinician and patient get media after the spray, with the attacker still connected', () => {
    assert.ok(r.legitAfterSpray.ok, JSON.stringify(r.legitAfterSpray));
  });
  it('memory stays bounded and a consult gets media once the attacker has left', () => {
    assert.ok(r.peak.rssMiB < RSS_LIMIT_MIB, `peak RSS ${r.peak.rssMiB.toFixed(0)} MiB`);
    assert.ok(r.legitAfterLeave.ok, JSON.stringify(r.legitAfterLeave));
  });
});
