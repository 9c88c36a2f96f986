// Issue 4, WCAG 2.1 AA: an axe-core scan of every page state — landing page,
// join page (preview), waiting room, in the call (clinician with the lobby
// panel, and patient), the "you left" page and an error page (expired link)
// — in Dutch and in English. No violation of impact serious or critical is
// allowed; every state is scanned before the test fails, and the failure
// lists each state's violations.

import { assert, axeScan, formatViolations, scenario } from './lib/index.mjs';
import {
  clickLobby,
  createInviteInUi,
  inviteToken,
  newLinkSecret,
  deepLink,
  openAndJoin,
  openExpectingError,
  waitForLobbyEntry,
  waitForYouId,
} from './lib/ehr.mjs';

for (const lang of ['nl-NL', 'en-US']) {
  const short = lang.slice(0, 2);
  scenario(`accessibility (${lang}): no serious or critical axe violation on any page`, { timeout: 240_000 }, async (sc) => {
    const server = await sc.startServer({ args: ['--waiting-room'] });
    const results = [];
    const scan = async (p, label, expectState) => {
      if (expectState) {
        const s = await p.state();
        assert.equal(s, expectState, `${label}: page in state ${s}, expected ${expectState}`);
      }
      const htmlLang = await p.evaluate(() => document.documentElement.lang);
      assert.ok(htmlLang.startsWith(short), `${label}: <html lang=${htmlLang}>, expected ${short}`);
      const { blocking, violations } = await axeScan(p);
      results.push({ label, blocking, violations });
      sc.log(`${label}: ${violations.length} violations, ${blocking.length} serious/critical`);
    };

    // Landing page.
    const visitor = await sc.chromium('visitor', { lang });
    await visitor.page.goto(`${server.url}/`, { waitUntil: 'load' });
    await scan(visitor, 'landing page');

    // Clinician: join page (preview), then the call with the lobby panel.
    const clinicianLink = await server.link({ consult: `a11y-${short}`, role: 'clinician', name: 'Dr. Smit', extraArgs: ['--with-link-secret'] });
    const clinician = await sc.chromium('clinician', { lang });
    await clinician.open(clinicianLink);
    await scan(clinician, 'join page (preview, clinician)', 'preview');
    await clinician.join();
    const clinicianId = await waitForYouId(clinician);
    const invite = await createInviteInUi(clinician, { role: 'patient' });

    // Patient: preview, waiting room; the clinician's call view with someone waiting.
    const patient = await sc.chromium('patient', { lang });
    await patient.open(invite);
    await scan(patient, 'join page (preview, patient)', 'preview');
    await patient.join({ waitFor: 'waiting' });
    await scan(patient, 'waiting room', 'waiting');
    const patientId = await waitForYouId(patient);
    await waitForLobbyEntry(clinician, patientId);
    await scan(clinician, 'in call (clinician, someone waiting)', 'in-call');

    // Admitted: both in the call, with each other's tile.
    await clickLobby(clinician, patientId, 'admit');
    await patient.waitForState('in-call');
    await patient.waitForMediaFrom([clinicianId]);
    await clinician.waitForMediaFrom([patientId]);
    await scan(patient, 'in call (patient)', 'in-call');
    await scan(clinician, 'in call (clinician, with patient)', 'in-call');

    // The patient leaves.
    await patient.page.click('#leave');
    await patient.waitForState('left');
    await scan(patient, 'left page', 'left');

    // An expired link: the error page.
    const now = Math.floor(Date.now() / 1000);
    const expired = inviteToken(server, { iss: 'spreekkamer', aud: 'spreekkamer', consult: `a11y-${short}`, exp: now - 3600, nbf: now - 7200, iat: now - 7200 });
    const late = await sc.chromium('late', { lang });
    assert.equal(await openExpectingError(late, deepLink(server, expired, newLinkSecret())), 'token_expired');
    await scan(late, 'error page (expired link)', 'error');

    // No token at all: the other error page a person can reach.
    const bare = await sc.chromium('bare', { lang });
    await bare.open(`${server.url}/c`);
    assert.equal(await bare.waitForError(), 'no_token');
    await scan(bare, 'error page (no token)', 'error');

    const bad = results.filter((r) => r.blocking.length);
    assert.equal(
      bad.length,
      0,
      `serious/critical axe violations (${lang}):\n${bad.map((r) => `${r.label}:\n${formatViolations(r.blocking)}`).join('\n')}`,
    );
  });
}
