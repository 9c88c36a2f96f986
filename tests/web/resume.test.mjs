// The browser client's side of resuming (docs/PROTOCOL.md, "Resuming"): the
// reconnect policy, the resume ticket in `join`, and `media-reset` — without
// a browser: WebSocket and RTCPeerConnection are small fakes that record what
// the client does with them.
import { test } from 'node:test';
import assert from 'node:assert/strict';

const WEB = process.env.WEB_DIR || new URL('../../web/', import.meta.url).pathname;
const {
  Reconnector,
  reconnectDelay,
  signalingUrls,
  mediaConnectTimeout,
  giveUpOnMedia,
  FIRST_DELAY_MS,
  MAX_DELAY_MS,
  GIVE_UP_AFTER_MS,
  MEDIA_CONNECT_TIMEOUT_MS,
  MAX_MEDIA_CONNECT_TIMEOUT_MS,
  MAX_MEDIA_STALLS,
} = await import(WEB + 'reconnect.js');

// ---- fakes --------------------------------------------------------------------------------------

class FakeWebSocket extends EventTarget {
  static OPEN = 1;
  static all = [];
  constructor(url) {
    super();
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; this.dispatchEvent(Object.assign(new Event('close'), { code: 1006 })); }
  open() { this.readyState = 1; this.dispatchEvent(new Event('open')); }
  receive(msg) { this.dispatchEvent(Object.assign(new Event('message'), { data: JSON.stringify(msg) })); }
}

class FakePeerConnection extends EventTarget {
  static all = [];
  constructor(config) {
    super();
    this.config = config;
    this.closed = false;
    this.remote = [];
    this.transceivers = [];
    FakePeerConnection.all.push(this);
  }
  async setRemoteDescription(d) {
    this.remote.push(d.sdp);
    const fakeSender = () => ({ track: null, replaceTrack: async function (t) { this.track = t; }, getParameters: () => ({ encodings: [{}] }), setParameters: async () => {} });
    if (this.transceivers.length === 0) {
      this.transceivers = [
        { mid: '0', direction: 'recvonly', sender: fakeSender() },
        { mid: '1', direction: 'recvonly', sender: fakeSender() },
      ];
    }
  }
  getTransceivers() { return this.transceivers; }
  async createAnswer() { return { type: 'answer', sdp: `answer-${FakePeerConnection.all.indexOf(this)}` }; }
  async setLocalDescription(d) { this.localDescription = d; }
  close() { this.closed = true; }
}

globalThis.WebSocket = FakeWebSocket;
globalThis.RTCPeerConnection = FakePeerConnection;
const { Signaling } = await import(WEB + 'protocol.js');
const { Call } = await import(WEB + 'call.js');

const OFFER = ['v=0', 'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'a=mid:0', 'a=recvonly', 'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:1', 'a=recvonly', ''].join('\r\n');

// ---- reconnect policy ---------------------------------------------------------------------------

test('reconnect delays double from 0.5 s and stop growing at 10 s', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 40].map(reconnectDelay), [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
  assert.equal(FIRST_DELAY_MS, 500);
  assert.equal(MAX_DELAY_MS, 10000);
});

test('the reconnector keeps trying for five minutes, going round the edges, then gives up', () => {
  let now = 0;
  const r = new Reconnector({ urls: ['wss://a/ws', 'wss://b/ws'], now: () => now, random: () => 0.5 });
  assert.equal(r.url(), 'wss://a/ws');
  const first = r.next();
  assert.deepEqual(first, { delayMs: 500, url: 'wss://a/ws' }, 'a blip: the same edge first');
  const tried = [first];
  for (;;) {
    now += tried[tried.length - 1].delayMs;
    const n = r.next();
    if (!n) break;
    tried.push(n);
  }
  assert.ok(now >= GIVE_UP_AFTER_MS && now < GIVE_UP_AFTER_MS + MAX_DELAY_MS, `gave up after ${now} ms`);
  assert.equal(tried[1].url, 'wss://b/ws', 'then the other edge');
  assert.ok(tried.some((x) => x.url === 'wss://a/ws') && tried.some((x) => x.url === 'wss://b/ws'));
  assert.ok(tried.length > 30, `${tried.length} attempts`);

  // A welcome starts the clock afresh; the edge that worked stays first.
  const working = r.url();
  r.connected();
  now += 1;
  assert.deepEqual(r.next(), { delayMs: 500, url: working });
});

test('media that never comes up: each try waits longer (15 s, 30 s, then 60 s), and the page stops after four in a row', () => {
  assert.equal(MEDIA_CONNECT_TIMEOUT_MS, 15_000);
  assert.deepEqual([0, 1, 2, 3, 4, 50].map(mediaConnectTimeout), [15_000, 30_000, 60_000, 60_000, 60_000, MAX_MEDIA_CONNECT_TIMEOUT_MS]);
  assert.equal(mediaConnectTimeout(-1), 15_000);
  assert.equal(MAX_MEDIA_STALLS, 4);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map(giveUpOnMedia), [false, false, false, false, true, true]);
  // What a person waits before the page says what to do: under four minutes.
  const total = [0, 1, 2, 3].map(mediaConnectTimeout).reduce((a, b) => a + b, 0);
  assert.ok(total <= 4 * 60_000, `${total} ms`);
});

