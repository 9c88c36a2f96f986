// Issue 5, media quality on a bad network, in headless Chromium through the
// real release binary (E2EE on, as by default). One browser sits in a network
// namespace of its own behind a veth pair (lib/netem.mjs), where the test
// impairs only that browser's path:
//  1. 5 % of its UDP packets dropped and the rest delayed 20 ± 5 ms, in each
//     direction: both sides keep decoding video without long freezes, audio
//     keeps flowing, and NACKs and retransmissions repair the loss.
//  2. its downlink capped at 350 kbit/s in a three-way call: the SFU gives it
//     the publisher's lowest simulcast layer while an uncapped subscriber gets
//     a higher one, and the capped link is not flooded (it was, by forwarded
//     padding probes and repeated retransmissions, until the SFU dropped the
//     one and bounded the other).
// The CI kernel has no sch_netem (see lib/netem.mjs), so loss comes from
// nf_tables random drops and delay from a small NFQUEUE program.

import crypto from 'node:crypto';
import { assert, metricSum, scenario, sleep, slowdown, waitUntil } from './lib/index.mjs';
import { capabilities, peerNamespace } from './lib/netem.mjs';

const newConsult = () => `consult-${crypto.randomBytes(6).toString('hex')}`;

const sum = (xs, k) => xs.reduce((n, x) => n + (x[k] || 0), 0);

/**
 * One participant's inbound media as seen by a subscriber: counters summed
 * over its streams. `frameHeight` is that of the stream that decoded most
 * frames since `prev` (an earlier sample), should layer switches show up as
 * new SSRCs.
 */
function from(sample, id, prev = null) {
  const before = new Map((prev ? prev.inbound : []).map((i) => [`${i.kind}:${i.ssrc}`, i.framesDecoded]));
  const recent = (v) => v.framesDecoded - (before.get(`video:${v.ssrc}`) || 0);
  const mine = sample.inbound.filter((i) => i.participant === id);
  const video = mine.filter((i) => i.kind === 'video');
  const audio = mine.filter((i) => i.kind === 'audio');
  const rtx = video.map((v) => v.retransmittedPacketsReceived);
  return {
    video: {
      streams: video.length,
      packetsReceived: sum(video, 'packetsReceived'),
      packetsLost: sum(video, 'packetsLost'),
      nackCount: sum(video, 'nackCount'),
      retransmittedPacketsReceived: rtx.some((x) => x !== undefined) ? sum(video, 'retransmittedPacketsReceived') : undefined,
      framesDecoded: sum(video, 'framesDecoded'),
      freezeCount: sum(video, 'freezeCount'),
      totalFreezesDuration: sum(video, 'totalFreezesDuration'),
      frameHeight: video.length ? video.reduce((a, b) => (recent(b) > recent(a) ? b : a)).frameHeight : 0,
    },
    audio: {
      packetsReceived: sum(audio, 'packetsReceived'),
      packetsLost: sum(audio, 'packetsLost'),
      totalSamplesReceived: sum(audio, 'totalSamplesReceived'),
      concealedSamples: sum(audio, 'concealedSamples'),
    },
  };
}

const fmt = (v) => JSON.stringify(v);

async function needImpairment(sc, what) {
  const caps = await capabilities();
  if (!caps.root) {
    sc.t.skip(`needs root for network namespaces (${what})`);
    return null;
  }
  return caps;
}

/** Server reachable from a peer namespace: HTTP on 0.0.0.0 (forwarded there), media announced on the veth address. */
async function serverFor(sc, ns) {
  const server = await sc.startServer({
    host: '0.0.0.0',
    // No ICE-TCP: the impairments apply to UDP media, which must be the path in use.
    args: ['--waiting-room=false', '--announce-ip', ns.hostIp, '--no-ice-tcp'],
  });
  await ns.forwardTcp(server.port);
  return server;
}

