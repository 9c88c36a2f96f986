// The soak (issue 10): consults join and leave through the load generator
// while hostile traffic keeps coming, for SOAK_SECS; the server's RSS, open
// descriptors and threads are sampled every SOAK_SAMPLE_SECS and must be
// flat at the end. Run through loadtest/soak.sh (which gives it a
// loopback-only network namespace).
//
// Flat means, over the load period: the median of the last quarter's
// samples is within 10 % + 8 MiB (RSS) / + 2 (threads) of the second
// quarter's median; after the load stops and the consults' grace period has
// passed, descriptors are back to the baseline + 8, WebSocket connections
// and consults back to 0. And at least 90 % of the load generator's runs got
// media.

import crypto from 'node:crypto';
import { execFile } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startServer, legitimateConsult, sleep, procStats } from './lib/server.mjs';
import { Ws, join, frame, OP } from './lib/ws.mjs';
import { iceOf } from './lib/stun.mjs';

const execFileP = promisify(execFile);
const sprayScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'lib/spray.py');

const SOAK_SECS = Number(process.env.SOAK_SECS || 1800);
const SAMPLE_SECS = Number(process.env.SOAK_SAMPLE_SECS || 5);
const LOAD_LOOPS = Number(process.env.SOAK_LOAD_LOOPS || 2);
const RUN_SECS = Number(process.env.SOAK_RUN_SECS || 15);
const GRACE_SECS = 3;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

