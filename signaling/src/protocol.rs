//! The wire protocol of docs/PROTOCOL.md as Rust types.
//!
//! Every WebSocket text frame holds one JSON object tagged by `type`. These
//! types are the only place the edge names message fields, so the document
//! and the code can be compared side by side. Unknown fields are ignored by
//! serde's default; unknown `type`s fail to parse and become `bad_message`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The protocol version this server speaks (`join.v`, `welcome.v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Who a participant is in the consult (the token's `role` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Clinician,
    Patient,
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Patient => "patient",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "clinician" => Some(Role::Clinician),
            "patient" => Some(Role::Patient),
            "guest" => Some(Role::Guest),
            _ => None,
        }
    }
}

/// A participant as the others see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Microphone on.
    pub audio: bool,
    /// Camera on.
    pub video: bool,
    /// Sharing their screen now (at most one participant per consult).
    #[serde(default)]
    pub screen: bool,
}

/// The `RTCIceCandidateInit` a browser trickles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
}

/// What an opaque relayed blob carries (the server never reads `data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayKind {
    Key,
    Chat,
    Photo,
}

/// A participant's end-to-end encryption status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E2eeState {
    On,
    Unsupported,
}

impl E2eeState {
    pub fn as_str(self) -> &'static str {
        match self {
            E2eeState::On => "on",
            E2eeState::Unsupported => "unsupported",
        }
    }
}

/// The most of a publisher's video a subscriber asks for (`video-prefs`).
/// The names are the wire strings; the media plane may still send less when
/// the network cannot carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoQuality {
    Low,
    Medium,
    High,
}

impl From<VideoQuality> for sfu::VideoQuality {
    fn from(q: VideoQuality) -> sfu::VideoQuality {
        match q {
            VideoQuality::Low => sfu::VideoQuality::Low,
            VideoQuality::Medium => sfu::VideoQuality::Medium,
            VideoQuality::High => sfu::VideoQuality::High,
        }
    }
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// `token` and `v` are optional in the type so that their absence gets
    /// its own error code (`token_missing`, `unsupported_version`) instead of
    /// a generic parse failure.
    Join {
        #[serde(default)]
        v: Option<u64>,
        #[serde(default)]
        token: Option<String>,
        /// A resume ticket (`resume.rs`): back into the call without a
        /// second admission, if it is valid for the token's person.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: CandidateInit,
    },
    IceRestart,
    Mute {
        audio: bool,
        video: bool,
    },
    Relay {
        to: String,
        kind: RelayKind,
        data: String,
    },
    E2ee {
        state: E2eeState,
        #[serde(default)]
        verified: Vec<String>,
    },
    /// What this participant wants to receive. Replaces the previous
    /// preferences as a whole; publishers not named get `high`.
    VideoPrefs {
        #[serde(rename = "audioOnly")]
        audio_only: bool,
        /// Per publisher (participant id). A `BTreeMap` so a repeated key
        /// cannot make two entries; the count is bounded by the session.
        #[serde(default)]
        quality: BTreeMap<String, VideoQuality>,
    },
    /// Start or stop sharing the screen: a clinician always may, anyone
    /// else only while the clinician allows it (`screen-allow`).
    Screen {
        on: bool,
    },
    /// This participant's end-to-end key for `from` has just arrived and
    /// its browser cannot ask for a keyframe itself (Chromium's encoded
    /// streams API has no such call): ask `from`'s browser for one.
    Keyframe {
        from: String,
    },
    Leave,
    Ping,
    // Lobby and host actions (clinician only).
    Admit {
        id: String,
    },
    Deny {
        id: String,
    },
    Remove {
        id: String,
    },
    Lock {
        locked: bool,
    },
    /// Whether patients and guests may share their screen (off at the start
    /// of every consult; turning it off stops a share of theirs).
    ScreenAllow {
        allowed: bool,
    },
    End,
    Invite {
        role: Role,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        ttl_secs: Option<u64>,
    },
    RevokeInvite {
        jti: String,
    },
    /// Connectivity check (first message instead of `join`): a throwaway
    /// media connection, no consult. Optional fields as in `join`.
    Probe {
        #[serde(default)]
        v: Option<u64>,
        #[serde(default)]
        token: Option<String>,
    },
    /// Link check (first message instead of `join`, `link_check.rs`): would
    /// this token be let in now? Answered with one `link-check`, then the
    /// close; joins nothing. Optional fields as in `join`.
    Check {
        #[serde(default)]
        v: Option<u64>,
        #[serde(default)]
        token: Option<String>,
    },
}

