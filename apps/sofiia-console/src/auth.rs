//! Authentication of operator requests: the bearer token decides the
//! operator.
//!
//! [`Operator`] is an extractor: a handler that takes one answers 401 with
//! `WWW-Authenticate: Bearer` unless the request carries a configured
//! token. Every refusal is logged and marked ([`Denied`]) for the request
//! middleware, which writes its `auth.denied` event.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest};
use sofiia_audit_store::Outcome;

use crate::auditor::Event;
use crate::problem::ApiError;
use crate::request::{Denied, Operator};
use crate::state::AppState;

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    /// Synchronous on purpose: extractors of one handler run together, and
    /// the 401 must win over any error of a body extracted beside it.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<actix_web::web::Data<AppState>>() else {
            return std::future::ready(Err(ApiError::internal("application state is missing")));
        };
        let reason = match bearer_token(req) {
            Err(reason) => reason,
            Ok(token) => match state.operators.authenticate(token) {
                Some(operator) => {
                    req.extensions_mut().insert(Operator(operator.clone()));
                    return std::future::ready(Ok(Operator(operator)));
                }
                None => "unknown",
            },
        };
        deny(state, req, reason);
        std::future::ready(Err(ApiError::unauthorized_operator()))
    }
}

/// Logs a refused request and marks it, so that the request middleware
/// writes its `auth.denied` event before the answer leaves (and answers 503
/// instead if the event cannot be written).
pub fn deny(state: &AppState, req: &HttpRequest, reason: &'static str) {
    crate::telemetry::flow_event(
        &state.logger,
        req,
        "auth",
        slog::o!("outcome" => "denied", "reason" => reason, "status" => 401),
    );
    req.extensions_mut().insert(Denied(reason));
}

/// The `auth.denied` event of a refused request (actor `anonymous`: no one
/// was authenticated).
pub fn denial_event(req: &HttpRequest, reason: &'static str) -> Event {
    let target: String = req.path().chars().take(256).collect();
    Event::new("anonymous", "auth.denied", target, Outcome::Denied)
        .status(401)
        .detail("reason", reason)
}

/// The bearer token of the request, or why there is none.
fn bearer_token(req: &HttpRequest) -> Result<&str, &'static str> {
    let Some(header) = req.headers().get(AUTHORIZATION) else {
        return Err("missing");
    };
    header
        .to_str()
        .ok()
        .and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or("malformed")
}
