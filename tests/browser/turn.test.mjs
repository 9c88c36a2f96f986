// Issue 12, TURN: a real coturn (Debian's `turnserver`) started by the test,
// and a browser whose direct UDP and TCP paths to the media server are
// dropped by nftables still gets a call, through TURN over UDP, over TCP and
// over TLS (`turns:`, a self-signed certificate the test makes); coturn
// refuses forged and expired credentials.
//
// Addresses (all loopback; run it in the loopback-only namespace of
// scripts/test.sh — it needs root for nftables and skips without):
//   127.0.0.1  the browsers, the edge's HTTP port, coturn's listeners
//   127.0.0.2  the media server (--announce-ip): ICE-lite, UDP and ICE-TCP
//   127.0.0.3  coturn's relay address (relay-ip)
// The nft rule drops everything sent to 127.0.0.2 unless it comes from
// 127.0.0.3, so the only working route to the media server is a relay.

import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CHROMIUM_ARGS, assert, assertNoInboundMedia, scenario, sleep, waitUntil } from './lib/index.mjs';
import { freeTcpPort, freeUdpPort } from './lib/cluster.mjs';

const execFileP = promisify(execFile);
const TURNSERVER = process.env.TURNSERVER || '/usr/bin/turnserver';
const MEDIA_IP = '127.0.0.2';
const RELAY_IP = '127.0.0.3';
const REALM = 'spreekkamer.test';
const TABLE = `spreekkamer_turn_${process.pid}`;

const newConsult = () => `turn-${crypto.randomBytes(5).toString('hex')}`;

async function prerequisites(t) {
  if (process.getuid && process.getuid() !== 0) return 'needs root (nftables)';
  if (!fs.existsSync(TURNSERVER)) return `${TURNSERVER} missing (apt-get install coturn; scripts/test.sh deps)`;
  try {
    await execFileP('nft', ['--version']);
  } catch {
    return 'nft missing';
  }
  return null;
}

/** The coturn REST credential for `username`. */
const credential = (secret, username) => crypto.createHmac('sha1', secret).update(username).digest('base64');

/** coturn on 127.0.0.1 (UDP + TCP on one port, TLS on another), relaying from 127.0.0.3. */
async function startCoturn(sc, secret) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-coturn-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  await execFileP('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
    '-keyout', key, '-out', cert,
  ]);
  const port = await freeUdpPort();
  const tlsPort = await freeTcpPort();
  const alt = await freeTcpPort();
  const altTls = await freeTcpPort();
  const minPort = 40000 + Math.floor(Math.random() * 20000);
  const conf = path.join(dir, 'turnserver.conf');
  fs.writeFileSync(conf, [
    'listening-ip=127.0.0.1',
    `relay-ip=${RELAY_IP}`,
    `listening-port=${port}`,
    `tls-listening-port=${tlsPort}`,
    `alt-listening-port=${alt}`,
    `alt-tls-listening-port=${altTls}`,
    `min-port=${minPort}`,
    `max-port=${minPort + 200}`,
    'use-auth-secret',
    `static-auth-secret=${secret}`,
    `realm=${REALM}`,
    `cert=${cert}`,
    `pkey=${key}`,
    'no-dtls',
    'no-cli',
    // The media server is on loopback here; coturn refuses loopback peers by default.
    'allow-loopback-peers',
    'no-multicast-peers',
    'fingerprint',
    `pidfile=${path.join(dir, 'turnserver.pid')}`,
    'simple-log',
    `log-file=${path.join(dir, 'turn.log')}`,
    '',
  ].join('\n'));
  const proc = spawn(TURNSERVER, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d) => { out += d; });
  proc.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => proc.on('exit', resolve));
  sc.defer(async () => {
    proc.kill('SIGTERM');
    await Promise.race([exited, sleep(3000)]);
    proc.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  });
  // Ready when an unauthenticated Allocate gets its 401 over UDP.
  await waitUntil(async () => (await allocate({ port })).code === 401, { timeout: 15_000, interval: 300, what: `coturn answering on 127.0.0.1:${port}`, describe: () => out.slice(-2000) });
  return { port, tlsPort, logs: () => out, dir };
}

// --- a minimal TURN client (RFC 5766 Allocate over UDP), for the credential checks ----

const MAGIC = 0x2112a442;

