// One person in a consult, in one browser page (Chromium via playwright-core
// or Firefox via puppeteer-core). Only the calls both drivers share are used
// (goto, evaluate with one argument, click, screenshot, console events); all
// waiting is done here by polling `evaluate`, so both behave the same.
//
// Media is read from the client's test hook `window.__spreekkamer.pc`
// (docs: /tmp/ui-contract.md → "window.__spreekkamer"). Inbound streams are
// attributed to the participant who sent them via the remote SDP: the server
// sets every forwarded track's stream id (a=msid) to the sender's id.

import fs from 'node:fs';
import path from 'node:path';
import { waitUntil } from './wait.mjs';

/**
 * Runs in the page: the peer connection's RTP statistics. Every inbound
 * stream carries the participant who sent it (null if unknown) and whether
 * its m-section is now inactive; outbound is our video per simulcast layer.
 * Counters a browser does not report are 0, except
 * retransmittedPacketsReceived (undefined: Chromium reports it only for RTX
 * streams). Must stay self-contained (it runs in the browser).
 */
function pageStats() {
  const hook = window.__spreekkamer;
  const pc = hook && hook.pc;
  if (!pc) return Promise.resolve({ pc: false, t: Date.now(), rtxNegotiated: false, rtt: null, inbound: [], outbound: [] });
  // mid → stream id (participant id) and whether the m-section is inactive, from the server's offer.
  const sections = {};
  const sdp = (pc.remoteDescription && pc.remoteDescription.sdp) || '';
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /\r?\na=mid:(\S+)/.exec(section);
    const msid = /\r?\na=msid:(\S+)/.exec(section) || /\r?\na=ssrc:\d+ msid:(\S+)/.exec(section);
    if (mid) sections[mid[1]] = { participant: msid ? msid[1] : null, inactive: /\r?\na=inactive/.test(section) };
  }
  const trackToMid = {};
  for (const t of pc.getTransceivers()) {
    if (t.mid !== null && t.receiver && t.receiver.track) trackToMid[t.receiver.track.id] = t.mid;
  }
  return pc.getStats().then((stats) => {
    const inbound = [];
    const outbound = [];
    let rtt = null;
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && typeof s.currentRoundTripTime === 'number') {
        rtt = s.currentRoundTripTime;
      } else if (s.type === 'inbound-rtp') {
        const mid = s.mid !== undefined ? s.mid : trackToMid[s.trackIdentifier];
        const section = sections[mid] || { participant: null, inactive: false };
        inbound.push({
          kind: s.kind,
          mid,
          ssrc: s.ssrc,
          participant: section.participant,
          inactive: section.inactive,
          packetsReceived: s.packetsReceived || 0,
          bytesReceived: s.bytesReceived || 0,
          packetsLost: s.packetsLost || 0,
          nackCount: s.nackCount || 0,
          retransmittedPacketsReceived: s.retransmittedPacketsReceived,
          framesDecoded: s.framesDecoded || 0,
          frameHeight: s.frameHeight || 0,
          frameWidth: s.frameWidth || 0,
          freezeCount: s.freezeCount || 0,
          totalFreezesDuration: s.totalFreezesDuration || 0,
          totalSamplesReceived: s.totalSamplesReceived || 0,
          concealedSamples: s.concealedSamples || 0,
        });
      } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
        outbound.push({
          rid: s.rid || null,
          active: s.active !== false,
          frameHeight: s.frameHeight || 0,
          framesEncoded: s.framesEncoded || 0,
          bytesSent: s.bytesSent || 0,
          nackCount: s.nackCount || 0,
          retransmittedPacketsSent: s.retransmittedPacketsSent || 0,
          qualityLimitationReason: s.qualityLimitationReason || null,
        });
      }
    });
    return {
      pc: true,
      t: Date.now(),
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      // Whether the SFU's offer negotiated RTX (else retransmissions reuse the media SSRC).
      rtxNegotiated: /\na=rtpmap:\d+ rtx\//i.test(sdp),
      rtt,
      inbound,
      outbound,
    };
  });
}

/** Inbound counters summed per participant (key '?' for streams of no known participant). */
function byParticipant(inbound) {
  const out = {};
  for (const i of inbound) {
    const p = (out[i.participant || '?'] ||= {
      video: { framesDecoded: 0, packetsReceived: 0 },
      audio: { packetsReceived: 0, totalSamplesReceived: 0 },
    });
    if (i.kind === 'video') {
      p.video.framesDecoded += i.framesDecoded;
      p.video.packetsReceived += i.packetsReceived;
    } else if (i.kind === 'audio') {
      p.audio.packetsReceived += i.packetsReceived;
      p.audio.totalSamplesReceived += i.totalSamplesReceived;
    }
  }
  return out;
}

