// When and where to reconnect after the WebSocket dropped (a network blip, a
// server restart, an edge that died). The page calls `next()` after every
// failed attempt and `connected()` once a `welcome` arrived; this module only
// decides, so it runs (and is tested) without a browser.
//
// Delays double from 0.5 s up to 10 s, with ±20 % jitter so that the people
// of a restarted server do not all knock at the same instant. Attempts go
// round the list of signaling URLs (one per edge in a cluster; by default
// just this origin's /ws), starting with the one that worked last. After
// five minutes without a `welcome` the page stops and tells the person what
// to do.

export const FIRST_DELAY_MS = 500;
export const MAX_DELAY_MS = 10_000;
export const GIVE_UP_AFTER_MS = 5 * 60_000;
const JITTER = 0.2;

/** The delay before attempt `n` (0-based), without jitter. Pure. */
export function reconnectDelay(n) {
  const exp = Math.min(Math.max(0, n), 20);
  return Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** exp);
}

/**
 * The signaling URLs for this page: the `content` of
 * `<meta name="spreekkamer-signaling">` (space-separated ws:// or wss://
 * URLs, for a cluster), else this origin's `/ws`. Pure.
 */
export function signalingUrls(metaContent, loc) {
  const listed = String(metaContent || '')
    .split(/\s+/)
    .filter((u) => /^wss?:\/\/[^\s/]+\/\S*$/.test(u));
  if (listed.length) return [...new Set(listed)];
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return [`${scheme}//${loc.host}/ws`];
}

export class Reconnector {
  /**
   * @param {{urls: string[], now?: () => number, random?: () => number}} opts
   */
  constructor({ urls, now = () => Date.now(), random = Math.random }) {
    if (!Array.isArray(urls) || urls.length === 0) throw new Error('no signaling URL');
    this.urls = urls;
    this.now = now;
    this.random = random;
    this.current = 0; // index of the URL to use
    this.attempt = 0; // failed attempts since the last welcome
    this.since = null; // when the connection was lost
  }

  /** The URL for the next (or first) connection. */
  url() {
    return this.urls[this.current];
  }

  /** A `welcome` arrived: the current URL works; the next loss starts afresh. */
  connected() {
    this.attempt = 0;
    this.since = null;
  }

  /**
   * The connection was lost or an attempt failed. Returns `{delayMs, url}`
   * for the next attempt, or null when it is time to give up.
   */
  next() {
    const now = this.now();
    if (this.since === null) this.since = now;
    if (now - this.since >= GIVE_UP_AFTER_MS) return null;
    // The first retry goes to the same edge (a blip); later ones go round.
    if (this.attempt > 0) this.current = (this.current + 1) % this.urls.length;
    const base = reconnectDelay(this.attempt);
    this.attempt += 1;
    const jitter = 1 + JITTER * (2 * this.random() - 1);
    return { delayMs: Math.round(base * jitter), url: this.url() };
  }
}

// Media that never came up on a peer connection (no 'connected' within the
// watchdog, or DTLS failed with ICE up: call.js 'media-stalled') starts the
// session over like a lost connection. A `welcome` does not end that story,
// so these stalls are counted apart from the Reconnector's attempts, until
// media is up again: each try waits longer (a slow TURN/TCP line gets the
// time it needs), and after MAX_MEDIA_STALLS in a row the page stops and
// tells the person what to do instead of rejoining for ever.
export const MEDIA_CONNECT_TIMEOUT_MS = 15_000;
export const MAX_MEDIA_CONNECT_TIMEOUT_MS = 60_000;
export const MAX_MEDIA_STALLS = 4;

/** How long the media of a session may take to connect after `stalls` stalls in a row. Pure. */
export function mediaConnectTimeout(stalls) {
  const exp = Math.min(Math.max(0, stalls), 10);
  return Math.min(MAX_MEDIA_CONNECT_TIMEOUT_MS, MEDIA_CONNECT_TIMEOUT_MS * 2 ** exp);
}

/** Whether `stalls` stalls in a row are enough to stop trying. Pure. */
export function giveUpOnMedia(stalls) {
  return stalls >= MAX_MEDIA_STALLS;
}
