// The RTCPeerConnection side of a consult.
//
// The server is always the offerer (docs/PROTOCOL.md, "Offers"): its offer
// starts with three `a=recvonly` m-sections (our microphone, camera and
// shared screen), then one `a=sendonly` m-section per track of every other
// participant, whose stream id is that participant's id and whose track id
// ends in `-audio-N`, `-video-N` or `-screen-N`. We answer every offer; our
// own transceivers stay the same across renegotiations. The screen's sender
// carries no track until we share (`setLocalTrack('screen', track)`: no
// renegotiation).
//
// Events (CustomEvent detail):
//   'track'       {participantId, kind, track, receiver}  a remote track arrived
//                                                         (kind: 'audio', 'video' or 'screen')
//   'track-ended' {participantId, kind, track}            it went away
//   'sender'      {kind, sender, holdUntil(promise)}      our sender for kind is known, before any
//                                                         track is on it (E2EE attaches here; the
//                                                         track waits for promises given to holdUntil)
//   'connection'  {state}                                 the ICE connection state changed
//   'reset'       {pc}                                    a fresh peer connection replaced the old one
//   'media-stalled' {state}                               media did not connect within
//                                                         connectTimeoutMs of our first answer,
//                                                         or DTLS failed while ICE was up: the page
//                                                         starts the media session over (app.js)
//
// `media-reset` (docs/PROTOCOL.md): the server moved this participant's media
// session (another media node); `reset()` closes the peer connection and
// makes a fresh one, the WebSocket and the E2EE session stay, and the next
// offer is answered on the fresh one (the E2EE transforms attach again
// through the 'sender' and 'track' events).

// Simulcast (docs/PROTOCOL.md, "Offers"): when the server's offer asks for
// three layers of our camera, each gets a size and a bitrate cap. `h` is the
// camera's own size; a subscriber with a small tile or a slow line gets `m`
// or `l` from the server instead.
import { MEDIA_CONNECT_TIMEOUT_MS } from './reconnect.js';

export const SIMULCAST_LAYERS = Object.freeze({
  h: Object.freeze({ scaleResolutionDownBy: 1, maxBitrate: 1_200_000 }),
  m: Object.freeze({ scaleResolutionDownBy: 2, maxBitrate: 500_000 }),
  l: Object.freeze({ scaleResolutionDownBy: 4, maxBitrate: 150_000 }),
});

/**
 * The encodings to set on a video sender, or null when there is nothing to
 * change (not three simulcast layers, or already set). Encodings are
 * matched by rid; an unknown rid is left as the browser made it. Pure.
 */
export function simulcastEncodings(encodings) {
  if (!Array.isArray(encodings) || encodings.length !== 3) return null;
  if (!encodings.every((e) => e && typeof e.rid === 'string' && SIMULCAST_LAYERS[e.rid])) return null;
  let changed = false;
  const out = encodings.map((e) => {
    const want = SIMULCAST_LAYERS[e.rid];
    if (e.scaleResolutionDownBy !== want.scaleResolutionDownBy || e.maxBitrate !== want.maxBitrate) changed = true;
    return { ...e, ...want };
  });
  return changed ? out : null;
}

const RESTART_AFTER_DISCONNECT_MS = 4000;
const MIN_RESTART_INTERVAL_MS = 5000;
// A peer connection that has not connected `connectTimeoutMs` after our first answer is stuck
// (MEDIA_CONNECT_TIMEOUT_MS at first; app.js lengthens it after each stall, reconnect.js): a DTLS
// handshake that never completes leaves ICE up and the browser retransmitting for minutes (a
// patient would look at "connecting" for good). ICE and DTLS take well under a second on a
// working path, a few over TURN/TCP.

/** ICE has a working path. */
const iceUp = (pc) => ['connected', 'completed'].includes(pc.iceConnectionState);

/** ICE and DTLS are up (a browser without `connectionState` is judged by ICE alone). */
const mediaUp = (pc) => (pc.connectionState === undefined ? iceUp(pc) : pc.connectionState === 'connected');

/**
 * The mids of the m-sections the server marked `a=recvonly`: the first audio
 * (microphone), the first video (camera) and the second video (screen).
 * Pure, so it is easy to test without a browser.
 * @returns {{audio: string|null, video: string|null, screen: string|null}}
 */
