//! The PostgreSQL backend: one trail shared by every instance.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use sofiia_core_domain::{DynClock, Page, PageLimit, SystemClock, Timestamp};
use sofiia_postgres_support::tokio_postgres::types::ToSql;
use sofiia_postgres_support::tokio_postgres::{IsolationLevel, Row};
use sofiia_postgres_support::{PostgresPool, Schema};
use tokio::sync::{mpsc, oneshot};

use crate::canonical::{ChainCheck, GENESIS_HASH, compute_hash, outcome_str};
use crate::stored::{CorruptColumn, StoredEvent};
use crate::{
    Anchor, AuditError, AuditEvent, AuditQuery, AuditStore, BreakReason, NewEvent, PruneBatch,
    Result, Verification,
};

/// The schema, one entry per version, recorded in the database's
/// `sofiia_schema` table under `audit`. Entries are never edited once
/// released, only appended.
static SCHEMA: Schema = Schema {
    store: "audit",
    migrations: &[r"
    CREATE TABLE audit_events (
        id         BIGINT  PRIMARY KEY,
        ts         BIGINT  NOT NULL, -- Unix milliseconds
        actor      TEXT    NOT NULL,
        action     TEXT    NOT NULL,
        target     TEXT    NOT NULL,
        outcome    TEXT    NOT NULL CHECK (outcome IN ('ok', 'denied', 'error')),
        status     INTEGER CHECK (status BETWEEN 0 AND 65535),
        request_id TEXT,
        node       TEXT,
        source_ip  TEXT,
        user_agent TEXT,
        details    TEXT    NOT NULL, -- a JSON object, exactly as hashed
        prev_hash  TEXT    NOT NULL,
        hash       TEXT    NOT NULL
    );
    -- Newest first is the primary key itself; each filter has an index
    -- ending in the id, so that a filtered page is read in id order.
    CREATE INDEX audit_events_by_actor  ON audit_events (actor, id);
    CREATE INDEX audit_events_by_action ON audit_events (action, id);
    CREATE INDEX audit_events_by_ts     ON audit_events (ts, id);

    -- The chain's head: the newest id ever given and the newest hash. One
    -- row, locked by every appending transaction, which is what serialises
    -- appends from any number of connections and instances; it also keeps
    -- ids from being reused after pruning.
    CREATE TABLE audit_head (
        singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        last_id   BIGINT  NOT NULL,
        hash      TEXT    NOT NULL
    );
    INSERT INTO audit_head (last_id, hash)
        VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');

    -- One row per prune batch: the latest (highest last_deleted_id) is where
    -- the kept chain starts.
    CREATE TABLE audit_anchors (
        last_deleted_id BIGINT PRIMARY KEY,
        hash            TEXT   NOT NULL, -- that event's hash
        pruned_at       BIGINT NOT NULL, -- Unix milliseconds
        cutoff          BIGINT NOT NULL, -- Unix milliseconds
        deleted         BIGINT NOT NULL
    );"],
};

/// The events' table, as errors name it.
const EVENTS: &str = "audit_events";
const COLUMNS: &str = "id, ts, actor, action, target, outcome, status, request_id, node, \
    source_ip, user_agent, details, prev_hash, hash";
const LOCK_HEAD: &str = "SELECT last_id, hash FROM audit_head FOR UPDATE";
const SET_HEAD: &str = "UPDATE audit_head SET last_id = $1, hash = $2";
// One statement for the whole batch, whatever its size.
const INSERT_EVENTS: &str = "INSERT INTO audit_events
    (id, ts, actor, action, target, outcome, status, request_id, node, source_ip, user_agent,
     details, prev_hash, hash)
    SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
        $6::TEXT[], $7::INTEGER[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[],
        $12::TEXT[], $13::TEXT[], $14::TEXT[])";
const LATEST_ANCHOR: &str = "SELECT last_deleted_id, hash, pruned_at, cutoff, deleted
    FROM audit_anchors ORDER BY last_deleted_id DESC LIMIT 1";
const HEAD: &str = "SELECT last_id, hash FROM audit_head";
/// Prunes run one at a time per database.
const PRUNE_LOCK: i64 = 0x736f_6669_6961_0002;
const PRUNE_SCAN: &str = "SELECT id, ts, hash FROM audit_events ORDER BY id LIMIT $1";
const DELETE_UP_TO: &str = "DELETE FROM audit_events WHERE id <= $1";
const INSERT_ANCHOR: &str = "INSERT INTO audit_anchors
    (last_deleted_id, hash, pruned_at, cutoff, deleted) VALUES ($1, $2, $3, $4, $5)";
// The first event not older than the cutoff, in id order: `ts + 0` keeps
// the planner on the primary key, which stops at the first match, instead
// of `audit_events_by_ts`, which would read every newer event to sort them.
const COUNT_BEFORE: &str = "SELECT count(*) FROM audit_events
    WHERE id < COALESCE(
        (SELECT id FROM audit_events WHERE ts + 0 >= $1 ORDER BY id LIMIT 1),
        9223372036854775807)";

/// How [`PostgresAuditStore::open_with`] sets up the store.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The most waiting appends committed in one transaction.
    pub max_batch: NonZeroUsize,
    /// How many appends may wait for a transaction before callers wait to
    /// hand theirs over.
    pub queue_capacity: NonZeroUsize,
    /// The clock that dates prune anchors.
    pub clock: Arc<DynClock>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_batch: NonZeroUsize::new(512).unwrap_or(NonZeroUsize::MIN),
            queue_capacity: NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN),
            clock: Arc::new(SystemClock),
        }
    }
}

