//! The command line: `serve` (the default), `link`, and a cluster's
//! `signaling` (edge) and `sfu` (media node) subcommands. Every flag is also a `SPREEKKAMER_*`
//! environment variable; every bad value is refused with a message that
//! names the flag.

use crate::audit::AuditSink;
use crate::consult::ConsultPolicy;
use crate::context::{ServeConfig, WEB_ASSETS};
use crate::protocol::{Limits, Role};
use crate::token::VerifyKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sfu::{MediaPath, SfuConfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Shortest accepted HS256 secret: 256 bits, as RFC 7518 §3.2 asks.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Parser)]
#[command(
    name = "spreekkamer",
    version,
    about = "End-to-end encrypted video consultations: edge + media server in one binary",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` flags, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start and moved into its handler: the size difference
// between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the edge and the media server in one process (the default).
    Serve(ServeArgs),
    /// Print a join link for a consult, role and name (last line of stdout).
    Link(LinkArgs),
    /// Run an edge of a cluster: HTTP, WebSocket, tokens, rooms; media on
    /// the nodes the Redis directory lists.
    Signaling(SignalingArgs),
    /// Run a media node of a cluster.
    Sfu(SfuArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address for HTTP and WebSocket.
    #[arg(long, env = "SPREEKKAMER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Base URL printed in links (default: http://<listen>).
    #[arg(long, env = "SPREEKKAMER_PUBLIC_URL", value_parser = parse_base_url)]
    pub public_url: Option<String>,
    /// HS256 signing secret for join tokens, at least 32 bytes. Prefer
    /// --jwt-secret-file or the environment: a flag is visible to every
    /// local user in /proc/PID/cmdline. Without any key a random secret is
    /// generated at start (links then die with the process: demo mode).
    #[arg(long, env = "SPREEKKAMER_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: Option<String>,
    /// File holding the HS256 secret (a trailing newline is ignored); the
    /// recommended way to pass it. Readable by the service user only.
    #[arg(
        long,
        env = "SPREEKKAMER_JWT_SECRET_FILE",
        conflicts_with = "jwt_secret"
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// Set when `--jwt-secret` came from the command line (not the
    /// environment), so start-up can warn.
    #[arg(skip)]
    pub jwt_secret_on_command_line: bool,
    /// EHR public key for join tokens: `[KID=]ALG:PATH` with ALG RS256, ES256
    /// or EdDSA and PATH a PEM public key. Repeatable; in the environment,
    /// comma-separated.
    #[arg(long = "jwt-key", env = "SPREEKKAMER_JWT_KEYS", value_delimiter = ',', value_parser = parse_key_spec)]
    pub jwt_keys: Vec<KeySpec>,
    /// EHR public keys as a JWKS file (every key needs a `kid`).
    #[arg(long, env = "SPREEKKAMER_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// EHR public keys from a JWKS URL (http:// or https://), fetched at
    /// start, every 10 minutes, and when a token names an unknown `kid`.
    #[arg(long, env = "SPREEKKAMER_JWKS_URL", value_parser = parse_jwks_url)]
    pub jwks_url: Option<String>,
    /// PEM file of the CA certificates the JWKS URL's TLS certificate must
    /// chain to, instead of the Mozilla roots (an internal CA, or the one a
    /// TLS-inspecting proxy signs with). The proxy itself comes from
    /// HTTPS_PROXY / NO_PROXY.
    #[arg(long, env = "SPREEKKAMER_JWKS_CA_FILE", requires = "jwks_url")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "SPREEKKAMER_JWT_ISSUER", default_value = "spreekkamer", value_parser = parse_nonempty)]
    pub jwt_issuer: String,
    /// Required `aud` claim.
    #[arg(long, env = "SPREEKKAMER_JWT_AUDIENCE", default_value = "spreekkamer", value_parser = parse_nonempty)]
    pub jwt_audience: String,
    /// Address written into ICE candidates (what browsers send media to).
    #[arg(long, env = "SPREEKKAMER_ANNOUNCE_IP", default_value = "127.0.0.1")]
    pub announce_ip: IpAddr,
    /// Address the media sockets bind to (default: the announce address).
    #[arg(long, env = "SPREEKKAMER_MEDIA_BIND_IP")]
    pub media_bind_ip: Option<IpAddr>,
    /// First UDP media port; worker i uses port+i (0 = ephemeral).
    #[arg(long, env = "SPREEKKAMER_UDP_PORT", default_value_t = 0)]
    pub udp_port: u16,
    /// ICE-TCP port (0 = ephemeral).
    #[arg(long, env = "SPREEKKAMER_TCP_PORT", default_value_t = 0)]
    pub tcp_port: u16,
    /// Disable the ICE-TCP listener.
    #[arg(long, env = "SPREEKKAMER_NO_ICE_TCP")]
    pub no_ice_tcp: bool,
    /// Media worker threads (default: number of cores).
    #[arg(long, env = "SPREEKKAMER_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// How forwarded media is encrypted and sent: `own` (the SFU's own
    /// SRTP and retransmissions, the fast path) or `rtc` (through the
    /// WebRTC library's RTP pipeline; slower, kept for comparison).
    #[arg(long, env = "SPREEKKAMER_MEDIA_PATH", value_enum, default_value_t = MediaPathArg::Own)]
    pub media_path: MediaPathArg,
    /// Maximum participants per consult (waiting and admitted).
    #[arg(long, env = "SPREEKKAMER_MAX_PARTICIPANTS", default_value_t = 6,
          value_parser = clap::value_parser!(u16).range(2..=50))]
    pub max_participants: u16,
    /// Patients and guests wait until a clinician admits them (on by
    /// default; `--waiting-room=false` lets them straight in). A bare
    /// `--waiting-room` still means true.
    #[arg(long, env = "SPREEKKAMER_WAITING_ROOM", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub waiting_room: bool,
    /// Reverse proxy whose X-Forwarded-For header is believed for the client
    /// IP (audit log, per-client limits): an address or a CIDR range
    /// (10.244.0.0/16, fd00::/8; nothing broader than /8 or /7).
    /// Repeatable; in the environment, comma-separated.
    #[arg(
        long = "trusted-proxy",
        env = "SPREEKKAMER_TRUSTED_PROXIES",
        value_name = "IP|CIDR",
        value_delimiter = ',',
        value_parser = crate::client_addr::parse_trusted_proxy
    )]
    pub trusted_proxies: Vec<crate::client_addr::TrustedProxy>,
    /// NEN 7513 audit log: `-` for stdout, or a file path (appended to).
    #[arg(long, env = "SPREEKKAMER_AUDIT_LOG", default_value = "-")]
    pub audit_log: String,
    /// Log level for operational logs on stderr (error, warn, info, debug, trace).
    #[arg(long, env = "SPREEKKAMER_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
    /// Operational log lines as text or as one JSON object per line.
    #[arg(
        long,
        env = "SPREEKKAMER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::logging::LogFormat,
    /// Serve `/metrics` on this address only (e.g. 0.0.0.0:9100 on the pod
    /// network), so it need not be reachable from the public port. Default:
    /// on the main port, as before.
    #[arg(long, env = "SPREEKKAMER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Time a new connection has to send `join` (e.g. 10s).
    #[arg(long, env = "SPREEKKAMER_JOIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub join_timeout: Duration,
    /// Failed joins (bad token, wrong version) one client address may make
    /// at once before `rate_limited`; then 30 a minute.
    #[arg(long, env = "SPREEKKAMER_JOIN_FAILURE_BURST", default_value_t = crate::context::JOIN_FAILURE_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub join_failure_burst: u32,
    /// Audit failure lines written per source address per second; the rest
    /// are counted into an `audit_suppressed` line.
    #[arg(long, env = "SPREEKKAMER_AUDIT_FAILURES_PER_SECOND", default_value_t = crate::audit::FAILURES_PER_SECOND, value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_failures_per_second: u32,
    /// Open HTTP/WebSocket connections in total (default: three quarters
    /// of the open-file limit).
    #[arg(long, env = "SPREEKKAMER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Open connections per client address (trusted proxies exempt).
    #[arg(long, env = "SPREEKKAMER_MAX_CONNECTIONS_PER_IP", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,
    /// Time to send a request head, on a new or an idle keep-alive connection.
    #[arg(long, env = "SPREEKKAMER_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A joined WebSocket quiet this long is pinged.
    #[arg(long, env = "SPREEKKAMER_WS_HEARTBEAT", default_value = "20s", value_parser = parse_duration)]
    pub ws_heartbeat: Duration,
    /// A joined WebSocket that sent nothing (not even a pong) for this long
    /// is closed.
    #[arg(long, env = "SPREEKKAMER_WS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ws_idle_timeout: Duration,
    /// How long an empty consult is remembered (its lock, removed people).
    #[arg(long, env = "SPREEKKAMER_CONSULT_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub consult_grace: Duration,
    /// Default validity of invites clinicians create (at most 24h).
    #[arg(long, env = "SPREEKKAMER_INVITE_TTL", default_value = "4h", value_parser = parse_invite_ttl)]
    pub invite_ttl: Duration,
    /// How long a resume ticket lets someone who was in the call back in
    /// without a second admission (10s to 1h; never past their token).
    #[arg(long, env = "SPREEKKAMER_RESUME_TTL", default_value = "120s", value_parser = parse_resume_ttl)]
    pub resume_ttl: Duration,
    /// TURN server for browsers whose network blocks direct media:
    /// `turn:HOST:PORT?transport=udp`, `turn:HOST:PORT?transport=tcp` or
    /// `turns:HOST:PORT?transport=tcp` (TLS). Repeatable; in the
    /// environment, comma-separated. Needs the coturn secret
    /// (--turn-secret-file or SPREEKKAMER_TURN_SECRET); see docs/TURN.md.
    #[arg(long = "turn-uri", env = "SPREEKKAMER_TURN_URIS", value_delimiter = ',', value_parser = crate::turn::parse_uri)]
    pub turn_uris: Vec<crate::turn::TurnUri>,
    /// coturn's `static-auth-secret` (prefer --turn-secret-file; a flag is
    /// visible to every local user).
    #[arg(
        long,
        env = "SPREEKKAMER_TURN_SECRET",
        hide_env_values = true,
        hide = true
    )]
    pub turn_secret: Option<String>,
    /// File holding coturn's `static-auth-secret` (a trailing newline is
    /// ignored). It stays on the server: browsers get HMAC'd credentials.
    #[arg(
        long,
        env = "SPREEKKAMER_TURN_SECRET_FILE",
        conflicts_with = "turn_secret"
    )]
    pub turn_secret_file: Option<PathBuf>,
    /// Lifetime of the TURN credentials handed out (at most 24h; never
    /// past the join token's `exp`).
    #[arg(long, env = "SPREEKKAMER_TURN_TTL", default_value = "1h", value_parser = parse_turn_ttl)]
    pub turn_ttl: Duration,
    /// Tell every browser to send media through TURN only
    /// (`iceTransportPolicy: 'relay'`), for networks that need it.
    #[arg(long, env = "SPREEKKAMER_TURN_FORCE_RELAY")]
    pub turn_force_relay: bool,
    /// The care provider's contact line, shown with every link check and
    /// in the waiting room, e.g. "Vragen? Bel de polikliniek: 020 123 45
    /// 67" (at most 200 characters, no control characters). Free text:
    /// never put personal data in it, every visitor of a link sees it.
    #[arg(long, env = "SPREEKKAMER_CONTACT", value_parser = parse_contact)]
    pub contact: Option<String>,
    /// Print a clinician and a patient link for a random demo consult to
    /// stderr at start. Only in demo mode (no --jwt-secret, --jwt-secret-file,
    /// --jwt-key or --jwks-*), where it is the default; with a configured key
    /// it is ignored with a warning (the links would be real credentials).
    #[arg(long, env = "SPREEKKAMER_DEMO_LINKS", action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub demo_links: Option<bool>,
}

impl Cli {
    /// Parse the process arguments (exits with clap's message on a bad
    /// one), noting where the JWT secret came from.
    pub fn parse_args() -> Cli {
        Self::parse_from_matches(Cli::command().get_matches()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_args`] for given arguments.
    pub fn try_parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::parse_from_matches(Cli::command().try_get_matches_from(args)?)
    }

    fn parse_from_matches(matches: clap::ArgMatches) -> Result<Cli, clap::Error> {
        let mut cli = Cli::from_arg_matches(&matches)?;
        let on_command_line = |m: &clap::ArgMatches| {
            m.value_source("jwt_secret") == Some(clap::parser::ValueSource::CommandLine)
        };
        cli.serve.jwt_secret_on_command_line = on_command_line(&matches);
        match (&mut cli.command, matches.subcommand()) {
            (Some(Command::Serve(args)), Some(("serve", m))) => {
                args.jwt_secret_on_command_line = on_command_line(m);
            }
            (Some(Command::Signaling(args)), Some(("signaling", m))) => {
                args.serve.jwt_secret_on_command_line = on_command_line(m);
            }
            _ => {}
        }
        Ok(cli)
    }
}

