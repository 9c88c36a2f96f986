//! Outbound SRTCP done by us instead of rtc's write pipeline
//! (docs/DECISIONS.md §10): the RTCP the SFU sends (transport-wide CC
//! feedback, NACKs and receiver reports to publishers, sender reports,
//! PLIs) marshalled into one reused buffer ([`marshal_into`]) and
//! encrypted there in place ([`SrtcpOut::protect`]), without rtc's
//! `write_rtcp` and the sweep of its whole write pipeline that each such
//! write costs the worker.
//!
//! [`SrtcpOut`] is the sending direction's SRTCP context, on the *local*
//! master key and salt rtc's DTLS handshake exported (the ones
//! `media_out.rs` encrypts our SRTP with); `rtcp_in.rs`'s `Srtcp` is its
//! receiving counterpart. Profiles: AEAD_AES_128_GCM (RFC 7714 §9) and
//! AES_CM_128_HMAC_SHA1_80 (RFC 3711 §3.4), the session keys derived as
//! for `Srtcp` (labels 3-5). Every packet is encrypted (E = 1).
//!
//! **Safety rule** (as for SRTP, `srtp.rs`): a (key, SSRC, SRTCP index)
//! is never used twice. Under AES-GCM a second packet under the same
//! nonce reveals the authentication key (and the XOR of the two
//! plaintexts); under AES-CM it reveals the XOR of the plaintexts. Hence:
//! - one `SrtcpOut` per local master key (per DTLS handshake), kept for as
//!   long as the key: a second one, or a new one on the same key, counts
//!   from 1 again;
//! - an SSRC sent through an `SrtcpOut` is never also sent through rtc's
//!   `write_rtcp` (rtc's SRTCP context has the same key and also counts
//!   from 1), just as an SSRC is wholly ours or wholly rtc's for SRTP;
//! - an SSRC's indexes are never wrapped: at the last one (2^31 - 1)
//!   [`protect`](SrtcpOut::protect) refuses ([`SrtpError::Exhausted`])
//!   instead of starting again at 0 as rtc does. A session does not get
//!   there: 2^31 packets from one SSRC at 50 RTCP packets per second (far
//!   more than we send: TWCC feedback every 100 ms, NACKs, a report per
//!   second) take 1.3 years;
//! - a slot of the SSRC table, once taken, is never freed (its counter
//!   would be lost), so the table bounds the sending SSRCs of a key's
//!   whole life, not just those of the moment.

use crate::rtcp_in::{ESRTCP, HEAD};
use crate::srtp::{Cipher, GCM_TAG, HMAC_TAG_80, SRTCP_LABELS, SrtpError, cm_iv, gcm_iv};
use rtc::crypto::RTCCrypto;
use rtc::rtcp::packet::Packet;
use rtc::shared::error::Error as MarshalError;
use rtc::srtp::protection_profile::ProtectionProfile;

/// Sending SSRCs one [`SrtcpOut`] numbers, for its whole life: the SFU's
/// feedback SSRC (`media_in.rs`), 0 (keyframe requests), and the SSRC of
/// each track we send the peer (its sender reports). A slot is never
/// freed; an SSRC that finds none is refused ([`SrtpError::TooManySsrcs`]).
/// Fixed, so that no packet allocates (256 bytes).
pub(crate) const MAX_SENDING_SSRCS: usize = 32;

/// The E flag: always set (encrypted).
const E_FLAG: u32 = 1 << 31;
/// The last SRTCP index there is (31 bits).
const MAX_INDEX: u32 = E_FLAG - 1;
/// The most [`SrtcpOut::protect`] appends: AES-GCM's tag and the E flag
/// and index (AES-CM: 4 + 10).
pub(crate) const MAX_TRAILER: usize = GCM_TAG + ESRTCP;

/// The sending direction's SRTCP: encryption of the RTCP we send a peer.
pub(crate) struct SrtcpOut {
    cipher: Cipher,
    /// Sending SSRCs seen (the first `known`) and the last index each
    /// used (none yet: 0, rtc's first being 1).
    ssrcs: [u32; MAX_SENDING_SSRCS],
    last: [u32; MAX_SENDING_SSRCS],
    known: usize,
}

