//! The integration tests in one binary: one link of the dependency tree
//! instead of one per file (CI compile time), the files unchanged as modules.

mod common;

mod api;
mod binary;
mod cluster;
mod edge_bounds;
mod ehr_keys;
mod http;
mod jwks_egress;
mod link_check;
mod link_cli;
mod lobby;
mod logs;
mod media_prefs;
mod probe;
mod registry;
mod resume;
mod revocation;
mod roomstore;
mod session;
mod trusted_proxy;
mod turn;
