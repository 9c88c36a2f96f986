//! Revoked invites and tokens: scoped to one consult, bounded per consult,
//! kept only as long as the revoked token could still join, and limited per
//! clinician.
//!
//! **Which ids were issued.** Invites this server mints carry a
//! self-authenticating id, `i1-{nonce}-{expires}-{tag}`, where `tag` is an
//! HMAC-SHA256 of (consult, nonce, expires) under a key derived from the
//! invite secret ([`InviteIds`]). A revocation request holds only the id, yet
//! that is enough to know whether it is one of *this consult's* invites and
//! when it expires — without a record per invite, and still after a restart
//! with the same secret. An id of that shape that does not verify for the
//! consult (another consult's invite, or made up) is refused with
//! `unknown_invite` and never stored; an invite that already expired needs
//! no entry at all. Such entries are bounded by what the consult minted.
//!
//! **Ids the server cannot check** (a token the EHR signed itself) are
//! stored too, since the EHR is trusted to mint tokens for the consult, but
//! at most [`MAX_FOREIGN_PER_CONSULT`] per consult (and
//! [`MAX_FOREIGN_TOTAL`] in all), kept until the longest-lived token known
//! for the consult expires (at least [`FOREIGN_MIN_KEEP_SECS`]). When a
//! revoked token turns up, its entry is kept at least until that token's own
//! `exp`. A clinician flooding made-up ids fills only their own consult's
//! quota: every other consult keeps its own.
//!
//! Pure logic, time as a parameter; [`Directory`](crate::directory::Directory)
//! holds one [`Revocations`] under its lock. Nothing here is written to disk:
//! a restart forgets every revocation (docs/OPERATIONS.md).

use crate::rate::TokenBucket;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

type HmacSha256 = Hmac<Sha256>;

/// Revocations of ids the server cannot check, per consult.
pub const MAX_FOREIGN_PER_CONSULT: usize = 64;
/// ... and in all (a few dozen bytes each: about 10 MB at most).
pub const MAX_FOREIGN_TOTAL: usize = 100_000;
/// Revoked invites of one consult. A consult has at most
/// [`MAX_INVITES_PER_CONSULT`](crate::directory::MAX_INVITES_PER_CONSULT)
/// live invites at a time, so only invites from before a restart can add to
/// that; the cap is a backstop, not a limit anyone meets.
pub const MAX_INVITES_REVOKED_PER_CONSULT: usize = 1_000;
/// The shortest time an unverifiable id is kept: the longest invite this
/// server mints.
pub const FOREIGN_MIN_KEEP_SECS: u64 = crate::token::MAX_INVITE_TTL.as_secs();

/// Revocations per clinician `sub` (across connections, reconnects and the
/// HTTP API): a burst, then one per second on average. Generous for a
/// person; a script that revokes made-up ids by the thousand is stopped.
pub const REVOCATIONS_PER_MINUTE: u32 = 60;
pub const REVOCATION_BURST: u32 = 30;
/// Clinicians tracked by the limiter at once; beyond it full buckets are
/// forgotten (a clinician who waited has nothing to remember).
const MAX_TRACKED_CLINICIANS: usize = 10_000;

/// What a revocation request's id turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JtiKind {
    /// One of this consult's invites, valid until `expires` (seconds since
    /// the epoch, before the verifier's leeway).
    Invite { expires: u64 },
    /// Has the invite shape but does not verify for this consult.
    NotThisConsult,
    /// Not an invite id of this server: an id the EHR chose.
    Foreign,
}

/// Mints and checks invite ids (see the module docs).
pub struct InviteIds {
    key: HmacSha256,
}

const ID_PREFIX: &str = "i1";

impl InviteIds {
    /// Keyed from the invite secret, with its own label so the key differs
    /// from the token-signing use of the same secret.
    pub fn new(secret: &[u8]) -> InviteIds {
        let derived = mac(secret)
            .chain_update(b"spreekkamer invite ids v1")
            .finalize();
        InviteIds {
            key: mac(&derived.into_bytes()),
        }
    }

    fn tag(&self, consult: &str, nonce: &str, expires: u64) -> HmacSha256 {
        let mut m = self.key.clone();
        for part in [consult.as_bytes(), nonce.as_bytes()] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        m.update(&expires.to_be_bytes());
        m
    }

