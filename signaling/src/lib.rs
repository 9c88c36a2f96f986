//! # Spreekkamer edge
//!
//! The edge authenticates people and runs consults; the media plane (`sfu`)
//! moves their audio and video. One file per concern:
//!
//! * [`protocol`] — the wire messages and error codes of docs/PROTOCOL.md;
//! * [`token`] — join tokens (verify on every join, mint for `link`);
//! * [`jwks`] — the EHR's public keys from a JWKS URL;
//! * [`consult`] — the roster and waiting room as pure logic that returns
//!   effects;
//! * [`directory`] — every consult of this edge plus a mailbox per connected
//!   participant; carries out the effects;
//! * [`session`] — one WebSocket connection with its limits;
//! * [`resume`] — resume tickets: back into the call after a lost
//!   connection or a restart, without a second admission;
//! * [`rate`] — the token buckets behind those limits;
//! * [`http`] — routes, health, metrics, the embedded web client;
//! * [`listener`] — the accept loop: connection caps, header timeout;
//! * [`api`] — the HTTP API (invites, authenticated by a clinician token);
//! * [`invite`] — minting patient and guest invites (WebSocket and API);
//! * [`revocation`] — revoked invites and tokens, per consult and bounded;
//! * [`probe`] — the connectivity check of the device check page;
//! * [`audit`] — the NEN 7513 access log, the only record of a consult;
//! * [`metrics`] — Prometheus;
//! * [`logging`] — the operational log: levels per crate, redaction, and a
//!   limit per call site;
//! * [`server`] — start and graceful stop;
//! * [`config`] — the command line.
//!
//! Tests (and the binary) start a server with [`serve`] and stop it with
//! [`Server::shutdown`].

pub mod api;
pub mod audit;
pub mod config;
pub mod consult;
pub mod directory;
pub mod http;
pub mod invite;
pub mod jwks;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod protocol;
pub mod rate;
pub mod resume;
pub mod revocation;
pub mod server;
pub mod session;
pub mod token;

pub use server::{ServeConfig, ServeError, Server, serve};
