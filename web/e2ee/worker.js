// The E2EE media worker: encrypts every outgoing encoded frame and decrypts every incoming one.
// Frames reach it through RTCRtpScriptTransform (standard) or, in older Chromium, as the
// readable/writable pair of createEncodedStreams posted by the page. Keys arrive from the page
// (web/e2ee/index.js) and never leave this worker except as the wipe that clears them.
// A frame that cannot be encrypted or decrypted is dropped and counted, never passed on in clear.

import { ReceiveKeyring, SendKey } from './sframe.js';

let sendKey = null; // SendKey of this participant's current epoch
const keyrings = new Map(); // participantId -> ReceiveKeyring
const plainAllowed = new Set(); // peers without E2EE whose clear media the user explicitly accepted
const transformers = new Set(); // {side, kind, participantId, transformer?} for keyframe requests
const stats = {
  encrypted: 0,
  decrypted: 0,
  passedPlain: 0,
  transforms: { send: 0, recv: 0 },
  dropped: { noSendKey: 0, noKey: 0, auth: 0, replayed: 0, malformed: 0, codec: 0 },
  // Shared screens on their own (also counted above): frames encrypted, decrypted, refused.
  screen: { encrypted: 0, decrypted: 0, auth: 0 },
};

// Diagnostics for tests (tests/browser/e2ee.test.mjs): a copy of the last protected video frame
// received from a participant, taken only while someone asked for it. It is ciphertext exactly as
// the SFU forwarded it, so it reveals nothing the server does not already see.
const sampling = new Set();
const samples = new Map(); // participantId -> Uint8Array

const ALLOWED_MIME = /^(video\/vp8|audio\/opus)$/i;

function codecAllowed(frame) {
  // Only VP8 and Opus have a defined clear prefix (the server offers nothing else). If the browser
  // tells us the codec and it is anything else, refuse rather than guess.
  if (typeof frame.getMetadata !== 'function') return true;
  const mime = frame.getMetadata().mimeType;
  return !mime || ALLOWED_MIME.test(mime);
}

function keyringFor(participantId) {
  let ring = keyrings.get(participantId);
  if (!ring) {
    ring = new ReceiveKeyring();
    keyrings.set(participantId, ring);
  }
  return ring;
}

function senderTransform(kind) {
  return new TransformStream({
    async transform(frame, controller) {
      if (!codecAllowed(frame)) return void stats.dropped.codec++;
      const key = sendKey;
      if (!key) return void stats.dropped.noSendKey++;
      try {
        frame.data = (await key.protect(kind, new Uint8Array(frame.data))).buffer;
      } catch {
        return void stats.dropped.malformed++;
      }
      stats.encrypted++;
      if (kind === 'screen') stats.screen.encrypted++;
      controller.enqueue(frame);
    },
  });
}

function receiverTransform(kind, participantId) {
  return new TransformStream({
    async transform(frame, controller) {
      if (plainAllowed.has(participantId)) {
        stats.passedPlain++;
        return controller.enqueue(frame);
      }
      if (!codecAllowed(frame)) return void stats.dropped.codec++;
      if (kind !== 'audio' && sampling.has(participantId)) samples.set(participantId, new Uint8Array(frame.data).slice());
      const ring = keyrings.get(participantId);
      if (!ring) return void stats.dropped.noKey++;
      try {
        frame.data = (await ring.unprotect(kind, new Uint8Array(frame.data))).buffer;
      } catch (e) {
        const reason = e && e.message;
        if (reason === 'unknown_key') stats.dropped.noKey++;
        else if (reason === 'auth_failed') {
          stats.dropped.auth++;
          if (kind === 'screen') stats.screen.auth++;
        }
        else if (reason === 'replayed') stats.dropped.replayed++;
        else stats.dropped.malformed++;
        return;
      }
      stats.decrypted++;
      if (kind === 'screen') stats.screen.decrypted++;
      controller.enqueue(frame);
    },
  });
}

function attach(side, kind, participantId, readable, writable, transformer) {
  if (kind !== 'audio' && kind !== 'video' && kind !== 'screen') return;
  const entry = { side, kind, participantId, transformer };
  stats.transforms[side === 'send' ? 'send' : 'recv']++;
  transformers.add(entry);
  const t = side === 'send' ? senderTransform(kind) : receiverTransform(kind, participantId);
  readable
    .pipeThrough(t)
    .pipeTo(writable)
    .catch(() => {})
    .finally(() => transformers.delete(entry));
}

function requestKeyframes(side, participantId) {
  for (const e of transformers) {
    if (e.kind === 'audio' || e.side !== side || !e.transformer) continue;
    if (side === 'recv' && e.participantId !== participantId) continue;
    try {
      if (side === 'recv' && typeof e.transformer.sendKeyFrameRequest === 'function') {
        e.transformer.sendKeyFrameRequest().catch(() => {});
      } else if (side === 'send' && typeof e.transformer.generateKeyFrame === 'function') {
        e.transformer.generateKeyFrame().catch(() => {});
      }
    } catch {
      // Optional API; without it the browser's own keyframe logic applies.
    }
  }
}

// Standard path: new RTCRtpScriptTransform(worker, {side, kind, participantId}).
self.onrtctransform = (event) => {
  const t = event.transformer;
  const o = t.options || {};
  attach(o.side, o.kind, o.participantId, t.readable, t.writable, t);
};

// Messages are handled one at a time, in order: key installation is async, and a later key must
// never be overtaken by an earlier one.
let queue = Promise.resolve();
self.onmessage = (event) => {
  queue = queue.then(() => handle(event.data || {})).catch(() => {});
};

async function handle(m) {
  switch (m.op) {
    case 'legacy':
      attach(m.side, m.kind, m.participantId, m.readable, m.writable, null);
      break;
    case 'set-send-key': {
      const next = await SendKey.create(m.epoch, new Uint8Array(m.baseKey));
      new Uint8Array(m.baseKey).fill(0);
      sendKey = next;
      // A fresh key for newcomers is useful only from a keyframe they can decode.
      requestKeyframes('send');
      break;
    }
    case 'set-recv-key': {
      const ring = keyringFor(m.participantId);
      const had = ring.newestEpoch() >= 0;
      await ring.setKey(m.epoch, new Uint8Array(m.baseKey), true);
      new Uint8Array(m.baseKey).fill(0);
      if (!had) requestKeyframes('recv', m.participantId);
      break;
    }
    case 'allow-plain':
      if (m.allow) plainAllowed.add(m.participantId);
      else plainAllowed.delete(m.participantId);
      break;
    case 'remove-peer': {
      const ring = keyrings.get(m.participantId);
      if (ring) ring.wipe();
      keyrings.delete(m.participantId);
      plainAllowed.delete(m.participantId);
      break;
    }
    case 'sample-start':
      sampling.add(m.participantId);
      samples.delete(m.participantId);
      break;
    case 'sample': {
      const data = samples.get(m.participantId) || null;
      sampling.delete(m.participantId);
      samples.delete(m.participantId);
      self.postMessage({ op: 'sample', id: m.id, data });
      break;
    }
    case 'stats':
      self.postMessage({ op: 'stats', id: m.id, stats: JSON.parse(JSON.stringify(stats)) });
      break;
    case 'wipe':
      sendKey = null;
      for (const ring of keyrings.values()) ring.wipe();
      keyrings.clear();
      plainAllowed.clear();
      sampling.clear();
      samples.clear();
      break;
    default:
      break;
  }
}

// Tell the page the handlers are installed: Firefox fires `rtctransform` at a module worker as soon
// as the transform is created and drops it if the module has not finished loading.
self.postMessage({ op: 'ready' });