export function ownMids(sdp) {
  const found = { audio: null, video: null, screen: null };
  for (const section of sdp.split(/\r?\n(?=m=)/)) {
    const m = /^m=(audio|video) /.exec(section);
    if (!m) continue;
    if (!/\r?\na=recvonly\b/.test(section)) continue;
    const mid = /\r?\na=mid:([^\r\n]+)/.exec(section);
    if (!mid) continue;
    let kind = m[1];
    if (kind === 'video' && found.video !== null) kind = 'screen';
    if (found[kind] === null) found[kind] = mid[1].trim();
  }
  return found;
}

/**
 * The mids of the server's `a=sendonly` m-sections that carry someone's
 * shared screen (track id `<participant>-screen-<n>`). Pure.
 * @returns {Set<string>}
 */
export function screenMids(sdp) {
  const mids = new Set();
  for (const section of sdp.split(/\r?\n(?=m=)/)) {
    if (!/^m=video /.test(section) || !/\r?\na=sendonly\b/.test(section)) continue;
    if (!/\r?\na=msid:\S+ \S+-screen-\d+\s*(\r?\n|$)/.test(section)) continue;
    const mid = /\r?\na=mid:([^\r\n]+)/.exec(section);
    if (mid) mids.add(mid[1].trim());
  }
  return mids;
}

export class Call extends EventTarget {
  /**
   * @param {{signaling: import('./protocol.js').Signaling,
   *          config?: RTCConfiguration,
   *          localTracks: {audio: MediaStreamTrack|null, video: MediaStreamTrack|null}}} opts
   */
  constructor({ signaling, config = {}, localTracks, connectTimeoutMs = MEDIA_CONNECT_TIMEOUT_MS }) {
    super();
    this.signaling = signaling;
    // How long a peer connection may take to connect after our first answer (see 'media-stalled').
    this.connectTimeoutMs = connectTimeoutMs;
    this.localTracks = {
      audio: localTracks.audio || null,
      video: localTracks.video || null,
      screen: localTracks.screen || null,
    };
    this.config = config;
    this.closed = false;
    this.lastRestart = 0;
    this.disconnectTimer = null;
    this.resets = 0;
    this.open();
  }

  /**
   * New TURN servers / transport policy (a `welcome` after a reconnect
   * brings fresh credentials): used by this peer connection from its next
   * ICE gathering (restart) on, and by every later one.
   */
  setIceConfig(ice) {
    this.config = { ...this.config, ...ice };
    try {
      this.pc.setConfiguration({ ...this.pc.getConfiguration(), ...ice });
    } catch (err) {
      console.warn('spreekkamer: could not update ICE servers', err);
    }
  }

  /** A fresh peer connection, with nothing negotiated yet. */
  open() {
    // No STUN: the server is ICE-lite with public candidates in its offer.
    // TURN only when the server hands out credentials (`welcome.ice_servers`,
    // passed in `config` by app.js).
    // `iceCandidatePoolSize: 1`: the browser gathers its candidates now, while the offer is still
    // on its way, instead of after it applied its answer (loadtest/first-picture.sh).
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle', iceCandidatePoolSize: 1, ...this.config });
    this.pc = pc;
    this.mids = { audio: null, video: null, screen: null };
    // Mids of the server's m-sections that carry a shared screen (from its latest offer).
    this.screenMids = new Set();
    this.announcedSenders = new Set();
    // Senders whose track waits for a 'sender' listener (`hold`).
    this.held = new Set();
    this.chain = Promise.resolve();
    // Whether our camera is sent as three simulcast layers (for tests and diagnostics).
    this.simulcast = false;
    // Events of a replaced peer connection are ignored.
    const mine = (fn) => (ev) => { if (this.pc === pc) fn(ev); };
    pc.addEventListener('icecandidate', mine((ev) => {
      // null = end of candidates; the server does not need to be told.
      if (ev.candidate && ev.candidate.candidate) this.signaling.sendCandidate(ev.candidate.toJSON());
    }));
    pc.addEventListener('track', mine((ev) => this.onTrack(ev)));
    pc.addEventListener('iceconnectionstatechange', mine(() => this.onIceState()));
    // Milestones for the first-picture breakdown (app.js `mark`).
    pc.addEventListener('connectionstatechange', mine(() => {
      if (pc.connectionState === 'connected') {
        clearTimeout(this.connectTimer);
        this.emit('milestone', { name: 'dtlsConnected' });
      } else if (pc.connectionState === 'failed' && iceUp(pc)) {
        // DTLS failed on a working ICE path: an ICE restart would keep the failed DTLS session.
        this.stalled(pc);
      }
    }));
    clearTimeout(this.connectTimer);
    this.connectTimer = null;
  }

