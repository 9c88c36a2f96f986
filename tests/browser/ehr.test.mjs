// Issue 4 in headless Chromium: a clinician launched from a (test) EHR with
// an asymmetrically signed deep link (keys from a JWKS served on loopback),
// a patient invite made in the clinician's page, the waiting room enforced by
// the server, admit / deny / remove, and the Dutch error page for an expired
// invite.

import {
  assert,
  assertNoInboundMedia,
  assertTokensNotLogged,
  scenario,
  waitForTiles,
} from './lib/index.mjs';
import {
  clickLobby,
  createInviteInUi,
  deepLink,
  ehrClaims,
  ehrServeArgs,
  ehrSign,
  inviteToken,
  makeEhrKeys,
  newLinkSecret,
  openAndJoin,
  openExpectingError,
  startJwksServer,
  waitForAudit,
  waitForLobbyEntry,
  waitForYouId,
} from './lib/ehr.mjs';
import { deriveLinkSecret } from '../../web/e2ee/handshake.js';
import { after, before } from 'node:test';

let keys;
let jwks;

before(async () => {
  keys = makeEhrKeys();
  jwks = await startJwksServer([keys.rsa, keys.ed, keys.ec]);
});

after(async () => {
  await jwks?.close();
});

/** A waiting person: no peer connection media, no roster, no tiles, for `holdMs`. */
async function assertLearnsNothing(p, holdMs = 3_000) {
  await assertNoInboundMedia(p, { holdMs });
  const s = await p.snapshot();
  assert.deepEqual(s.participants, [], `${p.name} (waiting) knows participants: ${JSON.stringify(s.participants)}`);
  assert.deepEqual(s.tiles, [], `${p.name} (waiting) shows tiles: ${JSON.stringify(s.tiles)}`);
}

scenario('EHR launch (RS256 via JWKS): invite in the UI, waiting room, admit, both see each other, remove, invite stops working', { timeout: 300_000 }, async (sc) => {
  const server = await sc.startServer({ args: ehrServeArgs(jwks) });
  const consult = `ehr-${Date.now().toString(36)}`;
  const k = newLinkSecret();
  const clinicianSub = 'ehr-user-4711';
  const clinicianToken = ehrSign(keys.rsa, ehrClaims({ consult, role: 'clinician', name: 'Dr. Jansen', sub: clinicianSub }));
  const clinicianLink = deepLink(server, clinicianToken, k);

  const clinician = await sc.chromium('clinician');
  await openAndJoin(clinician, clinicianLink, { state: 'in-call' });
  const clinicianId = await waitForYouId(clinician);
  // The server accepted the RS256 token through the JWKS and audited who it was.
  const accepted = await waitForAudit(server, (e) => e.event === 'token_accepted' && e.actor && e.actor.sub === clinicianSub, {
    what: 'token_accepted for the clinician',
  });
  assert.equal(accepted.actor.role, 'clinician');
  assert.equal(accepted.consult, consult);

  // The clinician makes a patient invite in the page.
  const invite = await createInviteInUi(clinician, { role: 'patient' });
  sc.log(`invite link: ${invite.replace(/#.*/, '#…')}`);
  const inviteUrl = new URL(invite);
  assert.equal(`${inviteUrl.origin}${inviteUrl.pathname}`, `${server.url}/c`, 'the invite has the one deep-link shape');
  assert.equal(inviteUrl.search, '', 'no query string in an invite');
  const frag = new URLSearchParams(inviteUrl.hash.slice(1));
  // The invite carries, in the fragment, the patient's secret derived by the clinician's page from
  // the consult's master secret (never the master itself: docs/CRYPTO.md, "Link secrets").
  assert.equal(frag.get('kl'), 'patient');
  const patientSecret = await deriveLinkSecret(k, consult, 'patient');
  assert.equal(frag.get('k'), patientSecret, 'the invite carries the secret derived for label patient');
  const inviteJwt = frag.get('t');
  const payload = JSON.parse(Buffer.from(inviteJwt.split('.')[1], 'base64url').toString('utf8'));
  assert.equal(payload.role, 'patient');
  assert.equal(payload.consult, consult);
  assert.ok(payload.jti, 'an invite has a jti (revocation)');
  assert.ok(!JSON.stringify(payload).includes('Jansen'), 'the invite holds no personal data of the clinician');
  await waitForAudit(server, (e) => e.event === 'invite_created' && e.actor?.sub === clinicianSub, { what: 'invite_created audited' });

  // The patient opens it and waits.
  const patient = await sc.chromium('patient');
  await openAndJoin(patient, invite, { state: 'waiting' });
  const patientId = await waitForYouId(patient);
  await assertLearnsNothing(patient);
  await waitForAudit(server, (e) => e.event === 'waiting_room_entered' && e.participant === patientId, { what: 'waiting_room_entered audited' });

  // The clinician sees the entry (name + role) and admits.
  const entryText = await waitForLobbyEntry(clinician, patientId);
  assert.match(entryText, /Patient|patiënt/i, `the lobby entry names the patient: ${entryText}`);
  await clickLobby(clinician, patientId, 'admit');
  await patient.waitForState('in-call');
  await waitForTiles(clinician, { [patientId]: 'Patient' });
  await waitForTiles(patient, { [clinicianId]: 'Dr. Jansen' });
  await clinician.waitForMediaFrom([patientId]);
  await patient.waitForMediaFrom([clinicianId]);
  await waitForAudit(server, (e) => e.event === 'admit' && e.target === patientId && e.outcome === 'success', { what: 'admit audited' });
  await clinician.waitFor(() => clinician.evaluate(() => !document.querySelector('#lobby-list .lobby-entry')), {
    what: 'the admitted patient gone from the lobby list',
    timeout: 10_000,
  });
  assert.ok(jwks.requests >= 1, 'the server fetched the EHR keys from the JWKS URL');

  // Removal: the patient is out, and the same invite does not work again.
  await clinician.page.click(`.tile[data-participant-id="${patientId}"] .remove`);
  await clinician.page.click('#confirm-ok'); // removing is confirmed
  assert.equal(await patient.waitForError(), 'removed', 'the removed patient is told so');
  await waitForTiles(clinician, {});
  await waitForAudit(server, (e) => e.event === 'remove' && e.target === patientId && e.outcome === 'success', { what: 'remove audited' });
  const again = await sc.chromium('patient-again');
  assert.equal(await openExpectingError(again, invite), 'token_revoked', 'the removed patient cannot return with the same invite');
  await assertNoInboundMedia(again, { holdMs: 1_000 });

  await sc.stopServer(server);
  assertTokensNotLogged(server, { clinician: clinicianToken, invite: inviteJwt });
  for (const secret of [k, patientSecret]) {
    assert.ok(!server.auditText().includes(secret) && !server.logs().includes(secret), 'a link secret is in a log');
  }
});

