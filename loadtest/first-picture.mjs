// First picture: how long a patient waits for the clinician's picture, and
// where the time goes. A benchmark (prints figures), not a test.
//
// Each run: a clinician is already in a fresh consult (camera on); the
// patient's page is loaded, Join is clicked the moment it is enabled (from a
// script inside the page, so no polling delay counts), and the page's own
// milestones (web/app.js `mark`, `window.__spreekkamer.timings`) give the
// breakdown: link check, Join click, welcome (token checked), offer, ICE +
// DTLS connected, E2EE paired (hello exchanged) and keyed (the clinician's
// sender key arrived), remote track, first frame decoded, first frame
// painted. The same for the clinician seeing the patient.
//
// Run it through loadtest/first-picture.sh (it makes the network namespace:
// loopback only, plus a 127.0.0.2 veth when Janus is measured). Env: RUNS (default 9), SPREEKKAMER_BIN, OUT (JSON), TARGETS
// (`spreekkamer`, or `spreekkamer,janus` for Janus VideoRoom's own demo
// page beside it, interleaved: loadtest/first-picture-janus.mjs).

import { startServer } from '../tests/browser/lib/server.mjs';
import { Browsers } from '../tests/browser/lib/browsers.mjs';
import { waitUntil } from '../tests/browser/lib/wait.mjs';

const RUNS = Number(process.env.RUNS || 9);

// Installed in the patient's page before any of its scripts: click Join the
// moment it is enabled and note when (performance.now(), from navigation).
function autoJoin() {
  window.__bench = { enabled: null, clicked: null };
  const look = () => {
    const b = document.getElementById('join-button');
    if (b && !b.disabled && !b.hidden && b.offsetParent !== null) {
      window.__bench.enabled = performance.now();
      b.click();
      window.__bench.clicked = performance.now();
      return;
    }
    requestAnimationFrame(look);
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', look);
  else look();
}

function pageTimes() {
  const h = window.__spreekkamer;
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    origin: performance.timeOrigin,
    load: nav ? Math.round(nav.loadEventEnd) : null,
    bench: window.__bench || null,
    timings: h ? { ...h.timings } : {},
    e2eeLoadedAt: h ? h.e2eeLoadedAt : null,
    e2ee: h && h.e2ee && h.e2ee.timings ? { ...h.e2ee.timings } : {},
  };
}

const median = (xs) => {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : Math.round((v[m - 1] + v[m]) / 2);
};

const HANDSHAKE = ['workerReady', 'keysMade', 'ready', 'peerJoined', 'commitSent', 'relayIn', 'commitIn', 'helloSent', 'helloIn', 'paired', 'keySent', 'keyIn'];

async function oneRun(server, browsers, i) {
  const consult = `fp-${process.pid}-${i}`;
  const clinLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' });
  const patLink = await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' });
  const clin = await browsers.newChromium({ name: `clinician-${i}` });
  await clin.open(clinLink);
  await clin.join();
  const pat = await browsers.newChromium({ name: `patient-${i}` });
  await pat.page.addInitScript(autoJoin);
  const wallStart = Date.now();
  await pat.page.goto(patLink, { waitUntil: 'commit' });
  try {
    await waitUntil(() => pat.evaluate(() => !!(window.__spreekkamer && window.__spreekkamer.timings.firstPaint !== undefined)), {
      timeout: 30_000,
      interval: 20,
      what: 'the patient sees the clinician',
    });
  } catch (e) {
    const seen = { state: await pat.state().catch(() => null), ...(await pat.evaluate(pageTimes).catch(() => ({}))) };
    e.message += `\npatient page: ${JSON.stringify(seen)}`;
    throw e;
  }
  await waitUntil(() => clin.evaluate(() => !!(window.__spreekkamer && window.__spreekkamer.timings.firstPaint !== undefined)), {
    timeout: 30_000,
    interval: 20,
    what: 'the clinician sees the patient',
  });
  const p = await pat.evaluate(pageTimes);
  const c = await clin.evaluate(pageTimes);
  await pat.close();
  await clin.close();
  const t = p.timings;
  const click = p.bench && p.bench.clicked;
  const rel = (x) => (typeof x === 'number' && typeof click === 'number' ? Math.round(x - click) : null);
  // The clinician's paint of the patient, on the patient's clock (both pages' clocks are wall time).
  const clinPaint = c.timings.firstPaint !== undefined ? c.origin + c.timings.firstPaint - p.origin : null;
  return {
    run: i,
    target: 'spreekkamer',
    wallMs: Date.now() - wallStart,
    pageLoad: p.load,
    joinEnabled: p.bench && Math.round(p.bench.enabled),
    loadToPicture: t.firstPaint !== undefined ? Math.round(t.firstPaint) : null,
    joinToPicture: rel(t.firstPaint),
    steps: {
      connect: rel(t.join),
      e2eeModuleLoaded: rel(p.e2eeLoadedAt),
      wsOpen: rel(t.wsOpen),
      welcomeArrived: rel(t.welcomeArrived),
      welcome: rel(t.welcome),
      welcomeRendered: rel(t.welcomeRendered),
      pcCreated: rel(t.pcCreated),
      e2eeStarted: rel(t.e2eeStarted),
      inCall: rel(t.inCall),
      inCallShown: rel(t.inCallShown),
      offerArrived: rel(t.offerArrived),
      offer: rel(t.offer),
      offerApplied: rel(t.offerApplied),
      sendersSet: rel(t.sendersSet),
      answerCreated: rel(t.answerCreated),
      answered: rel(t.answered),
      iceConnected: rel(t.connected),
      dtlsConnected: rel(t.dtlsConnected),
      e2eePaired: rel(t.e2eePaired),
      e2eeKeyed: rel(t.e2eeKeyed),
      remoteVideo: rel(t.remoteVideo),
      firstFrame: rel(t.firstFrame),
      firstPaint: rel(t.firstPaint),
      clinicianSeesPatient: rel(clinPaint),
      // The E2EE handshake, step by step on both pages (web/e2ee/index.js `stamp`): the
      // clinician's on the patient's clock.
      ...Object.fromEntries(HANDSHAKE.map((k) => [`patient.${k}`, rel(p.e2ee[k])])),
      ...Object.fromEntries(HANDSHAKE.map((k) => [`clinician.${k}`, rel(p.e2ee && c.e2ee[k] !== undefined ? c.origin + c.e2ee[k] - p.origin : undefined)])),
    },
  };
}