impl ClientMessage {
    /// The `type` tag, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::IceRestart => "ice-restart",
            ClientMessage::Mute { .. } => "mute",
            ClientMessage::Relay { .. } => "relay",
            ClientMessage::E2ee { .. } => "e2ee",
            ClientMessage::VideoPrefs { .. } => "video-prefs",
            ClientMessage::Screen { .. } => "screen",
            ClientMessage::Keyframe { .. } => "keyframe",
            ClientMessage::ScreenAllow { .. } => "screen-allow",
            ClientMessage::Leave => "leave",
            ClientMessage::Ping => "ping",
            ClientMessage::Admit { .. } => "admit",
            ClientMessage::Deny { .. } => "deny",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::Lock { .. } => "lock",
            ClientMessage::End => "end",
            ClientMessage::Invite { .. } => "invite",
            ClientMessage::RevokeInvite { .. } => "revoke-invite",
            ClientMessage::Probe { .. } => "probe",
            ClientMessage::Check { .. } => "check",
        }
    }
}

/// Whether a participant is in the call or still in the waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JoinState {
    InCall,
    Waiting,
}

/// Why a participant left, as told to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeftReason {
    Left,
    Removed,
    Disconnected,
    Ended,
}

/// Why the server says goodbye to this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByeReason {
    Left,
    Shutdown,
    Ended,
    Removed,
    /// Sent to a waiting participant the clinician turned away.
    Denied,
    /// The same person joined again (reload, second device); this older
    /// connection is closed.
    Replaced,
}

/// The limits this server enforces, told to the client in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub messages_burst: u32,
    pub max_participants: usize,
    pub relay_bytes_per_second: u32,
    pub relay_bytes_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            messages_burst: 100,
            max_participants: 6,
            relay_bytes_per_second: 512 * 1024,
            relay_bytes_burst: 2 * 1024 * 1024,
        }
    }
}

