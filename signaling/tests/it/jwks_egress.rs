//! The EHR's JWKS behind a hospital's egress: an HTTPS JWKS server whose
//! certificate a private CA signed, and an HTTP `CONNECT` proxy, both in
//! the test on loopback. The proxy settings are passed in as values (as
//! `main` does after reading `HTTPS_PROXY` / `NO_PROXY` once), so no test
//! touches the process environment.

use crate::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use signaling::egress::ProxySettings;
use signaling::jwks::{FetchConfig, JwksSource};
use signaling::token::unix_now;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/keys/rsa-private.pem");
const KID: &str = "ehr-behind-proxy";
const PROXY_PASSWORD: &str = "pr0xy-pa55word";

/// A private CA (PEM, written to a file as an operator would) and a server
/// certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Ziekenhuis test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();

    let dir = std::env::temp_dir().join(format!(
        "spreekkamer-jwks-ca-{}-{}",
        std::process::id(),
        signaling::token::random_hex_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    Pki {
        ca_file,
        server: Arc::new(server),
    }
}

fn jwks_document() -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let mut jwk = serde_json::to_value(
        jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap(),
    )
    .unwrap();
    jwk["kid"] = json!(KID);
    json!({ "keys": [jwk] }).to_string()
}

fn ehr_token() -> String {
    let now = unix_now();
    let claims = json!({
        "iss": "spreekkamer", "aud": "spreekkamer", "exp": now + 600, "iat": now,
        "sub": "ehr-user-17", "role": "clinician", "consult": "ehr-consult-7",
        "name": "Dr. EHR",
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
    )
    .unwrap()
}

/// Read an HTTP head (up to the blank line).
async fn read_head(s: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// The EHR: serves the JWKS over TLS with the private CA's certificate;
/// counts the documents it handed out.
async fn jwks_server(pki: &Pki) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let counter = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA gives up here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if read_head(&mut tls).await.is_none() {
                    return;
                }
                let body = jwks_document();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, served)
}

/// How the in-test proxy answers `CONNECT`.
#[derive(Clone, Copy)]
enum ProxyMode {
    /// Open the tunnel (200) and relay bytes both ways.
    Tunnel,
    /// `407 Proxy Authentication Required`.
    RefuseAuth,
    /// An answer head that never ends.
    Flood,
}

