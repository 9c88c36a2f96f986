// The join page: page flow and DOM. The wire protocol lives in protocol.js,
// the peer connection in call.js, local devices in media.js, strings in
// i18n.js, end-to-end encryption in e2ee/ (loaded if present).
//
// Flow: preview (self view, devices, privacy notice) → joining → waiting
// (waiting room, until admitted) → in-call → left, or error at any point.
// `document.body.dataset.state` always says which (see the UI contract).

import { initI18n, t, getLanguage, onLanguageChange } from './i18n.js';
import { Signaling, iceConfig, checkLink, signalingUrl } from './protocol.js';
import { checkConnection, failedText } from './connectivity.js';
import { Call } from './call.js';
import * as media from './media.js';
import { ReceivePreferences } from './prefs.js';
import { badgeState, summaryKey, tileTrustKey, weakestTrust } from './trust.js';
import { Reconnector, giveUpOnMedia, mediaConnectTimeout, signalingUrls } from './reconnect.js';
import { initials, fitFor, qualityFrom, formatDuration, durationMinutes } from './present.js';
import * as cues from './cues.js';
import { ScreenShare } from './screen.js';

const $ = (sel) => document.querySelector(sel);

// After an unexpected close (or `bye: shutdown`) the page reconnects: a fresh
// join with the same token and the latest resume ticket, with backoff, for up
// to five minutes (reconnect.js).
// No `welcome` within this time counts as a failed connection attempt.
const WELCOME_TIMEOUT_MS = 15000;
// Chat and photos stay in page memory only; keep that memory bounded.
const MAX_CHAT_ITEMS = 200;
// Where this tab keeps its link across a reload (see saveLink).
const LINK_STORAGE_KEY = 'spreekkamer.link';
// How often the connection quality per tile is measured.
const QUALITY_INTERVAL_MS = 2000;
// Phones and narrow windows: the layout in style.css switches at the same width.
const NARROW = '(max-width: 45rem)';
// How long the in-call view may wait for our first answer (see `enterCall`).
const IN_CALL_VIEW_WAIT_MS = 300;
// Error codes of a link that will not work now (the link check and join): the page says why at once.
// Only what will never work again forgets the link (as at join): a locked consult may open again.
const LINK_REFUSALS = new Set(['consult_ended']);

const app = {
  token: null,
  linkSecret: null, // `k` of the link: the consult's master secret (clinician) or a derived one
  linkLabel: null, // `kl` of the link: the label of a derived secret (docs/CRYPTO.md)
  claims: null,
  stream: new MediaStream(),
  mediaError: null,
  micOn: true,
  camOn: true,
  speakerId: '',
  stopLevel: () => {},
  e2eeModule: null, // the imported e2ee/index.js, or null
  e2eeSupport: 'none',
  signaling: null,
  call: null,
  e2ee: null,
  e2eeReady: null,
  e2eeFailed: null, // (session, err): that session's E2EE failed (startE2ee)
  e2eeLoaded: false, // the import of e2ee/index.js settled (loaded or failed)
  you: null,
  consult: null,
  participants: new Map(),
  lobby: new Map(),
  locked: false,
  verified: new Set(),
  peerTrust: new Map(), // id → the E2EE session's last 'status' detail for them (`trust` etc.)
  peerUnsupported: new Set(), // ids that announced `e2ee: unsupported`
  acceptedUnencrypted: new Set(),
  // Ids removed from this call (by us, or by the clinician's sealed word): never shown again,
  // whatever the server's roster says.
  removedIds: new Set(),
  refusedIds: new Set(), // ids the E2EE session refused (not in the roster), already reported
  pendingTracks: new Map(), // id → {audio, video}: media of someone not (yet) in the roster
  phase: 'preview',
  reconnector: null, // Reconnector: when and where to reconnect
  resumeTicket: null, // the latest `resume` ticket: back into the call without a second admission
  reconnectTimer: null,
  reconnectAfterClose: false,
  mediaStalls: 0, // sessions in a row whose media never came up (reconnect.js, 'media-stalled')
  welcomeTimer: null,
  errorCode: null,
  endedByMe: false,
  invite: null, // the last invite this clinician made: {jti, expires}
  objectUrls: new Set(),
  // The connectivity check: {result: 'checking'|'udp'|'tcp'|'failed'|'unknown'|'skipped', ports}
  connectivity: null,
  connectivityAbort: null, // AbortController of the check under way
  audioOnly: false, // "Audio only": receive no video (kept across reconnects)
  activeSpeaker: null, // id of the participant the server says is speaking
  prefs: null, // ReceivePreferences: layer per tile and audio-only → video-prefs
  // The link check before Join: {status: 'checking'|'ok'|'refused'|'unknown', ...} (protocol.js checkLink)
  check: null,
  contact: null, // the care provider's contact line, as the server gives it
  hostName: null, // the clinician's name, from the link check or the welcome
  callStart: null, // Date.now() when this person first entered the call (kept across reconnects)
  timerId: null,
  qualityTimer: null,
  quality: new Map(), // id → {quality, last: {received, lost}}
  receivers: new Map(), // participant id → {audio, video} RTCRtpReceiver
  unread: 0, // chat messages not seen (the chat sheet closed)
  titleNote: null, // a short-lived tab title (admitted)
  titleTimer: null,
  leftReason: 'left',
  leftDuration: null,
};

// Test hook (see the UI contract). Harmless: it only exposes what the page
// itself already holds.
// `timings` holds performance.now() milestones of the current session
// (join, welcome, in-call, first offer, ICE connected, E2EE paired and keyed,
// first remote frame decoded and painted; loadtest/first-picture.sh prints them).
const hook = { pc: null, call: null, you: null, participants: app.participants, e2ee: null, timings: {}, prefs: null, activeSpeaker: null, cues: cues.played, quality: {}, check: null };
// `dropSignaling()` closes the WebSocket the way a network failure would (tests).
hook.dropSignaling = () => { if (app.signaling) app.signaling.drop(); };
hook.resumeTicketKnown = () => !!app.resumeTicket;
window.__spreekkamer = hook;

// ---------------------------------------------------------------------------
// Start

// Started at the end of this module, once every top-level constant exists.

async function start() {
  // The E2EE module loads first, beside the preview's camera and the link
  // check: the server's messages wait for it (see `connect`), so a person
  // who presses Join at once waited for it after the click
  // (loadtest/first-picture.sh: the welcome was there ~50 ms after Join and
  // handled ~100 ms after it when the load started later).
  app.e2eeLoading = loadE2ee();
  app.e2eeLoading.then(() => { app.e2eeLoaded = true; hook.e2eeLoadedAt = Math.round(performance.now()); });
  app.e2eeLoading.then(renderPrivacyE2ee);
  app.prefs = new ReceivePreferences({
    send: (audioOnly, quality) => !!app.signaling && app.signaling.sendVideoPrefs(audioOnly, quality),
  });
  hook.prefs = app.prefs;
  wireControls();
  // Join works from here on (boot.js watches for this mark; until it, the
  // button is disabled in the page itself).
  if ($('#error').dataset.code === 'page_load_failed') {
    hideError();
    setState('preview');
  }
  $('#join-button').disabled = false;
  document.documentElement.dataset.app = 'ready';
  renderAudioOnly();
  const { token, linkSecret, linkLabel, joined } = readFragment();
  app.token = token;
  app.linkSecret = linkSecret;
  app.linkLabel = linkLabel;
  app.claims = token ? peekClaims(token) : null;
  renderGreeting();

  if (!token) {
    showFatal('no_token');
    return;
  }
  if (typeof RTCPeerConnection === 'undefined' || typeof WebSocket === 'undefined') {
    showFatal('browser_unsupported');
    return;
  }
  if (app.claims && app.claims.role === 'clinician') $('#clinician-check').hidden = false;

  // Joining does not wait for this: a person may press "join" while the
  // browser still asks for permission; the tracks reach the call later.
  const mediaReady = openMedia();
  if (joined) {
    // A reload of a tab that was in the consult (or its waiting room): the
    // person already saw the preview and agreed, so go straight back in. The
    // server lets an admitted person back without a second admission within
    // its grace period (docs/PROTOCOL.md, "Same person, again").
    join();
  } else {
    checkLinkFirst();
  }
  await mediaReady;
}

/**
 * Ask the server whether this link works now (docs/PROTOCOL.md, `check`),
 * before the person presses Join: a bad link is explained at once, with the
 * care provider's contact line; nothing is joined or used up. The greeting
 * waits for the server's word, and so does the connectivity check.
 */
async function checkLinkFirst() {
  app.check = { status: 'checking' };
  hook.check = app.check;
  renderGreeting();
  const result = await checkLink({ token: app.token, url: signalingUrl() });
  if (app.phase !== 'preview' || !app.check || app.check.status !== 'checking') return;
  app.check = result;
  hook.check = result;
  if (result.contact) app.contact = result.contact;
  if (result.host) app.hostName = result.host;
  renderGreeting();
  if (result.status === 'refused') {
    if (result.code.startsWith('token_') || LINK_REFUSALS.has(result.code)) forgetLink();
    showFatal(result.code);
    return;
  }
  runConnectivityCheck();
}

/**
 * Read `#t=JWT&k=SECRET&kl=LABEL`, then remove it from the address bar and
 * history. Without a fragment (a reload: it was removed), use the link this
 * tab stored. `joined`: this tab had joined with that link before the reload.
 */
function readFragment() {
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
  const link = { token: params.get('t') || null, linkSecret: params.get('k') || null, linkLabel: params.get('kl') || null };
  if (window.location.hash) {
    history.replaceState(null, '', window.location.pathname + window.location.search);
  }
  if (link.token) {
    saveLink(link, false);
    return { ...link, joined: false };
  }
  const stored = loadLink();
  if (stored) return stored;
  return { token: null, linkSecret: null, linkLabel: null, joined: false };
}

// The link in sessionStorage, so that a reload keeps this person in the
// consult (the fragment is gone from the address bar by then, on purpose:
// it must not end up in history, bookmarks or screenshots).
// Trade-off: sessionStorage belongs to this tab only and is gone when the
// tab closes (never localStorage, never cookies: nothing outlives the tab or
// reaches the server), but unlike page memory it survives a reload, and
// script running on this origin can read it. Such script could already read
// the token and link secret from page memory, so that adds no new reader;
// the CSP allows only our own scripts. Browsers with session restore
// (Firefox, Chrome's "continue where you left off") may also write it into
// the profile on disk until the tab is closed; the token is short-lived and
// the same link usually sits in the person's mail anyway. It is cleared as
// soon as the link is of no more use: leaving, being ended/removed/denied, a
// refused token.
function saveLink({ token, linkSecret, linkLabel }, joined) {
  try {
    sessionStorage.setItem(LINK_STORAGE_KEY, JSON.stringify({ t: token, k: linkSecret || null, kl: linkLabel || null, joined: !!joined }));
  } catch {
    // Storage disabled or full: a reload then shows "no link", as before.
  }
}

