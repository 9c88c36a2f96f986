//! Join tokens: everything `token.rs` does with a token before (and right
//! after) the signature check. The first byte picks the path:
//!
//! * 0: the rest as the token string a client sends (header pre-parse, key
//!   selection, signature check, the `kid` lookup before a JWKS refresh);
//! * 1: the rest as `<header JSON>\n<claims JSON>`, signed with the right
//!   key, so arbitrary headers and claims reach the claim checks;
//! * 2: the rest as a JWKS document (what the EHR's key URL returns).
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use signaling::token::{
    LEEWAY_SECS, MAX_NAME_CHARS, MAX_TOKEN_BYTES, TokenVerifier, VerifyKey, keys_from_jwks,
    valid_consult_id,
};
use std::sync::OnceLock;

/// A made-up secret, the one the corpus tokens are signed with.
const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123";
const NOW: u64 = 1_800_000_000;

fn verifier() -> &'static TokenVerifier {
    static V: OnceLock<TokenVerifier> = OnceLock::new();
    V.get_or_init(|| {
        TokenVerifier::new(vec![VerifyKey::hs256(SECRET)], "spreekkamer", "spreekkamer")
    })
}

fn check(token: &str) {
    let v = verifier();
    let _ = v.has_unknown_kid(token);
    let Ok(claims) = v.verify(token, NOW) else {
        return;
    };
    // What a session acts on is what the checks promise.
    assert!(token.len() <= MAX_TOKEN_BYTES);
    assert!(claims.exp.saturating_add(LEEWAY_SECS) >= NOW);
    assert!(valid_consult_id(&claims.consult));
    assert!(!claims.name.is_empty() && claims.name.chars().count() <= MAX_NAME_CHARS);
    assert!(!claims.name.chars().any(char::is_control));
    assert!(!claims.sub.is_empty() && claims.sub.len() <= 256);
    assert!(!claims.sub.chars().any(char::is_control));
    assert!(
        claims
            .jti
            .as_ref()
            .is_none_or(|j| !j.is_empty() && j.len() <= 128)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode % 3 {
        0 => check(text),
        1 => {
            let Some((header, claims)) = text.split_once('\n') else {
                return;
            };
            let signing_input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let key = EncodingKey::from_secret(SECRET);
            let Ok(signature) =
                jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256)
            else {
                return;
            };
            check(&format!("{signing_input}.{signature}"));
        }
        _ => {
            if let Ok(keys) = keys_from_jwks(text) {
                assert!(!keys.is_empty());
            }
        }
    }
});
