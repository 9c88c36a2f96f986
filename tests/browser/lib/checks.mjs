// Assertions several browser tests share: secrets stay out of logs and URLs,
// tiles match the people in the call, refused joins receive nothing, metrics.

import assert from 'node:assert/strict';
import { metricSum } from './server.mjs';
import { sleep, waitUntil } from './wait.mjs';

/**
 * No token (nor its signature, the part that makes it usable) appears in the
 * server's stdout/stderr or audit log. Check after the server stopped, so all
 * its output is in.
 */
export function assertTokensNotLogged(server, tokens) {
  const logs = server.logs();
  const audit = server.auditText();
  for (const [label, token] of Object.entries(tokens)) {
    const sig = token.split('.')[2];
    for (const [where, text] of [
      ['server stdout/stderr', logs],
      ['audit log', audit],
    ]) {
      assert.ok(!text.includes(token), `the ${label} token appears in the ${where}`);
      if (sig && sig.length >= 16) assert.ok(!text.includes(sig), `the ${label} token's signature appears in the ${where}`);
    }
  }
}

/**
 * After the page loaded, the address bar holds neither fragment nor token
 * (the client moved it out with history.replaceState), and there is no query
 * string: the token never travels to the server in a URL.
 */
export async function assertLocationClean(p, token) {
  let href;
  await waitUntil(
    async () => {
      href = await p.evaluate(() => location.href);
      return !href.includes('#');
    },
    { timeout: 15_000, what: `${p.name}: the fragment removed from the address bar`, describe: () => href },
  );
  const u = new URL(href);
  assert.equal(u.search, '', `${p.name}: no query string expected, got ${href}`);
  assert.ok(!href.includes(token), `${p.name}: the token is still in the address bar: ${href}`);
  const sig = token.split('.')[2];
  if (sig) assert.ok(!href.includes(sig), `${p.name}: the token's signature is in the address bar`);
}

/** Wait until `p` shows exactly the tiles `ids` (remote participants), each with the expected name. */
export async function waitForTiles(p, expected, { timeout = 30_000 } = {}) {
  const ids = Object.keys(expected).sort();
  let last;
  await waitUntil(
    async () => {
      last = await p.evaluate(() =>
        [...document.querySelectorAll('.tile[data-participant-id]')].map((t) => ({
          id: t.dataset.participantId,
          name: (t.querySelector('.tile-name') || { textContent: '' }).textContent.trim(),
          hasVideo: !!t.querySelector('video'),
        })),
      );
      const got = last.map((t) => t.id).sort();
      return (
        JSON.stringify(got) === JSON.stringify(ids) &&
        last.every((t) => t.hasVideo && t.name.includes(expected[t.id]))
      );
    },
    {
      timeout,
      what: `${p.name}: tiles exactly ${JSON.stringify(expected)} (id → name), each with a <video>`,
      describe: () => JSON.stringify(last),
    },
  );
}

/**
 * A 1:1 call: `a` then `b` join from their preview pages, get distinct
 * participant ids, and each decodes the other's video and receives their
 * audio, still rising. Returns [idA, idB].
 */
export async function joinOneToOne(a, b) {
  await a.join();
  await b.join();
  const idA = await a.youId();
  const idB = await b.youId();
  assert.ok(idA && idB && idA !== idB, `participant ids: ${idA}, ${idB}`);
  await Promise.all([a.waitForMediaFrom([idB]), b.waitForMediaFrom([idA])]);
  return [idA, idB];
}

/**
 * A refused participant receives no media: for `holdMs` its page either has
 * no peer connection or one without a single inbound RTP packet.
 */
export async function assertNoInboundMedia(p, { holdMs = 4_000 } = {}) {
  const until = Date.now() + holdMs;
  for (;;) {
    const m = await p.media();
    const packets = m.inbound.reduce((n, i) => n + i.packetsReceived, 0);
    assert.equal(packets, 0, `${p.name}: a refused participant received ${packets} media packets: ${JSON.stringify(m.inbound)}`);
    if (Date.now() > until) return m;
    await sleep(500);
  }
}

/** Value of one series, e.g. metric(m, 'spreekkamer_joins_rejected_total', { reason: 'token_expired' }). */
export function metric(metrics, name, labels) {
  if (!labels) return metricSum(metrics, name);
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum;
  for (const [k, v] of metrics) {
    if (!k.startsWith(`${name}{`)) continue;
    if (want.every((w) => k.includes(w))) sum = (sum ?? 0) + v;
  }
  return sum;
}

/**
 * The decoded frame in the video tile of participant `id` on `p`'s page, drawn
 * through a `w`×`h` canvas: [r, g, b] per pixel, flattened, row by row (null:
 * no tile or no frame yet).
 */
export function tilePixels(p, id, w, h) {
  return p.evaluate(({ pid, w, h }) => {
    const v = document.querySelector(`.tile[data-participant-id="${pid}"] video`);
    if (!v || !v.videoWidth) return null;
    const c = document.createElement('canvas');
    c.width = w;
    c.height = h;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0, w, h);
    return Array.from(g.getImageData(0, 0, w, h).data).filter((_, i) => i % 4 !== 3);
  }, { pid: id, w, h });
}

/**
 * Mean colour [r, g, b] of the decoded frame in the video tile of participant
 * `id` on `p`'s page, drawn through a canvas (null: no tile or no frame yet).
 * Chromium's fake camera is bright; a black or empty tile sums to ~0.
 */
export async function tileColour(p, id) {
  const px = await tilePixels(p, id, 32, 24);
  if (!px) return null;
  const sum = [0, 0, 0];
  for (let i = 0; i < px.length; i += 3) for (let k = 0; k < 3; k++) sum[k] += px[i + k];
  return sum.map((x) => Math.round(x / (px.length / 3)));
}

/** A colour from `tileColour` that is a picture, not a black or empty tile. */
export const isColour = (rgb) => !!rgb && rgb[0] + rgb[1] + rgb[2] > 60;

/**
 * Click a waiting person's admit (or deny) button in the clinician's waiting
 * list. On a narrow window the list lives in a sheet over the video: open it
 * the way a clinician would (More → Waiting room and invites) first.
 */
export async function clickLobbyButton(clin, id, action = 'admit') {
  const sel = `#lobby-list .lobby-entry[data-participant-id="${id}"] .${action}`;
  const shown = await clin.evaluate((s) => {
    const el = document.querySelector(s);
    return !!el && el.getClientRects().length > 0;
  }, sel);
  if (!shown) await clin.evaluate(() => document.getElementById('lobby-open').click());
  await clin.page.click(sel);
}
