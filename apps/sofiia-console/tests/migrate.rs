//! `sofiia-console migrate-chat-index --from sqlite --to redis`, through the
//! real binary, on a SQLite index of 10 000 messages: the Redis index it
//! makes pages exactly like the source at every page size; a second run
//! changes nothing and says so; a run resumed after a kill, or after a
//! partial import, ends identical; a difference fails the verification.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sofiia_chat_index::{ChatIndexStore, DynChatIndexStore, RedisChatIndex, SqliteChatIndex};
use sofiia_core_domain::{
    Chat, ChatId, ChatTitle, Exchange, Message, MessageId, NewChat, NodeId, OperatorId, Page,
    PageLimit, PageRequest, Role, Timestamp,
};
use sofiia_testkit::{PostgresTestDatabase, RedisTestContext};

const BIN: &str = env!("CARGO_BIN_EXE_sofiia-console");
const START_MS: i64 = 1_767_225_600_000;

/// The source: chat id, messages (even), and when its last exchange is.
/// Exchanges share timestamps in runs of 25 (50 messages per millisecond);
/// `ops-b` and `ops-c` end on the same millisecond, so the chat list has a
/// tie too; `quiet` has no message at all.
const CHATS: [(&str, usize); 5] = [
    ("big:chat.1", 6_000),
    ("ops-b", 2_000),
    ("ops-c", 1_000),
    ("x.4", 600),
    ("Y:5", 400),
];
const TOTAL: usize = 10_000;

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(START_MS + ms).unwrap()
}

async fn build_source(path: &Path) {
    let store = SqliteChatIndex::open(path).await.unwrap();
    let operator = OperatorId::new("alice").unwrap();
    for (c, (name, messages)) in CHATS.into_iter().enumerate() {
        let id = ChatId::new(name).unwrap();
        let node = NodeId::new(if c % 2 == 0 { "NODA1" } else { "NODA2" }).unwrap();
        let new_chat = NewChat {
            id: id.clone(),
            title: (c != 1).then(|| ChatTitle::new(format!("Chat №{c} — «{name}»")).unwrap()),
            node: node.clone(),
            created_at: ts(0),
        };
        let exchanges = messages / 2;
        for e in 0..exchanges {
            // ops-b and ops-c end together: both have their last run at 40.
            let at = match name {
                "ops-b" | "ops-c" => ts(40 - i64::try_from((exchanges - 1 - e) / 25).unwrap()),
                _ => ts(i64::try_from(e / 25).unwrap() + i64::try_from(c).unwrap()),
            };
            let message = |role, text: String| Message {
                id: MessageId::generate(),
                chat_id: id.clone(),
                role,
                text,
                ts: at,
                operator_id: operator.clone(),
                node: node.clone(),
            };
            let exchange = Exchange {
                operator: message(Role::Operator, format!("question {e}\nwith two lines")),
                agent: message(Role::Agent, format!("answer {e} ✓")),
            };
            store
                .append_exchange(new_chat.clone(), &exchange)
                .await
                .unwrap();
        }
    }
    store
        .create_chat(NewChat {
            id: ChatId::new("quiet").unwrap(),
            title: None,
            node: NodeId::new("NODA1").unwrap(),
            created_at: ts(7),
        })
        .await
        .unwrap();
    store.close();
}

/// A migration run from SQLite to Redis: the binary with a clean `SOFIIA_*`
/// environment.
fn migrate(data: &Path, redis: &RedisTestContext) -> Command {
    migrate_between(data, redis, "sqlite", "redis")
}

/// The binary with a clean `SOFIIA_*` environment.
fn clean_command() -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SOFIIA_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A migration run `from` one index `to` another.
fn migrate_between(data: &Path, redis: &RedisTestContext, from: &str, to: &str) -> Command {
    let mut cmd = clean_command();
    cmd.env("SOFIIA_DATA_DIR", data)
        .env("SOFIIA_REDIS_URL", &redis.url)
        .env("SOFIIA_REDIS_PREFIX", &redis.prefix)
        .args(["migrate-chat-index", "--from", from, "--to", to]);
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn redis_index(redis: &RedisTestContext) -> RedisChatIndex {
    RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone())
}

fn request(size: u64, after: Option<sofiia_core_domain::Cursor>) -> PageRequest {
    PageRequest {
        limit: PageLimit::new(size).unwrap(),
        after,
    }
}

