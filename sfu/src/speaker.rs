//! Dominant-speaker detection from RFC 6464 audio levels.
//!
//! Every audio packet carries the sender's level in `-dBov` (0 = loudest,
//! 127 = silence) in the `ssrc-audio-level` header extension, in clear
//! even with end-to-end encryption. Two things are tracked per participant:
//!
//! * whether they are **speaking**: a packet at or above [`VOICED_LEVEL`]
//!   within the last [`HOLD`] (speech has gaps between words; Chromium's
//!   fake microphone even only beeps 20 ms every half second);
//! * how **loud** they are: `127 - level` averaged over about a second,
//!   which a short cough hardly moves.
//!
//! The loudest speaking participant is the candidate. The first one is
//! taken at once; a different one takes over only after being clearly
//! louder ([`SWITCH_MARGIN`]) than the current speaker for [`SWITCH_AFTER`];
//! when the current speaker has not spoken for [`SILENCE_AFTER`] and nobody
//! else speaks, there is no speaker.
//!
//! Pure and allocation-free per packet (members live in a small `Vec` that
//! grows on a participant's first packet only).

use std::time::{Duration, Instant};

/// Averaging time constant of the loudness.
const SMOOTHING: Duration = Duration::from_millis(1000);
/// How often a decision is taken.
const EVAL_EVERY: Duration = Duration::from_millis(100);
/// A candidate must be this much louder (dB) than the current speaker...
const SWITCH_MARGIN: f32 = 6.0;
/// ...for this long before it takes over.
const SWITCH_AFTER: Duration = Duration::from_millis(500);
/// Nobody speaking for this long: no speaker.
const SILENCE_AFTER: Duration = Duration::from_millis(2000);
/// A packet at -55 dBov or louder is voice (noise suppression keeps a
/// quiet room well below; a muted track sends 127).
const VOICED_LEVEL: u8 = 55;
/// Speaking = a voiced packet this recently.
const HOLD: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy)]
struct Member<K> {
    key: K,
    loudness: f32,
    last_packet: Instant,
    last_voice: Option<Instant>,
}

impl<K> Member<K> {
    fn voiced_within(&self, now: Instant, d: Duration) -> bool {
        self.last_voice
            .is_some_and(|t| now.saturating_duration_since(t) < d)
    }

    /// Loudness as of `now`: decays while no packets arrive (muted, left).
    fn loudness_at(&self, now: Instant) -> f32 {
        let idle = now
            .saturating_duration_since(self.last_packet)
            .as_secs_f32();
        self.loudness * (-idle / SMOOTHING.as_secs_f32()).exp()
    }
}

#[derive(Debug)]
pub(crate) struct SpeakerDetector<K> {
    members: Vec<Member<K>>,
    current: Option<K>,
    /// The challenger and since when it has been clearly louder.
    challenger: Option<(K, Instant)>,
    next_eval: Option<Instant>,
}

impl<K: Copy + Eq> Default for SpeakerDetector<K> {
    fn default() -> Self {
        SpeakerDetector {
            members: Vec::new(),
            current: None,
            challenger: None,
            next_eval: None,
        }
    }
}

impl<K: Copy + Eq> SpeakerDetector<K> {
    /// One audio packet's level from `key`. Returns the new dominant
    /// speaker when it changed (`Some(None)`: nobody speaks any more).
    pub(crate) fn on_level(&mut self, key: K, level: u8, now: Instant) -> Option<Option<K>> {
        let level = level.min(127);
        let loud = f32::from(127 - level);
        let member = match self.members.iter().position(|m| m.key == key) {
            Some(i) => &mut self.members[i],
            None => {
                self.members.push(Member {
                    key,
                    loudness: 0.0,
                    last_packet: now,
                    last_voice: None,
                });
                let last = self.members.len() - 1;
                &mut self.members[last]
            }
        };
        let dt = now.saturating_duration_since(member.last_packet);
        let alpha = (dt.as_secs_f32() / SMOOTHING.as_secs_f32()).clamp(0.02, 1.0);
        member.loudness += alpha * (loud - member.loudness);
        member.last_packet = now;
        if level <= VOICED_LEVEL {
            member.last_voice = Some(now);
        }
        self.evaluate(now)
    }

    /// The dominant speaker now (for a participant who just joined).
    pub(crate) fn current(&self) -> Option<K> {
        self.current
    }

    /// Forget a participant (they left).
    pub(crate) fn remove(&mut self, key: K, now: Instant) -> Option<Option<K>> {
        self.members.retain(|m| m.key != key);
        if self.challenger.is_some_and(|(c, _)| c == key) {
            self.challenger = None;
        }
        if self.current == Some(key) {
            self.current = None;
            self.next_eval = None;
            let _ = self.evaluate(now);
            return Some(self.current);
        }
        None
    }

