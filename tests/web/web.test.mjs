// Unit tests for the browser client's pure parts (run: node --test). Suggested home: tests/web/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
const WEB = process.env.WEB_DIR || new URL('../../web/', import.meta.url).pathname;
globalThis.navigator = { languages: ['nl-NL'] };
const { DICTIONARIES, detectLanguage, t } = await import(WEB + 'i18n.js');
const { ERROR_CODES, errorOutcome, filterCandidates, candidatePorts, iceConfig } = await import(WEB + 'protocol.js');
const { ownMids, screenMids } = await import(WEB + 'call.js');

test('dutch and english have exactly the same keys', () => {
  assert.deepEqual(Object.keys(DICTIONARIES.nl).sort(), Object.keys(DICTIONARIES.en).sort());
});

test('every error code in docs/PROTOCOL.md has a message in both languages and an outcome', () => {
  const doc = fs.readFileSync(new URL('../docs/PROTOCOL.md', `file://${WEB}`), 'utf8');
  const section = doc.slice(doc.indexOf('## Error codes')).split(/\n## /)[0];
  const codes = [...section.matchAll(/^\| `([a-z_]+)` \| (yes|no) \|/gm)].map((m) => [m[1], m[2] === 'yes']);
  assert.ok(codes.length >= 25);
  for (const [code, fatal] of codes) {
    assert.ok(ERROR_CODES.includes(code), `protocol.js knows ${code}`);
    for (const lang of ['nl', 'en']) assert.ok(DICTIONARIES[lang][`error.${code}`], `${lang} text for ${code}`);
    // A fatal code must never be treated as a mere notice, and vice versa.
    const outcome = errorOutcome(code, fatal);
    assert.equal(['fatal', 'reconnect'].includes(outcome), fatal, `${code} → ${outcome}`);
  }
});

test('an unknown error code follows its fatal flag', () => {
  assert.equal(errorOutcome('brand_new_code', true), 'fatal');
  assert.equal(errorOutcome('brand_new_code', false), 'notice');
});

test('language comes from the first nl or en preference', () => {
  assert.equal(detectLanguage(['nl-BE', 'en']), 'nl');
  assert.equal(detectLanguage(['de-DE', 'en-US', 'nl']), 'en');
  assert.equal(detectLanguage(['fr-FR']), 'en');
  assert.equal(detectLanguage([]), 'en');
});

test('t fills placeholders and falls back', () => {
  assert.match(t('notice.joined', { name: 'Piet' }), /Piet/);
  assert.equal(t('no.such.key', {}, 'fallback'), 'fallback');
});

test('every data-i18n key in the pages exists', () => {
  for (const page of ['index.html', 'landing.html']) {
    const html = fs.readFileSync(WEB + page, 'utf8');
    for (const [, key] of html.matchAll(/data-i18n="([^"]+)"/g)) assert.ok(key in DICTIONARIES.nl, `${page}: ${key}`);
  }
});

test('pages have no inline script or style (the CSP forbids them)', () => {
  for (const page of ['index.html', 'landing.html']) {
    const html = fs.readFileSync(WEB + page, 'utf8');
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, `${page}: inline script`);
    assert.doesNotMatch(html, /\sstyle=|<style/, `${page}: inline style`);
    assert.doesNotMatch(html, /\son[a-z]+=/, `${page}: inline handler`);
  }
});

test('ownMids picks the recvonly microphone, camera and screen sections', () => {
  const sdp = [
    'v=0', 'o=- 1 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0 1 2 3 4 5',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:0', 'a=recvonly',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:1', 'a=recvonly',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:2', 'a=recvonly',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:3', 'a=sendonly', 'a=msid:abcdef0123456789 abcdef0123456789-audio-1',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:4', 'a=sendonly', 'a=msid:abcdef0123456789 abcdef0123456789-video-2',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:5', 'a=sendonly', 'a=msid:abcdef0123456789 abcdef0123456789-screen-3', '',
  ].join('\r\n');
  assert.deepEqual(ownMids(sdp), { audio: '0', video: '1', screen: '2' });
  assert.deepEqual([...screenMids(sdp)], ['5'], 'only the other person\'s screen, not their camera');
});

