// Issue 14: a consult that works like a care app on a phone. A patient on a
// 390×844 touch screen (scale 3) and a clinician at 1280×800, in Dutch and in
// English. Layout is asserted as sizes and positions, not as presence:
//   - Join inside the first screen; the link checked before Join;
//   - the remote video ≥ 60 % of the phone screen, the control bar ≤ 15 %,
//     nothing wider than the screen at 390 and at 320 px, nor at 200 % zoom;
//   - toggle labels that say the state and what pressing does;
//   - the waiting room names the clinician and chimes when let in; the
//     clinician hears, sees (tab title, banner) and is notified of a new
//     waiting patient and can let them in from the banner;
//   - the chat as a sheet with an unread badge, the safety code in a dialog,
//     "end for everyone" confirmed, and a calm end page;
//   - a quality indicator per tile and a call clock;
//   - axe: no serious or critical violation on any of these states.
// Screenshots of every state go to tests/browser/out/phone-<lang>/.

import fs from 'node:fs';
import path from 'node:path';
import { assert, axeScan, formatViolations, scenario } from './lib/index.mjs';
import { createInviteInUi, waitForYouId } from './lib/ehr.mjs';
import { outDir } from './lib/server.mjs';

const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };
const CONTACT = 'Bel de polikliniek: 020 123 45 67';

