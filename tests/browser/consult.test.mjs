// Issue 2, end to end in headless Chromium: the real release binary, links
// minted by the real `spreekkamer link`, people joining through the real web
// client. Proves media flows both ways through our SFU (frames decoded and
// still rising, audio received), survives a participant joining and leaving
// mid-call, refuses bad tokens visibly without leaking media, keeps tokens
// out of logs and URLs, and shuts down gracefully with people in the call.

import crypto from 'node:crypto';
import {
  assert,
  assertLocationClean,
  assertNoInboundMedia,
  assertTokensNotLogged,
  claims,
  decodeJwt,
  joinOneToOne,
  linkFor,
  metric,
  nowSecs,
  randomSecret,
  scenario,
  signHs,
  signNone,
  tokenFromLink,
  waitForTiles,
  waitUntil,
} from './lib/index.mjs';

const newConsult = () => `consult-${crypto.randomBytes(6).toString('hex')}`;

scenario('clinician and patient see and hear each other; a guest joins and leaves mid-call', async (sc) => {
  // Direct join (issue 2); the waiting room (on by default) has its own tests in ehr.test.mjs.
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = newConsult();
  const names = { clinician: 'Dr. Jansen', patient: 'Mevr. de Vries', guest: 'Tolk Bakker' };
  const links = {};
  for (const role of Object.keys(names)) links[role] = await server.link({ consult, role, name: names[role] });
  const tokens = Object.fromEntries(Object.entries(links).map(([r, l]) => [r, tokenFromLink(l)]));
  for (const [role, token] of Object.entries(tokens)) {
    const { header, payload } = decodeJwt(token);
    assert.equal(header.alg, 'HS256');
    assert.equal(payload.role, role);
    assert.equal(payload.consult, consult);
    assert.equal(payload.name, names[role]);
    assert.ok(new URL(links[role]).search === '', `spreekkamer link put a query string in ${links[role]}`);
  }
  const before = await server.metrics();

  // --- clinician and patient ---------------------------------------------------
  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient');
  await Promise.all([clin.open(links.clinician), pat.open(links.patient)]);
  await assertLocationClean(clin, tokens.clinician);
  await assertLocationClean(pat, tokens.patient);
  assert.equal(await clin.state(), 'preview');
  assert.equal(await pat.state(), 'preview');

  const t0 = Date.now();
  const [clinId, patId] = await joinOneToOne(clin, pat);
  sc.log(`clinician + patient: both decode each other ${Date.now() - t0} ms after the first join click`);
  await waitForTiles(clin, { [patId]: names.patient });
  await waitForTiles(pat, { [clinId]: names.clinician });

  let during;
  await waitUntil(
    async () => {
      during = await server.metrics();
      return (
        metric(during, 'spreekkamer_participants') >= 2 &&
        metric(during, 'spreekkamer_media_packets_in_total') > (metric(before, 'spreekkamer_media_packets_in_total') ?? 0) &&
        metric(during, 'spreekkamer_media_packets_out_total') > (metric(before, 'spreekkamer_media_packets_out_total') ?? 0) &&
        metric(during, 'spreekkamer_joins_accepted_total') >= 2
      );
    },
    {
      timeout: 20_000,
      what: '/metrics: participants >= 2, media packets in/out counted, 2 accepted joins',
      describe: () => JSON.stringify(Object.fromEntries([...(during || new Map())].filter(([k]) => /participants|packets|joins|consults/.test(k)))),
    },
  );

  // --- mute state reaches the other side (protocol `mute`) -------------------------
  const remoteFlags = (p, id) =>
    p.evaluate((pid) => {
      const x = window.__spreekkamer.participants.get(pid);
      return x ? { audio: x.audio, video: x.video } : null;
    }, id);
  // The toggle's own state (its words say it; data-on is what they are rendered from).
  const isOn = (p, sel) => p.evaluate((s) => document.querySelector(s)?.dataset.on, sel);
  await clin.page.click('#mute-mic');
  await clin.waitFor(async () => (await isOn(clin, '#mute-mic')) === 'false', { what: 'clinician: #mute-mic data-on=false', timeout: 10_000 });
  await pat.waitFor(async () => (await remoteFlags(pat, clinId))?.audio === false, {
    what: "patient: the clinician's participant.audio === false after #mute-mic",
    timeout: 15_000,
  });
  await clin.page.click('#mute-mic');
  await pat.waitFor(async () => (await remoteFlags(pat, clinId))?.audio === true, {
    what: "patient: the clinician's participant.audio === true after unmuting",
    timeout: 15_000,
  });

  // --- a guest joins mid-call -----------------------------------------------------
  const guest = await sc.chromium('guest');
  await guest.open(links.guest);
  await assertLocationClean(guest, tokens.guest);
  const tGuest = Date.now();
  await guest.join();
  const guestId = await guest.youId();
  assert.ok(guestId && guestId !== clinId && guestId !== patId, `guest id ${guestId}`);
  await Promise.all([
    clin.waitForMediaFrom([patId, guestId]),
    pat.waitForMediaFrom([clinId, guestId]),
    guest.waitForMediaFrom([clinId, patId]),
  ]);
  sc.log(`three-way call: everyone decodes everyone ${Date.now() - tGuest} ms after the guest's join click`);
  await waitForTiles(clin, { [patId]: names.patient, [guestId]: names.guest });
  await waitForTiles(pat, { [clinId]: names.clinician, [guestId]: names.guest });
  await waitForTiles(guest, { [clinId]: names.clinician, [patId]: names.patient });
  await waitUntil(async () => metric(await server.metrics(), 'spreekkamer_participants') === 3, {
    timeout: 10_000,
    what: '/metrics spreekkamer_participants == 3',
  });

  // --- ... and leaves -------------------------------------------------------------
  await guest.page.click('#leave');
  await guest.waitForState('left', { timeout: 20_000 });
  await waitForTiles(clin, { [patId]: names.patient });
  await waitForTiles(pat, { [clinId]: names.clinician });
  // The remaining two keep decoding each other after the renegotiation.
  const [c1, p1] = await Promise.all([clin.media(), pat.media()]);
  await Promise.all([clin.waitForRising([patId], c1), pat.waitForRising([clinId], p1)]);
  assert.equal(await clin.state(), 'in-call');
  assert.equal(await pat.state(), 'in-call');
  await waitUntil(async () => metric(await server.metrics(), 'spreekkamer_participants') === 2, {
    timeout: 10_000,
    what: '/metrics spreekkamer_participants back to 2 after the guest left',
  });

  // --- graceful shutdown with people in the call ---------------------------------------
  const stop = await sc.stopServer(server, { timeoutMs: 5_000 });
  assert.ok(!stop.killed, `the server did not exit within 5 s of SIGTERM: ${JSON.stringify(stop)}`);
  assert.equal(stop.code, 0, `exit after SIGTERM: ${JSON.stringify(stop)}`);
  sc.log(`SIGTERM → exit 0 in ${stop.ms} ms with two people in the call`);
  for (const p of [clin, pat]) {
    await p.waitFor(async () => (await p.state()) !== 'in-call', {
      timeout: 15_000,
      what: `${p.name}: told that the server stopped (body[data-state] leaves in-call)`,
    });
  }

  assertTokensNotLogged(server, tokens);
});