test('ownMids ignores sendonly and inactive sections', () => {
  const sdp = 'v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\na=inactive\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:v\r\na=sendonly\r\n';
  assert.deepEqual(ownMids(sdp), { audio: null, video: null, screen: null });
  assert.equal(screenMids(sdp).size, 0);
});

// A server offer as the probe gets it: UDP host candidates on two workers'
// ports, one ICE-TCP passive candidate (docs/PROTOCOL.md, "Connectivity check").
const PROBE_OFFER = [
  'v=0', 'o=- 1 2 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0 1', 'a=ice-lite',
  'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'c=IN IP4 0.0.0.0', 'a=mid:0', 'a=recvonly',
  'a=candidate:1 1 udp 2130706431 192.0.2.10 50000 typ host',
  'a=candidate:2 1 UDP 2130706430 192.0.2.10 50001 typ host',
  'a=candidate:3 1 tcp 1694498815 192.0.2.10 443 typ host tcptype passive',
  'a=end-of-candidates',
  'm=video 9 UDP/TLS/RTP/SAVPF 96', 'c=IN IP4 0.0.0.0', 'a=mid:1', 'a=recvonly',
  'a=candidate:1 1 udp 2130706431 192.0.2.10 50000 typ host',
  'a=candidate:3 1 tcp 1694498815 192.0.2.10 443 typ host tcptype passive', '',
].join('\r\n');

const candidates = (sdp) => sdp.split('\r\n').filter((l) => l.startsWith('a=candidate:'));

test('filterCandidates keeps only the UDP candidates for the UDP check (transport field, any case)', () => {
  const udp = filterCandidates(PROBE_OFFER, 'udp');
  assert.deepEqual(candidates(udp).map((l) => l.split(' ')[5]), ['50000', '50001', '50000']);
  assert.ok(candidates(udp).every((l) => / udp /i.test(l)));
  // Nothing else is touched: same lines minus the TCP candidates, CRLF kept.
  assert.equal(udp, PROBE_OFFER.split('\r\n').filter((l) => !/ tcp .*tcptype/.test(l)).join('\r\n'));
});

test('filterCandidates keeps only the TCP candidates for the TCP check', () => {
  const tcp = filterCandidates(PROBE_OFFER, 'tcp');
  assert.equal(candidates(tcp).length, 2);
  assert.ok(candidates(tcp).every((l) => l.includes(' tcp ') && l.includes('tcptype passive')));
  assert.ok(tcp.includes('a=end-of-candidates') && tcp.includes('a=ice-lite'));
});

test('candidatePorts names the ports an IT department must open, per transport', () => {
  assert.deepEqual(candidatePorts(PROBE_OFFER), { udp: [50000, 50001], tcp: [443] });
  assert.deepEqual(candidatePorts('v=0\r\na=candidate:x 1 udp 1 10.0.0.1 notaport typ host\r\n'), { udp: [], tcp: [] });
});

test('the preview has the connectivity check with a status role and a check-again button', () => {
  const html = fs.readFileSync(WEB + 'index.html', 'utf8');
  assert.match(html, /<p id="connectivity"[^>]*role="status"/);
  assert.match(html, /<button id="connectivity-again" type="button"/);
  for (const result of ['checking', 'udp', 'tcp', 'failed', 'unknown', 'skipped']) {
    for (const lang of ['nl', 'en']) assert.ok(DICTIONARIES[lang][`connectivity.${result}`], `${lang}: connectivity.${result}`);
  }
  // The failure text must name the ports when it knows them.
  assert.match(DICTIONARIES.en['connectivity.failed'], /\{ports\}/);
  assert.match(DICTIONARIES.nl['connectivity.failed'], /\{ports\}/);
});