impl PostgresOptions {
    /// At most `n` appends per transaction.
    #[must_use]
    pub fn with_max_batch(mut self, n: NonZeroUsize) -> Self {
        self.max_batch = n;
        self
    }

    /// At most `n` appends waiting.
    #[must_use]
    pub fn with_queue_capacity(mut self, n: NonZeroUsize) -> Self {
        self.queue_capacity = n;
        self
    }

    /// Anchors dated by `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<DynClock>) -> Self {
        self.clock = clock;
        self
    }
}

/// An audit trail in PostgreSQL, shared by every instance that opens the
/// same database.
///
/// **One chain for everyone.** Every appending transaction locks the
/// one-row `audit_head` table (`SELECT ... FOR UPDATE`), which holds the
/// newest id and hash: appends from any number of connections, processes
/// and hosts are serialised there, each chains from the head it locked, and
/// ids follow chain order. (Reading the newest *event* row with
/// `ORDER BY id DESC LIMIT 1 FOR UPDATE` instead would not do: under READ
/// COMMITTED a transaction that waited for the lock re-checks the row it
/// found, not whether a newer one appeared, and two appends could chain
/// from the same event.)
///
/// **Group commit.** Appends of one store wait in a queue; one task takes
/// every waiting append (up to [`PostgresOptions::max_batch`]) into one
/// transaction of three statements, so a busy console pays one commit, and
/// one WAL flush, for many events. Sessions run with
/// `synchronous_commit = on` (see `sofiia-postgres-support`), so an append
/// returns once its event is durable on the server.
///
/// **Pruning** deletes a prefix of the chain and records an anchor in the
/// same transaction; prunes from several instances take turns under an
/// advisory lock, and appends go on meanwhile. **Verification** reads the
/// anchor, every kept event and the head in one REPEATABLE READ snapshot,
/// and also finds events deleted from the chain's end: the head remembers
/// the newest one.
///
/// An append whose connection breaks while it commits is reported as
/// unavailable, though PostgreSQL may have committed it; the console looks
/// up such a send's event before writing it again.
pub struct PostgresAuditStore {
    pool: PostgresPool,
    appends: mpsc::Sender<Append>,
    clock: Arc<DynClock>,
}

impl fmt::Debug for PostgresAuditStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresAuditStore")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// One append waiting for its transaction.
struct Append {
    row: EventRow,
    event: NewEvent,
    done: oneshot::Sender<Result<AuditEvent>>,
}

