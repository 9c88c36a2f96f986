// Small pure decisions of the call screen, kept apart so they can be tested
// without a browser (tests/web): initials, how a video fits its tile, how a
// connection's quality is put into words, how long a call took.

// Titles and forms of address that are not part of a name.
const TITLES = new Set([
  'dhr', 'hr', 'mevr', 'mw', 'mevrouw', 'heer', 'mej', 'mr', 'mrs', 'ms', 'miss', 'dr', 'drs', 'prof', 'ir', 'ing', 'ds', 'sr', 'jr',
]);
// Dutch name particles ("de Vries" files under V).
const PARTICLES = new Set(['van', 'de', 'der', 'den', 'het', "'t", 'ten', 'ter', 'te', 'von', 'da', 'di', 'du', 'la', 'le', 'in']);

/**
 * Up to two initials for a tile without video: first and last word of the
 * name, leaving out titles (Dhr., Mevr., Dr., …) and particles (van, de, …).
 * "Mevr. de Vries" → "V", "Dr. Jan van der Berg" → "JB".
 */
export function initials(name) {
  const words = String(name ?? '')
    .split(/[\s,]+/)
    .map((w) => w.trim())
    .filter(Boolean)
    .filter((w) => !TITLES.has(w.toLowerCase().replace(/\.+$/, '')))
    .filter((w) => !PARTICLES.has(w.toLowerCase()))
    .filter((w) => /\p{L}|\p{N}/u.test(w));
  if (words.length === 0) return '';
  const first = (w) => [...w.replace(/^[^\p{L}\p{N}]+/u, '')][0] || '';
  const picked = words.length === 1 ? [words[0]] : [words[0], words[words.length - 1]];
  return picked.map((w) => first(w).toLocaleUpperCase()).join('');
}

/**
 * How a video fills its tile: 'cover' (fill, cropping the edges) unless the
 * video is upright (a phone held upright) and the tile is wide, where
 * cropping would cut off a head: then 'contain'. Unknown sizes: 'cover'.
 */
export function fitFor(videoWidth, videoHeight, tileWidth, tileHeight) {
  if (!(videoWidth > 0 && videoHeight > 0 && tileWidth > 0 && tileHeight > 0)) return 'cover';
  const videoUpright = videoHeight > videoWidth * 1.05;
  const tileWide = tileWidth > tileHeight * 1.05;
  return videoUpright && tileWide ? 'contain' : 'cover';
}

/**
 * A connection's quality from one interval of receive statistics:
 *   received, lost: packets in the interval (lost may be negative after
 *   duplicates: counted as 0); rtt: seconds to the media server, or null;
 *   expected: whether media should be arriving (camera or microphone on).
 * Returns 'good' | 'fair' | 'poor' | 'unknown'.
 */
export function qualityFrom({ received = 0, lost = 0, rtt = null, expected = true } = {}) {
  const r = Math.max(0, Number(received) || 0);
  const l = Math.max(0, Number(lost) || 0);
  if (r + l === 0) return expected ? 'poor' : 'unknown';
  const loss = l / (r + l);
  const delay = typeof rtt === 'number' && Number.isFinite(rtt) ? rtt : 0;
  if (loss > 0.1 || delay > 0.8) return 'poor';
  if (loss > 0.03 || delay > 0.4) return 'fair';
  return 'good';
}

/** "m:ss", or "h:mm:ss" from an hour on. */
export function formatDuration(ms) {
  const total = Math.max(0, Math.floor((Number(ms) || 0) / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const two = (n) => String(n).padStart(2, '0');
  return h > 0 ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
}

/** Whole minutes, at least 1, for "the call took N minutes". */
export function durationMinutes(ms) {
  return Math.max(1, Math.round((Number(ms) || 0) / 60000));
}
