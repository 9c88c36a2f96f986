// A malicious signaling server, for tests only: a reverse proxy on loopback between the browsers
// and the real edge (`spreekkamer serve`). docs/CRYPTO.md treats the server as an attacker that
// relays, drops, replays and invents messages; this is that attacker, so the browser tests can
// show what the pages do about it (tests/browser/e2ee-adversary.test.mjs). Nothing in the product
// uses it.
//
// HTTP (the page and its scripts) is forwarded as is. Every WebSocket frame passes through hooks
// that may rewrite, drop or add messages in either direction (docs/PROTOCOL.md shapes:
// browser → edge `relay {to, kind, data}`, edge → browser `relay {from, kind, data}`). On top of
// that: invented participants that run a real key handshake (the proxy imports the pages' own
// web/e2ee/handshake.js, fetched from the edge it fronts, so it always speaks the version under
// test), a full man in the middle of one pair's handshake, rewritten hellos, and roster lies.
//
// Media does not pass through here (ICE goes straight to the SFU): like a real operator, this
// attacker controls signaling, and with it everything E2EE depends on.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { WebSocket, WebSocketServer } from 'ws';

/** Start a proxy in front of `target` (the edge's base URL, e.g. server.url). */
export async function startTamperProxy({ target }) {
  const proxy = new TamperProxy(target);
  await proxy.listen();
  return proxy;
}

// Close codes a WebSocket may send (1005/1006/1015 are for reporting only).
const sendableCode = (code) => (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);

/** One browser's signaling session, as the proxy sees it. */
class Connection {
  constructor(browser) {
    this.browser = browser;
    this.edge = null;
    this.id = null; // participant id, from `welcome`
    this.role = null;
    this.name = null;
    this.consult = null;
  }

  toBrowser(msg) {
    if (this.browser.readyState === WebSocket.OPEN) this.browser.send(JSON.stringify(msg));
  }

  toEdge(msg) {
    if (this.edge && this.edge.readyState === WebSocket.OPEN) this.edge.send(JSON.stringify(msg));
  }
}

export class TamperProxy {
  constructor(target) {
    this.target = new URL(target);
    this.server = null;
    this.url = null;
    this.conns = new Set();
    // Every relay the proxy saw or made: {at, from, to, kind, data, fate}, fate one of
    // 'forwarded', 'dropped' (a hook kept it from its addressee), 'injected' (made up here).
    this.relays = [];
    this.clientHooks = []; // (conn, msg) => msg | null (drop) | undefined (unchanged)
    this.serverHooks = [];
    // (req) => Promise | undefined: an HTTP request waits for the promise before it is forwarded
    // (a server that serves a script late, e.g. the E2EE media worker).
    this.httpHooks = [];
    this.handshakeModule = null;
  }

  async listen() {
    this.wss = new WebSocketServer({ noServer: true });
    this.server = http.createServer((req, res) => this.forwardHttp(req, res));
    this.server.on('upgrade', (req, socket, head) => {
      this.wss.handleUpgrade(req, socket, head, (ws) => this.bridge(ws, req));
    });
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
  }

  forwardHttp(req, res) {
    const waits = this.httpHooks.map((hook) => hook(req)).filter(Boolean);
    if (waits.length) {
      req.pause();
      Promise.all(waits).then(() => this.forwardNow(req, res), () => {
        res.writeHead(502);
        res.end();
      });
      return;
    }
    this.forwardNow(req, res);
  }

  forwardNow(req, res) {
    const upstream = http.request(
      {
        host: this.target.hostname,
        port: this.target.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: this.target.host },
      },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  }

