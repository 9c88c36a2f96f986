//! Whose address a request is: the TCP peer, or — when the peer is a
//! trusted reverse proxy (`--trusted-proxy`) — the client that proxy names
//! in `X-Forwarded-For`. The audit log's `access_point.ip` and every
//! per-client limit (connections, failed joins, link checks, the API) use
//! this address.
//!
//! A trusted proxy is an address or a CIDR range (`10.244.0.0/16`,
//! `fd00::/8`): behind ingress-nginx the controller pods' addresses change,
//! their pod network does not. IPv4-mapped IPv6 peers (`::ffff:10.1.2.3`,
//! what a dual-stack listener reports) count as their IPv4 address.
//!
//! `X-Forwarded-For` is walked from the right: each proxy appends the
//! address it received the request from, so the entries a trusted proxy
//! wrote are at the right end, and everything left of the first address
//! that is not a trusted proxy was written by the client or by someone we
//! do not trust. That rightmost untrusted address is the client; a client
//! that sends its own `X-Forwarded-For` only adds entries on the left,
//! which are never read.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The broadest IPv4 range accepted as trusted (10.0.0.0/8 is the largest
/// private block).
pub const MIN_PREFIX_V4: u8 = 8;
/// The broadest IPv6 range accepted as trusted (fc00::/7: every unique
/// local address).
pub const MIN_PREFIX_V6: u8 = 7;
/// Bytes of `X-Forwarded-For` read, from the right end; an entry cut by
/// this window is dropped, never parsed in part.
pub const MAX_FORWARDED_FOR_BYTES: usize = 1024;
/// Entries of `X-Forwarded-For` read, from the right end.
pub const MAX_FORWARDED_HOPS: usize = 16;

/// One `--trusted-proxy`: an address range (a single address is a /32 or
/// /128). Parse with [`FromStr`] (see [`parse_trusted_proxy`] for what is
/// refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrustedProxy {
    /// The network address (host bits zero); IPv4 for IPv4-mapped input.
    net: IpAddr,
    prefix: u8,
}

impl TrustedProxy {
    /// Whether `ip` (IPv4-mapped IPv6 taken as IPv4) is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_v4(self.prefix);
                ip.to_bits() & mask == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_v6(self.prefix);
                ip.to_bits() & mask == net.to_bits()
            }
            _ => false,
        }
    }

    pub fn network(&self) -> IpAddr {
        self.net
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.net.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.net)
        } else {
            write!(f, "{}/{}", self.net, self.prefix)
        }
    }
}

impl FromStr for TrustedProxy {
    type Err = String;

    fn from_str(s: &str) -> Result<TrustedProxy, String> {
        parse_trusted_proxy(s)
    }
}

/// Parse one `--trusted-proxy` entry: `10.0.0.7`, `10.244.0.0/16`,
/// `fd00::/8`, `::ffff:10.0.0.0/104` (taken as `10.0.0.0/8`). Refused, with
/// the entry named: anything else, a prefix with host bits set
/// (`10.0.0.7/8`: which was meant?), and ranges broader than /8 (IPv4) or
/// /7 (IPv6) — `0.0.0.0/0` would let any client on the internet choose the
/// address the audit log records.
pub fn parse_trusted_proxy(s: &str) -> Result<TrustedProxy, String> {
    let entry = s.trim();
    if entry.is_empty() {
        return Err("empty trusted proxy entry (a stray comma?)".into());
    }
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!(
            "trusted proxy {entry:?} is neither an IP address nor a CIDR range \
             (e.g. 10.0.0.7, 10.244.0.0/16, fd00::/8)"
        )
    })?;
    let full: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => full,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= full && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!(
                    "trusted proxy {entry:?}: the prefix length must be a number from 0 to {full}"
                )
            })?,
    };
    // ::ffff:a.b.c.d/N (N ≥ 96) is an IPv4 range, and is matched as one.
    let (net, prefix) = match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix - 96),
            _ => (addr, prefix),
        },
        IpAddr::V4(_) => (addr, prefix),
    };
    let masked = match net {
        IpAddr::V4(v4) => IpAddr::V4((v4.to_bits() & mask_v4(prefix)).into()),
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & mask_v6(prefix)).into()),
    };
    let min = if net.is_ipv4() {
        MIN_PREFIX_V4
    } else {
        MIN_PREFIX_V6
    };
    if prefix < min {
        let what = if prefix == 0 {
            "that is every address".to_string()
        } else {
            format!("broader than /{min}, the broadest range accepted (10.0.0.0/8, fc00::/7)")
        };
        return Err(format!(
            "refusing to trust {entry:?}: {what}. A peer in a trusted range may put any \
             address into X-Forwarded-For and be believed, so from there any client could \
             choose the address the audit log records and the per-client limits count. \
             List the reverse proxies' own addresses or their network (e.g. the cluster's \
             pod CIDR)"
        ));
    }
    if masked != net {
        return Err(format!(
            "trusted proxy {entry:?} has host bits set: write the range as {masked}/{prefix}, \
             or {addr} alone to trust one address"
        ));
    }
    Ok(TrustedProxy { net, prefix })
}

