// End-to-end encryption for a consult: the page side. It runs the handshake with every other
// participant over the server's opaque `relay` messages, hands media keys to the worker
// (web/e2ee/worker.js) that encrypts and decrypts frames, and carries chat and photos sealed
// under the pairwise keys. The server only ever relays ciphertext. Design: docs/CRYPTO.md.

import { fromBase64, fromUtf8, randomBytes, toBase64, utf8 } from './bytes.js';
import {
  BOX_KIND,
  commitment,
  createKeyPairs,
  decodeHello,
  decodeSenderKey,
  derivePair,
  encodeHello,
  encodeSenderKey,
  equalBytes,
  makeHello,
  open,
  seal,
} from './handshake.js';
import { PhotoAssembler, chunkPhoto, jpegSegments, reencodePhoto, stripJpegMetadata } from './photo.js';
import { BASE_KEY_BYTES, ratchetBaseKey } from './sframe.js';

/**
 * Which encoded-transform API to use: 'legacy' (Chromium's createEncodedStreams), 'script' (the
 * standard RTCRtpScriptTransform: Firefox, Safari) or 'none'.
 *
 * Chromium has both, and we use its legacy API on purpose: measured with Chromium 156, a
 * RTCRtpScriptTransform on a sender whose transceiver came from the server's offer (our
 * negotiation: recvonly m-section, then replaceTrack) is fed frames but the *untransformed*
 * frames go on the wire — plaintext while the UI says encrypted. createEncodedStreams encrypts
 * correctly in the same flow. See docs/CRYPTO.md §2.5 and tests/browser/e2ee.test.mjs.
 */
export function e2eeSupport() {
  const S = globalThis.RTCRtpSender;
  const R = globalThis.RTCRtpReceiver;
  if (S && R && typeof S.prototype.createEncodedStreams === 'function' && typeof R.prototype.createEncodedStreams === 'function') {
    return 'legacy';
  }
  if (typeof globalThis.RTCRtpScriptTransform === 'function') return 'script';
  return 'none';
}

/** Extra RTCConfiguration fields the peer connection needs for the chosen API. */
export function peerConnectionConfig() {
  return e2eeSupport() === 'legacy' ? { encodedInsertableStreams: true } : {};
}

const LIMITS = Object.freeze({
  maxRelayChars: 60 * 1024, // a relay `data` string longer than this is refused unread
  maxPeers: 16,
  maxChatChars: 4000,
  handshakeRetryMs: 3000,
  handshakeRetries: 5,
  leaveSwitchDelayMs: 1000, // time for the new key to reach everyone before frames use it
  paceBytesPerSec: 384 * 1024, // below the server's 512 KiB/s relay limit
  paceBurstBytes: 1536 * 1024, // below the server's 2 MiB burst
});

const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

function spawnWorker() {
  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'e2ee' });
  const ready = new Promise((resolve) => {
    const onMessage = (e) => {
      if (e.data && e.data.op === 'ready') {
        worker.removeEventListener('message', onMessage);
        resolve();
      }
    };
    worker.addEventListener('message', onMessage);
  });
  return { worker, ready };
}

// Firefox delivers `rtctransform` to a module worker right away and loses it if the worker's module
// has not finished loading, which leaves that sender or receiver without frames. So a worker is
// started when this module loads (the preview page), long before a call attaches transforms.
let warmWorker = null;
if (e2eeSupport() !== 'none' && typeof Worker === 'function') {
  try {
    warmWorker = spawnWorker();
  } catch {
    warmWorker = null;
  }
}

export class E2eeSession extends EventTarget {
  constructor({ consultId, selfId, linkSecret = null, send }) {
    super();
    this.consultId = String(consultId);
    this.selfId = String(selfId);
    this.linkSecret = linkSecret || null;
    this.sendRelay = send;
    this.support = e2eeSupport();
    this.peers = new Map();
    this.queue = Promise.resolve();
    this.assembler = new PhotoAssembler();
    this.counters = { rejected: 0 };
    this.stopped = false;
    this.bucket = { tokens: LIMITS.paceBurstBytes, at: Date.now() };
    this.attached = new WeakSet();
    this.latest = null; // {epoch, baseKey}: the newest sender key handed out
    this.activeEpoch = -1; // the epoch the worker encrypts with
    this.worker = null;
    this.workerReady = Promise.resolve();
    this.workerIsReady = false;
    if (this.support !== 'none') {
      const spawned = warmWorker || spawnWorker();
      warmWorker = null;
      this.worker = spawned.worker;
      this.workerReady = spawned.ready.then(() => {
        this.workerIsReady = true;
      });
    }
    this.ready = null;
  }

