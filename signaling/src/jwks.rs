//! The EHR's public keys from a JWKS URL: fetched at start, refreshed on a
//! timer and when a token names a `kid` we do not know (key rotation), never
//! more often than the configured minimum interval (so a stream of tokens
//! with made-up `kid`s cannot make us hammer the EHR).
//!
//! A deliberately small HTTP/1.1 GET (hyper + rustls with the Mozilla root
//! store): one request, bounded time and size, JSON out.

use crate::token::{VerifyKey, keys_from_jwks};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JwksSource {
    url: hyper::Uri,
    min_interval: Duration,
    last_attempt: Mutex<Option<Instant>>,
    /// Serializes fetches so concurrent joins with a new `kid` cause one.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksSource {
    /// `url` must be `http://` or `https://`.
    pub fn new(url: &str, min_interval: Duration) -> Result<JwksSource, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("must be an http:// or https:// URL".into()),
        }
        if uri.host().is_none() {
            return Err("has no host".into());
        }
        Ok(JwksSource {
            url: uri,
            min_interval,
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn url(&self) -> &hyper::Uri {
        &self.url
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
        let body = tokio::time::timeout(FETCH_TIMEOUT, get(&self.url))
            .await
            .map_err(|_| "timed out".to_string())??;
        let text = String::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
        keys_from_jwks(&text).map(Some)
    }
}

async fn get(url: &hyper::Uri) -> Result<Vec<u8>, String> {
    let host = url.host().ok_or("no host")?.to_string();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
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
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("tls name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
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
