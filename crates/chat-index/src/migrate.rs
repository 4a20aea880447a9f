//! Copying one chat index into another, whatever their backends, and
//! verifying the copy: what `sofiia-console migrate-chat-index` runs, for
//! embedders that move an index themselves.
//!
//! ```
//! use sofiia_chat_index::migrate::{MigrateOptions, copy_index};
//! use sofiia_chat_index::{ChatIndexStore, MemoryChatIndex};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let source = MemoryChatIndex::new();
//! let target = MemoryChatIndex::new();
//! let mut progress = Vec::new();
//! let report = copy_index(&source, &target, &MigrateOptions::default(), &mut progress)
//!     .await
//!     .unwrap();
//! assert!(report.verified());
//! # }
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use sofiia_core_domain::{Chat, ChatId, Message, PageLimit, PageRequest};

use crate::{ChatIndexError, DynChatIndexStore};

/// Why a copy stopped; running it again resumes.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] ChatIndexError),
    /// Progress could not be written.
    #[error("writing progress: {0}")]
    Progress(#[from] std::io::Error),
}

fn largest_page() -> PageLimit {
    PageLimit::new(u64::from(PageLimit::MAX)).unwrap_or_default()
}

/// What `migrate-chat-index` does.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Messages per atomic import (and per page read from the source).
    pub batch_size: PageLimit,
    /// Compare only; write nothing.
    pub verify_only: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            batch_size: largest_page(),
            verify_only: false,
        }
    }
}

/// What a migration did, and what its verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Chats in the source.
    pub chats: u64,
    /// Chats the migration created in the target.
    pub chats_created: u64,
    /// Messages read from the source.
    pub messages: u64,
    /// Messages the migration stored in the target.
    pub messages_imported: u64,
    /// Messages that were already in the target and were left as they were.
    pub messages_present: u64,
    /// Every difference the verification found, worst first; empty when
    /// the target holds exactly the source's chats and messages.
    pub differences: Vec<String>,
    /// How many differences there were in all (only the first few are kept).
    pub difference_count: u64,
}

impl MigrateReport {
    /// Whether the target holds exactly what the source holds.
    pub fn verified(&self) -> bool {
        self.difference_count == 0
    }
}

/// Most differences a report keeps, so a target that differs everywhere
/// does not print millions of lines.
const MAX_DIFFERENCES: usize = 20;

/// Copies every chat of `source`, with every message, into `target`, batch
/// by batch with [`import_chat`], then compares the two.
///
/// Idempotent and resumable: each batch is stored all or nothing, a
/// message already in the target is left as it is and never counted
/// twice, so running it again (after a crash, a kill, or to completion)
/// ends with the same target, and reports that nothing was imported.
///
/// The verification walks both indexes: the same chats with the same
/// fields (title, node, times, message count), and for each chat the same
/// messages in the same order, field by field. Writes to either index
/// while it runs show up as differences; run it with the consoles stopped,
/// or again once writes have stopped.
///
/// # Errors
///
/// [`MigrateError`]: a store error, or a failure to write progress to
/// `out`. Running it again resumes.
///
/// [`import_chat`]: crate::ChatIndexStore::import_chat
pub async fn copy_index(
    source: &DynChatIndexStore,
    target: &DynChatIndexStore,
    options: &MigrateOptions,
    out: &mut (dyn Write + Send),
) -> Result<MigrateReport, MigrateError> {
    let chats = all_chats(source).await?;
    let mut report = MigrateReport {
        chats: chats.len() as u64,
        ..MigrateReport::default()
    };
    writeln!(out, "source: {} chats", chats.len())?;
    if !options.verify_only {
        for (n, chat) in chats.iter().enumerate() {
            import_one(
                source,
                target,
                chat,
                (n + 1, chats.len()),
                options,
                &mut report,
                out,
            )
            .await?;
        }
        writeln!(
            out,
            "migrated {} chats ({} created, {} already there) and {} messages ({} imported, {} already there){}",
            report.chats,
            report.chats_created,
            report.chats - report.chats_created,
            report.messages,
            report.messages_imported,
            report.messages_present,
            if report.chats_created == 0 && report.messages_imported == 0 {
                ": nothing to do, the target already held everything"
            } else {
                ""
            }
        )?;
    }
    verify(source, target, &chats, &mut report).await?;
    if report.verified() {
        let messages: u64 = chats.iter().map(|c| c.message_count).sum();
        writeln!(
            out,
            "verified: the target holds the same {} chats and {messages} messages as the source",
            report.chats
        )?;
    } else {
        writeln!(
            out,
            "verification FAILED: {} difference(s) between the source and the target",
            report.difference_count
        )?;
        for d in &report.differences {
            writeln!(out, "  {d}")?;
        }
        if report.difference_count > report.differences.len() as u64 {
            writeln!(
                out,
                "  ... and {} more",
                report.difference_count - report.differences.len() as u64
            )?;
        }
    }
    Ok(report)
}