test('the link is kept in sessionStorage only, never localStorage or cookies', () => {
  const app = fs.readFileSync(WEB + 'app.js', 'utf8');
  assert.match(app, /sessionStorage\.setItem/);
  assert.doesNotMatch(app, /\blocalStorage\s*[.[]|document\.cookie/);
});

const { TRUST_ORDER, badgeState, summaryKey, tileTrustKey, weakestTrust } = await import(WEB + 'trust.js');
const { TRUST_ORDER: e2eeTrustOrder } = await import(WEB + 'e2ee/index.js');

test('the consult summary follows the weakest pair; an unknown trust value counts as failed', () => {
  assert.equal(weakestTrust([]), null);
  assert.equal(weakestTrust(['verified', 'link-bound', 'verified']), 'link-bound');
  assert.equal(weakestTrust(['verified', 'encrypted', 'link-bound']), 'encrypted');
  assert.equal(weakestTrust(['link-bound', 'needs-decision', 'pending']), 'needs-decision');
  assert.equal(weakestTrust(['verified', 'unencrypted', 'failed']), 'failed');
  assert.equal(weakestTrust(['verified', 'totally-safe']), 'failed');
  assert.deepEqual(TRUST_ORDER, ['failed', 'unencrypted', 'needs-decision', 'pending', 'encrypted', 'link-bound', 'verified']);
  // The page's order is the E2EE session's order (the page loads that module only when it can).
  assert.deepEqual(TRUST_ORDER, e2eeTrustOrder);
  // Only keyed pairs count as "on"; a withheld key is not.
  assert.equal(badgeState('encrypted'), 'on');
  assert.equal(badgeState('needs-decision'), 'pending');
  assert.equal(badgeState('failed'), 'off');
});

test('every trust value has a plain status line and summary in both languages', () => {
  for (const lang of ['nl', 'en']) {
    for (const trust of TRUST_ORDER) {
      for (const host of [false, true]) {
        assert.ok(DICTIONARIES[lang][tileTrustKey(trust, { host })], `${lang} tile ${trust} host=${host}`);
        assert.ok(DICTIONARIES[lang][summaryKey(trust, { host })], `${lang} summary ${trust} host=${host}`);
      }
    }
    assert.ok(DICTIONARIES[lang][summaryKey(null)], `${lang} summary alone`);
    assert.ok(DICTIONARIES[lang][summaryKey('verified', { selfE2ee: false })], `${lang} summary without E2EE here`);
  }
  // The words the issue asks for, for an 80-year-old patient as much as for a clinician.
  assert.equal(DICTIONARIES.nl[tileTrustKey('verified')], 'Geverifieerd');
  assert.equal(DICTIONARIES.en[tileTrustKey('link-bound')], 'Protected by the link');
  assert.equal(DICTIONARIES.nl[tileTrustKey('encrypted')], 'Versleuteld, nog niet gecontroleerd');
  assert.equal(DICTIONARIES.en[tileTrustKey('unencrypted')], 'Not encrypted');
  assert.equal(DICTIONARIES.nl['decision.accept'], 'Toelaten zonder linkcontrole');
  assert.equal(DICTIONARIES.en['decision.reject'], 'Do not admit');
  assert.notEqual(tileTrustKey('needs-decision', { host: true }), tileTrustKey('needs-decision'));
});

test('the call view has the E2EE summary, an alert region for refused ids, and a decision box per tile', () => {
  const html = fs.readFileSync(WEB + 'index.html', 'utf8');
  assert.match(html, /id="e2ee-summary"/);
  assert.match(html, /<div id="e2ee-alerts"[^>]*role="alert"/);
  const tile = html.slice(html.indexOf('<template id="tile-template">'), html.indexOf('</template>'));
  assert.match(tile, /class="tile-decision" hidden/);
  assert.match(tile, /data-action="accept-unbound"/);
  assert.match(tile, /data-action="reject-unbound"/);
});

const { qualityForHeight, prefsKey, LOW_BELOW_PX, MEDIUM_BELOW_PX } = await import(WEB + 'prefs.js');
const { simulcastEncodings, SIMULCAST_LAYERS } = await import(WEB + 'call.js');

test('a tile asks for the layer its height on screen can show', () => {
  assert.equal(qualityForHeight(120), 'low');
  assert.equal(qualityForHeight(LOW_BELOW_PX - 1), 'low');
  assert.equal(qualityForHeight(LOW_BELOW_PX), 'medium');
  assert.equal(qualityForHeight(MEDIUM_BELOW_PX - 1), 'medium');
  assert.equal(qualityForHeight(MEDIUM_BELOW_PX), 'high');
  assert.equal(qualityForHeight(900, true), 'low', 'a hidden tile needs nothing better than low');
  assert.equal(qualityForHeight(NaN), 'low');
});

test('preferences compare equal regardless of key order, and audio-only counts', () => {
  assert.equal(prefsKey(false, { a: 'low', b: 'high' }), prefsKey(false, { b: 'high', a: 'low' }));
  assert.notEqual(prefsKey(false, { a: 'low' }), prefsKey(true, { a: 'low' }));
  assert.notEqual(prefsKey(false, { a: 'low' }), prefsKey(false, { a: 'medium' }));
});

test('three simulcast layers get their size and bitrate by rid', () => {
  const out = simulcastEncodings([{ rid: 'h', active: true }, { rid: 'm', active: true }, { rid: 'l', active: true }]);
  assert.deepEqual(out.map((e) => [e.rid, e.scaleResolutionDownBy, e.maxBitrate, e.active]), [
    ['h', 1, 1_200_000, true],
    ['m', 2, 500_000, true],
    ['l', 4, 150_000, true],
  ]);
  assert.equal(simulcastEncodings(out), null, 'already set: nothing to change');
  assert.ok(SIMULCAST_LAYERS.l.maxBitrate < SIMULCAST_LAYERS.m.maxBitrate);
});

test('a sender without three known layers is left alone', () => {
  assert.equal(simulcastEncodings([{}]), null);
  assert.equal(simulcastEncodings([{ rid: 'h' }, { rid: 'm' }]), null);
  assert.equal(simulcastEncodings([{ rid: 'a' }, { rid: 'b' }, { rid: 'c' }]), null);
  assert.equal(simulcastEncodings(undefined), null);
});

const { initials, fitFor, qualityFrom, formatDuration, durationMinutes } = await import(WEB + 'present.js');
const { browserFamily } = await import(WEB + 'media.js');

test('initials skip titles and name particles', () => {
  assert.equal(initials('Mevr. de Vries'), 'V');
  assert.equal(initials('Dr. Jan van der Berg'), 'JB');
  assert.equal(initials('dhr. P. Jansen'), 'PJ');
  assert.equal(initials('Mw Ayşe Yılmaz'), 'AY');
  assert.equal(initials('Prof. dr. ir. Smit'), 'S');
  assert.equal(initials('anna'), 'A');
  assert.equal(initials('  '), '');
  assert.equal(initials('Dr.'), '', 'a title alone is no name');
  assert.equal(initials('Éva Ørsted'), 'ÉØ');
});

test('an upright picture is never cropped into a wide tile; otherwise the video fills it', () => {
  assert.equal(fitFor(1280, 720, 390, 700), 'cover', 'a landscape camera fills a phone held upright');
  assert.equal(fitFor(720, 1280, 1000, 560), 'contain', 'a phone held upright is shown whole on a desktop');
  assert.equal(fitFor(720, 1280, 390, 700), 'cover');
  assert.equal(fitFor(640, 480, 1000, 560), 'cover');
  assert.equal(fitFor(0, 0, 1000, 560), 'cover', 'no size known yet');
});

test('connection quality: loss and delay in words; silence where media is expected is poor', () => {
  assert.equal(qualityFrom({ received: 100, lost: 0, rtt: 0.02 }), 'good');
  assert.equal(qualityFrom({ received: 95, lost: 5, rtt: 0.02 }), 'fair');
  assert.equal(qualityFrom({ received: 80, lost: 20, rtt: 0.02 }), 'poor');
  assert.equal(qualityFrom({ received: 100, lost: 0, rtt: 0.5 }), 'fair');
  assert.equal(qualityFrom({ received: 100, lost: 0, rtt: 1.2 }), 'poor');
  assert.equal(qualityFrom({ received: 0, lost: 0, expected: true }), 'poor');
  assert.equal(qualityFrom({ received: 0, lost: 0, expected: false }), 'unknown', 'camera off: nothing to judge');
  assert.equal(qualityFrom({ received: 100, lost: -3, rtt: null }), 'good', 'duplicates (negative loss) are no loss');
});

test('call clock and duration', () => {
  assert.equal(formatDuration(0), '0:00');
  assert.equal(formatDuration(65_400), '1:05');
  assert.equal(formatDuration(3_600_000 + 61_000), '1:01:01');
  assert.equal(durationMinutes(10_000), 1, 'a short call is "1 min", not 0');
  assert.equal(durationMinutes(12.6 * 60_000), 13);
});

test('camera permission help picks the platform a patient is on', () => {
  const android = 'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36';
  const iphoneChrome = 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0 Mobile/15E148 Safari/604.1';
  const ipadAsMac = 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15';
  const desktopChrome = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36';
  const firefoxAndroid = 'Mozilla/5.0 (Android 14; Mobile; rv:133.0) Gecko/133.0 Firefox/133.0';
  assert.equal(browserFamily(android, 5), 'android');
  assert.equal(browserFamily(iphoneChrome, 5), 'ios');
  assert.equal(browserFamily(ipadAsMac, 5), 'ios');
  assert.equal(browserFamily(ipadAsMac, 0), 'safari', 'a real Mac');
  assert.equal(browserFamily(desktopChrome, 0), 'chrome');
  assert.equal(browserFamily(firefoxAndroid, 5), 'firefox');
  for (const family of ['ios', 'android', 'firefox', 'safari', 'chrome', 'other']) {
    for (const lang of ['nl', 'en']) assert.ok(DICTIONARIES[lang][`mediaHelp.${family}`], `${lang} mediaHelp.${family}`);
  }
});

test('simulcast through one E2EE sender: counters never repeat, a subscriber switching layers decrypts every frame', async () => {
  const { SendKey, ReceiveKeyring, decodeHeader } = await import(WEB + 'e2ee/sframe.js');
  const base = new Uint8Array(32).fill(7);
  const send = await SendKey.create(0, base);
  const ring = new ReceiveKeyring();
  await ring.setKey(0, base, true);
  // One sender transform sees the frames of all three layers, interleaved
  // (plus the microphone's under the same key), in encoder order.
  const frames = [];
  for (let i = 0; i < 60; i++) {
    for (const layer of ['h', 'm', 'l']) {
      const frame = Uint8Array.of(i === 0 ? 0x00 : 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, layer.charCodeAt(0), i);
      frames.push({ layer, kind: 'video', data: await send.protect('video', frame) });
    }
    frames.push({ layer: 'audio', kind: 'audio', data: await send.protect('audio', Uint8Array.of(0xfc, i, 1, 2)) });
  }
  const counters = frames.map((f) => decodeHeader(f.data.subarray(f.kind === 'audio' ? 1 : f.data[0] & 1 ? 3 : 10)).ctr);
  assert.equal(new Set(counters).size, counters.length, 'no SFrame counter repeats under one key');
  // The SFU forwards one layer: l for the first half, then h (a switch up).
  const forwarded = frames.filter((f, idx) => f.layer === 'audio' || f.layer === (idx < frames.length / 2 ? 'l' : 'h'));
  for (const f of forwarded) {
    const plain = await ring.unprotect(f.kind, f.data);
    assert.ok(plain.length > 0);
  }
  // A frame replayed by the server is still refused.
  await assert.rejects(ring.unprotect(forwarded[5].kind, forwarded[5].data), /replayed/);
});

test('iceConfig takes TURN servers from welcome and relay-only only with a server', () => {
  assert.deepEqual(iceConfig({ type: 'welcome' }), { iceServers: [], iceTransportPolicy: 'all' });
  const entry = { urls: ['turn:t.example:3478?transport=udp', 'turns:t.example:443?transport=tcp'], username: '1767229200:abc', credential: 'c2VjcmV0' };
  assert.deepEqual(iceConfig({ ice_servers: [entry] }), { iceServers: [entry], iceTransportPolicy: 'all' });
  assert.deepEqual(iceConfig({ ice_servers: [entry], force_relay: true }), { iceServers: [entry], iceTransportPolicy: 'relay' });
  // Malformed entries are dropped; relay without a server would never connect.
  const bad = [null, { urls: ['turn:x:1?transport=udp'] }, { urls: ['https://evil.example/'], username: 'u', credential: 'c' }, { urls: 'turn:x', username: 'u', credential: 'c' }];
  assert.deepEqual(iceConfig({ ice_servers: bad, force_relay: true }), { iceServers: [], iceTransportPolicy: 'all' });
  assert.deepEqual(iceConfig({ ice_servers: [{ ...entry, urls: ['stun:x:1', entry.urls[0]] }] }).iceServers[0].urls, [entry.urls[0]]);
});
