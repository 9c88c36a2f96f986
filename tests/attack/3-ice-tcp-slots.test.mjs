// Finding 3: ICE-TCP pending slots. 64 idle connections renewed every
// 2.5 s (and reopened at once when the server drops one) must not keep a
// legitimate participant's ICE-TCP connection out: its STUN connectivity
// check over TCP must be answered. (ICE-TCP is the fallback for networks
// without UDP.) A UDP consult must get media meanwhile.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer, legitimateConsult, sleep, fmt, RSS_LIMIT_MIB } from './lib/server.mjs';
import { join } from './lib/ws.mjs';
import { bindingRequest, isSuccessFor, iceOf, framed, answerFor } from './lib/stun.mjs';
import { record } from './lib/report.mjs';

const SLOTS = Number(process.env.ATTACK_ICE_TCP_CONNECTIONS || 64);
const RENEW_MS = 2500;
const TRIALS = Number(process.env.ATTACK_ICE_TCP_TRIALS || 6);
const SOURCES = (process.env.ATTACK_ICE_TCP_SOURCES || '127.0.0.2').split(' ').filter(Boolean);

/** One ICE-TCP connectivity check: connect, send a signed binding request, wait for the success response. */
function tcpCheck(tcp, ice, timeout = 5000) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect({ host: tcp.ip, port: tcp.port, localAddress: '127.0.0.1' });
    const { packet, txid } = bindingRequest(ice.ufrag, ice.pwd, 'legit');
    let buf = Buffer.alloc(0);
    const finish = (ok, why) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ ok, why, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(false, 'no answer'), timeout);
    s.on('error', (e) => finish(false, e.code || e.message));
    s.on('close', () => finish(false, 'closed by server'));
    s.on('connect', () => s.write(framed(packet)));
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + msg.length);
        if (isSuccessFor(msg, txid)) return finish(true, 'binding success');
      }
    });
  });
}

/** Keep `n` idle ICE-TCP connections, each replaced every RENEW_MS and reopened when dropped. */
function holdSlots(tcp, n) {
  const st = { stopped: false, sockets: new Set(), connects: 0, droppedByServer: 0 };
  const open = (i) => {
    if (st.stopped) return;
    const s = net.connect({ host: tcp.ip, port: tcp.port, localAddress: SOURCES[i % SOURCES.length] });
    st.sockets.add(s);
    st.connects++;
    let renewed = false;
    const renew = setTimeout(() => {
      renewed = true;
      s.destroy();
      open(i);
    }, RENEW_MS);
    s.on('error', () => {});
    s.on('close', () => {
      st.sockets.delete(s);
      clearTimeout(renew);
      if (!renewed && !st.stopped) {
        st.droppedByServer++;
        setTimeout(() => open(i), 20);
      }
    });
  };
  for (let i = 0; i < n; i++) open(i);
  st.release = () => {
    st.stopped = true;
    for (const s of st.sockets) s.destroy();
  };
  return st;
}

describe('finding 3: idle ICE-TCP connections renewed every 2.5 s', () => {
  let server;
  const r = {};
  before(async () => {
    server = await startServer({ name: 'ice-tcp' });
    r.baseline = server.stats();
    // A legitimate participant whose browser must fall back to ICE-TCP.
    const { ws } = await join({ port: server.port, token: server.token({ consult: 'tcp-consult', role: 'clinician' }) });
    const offer = await ws.ofType('offer');
    const ice = iceOf(offer.sdp);
    assert.ok(ice.tcp.length > 0, `the offer has no ICE-TCP candidate:\n${offer.sdp}`);
    const tcp = ice.tcp[0];
    ws.send({ type: 'answer', sdp: answerFor(offer.sdp, 'legit') });
    await sleep(500);
    r.before = await tcpCheck(tcp, ice);
    const stopWatch = server.watch(200);
    const attack = holdSlots(tcp, SLOTS);
    await sleep(1500);
    const legit = legitimateConsult(server, { label: 'during-ice-tcp' });
    r.trials = [];
    for (let i = 0; i < TRIALS; i++) {
      r.trials.push(await tcpCheck(tcp, ice));
      await sleep(700 + Math.random() * 800);
    }
    r.legitDuring = await legit;
    r.attack = { connects: attack.connects, droppedByServer: attack.droppedByServer };
    attack.release();
    stopWatch();
    r.peak = { ...server.peak };
    await sleep(1000);
    r.afterCheck = await tcpCheck(tcp, ice);
    r.after = server.stats();
    r.legitAfter = await legitimateConsult(server, { label: 'after-ice-tcp' });
    ws.close();
    record('3 ICE-TCP slots', {
      baseline: fmt(r.baseline),
      after: fmt(r.after),
      peakRssMiB: Math.round(r.peak.rssMiB),
      checkBeforeAttack: r.before,
      trialsAnswered: `${r.trials.filter((t) => t.ok).length}/${r.trials.length}`,
      trials: r.trials.map((t) => `${t.ok ? 'ok' : 'FAIL'} ${t.why} ${t.ms} ms`),
      attacker: r.attack,
      legitDuring: r.legitDuring,
      checkAfterAttack: r.afterCheck,
      legitAfter: r.legitAfter,
    });
  });
  after(async () => {
    await server?.stop();
  });

  it('an ICE-TCP check works before the attack (the harness itself is sound)', () => {
    assert.ok(r.before.ok, JSON.stringify(r.before));
  });
  it('every legitimate ICE-TCP connectivity check is answered during the attack', () => {
    const failed = r.trials.filter((t) => !t.ok);
    assert.equal(failed.length, 0, `${failed.length}/${r.trials.length} refused: ${JSON.stringify(r.trials)}`);
  });
  it('a clinician and a patient get media during and after the attack; memory stays bounded', () => {
    assert.ok(r.legitDuring.ok, `during: ${JSON.stringify(r.legitDuring)}`);
    assert.ok(r.legitAfter.ok, `after: ${JSON.stringify(r.legitAfter)}`);
    assert.ok(r.afterCheck.ok, `ICE-TCP check after: ${JSON.stringify(r.afterCheck)}`);
    assert.ok(r.peak.rssMiB < RSS_LIMIT_MIB, `peak RSS ${r.peak.rssMiB.toFixed(0)} MiB`);
  });
});