impl PostgresAuditStore {
    /// The store's schema, which [`open`](Self::open) brings to its newest
    /// version: for tools that migrate ahead of a rollout
    /// ([`PostgresPool::migrate`](sofiia_postgres_support::PostgresPool::migrate)).
    pub fn schema() -> &'static Schema {
        &SCHEMA
    }
    /// Opens the trail in the database `pool` connects to, creating or
    /// migrating its tables.
    ///
    /// # Errors
    ///
    /// [`AuditError::Unavailable`] when PostgreSQL cannot be reached,
    /// [`AuditError::Backend`] when the schema cannot be migrated (or is
    /// newer than this build).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the appends are committed by a task of its
    /// own).
    pub async fn open(pool: PostgresPool) -> Result<Self> {
        Self::open_with(pool, PostgresOptions::default()).await
    }

    /// [`open`](Self::open) with `options`.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    ///
    /// # Panics
    ///
    /// As for [`open`](Self::open).
    pub async fn open_with(pool: PostgresPool, options: PostgresOptions) -> Result<Self> {
        pool.migrate(&SCHEMA).await.map_err(backend)?;
        let (appends, queue) = mpsc::channel(options.queue_capacity.get());
        tokio::spawn(commit_appends(pool.clone(), queue, options.max_batch.get()));
        Ok(Self {
            pool,
            appends,
            clock: options.clock,
        })
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PostgresPool {
        &self.pool
    }

    /// The latest prune anchor, if anything was ever pruned.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub async fn anchor(&self) -> Result<Option<Anchor>> {
        let client = self.pool.get().await.map_err(backend)?;
        let row = client
            .query_opt(LATEST_ANCHOR, &[])
            .await
            .map_err(backend)?;
        row.map(|r| anchor_from(&r)).transpose()
    }

    /// Copies the whole trail of `source` (whose latest prune anchor is
    /// `anchor`) into this one, which must be empty, keeping every event's
    /// id, content, `prev_hash` and `hash`: the chain verifies here as it
    /// did there. One transaction: all of it or nothing. A trail that
    /// already holds `source`'s newest event, with its hash, was imported
    /// before, and nothing is done.
    ///
    /// Run it while nothing writes to `source`. Trails of several
    /// instances cannot be merged into one chain (each starts from its own
    /// genesis): import one, and keep the others as they are.
    ///
    /// # Errors
    ///
    /// A backend error of either store, or [`AuditError::Backend`] when
    /// this trail holds other events.
    pub async fn import_trail(
        &self,
        source: &crate::DynAuditStore,
        anchor: Option<&Anchor>,
    ) -> Result<ImportedTrail> {
        let newest = source
            .read(&AuditQuery {
                limit: PageLimit::new(1).unwrap_or_default(),
                ..AuditQuery::default()
            })
            .await?
            .items
            .into_iter()
            .next();
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        let head = tx.query_one(LOCK_HEAD, &[]).await.map_err(backend)?;
        let (head_id, head_hash): (i64, String) = (head.get(0), head.get(1));
        let anchored = tx
            .query_opt(LATEST_ANCHOR, &[])
            .await
            .map_err(backend)?
            .is_some();
        if head_id != 0 || anchored {
            if let Some(newest) = &newest {
                let id = i64::try_from(newest.id).unwrap_or(i64::MAX);
                let there = tx
                    .query_opt("SELECT hash FROM audit_events WHERE id = $1", &[&id])
                    .await
                    .map_err(backend)?;
                if there.is_some_and(|r| r.get::<_, String>(0) == newest.hash) {
                    return Ok(ImportedTrail {
                        events: 0,
                        already_there: true,
                    });
                }
            }
            return Err(AuditError::Backend {
                source: format!(
                    "the PostgreSQL trail already holds other events (its newest is {head_id}, {head_hash}); \
                     a trail is imported into an empty one only"
                )
                .into(),
            });
        }
        if let Some(anchor) = anchor {
            let id = i64::try_from(anchor.last_deleted_id).unwrap_or(i64::MAX);
            let deleted = i64::try_from(anchor.deleted).unwrap_or(i64::MAX);
            tx.execute(
                INSERT_ANCHOR,
                &[
                    &id,
                    &anchor.hash,
                    &anchor.pruned_at.as_unix_millis(),
                    &anchor.cutoff.as_unix_millis(),
                    &deleted,
                ],
            )
            .await
            .map_err(backend)?;
        }
        // Newest first, a page at a time, each page one statement.
        let insert = tx.prepare_cached(INSERT_EVENTS).await.map_err(backend)?;
        let mut query = AuditQuery {
            limit: PageLimit::new(u64::from(PageLimit::MAX)).unwrap_or_default(),
            ..AuditQuery::default()
        };
        let mut events = 0_u64;
        loop {
            let page = source.read(&query).await?;
            let rows = page
                .items
                .iter()
                .map(|e| EventRow::new(&e.event))
                .collect::<Result<Vec<_>>>()?;
            let mut columns = Columns::with_capacity(rows.len());
            for (event, row) in page.items.iter().zip(&rows) {
                let id = i64::try_from(event.id).unwrap_or(i64::MAX);
                columns.push(id, row, &event.prev_hash, &event.hash);
            }
            tx.execute(&insert, &columns.params())
                .await
                .map_err(backend)?;
            events += page.items.len() as u64;
            match page.items.last() {
                Some(last) if page.next.is_some() => query.before_id = Some(last.id),
                _ => break,
            }
        }
        let head = newest
            .map(|e| (i64::try_from(e.id).unwrap_or(i64::MAX), e.hash))
            .or_else(|| {
                anchor.map(|a| {
                    (
                        i64::try_from(a.last_deleted_id).unwrap_or(i64::MAX),
                        a.hash.clone(),
                    )
                })
            });
        if let Some((id, hash)) = head {
            tx.execute(SET_HEAD, &[&id, &hash]).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(ImportedTrail {
            events,
            already_there: false,
        })
    }
}

/// What [`PostgresAuditStore::import_trail`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportedTrail {
    /// Events copied.
    pub events: u64,
    /// The trail held the source's newest event already: nothing was done.
    pub already_there: bool,
}

#[async_trait::async_trait]
impl AuditStore for PostgresAuditStore {
    async fn append(&self, event: NewEvent) -> Result<AuditEvent> {
        let row = EventRow::new(&event)?;
        let (done, answer) = oneshot::channel();
        self.appends
            .send(Append { row, event, done })
            .await
            .map_err(|_| unavailable("the audit store is closed"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable("the audit store is closed")))
    }

