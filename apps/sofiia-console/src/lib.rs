//! sofiia-console: the operator console for the agent Sofiia.
//!
//! This crate is the server: it composes the domain crates (chat index, node
//! router, ...) behind an actix-web HTTP API. The binary is a thin CLI over
//! [`server::build_state`] and [`server::start`]; end-to-end tests and
//! embedders use the same functions.

pub mod audit;
pub mod auth;
pub mod config;
pub mod health;
pub mod problem;
pub mod routes;
pub mod send;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tools;
