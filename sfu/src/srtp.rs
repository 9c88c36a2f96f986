//! SRTP for the media we forward, in both directions, done by us instead
//! of rtc's RTP pipeline (the fast path, docs/DECISIONS.md §10).
//!
//! Keys: the master keys and salts rtc's DTLS handshake exported
//! (`RTCPeerConnection::srtp_session_keys`, a vendored patch; see
//! vendor/README.md): the local ones encrypt what we send a subscriber,
//! the remote ones decrypt what a publisher sends us. Session keys are
//! derived once (RFC 3711 §4.3, key derivation rate 0), then every packet
//! is encrypted or decrypted in place in the buffer it travels in: no
//! allocation, no map, one AEAD (or CTR + HMAC) call. Profiles:
//! AEAD_AES_128_GCM (RFC 7714, what Chromium and Firefox choose) and
//! AES_CM_128_HMAC_SHA1_80 (RFC 3711); the offer advertises only those
//! two when the fast path is on.
//!
//! Safety rule (see `peer.rs`): an SSRC encrypted here is never written
//! through rtc, so no (key, SSRC, index) is used twice. Retransmissions
//! resend the same ciphertext rather than encrypting again. Received
//! packets pass a replay window ([`Rollover::index_of`]) and are marked
//! only after they authenticated.

use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, HmacAlgorithm, Mac, RTCCrypto, StreamCipher,
    StreamCipherAlgorithm,
};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::protection_profile::ProtectionProfile;

/// RFC 3711 §4.3.1 key derivation labels (encryption key, authentication
/// key, salt) of SRTP; SRTCP's (`rtcp_in.rs`) are the next three.
pub(crate) const SRTP_LABELS: [u8; 3] = [0x00, 0x01, 0x02];
pub(crate) const SRTCP_LABELS: [u8; 3] = [0x03, 0x04, 0x05];
pub(crate) const GCM_TAG: usize = 16;
pub(crate) const HMAC_TAG_80: usize = 10;

/// The session keys of one protocol (SRTP or SRTCP) and direction.
pub(crate) enum Cipher {
    Gcm {
        aead: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    CmSha1 {
        ctr: Box<dyn StreamCipher>,
        mac: Box<dyn Mac>,
        salt: [u8; 14],
    },
}

/// The DTLS-SRTP profiles this file implements, to offer in the DTLS
/// handshake when our own path will do the SRTP (AES-GCM first: every
/// current browser takes it).
pub const OWN_PROFILES: [SrtpProtectionProfile; 2] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
];

/// One direction's SRTP keys: encryption towards a subscriber
/// ([`protect`](Srtp::protect)) or decryption of a publisher's media
/// ([`unprotect`](Srtp::unprotect)).
pub(crate) struct Srtp {
    cipher: Cipher,
}

/// Why a context could not be built.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SrtpError {
    /// A profile the fast path does not implement (rtc keeps the media).
    Profile,
    /// Wrong key or salt length, or the crypto provider refused.
    Key,
    /// A packet too short for its own header.
    Packet,
    /// The tag does not match (forged, damaged, or a wrong rollover
    /// counter).
    Auth,
    /// An SRTCP sending SSRC used its last index (2^31 - 1): encrypting
    /// more would repeat an index (`rtcp_out.rs`).
    Exhausted,
    /// An SRTCP sending SSRC more than the table of indexes holds
    /// (`rtcp_out.rs`).
    TooManySsrcs,
}

/// RFC 3711 §4.3.3 AES-CM PRF with key derivation rate 0: `out.len()`
/// bytes of keystream for `label`.
fn derive(
    crypto: &dyn RTCCrypto,
    label: u8,
    master_key: &[u8],
    master_salt: &[u8],
    out: &mut [u8],
) -> Result<(), SrtpError> {
    if master_key.len() != 16 || master_salt.len() > 14 {
        return Err(SrtpError::Key);
    }
    let mut x = [0u8; 16];
    x[..master_salt.len()].copy_from_slice(master_salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        block[14] = (i >> 8) as u8;
        block[15] = i as u8;
        crypto
            .block_encrypt(BlockCipherAlgorithm::Aes128, master_key, &mut block)
            .map_err(|_| SrtpError::Key)?;
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    Ok(())
}

/// Length of an RTP header (fixed part, CSRCs, extension), or `None` if
/// the packet is shorter than its header says.
pub(crate) fn header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * (packet[0] & 0x0f) as usize;
    if packet[0] & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
    }
    (len <= packet.len()).then_some(len)
}

