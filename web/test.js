// The test-your-setup page (/test): no link, no consult. Four steps, each
// with a plain result and, when it fails, what to do and a way to try again:
//   camera      — the self view shows a picture;
//   microphone  — the level meter moves when the person speaks;
//   speaker     — a test sound, and the person says whether they heard it;
//   connection  — the connectivity check, as an anonymous probe (no token).
// The summary says whether everything works. The result of each step is in
// `data-result` on its <li> (checking | waiting | ok | failed | unknown) and the
// summary's (pending | ok | problems | incomplete), for styling and tests.

import { initI18n, onLanguageChange, t } from './i18n.js';
import { mediaHelpKey, openLocalMedia, playTestSound, watchLevel } from './media.js';
import { checkConnection, failedText } from './connectivity.js';

/** The meter must go above this once for the microphone to count as working. */
const HEARD_LEVEL = 0.03;
/** A camera that gives no picture within this long does not work. */
const CAMERA_PICTURE_MS = 8000;

const $ = (id) => document.getElementById(id);

const state = {
  camera: { result: 'checking', error: null },
  mic: { result: 'checking', error: null },
  speaker: { result: 'waiting', played: false },
  connection: { result: 'checking', check: null },
  stream: null,
  stopLevel: () => {},
  pictureTimer: null,
  connectionAbort: null,
  // Bumped by every (re)start of the devices, so a late answer of an old
  // attempt changes nothing.
  mediaRun: 0,
};

// ---------------------------------------------------------------------------
// Camera and microphone (one request for both, as the consult page makes)

async function startDevices() {
  const run = ++state.mediaRun;
  stopDevices();
  state.camera = { result: 'checking', error: null };
  state.mic = { result: 'checking', error: null };
  render();
  const { stream, error } = await openLocalMedia();
  if (run !== state.mediaRun) {
    for (const track of stream.getTracks()) track.stop();
    return;
  }
  state.stream = stream;
  const video = stream.getVideoTracks()[0] || null;
  const audio = stream.getAudioTracks()[0] || null;

  if (video) {
    const el = $('setup-video');
    el.srcObject = new MediaStream([video]);
    const seen = () => {
      if (run !== state.mediaRun || el.videoWidth === 0) return;
      clearTimeout(state.pictureTimer);
      state.camera = { result: 'ok', error: null };
      render();
    };
    el.addEventListener('loadedmetadata', seen, { once: true });
    el.addEventListener('resize', seen);
    el.play().catch(() => { /* muted autoplay is allowed; a refusal shows as no picture */ });
    clearTimeout(state.pictureTimer);
    state.pictureTimer = setTimeout(() => {
      if (run !== state.mediaRun || state.camera.result === 'ok') return;
      state.camera = { result: 'failed', error: new DOMException('no picture', 'NotReadableError') };
      render();
    }, CAMERA_PICTURE_MS);
  } else {
    state.camera = { result: 'failed', error: error || new DOMException('no camera', 'NotFoundError') };
  }

  if (audio) {
    state.mic = { result: 'waiting', error: null };
    state.stopLevel = watchLevel(audio, (level) => {
      $('setup-level').value = level;
      if (level > HEARD_LEVEL && state.mic.result === 'waiting' && run === state.mediaRun) {
        state.mic = { result: 'ok', error: null };
        render();
      }
    });
  } else {
    state.mic = { result: 'failed', error: error || new DOMException('no microphone', 'NotFoundError') };
  }
  render();
}

function stopDevices() {
  clearTimeout(state.pictureTimer);
  state.stopLevel();
  state.stopLevel = () => {};
  if (state.stream) for (const track of state.stream.getTracks()) track.stop();
  state.stream = null;
  $('setup-video').srcObject = null;
  $('setup-level').value = 0;
}

// ---------------------------------------------------------------------------
// Speaker: only the person can tell whether they heard it

async function playSound() {
  state.speaker = { result: 'waiting', played: true };
  render();
  await playTestSound(null);
}

function answerSpeaker(heard) {
  state.speaker = { result: heard ? 'ok' : 'failed', played: true };
  render();
  // The answer buttons are gone now: keep the focus in this step.
  $(heard ? 'speaker-result' : 'speaker-play').focus();
}

// ---------------------------------------------------------------------------
// Connection to the video server (an anonymous probe: no token)

