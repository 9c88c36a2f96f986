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

/**
 * A camera whose picture is known: the left half red, the right half blue,
 * and a small box that moves (so the encoder keeps sending frames). The
 * receiving side can then tell whether what it shows is the sent picture.
 */
function patternTrack() {
  const canvas = document.createElement('canvas');
  canvas.width = 320;
  canvas.height = 240;
  const ctx = canvas.getContext('2d');
  let n = 0;
  const draw = () => {
    ctx.fillStyle = 'rgb(255,0,0)';
    ctx.fillRect(0, 0, 160, 240);
    ctx.fillStyle = 'rgb(0,0,255)';
    ctx.fillRect(160, 0, 160, 240);
    ctx.fillStyle = 'rgb(255,255,255)';
    ctx.fillRect(150, (n * 4) % 220, 20, 20);
    n += 1;
  };
  draw();
  setInterval(draw, 33);
  return canvas.captureStream(30).getVideoTracks()[0];
}

window.runLoopback = async ({ decrypt = true } = {}) => {
  const mic = await navigator.mediaDevices.getUserMedia({ audio: true });
  const stream = new MediaStream([...mic.getAudioTracks(), patternTrack()]);
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
  // The handshake no longer waits for the media workers; this page attaches transforms before it
  // negotiates, and Chromium's script transform must be in place before media flows (it is not
  // the API the product uses in Chromium: web/e2ee/index.js `e2eeSupport`).
  await Promise.all([a.media(), b.media()]);
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

/**
 * What the receiving <video> shows now: the mean colour of its left and
 * right quarters (the sent picture has red on the left, blue on the right).
 */
window.receivedPicture = () => {
  const v = document.querySelector('video');
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = 32;
  c.height = 24;
  const ctx = c.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(v, 0, 0, 32, 24);
  const mean = (x0) => {
    const d = ctx.getImageData(x0, 2, 8, 20).data;
    const m = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k += 1) m[k] += d[i + k];
    return m.map((x) => Math.round(x / (d.length / 4)));
  };
  return { width: v.videoWidth, left: mean(1), right: mean(23) };
};

/** Whether a picture shows the sent pattern (red left, blue right). */
window.showsPattern = (p) => !!p
  && p.left[0] > 150 && p.left[1] < 100 && p.left[2] < 100
  && p.right[2] > 150 && p.right[0] < 100 && p.right[1] < 100;

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
