// Issue 4, "Before the call" and "reconnect", in headless Chromium against
// the real release binary:
// - the preview's connectivity check reaches the media server over UDP
//   (`#connectivity[data-result="udp"]`), says so in plain language, is
//   audited as a connectivity check and never as a join, and can be run again;
// - with UDP to the media server blocked (policy routing; only as root in
//   a network namespace of its own) it falls back to TCP and says so;
// - a patient who was admitted and reloads the tab is back in the call
//   without a second admission (the link survives the reload in
//   sessionStorage, never in the address bar), and after "leave" a reload
//   no longer has the link.

import crypto from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import {
  assert,
  assertLocationClean,
  axeScan,
  formatViolations,
  scenario,
  tokenFromLink,
  waitForTiles,
} from './lib/index.mjs';
import { clickLobby, waitForAudit, waitForLobbyEntry, waitForYouId } from './lib/ehr.mjs';

const execFileP = promisify(execFile);
const newConsult = () => `devcheck-${crypto.randomBytes(6).toString('hex')}`;

/** Wait until the check has a final result; returns {result, text}. */
async function waitForConnectivity(p, { timeout = 45_000 } = {}) {
  let last;
  await p.waitFor(
    async () => {
      last = await p.evaluate(() => {
        const el = document.getElementById('connectivity');
        return el ? { result: el.dataset.result || null, text: el.textContent.trim(), role: el.getAttribute('role') } : null;
      });
      return last && last.result && last.result !== 'checking';
    },
    { timeout, what: `${p.name}: #connectivity[data-result] final`, describe: () => JSON.stringify(last) },
  );
  return last;
}

scenario('connectivity check in the preview: UDP works, plain-language result, audited as a check, runs again', async (sc) => {
  const server = await sc.startServer();
  const consult = newConsult();
  const link = await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' });
  const p = await sc.chromium('patient');
  await p.open(link);
  assert.equal(await p.state(), 'preview');

  const first = await waitForConnectivity(p);
  assert.equal(first.result, 'udp', `connectivity result: ${JSON.stringify(first)}`);
  assert.equal(first.role, 'status');
  assert.ok(first.text.length > 5, `a plain-language result is shown: "${first.text}"`);
  const checks = await waitForAudit(server, (e) => e.event === 'connectivity_check', { what: 'a connectivity_check audit line' });
  assert.equal(checks.outcome ?? 'success', 'success');
  // A check is not a join: nobody sees the person, the waiting room is untouched.
  const events = server.auditEvents().map((e) => e.event);
  assert.ok(!events.includes('join') && !events.includes('waiting_room_entered'), `the check joined something: ${events.join(', ')}`);

  const scan = await axeScan(p);
  assert.equal(scan.blocking.length, 0, `axe (preview with a connectivity result):\n${formatViolations(scan.blocking)}`);

  // "Check again": back to checking, then a result again (the second audited check).
  await p.page.click('#connectivity-again');
  const again = await waitForConnectivity(p);
  assert.equal(again.result, 'udp');
  await waitForAudit(server, (e) => e.event === 'connectivity_check', {
    from: server.auditEvents().findIndex((e) => e.event === 'connectivity_check') + 1,
    what: 'a second connectivity_check audit line',
  });

  // Joining still works after the check (and the check never blocked it).
  await p.join({ waitFor: 'waiting' });
});

/** Run a command; resolves to stdout, or null when it fails or is not possible here. */
async function tryRun(cmd, args) {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: 10_000 });
    return stdout;
  } catch {
    return null;
  }
}

/** The UDP (or TCP) ports the server process listens on. */
async function serverPorts(server, proto = 'udp') {
  const out = (await tryRun('ss', [proto === 'udp' ? '-Hulnp' : '-Htlnp'])) || '';
  const ports = new Set();
  for (const line of out.split('\n')) {
    if (!line.includes(`pid=${server.proc.pid},`)) continue;
    // State Recv-Q Send-Q Local:Port Peer users:((...,pid=N,...))
    const m = /^\S+\s+\S+\s+\S+\s+\S*:(\d+)\s/.exec(line);
    if (m) ports.add(Number(m[1]));
  }
  return [...ports];
}

