//! [`Writer`]: one thread that owns a file's write connection and commits
//! the writes of many callers together (group commit).

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::{ConnectionRole, Error, Setup};

/// How a [`Writer`] batches.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WriterOptions {
    /// The most writes one transaction commits; more waiting writes go to
    /// the next. Default 256.
    pub max_batch: usize,
    /// How many writes may wait for the writer thread; a write beyond that
    /// waits (asynchronously) for room, which pushes back on callers when
    /// the disk is slower than they are. Default 4096.
    pub queue_capacity: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            queue_capacity: 4096,
        }
    }
}

impl WriterOptions {
    /// These options with another [`max_batch`](Self::max_batch) (at least 1).
    #[must_use]
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// These options with another [`queue_capacity`](Self::queue_capacity)
    /// (at least 1).
    #[must_use]
    pub fn with_queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }
}

/// How far a write is taken before its caller gets the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// As far as the connection's `synchronous` setting takes every commit
    /// (with `FULL`, onto the disk: it survives a power loss). What
    /// [`Writer::write`] does.
    #[default]
    Synced,
    /// Committed and visible to every reader, without waiting for the disk
    /// (`synchronous = NORMAL` for its transaction when the connection's
    /// setting is higher). It survives the process crashing or being
    /// killed; a power loss or an OS crash may undo it. In WAL mode it is
    /// never undone without every write committed after it on the same file:
    /// the next synced commit takes it onto the disk too. A batch holding
    /// any synced write is synced as a whole.
    Committed,
}

/// What a [`Writer`] has done since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Writes those transactions committed (a failed write inside a
    /// committed transaction is not counted); `writes / transactions` is the
    /// mean batch size.
    pub writes: u64,
    /// Transactions that failed as a whole: every write in them failed.
    pub failed_transactions: u64,
    /// Writes handed to the writer thread and not answered yet.
    pub queued: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    writes: AtomicU64,
    failed_transactions: AtomicU64,
    submitted: AtomicU64,
    answered: AtomicU64,
}

/// What a write leaves once it has run inside the batch's transaction: the
/// answer to send once the batch's fate is known.
struct Ran {
    ok: bool,
    /// Called with `None` once the transaction committed, or with the error
    /// that undid it.
    finish: Box<dyn FnOnce(Option<Error>) + Send>,
}

/// A queued write. Given the connection it runs; given an error instead (its
/// batch could not start) it answers that error without running.
type Job = Box<dyn FnOnce(Result<&Connection, Error>) -> Ran + Send>;
type ExclusiveJob = Box<dyn FnOnce(&mut Connection) + Send>;

enum Command {
    Write(Job, Durability),
    Exclusive(ExclusiveJob),
}