  bridge(browser, req) {
    const conn = new Connection(browser);
    this.conns.add(conn);
    const pending = [];
    const edge = new WebSocket(`ws://${this.target.host}${req.url}`);
    conn.edge = edge;
    edge.on('open', () => {
      for (const m of pending.splice(0)) edge.send(m);
    });
    edge.on('message', (data, isBinary) => {
      if (isBinary) return; // the protocol is text only
      this.fromEdge(conn, data.toString('utf8'));
    });
    browser.on('message', (data, isBinary) => {
      if (isBinary) return;
      const text = this.fromBrowser(conn, data.toString('utf8'));
      if (text === null) return;
      if (edge.readyState === WebSocket.OPEN) edge.send(text);
      else pending.push(text);
    });
    const closeBoth = (code, reason) => {
      this.conns.delete(conn);
      const c = sendableCode(code) ? code : 1000;
      for (const ws of [browser, edge]) {
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
          try {
            ws.close(c, reason);
          } catch {
            ws.terminate();
          }
        }
      }
    };
    edge.on('close', (code, reason) => closeBoth(code, reason));
    browser.on('close', (code, reason) => closeBoth(code, reason));
    edge.on('error', () => closeBoth(1011, ''));
    browser.on('error', () => closeBoth(1011, ''));
  }

  /** A browser's frame on its way to the edge: the text to send on, or null to drop it. */
  fromBrowser(conn, text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return text;
    }
    for (const hook of this.clientHooks) {
      const out = hook(conn, msg);
      if (out === null) {
        if (msg.type === 'relay') this.record(conn.id, msg.to, msg.kind, msg.data, 'dropped');
        return null;
      }
      if (out !== undefined) msg = out;
    }
    if (msg.type === 'relay') this.record(conn.id, msg.to, msg.kind, msg.data, 'forwarded');
    return JSON.stringify(msg);
  }

  fromEdge(conn, text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      conn.browser.send(text);
      return;
    }
    if (msg.type === 'welcome' && msg.you) {
      conn.id = msg.you.id;
      conn.role = msg.you.role;
      conn.name = msg.you.name;
      conn.consult = msg.consult;
    }
    for (const hook of this.serverHooks) {
      const out = hook(conn, msg);
      if (out === null) return;
      if (out !== undefined) msg = out;
    }
    conn.toBrowser(msg);
  }

  record(from, to, kind, data, fate) {
    this.relays.push({ at: Date.now(), from, to, kind, data, fate });
  }

  /** Adds a hook on browser → edge messages; returns a function that removes it. */
  onClientMessage(hook) {
    this.clientHooks.push(hook);
    return () => {
      this.clientHooks = this.clientHooks.filter((h) => h !== hook);
    };
  }

  /** Adds a hook on edge → browser messages; returns a function that removes it. */
  onServerMessage(hook) {
    this.serverHooks.push(hook);
    return () => {
      this.serverHooks = this.serverHooks.filter((h) => h !== hook);
    };
  }

  connection(participantId) {
    for (const c of this.conns) if (c.id === participantId) return c;
    return null;
  }

  /** Sends `msg` to the browser of `participantId`, as if the edge had. */
  sendToBrowser(participantId, msg) {
    const conn = this.connection(participantId);
    if (!conn) throw new Error(`tamper: no connection for participant ${participantId}`);
    conn.toBrowser(msg);
  }

  /** A relay to `to` that claims to come from `from` (any id, in the roster or not). */
  injectRelay({ to, from, kind, data }) {
    this.record(from, to, kind, data, 'injected');
    this.sendToBrowser(to, { type: 'relay', from, kind, data });
  }

  /** Relays addressed to `to` (every fate), optionally of one kind only. */
  relaysTo(to, kind = null) {
    return this.relays.filter((r) => r.to === to && (!kind || r.kind === kind));
  }

  /** Sends a recorded relay again to its addressee (a replay by the server). */
  replay(entry) {
    this.injectRelay({ to: entry.to, from: entry.from, kind: entry.kind, data: entry.data });
  }

  /** Drops every relay for which `pred(relay, conn)` is true (relay: {from, to, kind, data}). */
  dropRelays(pred) {
    return this.onClientMessage((conn, msg) => {
      if (msg.type !== 'relay') return undefined;
      return pred({ from: conn.id, to: msg.to, kind: msg.kind, data: msg.data }, conn) ? null : undefined;
    });
  }

  /** Rewrites every `hello` from `from` to `to` with `edit(hello object) → hello object`. */
  rewriteHello({ from, to, edit }) {
    return this.onClientMessage((conn, msg) => {
      if (msg.type !== 'relay' || conn.id !== from || msg.to !== to || msg.kind !== 'key') return undefined;
      let o;
      try {
        o = JSON.parse(msg.data);
      } catch {
        return undefined;
      }
      if (!o || o.t !== 'hello') return undefined;
      return { ...msg, data: JSON.stringify(edit(o)) };
    });
  }

  /** Never passes client messages of `type` from `participantId` to the edge (e.g. `remove`). */
  swallow(participantId, type) {
    return this.onClientMessage((conn, msg) => (conn.id === participantId && msg.type === type ? null : undefined));
  }

  /** Roster lie: `participant-left` for `id` never reaches anyone. */
  keepInRoster(id) {
    return this.onServerMessage((conn, msg) => (msg.type === 'participant-left' && msg.id === id ? null : undefined));
  }

  /** Roster lie: tells `victimId` that `participant` ({id, name, role}) joined. */
  addToRoster(victimId, participant) {
    this.sendToBrowser(victimId, { type: 'participant-joined', participant: { audio: true, video: true, ...participant } });
  }

  /**
   * The pages' E2EE handshake module, fetched from the edge (with the modules it imports) into a
   * temp dir and imported here: whatever version the binary under test serves.
   */
  async handshake() {
    if (this.handshakeModule) return this.handshakeModule;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spreekkamer-tamper-'));
    this.tmpDir = dir;
    const fetchModule = async (name, seen) => {
      if (seen.has(name)) return;
      seen.add(name);
      const r = await fetch(new URL(`/e2ee/${name}`, this.target), { signal: AbortSignal.timeout(10_000) });
      if (r.status !== 200) throw new Error(`tamper: /e2ee/${name} answered ${r.status}`);
      const text = await r.text();
      fs.writeFileSync(path.join(dir, name), text);
      for (const [, dep] of text.matchAll(/\bfrom\s+'\.\/([a-z0-9_-]+\.js)'/g)) await fetchModule(dep, seen);
    };
    await fetchModule('handshake.js', new Set());
    this.handshakeModule = await import(pathToFileURL(path.join(dir, 'handshake.js')).href);
    return this.handshakeModule;
  }

  /**
   * A participant the proxy plays itself: `asId` (invented, or impersonating a real one) runs the
   * key handshake with the real participant `peerId`, claiming `link` (null: no link secret).
   * Relays from `peerId` to `asId` are captured by it, never passed to the edge.
   */
  async fakePeer({ asId, peerId, consult, link = null }) {
    const fake = new FakePeer(this, { asId, peerId, consult, link, hs: await this.handshake() });
    await fake.init();
    fake.stopCapture = this.onClientMessage((conn, msg) => {
      if (msg.type !== 'relay' || conn.id !== peerId || msg.to !== asId) return undefined;
      // In arrival order, as a real client handles them (a box must wait for the hello's keys).
      fake.queue = fake.queue.then(() => fake.receive(msg.kind, msg.data)).catch((e) => fake.errors.push(e.message));
      return null;
    });
    return fake;
  }

  /**
   * A man in the middle of the handshake between real participants `a` and `b`: each gets the
   * proxy's keys, in a hello claiming `link` (null: "I have no link secret"), instead of the
   * other's. Returns {toA, toB}: the fake that talks to `a` (posing as `b`) and the one that talks
   * to `b` (posing as `a`).
   */
  async mitm({ a, b, consult, link = null }) {
    const toA = await this.fakePeer({ asId: b, peerId: a, consult, link });
    const toB = await this.fakePeer({ asId: a, peerId: b, consult, link });
    return { toA, toB };
  }

  async close() {
    for (const c of this.conns) {
      c.browser.terminate();
      if (c.edge) c.edge.terminate();
    }
    this.conns.clear();
    if (this.wss) this.wss.close();
    if (this.server) {
      await new Promise((r) => {
        this.server.close(r);
        this.server.closeAllConnections();
      });
    }
    if (this.tmpDir) fs.rmSync(this.tmpDir, { recursive: true, force: true });
  }
}

