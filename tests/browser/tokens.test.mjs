// Issue 4: the JWT attack matrix for asymmetric EHR keys, over a bare
// WebSocket (no browser). The server trusts an RS256, an Ed25519 and an
// ES256 key published in a JWKS on loopback (plus its own HS256 secret, as
// always). Every forged or unfit token must be refused with its documented
// error code (docs/PROTOCOL.md, "Error codes") and leave a `token_rejected`
// line with that reason in the audit log; valid tokens of each algorithm must
// be accepted (so the refusals are not an accident of a broken setup).

import crypto from 'node:crypto';
import { after, before } from 'node:test';
import { assert, assertTokensNotLogged, b64url, scenario, signHs, signNone, nowSecs } from './lib/index.mjs';
import {
  ehrClaims,
  ehrServeArgs,
  ehrSign,
  makeEhrKeys,
  makeKey,
  startJwksServer,
  waitForAudit,
  wsJoin,
  wsLeave,
} from './lib/ehr.mjs';

let keys;
let jwks;
let attackerJwks;
let attacker;

before(async () => {
  keys = makeEhrKeys();
  jwks = await startJwksServer([keys.rsa, keys.ed, keys.ec]);
  // A key the server must never trust, published where a `jku` header points.
  attacker = makeKey('RS256', 'attacker-1');
  attackerJwks = await startJwksServer([attacker]);
});

after(async () => {
  await jwks?.close();
  await attackerJwks?.close();
});

/** A compact JWS with a hand-made header and an arbitrary signature function. */
function rawJws(header, payload, signFn) {
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  return `${input}.${signFn(Buffer.from(input)).toString('base64url')}`;
}

/** Refused with `code`, fatally, socket closed; and audited as token_rejected with that reason. */
async function expectRejected(server, label, token, code) {
  const from = server.auditEvents().length;
  const r = await wsJoin(server, token);
  assert.ok(r.first, `${label}: no answer: ${JSON.stringify(r.messages)}`);
  assert.equal(r.first.type, 'error', `${label}: expected error ${code}, got ${JSON.stringify(r.first)}`);
  assert.equal(r.first.code, code, `${label}: expected ${code}, got ${r.first.code}`);
  assert.equal(r.first.fatal, true, `${label}: a token refusal is fatal`);
  assert.ok(!r.messages.some((m) => m.type === 'welcome' || m.type === 'offer'), `${label}: nothing but the error`);
  if (!r.closed) await new Promise((res) => r.ws.once('close', res));
  const line = await waitForAudit(server, (e) => e.event === 'token_rejected', { from, what: `${label}: a token_rejected audit line` });
  assert.equal(line.reason, code, `${label}: audit reason ${line.reason}, expected ${code}`);
  assert.equal(line.outcome, 'failure', `${label}: audit outcome`);
  assert.equal(line.actor ?? null, null, `${label}: a refused token names no actor (its claims are untrusted)`);
  assert.ok(line.time && line.access_point, `${label}: audit line has time and access point: ${JSON.stringify(line)}`);
  const later = server.auditEvents().slice(from);
  assert.ok(!later.some((e) => e.event === 'join' || e.event === 'token_accepted' || e.event === 'waiting_room_entered'), `${label}: no join audited`);
  return line;
}

async function expectAccepted(server, label, token, sub) {
  const from = server.auditEvents().length;
  const r = await wsJoin(server, token);
  assert.equal(r.first && r.first.type, 'welcome', `${label}: expected welcome, got ${JSON.stringify(r.messages)}`);
  const line = await waitForAudit(server, (e) => e.event === 'token_accepted', { from, what: `${label}: token_accepted` });
  assert.equal(line.actor && line.actor.sub, sub, `${label}: audit names the EHR's sub`);
  await wsLeave(r.ws);
  return r.first;
}

// The matrix sends ~30 bad tokens from one address and needs each one's own error code and audit
// line; in production the failed-join limit and the audit log's per-source rate would (rightly)
// throttle that, so this server raises both. The throttling itself is tested in
// signaling/tests/it/edge_bounds.rs and tests/attack/6-secrets-in-logs.test.mjs.
const MATRIX_LIMITS = ['--join-failure-burst', '1000', '--audit-failures-per-second', '1000'];