/// Whether `ip` is in one of the `trusted` ranges.
pub fn is_trusted(trusted: &[TrustedProxy], ip: IpAddr) -> bool {
    trusted.iter().any(|t| t.contains(ip))
}

/// The client's address. Behind a reverse proxy the TCP peer is the proxy;
/// only when it is in one of `trusted` is `X-Forwarded-For` read, from the
/// right, skipping trusted proxies: the first address that is not one is
/// the client (the entries left of it can be forged by anyone). An entry
/// that does not parse ends the walk: the last trusted hop read is the
/// answer (never an address left of it). At most
/// [`MAX_FORWARDED_HOPS`] entries within the rightmost
/// [`MAX_FORWARDED_FOR_BYTES`] are read. IPv4-mapped addresses are
/// returned as IPv4.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[TrustedProxy],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if !is_trusted(trusted, peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let mut client = peer;
    for hop in rightmost(header).rsplit(',').take(MAX_FORWARDED_HOPS) {
        match parse_hop(hop) {
            Some(ip) if is_trusted(trusted, ip) => client = ip,
            Some(ip) => return Some(ip),
            None => break,
        }
    }
    Some(client)
}

/// The whole entries within the last [`MAX_FORWARDED_FOR_BYTES`] of
/// `header` (an entry cut by the window is dropped).
fn rightmost(header: &str) -> &str {
    if header.len() <= MAX_FORWARDED_FOR_BYTES {
        return header;
    }
    let mut start = header.len() - MAX_FORWARDED_FOR_BYTES;
    while !header.is_char_boundary(start) {
        start += 1;
    }
    let window = &header[start..];
    match window.find(',') {
        Some(i) => &window[i + 1..],
        None => "",
    }
}

/// One entry: an address, also with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) or in brackets, as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// Every `X-Forwarded-For` header line of the request, joined in order
/// with commas (a proxy such as HAProxy adds its own line instead of
/// extending the client's, and the first line alone would then be the
/// client's own). A line that is not visible ASCII becomes an entry that
/// does not parse. Only about the last [`MAX_FORWARDED_FOR_BYTES`] are
/// kept. `None` without the header.
pub fn forwarded_for() -> impl warp::Filter<Extract = (Option<String>,), Error = Infallible> + Clone
{
    use warp::Filter;
    warp::header::headers_cloned().map(|headers: warp::http::HeaderMap| {
        join_forwarded_for(headers.get_all("x-forwarded-for").iter())
    })
}

