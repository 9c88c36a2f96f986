// Media-quality readings from a participant's page (issue 5): what our
// camera sends per simulcast layer, what we decode from one publisher, and
// the client's own view of its receive preferences. Each page function is
// self-contained (it runs in the browser).

/** Runs in the page: our video sender's encodings and outbound RTP per rid. */
function pageOutbound() {
  const hook = window.__spreekkamer;
  const pc = hook && hook.pc;
  if (!pc) return Promise.resolve(null);
  const sdp = (pc.remoteDescription && pc.remoteDescription.sdp) || '';
  const local = (pc.localDescription && pc.localDescription.sdp) || '';
  const videoMid = hook.call && hook.call.mids ? hook.call.mids.video : null;
  const tr = pc.getTransceivers().find((t) => t.mid !== null && t.mid === videoMid);
  let encodings = [];
  if (tr) {
    try {
      encodings = (tr.sender.getParameters().encodings || []).map((e) => ({
        rid: e.rid ?? null,
        scaleResolutionDownBy: e.scaleResolutionDownBy ?? null,
        maxBitrate: e.maxBitrate ?? null,
        active: e.active !== false,
      }));
    } catch {
      encodings = [];
    }
  }
  const section = (text, mid) => text.split(/\r?\n(?=m=)/).find((s) => new RegExp(`\\r?\\na=mid:${mid}\\r?\\n`).test(s + '\n')) || '';
  return pc.getStats().then((stats) => {
    const layers = [];
    stats.forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      layers.push({ rid: s.rid ?? null, frameHeight: s.frameHeight || 0, framesEncoded: s.framesEncoded || 0, bytesSent: s.bytesSent || 0 });
    });
    return {
      offerSection: videoMid !== null ? section(sdp, videoMid) : '',
      answerSection: videoMid !== null ? section(local, videoMid) : '',
      encodings,
      simulcastConfigured: !!(hook.call && hook.call.simulcast),
      layers,
    };
  });
}

/** Our camera: the offer's and answer's video m-section, sender encodings, outbound layers. */
export function outboundVideo(p) {
  return p.evaluate(pageOutbound);
}

/** Runs in the page: inbound video and audio from one participant (stream id = participant id). */
function pageInboundFrom(participantId) {
  const hook = window.__spreekkamer;
  const pc = hook && hook.pc;
  if (!pc) return Promise.resolve(null);
  const trackIds = { video: new Set(), audio: new Set() };
  const sdp = (pc.remoteDescription && pc.remoteDescription.sdp) || '';
  const mids = new Set();
  for (const section of sdp.split(/\r?\nm=/).slice(1)) {
    const mid = /\r?\na=mid:(\S+)/.exec(section);
    const msid = /\r?\na=msid:(\S+)/.exec(section) || /\r?\na=ssrc:\d+ msid:(\S+)/.exec(section);
    if (mid && msid && msid[1] === participantId && !/\r?\na=inactive/.test(section)) mids.add(mid[1]);
  }
  for (const t of pc.getTransceivers()) {
    if (t.mid !== null && mids.has(t.mid) && t.receiver.track) trackIds[t.receiver.track.kind].add(t.receiver.track.id);
  }
  return pc.getStats().then((stats) => {
    const out = { video: { framesDecoded: 0, frameHeight: 0, frameWidth: 0, bytesReceived: 0 }, audio: { bytesReceived: 0, packetsReceived: 0 } };
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp') return;
      const byMid = s.mid !== undefined && mids.has(s.mid);
      const byTrack = s.trackIdentifier && trackIds[s.kind] && trackIds[s.kind].has(s.trackIdentifier);
      if (!byMid && !byTrack) return;
      if (s.kind === 'video') {
        out.video.framesDecoded += s.framesDecoded || 0;
        out.video.bytesReceived += s.bytesReceived || 0;
        out.video.frameHeight = Math.max(out.video.frameHeight, s.frameHeight || 0);
        out.video.frameWidth = Math.max(out.video.frameWidth, s.frameWidth || 0);
      } else if (s.kind === 'audio') {
        out.audio.bytesReceived += s.bytesReceived || 0;
        out.audio.packetsReceived += s.packetsReceived || 0;
      }
    });
    return out;
  });
}

/** Inbound media from `participantId`: {video: {framesDecoded, frameHeight, ...}, audio: {bytesReceived, ...}}. */
export function inboundFrom(p, participantId) {
  return p.evaluate(pageInboundFrom, participantId);
}

/** The client's receive preferences: what it would ask now and what it last sent. */
export function receivePrefs(p) {
  return p.evaluate(() => {
    const prefs = window.__spreekkamer && window.__spreekkamer.prefs;
    if (!prefs) return null;
    return { current: prefs.current(), lastSent: prefs.lastSent ? JSON.parse(prefs.lastSent) : null };
  });
}