    /// A fresh id for an invite of `consult` that expires at `expires`.
    pub fn mint(&self, consult: &str, expires: u64) -> String {
        let nonce = crate::token::random_hex_id();
        let tag = self.tag(consult, &nonce, expires).finalize().into_bytes();
        format!("{ID_PREFIX}-{nonce}-{expires}-{}", hex(&tag[..16]))
    }

    /// What `jti` is for `consult`. Constant-time in the tag.
    pub fn classify(&self, consult: &str, jti: &str) -> JtiKind {
        let mut parts = jti.split('-');
        let (Some(ID_PREFIX), Some(nonce), Some(expires), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return JtiKind::Foreign;
        };
        let shaped = nonce.len() == 16
            && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            && !expires.is_empty()
            && expires.len() <= 20
            && expires.bytes().all(|b| b.is_ascii_digit())
            && tag.len() == 32;
        let (Some(tag), Ok(expires)) = (unhex(tag), expires.parse::<u64>()) else {
            return JtiKind::Foreign;
        };
        if !shaped {
            return JtiKind::Foreign;
        }
        match self
            .tag(consult, nonce, expires)
            .verify_truncated_left(&tag)
        {
            Ok(()) => JtiKind::Invite { expires },
            Err(_) => JtiKind::NotThisConsult,
        }
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why a revocation was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An invite id that does not verify for this consult.
    NotThisConsult,
    /// The consult's quota is used up.
    ConsultFull,
    /// The server-wide bound on unverifiable ids is reached.
    ServerFull,
}

/// What a stored revocation amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Kept until `until` (seconds since the epoch, leeway included).
    Kept { until: u64 },
    /// The invite had expired already: nothing to keep.
    AlreadyExpired,
}

struct Entry {
    until: u64,
    foreign: bool,
}

#[derive(Default)]
struct ConsultRevocations {
    ids: HashMap<String, Entry>,
    foreign: usize,
}

/// Every revocation this server holds, by consult.
#[derive(Default)]
pub struct Revocations {
    consults: HashMap<String, ConsultRevocations>,
    foreign_total: usize,
    total: usize,
}

impl Revocations {
    /// Revoke `jti` for `consult` at `now` (seconds since the epoch).
    /// `horizon` is how long an unverifiable id is kept: the latest expiry
    /// of any token known for the consult (raised to the minimum here).
    pub fn revoke(
        &mut self,
        consult: &str,
        jti: &str,
        kind: JtiKind,
        horizon: u64,
        now: u64,
    ) -> Result<Revoked, Refusal> {
        let leeway = crate::token::LEEWAY_SECS;
        let (until, foreign) = match kind {
            JtiKind::NotThisConsult => return Err(Refusal::NotThisConsult),
            JtiKind::Invite { expires } => {
                let until = expires.saturating_add(leeway);
                if until < now {
                    return Ok(Revoked::AlreadyExpired);
                }
                (until, false)
            }
            JtiKind::Foreign => (
                horizon
                    .max(now.saturating_add(FOREIGN_MIN_KEEP_SECS))
                    .saturating_add(leeway),
                true,
            ),
        };
        let foreign_total = self.foreign_total;
        let entry = self.consults.get(consult);
        let known = entry.is_some_and(|c| c.ids.contains_key(jti));
        if !known {
            let (count, cap) = if foreign {
                (entry.map_or(0, |c| c.foreign), MAX_FOREIGN_PER_CONSULT)
            } else {
                (
                    entry.map_or(0, |c| c.ids.len() - c.foreign),
                    MAX_INVITES_REVOKED_PER_CONSULT,
                )
            };
            if count >= cap {
                return Err(Refusal::ConsultFull);
            }
            if foreign && foreign_total >= MAX_FOREIGN_TOTAL {
                return Err(Refusal::ServerFull);
            }
        }
        let c = self.consults.entry(consult.to_string()).or_default();
        match c.ids.get_mut(jti) {
            Some(e) => e.until = e.until.max(until),
            None => {
                c.ids.insert(jti.to_string(), Entry { until, foreign });
                self.total += 1;
                if foreign {
                    c.foreign += 1;
                    self.foreign_total += 1;
                }
            }
        }
        Ok(Revoked::Kept { until })
    }

    /// Whether a token with `jti` for `consult`, expiring at `exp`, is
    /// revoked. A revoked token that turns up keeps its entry at least until
    /// its own expiry (an unverifiable id's lifetime was a guess until now).
    pub fn is_revoked(&mut self, consult: &str, jti: &str, exp: u64) -> bool {
        match self
            .consults
            .get_mut(consult)
            .and_then(|c| c.ids.get_mut(jti))
        {
            Some(e) => {
                e.until = e.until.max(exp.saturating_add(crate::token::LEEWAY_SECS));
                true
            }
            None => false,
        }
    }

