//! TURN for networks that block direct media (issue 12): the edge hands
//! every participant short-lived credentials for the configured coturn
//! servers, in coturn's REST scheme (`use-auth-secret` /
//! `static-auth-secret`):
//!
//! - username = `EXPIRY:PARTICIPANT-ID` (seconds since the epoch; the
//!   participant id is random per connection: no name, no `sub`);
//! - credential = base64(HMAC-SHA1(secret, username)).
//!
//! The expiry is `min(now + --turn-ttl, token exp)`: a credential never
//! outlives the join token it was handed out for. The secret stays in this
//! process: its `Debug` is redacted and it is never serialized.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default credential lifetime (`--turn-ttl`), capped by the token's `exp`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest `--turn-ttl`: the token's `exp` caps it anyway.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest accepted static-auth-secret.
pub const MIN_SECRET_BYTES: usize = 16;

/// One entry of `RTCConfiguration.iceServers`, as the browser gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

/// A validated `--turn-uri`: `turn:HOST:PORT?transport=udp|tcp` or
/// `turns:HOST:PORT?transport=tcp`, kept in its canonical text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUri(String);

impl TurnUri {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parse and check a `--turn-uri` (RFC 7065 with an explicit port and
/// transport). Anything else is refused with the reason.
pub fn parse_uri(s: &str) -> Result<TurnUri, String> {
    const EXAMPLES: &str = "expected turn:HOST:PORT?transport=udp, turn:HOST:PORT?transport=tcp \
         or turns:HOST:PORT?transport=tcp";
    let (scheme, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: {EXAMPLES}"))?;
    let secure = match scheme {
        "turn" => false,
        "turns" => true,
        _ => return Err(format!("{s:?}: scheme must be turn or turns; {EXAMPLES}")),
    };
    let (hostport, query) = rest
        .split_once('?')
        .ok_or_else(|| format!("{s:?}: no ?transport=; {EXAMPLES}"))?;
    let transport = query
        .strip_prefix("transport=")
        .ok_or_else(|| format!("{s:?}: the only parameter is transport=udp|tcp"))?;
    match (secure, transport) {
        (false, "udp" | "tcp") | (true, "tcp") => {}
        (true, _) => return Err(format!("{s:?}: turns: (TLS) needs transport=tcp")),
        (false, _) => return Err(format!("{s:?}: transport must be udp or tcp")),
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{s:?}: an IPv6 host needs [ADDR]:PORT"))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = hostport.rsplit_once(':').ok_or_else(|| {
            format!("{s:?}: the port is missing (3478 for turn:, 5349 or 443 for turns:)")
        })?;
        if !valid_host(host) {
            return Err(format!(
                "{s:?}: {host:?} is not a host name or IPv4 address"
            ));
        }
        (host.to_string(), port)
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: port {port:?} is not 1–65535"))?;
    Ok(TurnUri(format!(
        "{scheme}:{host}:{port}?transport={transport}"
    )))
}

/// A DNS name (letters, digits, `-`, dots between labels) or an IPv4
/// address.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// coturn's `static-auth-secret`. `Debug` never shows it.
#[derive(Clone)]
pub struct TurnSecret(Vec<u8>);

impl TurnSecret {
    pub fn new(secret: &str) -> Result<TurnSecret, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the TURN secret must be at least {MIN_SECRET_BYTES} bytes (got {}); \
                 generate one with `openssl rand -hex 32`",
                secret.len()
            ));
        }
        Ok(TurnSecret(secret.as_bytes().to_vec()))
    }
}

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret([redacted])")
    }
}

/// What the edge was configured with (`--turn-uri`, `--turn-secret-file`,
/// `--turn-ttl`, `--turn-force-relay`).
#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub uris: Vec<TurnUri>,
    pub secret: TurnSecret,
    pub ttl: Duration,
    /// Tell every browser to use relayed candidates only
    /// (`iceTransportPolicy: 'relay'`).
    pub force_relay: bool,
}

impl TurnConfig {
    /// The credential expiry for a token expiring at `token_exp`:
    /// `min(now + ttl, token_exp)`.
    pub fn expiry(&self, now_unix: u64, token_exp: u64) -> u64 {
        now_unix.saturating_add(self.ttl.as_secs()).min(token_exp)
    }