/// Where the HS256 secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `--jwt-secret` on the command line: visible in /proc/PID/cmdline.
    CommandLine,
    Environment,
    File(PathBuf),
}

/// The HS256 secret and where it came from.
#[derive(Clone)]
pub struct JwtSecret {
    pub value: String,
    pub source: SecretSource,
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSecret")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Read a secret file (`flag` names it in errors): the first line's worth,
/// without the newline an editor or `echo` adds.
fn read_secret_line(flag: &str, path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The JWT secret from `--jwt-secret-file`, checked like the flag.
fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    parse_secret(&read_secret_line("--jwt-secret-file", path)?)
        .map_err(|e| format!("--jwt-secret-file {}: {e}", path.display()))
}

/// The media plane's configuration, as `serve` and `sfu` take it from
/// their flags (`workers`: default the number of cores).
fn media_config(
    announce_ip: IpAddr,
    bind_ip: Option<IpAddr>,
    udp_port: u16,
    tcp_port: u16,
    no_ice_tcp: bool,
    workers: Option<u16>,
    media_path: MediaPathArg,
) -> SfuConfig {
    SfuConfig {
        bind_ip: bind_ip.unwrap_or(announce_ip),
        announce_ip,
        udp_port,
        tcp_port: (!no_ice_tcp).then_some(tcp_port),
        workers: workers.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        media_path: match media_path {
            MediaPathArg::Own => MediaPath::Own,
            MediaPathArg::Rtc => MediaPath::Rtc,
        },
    }
}

/// `--media-path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MediaPathArg {
    Own,
    Rtc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Clinician,
    Patient,
    Guest,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Clinician => Role::Clinician,
            RoleArg::Patient => Role::Patient,
            RoleArg::Guest => Role::Guest,
        }
    }
}

