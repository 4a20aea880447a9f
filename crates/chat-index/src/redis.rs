//! The Redis backend: one chat index shared by every console instance.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Script, ScriptInvocation, Value};
use sofiia_core_domain::{
    Chat, ChatId, ChatTitle, Cursor, Exchange, Message, MessageId, NewChat, NodeId, OperatorId,
    Page, PageRequest, Role, Timestamp, ValidationError,
};
use sofiia_redis_support::{CallError, RedisConnection};

use crate::exchange::{self, ExchangeError};
use crate::import::{self, ImportError};
use crate::{ChatIndexError, ChatIndexStore, Imported, Result};

/// The hash tag every key of one index carries after its prefix, so that
/// all of them live in one Redis Cluster slot (see [`RedisChatIndex`]).
const HASH_TAG: &str = "{chat-index}";

/// Width of the zero-padded millisecond timestamp that starts every sorted
/// set member: [`Timestamp::MAX`] has 15 digits.
const TS_WIDTH: usize = 15;

/// Version tag of the stored message format, its first line, so that a
/// later format can be told apart from this one.
const BODY_VERSION: &str = "1";

/// A chat index in Redis, shared by any number of console instances: a
/// chat written through one is listed, paged and read through every other
/// at once, with the same order and cursors as the other backends.
///
/// # Data layout
///
/// Every key starts with `<prefix>{chat-index}:` (braces in the prefix are
/// percent-escaped, see *Redis Cluster*). Chat ids in key names are
/// percent-escaped too (`%`, `{`, `}` and every byte outside printable
/// ASCII become `%XX`; a valid [`ChatId`] never needs it) and always end
/// the key, so no id can reach another chat's keys, whatever `:` or `.` it
/// holds.
///
/// | key | type | holds |
/// | --- | --- | --- |
/// | `activity` | sorted set | one member per chat: `<updated_at>:<chat id>` |
/// | `message-chat` | hash | message id → chat id, for every stored message |
/// | `chat:<chat id>` | hash | `title` (absent if none), `node`, `created_at`, `updated_at`, `message_count`; `created_by` (a random id) when made by `create_chat` |
/// | `messages:<chat id>` | sorted set | one member per message: `<ts>:<message id>` |
/// | `bodies:<chat id>` | hash | message id → `1\n<role>\n<operator>\n<node>\n<text>` |
///
/// Times are Unix milliseconds written as exactly 15 decimal digits
/// (zero-padded; [`Timestamp::MAX`] has 15), so that the byte order of a
/// member is the order of `(time, id)`, ids compared byte by byte, as the
/// [`ChatIndexStore`] contract wants. Every member has score 0, and a page
/// is one `ZRANGE <key> (<cursor member> - BYLEX REV LIMIT 0 <limit + 1>`:
/// strictly after the cursor, newest first, exactly, however many items
/// share a millisecond. Ids in members are stored as they are (escaping
/// them would change their order); the fixed-width time before them keeps
/// the layout unambiguous. The message body needs no escaping either: role,
/// operator and node cannot hold a line break, and the text, last, is taken
/// whole.
///
/// `message-chat` makes message ids unique across the store, as the trait
/// requires, and makes a retried append or import a no-op.
///
/// # Complexity
///
/// - a page of chats: O(log n + page) for the range, plus one `HMGET` per
///   chat of the page;
/// - a page of messages: O(log m + page), m the chat's messages, plus one
///   `HMGET` of the page's bodies;
/// - an append: O(log n + log m);
/// - an import of k messages: O(k (log m + 1) + log n);
/// - `get_chat`: O(1).
///
/// Each is one round trip.
///
/// # Atomicity
///
/// Every operation is one Lua script (`EVALSHA`, loaded again by itself
/// after a Redis restart) or one single-key command, so it is atomic and
/// every read is a consistent snapshot: a page's items and their chats'
/// fields come from one moment. The write scripts make every check (key
/// types included) before their first write, so a refused call changes
/// nothing; and Redis runs a script that has begun writing to its end even
/// past `maxmemory`, so an accepted one is never cut half-way.
///
/// # Redis Cluster
///
/// A script may only touch keys of one hash slot. An append changes the
/// chat's keys, the global `activity` sorted set and the global
/// `message-chat` hash in one step: these keys must meet, and no tag per
/// chat could put them in one slot for every chat. So every key of one
/// index carries the one tag `{chat-index}`, and on a cluster
/// ([`RedisConnection::open_cluster`]) the whole index lives in one slot,
/// on one primary (and its replicas): appends and pages stay atomic and
/// exact, but the index scales up, not out. The list scripts read the chat
/// hashes of the page they found, keys not declared up front; being in the
/// same slot, that is allowed. Run separate prefixes (separate indexes) if
/// one primary ever becomes too small, or keep the index in PostgreSQL.
///
/// # Requirements and failures
///
/// Redis 6.2 or later (`ZRANGE ... BYLEX REV`); [`check`] runs exactly
/// such a range, so an older server, or a key of the wrong type, fails the
/// readiness probe rather than the first page.
///
/// The keys have no TTL: run Redis with `maxmemory-policy noeviction` (or
/// a `volatile-*` policy, which never picks them), or an eviction would
/// silently drop chats, messages or the keys that tie them together. Plan
/// for about 350 bytes per message beyond its text (the `page` bench
/// reports the figure), and for persistence: AOF with `appendfsync
/// everysec` or stricter, as with no persistence a Redis restart loses
/// every chat.
///
/// Every operation is one command or `EVALSHA` on the shared multiplexed
/// [`RedisConnection`], bounded by the operation timeout (2 s unless
/// [set](Self::with_op_timeout)). A Redis that is down, refuses
/// connections, hangs, is out of memory, loading or failing over gives
/// [`ChatIndexError::Unavailable`], never a hang (the classification every
/// Redis backend shares, [`CallError::is_unavailable`]); the connection is
/// opened again by itself when Redis comes back. A write that
/// timed out may still have been applied; retrying the same exchange or
/// batch (the same message ids) is safe, as appends and imports are
/// idempotent, while a retry with new ids would store a second copy. A script
/// error, a key of the wrong type or a stored value that does not parse is
/// [`ChatIndexError::Backend`].
///
/// ```no_run
/// use sofiia_chat_index::{ChatIndexStore, RedisChatIndex};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = sofiia_chat_index::RedisConnection::open("redis://127.0.0.1:6379")?;
/// let store = RedisChatIndex::new(conn, "sofiia:");
/// store.check().await?;
/// # Ok(())
/// # }
/// ```
///
/// [`check`]: ChatIndexStore::check
pub struct RedisChatIndex {
    conn: RedisConnection,
    prefix: String,
    /// `<prefix>{chat-index}:`, braces in the prefix escaped.
    key_prefix: String,
    op_timeout: Duration,
    scripts: Scripts,
}

