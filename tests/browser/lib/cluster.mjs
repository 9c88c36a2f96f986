// A Spreekkamer cluster on loopback for one browser test (issue 11): a real
// `redis-server`, media nodes (`spreekkamer sfu`, each on its own 127.0.0.x
// address) and an edge (`spreekkamer signaling`), all from the real release
// binary. Every process is a `Server` (lib/server.mjs) in `sc.servers`, so a
// failure saves each one's output under tests/browser/out/ (an index file
// says which serverN is which, plus a dump of the Redis keys); cleanup stops
// nodes first (their consults have ended once the browsers are closed), then
// edges, then Redis, and SIGKILLs whatever is left — also when the test
// process itself dies.
//
//   const cl = await startCluster(sc, { nodes: 2 });
//   cl.nodes[0].ip, cl.edge.url, await cl.placement(consult), await cl.killNode(node),
//   await cl.restartNode(node), await cl.redis.stop(), await cl.redis.restart()

import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';
import { clickLobbyButton, isColour, tileColour } from './checks.mjs';
import { randomSecret } from './jwt.mjs';
import { binPath, mintLink, Server } from './server.mjs';
import { waitUntil } from './wait.mjs';

const execFileP = promisify(execFile);

export const REDIS_SERVER = process.env.REDIS_SERVER || '/usr/bin/redis-server';
export const REDIS_CLI = process.env.REDIS_CLI || '/usr/bin/redis-cli';
export const KEY_PREFIX = 'spreekkamer:';
export const EDGE_PREFIX = 'spreekkamer:edges:';

// Every child this module started, for the last-resort kill when the test process exits.
const children = new Set();
let exitHookInstalled = false;
function track(proc) {
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    const killAll = () => {
      for (const p of children) {
        try {
          p.kill('SIGKILL');
        } catch {
          /* already gone */
        }
      }
    };
    process.on('exit', killAll);
    for (const sig of ['SIGINT', 'SIGTERM']) {
      process.once(sig, () => {
        killAll();
        process.exit(sig === 'SIGINT' ? 130 : 143);
      });
    }
  }
}

