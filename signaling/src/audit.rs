//! The NEN 7513 access log: one JSON line per security-relevant event.
//!
//! It records who (opaque `sub`, role, and the responsible clinician's `sub`),
//! which consult, what, when, from where (client IP and a coarse browser
//! family) and the outcome. It never
//! holds tokens, keys, names, chat, or media: the fields below are the whole
//! record, so adding anything personal takes a visible change here.
//!
//! This is the only thing the server writes about a consult. The sink is
//! stdout (for a container log collector) or a file opened for appending.
//!
//! Failure lines are rate-limited per source address (junk-token joins from
//! one address wrote 165 KiB/s): past [`FAILURES_PER_SECOND`] in a second,
//! further failures from that address are counted, never silently dropped:
//! an `audit_suppressed` line with the count, the source and the window is
//! written at most every [`SUMMARY_EVERY`] while it lasts and once after.
//! Successful events (someone with a valid token) are never suppressed.

use crate::protocol::{ErrorCode, Role};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Failure lines written per source address per second before the rest
/// are counted into a summary.
pub const FAILURES_PER_SECOND: u32 = 10;
/// Longest time suppressed lines wait for their summary line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Most sources tracked at once; beyond it all new sources share one entry
/// (`ip: null`), so a flood of addresses cannot grow memory.
const MAX_SOURCES: usize = 10_000;

/// Where audit lines go.
#[derive(Debug, Clone)]
pub enum AuditSink {
    Stdout,
    /// Appended to; created if missing.
    File(PathBuf),
    /// Kept in memory (tests).
    Memory(Arc<Mutex<Vec<String>>>),
}

/// Who acted.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
    pub role: Role,
}

/// Where the request came from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct AccessPoint {
    pub ip: Option<IpAddr>,
    pub ua_family: &'static str,
}

