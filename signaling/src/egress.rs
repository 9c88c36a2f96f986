//! How the edge reaches the outside world: the hospital's egress proxy.
//!
//! The only outbound HTTPS request the edge makes is the EHR's JWKS
//! (`jwks.rs`). Hospitals usually let servers out only through an HTTP
//! proxy, named the way every other tool on the host reads it:
//! `HTTPS_PROXY` (or `https_proxy`) and `NO_PROXY` (or `no_proxy`). They are
//! read once at start ([`ProxySettings::from_env`]) and then passed around as
//! a value, so tests give their own and never touch the process environment.
//!
//! Through the proxy the edge opens an HTTP `CONNECT` tunnel and speaks TLS
//! to the EHR inside it, so the proxy sees the host name, not the request.
//! A user and password in the proxy URL become a `Proxy-Authorization:
//! Basic` header; they never appear in a log line, an error or `Debug`.

use base64::Engine;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for a TCP connection (to the proxy or, direct, the EHR).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the proxy's answer to `CONNECT`.
pub const TUNNEL_TIMEOUT: Duration = Duration::from_secs(5);
/// A proxy's answer to `CONNECT` (status line and headers) longer than this
/// is refused: it is a few hundred bytes from any real proxy.
pub const MAX_TUNNEL_ANSWER: usize = 8 * 1024;

/// An HTTP proxy that tunnels with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct EgressProxy {
    host: String,
    port: u16,
    /// `Basic …` from the URL's user and password, if it had them.
    authorization: Option<String>,
}

impl EgressProxy {
    /// `http://[USER[:PASSWORD]@]HOST[:PORT][/]`; without a scheme, `http://`
    /// is assumed (as curl does); the port defaults to 80. A user and
    /// password are percent-decoded. An error never quotes the value (it
    /// may hold the password).
    pub fn parse(value: &str) -> Result<EgressProxy, String> {
        let value = value.trim();
        let rest = match value.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(
                    "an https:// proxy (TLS to the proxy itself) is not supported; give the \
                     proxy as http://HOST:PORT (the tunnel inside it is still TLS to the EHR)"
                        .into(),
                );
            }
            Some(_) => return Err("only http:// proxies are supported (no SOCKS)".into()),
            None => value,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err("must be http://HOST:PORT, without a path".into());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let authority: hyper::http::uri::Authority = hostport
            .parse()
            .map_err(|_| "is not http://HOST:PORT".to_string())?;
        let host = authority.host().trim_matches(['[', ']']).to_string();
        if host.is_empty() {
            return Err("has no host".into());
        }
        if authority.port_u16().is_none() && authority.as_str().len() != authority.host().len() {
            return Err("the port is not a number from 1 to 65535".into());
        }
        let authorization = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                let credentials = format!(
                    "{}:{}",
                    percent_decode(user).ok_or("the user is not valid percent-encoded UTF-8")?,
                    percent_decode(password)
                        .ok_or("the password is not valid percent-encoded UTF-8")?
                );
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(credentials)
                ))
            }
        };
        Ok(EgressProxy {
            host,
            port: authority.port_u16().unwrap_or(80),
            authorization,
        })
    }

    /// Whether the URL carried a user (and so a `Proxy-Authorization`).
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }
}

/// `proxy.example:3128`: never the user or password.
impl std::fmt::Display for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("address", &self.to_string())
            .field("credentials", &self.authorization.is_some())
            .finish()
    }
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    /// `*`: nothing goes through the proxy.
    All,
    /// `example.org`, `.example.org` or `*.example.org`: that host and every
    /// host under it; with `:PORT` only on that port.
    Domain(String, Option<u16>),
    /// An address or a CIDR block (`10.0.0.0/8`, `fd00::/8`).
    Network(IpAddr, u8),
}

/// The `NO_PROXY` list: hosts reached directly, comma-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<Bypass>);

