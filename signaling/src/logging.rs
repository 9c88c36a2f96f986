//! The operational log on stderr (the audit log is `audit.rs`, a separate
//! stream). Three rules hold at every `--log-level`, whatever a dependency
//! logs:
//!
//! 1. **Levels per crate.** Our crates (`signaling`, `spreekkamer`, `sfu`)
//!    log at the chosen level; every dependency at most `warn`, the WebRTC
//!    stack (`rtc*`) only errors (its warnings too at trace). At
//!    trace the WebSocket library logs whole frames — the join token, display
//!    names and relayed messages, hex-encoded — and hyper logs headers; no
//!    pattern can recognise a hex-encoded name, so those lines never pass.
//! 2. **Redaction** of every line that does pass ([`redact`]): JWT-shaped
//!    tokens, the values of `t=` / `k=` / `kl=` / `token=` and similar,
//!    bearer credentials, the string values of JSON fields that carry names,
//!    tokens or relayed data, and long high-entropy strings (link secrets).
//!    Our own code never logs a name, token or payload in the first place.
//! 3. **A limit per call site**: at most [`SITE_LINES`] lines per
//!    [`SITE_WINDOW`] from one `log!` call, then a line that says how many
//!    were held back (`spreekkamer_log_lines_suppressed_total` counts them).
//!    Junk media at debug, or junk joins at info, cannot write a line per
//!    packet or per attempt.

use log::{Level, LevelFilter, Log, Metadata, Record, SetLoggerError};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines one call site may write per window.
pub const SITE_LINES: u32 = 100;
pub const SITE_WINDOW: Duration = Duration::from_secs(10);
/// Call sites tracked at once (the code has a few hundred).
const MAX_SITES: usize = 4096;
/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines held back by the per-call-site limit since start.
pub fn suppressed_total() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

/// How operational log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, for people.
    #[default]
    Text,
    /// One JSON object per line (`time`, `level`, `target`, `message`), for
    /// log collectors. The message is redacted first, as in text.
    Json,
}

/// One JSON log line (without the newline).
pub fn json_line(time: std::time::SystemTime, level: Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "time": humantime::format_rfc3339_millis(time).to_string(),
        "level": level.as_str(),
        "target": target,
        "message": message,
    })
    .to_string()
}

/// Install the operational logger for `level` (once per process).
pub fn init(level: LevelFilter) -> Result<(), SetLoggerError> {
    init_with(level, LogFormat::Text)
}

