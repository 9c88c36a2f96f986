//! # Spreekkamer edge
//!
//! The edge authenticates people and runs consults; the media plane (`sfu`)
//! moves their audio and video. One file per concern:
//!
//! * [`protocol`] — the wire messages and error codes of docs/PROTOCOL.md;
//! * [`token`] — join tokens (verify on every join, mint for `link`);
//! * [`jwks`] — the EHR's public keys from a JWKS URL;
//! * [`egress`] — the way out: the hospital's HTTPS proxy (`HTTPS_PROXY`,
//!   `NO_PROXY`) and its `CONNECT` tunnel;
//! * [`consult`] — the roster and waiting room as pure logic that returns
//!   effects;
//! * [`media`] — the seam to the media plane: a typed command/event pair
//!   behind [`media::MediaPlane`] (in-process SFU, remote node, recorder);
//! * [`directory`] — every consult of this edge plus a mailbox per connected
//!   participant; carries out the effects;
//! * [`connection`] — one WebSocket's transport rules (send timeout, size,
//!   message and ping rates), shared by [`session`], [`probe`] and
//!   [`link_check`];
//! * [`session`] — a participant's WebSocket session, from `join` to close;
//! * [`resume`] — resume tickets: back into the call after a lost
//!   connection or a restart, without a second admission;
//! * [`rate`] — the token buckets behind those limits;
//! * [`link`] — the authenticated edge↔node link that carries the seam;
//! * [`remote`] — the edge's media plane in a cluster: placement, links to
//!   nodes, failover;
//! * [`node`] — `spreekkamer sfu`: a media node (link listener, heartbeat,
//!   drain);
//! * [`registry`] — media nodes and consult placement (in memory or Redis);
//! * [`roomstore`] — what of a room every edge must know: revocations, the
//!   lock, removals (in memory or Redis);
//! * [`http`] — routes, health, metrics, the embedded web client;
//! * [`gate`] — connection caps per address and in total;
//! * [`listener`] — the accept loop: the gate, then hyper with a header
//!   timeout;
//! * [`api`] — the HTTP API (invites, authenticated by a clinician token);
//! * [`invite`] — minting patient and guest invites (WebSocket and API);
//! * [`revocation`] — revoked invites and tokens, per consult and bounded;
//! * [`probe`] — the connectivity check of the device check page;
//! * [`link_check`] — the side-effect-free link check before Join;
//! * [`audit`] — the NEN 7513 access log, the only record of a consult;
//! * [`metrics`] — Prometheus;
//! * [`logging`] — the operational log: levels per crate, redaction, and a
//!   limit per call site;
//! * [`context`] — what every request shares, the serve configuration, and
//!   token verification for every entrance;
//! * [`server`] — start and graceful stop;
//! * [`config`] — the command line.
//!
//! Tests (and the binary) start a server with [`serve`] and stop it with
//! [`Server::shutdown`].

pub mod api;
pub mod audit;
pub mod client_addr;
pub mod config;
pub mod connection;
pub mod consult;
pub mod context;
pub mod directory;
pub mod egress;
pub mod forward;
pub mod gate;
pub mod http;
pub mod invite;
pub mod jwks;
pub mod link;
pub mod link_check;
pub mod listener;
pub mod logging;
pub mod media;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod probe;
pub mod protocol;
pub mod rate;
pub mod registry;
pub mod remote;
pub mod resume;
pub mod revocation;
pub mod roomstore;
pub mod server;
pub mod session;
pub mod token;
pub mod turn;

pub use context::ServeConfig;
pub use server::{ServeError, Server, serve};