/** A TCP port free on `host` right now. */
export function freeTcpPort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A UDP port free on `host` right now. */
export function freeUdpPort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket('udp4');
    s.on('error', reject);
    s.bind(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function spawnTracked(cmd, args, { cwd, env = {} } = {}) {
  const proc = spawn(cmd, args, {
    cwd,
    env: { ...process.env, RUST_BACKTRACE: '1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  track(proc);
  return proc;
}

async function httpStatus(url, timeoutMs = 5_000) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await r.arrayBuffer().catch(() => {});
    return r.status;
  } catch {
    return null;
  }
}

let helpCache = new Map();
/** `spreekkamer SUB --help` ('' if it fails), to give a clear error when main lacks a subcommand or flag. */
export async function subcommandHelp(sub) {
  if (!helpCache.has(sub)) {
    let text = '';
    try {
      const { stdout, stderr } = await execFileP(binPath, [sub, '--help'], { timeout: 10_000 });
      text = stdout + stderr;
    } catch (e) {
      text = `${e.stdout || ''}${e.stderr || ''}`;
    }
    helpCache.set(sub, text);
  }
  return helpCache.get(sub);
}

/** Fails with a readable message when the binary has no working `sub` (or lacks one of `flags`). */
export async function requireSubcommand(sub, flags) {
  const help = await subcommandHelp(sub);
  const missing = flags.filter((f) => !help.includes(f));
  if (missing.length) {
    throw new Error(
      `${binPath} \`${sub}\` lacks ${missing.join(', ')} (issue 11 not built into this binary?); \`${sub} --help\` said:\n${help.slice(0, 1500)}`,
    );
  }
}

/** A Redis on 127.0.0.1:port with no persistence, in its own temp dir. */
export class Redis {
  constructor({ port, dir }) {
    this.port = port;
    this.dir = dir;
    this.url = `redis://127.0.0.1:${port}`;
    this.server = null;
    this.generation = 0;
  }

  async start(sc) {
    this.generation += 1;
    const logFile = path.join(this.dir, `redis-${this.generation}.log`);
    const args = ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir, '--daemonize', 'no'];
    const proc = spawnTracked(REDIS_SERVER, args, { cwd: this.dir });
    const s = new Server({ port: this.port, secret: '\u0000no-secret', dir: this.dir, auditLog: path.join(this.dir, 'none'), logFile, proc, args: [REDIS_SERVER, ...args] });
    s.url = this.url;
    s.role = `redis#${this.generation}`;
    sc.servers.push(s);
    sc.shutdownChecked.add(s); // stopped by the cluster's cleanup, not scenario's
    this.server = s;
    await waitUntil(
      async () => {
        if (s.exit) throw new Error(`redis-server exited at start (${JSON.stringify(s.exit)}): ${s.logs().slice(-2000)}`);
        return (await this.cli(['PING']).catch(() => '')) === 'PONG';
      },
      { timeout: 20_000, interval: 100, what: `redis-server on ${this.port} to answer PING` },
    );
    return this;
  }

  /** `redis-cli -p PORT ...args`; resolves to trimmed stdout, rejects on error or after 5 s. */
  async cli(args) {
    const { stdout } = await execFileP(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(this.port), '--raw', ...args], { timeout: 5_000 });
    return stdout.trim();
  }

  async get(key) {
    const { stdout } = await execFileP(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(this.port), '--raw', 'GET', key], { timeout: 5_000 });
    const v = stdout.replace(/\n$/, '');
    return v === '' ? null : v;
  }

  async hgetall(key) {
    const { stdout } = await execFileP(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(this.port), '--raw', 'HGETALL', key], { timeout: 5_000 });
    const lines = stdout.split('\n');
    if (lines.at(-1) === '') lines.pop();
    const out = {};
    for (let i = 0; i + 1 < lines.length; i += 2) out[lines[i]] = lines[i + 1];
    return out;
  }

  /** Every key and its value (strings, hashes, sets) — for evidence. */
  async dump() {
    const { stdout } = await execFileP(REDIS_CLI, ['-h', '127.0.0.1', '-p', String(this.port), '--raw', '--scan'], { timeout: 5_000 });
    const out = {};
    for (const key of stdout.split('\n').filter(Boolean).sort()) {
      const type = await this.cli(['TYPE', key]);
      const ttl = await this.cli(['PTTL', key]);
      let value;
      if (type === 'string') value = await this.get(key);
      else if (type === 'hash') value = await this.hgetall(key);
      else value = await this.cli([type === 'set' ? 'SMEMBERS' : 'TYPE', key]);
      out[key] = { type, pttl: Number(ttl), value };
    }
    return out;
  }

  /** SIGTERM redis-server; resolves to how it ended. */
  async stop() {
    return this.server.stop({ timeoutMs: 10_000 });
  }

  /** A fresh redis-server on the same port (empty: nothing was persisted). */
  async restart(sc) {
    if (this.server && !this.server.exit) await this.stop();
    return this.start(sc);
  }
}

const nodeName = (i) => `node-${String.fromCharCode(97 + i)}`;

/**
 * Start a cluster: Redis, `nodes` media nodes on 127.0.0.2, 127.0.0.3, ...
 * and one edge on 127.0.0.1. Options: `nodeArgs` (extra `sfu` flags, also per
 * node via `perNodeArgs[i]`), `edgeArgs`, `nodeTtl` ('3s'), `drainTimeout`.
 */
export async function startCluster(sc, { nodes = 2, edges = 1, nodeArgs = [], perNodeArgs = [], edgeArgs = [], nodeTtl = '3s', drainTimeout = '30s' } = {}) {
  // Fail early, with --help in the message, if this binary has no cluster subcommands yet.
  await requireSubcommand('sfu', ['--redis', '--node-id', '--announce-ip', '--link-listen', '--link-secret-file', '--drain-timeout']);
  await requireSubcommand('signaling', ['--redis', '--link-secret-file', '--listen', '--jwt-secret']);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-cluster-'));
  const cl = new Cluster(sc, dir, { nodeTtl, drainTimeout, nodeArgs, edgeArgs });
  // Cleanup is registered before anything starts, so a failure half-way still stops everything.
  sc.defer(() => cl.shutdown());
  const origSave = sc.saveArtifacts.bind(sc);
  sc.saveArtifacts = async (reason) => {
    const out = await origSave(reason);
    await cl.saveEvidence(out).catch((e) => fs.writeFileSync(path.join(out, 'cluster-evidence-error.txt'), `${e.stack}\n`));
    return out;
  };
  cl.redis = new Redis({ port: await freeTcpPort(), dir });
  await cl.redis.start(sc);
  for (let i = 0; i < nodes; i++) {
    await cl.addNode({ id: nodeName(i), ip: `127.0.0.${2 + i}`, args: perNodeArgs[i] || [] });
  }
  cl.edge = await cl.startEdge();
  for (let i = 1; i < edges; i++) await cl.startEdge();
  if (edges > 1) cl.front = await cl.startFront();
  await Promise.all(cl.nodes.map((n) => cl.waitRegistered(n)));
  await Promise.all(cl.edges.map((e) => cl.waitEdgeRegistered(e)));
  return cl;
}