/**
 * The proxy's own end of a key handshake with one real participant, built from the real
 * handshake module: it commits, reveals its hello, derives the pair keys, and tries to open
 * every box the real participant seals to it. `opened` lists what it could read.
 */
export class FakePeer {
  constructor(proxy, { asId, peerId, consult, link, hs }) {
    Object.assign(this, { proxy, asId, peerId, consult, link, hs });
    this.received = []; // {kind, data} of every relay from peerId to asId
    this.boxes = []; // sealed boxes received: {relayKind, data}
    this.opened = []; // boxes it could open: {relayKind, boxKind, body}
    this.errors = [];
    this.theirCommit = null;
    this.theirHello = null;
    this.pair = null;
    this.commitSent = false;
    this.queue = Promise.resolve();
  }

  async init() {
    const hs = this.hs;
    this.pairs = await hs.createKeyPairs();
    // Both spellings of "no link secret": v2 reads `link`, v1 read `hasLinkSecret`.
    this.hello = hs.makeHello(this.pairs, { link: this.link, hasLinkSecret: false, media: 'e2ee' });
    this.commit = await hs.commitment(this.consult, this.asId, this.hello);
  }

  get version() {
    return this.hs.PROTOCOL_VERSION ?? 1;
  }

  send(obj) {
    this.proxy.injectRelay({ to: this.peerId, from: this.asId, kind: 'key', data: JSON.stringify(obj) });
  }