/// Constant time: do the 80 bits `sent` equal the first 80 of the
/// HMAC-SHA1 we `computed` (AES_CM_128_HMAC_SHA1_80, SRTP and SRTCP)?
pub(crate) fn hmac_80_matches(computed: &[u8; 20], sent: &[u8]) -> bool {
    sent.len() == HMAC_TAG_80
        && computed[..HMAC_TAG_80]
            .iter()
            .zip(sent)
            .fold(0u8, |d, (a, b)| d | (a ^ b))
            == 0
}

impl Cipher {
    /// Bytes of its authentication tag (SRTP and SRTCP alike).
    pub(crate) fn tag_len(&self) -> usize {
        match self {
            Cipher::Gcm { .. } => GCM_TAG,
            Cipher::CmSha1 { .. } => HMAC_TAG_80,
        }
    }

    /// Session keys derived with `labels` ([`SRTP_LABELS`] or
    /// [`SRTCP_LABELS`]) from the master key and salt.
    pub(crate) fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn RTCCrypto,
        labels: [u8; 3],
    ) -> Result<Cipher, SrtpError> {
        let [label_encryption, label_auth, label_salt] = labels;
        let mut key = [0u8; 16];
        derive(crypto, label_encryption, master_key, master_salt, &mut key)?;
        let cipher = match profile {
            ProtectionProfile::AeadAes128Gcm => {
                if master_salt.len() != 12 {
                    return Err(SrtpError::Key);
                }
                let mut salt = [0u8; 12];
                derive(crypto, label_salt, master_key, master_salt, &mut salt)?;
                let aead = crypto
                    .new_aead(AeadAlgorithm::Aes128Gcm, &key)
                    .map_err(|_| SrtpError::Key)?;
                if aead.tag_len() != GCM_TAG {
                    return Err(SrtpError::Key);
                }
                Cipher::Gcm { aead, salt }
            }
            ProtectionProfile::Aes128CmHmacSha1_80 => {
                if master_salt.len() != 14 {
                    return Err(SrtpError::Key);
                }
                let mut salt = [0u8; 14];
                derive(crypto, label_salt, master_key, master_salt, &mut salt)?;
                let mut auth = [0u8; 20];
                derive(crypto, label_auth, master_key, master_salt, &mut auth)?;
                let ctr = crypto
                    .new_stream_cipher(StreamCipherAlgorithm::Aes128Ctr, &key)
                    .map_err(|_| SrtpError::Key)?;
                let mac = crypto
                    .new_hmac(HmacAlgorithm::Sha1, &auth)
                    .map_err(|_| SrtpError::Key)?;
                auth.fill(0);
                Cipher::CmSha1 { ctr, mac, salt }
            }
            _ => return Err(SrtpError::Profile),
        };
        key.fill(0);
        Ok(cipher)
    }
}