async function startConnection() {
  if (state.connectionAbort) state.connectionAbort.abort();
  const controller = new AbortController();
  state.connectionAbort = controller;
  state.connection = { result: 'checking', check: null };
  render();
  const check = await checkConnection({ signal: controller.signal });
  if (state.connectionAbort !== controller || check.result === 'aborted') return;
  state.connectionAbort = null;
  const ok = ['udp', 'tcp', 'relay'].includes(check.result);
  // 'unknown': the server could not run the check now (busy); not a failure of the network.
  state.connection = { result: ok ? 'ok' : check.result === 'unknown' ? 'unknown' : 'failed', check };
  render();
}

// ---------------------------------------------------------------------------
// Rendering: every text from the state, so a language switch redraws it all

function helpText(error) {
  return t(mediaHelpKey(error));
}

function connectionText(check) {
  if (!check) return t('connectivity.checking');
  if (check.result === 'failed') return failedText(t, check.ports);
  if (check.result === 'unknown') return t(check.code === 'rate_limited' ? 'setup.connectionBusy' : 'setup.connectionUnknown');
  return t(`connectivity.${check.result}`);
}

function setStep(id, result) {
  const li = $(id);
  li.dataset.result = result;
  const badge = li.querySelector('[data-badge]');
  badge.textContent = t(`setup.badge.${result}`);
}

function render() {
  const { camera, mic, speaker, connection } = state;

  setStep('step-camera', camera.result);
  $('camera-result').textContent = t(`setup.camera.${camera.result}`);
  $('camera-help').hidden = camera.result !== 'failed';
  $('camera-help-text').textContent = camera.result === 'failed' ? helpText(camera.error) : '';

  setStep('step-mic', mic.result);
  $('mic-result').textContent = t(`setup.mic.${mic.result}`);
  // One retry button is enough when both failed for the same reason.
  const sameFailure = camera.result === 'failed' && mic.result === 'failed' && helpText(camera.error) === helpText(mic.error);
  $('mic-help').hidden = mic.result !== 'failed' || sameFailure;
  $('mic-help-text').textContent = mic.result === 'failed' ? helpText(mic.error) : '';

  setStep('step-speaker', speaker.result);
  const speakerKey = speaker.result === 'waiting' ? (speaker.played ? 'setup.speaker.played' : 'setup.speaker.waiting') : `setup.speaker.${speaker.result}`;
  $('speaker-result').textContent = t(speakerKey);
  $('speaker-question').hidden = !(speaker.played && speaker.result === 'waiting');
  $('speaker-play').hidden = speaker.result === 'ok';

  setStep('step-connection', connection.result);
  $('connection-result').textContent = connectionText(connection.check);
  $('connection-retry').hidden = connection.result === 'checking';
  $('step-connection').dataset.route = connection.check ? connection.check.result : '';

  const results = [camera.result, mic.result, speaker.result, connection.result];
  const summary = results.every((r) => r === 'ok') ? 'ok'
    : results.includes('failed') ? 'problems'
      : results.includes('unknown') && !results.some((r) => r === 'checking' || r === 'waiting') ? 'incomplete'
        : 'pending';
  $('setup-summary').dataset.result = summary;
  $('summary-text').textContent = t(`setup.summary.${summary}`);
  $('summary-next').textContent = summary === 'ok' || summary === 'problems' ? t(`setup.summaryNext.${summary}`) : '';
}

// ---------------------------------------------------------------------------

function retryDevices() {
  startDevices();
}

function testAgain() {
  state.speaker = { result: 'waiting', played: false };
  startDevices();
  startConnection();
}

function init() {
  initI18n();
  onLanguageChange(render);
  $('camera-retry').addEventListener('click', retryDevices);
  $('mic-retry').addEventListener('click', retryDevices);
  $('speaker-play').addEventListener('click', playSound);
  $('speaker-yes').addEventListener('click', () => answerSpeaker(true));
  $('speaker-no').addEventListener('click', () => answerSpeaker(false));
  $('connection-retry').addEventListener('click', startConnection);
  $('setup-again').addEventListener('click', testAgain);
  // Leaving the page lets go of the camera and the microphone at once.
  window.addEventListener('pagehide', stopDevices);
  render();
  startDevices();
  startConnection();
}

init();