export class Cluster {
  constructor(sc, dir, { nodeTtl, drainTimeout, nodeArgs, edgeArgs }) {
    Object.assign(this, { sc, dir, nodeTtl, drainTimeout, nodeArgs, edgeArgs });
    this.secret = randomSecret(); // the edge's JWT secret
    this.linkSecretFile = path.join(dir, 'link-secret');
    fs.writeFileSync(this.linkSecretFile, crypto.randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    this.nodes = [];
    this.edges = [];
    this.log = [];
  }

  note(msg) {
    this.log.push(`[${new Date().toISOString()}] ${msg}`);
  }

  /** A node description (id, ip, ports); `startNode` runs it. */
  async addNode({ id, ip, args = [] }) {
    const node = {
      id,
      ip,
      args,
      udpPort: await freeUdpPort(ip),
      tcpPort: await freeTcpPort(ip),
      linkPort: await freeTcpPort(ip),
      httpPort: await freeTcpPort(ip),
      server: null,
      starts: 0,
    };
    node.url = `http://${ip}:${node.httpPort}`;
    this.nodes.push(node);
    await this.startNode(node);
    return node;
  }

  /**
   * (Re)start `node` with the same id, address and ports; resolves once its
   * /healthz answers 200. `drainTimeout` overrides the cluster's for this start.
   */
  async startNode(node, { drainTimeout = null } = {}) {
    node.starts += 1;
    node.drainTimeout = drainTimeout || this.drainTimeout;
    const ndir = path.join(this.dir, `${node.id}-${node.starts}`);
    fs.mkdirSync(ndir);
    const args = [
      'sfu',
      '--redis', this.redis.url,
      '--node-id', node.id,
      '--announce-ip', node.ip,
      '--bind-ip', node.ip,
      '--udp-port', String(node.udpPort),
      '--tcp-port', String(node.tcpPort),
      '--link-listen', `${node.ip}:${node.linkPort}`,
      '--link-secret-file', this.linkSecretFile,
      '--listen', `${node.ip}:${node.httpPort}`,
      '--node-ttl', this.nodeTtl,
      '--drain-timeout', node.drainTimeout,
      '--workers', '1',
      '--log-level', process.env.SPREEKKAMER_TEST_LOG_LEVEL || 'info',
      ...this.nodeArgs,
      ...node.args,
    ];
    const proc = spawnTracked(binPath, args, { cwd: ndir, env: { RUST_LOG: process.env.RUST_LOG || 'info' } });
    const s = new Server({ port: node.httpPort, secret: '\u0000no-secret', dir: ndir, auditLog: path.join(ndir, 'audit.log'), logFile: path.join(ndir, 'node.log'), proc, args: [binPath, ...args] });
    s.url = node.url;
    s.role = `${node.id}#${node.starts} (${node.ip})`;
    this.sc.servers.push(s);
    this.sc.shutdownChecked.add(s);
    node.server = s;
    node.startedAt = Date.now();
    this.note(`start ${s.role} pid ${proc.pid}`);
    await waitUntil(
      async () => {
        if (s.exit) throw new Error(`media node ${node.id} exited at start (${JSON.stringify(s.exit)}):\n${s.logs().slice(-3000)}`);
        return (await httpStatus(`${node.url}/healthz`)) === 200;
      },
      { timeout: 30_000, interval: 150, what: `${node.url}/healthz (media node ${node.id}) to answer 200` },
    );
    return node;
  }

  /** The node's Redis entry (hash) or null. */
  async nodeEntry(node) {
    const h = await this.redis.hgetall(`${KEY_PREFIX}node:${node.id}`);
    return Object.keys(h).length ? h : null;
  }

  /** Wait until `node` is registered in Redis and says it is not draining. */
  async waitRegistered(node, { timeout = 20_000 } = {}) {
    let last;
    await waitUntil(
      async () => {
        last = await this.nodeEntry(node).catch((e) => ({ error: e.message }));
        return last && !last.error && last.announce_ip === node.ip && last.draining === '0';
      },
      { timeout, interval: 150, what: `media node ${node.id} registered in Redis (announce_ip ${node.ip}, draining 0)`, describe: () => JSON.stringify(last) },
    );
    return last;
  }

  async startEdge({ args = [] } = {}) {
    const port = await freeTcpPort();
    const peerPort = await freeTcpPort();
    const edgeId = `edge-${this.edges.length}`;
    const edir = path.join(this.dir, edgeId);
    fs.mkdirSync(edir);
    const auditLog = path.join(edir, 'audit.log');
    const fullArgs = [
      'signaling',
      '--redis', this.redis.url,
      '--link-secret-file', this.linkSecretFile,
      '--listen', `127.0.0.1:${port}`,
      '--edge-id', edgeId,
      '--peer-listen', `127.0.0.1:${peerPort}`,
      '--node-ttl', this.nodeTtl,
      '--jwt-secret', this.secret,
      '--audit-log', auditLog,
      '--log-level', process.env.SPREEKKAMER_TEST_LOG_LEVEL || 'info',
      ...this.edgeArgs,
      ...args,
    ];
    const proc = spawnTracked(binPath, fullArgs, { cwd: edir, env: { RUST_LOG: process.env.RUST_LOG || 'info,signaling=debug,spreekkamer=debug' } });
    const s = new Server({ port, secret: this.secret, dir: edir, auditLog, logFile: path.join(edir, 'edge.log'), proc, args: [binPath, ...fullArgs] });
    s.role = edgeId;
    s.edgeId = edgeId;
    this.sc.servers.push(s);
    this.sc.shutdownChecked.add(s);
    this.edges.push(s);
    this.note(`start ${s.role} pid ${proc.pid} on ${s.url}`);
    await waitUntil(
      async () => {
        if (s.exit) throw new Error(`edge exited at start (${JSON.stringify(s.exit)}):\n${s.logs().slice(-3000)}`);
        return s.healthy();
      },
      { timeout: 30_000, interval: 150, what: `${s.url}/healthz (edge) to answer 200` },
    );
    return s;
  }

  /**
   * The one address browsers use when there are several edges, as a
   * Kubernetes Service would be: a TCP proxy on 127.0.0.1 that sends each
   * connection to a live edge. WebSocket upgrades (`GET /ws`) go to edge
   * `front.wsTo` first (the test steers who lands where); everything else,
   * and any connection whose edge refuses, goes to the next live edge.
   * `front.routed` lists where each WebSocket went.
   */
  async startFront() {
    const port = await freeTcpPort();
    const front = { port, url: `http://127.0.0.1:${port}`, wsTo: 0, routed: [], sockets: new Set() };
    const edges = this.edges;
    const server = net.createServer((client) => {
      front.sockets.add(client);
      client.on('close', () => front.sockets.delete(client));
      client.on('error', () => client.destroy());
      client.once('data', (first) => {
        client.pause();
        const isWs = /^GET \/ws[ ?]/.test(first.toString('latin1', 0, Math.min(first.length, 64)));
        const start = isWs ? front.wsTo : 0;
        const order = edges.map((_, i) => (start + i) % edges.length);
        const attempt = (k) => {
          if (k >= order.length || client.destroyed) return client.destroy();
          const e = edges[order[k]];
          if (e.exit) return attempt(k + 1);
          const up = net.connect(e.port, '127.0.0.1');
          let connected = false;
          up.once('connect', () => {
            connected = true;
            if (isWs) front.routed.push({ edge: e.edgeId, at: Date.now() });
            up.write(first);
            client.pipe(up);
            up.pipe(client);
            client.resume();
          });
          up.on('error', () => {
            if (!connected) attempt(k + 1);
            else client.destroy();
          });
          up.on('close', () => client.destroy());
          client.on('close', () => up.destroy());
        };
        attempt(0);
      });
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', resolve);
    });
    front.close = () =>
      new Promise((resolve) => {
        for (const s of front.sockets) s.destroy();
        server.close(() => resolve());
      });
    this.sc.defer(() => front.close());
    this.note(`front proxy on ${front.url} for ${edges.map((e) => e.edgeId).join(', ')}`);
    return front;
  }

  /** The edge entry in Redis (hash) or null. */
  async edgeEntry(edge) {
    const h = await this.redis.hgetall(`${EDGE_PREFIX}node:${edge.edgeId}`);
    return Object.keys(h).length ? h : null;
  }

  async waitEdgeRegistered(edge, { timeout = 20_000 } = {}) {
    let last;
    await waitUntil(
      async () => {
        last = await this.edgeEntry(edge).catch((e) => ({ error: e.message }));
        return last && !last.error && last.draining === '0';
      },
      { timeout, interval: 150, what: `edge ${edge.edgeId} registered in Redis`, describe: () => JSON.stringify(last) },
    );
  }

  /** The id of the edge that holds `consult`'s room (null if none or Redis is down). */
  async edgePlacement(consult) {
    return this.redis.get(`${EDGE_PREFIX}placement:${consult}`).catch(() => null);
  }

  /** SIGKILL an edge (a crash); returns the kill time. */
  async killEdge(edge) {
    this.note(`SIGKILL ${edge.role}`);
    const t = Date.now();
    await edge.kill();
    return t;
  }

  /** A join link minted by the real `spreekkamer link`, for the front proxy when there is one. */
  link({ consult, role, name, extraArgs = [] }) {
    const baseUrl = this.front ? this.front.url : this.edge.url;
    return mintLink({ baseUrl, secret: this.secret, consult, role, name, extraArgs });
  }

  /** The node id Redis says runs `consult` (null if none or Redis is down). */
  async placement(consult) {
    return this.redis.get(`${KEY_PREFIX}placement:${consult}`).catch(() => null);
  }

  nodeById(id) {
    return this.nodes.find((n) => n.id === id) || null;
  }

  /** The node `consult` is placed on, waiting for the placement to appear. */
  async waitPlacement(consult, { timeout = 20_000, not = null } = {}) {
    let last;
    await waitUntil(
      async () => {
        last = await this.placement(consult);
        return last && last !== not;
      },
      { timeout, interval: 100, what: `Redis ${KEY_PREFIX}placement:${consult}${not ? ` to leave ${not}` : ''}`, describe: () => String(last) },
    );
    const node = this.nodeById(last);
    if (!node) throw new Error(`consult ${consult} is placed on unknown node "${last}"`);
    return node;
  }

  async readyz(node) {
    return httpStatus(`${node.url}/readyz`);
  }

  async healthz(node) {
    return httpStatus(`${node.url}/healthz`);
  }

  async nodeMetrics(node) {
    const r = await fetch(`${node.url}/metrics`, { signal: AbortSignal.timeout(5_000) });
    return r.text();
  }

  /** SIGKILL the node (a crash); returns the kill time. */
  async killNode(node) {
    this.note(`SIGKILL ${node.server.role}`);
    const t = Date.now();
    await node.server.kill();
    return t;
  }

  /** SIGTERM the node (drain); does not wait for the exit. */
  drainNode(node) {
    this.note(`SIGTERM ${node.server.role}`);
    node.server.proc.kill('SIGTERM');
    return Date.now();
  }

  async restartNode(node, opts = {}) {
    if (!node.server.exit) throw new Error(`restartNode(${node.id}): still running`);
    await this.startNode(node, opts);
    await this.waitRegistered(node);
    return node;
  }

  /**
   * Nodes first (SIGTERM = drain; with the browsers closed they hold no
   * consult, so they should exit 0 promptly), then edges, then Redis. Anything
   * that does not exit 0 is a cleanup problem (the scenario then fails).
   */
  async shutdown() {
    const problems = [];
    const stop = async (s, timeoutMs) => {
      if (!s || s.exit) return;
      const r = await s.stop({ timeoutMs });
      this.note(`stop ${s.role}: ${JSON.stringify(r)}`);
      if (r.killed) problems.push(`${s.role} did not exit within ${timeoutMs} ms of SIGTERM (killed)`);
      else if (r.code !== 0) problems.push(`${s.role} exited with ${JSON.stringify(r)} on SIGTERM, expected code 0`);
    };
    await Promise.all(this.nodes.map((n) => stop(n.server, 20_000)));
    for (const e of this.edges) await stop(e, 10_000);
    if (this.redis) await stop(this.redis.server, 10_000);
    for (const p of children) p.kill('SIGKILL');
    if (problems.length) throw new Error(problems.join('; '));
  }

  /** Into a failure's evidence dir: which serverN is which, the cluster log, and the Redis keys. */
  async saveEvidence(dir) {
    const index = this.sc.servers.map((s, i) => `server${i}: ${s.role || 'server'} ${s.url} exit=${JSON.stringify(s.exit)} log=${s.logFile}`);
    fs.writeFileSync(path.join(dir, 'cluster-index.txt'), index.join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'cluster-events.txt'), this.log.join('\n') + '\n');
    let dump;
    try {
      dump = JSON.stringify(await this.redis.dump(), null, 2);
    } catch (e) {
      dump = `redis not readable: ${e.message}`;
    }
    fs.writeFileSync(path.join(dir, 'redis-keys.json'), dump + '\n');
    for (const n of this.nodes) {
      if (n.server && !n.server.exit) {
        const m = await this.nodeMetrics(n).catch((e) => `(${e.message})`);
        fs.writeFileSync(path.join(dir, `${n.id}.metrics.txt`), m);
      }
    }
  }
}