async fn chat_pages(store: &DynChatIndexStore, size: u64) -> Vec<Page<Chat>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_chats(&request(size, after)).await.unwrap();
        after = page.next.clone();
        pages.push(page);
        if after.is_none() {
            return pages;
        }
    }
}

async fn message_pages(store: &DynChatIndexStore, chat: &ChatId, size: u64) -> Vec<Page<Message>> {
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_messages(chat, &request(size, after))
            .await
            .unwrap();
        after = page.next.clone();
        pages.push(page);
        if after.is_none() {
            return pages;
        }
    }
}

/// Every key under the context's prefix, named without the prefix, with
/// its whole content in a canonical order: two indexes with equal
/// snapshots hold the same data, whatever order it was written in.
async fn snapshot(redis: &RedisTestContext) -> BTreeMap<String, Vec<Vec<u8>>> {
    use deadpool_redis::redis;
    let mut conn = redis.conn.handle();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", redis.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut content: Vec<Vec<u8>> = match kind.as_str() {
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .unwrap(),
            "hash" => {
                let pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let mut pairs = pairs;
                pairs.sort();
                pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()
            }
            other => panic!("unexpected key type {other} of {key}"),
        };
        content.insert(0, kind.into_bytes());
        out.insert(key[redis.prefix.len()..].to_owned(), content);
    }
    out
}

/// The source and the Redis index page identically: every chat page at
/// sizes 1, 7, 50 and 200, every page of the big chat's messages at the
/// same sizes, and every other chat's at 7 and 200 (items and cursors).
async fn assert_pages_identical(source: &DynChatIndexStore, target: &DynChatIndexStore) {
    for size in [1, 7, 50, 200] {
        let (a, b) = (
            chat_pages(source, size).await,
            chat_pages(target, size).await,
        );
        assert_eq!(a, b, "chat pages of {size}");
        let chats: usize = a.iter().map(|p| p.items.len()).sum();
        assert_eq!(chats, CHATS.len() + 1);
    }
    let mut total = 0;
    for (name, messages) in CHATS {
        let id = ChatId::new(name).unwrap();
        let sizes: &[u64] = if name == "big:chat.1" {
            &[1, 7, 50, 200]
        } else {
            &[7, 200]
        };
        for &size in sizes {
            let (a, b) = (
                message_pages(source, &id, size).await,
                message_pages(target, &id, size).await,
            );
            let walked: usize = a.iter().map(|p| p.items.len()).sum();
            assert_eq!(walked, messages, "{name}");
            if a != b {
                let first = a.iter().zip(&b).position(|(x, y)| x != y);
                panic!("{name}: message pages of {size} differ, first at page {first:?}");
            }
        }
        total += messages;
    }
    assert_eq!(total, TOTAL);
    let quiet = ChatId::new("quiet").unwrap();
    assert_eq!(
        message_pages(target, &quiet, 50).await,
        message_pages(source, &quiet, 50).await
    );
}

