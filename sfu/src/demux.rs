//! Which peer does a datagram belong to? Known peers are found by their
//! remote address; a new address must first prove itself with a STUN binding
//! request whose USERNAME starts with one of our ICE ufrags.
//!
//! A STUN binding request is checked here too, before any peer connection
//! sees it: its MESSAGE-INTEGRITY must verify with the peer's password, or
//! the sender's address is never learned (see `addresses.rs`) and rtc
//! never sees the request.
//!
//! These parsers read only what demultiplexing needs and never allocate:
//! they run for every STUN packet.

/// STUN magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
/// HMAC-SHA1 (RFC 5389 §15.4).
const INTEGRITY_LEN: usize = 20;
/// Binding request: method 0x001, class request.
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
/// The USERNAME attribute is at most 513 bytes (RFC 5389 §15.3).
const MAX_USERNAME: usize = 513;

/// Is this a STUN message (RFC 7983 demultiplexing: first byte 0..=3, plus
/// the magic cookie)?
pub(crate) fn is_stun(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[0] < 4 && packet[4..8] == MAGIC_COOKIE
}

/// Is this a STUN binding request (what a browser's connectivity checks
/// are; its answers to our own checks are success responses)?
pub(crate) fn is_binding_request(packet: &[u8]) -> bool {
    is_stun(packet) && packet[0..2] == BINDING_REQUEST
}

/// Our ufrag from a STUN binding request: the USERNAME attribute is
/// `<our ufrag>:<their ufrag>` (RFC 8445 §7.2.2). `None` for anything that
/// is not a well-formed STUN message with a USERNAME.
pub(crate) fn local_ufrag(packet: &[u8]) -> Option<&str> {
    if !is_stun(packet) {
        return None;
    }
    let declared = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    let body = packet.get(HEADER_LEN..HEADER_LEN + declared)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if kind == ATTR_USERNAME {
            if len > MAX_USERNAME {
                return None;
            }
            let username = std::str::from_utf8(value).ok()?;
            let (ours, _theirs) = username.split_once(':')?;
            return (!ours.is_empty()).then_some(ours);
        }
        // Attributes are padded to a multiple of four bytes.
        let padded = (4 + len + 3) & !3;
        rest = rest.get(padded..)?;
    }
    None
}

/// Could this datagram be WebRTC at all? RFC 7983 §7: STUN (first byte
/// 0..=3), DTLS (20..=63) or RTP/RTCP (128..=191). Anything else (and an
/// empty datagram) is dropped before rtc, which would log each one.
pub(crate) fn is_webrtc(packet: &[u8]) -> bool {
    matches!(packet.first(), Some(0..=3 | 20..=63 | 128..=191))
}

/// Is this a STUN binding request whose MESSAGE-INTEGRITY verifies with
/// `mac` (keyed with our ICE password, RFC 8445 §7.2.2)? Zero-copy: the
/// HMAC runs over the header (its length rewritten to end at the
/// integrity attribute, RFC 5389 §15.4) and the attributes before it.
pub(crate) fn integrity_ok(packet: &[u8], mac: &mut dyn rtc::crypto::Mac) -> bool {
    if !is_binding_request(packet) {
        return false;
    }
    let declared = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    let Some(body) = packet.get(HEADER_LEN..HEADER_LEN + declared) else {
        return false;
    };
    let mut offset = 0;
    while body.len() >= offset + 4 {
        let kind = u16::from_be_bytes([body[offset], body[offset + 1]]);
        let len = u16::from_be_bytes([body[offset + 2], body[offset + 3]]) as usize;
        if kind == ATTR_MESSAGE_INTEGRITY {
            if len != INTEGRITY_LEN {
                return false;
            }
            let Some(tag) = body.get(offset + 4..offset + 4 + INTEGRITY_LEN) else {
                return false;
            };
            let Ok(covered) = u16::try_from(offset + 4 + INTEGRITY_LEN) else {
                return false;
            };
            let length = covered.to_be_bytes();
            let input: [&[u8]; 4] = [
                &packet[0..2],
                &length,
                &packet[4..HEADER_LEN],
                &body[..offset],
            ];
            return mac.verify(&input, tag).is_ok();
        }
        offset += (4 + len + 3) & !3;
    }
    false
}