function pageSnapshot() {
  const err = document.getElementById('error');
  const hook = window.__spreekkamer;
  return {
    state: document.body ? document.body.dataset.state || null : null,
    error: err && !err.hidden ? { code: err.dataset.code || null, text: err.textContent.trim() } : null,
    lang: document.documentElement.lang,
    href: location.href,
    you: hook && hook.you ? hook.you.id : null,
    participants: hook && hook.participants ? [...hook.participants.keys()] : [],
    tiles: [...document.querySelectorAll('.tile[data-participant-id]')].map((e) => e.dataset.participantId),
  };
}

/**
 * Runs in the page: picks a file in `#photo-input` as a person would, a
 * 64×48 JPEG of one colour with `segment` spliced in after its start-of-image
 * marker. Returns the file's bytes. Must stay self-contained.
 */
async function pagePickPhoto({ name, color, segment }) {
  const c = document.createElement('canvas');
  c.width = 64;
  c.height = 48;
  const g = c.getContext('2d');
  g.fillStyle = color;
  g.fillRect(0, 0, 64, 48);
  const blob = await new Promise((r) => c.toBlob(r, 'image/jpeg', 0.9));
  const jpeg = new Uint8Array(await blob.arrayBuffer());
  const bytes = new Uint8Array(jpeg.length + segment.length);
  bytes.set(jpeg.subarray(0, 2));
  bytes.set(segment, 2);
  bytes.set(jpeg.subarray(2), 2 + segment.length);
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: 'image/jpeg' }));
  const input = document.getElementById('photo-input');
  input.files = dt.files;
  input.dispatchEvent(new Event('change', { bubbles: true }));
  return Array.from(bytes);
}

