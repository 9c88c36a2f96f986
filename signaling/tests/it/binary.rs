//! The real `spreekkamer` binary: `link` output is accepted by a server with
//! the same secret; `serve` without a key prints working demo links to
//! stderr with a warning (never with a configured key, never on stdout),
//! writes nothing but the audit log, and stops cleanly on SIGTERM; secrets
//! come from a file or the environment, a flag is warned about.

use crate::common::*;
use signaling::protocol::Role;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_spreekkamer");

fn token_from_url(url: &str) -> (String, Option<String>) {
    let fragment = url.split_once('#').expect("fragment").1;
    let mut token = None;
    let mut secret = None;
    for pair in fragment.split('&') {
        match pair.split_once('=') {
            Some(("t", v)) => token = Some(v.to_string()),
            Some(("k", v)) => secret = Some(v.to_string()),
            _ => {}
        }
    }
    (token.expect("t= in fragment"), secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_output_is_accepted_by_the_server() {
    let s = start().await;
    let out = Command::new(BIN)
        .args([
            "link",
            "--base-url",
            &format!("http://{}", s.addr),
            "--jwt-secret",
            SECRET,
            "--consult",
            "linked-consult",
            "--role",
            "patient",
            "--name",
            "Mw. Linked",
            "--ttl",
            "30m",
            "--with-link-secret",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let url = stdout.lines().last().expect("a line");
    assert!(url.starts_with(&format!("http://{}/c#t=", s.addr)), "{url}");
    assert!(!url.contains('?'), "nothing secret in a query string");
    let (token, secret) = token_from_url(url);
    let secret = secret.expect("link secret");
    assert_eq!(secret.len(), 43, "32 bytes base64url");

    let (_c, w) = Client::joined(s.addr, &token).await;
    assert_eq!(w["consult"], "linked-consult");
    assert_eq!(w["you"]["role"], "patient");
    assert_eq!(w["you"]["name"], "Mw. Linked");
}

#[test]
fn link_refuses_bad_values_clearly() {
    let out = Command::new(BIN)
        .args([
            "link",
            "--base-url",
            "http://h",
            "--jwt-secret",
            "short",
            "--consult",
            "c",
            "--role",
            "patient",
            "--name",
            "n",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--jwt-secret") && err.contains("32 bytes"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn cluster_subcommands_refuse_a_missing_or_bad_configuration_clearly() {
    // (Nothing listens on port 1: these must fail before Redis is needed.)
    let cases: [(&[&str], &str); 5] = [
        (&["signaling"], "--redis"),
        (&["sfu"], "--redis"),
        (
            &["signaling", "--redis", "redis://127.0.0.1:1"],
            "token key",
        ),
        (
            &["sfu", "--redis", "redis://127.0.0.1:1"],
            "--link-secret-file",
        ),
        (
            &[
                "sfu",
                "--redis",
                "redis://127.0.0.1:1",
                "--link-secret",
                "too-short",
            ],
            "--link-secret",
        ),
    ];
    for (args, says) in cases {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("SPREEKKAMER_JWT_SECRET")
            .env_remove("SPREEKKAMER_LINK_SECRET")
            .env_remove("SPREEKKAMER_REDIS")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?} should mention {says}: {stderr}"
        );
    }
}

#[test]
fn a_trusted_proxy_range_of_the_whole_internet_is_refused_at_start() {
    for (value, says) in [
        ("10.244.0.0/16, ::/0", "refusing to trust \"::/0\""),
        (
            "10.244.0.0/16,10.244.0.1/16",
            "\"10.244.0.1/16\" has host bits set",
        ),
    ] {
        let out = Command::new(BIN)
            .env("SPREEKKAMER_TRUSTED_PROXIES", value)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
        assert!(stderr.contains("--trusted-proxy"), "{stderr}");
    }
}

#[test]
fn bad_environment_values_are_refused() {
    let out = Command::new(BIN)
        .env("SPREEKKAMER_MAX_PARTICIPANTS", "100")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-participants"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_key_prints_demo_links_to_stderr_writes_only_the_audit_log_and_stops_on_sigterm()
 {
    let dir = std::env::temp_dir().join(format!(
        "spreekkamer-bin-{}",
        signaling::token::random_hex_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(&dir)
        .env("HOME", &dir)
        .env("TMPDIR", &dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--audit-log",
            "audit.jsonl",
            "--workers",
            "1",
        ])
        .env_remove("SPREEKKAMER_JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stderr = child.stderr.take().unwrap();
    let links = tokio::task::spawn_blocking(move || {
        let mut links = Vec::new();
        let mut warned = false;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            warned |= line.contains("WARNING: demo links")
                && line.contains("not end-to-end encrypted against the operator");
            if let Some((_, url)) = line.split_once(" link: ") {
                assert!(warned, "the warning comes first");
                links.push(url.to_string());
                if links.len() == 2 {
                    break;
                }
            }
        }
        links
    });
    let links = tokio::time::timeout(WAIT, links)
        .await
        .expect("links printed")
        .unwrap();
    assert_eq!(links.len(), 2);
    let addr: std::net::SocketAddr = links[0]
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (clinician, k1) = token_from_url(&links[0]);
    let (patient, k2) = token_from_url(&links[1]);
    // The clinician holds the consult's master link secret; the patient a
    // secret derived from it for the label `patient` (docs/CRYPTO.md §2.8).
    let master = k1.expect("the clinician link carries the master link secret");
    assert!(!links[0].contains("&kl="), "a clinician link has no label");
    assert!(links[1].ends_with("&kl=patient"), "{}", links[1]);
    let k2 = k2.expect("the patient link carries a derived link secret");
    assert_ne!(k2, master, "the patient never holds the master");

    let (mut doc, wd) = Client::joined(addr, &clinician).await;
    let (mut pat, wp) = Client::joined(addr, &patient).await;
    assert_eq!(wd["you"]["role"], "clinician");
    assert_eq!(wp["you"]["role"], "patient");
    assert_eq!(wd["consult"], wp["consult"]);
    let consult = wd["consult"].as_str().expect("consult id");
    assert_eq!(
        signaling::config::derive_link_secret(&master, consult, "patient").as_deref(),
        Ok(k2.as_str()),
        "the patient's secret is derived from the master for this consult"
    );
    // The waiting room is on by default: the patient waits to be let in.
    assert_eq!(wp["state"], "waiting");
    let lobby = doc.expect("lobby").await;
    assert_eq!(lobby["waiting"][0]["id"], wp["you"]["id"]);
    doc.send(serde_json::json!({"type":"admit","id":wp["you"]["id"]}))
        .await;
    pat.expect("admitted").await;
    doc.expect("participant-joined").await;

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for c in [&mut doc, &mut pat] {
        loop {
            let v = c.next().await;
            if v["type"] == "bye" {
                assert_eq!(v["reason"], "shutdown");
                break;
            }
        }
    }
    let mut child_stdout = child.stdout.take().unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let exit = tokio::time::timeout(Duration::from_secs(10), exit)
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child_stdout, &mut stdout).unwrap();
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");

    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        vec!["audit.jsonl".to_string()],
        "nothing else written"
    );
    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(audit.lines().count() >= 6, "{audit}");
    assert!(!audit.contains(&clinician) && !audit.contains(&patient));
    assert!(!audit.contains("Demo Patient"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Start with `args` and `env`, stop, and return (stdout, stderr).
async fn run_briefly(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let (server, addr) = BinServer::start(args, env);
    // Serving: the page answers.
    assert_eq!(get(addr, "/healthz").await.status, 200);
    server.stop()
}

fn secret_file(dir: &std::path::Path, content: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("jwt-secret");
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_links_are_never_printed_when_a_key_is_configured() {
    let dir = std::env::temp_dir().join(format!(
        "spreekkamer-key-{}",
        signaling::token::random_hex_id()
    ));
    let file = secret_file(&dir, &format!("{SECRET}\n"));
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
    let ehr_key = format!("RS256:{keys}/rsa-public.pem");
    type Setup<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let configured: [Setup; 3] = [
        (vec![], vec![("SPREEKKAMER_JWT_SECRET", SECRET)]),
        (vec!["--jwt-secret-file", &file], vec![]),
        (vec!["--jwt-key", &ehr_key], vec![]),
    ];
    for (args, env) in configured {
        for explicit in [false, true] {
            let mut args = args.clone();
            if explicit {
                args.push("--demo-links");
            }
            let (stdout, stderr) = run_briefly(&args, &env).await;
            for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
                assert!(
                    !text.contains(" link: ") && !text.contains("#t="),
                    "{args:?} {env:?}: a link on {stream}:\n{text}"
                );
            }
            assert_eq!(
                stderr.contains("--demo-links ignored: a key is configured"),
                explicit,
                "{args:?}: {stderr}"
            );
        }
    }
    // Demo mode can be quiet too.
    let (stdout, stderr) = run_briefly(&["--demo-links=false"], &[]).await;
    assert!(
        !stdout.contains("#t=") && !stderr.contains("#t="),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_comes_from_a_file_and_a_command_line_secret_is_warned_about() {
    let dir = std::env::temp_dir().join(format!(
        "spreekkamer-secret-{}",
        signaling::token::random_hex_id()
    ));
    let file = secret_file(&dir, &format!("{SECRET}\n"));
    let warning = "/proc/PID/cmdline";

    // From the file (trailing newline ignored): tokens signed with it join.
    let (server, addr) = BinServer::start(&["--jwt-secret-file", &file], &[]);
    let (_c, w) = Client::joined(addr, &token("file-secret", Role::Clinician, "Dr. F")).await;
    assert_eq!(w["consult"], "file-secret");
    let (_, stderr) = server.stop();
    assert!(!stderr.contains(warning), "{stderr}");

    let (_, stderr) = run_briefly(&["--jwt-secret", SECRET], &[]).await;
    assert!(stderr.contains(warning), "{stderr}");
    assert!(!stderr.contains(SECRET), "the warning does not echo it");
    let (_, stderr) = run_briefly(&[], &[("SPREEKKAMER_JWT_SECRET", SECRET)]).await;
    assert!(!stderr.contains(warning), "{stderr}");

    // A short or missing file stops the start, naming the flag.
    let short = secret_file(&dir.join("short"), "too short\n");
    for path in [short.as_str(), "/nonexistent/jwt-secret"] {
        let out = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--jwt-secret-file", path])
            .env_remove("SPREEKKAMER_JWT_SECRET")
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{path}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--jwt-secret-file"), "{err}");
    }
    // Flag and file together are refused.
    let out = Command::new(BIN)
        .args(["--jwt-secret", SECRET, "--jwt-secret-file", &file])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unparsable_redis_url_fails_at_once_instead_of_waiting_for_redis() {
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["sfu", "--redis", "not a url", "--node-id", "n1"])
        .args([
            "--link-secret",
            "0123456789abcdef0123456789abcdef-long-enough",
        ])
        .args(["--link-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .env_remove("SPREEKKAMER_REDIS")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--redis"), "{stderr}");
    assert!(
        !stderr.contains("not a url"),
        "the URL (maybe with a password) is not echoed: {stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}: it waited for a Redis that can never be reached",
        started.elapsed()
    );
}

/// A `redis-server` with a password on a free loopback port, killed on drop.
struct PasswordRedis {
    child: std::process::Child,
    port: u16,
}

impl PasswordRedis {
    fn start(password: &str) -> PasswordRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run /usr/bin/redis-server (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PasswordRedis { child, port }
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `spreekkamer sfu` with the Redis URL in a file until its stderr has
/// a line containing `until` (or 20 s pass); the whole stderr.
fn media_node_stderr(redis_file: &std::path::Path, until: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["sfu", "--node-id", "n-redis-file", "--workers", "1"])
        .args(["--announce-ip", "127.0.0.1"])
        .args(["--link-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args([
            "--link-secret",
            "0123456789abcdef0123456789abcdef-long-enough",
        ])
        .arg("--redis-file")
        .arg(redis_file)
        .env_remove("SPREEKKAMER_REDIS")
        .env_remove("SPREEKKAMER_REDIS_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(until) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[test]
fn the_redis_url_with_its_password_comes_from_a_file_and_is_never_shown() {
    const PASSWORD: &str = "r3dis-Passw0rd-from-a-secret";
    let redis = PasswordRedis::start(PASSWORD);
    let dir = std::env::temp_dir().join(format!("spreekkamer-redis-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // As a mounted Secret or `echo` writes it: surrounding whitespace.
    let good = dir.join("redis-url");
    std::fs::write(
        &good,
        format!("  redis://:{PASSWORD}@127.0.0.1:{}/\n", redis.port),
    )
    .unwrap();
    let log = media_node_stderr(&good, "media node n-redis-file");
    assert!(
        log.contains("media node n-redis-file"),
        "connected and started: {log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");

    // A wrong password: the wait for Redis is logged, without the URL.
    let wrong = dir.join("wrong-redis-url");
    std::fs::write(
        &wrong,
        format!("redis://:not-{PASSWORD}@127.0.0.1:{}/", redis.port),
    )
    .unwrap();
    let log = media_node_stderr(&wrong, "waiting for the directory");
    assert!(log.contains("waiting for the directory"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");

    // An unparsable URL fails at once, without echoing it.
    let bad = dir.join("bad-redis-url");
    std::fs::write(&bad, format!("redis://:{PASSWORD}@127.0.0.1:notaport/")).unwrap();
    let out = Command::new(BIN)
        .args(["sfu", "--node-id", "n1", "--redis-file"])
        .arg(&bad)
        .args([
            "--link-secret",
            "0123456789abcdef0123456789abcdef-long-enough",
        ])
        .args(["--link-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .env_remove("SPREEKKAMER_REDIS")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("--redis-file"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // A missing file, an empty one, and both options at once are refused
    // before anything starts (exit 2), naming the option.
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (args, says) in [
        (
            vec!["--redis-file", dir.join("missing").to_str().unwrap()],
            "--redis-file",
        ),
        (vec!["--redis-file", empty.to_str().unwrap()], "empty"),
        (
            vec![
                "--redis-file",
                good.to_str().unwrap(),
                "--redis",
                "redis://127.0.0.1:1",
            ],
            "--redis",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["sfu", "--node-id", "n1"])
            .args(&args)
            .args([
                "--link-secret",
                "0123456789abcdef0123456789abcdef-long-enough",
            ])
            .env_remove("SPREEKKAMER_REDIS")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
