//! Join tokens: verification (every `join`) and minting (`spreekkamer link`).
//!
//! The signature is checked by `jsonwebtoken`; everything around it is ours
//! so that each failure maps to exactly one documented error code and so that
//! time is a parameter (the tests never sleep):
//!
//! 1. size cap (8 KiB) before anything is parsed;
//! 2. the header is read by hand: `alg` must be the algorithm pinned to the
//!    key (so `none`, `HS512`, or an HS token against an RSA key are refused
//!    before any crypto runs), `typ` if present must be `JWT`;
//! 3. the signature, with the key chosen by `kid` (or the single key);
//! 4. the claims of docs/PROTOCOL.md, with a 30 s leeway on `exp`/`nbf`.
//!
//! The key store holds one entry per key with its own pinned algorithm, so
//! asymmetric EHR keys (RS256/ES256/EdDSA from PEM or JWKS) are added as more
//! entries without touching the checks.

use crate::protocol::{ErrorCode, Role};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// Tokens larger than this are refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// `consult` claim length bounds.
pub const MAX_CONSULT_LEN: usize = 128;
/// `name` claim length bound (in characters, after trimming).
pub const MAX_NAME_CHARS: usize = 80;

/// One verification key with the only algorithm it may be used with.
pub struct VerifyKey {
    /// `kid` to match against the token header; `None` matches any token
    /// when it is the only key.
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// The all-in-one default: an HS256 shared secret.
    pub fn hs256(secret: &[u8]) -> VerifyKey {
        VerifyKey {
            kid: None,
            alg: Algorithm::HS256,
            key: DecodingKey::from_secret(secret),
        }
    }
}

/// Verifies join tokens against the configured keys, issuer and audience.
pub struct TokenVerifier {
    /// Configured keys (secret, PEM files, JWKS file).
    keys: Vec<VerifyKey>,
    /// Keys from a JWKS URL, replaced as a whole on every refresh.
    remote: std::sync::RwLock<std::sync::Arc<Vec<VerifyKey>>>,
    issuer: String,
    audience: String,
}

/// The verified claims a session acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub consult: String,
    pub name: String,
    /// The clinician the holder will meet (`host` claim, optional): shown
    /// on the page before and after joining ("Dr. X will let you in").
    pub host: Option<String>,
    pub jti: Option<String>,
    pub exp: u64,
}

