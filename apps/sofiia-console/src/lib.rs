//! sofiia-console: the operator console for the agent Sofiia.
//!
//! This crate is the server: it composes the domain crates (chat index,
//! idempotency, rate limits, audit trail, node router) behind an actix-web
//! HTTP API. The binary is a thin CLI over [`server::build_state`] and
//! [`server::start`]; end-to-end tests and embedders use the same functions.
//!
//! Modules import in one direction. At the bottom, leaves that import no
//! other module of the crate: [`build_info`], [`credentials`], [`denials`],
//! [`request`];
//! then [`telemetry`] (logs, metrics) and [`auditor`] (the audit trail);
//! the send workflow, [`send`]; the settings, [`config`]; the shared
//! [`state`] and the [`health`] probes; [`problem`], where every error
//! becomes an HTTP answer; on top the HTTP layer ([`auth`],
//! [`middleware`], [`routes`]), the composition ([`server`]) and the
//! offline commands ([`tools`]).

pub mod auditor;
pub mod auth;
pub mod build_info;
pub mod config;
pub mod credentials;
pub mod denials;
pub mod health;
pub mod middleware;
pub mod problem;
pub mod request;
pub mod routes;
pub mod send;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tools;