    /// Whether `jti` is revoked for `consult`, only looking: the link
    /// check asks this, and must leave every entry as it was.
    pub fn revoked(&self, consult: &str, jti: &str) -> bool {
        self.consults
            .get(consult)
            .is_some_and(|c| c.ids.contains_key(jti))
    }

    /// Forget entries whose token can no longer join anyway.
    pub fn sweep(&mut self, now: u64) {
        let (mut removed, mut removed_foreign) = (0, 0);
        self.consults.retain(|_, c| {
            c.ids.retain(|_, e| {
                let keep = e.until >= now;
                if !keep {
                    removed += 1;
                    removed_foreign += usize::from(e.foreign);
                    c.foreign -= usize::from(e.foreign);
                }
                keep
            });
            !c.ids.is_empty()
        });
        self.total -= removed;
        self.foreign_total -= removed_foreign;
    }

    /// Revocations held, in all.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// One token bucket per clinician `sub`, shared by every connection and the
/// HTTP API, so reconnecting does not refill it.
pub struct ClinicianLimiter {
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl Default for ClinicianLimiter {
    fn default() -> Self {
        ClinicianLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl ClinicianLimiter {
    /// Whether clinician `sub` may revoke once more at `now`.
    pub fn allow(&self, sub: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = buckets.get_mut(sub) {
            return b.try_take(1, now);
        }
        if buckets.len() >= MAX_TRACKED_CLINICIANS {
            // A bucket that could give a whole burst is full: forgetting it
            // changes nothing.
            let burst = u64::from(REVOCATION_BURST);
            buckets.retain(|_, b| !b.clone().try_take(burst, now));
            if buckets.len() >= MAX_TRACKED_CLINICIANS {
                return false;
            }
        }
        let mut bucket = TokenBucket::per_minute(REVOCATIONS_PER_MINUTE, REVOCATION_BURST, now);
        let allowed = bucket.try_take(1, now);
        buckets.insert(sub.to_string(), bucket);
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 24 * 3600;

    fn ids() -> InviteIds {
        InviteIds::new(b"a test secret of at least thirty-two bytes")
    }

    #[test]
    fn an_invite_id_verifies_only_for_its_consult_and_secret() {
        let ids = ids();
        let jti = ids.mint("c1", NOW + 3600);
        assert!(crate::token::valid_jti(&jti), "{jti}");
        assert_eq!(
            ids.classify("c1", &jti),
            JtiKind::Invite {
                expires: NOW + 3600
            }
        );
        assert_eq!(ids.classify("c2", &jti), JtiKind::NotThisConsult);
        let other = InviteIds::new(b"another secret of at least thirty-two bytes");
        assert_eq!(other.classify("c1", &jti), JtiKind::NotThisConsult);
        // A changed expiry does not verify.
        let forged = jti.replace(
            &format!("-{}-", NOW + 3600),
            &format!("-{}-", NOW + 99 * DAY),
        );
        assert_eq!(ids.classify("c1", &forged), JtiKind::NotThisConsult);
        for foreign in ["ehr-launch-42", "", "i1-x", "i1-zz-1-00", "i2-0-0-0-0"] {
            assert_eq!(ids.classify("c1", foreign), JtiKind::Foreign, "{foreign}");
        }
    }

    #[test]
    fn a_revoked_invite_is_kept_until_it_expires_and_an_expired_one_is_not_stored() {
        let mut r = Revocations::default();
        let kind = JtiKind::Invite {
            expires: NOW + 3600,
        };
        assert_eq!(
            r.revoke("c1", "j", kind, 0, NOW),
            Ok(Revoked::Kept {
                until: NOW + 3600 + crate::token::LEEWAY_SECS
            })
        );
        assert!(r.is_revoked("c1", "j", NOW + 3600));
        assert!(
            !r.is_revoked("c2", "j", NOW + 3600),
            "scoped to the consult"
        );
        r.sweep(NOW + 3600);
        assert!(r.is_revoked("c1", "j", NOW + 3600));
        r.sweep(NOW + 3600 + crate::token::LEEWAY_SECS + 1);
        assert!(r.is_empty());

        let expired = JtiKind::Invite { expires: NOW - 60 };
        assert_eq!(
            r.revoke("c1", "old", expired, 0, NOW),
            Ok(Revoked::AlreadyExpired)
        );
        assert!(r.is_empty());
        assert_eq!(
            r.revoke("c1", "x", JtiKind::NotThisConsult, 0, NOW),
            Err(Refusal::NotThisConsult)
        );
        assert!(r.is_empty());
    }

    #[test]
    fn unverifiable_ids_are_capped_per_consult_and_others_still_revoke() {
        let mut r = Revocations::default();
        for i in 0..MAX_FOREIGN_PER_CONSULT {
            assert!(
                r.revoke("flood", &format!("made-up-{i}"), JtiKind::Foreign, 0, NOW)
                    .is_ok()
            );
        }
        assert_eq!(
            r.revoke("flood", "one-more", JtiKind::Foreign, 0, NOW),
            Err(Refusal::ConsultFull)
        );
        // Revoking one already held again is fine (idempotent).
        assert!(
            r.revoke("flood", "made-up-0", JtiKind::Foreign, 0, NOW)
                .is_ok()
        );
        // The flooded consult can still revoke its own invites ...
        let invite = JtiKind::Invite { expires: NOW + 60 };
        assert!(r.revoke("flood", "i", invite, 0, NOW).is_ok());
        // ... and another consult both kinds.
        assert!(r.revoke("other", "ehr-1", JtiKind::Foreign, 0, NOW).is_ok());
        assert!(r.revoke("other", "i", invite, 0, NOW).is_ok());
        assert_eq!(r.len(), MAX_FOREIGN_PER_CONSULT + 3);
    }

    #[test]
    fn an_unverifiable_id_is_kept_for_the_consults_horizon_and_the_tokens_own_expiry() {
        let mut r = Revocations::default();
        let keep = |r: &mut Revocations, jti, horizon| match r
            .revoke("c", jti, JtiKind::Foreign, horizon, NOW)
            .unwrap()
        {
            Revoked::Kept { until } => until - crate::token::LEEWAY_SECS,
            Revoked::AlreadyExpired => panic!("kept"),
        };
        assert_eq!(keep(&mut r, "a", 0), NOW + DAY, "at least a day");
        assert_eq!(keep(&mut r, "b", NOW + 3 * DAY), NOW + 3 * DAY);
        // The revoked token shows up with a later exp than guessed.
        assert!(r.is_revoked("c", "a", NOW + 10 * DAY));
        r.sweep(NOW + 5 * DAY);
        assert!(r.is_revoked("c", "a", 0), "kept for the token's own exp");
        assert!(!r.is_revoked("c", "b", 0));
    }

    #[test]
    fn looking_at_a_revocation_leaves_its_keep_time_alone() {
        let mut r = Revocations::default();
        r.revoke("c", "a", JtiKind::Foreign, 0, NOW).unwrap();
        assert!(r.revoked("c", "a"));
        assert!(!r.revoked("c", "b"));
        assert!(!r.revoked("other", "a"), "scoped to the consult");
        // Only looking does not extend the entry to a later token's exp:
        // after the guessed keep time it is gone.
        r.sweep(NOW + DAY + crate::token::LEEWAY_SECS + 1);
        assert!(!r.revoked("c", "a"));
        assert!(r.is_empty());
    }

    #[test]
    fn the_server_wide_bound_on_unverifiable_ids_holds() {
        let mut r = Revocations {
            foreign_total: MAX_FOREIGN_TOTAL,
            ..Revocations::default()
        };
        assert_eq!(
            r.revoke("c", "x", JtiKind::Foreign, 0, NOW),
            Err(Refusal::ServerFull)
        );
        let invite = JtiKind::Invite { expires: NOW + 60 };
        assert!(r.revoke("c", "i", invite, 0, NOW).is_ok(), "invites still");
    }

    #[test]
    fn the_limiter_is_per_clinician_and_refills() {
        let l = ClinicianLimiter::default();
        let t0 = Instant::now();
        for i in 0..REVOCATION_BURST {
            assert!(l.allow("dr-a", t0), "{i}");
        }
        assert!(!l.allow("dr-a", t0));
        assert!(l.allow("dr-b", t0), "another clinician has their own");
        assert!(l.allow("dr-a", t0 + Duration::from_secs(1)));
        assert!(!l.allow("dr-a", t0 + Duration::from_secs(1)));
    }
}
