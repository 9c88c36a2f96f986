// The only module that speaks the wire protocol (docs/PROTOCOL.md).
//
// A `Signaling` is one WebSocket session: it sends `join` with the token as
// the first message, turns every server message into an event named after its
// `type` (`event.detail` is the message), and offers one typed helper per
// client message. It knows nothing about the page: no DOM, no translations.
// Reconnecting is a policy of the page (reconnect.js), so a closed `Signaling`
// stays closed; the page makes a fresh one: a fresh join with the same token
// and the latest resume ticket, which brings someone who was in the call back
// in without a second admission (docs/PROTOCOL.md, "Resuming").

export const PROTOCOL_VERSION = 1;

// Every error code in docs/PROTOCOL.md, with what the client should do about it.
//   fatal:     the server closes the session; the call ends.
//   reconnect: a fresh join may succeed (the cause was transient).
//   notice:    not fatal; tell the user briefly, the call goes on.
//   silent:    not fatal and nothing the user can act on (logged to console).
const ERROR_OUTCOMES = {
  bad_message: 'silent',
  unsupported_version: 'fatal',
  not_joined: 'reconnect',
  join_timeout: 'reconnect',
  message_too_large: 'fatal',
  rate_limited: 'notice',
  token_missing: 'fatal',
  token_too_large: 'fatal',
  token_malformed: 'fatal',
  token_bad_algorithm: 'fatal',
  token_bad_signature: 'fatal',
  token_expired: 'fatal',
  token_not_yet_valid: 'fatal',
  token_wrong_issuer: 'fatal',
  token_wrong_audience: 'fatal',
  token_missing_claim: 'fatal',
  token_bad_claim: 'fatal',
  token_revoked: 'fatal',
  consult_full: 'fatal',
  consult_locked: 'fatal',
  consult_ended: 'fatal',
  forbidden: 'notice',
  unknown_participant: 'silent',
  media_error: 'notice',
  shutting_down: 'reconnect',
  unknown_invite: 'notice',
  // A cluster dependency is down: the page says so in plain words (try again in a minute).
  service_unavailable: 'fatal',
};

/** The documented error codes, for pages that must have a message for each. */
export const ERROR_CODES = Object.freeze(Object.keys(ERROR_OUTCOMES));

/**
 * What to do about an error code: 'fatal' | 'reconnect' | 'notice' | 'silent'.
 * An unknown code is treated by its `fatal` flag, so a newer server's codes
 * still end (or don't end) the call the way the server says.
 */
export function errorOutcome(code, fatal) {
  const known = ERROR_OUTCOMES[code];
  if (known) return known;
  return fatal ? 'fatal' : 'notice';
}

/** The WebSocket URL for this page: same origin, `/ws`, wss on https. */
export function signalingUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

// Bound what we hold for an unopened socket: a page that queues more than
// this before `welcome` is doing something wrong.
const MAX_QUEUED = 64;
// Idle connections get cut by proxies; a ping every 25 s keeps them alive
// and is far below the server's rate limit.
const PING_INTERVAL_MS = 25000;

export class Signaling extends EventTarget {
  /**
   * @param {{url?: string, token: string, resume?: string|null}} opts
   *   resume: the latest resume ticket of an earlier session, if any
   */
  constructor({ url = signalingUrl(), token, resume = null }) {
    super();
    this.url = url;
    this.token = token;
    // The latest ticket: the one we came with, then each `resume` the server sends.
    this.resumeTicket = typeof resume === 'string' && resume ? resume : null;
    this.ws = null;
    this.joined = false;
    // Set when the session ends in a way the server announced (bye, fatal
    // error) or we asked for (leave): such a close is not a connection loss.
    this.ending = null;
    this.queue = [];
    this.pingTimer = null;
  }

