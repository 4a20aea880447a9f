//! The node of each chat this process has seen, so that a send to a chat it
//! knows does not read the chat index first.
//!
//! A chat's node is fixed when the chat is created and chats are never
//! removed, so a remembered node never goes stale: only chats found in the
//! chat index (read, or as stored by an append) are remembered, never the
//! absence of one, which another instance may end at any moment.

use std::sync::{Mutex, PoisonError};

use hashlink::LruCache;
use sofiia_core_domain::{ChatId, NodeId};

/// How many chats are remembered; the least recently used is forgotten
/// first. About 100 bytes each.
pub(crate) const CAPACITY: usize = 16_384;

/// The registry.
#[derive(Debug)]
pub(crate) struct KnownChats {
    nodes: Mutex<LruCache<ChatId, NodeId>>,
}

impl Default for KnownChats {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl KnownChats {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            nodes: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// The node of `chat`, if this process has seen the chat.
    pub(crate) fn node(&self, chat: &ChatId) -> Option<NodeId> {
        self.lock().get(chat).cloned()
    }

    /// Remembers that `chat` exists with `node`.
    pub(crate) fn remember(&self, chat: &ChatId, node: &NodeId) {
        let mut nodes = self.lock();
        if nodes.get(chat).is_none() {
            nodes.insert(chat.clone(), node.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<ChatId, NodeId>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(n: usize) -> ChatId {
        ChatId::new(format!("chat-{n}")).unwrap()
    }

    fn node(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    #[test]
    fn remembers_the_first_node_and_forgets_the_least_recently_used() {
        let known = KnownChats::with_capacity(2);
        assert_eq!(known.node(&chat(1)), None);
        known.remember(&chat(1), &node("NODA1"));
        // A chat's node never changes: the first one seen stays.
        known.remember(&chat(1), &node("NODA2"));
        assert_eq!(known.node(&chat(1)), Some(node("NODA1")));
        known.remember(&chat(2), &node("NODA2"));
        // Looking chat 1 up makes chat 2 the least recently used.
        assert_eq!(known.node(&chat(1)), Some(node("NODA1")));
        known.remember(&chat(3), &node("NODA1"));
        assert_eq!(known.node(&chat(2)), None, "the least recently used goes");
        assert_eq!(known.node(&chat(1)), Some(node("NODA1")));
        assert_eq!(known.node(&chat(3)), Some(node("NODA1")));
    }
}