#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("link_secret_given").args(["link_secret", "with_link_secret"]).multiple(false))]
pub struct LinkArgs {
    /// The server's public base URL, e.g. https://consult.example.nl
    #[arg(long, env = "SPREEKKAMER_PUBLIC_URL", value_parser = parse_base_url)]
    pub base_url: String,
    /// The server's HS256 secret.
    #[arg(long, env = "SPREEKKAMER_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: String,
    /// Consult id: 1–128 characters of A-Z a-z 0-9 . _ ~ -
    #[arg(long, value_parser = parse_consult)]
    pub consult: String,
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// Display name shown to the others (1–80 characters).
    #[arg(long, value_parser = parse_name)]
    pub name: String,
    /// How long the link is valid, e.g. 2h, 30m.
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Opaque user id (default: random).
    #[arg(long)]
    pub sub: Option<String>,
    /// Token id (for revocation).
    #[arg(long)]
    pub jti: Option<String>,
    /// The clinician the link's holder will meet (the `host` claim, 1–80
    /// characters): the page shows it before and after Join. For patient
    /// and guest links; the token payload is readable by the link holder.
    #[arg(long, value_parser = parse_name)]
    pub host: Option<String>,
    #[arg(long, env = "SPREEKKAMER_JWT_ISSUER", default_value = "spreekkamer", value_parser = parse_nonempty)]
    pub issuer: String,
    #[arg(long, env = "SPREEKKAMER_JWT_AUDIENCE", default_value = "spreekkamer", value_parser = parse_nonempty)]
    pub audience: String,
    /// The consult's E2EE master link secret M (unpadded base64url, 16–64
    /// bytes), made by the link issuer, never by the server. A clinician link
    /// carries M itself (`&k=M`); a patient or guest link carries the secret
    /// derived for its label (`&k=K_L&kl=L`, docs/CRYPTO.md §2.8).
    /// base64url may start with `-`, so such values are accepted as values.
    #[arg(long, value_parser = parse_link_secret, conflicts_with = "with_link_secret", allow_hyphen_values = true)]
    pub link_secret: Option<String>,
    /// Generate a fresh master link secret M for a new consult (printed on
    /// stderr, so the other links of the consult can be minted with
    /// `--link-secret`), and add this link's fragment.
    #[arg(long)]
    pub with_link_secret: bool,
    /// The link label L (`^[a-z0-9-]{1,32}$`). Default: `patient` for a
    /// patient, `guest-<6 random hex>` for a guest. Not for a clinician.
    #[arg(long, value_parser = parse_link_label, requires = "link_secret_given")]
    pub link_label: Option<String>,
}

/// `--jwt-key` value: which PEM file, pinned to which algorithm, under
/// which `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub kid: Option<String>,
    pub alg: jsonwebtoken::Algorithm,
    pub path: PathBuf,
}

fn parse_key_spec(s: &str) -> Result<KeySpec, String> {
    let (kid, rest) = match s.split_once('=') {
        Some((kid, rest)) if !kid.is_empty() => (Some(kid.to_string()), rest),
        Some(_) => return Err("the kid before '=' is empty".into()),
        None => (None, s),
    };
    let (alg, path) = rest
        .split_once(':')
        .ok_or("expected [KID=]ALG:PATH, e.g. ehr-1=RS256:/etc/spreekkamer/ehr.pem")?;
    let alg = crate::token::parse_asymmetric_alg(alg)
        .ok_or_else(|| format!("algorithm {alg:?} is not one of RS256, ES256, EdDSA"))?;
    if path.is_empty() {
        return Err("the PEM file path is empty".into());
    }
    Ok(KeySpec {
        kid,
        alg,
        path: PathBuf::from(path),
    })
}

fn parse_jwks_url(s: &str) -> Result<String, String> {
    crate::jwks::JwksSource::new(s, Duration::ZERO).map(|_| s.to_string())
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn parse_secret(s: &str) -> Result<String, String> {
    if s.len() < MIN_SECRET_BYTES {
        Err(format!(
            "the JWT secret must be at least {MIN_SECRET_BYTES} bytes (got {}); generate one with `openssl rand -base64 32`",
            s.len()
        ))
    } else {
        Ok(s.to_string())
    }
}

fn parse_base_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".into());
    }
    if s.contains(['#', '?', ' ']) {
        return Err("must not contain '#', '?' or spaces".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn parse_consult(s: &str) -> Result<String, String> {
    if crate::token::valid_consult_id(s) {
        Ok(s.to_string())
    } else {
        Err("must be 1–128 characters of A-Z a-z 0-9 . _ ~ -".into())
    }
}

/// Longest `--contact` line, in characters.
pub const MAX_CONTACT_CHARS: usize = 200;

/// `--contact`: trimmed, 1–200 characters, no control characters (it is
/// shown on a web page as one line).
pub fn parse_contact(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty (leave the option out instead)".into());
    }
    if t.chars().any(char::is_control) {
        return Err("must not contain control characters (newlines, tabs, ...)".into());
    }
    let n = t.chars().count();
    if n > MAX_CONTACT_CHARS {
        return Err(format!(
            "must be at most {MAX_CONTACT_CHARS} characters (got {n})"
        ));
    }
    Ok(t.to_string())
}

fn parse_name(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty()
        || t.chars().count() > crate::token::MAX_NAME_CHARS
        || t.chars().any(char::is_control)
    {
        Err("must be 1–80 characters without control characters".into())
    } else {
        Ok(t.to_string())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 30m, 2h)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn parse_invite_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > crate::invite::MAX_INVITE_TTL {
        return Err("must be at most 24h".into());
    }
    Ok(d)
}

fn parse_resume_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !(crate::resume::MIN_TTL..=crate::resume::MAX_TTL).contains(&d) {
        return Err("must be between 10s and 1h".into());
    }
    Ok(d)
}

fn parse_turn_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d > crate::turn::MAX_TTL {
        return Err("must be at most 24h".into());
    }
    Ok(d)
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse::<log::LevelFilter>()
        .map_err(|_| "must be one of off, error, warn, info, debug, trace".into())
}

fn parse_link_label(s: &str) -> Result<String, String> {
    if valid_link_label(s) {
        Ok(s.to_string())
    } else {
        Err("must be 1–32 characters of a-z 0-9 -".into())
    }
}

fn valid_link_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_link_secret(s: &str) -> Result<String, String> {
    match URL_SAFE_NO_PAD.decode(s) {
        Ok(bytes) if bytes.len() >= 16 && bytes.len() <= 64 => Ok(s.to_string()),
        Ok(_) => Err("must decode to 16–64 bytes".into()),
        Err(_) => Err("must be unpadded base64url".into()),
    }
}