impl TokenVerifier {
    pub fn new(
        keys: Vec<VerifyKey>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        TokenVerifier {
            keys,
            remote: std::sync::RwLock::new(std::sync::Arc::new(Vec::new())),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Replace the keys fetched from the JWKS URL.
    pub fn set_remote_keys(&self, keys: Vec<VerifyKey>) {
        let mut remote = self.remote.write().unwrap_or_else(|p| p.into_inner());
        *remote = std::sync::Arc::new(keys);
    }

    fn remote_keys(&self) -> std::sync::Arc<Vec<VerifyKey>> {
        self.remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `token` names a `kid` no configured key has: the signal to
    /// refresh the JWKS before verifying.
    pub fn has_unknown_kid(&self, token: &str) -> bool {
        if token.len() > MAX_TOKEN_BYTES {
            return false;
        }
        let Ok(header) = read_header(token) else {
            return false;
        };
        let Some(kid) = header.kid else {
            return false;
        };
        let remote = self.remote_keys();
        !self
            .keys
            .iter()
            .chain(remote.iter())
            .any(|k| k.kid.as_deref() == Some(kid.as_str()))
    }

    /// Verify `token` at time `now` (seconds since the UNIX epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, ErrorCode> {
        if token.is_empty() {
            return Err(ErrorCode::TokenMissing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ErrorCode::TokenTooLarge);
        }
        let header = read_header(token)?;
        let remote = self.remote_keys();
        let keys: Vec<&VerifyKey> = self.keys.iter().chain(remote.iter()).collect();
        let key = select_key(&keys, &header)?;

        let mut validation = Validation::new(key.alg);
        // Time, issuer and audience are checked below against `now`, with
        // our own error codes; jsonwebtoken only checks the signature here.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => ErrorCode::TokenBadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                    ErrorCode::TokenBadAlgorithm
                }
                _ => ErrorCode::TokenMalformed,
            }
        })?;
        let Value::Object(claims) = data.claims else {
            return Err(ErrorCode::TokenMalformed);
        };
        self.check_claims(&claims, now)
    }

    fn check_claims(&self, c: &Map<String, Value>, now: u64) -> Result<Claims, ErrorCode> {
        let exp = match c.get("exp") {
            None | Some(Value::Null) => return Err(ErrorCode::TokenMissingClaim),
            Some(v) => numeric_date(v)?,
        };
        if exp.saturating_add(LEEWAY_SECS) < now {
            return Err(ErrorCode::TokenExpired);
        }
        if let Some(nbf) = c.get("nbf").filter(|v| !v.is_null())
            && numeric_date(nbf)? > now.saturating_add(LEEWAY_SECS)
        {
            return Err(ErrorCode::TokenNotYetValid);
        }
        if let Some(iat) = c.get("iat").filter(|v| !v.is_null()) {
            numeric_date(iat)?;
        }
        match c.get("iss") {
            None | Some(Value::Null) => return Err(ErrorCode::TokenMissingClaim),
            Some(Value::String(iss)) if iss == &self.issuer => {}
            Some(_) => return Err(ErrorCode::TokenWrongIssuer),
        }
        let audience_ok = match c.get("aud") {
            None | Some(Value::Null) => return Err(ErrorCode::TokenMissingClaim),
            Some(Value::String(aud)) => aud == &self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&self.audience)),
            Some(_) => false,
        };
        if !audience_ok {
            return Err(ErrorCode::TokenWrongAudience);
        }

        let sub = required_string(c, "sub")?;
        if sub.len() > 256 || sub.chars().any(char::is_control) {
            return Err(ErrorCode::TokenBadClaim);
        }
        let role = Role::parse(required_string(c, "role")?).ok_or(ErrorCode::TokenBadClaim)?;
        let consult = required_string(c, "consult")?;
        if !valid_consult_id(consult) {
            return Err(ErrorCode::TokenBadClaim);
        }
        let name = required_string(c, "name")?.trim();
        if name.is_empty() {
            return Err(ErrorCode::TokenMissingClaim);
        }
        if !valid_display_name(name) {
            return Err(ErrorCode::TokenBadClaim);
        }
        let host = host_claim(c.get("host"))?;
        let jti = match c.get("jti") {
            None | Some(Value::Null) => None,
            Some(Value::String(j)) if !j.is_empty() && j.len() <= 128 => Some(j.clone()),
            Some(_) => return Err(ErrorCode::TokenBadClaim),
        };
        Ok(Claims {
            sub: sub.to_string(),
            role,
            consult: consult.to_string(),
            name: name.to_string(),
            host,
            jti,
            exp,
        })
    }
}

/// The asymmetric algorithms an EHR may sign with.
pub fn parse_asymmetric_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// A public key from a PEM file, pinned to `alg` (RS256, ES256 or EdDSA).
pub fn key_from_pem(kid: Option<String>, alg: Algorithm, pem: &[u8]) -> Result<VerifyKey, String> {
    let key = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => return Err("only RS256, ES256 and EdDSA public keys are supported".into()),
    }
    .map_err(|e| format!("not a {} public key in PEM format: {e}", alg_name(alg)))?;
    Ok(VerifyKey { kid, alg, key })
}

