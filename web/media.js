// Local devices: the camera and microphone, choosing devices, the speaker,
// and the microphone level meter. No protocol, no translations.

/**
 * Ask for camera and microphone; fall back to one of them so a person with a
 * broken camera can still talk (and one without a microphone can still be
 * seen). Resolves to {stream, error}: `stream` may lack a kind; `error` is the
 * first failure (a DOMException) when something was refused or missing.
 */
export async function openLocalMedia({ audioDevice = null, videoDevice = null } = {}) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: new MediaStream(), error: new DOMException('no mediaDevices', 'NotSupportedError') };
  }
  const audio = audioDevice ? { deviceId: { exact: audioDevice }, echoCancellation: true, noiseSuppression: true } : { echoCancellation: true, noiseSuppression: true };
  const video = videoDevice ? { deviceId: { exact: videoDevice }, width: { ideal: 1280 }, height: { ideal: 720 } } : { width: { ideal: 1280 }, height: { ideal: 720 } };
  let firstError = null;
  for (const constraints of [{ audio, video }, { audio }, { video }]) {
    try {
      const stream = await navigator.mediaDevices.getUserMedia(constraints);
      return { stream, error: firstError };
    } catch (err) {
      if (!firstError) firstError = err;
      // A refused permission applies to every attempt: do not ask three times.
      if (err && err.name === 'NotAllowedError') break;
    }
  }
  return { stream: new MediaStream(), error: firstError };
}

/** Devices grouped by kind; labels are empty until permission is granted. */
export async function listDevices() {
  const out = { audioinput: [], videoinput: [], audiooutput: [] };
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return out;
  try {
    for (const d of await navigator.mediaDevices.enumerateDevices()) {
      if (out[d.kind] && d.deviceId) out[d.kind].push(d);
    }
  } catch {
    // enumerateDevices can fail in locked-down browsers; no choice then.
  }
  return out;
}

/** Whether the browser can send audio to a chosen speaker. */
export function canChooseSpeaker() {
  return typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;
}

/** Route an element's sound to a speaker; failures are ignored (default speaker). */
export async function setSpeaker(element, deviceId) {
  if (!canChooseSpeaker() || !deviceId) return;
  try {
    await element.setSinkId(deviceId);
  } catch (err) {
    console.warn('spreekkamer: could not select speaker', err && err.name);
  }
}

/**
 * A microphone level meter: calls `onLevel(0..1)` about 15 times a second
 * while the track is live. Returns a stop function.
 */
export function watchLevel(track, onLevel) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!track || !Ctx) return () => {};
  let ctx;
  try {
    ctx = new Ctx();
  } catch {
    return () => {};
  }
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  // An AudioContext made before a user gesture starts suspended; resume
  // whenever the page is interacted with.
  const resume = () => { if (ctx.state === 'suspended') ctx.resume().catch(() => {}); };
  resume();
  document.addEventListener('pointerdown', resume);
  document.addEventListener('keydown', resume);
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
    const rms = Math.sqrt(sum / samples.length);
    // Speech sits around 0.02–0.2 RMS; scale so normal speech fills half the bar.
    onLevel(track.enabled ? Math.min(1, rms * 5) : 0);
  }, 66);
  return () => {
    clearInterval(timer);
    document.removeEventListener('pointerdown', resume);
    document.removeEventListener('keydown', resume);
    try { source.disconnect(); } catch { /* gone */ }
    ctx.close().catch(() => {});
  };
}

/** Play a short two-tone chime through the chosen speaker. */
export async function playTestSound(speakerId) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  const ctx = new Ctx();
  const dest = ctx.createMediaStreamDestination();
  const gain = ctx.createGain();
  gain.gain.value = 0.2;
  gain.connect(dest);
  const audio = new Audio();
  audio.srcObject = dest.stream;
  await setSpeaker(audio, speakerId);
  const t = ctx.currentTime;
  for (const [freq, start] of [[660, 0], [880, 0.35]]) {
    const osc = ctx.createOscillator();
    osc.frequency.value = freq;
    osc.connect(gain);
    osc.start(t + start);
    osc.stop(t + start + 0.3);
  }
  try { await audio.play(); } catch { /* autoplay refused: nothing to hear */ }
  setTimeout(() => { audio.srcObject = null; ctx.close().catch(() => {}); }, 1000);
}

/** Which help text on camera permission fits: 'ios' | 'android' | 'firefox' | 'safari' | 'chrome' | 'other'. */
export function browserFamily(ua = navigator.userAgent, touchPoints = typeof navigator !== 'undefined' ? navigator.maxTouchPoints || 0 : 0) {
  // Every browser on an iPhone or iPad is Safari underneath, with Safari's settings
  // (an iPad may say it is a Mac: it has a touch screen, a Mac does not).
  if (/iPhone|iPad|iPod/.test(ua) || (/Macintosh/.test(ua) && touchPoints > 1)) return 'ios';
  if (/Android/.test(ua) && /Chrome\/|SamsungBrowser\//.test(ua) && !/Firefox\//.test(ua)) return 'android';
  if (/Firefox\//.test(ua)) return 'firefox';
  if (/Edg\/|Chrome\/|Chromium\/|CriOS\//.test(ua)) return 'chrome';
  if (/Safari\//.test(ua)) return 'safari';
  return 'other';
}

/**
 * The help text key (`mediaHelp.*`) for why the camera or microphone did not
 * start: a refusal gets the steps for this browser and platform.
 */
export function mediaHelpKey(error, family = browserFamily()) {
  const name = error && error.name;
  if (name === 'NotAllowedError' || name === 'SecurityError') return `mediaHelp.${family}`;
  if (name === 'NotReadableError' || name === 'AbortError') return 'mediaHelp.inUse';
  if (name === 'NotFoundError' || name === 'OverconstrainedError') return 'mediaHelp.notFound';
  return 'mediaHelp.other';
}