struct Scripts {
    create: Script,
    append: Script,
    import: Script,
    list_chats: Script,
    list_messages: Script,
}

/// Helpers shared by the scripts, pasted in front of each.
macro_rules! lua_prelude {
    () => {
        r"
-- The first key whose type is neither absent nor the expected one, if any:
-- checked before any write, so a damaged key refuses the whole call.
local function wrong_type(expected)
  for i = 1, #expected, 2 do
    local found = redis.call('TYPE', expected[i]).ok
    if found ~= 'none' and found ~= expected[i + 1] then
      return expected[i]
    end
  end
  return nil
end

local function chat_fields(key)
  return redis.call('HMGET', key, 'title', 'node', 'created_at', 'updated_at', 'message_count')
end

local function create_chat(key, activity, id, has_title, title, node, created_at, updated_at)
  if has_title == '1' then
    redis.call('HSET', key, 'title', title, 'node', node, 'created_at', created_at,
      'updated_at', updated_at, 'message_count', 0)
  else
    redis.call('HSET', key, 'node', node, 'created_at', created_at,
      'updated_at', updated_at, 'message_count', 0)
  end
  redis.call('ZADD', activity, 0, updated_at .. ':' .. id)
end

-- updated_at = max(current, ts). Compared as numbers, not strings: Lua
-- compares strings with the server's locale. Milliseconds up to year 9999
-- are far below 2^53, so the doubles are exact.
local function touch(key, activity, id, current, ts)
  if tonumber(ts) > tonumber(current) then
    redis.call('ZREM', activity, current .. ':' .. id)
    redis.call('ZADD', activity, 0, ts .. ':' .. id)
    redis.call('HSET', key, 'updated_at', ts)
  end
end

-- The key-name form of a chat id, as `escape_into` makes it in Rust.
local function escape(id)
  return (string.gsub(id, '[^!-$&-z|~]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
"
    };
}

/// `KEYS`: chat, activity. `ARGV`: chat id, has title (`1`/`0`), title,
/// node, created_at, call id (random per call). Replies `{'ok'}`,
/// `{'conflict'}` or `{'wrong-type', key}`. The chat keeps the call id in
/// `created_by`, so that the same call run twice (a cluster client resends
/// a command whose connection dropped) answers `ok` both times.
const CREATE: &str = concat!(
    lua_prelude!(),
    r"
local bad = wrong_type({KEYS[1], 'hash', KEYS[2], 'zset'})
if bad then return {'wrong-type', bad} end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'created_by') == ARGV[6] then return {'ok'} end
  return {'conflict'}
end
create_chat(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[5])
redis.call('HSET', KEYS[1], 'created_by', ARGV[6])
return {'ok'}
"
);

/// `KEYS`: chat, messages, bodies, message-chat, activity. `ARGV`: chat id,
/// has title, title, node, created_at (of `new_chat`), then the operator
/// message's id, ts and body and the agent message's id, ts and body.
///
/// Replies `{'ok', title, node, created_at, updated_at, message_count}`
/// (also for a replay), `{'operator-id-in-other-chat'}`,
/// `{'agent-id-taken'}` or `{'wrong-type', key}`.
const APPEND: &str = concat!(
    lua_prelude!(),
    r"
local bad = wrong_type({KEYS[1], 'hash', KEYS[2], 'zset', KEYS[3], 'hash',
  KEYS[4], 'hash', KEYS[5], 'zset'})
if bad then return {'wrong-type', bad} end
local owner = redis.call('HGET', KEYS[4], ARGV[6])
if owner then
  if owner ~= ARGV[1] then return {'operator-id-in-other-chat'} end
  -- A replay: the chat as it is.
  return {'ok', unpack(chat_fields(KEYS[1]))}
end
if redis.call('HEXISTS', KEYS[4], ARGV[9]) == 1 then return {'agent-id-taken'} end

local current = redis.call('HGET', KEYS[1], 'updated_at')
if not current then
  create_chat(KEYS[1], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[5])
  current = ARGV[5]
end
touch(KEYS[1], KEYS[5], ARGV[1], current, ARGV[10])
redis.call('HINCRBY', KEYS[1], 'message_count', 2)
redis.call('ZADD', KEYS[2], 0, ARGV[7] .. ':' .. ARGV[6], 0, ARGV[10] .. ':' .. ARGV[9])
redis.call('HSET', KEYS[3], ARGV[6], ARGV[8], ARGV[9], ARGV[11])
redis.call('HSET', KEYS[4], ARGV[6], ARGV[1], ARGV[9], ARGV[1])
return {'ok', unpack(chat_fields(KEYS[1]))}
"
);

/// `KEYS`: chat, messages, bodies, message-chat, activity. `ARGV`: chat id,
/// has title, title, node, created_at, updated_at, then id, ts and body of
/// each message (ids distinct, checked by the caller).
///
/// Replies `{'ok', created (0/1), inserted, title, node, created_at,
/// updated_at, message_count}`, `{'id-in-other-chat'}` or
/// `{'wrong-type', key}`.
const IMPORT: &str = concat!(
    lua_prelude!(),
    r"
local bad = wrong_type({KEYS[1], 'hash', KEYS[2], 'zset', KEYS[3], 'hash',
  KEYS[4], 'hash', KEYS[5], 'zset'})
if bad then return {'wrong-type', bad} end
for i = 7, #ARGV, 3 do
  local owner = redis.call('HGET', KEYS[4], ARGV[i])
  if owner and owner ~= ARGV[1] then return {'id-in-other-chat'} end
end

local created = 0
local current = redis.call('HGET', KEYS[1], 'updated_at')
if not current then
  create_chat(KEYS[1], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  created = 1
else
  touch(KEYS[1], KEYS[5], ARGV[1], current, ARGV[6])
end
-- The count grows by the messages stored here and nothing else, so a
-- repeated or resumed import never counts one twice.
local inserted = 0
for i = 7, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[2], 0, ARGV[i + 1] .. ':' .. ARGV[i])
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    inserted = inserted + 1
  end
end
if inserted > 0 then
  redis.call('HINCRBY', KEYS[1], 'message_count', inserted)
end
return {'ok', created, inserted, unpack(chat_fields(KEYS[1]))}
"
);

/// `KEYS`: activity. `ARGV`: the upper bound (`+` or `(<member>`), how
/// many, the key prefix of chat hashes (`...chat:`).
///
/// Replies a flat array, per chat: member, title, node, created_at,
/// updated_at, message_count.
const LIST_CHATS: &str = concat!(
    lua_prelude!(),
    r"
local members = redis.call('ZRANGE', KEYS[1], ARGV[1], '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[2])
local out = {}
for _, member in ipairs(members) do
  local fields = chat_fields(ARGV[3] .. escape(string.sub(member, 17)))
  out[#out + 1] = member
  for j = 1, 5 do out[#out + 1] = fields[j] end
end
return out
"
);

/// `KEYS`: chat, messages, bodies. `ARGV`: the upper bound, how many.
///
/// Replies nil when the chat does not exist, else a flat array, per
/// message: member, body.
const LIST_MESSAGES: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local members = redis.call('ZRANGE', KEYS[2], ARGV[1], '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[2])
if #members == 0 then return {} end
local ids = {}
for i, member in ipairs(members) do ids[i] = string.sub(member, 17) end
local bodies = redis.call('HMGET', KEYS[3], unpack(ids))
local out = {}
for i, member in ipairs(members) do
  out[2 * i - 1] = member
  out[2 * i] = bodies[i]
end
return out
";

/// What went wrong inside this backend; converted to [`ChatIndexError`] at
/// the trait boundary, and kept as its source.
#[derive(Debug, thiserror::Error)]
enum RedisIndexError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("unexpected reply from the chat index script: {0}")]
    Reply(&'static str),
    #[error("the Redis key {key} holds a value of the wrong type")]
    WrongType { key: String },
    #[error("a stored value of {field} is invalid")]
    Corrupt {
        field: &'static str,
        #[source]
        source: Option<ValidationError>,
    },
    #[error("the chat index is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl RedisIndexError {
    /// Whether a retry later may succeed: Redis is down, unreachable,
    /// overloaded, loading or failing over. Everything else (a script
    /// error, a value that does not parse, a key of the wrong type) needs a
    /// person.
    fn is_unavailable(&self) -> bool {
        match self {
            Self::Call(e) => e.is_unavailable(),
            _ => false,
        }
    }

    fn corrupt(field: &'static str) -> impl FnOnce(ValidationError) -> Self {
        move |source| Self::Corrupt {
            field,
            source: Some(source),
        }
    }
}

impl From<RedisIndexError> for ChatIndexError {
    fn from(err: RedisIndexError) -> Self {
        match err {
            RedisIndexError::Exchange(e) => e.into(),
            RedisIndexError::Import(e) => e.into(),
            err if err.is_unavailable() => ChatIndexError::Unavailable {
                source: Box::new(err),
            },
            err => ChatIndexError::Backend {
                source: Box::new(err),
            },
        }
    }
}

impl RedisChatIndex {
    /// The operation timeout unless set otherwise.
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

    /// An index on `conn`, its keys starting with `<prefix>{chat-index}:`.
    /// Give every deployment sharing one Redis its own prefix (such as
    /// `sofiia:`), and every instance of one deployment the same.
    pub fn new(conn: RedisConnection, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let key_prefix = sofiia_redis_support::tagged_key_prefix(&prefix, HASH_TAG);
        Self {
            conn,
            prefix,
            key_prefix,
            op_timeout: Self::DEFAULT_OP_TIMEOUT,
            scripts: Scripts {
                create: Script::new(CREATE),
                append: Script::new(APPEND),
                import: Script::new(IMPORT),
                list_chats: Script::new(LIST_CHATS),
                list_messages: Script::new(LIST_MESSAGES),
            },
        }
    }

    /// Sets the longest an operation may take, waiting for a connection
    /// included, before it fails with [`ChatIndexError::Unavailable`].
    #[must_use]
    pub fn with_op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The operation timeout.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The key prefix as given.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.key_prefix)
    }

    fn chat_key(&self, kind: &str, id: &ChatId) -> String {
        let mut key =
            String::with_capacity(self.key_prefix.len() + kind.len() + 1 + id.as_str().len());
        key.push_str(&self.key_prefix);
        key.push_str(kind);
        key.push(':');
        escape_into(&mut key, id.as_str());
        key
    }

    fn activity_key(&self) -> String {
        self.key("activity")
    }

    fn message_chat_key(&self) -> String {
        self.key("message-chat")
    }

    /// Runs `invocation` within the operation timeout.
    async fn invoke(&self, invocation: &ScriptInvocation<'_>) -> Result<Value, RedisIndexError> {
        Ok(sofiia_redis_support::invoke(&self.conn, self.op_timeout, invocation).await?)
    }

    /// Runs `cmd` within the operation timeout.
    async fn query(&self, cmd: &redis::Cmd) -> Result<Value, RedisIndexError> {
        Ok(sofiia_redis_support::query(&self.conn, self.op_timeout, cmd).await?)
    }

    async fn try_create(&self, chat: &NewChat) -> Result<bool, RedisIndexError> {
        let mut invocation = self.scripts.create.prepare_invoke();
        invocation
            .key(self.chat_key("chat", &chat.id))
            .key(self.activity_key())
            .arg(chat.id.as_str());
        push_title(&mut invocation, chat.title.as_ref());
        invocation
            .arg(chat.node.as_str())
            .arg(padded(chat.created_at))
            .arg(uuid::Uuid::new_v4().simple().to_string());
        let reply = self.invoke(&invocation).await?;
        let mut items = Reply::array(reply)?;
        match items.tag()?.as_slice() {
            b"ok" => Ok(true),
            b"conflict" => Ok(false),
            b"wrong-type" => Err(items.wrong_type()),
            _ => Err(RedisIndexError::Reply("create answered an unknown status")),
        }
    }

    async fn try_get(&self, id: &ChatId) -> Result<Option<Chat>, RedisIndexError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.chat_key("chat", id))
            .arg(CHAT_FIELDS.as_slice());
        let reply = self.query(&cmd).await?;
        let mut items = Reply::array(reply)?;
        read_chat(id.clone(), &mut items)
    }

    async fn try_append(
        &self,
        new_chat: &NewChat,
        exchange: &Exchange,
    ) -> Result<Chat, RedisIndexError> {
        let id = &exchange.operator.chat_id;
        let mut invocation = self.scripts.append.prepare_invoke();
        self.push_chat_keys(&mut invocation, id);
        invocation.arg(id.as_str());
        push_title(&mut invocation, new_chat.title.as_ref());
        invocation
            .arg(new_chat.node.as_str())
            .arg(padded(new_chat.created_at));
        for m in [&exchange.operator, &exchange.agent] {
            invocation
                .arg(m.id.to_string())
                .arg(padded(m.ts))
                .arg(encode_body(m));
        }
        let reply = self.invoke(&invocation).await?;
        let mut items = Reply::array(reply)?;
        match items.tag()?.as_slice() {
            b"ok" => read_chat(id.clone(), &mut items)?.ok_or(RedisIndexError::Inconsistent(
                "a stored message's chat is missing",
            )),
            b"operator-id-in-other-chat" => Err(ExchangeError::OperatorIdInOtherChat.into()),
            b"agent-id-taken" => Err(ExchangeError::AgentIdTaken.into()),
            b"wrong-type" => Err(items.wrong_type()),
            _ => Err(RedisIndexError::Reply("append answered an unknown status")),
        }
    }

    async fn try_import(
        &self,
        chat: &Chat,
        messages: &[Message],
    ) -> Result<Imported, RedisIndexError> {
        let mut invocation = self.scripts.import.prepare_invoke();
        self.push_chat_keys(&mut invocation, &chat.id);
        invocation.arg(chat.id.as_str());
        push_title(&mut invocation, chat.title.as_ref());
        invocation
            .arg(chat.node.as_str())
            .arg(padded(chat.created_at))
            .arg(padded(chat.updated_at));
        for m in messages {
            invocation
                .arg(m.id.to_string())
                .arg(padded(m.ts))
                .arg(encode_body(m));
        }
        let reply = self.invoke(&invocation).await?;
        let mut items = Reply::array(reply)?;
        match items.tag()?.as_slice() {
            b"ok" => {
                let created = items.int()? == 1;
                let inserted = u64::try_from(items.int()?).map_err(|_| {
                    RedisIndexError::Reply("a negative number of inserted messages")
                })?;
                let stored = read_chat(chat.id.clone(), &mut items)?.ok_or(
                    RedisIndexError::Inconsistent("the imported chat is missing"),
                )?;
                let present = (messages.len() as u64)
                    .checked_sub(inserted)
                    .ok_or(RedisIndexError::Reply("more messages inserted than given"))?;
                Ok(Imported {
                    chat: stored,
                    created,
                    inserted,
                    present,
                })
            }
            b"id-in-other-chat" => Err(ImportError::IdInOtherChat.into()),
            b"wrong-type" => Err(items.wrong_type()),
            _ => Err(RedisIndexError::Reply("import answered an unknown status")),
        }
    }

    async fn try_list_chats(&self, page: &PageRequest) -> Result<Vec<Chat>, RedisIndexError> {
        let mut invocation = self.scripts.list_chats.prepare_invoke();
        invocation
            .key(self.activity_key())
            .arg(upper_bound(page.after.as_ref()))
            .arg(page.limit.get() + 1)
            .arg(self.key("chat:"));
        let reply = self.invoke(&invocation).await?;
        let mut items = Reply::array(reply)?;
        let mut chats = Vec::with_capacity(items.len() / 6);
        while !items.is_empty() {
            let member = items.bytes()?;
            let (ts, id) = split_member(&member, "activity member")?;
            let id = ChatId::new(id).map_err(RedisIndexError::corrupt("activity member id"))?;
            let chat = read_chat(id, &mut items)?
                .ok_or(RedisIndexError::Inconsistent("a listed chat has no record"))?;
            if chat.updated_at != ts {
                return Err(RedisIndexError::Inconsistent(
                    "a chat's activity member disagrees with its updated_at",
                ));
            }
            chats.push(chat);
        }
        Ok(chats)
    }

    async fn try_list_messages(
        &self,
        chat: &ChatId,
        page: &PageRequest,
    ) -> Result<Option<Vec<Message>>, RedisIndexError> {
        let mut invocation = self.scripts.list_messages.prepare_invoke();
        invocation
            .key(self.chat_key("chat", chat))
            .key(self.chat_key("messages", chat))
            .key(self.chat_key("bodies", chat))
            .arg(upper_bound(page.after.as_ref()))
            .arg(page.limit.get() + 1);
        let reply = self.invoke(&invocation).await?;
        if is_nil(&reply) {
            return Ok(None);
        }
        let mut items = Reply::array(reply)?;
        let mut messages = Vec::with_capacity(items.len() / 2);
        while !items.is_empty() {
            let member = items.bytes()?;
            let (ts, id) = split_member(&member, "message member")?;
            let id = MessageId::parse(id).map_err(RedisIndexError::corrupt("message member id"))?;
            let body = items
                .optional_bytes()?
                .ok_or(RedisIndexError::Inconsistent(
                    "a listed message has no body",
                ))?;
            messages.push(decode_body(&body, id, chat.clone(), ts)?);
        }
        Ok(Some(messages))
    }

    async fn try_check(&self) -> Result<(), RedisIndexError> {
        // A real (empty) page rather than a PING: it proves the server
        // knows `ZRANGE ... BYLEX REV` and the activity key has its type.
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.activity_key())
            .arg("+")
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(1);
        match self.query(&cmd).await? {
            Value::Array(_) | Value::Set(_) => Ok(()),
            _ => Err(RedisIndexError::Reply("ZRANGE did not answer an array")),
        }
    }

    fn push_chat_keys(&self, invocation: &mut ScriptInvocation<'_>, id: &ChatId) {
        invocation
            .key(self.chat_key("chat", id))
            .key(self.chat_key("messages", id))
            .key(self.chat_key("bodies", id))
            .key(self.message_chat_key())
            .key(self.activity_key());
    }
}