// --- consults in pages: shared by tests/browser/cluster.test.mjs -----------------------------------

const TIMEOUT = 60_000;

export const newConsult = (label) => `${label}-${crypto.randomBytes(4).toString('hex')}`;

/**
 * Runs in the page: what a failover changes — the peer connection (and the
 * mark the test put on it), its state and the address of the selected ICE
 * candidate pair's remote end (the media node), `call.resets`, the page state,
 * the clinician's waiting-room list — and whether `otherId`'s tile plays a
 * track of the current peer connection. Self-contained.
 */
function pageProbe(otherId) {
  const hook = window.__spreekkamer;
  const pc = hook && hook.pc;
  const err = document.getElementById('error');
  const notice = document.getElementById('notice');
  const video = otherId ? document.querySelector(`.tile[data-participant-id="${otherId}"] video`) : null;
  const shown = video && video.srcObject && video.srcObject.getVideoTracks ? video.srcObject.getVideoTracks()[0] : null;
  const base = {
    state: document.body ? document.body.dataset.state || null : null,
    you: hook && hook.you ? hook.you.id : null,
    lobby: document.querySelectorAll('#lobby-list .lobby-entry').length,
    resets: hook && hook.call ? hook.call.resets : null,
    mark: pc ? pc.__skMark || null : null,
    connectionState: pc ? pc.connectionState : null,
    tileOnPc: !!(pc && shown && pc.getReceivers().some((r) => r.track && r.track.id === shown.id)),
    error: err && !err.hidden ? { code: err.dataset.code || null, text: (document.getElementById('error-text') || err).textContent.trim() } : null,
    notice: notice && !notice.hidden ? notice.textContent.trim() : null,
  };
  if (!pc) return Promise.resolve({ ...base, remote: null });
  return pc.getStats().then((stats) => {
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair;
    });
    if (!pair) {
      stats.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
      });
    }
    const rc = pair ? stats.get(pair.remoteCandidateId) : null;
    return { ...base, remote: rc ? rc.address || rc.ip || null : null, remoteProtocol: rc ? rc.protocol : null };
  });
}