impl Srtp {
    pub(crate) fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn RTCCrypto,
    ) -> Result<Srtp, SrtpError> {
        let cipher = Cipher::new(profile, master_key, master_salt, crypto, SRTP_LABELS)?;
        Ok(Srtp { cipher })
    }

    /// Bytes the authentication tag adds to each packet.
    pub(crate) fn overhead(&self) -> usize {
        self.cipher.tag_len()
    }

    /// Encrypt the RTP packet in `packet[..len]` in place, with rollover
    /// counter `roc`, and write the tag after it: `packet` must have
    /// [`overhead`](Self::overhead) spare bytes at `len`. Returns the
    /// protected length.
    pub(crate) fn protect(
        &mut self,
        packet: &mut [u8],
        len: usize,
        roc: u32,
    ) -> Result<usize, SrtpError> {
        let tag_len = self.overhead();
        if packet.len() < len + tag_len {
            return Err(SrtpError::Packet);
        }
        let (head, seq, ssrc) = fields(&packet[..len])?;
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let (header, rest) = packet.split_at_mut(head);
                let (payload, tail) = rest.split_at_mut(len - head);
                aead.seal_in_place(&iv, header, payload, &mut tail[..GCM_TAG])
                    .map_err(|_| SrtpError::Key)?;
            }
            Cipher::CmSha1 { ctr, mac, salt } => {
                let iv = cm_iv(salt, ssrc, roc, seq);
                ctr.apply_keystream(&iv, &mut packet[head..len])
                    .map_err(|_| SrtpError::Key)?;
                let mut tag = [0u8; 20];
                mac.sign(&[&packet[..len], &roc.to_be_bytes()], &mut tag)
                    .map_err(|_| SrtpError::Key)?;
                packet[len..len + HMAC_TAG_80].copy_from_slice(&tag[..HMAC_TAG_80]);
            }
        }
        Ok(len + tag_len)
    }

    /// Check and decrypt the SRTP packet `packet` in place with rollover
    /// counter `roc`. Returns the plaintext RTP length (the tag cut off);
    /// on any error the buffer's content is undefined and must be dropped.
    pub(crate) fn unprotect(&mut self, packet: &mut [u8], roc: u32) -> Result<usize, SrtpError> {
        let tag_len = self.overhead();
        let len = packet.len().checked_sub(tag_len).ok_or(SrtpError::Packet)?;
        let (head, seq, ssrc) = fields(&packet[..len])?;
        match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let (header, rest) = packet.split_at_mut(head);
                let (payload, tag) = rest.split_at_mut(len - head);
                aead.open_in_place(&iv, header, payload, tag)
                    .map_err(|_| SrtpError::Auth)?;
            }
            Cipher::CmSha1 { ctr, mac, salt } => {
                // Authenticate first (RFC 3711 §3.3 step 5), in constant
                // time over the 80 bits sent.
                let mut tag = [0u8; 20];
                mac.sign(&[&packet[..len], &roc.to_be_bytes()], &mut tag)
                    .map_err(|_| SrtpError::Key)?;
                if !hmac_80_matches(&tag, &packet[len..]) {
                    return Err(SrtpError::Auth);
                }
                let iv = cm_iv(salt, ssrc, roc, seq);
                ctr.apply_keystream(&iv, &mut packet[head..len])
                    .map_err(|_| SrtpError::Key)?;
            }
        }
        Ok(len)
    }
}

/// An RTP packet's header length, sequence number and SSRC bytes (what
/// the IV is built from).
fn fields(rtp: &[u8]) -> Result<(usize, [u8; 2], [u8; 4]), SrtpError> {
    let head = header_len(rtp).ok_or(SrtpError::Packet)?;
    Ok((head, [rtp[2], rtp[3]], [rtp[8], rtp[9], rtp[10], rtp[11]]))
}

/// RFC 7714 §8.1: 00 00 | SSRC | ROC | SEQ, XOR the session salt. For
/// SRTCP (§9.1: 00 00 | SSRC | 00 00 | 0 | 31-bit index) the same with
/// `roc` = index >> 16 and `seq` = its low 16 bits.
pub(crate) fn gcm_iv(salt: &[u8; 12], ssrc: [u8; 4], roc: u32, seq: [u8; 2]) -> [u8; 12] {
    let mut iv = *salt;
    for (i, b) in ssrc.iter().enumerate() {
        iv[2 + i] ^= b;
    }
    for (i, b) in roc.to_be_bytes().iter().enumerate() {
        iv[6 + i] ^= b;
    }
    iv[10] ^= seq[0];
    iv[11] ^= seq[1];
    iv
}

/// RFC 3711 §4.1.1: salt·2^16 XOR SSRC·2^64 XOR index·2^16 (for SRTCP
/// the 31-bit SRTCP index, split the same way as for [`gcm_iv`]).
pub(crate) fn cm_iv(salt: &[u8; 14], ssrc: [u8; 4], roc: u32, seq: [u8; 2]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (i, b) in ssrc.iter().enumerate() {
        iv[4 + i] ^= b;
    }
    for (i, b) in roc.to_be_bytes().iter().enumerate() {
        iv[8 + i] ^= b;
    }
    iv[12] ^= seq[0];
    iv[13] ^= seq[1];
    iv
}

