// Self-test of the harness and the machine, independent of the product: each
// browser gets fake camera + mic, sends them through a loopback peer
// connection inside the page, and the harness must see decoded video and
// received audio attributed to the right stream. If this fails, the product
// tests cannot be trusted to say anything about the product.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { assert, scenario } from './lib/index.mjs';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');

async function staticServer() {
  const srv = http.createServer((req, res) => {
    const name = path.basename(new URL(req.url, 'http://x').pathname) || 'loopback.html';
    const file = path.join(fixtures, name);
    if (!fs.existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    const type = name.endsWith('.js') ? 'text/javascript' : 'text/html; charset=utf-8';
    res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' }).end(fs.readFileSync(file));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${srv.address().port}/loopback.html`, close: () => new Promise((r) => { srv.close(r); srv.closeAllConnections(); }) };
}

for (const kind of ['chromium', 'firefox']) {
  scenario(`harness: ${kind} decodes its own fake camera and mic over loopback WebRTC`, { timeout: 120_000 }, async (sc) => {
    const web = await staticServer();
    try {
      const p = await sc.participant(kind, kind);
      await p.open(web.url);
      assert.equal(await p.state(), 'preview');
      await p.join();
      const remoteId = await p.evaluate(() => window.__spreekkamer.remoteId);
      const m = await p.waitForMediaFrom([remoteId], { timeout: 60_000 });
      const got = m.byParticipant[remoteId];
      assert.ok(got.video.framesDecoded > 5, `frames decoded: ${JSON.stringify(got)}`);
      assert.ok(got.audio.totalSamplesReceived > 0, `audio samples: ${JSON.stringify(got)}`);
      sc.log(`${kind}: ${JSON.stringify(got)}`);
    } finally {
      await web.close();
    }
  });
}
