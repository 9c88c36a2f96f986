// Cues that reach a person who is not looking at the page: a soft chime, the
// tab title, and (for the clinician, if allowed) a desktop notification.
// Nothing here carries consult content: a notification says that someone is
// waiting, with the name the clinician's own page already shows.

let audio = null;
let shown = null; // the notification on screen, closed once nobody waits
export const played = { chimes: 0, notifications: 0 };

/** Create or resume the audio context; call from a click (browsers require a gesture). */
export function unlockAudio() {
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!audio) audio = new Ctx();
    if (audio.state === 'suspended') audio.resume().catch(() => {});
  } catch {
    audio = null;
  }
}

/** Two soft rising notes (about half a second). Silent if audio was never unlocked. */
export function chime() {
  played.chimes += 1;
  if (!audio) return;
  try {
    const now = audio.currentTime;
    for (const [i, freq] of [660, 880].entries()) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.type = 'sine';
      osc.frequency.value = freq;
      const start = now + i * 0.18;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.2, start + 0.03);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.35);
      osc.connect(gain).connect(audio.destination);
      osc.start(start);
      osc.stop(start + 0.4);
    }
  } catch { /* no sound is not an error */ }
}

/** Ask once, from a click, whether desktop notifications may be shown. */
export function askNotificationPermission() {
  try {
    if (typeof Notification === 'undefined' || Notification.permission !== 'default') return;
    const asked = Notification.requestPermission();
    if (asked && typeof asked.catch === 'function') asked.catch(() => {});
  } catch { /* not supported */ }
}

/**
 * A desktop notification, only when allowed and the page is not in front
 * (someone looking at the page sees the banner and hears the chime).
 */
export function notify(title, body) {
  try {
    if (typeof Notification === 'undefined' || Notification.permission !== 'granted') return false;
    if (document.visibilityState === 'visible' && document.hasFocus()) return false;
    const n = new Notification(title, { body, tag: 'spreekkamer-waiting', silent: false });
    n.addEventListener('click', () => { window.focus(); n.close(); });
    shown = n;
    played.notifications += 1;
    return true;
  } catch {
    return false;
  }
}

/** Take the notification away (everyone let in, or gone). */
export function clearNotification() {
  try {
    if (shown) shown.close();
  } catch { /* already gone */ }
  shown = null;
}