function attr(type, value) {
  const pad = (4 - (value.length % 4)) % 4;
  const h = Buffer.alloc(4);
  h.writeUInt16BE(type, 0);
  h.writeUInt16BE(value.length, 2);
  return Buffer.concat([h, value, Buffer.alloc(pad)]);
}

function message(type, attrs, integrityKey) {
  const txid = crypto.randomBytes(12);
  let body = Buffer.concat(attrs);
  const header = (len) => {
    const h = Buffer.alloc(20);
    h.writeUInt16BE(type, 0);
    h.writeUInt16BE(len, 2);
    h.writeUInt32BE(MAGIC, 4);
    txid.copy(h, 8);
    return h;
  };
  if (integrityKey) {
    // The length covers MESSAGE-INTEGRITY itself (24 bytes) when it is computed.
    const mac = crypto.createHmac('sha1', integrityKey).update(Buffer.concat([header(body.length + 24), body])).digest();
    body = Buffer.concat([body, attr(0x0008, mac)]);
  }
  return Buffer.concat([header(body.length), body]);
}

function parse(buf) {
  const type = buf.readUInt16BE(0);
  const attrs = {};
  let off = 20;
  while (off + 4 <= buf.length) {
    const t = buf.readUInt16BE(off);
    const len = buf.readUInt16BE(off + 2);
    attrs[t] = buf.subarray(off + 4, off + 4 + len);
    off += 4 + len + ((4 - (len % 4)) % 4);
  }
  let code = null;
  if (attrs[0x0009]) code = attrs[0x0009][2] * 100 + attrs[0x0009][3];
  return { type, code, attrs };
}

/** One request, its response (or `code: null` after 2 s), on `sock` (a bound UDP socket). */
function request(sock, port, msg) {
  return new Promise((resolve) => {
    const done = (r) => {
      clearTimeout(timer);
      sock.removeListener('message', onMessage);
      resolve(r);
    };
    const onMessage = (b) => done(parse(b));
    const timer = setTimeout(() => done({ type: null, code: null, attrs: {} }), 2000);
    sock.on('message', onMessage);
    sock.send(msg, port, '127.0.0.1');
  });
}

/**
 * An Allocate (REQUESTED-TRANSPORT UDP) from one socket (coturn ties the nonce
 * to the 5-tuple). Without `username`: the first, unauthenticated one (coturn
 * answers 401 with a nonce). With it: the long-term credential exchange too;
 * `success` says whether coturn allocated.
 */
async function allocate({ port, username = null, password = null }) {
  const sock = dgram.createSocket('udp4');
  sock.on('error', () => {});
  await new Promise((resolve) => sock.bind(0, '127.0.0.1', resolve));
  try {
    const transport = attr(0x0019, Buffer.from([17, 0, 0, 0]));
    const first = await request(sock, port, message(0x0003, [transport]));
    if (!username) return first;
    if (first.code !== 401 || !first.attrs[0x0015]) return { ...first, step: 'no nonce' };
    const nonce = first.attrs[0x0015];
    const realm = first.attrs[0x0014] || Buffer.from(REALM);
    const key = crypto.createHash('md5').update(`${username}:${realm.toString()}:${password}`).digest();
    const second = await request(sock, port, message(0x0003, [transport, attr(0x0006, Buffer.from(username)), attr(0x0014, realm), attr(0x0015, nonce)], key));
    // 0x0103 = Allocate success response. The allocation lapses at its
    // lifetime; the test stops coturn long before that matters.
    return { ...second, success: second.type === 0x0103 };
  } finally {
    sock.close();
  }
}

// --- nftables ------------------------------------------------------------------------

async function blockDirect(sc) {
  const rules = `table inet ${TABLE} {
  chain out {
    type filter hook output priority 0; policy accept;
    ip daddr ${MEDIA_IP} ip saddr != ${RELAY_IP} counter drop
  }
}
`;
  const file = path.join(os.tmpdir(), `${TABLE}.nft`);
  fs.writeFileSync(file, rules);
  await execFileP('nft', ['-f', file]);
  fs.rmSync(file, { force: true });
  sc.defer(() => execFileP('nft', ['delete', 'table', 'inet', TABLE]).catch(() => {}));
}

async function droppedPackets() {
  const { stdout } = await execFileP('nft', ['list', 'table', 'inet', TABLE]);
  const m = /counter packets (\d+)/.exec(stdout);
  return m ? Number(m[1]) : 0;
}

