//! The in-process backend.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Write as _;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use async_trait::async_trait;
use sofiia_core_domain::{
    Chat, ChatId, Cursor, Exchange, Message, MessageId, NewChat, NodeId, OperatorId, Page,
    PageRequest, Role, Timestamp,
};

use crate::exchange::{self, ExchangeError};
use crate::import::{self, ImportError};
use crate::{ChatIndexError, ChatIndexStore, Imported, Result};

/// A chat index held in memory, for tests and single-instance demos.
///
/// Everything is lost when it is dropped. Reads and writes take a
/// [`RwLock`] that is never held across an `.await`; a page costs
/// O(log n + page size), and so does an append of messages newer than the
/// chat's newest (an older one moves the newer ones up).
///
/// Memory: about 1 KiB per chat of one exchange with short texts (the
/// texts, ids and a chat's list are stored once each), growing with every
/// message. For tests and single-instance demos, not production.
///
/// If code holding the lock ever panicked, the data may be half updated, so
/// from then on every call fails with [`ChatIndexError::Backend`] (and
/// [`check`](ChatIndexStore::check) reports it) instead of serving it.
///
/// ```
/// use sofiia_chat_index::{ChatIndexStore, MemoryChatIndex};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sofiia_chat_index::ChatIndexError> {
/// let store = MemoryChatIndex::new();
/// store.check().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct MemoryChatIndex {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Keyed by the id's string so that a cursor's id, which need not be a
    /// valid [`ChatId`], can be looked up and compared without conversion.
    /// The key is shared (not copied) by `by_activity` and `message_chats`.
    chats: HashMap<Arc<str>, ChatEntry>,
    /// `(updated_at, id)` of every chat: the list order, ascending.
    by_activity: BTreeSet<(Timestamp, Arc<str>)>,
    /// Every stored message id and the chat it belongs to, across all chats,
    /// as message ids are unique store-wide.
    message_chats: HashMap<MessageId, Arc<str>>,
    /// Every operator and node named by a message, each held once.
    operators: HashSet<Arc<OperatorId>>,
    nodes: HashSet<Arc<NodeId>>,
}

struct ChatEntry {
    chat: Chat,
    /// In list order, ascending by `(ts, id as text)`: the text form is
    /// what cursors carry and what other backends compare. (A message id is
    /// a lowercase hyphenated UUID, whose text sorts as its bytes do.) A
    /// sorted vector rather than a tree: a chat of two messages takes two
    /// slots, not a tree node of eleven.
    messages: Vec<Stored>,
}

/// A message as kept: its chat is the entry's, its operator and node are
/// shared with every other message naming them.
struct Stored {
    id: MessageId,
    ts: Timestamp,
    role: Role,
    text: Box<str>,
    operator: Arc<OperatorId>,
    node: Arc<NodeId>,
}

impl Stored {
    fn to_message(&self, chat: &ChatId) -> Message {
        Message {
            id: self.id,
            chat_id: chat.clone(),
            role: self.role,
            text: self.text.to_string(),
            ts: self.ts,
            operator_id: OperatorId::clone(&self.operator),
            node: NodeId::clone(&self.node),
        }
    }
}

/// The shared copy of `value` in `set`, added if missing.
fn intern<T: Eq + std::hash::Hash + Clone>(set: &mut HashSet<Arc<T>>, value: &T) -> Arc<T> {
    if let Some(shared) = set.get(value) {
        return Arc::clone(shared);
    }
    let shared = Arc::new(value.clone());
    set.insert(Arc::clone(&shared));
    shared
}

impl ChatEntry {
    /// How many messages sort before `(ts, id)`.
    fn position(&self, ts: Timestamp, id: &str) -> usize {
        self.messages
            .partition_point(|m| compare(m, ts, id) == Ordering::Less)
    }