const compact = (v) => JSON.stringify(v);
/** A URL for a log line: the fragment (the join token) never goes into evidence files. */
const redactUrl = (u) => String(u).replace(/#.*$/, '#…');

export class Participant {
  constructor({ page, name, kind, close }) {
    this.page = page;
    this.name = name;
    this.kind = kind;
    this._close = close;
    this.closed = false;
    this.consoleLines = [];
    const t0 = Date.now();
    const log = (line) => this.consoleLines.push(`[+${((Date.now() - t0) / 1000).toFixed(1)}s] ${line}`);
    page.on('console', (m) => log(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => log(`PAGEERROR: ${e && e.message ? e.message : e}`));
    // A request that failed or was refused: the evidence when a page never starts.
    page.on('requestfailed', (r) => {
      const f = typeof r.failure === 'function' ? r.failure() : null;
      log(`REQUEST FAILED: ${r.method()} ${redactUrl(r.url())}: ${f && f.errorText ? f.errorText : 'failed'}`);
    });
    page.on('response', (r) => {
      if (r.status() >= 400) log(`HTTP ${r.status()}: ${r.request().method()} ${redactUrl(r.url())}`);
    });
  }

  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  /**
   * Open a link; resolves once the application has started (`html[data-app=ready]`,
   * set by app.js once Join works) or the page shows an error. The page's own
   * `body[data-state]` is in the HTML, so it says nothing about the scripts.
   */
  async open(link, { waitUntil = 'load' } = {}) {
    await this.page.goto(link, { waitUntil, timeout: 60_000 });
    let last;
    await this.waitFor(
      async () => {
        last = await this.evaluate(() => ({
          app: document.documentElement.dataset.app || null,
          state: document.body ? document.body.dataset.state || null : null,
        }));
        return last.app === 'ready' || last.state === 'error';
      },
      { what: `${this.name}: html[data-app=ready] (the application started) or an error`, timeout: 45_000, describe: () => compact(last) },
    );
  }

  snapshot() {
    return this.evaluate(pageSnapshot);
  }

  async state() {
    return (await this.snapshot()).state;
  }

  /** `#error[data-code]` when the error element is shown, else null. */
  async errorCode() {
    const s = await this.snapshot();
    return s.error ? s.error.code : null;
  }

  /**
   * RTP statistics of the page's peer connection (see `pageStats`), plus
   * `byParticipant`: video frames/packets and audio packets/samples per
   * remote participant.
   */
  async media() {
    const m = await this.evaluate(pageStats);
    return { ...m, byParticipant: byParticipant(m.inbound) };
  }

  youId() {
    return this.evaluate(() => (window.__spreekkamer && window.__spreekkamer.you ? window.__spreekkamer.you.id : null));
  }

  tileIds() {
    return this.snapshot().then((s) => s.tiles);
  }

  async waitFor(fn, opts = {}) {
    return waitUntil(fn, { timeout: 60_000, interval: 250, ...opts });
  }

  async waitForState(state, { timeout = 60_000 } = {}) {
    let last;
    await this.waitFor(
      async () => {
        last = await this.snapshot();
        return last.state === state;
      },
      { timeout, what: `${this.name}: body[data-state=${state}]`, describe: () => compact(last) },
    );
  }

  /** Click `#join-button` once it is enabled, then wait for `in-call` (or `waitFor` state). */
  async join({ waitFor = 'in-call', timeout = 60_000 } = {}) {
    await this.waitFor(
      () => this.evaluate(() => {
        const b = document.getElementById('join-button');
        return !!b && !b.disabled && !b.hidden;
      }),
      { what: `${this.name}: #join-button enabled`, timeout: 30_000 },
    );
    await this.page.click('#join-button');
    if (waitFor) await this.waitForState(waitFor, { timeout });
  }

  /** Wait until `#error` is shown with a `data-code`; returns the code. */
  async waitForError({ timeout = 30_000 } = {}) {
    let last;
    await this.waitFor(
      async () => {
        last = await this.snapshot();
        return last.error && last.error.code;
      },
      { timeout, what: `${this.name}: #error[data-code] shown`, describe: () => compact(last) },
    );
    return last.error.code;
  }

  /**
   * Wait until video frames are decoded and audio received from each of
   * `ids`, then until both rise again (a second sample strictly above the
   * first): media is flowing, not a one-off. Returns the last sample.
   */
  async waitForMediaFrom(ids, { timeout = 60_000, minFrameRise = 5 } = {}) {
    let last;
    const has = (m) =>
      ids.every((id) => {
        const p = m.byParticipant[id];
        return p && p.video.framesDecoded > 0 && p.audio.packetsReceived > 0 && p.audio.totalSamplesReceived > 0;
      });
    const first = await this.waitFor(
      async () => {
        last = await this.media();
        return has(last) && last;
      },
      { timeout, what: `${this.name}: decoded video + audio from ${ids.join(', ')}`, describe: () => compact(last) },
    );
    return this.waitForRising(ids, first, { timeout, minFrameRise });
  }

  /** From `base` (a `media()` sample), wait until every id's framesDecoded and audio packets rise. */
  async waitForRising(ids, base, { timeout = 60_000, minFrameRise = 5 } = {}) {
    base ||= await this.media();
    let last;
    return this.waitFor(
      async () => {
        last = await this.media();
        const ok = ids.every((id) => {
          const b = base.byParticipant[id] || { video: { framesDecoded: 0 }, audio: { packetsReceived: 0 } };
          const p = last.byParticipant[id];
          return (
            p &&
            p.video.framesDecoded >= b.video.framesDecoded + minFrameRise &&
            p.audio.packetsReceived > b.audio.packetsReceived
          );
        });
        return ok && last;
      },
      {
        timeout,
        what: `${this.name}: framesDecoded/audio packets rising from ${ids.join(', ')} (base ${compact(base.byParticipant)})`,
        describe: () => compact(last && last.byParticipant),
      },
    );
  }

  /**
   * Share a photo through `#photo-input`: a small JPEG drawn in the page in
   * `color`, with the bytes of `segment` (e.g. an EXIF block) right after its
   * start-of-image marker. Returns the bytes of the file picked.
   */
  async pickPhoto({ name = 'photo.jpg', color = '#888', segment = [] } = {}) {
    return Uint8Array.from(await this.evaluate(pagePickPhoto, { name, color, segment: Array.from(segment) }));
  }

  /** Inbound RTP at all (any participant, any kind): used to prove "no media" for refused joins. */
  async inboundPackets() {
    const m = await this.media();
    return m.inbound.reduce((n, i) => n + i.packetsReceived, 0);
  }

  /** Save a screenshot, console log, DOM and media stats under `dir`; returns the paths. */
  async saveArtifacts(dir, prefix) {
    fs.mkdirSync(dir, { recursive: true });
    const base = path.join(dir, `${prefix}-${this.name}`);
    const saved = [];
    if (this.closed) return saved;
    try {
      await this.page.screenshot({ path: `${base}.png`, timeout: 15_000 });
      saved.push(`${base}.png`);
    } catch (e) {
      this.consoleLines.push(`[harness] screenshot failed: ${e.message}`);
    }
    let extra = {};
    try {
      extra = {
        snapshot: await this.snapshot(),
        media: await this.media(),
        html: await this.evaluate(() => document.documentElement.outerHTML.slice(0, 200_000)),
      };
    } catch (e) {
      extra = { error: `could not read page state: ${e.message}` };
    }
    fs.writeFileSync(`${base}.console.txt`, this.consoleLines.join('\n') + '\n');
    saved.push(`${base}.console.txt`);
    fs.writeFileSync(`${base}.state.json`, JSON.stringify(extra, null, 2));
    saved.push(`${base}.state.json`);
    return saved;
  }

  async close() {
    if (this.closed) return;
    this.closed = true;
    await this._close();
  }
}