/** Runs in the page: geometry of what matters, in CSS pixels. */
function layout() {
  const r = (sel) => {
    const el = document.querySelector(sel);
    if (!el || el.closest('[hidden]')) return null;
    const b = el.getBoundingClientRect();
    return b.width && b.height ? { x: b.x, y: b.y, w: b.width, h: b.height, bottom: b.bottom, right: b.right } : null;
  };
  // Anything laid out wider than the screen (the page must never scroll sideways).
  const vw = document.documentElement.clientWidth;
  const overflow = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('[hidden]') || el.closest('dialog:not([open])') || el.closest('.visually-hidden, .visually-hidden-input, .skip-link')) continue;
    const b = el.getBoundingClientRect();
    if (b.width === 0 || b.height === 0) continue;
    if (b.right > vw + 0.5 || b.left < -0.5) overflow.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}.${el.className} ${Math.round(b.left)}..${Math.round(b.right)}`);
  }
  return {
    vw,
    vh: window.innerHeight,
    scrollWidth: document.scrollingElement.scrollWidth,
    join: r('#join-button'),
    video: r('#tiles .tile .tile-video'),
    tile: r('#tiles .tile'),
    controls: r('#call-view .controls'),
    self: r('#call-self'),
    stage: r('#stage'),
    side: r('#side-panel'),
    leave: r('#leave'),
    mic: r('#mute-mic'),
    overflow: overflow.slice(0, 8),
  };
}

const text = (p, sel) => p.evaluate((s) => (document.querySelector(s)?.textContent || '').replace(/\s+/g, ' ').trim(), sel);
const visible = (p, sel) => p.evaluate((s) => {
  const el = document.querySelector(s);
  if (!el || el.closest('[hidden]')) return false;
  const b = el.getBoundingClientRect();
  return b.width > 0 && b.height > 0 && b.bottom > 0 && b.top < window.innerHeight && b.right > 0 && b.left < window.innerWidth;
}, sel);

function noOverflow(l, label) {
  assert.ok(l.scrollWidth <= l.vw, `${label}: the page scrolls sideways (scrollWidth ${l.scrollWidth} > ${l.vw}; ${l.overflow.join(', ')})`);
  assert.deepEqual(l.overflow, [], `${label}: elements wider than the screen`);
}

for (const lang of ['nl-NL', 'en-US']) {
  const short = lang.slice(0, 2);
  const nl = short === 'nl';
  scenario(`phone (${lang}): phone-first call, link checked before Join, waiting-room cues, confirmed end, calm end page`, { timeout: 300_000 }, async (sc) => {
    const shots = path.join(outDir, `phone-${short}`);
    fs.rmSync(shots, { recursive: true, force: true });
    fs.mkdirSync(shots, { recursive: true });
    const shot = (p, name) => p.page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: false });
    const axeResults = [];
    const scan = async (p, label) => {
      const { blocking, violations } = await axeScan(p);
      axeResults.push({ label, blocking, violations });
    };

    const server = await sc.startServer({ args: ['--waiting-room', '--contact', CONTACT] });
    const consult = `phone-${short}-${Date.now().toString(36)}`;
    const clinicianLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen', extraArgs: ['--with-link-secret'] });

    // --- Clinician at 1280×800: the link checks out; Join in the first screen.
    const clin = await sc.chromium('clinician', { lang, viewport: DESKTOP });
    await clin.open(clinicianLink);
    await clin.waitFor(async () => (await clin.evaluate(() => window.__spreekkamer.check?.status)) === 'ok', { what: 'clinician: link check ok', timeout: 20_000 });
    let l = await clin.evaluate(layout);
    assert.ok(l.join && l.join.bottom <= DESKTOP.height, `desktop: Join inside the first screen (${JSON.stringify(l.join)})`);
    // A stand-in for the desktop notification API, granted, with the page in the background.
    await clin.evaluate(() => {
      window.__notes = [];
      window.Notification = class {
        static permission = 'granted';
        static requestPermission() { return Promise.resolve('granted'); }
        constructor(title, opts) { window.__notes.push({ title, body: opts && opts.body }); }
        addEventListener() {}
        close() {}
      };
    });
    await clin.join();
    await waitForYouId(clin);
    l = await clin.evaluate(layout);
    assert.ok(l.side && l.stage && l.side.x >= l.stage.right - 1, `desktop: chat and waiting room in a column beside the video (${JSON.stringify({ stage: l.stage, side: l.side })})`);
    assert.ok(l.controls && l.controls.bottom <= DESKTOP.height + 1, 'desktop: the control bar is on screen');
    noOverflow(l, 'desktop in call');
    const invite = await createInviteInUi(clin, { role: 'patient', name: 'Mevr. de Vries' });
    await clin.evaluate(() => { document.hasFocus = () => false; });
    const titleBefore = await clin.evaluate(() => document.title);

    // --- Patient on a phone: link checked, greeting by the server's word, Join in the first screen.
    const pat = await sc.chromium('patient', { lang, viewport: PHONE, deviceScaleFactor: 3, phone: true });
    await pat.open(invite);
    await pat.waitFor(async () => (await pat.evaluate(() => window.__spreekkamer.check?.status)) === 'ok', { what: 'patient: link check ok', timeout: 20_000 });
    const status = await text(pat, '#link-status');
    assert.match(status, /Mevr\. de Vries/, `the preview greets the patient by the name the server confirmed: "${status}"`);
    // An invite link travels by mail: it does not name the clinician (their name comes with the waiting room).
    assert.doesNotMatch(status, /Jansen/, 'the invite link does not carry the clinician\'s name');
    l = await pat.evaluate(layout);
    assert.ok(l.join && l.join.bottom <= PHONE.height, `phone: Join inside the first screen (bottom ${l.join && l.join.bottom} > ${PHONE.height})`);
    noOverflow(l, 'phone preview');
    await shot(pat, '1-preview-phone');
    await scan(pat, 'phone preview');
    // The privacy notice opens in one step, right under Join.
    await pat.page.click('#privacy-details > summary');
    const privacy = await pat.evaluate(() => {
      const el = document.getElementById('privacy-e2ee');
      const b = el.getBoundingClientRect();
      return { open: document.getElementById('privacy-details').open, h: b.height, text: el.textContent };
    });
    assert.ok(privacy.open && privacy.h > 0 && privacy.text.length > 20, `the privacy notice opens with one tap (${JSON.stringify(privacy)})`);
    await scan(pat, 'phone preview, privacy open');

    // --- Waiting: the clinician's name; the clinician hears, sees and is notified.
    await pat.join({ waitFor: 'waiting' });
    const patId = await waitForYouId(pat);
    const waitingText = await text(pat, '#waiting-text');
    assert.match(waitingText, /Dr\. Jansen/, `the waiting room names the clinician: "${waitingText}"`);
    assert.match(await text(pat, '#waiting-contact'), /020 123 45 67/, 'and says whom to call');
    await shot(pat, '2-waiting-phone');
    await scan(pat, 'phone waiting room');
    await clin.waitFor(() => visible(clin, '#waiting-banner-admit'), { what: 'clinician: banner with "let in"', timeout: 20_000 });
    assert.match(await text(clin, '#waiting-banner-text'), /Mevr\. de Vries/);
    const cues = await clin.evaluate(() => ({ title: document.title, chimes: window.__spreekkamer.cues.chimes, notes: window.__notes }));
    assert.notEqual(cues.title, titleBefore, 'the tab title changes');
    assert.match(cues.title, /^\(1\) /, `the tab title counts who waits: "${cues.title}"`);
    assert.ok(cues.chimes >= 1, 'a chime played for the clinician');
    assert.equal(cues.notes.length, 1, 'one desktop notification');
    assert.doesNotMatch(`${cues.notes[0].title} ${cues.notes[0].body}`, /Vries/, 'the notification (it outlives the page) names nobody');
    await shot(clin, '3-clinician-someone-waiting');
    await scan(clin, 'desktop, someone waiting');
    const patChimes = await pat.evaluate(() => window.__spreekkamer.cues.chimes);
    await clin.page.click('#waiting-banner-admit');
    await pat.waitForState('in-call', { timeout: 30_000 });
    const admitted = await pat.evaluate(() => ({ title: document.title, chimes: window.__spreekkamer.cues.chimes }));
    assert.ok(admitted.chimes > patChimes, 'the patient hears a chime when let in');
    assert.match(admitted.title, nl ? /gesprek begint/ : /call is starting/, `the tab title says so: "${admitted.title}"`);
    await clin.waitFor(async () => (await clin.evaluate(() => document.title)) === titleBefore, { what: 'clinician: title back to normal once nobody waits', timeout: 10_000 });
    await clin.waitFor(async () => !(await visible(clin, '#waiting-banner')), { what: 'the banner gone', timeout: 10_000 });

    // --- In the call on the phone: the video is the screen.
    await pat.waitForMediaFrom([await clin.youId()], { timeout: 60_000 });
    await pat.waitFor(async () => {
      l = await pat.evaluate(layout);
      return l.video && l.controls;
    }, { what: 'patient: remote video and controls laid out' });
    const screen = PHONE.width * PHONE.height;
    const videoArea = Math.min(l.video.w, PHONE.width) * Math.min(l.video.h, PHONE.height);
    assert.ok(videoArea / screen >= 0.6, `the remote video covers ${(100 * videoArea / screen).toFixed(0)} % of the phone screen (≥ 60 %)`);
    assert.ok(l.controls.h / PHONE.height <= 0.15, `the control bar takes ${(100 * l.controls.h / PHONE.height).toFixed(1)} % of the height (≤ 15 %)`);
    assert.ok(l.controls.bottom <= PHONE.height + 1 && l.leave.bottom <= PHONE.height + 1, 'controls and Leave on screen');
    assert.ok(l.self && l.self.w < PHONE.width / 2 && l.self.x >= 0 && l.self.bottom <= l.controls.y + 1, `the self view is a small picture over the video (${JSON.stringify(l.self)})`);
    noOverflow(l, 'phone in call');
    const fit = await pat.evaluate(() => document.querySelector('#tiles .tile').dataset.fit);
    assert.equal(fit, 'cover', 'a landscape camera fills the upright phone');
    await shot(pat, '4-call-phone');
    await scan(pat, 'phone in call');

    // Labels say the state and what pressing does.
    const micOn = await text(pat, '#mute-mic');
    await pat.page.click('#mute-mic');
    const micOff = await text(pat, '#mute-mic');
    assert.equal(micOn, nl ? 'Microfoon aan Zet uit' : 'Mic on Turn off');
    assert.equal(micOff, nl ? 'Microfoon uit Zet aan' : 'Mic off Turn on');
    await clin.waitFor(() => clin.evaluate((id) => !document.querySelector(`.tile[data-participant-id="${id}"] .tile-mic-off`).hidden, patId), { what: 'the clinician sees the patient muted' });
    await pat.page.click('#mute-mic');
    assert.equal(await text(pat, '#mute-mic'), micOn);

    // Quality per tile, and the clock.
    await pat.waitFor(async () => (await pat.evaluate(() => Object.values(window.__spreekkamer.quality)[0])) === 'good', { what: 'patient: connection quality measured as good on loopback', timeout: 20_000 });
    assert.ok(await visible(pat, '#tiles .tile .tile-quality'), 'the quality shows on the tile');
    const clock1 = await text(pat, '#call-timer');
    assert.match(clock1, /^\d+:\d\d$/);
    await pat.waitFor(async () => (await text(pat, '#call-timer')) !== clock1, { what: 'the call clock runs', timeout: 5_000 });

    // Chat as a sheet over the video, with an unread badge.
    await clin.evaluate(() => {
      document.getElementById('chat-input').value = 'Hoe gaat het met de wond?';
      document.getElementById('chat-send').click();
    });
    await pat.waitFor(() => visible(pat, '#chat-unread'), { what: 'patient: unread badge on Chat', timeout: 30_000 });
    assert.equal(await text(pat, '#chat-unread'), '1');
    assert.equal(await visible(pat, '#chat-panel'), false, 'the chat does not cover the video until asked for');
    await pat.page.click('#chat-toggle');
    assert.ok(await visible(pat, '#chat-log .chat-message'), 'the chat sheet shows the message');
    assert.equal(await visible(pat, '#chat-unread'), false, 'read: the badge is gone');
    l = await pat.evaluate(layout);
    assert.ok(l.side && l.side.bottom <= l.controls.y + 1 && l.side.y >= 0, 'the sheet sits over the video, above the controls');
    noOverflow(l, 'phone chat sheet');
    await shot(pat, '5-chat-sheet-phone');
    await scan(pat, 'phone chat sheet');
    await pat.page.click('#sheet-close');
    assert.equal(await visible(pat, '#chat-panel'), false, 'the sheet closes');

    // The safety code, behind one action, in a dialog.
    await pat.page.click('#more-toggle');
    l = await pat.evaluate(() => {
      const b = document.getElementById('more-menu').getBoundingClientRect();
      return { left: b.left, right: b.right, top: b.top, bottom: b.bottom };
    });
    assert.ok(l.left >= 0 && l.right <= PHONE.width && l.top >= 0, `the menu fits the phone screen (${JSON.stringify(l)})`);
    await shot(pat, '6-menu-phone');
    await pat.page.click('#safety-open');
    const clinId = await clin.youId();
    await pat.waitFor(() => visible(pat, `#safety-list .safety-row[data-participant-id="${clinId}"] .safety-code`), { what: 'the safety dialog shows the code with the clinician' });
    const shown = await text(pat, `#safety-list .safety-row[data-participant-id="${clinId}"] .safety-code`);
    const own = await pat.evaluate((id) => window.__spreekkamer.e2ee.safetyCode(id).digits, clinId);
    assert.equal(shown, own);
    await shot(pat, '7-safety-dialog-phone');
    await scan(pat, 'phone safety dialog');
    await pat.page.click('#safety-close');

    // 320 px wide, and 200 % zoom of the desktop (640×400 CSS px): nothing sideways, controls reachable.
    await pat.page.setViewportSize({ width: 320, height: 640 });
    await pat.waitFor(async () => (await pat.evaluate(layout)).vw === 320, { what: 'resized to 320' });
    l = await pat.evaluate(layout);
    noOverflow(l, 'phone at 320 px in call');
    assert.ok(l.leave && l.leave.right <= 320 && l.mic && l.mic.x >= 0, 'all controls within 320 px');
    await shot(pat, '8-call-320');
    await pat.page.setViewportSize(PHONE);
    await clin.page.setViewportSize({ width: 640, height: 400 });
    await clin.waitFor(async () => (await clin.evaluate(layout)).vw === 640, { what: 'zoomed' });
    l = await clin.evaluate(layout);
    noOverflow(l, 'desktop at 200 % zoom');
    assert.ok(l.controls && l.controls.bottom <= 401 && l.video, 'at 200 % the video and the controls are on screen');
    await shot(clin, '9-desktop-200-percent');
    await clin.page.setViewportSize(DESKTOP);

    // End for everyone: confirmed, the safe choice first; then a calm end page.
    await clin.page.click('#more-toggle');
    await clin.page.click('#end-consult');
    assert.ok(await visible(clin, '#confirm-dialog'), 'ending asks first');
    assert.equal(await clin.evaluate(() => document.activeElement.id), 'confirm-cancel', 'the safe choice has the focus');
    await shot(clin, '10-confirm-end');
    await scan(clin, 'desktop confirm end');
    await clin.page.click('#confirm-cancel');
    await new Promise((r) => setTimeout(r, 1_500));
    assert.equal(await pat.state(), 'in-call', 'cancelled: the call goes on');
    await clin.page.click('#more-toggle');
    await clin.page.click('#end-consult');
    await clin.page.click('#confirm-ok');
    await pat.waitForState('left', { timeout: 20_000 });
    const end = await pat.evaluate(() => ({
      reason: document.getElementById('left-view').dataset.reason,
      title: document.getElementById('left-title').textContent,
      duration: document.getElementById('left-duration').textContent,
      contact: document.getElementById('left-contact').textContent,
      errorShown: !document.getElementById('error').hidden,
      rejoin: !document.getElementById('rejoin').hidden,
    }));
    assert.equal(end.reason, 'ended');
    assert.equal(end.errorShown, false, 'the end is not shown as an error');
    assert.equal(end.rejoin, false, 'no "join again" into an ended consult');
    assert.match(end.title, nl ? /afgelopen/ : /ended/);
    assert.match(end.duration, /\d+ min/);
    assert.match(end.contact, /020 123 45 67/);
    await shot(pat, '11-ended-phone');
    await scan(pat, 'phone ended');
    await clin.waitForState('left', { timeout: 20_000 });
    assert.equal(await clin.evaluate(() => document.getElementById('left-view').dataset.reason), 'ended-by-me');
    assert.equal(await visible(clin, '#notice'), false, 'no stale banner on the clinician\'s end page');

    const bad = axeResults.filter((r) => r.blocking.length);
    assert.equal(bad.length, 0, `axe: serious/critical violations\n${bad.map((r) => `${r.label}:\n${formatViolations(r.blocking)}`).join('\n')}`);
    sc.log(`screenshots in ${shots}`);
  });
}