async fn import_one(
    source: &DynChatIndexStore,
    target: &DynChatIndexStore,
    chat: &Chat,
    (n, of): (usize, usize),
    options: &MigrateOptions,
    report: &mut MigrateReport,
    out: &mut (dyn Write + Send),
) -> Result<(), MigrateError> {
    let mut after = None;
    let (mut read, mut inserted, mut present) = (0_u64, 0_u64, 0_u64);
    let mut first = true;
    loop {
        let page = source
            .list_messages(
                &chat.id,
                &PageRequest {
                    limit: options.batch_size,
                    after,
                },
            )
            .await?;
        // An empty chat is imported too, with an empty batch.
        if first || !page.items.is_empty() {
            let imported = target.import_chat(chat, &page.items).await?;
            if imported.created {
                report.chats_created += 1;
            }
            read += page.items.len() as u64;
            inserted += imported.inserted;
            present += imported.present;
            writeln!(
                out,
                "chat {n}/{of} {}: {read}/{} messages ({inserted} imported, {present} already there)",
                chat.id, chat.message_count
            )?;
        }
        first = false;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    report.messages += read;
    report.messages_imported += inserted;
    report.messages_present += present;
    Ok(())
}

async fn all_chats(store: &DynChatIndexStore) -> Result<Vec<Chat>, MigrateError> {
    let mut chats = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_chats(&PageRequest {
                limit: largest_page(),
                after,
            })
            .await?;
        chats.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(chats),
        }
    }
}

fn note(report: &mut MigrateReport, difference: String) {
    report.difference_count += 1;
    if report.differences.len() < MAX_DIFFERENCES {
        report.differences.push(difference);
    }
}

async fn verify(
    source: &DynChatIndexStore,
    target: &DynChatIndexStore,
    chats: &[Chat],
    report: &mut MigrateReport,
) -> Result<(), MigrateError> {
    let mut targets: BTreeMap<ChatId, Chat> = all_chats(target)
        .await?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    for chat in chats {
        let Some(stored) = targets.remove(&chat.id) else {
            note(report, format!("chat {}: missing from the target", chat.id));
            continue;
        };
        if &stored != chat {
            note(
                report,
                format!(
                    "chat {}: differs: source {}, target {}",
                    chat.id,
                    describe(chat),
                    describe(&stored)
                ),
            );
        }
        compare_messages(source, target, chat, report).await?;
    }
    for extra in targets.keys() {
        note(
            report,
            format!("chat {extra}: in the target but not in the source"),
        );
    }
    Ok(())
}

fn describe(chat: &Chat) -> String {
    format!(
        "(title {:?}, node {}, created {}, updated {}, {} messages)",
        chat.title.as_ref().map(|t| t.as_str()),
        chat.node,
        chat.created_at,
        chat.updated_at,
        chat.message_count
    )
}