/** In the page: the selected candidate pair's local candidate (type, relayProtocol, protocol). */
function selectedLocal() {
  const pc = window.__spreekkamer && window.__spreekkamer.pc;
  if (!pc) return Promise.resolve(null);
  return pc.getStats().then((stats) => {
    let pairId = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    const pair = pairId && stats.get(pairId);
    const local = pair && stats.get(pair.localCandidateId);
    const remote = pair && stats.get(pair.remoteCandidateId);
    if (!local) return null;
    return {
      state: pair.state,
      type: local.candidateType,
      relayProtocol: local.relayProtocol || null,
      remote: remote ? `${remote.address}:${remote.port}` : null,
    };
  });
}

// --- the scenarios ----------------------------------------------------------------

scenario('TURN: with direct media blocked, a call works through coturn over UDP, TCP and TLS; bad credentials are refused', { timeout: 170_000 }, async (sc) => {
  const missing = await prerequisites();
  if (missing) {
    // Under scripts/test.sh (CI=true) everything is installed and we run as root: a missing
    // prerequisite there is a failure, never a silent skip.
    assert.ok(!process.env.CI || process.env.CI === 'false', `TURN test cannot run: ${missing}`);
    sc.t.skip(missing);
    return;
  }
  const secret = crypto.randomBytes(24).toString('hex');
  const turn = await startCoturn(sc, secret);
  sc.log(`coturn: UDP/TCP 127.0.0.1:${turn.port}, TLS 127.0.0.1:${turn.tlsPort}, relay ${RELAY_IP}`);

  // Credentials at coturn itself: a good one is allocated (so the refusals below mean something).
  const exp = Math.floor(Date.now() / 1000) + 600;
  const good = await allocate({ port: turn.port, username: `${exp}:probe`, password: credential(secret, `${exp}:probe`) });
  assert.ok(good.success, `a valid credential was refused: ${JSON.stringify({ type: good.type, code: good.code })}\n${turn.logs().slice(-1500)}`);
  const forged = await allocate({ port: turn.port, username: `${exp}:probe`, password: credential('not-the-secret-0123456789', `${exp}:probe`) });
  assert.ok(!forged.success && forged.code === 401, `forged credential: ${JSON.stringify({ type: forged.type, code: forged.code })}`);
  const past = Math.floor(Date.now() / 1000) - 60;
  const expired = await allocate({ port: turn.port, username: `${past}:probe`, password: credential(secret, `${past}:probe`) });
  assert.ok(!expired.success && expired.code === 401, `expired credential: ${JSON.stringify({ type: expired.type, code: expired.code })}`);
  sc.log('coturn: valid credential allocated; forged and expired ones refused with 401');

  await blockDirect(sc);
  const secretFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-turn-secret-')), 'turn.secret');
  fs.writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
  sc.defer(() => fs.rmSync(path.dirname(secretFile), { recursive: true, force: true }));

  // The TURN server's certificate is self-signed (made above): Chromium
  // checks TURN TLS certificates like any other, so this test's browser
  // accepts certificate errors (the pages themselves are plain http://).
  if (!CHROMIUM_ARGS.includes('--ignore-certificate-errors')) CHROMIUM_ARGS.push('--ignore-certificate-errors');
  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient');
  const cases = [
    { label: 'udp', uri: `turn:127.0.0.1:${turn.port}?transport=udp`, relayProtocol: 'udp' },
    { label: 'tcp', uri: `turn:127.0.0.1:${turn.port}?transport=tcp`, relayProtocol: 'tcp' },
    { label: 'tls', uri: `turns:127.0.0.1:${turn.tlsPort}?transport=tcp`, relayProtocol: 'tls' },
  ];
  // Control: without TURN the block really stops the call (so the cases below can fail).
  {
    const server = await sc.startServer({ args: ['--waiting-room=false', '--announce-ip', MEDIA_IP] });
    const consult = newConsult();
    await Promise.all([
      clin.open(await server.link({ consult, role: 'clinician', name: 'Dr. Direct' })),
      pat.open(await server.link({ consult, role: 'patient', name: 'Patient Direct' })),
    ]);
    await clin.join();
    await pat.join();
    assert.deepEqual(await pat.evaluate(() => window.__spreekkamer.iceConfig.iceServers), [], 'no ice_servers without --turn-uri');
    await assertNoInboundMedia(pat, { holdMs: 8_000 });
    await assertNoInboundMedia(clin, { holdMs: 0 });
    sc.log('control: without TURN, direct media to the blocked media server gets no packet through in 8 s');
    await Promise.all([clin.page.goto('about:blank'), pat.page.goto('about:blank')]);
    const r = await sc.stopServer(server);
    assert.equal(r.code, 0, `server exit ${JSON.stringify(r)}`);
  }
  const dropsBefore = await droppedPackets();
  for (const c of cases) {
    const t0 = Date.now();
    const server = await sc.startServer({
      args: ['--waiting-room=false', '--announce-ip', MEDIA_IP, '--turn-uri', c.uri, '--turn-secret-file', secretFile, '--turn-ttl', '10m'],
    });
    const consult = newConsult();
    const links = {
      clinician: await server.link({ consult, role: 'clinician', name: 'Dr. Turn' }),
      patient: await server.link({ consult, role: 'patient', name: 'Patient Turn' }),
    };
    await Promise.all([clin.open(links.clinician), pat.open(links.patient)]);
    if (c.label === 'udp') {
      // The preview's connectivity check: UDP and TCP fail (blocked), the relay works.
      let result;
      await waitUntil(async () => {
        result = await pat.evaluate(() => document.getElementById('connectivity').dataset.result || null);
        return result && result !== 'checking';
      }, { timeout: 50_000, interval: 500, what: 'patient: connectivity check done' });
      assert.equal(result, 'relay', `connectivity check result ${result}`);
      sc.log(`connectivity check in the preview: ${result} (${Date.now() - t0} ms from server start)`);
    }
    await clin.join();
    await pat.join();
    const [clinId, patId] = [await clin.youId(), await pat.youId()];
    // What the page was given: the URI, an `EXPIRY:participant-id` username, no secret.
    const ice = await pat.evaluate(() => window.__spreekkamer.iceConfig);
    assert.equal(ice.iceServers.length, 1, JSON.stringify(ice));
    assert.deepEqual(ice.iceServers[0].urls, [c.uri]);
    const [expiry, who] = ice.iceServers[0].username.split(':');
    assert.equal(who, patId, 'the TURN username names the participant id only');
    const now = Math.floor(Date.now() / 1000);
    assert.ok(Number(expiry) > now && Number(expiry) <= now + 600 + 5, `expiry ${expiry} not within --turn-ttl 10m of ${now}`);
    assert.equal(ice.iceServers[0].credential, credential(secret, ice.iceServers[0].username));
    try {
      await Promise.all([clin.waitForMediaFrom([patId], { timeout: 45_000 }), pat.waitForMediaFrom([clinId], { timeout: 45_000 })]);
    } catch (e) {
      e.message += `\n--- coturn output (last lines) ---\n${turn.logs().slice(-3000)}`;
      throw e;
    }
    for (const p of [clin, pat]) {
      const local = await p.evaluate(selectedLocal);
      assert.ok(local, `${p.name}: no selected candidate pair`);
      assert.equal(local.type, 'relay', `${p.name} over ${c.label}: selected local candidate ${JSON.stringify(local)}`);
      assert.equal(local.relayProtocol, c.relayProtocol, `${p.name}: ${JSON.stringify(local)}`);
      assert.ok(local.remote && local.remote.startsWith(`${MEDIA_IP}:`), `${p.name}: remote ${local.remote}`);
    }
    // The secret is in no log and no audit line.
    assert.ok(!server.logs().includes(secret), 'the TURN secret is in the server output');
    assert.ok(!server.auditText().includes(secret), 'the TURN secret is in the audit log');
    assert.ok(!server.args.join(' ').includes(secret), 'the TURN secret is on the command line');
    sc.log(`TURN over ${c.label}: both sides decode each other through a relay (${Date.now() - t0} ms from server start)`);
    await Promise.all([clin.page.goto('about:blank'), pat.page.goto('about:blank')]);
    const r = await sc.stopServer(server);
    assert.equal(r.code, 0, `server exit ${JSON.stringify(r)}`);
  }
  const drops = (await droppedPackets()) - dropsBefore;
  sc.log(`nftables dropped ${drops} direct packets to ${MEDIA_IP}`);
  assert.ok(drops > 0, 'no direct packet was dropped: the block was not exercised');
});
