//! [`Schema`] and [`migrate`]: each store's schema version, kept per store so
//! that several stores can share one file.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use crate::Error;

/// One store's schema: its name in the file, and its migrations, one SQL
/// batch per version. Migrations are never edited once released, only
/// appended.
///
/// The versions of every store in a file are kept in its `sofiia_schema`
/// table, one row per store, so that stores sharing a file migrate
/// independently of each other.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The store's name in `sofiia_schema`.
    pub store: &'static str,
    /// A table the store's first migration creates. A file made before
    /// `sofiia_schema` existed held one store and recorded its version in
    /// `PRAGMA user_version`; a file with this table and no row of its own
    /// is such a file, and its version is taken from there.
    pub marker: &'static str,
    /// The migrations, oldest first.
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// The version these migrations bring a file to.
    pub fn latest(&self) -> i64 {
        i64::try_from(self.migrations.len()).unwrap_or(i64::MAX)
    }
}

const VERSIONS: &str = "CREATE TABLE IF NOT EXISTS sofiia_schema (
        store   TEXT    NOT NULL PRIMARY KEY,
        version INTEGER NOT NULL
    ) STRICT";

/// Brings `schema`'s tables in `conn`'s file up to date, in one immediate
/// transaction: two processes migrating one file queue rather than race,
/// and a migration that fails leaves nothing behind. Other stores' tables in
/// the file are not touched.
///
/// # Errors
///
/// [`Error::NewerSchema`] if the file holds a newer version of this schema
/// than `schema` knows; [`Error::Migration`] if a migration failed (as it
/// does when the store's tables exist but no version says so: not a file of
/// this schema); [`Error::Sqlite`] if the versions could not be read or
/// written.
pub fn migrate(conn: &mut Connection, schema: &Schema) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(VERSIONS)?;
    let recorded: Option<i64> = tx
        .query_row(
            "SELECT version FROM sofiia_schema WHERE store = ?1",
            [schema.store],
            |r| r.get(0),
        )
        .optional()?;
    let found = match recorded {
        Some(version) => version,
        None => legacy_version(&tx, schema)?,
    };
    let latest = schema.latest();
    if found > latest || found < 0 {
        return Err(Error::NewerSchema {
            store: schema.store,
            found,
            known: latest,
        });
    }
    let done = usize::try_from(found).unwrap_or(usize::MAX);
    for (index, sql) in schema.migrations.iter().enumerate().skip(done) {
        tx.execute_batch(sql).map_err(|source| Error::Migration {
            store: schema.store,
            version: index + 1,
            source,
        })?;
    }
    if recorded != Some(latest) {
        tx.execute(
            "INSERT INTO sofiia_schema (store, version) VALUES (?1, ?2)
             ON CONFLICT (store) DO UPDATE SET version = excluded.version",
            rusqlite::params![schema.store, latest],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The version of a file made when each store had its own file and kept its
/// version in `user_version`; 0 if the store has no tables here.
fn legacy_version(conn: &Connection, schema: &Schema) -> rusqlite::Result<i64> {
    let marker: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
        [schema.marker],
        |r| r.get(0),
    )?;
    if !marker {
        return Ok(0);
    }
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// The version of `store`'s schema recorded in `conn`'s file, if any.
///
/// # Errors
///
/// The driver's error.
pub fn schema_version(conn: &Connection, store: &str) -> rusqlite::Result<Option<i64>> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'sofiia_schema')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    conn.query_row(
        "SELECT version FROM sofiia_schema WHERE store = ?1",
        [store],
        |r| r.get(0),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::*;
    use crate::{ConnectionRole, Setup};

    const NOTES: Schema = Schema {
        store: "notes",
        marker: "a",
        migrations: &[
            "CREATE TABLE a (x INTEGER) STRICT;",
            "CREATE TABLE b (y INTEGER) STRICT;",
        ],
    };

    const TAGS: Schema = Schema {
        store: "tags",
        marker: "tags",
        migrations: &["CREATE TABLE tags (name TEXT NOT NULL) STRICT;"],
    };

    fn raw(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn migrate_is_idempotent_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = raw(&dir.path().join("schema.sqlite3"));
        migrate(&mut conn, &NOTES).unwrap();
        migrate(&mut conn, &NOTES).unwrap();
        assert_eq!(schema_version(&conn, "notes").unwrap(), Some(2));

        conn.execute("UPDATE sofiia_schema SET version = 99", [])
            .unwrap();
        let err = migrate(&mut conn, &NOTES).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NewerSchema {
                    store: "notes",
                    found: 99,
                    known: 2
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_transient());
    }

    #[test]
    fn stores_in_one_file_keep_their_own_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = raw(&dir.path().join("shared.sqlite3"));
        migrate(&mut conn, &NOTES).unwrap();
        migrate(&mut conn, &TAGS).unwrap();
        assert_eq!(schema_version(&conn, "notes").unwrap(), Some(2));
        assert_eq!(schema_version(&conn, "tags").unwrap(), Some(1));
        assert_eq!(tables(&conn), ["a", "b", "sofiia_schema", "tags"]);
        // A later version of one store leaves the other alone.
        const NOTES_3: Schema = Schema {
            migrations: &[
                NOTES.migrations[0],
                NOTES.migrations[1],
                "ALTER TABLE a ADD COLUMN z INTEGER;",
            ],
            ..NOTES
        };
        migrate(&mut conn, &NOTES_3).unwrap();
        assert_eq!(schema_version(&conn, "notes").unwrap(), Some(3));
        assert_eq!(schema_version(&conn, "tags").unwrap(), Some(1));
    }

    #[test]
    fn a_file_of_one_store_versioned_by_user_version_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = raw(&dir.path().join("legacy.sqlite3"));
        conn.execute_batch("CREATE TABLE a (x INTEGER) STRICT; PRAGMA user_version = 1;")
            .unwrap();
        conn.execute("INSERT INTO a (x) VALUES (7)", []).unwrap();
        migrate(&mut conn, &NOTES).unwrap();
        assert_eq!(schema_version(&conn, "notes").unwrap(), Some(2));
        let x: i64 = conn.query_row("SELECT x FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 7);
        // Another store in the same file starts from nothing.
        migrate(&mut conn, &TAGS).unwrap();
        assert_eq!(schema_version(&conn, "tags").unwrap(), Some(1));
    }

    #[test]
    fn a_half_migrated_file_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = raw(&dir.path().join("half.sqlite3"));
        // The second table exists, but no version says so.
        conn.execute_batch("CREATE TABLE b (y INTEGER) STRICT;")
            .unwrap();
        let err = migrate(&mut conn, &NOTES).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Migration {
                    store: "notes",
                    version: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        // The first migration ran in the same transaction: undone.
        assert_eq!(tables(&conn), ["b"]);
        assert_eq!(schema_version(&conn, "notes").unwrap(), None);
    }

    #[test]
    fn concurrent_openers_all_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raced.sqlite3");
        let barrier = Arc::new(Barrier::new(4));
        let openers: Vec<_> = (0..4)
            .map(|i| {
                let path = path.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let mut conn = Connection::open(&path).unwrap();
                    Setup::new(Duration::from_secs(5))
                        .configure(&mut conn, ConnectionRole::Write)
                        .unwrap();
                    barrier.wait();
                    migrate(&mut conn, if i % 2 == 0 { &NOTES } else { &TAGS })
                })
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap();
        }
        let conn = raw(&path);
        assert_eq!(schema_version(&conn, "notes").unwrap(), Some(2));
        assert_eq!(schema_version(&conn, "tags").unwrap(), Some(1));
    }
}
