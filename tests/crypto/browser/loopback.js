// In-page check of web/e2ee with real encoded transforms and no server: two E2eeSessions wired by
// an in-page relay, two RTCPeerConnections on loopback, A sends the fake camera and mic to B.
// Driven by tests/browser/e2ee.test.mjs ("module loopback" scenarios).

const params = new URLSearchParams(location.search);
// ?api=script hides createEncodedStreams (Chromium then uses RTCRtpScriptTransform);
// ?api=legacy hides RTCRtpScriptTransform.
if (params.get('api') === 'script') {
  delete RTCRtpSender.prototype.createEncodedStreams;
  delete RTCRtpReceiver.prototype.createEncodedStreams;
}
if (params.get('api') === 'legacy') delete window.RTCRtpScriptTransform;

const { E2eeSession, e2eeSupport, peerConnectionConfig } = await import('/e2ee/index.js');

const A = 'a000000000000001';
const B = 'b000000000000002';

window.runLoopback = async ({ decrypt = true } = {}) => {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 320, height: 240 } });
  const sessions = {};
  const relayLog = [];
  const make = (id) => {
    sessions[id] = new E2eeSession({
      consultId: 'loopback',
      selfId: id,
      role: 'clinician', // both hold the master secret: a link-bound pair, keys released at once
      link: { secret: 'bG9vcGJhY2stbGluay1zZWNyZXQtMDEyMzQ1Njc4OWE', label: null },
      send: (to, kind, data) => {
        relayLog.push({ from: id, to, kind, length: data.length });
        setTimeout(() => sessions[to].onRelay(id, kind, data), 0);
      },
    });
    return sessions[id];
  };
  const a = make(A);
  const b = make(B);
  await Promise.all([a.start(), b.start()]);
  const config = peerConnectionConfig();
  const pa = new RTCPeerConnection(config);
  const pb = new RTCPeerConnection(decrypt ? config : {});
  pa.onicecandidate = (e) => e.candidate && pb.addIceCandidate(e.candidate);
  pb.onicecandidate = (e) => e.candidate && pa.addIceCandidate(e.candidate);
  pb.ontrack = (e) => {
    if (decrypt) b.attachReceiver(e.receiver, A, e.track.kind);
    const el = document.createElement(e.track.kind);
    el.srcObject = e.streams[0];
    el.muted = true;
    el.autoplay = true;
    document.body.append(el);
  };
  if (params.get('flow') === 'server-offers') {
    // Like the product: the other side offers recvonly m-sections, this side adopts them, puts
    // its tracks on them and only then answers.
    pb.addTransceiver('audio', { direction: 'recvonly' });
    pb.addTransceiver('video', { direction: 'recvonly' });
    await pb.setLocalDescription();
    await pa.setRemoteDescription(pb.localDescription);
    for (const tr of pa.getTransceivers()) {
      const track = stream.getTracks().find((t) => t.kind === tr.receiver.track.kind);
      tr.direction = 'sendonly';
      await tr.sender.replaceTrack(track);
      tr.sender.setStreams(stream);
      // As web/call.js does: the E2EE transform is attached after the track is on the sender.
      a.attachSender(tr.sender, track.kind);
    }
    await pa.setLocalDescription();
    await pb.setRemoteDescription(pa.localDescription);
  } else {
    for (const track of stream.getTracks()) {
      const sender = pa.addTrack(track, stream);
      a.attachSender(sender, track.kind);
    }
    await pa.setLocalDescription();
    await pb.setRemoteDescription(pa.localDescription);
    await pb.setLocalDescription();
    await pa.setRemoteDescription(pb.localDescription);
  }
  await Promise.all([a.participantJoined({ id: B, role: 'clinician' }), b.participantJoined({ id: A, role: 'clinician' })]);
  window.__lb = { a, b, pa, pb, relayLog, support: e2eeSupport() };
  return e2eeSupport();
};

window.loopbackState = async () => {
  const { a, b, pb } = window.__lb;
  let framesDecoded = 0;
  let audioSamples = 0;
  (await pb.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded += s.framesDecoded || 0;
    if (s.type === 'inbound-rtp' && s.kind === 'audio') audioSamples += s.totalSamplesReceived || 0;
  });
  return {
    support: window.__lb.support,
    framesDecoded,
    audioSamples,
    codeA: a.safetyCode(B),
    codeB: b.safetyCode(A),
    sendStats: await a.stats(),
    recvStats: await b.stats(),
  };
};