/// Public keys from a JWKS document. Every key needs a `kid`; its algorithm
/// comes from `alg` or, if absent, from the key type (RSA → RS256, EC P-256
/// → ES256, OKP Ed25519 → EdDSA). Symmetric (`oct`) keys and keys whose
/// `use` is not `sig` are refused: a JWKS is for public keys only.
pub fn keys_from_jwks(json: &str) -> Result<Vec<VerifyKey>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or("every JWKS key needs a kid")?;
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let inferred = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => {
                return Err(format!(
                    "key {kid}: only RSA, EC P-256 and Ed25519 public keys are supported"
                ));
            }
        };
        let alg = match &jwk.common.key_algorithm {
            None => inferred,
            Some(a) => {
                let named = parse_asymmetric_alg(&format!("{a:?}")).ok_or_else(|| {
                    format!("key {kid}: algorithm {a:?} is not RS256, ES256 or EdDSA")
                })?;
                if named != inferred {
                    return Err(format!("key {kid}: alg {a:?} does not fit its key type"));
                }
                named
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        keys.push(VerifyKey {
            kid: Some(kid),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS holds no signature keys".into());
    }
    Ok(keys)
}

/// Choose the key by `kid`, else among the unnamed keys by algorithm.
/// Either way the key's pinned algorithm must be the token's: that is
/// what stops `none` and HS/RS confusion (an HS256 token "signed" with
/// an RSA public key never reaches the RSA key, and never verifies
/// against the HS secret).
fn select_key<'k>(
    keys: &[&'k VerifyKey],
    header: &TokenHeader,
) -> Result<&'k VerifyKey, ErrorCode> {
    let key = match &header.kid {
        Some(kid) if keys.iter().any(|k| k.kid.is_some()) => keys
            .iter()
            .copied()
            .find(|k| k.kid.as_deref() == Some(kid.as_str()))
            .ok_or(ErrorCode::TokenBadSignature)?,
        _ => {
            let mut unnamed = keys.iter().copied().filter(|k| k.kid.is_none()).peekable();
            if unnamed.peek().is_none() {
                // Only named keys are configured: a token must say which.
                return Err(ErrorCode::TokenBadSignature);
            }
            unnamed
                .find(|k| alg_name(k.alg) == header.alg)
                .ok_or(ErrorCode::TokenBadAlgorithm)?
        }
    };
    if header.alg != alg_name(key.alg) {
        return Err(ErrorCode::TokenBadAlgorithm);
    }
    Ok(key)
}

/// What a connectivity check's private consult id starts with (`probe.rs`):
/// `:` is outside [`valid_consult_id`], so no real consult can meet it.
pub const PROBE_CONSULT_PREFIX: &str = "probe:";

/// A connectivity check's consult id: the prefix and 1–32 hex digits.
pub fn is_probe_consult(id: &str) -> bool {
    id.strip_prefix(PROBE_CONSULT_PREFIX).is_some_and(|hex| {
        !hex.is_empty() && hex.len() <= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// `[A-Za-z0-9._~-]{1,128}`: safe in URLs, logs and metrics without escaping.
pub fn valid_consult_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CONSULT_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// A display name as `name` and `host` allow it, already trimmed: 1–80
/// characters ([`MAX_NAME_CHARS`]), no control characters.
pub fn valid_display_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.chars().any(char::is_control)
}

/// The optional `host` claim: absent, `null` or blank is no host; a string
/// is trimmed and must be a valid display name; anything else is a bad
/// claim (like a bad `name`: a token that carries it wrongly is refused,
/// so the issuer learns at once instead of the page showing nothing).
fn host_claim(v: Option<&Value>) -> Result<Option<String>, ErrorCode> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if valid_display_name(s.trim()) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ErrorCode::TokenBadClaim),
    }
}

fn required_string<'a>(c: &'a Map<String, Value>, name: &str) -> Result<&'a str, ErrorCode> {
    match c.get(name) {
        None | Some(Value::Null) => Err(ErrorCode::TokenMissingClaim),
        Some(Value::String(s)) if s.is_empty() => Err(ErrorCode::TokenMissingClaim),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ErrorCode::TokenBadClaim),
    }
}

/// A JWT NumericDate: non-negative seconds, integer or float.
fn numeric_date(v: &Value) -> Result<u64, ErrorCode> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
            .ok_or(ErrorCode::TokenBadClaim),
        _ => Err(ErrorCode::TokenBadClaim),
    }
}

struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

/// Read the protected header without trusting it for anything but key
/// selection: `jku`, `x5u`, `jwk` and friends are ignored on purpose.
fn read_header(token: &str) -> Result<TokenHeader, ErrorCode> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ErrorCode::TokenMalformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| ErrorCode::TokenMalformed)?;
    let Ok(Value::Object(h)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(ErrorCode::TokenMalformed);
    };
    let alg = match h.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(ErrorCode::TokenBadAlgorithm),
    };
    match h.get("typ") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("JWT") => {}
        Some(_) => return Err(ErrorCode::TokenMalformed),
    }
    let kid = match h.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(ErrorCode::TokenMalformed),
    };
    Ok(TokenHeader { alg, kid })
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // Newer algorithms are never pinned by our configuration.
        _ => "unsupported",
    }
}

/// What `spreekkamer link` (and the demo links) put in a token.
#[derive(Debug, Clone)]
pub struct MintRequest {
    pub issuer: String,
    pub audience: String,
    pub sub: String,
    pub role: Role,
    pub consult: String,
    pub name: String,
    /// The clinician's display name for the `host` claim (optional).
    pub host: Option<String>,
    pub ttl_secs: u64,
    pub jti: Option<String>,
}