function metric(text, name) {
  const m = text.match(new RegExp(`^spreekkamer_${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm'));
  return m ? Number(m[1]) : null;
}

// ---- hostile traffic: one short burst of each kind per round -------------

async function junkJoins(port, n = 40) {
  await Promise.all(
    Array.from({ length: n }, async () => {
      try {
        const ws = await Ws.connect({ port, localAddress: '127.0.0.2', timeout: 3000 });
        ws.send({ type: 'join', v: 1, token: `eyJhbGciOiJIUzI1NiJ9.${crypto.randomBytes(16).toString('base64url')}.x` });
        await Promise.race([ws.closed, sleep(2000)]);
        ws.close();
      } catch {
        /* refused: fine */
      }
    }),
  );
}

async function idleAndSlow(port, n = 150, holdMs = 4000) {
  const socks = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.3' });
    s.on('error', () => {});
    socks.push(s);
  }
  const slow = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.3' });
  slow.on('error', () => {});
  slow.on('connect', () => slow.write('GET /healthz HTTP/1.1\r\nHost: x\r\n'));
  await sleep(holdMs);
  for (const s of [...socks, slow]) s.destroy();
}

async function pingFlood(port, ms = 800, maxBytes = 4 << 20) {
  try {
    const ws = await Ws.connect({ port, localAddress: '127.0.0.2', timeout: 3000 });
    ws.socket.pause();
    const batch = Buffer.concat(Array(64).fill(frame(OP.ping, crypto.randomBytes(125))));
    const t0 = Date.now();
    let sent = 0;
    while (Date.now() - t0 < ms && sent < maxBytes && !ws.isClosed) {
      if (ws.socket.write(batch)) sent += batch.length;
      else await sleep(10);
    }
    ws.close();
  } catch {
    /* refused: fine */
  }
}

async function mediaJunk(server, consult, sources = 1000) {
  let ws;
  try {
    ({ ws } = await join({ port: server.port, token: server.token({ consult, role: 'clinician' }), localAddress: '127.0.0.2' }));
    const ice = iceOf((await ws.ofType('offer')).sdp);
    const udp = ice.udp[0];
    const tcp = ice.tcp[0];
    const tcpSocks = [];
    if (tcp) {
      for (let i = 0; i < 16; i++) {
        const s = net.connect({ host: tcp.ip, port: tcp.port, localAddress: '127.0.0.2' });
        s.on('error', () => {});
        tcpSocks.push(s);
      }
    }
    // Signed STUN checks with the attacker's ufrag from `sources` spoofed addresses.
    await execFileP('python3', [sprayScript, String(sources), JSON.stringify([{ ...udp, ufrag: ice.ufrag, pwd: ice.pwd }])], { timeout: 60_000 });
    // A few revocations of made-up ids from the same clinician.
    for (let i = 0; i < 20; i++) ws.send({ type: 'revoke-invite', jti: crypto.randomBytes(8).toString('hex') });
    await sleep(500);
    for (const s of tcpSocks) s.destroy();
  } catch {
    /* refused: fine */
  } finally {
    ws?.close();
  }
}

// ---- the soak -----------------------------------------------------------

async function main() {
  const server = await startServer({ name: 'soak', args: ['--consult-grace', `${GRACE_SECS}s`] });
  const samples = [];
  const t0 = Date.now();
  const sample = async (phase) => {
    const s = procStats(server.pid);
    let ws = null;
    let consults = null;
    try {
      const text = await server.metricsText();
      ws = metric(text, 'ws_connections');
      consults = metric(text, 'consults');
    } catch {
      /* unanswered: recorded as null */
    }
    const row = { t: Math.round((Date.now() - t0) / 1000), phase, rssMiB: s?.rssMiB ?? NaN, fds: s?.fds ?? NaN, threads: s?.threads ?? NaN, ws, consults };
    samples.push(row);
    console.log(
      `${String(row.t).padStart(6)} ${phase.padEnd(8)} ${row.rssMiB.toFixed(1).padStart(8)} ${String(row.fds).padStart(5)} ${String(row.threads).padStart(7)} ${String(row.ws).padStart(4)} ${String(row.consults).padStart(8)}`,
    );
    return row;
  };
  console.log(`soak: ${SOAK_SECS} s of load (${LOAD_LOOPS} loops of 2-consult load-generator runs of ${RUN_SECS} s) plus hostile traffic; sample every ${SAMPLE_SECS} s`);
  console.log(`${'t s'.padStart(6)} ${'phase'.padEnd(8)} ${'RSS MiB'.padStart(8)} ${'fds'.padStart(5)} ${'threads'.padStart(7)} ${'ws'.padStart(4)} ${'consults'.padStart(8)}`);
  await sleep(1000);
  const baseline = await sample('baseline');

  const end = Date.now() + SOAK_SECS * 1000;
  const runs = [];
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      await sleep(SAMPLE_SECS * 1000);
      if (!stop) await sample('load');
    }
  })();
  const loads = Array.from({ length: LOAD_LOOPS }, async (_, k) => {
    await sleep(k * 4000);
    while (Date.now() + RUN_SECS * 1000 < end) {
      runs.push(await legitimateConsult(server, { seconds: RUN_SECS, label: `soak-${k}`, consults: 2 }));
    }
  });
  const hostile = (async () => {
    let round = 0;
    while (Date.now() < end) {
      round++;
      await junkJoins(server.port);
      await idleAndSlow(server.port);
      await pingFlood(server.port);
      await mediaJunk(server, `soak-hostile-${round % 4}`);
      await sleep(2000);
    }
    return round;
  })();
  const [hostileRounds] = await Promise.all([hostile, ...loads]);
  stop = true;
  await sampler;

  // Everyone has left; give the consults their grace period, then look.
  await sleep((GRACE_SECS + 5) * 1000);
  const after = await sample('after');
  await server.stop();

  const load = samples.filter((s) => s.phase === 'load');
  const q = Math.floor(load.length / 4);
  const q2 = load.slice(q, 2 * q);
  const q4 = load.slice(3 * q);
  const rss2 = median(q2.map((s) => s.rssMiB));
  const rss4 = median(q4.map((s) => s.rssMiB));
  const thr2 = median(q2.map((s) => s.threads));
  const thr4 = median(q4.map((s) => s.threads));
  const okRuns = runs.filter((r) => r.ok).length;
  const checks = [
    [`enough samples (${load.length} ≥ 8)`, load.length >= 8],
    [`RSS flat: last-quarter median ${rss4.toFixed(1)} MiB ≤ second-quarter ${rss2.toFixed(1)} MiB × 1.1 + 8`, rss4 <= rss2 * 1.1 + 8],
    [`threads flat: last-quarter median ${thr4} ≤ second-quarter ${thr2} + 2`, thr4 <= thr2 + 2],
    [`descriptors back: ${after.fds} ≤ baseline ${baseline.fds} + 8`, after.fds <= baseline.fds + 8],
    [`threads back: ${after.threads} ≤ baseline ${baseline.threads} + 2`, after.threads <= baseline.threads + 2],
    [`WebSocket connections back to 0 (${after.ws})`, after.ws === 0 || after.ws === null],
    [`consults back to 0 (${after.consults})`, after.consults === 0 || after.consults === null],
    [`load-generator runs with media: ${okRuns}/${runs.length} ≥ 90 %`, runs.length > 0 && okRuns >= 0.9 * runs.length],
  ];
  console.log(`\nsoak: ${Math.round((Date.now() - t0) / 1000)} s, ${runs.length} load-generator runs, ${hostileRounds} hostile rounds`);
  console.log(`peak RSS ${Math.max(...samples.map((s) => s.rssMiB)).toFixed(1)} MiB, peak fds ${Math.max(...samples.map((s) => s.fds))}, peak threads ${Math.max(...samples.map((s) => s.threads))}`);
  for (const r of runs.filter((x) => !x.ok)) console.log(`  run without media: ${JSON.stringify(r)}`);
  let failed = 0;
  for (const [what, ok] of checks) {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
    if (!ok) failed++;
  }
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(`soak: ${e.stack || e}`);
  process.exit(1);
});