  connect() {
    if (this.ws) return;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      // A malformed URL or a CSP refusal: report it as a lost connection.
      queueMicrotask(() => this.emit('close', { code: 0, expected: false, reason: String(err) }));
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => {
      const join = { type: 'join', v: PROTOCOL_VERSION, token: this.token };
      if (this.resumeTicket) join.resume = this.resumeTicket;
      this.rawSend(join);
      this.emit('open', {});
    });
    ws.addEventListener('message', (ev) => this.onFrame(ev.data));
    ws.addEventListener('close', (ev) => {
      this.stopPing();
      this.ws = null;
      this.emit('close', { code: ev.code, expected: this.ending !== null, reason: this.ending });
    });
    // 'error' is always followed by 'close'; handling close is enough.
  }

  onFrame(data) {
    if (typeof data !== 'string') return; // the protocol is text only
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    switch (msg.type) {
      case 'welcome':
        this.joined = true;
        this.startPing();
        for (const m of this.queue.splice(0)) this.rawSend(m);
        break;
      case 'bye':
        this.ending = `bye:${msg.reason || ''}`;
        break;
      case 'resume':
        if (typeof msg.ticket === 'string' && msg.ticket) this.resumeTicket = msg.ticket;
        break;
      case 'error':
        if (msg.fatal) this.ending = `error:${msg.code || ''}`;
        msg.outcome = errorOutcome(msg.code, !!msg.fatal);
        break;
      default:
        break;
    }
    this.emit(msg.type, msg);
    this.emit('message', msg);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  rawSend(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  // Messages other than `join` must wait for `welcome` (else `not_joined`).
  send(msg) {
    if (this.joined) return this.rawSend(msg);
    if (this.queue.length < MAX_QUEUED) this.queue.push(msg);
    return false;
  }

  startPing() {
    this.stopPing();
    this.pingTimer = setInterval(() => this.send({ type: 'ping' }), PING_INTERVAL_MS);
  }

  stopPing() {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  // --- typed client messages -------------------------------------------

  sendAnswer(sdp) { return this.send({ type: 'answer', sdp }); }

  /** @param {RTCIceCandidateInit} candidate */
  sendCandidate(candidate) {
    const { candidate: c, sdpMid = null, sdpMLineIndex = null } = candidate;
    return this.send({ type: 'candidate', candidate: { candidate: c, sdpMid, sdpMLineIndex } });
  }

  sendIceRestart() { return this.send({ type: 'ice-restart' }); }

  /** audio: mic on, video: camera on */
  sendMute(audio, video) { return this.send({ type: 'mute', audio: !!audio, video: !!video }); }

  /** kind: 'key' | 'chat' | 'photo'; data: opaque string (end-to-end encrypted). */
  sendRelay(to, kind, data) { return this.send({ type: 'relay', to, kind, data }); }

  /** state: 'on' | 'unsupported'; verified: participant ids. */
  sendE2ee(state, verified) { return this.send({ type: 'e2ee', state, verified: [...verified] }); }

  /**
   * What we want to receive: audioOnly (bool), quality: {participantId: 'low'|'medium'|'high'}.
   * Returns whether it went out now.
   */
  sendVideoPrefs(audioOnly, quality) {
    if (!this.joined) return false; // refused before admission anyway; resent on change
    return this.send({ type: 'video-prefs', audioOnly: !!audioOnly, quality: { ...quality } });
  }

  admit(id) { return this.send({ type: 'admit', id }); }
  deny(id) { return this.send({ type: 'deny', id }); }
  remove(id) { return this.send({ type: 'remove', id }); }
  lock(locked) { return this.send({ type: 'lock', locked: !!locked }); }
  end() { return this.send({ type: 'end' }); }

  invite(role, name, ttlSecs) {
    const msg = { type: 'invite', role };
    if (name) msg.name = name;
    if (ttlSecs) msg.ttl_secs = ttlSecs;
    return this.send(msg);
  }

  revokeInvite(jti) { return this.send({ type: 'revoke-invite', jti }); }

  /** Say goodbye; the server answers `bye` and closes. */
  leave() {
    this.ending = 'leave';
    if (!this.rawSend({ type: 'leave' })) this.close();
    // If the server never closes (it should), do it ourselves.
    setTimeout(() => this.close(), 2000);
  }

  /**
   * Drop the connection as a network failure would: no `leave`, and the
   * close counts as unexpected (the page reconnects). For tests.
   */
  drop() {
    if (this.ws) {
      try { this.ws.close(4000, 'dropped'); } catch { /* already closing */ }
    }
  }

  close() {
    if (this.ending === null) this.ending = 'closed';
    this.stopPing();
    if (this.ws) {
      try { this.ws.close(1000); } catch { /* already closing */ }
    }
  }
}

// ---------------------------------------------------------------------------
// Connectivity check (docs/PROTOCOL.md, "Connectivity check")
//
// `probe {v, token}` instead of `join`: the server sets up a throwaway media
// session (nobody sees us, we join nothing), sends an offer, and answers
// `probe-result` once ICE and DTLS are up, or not. To learn whether UDP works,
// and if not whether TCP does, the client keeps only one transport's
// candidates in the offer, so the browser can only try that route.

/**
 * The RTCConfiguration part a `welcome` (or a probe's `ice-servers`) asks
 * for: `{iceServers, iceTransportPolicy}`. Only well-formed `turn:`/`turns:`
 * entries with a username and credential are kept; relay-only
 * (`force_relay: true`) is honoured only when at least one server is left,
 * since relay without a server cannot connect. Pure, for tests.
 */
export function iceConfig(msg) {
  const servers = [];
  for (const s of Array.isArray(msg && msg.ice_servers) ? msg.ice_servers : []) {
    if (!s || typeof s.username !== 'string' || typeof s.credential !== 'string') continue;
    const urls = (Array.isArray(s.urls) ? s.urls : []).filter((u) => typeof u === 'string' && /^turns?:/.test(u));
    if (urls.length) servers.push({ urls, username: s.username, credential: s.credential });
  }
  const relay = servers.length > 0 && msg.force_relay === true;
  return { iceServers: servers, iceTransportPolicy: relay ? 'relay' : 'all' };
}

/** The server gives up after 15 s; a client timeout is never longer than this plus a margin. */
export const PROBE_SERVER_TIMEOUT_MS = 15000;

/**
 * `sdp` with only the `a=candidate` lines of one transport ('udp' | 'tcp'),
 * judged by the third token of the candidate (its transport field). Every
 * other line is kept as is. Pure, for tests.
 */
export function filterCandidates(sdp, transport) {
  const want = String(transport).toLowerCase();
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  return sdp
    .split(/\r?\n/)
    .filter((line) => {
      if (!line.startsWith('a=candidate:')) return true;
      const fields = line.slice('a=candidate:'.length).split(/\s+/);
      return (fields[2] || '').toLowerCase() === want;
    })
    .join(eol);
}

/**
 * The ports the offer's candidates name, per transport: what an IT
 * department must let through. `{udp: number[], tcp: number[]}`, sorted,
 * no duplicates. Pure, for tests.
 */
export function candidatePorts(sdp) {
  const out = { udp: new Set(), tcp: new Set() };
  for (const line of sdp.split(/\r?\n/)) {
    if (!line.startsWith('a=candidate:')) continue;
    // foundation component transport priority address port typ ...
    const f = line.slice('a=candidate:'.length).split(/\s+/);
    const transport = (f[2] || '').toLowerCase();
    const port = Number(f[5]);
    if (out[transport] && Number.isInteger(port) && port > 0 && port < 65536) out[transport].add(port);
  }
  return { udp: [...out.udp].sort((a, b) => a - b), tcp: [...out.tcp].sort((a, b) => a - b) };
}

/**
 * One connectivity check over one transport ('udp' | 'tcp' | 'relay': the
 * last through the TURN servers the server names in `ice-servers`, relayed
 * candidates only). 'udp' and 'tcp' use direct candidates only, unless the
 * server forces relay: then every check is a relay check. Every result also
 * carries `turn` (the server offered TURN) and `relay` (relay was used).
 * Resolves (never rejects) to
 *   {outcome: 'connected', ms, ports}
 *   {outcome: 'not-connected', reason: 'timeout'|'failed'|'refused'|'closed', ports}
 *        the media route did not work (`closed`: the server could not be reached
 *        or went away before answering; `ports` may then be empty)
 *   {outcome: 'error', code, ports}
 *        the server refused the check itself (token, rate limit, shutting down):
 *        says nothing about the network.
 * `signal` (an AbortSignal) stops it early, resolving to `{outcome: 'aborted'}`.
 */
export function probeConnectivity({ token, transport, timeoutMs = PROBE_SERVER_TIMEOUT_MS, url = signalingUrl(), signal = null }) {
  return new Promise((resolve) => {
    let ports = { udp: [], tcp: [] };
    let turn = false;
    let forced = false;
    let ws = null;
    let pc = null;
    let timer = null;
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (signal) signal.removeEventListener('abort', onAbort);
      if (pc) {
        try { pc.close(); } catch { /* already closed */ }
      }
      if (ws) {
        try {
          if (ws.readyState === WebSocket.OPEN && result.outcome !== 'connected') ws.send(JSON.stringify({ type: 'leave' }));
          ws.close(1000);
        } catch { /* already closing */ }
      }
      resolve({ ports, turn, relay: transport === 'relay' || forced, ...result });
    };
    const onAbort = () => finish({ outcome: 'aborted' });
    if (signal) {
      if (signal.aborted) {
        resolve({ outcome: 'aborted', ports, turn, relay: false });
        return;
      }
      signal.addEventListener('abort', onAbort);
    }
    // Our own deadline: a server that never answers, or a route that hangs
    // (no probe-result before the server's own 15 s), counts as not working.
    timer = setTimeout(() => finish({ outcome: 'not-connected', reason: 'timeout' }), Math.min(timeoutMs, PROBE_SERVER_TIMEOUT_MS + 3000));
    try {
      ws = new WebSocket(url);
      pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: 'max-bundle' });
    } catch {
      finish({ outcome: 'not-connected', reason: 'closed' });
      return;
    }
    const send = (msg) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
    };
    pc.addEventListener('icecandidate', (ev) => {
      const c = ev.candidate;
      if (!c || !c.candidate) return;
      // Only our own candidates of the transport under test: a TCP check
      // must not quietly succeed over UDP.
      const fields = c.candidate.replace(/^candidate:/, '').split(/\s+/);
      const relayed = / typ relay(\s|$)/.test(c.candidate);
      if (transport === 'relay' || forced) {
        if (!relayed) return;
      } else if (relayed || (fields[2] || '').toLowerCase() !== transport) {
        return;
      }
      send({ type: 'candidate', candidate: { candidate: c.candidate, sdpMid: c.sdpMid ?? null, sdpMLineIndex: c.sdpMLineIndex ?? null } });
    });
    let chain = Promise.resolve();
    const answerOffer = async (sdp) => {
      ports = candidatePorts(sdp);
      // A relay reaches the media server over UDP (TURN allocations are UDP).
      const via = transport === 'relay' || forced ? 'udp' : transport;
      await pc.setRemoteDescription({ type: 'offer', sdp: filterCandidates(sdp, via) });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      send({ type: 'answer', sdp: pc.localDescription.sdp });
    };
    ws.addEventListener('open', () => send({ type: 'probe', v: PROTOCOL_VERSION, token }));
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!msg || typeof msg.type !== 'string') return;
      if (msg.type === 'ice-servers') {
        const ice = iceConfig(msg);
        if (!ice.iceServers.length) return;
        turn = true;
        forced = ice.iceTransportPolicy === 'relay';
        // A direct check must not get the TURN servers at all: the media
        // server is ICE-lite and answers checks from any candidate, signalled
        // or not, so a relay would quietly make 'udp' look like it works.
        if (transport !== 'relay' && !forced) return;
        try {
          pc.setConfiguration({ ...pc.getConfiguration(), iceServers: ice.iceServers, iceTransportPolicy: 'relay' });
        } catch { /* keeps the direct-only configuration: the check fails */ }
      } else if (msg.type === 'offer' && typeof msg.sdp === 'string') {
        chain = chain.then(() => answerOffer(msg.sdp)).catch(() => finish({ outcome: 'not-connected', reason: 'failed' }));
      } else if (msg.type === 'probe-result') {
        if (msg.connected === true) finish({ outcome: 'connected', ms: Number(msg.ms) || null });
        else finish({ outcome: 'not-connected', reason: ['timeout', 'failed', 'refused'].includes(msg.reason) ? msg.reason : 'failed' });
      } else if (msg.type === 'error') {
        // bad_message is not fatal (e.g. a candidate the server disliked); the rest end the check.
        if (msg.fatal || msg.code === 'rate_limited') finish({ outcome: 'error', code: String(msg.code || 'unknown') });
      }
    });
    ws.addEventListener('close', () => finish({ outcome: 'not-connected', reason: 'closed' }));
  });
}