  /** Creates this call's key pairs and first sender key. Idempotent. */
  start() {
    if (!this.ready) this.ready = this.init();
    return this.ready;
  }

  async init() {
    if (this.worker) {
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('e2ee_worker_failed')), 10_000);
      });
      try {
        await Promise.race([this.workerReady, timeout]);
      } finally {
        clearTimeout(timer);
      }
    }
    this.pairs = await createKeyPairs();
    this.hello = makeHello(this.pairs, {
      hasLinkSecret: Boolean(this.linkSecret),
      media: this.worker ? 'e2ee' : 'none',
    });
    this.commit = await commitment(this.consultId, this.selfId, this.hello);
    this.latest = { epoch: 0, baseKey: randomBytes(BASE_KEY_BYTES) };
    this.activate(0);
  }

  /** The state this participant reports in the protocol's `e2ee` message. */
  get state() {
    return this.worker ? 'on' : 'unsupported';
  }

  // ---- media ---------------------------------------------------------------------------------

  attachSender(sender, kind) {
    this.attach(sender, { side: 'send', kind });
  }

  attachReceiver(receiver, participantId, kind) {
    this.attach(receiver, { side: 'recv', kind, participantId: String(participantId) });
  }

  attach(senderOrReceiver, options) {
    if (!this.worker || !senderOrReceiver) return;
    // Once per sender/receiver: createEncodedStreams can be called only once, and replacing a
    // script transform on every renegotiation would only churn streams in the worker.
    if (this.attached.has(senderOrReceiver)) return;
    this.attached.add(senderOrReceiver);
    if (this.support === 'script') {
      const install = () => {
        if (!this.stopped) senderOrReceiver.transform = new RTCRtpScriptTransform(this.worker, options);
      };
      // See warmWorker: a transform created before the worker is ready never gets frames in
      // Firefox. Normally the worker is ready long before; otherwise install it once it is.
      if (this.workerIsReady) install();
      else this.workerReady.then(install);
      return;
    }
    const { readable, writable } = senderOrReceiver.createEncodedStreams();
    this.worker.postMessage({ op: 'legacy', ...options, readable, writable }, [readable, writable]);
  }

  /** Switches the worker to `epoch` if that is newer than what it uses (switches only move forward). */
  activate(epoch) {
    if (!this.worker || this.stopped || epoch <= this.activeEpoch || !this.latest || this.latest.epoch !== epoch) return;
    this.activeEpoch = epoch;
    this.worker.postMessage({ op: 'set-send-key', epoch, baseKey: this.latest.baseKey.slice().buffer });
  }

  /** The clinician accepted that this participant's media is not end-to-end encrypted. */
  allowUnencrypted(participantId) {
    const peer = this.peers.get(participantId);
    if (!peer || !this.worker) return;
    peer.plainAccepted = true;
    this.worker.postMessage({ op: 'allow-plain', participantId, allow: true });
    this.emitStatus(peer);
  }

  /** Frame counters from the worker (encrypted, decrypted, dropped by reason). */
  async stats() {
    return (await this.ask({ op: 'stats' }))?.stats ?? null;
  }

  /**
   * Diagnostics for tests: starts keeping the last protected (still encrypted) video frame received
   * from `participantId`; `takeCiphertextSample` returns it as an array of bytes, or null.
   */
  startCiphertextSample(participantId) {
    if (this.worker) this.worker.postMessage({ op: 'sample-start', participantId });
  }

  async takeCiphertextSample(participantId) {
    const r = await this.ask({ op: 'sample', participantId });
    return r && r.data ? Array.from(r.data) : null;
  }

  ask(message) {
    if (!this.worker) return Promise.resolve(null);
    const id = Math.random();
    return new Promise((resolve) => {
      const onMessage = (e) => {
        if (e.data && e.data.op === message.op && e.data.id === id) {
          this.worker.removeEventListener('message', onMessage);
          resolve(e.data);
        }
      };
      this.worker.addEventListener('message', onMessage);
      this.worker.postMessage({ ...message, id });
    });
  }

  // ---- participants and handshake ------------------------------------------------------------

  /** Runs `fn` after everything queued before it: relay handling is strictly in arrival order. */
  serial(fn) {
    const run = this.queue.then(async () => {
      await this.start();
      if (!this.stopped) return fn();
      return undefined;
    });
    this.queue = run.catch(() => {});
    return run;
  }

  participantJoined(participant) {
    return this.serial(async () => {
      const id = participant && String(participant.id);
      if (!id || id === this.selfId || !ID_PATTERN.test(id)) return;
      const known = this.peers.get(id);
      if (known) {
        known.name = participant.name;
        known.role = participant.role;
        return;
      }
      await this.addPeer(id, participant);
    });
  }

  async addPeer(id, participant = {}) {
    if (this.peers.size >= LIMITS.maxPeers) throw new Error('too_many_peers');
    // Someone new: ratchet our sender key before they can get it, so frames sent before they
    // joined stay unreadable to them. Others derive the next key themselves from the key id.
    if ([...this.peers.values()].some((p) => p.keySent)) {
      this.latest = { epoch: this.latest.epoch + 1, baseKey: await ratchetBaseKey(this.latest.baseKey) };
      this.activate(this.latest.epoch);
    }
    const peer = {
      id,
      name: participant.name,
      role: participant.role,
      state: 'pending',
      code: 'handshake',
      theirCommit: null,
      theirHello: null,
      helloSent: false,
      pair: null,
      keyed: false,
      keySent: false,
      verified: false,
      plainAccepted: false,
      retries: 0,
      timer: null,
      sendChain: Promise.resolve(),
    };
    this.peers.set(id, peer);
    this.sendCommit(peer);
    this.emitStatus(peer);
    return peer;
  }

  sendCommit(peer) {
    this.rawSend(peer.id, 'key', JSON.stringify({ t: 'commit', v: 1, c: toBase64(this.commit) }));
    clearTimeout(peer.timer);
    // Relays to someone whose page is not ready yet can be lost; repeat until the pair exists.
    peer.timer = setTimeout(() => {
      if (this.stopped || peer.pair || peer.retries >= LIMITS.handshakeRetries) return;
      peer.retries++;
      this.sendCommit(peer);
      if (peer.theirCommit) this.sendHello(peer);
    }, LIMITS.handshakeRetryMs);
  }

  sendHello(peer) {
    peer.helloSent = true;
    this.rawSend(peer.id, 'key', JSON.stringify(encodeHello(this.hello)));
  }

  participantLeft(participantId) {
    return this.serial(async () => {
      const peer = this.peers.get(participantId);
      if (!peer) return;
      clearTimeout(peer.timer);
      this.peers.delete(participantId);
      this.assembler.dropPeer(participantId);
      if (this.worker) this.worker.postMessage({ op: 'remove-peer', participantId });
      if (!peer.keySent) return;
      // They held our key: make a fresh random one (not derivable from anything they had), give it
      // to everyone left, and switch once it has had time to arrive.
      const next = { epoch: this.latest.epoch + 1, baseKey: randomBytes(BASE_KEY_BYTES) };
      this.latest.baseKey.fill(0);
      this.latest = next;
      for (const p of this.peers.values()) if (p.pair) this.sendSenderKey(p);
      setTimeout(() => this.activate(next.epoch), LIMITS.leaveSwitchDelayMs);
    });
  }

  /** Entry point for every `relay` message. Every byte is treated as hostile. */
  onRelay(fromId, kind, data) {
    return this.serial(async () => {
      try {
        await this.handleRelay(String(fromId), kind, data);
      } catch {
        this.counters.rejected++;
      }
    });
  }

  async handleRelay(from, kind, data) {
    if (typeof data !== 'string' || data.length > LIMITS.maxRelayChars || !ID_PATTERN.test(from)) {
      throw new Error('bad_relay');
    }
    if (from === this.selfId) throw new Error('bad_relay');
    let peer = this.peers.get(from);
    if (!peer) peer = await this.addPeer(from); // their relay may overtake `participant-joined`
    if (kind === 'key') return this.handleKeyMessage(peer, data);
    if (!peer.pair) throw new Error('not_keyed');
    if (kind === 'chat') return this.handleChat(peer, data);
    if (kind === 'photo') return this.handlePhotoChunk(peer, data);
    throw new Error('bad_kind');
  }

  async handleKeyMessage(peer, data) {
    const msg = JSON.parse(data);
    if (!msg || typeof msg !== 'object') throw new Error('bad_key_message');
    if (msg.t === 'commit') {
      if (msg.v !== 1 || typeof msg.c !== 'string' || msg.c.length !== 44) throw new Error('bad_commit');
      const c = fromBase64(msg.c);
      if (peer.theirCommit) {
        // A repeat is fine; a different commitment from the same participant is not.
        if (!equalBytes(peer.theirCommit, c)) this.fail(peer, 'handshake_conflict');
        else if (!peer.helloSent) this.sendHello(peer);
        return;
      }
      peer.theirCommit = c;
      // Reveal our hello only now that they are bound to theirs.
      this.sendHello(peer);
      return;
    }
    if (msg.t === 'hello') {
      const hello = decodeHello(msg);
      if (!peer.theirCommit) throw new Error('hello_before_commit');
      const expected = await commitment(this.consultId, peer.id, hello);
      if (!equalBytes(expected, peer.theirCommit)) return this.fail(peer, 'commit_mismatch');
      if (peer.theirHello) return; // repeat of the same hello
      peer.theirHello = hello;
      if (!peer.helloSent) this.sendHello(peer);
      peer.pair = await derivePair({
        consultId: this.consultId,
        selfId: this.selfId,
        peerId: peer.id,
        pairs: this.pairs,
        selfHello: this.hello,
        peerHello: hello,
        linkSecret: this.linkSecret,
      });
      clearTimeout(peer.timer);
      if (hello.m === 'none') {
        peer.state = 'off';
        peer.code = 'peer_unsupported';
      }
      this.sendSenderKey(peer);
      this.emitStatus(peer);
      this.dispatchEvent(new CustomEvent('safety-code', { detail: { participantId: peer.id } }));
      return;
    }
    if (msg.t === 'box') {
      if (!peer.pair) throw new Error('not_keyed');
      let body;
      try {
        body = await open(peer.pair, BOX_KIND.key, msg.b);
      } catch (e) {
        // A key box we cannot open means the two sides derived different pair keys: a relay in the
        // middle, or different link secrets. Never silently carry on.
        if (e.message === 'box_auth_failed') this.fail(peer, 'key_mismatch');
        throw e;
      }
      const { epoch, baseKey } = decodeSenderKey(body);
      if (this.worker) this.worker.postMessage({ op: 'set-recv-key', participantId: peer.id, epoch, baseKey: baseKey.buffer }, [baseKey.buffer]);
      if (!peer.keyed) {
        peer.keyed = true;
        if (peer.theirHello.m === 'e2ee' && this.worker) {
          peer.state = 'on';
          peer.code = peer.pair.linkBound ? 'keyed_link' : 'keyed';
        } else {
          peer.state = 'off';
          peer.code = this.worker ? 'peer_unsupported' : 'self_unsupported';
        }
        this.emitStatus(peer);
      }
      return;
    }
    throw new Error('bad_key_message');
  }

  sendSenderKey(peer) {
    const { epoch, baseKey } = this.latest;
    peer.keySent = true;
    this.sealAndSend(peer, 'key', BOX_KIND.key, encodeSenderKey(epoch, baseKey), (b) => JSON.stringify({ t: 'box', b }));
  }

  /** Seals and sends in order per peer: the sequence number is the nonce and must arrive in order. */
  sealAndSend(peer, relayKind, boxKind, body, wrap = (b) => b) {
    const pair = peer.pair;
    const run = peer.sendChain.then(async () => {
      const boxed = await seal(pair, boxKind, body);
      const data = wrap(boxed);
      this.rawSend(peer.id, relayKind, data);
      return data.length;
    });
    peer.sendChain = run.catch(() => {});
    return run;
  }

  rawSend(to, kind, data) {
    if (this.stopped) return;
    this.spend(data.length);
    try {
      this.sendRelay(to, kind, data);
    } catch {
      // The socket is gone; the session ends with it.
    }
  }

  fail(peer, code) {
    peer.state = 'off';
    peer.code = code;
    this.emitStatus(peer);
  }

  emitStatus(peer) {
    this.dispatchEvent(
      new CustomEvent('status', {
        detail: {
          participantId: peer.id,
          state: peer.state,
          code: peer.plainAccepted ? 'accepted_unencrypted' : peer.code,
          verified: peer.verified,
          linkBound: Boolean(peer.pair && peer.pair.linkBound),
        },
      }),
    );
  }

  // ---- safety code ---------------------------------------------------------------------------

  safetyCode(participantId) {
    const peer = this.peers.get(participantId);
    if (!peer || !peer.pair) return null;
    const c = peer.pair.safetyCode;
    return { digits: c.digits, words: { nl: [...c.words.nl], en: [...c.words.en] } };
  }

  markVerified(participantId) {
    const peer = this.peers.get(participantId);
    if (!peer || !peer.pair) return;
    peer.verified = true;
    this.emitStatus(peer);
  }

  /** Ids of the participants this person marked verified (for the protocol's `e2ee` message). */
  verifiedIds() {
    return [...this.peers.values()].filter((p) => p.verified).map((p) => p.id);
  }

  // ---- chat ----------------------------------------------------------------------------------

  async sendChat(text) {
    await this.start();
    if (typeof text !== 'string') throw new Error('chat_invalid');
    const clean = text.trim();
    if (!clean || clean.length > LIMITS.maxChatChars) throw new Error('chat_invalid');
    const body = utf8(clean);
    const sends = [];
    for (const peer of this.peers.values()) if (peer.pair) sends.push(this.sealAndSend(peer, 'chat', BOX_KIND.chat, body));
    await Promise.all(sends);
    this.dispatchEvent(new CustomEvent('chat', { detail: { from: this.selfId, text: clean, time: Date.now() } }));
    return sends.length;
  }

  async handleChat(peer, data) {
    const text = fromUtf8(await open(peer.pair, BOX_KIND.chat, data));
    if (!text || text.length > LIMITS.maxChatChars) throw new Error('chat_invalid');
    this.dispatchEvent(new CustomEvent('chat', { detail: { from: peer.id, text, time: Date.now() } }));
  }

  // ---- photos --------------------------------------------------------------------------------

  async sendPhoto(file) {
    await this.start();
    const jpeg = await reencodePhoto(file);
    const chunks = chunkPhoto(jpeg);
    const recipients = [...this.peers.values()].filter((p) => p.pair);
    for (const chunk of chunks) {
      for (const peer of recipients) {
        if (this.stopped || !this.peers.has(peer.id)) continue;
        await this.pace(Math.ceil((chunk.length + 26) / 3) * 4);
        await this.sealAndSend(peer, 'photo', BOX_KIND.photo, chunk);
      }
    }
    const blob = new Blob([jpeg], { type: 'image/jpeg' });
    this.dispatchEvent(new CustomEvent('photo', { detail: { from: this.selfId, blob, time: Date.now() } }));
    return recipients.length;
  }

  async handlePhotoChunk(peer, data) {
    const chunk = await open(peer.pair, BOX_KIND.photo, data);
    const { done } = this.assembler.add(peer.id, chunk, Date.now());
    if (!done) return;
    jpegSegments(done); // must be a JPEG we can walk, or it is dropped
    const blob = new Blob([stripJpegMetadata(done)], { type: 'image/jpeg' });
    this.dispatchEvent(new CustomEvent('photo', { detail: { from: peer.id, blob, time: Date.now() } }));
  }

  /** Token bucket under the server's relay rate limit, so a photo never trips `rate_limited`. */
  spend(bytes) {
    const now = Date.now();
    const b = this.bucket;
    b.tokens = Math.min(LIMITS.paceBurstBytes, b.tokens + ((now - b.at) / 1000) * LIMITS.paceBytesPerSec);
    b.at = now;
    b.tokens -= bytes;
  }

  async pace(bytes) {
    this.spend(0);
    const deficit = bytes - this.bucket.tokens;
    if (deficit > 0) await new Promise((r) => setTimeout(r, Math.ceil((deficit / LIMITS.paceBytesPerSec) * 1000)));
  }

  // ---- end -----------------------------------------------------------------------------------

  /** Ends the session: keys wiped here and in the worker, chat and photo state dropped. */
  stop() {
    if (this.stopped) return;
    this.stopped = true;
    for (const peer of this.peers.values()) clearTimeout(peer.timer);
    this.peers.clear();
    this.assembler.clear();
    if (this.latest) this.latest.baseKey.fill(0);
    this.latest = null;
    this.pairs = null;
    if (this.worker) {
      this.worker.postMessage({ op: 'wipe' });
      const w = this.worker;
      // Give the wipe a moment to run before the worker (and its memory) goes away.
      setTimeout(() => w.terminate(), 200);
    }
  }
}
