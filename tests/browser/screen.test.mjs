// Issue 14: screen sharing, and the phone's other camera. A clinician (1280×800) and a patient on
// a phone (390×844, touch, scale 3, two cameras), in Dutch, behind the tampering signaling proxy
// (tests/browser/lib/tamper.mjs) so the last part can play a malicious server. Asserted as
// behaviour:
//   - "other camera" appears on a phone with two cameras and switches what the clinician receives
//     (the sent track's camera changes; the clinician keeps decoding), the self view follows;
//   - the clinician shares (the browser's picker is Chromium's fake screen): the patient sees it
//     large and whole on the phone, decoded through the E2EE transform (screen frames encrypted
//     on one side and decrypted on the other), with the clinician's camera kept as a small tile
//     that still plays, below the screen and not covered by it;
//   - a patient may not share until the clinician allows it: no button, and a modified page that
//     sends anyway gets `forbidden` while the SFU forwards none of its screen;
//   - allowed, the patient gets no button while the clinician shares; the clinician stops with the
//     banner's button, the patient shares from the phone's menu (large on the clinician's desktop);
//     the clinician takes over (one at a time: the patient's stops, and says so); withdrawing the
//     permission stops the patient's; the browser's own "stop sharing" (the track ending) stops a
//     share on the other side too;
//   - a server that relabels the clinician's camera as a screen (and claims a share) gets no
//     picture on the screen stage: the frames fail authentication (camera and screen carry
//     different authenticated tags);
//   - the audit log has the shares, the refusal and the permission, and no token.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { outDir } from './lib/server.mjs';
import { assert, assertTokensNotLogged, joinOneToOne, scenario, tokenFromLink, waitUntil } from './lib/index.mjs';
import { startTamperProxy } from './lib/tamper.mjs';

const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };

/** Runs in the page: where the screen and a tile are, and whether the screen plays. */
function screenState(tileId) {
  const box = (el) => {
    if (!el || el.closest('[hidden]')) return null;
    const b = el.getBoundingClientRect();
    return b.width && b.height ? { x: b.x, y: b.y, w: b.width, h: b.height, bottom: b.bottom, right: b.right } : null;
  };
  const video = document.getElementById('screen-video');
  const tile = tileId ? document.querySelector(`#tiles .tile[data-participant-id="${tileId}"]`) : null;
  const hook = window.__spreekkamer;
  return {
    vw: window.innerWidth,
    vh: window.innerHeight,
    stage: box(document.getElementById('stage')),
    screen: box(document.getElementById('screen-stage')),
    videoBox: box(video),
    videoWidth: video ? video.videoWidth : 0,
    videoHeight: video ? video.videoHeight : 0,
    time: video ? video.currentTime : 0,
    frames: video && video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality().totalVideoFrames : 0,
    caption: (document.getElementById('screen-caption')?.textContent || '').trim(),
    self: !document.getElementById('screen-self').hidden,
    shareHidden: document.getElementById('screen-share').hidden,
    shareText: document.getElementById('screen-share').textContent.trim(),
    allowHidden: document.getElementById('screen-allow').hidden,
    allowText: document.getElementById('screen-allow').textContent.trim(),
    mine: !!(hook.screen && hook.screen.mine),
    remoteScreens: hook.screen ? hook.screen.tracks.size : -1,
    tile: box(tile),
    tileVideo: tile ? tile.querySelector('.tile-video').videoWidth : 0,
    tileName: tile ? box(tile.querySelector('.tile-name')) : null,
    notice: document.getElementById('notice').hidden ? '' : document.getElementById('notice').textContent.trim(),
  };
}

const state = (p, tileId = null) => p.evaluate(screenState, tileId);
const e2eeStats = (p) => p.evaluate(async () => (window.__spreekkamer.e2ee ? window.__spreekkamer.e2ee.stats() : null));

async function openMenuItem(p, id) {
  await p.page.click('#more-toggle');
  await p.page.click(`#${id}`);
}

/** Waits until the screen stage plays frames (the picture advances). */
async function waitForScreen(p, who, label) {
  let last = null;
  const first = await p.waitFor(async () => {
    const s = (last = await state(p, who));
    return s.screen && s.videoWidth > 0 && s.frames > 0 && s;
  }, { what: `${label}: a shared screen on the stage`, timeout: 30_000, describe: () => JSON.stringify(last) });
  await p.waitFor(async () => (await state(p, who)).frames >= first.frames + 5, { what: `${label}: the screen keeps playing`, timeout: 20_000 });
  return state(p, who);
}