scenario('connectivity check falls back to TCP when UDP to the media server is blocked', async (sc) => {
  // Blocking UDP the way a strict firewall does needs root in a network
  // namespace of our own (scripts/test.sh makes one): policy-routing rules
  // refuse UDP to the media ports. The rules are removed afterwards; the one
  // change that might outlive a crash (the `local` table looked up at
  // priority 20 instead of 0) routes exactly as before.
  const netns = ((await tryRun('ip', ['netns', 'identify', String(process.pid)])) || '').trim();
  if (process.getuid?.() !== 0 || !netns) {
    sc.log('skipped: needs root inside its own network namespace');
    return;
  }
  const server = await sc.startServer();
  const ports = await serverPorts(server, 'udp');
  assert.ok(ports.length > 0, "found the media server's UDP ports with ss");
  const rules = ports.map((port, i) => ['pref', String(10 + i), 'ipproto', 'udp', 'dport', String(port), 'prohibit']);
  let movedLocal = false;
  try {
    for (const r of rules) assert.notEqual(await tryRun('ip', ['rule', 'add', ...r]), null, `ip rule add ${r.join(' ')}`);
    // `local` (priority 0) would match loopback first: look it up after our rules.
    assert.notEqual(await tryRun('ip', ['rule', 'add', 'pref', '20', 'lookup', 'local']), null, 'ip rule add pref 20 lookup local');
    movedLocal = (await tryRun('ip', ['rule', 'del', 'pref', '0', 'lookup', 'local'])) !== null;
    assert.ok(movedLocal, 'ip rule del pref 0 lookup local');

    const link = await server.link({ consult: newConsult(), role: 'patient', name: 'P' });
    const p = await sc.chromium('patient', { lang: 'nl-NL' });
    await p.open(link);
    const res = await waitForConnectivity(p, { timeout: 60_000 });
    assert.equal(res.result, 'tcp', `connectivity result with UDP blocked: ${JSON.stringify(res)}`);
    assert.match(res.text, /langzamere route/, `Dutch plain-language result: "${res.text}"`);
    // The TCP check is audited as connected. (The UDP one, given up by the
    // page after 10 s, before the server's own 15 s, leaves no audit line.)
    const checks = server.auditEvents().filter((e) => e.event === 'connectivity_check');
    assert.ok(checks.length >= 1 && checks.at(-1).detail.connected === true, `the TCP check audited as connected: ${JSON.stringify(checks)}`);

    // Now block the ICE-TCP port too (not the HTTP port): no route at all.
    // The page says so and names the ports to ask the IT department about.
    const iceTcp = (await serverPorts(server, 'tcp')).filter((port) => port !== server.port);
    assert.equal(iceTcp.length, 1, `one ICE-TCP port besides HTTP: ${iceTcp}`);
    const tcpRule = ['pref', '15', 'ipproto', 'tcp', 'dport', String(iceTcp[0]), 'prohibit'];
    rules.push(tcpRule);
    assert.notEqual(await tryRun('ip', ['rule', 'add', ...tcpRule]), null, `ip rule add ${tcpRule.join(' ')}`);
    await p.page.click('#connectivity-again');
    await p.waitFor(() => p.evaluate(() => document.getElementById('connectivity').dataset.result === 'checking'), { what: 'checking again' });
    const none = await waitForConnectivity(p, { timeout: 60_000 });
    assert.equal(none.result, 'failed', `connectivity result with UDP and TCP blocked: ${JSON.stringify(none)}`);
    // The offer names the UDP port of the one media worker this check used
    // (the page cannot know the others), and the ICE-TCP port.
    assert.ok(ports.some((port) => none.text.includes(`UDP-poort ${port}`)), `the message names a media UDP port of ${ports}: "${none.text}"`);
    assert.ok(none.text.includes(`TCP-poort ${iceTcp[0]}`), `the message names the ICE-TCP port ${iceTcp[0]}: "${none.text}"`);
    assert.match(none.text, /IT-afdeling/);
    // The join button stays usable: the check never blocks joining.
    assert.equal(await p.evaluate(() => document.getElementById('join-button').disabled), false);
  } finally {
    if (movedLocal) await tryRun('ip', ['rule', 'add', 'pref', '0', 'lookup', 'local']);
    if (movedLocal) await tryRun('ip', ['rule', 'del', 'pref', '20', 'lookup', 'local']);
    for (const r of rules) await tryRun('ip', ['rule', 'del', ...r]);
  }
});

scenario('a reloaded patient is back in the call without a second admission; after leaving, a reload has no link', { timeout: 240_000 }, async (sc) => {
  const server = await sc.startServer();
  const consult = newConsult();
  const clinLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' });
  const patLink = await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' });
  const patToken = tokenFromLink(patLink);

  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient');
  await clin.open(clinLink);
  await clin.join();
  const clinId = await waitForYouId(clin);
  await pat.open(patLink);
  await pat.join({ waitFor: 'waiting' });
  const patId = await waitForYouId(pat);
  await waitForLobbyEntry(clin, patId);
  await clickLobby(clin, patId, 'admit');
  await pat.waitForState('in-call');
  await pat.waitForMediaFrom([clinId]);
  await clin.waitForMediaFrom([patId]);
  const admitsBefore = server.auditEvents().filter((e) => e.event === 'admit').length;
  assert.equal(admitsBefore, 1);

  // Reload: the fragment is long gone from the address bar, the link comes
  // from this tab's sessionStorage, and the page goes straight back in.
  await assertLocationClean(pat, patToken);
  await pat.page.reload({ waitUntil: 'load' });
  await pat.waitForState('in-call', { timeout: 60_000 });
  const newPatId = await waitForYouId(pat);
  await assertLocationClean(pat, patToken);
  await pat.waitForMediaFrom([clinId]);
  await waitForTiles(clin, { [newPatId]: 'Mevr. de Vries' });
  await clin.waitForMediaFrom([newPatId]);
  // Nobody admitted them again, and the clinician's waiting room stayed empty.
  assert.equal(server.auditEvents().filter((e) => e.event === 'admit').length, 1, 'no second admission');
  const lobby = await clin.evaluate(() => document.querySelectorAll('#lobby-list .lobby-entry').length);
  assert.equal(lobby, 0, 'the reloaded patient is not in the waiting room');

  // Leaving on purpose forgets the link: a reload then says "no link".
  await pat.page.click('#leave');
  await pat.waitForState('left');
  await pat.page.reload({ waitUntil: 'load' });
  assert.equal(await pat.waitForError(), 'no_token');
});
