//! Schema migrations on a real PostgreSQL (`SOFIIA_TEST_POSTGRES_URL`).
#![allow(clippy::unwrap_used)]

use sofiia_postgres_support::{Error, PoolOptions, PostgresPool, Schema};
use sofiia_testkit::PostgresTestDatabase;

static V1: Schema = Schema {
    store: "notes",
    migrations: &["CREATE TABLE notes (id BIGINT PRIMARY KEY)"],
};
static V2: Schema = Schema {
    store: "notes",
    migrations: &[
        "CREATE TABLE notes (id BIGINT PRIMARY KEY)",
        "ALTER TABLE notes ADD COLUMN body TEXT NOT NULL DEFAULT ''",
    ],
};
static OTHER: Schema = Schema {
    store: "other",
    migrations: &["CREATE TABLE other (id BIGINT PRIMARY KEY)"],
};

async fn pool(test: &str) -> Option<(PostgresTestDatabase, PostgresPool)> {
    let db = PostgresTestDatabase::new(test).await?;
    let pool = PostgresPool::open(&db.url, PoolOptions::default()).unwrap();
    Some((db, pool))
}

async fn tables(pool: &PostgresPool) -> Vec<String> {
    let client = pool.get().await.unwrap();
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn stores_migrate_independently_and_upgrades_apply_only_what_is_missing() {
    let Some((_db, pool)) = pool("stores_migrate_independently").await else {
        return;
    };
    assert_eq!(pool.schema_version("notes").await.unwrap(), None);
    assert_eq!(pool.migrate(&V1).await.unwrap(), 1);
    assert_eq!(pool.migrate(&V1).await.unwrap(), 1);
    assert_eq!(pool.migrate(&OTHER).await.unwrap(), 1);
    let client = pool.get().await.unwrap();
    client
        .execute("INSERT INTO notes VALUES (7)", &[])
        .await
        .unwrap();
    assert_eq!(pool.migrate(&V2).await.unwrap(), 2);
    let body: String = client
        .query_one("SELECT body FROM notes WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(body, "");
    assert_eq!(pool.schema_version("notes").await.unwrap(), Some(2));
    assert_eq!(pool.schema_version("other").await.unwrap(), Some(1));
    assert_eq!(tables(&pool).await, ["notes", "other", "sofiia_schema"]);
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_a_failed_migration_changes_nothing() {
    let Some((_db, pool)) = pool("a_newer_schema_is_refused").await else {
        return;
    };
    pool.migrate(&V2).await.unwrap();
    let err = pool.migrate(&V1).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::NewerSchema {
                store: "notes",
                found: 2,
                known: 1
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_transient());

    static BROKEN: Schema = Schema {
        store: "broken",
        migrations: &[
            "CREATE TABLE broken_one (id BIGINT)",
            "CREATE TABLE broken_two (id BIGINT); SELECT no_such_function()",
        ],
    };
    let err = pool.migrate(&BROKEN).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Migration {
                store: "broken",
                version: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(pool.schema_version("broken").await.unwrap(), None);
    assert_eq!(tables(&pool).await, ["notes", "sofiia_schema"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_at_once_migrate_once() {
    let Some((db, _pool)) = pool("instances_starting_at_once").await else {
        return;
    };
    let mut starts = Vec::new();
    for _ in 0..8 {
        let url = db.url.clone();
        starts.push(tokio::spawn(async move {
            // A pool each, as separate instances have.
            let pool = PostgresPool::open(&url, PoolOptions::default()).unwrap();
            pool.migrate(&V2).await
        }));
    }
    for start in starts {
        assert_eq!(start.await.unwrap().unwrap(), 2);
    }
}

#[tokio::test]
async fn sessions_commit_durably_unless_the_url_says_otherwise() {
    let Some((db, pool)) = pool("sessions_commit_durably").await else {
        return;
    };
    let show = |pool: PostgresPool| async move {
        let client = pool.get().await.unwrap();
        let row = client
            .query_one("SHOW synchronous_commit", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    // Even where the database's own default is off.
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            db.name
        ))
        .await
        .unwrap();
    let fresh = PostgresPool::open(&db.url, PoolOptions::default()).unwrap();
    assert_eq!(show(fresh).await, "on");
    let relaxed = PostgresPool::open(
        &format!("{}?options=-c%20synchronous_commit%3Dlocal", db.url),
        PoolOptions::default(),
    )
    .unwrap();
    assert_eq!(show(relaxed).await, "local");
}
