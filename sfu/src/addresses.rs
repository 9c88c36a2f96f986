//! The media address table: which peer a datagram from a remote address
//! belongs to.
//!
//! An address is learned only from a STUN binding request whose
//! MESSAGE-INTEGRITY verified with the peer's ICE password (the worker
//! checks it with `demux::integrity_ok` before calling [`AddressTable::learn`]),
//! so a sender that merely knows a ufrag (it travels in clear in every
//! check) holds no slot. What a peer that does know its password can hold
//! is bounded too, so one participant cannot fill the table for everyone:
//!
//! * at most [`MAX_ADDRS_PER_PEER`] addresses at once; a new one evicts
//!   the peer's least recently heard address (the one in use is heard
//!   every few milliseconds, a stale candidate not at all);
//! * at most [`MAX_NEW_ADDRS_PER_UFRAG`] new addresses per ICE session
//!   (ufrag): rtc adds a peer-reflexive candidate for every address it
//!   accepts a check from and keeps it until the next ICE restart, so this
//!   bounds rtc's per-peer candidate list (and its linear scans) as well;
//! * at most [`MAX_ADDRS`] addresses per worker in all.
//!
//! Pure: the worker feeds it addresses and times; tests drive it directly.

use crate::peer::PeerKey;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Instant;

/// Addresses per worker in all.
pub(crate) const MAX_ADDRS: usize = 16 * 1024;
/// Addresses one peer holds at once. A browser uses one or two (host,
/// server-reflexive, relay, IPv4/IPv6) and only one carries media.
pub(crate) const MAX_ADDRS_PER_PEER: usize = 8;
/// New addresses one peer may introduce per ICE session (reset when its
/// ufrag changes with an ICE restart).
pub(crate) const MAX_NEW_ADDRS_PER_UFRAG: u32 = 64;

struct Route {
    key: PeerKey,
    heard: Instant,
}

#[derive(Default)]
struct PeerAddrs {
    addrs: Vec<SocketAddr>,
    /// New addresses learned in this ICE session.
    learned: u32,
}

/// What [`AddressTable::learn`] did with an authenticated address.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// Already this peer's.
    Known,
    /// Added; `evicted` is the peer's address that made room for it.
    Added { evicted: Option<SocketAddr> },
    /// Not added: the packet must not reach the peer connection either.
    Refused(Refusal),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Refusal {
    /// [`MAX_NEW_ADDRS_PER_UFRAG`] spent.
    PeerBudget,
    /// [`MAX_ADDRS`] reached.
    TableFull,
}

/// The table's hash: looked up for every datagram, so not SipHash (~330
/// instructions per packet in callgrind) but a multiply-rotate mix with a
/// random per-table seed and a final avalanche. Enough here: only
/// addresses that passed a STUN integrity check are ever inserted, a few
/// per peer (see the module doc), and the seed keeps a participant from
/// choosing ports that collide.
#[derive(Clone, Copy)]
pub(crate) struct AddrHash {
    seed: u64,
}

impl Default for AddrHash {
    fn default() -> Self {
        AddrHash {
            seed: rand::random::<u64>() | 1,
        }
    }
}

impl BuildHasher for AddrHash {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(self.seed)
    }
}

pub(crate) struct AddrHasher(u64);