impl ServeArgs {
    /// The configured HS256 secret, if any (read from its file now, so a
    /// missing or short one stops the start).
    pub fn jwt_secret(&self) -> Result<Option<JwtSecret>, String> {
        if let Some(path) = &self.jwt_secret_file {
            return Ok(Some(JwtSecret {
                value: read_secret_file(path)?,
                source: SecretSource::File(path.clone()),
            }));
        }
        Ok(self.jwt_secret.clone().map(|value| JwtSecret {
            value,
            source: if self.jwt_secret_on_command_line {
                SecretSource::CommandLine
            } else {
                SecretSource::Environment
            },
        }))
    }

    /// Whether any key to verify join tokens was configured. Without one
    /// the server runs in demo mode: it made its signing secret up itself.
    pub fn key_configured(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || !self.jwt_keys.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// The base URL for printed links.
    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.clone(),
            None => format!("http://{}", default_public_host(self.listen)),
        }
    }

    /// The verification keys: the HS256 secret plus every configured
    /// public key (read from disk now, so a bad file stops the start).
    pub fn keys(&self, secret: &str) -> Result<Vec<VerifyKey>, String> {
        let mut keys = vec![VerifyKey::hs256(secret.as_bytes())];
        for spec in &self.jwt_keys {
            let pem = std::fs::read(&spec.path)
                .map_err(|e| format!("--jwt-key {}: {e}", spec.path.display()))?;
            keys.push(
                crate::token::key_from_pem(spec.kid.clone(), spec.alg, &pem)
                    .map_err(|e| format!("--jwt-key {}: {e}", spec.path.display()))?,
            );
        }
        if let Some(path) = &self.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--jwks-file {}: {e}", path.display()))?;
            keys.extend(
                crate::token::keys_from_jwks(&text)
                    .map_err(|e| format!("--jwks-file {}: {e}", path.display()))?,
            );
        }
        let mut kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        kids.sort_unstable();
        if kids.windows(2).any(|w| w[0] == w[1]) {
            return Err("two keys share a kid".into());
        }
        Ok(keys)
    }

    /// The TURN configuration, if `--turn-uri` was given (the secret read
    /// from its file now, so a missing one stops the start).
    pub fn turn(&self) -> Result<Option<crate::turn::TurnConfig>, String> {
        let secret = match (&self.turn_secret, &self.turn_secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(read_secret_line("--turn-secret-file", path)?),
            (None, None) => None,
        };
        if self.turn_uris.is_empty() {
            if secret.is_some() {
                return Err(
                    "--turn-secret-file / SPREEKKAMER_TURN_SECRET without --turn-uri".into(),
                );
            }
            if self.turn_force_relay {
                return Err(
                    "--turn-force-relay needs --turn-uri (relay is only possible through TURN)"
                        .into(),
                );
            }
            return Ok(None);
        }
        let Some(secret) = secret else {
            return Err(
                "--turn-uri needs coturn's static-auth-secret: --turn-secret-file or SPREEKKAMER_TURN_SECRET"
                    .into(),
            );
        };
        let secret = crate::turn::TurnSecret::new(&secret)
            .map_err(|e| format!("--turn-secret-file / SPREEKKAMER_TURN_SECRET: {e}"))?;
        Ok(Some(crate::turn::TurnConfig {
            uris: self.turn_uris.clone(),
            secret,
            ttl: self.turn_ttl,
            force_relay: self.turn_force_relay,
        }))
    }

    /// How the JWKS URL is reached: `--jwks-ca-file` (read now) and the
    /// egress proxy from `HTTPS_PROXY` / `NO_PROXY` (read now, once; ignored
    /// without `--jwks-url`, the only request the edge makes).
    pub fn jwks_fetch(&self) -> Result<crate::jwks::FetchConfig, String> {
        if self.jwks_url.is_none() {
            return Ok(crate::jwks::FetchConfig::default());
        }
        let proxy = crate::egress::ProxySettings::from_env()?;
        crate::jwks::FetchConfig::new(self.jwks_ca_file.as_deref(), proxy)
    }

    /// The server configuration, with the secret to sign demo links with.
    pub fn to_config(&self, secret: &str) -> Result<ServeConfig, String> {
        let limits = Limits {
            max_participants: usize::from(self.max_participants),
            ..Limits::default()
        };
        if self.ws_idle_timeout <= self.ws_heartbeat {
            return Err("--ws-idle-timeout must be longer than --ws-heartbeat".into());
        }
        Ok(ServeConfig {
            listen: self.listen,
            keys: self.keys(secret)?,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            sfu: media_config(
                self.announce_ip,
                self.media_bind_ip,
                self.udp_port,
                self.tcp_port,
                self.no_ice_tcp,
                self.workers,
                self.media_path,
            ),
            policy: ConsultPolicy {
                max_participants: limits.max_participants,
                waiting_room: self.waiting_room,
                grace: self.consult_grace,
            },
            limits,
            join_timeout: self.join_timeout,
            join_failure_burst: self.join_failure_burst,
            audit_failures_per_second: self.audit_failures_per_second,
            audit: if self.audit_log == "-" {
                AuditSink::Stdout
            } else {
                AuditSink::File(PathBuf::from(&self.audit_log))
            },
            assets: &WEB_ASSETS,
            shutdown_grace: Duration::from_secs(3),
            invite_secret: secret.as_bytes().to_vec(),
            invite_ttl: self.invite_ttl,
            resume_ttl: self.resume_ttl,
            jwks_url: self.jwks_url.clone(),
            jwks_fetch: self.jwks_fetch()?,
            jwks_min_refresh: Duration::from_secs(30),
            trusted_proxies: self.trusted_proxies.clone(),
            public_url: self.public_url.clone(),
            connections: crate::gate::ConnectionLimits {
                max_total: self.max_connections.map(|n| n as usize),
                max_per_ip: self.max_connections_per_ip as usize,
                header_timeout: self.header_timeout,
            },
            ws_heartbeat: self.ws_heartbeat,
            ws_idle_timeout: self.ws_idle_timeout,
            metrics_listen: self.metrics_listen,
            cluster: None,
            room_store: None,
            turn: self.turn()?,
            contact: self.contact.clone(),
            anonymous_probes: crate::probe::AnonymousProbeLimits::default(),
        })
    }
}