scenario('5 % loss and 40 ms more RTT on one side of a 1:1 call: both keep decoding, NACK/RTX repair the loss', { timeout: 150_000 }, async (sc) => {
  const caps = await needImpairment(sc, 'loss');
  if (!caps) return;
  assert.ok(caps.nftLoss, `no way to inject loss on this machine: ${fmt(caps.missing)} (scripts/test.sh deps installs nftables)`);
  assert.ok(caps.delay, `no way to delay packets on this machine: ${fmt(caps.missing)} (scripts/test.sh deps installs iptables, python3)`);
  sc.log(`tc netem available: ${caps.netem} (${caps.missing.netem || 'ok'}); loss via nf_tables random drop, delay via NFQUEUE`);

  const ns = await peerNamespace(sc, { tag: 'skloss' });
  const server = await serverFor(sc, ns);
  const consult = newConsult();
  const clinLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' });
  const patLink = await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' });

  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient', { netns: ns.name });
  await Promise.all([clin.open(clinLink), pat.open(patLink)]);
  await clin.join();
  await pat.join();
  const clinId = await clin.youId();
  const patId = await pat.youId();
  // A clean call first, so what follows measures the loss, not call set-up.
  await Promise.all([clin.waitForMediaFrom([patId]), pat.waitForMediaFrom([clinId])]);

  // 5 % loss and 20 ± 5 ms each way (≈ 40 ms more round trip), on the patient's UDP only.
  await ns.udpLoss(5);
  await ns.delayUdp({ ms: 20, jitterMs: 5 });
  const sides = [
    { who: clin, remote: patId, label: 'clinician (receives over the lossy uplink)' },
    { who: pat, remote: clinId, label: 'patient (receives over the lossy downlink)' },
  ];
  const first = await Promise.all(sides.map((s) => s.who.media()));
  const base = sides.map((s, i) => from(first[i], s.remote));
  for (const [i, s] of sides.entries()) {
    assert.ok(base[i].video.streams > 0, `${s.label}: no inbound video stream from ${s.remote}: ${fmt(first[i])}`);
  }

  // ~20 s under loss, sampled every second: the longest stretch without a new
  // decoded frame (a freeze the person would see) and without new audio.
  const windowMs = 20_000;
  const t0 = Date.now();
  const prev = [...base];
  const worst = sides.map(() => ({ videoStallMs: 0, audioStallMs: 0 }));
  const lastProgress = sides.map(() => ({ video: t0, audio: t0 }));
  // Per second: frames decoded since the start @ frame height, to tell a stall from a layer switch in a failure.
  const timeline = sides.map(() => []);
  let last = base;
  let lastRaw = first;
  while (Date.now() - t0 < windowMs) {
    await sleep(1_000);
    const samples = await Promise.all(sides.map((s) => s.who.media()));
    lastRaw = samples;
    const now = Date.now();
    last = sides.map((s, i) => from(samples[i], s.remote));
    for (let i = 0; i < sides.length; i++) {
      if (last[i].video.framesDecoded > prev[i].video.framesDecoded) lastProgress[i].video = now;
      if (last[i].audio.packetsReceived > prev[i].audio.packetsReceived) lastProgress[i].audio = now;
      worst[i].videoStallMs = Math.max(worst[i].videoStallMs, now - lastProgress[i].video);
      worst[i].audioStallMs = Math.max(worst[i].audioStallMs, now - lastProgress[i].audio);
      timeline[i].push(`${((now - t0) / 1000).toFixed(0)}s:${last[i].video.framesDecoded - base[i].video.framesDecoded}@${last[i].video.frameHeight}p`);
      prev[i] = last[i];
    }
  }
  const elapsed = (Date.now() - t0) / 1000;
  const counters = await ns.lossCounters();
  const delay = await ns.delayStats();
  const rtts = (await Promise.all(sides.map((s) => s.who.media()))).map((x) => x.rtt);
  sc.log(`nf_tables loss counters: ${fmt(counters)}; delayer: ${fmt(delay)}; ICE RTT (s) clinician, patient: ${fmt(rtts)}; RTX negotiated: ${fmt(first.map((f) => f.rtxNegotiated))}`);
  // The delay was in force to the end (the queue is fail-open: a dead delayer would go unnoticed otherwise).
  assert.ok(delay.delayerRunning && delay.queued > 200, `packets were not delayed: ${fmt(delay)} ${ns.delayerOut}`);
  assert.ok(rtts[1] === null || rtts[1] >= 0.025, `patient's ICE round trip ${rtts[1]} s, expected ≥ 25 ms with 20 ms added each way`);

  // The impairment really happened, at about the rate asked for.
  for (const dir of ['down', 'up']) {
    const c = counters[dir];
    assert.ok(c && c.seen > 200, `${dir}: too few UDP packets crossed the lossy link to judge (${fmt(c)})`);
    const rate = c.dropped / c.seen;
    assert.ok(rate > 0.02 && rate < 0.09, `${dir}: dropped ${c.dropped} of ${c.seen} UDP packets (${(rate * 100).toFixed(1)} %), expected ≈ 5 %`);
  }

  const report = [];
  for (const [i, s] of sides.entries()) {
    const b = base[i];
    const l = last[i];
    const d = {
      frames: l.video.framesDecoded - b.video.framesDecoded,
      freezes: l.video.freezeCount - b.video.freezeCount,
      freezeSecs: l.video.totalFreezesDuration - b.video.totalFreezesDuration,
      videoPackets: l.video.packetsReceived - b.video.packetsReceived,
      videoLost: l.video.packetsLost - b.video.packetsLost,
      nacks: l.video.nackCount - b.video.nackCount,
      rtx: l.video.retransmittedPacketsReceived === undefined ? undefined : l.video.retransmittedPacketsReceived - (b.video.retransmittedPacketsReceived || 0),
      audioPackets: l.audio.packetsReceived - b.audio.packetsReceived,
      audioSamples: l.audio.totalSamplesReceived - b.audio.totalSamplesReceived,
      concealed: l.audio.concealedSamples - b.audio.concealedSamples,
    };
    const line = `${s.label}: over ${elapsed.toFixed(1)} s ${fmt(d)}, longest video stall ${worst[i].videoStallMs} ms, audio stall ${worst[i].audioStallMs} ms`;
    report.push(line);
    sc.log(line);
    const why = `\n${line}\nframes@height per second: ${timeline[i].join(' ')}\nbase ${fmt(b)}\nlast ${fmt(l)}`;

    // Video keeps decoding: on average ≥ 5 fps (the fake camera sends 30; a
    // loaded 2-core machine with E2EE manages far more than 5), never a stall
    // longer than 5 s, frozen (Chromium's own measure) under a third of the
    // time. Measured on a 2-core machine at load 9–14: 0–2.7 s of 20 s; without
    // repair, 5 % loss breaks a frame about every half second and video waits
    // for keyframes most of the time.
    assert.ok(d.freezeSecs <= elapsed / 3, `${s.label}: video frozen ${d.freezeSecs.toFixed(1)} s of ${elapsed.toFixed(1)} s${why}`);
    assert.ok(d.frames >= 5 * elapsed, `${s.label}: only ${d.frames} video frames decoded in ${elapsed.toFixed(1)} s under 5 % loss${why}`);
    assert.ok(worst[i].videoStallMs <= 5_000 * slowdown, `${s.label}: video stalled for ${worst[i].videoStallMs} ms${why}`);
    // Audio keeps flowing (no NACK for audio: loss shows as concealment, bounded).
    assert.ok(d.audioPackets >= 10 * elapsed, `${s.label}: only ${d.audioPackets} audio packets in ${elapsed.toFixed(1)} s${why}`);
    assert.ok(worst[i].audioStallMs <= 3_000 * slowdown, `${s.label}: audio stalled for ${worst[i].audioStallMs} ms${why}`);
    assert.ok(d.audioSamples > 0 && d.concealed / d.audioSamples < 0.3, `${s.label}: ${d.concealed} of ${d.audioSamples} audio samples concealed${why}`);
  }

  // The patient's downlink loses 5 % of what the SFU sends it: its browser must
  // NACK, the SFU must retransmit, and after repair few of the video packets
  // stay lost — under half the measured drop rate and under 2 %, where no
  // repair would leave ≈ 5 % (Chromium counts a packet lost only if no
  // retransmission filled the gap; it reports retransmittedPacketsReceived
  // only for RTX streams). (On the clinician's side the SFU repairs the
  // uplink loss itself, so no NACKs are required there; see below.)
  const pb = base[1].video;
  const pl = last[1].video;
  const nacks = pl.nackCount - pb.nackCount;
  const rtx = pl.retransmittedPacketsReceived === undefined ? undefined : pl.retransmittedPacketsReceived - (pb.retransmittedPacketsReceived || 0);
  const got = pl.packetsReceived - pb.packetsReceived;
  const lost = pl.packetsLost - pb.packetsLost;
  const ctx = `\n${report.join('\n')}`;
  assert.ok(nacks > 0, `patient: no NACKs sent for its lossy downlink (nackCount ${pb.nackCount} → ${pl.nackCount})${ctx}`);
  assert.ok(rtx === undefined || rtx > 0, `patient: ${nacks} NACKs sent but no retransmission arrived (retransmittedPacketsReceived ${pb.retransmittedPacketsReceived} → ${pl.retransmittedPacketsReceived}): the SFU does not answer NACKs${ctx}`);
  // ~30 video packets/s reach it once padding probes are not forwarded (measured 583-604 in 20 s).
  assert.ok(got > 200, `patient: only ${got} video packets received in ${elapsed.toFixed(1)} s${ctx}`);
  const downRate = counters.down.dropped / counters.down.seen;
  const residual = lost / (got + Math.max(lost, 0));
  assert.ok(
    residual < Math.min(0.02, downRate / 2),
    `patient: ${lost} of ${got + lost} video packets still lost after retransmission (${(residual * 100).toFixed(2)} %, ` +
      `link dropped ${(downRate * 100).toFixed(1)} %): NACK/RTX is not repairing the loss${ctx}`,
  );
  // The server saw them too (its NACK counter, where it has one).
  // The patient's uplink loses 5 % of what it publishes: the SFU must notice
  // the holes and NACK the patient's browser, which resends, and the
  // clinician then misses few of the patient's video packets (the SFU
  // forwards the late resends; it cannot resend what it never received).
  const outSum = (raw, k) => raw.outbound.reduce((n, o) => n + (o[k] || 0), 0);
  const upNacks = outSum(lastRaw[1], 'nackCount') - outSum(first[1], 'nackCount');
  const upResent = outSum(lastRaw[1], 'retransmittedPacketsSent') - outSum(first[1], 'retransmittedPacketsSent');
  const cb = base[0].video;
  const cl = last[0].video;
  const upGot = cl.packetsReceived - cb.packetsReceived;
  const upLost = cl.packetsLost - cb.packetsLost;
  const upRate = counters.up.dropped / counters.up.seen;
  const upResidual = upLost / (upGot + Math.max(upLost, 0));
  sc.log(`uplink repair: the SFU's NACKs received by the patient ${upNacks}, resent ${upResent}; clinician lost ${upLost} of ${upGot + upLost} (${(upResidual * 100).toFixed(2)} %, link dropped ${(upRate * 100).toFixed(1)} %)`);
  assert.ok(upNacks > 0, `patient: its browser received no NACKs from the SFU for its lossy uplink${ctx}`);
  assert.ok(upResent > 0, `patient: ${upNacks} NACKs from the SFU but no packet resent${ctx}`);
  // What is left must be far below what the link dropped. This bound was
  // "below the drop rate" while residual / drop rate read 0.28-0.82: put
  // down to Chromium not resending VP8's higher temporal layers, it was the
  // SFU's own retransmission budget refusing the late repairs it forwarded
  // for the first time (docs/DECISIONS.md §6). Since then: 0 of ~1,200-1,800
  // packets lost in 6 runs. A quarter of the drop rate leaves room for a
  // packet the publisher does not resend.
  assert.ok(
    upResidual < upRate / 4,
    `clinician: ${upLost} of ${upGot + upLost} of the patient's video packets still lost (${(upResidual * 100).toFixed(2)} %, ` +
      `uplink dropped ${(upRate * 100).toFixed(1)} %): the SFU's NACKs are not repairing the uplink, or its repairs are not forwarded${ctx}`,
  );
  const nackMetric = metricSum(await server.metrics(), 'spreekkamer_media_nacks_received_total');
  sc.log(`server: spreekkamer_media_nacks_received_total = ${nackMetric}`);
  if (nackMetric !== undefined) assert.ok(nackMetric > 0, `the server counted no NACKs while the patient sent ${nacks}${ctx}`);
});