scenario('screen sharing: large and end-to-end encrypted on a phone, patients only when allowed, one at a time, stopped by the browser too, not fooled by the server', { timeout: 300_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const tamper = await startTamperProxy({ target: server.url });
  sc.defer(() => tamper.close());
  const consult = `screen-${crypto.randomBytes(4).toString('hex')}`;
  const master = crypto.randomBytes(32).toString('base64url');
  const link = (role, name) => server.link({ consult, role, name, baseUrl: tamper.url, extraArgs: ['--link-secret', master] });
  const links = { clin: await link('clinician', 'Dr. Jansen'), pat: await link('patient', 'Mevr. de Vries'), guest: await link('guest', 'Tolk Bakker') };

  // Screenshots of the shared states, for people to look at (not asserted).
  const shots = path.join(outDir, 'screen');
  fs.rmSync(shots, { recursive: true, force: true });
  fs.mkdirSync(shots, { recursive: true });
  const shot = (p, name) => p.page.screenshot({ path: path.join(shots, `${name}.png`) });

  const clin = await sc.chromium('clinician', { lang: 'nl-NL', viewport: DESKTOP });
  const pat = await sc.chromium('patient', { lang: 'nl-NL', viewport: PHONE, deviceScaleFactor: 3, phone: true, cameras: 2 });
  await Promise.all([clin.open(links.clin), pat.open(links.pat)]);
  const [clinId, patId] = await joinOneToOne(clin, pat);

  // --- the other camera (fake cameras have no facing mode: the next camera is taken) ------------
  // Chromium's second fake camera delivers Y16 frames, which no encoder takes (measured: 0 frames
  // encoded through a plain loopback connection, any --use-fake-device-for-media-stream option).
  // So the flip is asserted as: the other camera is sent and shown, and flipping back brings the
  // picture back to the clinician; both directions run the same code.
  const sentCamera = () => pat.evaluate(() => {
    const sender = window.__spreekkamer.pc.getSenders().find((x) => x.track && x.track.kind === 'video' && x.track.label.startsWith('fake_device'));
    const self = document.getElementById('local-video');
    const selfTrack = self && self.srcObject ? self.srcObject.getVideoTracks()[0] : null;
    return { sent: sender ? sender.track.label : null, self: selfTrack ? selfTrack.label : null, flipHidden: document.getElementById('flip-camera').hidden };
  });
  const before = await sentCamera();
  assert.equal(before.flipHidden, false, 'a phone with two cameras offers "other camera"');
  assert.equal(before.sent, 'fake_device_0');
  await openMenuItem(pat, 'flip-camera');
  const flipped = await pat.waitFor(async () => {
    const s = await sentCamera();
    return s.sent === 'fake_device_1' && s;
  }, { what: 'patient: the other camera is sent' });
  assert.equal(flipped.self, 'fake_device_1', 'the self view shows the camera being sent');
  await openMenuItem(pat, 'flip-camera');
  await pat.waitFor(async () => (await sentCamera()).sent === 'fake_device_0', { what: 'patient: back to the first camera' });
  const fromPatFrames = async () => (await clin.media()).inbound.filter((i) => i.participant === patId && i.kind === 'video').reduce((n, i) => n + i.framesDecoded, 0);
  const f0 = await fromPatFrames();
  await clin.waitFor(async () => (await fromPatFrames()) >= f0 + 10, { what: 'clinician: the patient\'s picture is back after flipping twice', timeout: 30_000 });

  // --- not allowed: no button for the patient, and a page that sends anyway gets nothing through
  let p = await state(pat, clinId);
  assert.equal(p.shareHidden, true, 'a patient sees no "share" before the clinician allows it');
  assert.equal(p.allowHidden, true, 'only a clinician decides');
  let c = await state(clin, patId);
  assert.equal(c.shareHidden, false, 'a clinician may always share');
  assert.equal(c.allowText, 'Patiënt en gasten mogen hun scherm niet delen: sta het toe');

  await pat.evaluate(async () => {
    // A modified page: a red canvas on the screen sender, and `screen {on: true}`.
    const canvas = document.createElement('canvas');
    canvas.width = 640;
    canvas.height = 360;
    const g = canvas.getContext('2d');
    const draw = () => { g.fillStyle = `rgb(220, 0, ${Math.floor(Math.random() * 40)})`; g.fillRect(0, 0, 640, 360); };
    draw();
    window.__forced = setInterval(draw, 100);
    window.__forcedTrack = canvas.captureStream(10).getVideoTracks()[0];
    await window.__spreekkamer.call.setLocalTrack('screen', window.__forcedTrack);
    window.__spreekkamer.call.signaling.send({ type: 'screen', on: true });
  });
  await pat.waitFor(async () => (await state(pat)).notice === 'Dat mag alleen de zorgverlener doen.', { what: 'patient: the refusal, in Dutch' });
  const sent = await pat.waitFor(async () => {
    const m = await pat.media();
    const screenOut = m.outbound.find((o) => o.rid === null && o.framesEncoded > 10 && o.bytesSent > 0);
    return screenOut || null;
  }, { what: 'patient: the forced screen is really being sent' });
  await new Promise((r) => setTimeout(r, 4_000));
  c = await state(clin, patId);
  assert.equal(c.remoteScreens, 0, 'the clinician got no screen track from the patient');
  assert.equal(c.screen, null, 'and shows no screen stage');
  const clinMedia = await clin.media();
  const fromPat = clinMedia.inbound.filter((i) => i.participant === patId && i.kind === 'video');
  assert.equal(fromPat.length, 1, `only the patient's camera reaches the clinician: ${JSON.stringify(fromPat)}`);
  sc.log(`forced share refused: the patient encoded ${sent.framesEncoded} screen frames, the SFU forwarded none`);
  await pat.evaluate(async () => {
    clearInterval(window.__forced);
    window.__forcedTrack.stop();
    await window.__spreekkamer.call.setLocalTrack('screen', null);
  });

  // --- the clinician shares: large on the patient's phone, camera kept as a small tile ----------
  const clinE2eeBefore = await e2eeStats(clin);
  await openMenuItem(clin, 'screen-share');
  await clin.waitFor(async () => (await state(clin)).self, { what: 'clinician: "you are sharing" with a stop button' });
  c = await state(clin);
  assert.equal(c.shareText, 'Stoppen met scherm delen');
  p = await waitForScreen(pat, clinId, 'patient');
  assert.equal(p.caption, 'Dr. Jansen deelt het scherm');
  assert.ok(p.videoWidth >= 640, `the patient receives the whole screen: ${p.videoWidth}×${p.videoHeight}`);
  // Layout on the phone: the screen spans the width and most of the call area; the clinician's
  // camera is a tile below it, not covered, and still playing.
  assert.ok(Math.abs(p.screen.w - p.stage.w) < 1, `screen as wide as the stage: ${JSON.stringify(p.screen)} vs ${JSON.stringify(p.stage)}`);
  assert.ok(p.screen.h >= 0.6 * p.stage.h, `screen ≥ 60 % of the call area's height: ${p.screen.h} of ${p.stage.h}`);
  assert.ok(p.screen.w * p.screen.h >= 0.4 * p.vw * p.vh, `screen ≥ 40 % of the phone: ${Math.round(p.screen.w * p.screen.h)} of ${p.vw * p.vh}`);
  assert.ok(p.tile, 'the clinician\'s camera is still shown');
  assert.ok(p.tile.y >= p.screen.bottom - 1, `camera tile below the screen, not under it: tile ${JSON.stringify(p.tile)}, screen bottom ${p.screen.bottom}`);
  assert.ok(p.tile.h >= 80 && p.tile.h <= 0.25 * p.vh, `camera tile small but visible: ${p.tile.h}px high`);
  assert.ok(p.tile.bottom <= p.stage.bottom + 1 && p.tile.x >= -0.5 && p.tile.right <= p.vw + 0.5, 'camera tile on screen');
  assert.ok(p.tileName && p.tileName.h <= 30 && p.tileName.w >= Math.min(120, p.tile.w - 16) && p.tileName.right <= p.tile.right + 0.5, `the name in the small tile is one line inside it: ${JSON.stringify(p.tileName)}`);
  const camFrames = async () => (await pat.media()).inbound.filter((i) => i.participant === clinId && i.kind === 'video').reduce((n, i) => n + i.framesDecoded, 0);
  const cam0 = await camFrames();
  await pat.waitFor(async () => (await camFrames()) >= cam0 + 10, { what: 'patient: the clinician\'s camera keeps playing beside the screen' });
  // End to end encrypted: the clinician's worker encrypts screen frames, the patient's decrypts them.
  const patE2ee = await pat.waitFor(async () => {
    const s = await e2eeStats(pat);
    return s && s.screen.decrypted >= 20 && s;
  }, { what: 'patient: screen frames decrypted by the E2EE worker' });
  const clinE2ee = await e2eeStats(clin);
  assert.ok(clinE2ee.screen.encrypted >= 20 + clinE2eeBefore.screen.encrypted, `clinician encrypts screen frames: ${JSON.stringify(clinE2ee.screen)}`);
  assert.equal(patE2ee.screen.auth, 0, 'no screen frame failed authentication');
  assert.equal(patE2ee.passedPlain, 0, 'nothing passed in clear');
  await shot(pat, 'patient-phone-sees-clinician-screen');
  await shot(clin, 'clinician-sharing');
  sc.log(`clinician shares: patient screen ${p.videoWidth}×${p.videoHeight}, stage ${Math.round(p.screen.w)}×${Math.round(p.screen.h)} of ${p.vw}×${p.vh}, camera tile ${Math.round(p.tile.w)}×${Math.round(p.tile.h)}; e2ee screen frames: clinician encrypted ${clinE2ee.screen.encrypted}, patient decrypted ${patE2ee.screen.decrypted}`);

  // --- allowed: not over the clinician's share; the clinician stops with the banner's button ------
  await openMenuItem(clin, 'screen-allow');
  await pat.waitFor(async () => (await state(pat)).notice === 'U mag nu uw scherm delen (via Meer).', { what: 'patient: told sharing is allowed' });
  c = await state(clin);
  assert.equal(c.allowText, 'Patiënt en gasten mogen hun scherm delen: zet het uit');
  p = await state(pat);
  assert.equal(p.shareHidden, true, 'no "share" for the patient while the clinician shares');
  await clin.page.click('#screen-self-stop');
  await pat.waitFor(async () => {
    const s = await state(pat);
    return s.screen === null && !s.shareHidden;
  }, { what: 'patient: the clinician\'s screen gone (stop button), and now a "share" button' });
  assert.equal((await state(clin)).self, false, 'clinician: no longer sharing');

  // --- the patient shares from the phone ----------------------------------------------------------
  await openMenuItem(pat, 'screen-share');
  await pat.waitFor(async () => (await state(pat)).self, { what: 'patient: sharing' });
  c = await waitForScreen(clin, patId, 'clinician');
  assert.equal(c.caption, 'Mevr. de Vries deelt het scherm');
  assert.ok(c.screen.w * c.screen.h >= 0.5 * c.stage.w * c.stage.h, `desktop: the screen takes most of the stage: ${JSON.stringify(c.screen)} in ${JSON.stringify(c.stage)}`);
  assert.ok(c.tile && c.tile.y >= c.screen.bottom - 1, `desktop: the patient's camera below the screen: ${JSON.stringify(c.tile)}`);
  assert.ok(c.tileName && c.tileName.h <= 30 && c.tileName.w >= Math.min(120, c.tile.w - 16) && c.tileName.right <= c.tile.right + 0.5, `desktop: one-line name in the small tile: ${JSON.stringify(c.tileName)}`);
  await shot(clin, 'clinician-desktop-sees-patient-screen');

  // --- one at a time: the clinician takes over ----------------------------------------------------
  await openMenuItem(clin, 'screen-share');
  await pat.waitFor(async () => {
    const s = await state(pat);
    return !s.self && !s.mine && s.notice === 'Uw scherm wordt niet meer gedeeld.';
  }, { what: 'patient: own share stopped, and told so' });
  p = await waitForScreen(pat, clinId, 'patient (the clinician took over)');
  await clin.waitFor(async () => (await state(clin)).screen === null, { what: 'clinician: the patient\'s screen is gone' });
  await clin.page.click('#screen-self-stop');
  await pat.waitFor(async () => (await state(pat)).screen === null, { what: 'patient: the clinician stopped again' });

  // --- withdrawn: the patient's share stops ---------------------------------------------------
  await pat.waitFor(async () => !(await state(pat)).shareHidden, { what: 'patient: "share" back' });
  await openMenuItem(pat, 'screen-share');
  await waitForScreen(clin, patId, 'clinician (patient shares again)');
  await openMenuItem(clin, 'screen-allow');
  await pat.waitFor(async () => {
    const s = await state(pat);
    return !s.self && !s.mine && s.shareHidden;
  }, { what: 'patient: share stopped and the button gone' });
  await clin.waitFor(async () => (await state(clin)).screen === null, { what: 'clinician: the patient\'s screen is gone' });

  // --- the browser's own "stop sharing" -------------------------------------------------------
  await openMenuItem(clin, 'screen-share');
  await waitForScreen(pat, clinId, 'patient (second share)');
  await clin.evaluate(() => {
    // What the browser's stop button does: the capture ends and the track fires `ended`.
    const track = window.__spreekkamer.screen.mine;
    track.stop();
    track.dispatchEvent(new Event('ended'));
  });
  await pat.waitFor(async () => (await state(pat)).screen === null, { what: 'patient: the screen goes when the browser stops it' });
  assert.equal((await state(clin)).self, false);

  // --- a malicious server relabels the clinician's camera as a screen ---------------------------
  // For the guest's offers: the clinician's camera section gets a screen track id, and the guest
  // is told the clinician shares. The frames are camera frames: they fail as a screen.
  let relabelled = 0;
  tamper.onServerMessage((conn, msg) => {
    if (conn.role !== 'guest' || msg.type !== 'offer' || typeof msg.sdp !== 'string') return undefined;
    const sdp = msg.sdp.replace(new RegExp(`(a=msid:${clinId} ${clinId})-video-(\\d+)`, 'g'), (_, a, n) => {
      relabelled++;
      return `${a}-screen-${n}`;
    });
    return { ...msg, sdp };
  });
  const guest = await sc.chromium('guest', { lang: 'nl-NL', viewport: DESKTOP });
  await guest.open(links.guest);
  await guest.join();
  const guestId = await guest.youId();
  await waitUntil(() => relabelled > 0, { timeout: 30_000, what: 'the proxy relabelled the camera in the guest\'s offer' });
  tamper.sendToBrowser(guestId, { type: 'screen', id: clinId, on: true });
  const refused = await guest.waitFor(async () => {
    const s = await e2eeStats(guest);
    return s && s.screen.auth >= 10 && s;
  }, { what: 'guest: camera frames presented as a screen fail authentication', timeout: 30_000 });
  const g = await state(guest, clinId);
  assert.equal(g.videoWidth, 0, `no picture on the screen stage: ${JSON.stringify(g)}`);
  assert.equal(refused.screen.decrypted, 0, 'nothing decrypted as a screen');
  sc.log(`relabel attack: ${refused.screen.auth} camera frames refused as a screen, none shown`);

  // --- audit: who shared, the refusal, the permission; no tokens -------------------------------
  await sc.stopServer(server);
  const events = server.auditEvents();
  const shares = events.filter((e) => e.event === 'screen_share');
  assert.ok(shares.some((e) => e.outcome === 'failure' && e.reason === 'forbidden' && e.participant === patId), 'the refused share is audited');
  assert.ok(shares.some((e) => e.outcome === 'success' && e.participant === clinId && e.detail.on === true), 'the clinician\'s share is audited');
  assert.ok(shares.some((e) => e.outcome === 'success' && e.participant === patId && e.detail.on === true), 'the patient\'s share is audited');
  assert.ok(shares.some((e) => e.participant === clinId && e.target === patId && e.detail.reason === 'taken_over'), 'the take-over is audited');
  assert.ok(shares.some((e) => e.participant === clinId && e.target === patId && e.detail.reason === 'not_allowed'), 'the stop by withdrawal is audited');
  const allows = events.filter((e) => e.event === 'screen_allow');
  assert.deepEqual(allows.map((e) => e.detail.allowed), [true, false], 'allowed, then withdrawn');
  assertTokensNotLogged(server, Object.fromEntries(Object.entries(links).map(([who, l]) => [who, tokenFromLink(l)])));
});
