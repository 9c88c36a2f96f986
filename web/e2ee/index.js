// End-to-end encryption for a consult: the page side. It runs the handshake with every other
// participant over the server's opaque `relay` messages, hands media keys to the worker
// (web/e2ee/worker.js) that encrypts and decrypts frames, and carries chat and photos sealed
// under the pairwise keys. The server only ever relays ciphertext. Design: docs/CRYPTO.md.

import { fromBase64, fromUtf8, randomBytes, toBase64, utf8 } from './bytes.js';
import {
  BOX_KIND,
  LINK_LABEL_PATTERN,
  PROTOCOL_VERSION,
  commitment,
  createKeyPairs,
  decodeGone,
  decodeHello,
  decodeLinkSecret,
  decodeSenderKey,
  decodeVouch,
  derivePair,
  encodeGone,
  encodeHello,
  encodeSenderKey,
  encodeVouch,
  equalBytes,
  helloBytes,
  makeHello,
  open,
  pairLinkSecret,
  seal,
  sha256,
} from './handshake.js';
import { PhotoAssembler, chunkPhoto, jpegSegments, reencodePhoto, stripJpegMetadata } from './photo.js';
import { BASE_KEY_BYTES, ratchetBaseKey } from './sframe.js';

export { deriveLinkSecret, LINK_LABEL_PATTERN } from './handshake.js';

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
  heldIds: 4, // relays from ids not in the roster: at most this many ids held at once,
  heldMessages: 8, // this many messages each,
  heldMs: 3000, // for this long, then dropped and reported ('refused')
  refusedIdsReported: 32, // 'refused' events for at most this many distinct ids
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

// This page's first call's key pairs, made while the page loads (Chromium's WebCrypto takes a few
// thread hops per key on a busy machine). Taken by the first session; later ones make their own.
// Ephemeral as before: non-extractable, in memory, used for one call only.
let warmKeys = null;
if (globalThis.crypto && globalThis.crypto.subtle) warmKeys = createKeyPairs().catch(() => null);

async function takeKeyPairs() {
  const warm = warmKeys;
  warmKeys = null;
  return (warm && (await warm)) || createKeyPairs();
}

/** Trust levels, weakest first (docs/CRYPTO.md §2.8). */
export const TRUST_ORDER = Object.freeze(['failed', 'unencrypted', 'needs-decision', 'pending', 'encrypted', 'link-bound', 'verified']);
const TRUST_RANK = new Map(TRUST_ORDER.map((t, i) => [t, i]));

/**
 * Whether a link claim fits the role the page shows for that participant: the master secret is the
 * clinician's, the `patient` label the patient's, a `guest…` label a guest's. Other labels (chosen
 * by an issuer with --link-label) carry no role. A claim that does not fit is not link-bound.
 */
export function claimFitsRole(claim, role) {
  if (claim === '*') return role === 'clinician';
  if (claim === 'patient') return role === 'patient';
  if (typeof claim === 'string' && /^guest(-|$)/.test(claim)) return role === 'guest';
  return true;
}

/**
 * The link claim and secret a page holds, from its link fragment: a clinician link's `k` is the
 * master secret M ('*'); any other link needs `kl` (its label L) with `k` = K_L. Anything else is
 * no usable secret, with the reason (for the page to show).
 */
export function linkClaimFor(role, link) {
  if (!link || !link.secret) return { claim: null, secret: null, problem: null };
  const secret = decodeLinkSecret(link.secret);
  if (!secret) return { claim: null, secret: null, problem: 'invalid_secret' };
  if (link.label === null || link.label === undefined || link.label === '') {
    if (role === 'clinician') return { claim: '*', secret, problem: null };
    return { claim: null, secret: null, problem: 'label_missing' };
  }
  if (typeof link.label !== 'string' || !LINK_LABEL_PATTERN.test(link.label)) return { claim: null, secret: null, problem: 'invalid_label' };
  return { claim: link.label, secret, problem: null };
}