/// What an edge and a media node of a cluster share: the directory and the
/// link secret.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The cluster's directory, `redis://HOST:PORT` (plain TCP: keep Redis
    /// on the cluster network; TLS to Redis is not built in). A password
    /// belongs in the URL (`redis://:PASSWORD@HOST:PORT`); then prefer
    /// --redis-file: a flag is visible to every local user.
    #[arg(
        long,
        env = "SPREEKKAMER_REDIS",
        hide_env_values = true,
        required_unless_present = "redis_file"
    )]
    pub redis: Option<String>,
    /// File holding the Redis URL (surrounding whitespace ignored), e.g. a
    /// mounted Kubernetes Secret: the password stays out of argv and env.
    #[arg(long, env = "SPREEKKAMER_REDIS_FILE", conflicts_with = "redis")]
    pub redis_file: Option<PathBuf>,
    /// Shared secret of the edge↔node link (at least 32 bytes). Prefer
    /// --link-secret-file or the environment: a flag is visible to every
    /// local user.
    #[arg(long, env = "SPREEKKAMER_LINK_SECRET", hide_env_values = true)]
    pub link_secret: Option<String>,
    /// File holding the link secret (a trailing newline is ignored).
    #[arg(
        long,
        env = "SPREEKKAMER_LINK_SECRET_FILE",
        conflicts_with = "link_secret"
    )]
    pub link_secret_file: Option<PathBuf>,
    /// A media node's directory entry expires this long after its last
    /// heartbeat (it beats three times per period); consults of a node that
    /// died move this long after its death.
    #[arg(long, env = "SPREEKKAMER_NODE_TTL", default_value = "3s", value_parser = parse_duration)]
    pub node_ttl: Duration,
    /// Longest wait for one directory operation.
    #[arg(long, env = "SPREEKKAMER_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
}

impl ClusterArgs {
    /// The Redis URL, from `--redis` or read now from `--redis-file`. An
    /// error names the file, never its content (the URL holds a password).
    pub fn redis_url(&self) -> Result<String, String> {
        let url = match (&self.redis, &self.redis_file) {
            (Some(url), _) => url.trim().to_string(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("--redis-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => return Err("a cluster needs --redis-file (or --redis)".into()),
        };
        if url.is_empty() {
            return Err("--redis / --redis-file: the Redis URL is empty".into());
        }
        Ok(url)
    }

    pub fn link_secret(&self) -> Result<crate::link::LinkSecret, String> {
        let secret = match (&self.link_secret, &self.link_secret_file) {
            (Some(s), _) => s.clone(),
            (None, Some(path)) => read_secret_line("--link-secret-file", path)?,
            (None, None) => {
                return Err(
                    "a cluster needs --link-secret-file (or SPREEKKAMER_LINK_SECRET)".into(),
                );
            }
        };
        crate::link::LinkSecret::new(secret.as_bytes())
            .map_err(|e| format!("--link-secret / --link-secret-file: {e}"))
    }
}

/// `spreekkamer signaling`: an edge without media.
#[derive(Debug, Clone, Args)]
pub struct SignalingArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// This edge's id in the edge directory (letters, digits, `.`, `_`,
    /// `-`; at most 64). Default: the host name (a pod's name).
    #[arg(long, env = "SPREEKKAMER_EDGE_ID")]
    pub edge_id: Option<String>,
    /// Where other edges pass a consult's participants on to this edge when
    /// its room lives here (WebSockets proven with an HMAC from the link
    /// secret; keep the port on the cluster network).
    #[arg(
        long,
        env = "SPREEKKAMER_PEER_LISTEN",
        default_value = "127.0.0.1:7001"
    )]
    pub peer_listen: SocketAddr,
    /// How other edges reach --peer-listen (default: that address; needed
    /// when it is 0.0.0.0, e.g. the pod's IP and the port).
    #[arg(long, env = "SPREEKKAMER_PEER_ADVERTISE")]
    pub peer_advertise: Option<SocketAddr>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl SignalingArgs {
    pub fn edge_id(&self) -> Result<String, String> {
        directory_id("--edge-id", self.edge_id.as_deref())
    }
}

/// An id for the directory: the one given, else the host name.
fn directory_id(flag: &str, given: Option<&str>) -> Result<String, String> {
    let id = match given {
        Some(id) => id.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    if !crate::registry::valid_node_id(&id) {
        return Err(format!(
            "{flag} {id:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(id)
}

/// `spreekkamer sfu`: a media node.
#[derive(Debug, Clone, Args)]
pub struct SfuArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// This node's id in the directory (letters, digits, `.`, `_`, `-`; at
    /// most 64). Default: the host name.
    #[arg(long, env = "SPREEKKAMER_NODE_ID")]
    pub node_id: Option<String>,
    /// Address written into ICE candidates (what browsers send media to).
    #[arg(long, env = "SPREEKKAMER_ANNOUNCE_IP", default_value = "127.0.0.1")]
    pub announce_ip: IpAddr,
    /// Address the media sockets bind to (default: the announce address).
    #[arg(long, env = "SPREEKKAMER_BIND_IP")]
    pub bind_ip: Option<IpAddr>,
    /// First UDP media port; worker i uses port+i (0 = ephemeral).
    #[arg(long, env = "SPREEKKAMER_UDP_PORT", default_value_t = 0)]
    pub udp_port: u16,
    /// ICE-TCP port (0 = ephemeral).
    #[arg(long, env = "SPREEKKAMER_TCP_PORT", default_value_t = 0)]
    pub tcp_port: u16,
    /// Disable the ICE-TCP listener.
    #[arg(long, env = "SPREEKKAMER_NO_ICE_TCP")]
    pub no_ice_tcp: bool,
    /// Media worker threads (default: number of cores).
    #[arg(long, env = "SPREEKKAMER_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// How forwarded media is encrypted and sent: `own` (the SFU's own
    /// SRTP and retransmissions, the fast path) or `rtc` (through the
    /// WebRTC library's RTP pipeline; slower, kept for comparison).
    #[arg(long, env = "SPREEKKAMER_MEDIA_PATH", value_enum, default_value_t = MediaPathArg::Own)]
    pub media_path: MediaPathArg,
    /// Where edges reach this node (the authenticated link).
    #[arg(
        long,
        env = "SPREEKKAMER_LINK_LISTEN",
        default_value = "127.0.0.1:7000"
    )]
    pub link_listen: SocketAddr,
    /// `/healthz`, `/readyz` (503 while draining) and `/metrics`.
    #[arg(long, env = "SPREEKKAMER_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Participants this node takes before it gets no new consults.
    #[arg(long, env = "SPREEKKAMER_CAPACITY", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub capacity: u32,
    /// On SIGTERM, how long running consults may go on before the node
    /// stops anyway.
    #[arg(long, env = "SPREEKKAMER_DRAIN_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Log level for operational logs on stderr.
    #[arg(long, env = "SPREEKKAMER_LOG_LEVEL", default_value = "info", value_parser = parse_level)]
    pub log_level: log::LevelFilter,
    /// Operational log lines as text or as one JSON object per line.
    #[arg(
        long,
        env = "SPREEKKAMER_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: crate::logging::LogFormat,
}

impl SfuArgs {
    pub fn to_config(&self) -> Result<crate::node::NodeConfig, String> {
        let id = directory_id("--node-id", self.node_id.as_deref())?;
        Ok(crate::node::NodeConfig {
            id,
            sfu: media_config(
                self.announce_ip,
                self.bind_ip,
                self.udp_port,
                self.tcp_port,
                self.no_ice_tcp,
                self.workers,
                self.media_path,
            ),
            link_listen: self.link_listen,
            link_secret: self.cluster.link_secret()?,
            http_listen: self.listen,
            capacity: self.capacity,
            ttl: self.cluster.node_ttl,
            drain_timeout: self.drain_timeout,
        })
    }
}

/// `{base}/c#t={jwt}[&k={link_secret}]`: everything secret rides in the
/// fragment, which browsers never send to a server.
pub fn join_url(base: &str, token: &str, link_secret: Option<&str>) -> String {
    match link_secret {
        Some(k) => format!("{base}/c#t={token}&k={k}"),
        None => format!("{base}/c#t={token}"),
    }
}

/// The E2EE protocol label; link-secret derivation is domain-separated by it
/// (the same string as `PROTOCOL_LABEL` in web/e2ee/handshake.js).
pub const E2EE_LABEL: &str = "Spreekkamer E2EE v2";

/// The secret part of a join link's fragment: `k` and, for every link but a
/// clinician's, its public label `kl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFragment {
    pub k: String,
    pub kl: Option<String>,
}

