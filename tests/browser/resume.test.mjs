// Resuming (docs/PROTOCOL.md, "Resuming"; docs/DECISIONS.md record 7): a
// clinician and a patient the clinician admitted from the waiting room are
// in an end-to-end encrypted call. Then
//   (a) the server crashes (SIGKILL) and comes back on the same port with the
//       same secret: both pages reconnect by themselves, and the patient is
//       back in the call without a second admission;
//   (b) only the patient's WebSocket drops (closed from the page as a network
//       failure would): the same.
// Each time both see each other's video again and the consult is link-bound
// again. The server runs with a 100 ms consult grace, so that the only way
// back in past the waiting room is the resume ticket (the grace rule would
// otherwise also let a quick returner in).

import crypto from 'node:crypto';
import { assert, scenario, waitUntil } from './lib/index.mjs';
import { clickLobbyButton, tileColour } from './lib/checks.mjs';

const SERVER_ARGS = ['--consult-grace', '100ms'];
const TIMEOUT = 45_000;

const summaryTrust = (p) => p.evaluate(() => document.getElementById('e2ee-summary')?.dataset.e2eeTrust || null);

const tileTrust = (p, id) =>
  p.evaluate((pid) => document.querySelector(`.tile[data-participant-id="${pid}"]`)?.dataset.e2eeTrust || null, id);

/** Both decode each other, see colour (not a black or empty tile), and are link-bound. */
async function inEncryptedCall(sc, a, b, label) {
  const [idA, idB] = [await a.youId(), await b.youId()];
  await Promise.all([a.waitForMediaFrom([idB], { timeout: TIMEOUT }), b.waitForMediaFrom([idA], { timeout: TIMEOUT })]);
  for (const [p, other] of [[a, idB], [b, idA]]) {
    let last;
    await p.waitFor(
      async () => {
        last = await tileColour(p, other);
        return last && last[0] + last[1] + last[2] > 60;
      },
      { timeout: TIMEOUT, what: `${p.name}: colour in the video tile of ${other}`, describe: () => JSON.stringify(last) },
    );
    sc.log(`${label}: ${p.name} sees ${other} in rgb(${last.join(',')})`);
    let trust;
    await p.waitFor(
      async () => {
        trust = [await tileTrust(p, other), await summaryTrust(p)];
        return trust[0] === 'link-bound' && trust[1] === 'link-bound';
      },
      { timeout: TIMEOUT, what: `${p.name}: tile and summary link-bound`, describe: () => JSON.stringify(trust) },
    );
  }
  return [idA, idB];
}

/** Wait until `p` has a new participant id (a fresh join) and is in the call. */
async function rejoined(p, oldId) {
  let id;
  await p.waitFor(
    async () => {
      id = await p.youId();
      return id && id !== oldId && (await p.state()) === 'in-call';
    },
    { timeout: TIMEOUT, what: `${p.name}: back in the call with a new participant id`, describe: () => `id ${id}` },
  );
  return id;
}

function audit(server, event, pred = () => true) {
  return server.auditEvents().filter((e) => e.event === event && pred(e));
}

scenario('resume: after a server crash and after a dropped WebSocket, clinician and admitted patient come back into the encrypted call without a second admission', { timeout: 300_000 }, async (sc) => {
  const server = await sc.startServer({ args: SERVER_ARGS });
  const consult = `resume-${crypto.randomBytes(4).toString('hex')}`;
  const master = crypto.randomBytes(32).toString('base64url');
  const link = (role, name) => server.link({ consult, role, name, extraArgs: ['--link-secret', master] });
  const [clinLink, patLink] = [await link('clinician', 'Dr. Visser'), await link('patient', 'Mw. Bos')];

  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient');
  await Promise.all([clin.open(clinLink), pat.open(patLink)]);
  await clin.join();
  await pat.join({ waitFor: 'waiting' });
  const patWaitingId = await pat.youId();
  const admit = `#lobby-list .lobby-entry[data-participant-id="${patWaitingId}"] .admit`;
  await clin.waitFor(() => clin.evaluate((sel) => !!document.querySelector(sel), admit), { what: 'clinician: the admit button' });
  await clickLobbyButton(clin, patWaitingId);
  await pat.waitForState('in-call', { timeout: TIMEOUT });
  const [clinId0, patId0] = await inEncryptedCall(sc, clin, pat, 'before');
  assert.equal(audit(server, 'admit').length, 1, 'one admission');
  for (const p of [clin, pat]) {
    await p.waitFor(() => p.evaluate(() => window.__spreekkamer.resumeTicketKnown()), { what: `${p.name}: has a resume ticket` });
  }

  // --- (a) the server crashes and comes back ------------------------------------------------------
  const t0 = Date.now();
  await sc.killServer(server);
  const again = await sc.startServer({ port: server.port, secret: server.secret, args: SERVER_ARGS });
  const [clinId1, patId1] = await Promise.all([rejoined(clin, clinId0), rejoined(pat, patId0)]);
  await inEncryptedCall(sc, clin, pat, 'after the restart');
  sc.log(`(a) back in the encrypted call ${Date.now() - t0} ms after SIGKILL`);
  assert.equal(audit(again, 'admit').length, 0, 'nobody clicked admit on the restarted server');
  assert.equal(audit(again, 'waiting_room_entered').length, 0, 'nobody waited');
  assert.equal(audit(again, 'join_resumed', (e) => e.participant === patId1).length, 1, 'the patient resumed');
  assert.ok(audit(again, 'join_resumed', (e) => e.participant === clinId1).length === 1, 'so did the clinician');

  // --- (b) only the patient's connection drops -----------------------------------------------------
  const t1 = Date.now();
  await pat.evaluate(() => window.__spreekkamer.dropSignaling());
  const patId2 = await rejoined(pat, patId1);
  assert.equal(await clin.youId(), clinId1, 'the clinician stayed');
  await inEncryptedCall(sc, clin, pat, 'after the drop');
  sc.log(`(b) back in the encrypted call ${Date.now() - t1} ms after the drop`);
  assert.equal(audit(again, 'admit').length, 0, 'still no admit click');
  assert.equal(audit(again, 'join_resumed', (e) => e.participant === patId2).length, 1, 'resumed with the refreshed ticket');
  await waitUntil(async () => (await clin.tileIds()).length === 1, { timeout: TIMEOUT, what: 'the clinician shows one patient tile, not a stale one' });

  // The ticket is a bearer secret: never in the server's output.
  const tickets = [...again.logs().matchAll(/r1\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+/g)];
  assert.equal(tickets.length, 0, 'no resume ticket in the server output');
});
