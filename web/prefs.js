// What this participant wants to receive (docs/PROTOCOL.md, "Media
// preferences"): per remote participant the highest video layer worth
// sending, decided by how big their tile is on screen, and "audio only".
// Watches the tiles with a ResizeObserver, waits until sizes settle, and
// sends `video-prefs` only when the outcome changed. No DOM beyond the
// elements it is given, no translations.

// A tile lower than this (device pixels: CSS height × devicePixelRatio, so
// a sharp screen gets the detail it can show) gets the low layer, below the
// next one the medium layer, else high: the layers are 1/4, 1/2 and the
// full camera height (720 px for a typical camera).
export const LOW_BELOW_PX = 240;
export const MEDIUM_BELOW_PX = 480;
// Resizing a window fires many observations; decide once it settles.
const SETTLE_MS = 300;

/** 'low' | 'medium' | 'high' for a tile `height` CSS pixels high. Pure. */
export function qualityForHeight(height, hidden = false) {
  if (hidden || !Number.isFinite(height) || height < LOW_BELOW_PX) return 'low';
  if (height < MEDIUM_BELOW_PX) return 'medium';
  return 'high';
}

function devicePixels() {
  const r = typeof window !== 'undefined' ? Number(window.devicePixelRatio) : 1;
  return Number.isFinite(r) && r > 0 ? Math.min(r, 4) : 1;
}

/** A stable text form of a preference, to send only on change. Pure. */
export function prefsKey(audioOnly, quality) {
  const ids = Object.keys(quality).sort();
  return JSON.stringify([!!audioOnly, ids.map((id) => [id, quality[id]])]);
}

export class ReceivePreferences {
  /**
   * @param {{send: (audioOnly: boolean, quality: Object<string,string>) => boolean}} opts
   *   `send` returns whether the message went out (false: not connected yet).
   */
  constructor({ send }) {
    this.send = send;
    this.audioOnly = false;
    this.tiles = new Map(); // participant id → element whose size decides
    this.lastSent = null;
    this.enabled = false;
    this.timer = null;
    this.observer = typeof ResizeObserver === 'function' ? new ResizeObserver(() => this.schedule()) : null;
    this.onVisibility = () => this.schedule();
    if (typeof document !== 'undefined') document.addEventListener('visibilitychange', this.onVisibility);
  }

  /** Start sending (in the call, admitted): the first decision always goes out. */
  enable() {
    this.enabled = true;
    this.lastSent = null;
    this.schedule();
  }

  /** Stop sending (session over); tiles are kept for the next session. */
  disable() {
    this.enabled = false;
    this.lastSent = null;
    clearTimeout(this.timer);
  }

  watch(id, element) {
    const old = this.tiles.get(id);
    if (old === element) return;
    if (old && this.observer) this.observer.unobserve(old);
    this.tiles.set(id, element);
    if (this.observer) this.observer.observe(element);
    this.schedule();
  }

  unwatch(id) {
    const el = this.tiles.get(id);
    if (!el) return;
    if (this.observer) this.observer.unobserve(el);
    this.tiles.delete(id);
    this.schedule();
  }

  /** Forget every tile (their elements are gone). */
  forgetTiles() {
    for (const id of [...this.tiles.keys()]) this.unwatch(id);
  }

  setAudioOnly(on) {
    this.audioOnly = !!on;
    // A deliberate choice of the person: no reason to wait.
    this.flush();
  }

  /** The preference as it stands now: {audioOnly, quality}. */
  current() {
    const pageHidden = typeof document !== 'undefined' && document.visibilityState === 'hidden';
    const quality = {};
    for (const [id, el] of this.tiles) {
      const rect = el.getBoundingClientRect();
      // A tile not rendered (display: none, detached) has no size at all.
      const hidden = pageHidden || !el.isConnected || rect.width === 0 || rect.height === 0;
      quality[id] = qualityForHeight(rect.height * devicePixels(), hidden);
    }
    return { audioOnly: this.audioOnly, quality };
  }

  schedule() {
    if (!this.enabled) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), SETTLE_MS);
  }

  flush() {
    clearTimeout(this.timer);
    if (!this.enabled) return;
    const { audioOnly, quality } = this.current();
    const key = prefsKey(audioOnly, quality);
    if (key === this.lastSent) return;
    if (this.send(audioOnly, quality)) this.lastSent = key;
  }

  close() {
    this.disable();
    if (this.observer) this.observer.disconnect();
    if (typeof document !== 'undefined') document.removeEventListener('visibilitychange', this.onVisibility);
    this.tiles.clear();
  }
}