/// The rollover counter of one SSRC we send on (RFC 3711 §3.3.1), and the
/// guard that no packet index is ever encrypted twice: with AES-GCM two
/// packets under one (key, SSRC, index) would reveal the authentication
/// key. The rewriter never repeats a sequence number and rtc's inbound
/// replay check drops a publisher's duplicates, so a refusal here means a
/// bug upstream, not a normal event.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Rollover {
    highest: Option<u64>,
    /// Bit `index % WINDOW`: `index` was used, for the [`WINDOW`] indices
    /// up to `highest` (the bits of older ones are reused as it advances).
    used: Bits,
}

/// How far behind the newest index a packet may still be taken: 512
/// packets, ~2 s of a 2.5 Mbit/s layer. Behind a publisher: the NACK
/// generator asks for a hole for up to 512 packets (`media_in`), and an
/// answer to its last try must not be refused as too old — a 128-packet
/// window did that once padding raised the packet rate. Towards a
/// subscriber: a publisher's retransmission forwarded late.
const WINDOW: u64 = 512;

/// [`WINDOW`] bits kept as a ring: index `i` is bit `i % WINDOW`, so
/// moving the window on clears the bits it passes (usually one) instead
/// of shifting all 512 (which cost ~200 instructions per packet sent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Bits([u64; (WINDOW / 64) as usize]);

impl Bits {
    fn get(&self, index: u64) -> bool {
        let i = index % WINDOW;
        self.0[(i / 64) as usize] & 1 << (i % 64) != 0
    }

    fn set(&mut self, index: u64) {
        let i = index % WINDOW;
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }

    /// Clear the bits of the `n` indices from `from` on (`n` ≤ [`WINDOW`]),
    /// a word at a time.
    fn clear(&mut self, from: u64, n: u64) {
        let mut i = from % WINDOW;
        let mut left = n.min(WINDOW);
        while left > 0 {
            let bit = i % 64;
            let take = left.min(64 - bit);
            let mask = if take == 64 {
                u64::MAX
            } else {
                ((1u64 << take) - 1) << bit
            };
            self.0[(i / 64) as usize] &= !mask;
            left -= take;
            i = (i + take) % WINDOW;
        }
    }
}

impl Rollover {
    /// The 48-bit index for `seq`, taken as the one closest to the
    /// highest sent (a packet forwarded out of order lies behind it), and
    /// marked used. `None` if it was used already, lies [`WINDOW`] or
    /// more behind the highest (unknown), below zero or past 2^48.
    pub(crate) fn claim(&mut self, seq: u16) -> Option<u64> {
        let index = self.index_of(seq)?;
        self.mark(index);
        Some(index)
    }

    /// The 48-bit index `seq` stands for, as [`claim`](Self::claim) takes
    /// it, without marking it: for a received packet, which is marked
    /// (`mark`) only once it has authenticated, so a forged packet cannot
    /// make the genuine one a "replay". `None`: a replay, too old or out
    /// of range.
    pub(crate) fn index_of(&self, seq: u16) -> Option<u64> {
        let Some(high) = self.highest else {
            return Some(seq as u64);
        };
        let delta = seq.wrapping_sub(high as u16) as i16 as i64;
        let index = high as i64 + delta;
        if !(0..1 << 48).contains(&index) {
            return None;
        }
        let index = index as u64;
        self.is_new(index).then_some(index)
    }

    /// Whether `index` is unused: ahead of the highest marked, or less
    /// than [`WINDOW`] behind it and not marked. For SRTCP, whose packets
    /// carry their 31-bit index whole (nothing to guess), this is the
    /// whole replay check; the index is then [`mark`](Self::mark)ed once
    /// the packet has authenticated.
    pub(crate) fn is_new(&self, index: u64) -> bool {
        let Some(high) = self.highest else {
            return true;
        };
        if index > high {
            return true;
        }
        let back = high - index;
        back < WINDOW && !self.used.get(index)
    }