fn lp(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field here is far below 4 GiB (labels ≤ 32, consult ids ≤ 128).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// K_L = base64url(HKDF-SHA256(ikm = M, salt = "", info = lp(LABEL) ||
/// lp("link label") || lp(consult) || lp(L), 32 bytes)), M given as unpadded
/// base64url and used as its decoded bytes. The same function as
/// `deriveLinkSecret` in web/e2ee/handshake.js (shared test vector).
pub fn derive_link_secret(master: &str, consult: &str, label: &str) -> Result<String, String> {
    if !valid_link_label(label) {
        return Err("link label must be 1–32 characters of a-z 0-9 -".into());
    }
    let ikm = URL_SAFE_NO_PAD
        .decode(parse_link_secret(master)?)
        .map_err(|_| "must be unpadded base64url".to_string())?;
    let mut info = Vec::with_capacity(64 + consult.len());
    lp(&mut info, E2EE_LABEL.as_bytes());
    lp(&mut info, b"link label");
    lp(&mut info, consult.as_bytes());
    lp(&mut info, label.as_bytes());
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(None, &ikm)
        .expand(&info, &mut okm)
        .map_err(|_| "link secret derivation failed".to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(okm))
}

/// This link's fragment from the consult's master secret: a clinician gets M
/// itself; a patient `patient` (or `label`); a guest `guest-<6 random hex>`
/// (or `label`), with the secret derived for that label.
pub fn link_fragment(
    master: &str,
    consult: &str,
    role: Role,
    label: Option<&str>,
) -> Result<LinkFragment, String> {
    let label = match (role, label) {
        (Role::Clinician, Some(_)) => {
            return Err("a clinician link carries the master secret; --link-label is for patient and guest links".into());
        }
        (Role::Clinician, None) => {
            parse_link_secret(master)?;
            return Ok(LinkFragment {
                k: master.to_string(),
                kl: None,
            });
        }
        (_, Some(l)) => l.to_string(),
        (Role::Patient, None) => "patient".to_string(),
        (Role::Guest, None) => format!("guest-{:06x}", rand::random::<u32>() & 0x00ff_ffff),
    };
    Ok(LinkFragment {
        k: derive_link_secret(master, consult, &label)?,
        kl: Some(label),
    })
}

/// `{base}/c#t={jwt}[&k={k}[&kl={label}]]`: secrets ride only in the fragment.
pub fn join_url_for(base: &str, token: &str, fragment: Option<&LinkFragment>) -> String {
    match fragment {
        Some(LinkFragment { k, kl: Some(l) }) => format!("{base}/c#t={token}&k={k}&kl={l}"),
        Some(LinkFragment { k, kl: None }) => format!("{base}/c#t={token}&k={k}"),
        None => format!("{base}/c#t={token}"),
    }
}

/// Unspecified listen addresses are not reachable as a link host.
pub fn default_public_host(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("spreekkamer").chain(args.iter().copied()))
    }

    #[test]
    fn no_subcommand_means_serve_with_defaults() {
        let cli = parse(&[]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            cli.serve.listen,
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(cli.serve.max_participants, 6);
        assert_eq!(cli.serve.join_timeout, Duration::from_secs(10));
        assert_eq!(
            cli.serve.demo_links, None,
            "decided by whether a key is configured"
        );
        assert!(!cli.serve.key_configured());
        assert!(cli.serve.waiting_room, "the waiting room is on by default");
        assert_eq!(cli.serve.base_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn connection_limits_have_defaults_and_flags() {
        let cfg = parse(&[])
            .unwrap()
            .serve
            .to_config(&"s".repeat(32))
            .unwrap();
        assert_eq!(cfg.connections, crate::gate::ConnectionLimits::default());
        assert_eq!(cfg.ws_heartbeat, Duration::from_secs(20));
        assert_eq!(cfg.ws_idle_timeout, Duration::from_secs(60));
        let cli = parse(&[
            "--max-connections",
            "500",
            "--max-connections-per-ip",
            "20",
            "--header-timeout",
            "5s",
            "--ws-heartbeat",
            "10s",
            "--ws-idle-timeout",
            "30s",
        ])
        .unwrap();
        let cfg = cli.serve.to_config(&"s".repeat(32)).unwrap();
        assert_eq!(cfg.connections.max_total, Some(500));
        assert_eq!(cfg.connections.max_per_ip, 20);
        assert_eq!(cfg.connections.header_timeout, Duration::from_secs(5));
        assert_eq!(cfg.ws_heartbeat, Duration::from_secs(10));
        assert_eq!(cfg.ws_idle_timeout, Duration::from_secs(30));
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--header-timeout", "0s"]).is_err());
        let cli = parse(&["--ws-heartbeat", "30s", "--ws-idle-timeout", "30s"]).unwrap();
        assert!(cli.serve.to_config(&"s".repeat(32)).is_err());
    }

    #[test]
    fn turn_flags_are_checked_and_make_a_turn_config() {
        let s32 = "s".repeat(32);
        // Without TURN flags nothing changes.
        let cfg = parse(&[]).unwrap().serve.to_config(&s32).unwrap();
        assert!(cfg.turn.is_none());

        let dir = std::env::temp_dir().join(format!("spreekkamer-turn-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("turn.secret");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let path = file.to_str().unwrap();
        let udp = "turn:turn.example.nl:3478?transport=udp";
        let tls = "turns:turn.example.nl:443?transport=tcp";
        let cli = parse(&[
            "--turn-uri",
            udp,
            "--turn-uri",
            tls,
            "--turn-secret-file",
            path,
            "--turn-ttl",
            "30m",
            "--turn-force-relay",
        ])
        .unwrap();
        let turn = cli.serve.to_config(&s32).unwrap().turn.expect("turn");
        let uris: Vec<&str> = turn.uris.iter().map(|u| u.as_str()).collect();
        assert_eq!(uris, [udp, tls]);
        assert_eq!(turn.ttl, Duration::from_secs(1800));
        assert!(turn.force_relay);
        assert!(!format!("{turn:?}").contains("0123456789abcdef0123"));
        // The edge of a cluster takes the same flags.
        let cli = parse(&[
            "signaling",
            "--redis",
            "redis://127.0.0.1:1",
            "--turn-uri",
            udp,
            "--turn-secret-file",
            path,
        ])
        .unwrap();
        let Some(Command::Signaling(args)) = cli.command else {
            panic!("signaling")
        };
        let turn = args.serve.turn().unwrap().expect("turn");
        assert_eq!(turn.ttl, crate::turn::DEFAULT_TTL);
        assert!(!turn.force_relay);

        // Refused at parse time (clap exits 2 with the message).
        for bad in [
            vec!["--turn-uri", "stun:turn.example.nl:3478"],
            vec!["--turn-uri", "turns:turn.example.nl:5349?transport=udp"],
            vec!["--turn-uri", "turn:turn.example.nl?transport=udp"],
            vec!["--turn-ttl", "25h"],
            vec!["--turn-ttl", "0s"],
        ] {
            let e = parse(&bad).expect_err(&format!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        // Refused at start (exit 2 in main): half a configuration.
        for bad in [
            vec!["--turn-uri", udp],
            vec!["--turn-secret-file", path],
            vec!["--turn-force-relay"],
        ] {
            let err = parse(&bad).unwrap().serve.to_config(&s32).err();
            assert!(err.is_some(), "{bad:?} accepted");
        }
        std::fs::write(&file, "short\n").unwrap();
        let err = parse(&["--turn-uri", udp, "--turn-secret-file", path])
            .unwrap()
            .serve
            .to_config(&s32)
            .err()
            .unwrap();
        assert!(err.contains("at least 16 bytes"), "{err}");
        let missing = parse(&[
            "--turn-uri",
            udp,
            "--turn-secret-file",
            "/nonexistent/turn.secret",
        ])
        .unwrap()
        .serve
        .to_config(&s32)
        .err()
        .unwrap();
        assert!(missing.contains("--turn-secret-file"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn serve_flags_work_with_and_without_the_subcommand() {
        let cli = parse(&["--listen", "0.0.0.0:9000", "--no-ice-tcp"]).unwrap();
        assert_eq!(cli.serve.listen.port(), 9000);
        let cfg = cli.serve.to_config(&"s".repeat(32)).unwrap();
        assert_eq!(cfg.sfu.tcp_port, None);
        let cli = parse(&[
            "serve",
            "--workers",
            "3",
            "--public-url",
            "https://x.example/",
        ])
        .unwrap();
        let Some(Command::Serve(args)) = cli.command else {
            panic!("serve subcommand")
        };
        assert_eq!(args.workers, Some(3));
        assert_eq!(args.base_url(), "https://x.example");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for args in [
            vec!["--listen", "nowhere"],
            vec!["--jwt-secret", "short"],
            vec!["--workers", "0"],
            vec!["--max-participants", "1"],
            vec!["--public-url", "ftp://x"],
            vec!["--announce-ip", "1.2.3"],
            vec!["--log-level", "loud"],
            vec!["--join-timeout", "soon"],
            vec!["--udp-port", "70000"],
        ] {
            let err = parse(&args).expect_err(&format!("{args:?} refused"));
            let text = err.to_string();
            assert!(text.contains(args[0]), "{args:?}: {text}");
        }
    }

    #[test]
    fn link_requires_its_flags_and_validates_them() {
        let secret = "k".repeat(32);
        let ok = parse(&[
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &secret,
            "--consult",
            "c1",
            "--role",
            "patient",
            "--name",
            "Jan",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        assert!(parse(&["link", "--base-url", "http://h:1"]).is_err());
        let bad_role = parse(&[
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &secret,
            "--consult",
            "c1",
            "--role",
            "admin",
            "--name",
            "Jan",
        ]);
        assert!(bad_role.is_err());
        let bad_consult = parse(&[
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &secret,
            "--consult",
            "a b",
            "--role",
            "guest",
            "--name",
            "Jan",
        ]);
        assert!(bad_consult.unwrap_err().to_string().contains("--consult"));
        let both = parse(&[
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &secret,
            "--consult",
            "c",
            "--role",
            "guest",
            "--name",
            "J",
            "--with-link-secret",
            "--link-secret",
            &crate::token::random_secret(),
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn contact_is_optional_trimmed_and_reaches_the_server_config() {
        let cfg = parse(&[])
            .unwrap()
            .serve
            .to_config(&"s".repeat(32))
            .unwrap();
        assert_eq!(cfg.contact, None);
        let line = "  Vragen? Bel de polikliniek: 020 123 45 67 ";
        let cli = parse(&["--contact", line]).unwrap();
        let cfg = cli.serve.to_config(&"s".repeat(32)).unwrap();
        assert_eq!(
            cfg.contact.as_deref(),
            Some("Vragen? Bel de polikliniek: 020 123 45 67")
        );
        let longest = "é".repeat(MAX_CONTACT_CHARS);
        assert!(parse(&["--contact", &longest]).is_ok(), "200 characters");
    }

    #[test]
    fn a_bad_contact_line_stops_the_start_with_a_clear_message() {
        let too_long = "x".repeat(MAX_CONTACT_CHARS + 1);
        for (bad, why) in [
            (too_long.as_str(), "at most 200 characters"),
            ("Bel ons\n020 123", "control characters"),
            ("Bel\tons", "control characters"),
            ("Bel \u{1b}[31mons", "control characters"),
            ("   ", "must not be empty"),
        ] {
            let err = parse(&["--contact", bad]).unwrap_err().to_string();
            assert!(err.contains("--contact"), "{bad:?}: {err}");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn link_takes_an_optional_host_validated_like_a_name() {
        let secret = "k".repeat(32);
        let link = |host: Option<&str>| {
            let mut args = vec![
                "link",
                "--base-url",
                "http://h:1",
                "--jwt-secret",
                &secret,
                "--consult",
                "c1",
                "--role",
                "patient",
                "--name",
                "Jan",
            ];
            if let Some(h) = host {
                args.extend(["--host", h]);
            }
            parse(&args)
        };
        let Some(Command::Link(l)) = link(None).unwrap().command else {
            panic!("link subcommand expected");
        };
        assert_eq!(l.host, None);
        let Some(Command::Link(l)) = link(Some(" Dr. Jansen ")).unwrap().command else {
            panic!("link subcommand expected");
        };
        assert_eq!(l.host.as_deref(), Some("Dr. Jansen"));
        let long = "x".repeat(81);
        for bad in ["", "a\u{7}b", long.as_str()] {
            let err = link(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("--host"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn link_secret_may_start_with_a_hyphen() {
        // base64url uses `-`; one secret in 64 starts with it.
        let secret = "-".to_string() + &"A".repeat(23);
        let cli = parse(&[
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &"s".repeat(32),
            "--consult",
            "c",
            "--role",
            "guest",
            "--name",
            "J",
            "--link-secret",
            &secret,
        ])
        .expect("a hyphen-leading secret is a value, not a flag");
        let Some(Command::Link(l)) = cli.command else {
            panic!("link subcommand expected");
        };
        assert_eq!(l.link_secret.as_deref(), Some(secret.as_str()));
    }

    #[test]
    fn jwt_keys_are_parsed_and_loaded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
        let rsa = format!("ehr-1=RS256:{dir}/rsa-public.pem");
        let ed = format!("EdDSA:{dir}/ed-public.pem");
        let cli = parse(&["--jwt-key", &rsa, "--jwt-key", &ed]).unwrap();
        assert_eq!(cli.serve.jwt_keys.len(), 2);
        assert_eq!(cli.serve.jwt_keys[0].kid.as_deref(), Some("ehr-1"));
        let keys = cli.serve.keys(&"s".repeat(32)).unwrap();
        assert_eq!(keys.len(), 3, "the HS256 secret plus two public keys");

        let wrong_alg = format!("ES256:{dir}/rsa-public.pem");
        let cli = parse(&["--jwt-key", &wrong_alg]).unwrap();
        assert!(
            cli.serve
                .keys(&"s".repeat(32))
                .unwrap_err()
                .contains("--jwt-key")
        );
        let missing = parse(&["--jwt-key", "RS256:/nonexistent.pem"]).unwrap();
        assert!(missing.serve.keys(&"s".repeat(32)).is_err());
        for bad in ["HS256:/x.pem", "RS256", "=RS256:/x", "RS256:"] {
            assert!(parse(&["--jwt-key", bad]).is_err(), "{bad}");
        }
        let twice = parse(&["--jwt-key", &rsa, "--jwt-key", &rsa]).unwrap();
        assert!(
            twice
                .serve
                .keys(&"s".repeat(32))
                .unwrap_err()
                .contains("kid")
        );
    }

    /// The same vector as tests/crypto/handshake.test.mjs ("label derivation
    /// known answer"), computed independently with Python's hmac/hashlib.
    const MASTER: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    #[test]
    fn link_label_derivation_known_answer() {
        assert_eq!(
            derive_link_secret(MASTER, "consult-42", "patient").unwrap(),
            "RxtAi-A6HCVjXqxgWB-soZfAgDGFT2a1-gW-Qz-u0Bk"
        );
        assert_eq!(
            derive_link_secret(MASTER, "consult-42", "guest-3f9a2c").unwrap(),
            "eVrYjAQpZebBG6pDUoIqHYAsp_lpe8ZEDSOIebCrifo"
        );
        assert_ne!(
            derive_link_secret(MASTER, "consult-43", "patient").unwrap(),
            "RxtAi-A6HCVjXqxgWB-soZfAgDGFT2a1-gW-Qz-u0Bk"
        );
        assert!(derive_link_secret(MASTER, "consult-42", "Patient").is_err());
        assert!(derive_link_secret("short", "consult-42", "patient").is_err());
    }

    #[test]
    fn link_fragments_per_role() {
        let c = link_fragment(MASTER, "consult-42", Role::Clinician, None).unwrap();
        assert_eq!(
            c,
            LinkFragment {
                k: MASTER.into(),
                kl: None
            }
        );
        assert!(link_fragment(MASTER, "consult-42", Role::Clinician, Some("x")).is_err());
        let p = link_fragment(MASTER, "consult-42", Role::Patient, None).unwrap();
        assert_eq!(p.kl.as_deref(), Some("patient"));
        assert_eq!(p.k, "RxtAi-A6HCVjXqxgWB-soZfAgDGFT2a1-gW-Qz-u0Bk");
        let g = link_fragment(MASTER, "consult-42", Role::Guest, None).unwrap();
        let label = g.kl.clone().unwrap();
        assert!(label.starts_with("guest-") && label.len() == 12 && valid_link_label(&label));
        assert_eq!(
            g.k,
            derive_link_secret(MASTER, "consult-42", &label).unwrap()
        );
        let fixed = link_fragment(MASTER, "consult-42", Role::Guest, Some("guest-3f9a2c")).unwrap();
        assert_eq!(fixed.k, "eVrYjAQpZebBG6pDUoIqHYAsp_lpe8ZEDSOIebCrifo");
        assert_eq!(
            join_url_for("https://h", "a.b.c", Some(&fixed)),
            "https://h/c#t=a.b.c&k=eVrYjAQpZebBG6pDUoIqHYAsp_lpe8ZEDSOIebCrifo&kl=guest-3f9a2c"
        );
        assert_eq!(
            join_url_for("https://h", "a.b.c", Some(&c)),
            format!("https://h/c#t=a.b.c&k={MASTER}")
        );
        assert_eq!(
            join_url_for("https://h", "a.b.c", None),
            "https://h/c#t=a.b.c"
        );
    }

    #[test]
    fn link_label_flag_is_validated() {
        let base = [
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &"s".repeat(32),
            "--consult",
            "c",
            "--role",
            "guest",
            "--name",
            "J",
            "--link-secret",
            MASTER,
        ];
        let ok = parse(&[&base[..], &["--link-label", "guest-ab12"]].concat());
        assert!(ok.is_ok(), "{ok:?}");
        for bad in ["Guest", "", "a b", &"x".repeat(33)] {
            let err = parse(&[&base[..], &["--link-label", bad]].concat());
            assert!(err.is_err(), "{bad}");
        }
        // A label without any link secret is refused.
        let no_secret = parse(&[
            "link",
            "--base-url",
            "http://h:1",
            "--jwt-secret",
            &"s".repeat(32),
            "--consult",
            "c",
            "--role",
            "guest",
            "--name",
            "J",
            "--link-label",
            "guest-ab12",
        ]);
        assert!(no_secret.is_err());
    }

    #[test]
    fn join_url_keeps_secrets_in_the_fragment() {
        assert_eq!(join_url("https://h", "a.b.c", None), "https://h/c#t=a.b.c");
        assert_eq!(
            join_url("https://h", "a.b.c", Some("K")),
            "https://h/c#t=a.b.c&k=K"
        );
    }

    #[test]
    fn waiting_room_flag_can_be_turned_off_and_bare_means_on() {
        assert!(!parse(&["--waiting-room=false"]).unwrap().serve.waiting_room);
        match parse(&["serve", "--waiting-room", "false"])
            .unwrap()
            .command
        {
            Some(Command::Serve(a)) => assert!(!a.waiting_room),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["--waiting-room"]).unwrap().serve.waiting_room);
        assert!(parse(&["--waiting-room=true"]).unwrap().serve.waiting_room);
        assert!(parse(&["--waiting-room=maybe"]).is_err());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_ranges_and_broad_ranges_are_refused() {
        let s32 = "s".repeat(32);
        let cli = parse(&[
            "--trusted-proxy",
            "10.244.0.0/16",
            "--trusted-proxy",
            "192.0.2.7,fd00::/8",
        ])
        .unwrap();
        let cfg = cli.serve.to_config(&s32).unwrap();
        let listed: Vec<String> = cfg.trusted_proxies.iter().map(|t| t.to_string()).collect();
        assert_eq!(listed, ["10.244.0.0/16", "192.0.2.7", "fd00::/8"]);
        assert!(parse(&[]).unwrap().serve.trusted_proxies.is_empty());
        for (bad, says) in [
            ("0.0.0.0/0", "every address"),
            ("::/0", "every address"),
            ("10.0.0.0/8,0.0.0.0/1", "broader than /8"),
            ("10.0.0.0/8,proxy.internal", "\"proxy.internal\""),
            ("10.0.0.9/8", "host bits"),
        ] {
            let e = parse(&["--trusted-proxy", bad]).expect_err(bad);
            assert_eq!(e.exit_code(), 2, "{bad}");
            let text = e.to_string();
            assert!(text.contains(says), "{bad}: {text}");
        }
    }
}