scenario('asymmetric EHR tokens: valid RS256/EdDSA/ES256 accepted; the attack matrix refused with codes and audit lines', { timeout: 180_000 }, async (sc) => {
  const server = await sc.startServer({ args: [...ehrServeArgs(jwks), ...MATRIX_LIMITS] });
  const consult = 'tok-matrix';
  const valid = (over = {}) => ehrClaims({ consult, role: 'clinician', name: 'Dr. Test', ...over });
  const used = {};

  // Positive controls: one token per algorithm, through the JWKS.
  for (const key of [keys.rsa, keys.ed, keys.ec]) {
    const sub = `ehr-${key.alg}-user`;
    const token = ehrSign(key, valid({ sub }));
    used[`valid ${key.alg}`] = token;
    const welcome = await expectAccepted(server, `valid ${key.alg}`, token, sub);
    assert.equal(welcome.you.role, 'clinician');
    assert.equal(welcome.consult, consult);
  }
  assert.ok(jwks.requests >= 1, 'keys came from the JWKS URL');

  const rsaPem = keys.rsa.publicPem;
  const hmacWith = (secret) => (input) => crypto.createHmac('sha256', secret).update(input).digest();
  const cases = [
    // alg "none": never accepted, whatever key the header names.
    ['alg none, kid of the RSA key', signNone(valid(), { header: { kid: keys.rsa.kid } }), 'token_bad_algorithm'],
    ['alg none, no kid', signNone(valid()), 'token_bad_algorithm'],
    ['alg NONE (case variant)', signNone(valid(), { header: { alg: 'NONE' } }), 'token_bad_algorithm'],
    // HS/RS confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    ['HS256 signed with the RSA public PEM, kid of the RSA key', signHs(valid(), rsaPem, { header: { kid: keys.rsa.kid } }), 'token_bad_algorithm'],
    ['HS256 signed with the RSA public PEM, no kid', signHs(valid(), rsaPem), 'token_bad_signature'],
    ['HS256 signed with the RSA public key DER, kid of the RSA key',
      rawJws({ alg: 'HS256', typ: 'JWT', kid: keys.rsa.kid }, valid(), hmacWith(keys.rsa.publicKey.export({ type: 'spki', format: 'der' }))),
      'token_bad_algorithm'],
    // The server's own HS256 secret cannot be used under an EHR key id either.
    ['HS256 with the server secret, kid of the RSA key', signHs(valid(), server.secret, { header: { kid: keys.rsa.kid } }), 'token_bad_algorithm'],
    // Keys chosen by kid.
    ['unknown kid', ehrSign(keys.rsa, valid(), { kid: 'no-such-key' }), 'token_bad_signature'],
    ['RS256 token naming the Ed25519 key', ehrSign(keys.rsa, valid(), { kid: keys.ed.kid }), 'token_bad_algorithm'],
    ['EdDSA token naming the RSA key', ehrSign(keys.ed, valid(), { kid: keys.rsa.kid }), 'token_bad_algorithm'],
    ['ES256 token naming the RSA key', ehrSign(keys.ec, valid(), { kid: keys.rsa.kid }), 'token_bad_algorithm'],
    ['RS384 with the RSA key', rawJws({ alg: 'RS384', typ: 'JWT', kid: keys.rsa.kid }, valid(), (i) => crypto.sign('sha384', i, keys.rsa.privateKey)), 'token_bad_algorithm'],
    ['PS256 with the RSA key', rawJws({ alg: 'PS256', typ: 'JWT', kid: keys.rsa.kid }, valid(), (i) =>
      crypto.sign('sha256', i, { key: keys.rsa.privateKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 })), 'token_bad_algorithm'],
    ['another RSA key under the EHR kid', signAttacker(valid(), { kid: keys.rsa.kid }), 'token_bad_signature'],
    // Keys the token brings along must never be used.
    ['jku pointing at an attacker JWKS', signAttacker(valid(), { kid: attacker.kid, jku: attackerJwks.url }), 'token_bad_signature'],
    ['embedded jwk of the attacker, kid of the RSA key', signAttacker(valid(), { kid: keys.rsa.kid, jwk: attacker.jwk }), 'token_bad_signature'],
    ['x5u pointing at an attacker URL', signAttacker(valid(), { kid: attacker.kid, x5u: attackerJwks.url }), 'token_bad_signature'],
    // Claims.
    ['expired (beyond the 30 s leeway)', ehrSign(keys.rsa, valid({ exp: nowSecs() - 120, iat: nowSecs() - 3600, nbf: nowSecs() - 3600 })), 'token_expired'],
    ['not yet valid', ehrSign(keys.rsa, valid({ nbf: nowSecs() + 600 })), 'token_not_yet_valid'],
    ['wrong audience', ehrSign(keys.rsa, valid({ aud: 'someone-else' })), 'token_wrong_audience'],
    ['default audience instead of the configured one', ehrSign(keys.ed, valid({ aud: 'spreekkamer' })), 'token_wrong_audience'],
    ['wrong issuer', ehrSign(keys.rsa, valid({ iss: 'https://evil.example/' })), 'token_wrong_issuer'],
    ['missing exp', ehrSign(keys.rsa, valid({ exp: undefined })), 'token_missing_claim'],
    ['missing sub', ehrSign(keys.ed, valid({ sub: undefined })), 'token_missing_claim'],
    ['unknown role', ehrSign(keys.rsa, valid({ role: 'admin' })), 'token_bad_claim'],
    // Header type: only JWT (docs/EHR-INTEGRATION.md); anything else is not a join token.
    ['typ at+jwt', ehrSign(keys.rsa, valid(), { header: { typ: 'at+jwt' } }), 'token_malformed'],
    ['typ JWE-ish', ehrSign(keys.ed, valid(), { header: { typ: 'JOSE+JSON' } }), 'token_malformed'],
    // Tampering: the payload changed after signing (patient → clinician, other consult).
    ['tampered payload (role raised)', tamper(ehrSign(keys.rsa, valid({ role: 'patient' })), { role: 'clinician' }), 'token_bad_signature'],
    ['tampered payload (EdDSA, other consult)', tamper(ehrSign(keys.ed, valid()), { consult: 'someone-elses-consult' }), 'token_bad_signature'],
    ['tampered signature', flipLastSigChar(ehrSign(keys.ec, valid())), 'token_bad_signature'],
    ['not a JWS at all', 'definitely.not-a-jwt', 'token_malformed'],
  ];
  const failures = [];
  for (const [label, token, code] of cases) {
    used[label] = token;
    try {
      await expectRejected(server, label, token, code);
      sc.log(`ok: ${label} → ${code}`);
    } catch (e) {
      // Run the whole matrix, then fail with every wrong case listed.
      failures.push(`- ${label}: ${e.message.split('\n')[0]}`);
    }
  }
  assert.equal(attackerJwks.requests, 0, 'the server fetched keys from a URL inside a token (jku/x5u)');

  await sc.stopServer(server);
  assertTokensNotLogged(server, used);
  assert.equal(failures.length, 0, `attack matrix cases handled wrongly:\n${failures.join('\n')}`);
});