    /// Record `index` (from [`index_of`](Self::index_of)) as used.
    pub(crate) fn mark(&mut self, index: u64) {
        match self.highest {
            Some(high) if index <= high => {
                if high - index < WINDOW {
                    self.used.set(index);
                }
            }
            Some(high) => {
                // The indices passed over are unused; their bits held
                // indices that are now out of the window.
                self.used.clear(high + 1, index - high);
                self.used.set(index);
                self.highest = Some(index);
            }
            None => {
                self.highest = Some(index);
                self.used = Bits::default();
                self.used.set(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::context::Context;

    fn crypto() -> &'static dyn RTCCrypto {
        let provider = Box::leak(Box::new(rtc::crypto::default_provider().expect("provider")));
        provider.crypto()
    }

    fn packet(ssrc: u32, seq: u16, ext: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80 | if ext { 0x10 } else { 0 }, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        if ext {
            // One-byte header extension: transport-cc, id 3, two bytes.
            p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x31, 0x12, 0x34, 0]);
        }
        p.extend_from_slice(payload);
        p
    }

    /// Our SRTP and rtc's on one master key and salt (derived from `k`).
    fn pair(profile: ProtectionProfile, salt_len: usize, k: u8) -> (Srtp, Context) {
        let key: Vec<u8> = (0..16).map(|i| i * k + 1).collect();
        let salt: Vec<u8> = (0..salt_len as u8).map(|i| i * 3 + k).collect();
        let ours = Srtp::new(profile, &key, &salt, crypto()).expect("ours");
        let theirs = Context::new(&key, &salt, profile, None, None, crypto()).expect("rtc's");
        (ours, theirs)
    }

    /// Our encryption, checked by rtc's own SRTP decryption (the same code
    /// a browser's libsrtp agrees with in every call today), over a run of
    /// packets that crosses a sequence number rollover.
    fn rtc_decrypts_ours(profile: ProtectionProfile, salt_len: usize) {
        let (mut ours, mut theirs) = pair(profile, salt_len, 7);
        let mut roll = Rollover::default();
        for (n, seq) in (65_530u16..=65_535).chain(0..6).enumerate() {
            let payload: Vec<u8> = (0..(100 + n)).map(|i| (i * 13 + n) as u8).collect();
            let plain = packet(0x1122_3344, seq, n % 2 == 0, &payload);
            let mut buf = plain.clone();
            buf.resize(plain.len() + ours.overhead(), 0);
            let roc = (roll.claim(seq).expect("index") >> 16) as u32;
            let len = ours.protect(&mut buf, plain.len(), roc).expect("protect");
            assert_eq!(len, buf.len());
            assert_ne!(buf[..plain.len()], plain[..], "the payload is encrypted");
            let back = theirs.decrypt_rtp(&buf).expect("rtc decrypts our packet");
            assert_eq!(&back[..], &plain[..], "packet {n} (seq {seq})");
        }
    }

    #[test]
    fn rtc_decrypts_our_aes_gcm_packets_across_a_rollover() {
        rtc_decrypts_ours(ProtectionProfile::AeadAes128Gcm, 12);
    }

    #[test]
    fn rtc_decrypts_our_aes_cm_hmac_sha1_packets_across_a_rollover() {
        rtc_decrypts_ours(ProtectionProfile::Aes128CmHmacSha1_80, 14);
    }

    /// rtc's encryption (the browser's side), checked by our decryption
    /// across a rollover; every changed byte and a wrong rollover counter
    /// fail authentication, and the buffer is refused, not half-used.
    fn we_decrypt_rtcs(profile: ProtectionProfile, salt_len: usize) {
        let (mut ours, mut theirs) = pair(profile, salt_len, 5);
        let mut roll = Rollover::default();
        for (n, seq) in (65_532u16..=65_535).chain(0..4).enumerate() {
            let payload: Vec<u8> = (0..(60 + n)).map(|i| (i * 7 + n) as u8).collect();
            let plain = packet(0x5566_7788, seq, n % 2 == 1, &payload);
            let sealed = theirs.encrypt_rtp(&plain).expect("rtc encrypts");
            let index = roll.index_of(seq).expect("new index");
            let roc = (index >> 16) as u32;
            for flip in [1, 8, plain.len() - 1, sealed.len() - 1] {
                let mut bad = sealed.to_vec();
                bad[flip] ^= 0x40;
                assert_eq!(
                    ours.unprotect(&mut bad, roc),
                    Err(SrtpError::Auth),
                    "byte {flip}"
                );
            }
            let mut wrong = sealed.to_vec();
            assert_eq!(ours.unprotect(&mut wrong, roc + 1), Err(SrtpError::Auth));
            let mut buf = sealed.to_vec();
            let len = ours
                .unprotect(&mut buf, roc)
                .expect("we decrypt rtc's packet");
            roll.mark(index);
            assert_eq!(&buf[..len], &plain[..], "packet {n} (seq {seq})");
            assert_eq!(roll.index_of(seq), None, "a replay of {seq}");
        }
        let mut short = vec![0x80; 20];
        assert_eq!(ours.unprotect(&mut short, 0), Err(SrtpError::Packet));
    }

    #[test]
    fn we_decrypt_rtcs_aes_gcm_packets_and_refuse_changed_ones() {
        we_decrypt_rtcs(ProtectionProfile::AeadAes128Gcm, 12);
    }

    #[test]
    fn we_decrypt_rtcs_aes_cm_hmac_sha1_packets_and_refuse_changed_ones() {
        we_decrypt_rtcs(ProtectionProfile::Aes128CmHmacSha1_80, 14);
    }

    #[test]
    fn a_received_index_is_taken_only_once_it_is_marked() {
        let mut r = Rollover::default();
        assert_eq!(r.index_of(10), Some(10));
        // Not marked (a forgery failed): the genuine packet still passes.
        assert_eq!(r.index_of(10), Some(10));
        r.mark(10);
        assert_eq!(r.index_of(10), None);
        r.mark(12);
        assert_eq!(r.index_of(11), Some(11), "a late packet within the window");
        r.mark(600);
        assert_eq!(r.index_of(89), Some(89), "511 behind: still within");
        r.mark(523);
        assert_eq!(r.index_of(11), None, "512 behind: too far");
    }

    #[test]
    fn a_changed_byte_or_a_wrong_rollover_counter_fails_authentication() {
        let key = [9u8; 16];
        let salt = [4u8; 12];
        let profile = ProtectionProfile::AeadAes128Gcm;
        let mut ours = Srtp::new(profile, &key, &salt, crypto()).expect("ours");
        let plain = packet(7, 100, true, &[1, 2, 3, 4, 5]);
        let mut buf = plain.clone();
        buf.resize(plain.len() + 16, 0);
        ours.protect(&mut buf, plain.len(), 0).expect("protect");
        for flip in [1, 9, 14, buf.len() - 1] {
            let mut theirs = Context::new(&key, &salt, profile, None, None, crypto()).unwrap();
            let mut bad = buf.clone();
            bad[flip] ^= 0x40;
            assert!(theirs.decrypt_rtp(&bad).is_err(), "byte {flip} changed");
        }
        let mut wrong_roc = plain.clone();
        wrong_roc.resize(plain.len() + 16, 0);
        ours.protect(&mut wrong_roc, plain.len(), 1)
            .expect("protect");
        let mut theirs = Context::new(&key, &salt, profile, None, None, crypto()).unwrap();
        assert!(
            theirs.decrypt_rtp(&wrong_roc).is_err(),
            "ROC 1 where 0 is due"
        );
    }

    #[test]
    fn short_truncated_and_lying_packets_are_refused_without_panicking() {
        let mut ours = Srtp::new(
            ProtectionProfile::AeadAes128Gcm,
            &[1; 16],
            &[2; 12],
            crypto(),
        )
        .unwrap();
        let full = packet(7, 1, true, &[0; 40]);
        for cut in 0..20 {
            let mut buf = full[..cut].to_vec();
            buf.resize(cut + 16, 0);
            assert_eq!(
                ours.protect(&mut buf, cut, 0),
                Err(SrtpError::Packet),
                "{cut} bytes"
            );
        }
        // No room for the tag.
        let mut buf = full.clone();
        assert_eq!(
            ours.protect(&mut buf, full.len(), 0),
            Err(SrtpError::Packet)
        );
        // An extension length past the end.
        let mut lying = full.clone();
        lying[14] = 0xff;
        lying.resize(full.len() + 16, 0);
        assert_eq!(
            ours.protect(&mut lying, full.len(), 0),
            Err(SrtpError::Packet)
        );
        // Random bytes: refused or protected, never a panic.
        let mut x = 0x1234_5678u32;
        for _ in 0..2_000 {
            let len = (x % 64) as usize;
            let mut buf: Vec<u8> = (0..len + 16)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = ours.protect(&mut buf, len, 0);
        }
    }

    #[test]
    fn profiles_and_keys_the_fast_path_does_not_take_are_refused() {
        let c = crypto();
        assert!(matches!(
            Srtp::new(ProtectionProfile::AeadAes256Gcm, &[0; 32], &[0; 12], c),
            Err(SrtpError::Key | SrtpError::Profile)
        ));
        assert!(matches!(
            Srtp::new(
                ProtectionProfile::Aes128CmHmacSha1_32,
                &[0; 16],
                &[0; 14],
                c
            ),
            Err(SrtpError::Profile)
        ));
        assert!(matches!(
            Srtp::new(ProtectionProfile::AeadAes128Gcm, &[0; 16], &[0; 14], c),
            Err(SrtpError::Key)
        ));
    }

    #[test]
    fn the_replay_window_agrees_with_a_set_of_used_indices() {
        // Against a reference: the set of every index marked, and the
        // rule "new if ahead of the highest, or less than WINDOW behind
        // it and not marked". Steps ahead of up to 1.5 windows (clearing
        // across words and around the ring) and marks behind.
        let mut r = Rollover::default();
        let mut used = std::collections::HashSet::new();
        let mut high: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..4_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let step = (x >> 8) % (WINDOW + WINDOW / 2);
            let index = match high {
                None => 1_000,
                Some(h) if x.is_multiple_of(3) => h.saturating_sub(step),
                Some(h) => h + step % if x.is_multiple_of(5) { 700 } else { 3 },
            };
            let new_by_model =
                |used: &std::collections::HashSet<u64>, high: Option<u64>, i: u64| match high {
                    None => true,
                    Some(h) => i > h || (h - i < WINDOW && !used.contains(&i)),
                };
            assert_eq!(
                r.is_new(index),
                new_by_model(&used, high, index),
                "index {index}"
            );
            r.mark(index);
            used.insert(index);
            high = Some(high.map_or(index, |h| h.max(index)));
            let h = high.unwrap_or(0);
            for i in h.saturating_sub(WINDOW + 3)..=h + 3 {
                assert_eq!(
                    r.is_new(i),
                    new_by_model(&used, high, i),
                    "index {i} after marking {index}"
                );
            }
        }
    }