impl AddrHasher {
    fn mix(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.mix(v as u64);
    }
    fn write_u16(&mut self, v: u16) {
        self.mix(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.mix(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.mix(v as u64);
    }
    fn finish(&self) -> u64 {
        // Murmur3's finaliser: every input bit moves the top bits
        // hashbrown groups by.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ x >> 33
    }
}

#[derive(Default)]
pub(crate) struct AddressTable {
    routes: HashMap<SocketAddr, Route, AddrHash>,
    /// Indexed by peer key.
    peers: Vec<PeerAddrs>,
}

impl AddressTable {
    /// The peer a datagram from `addr` belongs to (the hot path: one hash
    /// lookup and one store, no allocation).
    pub(crate) fn route(&mut self, addr: &SocketAddr, now: Instant) -> Option<PeerKey> {
        let route = self.routes.get_mut(addr)?;
        route.heard = now;
        Some(route.key)
    }

    /// `addr` proved it speaks for `key` (a binding request that passed
    /// the integrity check). Call only after that check.
    pub(crate) fn learn(&mut self, addr: SocketAddr, key: PeerKey, now: Instant) -> Learned {
        if let Some(route) = self.routes.get_mut(&addr)
            && route.key == key
        {
            route.heard = now;
            return Learned::Known;
        }
        if self.peers.len() <= key {
            self.peers.resize_with(key + 1, PeerAddrs::default);
        }
        if self.peers[key].learned >= MAX_NEW_ADDRS_PER_UFRAG {
            return Learned::Refused(Refusal::PeerBudget);
        }
        // The address moves from another peer (a browser reusing a port
        // for a new session); that peer loses it.
        if let Some(old) = self.routes.remove(&addr)
            && let Some(p) = self.peers.get_mut(old.key)
        {
            p.addrs.retain(|a| *a != addr);
        }
        let mut evicted = None;
        if self.peers[key].addrs.len() >= MAX_ADDRS_PER_PEER {
            let routes = &self.routes;
            let p = &mut self.peers[key];
            let stalest = (0..p.addrs.len())
                .min_by_key(|i| routes.get(&p.addrs[*i]).map(|r| r.heard))
                .unwrap_or(0);
            let gone = p.addrs.swap_remove(stalest);
            self.routes.remove(&gone);
            evicted = Some(gone);
        } else if self.routes.len() >= MAX_ADDRS {
            return Learned::Refused(Refusal::TableFull);
        }
        let p = &mut self.peers[key];
        p.addrs.push(addr);
        p.learned += 1;
        self.routes.insert(addr, Route { key, heard: now });
        Learned::Added { evicted }
    }

    /// An authenticated ICE-TCP connection of `key` wants to be attached:
    /// it spends the same per-session budget as a new UDP address (rtc
    /// adds a candidate for it just the same). `false` once spent.
    pub(crate) fn admit_connection(&mut self, key: PeerKey) -> bool {
        if self.peers.len() <= key {
            self.peers.resize_with(key + 1, PeerAddrs::default);
        }
        let p = &mut self.peers[key];
        if p.learned >= MAX_NEW_ADDRS_PER_UFRAG {
            return false;
        }
        p.learned += 1;
        true
    }

    /// The peer started a new ICE session (ICE restart): rtc forgot its
    /// candidates, so it may introduce new addresses again.
    pub(crate) fn new_ice_session(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get_mut(key) {
            p.learned = p.addrs.len() as u32;
        }
    }

    /// The peer left: its addresses go (only its own, not a table scan).
    pub(crate) fn forget(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get_mut(key) {
            for addr in p.addrs.drain(..) {
                self.routes.remove(&addr);
            }
            p.learned = 0;
        }
    }

    /// Addresses held (a gauge for `/metrics`).
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_hash_spreads_neighbouring_ports_and_depends_on_the_seed() {
        let a = AddrHash::default();
        let b = AddrHash::default();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let hashes: std::collections::HashSet<u64> = (40_000..44_000)
            .map(|p| a.hash_one(addr(p)) >> 57)
            .collect();
        // 4,000 neighbouring ports fill all 128 top-7-bit groups. (With 1,000
        // even a uniform hash leaves one empty ~5 % of the time: 128 ×
        // (127/128)^1000; it failed once in six runs. With 4,000: ~1e-12.)
        assert_eq!(hashes.len(), 128);
        assert_ne!(a.hash_one(addr(5000)), b.hash_one(addr(5000)));
        assert_eq!(a.hash_one(addr(5000)), a.hash_one(addr(5000)));
    }
    use std::time::Duration;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from((
            [127, 0, (i >> 8) as u8, i as u8],
            40_000 + (i % 1000) as u16,
        ))
    }

    #[test]
    fn a_peer_holds_at_most_its_cap_and_loses_its_stalest_address_first() {
        let mut t = AddressTable::default();
        let t0 = Instant::now();
        for i in 0..MAX_ADDRS_PER_PEER {
            assert_eq!(t.learn(addr(i), 0, t0), Learned::Added { evicted: None });
        }
        // Address 3 carries media: it is heard later than the rest.
        assert_eq!(t.route(&addr(3), t0 + Duration::from_secs(1)), Some(0));
        let later = t0 + Duration::from_secs(2);
        for i in 100..100 + MAX_ADDRS_PER_PEER - 1 {
            assert!(matches!(
                t.learn(addr(i), 0, later),
                Learned::Added { evicted: Some(_) }
            ));
        }
        assert_eq!(t.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(
            t.route(&addr(3), later),
            Some(0),
            "the address in use stays"
        );
        assert_eq!(t.route(&addr(0), later), None);
    }

    #[test]
    fn one_peer_spraying_addresses_leaves_room_for_everyone_else() {
        let mut t = AddressTable::default();
        let now = Instant::now();
        let mut refused = 0;
        for i in 0..16_400 {
            if let Learned::Refused(r) = t.learn(addr(i), 0, now) {
                assert_eq!(r, Refusal::PeerBudget);
                refused += 1;
            }
        }
        assert_eq!(refused, 16_400 - MAX_NEW_ADDRS_PER_UFRAG as usize);
        assert_eq!(t.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(
            t.learn(addr(50_000), 1, now),
            Learned::Added { evicted: None }
        );
        // An ICE restart gives the sprayer a new budget, still capped.
        t.new_ice_session(0);
        assert!(matches!(
            t.learn(addr(20_000), 0, now),
            Learned::Added { .. }
        ));
        assert_eq!(t.len(), MAX_ADDRS_PER_PEER + 1);
    }

    #[test]
    fn the_table_refuses_when_full_and_a_leaving_peer_frees_its_slots() {
        let mut t = AddressTable::default();
        let now = Instant::now();
        let peers = MAX_ADDRS / MAX_ADDRS_PER_PEER;
        for key in 0..peers {
            for j in 0..MAX_ADDRS_PER_PEER {
                let a = SocketAddr::from(([10, (key >> 8) as u8, key as u8, j as u8], 1));
                assert!(matches!(t.learn(a, key, now), Learned::Added { .. }));
            }
        }
        let newcomer = SocketAddr::from(([10, 200, 0, 1], 1));
        assert_eq!(
            t.learn(newcomer, peers, now),
            Learned::Refused(Refusal::TableFull)
        );
        t.forget(0);
        assert_eq!(t.len(), MAX_ADDRS - MAX_ADDRS_PER_PEER);
        assert!(matches!(
            t.learn(newcomer, peers, now),
            Learned::Added { .. }
        ));
    }

    #[test]
    fn an_address_moves_to_the_peer_that_proves_it() {
        let mut t = AddressTable::default();
        let now = Instant::now();
        t.learn(addr(1), 0, now);
        assert_eq!(t.learn(addr(1), 0, now), Learned::Known);
        assert!(matches!(t.learn(addr(1), 1, now), Learned::Added { .. }));
        assert_eq!(t.route(&addr(1), now), Some(1));
        t.forget(0);
        assert_eq!(t.route(&addr(1), now), Some(1), "peer 0 no longer owns it");
    }
}