impl NoProxy {
    /// Entries that do not parse (a CIDR with a bad prefix) are ignored,
    /// as curl and Go do: `NO_PROXY` is shared with other tools.
    pub fn parse(value: &str) -> NoProxy {
        let mut entries = Vec::new();
        for entry in value.split([',', ' ']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                entries.push(Bypass::All);
                continue;
            }
            if let Some((ip, bits)) = entry.split_once('/') {
                let ip = ip.trim_matches(['[', ']']).parse::<IpAddr>();
                let max = if matches!(ip, Ok(IpAddr::V4(_))) {
                    32
                } else {
                    128
                };
                match (ip, bits.parse::<u8>()) {
                    (Ok(ip), Ok(bits)) if bits <= max => entries.push(Bypass::Network(ip, bits)),
                    _ => {}
                }
                continue;
            }
            if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
                entries.push(Bypass::Network(ip, if ip.is_ipv4() { 32 } else { 128 }));
                continue;
            }
            let (name, port) = match entry.rsplit_once(':') {
                Some((name, port)) => match port.parse::<u16>() {
                    Ok(port) => (name, Some(port)),
                    Err(_) => continue,
                },
                None => (entry, None),
            };
            if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
                // An address with a port: the port is not honoured for
                // addresses (curl does not either); the address is.
                entries.push(Bypass::Network(ip, if ip.is_ipv4() { 32 } else { 128 }));
                continue;
            }
            let name = name.trim_start_matches("*.").trim_start_matches('.');
            if !name.is_empty() {
                entries.push(Bypass::Domain(name.to_ascii_lowercase(), port));
            }
        }
        NoProxy(entries)
    }

    /// Whether `host` (a name or an address, brackets allowed) on `port`
    /// is reached directly.
    pub fn bypasses(&self, host: &str, port: u16) -> bool {
        let host = host.trim_matches(['[', ']']).trim_end_matches('.');
        let ip = host.parse::<IpAddr>().ok();
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|entry| match entry {
            Bypass::All => true,
            Bypass::Domain(name, only_port) => {
                only_port.is_none_or(|p| p == port)
                    && (host == *name
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|head| head.ends_with('.')))
            }
            Bypass::Network(net, bits) => ip.is_some_and(|ip| in_network(ip, *net, *bits)),
        })
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Which proxy, if any, an outbound HTTPS connection takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    pub https: Option<EgressProxy>,
    pub no_proxy: NoProxy,
}

impl ProxySettings {
    /// From `HTTPS_PROXY` (else `https_proxy`) and `NO_PROXY` (else
    /// `no_proxy`); an empty value counts as unset. Call once, at start.
    pub fn from_env() -> Result<ProxySettings, String> {
        let var = |upper: &str, lower: &str| {
            [upper, lower]
                .into_iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
        };
        ProxySettings::from_values(
            var("HTTPS_PROXY", "https_proxy").as_deref(),
            var("NO_PROXY", "no_proxy").as_deref(),
        )
    }

    /// [`ProxySettings::from_env`] for given values.
    pub fn from_values(
        https_proxy: Option<&str>,
        no_proxy: Option<&str>,
    ) -> Result<ProxySettings, String> {
        Ok(ProxySettings {
            https: https_proxy
                .map(EgressProxy::parse)
                .transpose()
                .map_err(|e| format!("HTTPS_PROXY: {e}"))?,
            no_proxy: no_proxy.map(NoProxy::parse).unwrap_or_default(),
        })
    }

    /// The proxy for an `https://` connection to `host:port`, unless
    /// `NO_PROXY` names it.
    pub fn for_https(&self, host: &str, port: u16) -> Option<&EgressProxy> {
        self.https
            .as_ref()
            .filter(|_| !self.no_proxy.bypasses(host, port))
    }
}

/// A TCP connection to `host:port`, bounded by [`CONNECT_TIMEOUT`].
pub async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!(
            "connect: no connection within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// A tunnel through `proxy` to `host:port`: the returned stream carries
/// bytes to and from `host` (the caller speaks TLS in it). The proxy, not
/// this host, resolves `host`.
pub async fn tunnel(proxy: &EgressProxy, host: &str, port: u16) -> Result<TcpStream, String> {
    let mut tcp = connect(&proxy.host, proxy.port)
        .await
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    let host = host.trim_matches(['[', ']']);
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let answer = tokio::time::timeout(TUNNEL_TIMEOUT, async {
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending CONNECT: {e}"))?;
        read_answer_head(&mut tcp).await
    })
    .await
    .map_err(|_| {
        format!(
            "proxy {proxy}: no answer to CONNECT {target} within {} s",
            TUNNEL_TIMEOUT.as_secs()
        )
    })?
    .map_err(|e| format!("proxy {proxy}: {e}"))?;
    match tunnel_status(&answer) {
        Some(status) if (200..300).contains(&status) => Ok(tcp),
        Some(407) => Err(format!(
            "proxy {proxy} refused CONNECT {target}: HTTP 407 (proxy authentication required; {})",
            if proxy.has_credentials() {
                "the user or password in HTTPS_PROXY was not accepted"
            } else {
                "give http://USER:PASSWORD@HOST:PORT in HTTPS_PROXY"
            }
        )),
        Some(status) => Err(format!(
            "proxy {proxy} refused CONNECT {target}: HTTP {status}"
        )),
        None => Err(format!("proxy {proxy}: the answer to CONNECT is not HTTP")),
    }
}

/// The proxy's answer up to and including the blank line, at most
/// [`MAX_TUNNEL_ANSWER`] bytes. TLS has the client speak first, so a proxy
/// that sends anything after the blank line is broken: refused, rather
/// than passing its bytes to TLS.
async fn read_answer_head(tcp: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer to CONNECT: {e}"))?;
        if n == 0 {
            return Err("closed the connection instead of answering CONNECT".into());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if end + 4 != head.len() {
                return Err("sent data after its answer to CONNECT".into());
            }
            return Ok(head);
        }
        if head.len() > MAX_TUNNEL_ANSWER {
            return Err(format!(
                "answer to CONNECT longer than {} KiB",
                MAX_TUNNEL_ANSWER / 1024
            ));
        }
    }
}

