// Finding 2: slow and idle HTTP. 1,100 connections that never send a byte
// (held: reopened when closed) plus one request whose headers trickle in a
// line every 5 s, against a server whose open-file limit is 1,024. /healthz
// must answer and a real consult must get media while it lasts; the slow
// request must be cut off; descriptors must come back down afterwards.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer, legitimateConsult, sleep, fmt, pollFor, checkOwnFdLimit, FD_LIMIT, RSS_LIMIT_MIB } from './lib/server.mjs';
import { record } from './lib/report.mjs';

const IDLE = Number(process.env.ATTACK_IDLE_CONNECTIONS || 1100);
// Where the idle connections come from (space-separated); the legitimate
// users always use 127.0.0.1.
const IDLE_SOURCES = (process.env.ATTACK_IDLE_SOURCES || '127.0.0.2').split(' ').filter(Boolean);
// A server must give up on a request whose headers never finish within this.
const SLOW_LIMIT_S = Number(process.env.ATTACK_SLOW_HEADERS_LIMIT_SECS || 35);
const FD_SLACK = 16;

/** Hold `n` idle connections: each one closed by the server is reopened after a second. */
function holdIdle(port, n) {
  const state = { open: 0, peakOpen: 0, opened: 0, closedByServer: 0, stopped: false, sockets: new Set() };
  const one = (i) => {
    if (state.stopped) return;
    const s = net.connect({ host: '127.0.0.1', port, localAddress: IDLE_SOURCES[i % IDLE_SOURCES.length] });
    state.sockets.add(s);
    let connected = false;
    s.on('connect', () => {
      connected = true;
      state.open++;
      state.opened++;
      state.peakOpen = Math.max(state.peakOpen, state.open);
    });
    s.on('error', () => {});
    s.on('close', () => {
      state.sockets.delete(s);
      if (connected) {
        state.open--;
        if (!state.stopped) state.closedByServer++;
      }
      if (!state.stopped) setTimeout(() => one(i), 1000);
    });
  };
  for (let i = 0; i < n; i++) one(i);
  state.release = () => {
    state.stopped = true;
    for (const s of state.sockets) s.destroy();
  };
  return state;
}

/** Headers one line every 5 s; resolves with the seconds until the server closed it (or null at `giveUpS`). */
function slowHeaders(port, giveUpS) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.3' });
    const t0 = Date.now();
    let timer;
    let lines = 0;
    const finish = (v) => {
      clearInterval(timer);
      clearTimeout(giveUp);
      s.destroy();
      resolve(v);
    };
    const giveUp = setTimeout(() => finish({ closedAfterS: null, lines }), giveUpS * 1000);
    s.on('error', () => {});
    s.on('close', () => finish({ closedAfterS: (Date.now() - t0) / 1000, lines }));
    s.on('connect', () => {
      s.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n');
      timer = setInterval(() => {
        lines++;
        s.write(`X-Slow-${lines}: ${'a'.repeat(20)}\r\n`);
      }, 5000);
    });
  });
}

describe('finding 2: slow headers and 1,100 idle connections', () => {
  let server;
  const r = {};
  before(async () => {
    checkOwnFdLimit(IDLE + 200);
    server = await startServer({ name: 'http-slow-idle' });
    r.baseline = server.stats();
    const slow = slowHeaders(server.port, SLOW_LIMIT_S + 1);
    const idle = holdIdle(server.port, IDLE);
    const stopWatch = server.watch(200);
    await sleep(4000);
    r.openAfter4s = idle.open;
    r.duringStats = server.stats();
    r.healthzDuring = [];
    for (let i = 0; i < 3; i++) {
      r.healthzDuring.push(await server.healthy(5_000));
      await sleep(500);
    }
    r.legitDuring = await legitimateConsult(server, { label: 'during-idle' });
    r.healthzDuring.push(await server.healthy(5_000));
    r.slow = await slow;
    r.idle = { peakOpen: idle.peakOpen, opened: idle.opened, closedByServer: idle.closedByServer };
    idle.release();
    stopWatch();
    r.peak = { ...server.peak };
    r.fdsBack = await pollFor(() => {
      const s = server.stats();
      return s && s.fds <= r.baseline.fds + FD_SLACK ? s : null;
    }, 15_000, 500);
    r.after = server.stats();
    r.healthzAfter = await server.healthy();
    r.legitAfter = await legitimateConsult(server, { label: 'after-idle' });
    record('2 slow + idle HTTP', {
      baseline: fmt(r.baseline),
      during: fmt(r.duringStats),
      peak: `${r.peak.fds} fds, ${r.peak.rssMiB.toFixed(0)} MiB`,
      after: fmt(r.after),
      idleOpenAfter4s: r.openAfter4s,
      idle: r.idle,
      slowHeaders: r.slow,
      healthzDuring: r.healthzDuring,
      legitDuring: r.legitDuring,
      healthzAfter: r.healthzAfter,
      legitAfter: r.legitAfter,
    });
  });
  after(async () => {
    await server?.stop();
  });

  it(`a request whose headers trickle in is closed within ${SLOW_LIMIT_S} s`, () => {
    assert.ok(r.slow.closedAfterS !== null, `still open after ${SLOW_LIMIT_S + 1} s (${r.slow.lines} header lines sent)`);
  });
  it('/healthz answers while the idle connections are held', () => {
    assert.ok(r.healthzDuring.every(Boolean), `healthz results: ${r.healthzDuring}; server ${fmt(r.duringStats)}`);
  });
  it('a clinician and a patient join and get media while the idle connections are held', () => {
    assert.ok(r.legitDuring.ok, JSON.stringify(r.legitDuring));
  });
  it(`descriptors stay under the ${FD_LIMIT} limit with room to spare and memory stays bounded`, () => {
    assert.ok(r.peak.fds < FD_LIMIT - 32, `peak ${r.peak.fds} open descriptors (limit ${FD_LIMIT})`);
    assert.ok(r.peak.rssMiB < RSS_LIMIT_MIB, `peak RSS ${r.peak.rssMiB.toFixed(0)} MiB`);
  });
  it('afterwards descriptors are back to baseline, /healthz answers and a consult gets media', () => {
    assert.ok(r.fdsBack, `fds ${r.after?.fds} vs baseline ${r.baseline.fds} (+${FD_SLACK})`);
    assert.ok(r.healthzAfter, 'healthz after');
    assert.ok(r.legitAfter.ok, JSON.stringify(r.legitAfter));
  });
});
