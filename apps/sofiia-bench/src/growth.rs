//! Cost growth of the chat index: how long a page of messages takes as a
//! chat grows to 1 000, 100 000 and 1 000 000 messages, per backend, called
//! through the `sofiia-chat-index` crate directly (no HTTP), so the numbers
//! are the store's own.
//!
//! Chats are filled through the public API, `append_exchange` (the call a
//! send makes), from several tasks at once; the fill rate is reported too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sofiia_chat_index::{DynChatIndexStore, MemoryChatIndex, SqliteChatIndex};
use sofiia_core_domain::{
    ChatId, Cursor, Exchange, Message, MessageId, NewChat, NodeId, OperatorId, PageLimit,
    PageRequest, Role, Timestamp,
};

use crate::error_chain;
use crate::procs::Memory;
use crate::stats::percentile;
use crate::workloads::SEND_TEXT;

/// The time of the first message of a filled chat: 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;

/// Tasks appending at once while filling a chat.
const FILL_TASKS: u64 = 8;

/// What a filled chat looks like: `n` exchanges of two messages each, the
/// operator's at `BASE + 2k` ms and the agent's at `BASE + 2k + 1` ms.
fn exchange(chat: &ChatId, node: &NodeId, operator: &OperatorId, k: u64) -> Exchange {
    let ts = |offset: u64| {
        let ms = i64::try_from(2 * k + offset).unwrap_or(i64::MAX);
        Timestamp::from_unix_millis(BASE_MS.saturating_add(ms)).unwrap_or(Timestamp::MAX)
    };
    let message = |role, text: String, ts| Message {
        id: MessageId::generate(),
        chat_id: chat.clone(),
        role,
        text,
        ts,
        operator_id: operator.clone(),
        node: node.clone(),
    };
    Exchange {
        operator: message(Role::Operator, SEND_TEXT.to_owned(), ts(0)),
        agent: message(Role::Agent, format!("[{node}] echo: {SEND_TEXT}"), ts(1)),
    }
}

/// The timestamp of message `m` (0-based, oldest first) of a filled chat.
fn message_ts(m: u64) -> Timestamp {
    let ms = i64::try_from(m).unwrap_or(i64::MAX);
    Timestamp::from_unix_millis(BASE_MS.saturating_add(ms)).unwrap_or(Timestamp::MAX)
}

/// Appends exchanges `from..to` to `chat` (creating it on the first) and
/// returns how long that took.
///
/// # Errors
///
/// The first append that failed.
pub(crate) async fn fill(
    store: &Arc<DynChatIndexStore>,
    chat: &ChatId,
    from: u64,
    to: u64,
) -> Result<Duration, String> {
    let node = NodeId::new(crate::rig::NODE).map_err(|e| e.to_string())?;
    let operator = OperatorId::new("bench").map_err(|e| e.to_string())?;
    let next = Arc::new(AtomicU64::new(from));
    let started = Instant::now();
    if from == 0 && to > 0 {
        // The chat is created by the first exchange; the others must not
        // race it with different `created_at`s (harmless, but tidy).
        next.store(1, Ordering::SeqCst);
        append(store, chat, &node, &operator, 0).await?;
    }
    let tasks: Vec<_> = (0..FILL_TASKS)
        .map(|_| {
            let (store, chat, node, operator, next) = (
                Arc::clone(store),
                chat.clone(),
                node.clone(),
                operator.clone(),
                Arc::clone(&next),
            );
            tokio::spawn(async move {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= to {
                        return Ok::<(), String>(());
                    }
                    append(&store, &chat, &node, &operator, k).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| format!("fill task: {e}"))??;
    }
    Ok(started.elapsed())
}

async fn append(
    store: &Arc<DynChatIndexStore>,
    chat: &ChatId,
    node: &NodeId,
    operator: &OperatorId,
    k: u64,
) -> Result<(), String> {
    let new_chat = NewChat {
        id: chat.clone(),
        title: None,
        node: node.clone(),
        created_at: message_ts(0),
    };
    store
        .append_exchange(new_chat, &exchange(chat, node, operator, k))
        .await
        .map(|_| ())
        .map_err(|e| format!("append_exchange: {}", error_chain(&e)))
}

/// Timings of one page read, repeated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PageTiming {
    pub p50: Duration,
    pub p99: Duration,
}

/// One row: a backend at a chat size.
#[derive(Debug, Clone)]
pub(crate) struct GrowthRow {
    pub backend: &'static str,
    pub messages: u64,
    /// Messages per second while filling up to this size (from the last size).
    pub fill_rate: f64,
    /// The newest page (`limit=50`, no cursor).
    pub first_page: PageTiming,
    /// A page from the middle of the chat (cursor at message n/2).
    pub deep_page: PageTiming,
    /// Bytes on disk (SQLite file and WAL) or added to the process's
    /// resident memory (in-memory backend) since the store was empty.
    pub footprint_bytes: Option<u64>,
}

/// Reads `page` `iterations` times, one at a time, and returns p50/p99.
async fn time_page(
    store: &Arc<DynChatIndexStore>,
    chat: &ChatId,
    page: &PageRequest,
    iterations: usize,
) -> Result<PageTiming, String> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let got = store
            .list_messages(chat, page)
            .await
            .map_err(|e| format!("list_messages: {}", error_chain(&e)))?;
        samples.push(started.elapsed());
        if got.items.len() != page.limit.get() {
            return Err(format!(
                "a page held {} messages, not {}",
                got.items.len(),
                page.limit.get()
            ));
        }
    }
    Ok(PageTiming {
        p50: percentile(&samples, 0.50).unwrap_or_default(),
        p99: percentile(&samples, 0.99).unwrap_or_default(),
    })
}