    #[test]
    fn the_rollover_counter_follows_wraps_and_late_packets_and_never_gives_an_index_twice() {
        let mut r = Rollover::default();
        assert_eq!(r.claim(65_534), Some(65_534));
        assert_eq!(r.claim(1), Some(65_537), "wrapped: ROC 1");
        assert_eq!(
            r.claim(65_535),
            Some(65_535),
            "late, before the wrap: ROC 0"
        );
        assert_eq!(r.claim(65_535), None, "used");
        assert_eq!(r.claim(1), None, "used");
        assert_eq!(r.claim(0), Some(65_536), "the gap is still free");
        assert_eq!(r.claim(2), Some(65_538));
        assert_eq!(r.claim(700), Some(66_236));
        assert_eq!(r.claim(100), None, "600 behind: too old to know");
        assert_eq!(r.claim(699), Some(66_235));
        assert_eq!(
            r.claim(189),
            Some(65_725),
            "511 behind: still known, unused"
        );
        assert_eq!(r.claim(189), None, "and now used");
        assert_eq!(r.claim(188), None, "512 behind: too old");
        assert_eq!(r.claim(2), None, "still marked after the shifts");
        let mut fresh = Rollover::default();
        assert_eq!(fresh.claim(10), Some(10));
        assert_eq!(fresh.claim(65_000), None, "before index 0");
    }
}