scenario('bad links are explained before Join, in the person\'s language, with whom to contact', { timeout: 180_000 }, async (sc) => {
  const { signHs, claims, nowSecs } = await import('./lib/jwt.mjs');
  const { linkFor } = await import('./lib/server.mjs');
  const server = await sc.startServer({ args: ['--contact', CONTACT] });
  const consult = `badlink-${Date.now().toString(36)}`;
  const cases = [
    ['expired', signHs(claims({ consult, exp: nowSecs() - 600, iat: nowSecs() - 7200 }), server.secret), 'token_expired', /verlopen/],
    ['not yet valid', signHs(claims({ consult, nbf: nowSecs() + 3600 }), server.secret), 'token_not_yet_valid', /werkt nog niet/],
    ['forged', signHs(claims({ consult }), 'not-the-server-secret'), 'token_bad_signature', /niet geldig/],
  ];
  const p = await sc.chromium('patient', { lang: 'nl-NL', viewport: PHONE, deviceScaleFactor: 3, phone: true });
  for (const [label, token, code, words] of cases) {
    await p.page.goto('about:blank'); // a new load, not a same-page hash change
    await p.open(linkFor(server, token));
    await p.waitFor(async () => (await p.errorCode()) === code, { what: `${label}: ${code} shown without pressing Join`, timeout: 20_000 });
    const s = await p.evaluate(() => ({
      text: document.getElementById('error-text').textContent,
      contact: document.getElementById('error-contact').textContent,
      greeting: document.getElementById('link-status').textContent,
    }));
    assert.match(s.text, words, `${label}: the reason in Dutch`);
    assert.match(s.contact, /020 123 45 67/, `${label}: whom to contact`);
    assert.equal(s.greeting, '', `${label}: no greeting by name for a refused link`);
    // The camera may still be opening when the refusal arrives: it must be let go, not kept.
    await p.waitFor(() => p.evaluate(() => !document.getElementById('local-video').srcObject), { what: `${label}: the camera is released`, timeout: 10_000 });
    const l = await p.evaluate(layout);
    noOverflow(l, `${label} error page`);
  }
  await p.page.screenshot({ path: path.join(outDir, 'phone-bad-link.png') });
  // No join was ever attempted (a refused join is audited as token_rejected); each refused check is audited as such.
  const audit = server.auditEvents();
  assert.deepEqual(audit.filter((e) => e.event === 'join' || e.event === 'token_rejected'), [], 'a check is not a join');
  assert.ok(audit.filter((e) => e.event === 'link_checked').length >= cases.length, `every refused check audited (${JSON.stringify(audit.map((e) => e.event))})`);
});