    /// Inserts `message` in order (its id is new to the store).
    fn insert(
        &mut self,
        message: &Message,
        operators: &mut HashSet<Arc<OperatorId>>,
        nodes: &mut HashSet<Arc<NodeId>>,
    ) {
        // Ids sort as their text does, so the typed key keeps list order;
        // a message newer than the rest lands at the end.
        let at = self
            .messages
            .partition_point(|m| (m.ts, m.id) < (message.ts, message.id));
        let stored = Stored {
            id: message.id,
            ts: message.ts,
            role: message.role,
            text: message.text.as_str().into(),
            operator: intern(operators, &message.operator_id),
            node: intern(nodes, &message.node),
        };
        self.messages.insert(at, stored);
    }
}

/// `message`'s list key `(ts, id as text)` compared with `(ts, id)`.
fn compare(message: &Stored, ts: Timestamp, id: &str) -> Ordering {
    message.ts.cmp(&ts).then_with(|| {
        // The id's text, 36 bytes, written without an allocation.
        let mut buf = [0_u8; 36];
        let mut out = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(out, "{}", message.id);
        let len = usize::try_from(out.position()).unwrap_or(0);
        buf[..len].cmp(id.as_bytes())
    })
}

#[derive(Debug, thiserror::Error)]
enum MemoryError {
    /// The lock was poisoned by a panic while it was held.
    #[error("the in-memory chat index is unusable: a panic interrupted an update")]
    Poisoned,
    /// The maps disagree; only a bug in this module could cause it.
    #[error("the in-memory chat index is inconsistent")]
    Inconsistent,
}

impl From<MemoryError> for ChatIndexError {
    fn from(err: MemoryError) -> Self {
        ChatIndexError::Backend {
            source: Box::new(err),
        }
    }
}

impl MemoryChatIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned lock is reported, not recovered with `into_inner`: the panic
    // may have struck between the updates of `chats`, `by_activity` and
    // `message_chats`, and serving such data would break pagination silently.
    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>, MemoryError> {
        self.inner.read().map_err(|_| MemoryError::Poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>, MemoryError> {
        self.inner.write().map_err(|_| MemoryError::Poisoned)
    }
}

impl fmt::Debug for MemoryChatIndex {
    // Sizes only: the content holds message text, which must not reach logs,
    // and a busy lock must not block a `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("MemoryChatIndex");
        match self.inner.try_read() {
            Ok(inner) => s
                .field("chats", &inner.chats.len())
                .field("messages", &inner.message_chats.len()),
            Err(TryLockError::WouldBlock) => s.field("state", &"locked"),
            Err(TryLockError::Poisoned(_)) => s.field("state", &"poisoned"),
        };
        s.finish()
    }
}

/// The items strictly before `after` in ascending key order, last first:
/// the list's descending order, starting strictly after the cursor.
fn upper_bound(after: Option<&Cursor>) -> Bound<(Timestamp, Arc<str>)> {
    match after {
        Some(c) => Bound::Excluded((c.ts(), Arc::from(c.id()))),
        None => Bound::Unbounded,
    }
}

#[async_trait]
impl ChatIndexStore for MemoryChatIndex {
    async fn create_chat(&self, chat: NewChat) -> Result<Chat> {
        let mut inner = self.write()?;
        if inner.chats.contains_key(chat.id.as_str()) {
            return Err(ChatIndexError::Conflict { id: chat.id });
        }
        let chat = chat.into_chat();
        inner.insert_chat(chat.clone());
        Ok(chat)
    }

    async fn get_chat(&self, id: &ChatId) -> Result<Option<Chat>> {
        let inner = self.read()?;
        Ok(inner.chats.get(id.as_str()).map(|e| e.chat.clone()))
    }

