//! Which peer does a datagram belong to? Known peers are found by their
//! remote address; a new address must first prove itself with a STUN binding
//! request whose USERNAME starts with one of our ICE ufrags.
//!
//! This parser reads only what demultiplexing needs and never allocates: it
//! runs for every STUN packet before any peer connection sees it.

/// STUN magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
/// The USERNAME attribute is at most 513 bytes (RFC 5389 §15.3).
const MAX_USERNAME: usize = 513;

/// Is this a STUN message (RFC 7983 demultiplexing: first byte 0..=3, plus
/// the magic cookie)?
pub(crate) fn is_stun(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[0] < 4 && packet[4..8] == MAGIC_COOKIE
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
}