fn join_forwarded_for<'a>(
    lines: impl DoubleEndedIterator<Item = &'a warp::http::HeaderValue>,
) -> Option<String> {
    // From the right, until the window is full: lines further left are
    // never read.
    let mut kept: Vec<std::borrow::Cow<'a, str>> = Vec::new();
    let mut len = 0;
    for line in lines.rev() {
        if len > MAX_FORWARDED_FOR_BYTES {
            break;
        }
        // Byte by byte, not the whole line or nothing: a client's stray
        // non-ASCII byte spoils only its own entry, never the address a
        // trusted proxy appended to the same line.
        let text = String::from_utf8_lossy(line.as_bytes());
        len += text.len() + 1;
        kept.push(text);
    }
    if kept.is_empty() {
        return None;
    }
    kept.reverse();
    Some(kept.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ranges_and_single_addresses_parse_and_match() {
        let t: TrustedProxy = "10.0.0.0/8".parse().unwrap();
        assert!(t.contains(ip("10.0.0.0")));
        assert!(t.contains(ip("10.255.255.255")));
        assert!(!t.contains(ip("11.0.0.0")));
        assert!(!t.contains(ip("9.255.255.255")));
        assert_eq!(t.to_string(), "10.0.0.0/8");

        let t: TrustedProxy = "10.244.0.0/16".parse().unwrap();
        assert!(t.contains(ip("10.244.3.7")));
        assert!(!t.contains(ip("10.245.0.1")));

        let one: TrustedProxy = " 192.0.2.7 ".parse().unwrap();
        assert_eq!(one.prefix_len(), 32);
        assert_eq!(one.to_string(), "192.0.2.7");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.6")));
        assert!(!one.contains(ip("192.0.2.8")));

        let slash32: TrustedProxy = "192.0.2.7/32".parse().unwrap();
        assert_eq!(slash32, one);

        let v6: TrustedProxy = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12:3456::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("2001:db8::1")));
        let ula: TrustedProxy = "fc00::/7".parse().unwrap();
        assert!(ula.contains(ip("fdff::1")) && ula.contains(ip("fc00::1")));
        let v6one: TrustedProxy = "2001:db8::5".parse().unwrap();
        assert_eq!(v6one.prefix_len(), 128);
        assert!(v6one.contains(ip("2001:db8::5")));
        assert!(!v6one.contains(ip("2001:db8::4")));

        // Families never match each other (10.0.0.0/8 is not ::a00:0/104).
        assert!(!t.contains(ip("::a00:1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let t: TrustedProxy = "10.0.0.0/8".parse().unwrap();
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("::ffff:11.1.2.3")));
        let one: TrustedProxy = "10.1.2.3".parse().unwrap();
        assert!(one.contains(ip("::ffff:10.1.2.3")));
        // A mapped range is an IPv4 range.
        let mapped: TrustedProxy = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, t);
        assert!(mapped.contains(ip("10.9.9.9")));
        let mapped_one: TrustedProxy = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(mapped_one, one);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_entry() {
        for bad in [
            "",
            "  ",
            "proxy.internal",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "fd00::/129",
            "10.0.0.256",
            "10.0.0.0/ 8",
        ] {
            let e = parse_trusted_proxy(bad).expect_err(bad);
            if !bad.trim().is_empty() {
                assert!(e.contains(&format!("{:?}", bad.trim())), "{bad}: {e}");
            }
        }
        let e = parse_trusted_proxy("10.0.0.7/8").unwrap_err();
        assert!(e.contains("host bits") && e.contains("10.0.0.0/8"), "{e}");
        assert!(parse_trusted_proxy("fd00::1/8").is_err());
    }

    #[test]
    fn ranges_that_trust_the_internet_are_refused() {
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "::ffff:0.0.0.0/96",
            "0.0.0.0/1",
            "0.0.0.0/7",
            "::/6",
            "2000::/3",
        ] {
            let e = parse_trusted_proxy(bad).expect_err(bad);
            assert!(e.starts_with("refusing to trust"), "{bad}: {e}");
            assert!(e.contains("X-Forwarded-For"), "{e}");
        }
        assert!(
            parse_trusted_proxy("0.0.0.0/0")
                .unwrap_err()
                .contains("every address")
        );
        // The broadest accepted.
        assert!(parse_trusted_proxy("10.0.0.0/8").is_ok());
        assert!(parse_trusted_proxy("fc00::/7").is_ok());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let t = trusted(&["10.0.0.2"]);
        let proxy = ip("10.0.0.2");
        let client = ip("198.51.100.9");
        assert_eq!(
            client_ip(Some(proxy), Some("198.51.100.9"), &t),
            Some(client)
        );
        assert_eq!(
            client_ip(Some(proxy), Some("6.6.6.6, 198.51.100.9, 10.0.0.2"), &t),
            Some(client),
            "rightmost untrusted hop; forged left entries ignored"
        );
        assert_eq!(client_ip(Some(proxy), None, &t), Some(proxy));
        assert_eq!(client_ip(Some(proxy), Some("garbage"), &t), Some(proxy));
        assert_eq!(client_ip(None, Some("1.2.3.4"), &t), None);
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let t = trusted(&["10.244.0.0/16"]);
        let peer = ip("203.0.113.50");
        for header in [
            None,
            Some("10.244.0.9"),
            Some("6.6.6.6"),
            Some("6.6.6.6, 10.244.1.1"),
        ] {
            assert_eq!(client_ip(Some(peer), header, &t), Some(peer), "{header:?}");
        }
        // Nothing trusted: the header means nothing.
        assert_eq!(
            client_ip(Some(ip("10.244.0.9")), Some("6.6.6.6"), &[]),
            Some(ip("10.244.0.9"))
        );
    }

    #[test]
    fn spoofed_left_entries_through_a_trusted_range_are_ignored() {
        let t = trusted(&["10.244.0.0/16"]);
        let ingress = ip("10.244.3.17");
        // The client sent "X-Forwarded-For: 192.0.2.1, 10.244.9.9" itself;
        // ingress-nginx appended the address it saw.
        assert_eq!(
            client_ip(
                Some(ingress),
                Some("192.0.2.1, 10.244.9.9, 203.0.113.5"),
                &t
            ),
            Some(ip("203.0.113.5"))
        );
        // Only trusted entries: the leftmost of them (a pod behind the
        // ingress), not the peer.
        assert_eq!(
            client_ip(Some(ingress), Some("10.244.0.4"), &t),
            Some(ip("10.244.0.4"))
        );
        // Garbage right of the client: the walk stops at the last trusted
        // hop and never reads the forgeable entries left of it.
        assert_eq!(
            client_ip(Some(ingress), Some("192.0.2.1, unknown, 10.244.0.4"), &t),
            Some(ip("10.244.0.4"))
        );
        assert_eq!(
            client_ip(Some(ingress), Some("192.0.2.1, "), &t),
            Some(ingress)
        );
        assert_eq!(client_ip(Some(ingress), Some(""), &t), Some(ingress));
    }

    #[test]
    fn a_chain_of_two_trusted_proxies_is_walked() {
        // Browser -> hospital load balancer (192.0.2.10) -> ingress pod
        // (10.244.3.17) -> edge.
        let t = trusted(&["10.244.0.0/16", "192.0.2.10"]);
        assert_eq!(
            client_ip(
                Some(ip("10.244.3.17")),
                Some("6.6.6.6, 203.0.113.5, 192.0.2.10"),
                &t
            ),
            Some(ip("203.0.113.5"))
        );
        // Without the outer proxy trusted, the outer proxy is the client.
        let only_ingress = trusted(&["10.244.0.0/16"]);
        assert_eq!(
            client_ip(
                Some(ip("10.244.3.17")),
                Some("6.6.6.6, 203.0.113.5, 192.0.2.10"),
                &only_ingress
            ),
            Some(ip("192.0.2.10"))
        );
    }

    #[test]
    fn mapped_peers_and_entries_with_ports_or_brackets() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(Some(ip("::ffff:10.1.2.3")), Some("203.0.113.5"), &t),
            Some(ip("203.0.113.5"))
        );
        // An untrusted mapped peer is reported as IPv4.
        assert_eq!(
            client_ip(Some(ip("::ffff:203.0.113.5")), Some("1.1.1.1"), &t),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(
                Some(ip("10.0.0.1")),
                Some("::ffff:10.0.0.9, 203.0.113.5:4711"),
                &t
            ),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some("[2001:db8::1]:443"), &t),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some("[2001:db8::2]"), &t),
            Some(ip("2001:db8::2"))
        );
    }

    #[test]
    fn oversized_headers_are_read_from_the_right_within_bounds() {
        let t = trusted(&["10.0.0.0/8"]);
        let proxy = Some(ip("10.0.0.1"));
        // Padding on the left (the client's own entries) does not hide the
        // client.
        let padded = format!("{}203.0.113.5", "198.51.100.1, ".repeat(10_000));
        assert!(padded.len() > 100_000);
        assert_eq!(client_ip(proxy, Some(&padded), &t), Some(ip("203.0.113.5")));
        // An entry cut by the byte window is not parsed in part: the cut
        // "8.51.100.199" must not become the client.
        let tail = format!(",{}10.0.0.7", " ".repeat(MAX_FORWARDED_FOR_BYTES - 12 - 9));
        let cut = format!("198.51.100.199{tail}");
        assert_eq!(
            &cut[cut.len() - MAX_FORWARDED_FOR_BYTES..][..12],
            "8.51.100.199"
        );
        assert_eq!(client_ip(proxy, Some(&cut), &t), Some(ip("10.0.0.7")));
        // One huge entry: unparsable, the peer.
        let huge = "1".repeat(100_000);
        assert_eq!(client_ip(proxy, Some(&huge), &t), proxy);
        // More trusted hops than are read: the walk stops at a trusted
        // address, never the client-written one beyond the bound.
        let many = format!(
            "6.6.6.6, {}",
            vec!["10.0.0.9"; MAX_FORWARDED_HOPS].join(", ")
        );
        assert_eq!(client_ip(proxy, Some(&many), &t), Some(ip("10.0.0.9")));
        let fits = format!(
            "6.6.6.6, {}",
            vec!["10.0.0.9"; MAX_FORWARDED_HOPS - 1].join(", ")
        );
        assert_eq!(client_ip(proxy, Some(&fits), &t), Some(ip("6.6.6.6")));
        // Non-ASCII in the window is skipped on a char boundary.
        let unicode = format!("{}é, 203.0.113.5", "é".repeat(2_000));
        assert_eq!(
            client_ip(proxy, Some(&unicode), &t),
            Some(ip("203.0.113.5"))
        );
    }

    #[test]
    fn every_header_line_counts_in_order() {
        use warp::http::HeaderValue;
        let lines = [
            HeaderValue::from_static("6.6.6.6"),
            HeaderValue::from_static("203.0.113.5"),
        ];
        assert_eq!(
            join_forwarded_for(lines.iter()).as_deref(),
            Some("6.6.6.6,203.0.113.5")
        );
        assert_eq!(join_forwarded_for(std::iter::empty()), None);
        let bad = [
            HeaderValue::from_static("6.6.6.6"),
            HeaderValue::from_bytes(b"\xff").unwrap(),
            HeaderValue::from_static("10.0.0.3"),
        ];
        let joined = join_forwarded_for(bad.iter()).unwrap();
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some(&joined), &t),
            Some(ip("10.0.0.3")),
            "a line that is not text stops the walk"
        );
        // A client's stray byte on the same line as the address a trusted
        // proxy appended (compute-full-forwarded-for) spoils only its own
        // entry: the appended address is still found.
        let mixed = [HeaderValue::from_bytes(b"\x80, 198.51.100.7").unwrap()];
        let joined = join_forwarded_for(mixed.iter()).unwrap();
        assert_eq!(
            client_ip(Some(ip("10.0.0.1")), Some(&joined), &t),
            Some(ip("198.51.100.7"))
        );
        // Lines far left of the window are not even kept.
        let many: Vec<HeaderValue> = (0..1000)
            .map(|i| HeaderValue::from_str(&format!("198.51.{}.{}", i / 250, i % 250)).unwrap())
            .collect();
        let joined = join_forwarded_for(many.iter()).unwrap();
        assert!(
            joined.len() < 2 * MAX_FORWARDED_FOR_BYTES,
            "{}",
            joined.len()
        );
        assert!(joined.ends_with("198.51.3.249"));
    }
}