/// Sign an HS256 join token. The request is checked against the same rules
/// the verifier applies, so a minted link is never one the server refuses.
pub fn mint_hs256(secret: &[u8], req: &MintRequest, now: u64) -> Result<String, ErrorCode> {
    if !valid_consult_id(&req.consult) {
        return Err(ErrorCode::TokenBadClaim);
    }
    let name = req.name.trim();
    if !valid_display_name(name) {
        return Err(ErrorCode::TokenBadClaim);
    }
    let host = req.host.as_deref().map(str::trim);
    if host.is_some_and(|h| !valid_display_name(h)) {
        return Err(ErrorCode::TokenBadClaim);
    }
    if req.sub.is_empty() || req.sub.len() > 256 || req.sub.chars().any(char::is_control) {
        return Err(ErrorCode::TokenBadClaim);
    }
    let mut claims = serde_json::json!({
        "iss": req.issuer,
        "aud": req.audience,
        "iat": now,
        "nbf": now,
        "exp": now.saturating_add(req.ttl_secs),
        "sub": req.sub,
        "role": req.role.as_str(),
        "consult": req.consult,
        "name": name,
    });
    if let Some(jti) = &req.jti {
        claims["jti"] = Value::String(jti.clone());
    }
    if let Some(host) = host {
        claims["host"] = Value::String(host.to_string());
    }
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
        .map_err(|_| ErrorCode::TokenMalformed)
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 16 random hex digits: participant ids, demo consult ids, `sub`s.
pub fn random_hex_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A fresh URL-safe secret (32 random bytes, base64url): generated JWT
/// secrets and E2EE link secrets.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Longest invite validity a clinician can ask for.
pub const MAX_INVITE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A token id as the `jti` claim allows it (1–128 bytes).
pub fn valid_jti(jti: &str) -> bool {
    !jti.is_empty() && jti.len() <= 128
}

#[cfg(test)]
mod tests {

    #[test]
    fn probe_consult_ids_are_their_own_kind() {
        let probe = format!("{PROBE_CONSULT_PREFIX}{}", random_hex_id());
        assert!(is_probe_consult(&probe));
        assert!(
            !valid_consult_id(&probe),
            "no real consult can be named like a probe"
        );
        for not in [
            "probe:",
            "probe:xyz",
            "probe-0123",
            "c-4711",
            "probe:0123456789abcdef0123456789abcdef0",
        ] {
            assert!(!is_probe_consult(not), "{not}");
        }
    }
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-0123456789abcdef0123";
    const NOW: u64 = 1_800_000_000;

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(vec![VerifyKey::hs256(SECRET)], "spreekkamer", "spreekkamer")
    }

    fn good_claims() -> Value {
        json!({
            "iss": "spreekkamer",
            "aud": "spreekkamer",
            "exp": NOW + 3600,
            "nbf": NOW - 10,
            "iat": NOW - 10,
            "sub": "user-1",
            "role": "patient",
            "consult": "consult-1",
            "name": "  Mw. De Vries ",
            "jti": "abc",
        })
    }

    fn sign_with(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn sign(claims: &Value) -> String {
        sign_with(Algorithm::HS256, SECRET, claims)
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn check(token: &str) -> Result<Claims, ErrorCode> {
        verifier().verify(token, NOW)
    }

    #[test]
    fn good_token_yields_its_claims() {
        let claims = check(&sign(&good_claims())).expect("accepted");
        assert_eq!(
            claims,
            Claims {
                sub: "user-1".into(),
                role: Role::Patient,
                consult: "consult-1".into(),
                name: "Mw. De Vries".into(),
                host: None,
                jti: Some("abc".into()),
                exp: NOW + 3600,
            }
        );
    }

    #[test]
    fn audience_may_be_a_list() {
        let mut c = good_claims();
        c["aud"] = json!(["other", "spreekkamer"]);
        assert!(check(&sign(&c)).is_ok());
    }

    #[test]
    fn expired_token_is_refused_after_the_leeway() {
        let mut c = good_claims();
        c["exp"] = json!(NOW - LEEWAY_SECS - 1);
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenExpired));
        c["exp"] = json!(NOW - LEEWAY_SECS + 1);
        assert!(check(&sign(&c)).is_ok(), "within leeway");
    }

    #[test]
    fn token_from_the_future_is_refused_after_the_leeway() {
        let mut c = good_claims();
        c["nbf"] = json!(NOW + LEEWAY_SECS + 5);
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenNotYetValid));
        c["nbf"] = json!(NOW + LEEWAY_SECS - 5);
        assert!(check(&sign(&c)).is_ok(), "within leeway");
    }

    #[test]
    fn wrong_signature_is_refused() {
        let token = sign_with(Algorithm::HS256, b"another-secret", &good_claims());
        assert_eq!(check(&token), Err(ErrorCode::TokenBadSignature));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = sign(&good_claims());
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = good_claims();
        c["role"] = json!("clinician");
        let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
        assert_eq!(check(&forged), Err(ErrorCode::TokenBadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(&json!({"alg":"none","typ":"JWT"}));
        let token = format!("{header}.{}.", b64(&good_claims()));
        assert_eq!(check(&token), Err(ErrorCode::TokenBadAlgorithm));
        let header = b64(&json!({"alg":"None"}));
        let token = format!("{header}.{}.", b64(&good_claims()));
        assert_eq!(check(&token), Err(ErrorCode::TokenBadAlgorithm));
    }

    #[test]
    fn other_algorithms_are_refused_even_with_the_right_secret() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign_with(alg, SECRET, &good_claims());
            assert_eq!(check(&token), Err(ErrorCode::TokenBadAlgorithm), "{alg:?}");
        }
        let header = b64(&json!({"alg":"RS256"}));
        let token = format!("{header}.{}.c2ln", b64(&good_claims()));
        assert_eq!(check(&token), Err(ErrorCode::TokenBadAlgorithm));
        let header = b64(&json!({"typ":"JWT"}));
        let token = format!("{header}.{}.c2ln", b64(&good_claims()));
        assert_eq!(check(&token), Err(ErrorCode::TokenBadAlgorithm), "no alg");
    }

    #[test]
    fn wrong_audience_is_refused() {
        let mut c = good_claims();
        c["aud"] = json!("someone-else");
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenWrongAudience));
        c["aud"] = json!(["a", "b"]);
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenWrongAudience));
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let mut c = good_claims();
        c["iss"] = json!("evil");
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenWrongIssuer));
    }

    #[test]
    fn each_missing_required_claim_is_named_missing() {
        for claim in ["iss", "aud", "exp", "sub", "role", "consult", "name"] {
            let mut c = good_claims();
            c.as_object_mut().unwrap().remove(claim);
            assert_eq!(
                check(&sign(&c)),
                Err(ErrorCode::TokenMissingClaim),
                "{claim}"
            );
            let mut c = good_claims();
            c[claim] = Value::Null;
            assert_eq!(
                check(&sign(&c)),
                Err(ErrorCode::TokenMissingClaim),
                "{claim}=null"
            );
        }
        for claim in ["sub", "role", "consult", "name"] {
            let mut c = good_claims();
            c[claim] = json!("");
            assert_eq!(
                check(&sign(&c)),
                Err(ErrorCode::TokenMissingClaim),
                "{claim} empty"
            );
        }
        let mut c = good_claims();
        c["name"] = json!("   ");
        assert_eq!(
            check(&sign(&c)),
            Err(ErrorCode::TokenMissingClaim),
            "blank name"
        );
    }

    #[test]
    fn optional_claims_may_be_absent() {
        let mut c = good_claims();
        for claim in ["nbf", "iat", "jti"] {
            c.as_object_mut().unwrap().remove(claim);
        }
        assert_eq!(check(&sign(&c)).unwrap().jti, None);
    }

    #[test]
    fn bad_role_is_refused() {
        for role in [json!("admin"), json!("Clinician"), json!(3)] {
            let mut c = good_claims();
            c["role"] = role.clone();
            assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenBadClaim), "{role}");
        }
    }

    #[test]
    fn bad_consult_ids_are_refused() {
        let long = "a".repeat(129);
        for consult in ["has space", "slash/x", "ümlaut", long.as_str()] {
            let mut c = good_claims();
            c["consult"] = json!(consult);
            assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenBadClaim), "{consult}");
        }
        let mut c = good_claims();
        c["consult"] = json!("A-z_0.9~".to_string() + &"x".repeat(120));
        assert!(check(&sign(&c)).is_ok(), "128 chars of the allowed set");
    }

    #[test]
    fn bad_names_are_refused() {
        for name in [json!("a\u{7}b"), json!("x".repeat(81)), json!(["n"])] {
            let mut c = good_claims();
            c["name"] = name.clone();
            assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenBadClaim), "{name}");
        }
        let mut c = good_claims();
        c["name"] = json!("é".repeat(80));
        assert!(check(&sign(&c)).is_ok(), "80 characters, more bytes");
    }

    #[test]
    fn the_host_claim_is_optional_trimmed_and_bounded_like_name() {
        let mut c = good_claims();
        c["host"] = json!("  Dr. Jansen ");
        assert_eq!(
            check(&sign(&c)).unwrap().host.as_deref(),
            Some("Dr. Jansen")
        );
        assert_eq!(check(&sign(&good_claims())).unwrap().host, None, "absent");
        for blank in [json!(null), json!(""), json!("   ")] {
            let mut c = good_claims();
            c["host"] = blank.clone();
            assert_eq!(check(&sign(&c)).unwrap().host, None, "{blank}");
        }
        let mut c = good_claims();
        c["host"] = json!("é".repeat(80));
        assert!(check(&sign(&c)).is_ok(), "80 characters");
        for bad in [
            json!("x".repeat(81)),
            json!("Dr.\u{7} X"),
            json!("Dr.\nX"),
            json!(42),
            json!(["Dr. X"]),
            json!({"name": "Dr. X"}),
        ] {
            let mut c = good_claims();
            c["host"] = bad.clone();
            assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenBadClaim), "{bad}");
        }
    }

    #[test]
    fn minted_tokens_carry_a_valid_host_and_refuse_a_bad_one() {
        let mut req = MintRequest {
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
            sub: "p-1".into(),
            role: Role::Patient,
            consult: "c-42".into(),
            name: "Patient".into(),
            host: Some(" Dr. Bakker ".into()),
            ttl_secs: 600,
            jti: None,
        };
        let token = mint_hs256(SECRET, &req, NOW).unwrap();
        let claims = verifier().verify(&token, NOW).unwrap();
        assert_eq!(claims.host.as_deref(), Some("Dr. Bakker"));
        req.host = Some("x".repeat(81));
        assert_eq!(mint_hs256(SECRET, &req, NOW), Err(ErrorCode::TokenBadClaim));
        req.host = Some("a\u{1b}b".into());
        assert_eq!(mint_hs256(SECRET, &req, NOW), Err(ErrorCode::TokenBadClaim));
    }

    #[test]
    fn bad_time_claims_are_refused() {
        let mut c = good_claims();
        c["exp"] = json!("tomorrow");
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenBadClaim));
        let mut c = good_claims();
        c["exp"] = json!(-5);
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenBadClaim));
    }

    #[test]
    fn oversized_token_is_refused_before_parsing() {
        let token = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(check(&token), Err(ErrorCode::TokenTooLarge));
        let mut c = good_claims();
        c["pad"] = json!("p".repeat(MAX_TOKEN_BYTES));
        assert_eq!(check(&sign(&c)), Err(ErrorCode::TokenTooLarge));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for token in ["abc", "a.b", "a.b.c.d", "!!!.b.c", "e30.e30.e30"] {
            let r = check(token);
            assert!(
                matches!(
                    r,
                    Err(ErrorCode::TokenMalformed) | Err(ErrorCode::TokenBadAlgorithm)
                ),
                "{token}: {r:?}"
            );
        }
        assert_eq!(check("abc"), Err(ErrorCode::TokenMalformed));
        assert_eq!(check(""), Err(ErrorCode::TokenMissing));
        // A well-signed token whose payload is not a JSON object.
        let header = b64(&json!({"alg":"HS256"}));
        let payload = URL_SAFE_NO_PAD.encode(b"[1,2]");
        assert_eq!(
            check(&hs256_compact(&header, &payload)),
            Err(ErrorCode::TokenMalformed)
        );
    }

    #[test]
    fn foreign_typ_is_refused() {
        let header = b64(&json!({"alg":"HS256","typ":"at+jwt"}));
        let payload = b64(&good_claims());
        assert_eq!(
            check(&hs256_compact(&header, &payload)),
            Err(ErrorCode::TokenMalformed)
        );
    }

    /// A compact JWS over already-encoded header and payload, correctly
    /// signed with the test secret: for headers `encode` would not write.
    fn hs256_compact(header: &str, payload: &str) -> String {
        let sig = jsonwebtoken::crypto::sign(
            format!("{header}.{payload}").as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{header}.{payload}.{sig}")
    }

    #[test]
    fn minted_tokens_are_accepted_and_expire_after_their_ttl() {
        let req = MintRequest {
            issuer: "spreekkamer".into(),
            audience: "spreekkamer".into(),
            sub: "dr-1".into(),
            role: Role::Clinician,
            consult: "c-42".into(),
            name: "Dr. Bakker".into(),
            host: None,
            ttl_secs: 7200,
            jti: None,
        };
        let token = mint_hs256(SECRET, &req, NOW).unwrap();
        let claims = verifier().verify(&token, NOW).unwrap();
        assert_eq!(claims.role, Role::Clinician);
        assert_eq!(claims.consult, "c-42");
        assert_eq!(
            verifier().verify(&token, NOW + 7200 + LEEWAY_SECS + 1),
            Err(ErrorCode::TokenExpired)
        );
        let bad = MintRequest {
            consult: "bad id".into(),
            ..req
        };
        assert_eq!(mint_hs256(SECRET, &bad, NOW), Err(ErrorCode::TokenBadClaim));
    }

    #[test]
    fn unknown_kid_is_refused_when_keys_are_named() {
        let v = TokenVerifier::new(
            vec![VerifyKey {
                kid: Some("k1".into()),
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(SECRET),
            }],
            "spreekkamer",
            "spreekkamer",
        );
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let token =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(SECRET))
                .unwrap();
        assert_eq!(v.verify(&token, NOW), Err(ErrorCode::TokenBadSignature));
        header.kid = Some("k1".into());
        let token =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(SECRET))
                .unwrap();
        assert!(v.verify(&token, NOW).is_ok());
    }

    mod asymmetric {
        use super::*;

        const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-private.pem");
        const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/rsa-public.pem");
        const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/ec-private.pem");
        const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/ec-public.pem");
        const ED_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/keys/ed-private.pem");
        const ED_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/keys/ed-public.pem");

        fn ehr_verifier() -> TokenVerifier {
            TokenVerifier::new(
                vec![
                    VerifyKey::hs256(SECRET),
                    key_from_pem(Some("rsa-1".into()), Algorithm::RS256, RSA_PUBLIC).unwrap(),
                    key_from_pem(Some("ec-1".into()), Algorithm::ES256, EC_PUBLIC).unwrap(),
                    key_from_pem(Some("ed-1".into()), Algorithm::EdDSA, ED_PUBLIC).unwrap(),
                ],
                "spreekkamer",
                "spreekkamer",
            )
        }

        fn signing_key(alg: Algorithm) -> EncodingKey {
            match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
                Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
                _ => unreachable!(),
            }
        }

        fn sign_kid(alg: Algorithm, kid: &str, claims: &Value) -> String {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            header.typ = Some("JWT".into());
            jsonwebtoken::encode(&header, claims, &signing_key(alg)).unwrap()
        }

        fn check(token: &str) -> Result<Claims, ErrorCode> {
            ehr_verifier().verify(token, NOW)
        }

        #[test]
        fn each_pinned_key_accepts_its_own_algorithm() {
            for (alg, kid) in [
                (Algorithm::RS256, "rsa-1"),
                (Algorithm::ES256, "ec-1"),
                (Algorithm::EdDSA, "ed-1"),
            ] {
                let token = sign_kid(alg, kid, &good_claims());
                assert!(check(&token).is_ok(), "{alg:?}");
            }
            assert!(
                check(&sign(&good_claims())).is_ok(),
                "the HS256 secret still works"
            );
        }

        #[test]
        fn a_key_refuses_tokens_of_another_algorithm() {
            let es_as_rsa = sign_kid(Algorithm::ES256, "rsa-1", &good_claims());
            assert_eq!(check(&es_as_rsa), Err(ErrorCode::TokenBadAlgorithm));
        }

        #[test]
        fn hs256_signed_with_the_public_key_is_refused() {
            for kid in [None, Some("rsa-1")] {
                let mut header = Header::new(Algorithm::HS256);
                header.kid = kid.map(String::from);
                let token = jsonwebtoken::encode(
                    &header,
                    &good_claims(),
                    &EncodingKey::from_secret(RSA_PUBLIC),
                )
                .unwrap();
                let r = check(&token);
                assert!(
                    matches!(
                        r,
                        Err(ErrorCode::TokenBadAlgorithm | ErrorCode::TokenBadSignature)
                    ),
                    "{kid:?}: {r:?}"
                );
            }
        }

        #[test]
        fn none_wrong_kid_and_tampering_are_refused() {
            let header = b64(&json!({"alg":"none","kid":"rsa-1"}));
            assert_eq!(
                check(&format!("{header}.{}.", b64(&good_claims()))),
                Err(ErrorCode::TokenBadAlgorithm)
            );
            let token = sign_kid(Algorithm::RS256, "rsa-2", &good_claims());
            assert_eq!(check(&token), Err(ErrorCode::TokenBadSignature));
            let token = sign_kid(Algorithm::EdDSA, "ed-1", &good_claims());
            let parts: Vec<&str> = token.split('.').collect();
            let mut c = good_claims();
            c["consult"] = json!("another-consult");
            let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
            assert_eq!(check(&forged), Err(ErrorCode::TokenBadSignature));
        }

        #[test]
        fn claims_are_checked_for_asymmetric_tokens_too() {
            let cases = [
                ("exp", json!(NOW - 3600), ErrorCode::TokenExpired),
                ("aud", json!("other"), ErrorCode::TokenWrongAudience),
                ("iss", json!("other-ehr"), ErrorCode::TokenWrongIssuer),
            ];
            for (claim, value, code) in cases {
                let mut c = good_claims();
                c[claim] = value;
                assert_eq!(
                    check(&sign_kid(Algorithm::RS256, "rsa-1", &c)),
                    Err(code),
                    "{claim}"
                );
            }
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some("ec-1".into());
            header.typ = Some("secevent+jwt".into());
            let token =
                jsonwebtoken::encode(&header, &good_claims(), &signing_key(Algorithm::ES256))
                    .unwrap();
            assert_eq!(check(&token), Err(ErrorCode::TokenMalformed), "typ");
        }

        #[test]
        fn jwks_keys_carry_kid_and_pinned_algorithm() {
            let rsa = jsonwebtoken::jwk::Jwk::from_encoding_key(
                &signing_key(Algorithm::RS256),
                Algorithm::RS256,
            )
            .unwrap();
            let ed = jsonwebtoken::jwk::Jwk::from_encoding_key(
                &signing_key(Algorithm::EdDSA),
                Algorithm::EdDSA,
            )
            .unwrap();
            let mut rsa = serde_json::to_value(rsa).unwrap();
            rsa["kid"] = json!("jw-rsa");
            let mut ed = serde_json::to_value(ed).unwrap();
            ed["kid"] = json!("jw-ed");
            ed.as_object_mut().unwrap().remove("alg");
            let jwks = json!({"keys":[rsa, ed]}).to_string();
            let keys = keys_from_jwks(&jwks).unwrap();
            assert_eq!(keys.len(), 2);
            assert_eq!(keys[1].alg, Algorithm::EdDSA, "inferred from the key type");
            let v = TokenVerifier::new(keys, "spreekkamer", "spreekkamer");
            assert!(
                v.verify(&sign_kid(Algorithm::RS256, "jw-rsa", &good_claims()), NOW)
                    .is_ok()
            );
            assert!(
                v.verify(&sign_kid(Algorithm::EdDSA, "jw-ed", &good_claims()), NOW)
                    .is_ok()
            );
            assert_eq!(
                v.verify(&sign_kid(Algorithm::EdDSA, "jw-rsa", &good_claims()), NOW),
                Err(ErrorCode::TokenBadAlgorithm)
            );
            assert_eq!(
                v.verify(&sign(&good_claims()), NOW),
                Err(ErrorCode::TokenBadSignature),
                "only named keys: a token without kid is refused"
            );
        }

        #[test]
        fn jwks_refuses_symmetric_and_unnamed_keys() {
            let oct = json!({"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}).to_string();
            assert!(keys_from_jwks(&oct).is_err());
            let rsa = jsonwebtoken::jwk::Jwk::from_encoding_key(
                &signing_key(Algorithm::RS256),
                Algorithm::RS256,
            )
            .unwrap();
            let unnamed = json!({"keys":[rsa]}).to_string();
            assert!(keys_from_jwks(&unnamed).unwrap_err().contains("kid"));
            assert!(keys_from_jwks("not json").is_err());
        }

        #[test]
        fn pem_must_match_the_declared_algorithm() {
            assert!(key_from_pem(None, Algorithm::ES256, RSA_PUBLIC).is_err());
            assert!(key_from_pem(None, Algorithm::HS256, RSA_PUBLIC).is_err());
            assert!(key_from_pem(None, Algorithm::RS256, b"garbage").is_err());
        }
    }
}
