// Issue 4 test helpers: a test EHR (key pairs, a JWKS served on loopback,
// signed clinician deep links), a plain WebSocket client for the token
// attack matrix, the clinician's lobby/invite controls, and a server started
// under strace for the "no files" proof. Built on the issue-2 harness
// (./index.mjs), which stays untouched.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { claims, signAsym, signHs } from './jwt.mjs';
import { Server, binPath, freePort, tail } from './server.mjs';
import { sleep, waitUntil } from './wait.mjs';
import { clickLobbyButton } from './checks.mjs';

export const EHR_ISSUER = 'https://ehr.test.example/';
export const EHR_AUDIENCE = 'spreekkamer-test';

// ---------------------------------------------------------------------------
// Keys and the JWKS

/**
 * A fresh key pair of the given JWS algorithm with its public JWK
 * (`kid`, `alg`, `use: sig`) and PEM.
 */
export function makeKey(alg, kid) {
  let pair;
  if (alg === 'RS256') pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  else if (alg === 'ES256') pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  else if (alg === 'EdDSA') pair = crypto.generateKeyPairSync('ed25519');
  else throw new Error(`makeKey: unsupported alg ${alg}`);
  const jwk = { ...pair.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
  return {
    alg,
    kid,
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    publicPem: pair.publicKey.export({ type: 'spki', format: 'pem' }),
    jwk,
  };
}

/** The test EHR's signing keys: RS256 and Ed25519 (the issue's pair) plus ES256. */
export function makeEhrKeys() {
  const stamp = crypto.randomBytes(3).toString('hex');
  return {
    rsa: makeKey('RS256', `ehr-rsa-${stamp}`),
    ed: makeKey('EdDSA', `ehr-ed-${stamp}`),
    ec: makeKey('ES256', `ehr-ec-${stamp}`),
  };
}

/**
 * A JWKS document served over HTTP on 127.0.0.1 (inside the test's network
 * namespace), as an EHR would at /.well-known/jwks.json. `setKeys` swaps the
 * published keys (key rotation); `requests` counts fetches.
 */
export async function startJwksServer(keys) {
  let published = keys.map((k) => k.jwk);
  let requests = 0;
  const srv = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/.well-known/jwks.json') {
      requests += 1;
      const body = JSON.stringify({ keys: published });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  const { port } = srv.address();
  return {
    url: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    get requests() {
      return requests;
    },
    setKeys(ks) {
      published = ks.map((k) => k.jwk);
    },
    close: () =>
      new Promise((resolve) => {
        srv.closeAllConnections?.();
        srv.close(() => resolve());
      }),
  };
}

/** `serve` flags for an EHR-launch deployment: JWKS URL, issuer, audience, waiting room. */
export function ehrServeArgs(jwks, { waitingRoom = true, issuer = EHR_ISSUER, audience = EHR_AUDIENCE } = {}) {
  return ['--jwks-url', jwks.url, '--jwt-issuer', issuer, '--jwt-audience', audience, ...(waitingRoom ? ['--waiting-room'] : [])];
}

// ---------------------------------------------------------------------------
// Tokens and links

/** Claims the test EHR puts in a deep-link token (EHR issuer and audience, a jti). */
export function ehrClaims(overrides = {}) {
  return claims({
    iss: EHR_ISSUER,
    aud: EHR_AUDIENCE,
    nbf: Math.floor(Date.now() / 1000),
    jti: crypto.randomUUID(),
    ...overrides,
  });
}

/** Sign claims with one of the EHR keys (its own alg and kid). */
export function ehrSign(key, payload, { header = {}, kid = key.kid, alg = key.alg } = {}) {
  return signAsym(payload, key.privateKey, { alg, kid, header });
}

/** A fresh E2EE link secret the way docs/CRYPTO.md §2.8 asks: 128 bits, base64url. */
export const newLinkSecret = () => crypto.randomBytes(16).toString('base64url');

/** The deep link: `{base}/c#t={jwt}[&k={link secret}]` (docs/PROTOCOL.md). */
export function deepLink(server, token, linkSecret) {
  return `${server.url}/c#t=${token}${linkSecret ? `&k=${linkSecret}` : ''}`;
}

/**
 * An invite-shaped token (what `invite-created` carries: HS256 with the
 * server's own secret, `sub` = `invite-{jti}`), with any claim overridden —
 * e.g. an `exp` in the past for "the invite has expired".
 */
export function inviteToken(server, overrides = {}) {
  const jti = crypto.randomBytes(8).toString('hex');
  return signHs(ehrClaims({ sub: `invite-${jti}`, jti, role: 'patient', name: 'Patient', ...overrides }), server.secret);
}

// ---------------------------------------------------------------------------
// A bare WebSocket client (no browser): the token attack matrix

/**
 * Open /ws, send `join {v:1, token}` and collect messages until `welcome`,
 * an `error`, or close. Resolves { first, messages, closed, ws }.
 */
export function wsJoin(server, token, { timeout = 10_000, userAgent = 'spreekkamer-tokens-test' } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url.replace(/^http/, 'ws')}/ws`, { headers: { 'user-agent': userAgent } });
    const messages = [];
    let done = false;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      const first = messages.find((m) => m.type === 'welcome' || m.type === 'error') || null;
      resolve({ first, messages, closed, ws });
    };
    const timer = setTimeout(() => {
      if (!done) {
        done = true;
        ws.terminate();
        reject(new Error(`no welcome/error within ${timeout} ms; got ${JSON.stringify(messages)}`));
      }
    }, timeout);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'join', v: 1, token })));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      try {
        messages.push(JSON.parse(data.toString('utf8')));
      } catch {
        messages.push({ type: '<unparsable>' });
      }
      const last = messages.at(-1);
      if (last.type === 'welcome') finish(false);
    });
    ws.on('close', () => finish(true));
    ws.on('error', (e) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        reject(e);
      }
    });
  });
}

/** Close a client socket politely (leave) and wait for the close. */
export async function wsLeave(ws) {
  if (ws.readyState !== WebSocket.OPEN) return;
  const closed = new Promise((r) => ws.once('close', r));
  ws.send(JSON.stringify({ type: 'leave' }));
  await Promise.race([closed, sleep(3_000)]);
  ws.terminate();
}

// ---------------------------------------------------------------------------
// Audit log

/** Audit events after index `from` matching `pred`, waited for (the log is written asynchronously). */
export async function waitForAudit(server, pred, { from = 0, what = 'an audit line', timeout = 10_000 } = {}) {
  let events = [];
  return waitUntil(
    () => {
      events = server.auditEvents().slice(from);
      return events.find(pred);
    },
    { timeout, interval: 100, what, describe: () => JSON.stringify(events.slice(-5)) },
  );
}

// ---------------------------------------------------------------------------
// The clinician's controls in the page (ids: /tmp/ui-contract.md, web/index.html)

/** Create an invite with the page's invite form; returns the link the page built. */
export async function createInviteInUi(clinician, { role = 'patient', name = '' } = {}) {
  const before = await clinician.evaluate(() => (document.getElementById('invite-link') || {}).value || '');
  const ok = await clinician.evaluate(
    ({ role, name }) => {
      const form = document.getElementById('invite-form');
      const sel = document.getElementById('invite-role');
      const input = document.getElementById('invite-name');
      if (!form || !sel || !input) return false;
      sel.value = role;
      input.value = name;
      return true;
    },
    { role, name },
  );
  if (!ok) throw new Error(`${clinician.name}: the page has no invite form (#invite-form, #invite-role, #invite-name)`);
  await clinician.page.click('#invite-create');
  return clinician.waitFor(
    () =>
      clinician.evaluate((prev) => {
        const result = document.getElementById('invite-result');
        const v = (document.getElementById('invite-link') || {}).value || '';
        return result && !result.hidden && v && v !== prev ? v : null;
      }, before),
    { what: `${clinician.name}: #invite-link filled after creating an invite`, timeout: 20_000 },
  );
}

/** Wait until the clinician's lobby lists `id` (with name text); returns that entry's text. */
export async function waitForLobbyEntry(clinician, id, { timeout = 30_000 } = {}) {
  let last;
  return clinician.waitFor(
    async () => {
      last = await clinician.evaluate(() =>
        [...document.querySelectorAll('#lobby-list .lobby-entry[data-participant-id]')].map((e) => ({
          id: e.dataset.participantId,
          text: e.textContent.replace(/\s+/g, ' ').trim(),
          admit: !!e.querySelector('.admit'),
          deny: !!e.querySelector('.deny'),
        })),
      );
      const e = last.find((x) => x.id === id);
      return e && e.admit && e.deny ? e.text : null;
    },
    { timeout, what: `${clinician.name}: .lobby-entry[data-participant-id=${id}] with .admit and .deny`, describe: () => JSON.stringify(last) },
  );
}

export async function clickLobby(clinician, id, action) {
  await clickLobbyButton(clinician, id, action);
}

/** The participant's own id once the server has welcomed them (waiting or in the call). */
export async function waitForYouId(p, { timeout = 30_000 } = {}) {
  return p.waitFor(() => p.youId(), { timeout, what: `${p.name}: __spreekkamer.you.id set (welcome received)` });
}

/** Open a link and press join, waiting for `state` (or, with state null, for anything). */
export async function openAndJoin(p, link, { state = 'in-call', timeout = 60_000 } = {}) {
  await p.open(link);
  await p.join({ waitFor: state, timeout });
}

/**
 * Open a link that should be refused and return the error code shown. The
 * page may refuse at once (`#error`) or only after "join" (server answer).
 */
export async function openExpectingError(p, link, { timeout = 30_000 } = {}) {
  await p.open(link);
  // The link check before Join may refuse it at any moment (and hide Join): so look for the error
  // and for an enabled Join together, and click in the page, where looking and clicking are one step.
  await p.waitFor(async () => {
    const s = await p.snapshot();
    if (s.error) return true;
    return p.evaluate(() => {
      const b = document.getElementById('join-button');
      if (!b || b.disabled || b.closest('[hidden]')) return false;
      b.click();
      return true;
    });
  }, { timeout, what: `${p.name}: the error, or Join to press` });
  return p.waitForError({ timeout });
}

// ---------------------------------------------------------------------------
// A server under strace, with empty cwd/HOME/TMPDIR (the "no files" proof)

/** System calls that can create, write or rename a file system entry. */
export const FILE_SYSCALLS = [
  'open', 'openat', 'openat2', 'creat', 'mkdir', 'mkdirat', 'rename', 'renameat', 'renameat2',
  'link', 'linkat', 'symlink', 'symlinkat', 'mknod', 'mknodat', 'truncate',
];

/**
 * Start `spreekkamer serve` under `strace -f --seccomp-bpf` (only the file
 * system calls above stop the process, so media keeps its pace), with its
 * working directory, HOME and TMPDIR fresh empty directories and the audit
 * log in a directory of its own. Returns a harness `Server` (added to the
 * scenario, so cleanup and evidence work as usual) plus the paths.
 */
export async function startTracedServer(sc, { args = [] } = {}) {
  if (!['/usr/bin/strace', '/bin/strace'].some((p) => fs.existsSync(p))) {
    throw new Error('strace is not installed (apt-get install strace; scripts/test.sh should install it)');
  }
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-nofiles-'));
  const dirs = {
    cwd: path.join(root, 'cwd'),
    home: path.join(root, 'home'),
    tmp: path.join(root, 'tmp'),
    audit: path.join(root, 'audit'),
    evidence: path.join(root, 'evidence'),
  };
  for (const d of Object.values(dirs)) fs.mkdirSync(d);
  const auditLog = path.join(dirs.audit, 'audit.log');
  const straceOut = path.join(dirs.evidence, 'strace.txt');
  const logFile = path.join(dirs.evidence, 'server.log');
  const port = await freePort();
  const secret = crypto.randomBytes(32).toString('hex');
  const fullArgs = [
    'serve', '--listen', `127.0.0.1:${port}`, '--jwt-secret', secret, '--audit-log', auditLog,
    '--udp-port', '0', '--tcp-port', '0', '--log-level', 'info', ...args,
  ];
  const strace = spawn(
    'strace',
    ['-f', '--seccomp-bpf', '-qq', '-e', `trace=${FILE_SYSCALLS.join(',')}`, '-o', straceOut, binPath, ...fullArgs],
    {
      cwd: dirs.cwd,
      // A minimal environment: nothing inherited points the server at another directory.
      env: { PATH: process.env.PATH || '/usr/bin:/bin', HOME: dirs.home, TMPDIR: dirs.tmp, RUST_LOG: 'info', RUST_BACKTRACE: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  // The harness's Server signals `proc`; the signal must reach the server, not strace
  // (strace would detach and leave it running). strace exits with the server's status.
  const proc = new EventEmitter();
  let serverPid = null;
  strace.on('exit', (code, signal) => proc.emit('exit', code, signal));
  strace.on('error', (e) => proc.emit('error', e));
  proc.stdout = strace.stdout;
  proc.stderr = strace.stderr;
  proc.kill = (sig) => {
    try {
      if (serverPid) process.kill(serverPid, sig);
      else strace.kill(sig);
    } catch {
      /* already gone */
    }
  };
  const server = new Server({ port, secret, dir: dirs.cwd, auditLog, logFile, proc, args: fullArgs });
  sc.servers.push(server);
  await waitUntil(
    () => {
      if (server.exit) throw new Error(`traced server exited early ${JSON.stringify(server.exit)}:\n${tail(server.output)}`);
      // strace forks short-lived helpers first (its seccomp-bpf self-test), so
      // the server is the child that has exec'ed our binary with `serve`.
      try {
        const kids = fs.readFileSync(`/proc/${strace.pid}/task/${strace.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
        for (const k of kids) {
          const argv = fs.readFileSync(`/proc/${k}/cmdline`, 'utf8').split('\0');
          if (argv[0] === binPath && argv[1] === 'serve') serverPid = Number(k);
        }
      } catch {
        /* not yet, or a helper just exited */
      }
      return serverPid;
    },
    { timeout: 15_000, interval: 50, what: 'the server process under strace' },
  );
  await waitUntil(
    async () => {
      if (server.exit) throw new Error(`traced server exited early ${JSON.stringify(server.exit)}:\n${tail(server.output)}`);
      return server.healthy();
    },
    { timeout: 60_000, interval: 200, what: `${server.url}/healthz (server under strace)` },
  );
  return { server, dirs, auditLog, straceOut, root, serverPid };
}

/**
 * Successful system calls in an strace -f output that create or write a
 * file system entry: opens with O_CREAT/O_WRONLY/O_RDWR/O_TRUNC/O_APPEND,
 * creat, mkdir*, rename*, link*, symlink*, mknod*, truncate. Returns
 * [{ call, path, flags, result, line }].
 */
export function writesInStrace(text) {
  const out = [];
  const pending = new Map(); // pid → the first half of an "<unfinished ...>" call
  for (const raw of text.split('\n')) {
    // With -f, lines start with the thread id; a call interrupted by another
    // thread is split: `12 openat(…, O_CREAT <unfinished ...>` … `12 <... openat resumed>) = 3`.
    const pm = /^\s*(?:\[pid\s+)?(\d+)\]?\s+(.*)$/.exec(raw);
    if (!pm) continue;
    const [, pid] = pm;
    let line = pm[2];
    const unfinished = /^(.*) <unfinished \.\.\.>$/.exec(line);
    if (unfinished) {
      pending.set(pid, unfinished[1]);
      continue;
    }
    const resumed = /^<\.\.\. \w+ resumed>(.*)$/.exec(line);
    if (resumed) {
      line = (pending.get(pid) || '') + resumed[1];
      pending.delete(pid);
    }
    // "openat(AT_FDCWD, "/x", O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, 0666) = 3"
    const m = /^(\w+)\((.*)\)\s+=\s+(-?\d+)/.exec(line);
    if (!m) continue;
    const [, call, argText, resultText] = m;
    const result = Number(resultText);
    if (result < 0) continue; // failed: created nothing
    const paths = [...argText.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]);
    if (/^open(at2?)?$/.test(call)) {
      const flags = /\b(O_[A-Z_|]+)/.exec(argText)?.[1] || '';
      if (!/O_CREAT|O_WRONLY|O_RDWR|O_TRUNC|O_APPEND|O_TMPFILE/.test(flags)) continue;
      out.push({ call, path: paths[0], flags, result, line: raw });
    } else {
      out.push({ call, path: paths.join(' -> '), flags: '', result, line: raw });
    }
  }
  return out;
}

/** Every file (recursively) under `dir`, relative. */
export function listFiles(dir) {
  const out = [];
  const walk = (d, rel) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      out.push(e.isDirectory() ? `${r}/` : r);
      if (e.isDirectory()) walk(path.join(d, e.name), r);
    }
  };
  walk(dir, '');
  return out;
}