/// One thread owning the write connection of a SQLite file, committing the
/// writes of many callers in one transaction (group commit).
///
/// Every [`write`](Self::write) is a closure run on that thread. The thread
/// takes the first waiting write and every other write already waiting (up
/// to [`WriterOptions::max_batch`]), runs each inside its own `SAVEPOINT`
/// of one `BEGIN IMMEDIATE` transaction, commits once, and only then answers
/// each caller. So with `synchronous = FULL` a batch costs one `fsync`
/// however many writes it holds, and a caller that has its answer knows its
/// write is on disk.
///
/// - A write that returns an error has its savepoint rolled back: it leaves
///   nothing behind, and the other writes of the batch are unaffected.
/// - If SQLite undoes the whole transaction on its own (it does for a full
///   disk or an I/O error), or the commit fails, every write of the batch
///   gets an error ([`Error::Batch`] for those whose own work had
///   succeeded), [`Error::is_transient`] tells whether a retry may succeed.
/// - A write that panics is rolled back and its caller gets
///   [`Error::Interact`]; the thread keeps serving.
/// - [`exclusive`](Self::exclusive) work (checkpoints, `VACUUM`, pragmas
///   that cannot run in a transaction) runs between batches, in the order
///   callers asked for it.
///
/// A caller that stops waiting (its future is dropped, or it timed out)
/// does not take its write back: it may still be committed. Writes must be
/// safe to retry for that reason.
///
/// Dropping the last handle, or [`close`](Self::close), ends the thread
/// once the writes already queued have run.
#[derive(Clone)]
pub struct Writer {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    sender: std::sync::Mutex<Option<mpsc::Sender<Command>>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.inner.path)
            .field("open", &self.sender().is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Writer {
    /// Starts the writer thread of `path`: it opens the connection, sets it
    /// up as the file's writer with `setup`, runs `init` on it (migrations),
    /// and then serves writes. Returns once `init` has run.
    ///
    /// # Errors
    ///
    /// What opening, setting up or `init` returned; [`Error::WriterStopped`]
    /// if the thread could not be started.
    pub async fn open<F>(
        path: &Path,
        setup: Setup,
        options: WriterOptions,
        init: F,
    ) -> Result<Self, Error>
    where
        F: FnOnce(&mut Connection) -> Result<(), Error> + Send + 'static,
    {
        crate::create_parent_dir(path).await?;
        let (sender, commands) = mpsc::channel(options.queue_capacity.max(1));
        let (ready, opened) = oneshot::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread_path = path.to_owned();
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("sofiia-sqlite-writer".into())
            .spawn(move || {
                let opened = Connection::open(&thread_path)
                    .map_err(Error::from)
                    .and_then(|mut conn| {
                        setup.configure(&mut conn, ConnectionRole::Write)?;
                        init(&mut conn)?;
                        Ok(conn)
                    });
                let conn = match opened {
                    Ok(conn) => conn,
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                if ready.send(Ok(())).is_err() {
                    return;
                }
                // The level the connection was set up with: what a synced
                // batch runs at.
                let synced = conn
                    .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                    .unwrap_or(SYNC_FULL);
                Thread {
                    conn,
                    commands,
                    counters: thread_counters,
                    max_batch,
                    synced,
                    current: synced,
                }
                .run();
            })
            .map_err(|_| Error::WriterStopped)?;
        opened.await.map_err(|_| Error::WriterStopped)??;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                sender: std::sync::Mutex::new(Some(sender)),
                counters,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn sender(&self) -> Option<mpsc::Sender<Command>> {
        self.inner
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn submit(&self, command: Command) -> Result<(), Error> {
        let sender = self.sender().ok_or(Error::WriterStopped)?;
        sender.send(command).await.map_err(|_| Error::WriterStopped)
    }

    /// Runs `f` inside the next batch's transaction and answers once that
    /// transaction committed.
    ///
    /// `f` must not begin, commit or roll back transactions itself; it runs
    /// inside a savepoint, which is rolled back if it returns an error.
    ///
    /// # Errors
    ///
    /// What `f` returned; [`Error::Batch`] (converted into `E`) if `f`
    /// succeeded but its transaction did not commit; [`Error::Interact`] if
    /// `f` panicked; [`Error::WriterStopped`] if the writer is closed.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.write_with(Durability::Synced, f).await
    }

    /// [`write`](Self::write), taken only as far as `durability` asks
    /// before it is answered.
    ///
    /// # Errors
    ///
    /// As for [`write`](Self::write).
    pub async fn write_with<T, E, F>(&self, durability: Durability, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let counters = Arc::clone(&self.inner.counters);
        let job: Job = Box::new(move |conn: Result<&Connection, Error>| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(err) => Err(E::from(err)),
            };
            Ran {
                ok: result.is_ok(),
                finish: Box::new(move |failure| {
                    let answer = match (result, failure) {
                        (Ok(value), None) => Ok(value),
                        (Ok(_), Some(err)) => Err(E::from(err)),
                        (Err(err), _) => Err(err),
                    };
                    counters.answered.fetch_add(1, Ordering::SeqCst);
                    let _ = reply.send(answer);
                }),
            }
        });
        self.submit(Command::Write(job, durability))
            .await
            .map_err(E::from)?;
        self.inner.counters.submitted.fetch_add(1, Ordering::SeqCst);
        // A closed channel means the job was dropped unanswered: it panicked.
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(Error::Interact { panicked: true })))
    }

    /// Runs `f` on the connection between batches, outside any transaction
    /// (for checkpoints, `VACUUM` and the like).
    ///
    /// # Errors
    ///
    /// What `f` returned; [`Error::Interact`] if it panicked;
    /// [`Error::WriterStopped`] if the writer is closed.
    pub async fn exclusive<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, E>>();
        let job: ExclusiveJob = Box::new(move |conn: &mut Connection| {
            let _ = reply.send(f(conn));
        });
        self.submit(Command::Exclusive(job))
            .await
            .map_err(E::from)?;
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(Error::Interact { panicked: true })))
    }

    /// Stops accepting writes; those already queued still run. Later calls
    /// fail with [`Error::WriterStopped`].
    pub fn close(&self) {
        self.inner
            .sender
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        WriterStats {
            transactions: c.transactions.load(Ordering::SeqCst),
            writes: c.writes.load(Ordering::SeqCst),
            failed_transactions: c.failed_transactions.load(Ordering::SeqCst),
            queued: c
                .submitted
                .load(Ordering::SeqCst)
                .saturating_sub(c.answered.load(Ordering::SeqCst)),
        }
    }
}