scenario('a subscriber with a 350 kbit/s downlink gets the lowest simulcast layer, an uncapped one a higher layer', { timeout: 180_000 }, async (sc) => {
  const caps = await needImpairment(sc, 'rate cap');
  if (!caps) return;
  assert.ok(caps.tbf, `no tc tbf on this machine: ${fmt(caps.missing)}`);

  const ns = await peerNamespace(sc, { tag: 'skcap' });
  const server = await serverFor(sc, ns);
  const consult = newConsult();
  const links = {
    clinician: await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' }),
    patient: await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' }),
    guest: await server.link({ consult, role: 'guest', name: 'Tolk Bakker' }),
  };
  // The clinician publishes; the patient (uncapped) and the guest (capped, in the namespace) subscribe.
  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient');
  const guest = await sc.chromium('guest', { netns: ns.name });
  await Promise.all([clin.open(links.clinician), pat.open(links.patient), guest.open(links.guest)]);
  // Capped from before the guest joins, as a person on a poor line would be.
  await ns.capDownlink({ rate: '350kbit' });
  const tJoin = Date.now();
  await clin.join();
  await pat.join();
  await guest.join({ timeout: 90_000 });
  const clinId = await clin.youId();
  // Only the clinician's camera matters here; the others' off spares the 2 CPU cores two simulcast encoders.
  for (const p of [pat, guest]) {
    await p.page.click('#camera-off');
    await p.waitFor(async () => (await p.evaluate(() => document.querySelector('#camera-off')?.dataset.on)) === 'false', {
      what: `${p.name}: #camera-off pressed`,
      timeout: 10_000,
    });
  }
  await pat.waitForMediaFrom([clinId], { timeout: 60_000 });
  await guest.waitForMediaFrom([clinId], { timeout: 90_000 });
  sc.log(`three-way call with the guest capped: both subscribers decode the clinician ${Date.now() - tJoin} ms after the first join click`);

  // Until it holds for 3 samples in a row: the clinician sends ≥ 2 simulcast
  // layers; the guest decodes the lowest (≤ that layer's height, or ≤ 1/4 of
  // the top one) and keeps decoding; the patient decodes a higher one.
  let last;
  let streak = 0;
  let prevGuestFrames = -1;
  let prevP = null;
  let prevG = null;
  // Measured 5-37 s on a 2-core machine with both cores busy (three
  // Chromiums, one encoding simulcast): a step up GCC overshoots into fails,
  // and the SFU waits 8, 16, 32 s before the next (sfu/src/bwe.rs UP_PROVEN).
  const deadline = 75_000;
  const t0 = Date.now();
  try {
    await waitUntil(
      async () => {
        const [c, p, g] = await Promise.all([clin.media(), pat.media(), guest.media()]);
        const layers = c.outbound.filter((o) => o.active && o.frameHeight > 0);
        const heights = layers.map((o) => o.frameHeight);
        const low = heights.length ? Math.min(...heights) : 0;
        const high = heights.length ? Math.max(...heights) : 0;
        const gv = from(g, clinId, prevG).video;
        const pv = from(p, clinId, prevP).video;
        prevG = g;
        prevP = p;
        const cap = await ns.capStats().catch(() => null);
        last = {
          atMs: Date.now() - t0,
          publisherLayers: c.outbound.map((o) => ({ rid: o.rid, h: o.frameHeight, active: o.active, limit: o.qualityLimitationReason })),
          guestHeight: gv.frameHeight,
          guestFrames: gv.framesDecoded,
          patientHeight: pv.frameHeight,
          cap,
        };
        const simulcast = new Set(heights).size >= 2;
        const guestLow = gv.frameHeight > 0 && gv.frameHeight <= Math.max(low, Math.floor(high / 4));
        const guestDecoding = gv.framesDecoded > prevGuestFrames && prevGuestFrames >= 0;
        const patientHigher = pv.frameHeight > low;
        prevGuestFrames = gv.framesDecoded;
        streak = simulcast && guestLow && guestDecoding && patientHigher ? streak + 1 : 0;
        last.ok = { simulcast, guestLow, guestDecoding, patientHigher, streak };
        return streak >= 3;
      },
      { timeout: deadline, interval: 1_500, what: 'guest on the lowest layer and patient on a higher one, 3 samples in a row', describe: () => fmt(last) },
    );
  } catch (e) {
    const ok = (last && last.ok) || {};
    const hints = [];
    const rids = ((last && last.publisherLayers) || []).filter((l) => l.rid);
    if (!ok.simulcast && rids.length >= 2) {
      hints.push(
        `the clinician offers ${rids.length} simulcast layers but encodes fewer than 2 of different heights ` +
          `(qualityLimitationReason ${[...new Set(rids.map((l) => l.limit))].join('/')}: "bandwidth" means its send-side ` +
          `estimate is too low for the upper layers — the SFU's feedback to the publisher, sfu/)`,
      );
    } else if (!ok.simulcast) hints.push('the clinician does not send simulcast (no rid layers in its outbound-rtp; web/: sendEncodings)');
    else if (!ok.guestLow) hints.push('the capped guest is not on the lowest layer (sfu/: per-subscriber layer choice from the bandwidth estimate)');
    if (ok.simulcast && !ok.patientHigher) hints.push('the uncapped patient is stuck on the lowest layer (sfu/: layer upgrade)');
    if (!ok.guestDecoding) hints.push('the capped guest stopped decoding the clinician');
    e.message = `simulcast under a 350 kbit/s cap: ${hints.join('; ') || 'condition did not hold 3 samples in a row'}\n${e.message}`;
    throw e;
  }
  sc.log(`after ${last.atMs} ms: ${fmt(last)}`);
  // The cap was really in the guest's path (and really limiting).
  assert.ok(last.cap && last.cap.sentPackets > 0, `no traffic crossed the capped link: ${fmt(last.cap)}`);
  // ...and the SFU did not flood it: measured 2-11 % of the packets dropped at
  // the cap (join and first keyframes included); forwarding the publisher's
  // padding probes, or answering every repeated NACK, dropped 30-80 %.
  const offered = last.cap.sentPackets + last.cap.dropped;
  assert.ok(last.cap.dropped < 0.25 * offered, `the capped link dropped ${last.cap.dropped} of ${offered} packets: the SFU sends it far more than it carries\n${fmt(last)}`);
});