export class E2eeSession extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.consultId
   * @param {string} o.selfId
   * @param {'clinician'|'patient'|'guest'} [o.role] this page's role (only a clinician may accept unbound peers)
   * @param {{secret: string, label: string|null}|null} [o.link] the link secret from the fragment (`k`, `kl`)
   * @param {(to: string, kind: string, data: string) => void} o.send sends a `relay` message
   * @param {object} [o.worker] a media worker to use instead of spawning one (tests, embedding)
   * @param {Promise<void>} [o.workerReady] when that worker runs (default: it runs already)
   * @param {number} [o.workerStartMs] how long the worker may take to start (default 10 s)
   */
  constructor({ consultId, selfId, role = null, link = null, linkSecret = null, send, worker = null, workerReady = null, workerStartMs = 10_000 }) {
    super();
    this.consultId = String(consultId);
    this.selfId = String(selfId);
    this.role = role;
    // `linkSecret` alone (the v1 option) is the clinician form: k without kl.
    const mine = linkClaimFor(role, link || (linkSecret ? { secret: linkSecret, label: null } : null));
    this.linkClaim = mine.claim;
    this.linkSecretBytes = mine.secret;
    this.linkProblem = mine.problem;
    this.sendRelay = send;
    this.support = e2eeSupport();
    this.peers = new Map(); // the roster: only ids given to participantJoined
    this.held = new Map(); // id -> {msgs, timer}: relays from ids not (yet) in the roster
    this.refusedIds = new Set();
    this.burned = new Set(); // removed ids: never again a peer in this call
    this.pendingVouches = new Map(); // X id -> Map(voucher id -> hash), until X's hello is here
    this.queue = Promise.resolve();
    this.assembler = new PhotoAssembler();
    this.counters = { rejected: 0, refused: 0 };
    this.stopped = false;
    this.bucket = { tokens: LIMITS.paceBurstBytes, at: Date.now() };
    this.attached = new WeakSet();
    this.latest = null; // {epoch, baseKey}: the newest sender key handed out
    this.activeEpoch = -1; // the epoch the worker encrypts with
    this.worker = null;
    this.workerReady = Promise.resolve();
    this.workerIsReady = false;
    this.workerStartMs = workerStartMs;
    if (worker) {
      this.worker = worker;
      this.workerIsReady = !workerReady;
      if (workerReady) {
        this.workerReady = Promise.resolve(workerReady).then(() => this.workerStarted());
      }
    } else if (this.support !== 'none') {
      const spawned = warmWorker || spawnWorker();
      warmWorker = null;
      this.worker = spawned.worker;
      this.workerReady = spawned.ready.then(() => this.workerStarted());
    }
    this.ready = null;
    this.mediaReady = null;
    // performance.now() of the handshake's first steps (loadtest/first-picture.sh prints them).
    this.timings = {};
  }

  /** The media worker runs: peers keyed before it are encrypted from now on (`trustOf`). */
  workerStarted() {
    this.workerIsReady = true;
    if (this.stopped) return;
    for (const peer of this.peers.values()) this.emitStatus(peer);
  }

  stamp(name) {
    if (this.timings[name] === undefined) this.timings[name] = Math.round(performance.now());
  }

  /**
   * Creates this call's key pairs and first sender key: the handshake can run from then on.
   * Idempotent. The media worker is awaited separately (`media()`): the handshake does not need
   * it, and on a busy machine it started ~165 ms after the welcome (loadtest/first-picture.sh),
   * which the first picture waited for.
   */
  start() {
    if (!this.ready) this.ready = this.init();
    return this.ready;
  }

  /**
   * Resolves once the media worker runs; rejects (`e2ee_worker_failed`) when it has not started
   * within `workerStartMs` (10 s). Messages posted to it before then wait in its queue.
   */
  media() {
    if (!this.mediaReady) {
      this.mediaReady = (async () => {
        if (!this.worker) return;
        let timer;
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('e2ee_worker_failed')), this.workerStartMs);
        });
        try {
          await Promise.race([this.workerReady, timeout]);
        } finally {
          clearTimeout(timer);
        }
        this.stamp('workerReady');
      })();
    }
    return this.mediaReady;
  }

  async init() {
    this.pairs = await takeKeyPairs();
    this.stamp('keysMade');
    this.hello = makeHello(this.pairs, { link: this.linkClaim, media: this.worker ? 'e2ee' : 'none' });
    this.commit = await commitment(this.consultId, this.selfId, this.hello);
    this.latest = { epoch: 0, baseKey: randomBytes(BASE_KEY_BYTES) };
    this.activate(0);
    this.stamp('ready');
  }

  /** The state this participant reports in the protocol's `e2ee` message. */
  get state() {
    return this.worker ? 'on' : 'unsupported';
  }

  // ---- media ---------------------------------------------------------------------------------

  /**
   * Puts our encrypting transform on a sender. Returns null when it is in place (or frames cannot
   * leave without it), else a promise that settles once it is: the caller keeps the track off the
   * sender until then (web/call.js `holdUntil`). With a script transform (Firefox) a sender with a
   * track and no transform sends its frames as they are — to the SFU, readable — so the track must
   * wait while the worker starts (a reconnect's cold worker, or a server slowing worker.js). It
   * rejects when the worker never starts (`e2ee_worker_failed`) or the session stopped first.
   * With createEncodedStreams (Chromium) frames go nowhere until the worker pipes them.
   */
  attachSender(sender, kind) {
    return this.attach(sender, { side: 'send', kind });
  }

  attachReceiver(receiver, participantId, kind) {
    this.attach(receiver, { side: 'recv', kind, participantId: String(participantId) });
  }

  attach(senderOrReceiver, options) {
    if (!this.worker || !senderOrReceiver) return null;
    // Once per sender/receiver: createEncodedStreams can be called only once, and replacing a
    // script transform on every renegotiation would only churn streams in the worker.
    if (this.attached.has(senderOrReceiver)) return null;
    this.attached.add(senderOrReceiver);
    if (this.support === 'script') {
      const install = () => {
        if (this.stopped) throw new Error('e2ee_stopped');
        senderOrReceiver.transform = new RTCRtpScriptTransform(this.worker, options);
      };
      // See warmWorker: a transform created before the worker is ready never gets frames in
      // Firefox. Normally the worker is ready long before; otherwise install it once it is.
      if (this.workerIsReady) {
        install();
        return null;
      }
      const installed = this.media().then(install);
      installed.catch(() => {}); // a receiver's is not awaited; the sender's caller sees it
      return installed;
    }
    const { readable, writable } = senderOrReceiver.createEncodedStreams();
    this.worker.postMessage({ op: 'legacy', ...options, readable, writable }, [readable, writable]);
    return null;
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

  /**
   * A participant the page shows (the roster). Only these ever get a handshake, a sender key, chat
   * or photos. Relays held for this id (they may overtake `participant-joined`) are handled now.
   */
  participantJoined(participant) {
    this.stamp('peerJoined');
    return this.serial(async () => {
      const id = participant && String(participant.id);
      if (!id || id === this.selfId || !ID_PATTERN.test(id)) return;
      if (this.burned.has(id)) {
        this.counters.rejected++;
        return;
      }
      const known = this.peers.get(id);
      if (known) {
        known.name = participant.name;
        known.role = participant.role;
        await this.afterChange(known);
        return;
      }
      const peer = await this.addPeer(id, participant);
      if (!peer) return;
      const held = this.held.get(id);
      if (!held) return;
      clearTimeout(held.timer);
      this.held.delete(id);
      for (const m of held.msgs) {
        if (this.peers.get(id) !== peer) break;
        try {
          await this.handleRelay(id, m.kind, m.data);
        } catch {
          this.counters.rejected++;
        }
      }
    });
  }

  async addPeer(id, participant = {}) {
    if (this.peers.size >= LIMITS.maxPeers) throw new Error('too_many_peers');
    // Someone new: ratchet our sender key before they can get it, so frames sent before they
    // joined stay unreadable to them. Others derive the next key themselves from the key id.
    // Also when nobody else holds it yet: frames sent while alone went to the server too, and
    // the first to join must not be able to open those (a server that recorded them could hand
    // them over).
    if (this.latest) {
      const { epoch, baseKey } = this.latest;
      const next = await ratchetBaseKey(baseKey);
      // Stopped meanwhile (the media worker failed, the call ended): nothing to keep.
      if (this.stopped) {
        next.fill(0);
        return null;
      }
      this.latest = { epoch: epoch + 1, baseKey: next };
      this.activate(this.latest.epoch);
    }
    const peer = {
      id,
      name: participant.name,
      role: participant.role,
      state: 'pending',
      code: 'handshake',
      failCode: null,
      theirCommit: null,
      theirHello: null,
      helloSent: false,
      pair: null,
      keyed: false,
      keySent: false,
      verified: false,
      accepted: false,
      vouchedBy: null,
      vouchesSent: new Set(),
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
    this.stamp('commitSent');
    this.rawSend(peer.id, 'key', JSON.stringify({ t: 'commit', v: PROTOCOL_VERSION, c: toBase64(this.commit) }));
    clearTimeout(peer.timer);
    // Relays to someone whose page is not ready yet can be lost; repeat until the pair exists.
    peer.timer = setTimeout(() => {
      if (this.stopped || peer.pair || peer.retries >= LIMITS.handshakeRetries || this.peers.get(peer.id) !== peer) return;
      peer.retries++;
      this.sendCommit(peer);
      if (peer.theirCommit) this.sendHello(peer);
    }, LIMITS.handshakeRetryMs);
  }

  sendHello(peer) {
    peer.helloSent = true;
    this.stamp('helloSent');
    this.rawSend(peer.id, 'key', JSON.stringify(encodeHello(this.hello)));
  }

  participantLeft(participantId) {
    return this.serial(async () => this.dropPeer(participantId));
  }

  /**
   * This page removed `participantId` (the clinician's "remove"): like a leave, and the id is burned
   * for the rest of the call (never a peer again, whatever the roster says). A page holding the
   * master secret also tells the peers it is link-bound with, in a sealed `gone` box, so they drop
   * and burn the id and rekey too even if the server keeps them in its roster.
   */
  removed(participantId) {
    return this.serial(async () => {
      const id = String(participantId);
      if (!ID_PATTERN.test(id) || id === this.selfId) return;
      this.burned.add(id);
      if (this.linkClaim === '*') {
        for (const p of this.peers.values()) {
          if (p.id !== id && this.isBound(p) && p.keyed && this.canSeal(p)) {
            this.sealAndSend(p, 'key', BOX_KIND.gone, encodeGone(id), (b) => JSON.stringify({ t: 'gone', b }));
          }
        }
      }
      await this.dropPeer(id);
      this.dispatchEvent(new CustomEvent('removed', { detail: { participantId: id } }));
    });
  }

  async dropPeer(participantId) {
    const held = this.held.get(participantId);
    if (held) {
      clearTimeout(held.timer);
      this.held.delete(participantId);
    }
    this.pendingVouches.delete(participantId);
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
    for (const p of this.peers.values()) if (this.canSeal(p)) this.sendSenderKey(p);
    setTimeout(() => this.activate(next.epoch), LIMITS.leaveSwitchDelayMs);
  }

  /** Entry point for every `relay` message. Every byte is treated as hostile. */
  onRelay(fromId, kind, data) {
    this.stamp('relayIn');
    return this.serial(async () => {
      try {
        const from = String(fromId);
        if (!this.peers.has(from)) return this.hold(from, kind, data);
        await this.handleRelay(from, kind, data);
      } catch {
        this.counters.rejected++;
      }
      return undefined;
    });
  }

  /**
   * A relay from an id the page does not show: nobody answers it. It is kept briefly (a relay may
   * overtake `participant-joined`), then dropped and reported once per id as 'refused'.
   */
  hold(from, kind, data) {
    if (typeof data !== 'string' || data.length > LIMITS.maxRelayChars || !ID_PATTERN.test(from) || from === this.selfId) {
      throw new Error('bad_relay');
    }
    if (this.burned.has(from)) throw new Error('burned_id');
    let held = this.held.get(from);
    if (!held) {
      if (this.held.size >= LIMITS.heldIds) {
        this.refuse(from);
        throw new Error('not_in_roster');
      }
      held = { msgs: [], timer: null };
      this.held.set(from, held);
      held.timer = setTimeout(() => {
        this.serial(async () => {
          if (this.held.get(from) !== held) return;
          this.held.delete(from);
          this.counters.rejected += held.msgs.length;
          this.refuse(from);
        });
      }, LIMITS.heldMs);
    }
    if (held.msgs.length >= LIMITS.heldMessages) throw new Error('held_full');
    held.msgs.push({ kind, data });
  }

  refuse(id) {
    if (this.refusedIds.has(id)) return;
    this.counters.refused++;
    // One event per id, for a bounded number of ids: a server inventing ids without end gets
    // counted, not an endless list on the page.
    if (this.refusedIds.size >= LIMITS.refusedIdsReported) return;
    this.refusedIds.add(id);
    this.dispatchEvent(new CustomEvent('refused', { detail: { participantId: id, reason: 'not_in_roster' } }));
  }

  async handleRelay(from, kind, data) {
    if (typeof data !== 'string' || data.length > LIMITS.maxRelayChars || !ID_PATTERN.test(from)) {
      throw new Error('bad_relay');
    }
    if (from === this.selfId) throw new Error('bad_relay');
    const peer = this.peers.get(from);
    if (!peer) throw new Error('not_in_roster');
    if (kind === 'key') return this.handleKeyMessage(peer, data);
    if (!peer.pair || peer.failCode) throw new Error('not_keyed');
    if (kind === 'chat') return this.handleChat(peer, data);
    if (kind === 'photo') return this.handlePhotoChunk(peer, data);
    throw new Error('bad_kind');
  }

  async handleKeyMessage(peer, data) {
    const msg = JSON.parse(data);
    if (!msg || typeof msg !== 'object') throw new Error('bad_key_message');
    if (msg.t === 'commit') {
      if (msg.v !== PROTOCOL_VERSION || typeof msg.c !== 'string' || msg.c.length !== 44) throw new Error('bad_commit');
      const c = fromBase64(msg.c);
      if (peer.theirCommit) {
        // A repeat is fine; a different commitment from the same participant is not.
        if (!equalBytes(peer.theirCommit, c)) this.fail(peer, 'handshake_conflict');
        else if (!peer.helloSent) this.sendHello(peer);
        return;
      }
      peer.theirCommit = c;
      this.stamp('commitIn');
      // Reveal our hello only now that they are bound to theirs.
      this.sendHello(peer);
      return;
    }
    if (msg.t === 'hello') {
      const hello = decodeHello(msg);
      if (!peer.theirCommit) throw new Error('hello_before_commit');
      this.stamp('helloIn');
      const expected = await commitment(this.consultId, peer.id, hello);
      if (!equalBytes(expected, peer.theirCommit)) return this.fail(peer, 'commit_mismatch');
      if (peer.theirHello) return; // repeat of the same hello
      if (peer.failCode) return;
      peer.theirHello = hello;
      if (!peer.helloSent) this.sendHello(peer);
      const pairSecret = await pairLinkSecret(this.consultId, { claim: this.linkClaim, secret: this.linkSecretBytes }, hello.k);
      peer.pair = await derivePair({
        consultId: this.consultId,
        selfId: this.selfId,
        peerId: peer.id,
        pairs: this.pairs,
        selfHello: this.hello,
        peerHello: hello,
        pairSecret,
      });
      if (pairSecret) pairSecret.fill(0);
      this.stamp('paired');
      clearTimeout(peer.timer);
      if (hello.m === 'none') {
        peer.state = 'off';
        peer.code = 'peer_unsupported';
      }
      const pending = this.pendingVouches.get(peer.id);
      this.pendingVouches.delete(peer.id);
      if (pending) for (const [voucher, hash] of pending) await this.applyVouch(peer, voucher, hash);
      await this.afterChange(peer);
      this.dispatchEvent(new CustomEvent('safety-code', { detail: { participantId: peer.id } }));
      return;
    }
    if (msg.t === 'box' || msg.t === 'vouch' || msg.t === 'gone') {
      if (!peer.pair || peer.failCode) throw new Error('not_keyed');
      const boxKind = msg.t === 'box' ? BOX_KIND.key : BOX_KIND[msg.t];
      // Vouches and removals count only from a proven master-secret holder we are bound with.
      if (msg.t !== 'box' && !this.isVoucher(peer)) throw new Error('not_a_voucher');
      let body;
      try {
        body = await open(peer.pair, boxKind, msg.b);
      } catch (e) {
        // A box we cannot open means the two sides derived different pair keys: a relay in the
        // middle, a rewritten hello, or different link secrets. Never silently carry on.
        if (e.message === 'box_auth_failed') this.fail(peer, 'key_mismatch');
        throw e;
      }
      if (msg.t === 'vouch') return this.handleVouch(peer, body);
      if (msg.t === 'gone') return this.handleGone(peer, body);
      const { epoch, baseKey } = decodeSenderKey(body);
      this.stamp('keyIn');
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
        await this.afterChange(peer);
        // Chromium's encoded streams API cannot ask the sender for a keyframe (the worker does it
        // where RTCRtpScriptTransformer.sendKeyFrameRequest exists): the application asks the
        // server instead, so the first picture does not wait for the decoder's own request.
        if (peer.state === 'on' && this.support === 'legacy') {
          this.dispatchEvent(new CustomEvent('keyframe-wanted', { detail: { participantId: peer.id } }));
        }
      }
      return;
    }
    throw new Error('bad_key_message');
  }

  // ---- trust, release, vouches ---------------------------------------------------------------

  /** The pair is bound by a link secret both sides hold, and the claim fits the role shown. */
  isBound(peer) {
    return Boolean(peer.pair && peer.pair.linkBound && peer.theirHello && claimFitsRole(peer.theirHello.k, peer.role));
  }

  /** A peer whose vouches and removals this page believes: proven holder of the master secret. */
  isVoucher(peer) {
    return Boolean(peer.keyed && !peer.failCode && peer.theirHello.k === '*' && this.isBound(peer));
  }

  /** Whether my sender key (and chat, photos) may go to this peer. */
  releaseAllowed(peer) {
    return peer.verified || peer.accepted || Boolean(peer.vouchedBy) || this.isBound(peer) || this.linkClaim === null;
  }

  canSeal(peer) {
    return Boolean(
      this.peers.get(peer.id) === peer && peer.pair && !peer.failCode && !this.burned.has(peer.id) && this.releaseAllowed(peer),
    );
  }

  /** One trust value per peer (TRUST_ORDER), as the page shows it. */
  trustOf(peer) {
    if (peer.failCode) return 'failed';
    if (!peer.pair) return 'pending';
    if (!this.releaseAllowed(peer)) return 'needs-decision';
    if (peer.theirHello.m === 'none' || !this.worker) return 'unencrypted';
    // Keys exchanged, but our media worker is not running yet: with a script transform (Firefox)
    // nothing is installed on our senders and receivers until it is, so "encrypted" would be
    // claimed too early. The handshake no longer waits for the worker (see `media()`).
    if (!peer.keyed || !this.workerIsReady) return 'pending';
    if (peer.verified) return 'verified';
    if (this.isBound(peer) || peer.vouchedBy) return 'link-bound';
    return 'encrypted';
  }

  /** The consult-wide trust: the weakest over every participant the page shows (null if alone). */
  summary() {
    let worst = null;
    for (const peer of this.peers.values()) {
      const t = this.trustOf(peer);
      if (worst === null || TRUST_RANK.get(t) < TRUST_RANK.get(worst)) worst = t;
    }
    return worst;
  }

  /** Everything the page may show about one participant's end-to-end encryption. */
  peerStatus(participantId) {
    const peer = this.peers.get(String(participantId));
    return peer ? this.statusDetail(peer) : null;
  }

  statusDetail(peer) {
    const trust = this.trustOf(peer);
    let code = peer.code;
    if (peer.failCode) code = peer.failCode;
    else if (peer.plainAccepted) code = 'accepted_unencrypted';
    else if (trust === 'needs-decision') code = peer.pair.linkBound ? 'link_role_mismatch' : 'link_unbound';
    else if (peer.keyed && !peer.verified && !this.isBound(peer)) {
      if (peer.vouchedBy) code = 'keyed_vouched';
      else if (peer.accepted) code = 'accepted_unbound';
    }
    const detail = {
      participantId: peer.id,
      state: peer.failCode ? 'off' : peer.state,
      code,
      verified: peer.verified,
      linkBound: this.isBound(peer) || Boolean(peer.vouchedBy),
      trust,
      linkLabel: peer.theirHello ? peer.theirHello.k : null,
      accepted: peer.accepted,
      keyWithheld: Boolean(peer.pair) && !this.canSeal(peer),
    };
    if (peer.vouchedBy) detail.vouchedBy = peer.vouchedBy;
    return detail;
  }

  emitStatus(peer) {
    this.dispatchEvent(new CustomEvent('status', { detail: this.statusDetail(peer) }));
  }

  /** After anything that can change a peer's trust: release my key if now allowed, vouch, report. */
  async afterChange(peer) {
    if (this.canSeal(peer) && !peer.keySent) this.sendSenderKey(peer);
    await this.sendVouches();
    if (this.peers.get(peer.id) === peer) this.emitStatus(peer);
  }

  /**
   * Clinician only: admit a peer whose pair is not link-bound (its link had no secret, or the
   * relay stripped it). Releases my key to it and vouches for it to the link-bound peers.
   */
  acceptUnbound(participantId) {
    return this.serial(async () => {
      const peer = this.peers.get(String(participantId));
      if (this.role !== 'clinician' || !peer || !peer.pair || peer.failCode) return false;
      peer.accepted = true;
      await this.afterChange(peer);
      return true;
    });
  }

  /**
   * Sealed vouches from a master-secret holder: to every peer P it is link-bound with, for every
   * other peer X it is link-bound with, verified or accepted, the hash of X's hello as received
   * here. P then knows whether it sees the same X (and X becomes link-bound) or not (vouch_mismatch).
   */
  async sendVouches() {
    if (this.linkClaim !== '*') return;
    const vouchable = [...this.peers.values()].filter(
      (x) => x.pair && x.keyed && !x.failCode && (this.isBound(x) || x.verified || x.accepted),
    );
    for (const p of this.peers.values()) {
      if (!p.keyed || p.failCode || !this.isBound(p) || !this.canSeal(p)) continue;
      for (const x of vouchable) {
        if (x === p || p.vouchesSent.has(x.id)) continue;
        p.vouchesSent.add(x.id);
        const body = await encodeVouch(x.id, x.theirHello);
        this.sealAndSend(p, 'key', BOX_KIND.vouch, body, (b) => JSON.stringify({ t: 'vouch', b }));
      }
    }
  }

  async handleVouch(voucher, body) {
    const { participantId, hash } = decodeVouch(body);
    if (participantId === this.selfId || participantId === voucher.id) return;
    const x = this.peers.get(participantId);
    if (x && x.theirHello) return this.applyVouch(x, voucher.id, hash);
    // X's hello (or X) is not here yet: keep the vouch until it is.
    if (!ID_PATTERN.test(participantId) || this.burned.has(participantId)) throw new Error('bad_vouch');
    if (this.pendingVouches.size >= LIMITS.maxPeers && !this.pendingVouches.has(participantId)) throw new Error('too_many_vouches');
    const m = this.pendingVouches.get(participantId) || new Map();
    m.set(voucher.id, hash);
    this.pendingVouches.set(participantId, m);
    return undefined;
  }

  async applyVouch(x, voucherId, hash) {
    const voucher = this.peers.get(voucherId);
    if (!voucher || !this.isVoucher(voucher) || x.failCode) return;
    const mine = await sha256(helloBytes(x.theirHello));
    if (!equalBytes(mine, hash)) {
      // The clinician saw a different hello from X than we did: the relay shows different keys to
      // different people.
      this.fail(x, 'vouch_mismatch');
      return;
    }
    if (x.vouchedBy) return;
    x.vouchedBy = voucherId;
    if (x.pair) await this.afterChange(x);
  }

  async handleGone(voucher, body) {
    const id = decodeGone(body);
    if (id === this.selfId || id === voucher.id) return;
    this.burned.add(id);
    await this.dropPeer(id);
    this.dispatchEvent(new CustomEvent('removed', { detail: { participantId: id } }));
  }

  sendSenderKey(peer) {
    const { epoch, baseKey } = this.latest;
    peer.keySent = true;
    this.sealAndSend(peer, 'key', BOX_KIND.key, encodeSenderKey(epoch, baseKey), (b) => JSON.stringify({ t: 'box', b }))
      .then(() => this.stamp('keySent'), () => {});
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
    peer.failCode = code;
    peer.state = 'off';
    this.emitStatus(peer);
  }

  // ---- safety code ---------------------------------------------------------------------------

  safetyCode(participantId) {
    const peer = this.peers.get(participantId);
    if (!peer || !peer.pair) return null;
    const c = peer.pair.safetyCode;
    return { digits: c.digits, words: { nl: [...c.words.nl], en: [...c.words.en] } };
  }

  /** The user compared the safety codes and they match: trust 'verified'; releases a withheld key. */
  markVerified(participantId) {
    return this.serial(async () => {
      const peer = this.peers.get(String(participantId));
      if (!peer || !peer.pair || peer.failCode) return false;
      peer.verified = true;
      await this.afterChange(peer);
      return true;
    });
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
    for (const peer of this.peers.values()) if (this.canSeal(peer)) sends.push(this.sealAndSend(peer, 'chat', BOX_KIND.chat, body));
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
    const recipients = [...this.peers.values()].filter((p) => this.canSeal(p));
    for (const chunk of chunks) {
      for (const peer of recipients) {
        if (this.stopped || !this.canSeal(peer)) continue;
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
    for (const held of this.held.values()) clearTimeout(held.timer);
    this.held.clear();
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
