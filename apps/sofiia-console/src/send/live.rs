//! A running send's reply as it is written, for every request that waits
//! for it: the send's own (streamed) request, and same-key retries that
//! attach to it on this instance.
//!
//! The pieces are kept from the first, so a request that attaches late
//! receives every piece once, in order, and then the rest as they come; the
//! send's answer ends the reply. Pieces are bounded by the router's reply
//! cap.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sofiia_ratelimit::Decision;
use sofiia_router_client::{InferObserver, ReplicaAttempt};
use tokio::sync::watch;

use super::{Finished, SendError};

#[derive(Debug, Default)]
struct State {
    pieces: Vec<Arc<str>>,
    end: Option<Finished>,
    quotas: Option<Decision>,
}

/// The reply of one running send.
#[derive(Debug)]
pub(crate) struct Live {
    state: watch::Sender<State>,
}

impl Live {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Live {
            state: watch::Sender::new(State::default()),
        })
    }

    /// Appends a piece of the reply.
    pub(crate) fn push(&self, piece: &str) {
        self.state
            .send_modify(|state| state.pieces.push(Arc::from(piece)));
    }

    /// Records what the send's quotas left, for its own streamed answer.
    pub(crate) fn charged(&self, quotas: &Decision) {
        self.state
            .send_modify(|state| state.quotas = Some(quotas.clone()));
    }

    /// Whether any piece of the reply was given.
    pub(crate) fn has_pieces(&self) -> bool {
        !self.state.borrow().pieces.is_empty()
    }

    /// Ends the reply with the send's answer; only the first call counts.
    pub(crate) fn end(&self, finished: Finished) {
        self.state.send_if_modified(|state| {
            if state.end.is_some() {
                return false;
            }
            state.end = Some(finished);
            true
        });
    }

    /// A reader from the first piece.
    pub(crate) fn subscribe(&self) -> ReplyStream {
        ReplyStream {
            state: self.state.subscribe(),
            next: 0,
            ended: false,
        }
    }
}

/// What a [`ReplyStream`] gives next.
#[derive(Debug)]
pub enum Update {
    /// Pieces of the reply not given before, in order.
    Pieces(Vec<Arc<str>>),
    /// The send's answer; nothing follows.
    End(Finished),
}

/// One request's view of a running send's reply.
#[derive(Debug)]
pub struct ReplyStream {
    state: watch::Receiver<State>,
    next: usize,
    ended: bool,
}

impl ReplyStream {
    /// The pieces not given yet, else the end, waiting for either; `None`
    /// after the end was given.
    pub async fn next(&mut self) -> Option<Update> {
        if self.ended {
            return None;
        }
        loop {
            {
                let state = self.state.borrow_and_update();
                if state.pieces.len() > self.next {
                    let pieces = state.pieces[self.next..].to_vec();
                    self.next = state.pieces.len();
                    return Some(Update::Pieces(pieces));
                }
                if let Some(end) = &state.end {
                    self.ended = true;
                    return Some(Update::End(end.clone()));
                }
            }
            if self.state.changed().await.is_err() {
                // The send's task is gone without an answer (it panicked).
                self.ended = true;
                return Some(Update::End(Err(Arc::new(SendError::Internal(
                    "the send ended without an answer",
                )))));
            }
        }
    }

    /// What the send's quotas left, once they were charged.
    pub fn quotas(&self) -> Option<Decision> {
        self.state.borrow().quotas.clone()
    }

    /// Skips the pieces and waits for the end, at most `wait`.
    pub(crate) async fn finished(mut self, wait: Duration) -> Option<Finished> {
        let end = async {
            while let Some(update) = self.next().await {
                if let Update::End(finished) = update {
                    return Some(finished);
                }
            }
            None
        };
        tokio::time::timeout(wait, end).await.ok().flatten()
    }
}

/// What the router reports during a send's infer call: pieces go to the
/// send's [`Live`] reply, the replicas tried are kept for its audit event.
#[derive(Debug)]
pub(crate) struct Observer<'a> {
    pub(crate) live: &'a Live,
    pub(crate) stream: bool,
    pub(crate) attempts: &'a Attempts,
}

impl InferObserver for Observer<'_> {
    fn wants_stream(&self) -> bool {
        self.stream
    }

    fn delta(&self, text: &str) {
        self.live.push(text);
    }

    fn attempt(&self, attempt: ReplicaAttempt) {
        self.attempts.push(attempt);
    }
}

/// The replicas a send's infer call tried, in order.
#[derive(Debug, Default)]
pub(crate) struct Attempts(Mutex<Vec<ReplicaAttempt>>);

impl Attempts {
    fn push(&self, attempt: ReplicaAttempt) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(attempt);
    }

    /// Those tried so far.
    pub(crate) fn taken(&self) -> Vec<ReplicaAttempt> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use sofiia_idempotency::StoredResponse;

    use super::super::Answer;
    use super::*;

    fn answer() -> Answer {
        Answer {
            response: StoredResponse {
                status: 200,
                headers: Vec::new(),
                body: b"{}".to_vec(),
            },
            quotas: None,
            replayed: false,
        }
    }

    fn joined(pieces: &[Arc<str>]) -> String {
        pieces.iter().map(|p| &**p).collect()
    }

    #[tokio::test]
    async fn a_late_reader_gets_every_piece_once_then_the_rest_live() {
        let live = Live::new();
        let mut early = live.subscribe();
        live.push("a");
        live.push("b");
        let mut late = live.subscribe();
        let Some(Update::Pieces(first)) = late.next().await else {
            panic!("pieces expected");
        };
        assert_eq!(joined(&first), "ab");
        live.push("c");
        let Some(Update::Pieces(next)) = late.next().await else {
            panic!("pieces expected");
        };
        assert_eq!(joined(&next), "c");
        live.end(Ok(answer()));
        // Only the first end counts.
        live.end(Err(Arc::new(SendError::Internal("late"))));
        assert!(matches!(late.next().await, Some(Update::End(Ok(_)))));
        assert!(late.next().await.is_none());
        let Some(Update::Pieces(all)) = early.next().await else {
            panic!("pieces expected");
        };
        assert_eq!(joined(&all), "abc");
        assert!(matches!(early.next().await, Some(Update::End(Ok(_)))));
    }

    #[tokio::test]
    async fn a_reply_dropped_without_an_end_ends_its_readers() {
        let live = Live::new();
        let reader = live.subscribe();
        live.push("a");
        drop(live);
        let finished = reader.finished(Duration::from_secs(5)).await;
        assert!(matches!(finished, Some(Err(e)) if matches!(*e, SendError::Internal(_))));
    }

    #[tokio::test]
    async fn waiting_for_the_end_is_bounded() {
        let live = Live::new();
        let finished = live.subscribe().finished(Duration::from_millis(20)).await;
        assert!(finished.is_none());
        assert!(!live.has_pieces());
    }
}
