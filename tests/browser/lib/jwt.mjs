// JWTs signed in node, for the tokens `spreekkamer link` will not make:
// expired, not yet valid, forged (wrong secret), alg "none", wrong iss/aud,
// missing claims, and later asymmetric (RS256/ES256/EdDSA) EHR-launch tokens.
// Built directly on node:crypto so a test controls every byte of the token.

import crypto from 'node:crypto';

export const b64url = (input) =>
  Buffer.from(typeof input === 'string' ? input : input).toString('base64url');

export const nowSecs = () => Math.floor(Date.now() / 1000);

/** Claims a valid join token would carry; `overrides` replace or (with undefined) remove claims. */
export function claims({ consult, role = 'patient', name = 'Test Patiënt', ttl = 3600, ...overrides } = {}) {
  const now = nowSecs();
  const c = {
    iss: 'spreekkamer',
    aud: 'spreekkamer',
    sub: `test-${crypto.randomBytes(6).toString('hex')}`,
    role,
    consult: consult ?? `consult-${crypto.randomBytes(6).toString('hex')}`,
    name,
    iat: now,
    exp: now + ttl,
  };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) delete c[k];
    else c[k] = v;
  }
  return c;
}

function encodeParts(header, payload) {
  return `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
}

/** HS256/HS384/HS512 with a shared secret (string or Buffer). */
export function signHs(payload, secret, { alg = 'HS256', header = {} } = {}) {
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg];
  if (!hash) throw new Error(`signHs: unsupported alg ${alg}`);
  const input = encodeParts({ alg, typ: 'JWT', ...header }, payload);
  const sig = crypto.createHmac(hash, secret).update(input).digest('base64url');
  return `${input}.${sig}`;
}

/** An unsigned token (`alg: none`, empty signature) — must always be refused. */
export function signNone(payload, { header = {} } = {}) {
  return `${encodeParts({ alg: 'none', typ: 'JWT', ...header }, payload)}.`;
}

/**
 * Asymmetric JWS: RS256 / ES256 / EdDSA with a node KeyObject (or PEM).
 * ES256 signatures are the raw r||s form JWS requires (ieee-p1363), not DER.
 */
export function signAsym(payload, privateKey, { alg = 'RS256', kid, header = {} } = {}) {
  const h = { alg, typ: 'JWT', ...(kid ? { kid } : {}), ...header };
  const input = encodeParts(h, payload);
  let sig;
  if (alg === 'RS256') sig = crypto.sign('sha256', Buffer.from(input), privateKey);
  else if (alg === 'ES256')
    sig = crypto.sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  else if (alg === 'EdDSA') sig = crypto.sign(null, Buffer.from(input), privateKey);
  else throw new Error(`signAsym: unsupported alg ${alg}`);
  return `${input}.${sig.toString('base64url')}`;
}

/** Decode (without verifying) a compact JWS, for assertions on what `spreekkamer link` minted. */
export function decodeJwt(token) {
  const [h, p] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

export const randomSecret = () => crypto.randomBytes(32).toString('hex');