impl fmt::Debug for RedisChatIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisChatIndex")
            .field("key_prefix", &self.key_prefix)
            .field("op_timeout", &self.op_timeout)
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ChatIndexStore for RedisChatIndex {
    async fn create_chat(&self, chat: NewChat) -> Result<Chat> {
        if self.try_create(&chat).await? {
            Ok(chat.into_chat())
        } else {
            Err(ChatIndexError::Conflict { id: chat.id })
        }
    }

    async fn get_chat(&self, id: &ChatId) -> Result<Option<Chat>> {
        Ok(self.try_get(id).await?)
    }

    async fn append_exchange(&self, new_chat: NewChat, exchange: &Exchange) -> Result<Chat> {
        exchange::check(&new_chat, exchange)?;
        Ok(self.try_append(&new_chat, exchange).await?)
    }

    async fn list_chats(&self, page: &PageRequest) -> Result<Page<Chat>> {
        let items = self.try_list_chats(page).await?;
        Ok(Page::from_overfetch(items, page.limit, Chat::cursor))
    }

    async fn list_messages(&self, chat: &ChatId, page: &PageRequest) -> Result<Page<Message>> {
        let items = self
            .try_list_messages(chat, page)
            .await?
            .ok_or_else(|| ChatIndexError::NotFound { id: chat.clone() })?;
        Ok(Page::from_overfetch(items, page.limit, Message::cursor))
    }

    async fn import_chat(&self, chat: &Chat, messages: &[Message]) -> Result<Imported> {
        import::check(chat, messages)?;
        Ok(self.try_import(chat, messages).await?)
    }

    async fn check(&self) -> Result<()> {
        Ok(self.try_check().await?)
    }
}