scenario('EHR launch (EdDSA): a denied patient never gets media, is told clearly, and cannot come back', { timeout: 240_000 }, async (sc) => {
  const server = await sc.startServer({ args: ehrServeArgs(jwks) });
  const consult = `ehr-ed-${Date.now().toString(36)}`;
  const k = newLinkSecret();
  const clinicianToken = ehrSign(keys.ed, ehrClaims({ consult, role: 'clinician', name: 'Dr. de Vries', sub: 'ehr-user-815' }));
  const clinician = await sc.chromium('clinician');
  await openAndJoin(clinician, deepLink(server, clinicianToken, k), { state: 'in-call' });
  await waitForYouId(clinician);

  const invite = await createInviteInUi(clinician, { role: 'guest' });
  const patient = await sc.chromium('guest');
  await openAndJoin(patient, invite, { state: 'waiting' });
  const guestId = await waitForYouId(patient);
  await waitForLobbyEntry(clinician, guestId);
  await assertLearnsNothing(patient, 2_000);

  await clickLobby(clinician, guestId, 'deny');
  assert.equal(await patient.waitForError(), 'denied', 'the denied person sees the "not admitted" message');
  const text = await patient.evaluate(() => document.getElementById('error').textContent.trim());
  assert.ok(text.length > 20, `a plain-language message is shown: "${text}"`);
  await assertNoInboundMedia(patient, { holdMs: 2_000 });
  const video = (await patient.media()).inbound.filter((i) => i.kind === 'video');
  assert.equal(video.reduce((n, i) => n + i.packetsReceived + (i.framesDecoded || 0), 0), 0, `no inbound video: ${JSON.stringify(video)}`);
  await waitForAudit(server, (e) => e.event === 'deny' && e.target === guestId && e.outcome === 'success', { what: 'deny audited' });
  // Nobody was ever shown to the clinician as in the call.
  await waitForTiles(clinician, {});

  const again = await sc.chromium('guest-again');
  assert.equal(await openExpectingError(again, invite), 'token_revoked', 'a denied invite cannot be used again');
});

scenario('an expired invite shows the Dutch error page to a Dutch browser', { timeout: 120_000 }, async (sc) => {
  const server = await sc.startServer({ args: ehrServeArgs(jwks) });
  const now = Math.floor(Date.now() / 1000);
  const expired = inviteToken(server, { consult: 'ehr-expired', exp: now - 3600, iat: now - 7200, nbf: now - 7200 });
  const p = await sc.chromium('patient-nl', { lang: 'nl-NL' });
  const code = await openExpectingError(p, deepLink(server, expired, newLinkSecret()));
  assert.equal(code, 'token_expired');
  const page = await p.evaluate(() => ({
    lang: document.documentElement.lang,
    state: document.body.dataset.state,
    code: document.getElementById('error').dataset.code,
    text: document.getElementById('error').textContent.replace(/\s+/g, ' ').trim(),
  }));
  assert.equal(page.state, 'error');
  assert.equal(page.code, 'token_expired');
  assert.match(page.lang, /^nl/, `the page is in Dutch (html lang=${page.lang})`);
  assert.match(page.text, /verlopen/i, `the Dutch text says the link has expired: "${page.text}"`);
  assert.match(page.text, /zorgverlener/i, `and what to do (ask the care provider): "${page.text}"`);
  assert.doesNotMatch(page.text, /\bexpired\b|\blink has\b/i, `no English on the Dutch page: "${page.text}"`);
  await assertNoInboundMedia(p, { holdMs: 1_000 });
  // Refused by the link check before Join (or, had Join been pressed first, by the join): audited either way.
  await waitForAudit(server, (e) => (e.event === 'link_checked' || e.event === 'token_rejected') && e.reason === 'token_expired', { what: 'the expired link audited as refused' });
  // The same token for an English browser: English text, same code.
  const en = await sc.chromium('patient-en', { lang: 'en-GB' });
  assert.equal(await openExpectingError(en, deepLink(server, expired)), 'token_expired');
  const enText = await en.evaluate(() => document.getElementById('error').textContent.replace(/\s+/g, ' ').trim());
  assert.match(enText, /expired/i, `English text for an English browser: "${enText}"`);
});