export const probe = (p, otherId = null) => p.evaluate(pageProbe, otherId);

/** Put `mark` on each page's current peer connection (a later probe tells whether it was replaced). */
export async function markPcs(pages, mark) {
  for (const p of pages) {
    const ok = await p.evaluate((m) => {
      const pc = window.__spreekkamer && window.__spreekkamer.pc;
      if (!pc) return false;
      pc.__skMark = m;
      return true;
    }, mark);
    assert.ok(ok, `${p.name}: no peer connection to mark`);
  }
}

/** Video frames decoded from `id` on the page's current peer connection. */
export async function framesFrom(p, id) {
  const m = await p.media();
  return m.byParticipant[id] ? m.byParticipant[id].video.framesDecoded : 0;
}

/** `p` decodes `otherId` (video rising, audio) over a pair ending at `ip`, and the tile shows colour. */
export async function seesOther(sc, p, otherId, ip, label) {
  await p.waitForMediaFrom([otherId], { timeout: TIMEOUT });
  let last;
  await p.waitFor(
    async () => {
      last = { ...(await probe(p, otherId)), colour: await tileColour(p, otherId) };
      return isColour(last.colour) && last.tileOnPc && last.remote === ip && last.state === 'in-call';
    },
    { timeout: TIMEOUT, what: `${p.name}: colour in ${otherId}'s tile, played from the current peer connection, media via ${ip}`, describe: () => JSON.stringify(last) },
  );
  sc.log(`${label}: ${p.name} sees ${otherId} in rgb(${last.colour.join(',')}) via ${last.remote} (${last.remoteProtocol})`);
  return last;
}

