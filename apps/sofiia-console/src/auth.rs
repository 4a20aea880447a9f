//! Authentication of operator requests: the bearer token decides the
//! operator.
//!
//! [`Operator`] is an extractor: a handler that takes one answers 401 with
//! `WWW-Authenticate: Bearer` unless the request carries a configured
//! token. Every refusal is counted in `sofiia_auth_denied_total{reason}`
//! and weighed by [`crate::denials`]: the first of its kind from a source in
//! a window is logged and marked ([`Denied`]) for the request middleware,
//! which writes its `auth.denied` event; the later ones are counted into an
//! aggregate event; a source past its limit is answered 429.

use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{FromRequest, HttpMessage as _, HttpRequest};
use sofiia_audit_store::Outcome;

use crate::auditor::Event;
use crate::denials::{Aggregate, Verdict};
use crate::problem::ApiError;
use crate::request::{Denied, Operator};
use crate::state::AppState;
use crate::telemetry::AUTH_DENIED;

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
        let refusal = match deny(state, req, reason) {
            Ok(()) => ApiError::unauthorized_operator(),
            Err(throttled) => throttled,
        };
        std::future::ready(Err(refusal))
    }
}

/// Weighs a refused request (see [`crate::denials`]): `Err` with the 429
/// to answer when its source is past its limit, else `Ok`, after logging
/// and marking the request when its refusal is to be recorded in full (the
/// request middleware then writes its `auth.denied` event before the answer
/// leaves, and answers 503 instead if the event cannot be written).
///
/// # Errors
///
/// The 429 problem for a throttled source.
pub fn deny(state: &AppState, req: &HttpRequest, reason: &'static str) -> Result<(), ApiError> {
    metrics::counter!(AUTH_DENIED, "reason" => reason).increment(1);
    let source = req.peer_addr().map(|a| a.ip());
    match state
        .denials
        .note(source, reason, req.path(), std::time::Instant::now())
    {
        Verdict::Record => {
            crate::telemetry::flow_event(
                &state.logger,
                req,
                "auth",
                slog::o!("outcome" => "denied", "reason" => reason, "status" => 401),
            );
            req.extensions_mut().insert(Denied(reason));
            Ok(())
        }
        Verdict::Count => Ok(()),
        Verdict::Throttle { retry_after } => Err(ApiError::auth_throttled(retry_after)),
    }
}

/// The aggregate `auth.denied` event of refusals counted in a window.
pub fn aggregate_event(aggregate: &Aggregate) -> Event {
    Event::new(
        "anonymous",
        "auth.denied",
        aggregate.target.as_str(),
        Outcome::Denied,
    )
    .status(401)
    .detail("reason", aggregate.reason)
    .detail("count", aggregate.count)
    .detail("throttled", aggregate.throttled)
    .detail("window_secs", aggregate.window.as_secs())
    .detail("aggregated", true)
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
