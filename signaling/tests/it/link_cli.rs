//! `spreekkamer link` and the E2EE link secrets: the real binary prints the
//! fragments of docs/CRYPTO.md §2.8 (the same vector as the JavaScript in
//! tests/crypto/handshake.test.mjs), and a generated master secret goes to
//! stderr only, from which the printed link's secret derives.

use signaling::config::derive_link_secret;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_spreekkamer");
const SECRET: &str = "link-cli-test-secret-0123456789abcdef";
const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn link(role: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args([
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            SECRET,
            "--consult",
            "consult-42",
            "--role",
            role,
            "--name",
            "N",
        ])
        .args(extra)
        .output()
        .expect("runs")
}

/// The fragment after the token: `k=…[&kl=…]`.
fn secret_part(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    let url = stdout.lines().last().expect("a line");
    let fragment = url.split_once('#').expect("fragment").1;
    let (_token, rest) = fragment.split_once('&').expect("a secret after the token");
    rest.to_string()
}

#[test]
fn link_prints_the_master_for_a_clinician_and_derived_secrets_for_others() {
    assert_eq!(
        secret_part(&link("clinician", &["--link-secret", MASTER])),
        format!("k={MASTER}")
    );
    assert_eq!(
        secret_part(&link("patient", &["--link-secret", MASTER])),
        "k=RxtAi-A6HCVjXqxgWB-soZfAgDGFT2a1-gW-Qz-u0Bk&kl=patient"
    );
    assert_eq!(
        secret_part(&link(
            "guest",
            &["--link-secret", MASTER, "--link-label", "guest-3f9a2c"]
        )),
        "k=eVrYjAQpZebBG6pDUoIqHYAsp_lpe8ZEDSOIebCrifo&kl=guest-3f9a2c"
    );
    let guest = secret_part(&link("guest", &["--link-secret", MASTER]));
    let (k, label) = guest.split_once("&kl=").expect("a label");
    assert!(label.starts_with("guest-") && label.len() == 12, "{label}");
    assert_eq!(
        k.strip_prefix("k=").unwrap(),
        derive_link_secret(MASTER, "consult-42", label).unwrap()
    );
    // A clinician link with a label is refused, clearly.
    let out = link("clinician", &["--link-secret", MASTER, "--link-label", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--link-label"));
}

#[test]
fn a_generated_master_goes_to_stderr_and_the_link_derives_from_it() {
    let out = link("patient", &["--with-link-secret"]);
    let part = secret_part(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let master = stderr
        .lines()
        .find_map(|l| l.strip_prefix("master link secret for consult consult-42: "))
        .expect("the master on stderr");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(master));
    assert_eq!(
        part,
        format!(
            "k={}&kl=patient",
            derive_link_secret(master, "consult-42", "patient").unwrap()
        )
    );
}

/// The token of a printed link, verified with the secret it was minted with.
fn claims_of(out: &Output) -> signaling::token::Claims {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    let url = stdout.lines().last().expect("a line");
    let fragment = url.split_once('#').expect("fragment").1;
    let token = fragment
        .split('&')
        .find_map(|p| p.strip_prefix("t="))
        .expect("a token");
    signaling::token::TokenVerifier::new(
        vec![signaling::token::VerifyKey::hs256(SECRET.as_bytes())],
        "spreekkamer",
        "spreekkamer",
    )
    .verify(token, signaling::token::unix_now())
    .expect("the server accepts it")
}

#[test]
fn link_puts_the_host_into_the_token_only_when_asked() {
    assert_eq!(claims_of(&link("patient", &[])).host, None);
    let claims = claims_of(&link("patient", &["--host", "Dr. Jansen"]));
    assert_eq!(claims.host.as_deref(), Some("Dr. Jansen"));
    assert_eq!(claims.name, "N");
    // A host the server would refuse is refused here, naming the flag.
    let out = link("patient", &["--host", &"x".repeat(81)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--host"));
}
