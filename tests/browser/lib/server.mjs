// The real release binary, started per test file: `spreekkamer serve` on a
// free loopback port, its output captured to a file, stopped with SIGTERM
// (and required to exit 0 quickly: graceful shutdown is part of the product).
// Links come from the real `spreekkamer link` subcommand.

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { randomSecret } from './jwt.mjs';
import { waitUntil } from './wait.mjs';

const execFileP = promisify(execFile);

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const binPath = process.env.SPREEKKAMER_BIN || path.join(repoRoot, 'target/release/spreekkamer');
export const outDir = path.join(repoRoot, 'tests/browser/out');

/** A port the kernel just handed out on 127.0.0.1 (closed again, so racy only in theory). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

let helpCache = null;
/** `serve --help`, to pass optional flags (ephemeral media ports) only if the binary has them. */
async function serveHelp() {
  if (helpCache === null) {
    try {
      const { stdout } = await execFileP(binPath, ['serve', '--help'], { timeout: 10_000 });
      helpCache = stdout;
    } catch {
      helpCache = '';
    }
  }
  return helpCache;
}

export class Server {
  constructor({ port, secret, dir, auditLog, logFile, proc, args }) {
    Object.assign(this, { port, secret, dir, auditLog, logFile, proc, args });
    this.url = `http://127.0.0.1:${port}`;
    this.output = '';
    this.exit = null; // { code, signal } once the process has exited
    // Keep everything the process prints, in memory (for assertions) and in logFile (for people).
    const logStream = fs.createWriteStream(logFile);
    const capture = (chunk) => {
      const s = chunk.toString('utf8');
      this.output += s;
      logStream.write(s);
    };
    proc.stdout.on('data', capture);
    proc.stderr.on('data', capture);
    proc.on('error', (e) => capture(`\n[harness] spawn error: ${e.message}\n`));
    this.exited = new Promise((resolve) => {
      proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
  }

  /** Everything the server wrote to stdout and stderr so far. */
  logs() {
    return this.output;
  }

  /** The audit log file's contents ('' if it was never created). */
  auditText() {
    try {
      return fs.readFileSync(this.auditLog, 'utf8');
    } catch {
      return '';
    }
  }

  /** Parsed audit log lines (each must be one JSON object). */
  auditEvents() {
    return this.auditText()
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l));
  }

  async fetch(p, init) {
    return fetch(this.url + p, { ...init, signal: AbortSignal.timeout(10_000) });
  }

  async healthy() {
    try {
      const r = await this.fetch('/healthz');
      return r.status === 200;
    } catch {
      return false;
    }
  }

  /** /metrics as a Map of `name{labels}` → number (labels as printed, sorted by the server). */
  async metrics() {
    const r = await this.fetch('/metrics');
    if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
    return parseMetrics(await r.text());
  }

  /** Mint a join link with the real `spreekkamer link` subcommand. */
  async link({ consult, role, name, ttl, baseUrl = this.url, secret = this.secret, extraArgs = [] }) {
    return mintLink({ baseUrl, secret, consult, role, name, ttl, extraArgs });
  }

  /**
   * SIGTERM and wait for the exit. Returns { code, signal, ms }. If it does not
   * exit within `timeoutMs` it is killed and the result says so (`killed: true`).
   */
  async stop({ timeoutMs = 8_000 } = {}) {
    if (this.exit) return { ...this.exit, ms: 0, alreadyExited: true };
    const t0 = Date.now();
    this.proc.kill('SIGTERM');
    let timer;
    const res = await Promise.race([
      this.exited,
      new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), timeoutMs);
      }),
    ]);
    clearTimeout(timer); // a pending timer would keep the test process alive
    if (res) return { ...res, ms: Date.now() - t0 };
    this.proc.kill('SIGKILL');
    await this.exited;
    return { ...this.exit, ms: Date.now() - t0, killed: true };
  }

  /** SIGKILL now (a crash: nobody is told) and wait for the exit. */
  async kill() {
    if (!this.exit) this.proc.kill('SIGKILL');
    return this.exited;
  }
}

/**
 * Start `spreekkamer serve` on a free port with a random secret and an audit
 * log in a fresh temp dir (also its working directory, so a test can check
 * that it wrote nothing else). Resolves once /healthz answers 200. `host` is
 * the listen address (default 127.0.0.1; `server.url` is always 127.0.0.1).
 */