/// The status code of `HTTP/1.x NNN …`.
fn tunnel_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// `%XX` decoding of a URL's user or password.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_with_and_without_scheme_port_and_credentials() {
        let p = EgressProxy::parse("http://proxy.zorg.example:3128").unwrap();
        assert_eq!(p.to_string(), "proxy.zorg.example:3128");
        assert!(!p.has_credentials());
        assert_eq!(
            EgressProxy::parse("proxy.zorg.example:3128/").unwrap(),
            p,
            "no scheme means http://, a trailing slash is fine"
        );
        assert_eq!(
            EgressProxy::parse("http://proxy").unwrap().to_string(),
            "proxy:80"
        );
        assert_eq!(
            EgressProxy::parse("http://[fd00::1]:8080")
                .unwrap()
                .to_string(),
            "[fd00::1]:8080"
        );
        let p = EgressProxy::parse("http://svc%40zorg:p%3Ass%40w0rd@10.0.0.5:8080").unwrap();
        assert_eq!(
            p.authorization.as_deref(),
            Some(
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("svc@zorg:p:ss@w0rd")
                )
                .as_str()
            )
        );
    }

    #[test]
    fn proxy_credentials_never_show_in_display_debug_or_errors() {
        let p = EgressProxy::parse("http://user:hunter2secret@proxy:3128").unwrap();
        for shown in [p.to_string(), format!("{p:?}")] {
            assert!(!shown.contains("hunter2secret"), "{shown}");
            assert!(!shown.contains("user"), "{shown}");
        }
        for bad in [
            "https://user:hunter2secret@proxy:3128",
            "socks5://user:hunter2secret@proxy:1080",
            "http://user:hunter2secret@proxy:3128/path",
            "http://user:hunter2secret@proxy:notaport",
            "http://user:hunter2secret%zz@proxy:3128",
        ] {
            let e = ProxySettings::from_values(Some(bad), None).unwrap_err();
            assert!(e.starts_with("HTTPS_PROXY: "), "{e}");
            assert!(!e.contains("hunter2secret"), "{bad}: {e}");
        }
    }

    #[test]
    fn no_proxy_matches_names_suffixes_ports_addresses_and_networks() {
        let n =
            NoProxy::parse(".zorg.example, ehr.local:8443 ,10.0.0.0/8,fd00::/8,192.0.2.7,bad/99");
        assert!(n.bypasses("zorg.example", 443));
        assert!(n.bypasses("EHR.Zorg.Example", 443), "case-insensitive");
        assert!(n.bypasses("ehr.zorg.example.", 443), "trailing dot");
        assert!(
            !n.bypasses("notzorg.example", 443),
            "suffix only on a label boundary"
        );
        assert!(n.bypasses("ehr.local", 8443));
        assert!(!n.bypasses("ehr.local", 443), "that port only");
        assert!(n.bypasses("10.1.2.3", 443));
        assert!(!n.bypasses("11.1.2.3", 443));
        assert!(n.bypasses("[fd00::5]", 443));
        assert!(!n.bypasses("fe80::1", 443));
        assert!(n.bypasses("192.0.2.7", 443));
        assert!(!n.bypasses("192.0.2.8", 443));
        assert!(NoProxy::parse("*").bypasses("anything.example", 443));
        assert!(!NoProxy::parse("").bypasses("anything.example", 443));
        assert!(NoProxy::parse("*.zorg.example").bypasses("a.zorg.example", 443));
    }

    #[test]
    fn settings_choose_the_proxy_unless_no_proxy_names_the_host() {
        let s = ProxySettings::from_values(Some("http://proxy:3128"), Some("localhost,127.0.0.1"))
            .unwrap();
        assert!(s.for_https("ehr.zorg.example", 443).is_some());
        assert!(s.for_https("127.0.0.1", 443).is_none());
        assert!(s.for_https("localhost", 8443).is_none());
        let none = ProxySettings::from_values(None, Some("localhost")).unwrap();
        assert!(none.for_https("ehr.zorg.example", 443).is_none());
    }

    #[test]
    fn tunnel_status_reads_the_status_line_only() {
        assert_eq!(
            tunnel_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(tunnel_status(b"HTTP/1.0 407 Auth\r\n\r\n"), Some(407));
        assert_eq!(tunnel_status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(tunnel_status(b"HTTP/1.1 2000 x\r\n\r\n"), None);
    }
}
