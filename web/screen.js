// Screen sharing (docs/PROTOCOL.md, "Screen sharing").
//
// A clinician may always share a screen; a patient or guest only while a
// clinician allows it (`screen-allow`); the server enforces both, and one
// share at a time. The screen goes out on our third sender (call.js) under
// the same end-to-end encryption as the camera, tagged so that a server
// cannot pass the camera off as a screen or back (web/e2ee/sframe.js).
//
// On the other side a shared screen is shown large (never cropped) and the
// sharer's camera stays a small tile beside it. The share stops with our
// button, the browser's own "stop sharing" (the track ends), a clinician
// withdrawing the permission, or someone else starting to share.

/** Can this browser share a screen at all? (Phones cannot.) */
export function canCaptureScreen(nav = globalThis.navigator) {
  return !!(nav && nav.mediaDevices && typeof nav.mediaDevices.getDisplayMedia === 'function');
}

/** May someone with `role` share now? The server decides; this only hides what it would refuse. */
export function mayShare(role, allowed) {
  return role === 'clinician' || allowed === true;
}

/**
 * Who is shown sharing: the first participant the server says shares and
 * whose screen track has arrived. Pure.
 * @param {Iterable<[string, {screen?: boolean}]>} participants
 * @param {Map<string, unknown>} tracks
 */
export function sharerOf(participants, tracks) {
  for (const [id, p] of participants) if (p && p.screen === true && tracks.has(id)) return id;
  return null;
}

export class ScreenShare {
  /**
   * @param {{
   *   t: (key: string, vars?: object) => string,
   *   send: (on: boolean) => void,
   *   sendAllow: (allowed: boolean) => void,
   *   setTrack: (track: MediaStreamTrack|null) => Promise<void>,
   *   participants: () => Map<string, {name?: string, screen?: boolean}>,
   *   role: () => string|null,
   *   notice: (text: string) => void,
   *   changed?: () => void,
   *   doc?: Document,
   * }} opts
   */
  constructor(opts) {
    this.o = opts;
    this.doc = opts.doc || document;
    this.allowed = false;
    this.mine = null;
    this.starting = false;
    /** participant id -> their screen track (kept while they are in the call) */
    this.tracks = new Map();
    this.shown = null; // the track on the stage
    // Bumped by end(): a picker answered after the call ended must not start a share.
    this.session = 0;
    const $ = (id) => this.doc.getElementById(id);
    this.el = {
      stage: $('stage'),
      box: $('screen-stage'),
      video: $('screen-video'),
      caption: $('screen-caption'),
      self: $('screen-self'),
      selfText: $('screen-self-text'),
      selfStop: $('screen-self-stop'),
      share: $('screen-share'),
      allow: $('screen-allow'),
    };
    this.el.share.addEventListener('click', () => (this.mine ? this.stop() : this.start()));
    this.el.selfStop.addEventListener('click', () => this.stop());
    this.el.allow.addEventListener('click', () => this.o.sendAllow(!this.allowed));
  }

  /** Ask the browser for a screen and send it. */
  async start() {
    if (this.mine || this.starting || !canCaptureScreen()) return;
    if (!mayShare(this.o.role(), this.allowed)) return;
    this.starting = true;
    const session = this.session;
    let track = null;
    try {
      const stream = await navigator.mediaDevices.getDisplayMedia({
        // Full HD at most: enough for text, not more than an old phone can decode.
        video: { frameRate: { ideal: 15, max: 30 }, width: { max: 1920 }, height: { max: 1080 } },
        audio: false,
        // Not this tab (the others would see themselves, mirrored without end).
        selfBrowserSurface: 'exclude',
      });
      track = stream.getVideoTracks()[0] || null;
      for (const other of stream.getTracks()) if (other !== track) other.stop();
    } catch (err) {
      // Cancelled in the browser's picker: nothing to say. Anything else: say it did not work.
      if (!err || err.name !== 'NotAllowedError') this.o.notice(this.o.t('screen.failed'));
    } finally {
      this.starting = false;
    }
    if (!track) return this.render();
    // Picked after the permission went away, or after the call ended or reconnected: do not send it.
    if (session !== this.session || !mayShare(this.o.role(), this.allowed)) {
      track.stop();
      return this.render();
    }
    if ('contentHint' in track) track.contentHint = 'detail';
    // The browser's own "stop sharing" ends the track.
    track.addEventListener('ended', () => { if (this.mine === track) this.stop(); }, { once: true });
    this.mine = track;
    this.render();
    try {
      await this.o.setTrack(track);
    } catch (err) {
      console.warn('spreekkamer: screen track', err);
    }
    if (this.mine === track) this.o.send(true);
  }