    async fn append_exchange(&self, new_chat: NewChat, exchange: &Exchange) -> Result<Chat> {
        exchange::check(&new_chat, exchange)?;
        let chat_key = exchange.operator.chat_id.as_str();
        let mut inner = self.write()?;

        // Every check comes before the first change, so a refused exchange
        // leaves nothing behind.
        if let Some(owner) = inner.message_chats.get(&exchange.operator.id) {
            if owner.as_ref() != chat_key {
                return Err(ExchangeError::OperatorIdInOtherChat.into());
            }
            return inner
                .chats
                .get(chat_key)
                .map(|e| e.chat.clone())
                .ok_or_else(|| MemoryError::Inconsistent.into());
        }
        if inner.message_chats.contains_key(&exchange.agent.id) {
            return Err(ExchangeError::AgentIdTaken.into());
        }

        if !inner.chats.contains_key(chat_key) {
            inner.insert_chat(new_chat.into_chat());
        }
        let Some((key, _)) = inner.chats.get_key_value(chat_key) else {
            return Err(MemoryError::Inconsistent.into());
        };
        let key = Arc::clone(key);
        let Inner {
            chats,
            by_activity,
            message_chats,
            operators,
            nodes,
        } = &mut *inner;
        let Some(entry) = chats.get_mut(chat_key) else {
            // Inserted just above, under the same lock.
            return Err(MemoryError::Inconsistent.into());
        };
        touch(by_activity, &key, &mut entry.chat, exchange.agent.ts);
        entry.chat.message_count = entry.chat.message_count.saturating_add(2);
        entry.messages.reserve_exact(2);
        for message in [&exchange.operator, &exchange.agent] {
            entry.insert(message, operators, nodes);
            message_chats.insert(message.id, Arc::clone(&key));
        }
        Ok(entry.chat.clone())
    }

    async fn list_chats(&self, page: &PageRequest) -> Result<Page<Chat>> {
        let inner = self.read()?;
        let bound = (Bound::Unbounded, upper_bound(page.after.as_ref()));
        let items = inner
            .by_activity
            .range(bound)
            .rev()
            .take(page.limit.get() + 1)
            .filter_map(|(_, id)| inner.chats.get(id.as_ref()).map(|e| e.chat.clone()))
            .collect();
        Ok(Page::from_overfetch(items, page.limit, Chat::cursor))
    }

    async fn list_messages(&self, chat: &ChatId, page: &PageRequest) -> Result<Page<Message>> {
        let inner = self.read()?;
        let entry = inner
            .chats
            .get(chat.as_str())
            .ok_or_else(|| ChatIndexError::NotFound { id: chat.clone() })?;
        let end = match &page.after {
            Some(c) => entry.position(c.ts(), c.id()),
            None => entry.messages.len(),
        };
        let items = entry.messages[..end]
            .iter()
            .rev()
            .take(page.limit.get() + 1)
            .map(|m| m.to_message(&entry.chat.id))
            .collect();
        Ok(Page::from_overfetch(items, page.limit, Message::cursor))
    }

    async fn import_chat(&self, chat: &Chat, messages: &[Message]) -> Result<Imported> {
        import::check(chat, messages)?;
        let chat_key = chat.id.as_str();
        let mut inner = self.write()?;

        // Every check comes before the first change, so a refused batch
        // leaves nothing behind.
        let foreign = messages.iter().any(|m| {
            inner
                .message_chats
                .get(&m.id)
                .is_some_and(|owner| owner.as_ref() != chat_key)
        });
        if foreign {
            return Err(ImportError::IdInOtherChat.into());
        }

        let created = !inner.chats.contains_key(chat_key);
        if created {
            inner.insert_chat(Chat {
                message_count: 0,
                ..chat.clone()
            });
        }
        let Some((key, _)) = inner.chats.get_key_value(chat_key) else {
            return Err(MemoryError::Inconsistent.into());
        };
        let key = Arc::clone(key);
        let Inner {
            chats,
            by_activity,
            message_chats,
            operators,
            nodes,
        } = &mut *inner;
        let Some(entry) = chats.get_mut(chat_key) else {
            // Present or inserted just above, under the same lock.
            return Err(MemoryError::Inconsistent.into());
        };
        touch(by_activity, &key, &mut entry.chat, chat.updated_at);
        let mut inserted = 0_u64;
        for message in messages {
            if message_chats.contains_key(&message.id) {
                continue;
            }
            entry.insert(message, operators, nodes);
            message_chats.insert(message.id, Arc::clone(&key));
            inserted += 1;
        }
        entry.chat.message_count = entry.chat.message_count.saturating_add(inserted);
        Ok(Imported {
            chat: entry.chat.clone(),
            created,
            inserted,
            present: messages.len() as u64 - inserted,
        })
    }

