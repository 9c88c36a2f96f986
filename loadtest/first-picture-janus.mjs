// The same first-picture measurement against Janus VideoRoom's own demo
// page (Debian's janus-demos, served offline with its libjs-* packages),
// for loadtest/first-picture.mjs. Janus gathers candidates only on jan0
// (127.0.0.2/32, made by first-picture.sh): it never uses an interface
// flagged loopback.
//
// Per run: a first page (the "clinician") starts the demo, joins room 1234
// and publishes; then the measured page is loaded and driven as a person
// would be, as fast as the page allows (a script inside it clicks Start,
// types a name and clicks Join the moment each is possible); the time from
// its navigation to the first painted frame of the other's video is the
// figure, with the moments of the clicks beside it.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { waitUntil } from '../tests/browser/lib/wait.mjs';

const DEMOS = '/usr/share/janus/demos';
const JANUS_WS = 'ws://127.0.0.1:8188/';
const here = path.dirname(new URL(import.meta.url).pathname);

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.png': 'image/png', '.svg': 'image/svg+xml', '.woff': 'font/woff', '.woff2': 'font/woff2', '.ttf': 'font/ttf', '.webp': 'image/webp', '.ico': 'image/x-icon' };

/** A static server for the demo pages on 127.0.0.1 (symlinks into /usr/share/javascript followed). */
function demoServer() {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    const rel = path.normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = path.join(DEMOS, rel === '/' ? 'index.html' : rel);
    if (!file.startsWith(DEMOS)) {
      res.writeHead(400).end();
      return;
    }
    fs.readFile(file, (err, body) => {
      if (err) {
        res.writeHead(404).end();
        return;
      }
      // The demo's settings point at Janus's HTTP transport; ours has WebSockets only.
      // (Debian's copy also lacks the `token` and `apisecret` the demos read.)
      if (rel === '/settings.js') {
        const extra = [`server = ${JSON.stringify(JANUS_WS)};`];
        for (const name of ['token', 'apisecret']) if (!new RegExp(`var\\s+${name}\\b`).test(body.toString())) extra.push(`var ${name} = null;`);
        body = Buffer.concat([body, Buffer.from(`\n${extra.join('\n')}\n`)]);
      }
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
      res.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Janus with the benchmark's config and a VideoRoom config holding the demo's room 1234. */
async function startJanus() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-fp-janus-'));
  for (const f of ['janus.jcfg', 'janus.transport.websockets.jcfg']) fs.copyFileSync(path.join(here, 'janus', f), path.join(dir, f));
  fs.writeFileSync(
    path.join(dir, 'janus.plugin.videoroom.jcfg'),
    'general: {\n}\nroom-1234: {\n  description = "Demo Room"\n  publishers = 6\n  bitrate = 1200000\n  fir_freq = 10\n  audiocodec = "opus"\n  videocodec = "vp8"\n}\n',
  );
  const log = fs.openSync(path.join(dir, 'janus.log'), 'w');
  const proc = spawn('janus', ['-C', path.join(dir, 'janus.jcfg'), '-F', dir, '-o'], { stdio: ['ignore', log, log] });
  let exited = null;
  proc.on('exit', (code, signal) => { exited = { code, signal }; });
  await waitUntil(
    () => {
      if (exited) throw new Error(`janus exited ${JSON.stringify(exited)}: ${fs.readFileSync(path.join(dir, 'janus.log'), 'utf8').slice(-2000)}`);
      return new Promise((resolve) => {
        const s = net.connect(8188, '127.0.0.1', () => { s.destroy(); resolve(true); });
        s.on('error', () => resolve(false));
      });
    },
    { timeout: 20_000, interval: 200, what: 'Janus WebSocket transport on 127.0.0.1:8188' },
  );
  return {
    dir,
    stop: async () => {
      proc.kill('SIGTERM');
      await new Promise((r) => (exited ? r() : proc.once('exit', r)));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Installed in each demo page: click Start, type a name and click Join the
// moment each is possible; note the first painted frame of a remote video.
function driveDemo(name) {
  const b = (window.__bench = { start: null, join: null, picture: null });
  const watched = new WeakSet();
  const step = () => {
    const start = document.getElementById('start');
    // Janus.init sets initDone just before the demo binds Start's handler.
    if (b.start === null && start && !start.disabled && window.Janus && window.Janus.initDone) {
      b.start = performance.now();
      start.click();
    }
    const reg = document.getElementById('register');
    const user = document.getElementById('username');
    const shown = (el) => el && el.offsetParent !== null && !el.disabled;
    if (b.start !== null && b.join === null && shown(reg) && shown(user)) {
      user.value = name;
      b.join = performance.now();
      reg.click();
    }
    for (const v of document.querySelectorAll('video[id^="remotevideo"]')) {
      if (watched.has(v)) continue;
      watched.add(v);
      v.requestVideoFrameCallback(() => { if (b.picture === null) b.picture = performance.now(); });
    }
    if (b.picture === null) requestAnimationFrame(step);
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', step);
  else step();
}

export class JanusTarget {
  async start() {
    this.janus = await startJanus();
    this.http = await demoServer();
    this.url = `http://127.0.0.1:${this.http.address().port}/videoroomtest.html`;
  }

  async stop() {
    if (this.http) await new Promise((r) => this.http.close(r));
    if (this.janus) await this.janus.stop();
  }

  /** One run; the same shape as first-picture.mjs's (steps after the Join click). */
  async run(browsers, i) {
    const clin = await browsers.newChromium({ name: `janus-clinician-${i}` });
    const said = [];
    clin.page.on('console', (m) => said.push(m.text()));
    clin.page.on('pageerror', (err) => said.push(`page error: ${err.message}`));
    await clin.page.addInitScript(driveDemo, 'clinician');
    await clin.page.goto(this.url, { waitUntil: 'load' });
    // Publishing: its peer connection to Janus is up (janus.js keeps it in webrtcStuff).
    try {
      await waitUntil(() => clin.evaluate(() => {
        const pc = window.sfutest && window.sfutest.webrtcStuff && window.sfutest.webrtcStuff.pc;
        return !!pc && (pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed');
      }), { timeout: 30_000, interval: 50, what: 'the Janus demo publishes the first page' });
    } catch (e) {
      const seen = await clin.evaluate(() => ({ bench: window.__bench, sfutest: typeof window.sfutest, pc: window.sfutest && window.sfutest.webrtcStuff && window.sfutest.webrtcStuff.pc ? window.sfutest.webrtcStuff.pc.iceConnectionState : null })).catch((err) => String(err));
      e.message += `\npage: ${JSON.stringify(seen)}\nconsole (last 15): ${said.slice(-15).join('\n  ')}`;
      throw e;
    }
    await new Promise((r) => setTimeout(r, 1000));
    const pat = await browsers.newChromium({ name: `janus-patient-${i}` });
    await pat.page.addInitScript(driveDemo, 'patient');
    const wallStart = Date.now();
    await pat.page.goto(this.url, { waitUntil: 'commit' });
    await waitUntil(() => pat.evaluate(() => window.__bench && window.__bench.picture !== null), {
      timeout: 30_000,
      interval: 20,
      what: 'the Janus demo shows the other video',
    });
    const b = await pat.evaluate(() => {
      const nav = performance.getEntriesByType('navigation')[0];
      return { ...window.__bench, load: nav ? Math.round(nav.loadEventEnd) : null };
    });
    await pat.close();
    await clin.close();
    return {
      run: i,
      target: 'janus',
      wallMs: Date.now() - wallStart,
      pageLoad: b.load,
      joinEnabled: Math.round(b.start),
      loadToPicture: Math.round(b.picture),
      joinToPicture: Math.round(b.picture - b.join),
      steps: { start: Math.round(b.start), join: Math.round(b.join) },
    };
  }
}