impl SrtcpOut {
    /// The SRTCP session keys (RFC 3711 §4.3, labels 3-5) of the local
    /// master key and salt. AEAD_AES_128_GCM (RFC 7714 §9) and
    /// AES_CM_128_HMAC_SHA1_80 (RFC 3711) only, as `rtcp_in::Srtcp`.
    /// One per key: see the module's safety rule.
    pub(crate) fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn RTCCrypto,
    ) -> Result<SrtcpOut, SrtpError> {
        let cipher = Cipher::new(profile, master_key, master_salt, crypto, SRTCP_LABELS)?;
        Ok(SrtcpOut {
            cipher,
            ssrcs: [0; MAX_SENDING_SSRCS],
            last: [0; MAX_SENDING_SSRCS],
            known: 0,
        })
    }

    /// Bytes [`protect`](Self::protect) appends: tag and E flag + index
    /// (20 for AES-GCM, 14 for AES-CM; at most [`MAX_TRAILER`]).
    pub(crate) fn overhead(&self) -> usize {
        ESRTCP + self.cipher.tag_len()
    }

    /// Encrypt the compound RTCP packet `buf` holds (all of it) in place
    /// and append its trailer: AES-GCM (RFC 7714 §9) the tag, then the E
    /// flag and index; AES-CM (RFC 3711 §3.4) the E flag and index, then
    /// the 80-bit tag. `buf` is then the SRTCP datagram to send. No
    /// allocation if `buf` has [`overhead`](Self::overhead) bytes of
    /// spare capacity (as [`marshal_into`] leaves it).
    ///
    /// The index is the next of the sending SSRC (bytes 4..8: the first
    /// packet's sender), counted from 1 as rtc does. Refused, `buf`
    /// untouched and no index used: [`SrtpError::Packet`] if `buf` is not
    /// a compound RTCP packet (shorter than 8 bytes, a sub-packet not
    /// version 2, lengths that do not tile it exactly, a first sub-packet
    /// without sender SSRC); [`SrtpError::TooManySsrcs`] for a sending
    /// SSRC more than [`MAX_SENDING_SSRCS`]; [`SrtpError::Exhausted`] once
    /// the SSRC used index 2^31 - 1. [`SrtpError::Key`] if the crypto
    /// provider fails: `buf` is then emptied (half encrypted, never to be
    /// sent) and its index is spent.
    pub(crate) fn protect(&mut self, buf: &mut Vec<u8>) -> Result<(), SrtpError> {
        if !is_compound(buf) {
            return Err(SrtpError::Packet);
        }
        let ssrc = [buf[4], buf[5], buf[6], buf[7]];
        // Claimed before anything is encrypted with it: an index is spent
        // even if encryption then fails, never used twice.
        let index = self.claim(u32::from_be_bytes(ssrc))?;
        let word = (E_FLAG | index).to_be_bytes();
        let (roc, seq) = (index >> 16, (index as u16).to_be_bytes());
        buf.reserve(self.overhead());
        let sealed = match &mut self.cipher {
            Cipher::Gcm { aead, salt } => {
                // AAD: header, sender SSRC and the E flag + index word.
                let mut aad = [0u8; HEAD + ESRTCP];
                aad[..HEAD].copy_from_slice(&buf[..HEAD]);
                aad[HEAD..].copy_from_slice(&word);
                let iv = gcm_iv(salt, ssrc, roc, seq);
                let mut tag = [0u8; GCM_TAG];
                aead.seal_in_place(&iv, &aad, &mut buf[HEAD..], &mut tag)
                    .map(|()| {
                        buf.extend_from_slice(&tag);
                        buf.extend_from_slice(&word);
                    })
            }
            Cipher::CmSha1 { ctr, mac, salt } => {
                // The tag covers everything before it, E flag and index
                // included.
                let iv = cm_iv(salt, ssrc, roc, seq);
                let mut tag = [0u8; 20];
                ctr.apply_keystream(&iv, &mut buf[HEAD..])
                    .and_then(|()| {
                        buf.extend_from_slice(&word);
                        mac.sign(&[&buf[..]], &mut tag)
                    })
                    .map(|()| buf.extend_from_slice(&tag[..HMAC_TAG_80]))
            }
        };
        sealed.map_err(|_| {
            buf.clear();
            SrtpError::Key
        })
    }

    /// The next index of `ssrc`, taken; its slot too if it is new.
    fn claim(&mut self, ssrc: u32) -> Result<u32, SrtpError> {
        let i = match self.ssrcs[..self.known].iter().position(|s| *s == ssrc) {
            Some(i) => i,
            None if self.known < MAX_SENDING_SSRCS => {
                self.ssrcs[self.known] = ssrc;
                self.last[self.known] = 0;
                self.known += 1;
                self.known - 1
            }
            None => return Err(SrtpError::TooManySsrcs),
        };
        if self.last[i] >= MAX_INDEX {
            return Err(SrtpError::Exhausted);
        }
        self.last[i] += 1;
        Ok(self.last[i])
    }

    /// Make `last` the last index `ssrc` used (taking a slot), to test
    /// the end of the index space without 2^31 packets.
    #[cfg(test)]
    fn set_last_index(&mut self, ssrc: u32, last: u32) {
        self.claim(ssrc).expect("a slot");
        let i = self.ssrcs[..self.known]
            .iter()
            .position(|s| *s == ssrc)
            .expect("claimed");
        self.last[i] = last;
    }
}

