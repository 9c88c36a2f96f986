// Issue 2, cross-browser: the same 1:1 consult with the clinician in
// Chromium and the patient in Firefox ESR (puppeteer-core over WebDriver
// BiDi). Both must decode each other's video (rising) and receive audio; the
// clinician shares a screen and Firefox decrypts and shows it; the patient
// leaves and the clinician's page notices; the server shuts down gracefully.

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

  // The clinician shares a screen: Firefox decrypts it (its script transform, under the screen's
  // own tag) and shows it on the stage.
  await clin.page.click('#more-toggle');
  await clin.page.click('#screen-share');
  const screen = () => pat.evaluate(async () => {
    const v = document.getElementById('screen-video');
    const e = window.__spreekkamer.e2ee ? await window.__spreekkamer.e2ee.stats() : null;
    return {
      shown: !document.getElementById('screen-stage').hidden,
      width: v.videoWidth,
      // Firefox counts no totalVideoFrames for a MediaStream source; it counts painted frames.
      frames: typeof v.mozPaintedFrames === 'number' ? v.mozPaintedFrames : v.getVideoPlaybackQuality().totalVideoFrames,
      e2ee: e && e.screen,
    };
  });
  let last = null;
  const s1 = await pat.waitFor(async () => {
    const s = (last = await screen());
    return s.shown && s.width > 0 && s.frames > 0 && s.e2ee && s.e2ee.decrypted >= 10 && s;
  }, { what: 'Firefox: the clinician\'s screen decrypted and shown', timeout: 30_000, describe: () => JSON.stringify(last) }).catch(async (e) => {
    sc.log(`on failure: Firefox inbound ${JSON.stringify((await pat.media()).inbound.map((i) => [i.kind, i.mid, i.packetsReceived, i.framesDecoded]))}`);
    sc.log(`on failure: Firefox e2ee ${JSON.stringify(await pat.evaluate(async () => window.__spreekkamer.e2ee && window.__spreekkamer.e2ee.stats()))}`);
    sc.log(`on failure: clinician outbound ${JSON.stringify((await clin.media()).outbound)}`);
    sc.log(`on failure: Firefox sdp ${JSON.stringify(await pat.evaluate(() => {
      const pc = window.__spreekkamer.pc;
      const pick = (sdp) => (sdp || '').split(/\r?\n(?=m=)/).filter((x) => /-screen-|a=mid:5/.test(x));
      return { remote: pick(pc.currentRemoteDescription && pc.currentRemoteDescription.sdp), local: pick(pc.currentLocalDescription && pc.currentLocalDescription.sdp), state: pc.signalingState, trs: pc.getTransceivers().map((t) => [t.mid, t.direction, t.currentDirection]) };
    }))}`);
    const m = await (await fetch(`${server.url}/metrics`)).text().catch(() => '');
    sc.log(`on failure: metrics ${m.split('\n').filter((l) => /keyframe|forwarded|tracks/.test(l) && !l.startsWith('#')).join(' | ')}`);
    throw e;
  });
  await pat.waitFor(async () => (await screen()).frames >= s1.frames + 5, { what: 'Firefox: the screen keeps playing' });
  assert.equal(s1.e2ee.auth, 0, `no screen frame failed authentication: ${JSON.stringify(s1.e2ee)}`);
  sc.log(`Firefox shows the clinician's screen: ${s1.width} px wide, ${s1.e2ee.decrypted} screen frames decrypted`);

  await pat.page.click('#leave');
  await pat.waitForState('left', { timeout: 20_000 });
  await waitForTiles(clin, {});
  assert.equal(await clin.state(), 'in-call');

  const stop = await sc.stopServer(server, { timeoutMs: 5_000 });
  assert.ok(!stop.killed && stop.code === 0, `graceful shutdown: ${JSON.stringify(stop)}`);
  assertTokensNotLogged(server, { clinician: tokenFromLink(clinLink), patient: tokenFromLink(patLink) });
});
