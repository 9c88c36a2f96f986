//! Resume tickets: a participant who was in the call and lost the WebSocket
//! (a network blip, a server restart, an edge that died) comes back into the
//! call without a second admission.
//!
//! While someone is in the call the edge hands them a short-lived ticket
//! (`resume {ticket, expires}`, refreshed every [`REFRESH`]). A `join` that
//! carries a valid ticket next to its token skips the waiting room. The token
//! is still what authorizes the join and is checked exactly as always; the
//! ticket only says "this `sub` was already admitted to this consult, in this
//! role, a moment ago". A ticket that does not check out is ignored, never an
//! error: the person waits to be admitted, as without one.
//!
//! A ticket is `r1.{payload}.{tag}`: `payload` is unpadded base64url of
//! `{"c": consult, "s": sub, "r": role, "e": expiry}` and `tag` the
//! HMAC-SHA256 of `r1.{payload}` (base64url, 32 bytes). The key is derived
//! with HKDF-SHA256 from the server's HS256 secret, so every edge that
//! shares the secret accepts it, and so does a restarted server; without a
//! configured secret the server's secret is random and tickets only work
//! within one process. The ticket is readable (nothing in it is personal
//! data: the ids are the token's) but it is a bearer credential, like the
//! token: it is never logged and `logging.rs` redacts the fields that hold it.
//!
//! Pure: time is a parameter.

use crate::protocol::Role;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// How long a ticket lives unless `--resume-ttl` says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(120);
/// Bounds of `--resume-ttl`: a ticket must outlive a refresh or two, and a
/// long one only widens the window in which a stolen ticket is of use.
pub const MIN_TTL: Duration = Duration::from_secs(10);
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// How often a participant in the call gets a fresh ticket (more often
/// when the TTL is short: four tickets per lifetime at least).
pub const REFRESH: Duration = Duration::from_secs(30);
/// Longer than any ticket this server makes (consult and sub ids are at most
/// 128 bytes each); anything longer is not looked at.
pub const MAX_TICKET_BYTES: usize = 1024;

const PREFIX: &str = "r1";
const HKDF_INFO: &[u8] = b"spreekkamer resume tickets v1";

/// Who a ticket is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub consult: String,
    pub sub: String,
    pub role: Role,
    /// The join token's `exp`: no ticket outlives the token it came with.
    pub token_exp: u64,
}

/// A fresh ticket and when it expires (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub ticket: String,
    pub expires: u64,
}

/// Why a ticket was not accepted (for tests and counters; the participant
/// is never told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Malformed,
    BadTag,
    Expired,
    /// Valid, but for another consult, person or role.
    Mismatch,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    c: String,
    s: String,
    r: Role,
    e: u64,
}

/// Mints and checks tickets with one key.
pub struct ResumeKeys {
    mac: HmacSha256,
    ttl: Duration,
}