/// Someone in the waiting room, as a clinician sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyEntry {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Seconds since the UNIX epoch when they started waiting.
    pub since: u64,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    Welcome {
        v: u32,
        /// Boxed: it keeps `ServerMessage` (and every queue of them) small,
        /// now that `welcome` also carries `host` and `contact`.
        you: Box<Participant>,
        consult: String,
        state: JoinState,
        participants: Vec<Participant>,
        limits: Limits,
        /// Clinicians only: who is waiting, and whether the consult is locked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lobby: Option<Vec<LobbyEntry>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked: Option<bool>,
        /// Only when the edge has TURN configured: short-lived TURN
        /// credentials for `RTCConfiguration.iceServers` (`turn.rs`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Vec<crate::turn::IceServer>>,
        /// Only with `--turn-force-relay`: `true`, use relayed candidates
        /// only (`iceTransportPolicy: 'relay'`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        force_relay: Option<bool>,
        /// The token's `host` claim, when it has one: the clinician who
        /// will let a waiting patient in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// The care provider's contact line (`--contact`), when configured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact: Option<String>,
    },
    Offer {
        sdp: String,
    },
    ParticipantJoined {
        participant: Participant,
    },
    ParticipantLeft {
        id: String,
        reason: LeftReason,
    },
    Mute {
        id: String,
        audio: bool,
        video: bool,
    },
    Relay {
        from: String,
        kind: RelayKind,
        data: String,
    },
    E2ee {
        id: String,
        state: E2eeState,
        verified: Vec<String>,
    },
    MediaFailed {
        reason: String,
    },
    /// The media session moved to another media node (the one holding it
    /// died): drop the peer connection, keep everything else; an `offer`
    /// for a fresh one follows.
    MediaReset,
    /// The participant who is speaking now, or `None` (JSON `null`) when
    /// nobody has spoken for a while. Admitted participants only.
    Speaker {
        participant: Option<String>,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
    Bye {
        reason: ByeReason,
    },
    /// To clinicians: the full waiting-room list, sent whenever it changes.
    Lobby {
        waiting: Vec<LobbyEntry>,
    },
    /// To a waiting participant: the clinician let them in. Followed by the
    /// roster as `participant-joined` messages and the first `offer`.
    Admitted {
        participants: Vec<Participant>,
    },
    /// To everyone in the call: the consult was (un)locked.
    Locked {
        locked: bool,
    },
    /// To everyone in the call, the sharer too: `id` started or stopped
    /// sharing their screen. `on: false` for yourself means stop (the
    /// clinician withdrew the permission, or someone else started).
    Screen {
        id: String,
        on: bool,
    },
    /// To everyone in the call: whether patients and guests may share their
    /// screen now. Sent when it changes, and to whoever is let in while it
    /// is allowed.
    ScreenAllowed {
        allowed: bool,
    },
    /// To the clinician who asked: a signed invite token. The page builds
    /// the link `{origin}/c#t={token}&k={link secret}` itself, so the E2EE
    /// link secret never passes through the server.
    InviteCreated {
        jti: String,
        role: Role,
        token: String,
        /// Seconds since the UNIX epoch.
        expires: u64,
    },
    /// To the clinician who asked: the invite no longer works.
    InviteRevoked {
        jti: String,
    },
    /// To a participant in the call: present `ticket` in the next `join`
    /// to come back without a second admission (`resume.rs`).
    Resume {
        ticket: String,
        /// Seconds since the UNIX epoch.
        expires: u64,
    },
    /// Connectivity check only, before its `offer`, when the edge has TURN
    /// configured: the same credentials a `welcome` carries.
    IceServers {
        ice_servers: Vec<crate::turn::IceServer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        force_relay: Option<bool>,
    },
    /// The end of a connectivity check (`probe`): whether ICE and DTLS to
    /// the media server came up, and how long that took.
    ProbeResult {
        connected: bool,
        /// Milliseconds from the probe to `connected` (only when connected).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ms: Option<u64>,
        /// Why not (`timeout`, `failed`, `refused`), when not connected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The answer to `check`, followed by the close: would a `join` with
    /// this token be let in now? `ok: true` carries only what the token
    /// itself says (`role`, `name`, `expires`, `host`); `ok: false` only the
    /// `code` a join would get. Both carry the operator's `contact` line
    /// when one is configured.
    LinkCheck {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The token's `exp`, seconds since the UNIX epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contact: Option<String>,
    },
}

impl ServerMessage {
    /// The error message for `code`, with its default text and fatality.
    pub fn error(code: ErrorCode) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: code.message().to_string(),
            fatal: code.fatal(),
        }
    }

    /// Serialize for the wire. Serializing these types cannot fail (no
    /// maps with non-string keys, no custom serializers); the fallback keeps
    /// that promise without a panic.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"bad_message","message":"internal serialization error","fatal":false}"#
                .to_string()
        })
    }
}