export async function startServer({ args = [], env = {}, name = 'server', host = '127.0.0.1', port: wantPort = null, secret: wantSecret = null } = {}) {
  if (!fs.existsSync(binPath)) {
    throw new Error(`${binPath} does not exist: run \`cargo build --release\` first (scripts/test.sh does)`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `spreekkamer-${name}-`));
  // `port` and `secret`: the same server again (a restart: tests/browser/resume.test.mjs).
  const port = wantPort ?? (await freePort());
  const secret = wantSecret ?? randomSecret();
  const auditLog = path.join(dir, 'audit.log');
  const logFile = path.join(dir, 'server.log');
  const help = await serveHelp();
  const optional = [];
  // Ephemeral media ports, so test files never collide with each other or a dev server.
  if (help.includes('--udp-port')) optional.push('--udp-port', '0');
  if (help.includes('--tcp-port')) optional.push('--tcp-port', '0');
  // The token-leak assertions grep this output. (debug would be better, but at
  // debug the rtc crate logs every packet, which swamps a 2-core machine.)
  if (help.includes('--log-level')) optional.push('--log-level', process.env.SPREEKKAMER_TEST_LOG_LEVEL || 'info');
  const extra = (process.env.SPREEKKAMER_TEST_SERVE_ARGS || '').split(' ').filter(Boolean);
  const fullArgs = [
    'serve',
    '--listen',
    // `host` 0.0.0.0 lets browsers in other network namespaces reach it (lib/netem.mjs); the
    // harness itself always talks to 127.0.0.1.
    `${host}:${port}`,
    '--jwt-secret',
    secret,
    '--audit-log',
    auditLog,
    ...optional,
    ...extra,
    ...args,
  ];
  const proc = spawn(binPath, fullArgs, {
    cwd: dir,
    env: {
      ...process.env,
      // Verbose on purpose: the token-leak assertions grep this output.
      RUST_LOG: process.env.RUST_LOG || 'info,signaling=debug,spreekkamer=debug',
      RUST_BACKTRACE: '1',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const server = new Server({ port, secret, dir, auditLog, logFile, proc, args: fullArgs });
  try {
    await waitUntil(
      async () => {
        if (server.exit) throw new Error(`server exited early (${JSON.stringify(server.exit)})`);
        return server.healthy();
      },
      { timeout: 30_000, interval: 100, what: `${server.url}/healthz to answer 200` },
    );
  } catch (e) {
    if (!server.exit) await server.stop();
    e.message += `\n--- server output (${logFile}) ---\n${tail(server.output)}`;
    throw e;
  }
  return server;
}

/** Run `spreekkamer link ...`; the URL is the last non-empty line of stdout. */
export async function mintLink({ baseUrl, secret, consult, role, name, ttl, extraArgs = [] }) {
  const args = ['link', '--base-url', baseUrl, '--jwt-secret', secret, '--consult', consult, '--role', role, '--name', name];
  if (ttl !== undefined) args.push('--ttl', String(ttl));
  args.push(...extraArgs);
  let stdout;
  try {
    ({ stdout } = await execFileP(binPath, args, { timeout: 15_000, env: { ...process.env, RUST_LOG: 'off' } }));
  } catch (e) {
    throw new Error(`spreekkamer link failed (exit ${e.code}): ${e.stderr || e.message}`);
  }
  const lines = stdout.split('\n').map((l) => l.trim()).filter(Boolean);
  const url = lines.at(-1);
  if (!url || !url.startsWith(baseUrl)) throw new Error(`spreekkamer link printed no URL under ${baseUrl}: ${stdout}`);
  return url;
}

/** The JWT in a join link's fragment (`#t=JWT[&k=...]`). */
export function tokenFromLink(link) {
  const frag = new URL(link).hash.replace(/^#/, '');
  const t = new URLSearchParams(frag).get('t');
  if (!t) throw new Error(`no t= in the fragment of ${link}`);
  return t;
}

/** A join link for an arbitrary token (forged, expired, ...), same shape as `spreekkamer link`'s. */
export function linkFor(server, token) {
  return `${server.url}/c#t=${token}`;
}

export function parseMetrics(text) {
  const m = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)/);
    if (match) m.set(match[1], Number(match[2]));
  }
  return m;
}

/** Sum of every series of metric `name` (all label combinations). */
export function metricSum(metrics, name) {
  let sum = 0;
  let found = false;
  for (const [k, v] of metrics) {
    if (k === name || k.startsWith(`${name}{`)) {
      sum += v;
      found = true;
    }
  }
  return found ? sum : undefined;
}

export function tail(s, n = 80) {
  return s.split('\n').slice(-n).join('\n');
}