impl ResumeKeys {
    /// Keyed from the server's HS256 secret (the configured one, or the
    /// random one of a server without).
    pub fn new(secret: &[u8], ttl: Duration) -> ResumeKeys {
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(None, secret)
            .expand(HKDF_INFO, &mut key)
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
        ResumeKeys {
            mac: <HmacSha256 as Mac>::new_from_slice(&key)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
            ttl: ttl.clamp(MIN_TTL, MAX_TTL),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often to hand a participant in the call a fresh ticket.
    pub fn refresh(&self) -> Duration {
        (self.ttl / 4).min(REFRESH)
    }

    /// A ticket for `grant`, valid for the TTL but never past the token's
    /// expiry. `None` once the token has expired.
    pub fn issue(&self, grant: &Grant, now: u64) -> Option<Issued> {
        let expires = now.saturating_add(self.ttl.as_secs()).min(grant.token_exp);
        if expires <= now {
            return None;
        }
        Some(self.mint(&grant.consult, &grant.sub, grant.role, expires))
    }

    /// A ticket with exactly this content (tests make expired ones).
    pub fn mint(&self, consult: &str, sub: &str, role: Role, expires: u64) -> Issued {
        let payload = serde_json::to_vec(&Payload {
            c: consult.to_string(),
            s: sub.to_string(),
            r: role,
            e: expires,
        })
        .unwrap_or_default();
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(payload));
        let tag = self.tag(&signed).finalize().into_bytes();
        Issued {
            ticket: format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag)),
            expires,
        }
    }

    /// Whether `ticket` lets the holder of a valid token for (`consult`,
    /// `sub`, `role`) back into the call at `now`. The tag is compared in
    /// constant time, before anything in the payload is believed.
    pub fn check(
        &self,
        ticket: &str,
        consult: &str,
        sub: &str,
        role: Role,
        now: u64,
    ) -> Result<(), Invalid> {
        if ticket.len() > MAX_TICKET_BYTES {
            return Err(Invalid::Malformed);
        }
        let (signed, tag) = ticket.rsplit_once('.').ok_or(Invalid::Malformed)?;
        let (prefix, payload) = signed.split_once('.').ok_or(Invalid::Malformed)?;
        if prefix != PREFIX {
            return Err(Invalid::Malformed);
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| Invalid::Malformed)?;
        self.tag(signed)
            .verify_slice(&tag)
            .map_err(|_| Invalid::BadTag)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Invalid::Malformed)?;
        let p: Payload = serde_json::from_slice(&payload).map_err(|_| Invalid::Malformed)?;
        if p.e <= now {
            return Err(Invalid::Expired);
        }
        if p.c != consult || p.s != sub || p.r != role {
            return Err(Invalid::Mismatch);
        }
        Ok(())
    }

    fn tag(&self, signed: &str) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(signed.as_bytes());
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"resume-test-secret-0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn keys() -> ResumeKeys {
        ResumeKeys::new(SECRET, DEFAULT_TTL)
    }

    fn grant() -> Grant {
        Grant {
            consult: "c1".into(),
            sub: "sub-p".into(),
            role: Role::Patient,
            token_exp: NOW + 3600,
        }
    }

    #[test]
    fn a_fresh_ticket_lets_the_same_person_back_until_it_expires() {
        let t = keys().issue(&grant(), NOW).expect("issued");
        assert_eq!(t.expires, NOW + 120);
        assert!(t.ticket.starts_with("r1."));
        assert_eq!(
            keys().check(&t.ticket, "c1", "sub-p", Role::Patient, NOW + 119),
            Ok(())
        );
        assert_eq!(
            keys().check(&t.ticket, "c1", "sub-p", Role::Patient, NOW + 120),
            Err(Invalid::Expired)
        );
    }

    #[test]
    fn a_ticket_never_outlives_its_token() {
        let g = Grant {
            token_exp: NOW + 50,
            ..grant()
        };
        assert_eq!(keys().issue(&g, NOW).unwrap().expires, NOW + 50);
        assert_eq!(keys().issue(&g, NOW + 50), None);
    }

    #[test]
    fn a_ticket_is_for_one_consult_person_and_role() {
        let t = keys().issue(&grant(), NOW).unwrap().ticket;
        let k = keys();
        for (c, s, r) in [
            ("c2", "sub-p", Role::Patient),
            ("c1", "sub-q", Role::Patient),
            ("c1", "sub-p", Role::Guest),
            ("c1", "sub-p", Role::Clinician),
        ] {
            assert_eq!(k.check(&t, c, s, r, NOW), Err(Invalid::Mismatch), "{c} {s}");
        }
    }

    #[test]
    fn another_key_or_a_changed_payload_fails_the_tag() {
        let t = keys().issue(&grant(), NOW).unwrap().ticket;
        let other = ResumeKeys::new(b"another-secret-0123456789abcdefghij", DEFAULT_TTL);
        assert_eq!(
            other.check(&t, "c1", "sub-p", Role::Patient, NOW),
            Err(Invalid::BadTag)
        );
        // Same tag, payload claiming a clinician.
        let (_, tag) = t.rsplit_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(br#"{"c":"c1","s":"sub-p","r":"clinician","e":1900000000}"#);
        let forged = format!("r1.{forged_payload}.{tag}");
        assert_eq!(
            keys().check(&forged, "c1", "sub-p", Role::Clinician, NOW),
            Err(Invalid::BadTag)
        );
    }

    #[test]
    fn junk_is_malformed_not_a_panic() {
        let k = keys();
        for junk in [
            "",
            "r1",
            "r1..",
            "r2.e30.AAAA",
            "r1.!!!.AAAA",
            "r1.e30.***",
            &"x".repeat(5000),
        ] {
            assert!(
                k.check(junk, "c1", "sub-p", Role::Patient, NOW).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn ttl_is_bounded() {
        assert_eq!(
            ResumeKeys::new(SECRET, Duration::from_secs(1)).ttl(),
            MIN_TTL
        );
        assert_eq!(
            ResumeKeys::new(SECRET, Duration::from_secs(99_999)).ttl(),
            MAX_TTL
        );
        assert_eq!(keys().refresh(), REFRESH);
        assert_eq!(
            ResumeKeys::new(SECRET, MIN_TTL).refresh(),
            Duration::from_millis(2500)
        );
    }
}