    async fn read(&self, query: &AuditQuery) -> Result<Page<AuditEvent>> {
        let (sql, params) = read_statement(query);
        let client = self.pool.get().await.map_err(backend)?;
        let stmt = client.prepare_cached(&sql).await.map_err(backend)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_sql()).collect();
        let rows = client.query(&stmt, &refs).await.map_err(backend)?;
        let events = rows
            .iter()
            .map(|r| into_event(read_event(r)?).map_err(stored_corrupt))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_overfetch(
            events,
            query.limit,
            AuditEvent::cursor,
        ))
    }

    async fn count_before(&self, cutoff: Timestamp) -> Result<u64> {
        let client = self.pool.get().await.map_err(backend)?;
        let stmt = client.prepare_cached(COUNT_BEFORE).await.map_err(backend)?;
        let row = client
            .query_one(&stmt, &[&cutoff.as_unix_millis()])
            .await
            .map_err(backend)?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn prune_batch(&self, cutoff: Timestamp, batch: u32) -> Result<PruneBatch> {
        if batch == 0 {
            return Ok(PruneBatch {
                deleted: 0,
                more: self.count_before(cutoff).await? > 0,
            });
        }
        let now = self.clock.now();
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PRUNE_LOCK])
            .await
            .map_err(backend)?;
        let cutoff_ms = cutoff.as_unix_millis();
        let rows = tx
            .query(PRUNE_SCAN, &[&(i64::from(batch) + 1)])
            .await
            .map_err(backend)?;
        // The oldest events older than the cutoff, one past the batch if
        // there are that many: that one tells whether another batch is due.
        let older: Vec<&Row> = rows
            .iter()
            .take_while(|row| row.get::<_, i64>(1) < cutoff_ms)
            .collect();
        let take = older
            .len()
            .min(usize::try_from(batch).unwrap_or(usize::MAX));
        let more = older.len() > take;
        let last: Option<(i64, String)> = take
            .checked_sub(1)
            .and_then(|i| older.get(i))
            .map(|row| (row.get(0), row.get(2)));
        let Some((last, hash)) = last else {
            return Ok(PruneBatch { deleted: 0, more });
        };
        let deleted = tx.execute(DELETE_UP_TO, &[&last]).await.map_err(backend)?;
        let deleted_i64 = i64::try_from(deleted).unwrap_or(i64::MAX);
        tx.execute(
            INSERT_ANCHOR,
            &[
                &last,
                &hash,
                &now.as_unix_millis(),
                &cutoff_ms,
                &deleted_i64,
            ],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(PruneBatch { deleted, more })
    }

    async fn verify(&self) -> Result<Verification> {
        let mut client = self.pool.get().await.map_err(backend)?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(backend)?;
        let anchor = tx
            .query_opt(LATEST_ANCHOR, &[])
            .await
            .map_err(backend)?
            .map(|r| anchor_from(&r))
            .transpose()?;
        let head = tx.query_one(HEAD, &[]).await.map_err(backend)?;
        let (head_id, head_hash): (i64, String) = (head.get(0), head.get(1));
        let mut chain = ChainCheck::new(anchor.as_ref().map(|a| a.hash.as_str()));
        let mut newest: Option<(i64, String)> = None;
        // Streamed a page at a time through a cursor, never all at once.
        tx.batch_execute(&format!(
            "DECLARE chain NO SCROLL CURSOR FOR SELECT {COLUMNS} FROM audit_events ORDER BY id"
        ))
        .await
        .map_err(backend)?;
        loop {
            let rows = tx
                .query("FETCH 1000 FROM chain", &[])
                .await
                .map_err(backend)?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let raw = read_event(row)?;
                let id = raw.id;
                let broken = |reason| Verification::Broken {
                    id: u64::try_from(id).unwrap_or(0),
                    reason,
                };
                if let Some(reason) = chain.check_link(&raw.prev_hash) {
                    return Ok(broken(reason));
                }
                let hash = raw.hash.clone();
                let Ok(event) = into_event(raw) else {
                    return Ok(broken(BreakReason::Unreadable));
                };
                if let Some(reason) = chain.check(&event) {
                    return Ok(broken(reason));
                }
                newest = Some((id, hash));
            }
        }
        // The chain must end where the head says: at the newest event, or,
        // with every event pruned, at the latest anchor (or the genesis).
        let end = newest.or_else(|| {
            anchor.as_ref().map(|a| {
                (
                    i64::try_from(a.last_deleted_id).unwrap_or(-1),
                    a.hash.clone(),
                )
            })
        });
        let end = end.unwrap_or_else(|| (0, GENESIS_HASH.to_owned()));
        if end != (head_id, head_hash) {
            return Ok(Verification::Broken {
                id: u64::try_from(head_id).unwrap_or(0),
                reason: BreakReason::Missing,
            });
        }
        Ok(chain.intact())
    }

    async fn check(&self) -> Result<()> {
        self.pool.check().await.map_err(backend)
    }
}

/// Commits waiting appends, a batch per transaction, until the store is
/// dropped. A batch refused for a reason a retry will not fix (an event
/// PostgreSQL cannot store, say) is committed again one event per
/// transaction, so that one bad event fails alone.
async fn commit_appends(pool: PostgresPool, mut queue: mpsc::Receiver<Append>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        // Callers that gave up (their future was dropped) are still stored:
        // a retry may look their event up.
        match commit_batch(&pool, &batch).await {
            Ok(chained) => {
                for (append, chained) in batch.drain(..).zip(chained) {
                    answer(append, Ok(chained));
                }
            }
            Err(e) if batch.len() > 1 && !e.is_transient() => {
                for append in batch.drain(..) {
                    let one = commit_batch(&pool, std::slice::from_ref(&append)).await;
                    answer(append, one.map(|mut chained| chained.remove(0)));
                }
            }
            Err(e) => {
                let transient = e.is_transient();
                let text = error_text(&e);
                for append in batch.drain(..) {
                    let source: Box<dyn std::error::Error + Send + Sync> = text.clone().into();
                    let _ = append.done.send(Err(if transient {
                        AuditError::Unavailable { source }
                    } else {
                        AuditError::Backend { source }
                    }));
                }
            }
        }
    }
}

/// Answers one append's caller.
fn answer(append: Append, chained: Result<(u64, String, String), sofiia_postgres_support::Error>) {
    let _ = append.done.send(match chained {
        Ok((id, prev_hash, hash)) => Ok(AuditEvent {
            id,
            event: append.event,
            prev_hash,
            hash,
        }),
        Err(e) => Err(backend(e)),
    });
}

/// One transaction: lock the head, chain and insert every event, move the
/// head. Returns each event's id, prev_hash and hash.
async fn commit_batch(
    pool: &PostgresPool,
    batch: &[Append],
) -> Result<Vec<(u64, String, String)>, sofiia_postgres_support::Error> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let head = tx
        .query_one(&tx.prepare_cached(LOCK_HEAD).await?, &[])
        .await?;
    let (mut last_id, mut prev): (i64, String) = (head.get(0), head.get(1));
    let mut chained = Vec::with_capacity(batch.len());
    let mut columns = Columns::with_capacity(batch.len());
    for append in batch {
        last_id += 1;
        let hash = compute_hash(&prev, &append.event);
        columns.push(last_id, &append.row, &prev, &hash);
        chained.push((u64::try_from(last_id).unwrap_or(0), prev, hash.clone()));
        prev = hash;
    }
    let insert = tx.prepare_cached(INSERT_EVENTS).await?;
    tx.execute(&insert, &columns.params()).await?;
    let set_head = tx.prepare_cached(SET_HEAD).await?;
    tx.execute(&set_head, &[&last_id, &prev]).await?;
    tx.commit().await?;
    Ok(chained)
}