    /// Re-decide (at most every [`EVAL_EVERY`]; the worker also calls it
    /// from its timer so silence is noticed when no packets arrive).
    pub(crate) fn evaluate(&mut self, now: Instant) -> Option<Option<K>> {
        if self.next_eval.is_some_and(|t| now < t) {
            return None;
        }
        self.next_eval = Some(now + EVAL_EVERY);
        let candidate = self
            .members
            .iter()
            .filter(|m| m.voiced_within(now, HOLD))
            .max_by(|a, b| a.loudness_at(now).total_cmp(&b.loudness_at(now)))
            .map(|m| (m.key, m.loudness_at(now)));
        let current = self
            .current
            .and_then(|k| self.members.iter().find(|m| m.key == k))
            .copied();
        let next = match (current, candidate) {
            (None, Some((k, _))) => {
                self.challenger = None;
                Some(k)
            }
            (None, None) => None,
            (Some(cur), Some((k, loud))) if k != cur.key => {
                if loud >= cur.loudness_at(now) + SWITCH_MARGIN {
                    match self.challenger {
                        Some((c, since)) if c == k => {
                            if now.saturating_duration_since(since) >= SWITCH_AFTER {
                                self.challenger = None;
                                Some(k)
                            } else {
                                Some(cur.key)
                            }
                        }
                        _ => {
                            self.challenger = Some((k, now));
                            Some(cur.key)
                        }
                    }
                } else {
                    self.challenger = None;
                    Some(cur.key)
                }
            }
            (Some(cur), None) if !cur.voiced_within(now, SILENCE_AFTER) => {
                self.challenger = None;
                None
            }
            (Some(cur), _) => Some(cur.key),
        };
        if next != self.current {
            self.current = next;
            Some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed 20 ms packets: `levels[i]` for member `i`, for `ms`.
    fn feed(
        d: &mut SpeakerDetector<u8>,
        t: &mut Instant,
        levels: &[Option<u8>],
        ms: u64,
    ) -> Vec<Option<u8>> {
        let mut changes = Vec::new();
        for _ in 0..ms / 20 {
            *t += Duration::from_millis(20);
            for (i, level) in levels.iter().enumerate() {
                if let Some(level) = level
                    && let Some(c) = d.on_level(i as u8, *level, *t)
                {
                    changes.push(c);
                }
            }
            if let Some(c) = d.evaluate(*t) {
                changes.push(c);
            }
        }
        changes
    }

    const SPEECH: u8 = 30;
    const QUIET: u8 = 127;

    #[test]
    fn a_speaker_is_found_and_kept_through_short_pauses() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        assert!(feed(&mut d, &mut t, &[Some(QUIET), Some(QUIET)], 1000).is_empty());
        let c = feed(&mut d, &mut t, &[Some(SPEECH), Some(QUIET)], 1500);
        assert_eq!(c, vec![Some(0)]);
        assert_eq!(d.current(), Some(0));
        // A breath of half a second is not silence.
        assert!(feed(&mut d, &mut t, &[Some(QUIET), Some(QUIET)], 500).is_empty());
        assert!(feed(&mut d, &mut t, &[Some(SPEECH), Some(QUIET)], 500).is_empty());
    }

    #[test]
    fn a_blip_does_not_switch_but_a_sustained_louder_voice_does() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        feed(&mut d, &mut t, &[Some(40), Some(QUIET)], 2000);
        // 200 ms of the other one shouting.
        assert!(feed(&mut d, &mut t, &[Some(40), Some(5)], 200).is_empty());
        assert!(feed(&mut d, &mut t, &[Some(40), Some(QUIET)], 1000).is_empty());
        // Now they take over for real.
        let c = feed(&mut d, &mut t, &[Some(QUIET), Some(20)], 3000);
        assert_eq!(c, vec![Some(1)]);
    }

    #[test]
    fn silence_ends_with_no_speaker() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        feed(&mut d, &mut t, &[Some(SPEECH)], 1500);
        let c = feed(&mut d, &mut t, &[Some(QUIET)], 5000);
        assert_eq!(c, vec![None]);
        // Audio stopping altogether (muted, left) is silence too.
        feed(&mut d, &mut t, &[Some(SPEECH)], 1500);
        let c = feed(&mut d, &mut t, &[None], 3000);
        assert_eq!(c, vec![None]);
    }

    #[test]
    fn a_sparse_beep_is_speech_and_muted_peers_are_not() {
        // Chromium's fake microphone: a 20 ms beep every 500 ms.
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        let mut changes = Vec::new();
        for i in 0..150 {
            let beep = if i % 25 == 0 { 10 } else { QUIET };
            changes.extend(feed(
                &mut d,
                &mut t,
                &[Some(QUIET), Some(beep), Some(QUIET)],
                20,
            ));
        }
        assert_eq!(changes, vec![Some(1)]);
    }

    #[test]
    fn the_speaker_leaving_is_reported() {
        let mut d = SpeakerDetector::default();
        let mut t = Instant::now();
        feed(&mut d, &mut t, &[Some(SPEECH), Some(QUIET)], 1500);
        assert_eq!(d.remove(0, t), Some(None));
        assert_eq!(d.remove(0, t), None, "twice is harmless");
    }
}