    async fn check(&self) -> Result<()> {
        drop(self.read()?);
        Ok(())
    }
}

/// Moves `chat` (keyed `key`) to `max(updated_at, ts)` in the activity
/// order.
fn touch(
    by_activity: &mut BTreeSet<(Timestamp, Arc<str>)>,
    key: &Arc<str>,
    chat: &mut Chat,
    ts: Timestamp,
) {
    let new_updated_at = chat.updated_at.max(ts);
    if new_updated_at != chat.updated_at {
        by_activity.remove(&(chat.updated_at, Arc::clone(key)));
        by_activity.insert((new_updated_at, Arc::clone(key)));
        chat.updated_at = new_updated_at;
    }
}

impl Inner {
    fn insert_chat(&mut self, chat: Chat) {
        let key: Arc<str> = Arc::from(chat.id.as_str());
        self.by_activity.insert((chat.updated_at, Arc::clone(&key)));
        self.chats.insert(
            key,
            ChatEntry {
                chat,
                messages: Vec::new(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::chat_index_store_tests!(
        async fn store() -> crate::testing::TestStore {
            crate::testing::TestStore::new(MemoryChatIndex::new())
        }
    );

    use crate::testing::exchange_fixture;

    /// The list order compares ids as text; the vector is kept in order by
    /// the ids' own ordering. The two agree for every id.
    #[test]
    fn message_ids_sort_as_their_text_does() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            // xorshift: enough spread for every nibble value.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let ids: Vec<MessageId> = (0..2_000)
            .map(|_| {
                let hex = format!("{:016x}{:016x}", next(), next());
                let text = format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                );
                MessageId::parse(&text).unwrap()
            })
            .collect();
        for pair in ids.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(a.cmp(&b), a.to_string().cmp(&b.to_string()), "{a} {b}");
        }
    }

    #[tokio::test]
    async fn debug_shows_sizes_never_text() {
        let store = MemoryChatIndex::new();
        let (new_chat, exchange) = exchange_fixture("c", "top secret plan", "top secret plan");
        store.append_exchange(new_chat, &exchange).await.unwrap();
        let debug = format!("{store:?}");
        assert_eq!(debug, "MemoryChatIndex { chats: 1, messages: 2 }");
    }

    #[tokio::test]
    async fn a_poisoned_lock_fails_every_call_without_panicking() {
        let store = MemoryChatIndex::new();
        let (new_chat, exchange) = exchange_fixture("c", "hi", "hi");
        store
            .append_exchange(new_chat.clone(), &exchange)
            .await
            .unwrap();
        std::thread::scope(|s| {
            let poisoner = s.spawn(|| {
                let _guard = store.inner.write().unwrap();
                panic!("poisoning the lock on purpose");
            });
            assert!(poisoner.join().is_err());
        });

        let backend = |r: Result<(), ChatIndexError>| {
            assert!(matches!(r, Err(ChatIndexError::Backend { .. })), "{r:?}");
        };
        backend(store.check().await);
        backend(store.get_chat(&new_chat.id).await.map(drop));
        backend(store.create_chat(new_chat.clone()).await.map(drop));
        backend(
            store
                .append_exchange(new_chat.clone(), &exchange)
                .await
                .map(drop),
        );
        backend(store.list_chats(&PageRequest::default()).await.map(drop));
        backend(
            store
                .import_chat(&new_chat.clone().into_chat(), &[])
                .await
                .map(drop),
        );
        backend(
            store
                .list_messages(&new_chat.id, &PageRequest::default())
                .await
                .map(drop),
        );
        assert_eq!(
            format!("{store:?}"),
            "MemoryChatIndex { state: \"poisoned\" }"
        );
    }
}