function summarise(runs) {
  const keys = Object.keys(runs[0].steps);
  return {
    runs: runs.length,
    loadToPicture: median(runs.map((r) => r.loadToPicture)),
    joinEnabled: median(runs.map((r) => r.joinEnabled)),
    joinToPicture: median(runs.map((r) => r.joinToPicture)),
    afterJoin: Object.fromEntries(keys.map((k) => [k, median(runs.map((r) => r.steps[k]))])),
  };
}

async function main() {
  const targets = (process.env.TARGETS || 'spreekkamer').split(',').filter(Boolean);
  for (const t of targets) if (t !== 'spreekkamer' && t !== 'janus') throw new Error(`unknown target ${t} (TARGETS=spreekkamer,janus)`);
  const browsers = new Browsers();
  let server = null;
  let janus = null;
  const runs = Object.fromEntries(targets.map((t) => [t, []]));
  try {
    if (targets.includes('spreekkamer')) {
      // No waiting room: admission waits for a person; this measures the machine.
      server = await startServer({ name: 'first-picture', args: ['--waiting-room=false'], env: { RUST_LOG: process.env.RUST_LOG || 'warn' } });
    }
    if (targets.includes('janus')) {
      const { JanusTarget } = await import('./first-picture-janus.mjs');
      janus = new JanusTarget();
      await janus.start();
    }
    const once = (t, i) => (t === 'janus' ? janus.run(browsers, i) : oneRun(server, browsers, i));
    // One warm-up run per target (Chromium start, page cache), not counted;
    // then the targets interleaved, so a drift in the machine's load hits all alike.
    for (const t of targets) await once(t, 0);
    for (let i = 1; i <= RUNS; i++) {
      for (const t of targets) {
        const r = await once(t, i);
        runs[t].push(r);
        console.log(`${t} run ${i}: load→picture ${r.loadToPicture} ms, Join enabled at ${r.joinEnabled} ms, Join→picture ${r.joinToPicture} ms; ${JSON.stringify(r.steps)}`);
      }
    }
  } finally {
    await browsers.close();
    if (server) await server.stop();
    if (janus) await janus.stop();
  }
  const summary = Object.fromEntries(targets.map((t) => [t, summarise(runs[t])]));
  for (const t of targets) {
    const s = summary[t];
    console.log(`\n${t}: medians of ${s.runs} runs (ms)`);
    console.log(`  page load → the other's picture painted: ${s.loadToPicture}`);
    console.log(`  page load → Join enabled${t === 'janus' ? ' (Start clicked)' : ' (link and device check)'}: ${s.joinEnabled}`);
    console.log(`  Join click → the other's picture painted: ${s.joinToPicture}`);
    for (const [k, v] of Object.entries(s.afterJoin)) console.log(`    ${k.padEnd(22)} ${v}`);
  }
  if (summary.spreekkamer && summary.janus) {
    const ratio = (a, b) => (a && b ? (a / b).toFixed(2) : 'n/a');
    console.log(`\npage load → picture, Spreekkamer / Janus: ${ratio(summary.spreekkamer.loadToPicture, summary.janus.loadToPicture)} (aim ≤ 0.6)`);
  }
  if (process.env.OUT) {
    const fs = await import('node:fs');
    fs.writeFileSync(process.env.OUT, JSON.stringify({ summary, runs }, null, 2));
    console.log(`written to ${process.env.OUT}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