/**
 * A clinician in the call and a Dutch patient in a namespace of its own whose
 * DTLS is dropped (`blockDtls`), about to join: `{ ns, clin, pat, clinId }`.
 */
async function callWithDtlsBlocked(sc, tag) {
  const caps = await needImpairment(sc, 'DTLS block');
  if (!caps) return null;
  assert.ok(caps.nftLoss, `no nf_tables on this machine: ${fmt(caps.missing)} (scripts/test.sh deps installs nftables)`);
  const ns = await peerNamespace(sc, { tag });
  const server = await serverFor(sc, ns);
  const consult = newConsult();
  const clinLink = await server.link({ consult, role: 'clinician', name: 'Dr. Jansen' });
  const patLink = await server.link({ consult, role: 'patient', name: 'Mevr. de Vries' });
  const clin = await sc.chromium('clinician');
  const pat = await sc.chromium('patient', { netns: ns.name, lang: 'nl-NL' });
  await Promise.all([clin.open(clinLink), pat.open(patLink)]);
  await clin.join();
  const clinId = await clin.youId();
  // Every DTLS record to and from the patient's browser is dropped from before it joins.
  await ns.blockDtls();
  return { ns, clin, pat, clinId };
}

scenario('a DTLS handshake that never completes (ICE up): the patient page starts over by itself and gets the picture', { timeout: 150_000 }, async (sc) => {
  const setup = await callWithDtlsBlocked(sc, 'skdtls');
  if (!setup) return;
  const { ns, clin, pat, clinId } = setup;
  await pat.join();
  const patId = await pat.youId();
  const state = () =>
    pat.evaluate(() => {
      const hook = window.__spreekkamer;
      const notice = document.getElementById('notice');
      return {
        stalls: hook.mediaStalls || 0,
        ice: hook.pc ? hook.pc.iceConnectionState : null,
        connection: hook.pc ? hook.pc.connectionState : null,
        notice: notice && !notice.hidden ? notice.textContent.trim() : null,
        notices: hook.notices || [],
      };
    });
  // ICE comes up, DTLS does not: what the page's own ICE-failure handling never sees.
  let before = null;
  await waitUntil(
    async () => {
      before = await state();
      return ['connected', 'completed'].includes(before.ice);
    },
    { timeout: 20_000, interval: 200, what: 'the patient\'s ICE to connect with DTLS blocked', describe: () => fmt(before) },
  );
  assert.equal(before.stalls, 0, `stalled before the watchdog could have fired: ${fmt(before)}`);
  assert.notEqual(before.connection, 'connected', `DTLS completed although blocked: ${fmt(before)}`);

  // The page notices (15 s after its answer), tells the patient in Dutch and starts over.
  let stalled = null;
  await waitUntil(
    async () => {
      stalled = await state();
      return stalled.stalls >= 1;
    },
    { timeout: 40_000, interval: 250, what: 'the patient page to notice the stalled media', describe: () => fmt(stalled) },
  );
  assert.ok(
    stalled.notices.some((n) => /Verbinding wordt hersteld/.test(n)),
    `the notice a Dutch patient saw: ${fmt(stalled)}`,
  );
  const dropped = await ns.dtlsDropped();
  assert.ok((dropped.down || 0) + (dropped.up || 0) > 0, `no DTLS was dropped, so nothing was stalled by the test: ${fmt(dropped)}`);
  sc.log(`stalled: ${fmt(stalled)}; DTLS dropped ${fmt(dropped)}`);

  // The network recovers: the restarted session connects and both see each other, without a click.
  await ns.unblockDtls();
  await pat.waitForMediaFrom([clinId], { timeout: 60_000 });
  const patAgain = await pat.youId();
  await clin.waitForMediaFrom([patAgain], { timeout: 60_000 });
  const after = await state();
  assert.equal(after.connection, 'connected', `patient's media after the restart: ${fmt(after)}`);
  assert.equal(await pat.state(), 'in-call', 'the patient is back in the call, with no error shown');
  sc.log(`patient id before/after the restart: ${patId}/${patAgain}`);
});