scenario('expired, forged and unsigned tokens get a clear error and no media', async (sc) => {
  // Direct join (issue 2); the waiting room (on by default) has its own tests in ehr.test.mjs.
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = newConsult();
  // Someone is in the consult, so there is media a bad token could try to get.
  const clinLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' });
  const clin = await sc.chromium('clinician');
  await clin.open(clinLink);
  await clin.join();

  const now = nowSecs();
  const cases = [
    {
      what: 'expired',
      code: 'token_expired',
      token: signHs(claims({ consult, role: 'patient', name: 'Te Laat', iat: now - 7200, exp: now - 600 }), server.secret),
    },
    {
      what: 'forged',
      code: 'token_bad_signature',
      token: signHs(claims({ consult, role: 'patient', name: 'Nep Patiënt' }), randomSecret()),
    },
    {
      what: 'alg-none',
      code: 'token_bad_algorithm',
      token: signNone(claims({ consult, role: 'clinician', name: 'Geen Handtekening' })),
    },
  ];
  for (const c of cases) {
    const p = await sc.chromium(c.what);
    await p.open(linkFor(server, c.token));
    await assertLocationClean(p, c.token);
    // The token is checked by the server at join; a client may also catch it earlier.
    if ((await p.state()) !== 'error') await p.join({ waitFor: null });
    const code = await p.waitForError();
    assert.equal(code, c.code, `${c.what} token: #error[data-code]`);
    await p.waitForState('error', { timeout: 10_000 });
    const text = (await p.snapshot()).error.text;
    assert.ok(text.length > 10, `${c.what} token: the error needs a plain-language message, got "${text}"`);
    await assertNoInboundMedia(p);
    await p.close();
  }

  // The clinician never saw the refused people, and the server is fine.
  await waitForTiles(clin, {});
  assert.equal(await clin.state(), 'in-call');
  assert.ok(await server.healthy(), '/healthz after the refused joins');
  const m = await server.metrics();
  // Refused by the link check before Join (the page's first word with the server), or at join.
  for (const c of cases) {
    const counted = (metric(m, 'spreekkamer_link_checks_total', { outcome: c.code }) || 0) + (metric(m, 'spreekkamer_joins_rejected_total', { reason: c.code }) || 0);
    assert.ok(counted >= 1, `the server should count the refused ${c.what} token (link_checks_total / joins_rejected_total, ${c.code})`);
  }
  assert.equal(metric(m, 'spreekkamer_participants'), 1, 'only the clinician is in a call');

  const stop = await sc.stopServer(server, { timeoutMs: 5_000 });
  assert.ok(!stop.killed && stop.code === 0, `graceful shutdown: ${JSON.stringify(stop)}`);
  assertTokensNotLogged(server, {
    clinician: tokenFromLink(clinLink),
    ...Object.fromEntries(cases.map((c) => [c.what, c.token])),
  });
});
