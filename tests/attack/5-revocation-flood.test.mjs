// Finding 5: the revocation store. A clinician of one consult revokes up to
// 100,000 made-up invite ids (pipelined over WebSockets, reconnecting when
// rate limited). Then a clinician of another consult revokes a real invite:
// that must be confirmed, and the invite must no longer join.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { startServer, legitimateConsult, fmt, RSS_LIMIT_MIB } from './lib/server.mjs';
import { join } from './lib/ws.mjs';
import { record } from './lib/report.mjs';

const TOTAL = Number(process.env.ATTACK_REVOCATIONS || 100_000);
const BUDGET_MS = Number(process.env.ATTACK_REVOCATION_SECS || 60) * 1000;
const PARALLEL = Number(process.env.ATTACK_REVOCATION_CONNECTIONS || 5);
// What one connection sends before it reconnects (the per-connection burst).
const PER_CONNECTION = 95;

/** One connection: join, pipeline revokes, count the answers, close. */
async function revokeBurst(port, token, state) {
  let ws;
  try {
    ({ ws } = await join({ port, token, localAddress: '127.0.0.2' }));
  } catch (e) {
    state.joinErrors++;
    state.lastJoinError = e.message;
    await new Promise((r) => setTimeout(r, 100));
    return;
  }
  const from = ws.messages.length;
  for (let i = 0; i < PER_CONNECTION; i++) {
    ws.send({ type: 'revoke-invite', jti: crypto.randomBytes(8).toString('hex') });
  }
  const answered = (m) => m.type === 'invite-revoked' || m.type === 'error';
  const deadline = Date.now() + 5000;
  while (ws.messages.slice(from).filter(answered).length < PER_CONNECTION && Date.now() < deadline && !ws.isClosed) {
    await new Promise((r) => setTimeout(r, 5));
  }
  let firstRefused = null;
  for (const m of ws.messages.slice(from)) {
    if (m.type === 'invite-revoked') state.accepted++;
    else if (m.type === 'error') {
      state.refused[m.code] = (state.refused[m.code] || 0) + 1;
      if (firstRefused === null) firstRefused = m.code;
    }
  }
  // A fresh connection whose first revocations are refused: the store (or this consult's share) is full.
  if (ws.messages.slice(from).find(answered)?.type === 'error') state.full = true;
  ws.close();
}

describe('finding 5: revocation flood from one consult', () => {
  let server;
  const r = {};
  before(async () => {
    server = await startServer({ name: 'revocations' });
    r.baseline = server.stats();
    const stopWatch = server.watch(250);
    const state = { accepted: 0, refused: {}, joinErrors: 0, full: false };
    const t0 = Date.now();
    const tokens = Array.from({ length: PARALLEL }, (_, i) =>
      server.token({ consult: 'flooding-consult', role: 'clinician', sub: `flooder-${i}` }),
    );
    await Promise.all(
      tokens.map(async (token) => {
        while (!state.full && state.accepted < TOTAL && Date.now() - t0 < BUDGET_MS) {
          await revokeBurst(server.port, token, state);
        }
      }),
    );
    r.flood = { ...state, secs: (Date.now() - t0) / 1000 };
    r.flood.perSecond = Math.round(state.accepted / r.flood.secs);

    // Another consult: a clinician invites a patient, then revokes that invite.
    const { ws: clin } = await join({ port: server.port, token: server.token({ consult: 'victim-consult', role: 'clinician' }) });
    clin.send({ type: 'invite', role: 'patient' });
    const created = await clin.ofType('invite-created');
    const from = clin.messages.length;
    clin.send({ type: 'revoke-invite', jti: created.jti });
    r.revokeAnswer = await clin.next((m) => m.type === 'invite-revoked' || m.type === 'error', { from, what: 'answer to revoke-invite' });
    try {
      const { ws, welcome } = await join({ port: server.port, token: created.token });
      r.revokedJoin = `joined (${welcome.state})`;
      ws.close();
    } catch (e) {
      r.revokedJoin = e.code || e.message;
    }
    clin.close();
    r.legitAfter = await legitimateConsult(server, { label: 'after-revocations' });
    stopWatch();
    r.peak = { ...server.peak };
    r.after = server.stats();
    record('5 revocation flood', {
      baseline: fmt(r.baseline),
      after: fmt(r.after),
      peakRssMiB: Math.round(r.peak.rssMiB),
      flood: r.flood,
      otherConsultRevoke: r.revokeAnswer.type === 'error' ? `error ${r.revokeAnswer.code}` : r.revokeAnswer.type,
      revokedInviteJoin: r.revokedJoin,
      legitAfter: r.legitAfter,
    });
  });
  after(async () => {
    await server?.stop();
  });

  it("another consult's clinician can still revoke an invite", () => {
    assert.equal(r.revokeAnswer.type, 'invite-revoked', `answer: ${JSON.stringify(r.revokeAnswer)} after ${r.flood.accepted} revocations by the flooder`);
  });
  it('the revoked invite cannot join', () => {
    assert.equal(r.revokedJoin, 'token_revoked', `the revoked invite: ${r.revokedJoin}`);
  });
  it('memory stays bounded and a clinician and a patient still get media', () => {
    assert.ok(r.peak.rssMiB < RSS_LIMIT_MIB, `peak RSS ${r.peak.rssMiB.toFixed(0)} MiB`);
    assert.ok(r.legitAfter.ok, JSON.stringify(r.legitAfter));
  });
});