  /** `pc` cannot carry media: tell the page once (it starts the media session over). */
  stalled(pc) {
    if (this.closed || this.pc !== pc || this.stalledPc === pc) return;
    this.stalledPc = pc;
    clearTimeout(this.connectTimer);
    this.emit('media-stalled', { state: pc.connectionState });
  }

  /**
   * `media-reset`: close the peer connection and start a fresh one; the
   * server's next offer is for it. Offers still queued for the old one are
   * dropped with it.
   */
  reset() {
    if (this.closed) return;
    clearTimeout(this.disconnectTimer);
    const old = this.pc;
    this.open();
    this.resets += 1;
    try { old.close(); } catch { /* already closed */ }
    this.emit('reset', { pc: this.pc });
  }

  /** Apply a server offer and answer it. Offers are handled strictly in order. */
  handleOffer(sdp) {
    const pc = this.pc;
    this.chain = this.chain.then(() => this.pc === pc && this.answer(sdp)).catch((err) => {
      if (this.pc !== pc) return; // the old peer connection of a media-reset
      console.warn('spreekkamer: could not answer offer', err);
      this.emit('negotiation-failed', { error: err });
    });
    return this.chain;
  }

  async answer(sdp) {
    if (this.closed) return;
    // Before applying it: `track` events fire while the offer is applied.
    for (const mid of screenMids(sdp)) this.screenMids.add(mid);
    await this.pc.setRemoteDescription({ type: 'offer', sdp });
    this.emit('milestone', { name: 'offerApplied' });
    const mids = ownMids(sdp);
    const ours = [];
    for (const kind of ['audio', 'video', 'screen']) {
      // Keep the transceiver we already use; only adopt one the first time
      // (or if the server dropped ours, which it promises not to).
      const keep = this.mids[kind] !== null && this.transceiverByMid(this.mids[kind]);
      if (!keep) this.mids[kind] = mids[kind];
      const tr = this.mids[kind] !== null ? this.transceiverByMid(this.mids[kind]) : null;
      if (!tr) continue;
      tr.direction = 'sendonly';
      ours.push([kind, tr]);
    }
    // Announced before a track is on the sender, so an encoded transform sees the first frame;
    // a listener that is not ready (E2EE's worker still starting) holds the track off it.
    for (const [kind, tr] of ours) {
      if (this.announcedSenders.has(tr.sender)) continue;
      this.announcedSenders.add(tr.sender);
      const holds = [];
      this.emit('sender', { kind, sender: tr.sender, holdUntil: (p) => holds.push(p) });
      if (holds.length) this.hold(kind, tr.sender, Promise.all(holds));
    }
    // All at once: each waits for the browser's media thread (~40 ms each
    // on a busy machine, loadtest/first-picture.sh).
    await Promise.all(ours.map(([kind, tr]) => this.putTrack(kind, tr.sender)));
    for (const [kind, tr] of ours) {
      if (kind === 'video') await this.configureSimulcast(tr.sender);
      if (kind === 'screen' && this.localTracks.screen) await this.configureScreen(tr.sender);
    }
    this.emit('milestone', { name: 'sendersSet' });
    const answer = await this.pc.createAnswer();
    this.emit('milestone', { name: 'answerCreated' });
    await this.pc.setLocalDescription(answer);
    this.signaling.sendAnswer(this.pc.localDescription.sdp);
    this.emit('milestone', { name: 'answered' });
    const pc = this.pc;
    if (!this.connectTimer && !mediaUp(pc)) {
      this.connectTimer = setTimeout(() => {
        if (!mediaUp(pc)) this.stalled(pc);
      }, this.connectTimeoutMs);
    }
    // Some browsers only settle the layers once the answer is applied.
    const video = this.mids.video !== null ? this.transceiverByMid(this.mids.video) : null;
    if (video) await this.configureSimulcast(video.sender);
  }

  /**
   * Puts the local track of `kind` on the sender — or none while the sender is held (`hold`).
   * Every track change goes through here.
   */
  putTrack(kind, sender) {
    const want = this.held.has(sender) ? null : this.localTracks[kind];
    return sender.track !== want ? sender.replaceTrack(want) : null;
  }