/// A batch's rows as one array per column, for `UNNEST`.
struct Columns<'a> {
    id: Vec<i64>,
    ts: Vec<i64>,
    actor: Vec<&'a str>,
    action: Vec<&'a str>,
    target: Vec<&'a str>,
    outcome: Vec<&'a str>,
    status: Vec<Option<i32>>,
    request_id: Vec<Option<&'a str>>,
    node: Vec<Option<&'a str>>,
    source_ip: Vec<Option<&'a str>>,
    user_agent: Vec<Option<&'a str>>,
    details: Vec<&'a str>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
}

impl<'a> Columns<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            id: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            action: Vec::with_capacity(n),
            target: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            request_id: Vec::with_capacity(n),
            node: Vec::with_capacity(n),
            source_ip: Vec::with_capacity(n),
            user_agent: Vec::with_capacity(n),
            details: Vec::with_capacity(n),
            prev_hash: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, id: i64, row: &'a EventRow, prev_hash: &str, hash: &str) {
        self.id.push(id);
        self.ts.push(row.ts);
        self.actor.push(&row.actor);
        self.action.push(&row.action);
        self.target.push(&row.target);
        self.outcome.push(&row.outcome);
        self.status.push(row.status);
        self.request_id.push(row.request_id.as_deref());
        self.node.push(row.node.as_deref());
        self.source_ip.push(row.source_ip.as_deref());
        self.user_agent.push(row.user_agent.as_deref());
        self.details.push(&row.details);
        self.prev_hash.push(prev_hash.to_owned());
        self.hash.push(hash.to_owned());
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.id,
            &self.ts,
            &self.actor,
            &self.action,
            &self.target,
            &self.outcome,
            &self.status,
            &self.request_id,
            &self.node,
            &self.source_ip,
            &self.user_agent,
            &self.details,
            &self.prev_hash,
            &self.hash,
        ]
    }
}

// ---------------------------------------------------------------------------
// Reads.

/// A parameter of a read.
enum Param {
    Text(String),
    Int(i64),
}

impl Param {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(s) => s,
            Param::Int(n) => n,
        }
    }
}

/// The statement and parameters of a read: only the filters present appear
/// in the SQL, so that each combination gets its own plan (and cached
/// statement) that can use its index.
fn read_statement(query: &AuditQuery) -> (String, Vec<Param>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let mut next = |conditions: &mut Vec<String>, sql: &str, param: Param| {
        params.push(param);
        conditions.push(sql.replace('?', &format!("${}", params.len())));
    };
    if let Some(actor) = &query.actor {
        next(&mut conditions, "actor = ?", Param::Text(to_text(actor)));
    }
    if let Some(action) = &query.action {
        next(&mut conditions, "action = ?", Param::Text(to_text(action)));
    }
    if let Some(since) = query.since {
        next(
            &mut conditions,
            "ts >= ?",
            Param::Int(since.as_unix_millis()),
        );
    }
    if let Some(until) = query.until {
        next(
            &mut conditions,
            "ts < ?",
            Param::Int(until.as_unix_millis()),
        );
    }
    if let Some(before) = query.before_id {
        // No stored id exceeds i64::MAX, so clamping keeps the meaning.
        next(
            &mut conditions,
            "id < ?",
            Param::Int(i64::try_from(before).unwrap_or(i64::MAX)),
        );
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    // The extra row only proves that another page exists (`Page::from_overfetch`).
    params.push(Param::Int(
        i64::try_from(query.limit.get() + 1).unwrap_or(i64::MAX),
    ));
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_events {filter} ORDER BY id DESC LIMIT ${}",
        params.len()
    );
    (sql, params)
}

/// A new event's row, before it is numbered and chained.
struct EventRow {
    ts: i64,
    actor: String,
    action: String,
    target: String,
    outcome: String,
    status: Option<i32>,
    request_id: Option<String>,
    node: Option<String>,
    source_ip: Option<String>,
    user_agent: Option<String>,
    details: String,
}

impl EventRow {
    fn new(event: &NewEvent) -> Result<Self> {
        let details = serde_json::to_string(&event.details).map_err(|e| AuditError::Backend {
            source: Box::new(e),
        })?;
        Ok(Self {
            ts: event.ts.as_unix_millis(),
            actor: to_text(&event.actor),
            action: to_text(&event.action),
            target: to_text(&event.target),
            outcome: outcome_str(event.outcome).to_owned(),
            status: event.status.map(i32::from),
            request_id: event.request_id.as_deref().map(to_text),
            node: event.node.as_deref().map(to_text),
            source_ip: event.source_ip.as_deref().map(to_text),
            user_agent: event.user_agent.as_deref().map(to_text),
            details,
        })
    }
}