/// The fields of a chat hash, in the order the scripts reply them.
const CHAT_FIELDS: [&str; 5] = ["title", "node", "created_at", "updated_at", "message_count"];

/// A time as it is stored: 15 digits, zero-padded.
fn padded(ts: Timestamp) -> String {
    format!("{:0width$}", ts.as_unix_millis(), width = TS_WIDTH)
}

/// Parses [`padded`]'s form, strictly.
fn parse_padded(bytes: &[u8], field: &'static str) -> Result<Timestamp, RedisIndexError> {
    if bytes.len() != TS_WIDTH || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(RedisIndexError::Corrupt {
            field,
            source: None,
        });
    }
    let millis = bytes
        .iter()
        .fold(0_i64, |n, &b| n * 10 + i64::from(b - b'0'));
    Timestamp::from_unix_millis(millis).map_err(RedisIndexError::corrupt(field))
}

/// The exclusive upper bound of a page: everything, or strictly before the
/// cursor's position. The cursor's id goes in as it is, whatever bytes it
/// holds: a lexicographic range compares bytes.
fn upper_bound(after: Option<&Cursor>) -> Vec<u8> {
    match after {
        None => b"+".to_vec(),
        Some(c) => {
            let mut bound = Vec::with_capacity(2 + TS_WIDTH + c.id().len());
            bound.push(b'(');
            bound.extend_from_slice(padded(c.ts()).as_bytes());
            bound.push(b':');
            bound.extend_from_slice(c.id().as_bytes());
            bound
        }
    }
}