fn self_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Memory::parse(&status).map(|m| m.rss_kib * 1024)
}

fn file_bytes(path: &std::path::Path) -> Option<u64> {
    let mut total = 0;
    for suffix in ["", "-wal"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    (total > 0).then_some(total)
}

/// Measures both embedded backends at every size in `sizes` (messages,
/// ascending), reading each page `iterations` times.
///
/// # Errors
///
/// When a store cannot be opened or a call fails.
pub(crate) async fn run(
    dir: &std::path::Path,
    sizes: &[u64],
    iterations: usize,
    progress: &dyn Fn(&str),
) -> Result<Vec<GrowthRow>, String> {
    let mut rows = Vec::new();
    // In-memory first: its footprint is this process's memory growth, which
    // memory freed by an earlier pass would hide.
    for backend in ["inmemory", "sqlite"] {
        let path = dir.join("growth-chat-index.db");
        let rss_before = self_rss_bytes();
        let store: Arc<DynChatIndexStore> = match backend {
            "sqlite" => Arc::new(
                SqliteChatIndex::open(&path)
                    .await
                    .map_err(|e| format!("open {}: {}", path.display(), error_chain(&e)))?,
            ),
            _ => Arc::new(MemoryChatIndex::new()),
        };
        let chat = ChatId::new("growth").map_err(|e| e.to_string())?;
        let limit = PageLimit::new(50).map_err(|e| e.to_string())?;
        let mut exchanges = 0u64;
        for &messages in sizes {
            let target = messages.div_ceil(2);
            let took = fill(&store, &chat, exchanges, target).await?;
            let added = (target - exchanges) * 2;
            exchanges = target;
            let n = exchanges * 2;
            progress(&format!(
                "growth: {backend} holds {n} messages (filled {added} in {:.1}s)",
                took.as_secs_f64()
            ));
            let first = PageRequest::first(limit);
            let deep = PageRequest {
                limit,
                // A cursor is a position: the items strictly older than
                // message n/2 (an empty id sorts before every real one).
                after: Some(Cursor::new(message_ts(n / 2), String::new())),
            };
            let first_page = time_page(&store, &chat, &first, iterations).await?;
            let deep_page = time_page(&store, &chat, &deep, iterations).await?;
            let footprint_bytes = match backend {
                "sqlite" => file_bytes(&path),
                _ => self_rss_bytes()
                    .zip(rss_before)
                    .map(|(after, before)| after.saturating_sub(before)),
            };
            rows.push(GrowthRow {
                backend,
                messages: n,
                fill_rate: added as f64 / took.as_secs_f64().max(1e-9),
                first_page,
                deep_page,
                footprint_bytes,
            });
        }
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fills_and_pages_a_small_chat() {
        let store: Arc<DynChatIndexStore> = Arc::new(MemoryChatIndex::new());
        let chat = ChatId::new("t").unwrap();
        fill(&store, &chat, 0, 60).await.unwrap();
        fill(&store, &chat, 60, 100).await.unwrap();
        let limit = PageLimit::new(50).unwrap();
        let page = store
            .list_messages(&chat, &PageRequest::first(limit))
            .await
            .unwrap();
        assert_eq!(page.items.len(), 50);
        // Newest first: message 199 is the agent's reply of exchange 99.
        assert_eq!(page.items[0].ts, message_ts(199));
        let deep = PageRequest {
            limit,
            after: Some(Cursor::new(message_ts(100), String::new())),
        };
        let page = store.list_messages(&chat, &deep).await.unwrap();
        assert_eq!(page.items[0].ts, message_ts(99));
        let timing = time_page(&store, &chat, &deep, 5).await.unwrap();
        assert!(timing.p99 >= timing.p50);
    }
}
