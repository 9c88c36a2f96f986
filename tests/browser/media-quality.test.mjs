// Issue 5, media quality in the browser client: simulcast, the layer each
// subscriber asks for, audio only, and the active speaker.
//
// The first cases check the client alone (a local "server" peer connection
// offers simulcast, no SFU involved); the rest run the product end to end
// and need the media plane's part (simulcast receive, layer choice,
// audio-only, active speaker in sfu/). Every consult is end-to-end
// encrypted (links carry a link secret), so simulcast is checked through
// the E2EE transform as well.

import crypto from 'node:crypto';
import { assert, scenario } from './lib/index.mjs';
import { inboundFrom, outboundVideo, receivePrefs } from './lib/quality.mjs';

const consultId = (what) => `mq-${what}-${crypto.randomBytes(4).toString('hex')}`;
// One E2EE link secret per consult, shared by every link to it (as the
// invite flow does); `--with-link-secret` would give each link its own.
const linkSecrets = new Map();

async function linkFor(server, consult, role, name) {
  if (!linkSecrets.has(consult)) linkSecrets.set(consult, crypto.randomBytes(21).toString('base64url'));
  return server.link({ consult, role, name, extraArgs: ['--link-secret', linkSecrets.get(consult)] });
}

/** Open, join, and return the participant id. */
async function joinAs(p, link) {
  await p.open(link);
  await p.join();
  const id = await p.waitFor(() => p.youId(), { what: `${p.name}: own participant id` });
  return id;
}

/**
 * Runs in the page: the client's Call answers an offer that asks for three
 * layers of our camera, as the SFU's does. The "server" is a local peer
 * connection; the offer gets the rid/simulcast lines of docs/PROTOCOL.md.
 */
async function pageAnswerSimulcastOffer() {
  const { Call } = await import('/call.js');
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
  const server = new RTCPeerConnection();
  server.addTransceiver('audio', { direction: 'recvonly' });
  server.addTransceiver('video', { direction: 'recvonly' });
  const offer = await server.createOffer();
  const sections = offer.sdp.split(/\r\n(?=m=)/);
  const i = sections.findIndex((s) => s.startsWith('m=video'));
  sections[i] = sections[i].replace(/\r\n$/, '') + '\r\na=rid:h recv\r\na=rid:m recv\r\na=rid:l recv\r\na=simulcast:recv h;m;l\r\n';
  const sdp = sections.join('\r\n');
  let answer = null;
  const signaling = { sendAnswer: (s) => { answer = s; }, sendCandidate: () => {}, sendIceRestart: () => {} };
  const call = new Call({ signaling, localTracks: { audio: stream.getAudioTracks()[0], video: stream.getVideoTracks()[0] } });
  await call.answer(sdp);
  const video = call.transceiverByMid(call.mids.video);
  const encodings = video.sender.getParameters().encodings.map((e) => ({ rid: e.rid, scale: e.scaleResolutionDownBy, maxBitrate: e.maxBitrate }));
  const result = { encodings, simulcast: call.simulcast, answerHasSimulcast: /a=simulcast:send h;m;l/.test(answer || '') };
  call.close();
  server.close();
  for (const t of stream.getTracks()) t.stop();
  return result;
}

for (const kind of ['chromium', 'firefox']) {
  scenario(`${kind} answers a simulcast offer with three layers of its camera sized 1, 1/2, 1/4`, { timeout: 120_000 }, async (sc) => {
    const server = await sc.startServer({ args: ['--waiting-room=false'] });
    const p = await sc.participant(kind, `${kind}-local`);
    await p.open(await linkFor(server, consultId('local'), 'patient', 'P'));
    const r = await p.evaluate(pageAnswerSimulcastOffer);
    sc.log(`${kind}: ${JSON.stringify(r)}`);
    assert.ok(r.answerHasSimulcast, `answer accepts simulcast: ${JSON.stringify(r)}`);
    assert.deepEqual(
      r.encodings.map((e) => [e.rid, e.scale, e.maxBitrate]),
      [['h', 1, 1_200_000], ['m', 2, 500_000], ['l', 4, 150_000]],
    );
    assert.ok(r.simulcast);
  });
}