/// The browser's binding request `request` (already verified with our
/// password), as the nominating check it will send later: the same
/// USERNAME, PRIORITY and ICE-CONTROLLING, plus USE-CANDIDATE, a fresh
/// transaction id, MESSAGE-INTEGRITY with our password `pwd` and
/// FINGERPRINT. Returns it with its transaction id, or `None` when the
/// request already nominates, is not from a controlling agent, or lacks
/// what a check must carry.
///
/// Why (loadtest/first-picture.sh, server log): Chromium starts DTLS the
/// moment its first check is answered and answers our triggered check at
/// once, but sends its nominating check ~50-60 ms later; rtc's ICE-lite
/// agent selects the pair only on that check and drops DTLS until then.
/// DTLS from the address of a pair both sides have checked shows the
/// browser chose it, so the peer hands rtc this copy then
/// (`Peer::nominate_early`).
pub(crate) fn nominating_copy(request: &[u8], pwd: &str) -> Option<(Vec<u8>, [u8; 12])> {
    use rtc::stun::attributes::{
        ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USE_CANDIDATE, ATTR_USERNAME, RawAttribute,
    };
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};

    if !is_binding_request(request) {
        return None;
    }
    let declared = u16::from_be_bytes([request[2], request[3]]) as usize;
    let mut rest = request.get(HEADER_LEN..HEADER_LEN + declared)?;
    let (mut username, mut priority, mut controlling) = (None, None, None);
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        match kind {
            k if k == ATTR_USE_CANDIDATE.0 => return None,
            k if k == ATTR_USERNAME.0 && len <= MAX_USERNAME => username = Some(value),
            k if k == ATTR_PRIORITY.0 && len == 4 => priority = Some(value),
            k if k == ATTR_ICE_CONTROLLING.0 && len == 8 => controlling = Some(value),
            k if k == ATTR_MESSAGE_INTEGRITY => break,
            _ => {}
        }
        rest = rest.get((4 + len + 3) & !3..)?;
    }
    let raw = |typ, value: &[u8]| -> Box<dyn Setter> {
        Box::new(RawAttribute {
            typ,
            length: value.len() as u16,
            value: value.to_vec(),
        })
    };
    let provider = rtc::crypto::default_provider().ok()?;
    let tid = TransactionId::new();
    let mut m = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(tid),
        raw(ATTR_USERNAME, username?),
        raw(ATTR_PRIORITY, priority?),
        raw(ATTR_ICE_CONTROLLING, controlling?),
        raw(ATTR_USE_CANDIDATE, &[]),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.into(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    m.build(&setters).ok()?;
    Some((m.raw, tid.0))
}

