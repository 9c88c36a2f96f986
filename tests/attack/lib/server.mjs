// The release binary under attack: `spreekkamer serve` on loopback with a
// known secret and systemd's usual open-file limit (1,024), its output kept
// in memory and in a file, its RSS / descriptors / threads read from /proc.
// Plus the legitimate users every attack must leave alone: a clinician and a
// patient of the project's load generator who must get media.

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomSecret, signHs, claims } from '../../browser/lib/jwt.mjs';

const execFileP = promisify(execFile);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const binPath = process.env.SPREEKKAMER_BIN || path.join(repoRoot, 'target/release/spreekkamer');
export const loadtestPath = process.env.SPREEKKAMER_LOADTEST_BIN || path.join(repoRoot, 'target/release/loadtest');
export const outDir = process.env.ATTACK_OUT || path.join(repoRoot, 'tests/attack/out');

/** The open-file limit the server runs with (systemd's default soft limit). */
export const FD_LIMIT = Number(process.env.ATTACK_SERVER_NOFILE || 1024);
/** Resident memory the server may use under any attack. */
export const RSS_LIMIT_MIB = Number(process.env.ATTACK_RSS_LIMIT_MIB || 200);
/** Extra `serve` flags (e.g. limits the fixes add); none by default. */
const extraArgs = (process.env.ATTACK_SERVE_ARGS || '').split(' ').filter(Boolean);

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** RSS (MiB), open descriptors and threads of `pid`, or null once it is gone. */
export function procStats(pid) {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = Number(status.match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0);
    const threads = Number(status.match(/^Threads:\s+(\d+)/m)?.[1] ?? 0);
    const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
    return { rssMiB: kb / 1024, fds, threads };
  } catch {
    return null;
  }
}

export class Server {
  constructor({ proc, port, secret, dir, name, args }) {
    Object.assign(this, { proc, port, secret, dir, name, args });
    this.pid = proc.pid;
    this.url = `http://127.0.0.1:${port}`;
    this.stdout = '';
    this.stderr = '';
    this.exit = null;
    const log = fs.createWriteStream(path.join(dir, 'server.log'));
    proc.stdout.on('data', (d) => {
      this.stdout += d.toString('utf8');
      log.write(d);
    });
    proc.stderr.on('data', (d) => {
      this.stderr += d.toString('utf8');
      log.write(d);
    });
    this.exited = new Promise((resolve) =>
      proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      }),
    );
    this.peak = { rssMiB: 0, fds: 0, threads: 0 };
  }

  stats() {
    const s = procStats(this.pid);
    if (s) {
      this.peak.rssMiB = Math.max(this.peak.rssMiB, s.rssMiB);
      this.peak.fds = Math.max(this.peak.fds, s.fds);
      this.peak.threads = Math.max(this.peak.threads, s.threads);
    }
    return s;
  }

  /** Sample every `ms` into the peak figures; returns a stop function. */
  watch(ms = 100, onSample = () => {}) {
    const t = setInterval(() => {
      const s = this.stats();
      if (s) onSample(s);
    }, ms);
    return () => clearInterval(t);
  }

  resetPeak() {
    this.peak = { rssMiB: 0, fds: 0, threads: 0 };
  }

  /** GET /healthz from 127.0.0.1 (never an attacker's address): true if 200 within `timeout`. */
  /** On a new connection each time, as a load balancer's probe would (no kept-alive socket). */
  healthy(timeout = 5_000) {
    return new Promise((resolve) => {
      const req = http.get(
        { host: '127.0.0.1', port: this.port, path: '/healthz', agent: false, timeout, headers: { connection: 'close' } },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode === 200));
          res.on('error', () => resolve(false));
        },
      );
      const timer = setTimeout(() => req.destroy(new Error('timeout')), timeout);
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', () => resolve(false));
      req.on('close', () => clearTimeout(timer));
    });
  }

  async metricsText() {
    const r = await fetch(`${this.url}/metrics`, { signal: AbortSignal.timeout(5_000) });
    return r.text();
  }

  token({ consult, role = 'patient', name, ttl = 3600, ...extra }) {
    return signHs(claims({ consult, role, name: name ?? (role === 'clinician' ? 'Dr. Test' : 'Test Patient'), ttl, ...extra }), this.secret);
  }

  async stop() {
    if (this.exit) return this.exit;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 8_000);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