scenario('DTLS never gets through: the page tries four times, longer each time, then tells the patient what to do', { timeout: 330_000 }, async (sc) => {
  const setup = await callWithDtlsBlocked(sc, 'skdtlsx');
  if (!setup) return;
  const { pat } = setup;
  const t0 = Date.now();
  await pat.join();
  // 15 + 30 + 60 + 60 s of tries (reconnect.js), then the error: a clear end, not a loop.
  const code = await pat.waitForError({ timeout: 240_000 });
  const waited = Date.now() - t0;
  const shown = await pat.evaluate(() => {
    const err = document.getElementById('error');
    return {
      stalls: window.__spreekkamer.mediaStalls,
      text: err && !err.hidden ? err.textContent.trim() : null,
      retry: !document.getElementById('error-retry').hidden,
      state: document.body.dataset.state,
    };
  });
  sc.log(`after ${waited} ms: ${code} ${fmt(shown)}`);
  assert.equal(code, 'media_unreachable', `error shown: ${fmt(shown)}`);
  assert.equal(shown.stalls, 4, `tries before giving up: ${fmt(shown)}`);
  assert.ok(waited >= 160_000, `gave up after ${waited} ms: the tries did not wait 15, 30, 60, 60 s`);
  assert.match(shown.text || '', /Beeld en geluid komen niet door/, `the Dutch text: ${fmt(shown)}`);
  assert.ok(shown.retry, `no ‘Opnieuw proberen’ button: ${fmt(shown)}`);
});