function loadLink() {
  try {
    const v = JSON.parse(sessionStorage.getItem(LINK_STORAGE_KEY) || 'null');
    if (!v || typeof v.t !== 'string' || !v.t) return null;
    const text = (x) => (typeof x === 'string' && x ? x : null);
    return { token: v.t, linkSecret: text(v.k), linkLabel: text(v.kl), joined: v.joined === true };
  } catch {
    return null;
  }
}

function forgetLink() {
  try {
    sessionStorage.removeItem(LINK_STORAGE_KEY);
  } catch {
    // Nothing stored, nothing to forget.
  }
}

/**
 * The token's claims, for display before joining only (name, role). The
 * server verifies the token; nothing here trusts these values.
 */
function peekClaims(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

async function loadE2ee() {
  try {
    const mod = await import('./e2ee/index.js');
    if (typeof mod.E2eeSession !== 'function' || typeof mod.e2eeSupport !== 'function') throw new Error('incomplete e2ee module');
    app.e2eeModule = mod;
    app.e2eeSupport = mod.e2eeSupport();
  } catch (err) {
    // Without the module the call still works, marked "not end-to-end encrypted".
    console.warn('spreekkamer: end-to-end encryption unavailable', err && err.message);
    app.e2eeModule = null;
    app.e2eeSupport = 'none';
  }
}

// ---------------------------------------------------------------------------
// Page state

const VIEWS = {
  preview: '#preview-view',
  joining: '#joining-view',
  waiting: '#waiting-view',
  'in-call': '#call-view',
  left: '#left-view',
  error: null,
};
const SELF_SLOTS = { preview: '#preview-self', waiting: '#waiting-self', 'in-call': '#call-self' };

function setState(phase) {
  const changed = app.phase !== phase;
  app.phase = phase;
  document.body.dataset.state = phase;
  for (const [name, sel] of Object.entries(VIEWS)) {
    if (sel) $(sel).hidden = name !== phase;
  }
  const slot = SELF_SLOTS[phase];
  if (slot && $('#self-view').parentElement !== $(slot)) $(slot).appendChild($('#self-view'));
  // One set of device controls: in the preview, or in the call's side panel.
  const devicesSlot = phase === 'in-call' ? '#call-devices' : '#preview-devices';
  if ($('#devices').parentElement !== $(devicesSlot)) $(devicesSlot).appendChild($('#devices'));
  $('#e2ee-summary').hidden = phase !== 'in-call';
  $('#call-timer').hidden = phase !== 'in-call';
  if (phase !== 'in-call') {
    closeMenu();
    setSheet('');
    closeDialogs();
  }
  renderWaitingBanner();
  renderTitle();
  if (changed && phase !== 'preview') {
    // Tell screen-reader users where they are now.
    const heading = VIEWS[phase] && $(`${VIEWS[phase]} h1`);
    if (heading) {
      heading.tabIndex = -1;
      heading.focus({ preventScroll: false });
    }
  }
}

function showError(code, { help = null, retry = false } = {}) {
  app.errorCode = code;
  app.errorHelp = help;
  const box = $('#error');
  box.dataset.code = code;
  box.hidden = false;
  $('#error-retry').hidden = !retry;
  renderError();
}

function hideError() {
  app.errorCode = null;
  const box = $('#error');
  box.hidden = true;
  delete box.dataset.code;
}

/** An error that ends the call: tear everything down and show only the message. */
function showFatal(code, opts = {}) {
  app.resumeTicket = null;
  teardown();
  hideNotice();
  showError(code, opts);
  setState('error');
  const box = $('#error');
  box.tabIndex = -1;
  box.focus();
}

let noticeTimer = null;
/** A short status line (announced politely); `sticky` keeps it until replaced. */
function showNotice(text, { sticky = false } = {}) {
  const n = $('#notice');
  n.textContent = text;
  // The last few, for tests: a notice can be gone again before anyone looks.
  hook.notices = [...(hook.notices || []).slice(-9), text];
  n.hidden = false;
  clearTimeout(noticeTimer);
  if (!sticky) noticeTimer = setTimeout(() => { n.hidden = true; }, 6000);
}

function hideNotice() {
  clearTimeout(noticeTimer);
  $('#notice').hidden = true;
}

// ---------------------------------------------------------------------------
// Local media (preview)

async function openMedia() {
  const { stream, error } = await media.openLocalMedia();
  // The link was refused (or the call ended) while the browser asked: let the camera go.
  if (app.phase === 'error' || app.phase === 'left') {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  setLocalStream(stream);
  app.mediaError = error;
  if (error) {
    showError(error.name === 'NotAllowedError' || error.name === 'SecurityError' ? 'media_denied' : 'media_unavailable', {
      help: media.mediaHelpKey(error),
    });
    $('#media-help').hidden = false;
  } else if (app.errorCode === 'media_denied' || app.errorCode === 'media_unavailable') {
    hideError();
    $('#media-help').hidden = true;
  }
  await fillDeviceLists();
}


function setLocalStream(stream) {
  for (const old of app.stream.getTracks()) {
    if (!stream.getTracks().includes(old)) old.stop();
  }
  app.stream = stream;
  const audio = stream.getAudioTracks()[0] || null;
  const video = stream.getVideoTracks()[0] || null;
  if (audio) audio.enabled = app.micOn;
  if (video) video.enabled = app.camOn;
  $('#local-video').srcObject = video ? new MediaStream([video]) : null;
  app.stopLevel();
  app.stopLevel = media.watchLevel(audio, (level) => { $('#mic-level').value = level; });
  renderSelf();
  if (app.call) {
    app.call.setLocalTrack('audio', audio);
    app.call.setLocalTrack('video', video);
    app.signaling.sendMute(app.micOn && !!audio, app.camOn && !!video);
  }
}

function localTrack(kind) {
  return (kind === 'audio' ? app.stream.getAudioTracks() : app.stream.getVideoTracks())[0] || null;
}

async function fillDeviceLists() {
  const devices = await media.listDevices();
  fillSelect($('#camera-select'), devices.videoinput, localTrack('video'), 'devices.cameraN');
  fillSelect($('#mic-select'), devices.audioinput, localTrack('audio'), 'devices.micN');
  $('#flip-camera').hidden = devices.videoinput.length < 2;
  const canSpeaker = media.canChooseSpeaker() && devices.audiooutput.length > 0;
  $('#speaker-field').hidden = !canSpeaker;
  if (canSpeaker) fillSelect($('#speaker-select'), devices.audiooutput, null, 'devices.speakerN', app.speakerId);
}

function fillSelect(select, list, track, labelKey, selectedId = null) {
  const current = selectedId ?? (track && track.getSettings ? track.getSettings().deviceId : null);
  select.replaceChildren();
  if (list.length === 0) {
    const opt = new Option(t('devices.none'), '');
    select.add(opt);
    select.disabled = true;
    return;
  }
  select.disabled = false;
  list.forEach((d, i) => {
    const opt = new Option(d.label || t(labelKey, { n: i + 1 }), d.deviceId);
    if (d.deviceId === current) opt.selected = true;
    select.add(opt);
  });
}

/** Switch to another camera or microphone, in the preview and in the call. */
async function switchDevice(kind, deviceId) {
  const constraints = kind === 'audio'
    ? { audio: { deviceId: { exact: deviceId }, echoCancellation: true, noiseSuppression: true } }
    : { video: { deviceId: { exact: deviceId }, width: { ideal: 1280 }, height: { ideal: 720 } } };
  let fresh;
  try {
    fresh = await navigator.mediaDevices.getUserMedia(constraints);
  } catch (err) {
    showNotice(t(media.mediaHelpKey(err)));
    return;
  }
  const track = fresh.getTracks()[0];
  const others = app.stream.getTracks().filter((tr) => tr.kind !== kind);
  setLocalStream(new MediaStream([...others, track]));
}

// ---------------------------------------------------------------------------
// Connectivity check (preview): UDP first, TCP only if UDP does not work.

async function runConnectivityCheck() {
  if (!app.token || app.phase !== 'preview') return;
  stopConnectivityCheck();
  const controller = new AbortController();
  app.connectivityAbort = controller;
  setConnectivity({ result: 'checking' });
  // UDP, then TCP, then TURN (web/connectivity.js, shared with /test). A
  // refusal of the check itself (link, rate limit) says nothing about the
  // network, and joining will explain a bad link itself: 'unknown'.
  const state = await checkConnection({ token: app.token, signal: controller.signal });
  if (state.result === 'aborted' || controller.signal.aborted) return;
  finishConnectivity(controller, state);
}

function finishConnectivity(controller, state) {
  if (app.connectivityAbort !== controller) return;
  app.connectivityAbort = null;
  setConnectivity(state);
}

/** Joining: the call itself now shows whether media gets through. */
function stopConnectivityCheck() {
  const controller = app.connectivityAbort;
  if (!controller) return;
  app.connectivityAbort = null;
  controller.abort();
  setConnectivity({ result: 'skipped' });
}

function setConnectivity(state) {
  app.connectivity = state;
  renderConnectivity();
}

function renderConnectivity() {
  const el = $('#connectivity');
  const state = app.connectivity;
  const again = $('#connectivity-again');
  if (!state) {
    delete el.dataset.result;
    el.textContent = '';
    again.disabled = !app.token;
    return;
  }
  el.dataset.result = state.result;
  again.disabled = state.result === 'checking';
  if (state.result === 'failed') {
    el.textContent = failedText(t, state.ports);
  } else {
    el.textContent = t(`connectivity.${state.result}`);
  }
}


// ---------------------------------------------------------------------------
// Joining and the signaling session

async function join() {
  // This click may start sound later (the admitted chime, a waiting patient's).
  cues.unlockAudio();
  if (isClinicianLink()) cues.askNotificationPermission();
  if (app.check && app.check.status === 'checking') app.check = { status: 'unknown' };
  hideError();
  hideNotice();
  $('#media-help').hidden = true;
  stopConnectivityCheck();
  setState('joining');
  const meta = document.querySelector('meta[name="spreekkamer-signaling"]');
  app.reconnector = new Reconnector({ urls: signalingUrls(meta && meta.content, window.location) });
  connect();
}

/** Record the first time a milestone happens in this session. */
function mark(name) {
  if (hook.timings[name] === undefined) hook.timings[name] = Math.round(performance.now());
}

function connect() {
  clearTimeout(app.reconnectTimer);
  hook.timings = {};
  mark('join');
  app.reconnectAfterClose = false;
  const sig = new Signaling({ url: app.reconnector.url(), token: app.token, resume: app.resumeTicket });
  app.signaling = sig;
  // Until the E2EE module is loaded, messages queue behind it, in order (a
  // call must never start without it); after that they run at once.
  const on = (type, fn) => sig.addEventListener(type, (ev) => {
    // When the server's first welcome and offer reached the page (the
    // first-picture breakdown; handling may wait for the main thread).
    if (type === 'welcome' || type === 'offer') mark(`${type}Arrived`);
    const run = () => { if (app.signaling === sig) fn(ev.detail); };
    if (app.e2eeLoaded) run();
    else app.e2eeLoading.then(run);
  });
  sig.addEventListener('open', () => mark('wsOpen'));
  on('welcome', onWelcome);
  on('offer', onOffer);
  on('participant-joined', (m) => m.participant && addParticipant(m.participant, true));
  on('participant-left', (m) => removeParticipant(m.id, m.reason));
  on('mute', onRemoteMute);
  on('relay', onRelay);
  on('e2ee', onPeerE2ee);
  on('media-failed', () => app.call && app.call.restartIce());
  on('resume', () => { app.resumeTicket = sig.resumeTicket; });
  on('media-reset', onMediaReset);
  on('speaker', (m) => setActiveSpeaker(typeof m.participant === 'string' ? m.participant : null));
  on('error', onServerError);
  on('bye', onBye);
  on('close', onClose);
  // Waiting room and host actions (docs/PROTOCOL.md, "Waiting room").
  on('admitted', (m) => {
    for (const p of Array.isArray(m.participants) ? m.participants : []) {
      if (!app.you || p.id !== app.you.id) addParticipant(p, false);
    }
    // Let in: a sound and the tab title, for someone who looked away while waiting.
    cues.chime();
    flashTitle(t('title.admitted'));
    enterCall();
  });
  on('lobby', (m) => setLobby(Array.isArray(m.waiting) ? m.waiting : []));
  on('locked', (m) => setLocked(!!m.locked));
  on('screen', (m) => app.screen.onScreen(m, app.you && app.you.id));
  on('screen-allowed', (m) => app.screen.onAllowed(m.allowed === true));
  on('invite-created', onInviteCreated);
  on('invite-revoked', (m) => {
    if (app.invite && m.jti === app.invite.jti) {
      app.invite = null;
      $('#invite-result').hidden = true;
    }
    showNotice(t('invite.revoked'));
  });
  app.welcomeTimer = setTimeout(() => {
    if (app.signaling !== sig || sig.joined) return;
    app.reconnectAfterClose = true; // our own close: still a failed attempt
    sig.close();
  }, WELCOME_TIMEOUT_MS);
  sig.connect();
}

function onWelcome(msg) {
  clearTimeout(app.welcomeTimer);
  mark('welcome');
  if (msg.v !== 1) {
    showFatal('unsupported_version');
    return;
  }
  app.reconnector.connected();
  hideNotice();
  // From now on a reload goes straight back in (see readFragment).
  if (app.token) saveLink(app, true);
  // TURN servers (with fresh credentials on every welcome) and relay-only.
  app.iceConfig = iceConfig(msg);
  hook.iceConfig = app.iceConfig;
  if (app.call) app.call.setIceConfig(app.iceConfig);
  app.you = msg.you || null;
  hook.you = app.you;
  app.consult = msg.consult || null;
  // Who lets this person in: this welcome's word (it may be nobody now, after a reconnect).
  app.hostName = typeof msg.host === 'string' && msg.host ? msg.host.slice(0, 200) : (app.check && app.check.host) || null;
  if (typeof msg.contact === 'string' && msg.contact) app.contact = msg.contact.slice(0, 200);
  renderWaiting();
  const host = app.you && app.you.role === 'clinician';
  $('#lobby-panel').hidden = !host;
  $('#end-consult').hidden = !host;
  $('#lobby-open').hidden = !host;
  if (Array.isArray(msg.lobby)) setLobby(msg.lobby);
  if (typeof msg.locked === 'boolean') setLocked(msg.locked);
  app.screen.render();
  for (const p of Array.isArray(msg.participants) ? msg.participants : []) {
    if (!app.you || p.id !== app.you.id) addParticipant(p, false);
  }
  mark('welcomeRendered');
  if (msg.state === 'waiting') {
    setState('waiting');
  } else {
    enterCall();
  }
}

/** Admitted: build the peer connection and the E2EE session. Offers follow. */
function enterCall() {
  if (app.call) {
    setState('in-call');
    return;
  }
  const sig = app.signaling;
  const mod = app.e2eeModule;
  let config = {};
  if (mod && app.e2eeSupport !== 'none' && typeof mod.peerConnectionConfig === 'function') {
    config = mod.peerConnectionConfig() || {};
  }
  config = { ...config, ...(app.iceConfig || {}) };
  const call = new Call({
    signaling: sig,
    config,
    localTracks: { audio: localTrack('audio'), video: localTrack('video'), screen: app.screen.mine },
    connectTimeoutMs: mediaConnectTimeout(app.mediaStalls),
  });
  app.call = call;
  hook.pc = call.pc;
  hook.call = call;
  mark('pcCreated');
  startE2ee();
  mark('e2eeStarted');
  call.addEventListener('sender', (ev) => {
    const session = app.e2ee;
    if (!session || app.e2eeSupport === 'none') return;
    let installed;
    try {
      installed = session.attachSender(ev.detail.sender, ev.detail.kind);
    } catch (err) {
      installed = Promise.reject(err);
    }
    // Our media leaves only once it is protected, or once the others have been told this page's
    // E2EE failed (then it is plain, as from a browser without E2EE, and they decide).
    if (installed) ev.detail.holdUntil(installed.catch((err) => app.e2eeFailed && app.e2eeFailed(session, err)));
  });
  call.addEventListener('milestone', (ev) => mark(ev.detail.name));
  call.addEventListener('track', (ev) => onRemoteTrack(ev.detail));
  call.addEventListener('track-ended', (ev) => onRemoteTrackEnded(ev.detail));
  call.addEventListener('negotiation-failed', () => call.restartIce());
  // Media that never connected (a stalled DTLS handshake keeps ICE up, so no ICE restart comes):
  // start over as after a lost connection — a fresh join with the resume ticket, so a new peer
  // connection on both sides, no second admission, the notice telling the person what happens.
  // Each try in a row waits longer; after a few the page says what to do (reconnect.js).
  call.addEventListener('media-stalled', () => {
    if (app.call !== call) return;
    mark('mediaStalled');
    app.mediaStalls += 1;
    hook.mediaStalls = app.mediaStalls;
    if (giveUpOnMedia(app.mediaStalls)) {
      app.mediaStalls = 0;
      showFatal('media_unreachable', { retry: true });
      return;
    }
    scheduleReconnect();
  });
  call.addEventListener('milestone', (ev) => { if (ev.detail.name === 'dtlsConnected') app.mediaStalls = 0; });
  call.addEventListener('reset', () => { hook.pc = call.pc; });
  call.addEventListener('connection', (ev) => {
    if (ev.detail.state === 'failed' || ev.detail.state === 'disconnected') showNotice(t('notice.mediaReconnecting'));
    if (ev.detail.state === 'connected' || ev.detail.state === 'completed') {
      mark('connected');
      hideNotice();
    }
  });
  sig.sendMute(app.micOn && !!localTrack('audio'), app.camOn && !!localTrack('video'));
  mark('inCall');
  // The in-call view is drawn once our first answer is on its way (at the
  // latest after IN_CALL_VIEW_WAIT_MS): the server's offer comes right
  // behind the welcome, and drawing first kept it waiting for the page's
  // one thread ~50-70 ms on a busy machine. The browser connects while the
  // page draws (loadtest/first-picture.sh, docs/BENCHMARKS.md).
  let shown = false;
  const show = () => {
    if (shown || app.call !== call) return;
    shown = true;
    startCallClock();
    startQualityWatch();
    setState('in-call');
    renderTiles();
    mark('inCallShown');
    // Admitted: from now on the server takes our preferences.
    app.prefs.enable();
  };
  call.addEventListener('milestone', (ev) => { if (ev.detail.name === 'answered') setTimeout(show, 0); });
  setTimeout(show, IN_CALL_VIEW_WAIT_MS);
}

function onOffer(msg) {
  if (typeof msg.sdp !== 'string') return;
  mark('offer');
  // An offer means we are in the media path: the waiting room is over.
  if (!app.call) enterCall();
  app.call.handleOffer(msg.sdp);
}

/**
 * The server moved our media session (docs/PROTOCOL.md, `media-reset`): a
 * fresh peer connection; the WebSocket, the roster and the E2EE session stay.
 * The remote tracks of the old one end with it; the offer that follows brings
 * new ones to the same tiles, and the E2EE transforms attach to the new
 * senders and receivers as they appear.
 */
function onMediaReset() {
  if (!app.call) return;
  mark('mediaReset');
  app.call.reset();
  showNotice(t('notice.mediaReconnecting'));
}

function onServerError(msg) {
  const code = String(msg.code || 'unknown');
  switch (msg.outcome) {
    case 'fatal':
      // A link that will never work again is of no use after a reload.
      if (code.startsWith('token_') || code === 'consult_ended') forgetLink();
      showFatal(code);
      break;
    case 'reconnect':
      if (msg.fatal) app.reconnectAfterClose = true;
      break;
    case 'notice':
      // A share the server would not take (the permission went away on the way) stops here too.
      if (code === 'forbidden' && app.screen.mine && !isHost()) {
        app.screen.refused();
        break;
      }
      showNotice(t(`error.${code}`, {}, t('error.unknown', { code })));
      if (code === 'media_error' && app.call) app.call.restartIce();
      break;
    default:
      console.warn('spreekkamer: server error', code);
  }
}

function onBye(msg) {
  // Ended, removed or denied: the link will not get this person back in.
  if (msg.reason === 'ended' || msg.reason === 'removed' || msg.reason === 'denied') forgetLink();
  switch (msg.reason) {
    case 'ended':
      // Not an error: the consult is over. A calm page, with how long it took.
      showEnded(app.endedByMe ? 'ended-by-me' : 'ended');
      break;
    case 'removed':
      showFatal('removed');
      break;
    case 'denied':
      showFatal('denied');
      break;
    case 'replaced':
      showFatal('replaced');
      break;
    case 'shutdown':
      app.reconnectAfterClose = true;
      showNotice(t('error.shutting_down'), { sticky: true });
      break;
    default:
      teardown();
      setState('left');
  }
}

function onClose(detail) {
  clearTimeout(app.welcomeTimer);
  if (app.phase === 'left' || app.phase === 'error' || app.phase === 'preview') return;
  if (detail.expected && !app.reconnectAfterClose) return;
  scheduleReconnect();
}

function scheduleReconnect() {
  teardownSession();
  const next = app.reconnector ? app.reconnector.next() : null;
  if (!next) {
    showFatal('connection_lost', { retry: true });
    return;
  }
  setState('joining');
  showNotice(t('notice.reconnecting'), { sticky: true });
  clearTimeout(app.reconnectTimer);
  app.reconnectTimer = setTimeout(connect, next.delayMs);
}

function leave() {
  const sig = app.signaling;
  // Leaving on purpose: a reload must not bring this person back in.
  forgetLink();
  app.resumeTicket = null;
  app.phase = 'left'; // so the coming close is not taken for a lost connection
  if (sig) sig.leave();
  showEnded('left');
}

/** The end page: left on purpose, or the consult ended (by us or the clinician). */
function showEnded(reason) {
  app.leftReason = reason;
  app.leftDuration = app.callStart ? Date.now() - app.callStart : null;
  app.resumeTicket = null;
  app.phase = 'left';
  teardown();
  hideError();
  hideNotice();
  renderLeft();
  setState('left');
}

function renderLeft() {
  const reason = app.leftReason;
  const view = $('#left-view');
  view.dataset.reason = reason;
  const key = reason === 'ended' ? 'ended' : reason === 'ended-by-me' ? 'endedByMe' : 'left';
  $('#left-title').textContent = t(`left.${key}Title`);
  $('#left-text').textContent = t(`left.${key}Text`);
  const duration = $('#left-duration');
  duration.hidden = app.leftDuration === null;
  if (app.leftDuration !== null) duration.textContent = t('left.duration', { minutes: durationMinutes(app.leftDuration) });
  const contact = $('#left-contact');
  contact.hidden = !(app.contact && reason === 'ended');
  contact.textContent = app.contact ? t('contact.line', { contact: app.contact }) : '';
  // Ended is ended: the link will not get anyone back in.
  $('#rejoin').hidden = reason !== 'left';
}

/** End the session: peer connection, E2EE, tiles, chat. Keeps local media. */
function teardownSession() {
  clearTimeout(app.welcomeTimer);
  stopQualityWatch();
  app.receivers.clear();
  if (app.e2ee) {
    try { app.e2ee.stop(); } catch { /* already stopped */ }
  }
  app.e2ee = null;
  app.e2eeReady = null;
  app.e2eeFailed = null;
  hook.e2ee = null;
  // A share belongs to this session: after a reconnect the server knows nothing of it.
  app.screen.end();
  if (app.call) app.call.close();
  app.call = null;
  hook.pc = null;
  hook.call = null;
  app.prefs.disable();
  app.prefs.forgetTiles();
  setActiveSpeaker(null);
  const sig = app.signaling;
  app.signaling = null;
  if (sig) sig.close();
  app.participants.clear();
  app.lobby.clear();
  app.peerTrust.clear();
  app.peerUnsupported.clear();
  app.pendingTracks.clear();
  app.verified.clear();
  app.acceptedUnencrypted.clear();
  $('#tiles').replaceChildren();
  renderLobby();
}

/** Everything, including the camera and microphone (so their lights go off). */
function teardown() {
  clearTimeout(app.reconnectTimer);
  teardownSession();
  app.stopLevel();
  app.stopLevel = () => {};
  for (const track of app.stream.getTracks()) track.stop();
  $('#local-video').srcObject = null;
  // Chat survives a reconnect, but not the end of the call; nor do the
  // E2EE alerts and the list of people removed from it.
  clearChat();
  stopCallClock();
  app.removedIds.clear();
  app.refusedIds.clear();
  $('#e2ee-alerts').replaceChildren();
}

// ---------------------------------------------------------------------------
// Participants and tiles
//
// One list, `app.participants` (the roster the server sends, less anyone
// removed in this call), drives both the tiles and the E2EE session: a
// participant gets a tile here and is handed to the session here, and
// nowhere else. So everyone who can get this page's media key has a tile
// with a name, a role and a safety code, and nobody else can get it.

function addParticipant(p, announce) {
  if (!p || typeof p.id !== 'string' || (app.you && p.id === app.you.id)) return;
  // Removed in this call: the server's roster does not bring them back.
  if (app.removedIds.has(p.id)) return;
  const existing = app.participants.get(p.id);
  app.participants.set(p.id, { ...existing, ...p });
  removeLobby(p.id);
  renderTile(p.id);
  adoptPendingTracks(p.id);
  if (announce) showNotice(t('notice.joined', { name: p.name || '' }));
  if (app.e2eeReady) {
    const session = app.e2ee;
    app.e2eeReady.then((ready) => ready === session && app.participants.has(p.id) && session.participantJoined(app.participants.get(p.id))).catch(() => {});
  }
  renderTiles();
  renderSecurity();
  app.screen.render();
}

function removeParticipant(id, reason) {
  const p = app.participants.get(id);
  forgetParticipant(id);
  if (app.e2ee) Promise.resolve(app.e2ee.participantLeft(id)).catch(() => {});
  if (p) showNotice(t(reason === 'removed' ? 'notice.removed' : 'notice.left', { name: p.name || '' }));
}

/** Drops the participant's tile and everything the page knew about them. */
function forgetParticipant(id) {
  app.participants.delete(id);
  app.screen.forget(id);
  app.receivers.delete(id);
  app.quality.delete(id);
  delete hook.quality[id];
  app.pendingTracks.delete(id);
  const tile = tileFor(id);
  if (tile) tile.remove();
  app.prefs.unwatch(id);
  if (app.activeSpeaker === id) setActiveSpeaker(null);
  app.peerTrust.delete(id);
  app.peerUnsupported.delete(id);
  app.verified.delete(id);
  renderTiles();
  renderSecurity();
}

/**
 * The clinician removes someone: the server ends their session, and our E2EE
 * session gives everyone else a fresh key and tells them (sealed) that this
 * person is gone, so even a server that keeps them connected gets them nothing.
 */
function removeFromConsult(id) {
  if (!isHost()) return;
  if (app.signaling) app.signaling.remove(id);
  app.removedIds.add(id);
  const p = app.participants.get(id);
  if (app.e2ee && typeof app.e2ee.removed === 'function') Promise.resolve(safeCall(() => app.e2ee.removed(id))).catch(() => {});
  forgetParticipant(id);
  if (p) showNotice(t('notice.removed', { name: p.name || '' }));
}

/** The clinician admits a participant whose link could not be checked. */
function acceptUnbound(id) {
  if (!isHost() || !app.e2ee || typeof app.e2ee.acceptUnbound !== 'function') return;
  Promise.resolve(safeCall(() => app.e2ee.acceptUnbound(id))).catch(() => {});
}

function onRemoteMute(msg) {
  const p = app.participants.get(msg.id);
  if (!p) return;
  p.audio = !!msg.audio;
  p.video = !!msg.video;
  renderTile(msg.id);
}

function tileFor(id) {
  for (const tile of $('#tiles').children) if (tile.dataset.participantId === id) return tile;
  return null;
}

/** The participant's tile, made on first use. Only renderTile calls this: tiles follow the roster. */
function ensureTile(id) {
  let tile = tileFor(id);
  if (tile) return tile;
  tile = $('#tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.participantId = id;
  tile.querySelector('.accept-unencrypted').addEventListener('click', () => {
    app.acceptedUnencrypted.add(id);
    if (app.e2ee && typeof app.e2ee.allowUnencrypted === 'function') safeCall(() => app.e2ee.allowUnencrypted(id));
    renderTile(id);
  });
  for (const button of tile.querySelectorAll('[data-action]')) button.dataset.participantId = id;
  tile.querySelector('[data-action="accept-unbound"]').addEventListener('click', () => acceptUnbound(id));
  tile.querySelector('[data-action="reject-unbound"]').addEventListener('click', () => removeFromConsult(id));
  tile.querySelector('.remove').addEventListener('click', () => confirmRemove(id));
  if (app.speakerId) media.setSpeaker(tile.querySelector('.tile-audio'), app.speakerId);
  $('#tiles').appendChild(tile);
  // The picture's size on screen decides which video layer is worth asking for.
  app.prefs.watch(id, tile.querySelector('.tile-media'));
  return tile;
}

function onRemoteTrack({ participantId, kind, track, receiver }) {
  // Every remote track is decrypted (a screen under its own tag) before anything shows it.
  if (app.e2ee && app.e2eeSupport !== 'none') {
    try { app.e2ee.attachReceiver(receiver, participantId, kind); } catch (err) { console.warn('spreekkamer: e2ee receiver', err); }
  }
  if (kind === 'screen') {
    // Shown on the stage, not in a tile.
    app.screen.addTrack(participantId, track);
    return;
  }
  if (receiver && typeof participantId === 'string') {
    const held = app.receivers.get(participantId) || {};
    held[kind] = receiver;
    app.receivers.set(participantId, held);
  }
  if (!app.participants.has(participantId)) {
    // Media may overtake `participant-joined`; it waits for the roster, never gets a tile of its own.
    const held = app.pendingTracks.get(participantId) || {};
    held[kind] = track;
    app.pendingTracks.set(participantId, held);
    return;
  }
  showTrack(participantId, kind, track);
}

function adoptPendingTracks(id) {
  const held = app.pendingTracks.get(id);
  if (!held) return;
  app.pendingTracks.delete(id);
  for (const [kind, track] of Object.entries(held)) if (track.readyState !== 'ended') showTrack(id, kind, track);
}

function showTrack(participantId, kind, track) {
  const tile = tileFor(participantId);
  if (!tile) return;
  const el = tile.querySelector(kind === 'video' ? '.tile-video' : '.tile-audio');
  el.srcObject = new MediaStream([track]);
  if (kind === 'video') {
    mark('remoteVideo');
    el.addEventListener('loadeddata', () => mark('firstFrame'), { once: true });
    // The first frame composited on screen (where the browser can tell).
    if (typeof el.requestVideoFrameCallback === 'function') el.requestVideoFrameCallback(() => mark('firstPaint'));
    if (!el.dataset.fitWatched) {
      el.dataset.fitWatched = '1';
      el.addEventListener('resize', () => renderFit(tile));
    }
  }
  el.play().catch(() => { /* autoplay: the join click normally allows it */ });
  tile.dataset[kind] = 'live';
  renderTile(participantId);
}

function onRemoteTrackEnded({ participantId, kind, track }) {
  if (kind === 'screen') return app.screen.removeTrack(participantId, track);
  const held = app.pendingTracks.get(participantId);
  if (held && held[kind] === track) delete held[kind];
  const tile = tileFor(participantId);
  if (!tile) return;
  const el = tile.querySelector(kind === 'video' ? '.tile-video' : '.tile-audio');
  if (el.srcObject && el.srcObject.getTracks().includes(track)) {
    el.srcObject = null;
    delete tile.dataset[kind];
  }
  renderTile(participantId);
}

function setActiveSpeaker(id) {
  const before = app.activeSpeaker;
  // Kept even for someone not known yet: their tile shows it once it exists.
  app.activeSpeaker = typeof id === 'string' && id ? id : null;
  hook.activeSpeaker = app.activeSpeaker;
  if (before === app.activeSpeaker) return;
  if (before) renderTile(before);
  if (app.activeSpeaker) renderTile(app.activeSpeaker);
}

/** "Audio only": receive no video, show everyone as their initials. */
function setAudioOnly(on) {
  app.audioOnly = !!on;
  app.prefs.setAudioOnly(app.audioOnly);
  renderAudioOnly();
}

function renderAudioOnly() {
  const button = $('#audio-only');
  button.dataset.on = String(app.audioOnly);
  button.textContent = t(app.audioOnly ? 'control.audioOnlyIsOn' : 'control.audioOnlyIsOff');
  $('#tiles').classList.toggle('audio-only', app.audioOnly);
  $('#audio-only-note').hidden = !app.audioOnly;
}

function renderTiles() {
  $('#alone-note').hidden = app.participants.size > 0;
  $('#tiles').dataset.count = String(app.participants.size);
  for (const id of app.participants.keys()) renderTile(id);
  renderSafety();
}

function roleLabel(role) {
  return t(`role.${role}`, {}, t('role.guest'));
}

/** How far this page trusts the encryption with `id` (web/trust.js has the order). */
function trustFor(id) {
  if (!app.e2ee || app.e2eeSupport === 'none') return 'unencrypted';
  // Their page says it does not (or no longer) encrypt(s) — e.g. its media worker failed after
  // the keys were exchanged: that wins over our keys for them (the safe direction).
  if (app.peerUnsupported.has(id)) return 'unencrypted';
  const detail = app.peerTrust.get(id);
  if (detail && typeof detail.trust === 'string') return detail.trust;
  return 'pending';
}

function renderTile(id) {
  const p = app.participants.get(id);
  if (!p) return;
  const tile = ensureTile(id);
  const name = p.name || '';
  tile.querySelector('.tile-name').textContent = `${name} (${roleLabel(p.role)})`;
  tile.querySelector('.tile-initials').textContent = initials(name);
  const micOff = p.audio === false;
  const camOff = p.video === false || tile.dataset.video !== 'live';
  const micEl = tile.querySelector('.tile-mic-off');
  micEl.hidden = !micOff;
  micEl.textContent = t('tile.micOff');
  const camEl = tile.querySelector('.tile-cam-off');
  camEl.hidden = p.video !== false;
  camEl.textContent = t('tile.camOff');
  tile.classList.toggle('no-video', camOff);
  // Who speaks: a border and a word, not colour alone. Not announced to
  // screen readers: it changes with every turn in the conversation.
  const speaking = app.activeSpeaker === id;
  tile.classList.toggle('speaking', speaking);
  const speakingEl = tile.querySelector('.tile-speaking');
  speakingEl.hidden = !speaking;
  speakingEl.textContent = t('tile.speaking');

  const host = isHost();
  const trust = trustFor(id);
  tile.dataset.e2eeTrust = trust;
  const badge = tile.querySelector('.e2ee-badge');
  badge.dataset.e2ee = badgeState(trust);
  badge.dataset.e2eeTrust = trust;
  badge.textContent = t(tileTrustKey(trust, { host }));

  renderQuality(id);
  renderFit(tile);

  // No silent downgrade: the link could not be checked for this person, so
  // they get no key until the clinician decides (or the codes are compared).
  const decision = tile.querySelector('.tile-decision');
  decision.hidden = trust !== 'needs-decision';
  tile.querySelector('.decision-text').textContent = t(host ? 'decision.hostText' : 'decision.peerText', { name });
  tile.querySelector('.decision-actions').hidden = !host;
  tile.querySelector('[data-action="accept-unbound"]').textContent = t('decision.accept');
  tile.querySelector('[data-action="reject-unbound"]').textContent = t('decision.reject');

  const failed = tile.querySelector('.tile-failed');
  failed.hidden = trust !== 'failed';
  failed.textContent = t('e2ee.failedText', { name });

  // Never downgrade silently: an unencrypted participant is marked, and the
  // clinician must accept before that participant's media plays.
  const unencrypted = trust === 'unencrypted' && !!app.e2ee;
  const withheld = unencrypted && host && !app.acceptedUnencrypted.has(id);
  const box = tile.querySelector('.tile-unencrypted');
  box.hidden = !unencrypted || (host && app.acceptedUnencrypted.has(id));
  tile.querySelector('.unencrypted-text').textContent = host ? t('e2ee.hostAccept', { name }) : t('e2ee.peerNone', { name });
  const accept = tile.querySelector('.accept-unencrypted');
  accept.hidden = !host;
  accept.textContent = t('e2ee.acceptButton');
  tile.classList.toggle('withheld', withheld);
  tile.querySelector('.tile-audio').muted = withheld;

  // While the decision box is open, its "do not admit" is the remove button.
  const remove = tile.querySelector('.remove');
  remove.hidden = !host || trust === 'needs-decision';
  remove.textContent = t('host.removeShort');
  remove.setAttribute('aria-label', t('host.remove', { name }));
  renderSafety();
}

function safeCall(fn) {
  try { return fn(); } catch { return null; }
}

// ---------------------------------------------------------------------------
// Waiting room (clinician side)

/** The server sends the whole waiting-room list whenever it changes. */
function setLobby(list) {
  const before = new Set(app.lobby.keys());
  app.lobby.clear();
  const arrived = [];
  for (const p of list) {
    if (!p || typeof p.id !== 'string') continue;
    app.lobby.set(p.id, { ...p, since: p.since || Date.now() / 1000 });
    if (!before.has(p.id)) arrived.push(p);
  }
  renderLobby();
  if (arrived.length && isClinicianLink()) announceWaiting(arrived);
}

/**
 * Someone started waiting: the clinician hears it, sees it in the tab title
 * and the banner over the video, and (if allowed, when looking elsewhere)
 * gets a desktop notification.
 */
function announceWaiting(arrived) {
  const name = arrived[0].name || roleLabel(arrived[0].role);
  showNotice(t('notice.waiting', { name }));
  cues.chime();
  // The desktop notification outlives the page (notification centre, lock screen): no name in it.
  cues.notify(t('notify.waitingTitle'), arrived.length === 1 ? t('notify.waitingOne') : t('notify.waitingMany', { n: arrived.length }));
}

function removeLobby(id) {
  if (app.lobby.delete(id)) renderLobby();
}

function renderLobby() {
  const list = $('#lobby-list');
  const keep = new Set(app.lobby.keys());
  for (const li of [...list.children]) if (!keep.has(li.dataset.participantId)) li.remove();
  for (const [id, p] of app.lobby) {
    let li = [...list.children].find((el) => el.dataset.participantId === id);
    if (!li) {
      li = $('#lobby-entry-template').content.firstElementChild.cloneNode(true);
      li.dataset.participantId = id;
      li.querySelector('.admit').addEventListener('click', () => app.signaling && app.signaling.admit(id));
      li.querySelector('.deny').addEventListener('click', () => app.signaling && app.signaling.deny(id));
      list.appendChild(li);
    }
    const name = p.name || '';
    li.querySelector('.lobby-name').textContent = `${name} (${roleLabel(p.role)})`;
    const since = new Date(Number(p.since) * 1000); // seconds since the epoch
    li.querySelector('.lobby-since').textContent = t('lobby.since', { time: formatTime(since) });
    li.querySelector('.admit').textContent = t('lobby.admit', { name });
    li.querySelector('.deny').textContent = t('lobby.deny', { name });
  }
  $('#lobby-empty').hidden = app.lobby.size > 0;
  if (app.lobby.size === 0) cues.clearNotification();
  renderWaitingBanner();
  renderTitle();
}

/** Over the video: who is waiting, with "let in" right there (on a phone too). */
function renderWaitingBanner() {
  const banner = $('#waiting-banner');
  const show = isClinicianLink() && app.phase === 'in-call' && app.lobby.size > 0;
  banner.hidden = !show;
  const badge = $('#more-badge');
  badge.hidden = !show;
  badge.textContent = show ? String(app.lobby.size) : '';
  if (!show) return;
  const [first] = app.lobby.values();
  const name = first.name || roleLabel(first.role);
  const one = app.lobby.size === 1;
  $('#waiting-banner-text').textContent = one ? t('banner.waitingOne', { name }) : t('banner.waitingMany', { n: app.lobby.size });
  const admit = $('#waiting-banner-admit');
  admit.hidden = !one;
  admit.dataset.participantId = first.id;
  admit.textContent = t('lobby.admit', { name });
}

function renderInvite() {
  const el = $('#invite-expires');
  const exp = app.invite && app.invite.expires;
  el.hidden = !exp;
  if (exp) el.textContent = t('invite.expires', { time: formatDateTime(new Date(exp * 1000)) });
}

function setLocked(locked) {
  app.locked = locked;
  // The button keeps its name; aria-pressed and the status line say the state.
  $('#lock').setAttribute('aria-pressed', String(locked));
  $('#lock-status').hidden = !locked;
}

async function onInviteCreated(msg) {
  if (typeof msg.token !== 'string' || !msg.token) return;
  // The page builds the link itself, so the E2EE link secret never goes
  // through the server (docs/PROTOCOL.md, "Invites"). The invitee gets a
  // secret derived from ours for their label, never our own: with it they
  // can prove their link to us, not stand between two other people.
  let link = `${window.location.origin}/c#t=${msg.token}`;
  const fragment = await inviteSecretFragment(msg.role);
  if (fragment === null) {
    showNotice(t('invite.secretFailed'));
    return;
  }
  link += fragment;
  app.invite = { jti: msg.jti, expires: Number(msg.expires) || null };
  renderInvite();
  $('#invite-link').value = link;
  $('#invite-result').hidden = false;
  $('#invite-link').focus();
  $('#invite-link').select();
}

/**
 * `&k=K_L&kl=L` for a new invite, '' when this page holds no master secret,
 * null if deriving failed. L is `patient` for the patient (as `spreekkamer
 * link --role patient` makes it), and a fresh `guest-` plus 6 random hex
 * digits for every guest, so no two guests share a secret.
 */
async function inviteSecretFragment(role) {
  if (linkClaim().claim !== '*' || typeof app.e2eeModule.deriveLinkSecret !== 'function') return '';
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(3)), (b) => b.toString(16).padStart(2, '0')).join('');
  const label = role === 'patient' ? 'patient' : `guest-${hex}`;
  try {
    const secret = await app.e2eeModule.deriveLinkSecret(app.linkSecret, consultId(), label);
    return `&k=${encodeURIComponent(secret)}&kl=${encodeURIComponent(label)}`;
  } catch (err) {
    console.warn('spreekkamer: invite link secret', err && err.message);
    return null;
  }
}

// ---------------------------------------------------------------------------
// End-to-end encryption

/**
 * The consult id the E2EE keys are bound to: the one in our own token (which
 * the server cannot change), else the server's word for it.
 */
function consultId() {
  if (app.claims && typeof app.claims.consult === 'string' && app.claims.consult) return app.claims.consult;
  return app.consult && typeof app.consult === 'object' ? app.consult.id : app.consult;
}

/** The role our own token names (the server cannot change that). */
function tokenRole() {
  const role = app.claims && app.claims.role;
  return role === 'clinician' || role === 'patient' ? role : 'guest';
}

function isClinicianLink() {
  return tokenRole() === 'clinician';
}

/** This page makes the clinician's decisions: the token and the server agree it is a clinician's. */
function isHost() {
  return isClinicianLink() && !!app.you && app.you.role === 'clinician';
}

/** The link secret for the session: {secret, label} as the fragment had them, or null. */
function sessionLink() {
  return app.linkSecret ? { secret: app.linkSecret, label: app.linkLabel } : null;
}

/**
 * What our link holds, as the E2EE module reads it: {claim: null|'*'|label,
 * problem: null|'invalid_secret'|'label_missing'|'invalid_label'}.
 */
function linkClaim() {
  const mod = app.e2eeModule;
  if (!mod || typeof mod.linkClaimFor !== 'function') return { claim: null, problem: null };
  return mod.linkClaimFor(tokenRole(), sessionLink());
}

function startE2ee() {
  const mod = app.e2eeModule;
  const sig = app.signaling;
  if (!mod || !app.you || !window.crypto || !window.crypto.subtle) {
    sig.sendE2ee('unsupported', []);
    renderSecurity();
    return;
  }
  let session;
  try {
    session = new mod.E2eeSession({
      consultId: consultId(),
      selfId: app.you.id,
      role: tokenRole(),
      link: sessionLink(),
      send: (to, kind, data) => sig.sendRelay(to, kind, data),
    });
  } catch (err) {
    console.warn('spreekkamer: e2ee session', err);
    sig.sendE2ee('unsupported', []);
    renderSecurity();
    return;
  }
  app.e2ee = session;
  hook.e2ee = session;
  session.addEventListener('chat', (ev) => addChatMessage(ev.detail));
  session.addEventListener('photo', (ev) => addChatPhoto(ev.detail));
  session.addEventListener('status', (ev) => {
    const detail = ev.detail || {};
    if (!detail.participantId || app.e2ee !== session) return;
    app.peerTrust.set(detail.participantId, detail);
    if (detail.state === 'on') mark('e2eeKeyed');
    renderTile(detail.participantId);
    renderSecurity();
  });
  session.addEventListener('safety-code', (ev) => {
    mark('e2eePaired');
    if (ev.detail) renderTile(ev.detail.participantId);
  });
  // The first key for someone arrived and this browser cannot ask for a keyframe itself: the
  // frames before the key were undecryptable, so ask the server to get one now rather than wait
  // for the decoder's own request (first picture sooner; loadtest/first-picture.sh).
  session.addEventListener('keyframe-wanted', (ev) => {
    if (ev.detail && app.e2ee === session && app.signaling) app.signaling.send({ type: 'keyframe', from: ev.detail.participantId });
  });
  session.addEventListener('refused', (ev) => ev.detail && app.e2ee === session && reportRefused(ev.detail.participantId));
  // The clinician removed this person (their sealed word, not the server's): gone for this call.
  session.addEventListener('removed', (ev) => {
    if (!ev.detail || app.e2ee !== session) return;
    const id = ev.detail.participantId;
    const p = app.participants.get(id);
    forgetParticipant(id);
    if (p) showNotice(t('notice.removed', { name: p.name || '' }));
  });
  const failed = (err) => {
    console.warn('spreekkamer: e2ee start failed', err && err.message);
    if (app.e2ee === session) {
      app.e2ee = null;
      hook.e2ee = null;
      session.stop();
      sig.sendE2ee('unsupported', []);
    }
    renderTiles();
    renderSecurity();
    return null;
  };
  // The handshake starts once the keys exist; the media worker may still be starting (its
  // messages wait for it). A worker that never starts ends the session as unsupported.
  app.e2eeReady = session.start().then(async () => {
    if (app.e2ee !== session) return null;
    sig.sendE2ee(session.state || (app.e2eeSupport === 'none' ? 'unsupported' : 'on'), app.verified);
    for (const p of app.participants.values()) await session.participantJoined(p);
    return session;
  }).catch(failed);
  session.media().catch(failed);
  app.e2eeFailed = (which, err) => (which === session ? failed(err) : null);
  renderSecurity();
}

function onRelay(msg) {
  if (!app.e2ee || typeof msg.from !== 'string') return;
  const session = app.e2ee;
  // Key messages may arrive before start() finished; queue behind it.
  Promise.resolve(app.e2eeReady).then(() => session.onRelay(msg.from, msg.kind, msg.data)).catch((err) => {
    console.warn('spreekkamer: relay', err && err.message);
  });
}

function onPeerE2ee(msg) {
  if (typeof msg.id !== 'string') return;
  if (msg.state === 'unsupported') app.peerUnsupported.add(msg.id);
  else app.peerUnsupported.delete(msg.id);
  renderTile(msg.id);
  renderSecurity();
}

/**
 * Someone not in the roster tried to start a key handshake with us: the
 * session refused it; say so, once per id, in plain words.
 */
function reportRefused(id) {
  if (typeof id !== 'string' || app.refusedIds.has(id)) return;
  app.refusedIds.add(id);
  const line = document.createElement('p');
  line.className = 'e2ee-alert';
  line.dataset.refusedId = id;
  line.textContent = t('e2ee.refused');
  $('#e2ee-alerts').appendChild(line);
}

function renderAlerts() {
  for (const line of $('#e2ee-alerts').children) line.textContent = t('e2ee.refused');
}

function verifyPeer(id) {
  if (!app.e2ee) return;
  if (app.verified.has(id)) return;
  safeCall(() => app.e2ee.markVerified(id));
  app.verified.add(id);
  if (app.signaling) app.signaling.sendE2ee(app.e2ee.state || 'on', app.verified);
  renderTile(id);
}

/**
 * The consult summary (the weakest trust over everyone shown) and the "your
 * browser cannot encrypt" banner.
 */
function renderSecurity() {
  const on = !!app.e2ee && app.e2eeSupport !== 'none';
  const weakest = on ? weakestTrust([...app.participants.keys()].map(trustFor)) : 'unencrypted';
  const summary = $('#e2ee-summary');
  summary.textContent = t(summaryKey(weakest, { host: isHost(), selfE2ee: on }));
  summary.dataset.e2eeTrust = weakest || 'alone';
  $('#self-unencrypted').hidden = on;
  const chatOk = !!app.e2ee;
  $('#chat-unavailable').hidden = chatOk;
  for (const el of [$('#chat-input'), $('#chat-send'), $('#photo-input')]) el.disabled = !chatOk;
  $('#chat-form').classList.toggle('disabled', !chatOk);
}

function renderPrivacyE2ee() {
  const ok = app.e2eeModule && app.e2eeSupport !== 'none';
  let text = t(ok ? 'privacy.e2eeOn' : 'privacy.e2eeOff');
  // A link with a secret this page cannot use (no label): say why the care provider will be asked.
  if (ok && linkClaim().problem) text += ` ${t('privacy.linkUnusable')}`;
  $('#privacy-e2ee').textContent = text;
}

// ---------------------------------------------------------------------------
// Chat and photos: page memory only

function senderName(from) {
  if (app.you && from === app.you.id) return t('chat.you');
  const p = app.participants.get(from);
  return p ? p.name : t('chat.unknown');
}

function chatItem(from, time) {
  const li = document.createElement('li');
  li.className = 'chat-message';
  if (app.you && from === app.you.id) li.classList.add('own');
  const meta = document.createElement('p');
  meta.className = 'chat-meta';
  meta.textContent = `${senderName(from)} · ${formatTime(time ? new Date(time) : new Date())}`;
  li.appendChild(meta);
  return li;
}

function addChatMessage({ from, text, time }) {
  const li = chatItem(from, time);
  const body = document.createElement('p');
  body.className = 'chat-text';
  body.textContent = String(text ?? '');
  li.appendChild(body);
  appendChat(li);
}

function addChatPhoto({ from, blob, time }) {
  if (!(blob instanceof Blob)) return;
  const url = URL.createObjectURL(blob);
  app.objectUrls.add(url);
  const li = chatItem(from, time);
  li.dataset.url = url;
  const img = document.createElement('img');
  img.className = 'shared-photo';
  img.alt = t('chat.photoAlt', { name: senderName(from) });
  // Its height is known only once loaded: keep the newest item in view then.
  img.addEventListener('load', () => { const log = $('#chat-log'); log.scrollTop = log.scrollHeight; }, { once: true });
  img.src = url;
  li.appendChild(img);
  const save = document.createElement('button');
  save.type = 'button';
  save.className = 'button save-photo';
  save.textContent = t('chat.savePhoto');
  // Saving is an explicit act of the receiver: only this click writes a file.
  save.addEventListener('click', () => {
    const a = document.createElement('a');
    a.href = url;
    a.download = `foto-${new Date().toISOString().replace(/[:.]/g, '-')}.${blob.type === 'image/png' ? 'png' : 'jpg'}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
  });
  li.appendChild(save);
  appendChat(li);
}

function appendChat(li) {
  const log = $('#chat-log');
  log.appendChild(li);
  if (!li.classList.contains('own') && !chatInView()) {
    app.unread += 1;
    renderUnread();
  }
  while (log.children.length > MAX_CHAT_ITEMS) dropChatItem(log.firstElementChild);
  log.scrollTop = log.scrollHeight;
}

function dropChatItem(li) {
  if (li.dataset.url) {
    URL.revokeObjectURL(li.dataset.url);
    app.objectUrls.delete(li.dataset.url);
  }
  li.remove();
}

function clearChat() {
  app.unread = 0;
  renderUnread();
  const log = $('#chat-log');
  while (log.firstElementChild) dropChatItem(log.firstElementChild);
  for (const url of app.objectUrls) URL.revokeObjectURL(url);
  app.objectUrls.clear();
}

async function sendChat(ev) {
  ev.preventDefault();
  const input = $('#chat-input');
  const text = input.value.trim();
  if (!text || !app.e2ee) return;
  input.value = '';
  try {
    await app.e2ee.sendChat(text);
  } catch (err) {
    console.warn('spreekkamer: chat', err && err.message);
    input.value = text;
    showNotice(t('chat.failed'));
  }
}

async function sendPhoto() {
  const input = $('#photo-input');
  const file = input.files && input.files[0];
  input.value = '';
  if (!file || !app.e2ee) return;
  showNotice(t('chat.photoSending'));
  try {
    await app.e2ee.sendPhoto(file);
    showNotice(t('chat.photoSent'));
  } catch (err) {
    const code = err && (err.message === 'photo_too_large' || err.message === 'photo_unreadable') ? err.message : 'photo_failed';
    showNotice(t(`chat.${code}`));
  }
}

// ---------------------------------------------------------------------------
// Controls

function wireControls() {
  $('#join-button').addEventListener('click', join);
  $('#leave').addEventListener('click', leave);
  $('#waiting-leave').addEventListener('click', leave);
  $('#rejoin').addEventListener('click', async () => {
    if (app.stream.getTracks().every((tr) => tr.readyState === 'ended')) await openMedia();
    join();
  });
  $('#error-retry').addEventListener('click', async () => {
    hideError();
    if (app.stream.getTracks().every((tr) => tr.readyState === 'ended')) await openMedia();
    join();
  });
  $('#retry-media').addEventListener('click', openMedia);
  $('#connectivity-again').addEventListener('click', runConnectivityCheck);
  $('#mute-mic').addEventListener('click', () => toggleLocal('audio'));
  $('#camera-off').addEventListener('click', () => toggleLocal('video'));
  $('#audio-only').addEventListener('click', () => setAudioOnly(!app.audioOnly));
  $('#camera-select').addEventListener('change', (ev) => ev.target.value && switchDevice('video', ev.target.value));
  $('#mic-select').addEventListener('change', (ev) => ev.target.value && switchDevice('audio', ev.target.value));
  $('#speaker-select').addEventListener('change', (ev) => {
    app.speakerId = ev.target.value;
    for (const el of document.querySelectorAll('.tile-audio')) media.setSpeaker(el, app.speakerId);
  });
  $('#test-sound').addEventListener('click', () => media.playTestSound(app.speakerId));
  $('#devices-toggle').addEventListener('click', () => {
    closeMenu();
    const panel = $('#call-devices');
    const open = narrow() ? true : panel.hidden;
    panel.hidden = !open;
    $('#devices-toggle').setAttribute('aria-expanded', String(open));
    if (narrow()) setSheet('devices');
    if (open) {
      fillDeviceLists();
      $('#camera-select').focus();
    }
  });
  wireCallScreen();
  $('#chat-form').addEventListener('submit', sendChat);
  $('#photo-input').addEventListener('change', sendPhoto);
  $('#lock').addEventListener('click', () => app.signaling && app.signaling.lock(!app.locked));
  $('#end-consult').addEventListener('click', async () => {
    closeMenu();
    const ok = await confirmAction({
      title: t('confirm.endTitle'),
      text: t('confirm.endText'),
      ok: t('confirm.endOk'),
    });
    if (!ok || !app.signaling) return;
    app.endedByMe = true;
    app.signaling.end();
  });
  $('#invite-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (!app.signaling) return;
    app.signaling.invite($('#invite-role').value, $('#invite-name').value.trim() || undefined);
  });
  $('#invite-revoke').addEventListener('click', () => {
    if (app.signaling && app.invite && app.invite.jti) app.signaling.revokeInvite(app.invite.jti);
  });
  $('#invite-copy').addEventListener('click', async () => {
    const value = $('#invite-link').value;
    try {
      await navigator.clipboard.writeText(value);
      showNotice(t('invite.copied'));
    } catch {
      $('#invite-link').select();
      showNotice(t('invite.copyManual'));
    }
  });
  window.addEventListener('pagehide', () => { if (app.signaling) app.signaling.leave(); });
}

/** Mic mute / camera off: disable the track (no renegotiation) and tell the others. */
async function toggleLocal(kind) {
  const key = kind === 'audio' ? 'micOn' : 'camOn';
  let track = localTrack(kind);
  if (!track) {
    // No device yet (refused or missing earlier): try again when the person asks for it.
    try {
      const fresh = await navigator.mediaDevices.getUserMedia(kind === 'audio' ? { audio: true } : { video: true });
      track = fresh.getTracks()[0] || null;
    } catch (err) {
      showNotice(t(media.mediaHelpKey(err)));
      return;
    }
    if (!track) return;
    app[key] = true;
    setLocalStream(new MediaStream([...app.stream.getTracks(), track]));
  } else {
    app[key] = !app[key];
    if (track) track.enabled = app[key];
  }
  renderSelf();
  if (app.signaling) app.signaling.sendMute(app.micOn && !!localTrack('audio'), app.camOn && !!localTrack('video'));
}

function renderSelf() {
  const hasMic = !!localTrack('audio');
  const hasCam = !!localTrack('video');
  const micOff = !app.micOn || !hasMic;
  const camOff = !app.camOn || !hasCam;
  // The words say the state now and what pressing does (not colour alone).
  setControl($('#mute-mic'), !micOff, micOff ? 'control.micIsOff' : 'control.micIsOn', micOff ? 'control.turnOn' : 'control.turnOff');
  setControl($('#camera-off'), !camOff, camOff ? 'control.camIsOff' : 'control.camIsOn', camOff ? 'control.turnOn' : 'control.turnOff');
  $('#self-camera-off').hidden = !camOff;
  $('#self-mic-off').hidden = !micOff;
  $('#self-view').classList.toggle('camera-off', camOff);
  $('#self-view').classList.toggle('mic-off', micOff);
}

// ---------------------------------------------------------------------------
// The call screen: control bar, menu, sheets, dialogs, clock, quality

function narrow() {
  return window.matchMedia(NARROW).matches;
}

/** A toggle in the control bar: its state in words and what pressing does. */
function setControl(button, on, stateKey, actionKey) {
  button.dataset.on = String(on);
  button.querySelector('.control-state').textContent = t(stateKey);
  button.querySelector('.control-action').textContent = t(actionKey);
}

function wireCallScreen() {
  $('#more-toggle').addEventListener('click', () => ($('#more-menu').hidden ? openMenu() : closeMenu()));
  $('#chat-toggle').addEventListener('click', () => setSheet($('#call-view').dataset.sheet === 'chat' ? '' : 'chat'));
  $('#sheet-close').addEventListener('click', () => setSheet(''));
  $('#lobby-open').addEventListener('click', () => {
    closeMenu();
    setSheet('lobby');
  });
  $('#safety-open').addEventListener('click', () => {
    closeMenu();
    openSafety();
  });
  $('#e2ee-summary').addEventListener('click', openSafety);
  $('#safety-close').addEventListener('click', () => $('#safety-dialog').close());
  $('#flip-camera').addEventListener('click', () => {
    closeMenu();
    flipCamera();
  });
  $('#audio-only').addEventListener('click', () => closeMenu());
  $('#screen-share').addEventListener('click', () => closeMenu());
  $('#screen-allow').addEventListener('click', () => closeMenu());
  $('#waiting-banner-admit').addEventListener('click', (ev) => {
    const id = ev.currentTarget.dataset.participantId;
    if (id && app.signaling) app.signaling.admit(id);
  });
  $('#waiting-banner-open').addEventListener('click', () => {
    if (narrow()) setSheet('lobby');
    else $('#lobby-title').scrollIntoView({ block: 'start' });
  });
  $('#confirm-ok').addEventListener('click', () => $('#confirm-dialog').close('ok'));
  $('#confirm-cancel').addEventListener('click', () => $('#confirm-dialog').close('cancel'));
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== 'Escape') return;
    if (!$('#more-menu').hidden) {
      closeMenu();
      $('#more-toggle').focus();
    } else if ($('#call-view').dataset.sheet) {
      setSheet('');
    }
  });
  document.addEventListener('pointerdown', (ev) => {
    if ($('#more-menu').hidden) return;
    if (!ev.target.closest('#more-menu') && !ev.target.closest('#more-toggle')) closeMenu();
  });
  window.matchMedia(NARROW).addEventListener('change', () => {
    setSheet('');
    renderUnread();
  });
  window.addEventListener('resize', () => {
    for (const tile of $('#tiles').children) renderFit(tile);
  });
  wireSelfDrag();
}

function openMenu() {
  $('#more-menu').hidden = false;
  $('#more-toggle').setAttribute('aria-expanded', 'true');
  const first = [...$('#more-menu').children].find((b) => !b.hidden);
  if (first) first.focus();
}

function closeMenu() {
  // A chosen item goes away with the menu: keyboard focus returns to "More", not to the page's start.
  const hadFocus = $('#more-menu').contains(document.activeElement);
  $('#more-menu').hidden = true;
  if (hadFocus) $('#more-toggle').focus();
  $('#more-toggle').setAttribute('aria-expanded', 'false');
}

/** On a phone, one sheet over the video at a time: 'chat', 'lobby', 'devices' or none. */
function setSheet(name) {
  const view = $('#call-view');
  const before = view.dataset.sheet;
  view.dataset.sheet = name || '';
  $('#chat-toggle').setAttribute('aria-expanded', String(name === 'chat'));
  if (name === 'chat') {
    app.unread = 0;
    renderUnread();
  }
  if (name && name !== before) {
    const heading = { chat: '#chat-title', lobby: '#lobby-title', devices: '#call-devices-title' }[name];
    if (heading) {
      $(heading).tabIndex = -1;
      $(heading).focus();
    }
  } else if (!name && before) {
    const back = before === 'chat' ? '#chat-toggle' : '#more-toggle';
    if (!$('#call-view').hidden) $(back).focus();
  }
}

/** Is the chat on screen (its column on a desktop, its sheet on a phone)? */
function chatInView() {
  if (app.phase !== 'in-call') return false;
  return !narrow() || $('#call-view').dataset.sheet === 'chat';
}

function renderUnread() {
  const badge = $('#chat-unread');
  const n = chatInView() ? 0 : app.unread;
  if (chatInView()) app.unread = 0;
  badge.hidden = n === 0;
  badge.textContent = n > 9 ? '9+' : String(n);
  $('#chat-toggle').setAttribute('aria-label', n ? t('control.chatUnread', { n }) : t('control.chat'));
}

function closeDialogs() {
  for (const d of document.querySelectorAll('dialog[open]')) d.close();
}

/**
 * "Are you sure?" for what cannot be undone. Resolves true only for the
 * confirm button; Escape and "back" are no. The safe choice has the focus.
 */
function confirmAction({ title, text, ok }) {
  const dialog = $('#confirm-dialog');
  if (dialog.open) dialog.close('cancel');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = ok;
  $('#confirm-cancel').textContent = t('confirm.cancel');
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    $('#confirm-cancel').focus();
  });
}

async function confirmRemove(id) {
  const p = app.participants.get(id);
  if (!p || !isHost()) return;
  const name = p.name || roleLabel(p.role);
  const ok = await confirmAction({
    title: t('confirm.removeTitle', { name }),
    text: t('confirm.removeText', { name }),
    ok: t('confirm.removeOk'),
  });
  if (ok && app.participants.has(id)) removeFromConsult(id);
}

/** The safety codes: one row per person the pair has keys with. */
function renderSafety() {
  const list = $('#safety-list');
  const rows = [];
  for (const [id, p] of app.participants) {
    const trust = trustFor(id);
    const keyed = trust !== 'unencrypted' && trust !== 'failed' && trust !== 'pending';
    const code = keyed && app.e2ee && typeof app.e2ee.safetyCode === 'function' ? safeCall(() => app.e2ee.safetyCode(id)) : null;
    if (!code) continue;
    let row = [...list.children].find((li) => li.dataset.participantId === id);
    if (!row) {
      row = $('#safety-row-template').content.firstElementChild.cloneNode(true);
      row.dataset.participantId = id;
      row.querySelector('.verify').addEventListener('click', () => verifyPeer(id));
    }
    const name = p.name || roleLabel(p.role);
    row.querySelector('.safety-label').textContent = t('safety.with', { name });
    row.querySelector('.safety-code').textContent = code.digits || '';
    const words = code.words && code.words[getLanguage()];
    const wordsEl = row.querySelector('.safety-words');
    wordsEl.textContent = Array.isArray(words) ? words.join(' · ') : '';
    wordsEl.hidden = !wordsEl.textContent;
    const verified = app.verified.has(id);
    const verify = row.querySelector('.verify');
    verify.textContent = verified ? t('e2ee.verifiedButton') : t('e2ee.verifyButton');
    verify.setAttribute('aria-pressed', String(verified));
    rows.push(row);
  }
  list.replaceChildren(...rows);
  $('#safety-empty').hidden = rows.length > 0;
}

function openSafety() {
  renderSafety();
  const dialog = $('#safety-dialog');
  if (!dialog.open) dialog.showModal();
}

// The call clock: from the first moment in the call, kept across reconnects.
function startCallClock() {
  if (!app.callStart) app.callStart = Date.now();
  clearInterval(app.timerId);
  app.timerId = setInterval(renderClock, 1000);
  renderClock();
}

function stopCallClock() {
  clearInterval(app.timerId);
  app.timerId = null;
  app.callStart = null;
}

function renderClock() {
  const el = $('#call-timer');
  if (!app.callStart) {
    el.textContent = '';
    return;
  }
  const text = formatDuration(Date.now() - app.callStart);
  el.textContent = text;
  el.setAttribute('aria-label', t('call.timer', { time: text }));
}

/** The tab title: who is waiting (clinician), or a short note (let in). */
function renderTitle() {
  const base = t('page.title');
  let title = base;
  if (app.titleNote) title = `${app.titleNote} – ${base}`;
  else if (isClinicianLink() && app.lobby.size > 0 && app.phase === 'in-call') title = `(${app.lobby.size}) ${t('title.waiting', { n: app.lobby.size })} – ${base}`;
  if (document.title !== title) document.title = title;
}

function flashTitle(text, ms = 15000) {
  app.titleNote = text;
  clearTimeout(app.titleTimer);
  app.titleTimer = setTimeout(() => {
    app.titleNote = null;
    renderTitle();
  }, ms);
  renderTitle();
}

// Connection quality per tile, from the receivers' statistics.
function startQualityWatch() {
  stopQualityWatch();
  app.qualityTimer = setInterval(measureQuality, QUALITY_INTERVAL_MS);
}

function stopQualityWatch() {
  clearInterval(app.qualityTimer);
  app.qualityTimer = null;
  app.quality.clear();
  hook.quality = {};
}

async function measureQuality() {
  const call = app.call;
  if (!call || !call.pc) return;
  let rtt = null;
  try {
    const stats = await call.pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && typeof s.currentRoundTripTime === 'number') rtt = s.currentRoundTripTime;
    });
  } catch { return; }
  for (const [id, receivers] of app.receivers) {
    const p = app.participants.get(id);
    if (!p || app.call !== call) continue;
    // Video tells most; without it (camera off, audio only) the sound does.
    const useVideo = receivers.video && p.video !== false && !app.audioOnly;
    const receiver = useVideo ? receivers.video : receivers.audio;
    if (!receiver) continue;
    let received = 0;
    let lost = 0;
    try {
      const stats = await receiver.getStats();
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp') {
          received += s.packetsReceived || 0;
          lost += s.packetsLost || 0;
        }
      });
    } catch { continue; }
    const kind = useVideo ? 'video' : 'audio';
    const prev = app.quality.get(id);
    const sample = { kind, received, lost };
    let quality = prev ? prev.quality : 'unknown';
    if (prev && prev.last.kind === kind) {
      const expected = kind === 'video' ? p.video !== false : p.audio !== false;
      quality = qualityFrom({ received: received - prev.last.received, lost: lost - prev.last.lost, rtt, expected });
    }
    app.quality.set(id, { quality, last: sample });
    hook.quality[id] = quality;
    renderQuality(id);
  }
}

function renderQuality(id) {
  const tile = tileFor(id);
  if (!tile) return;
  const q = app.quality.get(id);
  const quality = q ? q.quality : 'unknown';
  const el = tile.querySelector('.tile-quality');
  el.dataset.quality = quality;
  el.hidden = quality === 'unknown';
  el.textContent = t(`quality.${quality}`);
}

/** Fill the tile, unless that would cut off an upright picture (see present.js). */
function renderFit(tile) {
  const video = tile.querySelector('.tile-video');
  const box = tile.getBoundingClientRect();
  tile.dataset.fit = fitFor(video.videoWidth, video.videoHeight, box.width, box.height);
}

/** Phones: front and back camera; elsewhere the next camera in the list. */
async function flipCamera() {
  const current = localTrack('video');
  const settings = current && current.getSettings ? current.getSettings() : {};
  const devices = await media.listDevices();
  let constraints;
  if (settings.facingMode === 'user' || settings.facingMode === 'environment') {
    constraints = { facingMode: { exact: settings.facingMode === 'user' ? 'environment' : 'user' } };
  } else {
    const cams = devices.videoinput;
    if (cams.length < 2) return;
    const i = cams.findIndex((d) => d.deviceId === settings.deviceId);
    constraints = { deviceId: { exact: cams[(i + 1) % cams.length].deviceId } };
  }
  let fresh;
  try {
    if (current) current.stop(); // phones often cannot open both cameras at once
    fresh = await navigator.mediaDevices.getUserMedia({ video: { ...constraints, width: { ideal: 1280 }, height: { ideal: 720 } } });
  } catch (err) {
    showNotice(t(media.mediaHelpKey(err)));
    try {
      fresh = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch {
      return;
    }
  }
  const track = fresh.getVideoTracks()[0];
  if (!track) return;
  const facing = track.getSettings ? track.getSettings().facingMode : undefined;
  $('#self-view').classList.toggle('rear', facing === 'environment');
  const others = app.stream.getTracks().filter((tr) => tr.kind !== 'video');
  setLocalStream(new MediaStream([...others, track]));
  fillDeviceLists();
}

/** The self view can be dragged to any corner of the video. */
function wireSelfDrag() {
  const pip = $('#call-self');
  let start = null;
  pip.addEventListener('pointerdown', (ev) => {
    if (app.phase !== 'in-call') return;
    start = { x: ev.clientX, y: ev.clientY, id: ev.pointerId };
    pip.setPointerCapture(ev.pointerId);
    pip.classList.add('dragging');
  });
  pip.addEventListener('pointermove', (ev) => {
    if (!start || ev.pointerId !== start.id) return;
    pip.style.translate = `${ev.clientX - start.x}px ${ev.clientY - start.y}px`;
  });
  const drop = (ev) => {
    if (!start || ev.pointerId !== start.id) return;
    start = null;
    pip.classList.remove('dragging');
    const stage = $('#stage').getBoundingClientRect();
    const box = pip.getBoundingClientRect();
    const cx = box.left + box.width / 2 - stage.left;
    const cy = box.top + box.height / 2 - stage.top;
    pip.style.translate = '';
    pip.dataset.corner = `${cy < stage.height / 2 ? 't' : 'b'}${cx < stage.width / 2 ? 'l' : 'r'}`;
  };
  pip.addEventListener('pointerup', drop);
  pip.addEventListener('pointercancel', drop);
}

// ---------------------------------------------------------------------------
// Language

function formatTime(date) {
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString(getLanguage() === 'nl' ? 'nl-NL' : 'en-GB', { hour: '2-digit', minute: '2-digit' });
}

function formatDateTime(date) {
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) return '';
  return date.toLocaleString(getLanguage() === 'nl' ? 'nl-NL' : 'en-GB', { day: 'numeric', month: 'long', hour: '2-digit', minute: '2-digit' });
}

/**
 * Under the heading: "checking your link", then the greeting with the
 * server's word for the name (never the unchecked token's), and who the
 * appointment is with.
 */
function renderGreeting() {
  const el = $('#link-status');
  const c = app.check;
  if (!c || c.status === 'unknown' || c.status === 'refused') {
    el.textContent = '';
    return;
  }
  if (c.status === 'checking') {
    el.textContent = t('check.checking');
    return;
  }
  const parts = [];
  if (c.name) parts.push(t('preview.greeting', { name: c.name }));
  if (app.hostName && c.role !== 'clinician') parts.push(t('preview.host', { host: app.hostName }));
  if (c.role === 'guest') parts.push(t('preview.guest'));
  if (!parts.length) parts.push(t('check.ok'));
  el.textContent = parts.join(' ');
}

/** The waiting room names the clinician when the consult says who it is. */
function renderWaiting() {
  $('#waiting-text').textContent = app.hostName ? t('waiting.textHost', { host: app.hostName }) : t('waiting.text');
  const contact = $('#waiting-contact');
  contact.hidden = !app.contact;
  contact.textContent = app.contact ? t('contact.line', { contact: app.contact }) : '';
}

function renderError() {
  if (!app.errorCode) return;
  const code = app.errorCode;
  const family = code.startsWith('token_') || code === 'no_token' ? 'errorTitle.link' : 'errorTitle.default';
  const title = t(`errorTitle.${code}`, {}, t(family));
  $('#error-title').textContent = title;
  $('#error-heading').textContent = title;
  $('#error-text').textContent = t(`error.${code}`, {}, t('error.unknown', { code }));
  const help = $('#error-help');
  help.hidden = !app.errorHelp;
  help.textContent = app.errorHelp ? t(app.errorHelp) : '';
  // Whom to ask: the care provider's own line, when the server has one.
  const contact = $('#error-contact');
  contact.hidden = !app.contact;
  contact.textContent = app.contact ? t('contact.line', { contact: app.contact }) : '';
}

/** Re-render everything built from strings in code (data-i18n is done by i18n.js). */
function renderLanguage() {
  renderGreeting();
  renderWaiting();
  renderLeft();
  renderUnread();
  renderTitle();
  renderConnectivity();
  renderError();
  renderPrivacyE2ee();
  renderSecurity();
  renderAlerts();
  renderSelf();
  setLocked(app.locked);
  renderAudioOnly();
  renderTiles();
  app.screen.render();
  renderLobby();
  renderInvite();
  renderClock();
  fillDeviceLists();
}

// ---------------------------------------------------------------------------

app.screen = new ScreenShare({
  t,
  send: (on) => app.signaling && app.signaling.send({ type: 'screen', on }),
  sendAllow: (allowed) => isHost() && app.signaling && app.signaling.send({ type: 'screen-allow', allowed }),
  setTrack: (track) => (app.call ? app.call.setLocalTrack('screen', track) : Promise.resolve()),
  participants: () => app.participants,
  role: () => (app.you ? app.you.role : null),
  notice: (text) => showNotice(text),
});
hook.screen = app.screen;

initI18n();
onLanguageChange(renderLanguage);
start();