/**
 * A consult: the clinician joins, the patient waits, the clinician clicks
 * admit; both in the call. Returns { consult, clin, pat, clinId, patId }.
 */
export async function startConsult(sc, cl, label, clin, pat) {
  const consult = newConsult(label);
  const [clinLink, patLink] = [
    await cl.link({ consult, role: 'clinician', name: `Dr. ${label}` }),
    await cl.link({ consult, role: 'patient', name: `Patiënt ${label}` }),
  ];
  // A page reused from an earlier consult: a link to the same page that differs only in its
  // fragment would be a same-document navigation (no reload), so leave the page first.
  await Promise.all([clin.page.goto('about:blank'), pat.page.goto('about:blank')]);
  await Promise.all([clin.open(clinLink), pat.open(patLink)]);
  await clin.join({ timeout: TIMEOUT });
  await pat.join({ waitFor: 'waiting', timeout: TIMEOUT });
  const patWaitingId = await pat.youId();
  const admit = `#lobby-list .lobby-entry[data-participant-id="${patWaitingId}"] .admit`;
  await clin.waitFor(() => clin.evaluate((sel) => !!document.querySelector(sel), admit), { what: `${clin.name}: the admit button for ${patWaitingId}`, timeout: TIMEOUT });
  await clickLobbyButton(clin, patWaitingId);
  await pat.waitForState('in-call', { timeout: TIMEOUT });
  return { consult, label, clin, pat, clinId: await clin.youId(), patId: await pat.youId() };
}