/// Splits a sorted set member into its time and id.
fn split_member<'a>(
    member: &'a [u8],
    field: &'static str,
) -> Result<(Timestamp, &'a str), RedisIndexError> {
    if member.len() <= TS_WIDTH + 1 || member[TS_WIDTH] != b':' {
        return Err(RedisIndexError::Corrupt {
            field,
            source: None,
        });
    }
    let ts = parse_padded(&member[..TS_WIDTH], field)?;
    let id =
        std::str::from_utf8(&member[TS_WIDTH + 1..]).map_err(|_| RedisIndexError::Corrupt {
            field,
            source: None,
        })?;
    Ok((ts, id))
}

/// Appends `s` with `%`, braces, and every byte outside printable ASCII as
/// `%XX`: an injective encoding that keeps every key's hash tag the index's
/// own. The Lua `escape` of the scripts does the same.
fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'{' | b'}') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
}

/// A title as two arguments: whether there is one, and its text.
fn push_title(invocation: &mut ScriptInvocation<'_>, title: Option<&ChatTitle>) {
    match title {
        Some(t) => invocation.arg("1").arg(t.as_str()),
        None => invocation.arg("0").arg(""),
    };
}

/// A message's stored body: everything but its id, chat and time, which its
/// key and member hold.
fn encode_body(m: &Message) -> Vec<u8> {
    let mut body = Vec::with_capacity(m.text.len() + 48);
    for part in [
        BODY_VERSION,
        m.role.as_str(),
        m.operator_id.as_str(),
        m.node.as_str(),
    ] {
        body.extend_from_slice(part.as_bytes());
        body.push(b'\n');
    }
    body.extend_from_slice(m.text.as_bytes());
    body
}

fn decode_body(
    body: &[u8],
    id: MessageId,
    chat_id: ChatId,
    ts: Timestamp,
) -> Result<Message, RedisIndexError> {
    let bad = || RedisIndexError::Corrupt {
        field: "message body",
        source: None,
    };
    let body = std::str::from_utf8(body).map_err(|_| bad())?;
    let mut parts = body.splitn(5, '\n');
    let mut next = || parts.next().ok_or_else(bad);
    if next()? != BODY_VERSION {
        return Err(bad());
    }
    let role = Role::parse(next()?).map_err(RedisIndexError::corrupt("message role"))?;
    let operator_id =
        OperatorId::new(next()?).map_err(RedisIndexError::corrupt("message operator_id"))?;
    let node = NodeId::new(next()?).map_err(RedisIndexError::corrupt("message node"))?;
    let text = next()?.to_owned();
    Ok(Message {
        id,
        chat_id,
        role,
        text,
        ts,
        operator_id,
        node,
    })
}