impl AccessPoint {
    pub fn new(ip: Option<IpAddr>, user_agent: Option<&str>) -> AccessPoint {
        AccessPoint {
            ip,
            ua_family: ua_family(user_agent.unwrap_or("")),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

/// One audit event. `time` is added when it is written.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEvent {
    pub event: &'static str,
    pub actor: Option<Actor>,
    pub consult: Option<String>,
    /// The opaque `sub` of the clinician responsible for the consult (for
    /// the actor): who minted the invite the actor came with, else the first
    /// clinician who joined the consult. Absent while not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub responsible_clinician: Option<String>,
    /// The actor's participant id in the consult, when they have one.
    pub participant: Option<String>,
    /// The participant acted upon (admit, deny, remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub access_point: AccessPoint,
    pub outcome: Outcome,
    /// The error code of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorCode>,
    /// Event-specific, never personal: an E2EE state, a lock flag, a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl AuditEvent {
    pub fn new(event: &'static str, access_point: AccessPoint) -> AuditEvent {
        AuditEvent {
            event,
            actor: None,
            consult: None,
            responsible_clinician: None,
            participant: None,
            target: None,
            access_point,
            outcome: Outcome::Success,
            reason: None,
            detail: None,
        }
    }

    pub fn failed(mut self, code: ErrorCode) -> Self {
        self.outcome = Outcome::Failure;
        self.reason = Some(code);
        self
    }

    pub fn actor(mut self, sub: &str, role: Role) -> Self {
        self.actor = Some(Actor {
            sub: sub.to_string(),
            role,
        });
        self
    }

    pub fn consult(mut self, consult: &str) -> Self {
        self.consult = Some(consult.to_string());
        self
    }

    /// Set the responsible clinician (see the field); `None` leaves it out.
    pub fn responsible(mut self, sub: Option<&str>) -> Self {
        self.responsible_clinician = sub.map(str::to_string);
        self
    }

    pub fn participant(mut self, id: &str) -> Self {
        self.participant = Some(id.to_string());
        self
    }

    pub fn target(mut self, id: &str) -> Self {
        self.target = Some(id.to_string());
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

enum Writer {
    Stdout,
    File(std::fs::File),
    Memory(Arc<Mutex<Vec<String>>>),
}

/// Failure lines of one source address: this second's count, and what was
/// suppressed since the last summary.
struct Source {
    second: Instant,
    written: u32,
    suppressed: u64,
    since: Option<(Instant, SystemTime)>,
}

/// The audit log. Cheap to share (`Arc`); writes are serialized by a mutex
/// so lines never interleave.
pub struct AuditLog {
    writer: Mutex<Writer>,
    sources: Mutex<HashMap<Option<IpAddr>, Source>>,
    suppressed_total: AtomicU64,
    failures_per_second: u32,
}

impl AuditLog {
    pub fn open(sink: &AuditSink) -> std::io::Result<AuditLog> {
        let writer = match sink {
            AuditSink::Stdout => Writer::Stdout,
            AuditSink::File(path) => Writer::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            AuditSink::Memory(lines) => Writer::Memory(lines.clone()),
        };
        Ok(AuditLog {
            writer: Mutex::new(writer),
            sources: Mutex::new(HashMap::new()),
            suppressed_total: AtomicU64::new(0),
            failures_per_second: FAILURES_PER_SECOND,
        })
    }

    /// Failure lines written per source address per second (default
    /// [`FAILURES_PER_SECOND`]); the rest are counted into summaries.
    pub fn with_failure_rate(mut self, per_second: u32) -> AuditLog {
        self.failures_per_second = per_second.max(1);
        self
    }

    /// Write `event`, unless it is a failure over its source's rate (then
    /// it is counted for the next `audit_suppressed` line).
    pub fn record(&self, event: AuditEvent) {
        if event.outcome == Outcome::Failure {
            let now = Instant::now();
            let summary = {
                let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
                let key = if sources.len() >= MAX_SOURCES
                    && !sources.contains_key(&event.access_point.ip)
                {
                    None
                } else {
                    event.access_point.ip
                };
                let source = sources.entry(key).or_insert(Source {
                    second: now,
                    written: 0,
                    suppressed: 0,
                    since: None,
                });
                if now.saturating_duration_since(source.second) >= Duration::from_secs(1) {
                    source.second = now;
                    source.written = 0;
                }
                if source.written < self.failures_per_second {
                    source.written += 1;
                    None
                } else {
                    source.suppressed += 1;
                    self.suppressed_total.fetch_add(1, Ordering::Relaxed);
                    let since = *source.since.get_or_insert((now, SystemTime::now()));
                    if now.saturating_duration_since(since.0) >= SUMMARY_EVERY {
                        Some(take_summary(key, source, now))
                    } else {
                        return;
                    }
                }
            };
            if let Some(summary) = summary {
                self.write(&summary);
                return;
            }
        }
        self.write(&event);
    }

    /// Write the summary of every source that went quiet (nothing over its
    /// rate for a second) or waited [`SUMMARY_EVERY`], and forget quiet
    /// sources. The server calls this every few seconds.
    pub fn flush_suppressed(&self) {
        let now = Instant::now();
        let summaries: Vec<AuditEvent> = {
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for (key, source) in sources.iter_mut() {
                let quiet = now.saturating_duration_since(source.second) >= Duration::from_secs(1);
                let due = source
                    .since
                    .is_some_and(|(t, _)| now.saturating_duration_since(t) >= SUMMARY_EVERY);
                if source.suppressed > 0 && (quiet || due) {
                    out.push(take_summary(*key, source, now));
                }
            }
            sources.retain(|_, s| {
                s.suppressed > 0 || now.saturating_duration_since(s.second) < Duration::from_secs(1)
            });
            out
        };
        for summary in &summaries {
            self.write(summary);
        }
    }

    /// Failure lines counted instead of written, since start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }

    fn write(&self, event: &AuditEvent) {
        let line = Line {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event,
        };
        let Ok(text) = serde_json::to_string(&line) else {
            return;
        };
        let Ok(mut writer) = self.writer.lock() else {
            return;
        };
        let result = match &mut *writer {
            Writer::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{text}").and_then(|_| out.flush())
            }
            Writer::File(f) => writeln!(f, "{text}"),
            Writer::Memory(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(text);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            // Losing audit lines must be visible to operators.
            log::error!("audit log write failed: {e}");
        }
    }
}

/// The `audit_suppressed` line for `source`, which is reset.
fn take_summary(ip: Option<IpAddr>, source: &mut Source, now: Instant) -> AuditEvent {
    let (started, started_wall) = source.since.take().unwrap_or((now, SystemTime::now()));
    let count = std::mem::take(&mut source.suppressed);
    AuditEvent {
        outcome: Outcome::Failure,
        detail: Some(serde_json::json!({
            "suppressed": count,
            "window_start": humantime::format_rfc3339_millis(started_wall).to_string(),
            "window_secs": now.saturating_duration_since(started).as_secs_f64().ceil() as u64,
        })),
        ..AuditEvent::new(
            "audit_suppressed",
            AccessPoint {
                ip,
                ua_family: "other",
            },
        )
    }
}

/// The client's address for the audit log and the per-client limits
/// (proxy-aware: see [`crate::client_addr`]).
pub use crate::client_addr::client_ip;

/// A coarse browser family: enough for an access log, too little to
/// fingerprint anyone. Order matters: Edge and Chrome both say "Chrome",
/// Chrome says "Safari".
/// The family named `name` as [`ua_family`] spells it (`"other"` for
/// anything else): for an access point passed on by another edge.
pub fn ua_family_named(name: &str) -> &'static str {
    ["Edge", "Firefox", "Chrome", "Safari"]
        .into_iter()
        .find(|f| *f == name)
        .unwrap_or("other")
}

pub fn ua_family(ua: &str) -> &'static str {
    if ua.contains("Edg/") || ua.contains("Edge/") || ua.contains("EdgA/") || ua.contains("EdgiOS/")
    {
        "Edge"
    } else if ua.contains("Firefox/") || ua.contains("FxiOS/") {
        "Firefox"
    } else if ua.contains("Chrome/") || ua.contains("Chromium/") || ua.contains("CriOS/") {
        "Chrome"
    } else if ua.contains("Safari/") && ua.contains("Version/") {
        "Safari"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_map_to_coarse_families() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
                "Chrome",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
                "Edge",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:153.0) Gecko/20100101 Firefox/153.0",
                "Firefox",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
                "Safari",
            ),
            ("curl/8.0", "other"),
            ("", "other"),
        ];
        for (ua, family) in cases {
            assert_eq!(ua_family(ua), family, "{ua}");
        }
    }

    #[test]
    fn audit_line_has_the_documented_fields_and_nothing_else() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = AuditLog::open(&AuditSink::Memory(lines.clone())).unwrap();
        log.record(
            AuditEvent::new(
                "join",
                AccessPoint::new(Some("192.0.2.7".parse().unwrap()), Some("Firefox/153.0")),
            )
            .actor("user-1", Role::Patient)
            .consult("c-1")
            .responsible(Some("doc-1"))
            .participant("00aa"),
        );
        log.record(
            AuditEvent::new("token_rejected", AccessPoint::new(None, None))
                .failed(ErrorCode::TokenExpired),
        );
        let lines = lines.lock().unwrap();
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        let keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            vec![
                "access_point",
                "actor",
                "consult",
                "event",
                "outcome",
                "participant",
                "responsible_clinician",
                "time"
            ]
        );
        assert_eq!(first["responsible_clinician"], "doc-1");
        assert_eq!(
            first["actor"],
            serde_json::json!({"sub":"user-1","role":"patient"})
        );
        assert_eq!(
            first["access_point"],
            serde_json::json!({"ip":"192.0.2.7","ua_family":"Firefox"})
        );
        assert_eq!(first["outcome"], "success");
        let time = first["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
        let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second["outcome"], "failure");
        assert_eq!(second["reason"], "token_expired");
        assert_eq!(second["actor"], serde_json::Value::Null);
        assert!(
            second.get("responsible_clinician").is_none(),
            "left out when unknown"
        );
    }

    #[test]
    fn failures_over_the_rate_are_summarised_per_source() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = AuditLog::open(&AuditSink::Memory(lines.clone())).unwrap();
        let flooder = AccessPoint::new(Some("192.0.2.66".parse().unwrap()), None);
        let other = AccessPoint::new(Some("192.0.2.7".parse().unwrap()), None);
        for _ in 0..1000 {
            log.record(
                AuditEvent::new("token_rejected", flooder.clone())
                    .failed(ErrorCode::TokenMalformed),
            );
        }
        log.record(AuditEvent::new("token_rejected", other).failed(ErrorCode::TokenExpired));
        // Successes are never suppressed, even from the flooding address.
        log.record(AuditEvent::new("join", flooder).actor("u", Role::Patient));
        assert_eq!(
            log.suppressed_total(),
            1000 - u64::from(FAILURES_PER_SECOND)
        );
        assert_eq!(
            lines.lock().unwrap().len(),
            FAILURES_PER_SECOND as usize + 2,
            "the rest is counted, not written"
        );
        log.flush_suppressed();
        assert_eq!(
            lines.lock().unwrap().len(),
            FAILURES_PER_SECOND as usize + 2
        );
        std::thread::sleep(Duration::from_millis(1100));
        log.flush_suppressed();
        let lines = lines.lock().unwrap();
        let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(summary["event"], "audit_suppressed");
        assert_eq!(summary["access_point"]["ip"], "192.0.2.66");
        assert_eq!(summary["outcome"], "failure");
        assert_eq!(summary["detail"]["suppressed"], 990);
        assert!(summary["detail"]["window_secs"].as_u64().unwrap() >= 1);
        assert!(
            summary["detail"]["window_start"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
    }

    #[test]
    fn file_sink_appends() {
        let dir = std::env::temp_dir().join(format!(
            "spreekkamer-audit-{}",
            crate::token::random_hex_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        std::fs::write(&path, "earlier\n").unwrap();
        let log = AuditLog::open(&AuditSink::File(path.clone())).unwrap();
        log.record(AuditEvent::new("consult_created", AccessPoint::default()).consult("c"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("earlier\n"));
        assert_eq!(text.lines().count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
