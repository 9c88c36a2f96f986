// Issue 4, "nothing else about a consult is written anywhere": a full consult
// (clinician launched with a link, patient invited from the page, waiting
// room, admitted, video both ways, an encrypted chat message and a photo)
// against a server whose working directory, HOME and TMPDIR are fresh empty
// directories and which runs under strace. Afterwards the only file the
// server created or wrote is the audit log: proven by the system calls
// themselves (every successful open for writing, creat, mkdir, rename, link,
// symlink, mknod, truncate) and by the directories staying empty.

import fs from 'node:fs';
import path from 'node:path';
import { assert, assertTokensNotLogged, scenario, tokenFromLink, waitForTiles } from './lib/index.mjs';
import {
  clickLobby,
  createInviteInUi,
  listFiles,
  openAndJoin,
  startTracedServer,
  waitForLobbyEntry,
  waitForYouId,
  writesInStrace,
} from './lib/ehr.mjs';

/** Paths a process may open for writing without creating anything: devices and kernel interfaces. */
const harmless = (p) => /^\/(dev|proc|sys)\//.test(p) || p === '/dev/null';

scenario('a full consult leaves no file behind but the audit log (strace + empty cwd/HOME/TMPDIR)', { timeout: 300_000 }, async (sc) => {
  const { server, dirs, auditLog, straceOut, root } = await startTracedServer(sc, { args: ['--waiting-room'] });
  sc.log(`traced server in ${root}`);

  const clinicianLink = await server.link({ consult: 'nofiles-1', role: 'clinician', name: 'Dr. Bakker', extraArgs: ['--with-link-secret'] });
  const clinician = await sc.chromium('clinician');
  await openAndJoin(clinician, clinicianLink);
  const clinicianId = await waitForYouId(clinician);

  const invite = await createInviteInUi(clinician, { role: 'patient' });
  const patient = await sc.chromium('patient');
  await openAndJoin(patient, invite, { state: 'waiting' });
  const patientId = await waitForYouId(patient);
  await waitForLobbyEntry(clinician, patientId);
  await clickLobby(clinician, patientId, 'admit');
  await patient.waitForState('in-call');
  await waitForTiles(clinician, { [patientId]: 'Patient' });
  await waitForTiles(patient, { [clinicianId]: 'Dr. Bakker' });
  await clinician.waitForMediaFrom([patientId]);
  await patient.waitForMediaFrom([clinicianId]);

  // Chat and a photo: both sides must have encryption on first.
  const badgeOn = (p, id) =>
    p.waitFor(() => p.evaluate((id) => document.querySelector(`.tile[data-participant-id="${id}"] .e2ee-badge`)?.dataset.e2ee === 'on', id), {
      what: `${p.name}: e2ee badge on for ${id}`,
      timeout: 30_000,
    });
  await badgeOn(clinician, patientId);
  await badgeOn(patient, clinicianId);
  const chatText = `huiduitslag sinds dinsdag ${Math.random().toString(36).slice(2)}`;
  await patient.evaluate((text) => {
    document.getElementById('chat-input').value = text;
    document.getElementById('chat-send').click();
  }, chatText);
  await clinician.waitFor(
    () => clinician.evaluate((text) => [...document.querySelectorAll('#chat-log .chat-message')].some((m) => m.textContent.includes(text)), chatText),
    { what: 'clinician: chat message shown', timeout: 30_000 },
  );
  await patient.pickPhoto({ name: 'arm.jpg', color: '#3a7' });
  await clinician.waitFor(() => clinician.evaluate(() => !!document.querySelector('#chat-log img.shared-photo')), {
    what: 'clinician: shared photo shown',
    timeout: 60_000,
  });

  // The consult ends for everyone; the server then stops.
  await clinician.page.click('#more-toggle');
  await clinician.page.click('#end-consult');
  await clinician.page.click('#confirm-ok'); // ending for everyone is confirmed
  await patient.waitForState('left');
  assert.equal(await patient.evaluate(() => document.getElementById('left-view').dataset.reason), 'ended');
  await clinician.waitForState('left');
  const stopped = await sc.stopServer(server);
  assert.equal(stopped.code, 0, `server exit ${JSON.stringify(stopped)}`);

  // 1. The system calls: nothing created or written except the audit log.
  const trace = fs.readFileSync(straceOut, 'utf8');
  assert.ok(trace.length > 0, 'strace recorded nothing (is the trace working?)');
  const writes = writesInStrace(trace);
  assert.ok(
    writes.some((w) => w.path === auditLog && /O_CREAT/.test(w.flags)),
    `the audit log open is not in the trace (the trace would prove nothing): ${JSON.stringify(writes.slice(0, 10))}`,
  );
  const bad = writes.filter((w) => w.path !== auditLog && !harmless(w.path || ''));
  assert.deepEqual(
    bad.map((w) => w.line.trim()),
    [],
    `the server created or wrote files other than the audit log:\n${bad.map((w) => w.line.trim()).join('\n')}`,
  );

  // 2. The directories: cwd, HOME and TMPDIR empty; the audit directory holds only the log.
  for (const d of ['cwd', 'home', 'tmp']) {
    assert.deepEqual(listFiles(dirs[d]), [], `the server left files in its ${d} (${dirs[d]})`);
  }
  assert.deepEqual(listFiles(dirs.audit), [path.basename(auditLog)], 'the audit directory holds only the audit log');

  // 3. The audit log itself holds the consult's events and none of its content.
  const audit = server.auditText();
  const events = server.auditEvents().map((e) => e.event);
  for (const e of ['token_accepted', 'consult_created', 'join', 'invite_created', 'waiting_room_entered', 'admit', 'end']) {
    assert.ok(events.includes(e), `audit event ${e} missing (have ${[...new Set(events)].join(', ')})`);
  }
  assert.ok(!audit.includes(chatText) && !server.logs().includes(chatText), 'chat text in a log');
  assert.ok(!audit.includes('Dr. Bakker'), 'display names in the audit log');
  const k = new URLSearchParams(new URL(clinicianLink).hash.slice(1)).get('k');
  assert.ok(k && !audit.includes(k) && !server.logs().includes(k), 'the link secret in a log');
  assertTokensNotLogged(server, { clinician: tokenFromLink(clinicianLink), invite: tokenFromLink(invite) });

  sc.log(`strace: ${trace.split('\n').length} file system calls traced, ${writes.length} writes (all to the audit log or /dev, /proc, /sys)`);
  if (!process.env.SPREEKKAMER_KEEP_TRACE) fs.rmSync(root, { recursive: true, force: true });
});
