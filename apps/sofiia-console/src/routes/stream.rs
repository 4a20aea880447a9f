//! Sends answered as server-sent events (`Accept: text/event-stream`),
//! through actix-web-lab's `sse` responder (keep-alive comments included).
//!
//! Events: `delta` (`{"text": "<piece>"}`) any number of times, then `done`
//! (the same JSON as a 200 answer) or `error` (a problem document). Errors
//! known before the first event are ordinary problem+json answers.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, Responder as _};
use actix_web_lab::sse::{Data, Event, Sse};
use futures_util::{Stream, StreamExt as _, stream};
use sofiia_idempotency::actix::{IDEMPOTENT_REPLAYED, replay};
use sofiia_ratelimit::Decision;

use crate::problem::ApiError;
use crate::send::{Answer, Finished, ReplyStream, SendError, Update};

/// Whether the request asks for an event stream.
pub(super) fn wanted(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A whole 200 answer as a stream: its reply as one piece, then `done`.
pub(super) fn whole(req: &HttpRequest, answer: &Answer, keep_alive: Duration) -> HttpResponse {
    let text = reply_text(&answer.response.body);
    let pieces = text.iter().filter(|t| !t.is_empty()).map(|t| delta(t));
    let events = stream::iter(pieces.chain([done(answer)]).collect::<Vec<_>>());
    let mut res = respond(req, events, answer.replayed, keep_alive);
    if !answer.replayed {
        insert_quotas(&mut res, answer.quotas.as_ref());
    }
    res
}

/// A running send's reply: errors before its first piece keep their status;
/// from the first piece on, everything is an event.
///
/// # Errors
///
/// The send's failure, when it ends before the first piece.
pub(super) async fn live(
    req: &HttpRequest,
    mut reply: ReplyStream,
    replayed: bool,
    request_id: Option<String>,
    keep_alive: Duration,
) -> Result<HttpResponse, ApiError> {
    let first = match reply.next().await {
        Some(Update::Pieces(pieces)) => pieces,
        Some(Update::End(Ok(answer))) if answer.response.status == 200 => {
            let replayed = replayed || answer.replayed;
            return Ok(whole(req, &Answer { replayed, ..answer }, keep_alive));
        }
        // A failure the key kept, replayed.
        Some(Update::End(Ok(answer))) => return Ok(replay(&answer.response)),
        Some(Update::End(Err(e))) => return Err(ApiError::from(&*e)),
        None => return Err(ApiError::internal("a send's reply ended twice")),
    };
    let reply_quotas = reply.quotas();
    let rest = stream::unfold(Some(reply), move |reply| {
        let request_id = request_id.clone();
        async move {
            let mut reply = reply?;
            match reply.next().await? {
                Update::Pieces(pieces) => {
                    let events: Vec<Event> = pieces.iter().map(|p| delta(p)).collect();
                    Some((events, Some(reply)))
                }
                Update::End(finished) => Some((vec![end(&finished, request_id.as_deref())], None)),
            }
        }
    })
    .flat_map(stream::iter);
    // The quotas were charged before the node was asked: the send's own
    // answer reports what they left, as a JSON answer does.
    let quotas = if replayed { None } else { reply_quotas };
    let first = stream::iter(first.iter().map(|p| delta(p)).collect::<Vec<_>>());
    let mut res = respond(req, first.chain(rest), replayed, keep_alive);
    insert_quotas(&mut res, quotas.as_ref());
    Ok(res)
}

/// The `RateLimit-Policy`/`RateLimit` fields of a send's own answer.
fn insert_quotas(res: &mut HttpResponse, quotas: Option<&Decision>) {
    if let Some(decision) = quotas {
        let headers = res.headers_mut();
        for (name, value) in sofiia_ratelimit::actix::rate_limit_headers(decision) {
            headers.insert(name, value);
        }
    }
}

fn respond(
    req: &HttpRequest,
    events: impl Stream<Item = Event> + 'static,
    replayed: bool,
    keep_alive: Duration,
) -> HttpResponse {
    let mut res = Sse::from_infallible_stream(events)
        .with_keep_alive(keep_alive)
        .respond_to(req)
        .map_into_boxed_body();
    let headers = res.headers_mut();
    // Proxies that buffer would hold the pieces back.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

fn delta(text: &str) -> Event {
    let data = serde_json::json!({ "text": text }).to_string();
    Data::new(data).event("delta").into()
}

fn done(answer: &Answer) -> Event {
    Data::new(String::from_utf8_lossy(&answer.response.body).into_owned())
        .event("done")
        .into()
}

/// The event that ends a reply: `done`, or `error` with a problem document.
fn end(finished: &Finished, request_id: Option<&str>) -> Event {
    match finished {
        Ok(answer) if answer.response.status == 200 => done(answer),
        // A failure the key kept: its body is the problem document.
        Ok(answer) => Data::new(String::from_utf8_lossy(&answer.response.body).into_owned())
            .event("error")
            .into(),
        Err(e) => error(e, request_id),
    }
}

fn error(e: &Arc<SendError>, request_id: Option<&str>) -> Event {
    let document = ApiError::from(&**e).document(request_id);
    Data::new(serde_json::to_string(&document).unwrap_or_default())
        .event("error")
        .into()
}

/// The reply text of a 200 answer's body.
fn reply_text(body: &[u8]) -> Option<String> {
    let receipt: serde_json::Value = serde_json::from_slice(body).ok()?;
    receipt["reply"]["text"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn the_event_stream_is_wanted_when_accept_names_it() {
        for (accept, want) in [
            ("text/event-stream", true),
            ("application/json, text/event-stream;q=0.9", true),
            ("TEXT/EVENT-STREAM", true),
            ("application/json", false),
            ("*/*", false),
        ] {
            let req = TestRequest::default()
                .insert_header(("accept", accept))
                .to_http_request();
            assert_eq!(wanted(&req), want, "{accept}");
        }
        assert!(!wanted(&TestRequest::default().to_http_request()));
    }

    #[test]
    fn the_reply_text_is_read_from_a_receipt() {
        let body = br#"{"chat_id":"c","reply":{"text":"all green"}}"#;
        assert_eq!(reply_text(body).as_deref(), Some("all green"));
        assert_eq!(reply_text(b"not json"), None);
    }
}