/** How long the link check may take before the page stops waiting for it. */
export const CHECK_TIMEOUT_MS = 8000;

/**
 * The link check before Join (docs/PROTOCOL.md, `check`): the server says
 * whether `join` would accept this token now, without joining anything.
 * Resolves to one of
 *   {status: 'ok', role, name, expires, host, contact}
 *   {status: 'refused', code, contact}   the server refused the link
 *   {status: 'unknown'}                   no answer (network, timeout, an
 *                                         older server): Join will tell.
 * Never rejects. Only strings and numbers of the expected shape are kept.
 */
export function checkLink({ token, url = signalingUrl(), timeoutMs = CHECK_TIMEOUT_MS }) {
  return new Promise((resolve) => {
    let ws = null;
    let done = false;
    const str = (v, max = 200) => (typeof v === 'string' && v.length <= max ? v : null);
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (ws) {
        try { ws.close(1000); } catch { /* already closing */ }
      }
      resolve(result);
    };
    const timer = setTimeout(() => finish({ status: 'unknown' }), timeoutMs);
    try {
      ws = new WebSocket(url);
    } catch {
      finish({ status: 'unknown' });
      return;
    }
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'check', v: PROTOCOL_VERSION, token })));
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (!msg || typeof msg !== 'object') return;
      if (msg.type === 'link-check' && msg.ok === true) {
        finish({
          status: 'ok',
          role: str(msg.role, 20),
          name: str(msg.name),
          host: str(msg.host),
          expires: Number.isFinite(msg.expires) ? msg.expires : null,
          contact: str(msg.contact),
        });
      } else if (msg.type === 'link-check' && msg.ok === false && typeof msg.code === 'string') {
        // Busy or unavailable says nothing about the link itself.
        if (msg.code === 'rate_limited' || msg.code === 'service_unavailable' || msg.code === 'shutting_down') finish({ status: 'unknown', contact: str(msg.contact) });
        else finish({ status: 'refused', code: str(msg.code, 64) || 'unknown', contact: str(msg.contact) });
      } else if (msg.type === 'error') {
        // A server without the check answers bad_message: nothing learnt.
        finish({ status: 'unknown' });
      }
    });
    ws.addEventListener('error', () => finish({ status: 'unknown' }));
    ws.addEventListener('close', () => finish({ status: 'unknown' }));
  });
}