/// The writer thread's state.
struct Thread {
    conn: Connection,
    commands: mpsc::Receiver<Command>,
    counters: Arc<Counters>,
    max_batch: usize,
    /// The connection's own `synchronous` level (0 OFF, 1 NORMAL, 2 FULL,
    /// 3 EXTRA): what synced batches run at.
    synced: i64,
    /// The level set now.
    current: i64,
}

/// `PRAGMA synchronous` levels.
const SYNC_NORMAL: i64 = 1;
const SYNC_FULL: i64 = 2;

impl Thread {
    fn run(mut self) {
        let mut next: Option<Command> = None;
        loop {
            let command = match next.take() {
                Some(command) => command,
                // A plain OS thread, never an async worker: it may block.
                None => match self.commands.blocking_recv() {
                    Some(command) => command,
                    None => return,
                },
            };
            match command {
                Command::Write(job, durability) => {
                    let mut synced = durability == Durability::Synced;
                    let mut batch = vec![job];
                    while batch.len() < self.max_batch {
                        match self.commands.try_recv() {
                            Ok(Command::Write(job, durability)) => {
                                synced |= durability == Durability::Synced;
                                batch.push(job);
                            }
                            Ok(other) => {
                                // Exclusive work ends the batch and runs
                                // right after it, keeping the callers' order.
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let level = if synced {
                        self.synced
                    } else {
                        self.synced.min(SYNC_NORMAL)
                    };
                    match self.set_level(level) {
                        Ok(()) => self.commit(batch),
                        Err(err) => self.refuse(batch, err),
                    }
                }
                Command::Exclusive(job) => {
                    // A panic drops the reply, which its caller sees.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(&mut self.conn)));
                }
            }
        }
    }

    /// Sets `synchronous` for the next transaction (outside any: SQLite
    /// ignores it inside one). A level that cannot be lowered stays higher,
    /// which only costs time; one that cannot be raised back is an error,
    /// so that no synced write is ever committed at a lower level.
    fn set_level(&mut self, level: i64) -> rusqlite::Result<()> {
        if level == self.current {
            return Ok(());
        }
        match self
            .conn
            .execute_batch(&format!("PRAGMA synchronous = {level}"))
        {
            Ok(()) => {
                self.current = level;
                Ok(())
            }
            Err(_) if level < self.current => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Answers every write of `batch` with `err` without running it.
    fn refuse(&mut self, batch: Vec<Job>, err: rusqlite::Error) {
        let err = Arc::new(err);
        self.counters
            .failed_transactions
            .fetch_add(1, Ordering::SeqCst);
        for job in batch {
            let ran = job(Err(Error::Batch(Arc::clone(&err))));
            (ran.finish)(None);
        }
    }

    /// Runs `batch` in as few transactions as SQLite lets it: normally one.
    fn commit(&mut self, batch: Vec<Job>) {
        let mut queue: VecDeque<Job> = batch.into();
        while !queue.is_empty() {
            if let Err(err) = self.conn.execute_batch("BEGIN IMMEDIATE") {
                self.refuse(queue.into(), err);
                return;
            }
            let mut ran = Vec::new();
            let mut lost = None;
            while let Some(job) = queue.pop_front() {
                match self.run_one(job) {
                    Step::Ran(r) => ran.push(r),
                    Step::Answered => {}
                    Step::Lost(err) => {
                        lost = Some(err);
                        break;
                    }
                }
            }
            let failure = match lost {
                Some(err) => err,
                None => match self.conn.execute_batch("COMMIT") {
                    Ok(()) => {
                        let n = u64::try_from(ran.len()).unwrap_or(u64::MAX);
                        self.counters.transactions.fetch_add(1, Ordering::SeqCst);
                        self.counters.writes.fetch_add(n, Ordering::SeqCst);
                        for r in ran {
                            (r.finish)(None);
                        }
                        return;
                    }
                    Err(err) => Arc::new(err),
                },
            };
            // The transaction is gone or cannot commit: everything that ran
            // in it fails, and what is left starts a new one.
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.counters
                .failed_transactions
                .fetch_add(1, Ordering::SeqCst);
            for r in ran {
                (r.finish)(Some(Error::Batch(Arc::clone(&failure))));
            }
        }
    }

    /// Runs one job in a savepoint of the open transaction.
    fn run_one(&mut self, job: Job) -> Step {
        if let Err(err) = run(&self.conn, "SAVEPOINT job") {
            let err = Arc::new(err);
            let ran = job(Err(Error::Batch(Arc::clone(&err))));
            (ran.finish)(None);
            return Step::Lost(err);
        }
        let conn = &self.conn;
        let outcome = catch_unwind(AssertUnwindSafe(move || job(Ok(conn))));
        let ok = matches!(&outcome, Ok(r) if r.ok);
        if self.conn.is_autocommit() {
            // SQLite undid the whole transaction itself (it does for a full
            // disk or an I/O error): what ran before in it is gone too.
            let err = Arc::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("SQLite rolled the transaction back".into()),
            ));
            if let Ok(r) = outcome {
                (r.finish)(ok.then(|| Error::Batch(Arc::clone(&err))));
            }
            return Step::Lost(err);
        }
        let settled = if ok {
            run(&self.conn, "RELEASE job")
        } else {
            run(&self.conn, "ROLLBACK TO job").and_then(|()| run(&self.conn, "RELEASE job"))
        };
        match (outcome, settled) {
            (Ok(r), Ok(())) if ok => Step::Ran(r),
            (Ok(r), Err(err)) if ok => {
                let err = Arc::new(err);
                (r.finish)(Some(Error::Batch(Arc::clone(&err))));
                Step::Lost(err)
            }
            // A failed job's answer does not depend on the commit; a
            // panicked one dropped its reply, which its caller sees.
            (outcome, settled) => {
                if let Ok(r) = outcome {
                    (r.finish)(None);
                }
                match settled {
                    Ok(()) => Step::Answered,
                    Err(err) => Step::Lost(Arc::new(err)),
                }
            }
        }
    }
}

/// Runs one statement the writer runs for every job, prepared once.
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// What running one job did to the batch.
enum Step {
    /// It succeeded inside the transaction; answer it after the commit.
    Ran(Ran),
    /// It failed or panicked and has been answered; the transaction goes on.
    Answered,
    /// The transaction is lost (the job has been answered).
    Lost(Arc<rusqlite::Error>),
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::time::Duration;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error(transparent)]
        Support(#[from] Error),
        #[error("refused by the job")]
        Refused,
    }

    impl From<rusqlite::Error> for TestError {
        fn from(err: rusqlite::Error) -> Self {
            TestError::Support(err.into())
        }
    }

    async fn open(dir: &tempfile::TempDir, options: WriterOptions) -> Writer {
        Writer::open(
            &dir.path().join("sub/writer.sqlite3"),
            Setup::new(Duration::from_secs(5)),
            options,
            |conn| {
                conn.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER NOT NULL UNIQUE)")?;
                Ok(())
            },
        )
        .await
        .unwrap()
    }

    fn insert(x: i64) -> impl FnOnce(&Connection) -> Result<(), TestError> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?;
            Ok(())
        }
    }

    /// Starts a write that holds the writer thread until the returned gate
    /// is passed; returns once the thread is held, so that later writes
    /// queue behind it.
    async fn hold(
        writer: &Writer,
    ) -> (Arc<Barrier>, tokio::task::JoinHandle<Result<(), TestError>>) {
        let gate = Arc::new(Barrier::new(2));
        let (started, running) = oneshot::channel();
        let held = {
            let writer = writer.clone();
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                writer
                    .write(move |conn| {
                        let _ = started.send(());
                        gate.wait();
                        insert(0)(conn)
                    })
                    .await
            })
        };
        running.await.unwrap();
        (gate, held)
    }

    /// Waits until `n` writes wait in the channel.
    async fn queued(writer: &Writer, n: usize) {
        while writer
            .sender()
            .map_or(0, |s| s.max_capacity() - s.capacity())
            < n
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn count(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_writes_share_one_transaction_and_failures_stay_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir, WriterOptions::default()).await;
        // Hold the thread on a first write until the others are queued.
        let (gate, held) = hold(&writer).await;
        let tasks: Vec<_> = (1..=20)
            .map(|x| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    if x == 7 {
                        // Inserts, then fails: its savepoint is undone.
                        writer
                            .write(|conn| {
                                insert(1_000)(conn)?;
                                Err::<(), _>(TestError::Refused)
                            })
                            .await
                    } else if x == 9 {
                        // The held write's value: a constraint error.
                        writer.write(insert(0)).await
                    } else {
                        writer.write(insert(x)).await
                    }
                })
            })
            .collect();
        // Let every queued write reach the channel before releasing the gate.
        queued(&writer, 20).await;
        gate.wait();
        held.await.unwrap().unwrap();
        let mut failed = 0;
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(()) => {}
                Err(TestError::Refused) => {
                    assert_eq!(i + 1, 7);
                    failed += 1;
                }
                Err(TestError::Support(Error::Sqlite(e))) => {
                    assert_eq!(i + 1, 9, "{e}");
                    failed += 1;
                }
                Err(other) => panic!("write {}: {other:?}", i + 1),
            }
        }
        assert_eq!(failed, 2);
        assert_eq!(count(writer.path()), 19, "0..=20 without 7 and 9");
        let stats = writer.stats();
        assert_eq!(stats.writes, 19);
        assert_eq!(
            stats.transactions, 2,
            "the held write, then the 20 queued ones together: {stats:?}"
        );
        assert_eq!(stats.failed_transactions, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_sqlite_undoes_fails_every_write_in_it_and_the_next_batch_works() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir, WriterOptions::default()).await;
        let (gate, held) = hold(&writer).await;
        // Queued one by one, so that their order in the batch is known.
        let first = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write(insert(1)).await })
        };
        queued(&writer, 1).await;
        let undoing = {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .write(|conn| {
                        // What SQLite does on a full disk: the whole
                        // transaction is gone.
                        conn.execute_batch("ROLLBACK")?;
                        Ok::<_, TestError>(())
                    })
                    .await
            })
        };
        queued(&writer, 2).await;
        let after = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write(insert(3)).await })
        };
        queued(&writer, 3).await;
        gate.wait();
        held.await.unwrap().unwrap();
        let err = first.await.unwrap().unwrap_err();
        match &err {
            TestError::Support(e @ Error::Batch(_)) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
        let err = undoing.await.unwrap().unwrap_err();
        assert!(
            matches!(err, TestError::Support(Error::Batch(_))),
            "{err:?}"
        );
        after.await.unwrap().unwrap();
        assert_eq!(count(writer.path()), 2, "0 and 3; 1 was undone");
        assert_eq!(writer.stats().failed_transactions, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_write_is_reported_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir, WriterOptions::default()).await;
        let err = writer
            .write(|conn| -> Result<(), TestError> {
                insert(1)(conn)?;
                panic!("a bug in a write");
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, TestError::Support(Error::Interact { panicked: true })),
            "{err:?}"
        );
        writer.write(insert(2)).await.unwrap();
        assert_eq!(count(writer.path()), 1, "the panicked write was undone");
        let err = writer
            .exclusive(|_| -> Result<(), TestError> { panic!("a bug") })
            .await
            .unwrap_err();
        assert!(matches!(err, TestError::Support(Error::Interact { .. })));
        writer.write(insert(3)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exclusive_work_runs_outside_transactions_and_close_stops_writes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(&dir, WriterOptions::default().with_max_batch(1)).await;
        writer.write(insert(1)).await.unwrap();
        let autocommit = writer
            .exclusive(|conn| {
                conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")?;
                Ok::<_, TestError>(conn.is_autocommit())
            })
            .await
            .unwrap();
        assert!(autocommit);
        writer.close();
        let err = writer.write(insert(2)).await.unwrap_err();
        match err {
            TestError::Support(e @ Error::WriterStopped) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
        assert_eq!(count(writer.path()), 1);
        assert!(format!("{writer:?}").contains("writer.sqlite3"));
    }

    fn level(conn: &Connection) -> Result<i64, TestError> {
        Ok(conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_writes_skip_the_sync_unless_a_synced_write_shares_their_batch() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Writer::open(
            &dir.path().join("levels.sqlite3"),
            Setup::new(Duration::from_secs(5))
                .with_tune(|conn, _| conn.execute_batch("PRAGMA synchronous = FULL")),
            WriterOptions::default(),
            |conn| Ok(conn.execute_batch("CREATE TABLE t (x INTEGER NOT NULL UNIQUE)")?),
        )
        .await
        .unwrap();
        let committed = writer.write_with(Durability::Committed, level).await;
        assert_eq!(committed.unwrap(), SYNC_NORMAL);
        assert_eq!(writer.write(level).await.unwrap(), SYNC_FULL);
        assert_eq!(
            writer
                .write_with(Durability::Committed, level)
                .await
                .unwrap(),
            SYNC_NORMAL
        );
        // Queued together behind a held write: one batch, synced.
        let (gate, held) = hold(&writer).await;
        let lazy = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write_with(Durability::Committed, level).await })
        };
        queued(&writer, 1).await;
        let synced = {
            let writer = writer.clone();
            tokio::spawn(async move { writer.write(level).await })
        };
        queued(&writer, 2).await;
        gate.wait();
        held.await.unwrap().unwrap();
        assert_eq!(lazy.await.unwrap().unwrap(), SYNC_FULL);
        assert_eq!(synced.await.unwrap().unwrap(), SYNC_FULL);
        // The connection's own level is what synced batches keep.
        let after = writer.exclusive(|conn| level(conn)).await.unwrap();
        assert_eq!(after, SYNC_FULL);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_init_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let err = Writer::open(
            &dir.path().join("bad.sqlite3"),
            Setup::new(Duration::from_secs(1)),
            WriterOptions::default(),
            |conn| {
                conn.execute_batch("NOT SQL")?;
                Ok(())
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Sqlite(_)), "{err:?}");
    }
}