async fn stored_messages(target: &DynChatIndexStore) -> u64 {
    let mut total = 0;
    for page in chat_pages(target, 200).await {
        total += page.items.iter().map(|c| c.message_count).sum::<u64>();
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrates_10_000_messages_that_page_identically_and_rerun_changes_nothing() {
    let Some(redis) = RedisTestContext::new("migrates_10_000_messages").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("sofiia.db");
    build_source(&db).await;

    let (out, stdout, stderr) = run(&mut migrate(data.path(), &redis));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("source: 6 chats"), "{stdout}");
    assert!(
        stdout.contains("chat 1/6 big:chat.1: 200/6000 messages (200 imported, 0 already there)"),
        "progress as it goes: {stdout}"
    );
    assert!(
        stdout.contains(
            "migrated 6 chats (6 created, 0 already there) and 10000 messages (10000 imported, 0 already there)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "verified: the target holds the same 6 chats and 10000 messages as the source"
        ),
        "{stdout}"
    );

    let source = SqliteChatIndex::open(&db).await.unwrap();
    let target = redis_index(&redis);
    assert_pages_identical(&source, &target).await;
    let before = snapshot(&redis).await;

    // Again: nothing to do, and nothing changes.
    let (out, stdout, stderr) = run(&mut migrate(data.path(), &redis));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "migrated 6 chats (0 created, 6 already there) and 10000 messages (0 imported, 10000 already there): nothing to do, the target already held everything"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("verified:"), "{stdout}");
    assert_eq!(
        snapshot(&redis).await,
        before,
        "a second run changes nothing"
    );

    // Verify only, and a difference: a message added on the Redis side
    // alone fails the verification with a clear message.
    let (out, stdout, _) = run(migrate(data.path(), &redis).arg("--verify-only"));
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("verify only, nothing is written"),
        "{stdout}"
    );
    let chat = target
        .get_chat(&ChatId::new("x.4").unwrap())
        .await
        .unwrap()
        .unwrap();
    let extra = Message {
        id: MessageId::generate(),
        chat_id: chat.id.clone(),
        role: Role::Agent,
        text: "only in redis".into(),
        ts: chat.updated_at,
        operator_id: OperatorId::new("alice").unwrap(),
        node: chat.node.clone(),
    };
    target.import_chat(&chat, &[extra]).await.unwrap();
    let (out, stdout, stderr) = run(migrate(data.path(), &redis).arg("--verify-only"));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "migrate-chat-index: verification FAILED: 3 difference(s) between sqlite and redis"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("chat x.4: differs: source"), "{stdout}");
    assert!(
        stdout.contains("the source lists 600 messages, the target 601"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_resumed_after_a_kill_or_a_partial_import_ends_identical() {
    let Some(clean) = RedisTestContext::new("resumed migration: clean").await else {
        return;
    };
    let Some(partial) = RedisTestContext::new("resumed migration: partial").await else {
        return;
    };
    let Some(killed) = RedisTestContext::new("resumed migration: killed").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    // A data dir of an earlier release: the chat index in a file of its
    // own, which the console and its commands keep using.
    let db = data.path().join("chat-index.db");
    build_source(&db).await;

    let (out, stdout, stderr) = run(&mut migrate(data.path(), &clean));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let reference = snapshot(&clean).await;

    // Partial: a whole chat and the first 700 messages of the big one were
    // imported before the run stopped (a crash between batches).
    {
        let source = SqliteChatIndex::open(&db).await.unwrap();
        let target = redis_index(&partial);
        for (name, pages) in [("ops-c", usize::MAX), ("big:chat.1", 4)] {
            let id = ChatId::new(name).unwrap();
            let chat = source.get_chat(&id).await.unwrap().unwrap();
            for page in message_pages(&source, &id, 175)
                .await
                .into_iter()
                .take(pages)
            {
                target.import_chat(&chat, &page.items).await.unwrap();
            }
        }
        source.close();
    }
    let (out, stdout, stderr) = run(&mut migrate(data.path(), &partial));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "migrated 6 chats (4 created, 2 already there) and 10000 messages (8300 imported, 1700 already there)"
        ),
        "{stdout}"
    );
    assert_eq!(
        snapshot(&partial).await,
        reference,
        "resumed after a partial import"
    );

    // Killed: one message per batch, and the test stops reading the
    // progress after the first line, so the process blocks on a full pipe
    // mid-chat (deterministically, with no timing) until it is killed.
    let mut child = migrate(data.path(), &killed)
        .args(["--batch-size", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the migration printed no progress")
            .unwrap();
        if line.starts_with("chat 1/6 ") {
            break;
        }
    }
    // Killed without warning, wherever it is: each batch is all or nothing.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);
    let stored = stored_messages(&redis_index(&killed)).await;
    assert!(
        stored > 0 && stored < TOTAL as u64,
        "the kill struck mid-migration ({stored} messages stored)"
    );
    let (out, stdout, stderr) = run(&mut migrate(data.path(), &killed));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("verified:"), "{stdout}");
    assert_eq!(snapshot(&killed).await, reference, "resumed after a kill");

    let source = SqliteChatIndex::open(&db).await.unwrap();
    assert_pages_identical(&source, &redis_index(&killed)).await;
}

