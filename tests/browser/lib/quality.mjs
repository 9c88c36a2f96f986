// Media-quality readings from a participant's page (issue 5): what our
// camera sends per simulcast layer, what we decode from one publisher (from
// the participant's `media()` statistics), and the client's own view of its
// receive preferences. Each page function is self-contained (it runs in the
// browser).

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

/**
 * Inbound media from `participantId` over its active m-sections (from
 * `p.media()`): {video: {framesDecoded, frameHeight, frameWidth, bytesReceived},
 * audio: {bytesReceived, packetsReceived}}; null before there is a peer connection.
 */
export async function inboundFrom(p, participantId) {
  const m = await p.media();
  if (!m.pc) return null;
  const out = { video: { framesDecoded: 0, frameHeight: 0, frameWidth: 0, bytesReceived: 0 }, audio: { bytesReceived: 0, packetsReceived: 0 } };
  for (const i of m.inbound) {
    if (i.participant !== participantId || i.inactive) continue;
    if (i.kind === 'video') {
      out.video.framesDecoded += i.framesDecoded;
      out.video.bytesReceived += i.bytesReceived;
      out.video.frameHeight = Math.max(out.video.frameHeight, i.frameHeight);
      out.video.frameWidth = Math.max(out.video.frameWidth, i.frameWidth);
    } else if (i.kind === 'audio') {
      out.audio.bytesReceived += i.bytesReceived;
      out.audio.packetsReceived += i.packetsReceived;
    }
  }
  return out;
}

/** The client's receive preferences: what it would ask now and what it last sent. */
export function receivePrefs(p) {
  return p.evaluate(() => {
    const prefs = window.__spreekkamer && window.__spreekkamer.prefs;
    if (!prefs) return null;
    return { current: prefs.current(), lastSent: prefs.lastSent ? JSON.parse(prefs.lastSent) : null };
  });
}
