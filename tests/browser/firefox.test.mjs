// Issue 2, cross-browser: the same 1:1 consult with the clinician in
// Chromium and the patient in Firefox ESR (puppeteer-core over WebDriver
// BiDi). Both must decode each other's video (rising) and receive audio; the
// patient leaves and the clinician's page notices; the server shuts down
// gracefully.

import crypto from 'node:crypto';
import {
  assert,
  assertLocationClean,
  assertTokensNotLogged,
  joinOneToOne,
  scenario,
  tokenFromLink,
  waitForTiles,
} from './lib/index.mjs';

scenario('clinician in Chromium and patient in Firefox ESR see and hear each other', async (sc) => {
  // Direct join (issue 2); the waiting room (on by default) has its own tests in ehr.test.mjs.
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = `consult-${crypto.randomBytes(6).toString('hex')}`;
  const clinLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' });
  const patLink = await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' });

  const clin = await sc.chromium('clinician');
  const pat = await sc.firefox('patient-firefox');
  await Promise.all([clin.open(clinLink), pat.open(patLink)]);
  await assertLocationClean(pat, tokenFromLink(patLink));
  assert.equal(await pat.state(), 'preview');

  const t0 = Date.now();
  const [clinId, patId] = await joinOneToOne(clin, pat);
  sc.log(`Chromium ⇄ Firefox: both decode each other ${Date.now() - t0} ms after the first join click`);
  await waitForTiles(clin, { [patId]: 'Mevr. de Vries' });
  await waitForTiles(pat, { [clinId]: 'Dr. Jansen' });

  // A second sample, well after the first: still flowing both ways.
  const [c1, p1] = await Promise.all([clin.media(), pat.media()]);
  await Promise.all([clin.waitForRising([patId], c1, { minFrameRise: 20 }), pat.waitForRising([clinId], p1, { minFrameRise: 20 })]);

  await pat.page.click('#leave');
  await pat.waitForState('left', { timeout: 20_000 });
  await waitForTiles(clin, {});
  assert.equal(await clin.state(), 'in-call');

  const stop = await sc.stopServer(server, { timeoutMs: 5_000 });
  assert.ok(!stop.killed && stop.code === 0, `graceful shutdown: ${JSON.stringify(stop)}`);
  assertTokensNotLogged(server, { clinician: tokenFromLink(clinLink), patient: tokenFromLink(patLink) });
});
