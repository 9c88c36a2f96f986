// Issue 14, the test-your-setup page: a patient opens /test without any link
// and learns whether camera, microphone, speaker and the connection to the
// video server work. In Chromium (fake camera: a moving picture; fake
// microphone: a beep), on a 390×844 touch phone (scale 3) and at 1280×800,
// in Dutch and in English:
//   - the camera step works and the self view has a picture (videoWidth > 0);
//   - the microphone meter rises above 0 and the step works;
//   - the speaker step asks, and "I heard it" makes it work;
//   - the connection step reaches the media server over UDP (loopback) as an
//     anonymous probe: counted in /metrics, never in the audit log;
//   - the summary says everything works; nothing scrolls sideways; every
//     button at least 44×44 px; axe finds no serious or critical violation.
// And with camera and microphone refused: the permission help for this
// browser, a retry that works once allowed, and a summary that says what to do.
// Screenshots go to tests/browser/out/setup-<lang>/.

import fs from 'node:fs';
import path from 'node:path';
import { assert, axeScan, formatViolations, metric, scenario } from './lib/index.mjs';
import { outDir } from './lib/server.mjs';

const PHONE = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 3, phone: true };
const DESKTOP = { viewport: { width: 1280, height: 800 } };

/** Runs in the page: each step's result, the summary, and what matters for layout. */
function pageState() {
  const step = (id) => document.getElementById(id).dataset.result;
  const text = (id) => document.getElementById(id).textContent.replace(/\s+/g, ' ').trim();
  const vw = document.documentElement.clientWidth;
  const overflow = [];
  const smallTargets = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('[hidden]') || el.closest('.skip-link')) continue;
    const b = el.getBoundingClientRect();
    if (b.width === 0 || b.height === 0) continue;
    if (b.right > vw + 1 || b.left < -1) overflow.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className} ${Math.round(b.left)}..${Math.round(b.right)}`);
    if (el.matches('button, a.button, select') && (b.width < 44 || b.height < 44)) smallTargets.push(`${el.tagName.toLowerCase()}#${el.id} ${Math.round(b.width)}×${Math.round(b.height)}`);
  }
  const video = document.getElementById('setup-video');
  return {
    lang: document.documentElement.lang,
    camera: step('step-camera'),
    mic: step('step-mic'),
    speaker: step('step-speaker'),
    connection: step('step-connection'),
    route: document.getElementById('step-connection').dataset.route,
    summary: document.getElementById('setup-summary').dataset.result,
    texts: {
      camera: text('camera-result'),
      cameraHelp: document.getElementById('camera-help').hidden ? null : text('camera-help-text'),
      micHelp: document.getElementById('mic-help').hidden ? null : text('mic-help-text'),
      mic: text('mic-result'),
      connection: text('connection-result'),
      summary: text('summary-text'),
      next: text('summary-next'),
    },
    videoWidth: video.videoWidth,
    level: Number(document.getElementById('setup-level').value),
    vw,
    innerWidth: window.innerWidth,
    scrollWidth: document.scrollingElement.scrollWidth,
    overflow: overflow.slice(0, 8),
    smallTargets,
  };
}

async function waitForStep(p, what, predicate, timeout = 30_000) {
  let last;
  await p.waitFor(async () => {
    last = await p.evaluate(pageState);
    return predicate(last);
  }, { what: `${p.name}: ${what}`, timeout, describe: () => JSON.stringify(last) });
  return last;
}