/// An `audit_events` row, read column by column, its strings as stored.
fn read_event(row: &Row) -> Result<StoredEvent> {
    let get = |e| corrupt(EVENTS, Some(Box::new(e)));
    Ok(StoredEvent {
        id: row.try_get(0).map_err(get)?,
        ts: row.try_get(1).map_err(get)?,
        actor: row.try_get(2).map_err(get)?,
        action: row.try_get(3).map_err(get)?,
        target: row.try_get(4).map_err(get)?,
        outcome: row.try_get(5).map_err(get)?,
        status: row
            .try_get::<_, Option<i32>>(6)
            .map_err(get)?
            .map(i64::from),
        request_id: row.try_get(7).map_err(get)?,
        node: row.try_get(8).map_err(get)?,
        source_ip: row.try_get(9).map_err(get)?,
        user_agent: row.try_get(10).map_err(get)?,
        details: row.try_get(11).map_err(get)?,
        prev_hash: row.try_get(12).map_err(get)?,
        hash: row.try_get(13).map_err(get)?,
    })
}

/// The event a row holds: its strings as recorded (see [`ESCAPE`]), every
/// value validated.
fn into_event(row: StoredEvent) -> Result<AuditEvent, CorruptColumn> {
    let optional = |s: Option<String>, column| s.map(|s| from_text(&s, column)).transpose();
    StoredEvent {
        actor: from_text(&row.actor, "actor")?,
        action: from_text(&row.action, "action")?,
        target: from_text(&row.target, "target")?,
        request_id: optional(row.request_id, "request_id")?,
        node: optional(row.node, "node")?,
        source_ip: optional(row.source_ip, "source_ip")?,
        user_agent: optional(row.user_agent, "user_agent")?,
        ..row
    }
    .into_event(EVENTS)
}

/// PostgreSQL's text cannot hold U+0000, which an event's strings may: it
/// is stored as [`ESCAPE`] followed by `0`, and `ESCAPE` itself (a
/// noncharacter, U+10FFFF) doubled. Every other string is stored as it is;
/// filters are escaped the same way, so equality still means equality.
const ESCAPE: char = '\u{10FFFF}';

fn to_text(s: &str) -> String {
    if !s.contains(['\0', ESCAPE]) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\0' => {
                out.push(ESCAPE);
                out.push('0');
            }
            ESCAPE => {
                out.push(ESCAPE);
                out.push(ESCAPE);
            }
            c => out.push(c),
        }
    }
    out
}

fn from_text(s: &str, column: &'static str) -> Result<String, CorruptColumn> {
    if !s.contains(ESCAPE) {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\0'),
            Some(ESCAPE) => out.push(ESCAPE),
            _ => {
                return Err(CorruptColumn::new(
                    EVENTS,
                    column,
                    "an escape that is not \\u{10FFFF}0 or doubled",
                ));
            }
        }
    }
    Ok(out)
}

fn anchor_from(row: &Row) -> Result<Anchor> {
    let get = |e| corrupt("audit_anchors", Some(Box::new(e)));
    let (last_deleted_id, hash, pruned_at, cutoff, deleted): (i64, String, i64, i64, i64) = (
        row.try_get(0).map_err(get)?,
        row.try_get(1).map_err(get)?,
        row.try_get(2).map_err(get)?,
        row.try_get(3).map_err(get)?,
        row.try_get(4).map_err(get)?,
    );
    let time = |column, ms| {
        Timestamp::from_unix_millis(ms).map_err(|e| corrupt(column, Some(Box::new(e))))
    };
    Ok(Anchor {
        last_deleted_id: u64::try_from(last_deleted_id)
            .map_err(|_| corrupt("audit_anchors.last_deleted_id", None))?,
        hash,
        pruned_at: time("audit_anchors.pruned_at", pruned_at)?,
        cutoff: time("audit_anchors.cutoff", cutoff)?,
        deleted: u64::try_from(deleted).map_err(|_| corrupt("audit_anchors.deleted", None))?,
    })
}

// ---------------------------------------------------------------------------
// Errors.

