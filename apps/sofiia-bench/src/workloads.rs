//! The requests of each scenario.

use std::net::SocketAddr;

use bytes::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};

use crate::loadgen::{Body, Workload};

/// The operator text of every measured send: a typical short question.
pub(crate) const SEND_TEXT: &str =
    "Status of the NODA1 inference queue and the last deployment, please?";

/// The send body the console and the baseline both parse.
pub(crate) fn send_body() -> Bytes {
    Bytes::from(serde_json::json!({ "text": SEND_TEXT }).to_string())
}

fn header(value: &str) -> HeaderValue {
    // Every value here is built from ASCII ids and tokens; a value that is
    // not one is sent as empty and shows up as a 4xx error count.
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn request(method: Method, host: &HeaderValue, path: &str, body: Bytes) -> Request<Body> {
    let mut req = Request::new(Body::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap_or_default();
    req.headers_mut().insert(HOST, host.clone());
    req
}

/// New sends: a chat per client, a fresh Idempotency-Key per request.
#[derive(Debug)]
pub(crate) struct Sends {
    host: HeaderValue,
    /// `Bearer <token>`, one per operator; client `i` uses entry `i % len`.
    auth: Vec<HeaderValue>,
    /// Chats are `<chats>-c<client>`.
    chats: String,
    /// Keys are `<keys>-c<client>-<seq>`: unique per run.
    keys: String,
    body: Bytes,
    /// Each request goes to a chat of its own (`<chats>-<seq>`), with the
    /// operator `seq % len`: many distinct chats and operators.
    spread: bool,
    /// Every request goes to the chat `<chats>` itself.
    single: bool,
}

impl Sends {
    /// Sends to `addr` as the operators of `tokens`, in chats named after
    /// `chats`, with keys unique to `run`.
    pub(crate) fn new(addr: SocketAddr, tokens: &[String], chats: &str, run: &str) -> Sends {
        Sends {
            host: header(&addr.to_string()),
            auth: tokens
                .iter()
                .map(|t| header(&format!("Bearer {t}")))
                .collect(),
            chats: chats.to_owned(),
            keys: format!("bench-{run}"),
            body: send_body(),
            spread: false,
            single: false,
        }
    }

    /// Every client sends to the one chat `<chats>` (filling a chat).
    pub(crate) fn single_chat(mut self) -> Sends {
        self.single = true;
        self
    }

    /// Every request to a new chat, operators in turn (count-bounded runs).
    pub(crate) fn spread(mut self) -> Sends {
        self.spread = true;
        self
    }

    /// The path and key of request `seq` of `client`.
    pub(crate) fn target(&self, client: usize, seq: u64) -> (String, String, usize) {
        if self.single {
            (
                format!("/api/chats/{}/send", self.chats),
                format!("{}-c{client}-{seq}", self.keys),
                client % self.auth.len().max(1),
            )
        } else if self.spread {
            (
                format!("/api/chats/{}-{seq}/send", self.chats),
                format!("{}-{seq}", self.keys),
                (seq % self.auth.len().max(1) as u64) as usize,
            )
        } else {
            (
                format!("/api/chats/{}-c{client}/send", self.chats),
                format!("{}-c{client}-{seq}", self.keys),
                client % self.auth.len().max(1),
            )
        }
    }
}

impl Workload for Sends {
    fn request(&self, client: usize, seq: u64) -> Request<Body> {
        let (path, key, operator) = self.target(client, seq);
        let mut req = request(Method::POST, &self.host, &path, self.body.clone());
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(auth) = self.auth.get(operator) {
            h.insert(AUTHORIZATION, auth.clone());
        }
        h.insert("idempotency-key", header(&key));
        req
    }
}

/// Replays: client `i` repeats the send of key `<keys>-<i>` in chat
/// `<chats>-<i>`, which [`Replays::prime`] made once.
#[derive(Debug)]
pub(crate) struct Replays {
    host: HeaderValue,
    auth: HeaderValue,
    chats: String,
    keys: String,
    body: Bytes,
    /// Priming: request `seq` makes the send of key `seq` (a count-bounded
    /// run of `concurrency` requests).
    priming: bool,
}

impl Replays {
    pub(crate) fn new(addr: SocketAddr, token: &str, chats: &str, keys: &str) -> Replays {
        Replays {
            host: header(&addr.to_string()),
            auth: header(&format!("Bearer {token}")),
            chats: chats.to_owned(),
            keys: keys.to_owned(),
            body: send_body(),
            priming: false,
        }
    }

    /// The same sends, made first (each key once).
    pub(crate) fn prime(mut self) -> Replays {
        self.priming = true;
        self
    }

    fn index(&self, client: usize, seq: u64) -> u64 {
        if self.priming { seq } else { client as u64 }
    }
}

impl Workload for Replays {
    fn request(&self, client: usize, seq: u64) -> Request<Body> {
        let i = self.index(client, seq);
        let path = format!("/api/chats/{}-{i}/send", self.chats);
        let mut req = request(Method::POST, &self.host, &path, self.body.clone());
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(AUTHORIZATION, self.auth.clone());
        h.insert("idempotency-key", header(&format!("{}-{i}", self.keys)));
        req
    }

    fn accept(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        status == StatusCode::OK
            && (self.priming
                || headers
                    .get("idempotent-replayed")
                    .is_some_and(|v| v.as_bytes() == b"true"))
    }
}

/// Authenticated `GET`s of one path (a page of messages).
#[derive(Debug)]
pub(crate) struct Gets {
    host: HeaderValue,
    auth: Option<HeaderValue>,
    path: String,
}

impl Gets {
    pub(crate) fn new(addr: SocketAddr, token: Option<&str>, path: &str) -> Gets {
        Gets {
            host: header(&addr.to_string()),
            auth: token.map(|t| header(&format!("Bearer {t}"))),
            path: path.to_owned(),
        }
    }
}

impl Workload for Gets {
    fn request(&self, _client: usize, _seq: u64) -> Request<Body> {
        let mut req = request(Method::GET, &self.host, &self.path, Bytes::new());
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    #[test]
    fn sends_use_a_chat_per_client_and_unique_keys() {
        let sends = Sends::new(addr(), &["t1".into(), "t2".into()], "a", "r1");
        let (path, key, op) = sends.target(3, 9);
        assert_eq!(path, "/api/chats/a-c3/send");
        assert_eq!(key, "bench-r1-c3-9");
        assert_eq!(op, 1);
        let req = sends.request(3, 9);
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer t2");
        assert_eq!(req.headers()["idempotency-key"], "bench-r1-c3-9");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
    }

    #[test]
    fn spread_sends_reach_a_new_chat_each_and_rotate_operators() {
        let sends = Sends::new(addr(), &["t1".into(), "t2".into(), "t3".into()], "m", "r").spread();
        assert_eq!(sends.target(0, 7).0, "/api/chats/m-7/send");
        assert_eq!(sends.target(5, 7).2, 1);
        assert_ne!(sends.target(0, 7).1, sends.target(0, 8).1);
        let one = Sends::new(addr(), &["t".into()], "big", "r").single_chat();
        assert_eq!(one.target(3, 1).0, "/api/chats/big/send");
        assert_ne!(one.target(3, 1).1, one.target(2, 1).1);
    }

    #[test]
    fn replays_repeat_the_primed_key_and_need_the_replay_header() {
        let replays = Replays::new(addr(), "t", "c", "k");
        let req = replays.request(2, 100);
        assert_eq!(req.uri().path(), "/api/chats/c-2/send");
        assert_eq!(req.headers()["idempotency-key"], "k-2");
        let mut headers = HeaderMap::new();
        assert!(!replays.accept(StatusCode::OK, &headers));
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        assert!(replays.accept(StatusCode::OK, &headers));
        assert!(!replays.accept(StatusCode::CONFLICT, &headers));

        let prime = Replays::new(addr(), "t", "c", "k").prime();
        assert_eq!(prime.request(0, 2).headers()["idempotency-key"], "k-2");
        assert!(prime.accept(StatusCode::OK, &HeaderMap::new()));
    }
}