  /** Starts the handshake (an invented participant speaks first). */
  sendCommit() {
    this.commitSent = true;
    this.send({ t: 'commit', v: this.version, c: Buffer.from(this.commit).toString('base64') });
  }

  sendHello() {
    this.send(this.hs.encodeHello(this.hello));
  }

  async receive(kind, data) {
    this.received.push({ kind, data });
    if (kind !== 'key') return this.tryOpen(kind, data);
    const msg = JSON.parse(data);
    if (msg.t === 'commit') {
      this.theirCommit = msg.c;
      if (!this.pair) {
        // Answer as the real client does: our commitment, then our hello (they are bound now).
        this.sendCommit();
        this.sendHello();
      }
      return undefined;
    }
    if (msg.t === 'hello') {
      if (this.pair) return undefined;
      this.theirHello = this.hs.decodeHello(msg);
      this.pair = await this.hs.derivePair({
        consultId: this.consult,
        selfId: this.asId,
        peerId: this.peerId,
        pairs: this.pairs,
        selfHello: this.hello,
        peerHello: this.theirHello,
      });
      // A sender key of its own, as a real participant sends: the other side is keyed both ways.
      const key = this.hs.encodeSenderKey(0, crypto.getRandomValues(new Uint8Array(32)));
      this.send({ t: 'box', b: await this.hs.seal(this.pair, this.hs.BOX_KIND.key, key) });
      return undefined;
    }
    // `box` (a sender key), `vouch`, `gone`: every sealed key message carries its box in `b`.
    if (typeof msg.b === 'string') return this.tryOpen(kind, msg.b);
    return undefined;
  }

  async tryOpen(relayKind, data) {
    let opened = null;
    for (const [name, boxKind] of Object.entries(this.pair ? this.hs.BOX_KIND : {})) {
      try {
        opened = { relayKind, boxKind: name, body: await this.hs.open(this.pair, boxKind, data) };
        break;
      } catch {
        // Not this kind, or not for our keys.
      }
    }
    this.boxes.push({ relayKind, data });
    if (opened) this.opened.push(opened);
  }

  /** The safety code this fake's pair would show (the real side shows its own, different one). */
  safetyCode() {
    return this.pair ? this.pair.safetyCode : null;
  }
}