for (const lang of ['nl-NL', 'en-US']) {
  const short = lang.slice(0, 2);
  const nl = short === 'nl';
  scenario(`test page (${lang}): camera, microphone, speaker and connection work, on a phone and a desktop, without a link`, { timeout: 240_000 }, async (sc) => {
    const shots = path.join(outDir, `setup-${short}`);
    fs.rmSync(shots, { recursive: true, force: true });
    fs.mkdirSync(shots, { recursive: true });
    const server = await sc.startServer();
    const axeResults = [];

    for (const [device, opts] of [['phone', PHONE], ['desktop', DESKTOP]]) {
      const p = await sc.chromium(`${device}`, { lang, ...opts });
      const shot = (name) => p.page.screenshot({ path: path.join(shots, `${device}-${name}.png`), fullPage: true });
      await p.page.goto(`${server.url}/test`, { waitUntil: 'load' });
      let s = await p.evaluate(pageState);
      assert.equal(s.lang, short, `${device}: the page speaks ${short}`);

      // Camera: works, and the self view shows a picture.
      s = await waitForStep(p, 'camera works', (x) => x.camera === 'ok');
      assert.ok(s.videoWidth > 0, `${device}: the self view has a picture (videoWidth ${s.videoWidth})`);
      assert.match(s.texts.camera, nl ? /camera werkt/ : /camera works/);

      // Microphone: the meter moves with the fake beep.
      s = await waitForStep(p, 'microphone level above 0 and the step works', (x) => x.level > 0 && x.mic === 'ok');
      assert.match(s.texts.mic, nl ? /microfoon werkt/ : /microphone works/);

      // Connection: UDP over loopback, within the check's own timeout.
      s = await waitForStep(p, 'the connection step reports udp', (x) => x.connection !== 'checking', 20_000);
      assert.equal(s.route, 'udp', `${device}: connection result ${JSON.stringify(s.texts.connection)}`);
      assert.equal(s.connection, 'ok');
      assert.equal(s.summary, 'pending', 'the speaker question is still open');
      await shot('1-before-speaker');
      axeResults.push({ label: `${device} before the speaker question`, ...(await axeScan(p)) });

      // Speaker: play, then answer.
      await p.page.click('#speaker-play');
      await p.waitFor(() => p.evaluate(() => !document.getElementById('speaker-question').hidden), { what: `${device}: the heard-it question` });
      await shot('2-speaker-question');
      axeResults.push({ label: `${device} speaker question`, ...(await axeScan(p)) });
      await p.page.click('#speaker-yes');

      // Summary: everything works.
      s = await waitForStep(p, 'summary ok', (x) => x.summary === 'ok', 10_000);
      assert.equal(s.texts.summary, nl ? 'Alles werkt. U bent klaar voor uw videoconsult.' : 'Everything works. You are ready for your video consult.');
      assert.equal(s.speaker, 'ok');
      assert.ok(s.scrollWidth <= s.innerWidth, `${device}: the page scrolls sideways (scrollWidth ${s.scrollWidth} > ${s.innerWidth})`);
      assert.deepEqual(s.overflow, [], `${device}: elements wider than the screen`);
      assert.deepEqual(s.smallTargets, [], `${device}: targets smaller than 44×44 px`);
      await shot('3-all-works');
      axeResults.push({ label: `${device} all works`, ...(await axeScan(p)) });

      // The language switch redraws every result.
      await p.page.click('#lang-switch');
      s = await p.evaluate(pageState);
      assert.equal(s.lang, nl ? 'en' : 'nl');
      assert.equal(s.texts.summary, nl ? 'Everything works. You are ready for your video consult.' : 'Alles werkt. U bent klaar voor uw videoconsult.');
      await p.page.click('#lang-switch');
    }

    // Two anonymous probes connected; none of it is in the audit log.
    const m = await server.metrics();
    assert.ok((metric(m, 'spreekkamer_connectivity_checks_total', { kind: 'anonymous', outcome: 'connected' }) ?? 0) >= 2, 'anonymous probes counted as connected');
    assert.equal(metric(m, 'spreekkamer_connectivity_checks_total', { kind: 'token' }), undefined, 'no token probes');
    const events = server.auditEvents().map((e) => e.event);
    assert.ok(!events.some((e) => ['connectivity_check', 'token_accepted', 'token_rejected', 'join'].includes(e)), `the test page left audit lines: ${events.join(', ')}`);

    const bad = axeResults.filter((r) => r.blocking.length);
    assert.equal(bad.length, 0, `axe: serious/critical violations\n${bad.map((r) => `${r.label}:\n${formatViolations(r.blocking)}`).join('\n')}`);
    sc.log(`screenshots in ${shots}`);
  });
}

scenario('test page: camera and microphone refused → the permission help for this browser, a retry that works once allowed', { timeout: 180_000 }, async (sc) => {
  const shots = path.join(outDir, 'setup-nl');
  fs.mkdirSync(shots, { recursive: true });
  const server = await sc.startServer();
  const p = await sc.chromium('refused', { lang: 'nl-NL', ...PHONE });
  // The fake UI grants everything, so the refusal is played by the page's
  // getUserMedia, as a browser that was told "block" answers it.
  await p.page.addInitScript(() => {
    window.__denyMedia = true;
    const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    navigator.mediaDevices.getUserMedia = (constraints) => (window.__denyMedia
      ? Promise.reject(new DOMException('Permission denied', 'NotAllowedError'))
      : real(constraints));
  });
  await p.page.goto(`${server.url}/test`, { waitUntil: 'load' });
  let s = await waitForStep(p, 'camera and microphone refused', (x) => x.camera === 'failed' && x.mic === 'failed');
  // Desktop Chromium's steps (the UA says Linux Chrome even with a phone viewport).
  assert.match(s.texts.cameraHelp, /camera-icoon in de adresbalk/, `the permission help: "${s.texts.cameraHelp}"`);
  assert.match(s.texts.cameraHelp, /Camera en microfoon opnieuw proberen/);
  assert.equal(s.texts.micHelp, null, 'one help and one retry for one refusal');
  s = await waitForStep(p, 'the connection still tested', (x) => x.connection !== 'checking', 20_000);
  assert.equal(s.route, 'udp');
  assert.equal(s.summary, 'problems');
  assert.match(s.texts.summary, /Niet alles werkt/);
  assert.match(s.texts.next, /ander apparaat|zorgverlener/);
  assert.ok(s.scrollWidth <= s.innerWidth, `the page scrolls sideways (${s.scrollWidth} > ${s.innerWidth})`);
  assert.deepEqual(s.smallTargets, []);
  await p.page.screenshot({ path: path.join(shots, 'phone-4-refused.png'), fullPage: true });
  const scan = await axeScan(p);
  assert.equal(scan.blocking.length, 0, `axe (refused):\n${formatViolations(scan.blocking)}`);

  // The person allows it and presses the retry button.
  await p.evaluate(() => { window.__denyMedia = false; });
  await p.page.click('#camera-retry');
  s = await waitForStep(p, 'camera and microphone work after the retry', (x) => x.camera === 'ok' && x.mic === 'ok' && x.videoWidth > 0);
  assert.equal(s.texts.cameraHelp, null, 'the help is gone');
  await p.page.screenshot({ path: path.join(shots, 'phone-5-after-retry.png'), fullPage: true });
});