/// Walks the messages of `chat` in both stores side by side, page by page.
async fn compare_messages(
    source: &DynChatIndexStore,
    target: &DynChatIndexStore,
    chat: &Chat,
    report: &mut MigrateReport,
) -> Result<(), MigrateError> {
    let limit = largest_page();
    let (mut source_after, mut target_after) = (None, None);
    let (mut source_count, mut target_count) = (0_u64, 0_u64);
    let mut pending_source: Vec<Message> = Vec::new();
    let mut pending_target: Vec<Message> = Vec::new();
    let (mut source_done, mut target_done) = (false, false);
    let mut position = 0_u64;
    let mut first_difference = None;
    loop {
        if pending_source.is_empty() && !source_done {
            let page = source
                .list_messages(
                    &chat.id,
                    &PageRequest {
                        limit,
                        after: source_after.take(),
                    },
                )
                .await?;
            source_count += page.items.len() as u64;
            pending_source = page.items;
            pending_source.reverse();
            source_after = page.next;
            source_done = source_after.is_none();
        }
        if pending_target.is_empty() && !target_done {
            let page = target
                .list_messages(
                    &chat.id,
                    &PageRequest {
                        limit,
                        after: target_after.take(),
                    },
                )
                .await?;
            target_count += page.items.len() as u64;
            pending_target = page.items;
            pending_target.reverse();
            target_after = page.next;
            target_done = target_after.is_none();
        }
        match (pending_source.pop(), pending_target.pop()) {
            (None, None) => break,
            (a, b) => {
                if a != b && first_difference.is_none() {
                    let id = |m: &Option<Message>| {
                        m.as_ref()
                            .map_or_else(|| "nothing".to_owned(), |m| format!("message {}", m.id))
                    };
                    first_difference = Some(format!(
                        "chat {}: message {position} (newest first) differs: source has {}, target has {}",
                        chat.id,
                        id(&a),
                        id(&b)
                    ));
                }
                position += 1;
            }
        }
    }
    if let Some(difference) = first_difference {
        note(report, difference);
    }
    if source_count != chat.message_count {
        note(
            report,
            format!(
                "chat {}: the source lists {source_count} messages but counts {}",
                chat.id, chat.message_count
            ),
        );
    }
    if target_count != source_count {
        note(
            report,
            format!(
                "chat {}: the source lists {source_count} messages, the target {target_count}",
                chat.id
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sofiia_core_domain::{
        Clock, Exchange, ManualClock, MessageId, NewChat, NodeId, OperatorId, Role,
    };

    use super::*;
    use crate::{ChatIndexStore, MemoryChatIndex};

    fn chat(name: &str) -> NewChat {
        NewChat {
            id: ChatId::new(name).unwrap(),
            title: None,
            node: NodeId::new("NODA1").unwrap(),
            created_at: ManualClock::default().now(),
        }
    }

    fn exchange(chat: &NewChat, text: &str) -> Exchange {
        let message = |role| Message {
            id: MessageId::generate(),
            chat_id: chat.id.clone(),
            role,
            text: text.to_owned(),
            ts: chat.created_at,
            operator_id: OperatorId::new("alice").unwrap(),
            node: chat.node.clone(),
        };
        Exchange {
            operator: message(Role::Operator),
            agent: message(Role::Agent),
        }
    }

    async fn source() -> MemoryChatIndex {
        let store = MemoryChatIndex::new();
        for (name, sends) in [("a", 7), ("b:1", 3)] {
            let new_chat = chat(name);
            for i in 0..sends {
                store
                    .append_exchange(new_chat.clone(), &exchange(&new_chat, &format!("{i}")))
                    .await
                    .unwrap();
            }
        }
        store.create_chat(chat("empty")).await.unwrap();
        store
    }

    fn small_batches() -> MigrateOptions {
        MigrateOptions {
            batch_size: PageLimit::new(4).unwrap(),
            verify_only: false,
        }
    }

    #[tokio::test]
    async fn copies_everything_in_batches_then_verifies_and_a_rerun_is_a_no_op() {
        let (source, target) = (source().await, MemoryChatIndex::new());
        let mut out = Vec::new();
        let report = copy_index(&source, &target, &small_batches(), &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(report.verified(), "{text}");
        assert_eq!(
            (report.chats, report.chats_created, report.messages),
            (3, 3, 20)
        );
        assert_eq!((report.messages_imported, report.messages_present), (20, 0));
        // 14 messages in batches of 4: four batches, each reported.
        for progress in ["4/14", "8/14", "12/14", "14/14"] {
            assert!(text.contains(&format!(": {progress} messages")), "{text}");
        }
        // One time for all: listed by id, descending.
        assert!(text.contains("chat 1/3 empty: 0/0 messages"), "{text}");

        let mut out = Vec::new();
        let again = copy_index(&source, &target, &small_batches(), &mut out)
            .await
            .unwrap();
        assert!(again.verified());
        assert_eq!((again.chats_created, again.messages_imported), (0, 0));
        assert_eq!(again.messages_present, 20);
        assert!(
            String::from_utf8(out).unwrap().contains("nothing to do"),
            "a rerun says it changed nothing"
        );
    }

    #[tokio::test]
    async fn every_kind_of_difference_is_reported() {
        let (source, target) = (source().await, MemoryChatIndex::new());
        let options = MigrateOptions {
            verify_only: true,
            ..small_batches()
        };
        // Verify only writes nothing: everything is missing.
        let report = copy_index(&source, &target, &options, &mut Vec::new())
            .await
            .unwrap();
        assert!(!report.verified());
        assert_eq!(report.difference_count, 3);
        assert!(report.differences[0].contains("missing from the target"));
        assert_eq!(
            target
                .list_chats(&PageRequest::default())
                .await
                .unwrap()
                .items,
            vec![]
        );

        copy_index(&source, &target, &small_batches(), &mut Vec::new())
            .await
            .unwrap();
        // A chat only the target has, and a message only the target has.
        target.create_chat(chat("extra")).await.unwrap();
        let a = chat("a");
        target
            .append_exchange(a.clone(), &exchange(&a, "late"))
            .await
            .unwrap();
        let mut out = Vec::new();
        let report = copy_index(&source, &target, &options, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(report.difference_count, 4, "{text}");
        for expected in [
            "verification FAILED: 4 difference(s)",
            "chat a: differs: source (title None, node NODA1",
            "14 messages), target (title None",
            "chat a: message 0 (newest first) differs: source has message",
            "chat a: the source lists 14 messages, the target 16",
            "chat extra: in the target but not in the source",
        ] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
    }
}