#[test]
fn a_missing_source_or_an_unreachable_redis_stops_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = clean_command();
    cmd.env("SOFIIA_DATA_DIR", data.path()).args([
        "migrate-chat-index",
        "--from",
        "sqlite",
        "--to",
        "redis",
    ]);
    let (out, stdout, stderr) = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stderr.contains("no SQLite chat index at"), "{stderr}");
    assert!(
        !data.path().join("sofiia.db").exists(),
        "a missing source is not created"
    );

    // A source, but nothing listens where Redis should be.
    std::fs::write(data.path().join("sofiia.db"), b"").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let (out, stdout, stderr) =
        run(cmd.env("SOFIIA_REDIS_URL", format!("redis://:pw@127.0.0.1:{port}")));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stderr.contains(&format!("redis at redis://***@127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("run it again to resume"), "{stderr}");
    assert!(
        !stderr.contains(":pw@"),
        "the password was printed: {stderr}"
    );

    // Only the one direction exists.
    let (out, _, stderr) =
        run(Command::new(BIN).args(["migrate-chat-index", "--from", "redis", "--to", "sqlite"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}

/// SQLite to PostgreSQL, then the same chats from Redis to PostgreSQL (an
/// index that moved to Redis earlier moves on): each pages identically,
/// and a rerun imports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_redis_indexes_move_to_postgres_and_page_identically() {
    let test = "indexes_move_to_postgres";
    let Some(redis) = RedisTestContext::new(test).await else {
        return;
    };
    let Some(pg) = PostgresTestDatabase::new(test).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("sofiia.db");
    build_source(&db).await;
    let to_postgres = |from: &str| {
        let mut cmd = migrate_between(data.path(), &redis, from, "postgres");
        cmd.env("SOFIIA_POSTGRES_URL", &pg.url);
        cmd
    };
    let (out, stdout, stderr) = run(&mut to_postgres("sqlite"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "verified: the target holds the same 6 chats and 10000 messages as the source"
        ),
        "{stdout}"
    );
    let pool = sofiia_postgres_support::PostgresPool::open(&pg.url, Default::default()).unwrap();
    let target = sofiia_chat_index::PostgresChatIndex::open(pool)
        .await
        .unwrap();
    let source = SqliteChatIndex::open(&db).await.unwrap();
    assert_pages_identical(&source, &target).await;

    // The same chats through Redis: all there already.
    let (out, stdout, stderr) = run(&mut migrate(data.path(), &redis));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let (out, stdout, stderr) = run(&mut to_postgres("redis"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("(0 imported, 10000 already there): nothing to do"),
        "{stdout}"
    );
    assert!(stdout.contains("verified:"), "{stdout}");
}

/// `check-config --migrate` brings the PostgreSQL stores' schemas to this
/// release's versions ahead of a rollout, reports them, and changes nothing
/// when run again; an unreachable PostgreSQL fails it with exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_migrate_brings_the_postgres_schemas_up_ahead_of_start() {
    let Some(db) = PostgresTestDatabase::new("check_config_migrate").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let check = |url: &str| {
        let mut cmd = clean_command();
        cmd.env("SOFIIA_DATA_DIR", data.path())
            .env("SOFIIA_AUDIT_BACKEND", "postgres")
            .env("SOFIIA_CHAT_INDEX_BACKEND", "postgres")
            .env("SOFIIA_POSTGRES_URL", url)
            .args(["check-config", "--migrate"]);
        run(&mut cmd)
    };
    let pool = sofiia_postgres_support::PostgresPool::open(&db.url, Default::default()).unwrap();
    let client = pool.get().await.unwrap();
    let tables = || async {
        client
            .query(
                "SELECT count(*) FROM information_schema.tables
                 WHERE table_name IN ('audit_events', 'chat_index_chats')",
                &[],
            )
            .await
            .unwrap()[0]
            .get::<_, i64>(0)
    };
    assert_eq!(tables().await, 0);
    let mut versions = Vec::new();
    for _ in 0..2 {
        let (out, stdout, stderr) = check(&db.url);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        let schema = report["postgres_schema"].clone();
        assert!(schema["audit"].as_u64().unwrap() >= 1, "{schema}");
        assert!(schema["chat_index"].as_u64().unwrap() >= 1, "{schema}");
        versions.push(schema);
    }
    assert_eq!(versions[0], versions[1], "a second run changes nothing");
    assert_eq!(tables().await, 2);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let (out, stdout, stderr) = check(&format!("postgres://postgres@127.0.0.1:{port}/x"));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stderr.contains("migrating audit at"), "{stderr}");
}
