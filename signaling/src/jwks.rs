//! The EHR's public keys from a JWKS URL: fetched at start, refreshed on a
//! timer and when a token names a `kid` we do not know (key rotation), never
//! more often than the configured minimum interval (so a stream of tokens
//! with made-up `kid`s cannot make us hammer the EHR).
//!
//! A deliberately small HTTP/1.1 GET (hyper + rustls): one request, bounded
//! time and size, JSON out. `https://` URLs are reached through the egress
//! proxy when `HTTPS_PROXY` names one (`egress.rs`), and trust the Mozilla
//! root store, or instead exactly the CA certificates of `--jwks-ca-file`
//! (hospitals run internal CAs, and proxies that re-sign TLS with one).

use crate::egress::ProxySettings;
use crate::token::{VerifyKey, keys_from_jwks};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_rustls::rustls;

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The whole fetch: connect (to the proxy and through it), TLS, request and
/// body. Each connect step has its own, shorter bound (`egress.rs`).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How the JWKS URL is reached: the TLS trust anchors and the egress proxy.
/// Built once at start; cheap to clone.
#[derive(Clone)]
pub struct FetchConfig {
    tls: Arc<rustls::ClientConfig>,
    /// `--jwks-ca-file`, when it replaced the Mozilla roots.
    ca_file: Option<PathBuf>,
    proxy: ProxySettings,
}

impl Default for FetchConfig {
    /// The Mozilla roots, no proxy.
    fn default() -> FetchConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        FetchConfig {
            tls: client_config(roots),
            ca_file: None,
            proxy: ProxySettings::default(),
        }
    }
}

impl std::fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchConfig")
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl FetchConfig {
    /// `ca_file`: a PEM file of CA certificates that *replace* the Mozilla
    /// roots for the JWKS (read now, so a bad file stops the start). The
    /// JWKS decides who may sign join tokens; an operator who names the CA
    /// that signs the EHR's (or the TLS-inspecting proxy's) certificate
    /// should not also have every public CA trusted for it. To trust both,
    /// put both in the file.
    pub fn new(ca_file: Option<&Path>, proxy: ProxySettings) -> Result<FetchConfig, String> {
        let Some(path) = ca_file else {
            return Ok(FetchConfig {
                proxy,
                ..FetchConfig::default()
            });
        };
        let pem =
            std::fs::read(path).map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?;
        let roots =
            trust_anchors(&pem).map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?;
        Ok(FetchConfig {
            tls: client_config(roots),
            ca_file: Some(path.to_path_buf()),
            proxy,
        })
    }

    /// How `url` is reached, for log lines: `direct` or `via proxy H:P`
    /// (never the proxy's credentials), and which roots are trusted.
    pub fn describe(&self, url: &hyper::Uri) -> String {
        let https = url.scheme_str() == Some("https");
        let route = match self.route(url) {
            Some(proxy) => format!("via proxy {proxy}"),
            None => "direct".to_string(),
        };
        match (&self.ca_file, https) {
            (Some(path), true) => format!("{route}, trusting the CAs in {}", path.display()),
            (None, true) => format!("{route}, trusting the Mozilla roots"),
            (_, false) => route,
        }
    }

    /// The proxy an `https://` URL goes through (`http://` URLs, meant for
    /// a trusted network, always go direct).
    fn route(&self, url: &hyper::Uri) -> Option<&crate::egress::EgressProxy> {
        if url.scheme_str() != Some("https") {
            return None;
        }
        let host = url.host()?;
        self.proxy.for_https(host, url.port_u16().unwrap_or(443))
    }
}

/// Every `CERTIFICATE` in `pem` as a trust anchor; at least one.
fn trust_anchors(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("not a PEM file of certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate is not usable as a CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM CERTIFICATE".into());
    }
    Ok(roots)
}

fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

pub struct JwksSource {
    url: hyper::Uri,
    fetch: FetchConfig,
    min_interval: Duration,
    last_attempt: Mutex<Option<Instant>>,
    /// Serializes fetches so concurrent joins with a new `kid` cause one.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksSource {
    /// `url` must be `http://` or `https://`, without a user or password
    /// (it is shown in log lines). Fetched with the Mozilla roots and no
    /// proxy unless [`JwksSource::with_fetch`] says otherwise.
    pub fn new(url: &str, min_interval: Duration) -> Result<JwksSource, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("must be an http:// or https:// URL".into()),
        }
        if uri.host().is_none() {
            return Err("has no host".into());
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("must not carry a user or password".into());
        }
        Ok(JwksSource {
            url: uri,
            fetch: FetchConfig::default(),
            min_interval,
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Reach the URL with these trust anchors and this proxy.
    pub fn with_fetch(mut self, fetch: FetchConfig) -> JwksSource {
        self.fetch = fetch;
        self
    }

    pub fn url(&self) -> &hyper::Uri {
        &self.url
    }

    /// How the URL is reached (for log lines; no secrets).
    pub fn route(&self) -> String {
        self.fetch.describe(&self.url)
    }

    /// Fetch now unless the last attempt was too recent. `Ok(None)` means
    /// "skipped".
    pub async fn refresh(&self) -> Result<Option<Vec<VerifyKey>>, String> {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.min_interval) {
                return Ok(None);
            }
            *last = Some(Instant::now());
        }
        let body = tokio::time::timeout(FETCH_TIMEOUT, get(&self.url, &self.fetch))
            .await
            .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))??;
        let text = String::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
        keys_from_jwks(&text).map(Some)
    }
}

async fn get(url: &hyper::Uri, fetch: &FetchConfig) -> Result<Vec<u8>, String> {
    let host = url.host().ok_or("no host")?.to_string();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = match fetch.route(url) {
        Some(proxy) => crate::egress::tunnel(proxy, &host, port).await?,
        None => crate::egress::connect(&host, port).await?,
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = hyper::Request::get(path)
        .header(
            hyper::header::HOST,
            url.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, "spreekkamer")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']))
            .map_err(|e| format!("tls name: {e}"))?
            .to_owned();
        let tls = tokio_rustls::TlsConnector::from(fetch.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(TokioIo::new(tls), request).await
    } else {
        send(TokioIo::new(tcp), request).await
    }
}

async fn send<T>(io: T, request: hyper::Request<Empty<Bytes>>) -> Result<Vec<u8>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    if response.status() != hyper::StatusCode::OK {
        driver.abort();
        return Err(format!("HTTP status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(
            JwksSource::new("https://ehr.example/.well-known/jwks.json", Duration::ZERO).is_ok()
        );
        assert!(JwksSource::new("http://127.0.0.1:9/jwks", Duration::ZERO).is_ok());
        assert!(JwksSource::new("file:///etc/jwks.json", Duration::ZERO).is_err());
        assert!(JwksSource::new("not a url", Duration::ZERO).is_err());
        assert!(
            JwksSource::new("https://user:pw@ehr.example/jwks", Duration::ZERO).is_err(),
            "credentials in the URL would end up in log lines"
        );
    }

    #[tokio::test]
    async fn refresh_is_rate_limited_even_when_it_fails() {
        // Port 9 (discard) on loopback: nothing listens, so the fetch fails fast.
        let src = JwksSource::new("http://127.0.0.1:9/jwks", Duration::from_secs(3600)).unwrap();
        assert!(src.refresh().await.is_err());
        assert!(
            matches!(src.refresh().await, Ok(None)),
            "second attempt skipped"
        );
    }
}