  /** Stop our share; `tell: false` when the server already stopped it. */
  async stop({ tell = true } = {}) {
    const track = this.mine;
    if (!track) return;
    this.mine = null;
    track.stop();
    this.render();
    if (tell) this.o.send(false);
    try {
      await this.o.setTrack(null);
    } catch (err) {
      console.warn('spreekkamer: screen track', err);
    }
  }

  /** The server refused our share (`forbidden` after `screen`): stop quietly, say why. */
  refused() {
    if (!this.mine) return;
    this.stop({ tell: false });
    this.o.notice(this.o.t('screen.refused'));
  }

  /** `screen {id, on}` from the server. */
  onScreen(msg, youId) {
    if (!msg || typeof msg.id !== 'string') return;
    if (msg.id === youId) {
      if (msg.on === false && this.mine) {
        this.stop({ tell: false });
        this.o.notice(this.o.t('screen.stoppedForYou'));
      }
      return;
    }
    const p = this.o.participants().get(msg.id);
    if (p) p.screen = msg.on === true;
    this.render();
  }

  /** `screen-allowed {allowed}` from the server. */
  onAllowed(allowed) {
    const before = this.allowed;
    this.allowed = allowed === true;
    if (before !== this.allowed && this.o.role() !== 'clinician') {
      this.o.notice(this.o.t(this.allowed ? 'screen.allowedNotice' : 'screen.withdrawnNotice'));
    }
    this.render();
  }

  addTrack(participantId, track) {
    this.tracks.set(participantId, track);
    this.render();
  }

  removeTrack(participantId, track) {
    if (this.tracks.get(participantId) === track) this.tracks.delete(participantId);
    this.render();
  }

  /** Someone left: their screen goes with them. */
  forget(participantId) {
    this.tracks.delete(participantId);
    this.render();
  }

  /** The call is over (left, ended, removed): let the screen go. */
  end() {
    this.session += 1;
    if (this.mine) {
      this.mine.stop();
      this.mine = null;
    }
    this.tracks.clear();
    this.allowed = false;
    this.render();
  }

  render() {
    const { t } = this.o;
    const participants = this.o.participants();
    const sharer = sharerOf(participants, this.tracks);
    const el = this.el;
    el.stage.dataset.screen = sharer ? 'remote' : '';
    el.box.hidden = !sharer;
    // By track, not by person: after a media reset the same sharer's screen comes on a new track.
    const track = sharer ? this.tracks.get(sharer) : null;
    if (track !== this.shown) {
      this.shown = track;
      el.video.srcObject = track ? new MediaStream([track]) : null;
      if (track) el.video.play().catch(() => { /* autoplay: the join click allows it */ });
    }
    if (sharer) {
      const name = (participants.get(sharer) || {}).name || '';
      el.caption.textContent = t('screen.sharedBy', { name });
      el.video.setAttribute('aria-label', t('screen.sharedBy', { name }));
    }
    el.self.hidden = !this.mine;
    el.selfText.textContent = t('screen.youShare');
    el.selfStop.textContent = t('screen.stop');
    const role = this.o.role();
    // A patient or guest does not take over a clinician's share (the server refuses it too).
    const clinicianShares = [...participants.values()].some((p) => p && p.screen === true && p.role === 'clinician');
    const offer = canCaptureScreen() && mayShare(role, this.allowed) && (role === 'clinician' || !clinicianShares);
    el.share.hidden = !this.mine && !offer;
    el.share.textContent = t(this.mine ? 'screen.stop' : 'screen.start');
    el.allow.hidden = role !== 'clinician';
    el.allow.dataset.on = String(this.allowed);
    el.allow.textContent = t(this.allowed ? 'screen.allowIsOn' : 'screen.allowIsOff');
    if (this.o.changed) this.o.changed();
  }
}