/// Whether `rtcp` is a compound RTCP packet by its framing: at least a
/// header and sender SSRC, every sub-packet version 2, their lengths
/// tiling it exactly. The contents are rtc's marshal's concern.
fn is_compound(rtcp: &[u8]) -> bool {
    if rtcp.len() < HEAD || u16::from_be_bytes([rtcp[2], rtcp[3]]) == 0 {
        return false;
    }
    let mut rest = rtcp;
    while let [b0, _, l0, l1, ..] = *rest {
        let len = 4 * (usize::from(u16::from_be_bytes([l0, l1])) + 1);
        match rest.get(len..) {
            Some(next) if b0 >> 6 == 2 => rest = next,
            _ => return false,
        }
    }
    rest.is_empty()
}

/// Marshal `packets` as one compound RTCP packet into `buf` (emptied
/// first), with rtc's own marshalling (each packet's `marshal_to`, as
/// `rtc::rtcp::packet::marshal` does) and [`MAX_TRAILER`] bytes of spare
/// capacity for [`SrtcpOut::protect`]. Allocates only when `buf` has less
/// capacity than that; a `buf` kept between packets stops allocating
/// once it has held the largest. On an error (rtc refuses a packet, or a
/// packet writes other than its `marshal_size`), `buf` is empty.
pub(crate) fn marshal_into(
    packets: &[Box<dyn Packet>],
    buf: &mut Vec<u8>,
) -> Result<(), MarshalError> {
    let total: usize = packets.iter().map(|p| p.marshal_size()).sum();
    buf.clear();
    buf.reserve(total + MAX_TRAILER);
    buf.resize(total, 0);
    let mut at = 0;
    for p in packets {
        match p.marshal_to(&mut buf[at..]) {
            Ok(n) => at += n,
            Err(e) => {
                buf.clear();
                return Err(e);
            }
        }
    }
    if at != total {
        buf.clear();
        return Err(MarshalError::WrongMarshalSize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp_in::{Rtcp, Srtcp};
    use rtc::interceptor::convert_twcc;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk,
        SymbolSizeTypeTcc, SymbolTypeTcc, TransportLayerCc,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use rtc::srtp::context::Context;
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    fn crypto() -> &'static dyn RTCCrypto {
        let provider = Box::leak(Box::new(rtc::crypto::default_provider().expect("provider")));
        provider.crypto()
    }

    type Profile = (ProtectionProfile, usize);
    const GCM: Profile = (ProtectionProfile::AeadAes128Gcm, 12);
    const CM: Profile = (ProtectionProfile::Aes128CmHmacSha1_80, 14);

    /// The SFU's feedback SSRC (`media_in.rs`), 0 (keyframe requests) and
    /// two tracks' (sender reports).
    const SSRCS: [u32; 4] = [0x5350_4b52, 0, 0x1234_5678, 0xffff_fffe];

    fn keys((_, salt_len): Profile, k: u8) -> (Vec<u8>, Vec<u8>) {
        let key = (0..16).map(|i| i * k + 7).collect();
        let salt = (0..salt_len as u8).map(|i| i * 5 + k).collect();
        (key, salt)
    }

    fn ours(profile: Profile, k: u8) -> SrtcpOut {
        let (key, salt) = keys(profile, k);
        SrtcpOut::new(profile.0, &key, &salt, crypto()).expect("ours")
    }

    /// rtc's SRTCP on the same key: the peer's decryption, or rtc's own
    /// encryption to compare with.
    fn rtcs(profile: Profile, k: u8) -> Context {
        let (key, salt) = keys(profile, k);
        Context::new(&key, &salt, profile.0, None, None, crypto()).expect("rtc's")
    }

    /// The peer's side as we decrypt and read it (`rtcp_in.rs`).
    fn our_receiver(profile: Profile, k: u8) -> Srtcp {
        let (key, salt) = keys(profile, k);
        Srtcp::new(profile.0, &key, &salt, crypto()).expect("our receiver")
    }

    use crate::rtcp_in::tests::Rng;

    /// What a receiver reads (`rtcp_in::parse`), owned.
    #[derive(Debug, PartialEq)]
    enum Ev {
        Sr(u32, u64),
        Block(u32, u8),
        Nack(u32, Vec<(u16, u16)>),
        Pli(u32),
        Twcc(u32, u16, Vec<(u16, bool, Option<Duration>)>),
    }

    fn read(r: Rtcp<'_>) -> Ev {
        match r {
            Rtcp::SenderReport { ssrc, ntp_time } => Ev::Sr(ssrc, ntp_time),
            Rtcp::ReceptionReport {
                ssrc,
                fraction_lost,
                ..
            } => Ev::Block(ssrc, fraction_lost),
            Rtcp::Nack(n) => Ev::Nack(n.media_ssrc, n.pairs().collect()),
            Rtcp::Pli { media_ssrc } => Ev::Pli(media_ssrc),
            Rtcp::Twcc(fb) => Ev::Twcc(fb.media_ssrc, fb.base_sequence_number, fb.acks().collect()),
            Rtcp::Fir { .. } => panic!("we send no FIR"),
        }
    }

    fn blocks(rng: &mut Rng, out: &mut Vec<Ev>) -> Vec<ReceptionReport> {
        (0..rng.below(4))
            .map(|_| {
                let r = ReceptionReport {
                    ssrc: rng.next() as u32,
                    fraction_lost: rng.next() as u8,
                    total_lost: rng.below(1 << 24) as u32,
                    last_sequence_number: rng.next() as u32,
                    jitter: rng.next() as u32,
                    last_sender_report: rng.next() as u32,
                    delay: rng.next() as u32,
                };
                out.push(Ev::Block(r.ssrc, r.fraction_lost));
                r
            })
            .collect()
    }

    /// Transport-wide feedback as `media_in.rs` writes it: a run of small
    /// deltas, a two-bit vector (lost, small, large), possibly a run lost.
    fn twcc(rng: &mut Rng, sender_ssrc: u32) -> TransportLayerCc {
        let run = 1 + rng.below(20) as u16;
        let vector: Vec<u16> = (0..7).map(|_| rng.below(3) as u16).collect();
        let mut packet_chunks = vec![
            PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketReceivedSmallDelta,
                run_length: run,
            }),
            PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                symbol_size: SymbolSizeTypeTcc::TwoBit,
                symbol_list: vector.iter().map(|s| SymbolTypeTcc::from(*s)).collect(),
            }),
        ];
        let mut count = run + 7;
        if rng.below(2) == 0 {
            let lost = 1 + rng.below(100) as u16;
            packet_chunks.push(PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketNotReceived,
                run_length: lost,
            }));
            count += lost;
        }
        let small = |rng: &mut Rng| RecvDelta {
            type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
            delta: 250 * rng.below(256) as i64,
        };
        let mut recv_deltas: Vec<RecvDelta> = (0..run).map(|_| small(rng)).collect();
        for s in &vector {
            match s {
                1 => recv_deltas.push(small(rng)),
                2 => recv_deltas.push(RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedLargeDelta,
                    delta: 250 * (rng.below(4_000) as i64 - 2_000),
                }),
                _ => {}
            }
        }
        TransportLayerCc {
            sender_ssrc,
            media_ssrc: rng.next() as u32,
            base_sequence_number: rng.next() as u16,
            packet_status_count: count,
            reference_time: rng.below(1 << 24) as u32,
            fb_pkt_count: rng.next() as u8,
            packet_chunks,
            recv_deltas,
        }
    }

    /// One compound packet of what the SFU sends, from `ssrc`, and what a
    /// receiver should read in it: SR + RR, TWCC feedback, NACKs, PLI.
    fn compound(rng: &mut Rng, ssrc: u32) -> (Vec<Box<dyn Packet>>, Vec<Ev>) {
        let mut ev = Vec::new();
        let mut packets: Vec<Box<dyn Packet>> = Vec::new();
        match rng.below(5) {
            0 => {
                let ntp_time = rng.next();
                ev.push(Ev::Sr(ssrc, ntp_time));
                let reports = blocks(rng, &mut ev);
                packets.push(Box::new(SenderReport {
                    ssrc,
                    ntp_time,
                    rtp_time: rng.next() as u32,
                    packet_count: rng.next() as u32,
                    octet_count: rng.next() as u32,
                    reports,
                    ..Default::default()
                }));
                let reports = blocks(rng, &mut ev);
                packets.push(Box::new(ReceiverReport {
                    ssrc,
                    reports,
                    ..Default::default()
                }));
            }
            1 => {
                let fb = twcc(rng, ssrc);
                let acks = convert_twcc(&fb)
                    .iter()
                    .map(|a| (a.sequence_number, a.arrived, a.arrival))
                    .collect();
                ev.push(Ev::Twcc(fb.media_ssrc, fb.base_sequence_number, acks));
                packets.push(Box::new(fb));
            }
            2 => {
                let media_ssrc = rng.next() as u32;
                let nacks: Vec<NackPair> = (0..1 + rng.below(5))
                    .map(|_| NackPair {
                        packet_id: rng.next() as u16,
                        lost_packets: rng.next() as u16,
                    })
                    .collect();
                let pairs = nacks
                    .iter()
                    .map(|n| (n.packet_id, n.lost_packets))
                    .collect();
                ev.push(Ev::Nack(media_ssrc, pairs));
                packets.push(Box::new(TransportLayerNack {
                    sender_ssrc: ssrc,
                    media_ssrc,
                    nacks,
                }));
            }
            3 => {
                let media_ssrc = rng.next() as u32;
                ev.push(Ev::Pli(media_ssrc));
                packets.push(Box::new(PictureLossIndication {
                    sender_ssrc: ssrc,
                    media_ssrc,
                }));
            }
            _ => {
                // What `InboundFeedback::handle_timeout` gathers in one
                // round: RR, feedback, NACK.
                let reports = blocks(rng, &mut ev);
                packets.push(Box::new(ReceiverReport {
                    ssrc,
                    reports,
                    ..Default::default()
                }));
                let (more, more_ev) = compound(rng, ssrc);
                if !more_ev.iter().any(|e| matches!(e, Ev::Sr(..))) {
                    packets.extend(more);
                    ev.extend(more_ev);
                }
            }
        }
        (packets, ev)
    }

    /// The trailer's E flag and index.
    fn trailer(profile: Profile, srtcp: &[u8]) -> (bool, u32) {
        let at = match profile.0 {
            ProtectionProfile::AeadAes128Gcm => srtcp.len() - ESRTCP,
            _ => srtcp.len() - ESRTCP - HMAC_TAG_80,
        };
        let word = u32::from_be_bytes(srtcp[at..at + 4].try_into().unwrap());
        (word >> 31 == 1, word & MAX_INDEX)
    }

    fn protected(out: &mut SrtcpOut, plain: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = plain.to_vec();
        out.protect(&mut buf)?;
        Ok(buf)
    }

    /// Compound packets from several SSRCs, marshalled by [`marshal_into`]
    /// into one reused buffer and protected in it: the bytes are rtc's
    /// marshal's; rtc's SRTCP (the browser's side) decrypts each to
    /// exactly them; our own receiver (`rtcp_in.rs`) takes each and reads
    /// what was sent; and each is, byte for byte, what rtc's own
    /// `encrypt_rtcp` makes of it (same layout, same index).
    fn rtc_decrypts_what_we_encrypt(profile: Profile) {
        let mut out = ours(profile, 3);
        let mut rtc_rx = rtcs(profile, 3);
        let mut rtc_tx = rtcs(profile, 3);
        let mut rx = our_receiver(profile, 3);
        let mut rng = Rng(0x0a7c_0001);
        let mut buf = Vec::new();
        let mut kinds = [0usize; 5];
        let mut reused = 0;
        for n in 0..600 {
            let ssrc = SSRCS[rng.below(4) as usize];
            let (packets, expected) = compound(&mut rng, ssrc);
            let plain = rtc::rtcp::packet::marshal(&packets).expect("rtc marshals");
            let (ptr, capacity) = (buf.as_ptr(), buf.capacity());
            marshal_into(&packets, &mut buf).expect("marshal_into");
            assert_eq!(buf[..], plain[..], "packet {n}: rtc's marshal");
            assert!(buf.capacity() >= buf.len() + MAX_TRAILER);
            out.protect(&mut buf).expect("protect");
            assert_eq!(buf.len(), plain.len() + out.overhead());
            if capacity >= plain.len() + MAX_TRAILER {
                assert_eq!(buf.as_ptr(), ptr, "packet {n}: reallocated");
                reused += 1;
            }
            assert_eq!(buf[..HEAD], plain[..HEAD], "header in the clear");
            if plain.len() > 12 {
                assert_ne!(buf[HEAD..plain.len()], plain[HEAD..], "encrypted");
            }
            let decrypted = rtc_rx.decrypt_rtcp(&buf).expect("rtc decrypts ours");
            assert_eq!(decrypted[..], plain[..], "packet {n}");
            let mut got = Vec::new();
            let mut copy = buf.clone();
            rx.read(&mut copy, |r| got.push(read(r)))
                .expect("our receiver takes it");
            assert_eq!(got, expected, "packet {n}");
            let theirs = rtc_tx.encrypt_rtcp(&plain).expect("rtc encrypts");
            assert_eq!(buf[..], theirs[..], "packet {n}: as rtc's SRTCP");
            for e in &got {
                kinds[match e {
                    Ev::Sr(..) => 0,
                    Ev::Block(..) => 1,
                    Ev::Nack(..) => 2,
                    Ev::Pli(..) => 3,
                    Ev::Twcc(..) => 4,
                }] += 1;
            }
        }
        assert!(kinds.iter().all(|k| *k > 50), "every kind: {kinds:?}");
        assert!(reused > 500, "{reused} without allocation");
        assert_eq!(rx.take_refused(), [0; 3]);
    }

    #[test]
    fn rtc_decrypts_our_aes_gcm_srtcp() {
        rtc_decrypts_what_we_encrypt(GCM);
    }

    #[test]
    fn rtc_decrypts_our_aes_cm_hmac_sha1_srtcp() {
        rtc_decrypts_what_we_encrypt(CM);
    }

    /// A small compound packet from `ssrc`.
    fn pli(ssrc: u32) -> Vec<u8> {
        let p: Box<dyn Packet> = Box::new(PictureLossIndication {
            sender_ssrc: ssrc,
            media_ssrc: 77,
        });
        rtc::rtcp::packet::marshal(&[p]).expect("marshal").to_vec()
    }

    /// Each SSRC's indexes count 1, 2, 3, ... (rtc's `encrypt_rtcp` takes
    /// 1 first), whatever the other SSRCs send in between.
    #[test]
    fn indexes_count_per_ssrc_from_where_rtcs_start() {
        for profile in [GCM, CM] {
            let mut out = ours(profile, 4);
            let mut rtc_tx = rtcs(profile, 4);
            let mut rng = Rng(0x1d8c_0002);
            let mut sent: HashMap<u32, u32> = HashMap::new();
            for n in 0..400 {
                let ssrc = SSRCS[rng.below(4) as usize];
                let plain = pli(ssrc);
                let buf = protected(&mut out, &plain).expect("protect");
                let count = sent.entry(ssrc).or_default();
                *count += 1;
                assert_eq!(trailer(profile, &buf), (true, *count), "packet {n}");
                let theirs = rtc_tx.encrypt_rtcp(&plain).expect("rtc");
                assert_eq!(buf[..], theirs[..], "packet {n}");
            }
            assert!(sent.values().all(|c| *c > 50), "{sent:?}");
        }
    }

    /// [`MAX_SENDING_SSRCS`] sending SSRCs have their indexes; one more is
    /// refused (its packet untouched) and the others go on counting.
    #[test]
    fn an_ssrc_beyond_the_table_is_refused() {
        let profile = GCM;
        let mut out = ours(profile, 5);
        for round in 1..=2 {
            for ssrc in 0..MAX_SENDING_SSRCS as u32 {
                let buf = protected(&mut out, &pli(ssrc)).expect("in the table");
                assert_eq!(trailer(profile, &buf), (true, round));
            }
        }
        let plain = pli(0xabcd);
        let mut buf = plain.clone();
        assert_eq!(out.protect(&mut buf), Err(SrtpError::TooManySsrcs));
        assert_eq!(buf, plain, "untouched");
        assert_eq!(out.protect(&mut buf), Err(SrtpError::TooManySsrcs));
        let buf = protected(&mut out, &pli(7)).expect("a known SSRC");
        assert_eq!(trailer(profile, &buf), (true, 3));
    }

    /// The last index (2^31 - 1) is used, decrypts, and is the last: the
    /// SSRC is then refused for good (no wrap to 0, as rtc does); other
    /// SSRCs are not.
    #[test]
    fn the_index_never_wraps() {
        for profile in [GCM, CM] {
            let mut out = ours(profile, 6);
            let mut rtc_rx = rtcs(profile, 6);
            let mut rx = our_receiver(profile, 6);
            out.set_last_index(9, MAX_INDEX - 2);
            for index in [MAX_INDEX - 1, MAX_INDEX] {
                let plain = pli(9);
                let buf = protected(&mut out, &plain).expect("not yet the end");
                assert_eq!(trailer(profile, &buf), (true, index));
                assert_eq!(rtc_rx.decrypt_rtcp(&buf).expect("rtc")[..], plain[..]);
                let mut copy = buf.clone();
                assert_eq!(rx.unprotect(&mut copy), Ok(plain.len()));
            }
            for _ in 0..3 {
                let mut buf = pli(9);
                assert_eq!(out.protect(&mut buf), Err(SrtpError::Exhausted));
                assert_eq!(buf, pli(9), "untouched");
            }
            let buf = protected(&mut out, &pli(10)).expect("another SSRC");
            assert_eq!(trailer(profile, &buf), (true, 1));
        }
    }

    /// 10,000 protects of random packets from a few SSRCs, refusals in
    /// between: no (SSRC, index) twice, every one encrypted (E = 1), and
    /// rtc decrypts every one.
    #[test]
    fn no_ssrc_and_index_twice() {
        for profile in [GCM, CM] {
            let mut out = ours(profile, 7);
            let mut rtc_rx = rtcs(profile, 7);
            let mut rng = Rng(0x0dd5_0003);
            let mut seen = HashSet::new();
            let mut buf = Vec::new();
            for n in 0..10_000 {
                let ssrc = SSRCS[rng.below(4) as usize] ^ rng.below(2) as u32;
                let (packets, _) = compound(&mut rng, ssrc);
                marshal_into(&packets, &mut buf).expect("marshal");
                if rng.below(10) == 0 {
                    // Refused: not RTCP.
                    buf[0] ^= 0xc0;
                    assert_eq!(out.protect(&mut buf), Err(SrtpError::Packet));
                    continue;
                }
                out.protect(&mut buf).expect("protect");
                let (e, index) = trailer(profile, &buf);
                assert!(e, "packet {n}: encrypted");
                assert!(
                    seen.insert((ssrc, index)),
                    "packet {n}: {ssrc:#x} {index} again"
                );
                if n % 10 == 0 {
                    rtc_rx.decrypt_rtcp(&buf).expect("rtc decrypts");
                }
            }
            assert!(seen.len() > 8_500, "{}", seen.len());
        }
    }

    /// Undersized, oversized, not version 2, lying lengths, random bytes:
    /// never a panic; refused untouched without spending an index, or
    /// protected into what rtc decrypts back.
    #[test]
    fn bad_and_random_buffers_never_panic() {
        for profile in [GCM, CM] {
            let mut out = ours(profile, 8);
            let mut rtc_rx = rtcs(profile, 8);
            let mut taken: HashMap<u32, u32> = HashMap::new();
            let mut expect = |out: &mut SrtcpOut, b: &[u8], ok: bool, what: &str| {
                let mut buf = b.to_vec();
                let r = out.protect(&mut buf);
                if !ok {
                    assert_eq!(r, Err(SrtpError::Packet), "{what}");
                    assert_eq!(buf, b, "{what}: untouched");
                    return;
                }
                assert_eq!(r, Ok(()), "{what}");
                let ssrc = u32::from_be_bytes(b[4..8].try_into().unwrap());
                let n = taken.entry(ssrc).or_default();
                *n += 1;
                assert_eq!(trailer(profile, &buf), (true, *n), "{what}");
                assert_eq!(rtc_rx.decrypt_rtcp(&buf).expect(what)[..], b[..]);
            };
            let good = pli(0x42);
            for cut in 0..good.len() {
                expect(&mut out, &good[..cut], false, &format!("cut at {cut}"));
            }
            let mut longer = good.clone();
            longer.extend_from_slice(&[0x80, 0, 0]);
            expect(&mut out, &longer, false, "3 bytes more");
            longer.push(0);
            expect(&mut out, &longer, true, "a 4-byte packet more");
            for v in [0x00, 0x40, 0xc0] {
                let mut bad = good.clone();
                bad[0] = v | (bad[0] & 0x3f);
                expect(&mut out, &bad, false, &format!("version {}", v >> 6));
                let mut bad = good.repeat(3);
                bad[good.len()] = v | (bad[0] & 0x3f);
                expect(&mut out, &bad, false, "second packet's version");
            }
            for lie in [0u16, 1, 3, 4, u16::MAX] {
                let mut bad = good.clone();
                bad[2..4].copy_from_slice(&lie.to_be_bytes());
                expect(&mut out, &bad, false, &format!("length {lie}"));
            }
            // The first packet without sender SSRC: bytes 4..8 a header.
            let mut headless = vec![0x80, 205, 0, 0];
            headless.extend_from_slice(&good);
            expect(&mut out, &headless, false, "first packet 4 bytes");
            // Oversized: the longest sub-packet there is, several.
            let mut big = vec![0u8; 4 * (1 << 16)];
            big[..4].copy_from_slice(&[0x80, 204, 0xff, 0xff]);
            big[4..8].copy_from_slice(&0x42u32.to_be_bytes());
            expect(&mut out, &big, true, "256 KB packet");
            expect(&mut out, &big.repeat(3), true, "768 KB compound");
            expect(&mut out, &big[..big.len() - 4], false, "cut long packet");
            let mut rng = Rng(0xf022_0004);
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..20_000 {
                let len = rng.below(120) as usize;
                let mut b = rng.bytes(len);
                if len >= 8 && rng.below(2) == 0 {
                    b[0] = 0x80 | (b[0] & 0x3f);
                    b[4..8].copy_from_slice(&(rng.below(3) as u32).to_be_bytes());
                    if rng.below(2) == 0 {
                        // Often a single sub-packet that fits exactly.
                        let words = (len / 4 - 1) as u16;
                        b.truncate(len / 4 * 4);
                        b[2..4].copy_from_slice(&words.to_be_bytes());
                    }
                }
                let mut buf = b.clone();
                match out.protect(&mut buf) {
                    Ok(()) => {
                        ok += 1;
                        let ssrc = u32::from_be_bytes(b[4..8].try_into().unwrap());
                        let n = taken.entry(ssrc).or_default();
                        *n += 1;
                        assert_eq!(trailer(profile, &buf), (true, *n));
                        let plain = rtc_rx.decrypt_rtcp(&buf).expect("rtc decrypts");
                        assert_eq!(plain[..], b[..]);
                    }
                    Err(e) => {
                        refused += 1;
                        assert!(matches!(e, SrtpError::Packet | SrtpError::TooManySsrcs));
                        assert_eq!(buf, b, "untouched");
                    }
                }
            }
            assert!(ok > 3_000 && refused > 10_000, "{ok} {refused}");
            // Nothing refused spent an index.
            let buf = protected(&mut out, &pli(0x42)).expect("protect");
            assert_eq!(trailer(profile, &buf), (true, taken[&0x42] + 1));
        }
    }

    /// rtc refusing a packet, or an empty list: an error or an empty
    /// buffer that `protect` refuses, never a panic.
    #[test]
    fn marshal_errors_leave_an_empty_buffer() {
        let mut buf = pli(1);
        let too_many: Box<dyn Packet> = Box::new(ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport::default(); 32],
            ..Default::default()
        });
        assert!(marshal_into(&[too_many], &mut buf).is_err());
        assert!(buf.is_empty());
        marshal_into(&[], &mut buf).expect("nothing to marshal");
        assert!(buf.is_empty());
        assert_eq!(ours(GCM, 1).protect(&mut buf), Err(SrtpError::Packet));
    }

    #[test]
    fn other_profiles_and_keys_are_refused() {
        let c = crypto();
        let new = |p, key: &[u8], salt: &[u8]| SrtcpOut::new(p, key, salt, c).err();
        assert_eq!(
            new(ProtectionProfile::Aes128CmHmacSha1_32, &[0; 16], &[0; 14]),
            Some(SrtpError::Profile)
        );
        assert_eq!(
            new(ProtectionProfile::AeadAes128Gcm, &[0; 16], &[0; 14]),
            Some(SrtpError::Key)
        );
        assert_eq!(
            new(ProtectionProfile::Aes128CmHmacSha1_80, &[0; 15], &[0; 14]),
            Some(SrtpError::Key)
        );
    }
}