scenario('JWKS key rotation: a token with a new kid is accepted once the EHR publishes the key', { timeout: 150_000 }, async (sc) => {
  const fresh = makeKey('RS256', `ehr-rsa-rotated-${Date.now()}`);
  const ownJwks = await startJwksServer([keys.rsa]);
  try {
    const server = await sc.startServer({ args: ehrServeArgs(ownJwks) });
    const t0 = Date.now();
    const token = ehrSign(fresh, ehrClaims({ consult: 'tok-rotation', role: 'clinician', name: 'Dr. New', sub: 'ehr-rotated' }));
    // Not yet published: refused.
    await expectRejected(server, 'kid not yet published', token, 'token_bad_signature');
    ownJwks.setKeys([keys.rsa, fresh]);
    // The server refreshes on an unknown kid at most every 30 s (docs/OPERATIONS.md).
    const wait = 32_000 - (Date.now() - t0);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    await expectAccepted(server, 'kid published after rotation', token, 'ehr-rotated');
    assert.ok(ownJwks.requests >= 2, `the JWKS was fetched again (${ownJwks.requests} fetches)`);
  } finally {
    await ownJwks.close();
  }
});

function signAttacker(payload, header) {
  return rawJws({ alg: 'RS256', typ: 'JWT', ...header }, payload, (i) => crypto.sign('sha256', i, attacker.privateKey));
}

function tamper(token, changes) {
  const [h, p, s] = token.split('.');
  const payload = { ...JSON.parse(Buffer.from(p, 'base64url').toString('utf8')), ...changes };
  return `${h}.${b64url(JSON.stringify(payload))}.${s}`;
}

function flipLastSigChar(token) {
  const [h, p, s] = token.split('.');
  // Flip a bit in the middle of the signature (the last character's low bits may be padding).
  const bytes = Buffer.from(s, 'base64url');
  bytes[bytes.length >> 1] ^= 0x01;
  return `${h}.${p}.${bytes.toString('base64url')}`;
}