scenario('(a) a publisher is offered simulcast and sends three layers', { timeout: 180_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = consultId('a');
  const pub = await sc.chromium('publisher');
  const sub = await sc.chromium('subscriber');
  const pubId = await joinAs(pub, await linkFor(server, consult, 'clinician', 'Dr. Jansen'));
  await joinAs(sub, await linkFor(server, consult, 'patient', 'P'));
  await sub.waitForMediaFrom([pubId]);

  const first = await outboundVideo(pub);
  assert.match(first.offerSection, /a=simulcast:recv h;m;l/, 'the offer asks for three layers of our camera');
  for (const rid of ['h', 'm', 'l']) assert.match(first.offerSection, new RegExp(`a=rid:${rid} recv`));
  assert.match(first.answerSection, /a=simulcast:send h;m;l/);
  assert.deepEqual(
    first.encodings.map((e) => [e.rid, e.scaleResolutionDownBy, e.maxBitrate]),
    [['h', 1, 1_200_000], ['m', 2, 500_000], ['l', 4, 150_000]],
  );
  // Each layer is encoded, the lower ones smaller (the top layer may need a
  // moment of bandwidth estimate before it starts).
  let last;
  await pub.waitFor(
    async () => {
      last = await outboundVideo(pub);
      const by = Object.fromEntries(last.layers.map((l) => [l.rid, l]));
      return ['m', 'l'].every((r) => by[r] && by[r].framesEncoded > 0) && by.l.frameHeight > 0 && by.m.frameHeight > by.l.frameHeight;
    },
    { what: 'publisher encodes the m and l layers, m larger than l', timeout: 60_000, describe: () => JSON.stringify(last && last.layers) },
  );
  sc.log(`outbound layers: ${JSON.stringify(last.layers)}`);
});

scenario('(b) a subscriber with a small tile gets a smaller picture than one with a large tile', { timeout: 240_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = consultId('b');
  const pub = await sc.chromium('publisher');
  const small = await sc.chromium('small-tile');
  // A sharp (2×) wide screen: two tiles side by side, each ~255 CSS px but
  // over 480 device pixels high, which is what the client measures.
  const large = await sc.chromium('large-tile', { viewport: { width: 1600, height: 1000 }, deviceScaleFactor: 2 });
  // Under 60rem the page is one column: a ~420 px wide window gives a tile
  // under 240 px high.
  // The video fills what is left of a short phone-sized window: two tiles stacked, each under 240 px high.
  await small.page.setViewportSize({ width: 420, height: 480 });
  const pubId = await joinAs(pub, await linkFor(server, consult, 'clinician', 'Dr. Jansen'));
  await joinAs(small, await linkFor(server, consult, 'patient', 'P'));
  await joinAs(large, await linkFor(server, consult, 'guest', 'G'));
  await Promise.all([small.waitForMediaFrom([pubId]), large.waitForMediaFrom([pubId])]);

  // The client asks what its tile can show.
  // (Each also has the other subscriber's tile; only the publisher matters here.)
  const asked = (prefs) => {
    const entry = prefs && prefs.lastSent && prefs.lastSent[1].find(([id]) => id === pubId);
    return entry ? entry[1] : null;
  };
  let prefs;
  await small.waitFor(async () => asked((prefs = await receivePrefs(small))) === 'low', {
    what: 'small tile sent video-prefs asking low', describe: () => JSON.stringify(prefs),
  });
  await large.waitFor(async () => asked((prefs = await receivePrefs(large))) === 'high', {
    what: 'large tile sent video-prefs asking high', describe: () => JSON.stringify(prefs),
  });

  // And the server sends it: the small tile decodes a clearly smaller picture.
  let s;
  let l;
  await small.waitFor(
    async () => {
      [s, l] = await Promise.all([inboundFrom(small, pubId), inboundFrom(large, pubId)]);
      return s.video.frameHeight > 0 && l.video.frameHeight > 0 && s.video.frameHeight * 2 <= l.video.frameHeight;
    },
    { what: 'small tile decodes at most half the height of the large one', timeout: 90_000, describe: () => JSON.stringify({ small: s, large: l }) },
  );
  sc.log(`frameHeight: small tile ${s.video.frameHeight}, large tile ${l.video.frameHeight}`);
  // Still moving at the low layer.
  await small.waitForRising([pubId], null, { minFrameRise: 10 });
});