/**
 * Start `spreekkamer serve` with `--jwt-secret` (unless `secret: null`), an
 * open-file limit of FD_LIMIT and `args`; resolves once /healthz answers.
 */
export async function startServer({ name = 'server', args = [], secret = randomSecret(), env = {}, logLevel = 'info' } = {}) {
  if (!fs.existsSync(binPath)) throw new Error(`${binPath} missing: cargo build --release first`);
  fs.mkdirSync(outDir, { recursive: true });
  const dir = fs.mkdtempSync(path.join(outDir, `${name}-`));
  const port = await freePort();
  const full = ['serve', '--listen', `127.0.0.1:${port}`, '--log-level', logLevel];
  if (secret) full.push('--jwt-secret', secret);
  full.push(...extraArgs, ...args);
  // `exec` keeps the pid: the shell only sets the limit.
  const proc = spawn('/bin/sh', ['-c', `ulimit -n ${FD_LIMIT} && exec "$0" "$@"`, binPath, ...full], {
    cwd: dir,
    env: { ...process.env, RUST_BACKTRACE: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const server = new Server({ proc, port, secret, dir, name, args: full });
  const deadline = Date.now() + 30_000;
  while (!(await server.healthy(1_000))) {
    if (server.exit) throw new Error(`server exited early ${JSON.stringify(server.exit)}:\n${server.stderr.slice(-3000)}`);
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`server did not answer /healthz within 30 s:\n${server.stderr.slice(-3000)}`);
    }
    await sleep(100);
  }
  return server;
}

/**
 * A legitimate clinician + patient (the load generator's synthetic WebRTC
 * participants, real RTP both ways): `{ ok, pps, joinFailures, detail }`.
 * `ok` means both joined and media was forwarded to them.
 */
export async function legitimateConsult(server, { seconds = 3, label = 'legit', consults = 1 } = {}) {
  const json = path.join(server.dir, `${label}-${Date.now()}.json`);
  const args = [
    'consults', '-n', String(consults), '--target', `ws://127.0.0.1:${server.port}/ws`, '--duration', String(seconds),
    '--join-rate', '10', '--bitrate', '300000', '--fps', '15', '--quiet', '--json', json,
  ];
  const t0 = Date.now();
  let code = 0;
  let out = '';
  try {
    const r = await execFileP(loadtestPath, args, {
      timeout: 90_000,
      env: { ...process.env, SPREEKKAMER_JWT_SECRET: server.secret, RUST_LOG: 'error' },
    });
    out = r.stdout + r.stderr;
  } catch (e) {
    code = e.code ?? -1;
    out = `${e.stdout || ''}${e.stderr || ''}${e.killed ? ' (killed: timeout)' : ''}`;
  }
  let pps = 0;
  let joinFailures = -1;
  try {
    const rep = JSON.parse(fs.readFileSync(json, 'utf8'));
    pps = rep.points?.[0]?.forwarded_pps ?? 0;
    joinFailures = rep.points?.[0]?.join_failures ?? -1;
  } catch {
    /* no report: the run failed before measuring */
  }
  const ok = code === 0 && pps > 0 && joinFailures === 0;
  return { ok, code, pps: Math.round(pps), joinFailures, secs: (Date.now() - t0) / 1000, detail: ok ? '' : out.trim().split('\n').slice(-4).join(' | ') };
}

/** Wait until `fn()` is truthy or `ms` pass; returns the last value. */
export async function pollFor(fn, ms, every = 250) {
  const deadline = Date.now() + ms;
  let v;
  for (;;) {
    v = await fn();
    if (v || Date.now() > deadline) return v;
    await sleep(every);
  }
}

export const fmt = (s) => (s ? `RSS ${s.rssMiB.toFixed(1)} MiB, ${s.fds} fds, ${s.threads} threads` : 'gone');

/** Node's own fd limit must allow the attacker's thousands of sockets. */
export function checkOwnFdLimit(need) {
  try {
    const lim = fs.readFileSync('/proc/self/limits', 'utf8').match(/Max open files\s+(\d+)/);
    if (lim && Number(lim[1]) < need) {
      throw new Error(`this process may open only ${lim[1]} files; the attack needs ${need} (run via tests/attack/run.sh, which raises it)`);
    }
  } catch (e) {
    if (e.message.includes('attack needs')) throw e;
  }
}

export const cores = os.cpus().length;