/// [`init`] with a choice of line format.
pub fn init_with(level: LevelFilter, format: LogFormat) -> Result<(), SetLoggerError> {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(LevelFilter::Trace)
        .target(env_logger::Target::Stderr)
        // Milliseconds: a join takes a few hundred (loadtest/first-picture.sh).
        .format_timestamp_millis();
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            use std::io::Write;
            let line = json_line(
                std::time::SystemTime::now(),
                record.level(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    let inner = builder.build();
    log::set_boxed_logger(Box::new(SafeLogger {
        level,
        inner,
        sites: Mutex::new(Sites::default()),
    }))?;
    log::set_max_level(level);
    Ok(())
}

/// The most verbose level a record from `target` may have when the
/// operator asked for `level`.
pub fn ceiling(target: &str, level: LevelFilter) -> LevelFilter {
    let of = |name: &str| {
        target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    };
    if of("signaling") || of("spreekkamer") || of("sfu") {
        level
    } else if of("rtc") || target.starts_with("rtc_") {
        // Per packet at warn and below (every forged or replayed SRTP
        // packet): the media plane's policy, warnings only at trace.
        sfu::webrtc_log_level(level)
    } else {
        level.min(LevelFilter::Warn)
    }
}

struct SafeLogger {
    level: LevelFilter,
    inner: env_logger::Logger,
    sites: Mutex<Sites>,
}

impl SafeLogger {
    fn write(&self, level: Level, target: &str, args: std::fmt::Arguments<'_>) {
        self.inner.log(
            &Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build(),
        );
    }

    fn summarise(&self, s: &Summary) {
        self.write(
            s.level,
            &s.target,
            format_args!(
                "{} similar lines from {}:{} suppressed in {} s",
                s.count,
                s.target,
                s.line,
                s.window.as_secs()
            ),
        );
    }
}

impl Log for SafeLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= ceiling(metadata.target(), self.level)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = Instant::now();
        let (verdict, due) = {
            let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
            let verdict = sites.check(record, now);
            (verdict, sites.due(now))
        };
        for s in &due {
            self.summarise(s);
        }
        match verdict {
            Verdict::Suppress => {
                SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Emit(summary) => {
                if let Some(s) = summary {
                    self.summarise(&s);
                }
                let text = record.args().to_string();
                let safe = redact(&text);
                self.inner.log(
                    &Record::builder()
                        .metadata(record.metadata().clone())
                        .module_path(record.module_path())
                        .file(record.file())
                        .line(record.line())
                        .args(format_args!("{safe}"))
                        .build(),
                );
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Held-back lines of one call site, to be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    level: Level,
    target: String,
    line: u32,
    count: u64,
    window: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Write the line (after the summary of what the site held back).
    Emit(Option<Summary>),
    Suppress,
}

struct Site {
    started: Instant,
    lines: u32,
    suppressed: u64,
    level: Level,
    target: String,
    line: u32,
}

/// Line counts per call site (target, file, line), in fixed windows.
#[derive(Default)]
struct Sites {
    sites: HashMap<u64, Site>,
    /// Sites holding back lines whose window may have ended.
    pending: usize,
    last_scan: Option<Instant>,
}

impl Sites {
    fn key(record: &Record<'_>) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        record.target().hash(&mut h);
        record.file().hash(&mut h);
        record.line().hash(&mut h);
        h.finish()
    }

    fn check(&mut self, record: &Record<'_>, now: Instant) -> Verdict {
        let key = Self::key(record);
        if !self.sites.contains_key(&key) && self.sites.len() >= MAX_SITES {
            self.sites
                .retain(|_, s| s.suppressed > 0 || now.duration_since(s.started) < SITE_WINDOW);
            if self.sites.len() >= MAX_SITES {
                return Verdict::Suppress;
            }
        }
        let site = self.sites.entry(key).or_insert_with(|| Site {
            started: now,
            lines: 0,
            suppressed: 0,
            level: record.level(),
            target: record.target().to_string(),
            line: record.line().unwrap_or(0),
        });
        let mut summary = None;
        if now.duration_since(site.started) >= SITE_WINDOW {
            if site.suppressed > 0 {
                self.pending -= 1;
                summary = Some(take_summary(site, now));
            }
            site.started = now;
            site.lines = 0;
        }
        if site.lines < SITE_LINES {
            site.lines += 1;
            Verdict::Emit(summary)
        } else {
            if site.suppressed == 0 {
                self.pending += 1;
            }
            site.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Summaries of sites whose window ended while holding lines back
    /// (looked for at most once a second, and only when there are any).
    fn due(&mut self, now: Instant) -> Vec<Summary> {
        if self.pending == 0
            || self
                .last_scan
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return Vec::new();
        }
        self.last_scan = Some(now);
        let mut out = Vec::new();
        for site in self.sites.values_mut() {
            if site.suppressed > 0 && now.duration_since(site.started) >= SITE_WINDOW {
                out.push(take_summary(site, now));
                site.started = now;
                site.lines = 0;
            }
        }
        self.pending -= out.len();
        out
    }
}

fn take_summary(site: &mut Site, now: Instant) -> Summary {
    let count = std::mem::take(&mut site.suppressed);
    Summary {
        level: site.level,
        target: site.target.clone(),
        line: site.line,
        count,
        window: now.duration_since(site.started),
    }
}

/// `name=value` parameters whose value is a secret (URL fragments and
/// queries: `t` the join token, `k` / `kl` link secrets).
const SECRET_PARAMS: &[&str] = &[
    "t",
    "k",
    "kl",
    "token",
    "access_token",
    "id_token",
    "jwt",
    "secret",
    "key",
    "password",
    "name",
    "resume",
    "ticket",
    "credential",
];
/// JSON fields whose string value is a token, a name or relayed content.
const SECRET_FIELDS: &[&str] = &[
    "token",
    "name",
    "data",
    "text",
    "sdp",
    "candidate",
    "secret",
    "key",
    "link_secret",
    "password",
    "authorization",
    "resume",
    "ticket",
    "credential",
];

/// `text` with every secret it recognisably holds replaced by
/// [`REDACTED`]. Borrowed when nothing changed.
pub fn redact(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some((keep, skip)) = secret_at(b, i) {
            out.push_str(&text[copied..keep]);
            out.push_str(REDACTED);
            copied = skip;
            i = skip.max(i + 1);
            continue;
        }
        if is_word(b[i]) && (i == 0 || !is_word(b[i - 1])) {
            let end = i + b[i..].iter().take_while(|&&c| is_word(c)).count();
            if sensitive_word(&text[i..end]) {
                out.push_str(&text[copied..i]);
                out.push_str(REDACTED);
                copied = end;
            }
            i = end;
            continue;
        }
        i += 1;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Characters of base64url words, dotted tokens and ids.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

/// A secret starting at `i`: (end of what to keep, start of what follows
/// the secret).
fn secret_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let boundary = i == 0 || !(is_word(b[i - 1]));
    if b[i] == b'"' || (b[i] == b'\\' && b.get(i + 1) == Some(&b'"')) {
        return json_field_at(b, i);
    }
    if !boundary {
        return None;
    }
    let rest = &b[i..];
    if starts_with_ignore_case(rest, b"bearer ") {
        let start = i + 7;
        let len = b[start..]
            .iter()
            .take_while(|&&c| !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b','))
            .count();
        return (len > 0).then_some((start, start + len));
    }
    for name in SECRET_PARAMS {
        let n = name.len();
        if rest.len() > n && rest[n] == b'=' && rest[..n].eq_ignore_ascii_case(name.as_bytes()) {
            let start = i + n + 1;
            let len = b[start..]
                .iter()
                .take_while(|&&c| {
                    !c.is_ascii_whitespace()
                        && !matches!(c, b'&' | b'#' | b'"' | b'\'' | b';' | b',' | b')' | b'>')
                })
                .count();
            return (len > 0).then_some((start, start + len));
        }
    }
    None
}

/// `"field": "value"` (also `\"field\":\"value\"` inside an escaped
/// string) with `field` in [`SECRET_FIELDS`].
fn json_field_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let escaped = b[i] == b'\\';
    let quote: &[u8] = if escaped { b"\\\"" } else { b"\"" };
    let mut p = i + quote.len();
    let field = SECRET_FIELDS.iter().find(|f| {
        b.get(p..).is_some_and(|r| {
            r.starts_with(f.as_bytes()) && r.get(f.len()..).is_some_and(|r| r.starts_with(quote))
        })
    })?;
    p += field.len() + quote.len();
    while b.get(p).is_some_and(u8::is_ascii_whitespace) {
        p += 1;
    }
    if b.get(p) != Some(&b':') {
        return None;
    }
    p += 1;
    while b.get(p).is_some_and(u8::is_ascii_whitespace) {
        p += 1;
    }
    if !b[p..].starts_with(quote) {
        return None;
    }
    let start = p + quote.len();
    let mut q = start;
    while q < b.len() {
        if escaped {
            if b[q..].starts_with(b"\\\"") {
                break;
            }
            q += if b[q] == b'\\' { 2 } else { 1 };
        } else {
            match b[q] {
                b'"' => break,
                b'\\' => q += 2,
                _ => q += 1,
            }
        }
    }
    let end = q.min(b.len());
    Some((start, end))
}

fn starts_with_ignore_case(b: &[u8], prefix: &[u8]) -> bool {
    b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A JWT (or any dotted token with a long mixed-case part), a long
/// high-entropy string (a link secret), or a long hex dump.
fn sensitive_word(word: &str) -> bool {
    if word.contains("eyJ") {
        return true;
    }
    let dotted = word.split('.').count() >= 3
        && word.split('.').any(|s| {
            s.len() >= 16 && has(s, u8::is_ascii_uppercase) && has(s, u8::is_ascii_lowercase)
        });
    dotted || word.split('.').any(high_entropy)
}

fn has(s: &str, f: impl Fn(&u8) -> bool) -> bool {
    s.as_bytes().iter().any(f)
}

fn high_entropy(s: &str) -> bool {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.len() >= 64 && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return true;
    }
    let upper = has(s, u8::is_ascii_uppercase);
    let lower = has(s, u8::is_ascii_lowercase);
    let other = has(s, |c| c.is_ascii_digit() || matches!(c, b'-' | b'_'));
    (s.len() >= 20 && upper && lower && other) || (s.len() >= 32 && upper && lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_one_object_with_the_redacted_message() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let raw = format!("join with {token} and \"quote\"\nnewline");
        let safe = redact(&raw);
        let line = json_line(
            std::time::UNIX_EPOCH,
            Level::Warn,
            "signaling::session",
            &safe,
        );
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "signaling::session");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        let message = v["message"].as_str().expect("message");
        assert!(!message.contains(token), "{message}");
        assert!(message.contains(REDACTED), "{message}");
    }

    const JWT: &str =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkci0xIn0.c2lnbmF0dXJlX2J5dGVzX2hlcmU";
    const SECRET: &str = "q7Zk1Xw9P0aBcDeFgHiJkLmNoPqRsTuVwXyZ012345A";

    fn clean(text: &str) -> String {
        redact(text).into_owned()
    }

    #[test]
    fn tokens_link_secrets_and_credentials_are_redacted_anywhere() {
        for (text, gone) in [
            (
                format!("GET /c#t={JWT}&k={SECRET}&kl={SECRET}"),
                vec![JWT, SECRET],
            ),
            (format!("received {JWT} from peer"), vec![JWT]),
            (format!("authorization: Bearer {JWT}"), vec![JWT]),
            (
                format!("Authorization: bearer opaque-{SECRET}"),
                vec![SECRET],
            ),
            (
                "url=https://h/c?token=abc123&x=1".to_string(),
                vec!["abc123"],
            ),
            (format!("bare secret {SECRET} in text"), vec![SECRET]),
            (format!("(k={SECRET})"), vec![SECRET]),
        ] {
            let out = clean(&text);
            for g in gone {
                assert!(!out.contains(g), "{text} -> {out}");
            }
            assert!(out.contains(REDACTED), "{out}");
        }
        assert_eq!(clean("x=1&t=abc"), format!("x=1&t={REDACTED}"));
    }

    #[test]
    fn names_and_relayed_content_in_json_are_redacted() {
        let frame = r#"{"type":"join","v":1,"token":"opaque","name":"Mw. Jansen"}"#;
        let out = clean(frame);
        assert!(!out.contains("opaque") && !out.contains("Jansen"), "{out}");
        assert!(out.contains(r#""type":"join""#), "{out}");
        let relay = r#"{"type":"relay","to":"p1","kind":"chat","data":"the diagnosis \"x\" is"}"#;
        let out = clean(relay);
        assert!(!out.contains("diagnosis"), "{out}");
        assert!(out.ends_with(r#""data":"[redacted]"}"#), "{out}");
        let debug = format!("{:?}", r#"{"name": "Mw. Jansen"}"#);
        assert!(!clean(&debug).contains("Jansen"), "{debug}");
        let hex: String = frame.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!clean(&format!("payload: 0x{hex}")).contains(&hex));
    }

    #[test]
    fn resume_tickets_are_redacted_like_tokens() {
        let keys = crate::resume::ResumeKeys::new(b"k", crate::resume::DEFAULT_TTL);
        let t = keys
            .mint("c1", "sub-p", crate::protocol::Role::Patient, 1_900_000_000)
            .ticket;
        let tag = t.rsplit('.').next().unwrap();
        for text in [
            format!(r#"{{"type":"join","v":1,"token":"x","resume":"{t}"}}"#),
            format!(r#"{{"type":"resume","ticket":"{t}","expires":1}}"#),
            format!("bare ticket {t} in text"),
            format!("?resume={t}&ticket={t}"),
        ] {
            let out = clean(&text);
            assert!(!out.contains(&t) && !out.contains(tag), "{text} -> {out}");
        }
    }

    #[test]
    fn ordinary_lines_are_left_alone() {
        for line in [
            "participant 0123456789abcdef joined (InCall)",
            "listening on 127.0.0.1:8080",
            "join refused: token_expired",
            "media worker 0: active speaker changed",
            "invite created for a consult (by the API)",
            "i1-0123456789abcdef-1800000000-0123456789abcdef0123456789abcdef",
            "spreekkamer_sfu::worker rank=3 linked-consult",
        ] {
            assert!(matches!(redact(line), Cow::Borrowed(_)), "{line}");
        }
    }

    #[test]
    fn dependencies_log_at_most_warnings_and_the_webrtc_stack_errors() {
        use LevelFilter::*;
        assert_eq!(ceiling("signaling::session", Trace), Trace);
        assert_eq!(ceiling("spreekkamer", Debug), Debug);
        assert_eq!(ceiling("sfu::peer", Trace), Trace);
        assert_eq!(ceiling("sfuzz", Trace), Warn, "a prefix is not a crate");
        for dep in [
            "tungstenite::protocol",
            "tokio_tungstenite",
            "warp::server",
            "hyper::proto::h1::io",
        ] {
            assert_eq!(ceiling(dep, Trace), Warn, "{dep}");
            assert_eq!(ceiling(dep, Info), Warn, "{dep}");
            assert_eq!(ceiling(dep, Error), Error, "{dep}");
        }
        assert_eq!(ceiling("rtc_srtp::context", Trace), Warn);
        assert_eq!(ceiling("rtc_srtp::context", Debug), Error);
        assert_eq!(ceiling("rtc", Info), Error);
    }

    fn record_at(line: u32) -> Record<'static> {
        Record::builder()
            .level(Level::Debug)
            .target("sfu::peer")
            .file(Some("sfu/src/peer.rs"))
            .line(Some(line))
            .args(format_args!("peer handle_read"))
            .build()
    }

    #[test]
    fn one_call_site_writes_a_bounded_number_of_lines_then_a_summary() {
        let mut sites = Sites::default();
        let t0 = Instant::now();
        let mut emitted = 0;
        for _ in 0..10_000 {
            if sites.check(&record_at(682), t0) != Verdict::Suppress {
                emitted += 1;
            }
        }
        assert_eq!(emitted, SITE_LINES);
        // Another site is not held back by the first.
        assert_eq!(sites.check(&record_at(692), t0), Verdict::Emit(None));
        // In the next window the first line comes with the count.
        let t1 = t0 + SITE_WINDOW;
        match sites.check(&record_at(682), t1) {
            Verdict::Emit(Some(s)) => {
                assert_eq!(s.count, 10_000 - u64::from(SITE_LINES));
                assert_eq!(s.line, 682);
            }
            other => panic!("{other:?}"),
        }
        assert!(sites.due(t1).is_empty(), "reported once");
    }

    #[test]
    fn a_site_that_fell_silent_is_still_summarised() {
        let mut sites = Sites::default();
        let t0 = Instant::now();
        for _ in 0..(SITE_LINES + 5) {
            sites.check(&record_at(1), t0);
        }
        assert!(sites.due(t0).is_empty(), "window not over");
        let later = t0 + SITE_WINDOW + Duration::from_secs(1);
        let due = sites.due(later);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 5);
        assert!(sites.due(later + Duration::from_secs(5)).is_empty());
    }
}