    /// The `iceServers` entry for `participant` (its random id).
    pub fn ice_servers(&self, participant: &str, now_unix: u64, token_exp: u64) -> Vec<IceServer> {
        let username = format!("{}:{participant}", self.expiry(now_unix, token_exp));
        let credential = credential(&self.secret, &username);
        vec![IceServer {
            urls: self.uris.iter().map(|u| u.0.clone()).collect(),
            username,
            credential,
        }]
    }
}

/// base64(HMAC-SHA1(secret, username)), as coturn checks it.
pub fn credential(secret: &TurnSecret, username: &str) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&secret.0) else {
        return String::new();
    };
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ttl: u64) -> TurnConfig {
        TurnConfig {
            uris: vec![
                parse_uri("turn:turn.example.nl:3478?transport=udp").unwrap(),
                parse_uri("turns:turn.example.nl:443?transport=tcp").unwrap(),
            ],
            secret: TurnSecret::new("coturn-static-auth-secret-for-tests-0123456789").unwrap(),
            ttl: Duration::from_secs(ttl),
            force_relay: false,
        }
    }

    #[test]
    fn credential_matches_an_independent_computation() {
        // Computed independently with Python:
        //   base64.b64encode(hmac.new(b'coturn-static-auth-secret-for-tests-0123456789',
        //                             b'1767225600:p-4f2a9c', hashlib.sha1).digest())
        //   == b'fw1oYmVO3DDFw1XO7WQ89yV9jeM='
        let c = config(3600);
        assert_eq!(
            credential(&c.secret, "1767225600:p-4f2a9c"),
            "fw1oYmVO3DDFw1XO7WQ89yV9jeM="
        );
        let servers = c.ice_servers("p-4f2a9c", 1767225600 - 3600, u64::MAX);
        assert_eq!(servers.len(), 1);
        assert_eq!(servers[0].username, "1767225600:p-4f2a9c");
        assert_eq!(servers[0].credential, "fw1oYmVO3DDFw1XO7WQ89yV9jeM=");
        assert_eq!(
            servers[0].urls,
            [
                "turn:turn.example.nl:3478?transport=udp",
                "turns:turn.example.nl:443?transport=tcp"
            ]
        );
    }

    #[test]
    fn expiry_is_capped_by_the_token() {
        let c = config(3600);
        assert_eq!(
            c.expiry(1_000_000, 1_000_600),
            1_000_600,
            "token expires first"
        );
        assert_eq!(c.expiry(1_000_000, 2_000_000), 1_003_600, "ttl ends first");
        let s = c.ice_servers("abc", 1_000_000, 1_000_600);
        assert!(s[0].username.starts_with("1000600:"), "{}", s[0].username);
        // An expired token (within the leeway) gets an already expired credential.
        assert_eq!(c.expiry(1_000_000, 999_990), 999_990);
    }

    #[test]
    fn the_secret_is_not_in_debug_or_json() {
        let c = config(60);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("coturn-static-auth-secret"), "{dbg}");
        let json = serde_json::to_string(&c.ice_servers("x", 0, 10)).unwrap();
        assert!(!json.contains("coturn-static-auth-secret"), "{json}");
    }

    #[test]
    fn uris_are_validated() {
        for ok in [
            "turn:turn.example.nl:3478?transport=udp",
            "turn:turn.example.nl:3478?transport=tcp",
            "turns:turn.example.nl:5349?transport=tcp",
            "turns:127.0.0.1:443?transport=tcp",
            "turn:[::1]:3478?transport=udp",
        ] {
            assert_eq!(parse_uri(ok).map(|u| u.0), Ok(ok.to_string()));
        }
        for bad in [
            "stun:turn.example.nl:3478",
            "http://turn.example.nl:3478?transport=udp",
            "turn:turn.example.nl?transport=udp",
            "turn:turn.example.nl:0?transport=udp",
            "turn:turn.example.nl:70000?transport=udp",
            "turn:turn.example.nl:3478",
            "turn:turn.example.nl:3478?transport=sctp",
            "turns:turn.example.nl:5349?transport=udp",
            "turn::3478?transport=udp",
            "turn:bad_host!:3478?transport=udp",
            "turn:user@host:3478?transport=udp",
            "turn:host:3478?transport=udp&x=1",
            "turn:[nothex]:3478?transport=udp",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TurnSecret::new("short").is_err());
        assert!(TurnSecret::new("0123456789abcdef").is_ok());
    }
}