/// The transaction id of a STUN message.
pub(crate) fn transaction_id(packet: &[u8]) -> Option<[u8; 12]> {
    if !is_stun(packet) {
        return None;
    }
    packet.get(8..HEADER_LEN)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut packet = vec![0x00, 0x01];
        packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
        packet.extend_from_slice(&MAGIC_COOKIE);
        packet.extend_from_slice(&[7; 12]);
        packet.extend_from_slice(&body);
        packet
    }

    #[test]
    fn binding_request_names_our_ufrag() {
        let p = stun_with(&[
            (0x0024, &[0, 0, 0, 1]),
            (ATTR_USERNAME, b"srvUfrag:browserUf"),
        ]);
        assert_eq!(local_ufrag(&p), Some("srvUfrag"));
    }

    #[test]
    fn username_after_an_odd_length_attribute_is_found() {
        let p = stun_with(&[(0x8022, b"abc"), (ATTR_USERNAME, b"abcd:ef")]);
        assert_eq!(local_ufrag(&p), Some("abcd"));
    }

    #[test]
    fn stun_without_username_is_not_routed() {
        let p = stun_with(&[(0x0024, &[0, 0, 0, 1])]);
        assert!(is_stun(&p));
        assert_eq!(local_ufrag(&p), None);
    }

    #[test]
    fn username_without_colon_is_refused() {
        let p = stun_with(&[(ATTR_USERNAME, b"nocolon")]);
        assert_eq!(local_ufrag(&p), None);
    }

    #[test]
    fn truncated_or_lying_lengths_never_panic() {
        let mut p = stun_with(&[(ATTR_USERNAME, b"abcd:ef")]);
        // Attribute claims more bytes than the message holds.
        p[HEADER_LEN + 3] = 200;
        assert_eq!(local_ufrag(&p), None);
        // Header claims a longer body than the datagram.
        let mut q = stun_with(&[(ATTR_USERNAME, b"abcd:ef")]);
        q[3] = 250;
        assert_eq!(local_ufrag(&q), None);
        for cut in 0..p.len() {
            let _ = local_ufrag(&p[..cut]);
        }
    }

    #[test]
    fn rtp_and_dtls_are_not_stun() {
        let mut rtp = vec![0x80, 96, 0, 1];
        rtp.extend_from_slice(&[0; 20]);
        assert!(!is_stun(&rtp));
        let mut dtls = vec![22, 0xfe, 0xfd];
        dtls.extend_from_slice(&[0; 20]);
        assert!(!is_stun(&dtls));
    }

    /// A binding request as a browser sends it, built with rtc's own STUN
    /// code: USERNAME, ICE-CONTROLLING, PRIORITY, MESSAGE-INTEGRITY and
    /// FINGERPRINT.
    fn signed_request(username: &str, pwd: &str) -> Vec<u8> {
        use rtc::stun::attributes::ATTR_PRIORITY;
        use rtc::stun::fingerprint::FINGERPRINT;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
        use rtc::stun::textattrs::TextAttribute;
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(
                rtc::stun::attributes::ATTR_USERNAME,
                username.into(),
            )),
            Box::new(rtc::stun::attributes::RawAttribute {
                typ: ATTR_PRIORITY,
                length: 4,
                value: vec![0, 0, 1, 0],
            }),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.into(),
                provider.crypto(),
            )),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).expect("build");
        m.raw
    }

    fn mac(pwd: &str) -> Box<dyn rtc::crypto::Mac> {
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        provider
            .crypto()
            .new_hmac(rtc::crypto::HmacAlgorithm::Sha1, pwd.as_bytes())
            .expect("hmac")
    }

    /// A browser's check: USERNAME, PRIORITY, ICE-CONTROLLING, perhaps
    /// USE-CANDIDATE, signed with `pwd`.
    fn browser_check(nominating: bool, pwd: &str) -> Vec<u8> {
        use rtc::stun::attributes::{
            ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USE_CANDIDATE, RawAttribute,
        };
        use rtc::stun::fingerprint::FINGERPRINT;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
        use rtc::stun::textattrs::TextAttribute;
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        let raw = |typ, value: &[u8]| -> Box<dyn Setter> {
            Box::new(RawAttribute {
                typ,
                length: value.len() as u16,
                value: value.to_vec(),
            })
        };
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(
                rtc::stun::attributes::ATTR_USERNAME,
                "srv:brw".into(),
            )),
            raw(ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff]),
            raw(ATTR_ICE_CONTROLLING, &[1, 2, 3, 4, 5, 6, 7, 8]),
        ];
        if nominating {
            setters.push(raw(ATTR_USE_CANDIDATE, &[]));
        }
        setters.push(Box::new(
            MessageIntegrity::new_short_term_integrity_with_provider(pwd.into(), provider.crypto()),
        ));
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters).expect("build");
        m.raw
    }

    #[test]
    fn the_nominating_copy_is_the_browsers_check_with_use_candidate_signed_by_us() {
        use rtc::stun::attributes::{ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USE_CANDIDATE};
        use rtc::stun::message::Message;
        let pwd = "a-password-of-24-chars!!";
        let check = browser_check(false, pwd);
        let (copy, tid) = nominating_copy(&check, pwd).expect("a nominating copy");
        assert_eq!(transaction_id(&copy), Some(tid));
        assert_ne!(transaction_id(&check), Some(tid), "a fresh transaction");
        assert!(
            integrity_ok(&copy, mac(pwd).as_mut()),
            "signed with our password"
        );
        assert!(!integrity_ok(
            &copy,
            mac("another-password-entirely").as_mut()
        ));
        let mut parsed = Message::new();
        parsed.raw = copy.clone();
        parsed.decode().expect("well-formed STUN");
        assert!(parsed.contains(ATTR_USE_CANDIDATE));
        assert_eq!(local_ufrag(&copy), Some("srv"));
        let mut orig = Message::new();
        orig.raw = check.clone();
        orig.decode().expect("well-formed STUN");
        for attr in [ATTR_PRIORITY, ATTR_ICE_CONTROLLING] {
            assert_eq!(
                parsed.get(attr).expect("copied"),
                orig.get(attr).expect("present"),
                "{attr}"
            );
        }
        rtc::stun::fingerprint::FINGERPRINT
            .check(&parsed)
            .expect("a valid FINGERPRINT");
        // Nothing to add to a check that nominates already, to one from a
        // controlled agent (no ICE-CONTROLLING), or to a response.
        assert!(nominating_copy(&browser_check(true, pwd), pwd).is_none());
        assert!(nominating_copy(&signed_request("srv:brw", pwd), pwd).is_none());
        let mut response = check.clone();
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert!(nominating_copy(&response, pwd).is_none());
        for cut in 0..check.len() {
            let _ = nominating_copy(&check[..cut], pwd);
        }
    }

    #[test]
    fn request_signed_with_our_password_passes_the_integrity_check() {
        let p = signed_request("srv:brw", "a-password-of-24-chars!!");
        assert_eq!(local_ufrag(&p), Some("srv"));
        assert!(integrity_ok(&p, mac("a-password-of-24-chars!!").as_mut()));
    }

    #[test]
    fn request_signed_with_another_password_fails_the_integrity_check() {
        let p = signed_request("srv:brw", "somebody-elses-password");
        assert!(!integrity_ok(&p, mac("a-password-of-24-chars!!").as_mut()));
        // One flipped bit anywhere before the tag breaks it too.
        let good = signed_request("srv:brw", "a-password-of-24-chars!!");
        for i in [1, 9, 24, 30] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(
                !integrity_ok(&bad, mac("a-password-of-24-chars!!").as_mut()),
                "bit {i}"
            );
        }
    }

    #[test]
    fn unsigned_or_truncated_requests_fail_without_panicking() {
        let p = stun_with(&[(ATTR_USERNAME, b"srv:brw")]);
        assert!(!integrity_ok(&p, mac("pw").as_mut()));
        let good = signed_request("srv:brw", "pw");
        for cut in 0..good.len() {
            assert!(!integrity_ok(&good[..cut], mac("pw").as_mut()));
        }
        // A success response is not a request, however well signed.
        let mut response = good.clone();
        response[0..2].copy_from_slice(&[0x01, 0x01]);
        assert!(!integrity_ok(&response, mac("pw").as_mut()));
    }

    #[test]
    fn only_rfc7983_ranges_are_webrtc() {
        assert!(!is_webrtc(&[]));
        for (byte, ok) in [(0, true), (3, true), (4, false), (19, false), (20, true)] {
            assert_eq!(is_webrtc(&[byte, 0]), ok, "{byte}");
        }
        for (byte, ok) in [
            (63, true),
            (64, false),
            (127, false),
            (128, true),
            (191, true),
            (192, false),
        ] {
            assert_eq!(is_webrtc(&[byte, 0]), ok, "{byte}");
        }
    }
}
