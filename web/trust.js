// How far this page trusts the end-to-end encryption with each participant, in the words the page
// shows. The E2EE session (web/e2ee/index.js) decides the `trust` value of each peer; this module
// only orders them, picks the weakest for the consult summary, and names the string to show.
// No DOM: tested in tests/web.

/** Weakest first (docs/CRYPTO.md, "Trust per participant"). */
export const TRUST_ORDER = Object.freeze(['failed', 'unencrypted', 'needs-decision', 'pending', 'encrypted', 'link-bound', 'verified']);

/** A trust value we do not know counts as the weakest: the page never overstates protection. */
function rank(trust) {
  const i = TRUST_ORDER.indexOf(trust);
  return i < 0 ? 0 : i;
}

/** The weakest of `trusts` (what the consult summary shows), or null for nobody. */
export function weakestTrust(trusts) {
  let weakest = null;
  for (const trust of trusts) {
    const known = TRUST_ORDER.includes(trust) ? trust : 'failed';
    if (weakest === null || rank(known) < rank(weakest)) weakest = known;
  }
  return weakest;
}

/** The coarse state of the tile's badge: 'on' (keyed), 'off' (not protected) or 'pending'. */
export function badgeState(trust) {
  if (trust === 'encrypted' || trust === 'link-bound' || trust === 'verified') return 'on';
  if (trust === 'pending' || trust === 'needs-decision') return 'pending';
  return 'off';
}

const TILE_KEYS = {
  verified: 'trust.verified',
  'link-bound': 'trust.linkBound',
  encrypted: 'trust.encrypted',
  pending: 'trust.pending',
  'needs-decision': 'trust.needsDecision',
  unencrypted: 'trust.unencrypted',
  failed: 'trust.failed',
};

/** The i18n key of a participant's status line. `host`: this page decides (a clinician). */
export function tileTrustKey(trust, { host = false } = {}) {
  if (trust === 'needs-decision' && host) return 'trust.needsDecisionHost';
  return TILE_KEYS[trust] || TILE_KEYS.failed;
}

/**
 * The i18n key of the consult summary for the weakest trust (null: nobody else is here).
 * `selfE2ee`: this browser encrypts at all.
 */
export function summaryKey(weakest, { host = false, selfE2ee = true } = {}) {
  if (!selfE2ee) return 'summary.selfNone';
  if (weakest === null) return 'summary.alone';
  if (weakest === 'needs-decision') return host ? 'summary.needsDecisionHost' : 'summary.needsDecision';
  return `summary.${TILE_KEYS[weakest] ? TILE_KEYS[weakest].slice('trust.'.length) : 'failed'}`;
}