/** Both pages of consult `c` see each other through `node`. */
export async function bothSee(sc, c, node, label) {
  await Promise.all([seesOther(sc, c.clin, c.patId, node.ip, label), seesOther(sc, c.pat, c.clinId, node.ip, label)]);
}

/** Both leave (patient first), each page ends in `left`. */
export async function leaveConsult(c) {
  for (const p of [c.pat, c.clin]) {
    await p.page.click('#leave');
    await p.waitForState('left', { timeout: 20_000 });
  }
}

/** Still decoding the same peer connection (mark kept, no reset) through `ip`, frames rising, colour. */
export async function untouched(sc, c, mark, ip, label) {
  for (const [p, other] of [[c.clin, c.patId], [c.pat, c.clinId]]) {
    const pr = await probe(p, other);
    assert.equal(pr.mark, mark, `${label}: ${p.name}'s peer connection was replaced (resets ${pr.resets}): ${JSON.stringify(pr)}`);
    assert.equal(pr.remote, ip, `${label}: ${p.name}'s media path moved: ${JSON.stringify(pr)}`);
    assert.equal(pr.state, 'in-call', `${label}: ${p.name} left the call: ${JSON.stringify(pr)}`);
    const m = await p.waitForRising([other], null, { timeout: 20_000 });
    const colour = await tileColour(p, other);
    assert.ok(isColour(colour), `${label}: ${p.name}: no colour in ${other}'s tile: ${JSON.stringify(colour)}`);
    sc.log(`${label}: ${p.name} untouched (same peer connection via ${ip}, ${m.byParticipant[other].video.framesDecoded} frames from ${other}, rgb(${colour.join(',')}))`);
  }
}