/// Reads the five chat fields (see [`CHAT_FIELDS`]) of chat `id` from the
/// reply: `None` when the chat does not exist.
fn read_chat(id: ChatId, items: &mut Reply) -> Result<Option<Chat>, RedisIndexError> {
    let title = items.optional_bytes()?;
    let node = items.optional_bytes()?;
    let created_at = items.optional_bytes()?;
    let updated_at = items.optional_bytes()?;
    let count = items.optional_bytes()?;
    let (node, created_at, updated_at, count) = match (node, created_at, updated_at, count) {
        (Some(node), Some(created_at), Some(updated_at), Some(count)) => {
            (node, created_at, updated_at, count)
        }
        // No hash: no chat.
        (None, None, None, None) if title.is_none() => return Ok(None),
        _ => return Err(RedisIndexError::Inconsistent("a chat record lacks a field")),
    };
    let text = |bytes: Vec<u8>, field| {
        String::from_utf8(bytes).map_err(|_| RedisIndexError::Corrupt {
            field,
            source: None,
        })
    };
    let title = title
        .map(|t| {
            ChatTitle::new(text(t, "chat title")?).map_err(RedisIndexError::corrupt("chat title"))
        })
        .transpose()?;
    let node =
        NodeId::new(text(node, "chat node")?).map_err(RedisIndexError::corrupt("chat node"))?;
    let count = text(count, "chat message_count")?
        .parse::<u64>()
        .map_err(|_| RedisIndexError::Corrupt {
            field: "chat message_count",
            source: None,
        })?;
    Ok(Some(Chat {
        id,
        title,
        node,
        created_at: parse_padded(&created_at, "chat created_at")?,
        updated_at: parse_padded(&updated_at, "chat updated_at")?,
        message_count: count,
    }))
}

fn is_nil(value: &Value) -> bool {
    // RESP3 turns a script's `false` into a boolean rather than a nil.
    matches!(value, Value::Nil | Value::Boolean(false))
}

/// The items of an array reply, read front to back.
struct Reply(std::vec::IntoIter<Value>);

impl Reply {
    fn array(value: Value) -> Result<Self, RedisIndexError> {
        match value {
            Value::Array(items) => Ok(Self(items.into_iter())),
            _ => Err(RedisIndexError::Reply("an array was expected")),
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    fn optional_bytes(&mut self) -> Result<Option<Vec<u8>>, RedisIndexError> {
        match self.0.next() {
            Some(Value::BulkString(b)) => Ok(Some(b)),
            Some(Value::SimpleString(s)) => Ok(Some(s.into_bytes())),
            Some(v) if is_nil(&v) => Ok(None),
            Some(_) => Err(RedisIndexError::Reply("a string was expected")),
            None => Err(RedisIndexError::Reply("the reply is too short")),
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, RedisIndexError> {
        self.optional_bytes()?
            .ok_or(RedisIndexError::Reply("a string was expected, not nil"))
    }

    fn tag(&mut self) -> Result<Vec<u8>, RedisIndexError> {
        self.bytes()
    }

    fn int(&mut self) -> Result<i64, RedisIndexError> {
        match self.0.next() {
            Some(Value::Int(n)) => Ok(n),
            _ => Err(RedisIndexError::Reply("an integer was expected")),
        }
    }

    /// The error of a `{'wrong-type', key}` reply.
    fn wrong_type(&mut self) -> RedisIndexError {
        match self.bytes() {
            Ok(key) => RedisIndexError::WrongType {
                key: String::from_utf8_lossy(&key).into_owned(),
            },
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::sync::Arc;

    use sofiia_testkit::{RedisServer, RedisTestContext};

    use super::*;
    use crate::testing::{TestStore, exchange_fixture};

    async fn fresh_store() -> Option<TestStore> {
        let redis = RedisTestContext::new("sofiia-chat-index redis suite").await?;
        let store = RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone());
        // The context deletes the prefix's keys when the case ends.
        Some(TestStore::with_guard(store, redis))
    }

    crate::chat_index_store_tests!(fresh_store);

    /// The same suite on a three-primary Redis Cluster, the whole index in
    /// the one slot of its tag.
    mod on_cluster {
        use super::*;

        async fn fresh_store() -> Option<TestStore> {
            let redis = RedisTestContext::cluster("sofiia-chat-index redis cluster suite").await?;
            let store = RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone());
            Some(TestStore::with_guard(store, redis))
        }

        crate::chat_index_store_tests!(fresh_store);

        #[tokio::test]
        async fn the_whole_index_lives_on_one_primary() {
            let Some(redis) = RedisTestContext::cluster("chat-index one slot").await else {
                return;
            };
            let store = RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone());
            for n in 0..12 {
                let (chat, exchange) = exchange_fixture(&format!("ops-{n}"), "hi", "hello");
                store.append_exchange(chat, &exchange).await.unwrap();
            }
            let held = redis.keys_per_node();
            assert_eq!(held.iter().filter(|&&n| n > 0).count(), 1, "{held:?}");
            // activity, message-chat, and three keys per chat.
            assert_eq!(held.iter().sum::<usize>(), 2 + 3 * 12, "{held:?}");
        }
    }

    fn is_unavailable<T: fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(ChatIndexError::Unavailable { .. }))
    }

    fn is_backend<T: fmt::Debug>(r: &Result<T>) -> bool {
        matches!(r, Err(ChatIndexError::Backend { .. }))
    }

    async fn cmd<T: redis::FromRedisValue>(redis: &RedisTestContext, cmd: &redis::Cmd) -> T {
        let mut conn = redis.conn.handle();
        cmd.query_async(&mut conn).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_and_values_follow_the_documented_layout() {
        let Some(redis) =
            RedisTestContext::new("keys_and_values_follow_the_documented_layout").await
        else {
            return;
        };
        let store = RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone());
        let (new_chat, exchange) =
            exchange_fixture("ops:1.a", "line one\nline two", "line one\nline two");
        store.append_exchange(new_chat, &exchange).await.unwrap();

        let p = format!("{}{{chat-index}}:", redis.prefix);
        let mut expected = vec![
            format!("{p}activity"),
            format!("{p}bodies:ops:1.a"),
            format!("{p}chat:ops:1.a"),
            format!("{p}message-chat"),
            format!("{p}messages:ops:1.a"),
        ];
        expected.sort();
        assert_eq!(redis.keys().await, expected);

        let ts = padded(exchange.operator.ts);
        assert_eq!(ts.len(), 15);
        let activity: Vec<String> = cmd(
            &redis,
            redis::cmd("ZRANGE")
                .arg(format!("{p}activity"))
                .arg(0)
                .arg(-1),
        )
        .await;
        assert_eq!(activity, vec![format!("{ts}:ops:1.a")]);
        let mut members: Vec<String> = cmd(
            &redis,
            redis::cmd("ZRANGE")
                .arg(format!("{p}messages:ops:1.a"))
                .arg(0)
                .arg(-1),
        )
        .await;
        members.sort();
        let mut want = vec![
            format!("{ts}:{}", exchange.operator.id),
            format!("{ts}:{}", exchange.agent.id),
        ];
        want.sort();
        assert_eq!(members, want);
        let body: String = cmd(
            &redis,
            redis::cmd("HGET")
                .arg(format!("{p}bodies:ops:1.a"))
                .arg(exchange.agent.id.to_string()),
        )
        .await;
        assert_eq!(body, "1\nagent\nalice\nNODA1\nline one\nline two");
        let chat: Vec<(String, String)> = cmd(
            &redis,
            redis::cmd("HGETALL").arg(format!("{p}chat:ops:1.a")),
        )
        .await;
        let chat: std::collections::BTreeMap<_, _> = chat.into_iter().collect();
        assert_eq!(chat["title"], "kept");
        assert_eq!(chat["node"], "NODA1");
        assert_eq!(chat["created_at"], ts);
        assert_eq!(chat["updated_at"], ts);
        assert_eq!(chat["message_count"], "2");
        let owner: String = cmd(
            &redis,
            redis::cmd("HGET")
                .arg(format!("{p}message-chat"))
                .arg(exchange.operator.id.to_string()),
        )
        .await;
        assert_eq!(owner, "ops:1.a");
    }

    /// The create script run twice for one call (a resent command) answers
    /// `ok` both times; another call for the same chat is a conflict.
    #[tokio::test]
    async fn a_create_run_twice_for_one_call_answers_as_once() {
        let Some(redis) = RedisTestContext::new("chat-index create twice").await else {
            return;
        };
        let store = RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone());
        let (chat, _) = exchange_fixture("created-twice", "hi", "hello");
        let mut invocation = store.scripts.create.prepare_invoke();
        invocation
            .key(store.chat_key("chat", &chat.id))
            .key(store.activity_key())
            .arg(chat.id.as_str());
        push_title(&mut invocation, chat.title.as_ref());
        invocation
            .arg(chat.node.as_str())
            .arg(padded(chat.created_at))
            .arg("the-one-call");
        for run in 0..2 {
            let reply = store.invoke(&invocation).await.unwrap();
            let mut items = Reply::array(reply).unwrap();
            assert_eq!(items.tag().unwrap(), b"ok", "run {run}");
        }
        assert!(matches!(
            store.create_chat(chat.clone()).await,
            Err(ChatIndexError::Conflict { .. })
        ));
        assert_eq!(
            store.get_chat(&chat.id).await.unwrap(),
            Some(chat.into_chat())
        );
    }