scenario('invite HTTP API: an EHR back end creates and revokes a patient invite with the clinician token', { timeout: 120_000 }, async (sc) => {
  const server = await sc.startServer({ args: ehrServeArgs(jwks) });
  const consult = 'tok-api';
  const clinicianToken = ehrSign(keys.rsa, ehrClaims({ consult, role: 'clinician', name: 'Dr. API', sub: 'ehr-api-user' }));
  const api = (method, p, { token, body } = {}) =>
    server.fetch(p, {
      method,
      headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });

  // Create: 201 with a join token for the same consult and the deep-link URL (no link secret in it).
  const created = await api('POST', '/api/v1/invites', { token: clinicianToken, body: { role: 'patient', ttl_secs: 3600 } });
  assert.equal(created.status, 201, `POST /api/v1/invites: ${created.status} ${await created.clone().text()}`);
  assert.match(created.headers.get('cache-control') || '', /no-store/);
  const invite = await created.json();
  assert.ok(invite.jti && invite.token && invite.url, JSON.stringify(Object.keys(invite)));
  assert.equal(invite.role, 'patient');
  assert.ok(Math.abs(invite.expires - (nowSecs() + 3600)) < 120, `expires ≈ now + ttl: ${invite.expires}`);
  assert.equal(invite.url, `${server.url}/c#t=${invite.token}`, 'the one deep-link shape, token in the fragment');
  const payload = JSON.parse(Buffer.from(invite.token.split('.')[1], 'base64url').toString('utf8'));
  assert.equal(payload.consult, consult);
  assert.equal(payload.role, 'patient');
  assert.equal(payload.jti, invite.jti);
  await waitForAudit(server, (e) => e.event === 'invite_created' && e.actor?.sub === 'ehr-api-user' && e.outcome === 'success', { what: 'invite_created by the API' });

  // The invite works (waiting room), and the clinician need not be connected for any of this.
  const joined = await wsJoin(server, invite.token);
  assert.equal(joined.first?.type, 'welcome', JSON.stringify(joined.messages));
  assert.equal(joined.first.state, 'waiting');

  // Revoke: 204; the connected invitee is removed and the invite is dead.
  const bye = new Promise((resolve) => {
    joined.ws.on('message', (d) => {
      const m = JSON.parse(d.toString('utf8'));
      if (m.type === 'bye') resolve(m);
    });
    joined.ws.on('close', () => resolve({ type: 'closed-without-bye' }));
  });
  const revoked = await api('DELETE', `/api/v1/invites/${invite.jti}`, { token: clinicianToken });
  assert.equal(revoked.status, 204, `DELETE: ${revoked.status} ${await revoked.text()}`);
  assert.deepEqual(await bye, { type: 'bye', reason: 'removed' });
  const again = await wsJoin(server, invite.token);
  assert.equal(again.first?.code, 'token_revoked', `revoked invite: ${JSON.stringify(again.messages)}`);
  await waitForAudit(server, (e) => e.reason === 'token_revoked' && e.outcome === 'failure', { what: 'the refused revoked invite audited' });
  await waitForAudit(server, (e) => e.event === 'invite_revoked' && e.actor?.sub === 'ehr-api-user' && e.outcome === 'success', { what: 'invite_revoked by the API' });

  // Refusals: no token, a forged token, a patient's token, a clinician inviting a clinician.
  const none = await api('POST', '/api/v1/invites', { body: { role: 'patient' } });
  assert.equal(none.status, 401);
  assert.equal((await none.json()).error.code, 'token_missing');
  const forged = await api('POST', '/api/v1/invites', { token: signHs(ehrClaims({ consult, role: 'clinician' }), keys.rsa.publicPem, { header: { kid: keys.rsa.kid } }), body: { role: 'patient' } });
  assert.equal(forged.status, 401);
  assert.equal((await forged.json()).error.code, 'token_bad_algorithm');
  await waitForAudit(server, (e) => e.event === 'token_rejected' && e.reason === 'token_bad_algorithm', { what: 'API token refusal audited' });
  const patientToken = ehrSign(keys.ed, ehrClaims({ consult, role: 'patient', name: 'P' }));
  const asPatient = await api('POST', '/api/v1/invites', { token: patientToken, body: { role: 'guest' } });
  assert.equal(asPatient.status, 403);
  assert.equal((await asPatient.json()).error.code, 'forbidden');
  const clinicianInvite = await api('POST', '/api/v1/invites', { token: clinicianToken, body: { role: 'clinician' } });
  assert.ok([400, 403].includes(clinicianInvite.status), `inviting a clinician: ${clinicianInvite.status}`);

  await sc.stopServer(server);
  assertTokensNotLogged(server, { clinician: clinicianToken, invite: invite.token, patient: patientToken });
});