/// Every error code of docs/PROTOCOL.md. The serialized strings are stable:
/// clients and the audit log match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    UnsupportedVersion,
    NotJoined,
    JoinTimeout,
    MessageTooLarge,
    RateLimited,
    TokenMissing,
    TokenTooLarge,
    TokenMalformed,
    TokenBadAlgorithm,
    TokenBadSignature,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongIssuer,
    TokenWrongAudience,
    TokenMissingClaim,
    TokenBadClaim,
    TokenRevoked,
    ConsultFull,
    ConsultLocked,
    ConsultEnded,
    Forbidden,
    UnknownParticipant,
    MediaError,
    ShuttingDown,
    UnknownInvite,
    /// A cluster dependency (the directory, every media node) is down.
    ServiceUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::BadMessage,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotJoined,
        ErrorCode::JoinTimeout,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::TokenMissing,
        ErrorCode::TokenTooLarge,
        ErrorCode::TokenMalformed,
        ErrorCode::TokenBadAlgorithm,
        ErrorCode::TokenBadSignature,
        ErrorCode::TokenExpired,
        ErrorCode::TokenNotYetValid,
        ErrorCode::TokenWrongIssuer,
        ErrorCode::TokenWrongAudience,
        ErrorCode::TokenMissingClaim,
        ErrorCode::TokenBadClaim,
        ErrorCode::TokenRevoked,
        ErrorCode::ConsultFull,
        ErrorCode::ConsultLocked,
        ErrorCode::ConsultEnded,
        ErrorCode::Forbidden,
        ErrorCode::UnknownParticipant,
        ErrorCode::MediaError,
        ErrorCode::ShuttingDown,
        ErrorCode::UnknownInvite,
        ErrorCode::ServiceUnavailable,
    ];

    /// The stable wire string (`token_expired`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::JoinTimeout => "join_timeout",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TokenMissing => "token_missing",
            ErrorCode::TokenTooLarge => "token_too_large",
            ErrorCode::TokenMalformed => "token_malformed",
            ErrorCode::TokenBadAlgorithm => "token_bad_algorithm",
            ErrorCode::TokenBadSignature => "token_bad_signature",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenNotYetValid => "token_not_yet_valid",
            ErrorCode::TokenWrongIssuer => "token_wrong_issuer",
            ErrorCode::TokenWrongAudience => "token_wrong_audience",
            ErrorCode::TokenMissingClaim => "token_missing_claim",
            ErrorCode::TokenBadClaim => "token_bad_claim",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::ConsultFull => "consult_full",
            ErrorCode::ConsultLocked => "consult_locked",
            ErrorCode::ConsultEnded => "consult_ended",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnknownParticipant => "unknown_participant",
            ErrorCode::MediaError => "media_error",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::UnknownInvite => "unknown_invite",
            ErrorCode::ServiceUnavailable => "service_unavailable",
        }
    }

    /// Parse a wire string (used for codes the media plane reports).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// A fatal error is followed by the server closing the connection.
    pub fn fatal(self) -> bool {
        !matches!(
            self,
            ErrorCode::BadMessage
                | ErrorCode::RateLimited
                | ErrorCode::Forbidden
                | ErrorCode::UnknownParticipant
                | ErrorCode::MediaError
                | ErrorCode::UnknownInvite
        )
    }

    /// Default English text. The browser shows its own localized text per
    /// code; this is for other clients and for people reading the wire.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "The message could not be understood.",
            ErrorCode::UnsupportedVersion => {
                "This protocol version is not supported; reload the page."
            }
            ErrorCode::NotJoined => "The first message must be a join.",
            ErrorCode::JoinTimeout => "No join message arrived in time.",
            ErrorCode::MessageTooLarge => "The message is too large.",
            ErrorCode::RateLimited => "Too many messages; this one was dropped.",
            ErrorCode::TokenMissing => "The link holds no access token.",
            ErrorCode::TokenTooLarge => "The access token is too large.",
            ErrorCode::TokenMalformed => "The access token is damaged.",
            ErrorCode::TokenBadAlgorithm => {
                "The access token uses an algorithm this server does not accept."
            }
            ErrorCode::TokenBadSignature => "The access token's signature is not valid.",
            ErrorCode::TokenExpired => "The link has expired.",
            ErrorCode::TokenNotYetValid => "The link is not valid yet.",
            ErrorCode::TokenWrongIssuer => "The link was issued by an unknown party.",
            ErrorCode::TokenWrongAudience => "The link is meant for another service.",
            ErrorCode::TokenMissingClaim => "The access token lacks required information.",
            ErrorCode::TokenBadClaim => "The access token holds invalid information.",
            ErrorCode::TokenRevoked => "The link is no longer valid for this consult.",
            ErrorCode::ConsultFull => "The consult has its maximum number of participants.",
            ErrorCode::ConsultLocked => "The consult is locked.",
            ErrorCode::ConsultEnded => "The consult has ended.",
            ErrorCode::Forbidden => "Only the clinician can do this.",
            ErrorCode::UnknownParticipant => "That participant is not in the consult.",
            ErrorCode::MediaError => "The media server refused the request.",
            ErrorCode::ShuttingDown => "The server is restarting; try again in a moment.",
            ErrorCode::UnknownInvite => "That invite belongs to another consult.",
            ErrorCode::ServiceUnavailable => {
                "The service is temporarily unavailable; try again in a minute."
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> ClientMessage {
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn every_client_message_round_trips() {
        let messages = vec![
            ClientMessage::Join {
                v: Some(1),
                token: Some("a.b.c".into()),
                resume: None,
            },
            ClientMessage::Join {
                v: Some(1),
                token: Some("a.b.c".into()),
                resume: Some("r1.e30.AAAA".into()),
            },
            ClientMessage::Answer { sdp: "v=0".into() },
            ClientMessage::Candidate {
                candidate: CandidateInit {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                },
            },
            ClientMessage::IceRestart,
            ClientMessage::Mute {
                audio: true,
                video: false,
            },
            ClientMessage::Relay {
                to: "00112233aabbccdd".into(),
                kind: RelayKind::Photo,
                data: "opaque".into(),
            },
            ClientMessage::E2ee {
                state: E2eeState::On,
                verified: vec!["x".into()],
            },
            ClientMessage::VideoPrefs {
                audio_only: true,
                quality: BTreeMap::from([("p1".to_string(), VideoQuality::Medium)]),
            },
            ClientMessage::Screen { on: true },
            ClientMessage::Keyframe { from: "p1".into() },
            ClientMessage::ScreenAllow { allowed: true },
            ClientMessage::Leave,
            ClientMessage::Ping,
            ClientMessage::Admit { id: "a".into() },
            ClientMessage::Deny { id: "a".into() },
            ClientMessage::Remove { id: "a".into() },
            ClientMessage::Lock { locked: true },
            ClientMessage::End,
            ClientMessage::Invite {
                role: Role::Guest,
                name: Some("Tolk".into()),
                ttl_secs: Some(3600),
            },
            ClientMessage::RevokeInvite { jti: "j".into() },
            ClientMessage::Probe {
                v: Some(1),
                token: Some("a.b.c".into()),
            },
            ClientMessage::Check {
                v: Some(1),
                token: Some("a.b.c".into()),
            },
        ];
        for m in messages {
            let text = serde_json::to_string(&m).expect("serializes");
            let back: ClientMessage = serde_json::from_str(&text).expect("parses back");
            assert_eq!(back, m, "{text}");
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert_eq!(v["type"], m.kind(), "type tag of {text}");
        }
    }

    #[test]
    fn client_messages_use_the_documented_field_names() {
        assert_eq!(
            parse(
                json!({"type":"candidate","candidate":{"candidate":"c","sdpMid":"1","sdpMLineIndex":1}})
            ),
            ClientMessage::Candidate {
                candidate: CandidateInit {
                    candidate: "c".into(),
                    sdp_mid: Some("1".into()),
                    sdp_m_line_index: Some(1)
                }
            }
        );
        assert_eq!(
            parse(json!({"type":"ice-restart"})),
            ClientMessage::IceRestart
        );
        assert_eq!(
            parse(json!({"type":"revoke-invite","jti":"x"})),
            ClientMessage::RevokeInvite { jti: "x".into() }
        );
    }

    #[test]
    fn video_prefs_use_the_documented_shape_and_refuse_bad_values() {
        assert_eq!(
            parse(
                json!({"type":"video-prefs","audioOnly":false,"quality":{"a":"low","b":"medium","c":"high"}})
            ),
            ClientMessage::VideoPrefs {
                audio_only: false,
                quality: BTreeMap::from([
                    ("a".to_string(), VideoQuality::Low),
                    ("b".to_string(), VideoQuality::Medium),
                    ("c".to_string(), VideoQuality::High),
                ]),
            }
        );
        assert_eq!(
            parse(json!({"type":"video-prefs","audioOnly":true})),
            ClientMessage::VideoPrefs {
                audio_only: true,
                quality: BTreeMap::new()
            }
        );
        for bad in [
            json!({"type":"video-prefs"}),
            json!({"type":"video-prefs","audioOnly":"yes"}),
            json!({"type":"video-prefs","audioOnly":false,"quality":{"a":"ultra"}}),
            json!({"type":"video-prefs","audioOnly":false,"quality":{"a":2}}),
            json!({"type":"video-prefs","audioOnly":false,"quality":["a","low"]}),
        ] {
            assert!(
                serde_json::from_value::<ClientMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn speaker_names_a_participant_or_null() {
        let v: serde_json::Value = serde_json::from_str(
            &ServerMessage::Speaker {
                participant: Some("ab".into()),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(v, json!({"type":"speaker","participant":"ab"}));
        let v: serde_json::Value =
            serde_json::from_str(&ServerMessage::Speaker { participant: None }.to_json()).unwrap();
        assert_eq!(v, json!({"type":"speaker","participant":null}));
    }

    #[test]
    fn unknown_fields_are_ignored_and_unknown_types_refused() {
        assert_eq!(parse(json!({"type":"ping","extra":1})), ClientMessage::Ping);
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"sdp":"x"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"answer"}"#).is_err());
    }

    #[test]
    fn join_without_token_or_version_still_parses() {
        assert_eq!(
            parse(json!({"type":"join"})),
            ClientMessage::Join {
                v: None,
                token: None,
                resume: None,
            }
        );
    }

    #[test]
    fn every_server_message_round_trips() {
        let p = Participant {
            id: "0011223344556677".into(),
            name: "Dr. Jansen".into(),
            role: Role::Clinician,
            audio: true,
            video: true,
            screen: false,
        };
        let messages = vec![
            ServerMessage::Welcome {
                v: 1,
                you: Box::new(p.clone()),
                consult: "c1".into(),
                state: JoinState::InCall,
                participants: vec![p.clone()],
                limits: Limits::default(),
                lobby: None,
                locked: None,
                ice_servers: None,
                force_relay: None,
                host: None,
                contact: None,
            },
            ServerMessage::Welcome {
                v: 1,
                you: Box::new(p.clone()),
                consult: "c1".into(),
                state: JoinState::InCall,
                participants: vec![],
                limits: Limits::default(),
                lobby: None,
                locked: None,
                ice_servers: Some(vec![crate::turn::IceServer {
                    urls: vec!["turn:t.example:3478?transport=udp".into()],
                    username: "1:x".into(),
                    credential: "c".into(),
                }]),
                force_relay: Some(true),
                host: Some("Dr. Jansen".into()),
                contact: Some("Bel 020 123 45 67".into()),
            },
            ServerMessage::IceServers {
                ice_servers: vec![],
                force_relay: None,
            },
            ServerMessage::Offer { sdp: "v=0".into() },
            ServerMessage::ParticipantJoined {
                participant: p.clone(),
            },
            ServerMessage::ParticipantLeft {
                id: "x".into(),
                reason: LeftReason::Disconnected,
            },
            ServerMessage::Mute {
                id: "x".into(),
                audio: false,
                video: true,
            },
            ServerMessage::Relay {
                from: "x".into(),
                kind: RelayKind::Key,
                data: "d".into(),
            },
            ServerMessage::E2ee {
                id: "x".into(),
                state: E2eeState::Unsupported,
                verified: vec![],
            },
            ServerMessage::MediaFailed {
                reason: "ice".into(),
            },
            ServerMessage::MediaReset,
            ServerMessage::Speaker {
                participant: Some("x".into()),
            },
            ServerMessage::Speaker { participant: None },
            ServerMessage::Pong,
            ServerMessage::error(ErrorCode::TokenExpired),
            ServerMessage::Bye {
                reason: ByeReason::Shutdown,
            },
            ServerMessage::Lobby {
                waiting: vec![LobbyEntry {
                    id: "w".into(),
                    name: "P".into(),
                    role: Role::Patient,
                    since: 1,
                }],
            },
            ServerMessage::Admitted {
                participants: vec![p.clone()],
            },
            ServerMessage::Locked { locked: true },
            ServerMessage::Screen {
                id: "0011223344556677".into(),
                on: true,
            },
            ServerMessage::ScreenAllowed { allowed: false },
            ServerMessage::InviteCreated {
                jti: "j".into(),
                role: Role::Guest,
                token: "a.b.c".into(),
                expires: 5,
            },
            ServerMessage::InviteRevoked { jti: "j".into() },
            ServerMessage::Resume {
                ticket: "r1.e30.AAAA".into(),
                expires: 5,
            },
            ServerMessage::ProbeResult {
                connected: true,
                ms: Some(120),
                reason: None,
            },
            ServerMessage::ProbeResult {
                connected: false,
                ms: None,
                reason: Some("timeout".into()),
            },
            ServerMessage::LinkCheck {
                ok: true,
                role: Some(Role::Patient),
                name: Some("Patient".into()),
                expires: Some(5),
                host: Some("Dr. Jansen".into()),
                code: None,
                contact: Some("Bel 020 123 45 67".into()),
            },
            ServerMessage::LinkCheck {
                ok: false,
                role: None,
                name: None,
                expires: None,
                host: None,
                code: Some(ErrorCode::TokenRevoked),
                contact: None,
            },
        ];
        for m in messages {
            let text = m.to_json();
            let back: ServerMessage = serde_json::from_str(&text).expect("parses back");
            assert_eq!(back, m, "{text}");
        }
    }

    #[test]
    fn server_messages_use_the_documented_shapes() {
        let v: serde_json::Value =
            serde_json::from_str(&ServerMessage::error(ErrorCode::ConsultFull).to_json()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "consult_full");
        assert_eq!(v["fatal"], true);
        let v: serde_json::Value = serde_json::from_str(
            &ServerMessage::ParticipantLeft {
                id: "a".into(),
                reason: LeftReason::Left,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"type":"participant-left","id":"a","reason":"left"})
        );
        let v: serde_json::Value =
            serde_json::from_str(&ServerMessage::MediaFailed { reason: "r".into() }.to_json())
                .unwrap();
        assert_eq!(v["type"], "media-failed");
    }

    #[test]
    fn link_check_replies_use_the_documented_shapes() {
        assert_eq!(
            parse(json!({"type":"check","v":1,"token":"a.b.c"})),
            ClientMessage::Check {
                v: Some(1),
                token: Some("a.b.c".into())
            }
        );
        assert_eq!(
            parse(json!({"type":"check"})),
            ClientMessage::Check {
                v: None,
                token: None
            }
        );
        let ok: serde_json::Value = serde_json::from_str(
            &ServerMessage::LinkCheck {
                ok: true,
                role: Some(Role::Guest),
                name: Some("Tolk".into()),
                expires: Some(1_800_000_000),
                host: None,
                code: None,
                contact: Some("Bel ons".into()),
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            ok,
            json!({"type":"link-check","ok":true,"role":"guest","name":"Tolk",
                   "expires":1_800_000_000u64,"contact":"Bel ons"})
        );
        let refused: serde_json::Value = serde_json::from_str(
            &ServerMessage::LinkCheck {
                ok: false,
                role: None,
                name: None,
                expires: None,
                host: None,
                code: Some(ErrorCode::TokenExpired),
                contact: None,
            }
            .to_json(),
        )
        .unwrap();
        assert_eq!(
            refused,
            json!({"type":"link-check","ok":false,"code":"token_expired"})
        );
    }

    #[test]
    fn error_codes_serialize_to_their_stable_strings() {
        for code in ErrorCode::ALL {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(s, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert!(!code.message().is_empty());
        }
    }

    #[test]
    fn fatality_matches_the_protocol_table() {
        let not_fatal = [
            ErrorCode::BadMessage,
            ErrorCode::RateLimited,
            ErrorCode::Forbidden,
            ErrorCode::UnknownParticipant,
            ErrorCode::MediaError,
            ErrorCode::UnknownInvite,
        ];
        for code in ErrorCode::ALL {
            assert_eq!(code.fatal(), !not_fatal.contains(&code), "{code}");
        }
    }

    #[test]
    fn the_error_code_table_in_protocol_md_matches_the_enum() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for code in ErrorCode::ALL {
            let row = format!(
                "| `{}` | {} |",
                code.as_str(),
                if code.fatal() { "yes" } else { "no" }
            );
            assert!(doc.contains(&row), "docs/PROTOCOL.md lacks row {row}");
        }
    }
}