    #[tokio::test]
    async fn braces_in_the_prefix_cannot_move_the_hash_tag() {
        let pool = sofiia_testkit::connection("redis://127.0.0.1:1");
        let store = RedisChatIndex::new(pool, "a{}b{c}:");
        assert_eq!(store.key_prefix, "a%7B%7Db%7Bc%7D:{chat-index}:");
        assert_eq!(store.prefix(), "a{}b{c}:");
        let id = ChatId::new("x:y.z").unwrap();
        assert_eq!(
            store.chat_key("messages", &id),
            "a%7B%7Db%7Bc%7D:{chat-index}:messages:x:y.z"
        );
    }

    #[test]
    fn escaping_is_injective_and_leaves_chat_ids_alone() {
        let escape = |s: &str| {
            let mut out = String::new();
            escape_into(&mut out, s);
            out
        };
        assert_eq!(escape("ops:incident-42.a_B"), "ops:incident-42.a_B");
        assert_eq!(escape("%{}"), "%25%7B%7D");
        assert_eq!(escape("a b\u{0}é"), "a%20b%00%C3%A9");
        assert_ne!(escape("%41"), escape("A"));
    }

    /// The scripts build chat keys from ids in Lua; both sides must agree
    /// on every byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lua_and_rust_escape_ids_alike() {
        let Some(redis) = RedisTestContext::new("lua_and_rust_escape_ids_alike").await else {
            return;
        };
        let script = Script::new(concat!(lua_prelude!(), "return escape(ARGV[1])"));
        let mut conn = redis.conn.handle();
        let all_bytes: String = (0_u8..=127).map(char::from).collect();
        for input in [
            "plain",
            "ops:1.a_b-C",
            "%25",
            "{tag}",
            "a b",
            "é✓",
            "!$&z|~",
            all_bytes.as_str(),
        ] {
            let lua: String = script.arg(input).invoke_async(&mut conn).await.unwrap();
            let mut rust = String::new();
            escape_into(&mut rust, input);
            assert_eq!(lua, rust, "{input:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_keys_are_backend_errors_and_change_nothing() {
        let Some(redis) =
            RedisTestContext::new("damaged_keys_are_backend_errors_and_change_nothing").await
        else {
            return;
        };
        let store = RedisChatIndex::new(redis.conn.clone(), redis.prefix.clone());
        let (new_chat, exchange) = exchange_fixture("damaged", "hi", "hi");
        let chat = store
            .append_exchange(new_chat.clone(), &exchange)
            .await
            .unwrap();
        let id = chat.id.clone();

        // The bodies hash replaced by a string: the next append is refused
        // before it changes anything.
        let bodies = store.chat_key("bodies", &id);
        let _: () = cmd(&redis, redis::cmd("SET").arg(&bodies).arg("x")).await;
        let (_, second) = exchange_fixture("damaged", "again", "again");
        let r = store.append_exchange(new_chat.clone(), &second).await;
        assert!(is_backend(&r), "{r:?}");
        let cause = r.unwrap_err().source().map(ToString::to_string);
        assert!(
            cause.as_deref().is_some_and(|c| c.contains("wrong type")),
            "{cause:?}"
        );
        assert_eq!(store.get_chat(&id).await.unwrap(), Some(chat.clone()));
        let r = store
            .import_chat(&chat, std::slice::from_ref(&second.operator))
            .await;
        assert!(is_backend(&r), "{r:?}");
        assert_eq!(store.get_chat(&id).await.unwrap(), Some(chat.clone()));
        let r = store.list_messages(&id, &PageRequest::default()).await;
        assert!(is_backend(&r), "{r:?}");
        let _: () = cmd(&redis, redis::cmd("DEL").arg(&bodies)).await;

        // A stored body, count or title that does not parse.
        for (key, field, value) in [
            (
                store.chat_key("chat", &id),
                "message_count".to_owned(),
                "-1".to_owned(),
            ),
            (
                store.chat_key("chat", &id),
                "updated_at".to_owned(),
                "12".to_owned(),
            ),
            (
                store.chat_key("chat", &id),
                "title".to_owned(),
                "two\nlines".to_owned(),
            ),
        ] {
            let old: String = cmd(&redis, redis::cmd("HGET").arg(&key).arg(&field)).await;
            let _: () = cmd(&redis, redis::cmd("HSET").arg(&key).arg(&field).arg(&value)).await;
            let r = store.get_chat(&id).await;
            assert!(is_backend(&r), "{field}={value:?}: {r:?}");
            let r = store.list_chats(&PageRequest::default()).await;
            assert!(is_backend(&r), "{field}={value:?}: {r:?}");
            let _: () = cmd(&redis, redis::cmd("HSET").arg(&key).arg(&field).arg(&old)).await;
        }
        let _: () = cmd(
            &redis,
            redis::cmd("HSET")
                .arg(&bodies)
                .arg(exchange.agent.id.to_string())
                .arg("2\nagent\nalice\nNODA1\nhi"),
        )
        .await;
        let r = store.list_messages(&id, &PageRequest::default()).await;
        assert!(is_backend(&r), "{r:?}");
        // Script errors do not break the connection.
        store.check().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_redis_is_unavailable() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let pool = sofiia_testkit::connection(&format!("redis://127.0.0.1:{port}"));
        let store = RedisChatIndex::new(pool, "stopped:");
        let (new_chat, exchange) = exchange_fixture("c", "hi", "hi");
        assert!(is_unavailable(&store.check().await));
        assert!(is_unavailable(&store.get_chat(&new_chat.id).await));
        assert!(is_unavailable(&store.create_chat(new_chat.clone()).await));
        assert!(is_unavailable(
            &store.append_exchange(new_chat.clone(), &exchange).await
        ));
        assert!(is_unavailable(
            &store.list_chats(&PageRequest::default()).await
        ));
        assert!(is_unavailable(
            &store
                .list_messages(&new_chat.id, &PageRequest::default())
                .await
        ));
        assert!(is_unavailable(
            &store.import_chat(&new_chat.clone().into_chat(), &[]).await
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_redis_is_unavailable_not_a_hang() {
        // Accepts connections and never answers, like a frozen server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let pool = sofiia_testkit::connection(&format!("redis://127.0.0.1:{port}"));
        let store = RedisChatIndex::new(pool, "hung:").with_op_timeout(Duration::from_millis(200));
        assert_eq!(store.op_timeout(), Duration::from_millis(200));
        let (new_chat, exchange) = exchange_fixture("c", "hi", "hi");
        let r = store.append_exchange(new_chat, &exchange).await;
        assert!(is_unavailable(&r), "{r:?}");
        assert!(is_unavailable(&store.check().await));
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_by_itself_when_redis_comes_back() {
        let Some(mut server) = RedisServer::start("recovers_by_itself_when_redis_comes_back")
        else {
            return;
        };
        let pool = sofiia_testkit::connection(&server.url());
        let store = Arc::new(
            RedisChatIndex::new(pool, "recovery:").with_op_timeout(Duration::from_millis(500)),
        );
        let (new_chat, exchange) = exchange_fixture("c", "hi", "hi");
        store
            .append_exchange(new_chat.clone(), &exchange)
            .await
            .unwrap();

        server.stop();
        for _ in 0..3 {
            let r = store.list_chats(&PageRequest::default()).await;
            assert!(is_unavailable(&r), "{r:?}");
        }
        assert!(is_unavailable(&store.check().await));

        // A new server has neither the data nor the scripts; the store
        // reconnects and reloads them without help.
        server.restart();
        store.check().await.unwrap();
        let chat = store.append_exchange(new_chat, &exchange).await.unwrap();
        assert_eq!(chat.message_count, 2);
        let page = store.list_chats(&PageRequest::default()).await.unwrap();
        assert_eq!(page.items, vec![chat]);
    }

    #[test]
    fn stored_forms_parse_strictly() {
        let ts = Timestamp::from_unix_millis(1_767_225_600_123).unwrap();
        assert_eq!(padded(ts), "001767225600123");
        assert_eq!(padded(Timestamp::MAX), "253402300799999");
        assert_eq!(padded(Timestamp::MIN), "000000000000000");
        assert_eq!(parse_padded(b"001767225600123", "t").unwrap(), ts);
        for bad in [
            &b"1767225600123"[..],
            b"+01767225600123",
            b"999999999999999",
        ] {
            assert!(parse_padded(bad, "t").is_err(), "{bad:?}");
        }
        let (t, id) = split_member(b"001767225600123:ops:1", "m").unwrap();
        assert_eq!((t, id), (ts, "ops:1"));
        for bad in [&b"001767225600123:"[..], b"001767225600123-x", b"short:x"] {
            assert!(split_member(bad, "m").is_err(), "{bad:?}");
        }
        assert_eq!(
            upper_bound(Some(&Cursor::new(ts, "a:b"))),
            b"(001767225600123:a:b".to_vec()
        );
        assert_eq!(upper_bound(None), b"+".to_vec());

        let (_, exchange) = exchange_fixture("c", "multi\nline\n\ntext\n", "multi\nline\n\ntext\n");
        let m = &exchange.agent;
        let decoded = decode_body(&encode_body(m), m.id, m.chat_id.clone(), m.ts).unwrap();
        assert_eq!(&decoded, m);
        for bad in [
            &b"1\nagent\nalice"[..],
            b"2\nagent\nalice\nNODA1\nx",
            b"1\nrobot\nalice\nNODA1\nx",
            b"1\nagent\nal ice\nNODA1\nx",
            b"1\nagent\nalice\nNODA1\n\xff",
        ] {
            assert!(
                decode_body(bad, m.id, m.chat_id.clone(), m.ts).is_err(),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn debug_shows_the_key_prefix_and_never_data() {
        let pool = sofiia_testkit::connection("redis://127.0.0.1:1");
        let store = RedisChatIndex::new(pool, "dbg:");
        let debug = format!("{store:?}");
        assert!(debug.contains("dbg:{chat-index}:"), "{debug}");
        assert!(debug.contains("op_timeout"), "{debug}");
    }
}