/// An HTTP proxy that records the head of every request it got.
async fn proxy(mode: ProxyMode) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                log.lock().unwrap().push(head.clone());
                match mode {
                    ProxyMode::RefuseAuth => {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"zorg\"\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    }
                    ProxyMode::Flood => {
                        let _ = client.write_all(b"HTTP/1.1 200 OK\r\n").await;
                        let filler = format!("X-Filler: {}\r\n", "a".repeat(100));
                        for _ in 0..200 {
                            if client.write_all(filler.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    ProxyMode::Tunnel => {
                        let target = head
                            .strip_prefix("CONNECT ")
                            .and_then(|rest| rest.split(' ').next())
                            .unwrap_or_default()
                            .to_string();
                        let Ok(mut upstream) = TcpStream::connect(target).await else {
                            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                            return;
                        };
                        let _ = client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// An edge whose JWKS URL is the in-test EHR, reached with `fetch`.
async fn edge(jwks: SocketAddr, fetch: FetchConfig) -> TestServer {
    let mut cfg = config();
    cfg.jwks_url = Some(format!("https://{jwks}/.well-known/jwks.json"));
    cfg.jwks_fetch = fetch;
    start_with(cfg).await
}

async fn join_result(s: &TestServer) -> Result<Value, String> {
    let mut c = Client::connect(s.addr).await;
    c.send(json!({"type":"join","v":1,"token":ehr_token()}))
        .await;
    let reply = c.next().await;
    match reply["type"].as_str() {
        Some("welcome") => Ok(reply),
        _ => Err(reply.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_the_jwks_key_verifies_only_when_the_ca_file_is_given() {
    let pki = pki();
    let (ehr, served) = jwks_server(&pki).await;

    // The Mozilla roots do not know the hospital's CA: no keys, no join.
    let without = edge(ehr, FetchConfig::default()).await;
    let refused = join_result(&without).await.unwrap_err();
    // (No RS256 key at all: `token_bad_algorithm`, as for any unknown kid
    // without a key of its algorithm.)
    assert!(refused.contains(r#""code":"token_bad_"#), "{refused}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "TLS never got as far as a request"
    );

    let with = edge(
        ehr,
        FetchConfig::new(Some(&pki.ca_file), ProxySettings::default()).unwrap(),
    )
    .await;
    let welcome = join_result(&with).await.unwrap();
    assert_eq!(welcome["you"]["role"], "clinician");
    assert!(served.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_is_fetched_through_the_https_proxy_with_its_credentials() {
    let pki = pki();
    let (ehr, served) = jwks_server(&pki).await;
    let (proxy_addr, seen) = proxy(ProxyMode::Tunnel).await;
    // A password with a character that must be percent-encoded in a URL.
    let proxy = ProxySettings::from_values(
        Some(&format!(
            "http://svc-spreekkamer:{PROXY_PASSWORD}%21@{proxy_addr}"
        )),
        Some("ehr.elsewhere.example, 10.0.0.0/8"),
    )
    .unwrap();
    let s = edge(ehr, FetchConfig::new(Some(&pki.ca_file), proxy).unwrap()).await;
    assert_eq!(join_result(&s).await.unwrap()["you"]["role"], "clinician");

    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the proxy was used");
    let expected_auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(format!("svc-spreekkamer:{PROXY_PASSWORD}!"))
    };
    for head in &seen {
        assert!(
            head.starts_with(&format!("CONNECT {ehr} HTTP/1.1\r\n")),
            "a CONNECT tunnel to the EHR, not a plain request: {head}"
        );
        assert!(
            head.contains(&format!(
                "\r\nProxy-Authorization: Basic {expected_auth}\r\n"
            )),
            "{head}"
        );
    }
    assert!(served.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_sends_the_jwks_fetch_past_the_proxy() {
    let pki = pki();
    let (ehr, served) = jwks_server(&pki).await;
    let (proxy_addr, seen) = proxy(ProxyMode::Tunnel).await;
    for no_proxy in ["127.0.0.0/8", "ehr.zorg.example,127.0.0.1", "*"] {
        let proxy =
            ProxySettings::from_values(Some(&format!("http://{proxy_addr}")), Some(no_proxy))
                .unwrap();
        let s = edge(ehr, FetchConfig::new(Some(&pki.ca_file), proxy).unwrap()).await;
        assert_eq!(
            join_result(&s).await.unwrap()["you"]["role"],
            "clinician",
            "NO_PROXY={no_proxy}"
        );
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "NO_PROXY bypassed the proxy: {:?}",
        seen.lock().unwrap()
    );
    assert!(served.load(Ordering::SeqCst) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_or_broken_proxy_is_a_clear_error_without_its_password() {
    let pki = pki();
    let (ehr, served) = jwks_server(&pki).await;
    let url = format!("https://{ehr}/.well-known/jwks.json");
    for (mode, says) in [
        (ProxyMode::RefuseAuth, "HTTP 407"),
        (ProxyMode::Flood, "longer than 8 KiB"),
    ] {
        let (proxy_addr, seen) = proxy(mode).await;
        let proxy = ProxySettings::from_values(
            Some(&format!("http://svc:{PROXY_PASSWORD}@{proxy_addr}")),
            None,
        )
        .unwrap();
        let source = JwksSource::new(&url, Duration::ZERO)
            .unwrap()
            .with_fetch(FetchConfig::new(Some(&pki.ca_file), proxy).unwrap());
        let started = std::time::Instant::now();
        let e = source.refresh().await.unwrap_err();
        assert!(e.contains(says), "{e}");
        assert!(
            e.contains(&format!("proxy {proxy_addr}")),
            "names the proxy: {e}"
        );
        for shown in [e.as_str(), source.route().as_str()] {
            assert!(!shown.contains(PROXY_PASSWORD), "{shown}");
            assert!(!shown.contains("svc"), "{shown}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[test]
fn a_ca_file_without_a_certificate_stops_the_start_naming_the_flag() {
    let dir = std::env::temp_dir().join(format!("spreekkamer-jwks-bad-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    for path in [not_pem.clone(), dir.join("missing.pem")] {
        let e = FetchConfig::new(Some(&path), ProxySettings::default()).unwrap_err();
        assert!(e.starts_with("--jwks-ca-file "), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
