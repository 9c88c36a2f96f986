// The test-your-setup page (/test): its markup follows the page rules, and
// the connection test tries UDP, then TCP, then TURN, as the preview does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
const WEB = process.env.WEB_DIR || new URL('../../web/', import.meta.url).pathname;
globalThis.navigator = { languages: ['nl-NL'] };
const { DICTIONARIES } = await import(WEB + 'i18n.js');
const { checkConnection, formatPorts, failedText } = await import(WEB + 'connectivity.js');
const { mediaHelpKey } = await import(WEB + 'media.js');

const html = fs.readFileSync(WEB + 'test.html', 'utf8');
const script = fs.readFileSync(WEB + 'test.js', 'utf8');

test('test.html: every data-i18n key exists in both languages, no inline script or style', () => {
  const keys = [...html.matchAll(/data-i18n="([^"]+)"/g), ...html.matchAll(/data-i18n-attr="[^":]+:([^"]+)"/g)].map((m) => m[1]);
  assert.ok(keys.length > 10);
  for (const key of keys) for (const lang of ['nl', 'en']) assert.ok(key in DICTIONARIES[lang], `${lang}: ${key}`);
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'inline script');
  assert.doesNotMatch(html, /\sstyle=|<style/, 'inline style');
  assert.doesNotMatch(html, /\son[a-z]+=/, 'inline handler');
  assert.match(html, /<script type="module" src="\/test.js"><\/script>/, 'absolute path: the page is also served at /test/');
  assert.match(html, /id="lang-switch"/);
});

test('test.js: every text key it builds exists in both languages', () => {
  const built = [];
  for (const r of ['checking', 'waiting', 'ok', 'failed', 'unknown']) built.push(`setup.badge.${r}`);
  for (const r of ['checking', 'ok', 'failed']) built.push(`setup.camera.${r}`);
  for (const r of ['checking', 'waiting', 'ok', 'failed']) built.push(`setup.mic.${r}`);
  for (const r of ['waiting', 'played', 'ok', 'failed']) built.push(`setup.speaker.${r}`);
  for (const r of ['pending', 'ok', 'problems', 'incomplete']) built.push(`setup.summary.${r}`);
  for (const r of ['ok', 'problems']) built.push(`setup.summaryNext.${r}`);
  for (const r of ['checking', 'udp', 'tcp', 'relay', 'failed', 'failedNoPorts']) built.push(`connectivity.${r}`);
  const literal = [...script.matchAll(/t\('([a-zA-Z.]+)'/g)].map((m) => m[1]);
  for (const key of [...built, ...literal]) for (const lang of ['nl', 'en']) assert.ok(DICTIONARIES[lang][key], `${lang}: ${key}`);
  assert.equal(DICTIONARIES.nl['setup.summary.ok'], 'Alles werkt. U bent klaar voor uw videoconsult.');
});

test('the landing page links to /test', () => {
  const landing = fs.readFileSync(WEB + 'landing.html', 'utf8');
  assert.match(landing, /<a [^>]*href="\/test"[^>]*data-i18n="setup.landingLink"/);
});

/** A stand-in for probeConnectivity: answers per transport, records the order. */
function fakeProbe(answers) {
  const calls = [];
  const probe = async ({ token, transport }) => {
    calls.push({ token, transport });
    return { ports: { udp: [50000], tcp: [50443] }, turn: false, relay: false, ...answers[transport] };
  };
  return { probe, calls };
}

test('checkConnection: UDP first, and no further check once it connects; no token is sent', async () => {
  const { probe, calls } = fakeProbe({ udp: { outcome: 'connected', ms: 40 } });
  assert.deepEqual(await checkConnection({ probe }), { result: 'udp', ports: { udp: [50000], tcp: [50443] } });
  assert.deepEqual(calls, [{ token: undefined, transport: 'udp' }]);
});

test('checkConnection: TCP when UDP does not connect, then TURN when the server offers it', async () => {
  let f = fakeProbe({ udp: { outcome: 'not-connected', reason: 'timeout' }, tcp: { outcome: 'connected' } });
  assert.equal((await checkConnection({ probe: f.probe })).result, 'tcp');
  assert.deepEqual(f.calls.map((c) => c.transport), ['udp', 'tcp']);

  f = fakeProbe({ udp: { outcome: 'not-connected', reason: 'failed', turn: true }, tcp: { outcome: 'not-connected', reason: 'failed' }, relay: { outcome: 'connected' } });
  assert.equal((await checkConnection({ probe: f.probe })).result, 'relay');
  assert.deepEqual(f.calls.map((c) => c.transport), ['udp', 'tcp', 'relay']);

  f = fakeProbe({ udp: { outcome: 'not-connected', reason: 'failed' }, tcp: { outcome: 'not-connected', reason: 'failed' } });
  const failed = await checkConnection({ probe: f.probe });
  assert.equal(failed.result, 'failed');
  assert.deepEqual(f.calls.map((c) => c.transport), ['udp', 'tcp'], 'no relay check without TURN');
  assert.match(failedText((k, p = {}) => DICTIONARIES.nl[k].replace(/\{(\w+)\}/g, (_, n) => p[n]), failed.ports), /UDP-poort 50000 en TCP-poort 50443/);
});

test('checkConnection: a refused check (rate limited) is "unknown", not a broken network', async () => {
  const f = fakeProbe({ udp: { outcome: 'error', code: 'rate_limited' } });
  assert.deepEqual(await checkConnection({ probe: f.probe }), { result: 'unknown', code: 'rate_limited', ports: { udp: [50000], tcp: [50443] } });
  assert.equal(f.calls.length, 1);
});

test('formatPorts writes ranges and lists', () => {
  assert.equal(formatPorts([]), '');
  assert.equal(formatPorts([3478]), '3478');
  assert.equal(formatPorts([50000, 50001, 50002]), '50000–50002');
  assert.equal(formatPorts([443, 3478]), '443, 3478');
});

test('mediaHelpKey: a refusal gets the platform steps, other failures their own help', () => {
  assert.equal(mediaHelpKey({ name: 'NotAllowedError' }, 'android'), 'mediaHelp.android');
  assert.equal(mediaHelpKey({ name: 'NotReadableError' }, 'chrome'), 'mediaHelp.inUse');
  assert.equal(mediaHelpKey({ name: 'NotFoundError' }, 'chrome'), 'mediaHelp.notFound');
  assert.equal(mediaHelpKey(null, 'chrome'), 'mediaHelp.other');
});