  /**
   * Keep the sender without a track until `until` resolves (a 'sender' listener's `holdUntil`).
   * Rejected: it stays without one — nothing is sent rather than something unprotected.
   */
  hold(kind, sender, until) {
    const pc = this.pc;
    this.held.add(sender);
    until.then(
      async () => {
        if (this.closed || this.pc !== pc) return;
        this.held.delete(sender);
        await this.putTrack(kind, sender);
        if (kind === 'screen' && this.localTracks.screen) await this.configureScreen(sender);
        this.emit('milestone', { name: `${kind}Released` });
      },
      (err) => console.warn('spreekkamer: sender stays without a track', kind, err && err.message),
    ).catch((err) => console.warn('spreekkamer: could not release sender', kind, err && err.message));
  }

  /**
   * Give each simulcast layer its size and bitrate. Never fails the
   * negotiation: without it the browser still sends its own defaults.
   */
  async configureSimulcast(sender) {
    let params;
    try {
      params = sender.getParameters();
    } catch {
      return;
    }
    const encodings = simulcastEncodings(params && params.encodings);
    if (!encodings) return;
    try {
      await sender.setParameters({ ...params, encodings });
      this.simulcast = true;
    } catch (err) {
      console.warn('spreekkamer: simulcast parameters refused', err && err.name);
    }
  }

  transceiverByMid(mid) {
    return this.pc.getTransceivers().find((t) => t.mid === mid) || null;
  }

  onTrack(ev) {
    const stream = ev.streams && ev.streams[0];
    if (!stream) return; // every server track carries its participant's stream id
    const participantId = stream.id;
    const { track, receiver } = ev;
    const mid = ev.transceiver && ev.transceiver.mid;
    const kind = track.kind === 'video' && mid !== null && this.screenMids.has(mid) ? 'screen' : track.kind;
    this.emit('track', { participantId, kind, track, receiver });
    const gone = () => this.emit('track-ended', { participantId, kind, track });
    stream.addEventListener('removetrack', (e) => { if (e.track === track) gone(); });
    track.addEventListener('ended', gone, { once: true });
  }

  onIceState() {
    const state = this.pc.iceConnectionState;
    this.emit('connection', { state });
    clearTimeout(this.disconnectTimer);
    if (state === 'failed') {
      this.restartIce();
    } else if (state === 'disconnected') {
      // Often recovers by itself (a short network hiccup); restart if not.
      this.disconnectTimer = setTimeout(() => {
        if (this.pc.iceConnectionState === 'disconnected') this.restartIce();
      }, RESTART_AFTER_DISCONNECT_MS);
    }
  }

  /** Ask the server for a fresh offer with new ICE credentials (rate-limited). */
  restartIce() {
    if (this.closed) return;
    const now = Date.now();
    if (now - this.lastRestart < MIN_RESTART_INTERVAL_MS) return;
    this.lastRestart = now;
    this.signaling.sendIceRestart();
  }

  /**
   * Use another local track (device switch, camera back on, a screen shared
   * or no longer). A screen keeps its full size when the line is short: the
   * encoder lowers the frame rate instead, so small text stays readable.
   */
  async setLocalTrack(kind, track) {
    this.localTracks[kind] = track || null;
    const mid = this.mids[kind];
    const tr = mid !== null ? this.transceiverByMid(mid) : null;
    if (!tr) return;
    await this.putTrack(kind, tr.sender);
    if (kind === 'screen' && track && !this.held.has(tr.sender)) await this.configureScreen(tr.sender);
  }

  /** A screen keeps its size and stays under 1.5 Mbit/s (also on a fresh peer connection). */
  async configureScreen(sender) {
    try {
      const params = sender.getParameters();
      if (params && Array.isArray(params.encodings) && params.encodings.length > 0) {
        params.degradationPreference = 'maintain-resolution';
        params.encodings = params.encodings.map((e) => ({ ...e, maxBitrate: 1_500_000 }));
        await sender.setParameters(params);
      }
    } catch (err) {
      console.warn('spreekkamer: screen parameters refused', err && err.name);
    }
  }

  /** Inbound and outbound RTP stats, for the page's diagnostics and tests. */
  async stats() {
    return this.pc.getStats();
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.connectTimer);
    try { this.pc.close(); } catch { /* already closed */ }
  }
}