scenario('(c) audio only stops the video but not the sound, and turning it off brings the video back', { timeout: 240_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = consultId('c');
  const pub = await sc.chromium('publisher');
  const sub = await sc.chromium('subscriber', { lang: 'nl-NL' });
  const pubId = await joinAs(pub, await linkFor(server, consult, 'clinician', 'Dr. Jansen'));
  await joinAs(sub, await linkFor(server, consult, 'patient', 'P'));
  await sub.waitForMediaFrom([pubId]);

  // By keyboard: "More" (Enter opens the menu and focuses its first item), then the toggle, Enter.
  const choose = async () => {
    await sub.page.focus('#more-toggle');
    await sub.page.keyboard.press('Enter');
    await sub.page.focus('#audio-only');
    await sub.page.keyboard.press('Enter');
  };
  const name = await sub.evaluate(() => document.getElementById('audio-only').textContent.trim());
  assert.match(name, /^Alleen geluid: zet het beeld/, 'the item says what pressing does');
  await choose();
  assert.equal(await sub.evaluate(() => document.activeElement.id), 'more-toggle', 'focus returns to More');
  assert.match(await sub.evaluate(() => document.getElementById('audio-only').textContent), /zet het beeld weer aan/, 'and now says how to undo it');
  const ui = await sub.evaluate(() => ({
    pressed: document.getElementById('audio-only').dataset.on,
    note: !document.getElementById('audio-only-note').hidden,
    noteText: document.getElementById('audio-only-note').textContent,
    avatar: [...document.querySelectorAll('.tile .tile-placeholder')].every((e) => getComputedStyle(e).display !== 'none'),
  }));
  assert.equal(ui.pressed, 'true');
  assert.ok(ui.note && ui.noteText.length > 20, `plain-language note shown: ${JSON.stringify(ui)}`);
  assert.ok(ui.avatar, 'remote tiles show the avatar');
  let prefs;
  await sub.waitFor(async () => (prefs = await receivePrefs(sub)) && prefs.lastSent && prefs.lastSent[0] === true, {
    what: 'video-prefs {audioOnly: true} sent', describe: () => JSON.stringify(prefs),
  });

  // Video stops (framesDecoded flat over a few seconds) while audio bytes keep rising.
  const flat = async () => {
    const a = await inboundFrom(sub, pubId);
    await new Promise((r) => setTimeout(r, 3000));
    const b = await inboundFrom(sub, pubId);
    return { a, b, ok: b.video.framesDecoded === a.video.framesDecoded && b.audio.bytesReceived > a.audio.bytesReceived };
  };
  let last;
  await sub.waitFor(async () => (last = await flat()).ok, {
    what: 'video frames flat, audio bytes rising', timeout: 60_000, interval: 100, describe: () => JSON.stringify(last),
  });

  // Turned off: the video comes back.
  await choose();
  assert.equal(await sub.evaluate(() => document.getElementById('audio-only').dataset.on), 'false');
  assert.equal(await sub.evaluate(() => document.getElementById('audio-only-note').hidden), true);
  await sub.waitForRising([pubId], await sub.media(), { minFrameRise: 10, timeout: 60_000 });
});

scenario('(d) the participant who speaks is named and their tile marked', { timeout: 240_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = consultId('d');
  const speaker = await sc.chromium('speaker');
  const quiet1 = await sc.chromium('quiet-1');
  const quiet2 = await sc.chromium('quiet-2', { lang: 'nl-NL' });
  const speakerId = await joinAs(speaker, await linkFor(server, consult, 'clinician', 'Dr. Jansen'));
  // Muted participants send silence; Chromium's fake microphone beeps for the speaker.
  for (const [p, role] of [[quiet1, 'patient'], [quiet2, 'guest']]) {
    await joinAs(p, await linkFor(server, consult, role, role));
    await p.page.click('#mute-mic');
    assert.equal(await p.evaluate(() => document.getElementById('mute-mic').dataset.on), 'false');
  }
  await Promise.all([quiet1.waitForMediaFrom([speakerId]), quiet2.waitForMediaFrom([speakerId])]);

  for (const [p, word] of [[quiet1, 'speaking'], [quiet2, 'spreekt']]) {
    let seen;
    await p.waitFor(
      async () => {
        seen = await p.evaluate((id) => {
          const tile = [...document.querySelectorAll('.tile')].find((e) => e.dataset.participantId === id);
          const label = tile && tile.querySelector('.tile-speaking');
          return {
            active: window.__spreekkamer.activeSpeaker,
            marked: !!tile && tile.classList.contains('speaking'),
            label: label && !label.hidden ? label.textContent : null,
            border: tile ? getComputedStyle(tile).borderColor : null,
            live: !!(label && label.closest('[aria-live]')),
            others: [...document.querySelectorAll('.tile.speaking')].length,
          };
        }, speakerId);
        return seen.active === speakerId && seen.marked && seen.label === word;
      },
      { what: `${p.name}: ${speakerId} marked as speaking`, timeout: 60_000, describe: () => JSON.stringify(seen) },
    );
    assert.equal(seen.others, 1, 'only the speaker is marked');
    assert.equal(seen.live, false, 'not announced through a live region');
  }
});

scenario('a Firefox publisher works with the simulcast offer', { timeout: 240_000 }, async (sc) => {
  const server = await sc.startServer({ args: ['--waiting-room=false'] });
  const consult = consultId('ff');
  const ff = await sc.firefox('publisher-firefox');
  const sub = await sc.chromium('subscriber');
  const ffId = await joinAs(ff, await linkFor(server, consult, 'patient', 'P'));
  const subId = await joinAs(sub, await linkFor(server, consult, 'clinician', 'Dr. Jansen'));
  await Promise.all([sub.waitForMediaFrom([ffId]), ff.waitForMediaFrom([subId])]);
  const out = await outboundVideo(ff);
  sc.log(`Firefox publisher: simulcast offered=${/a=simulcast:recv/.test(out.offerSection)} answered=${/a=simulcast:send/.test(out.answerSection)} encodings=${JSON.stringify(out.encodings)} layers=${JSON.stringify(out.layers)}`);
  const e2ee = await sub.evaluate((id) => {
    const tile = [...document.querySelectorAll('.tile')].find((e) => e.dataset.participantId === id);
    return tile ? tile.querySelector('.e2ee-badge').dataset.e2ee : null;
  }, ffId);
  assert.equal(e2ee, 'on', 'the Firefox publisher is end-to-end encrypted');
  // Keeps flowing.
  await sub.waitForRising([ffId], null, { minFrameRise: 20 });
});