test('jitter stays within ±20 %', () => {
  const lo = new Reconnector({ urls: ['ws://x/ws'], random: () => 0 }).next().delayMs;
  const hi = new Reconnector({ urls: ['ws://x/ws'], random: () => 0.999999 }).next().delayMs;
  assert.equal(lo, 400);
  assert.equal(hi, 600);
});

test('signaling URLs come from the page meta tag, else this origin', () => {
  const loc = { protocol: 'https:', host: 'video.example.org' };
  assert.deepEqual(signalingUrls('', loc), ['wss://video.example.org/ws']);
  assert.deepEqual(signalingUrls(null, { protocol: 'http:', host: '127.0.0.1:8080' }), ['ws://127.0.0.1:8080/ws']);
  assert.deepEqual(signalingUrls(' wss://a.example/ws  wss://b.example/ws wss://a.example/ws javascript:x https://c/ws ', loc), ['wss://a.example/ws', 'wss://b.example/ws']);
});

// ---- the resume ticket --------------------------------------------------------------------------

test('join carries the resume ticket we came with, and the latest one the server sent is kept', () => {
  FakeWebSocket.all = [];
  const plain = new Signaling({ url: 'ws://x/ws', token: 'tok' });
  plain.connect();
  FakeWebSocket.all[0].open();
  assert.deepEqual(FakeWebSocket.all[0].sent[0], { type: 'join', v: 1, token: 'tok' }, 'no ticket, no field');

  const sig = new Signaling({ url: 'ws://x/ws', token: 'tok', resume: 'r1.old.tag' });
  sig.connect();
  const ws = FakeWebSocket.all[1];
  ws.open();
  assert.deepEqual(ws.sent[0], { type: 'join', v: 1, token: 'tok', resume: 'r1.old.tag' });
  let seen = null;
  sig.addEventListener('resume', (ev) => { seen = ev.detail; });
  ws.receive({ type: 'resume', ticket: 'r1.new.tag', expires: 123 });
  assert.equal(sig.resumeTicket, 'r1.new.tag');
  assert.equal(seen.expires, 123);
  ws.receive({ type: 'resume', ticket: 42 });
  assert.equal(sig.resumeTicket, 'r1.new.tag', 'junk does not replace it');
});

test('a dropped socket is an unexpected close; bye:shutdown is recorded as the reason', () => {
  FakeWebSocket.all = [];
  const sig = new Signaling({ url: 'ws://x/ws', token: 'tok' });
  const closes = [];
  sig.addEventListener('close', (ev) => closes.push(ev.detail));
  sig.connect();
  FakeWebSocket.all[0].open();
  sig.drop();
  assert.equal(closes[0].expected, false, 'dropped: unexpected, so the page reconnects');

  const s2 = new Signaling({ url: 'ws://x/ws', token: 'tok' });
  s2.addEventListener('close', (ev) => closes.push(ev.detail));
  s2.connect();
  FakeWebSocket.all[1].open();
  FakeWebSocket.all[1].receive({ type: 'bye', reason: 'shutdown' });
  FakeWebSocket.all[1].close();
  // The page treats `bye:shutdown` as "reconnect" (app.js onBye); the Signaling records why.
  assert.equal(closes[1].reason, 'bye:shutdown');
});

// ---- media-reset --------------------------------------------------------------------------------

test('media-reset: a fresh peer connection answers the next offer, senders are announced again for E2EE', async () => {
  FakePeerConnection.all = [];
  const answers = [];
  const signaling = { sendAnswer: (sdp) => answers.push(sdp), sendCandidate() {}, sendIceRestart() {} };
  const audio = { kind: 'audio' };
  const video = { kind: 'video' };
  const call = new Call({ signaling, localTracks: { audio, video }, config: { encodedInsertableStreams: true } });
  const senders = [];
  call.addEventListener('sender', (ev) => senders.push(ev.detail));
  const resets = [];
  call.addEventListener('reset', (ev) => resets.push(ev.detail.pc));

  await call.handleOffer(OFFER);
  const first = FakePeerConnection.all[0];
  assert.equal(first.remote.length, 1);
  assert.deepEqual(answers, ['answer-0']);
  assert.equal(senders.length, 2);

  call.reset();
  assert.equal(first.closed, true, 'the old peer connection is closed');
  const second = FakePeerConnection.all[1];
  assert.ok(second && call.pc === second && resets[0] === second, 'a fresh one took its place');
  assert.equal(second.config.encodedInsertableStreams, true, 'with the same (E2EE) configuration');

  await call.handleOffer(OFFER);
  assert.equal(first.remote.length, 1, 'the old one gets nothing more');
  assert.equal(second.remote.length, 1);
  assert.deepEqual(answers, ['answer-0', 'answer-1']);
  assert.equal(senders.length, 4, 'both senders announced again, so E2EE attaches to them');
  assert.equal(second.transceivers[0].sender.track, audio);
  assert.equal(second.transceivers[1].sender.track, video);
  assert.equal(second.transceivers[0].direction, 'sendonly');
});