/// A stored value this crate cannot read.
#[derive(Debug, thiserror::Error)]
#[error("a stored value of {column} is invalid")]
struct CorruptRow {
    column: &'static str,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

fn corrupt(
    column: &'static str,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> AuditError {
    AuditError::Backend {
        source: Box::new(CorruptRow { column, source }),
    }
}

fn stored_corrupt(e: CorruptColumn) -> AuditError {
    AuditError::Backend {
        source: Box::new(e),
    }
}

fn unavailable(why: &'static str) -> AuditError {
    AuditError::Unavailable { source: why.into() }
}

/// The public error of a PostgreSQL failure: unavailable when a retry may
/// succeed.
fn backend(e: impl Into<sofiia_postgres_support::Error>) -> AuditError {
    let e = e.into();
    if e.is_transient() {
        AuditError::Unavailable {
            source: Box::new(e),
        }
    } else {
        AuditError::Backend {
            source: Box::new(e),
        }
    }
}

/// A batch's error, written out with its causes, for every caller in it.
fn error_text(e: &sofiia_postgres_support::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::process::Command;

    use sofiia_core_domain::PageLimit;
    use sofiia_postgres_support::PoolOptions;
    use sofiia_testkit::PostgresTestDatabase;

    use super::*;
    use crate::testing::{Fixture, TestStore};

    async fn fresh() -> Option<(PostgresTestDatabase, PostgresAuditStore)> {
        let db = PostgresTestDatabase::new("sofiia-audit-store postgres").await?;
        let store = open_on(&db.url).await;
        Some((db, store))
    }

    async fn open_on(url: &str) -> PostgresAuditStore {
        let pool = PostgresPool::open(url, PoolOptions::default().with_max_connections(4))
            .expect("a valid URL");
        PostgresAuditStore::open(pool)
            .await
            .expect("open a fresh PostgreSQL audit store")
    }

    crate::audit_store_tests!(
        async fn store() -> Option<TestStore> {
            let (db, store) = fresh().await?;
            // The database is dropped after the store, when the case ends.
            Some(TestStore::with_guard(store, db))
        }
    );

    async fn append_n(store: &PostgresAuditStore, fx: &Fixture, n: u64) -> Vec<AuditEvent> {
        let mut stored = Vec::new();
        for i in 0..n {
            stored.push(store.append(fx.event(i)).await.unwrap());
        }
        stored
    }

    /// Someone with access to the database, beside the store.
    async fn sql(store: &PostgresAuditStore, statement: &str, id: u64) {
        let client = store.pool().get().await.unwrap();
        let id = i64::try_from(id).unwrap();
        client.execute(statement, &[&id]).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_names_an_edited_row_and_the_row_after_a_deleted_one() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        let fx = Fixture::new();
        let stored = append_n(&store, &fx, 5).await;
        sql(
            &store,
            "UPDATE audit_events SET action = 'chat.forged' WHERE id = $1",
            stored[3].id,
        )
        .await;
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[3].id,
                reason: BreakReason::HashMismatch
            }
        );
        sql(
            &store,
            "DELETE FROM audit_events WHERE id = $1",
            stored[1].id,
        )
        .await;
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[2].id,
                reason: BreakReason::PrevHashMismatch
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_finds_events_deleted_from_the_end_and_a_deleted_anchor() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        let fx = Fixture::new();
        let stored = append_n(&store, &fx, 6).await;
        // The newest two go: nothing in the kept events shows it, the head
        // does.
        sql(
            &store,
            "DELETE FROM audit_events WHERE id >= $1",
            stored[4].id,
        )
        .await;
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[5].id,
                reason: BreakReason::Missing
            }
        );
        // Put the head back where the kept events end: intact again.
        let client = store.pool().get().await.unwrap();
        client
            .execute(
                "UPDATE audit_head SET last_id = $1, hash = $2",
                &[&i64::try_from(stored[3].id).unwrap(), &stored[3].hash],
            )
            .await
            .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 4 }
        );
        // Prune two, then lose the anchor: the oldest kept event no longer
        // chains from anything.
        let pruned = store.prune_batch(fx.at(2), 100).await.unwrap();
        assert_eq!(pruned.deleted, 2);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 2 }
        );
        client
            .execute("DELETE FROM audit_anchors", &[])
            .await
            .unwrap();
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[2].id,
                reason: BreakReason::PrevHashMismatch
            }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_this_crate_cannot_decode_is_unreadable_not_a_panic() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        let fx = Fixture::new();
        let stored = append_n(&store, &fx, 2).await;
        sql(
            &store,
            "UPDATE audit_events SET details = 'not json' WHERE id = $1",
            stored[1].id,
        )
        .await;
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Broken {
                id: stored[1].id,
                reason: BreakReason::Unreadable
            }
        );
        let err = store.read(&AuditQuery::default()).await.unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");
    }

    #[test]
    fn strings_postgres_cannot_hold_are_escaped_reversibly() {
        for s in [
            "",
            "plain",
            "nul \0 here",
            "\u{10FFFF}",
            "\u{10FFFF}0",
            "\0\u{10FFFF}\0",
        ] {
            let stored = to_text(s);
            assert!(!stored.contains('\0'), "{s:?}");
            assert_eq!(from_text(&stored, "actor").unwrap(), s);
        }
        assert_eq!(to_text("plain"), "plain");
        assert!(from_text("\u{10FFFF}x", "actor").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_postgres_cannot_store_fails_alone() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        // A rule of the database's own (a trigger an operator added, say)
        // refuses one event; the events around it must not fail with it.
        let client = store.pool().get().await.unwrap();
        client
            .batch_execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.target = 'refused' THEN RAISE EXCEPTION 'refused'; END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse BEFORE INSERT ON audit_events
                   FOR EACH ROW EXECUTE FUNCTION refuse();",
            )
            .await
            .unwrap();
        let store = Arc::new(store);
        let fx = Fixture::new();
        let mut events: Vec<NewEvent> = (0..20).map(|i| fx.event(i)).collect();
        events[7].target = "refused".into();
        let results = futures_util::future::join_all(events.into_iter().map(|e| {
            let store = Arc::clone(&store);
            async move { store.append(e).await }
        }))
        .await;
        for (i, result) in results.iter().enumerate() {
            match (i, result) {
                (7, Err(AuditError::Backend { .. })) => {}
                (7, other) => panic!("the refused event: {other:?}"),
                (_, Ok(_)) => {}
                (i, Err(e)) => panic!("event {i} failed with the bad one: {e:?}"),
            }
        }
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 19 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_appends_share_a_transaction() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        let store = Arc::new(store);
        let fx = Fixture::new();
        let results = futures_util::future::join_all((0..200).map(|i| {
            let store = Arc::clone(&store);
            let event = fx.event(i);
            async move { store.append(event).await.unwrap() }
        }))
        .await;
        // Each transaction has its own id, which its rows carry as `xmin`.
        let client = store.pool().get().await.unwrap();
        let transactions: i64 = client
            .query_one("SELECT count(DISTINCT xmin::text) FROM audit_events", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(results.len(), 200);
        assert!(
            (1..200).contains(&transactions),
            "200 appends took {transactions} transactions"
        );
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 200 }
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_use_the_index_of_their_filter() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        let client = store.pool().get().await.unwrap();
        client
            .batch_execute("SET enable_seqscan = off")
            .await
            .unwrap();
        let at = Timestamp::from_unix_millis(1_000).unwrap();
        let cases = [
            (AuditQuery::default(), "audit_events_pkey"),
            (
                AuditQuery {
                    actor: Some("alice".into()),
                    before_id: Some(10),
                    ..AuditQuery::default()
                },
                "audit_events_by_actor",
            ),
            (
                AuditQuery {
                    action: Some("chat.send".into()),
                    until: Some(at),
                    ..AuditQuery::default()
                },
                "audit_events_by_action",
            ),
            (
                AuditQuery {
                    since: Some(at),
                    limit: PageLimit::new(10).unwrap(),
                    ..AuditQuery::default()
                },
                "audit_events",
            ),
        ];
        for (query, index) in cases {
            let (sql, params) = read_statement(&query);
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_sql()).collect();
            let plan: Vec<String> = client
                .query(&format!("EXPLAIN {sql}"), &refs)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let plan = plan.join("\n");
            assert!(plan.contains(index), "{query:?} is planned as\n{plan}");
            assert!(!plan.contains("Sort"), "{query:?} sorts:\n{plan}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_trail_is_imported_once_and_keeps_verifying() {
        let Some((_db, store)) = fresh().await else {
            return;
        };
        let fx = Fixture::new();
        let source = crate::MemoryAuditStore::new();
        let mut odd = fx.event(1);
        odd.target = "nul \0 inside".into();
        source.append(odd).await.unwrap();
        for i in 0..450 {
            source.append(fx.event(i)).await.unwrap();
        }
        // A pruned source: its chain starts from an anchor.
        source.prune_batch(fx.at(30), 25).await.unwrap();
        let anchor = source.anchor().unwrap();
        assert!(anchor.is_some());
        let before = everything_in(&source).await;

        let imported = store.import_trail(&source, anchor.as_ref()).await.unwrap();
        assert_eq!((imported.events, imported.already_there), (426, false));
        assert_eq!(
            everything_in(&store).await,
            before,
            "ids, content and hashes"
        );
        assert_eq!(store.anchor().await.unwrap(), anchor);
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 426 }
        );
        // New events chain on from the imported newest one.
        let next = store.append(fx.event(999)).await.unwrap();
        assert_eq!(next.prev_hash, before[0].hash);
        assert!(next.id > before[0].id);

        // Again: nothing to do. Another trail: refused, nothing changed.
        let again = store.import_trail(&source, anchor.as_ref()).await.unwrap();
        assert!(again.already_there);
        let other = crate::MemoryAuditStore::new();
        other.append(fx.event(5)).await.unwrap();
        let err = store.import_trail(&other, None).await.unwrap_err();
        assert!(matches!(err, AuditError::Backend { .. }), "{err:?}");
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact { events: 427 }
        );
    }

    async fn everything_in(store: &dyn AuditStore) -> Vec<AuditEvent> {
        let mut all = Vec::new();
        let mut query = AuditQuery {
            limit: PageLimit::new(200).unwrap(),
            ..AuditQuery::default()
        };
        loop {
            let page = store.read(&query).await.unwrap();
            all.extend(page.items.iter().cloned());
            match page.items.last() {
                Some(last) if page.next.is_some() => query.before_id = Some(last.id),
                _ => return all,
            }
        }
    }

    /// Runs as one of several processes appending to one trail when
    /// `CHILD_URL` is set; see the test below.
    const CHILD_URL: &str = "SOFIIA_AUDIT_TEST_CHILD_URL";
    const CHILD_NAME: &str = "SOFIIA_AUDIT_TEST_CHILD_NAME";
    const PER_PROCESS: u64 = 150;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_from_several_processes_form_one_chain() {
        if let Ok(url) = std::env::var(CHILD_URL) {
            let name = std::env::var(CHILD_NAME).unwrap();
            let store = Arc::new(open_on(&url).await);
            let fx = Fixture::new();
            futures_util::future::join_all((0..PER_PROCESS).map(|i| {
                let store = Arc::clone(&store);
                let event = fx.event_by(i, &name, "chat.send");
                async move { store.append(event).await.unwrap() }
            }))
            .await;
            return;
        }
        let Some((db, store)) = fresh().await else {
            return;
        };
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..4)
            .map(|n| {
                Command::new(&exe)
                    .args([
                        "--exact",
                        "postgres::tests::appends_from_several_processes_form_one_chain",
                        "--test-threads=1",
                    ])
                    .env(CHILD_URL, &db.url)
                    .env(CHILD_NAME, format!("process-{n}"))
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        assert_eq!(
            store.verify().await.unwrap(),
            Verification::Intact {
                events: 4 * PER_PROCESS
            }
        );
        // Ids follow the chain: each event's prev_hash is the hash of the
        // one with the next lower id, whichever process wrote it.
        let mut all = everything_in(&store).await;
        all.reverse();
        for pair in all.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "at id {}", pair[1].id);
            assert!(pair[1].id > pair[0].id);
        }
        let writers: HashSet<&str> = all.iter().map(|e| e.event.actor.as_str()).collect();
        assert_eq!(writers.len(), 4);
    }
}
