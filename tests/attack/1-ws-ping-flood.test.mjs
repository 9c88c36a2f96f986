// Finding 1: one WebSocket that sends ping frames and never reads. Every
// pong has to go somewhere; the server must not keep them all in memory,
// before `join` (no token at all) or after it (a joined participant).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import crypto from 'node:crypto';
import { startServer, legitimateConsult, sleep, fmt, RSS_LIMIT_MIB } from './lib/server.mjs';
import { frame, OP, upgradeRequest, Ws } from './lib/ws.mjs';
import { record } from './lib/report.mjs';

const ATTACK_MS = Number(process.env.ATTACK_PING_FLOOD_SECS || 8) * 1000;
// Safety for the machine: stop flooding once the server is this far past the limit.
const ABORT_MIB = RSS_LIMIT_MIB + 56;

/**
 * Flood pings on one connection (joined first if `token`) for ATTACK_MS
 * (or until a legitimate consult run during the flood is done, if longer).
 */
async function pingFlood(server, { token } = {}) {
  const before = server.stats();
  server.resetPeak();
  let ws;
  if (token) {
    ws = await Ws.connect({ port: server.port, localAddress: '127.0.0.2' });
    ws.send({ type: 'join', v: 1, token });
    await ws.ofType('welcome');
  } else {
    const socket = net.connect({ host: '127.0.0.1', port: server.port, localAddress: '127.0.0.2' });
    socket.on('error', () => {});
    await new Promise((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.write(upgradeRequest('127.0.0.1', server.port));
    await new Promise((resolve) => socket.once('data', resolve)); // the 101, then never read again
    ws = { socket };
  }
  const socket = ws.socket;
  socket.pause(); // never read: the server's pongs pile up wherever it keeps them
  socket.removeAllListeners('data');
  const t0 = Date.now();
  let closedAfterMs = null;
  let aborted = false;
  let pings = 0;
  let weClosed = false;
  socket.once('close', () => {
    if (!weClosed) closedAfterMs = Date.now() - t0;
  });
  const stopWatch = server.watch(50, (s) => {
    if (s.rssMiB > ABORT_MIB) aborted = true;
  });
  const legit = legitimateConsult(server, { label: token ? 'during-joined-flood' : 'during-flood' });
  let legitDone = false;
  legit.then(() => {
    legitDone = true;
  });
  const ping = frame(OP.ping, crypto.randomBytes(125));
  const batch = Buffer.concat(Array(64).fill(ping));
  while (closedAfterMs === null && !aborted && (Date.now() - t0 < ATTACK_MS || !legitDone)) {
    if (!socket.write(batch)) {
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 50);
        socket.once('drain', () => {
          clearTimeout(t);
          resolve();
        });
      });
    } else {
      pings += 64;
      if (pings % 4096 === 0) await new Promise((r) => setImmediate(r));
    }
  }
  const floodMs = Date.now() - t0;
  weClosed = true;
  socket.destroy();
  const during = await legit;
  stopWatch();
  const peak = { ...server.peak };
  // Let the server notice the closed socket and free what it held.
  await sleep(3000);
  const afterStats = server.stats();
  const healthz = await server.healthy();
  return { before, peak, after: afterStats, pings, floodMs, aborted, closedAfterMs, during, healthz };
}

describe('finding 1: WebSocket ping flood without reading', () => {
  let server;
  let preJoin;
  let joined;
  let afterLegit;
  before(async () => {
    server = await startServer({ name: 'ping-flood' });
    preJoin = await pingFlood(server);
    joined = await pingFlood(server, { token: server.token({ consult: 'flood-consult', role: 'clinician' }) });
    afterLegit = await legitimateConsult(server, { label: 'after-flood' });
    for (const [label, r] of [['before join', preJoin], ['after join', joined]]) {
      record(`1 ping flood ${label}`, {
        baseline: fmt(r.before),
        peakRssMiB: Math.round(r.peak.rssMiB),
        peakFds: r.peak.fds,
        after: fmt(r.after),
        pingsSent: r.pings,
        floodSecs: r.floodMs / 1000,
        abortedAtMiB: r.aborted ? ABORT_MIB : null,
        serverClosedAfterMs: r.closedAfterMs,
        legitDuring: r.during,
        healthzAfter: r.healthz,
      });
    }
    record('1 ping flood: legit consult afterwards', afterLegit);
  });
  after(async () => {
    await server?.stop();
  });

  it(`server RSS stays under ${RSS_LIMIT_MIB} MiB while an unjoined socket floods pings`, () => {
    assert.ok(preJoin.peak.rssMiB < RSS_LIMIT_MIB, `peak RSS ${preJoin.peak.rssMiB.toFixed(0)} MiB (baseline ${fmt(preJoin.before)})`);
  });
  it(`server RSS stays under ${RSS_LIMIT_MIB} MiB while a joined participant floods pings`, () => {
    assert.ok(joined.peak.rssMiB < RSS_LIMIT_MIB, `peak RSS ${joined.peak.rssMiB.toFixed(0)} MiB (baseline ${fmt(joined.before)})`);
  });
  it('a clinician and a patient join and get media during each flood', () => {
    assert.ok(preJoin.during.ok, `during the unjoined flood: ${JSON.stringify(preJoin.during)}`);
    assert.ok(joined.during.ok, `during the joined flood: ${JSON.stringify(joined.during)}`);
  });
  it('after the floods /healthz answers, memory is back under the limit and a consult gets media', () => {
    assert.ok(preJoin.healthz && joined.healthz, 'healthz after a flood');
    assert.ok(joined.after && joined.after.rssMiB < RSS_LIMIT_MIB, `after: ${fmt(joined.after)}`);
    assert.ok(afterLegit.ok, `after: ${JSON.stringify(afterLegit)}`);
  });
});
