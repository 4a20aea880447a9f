//! Per-store schema versions in one database.

use deadpool_postgres::GenericClient;
use deadpool_postgres::Object;

use crate::Error;

/// A store's tables: its name and its migrations, one per version.
///
/// Version *n* is reached by running the first *n* migrations in order.
/// Released migrations are never edited, only appended to. Each store's
/// version is a row of the `sofiia_schema` table, so stores sharing a
/// database migrate independently.
///
/// [`PostgresPool::migrate`](crate::PostgresPool::migrate) runs the
/// missing migrations in one transaction, under a transaction-scoped
/// advisory lock, so that several instances starting at once migrate once
/// and a failed migration leaves the database as it was.
#[derive(Debug)]
pub struct Schema {
    /// The store's name in `sofiia_schema`.
    pub store: &'static str,
    /// The migrations, oldest first; each may hold several statements.
    pub migrations: &'static [&'static str],
}

impl Schema {
    /// The newest version this build knows.
    pub fn latest(&self) -> u32 {
        u32::try_from(self.migrations.len()).unwrap_or(u32::MAX)
    }
}

/// The advisory lock every migration holds: one at a time per database.
const MIGRATION_LOCK: i64 = 0x736f_6669_6961_0001;

const CREATE_VERSIONS: &str = "CREATE TABLE IF NOT EXISTS sofiia_schema (
    store   TEXT   PRIMARY KEY,
    version BIGINT NOT NULL CHECK (version >= 0)
)";

pub(crate) async fn migrate(client: &mut Object, schema: &Schema) -> Result<u32, Error> {
    let known = schema.latest();
    // Fast path: an up-to-date store takes no lock.
    if version(client, schema.store).await? == Some(known) {
        return Ok(known);
    }
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(CREATE_VERSIONS).await?;
    let found: i64 = tx
        .query_opt(
            "SELECT version FROM sofiia_schema WHERE store = $1",
            &[&schema.store],
        )
        .await?
        .map_or(0, |row| row.get(0));
    if found < 0 || found > i64::from(known) {
        return Err(Error::NewerSchema {
            store: schema.store,
            found,
            known,
        });
    }
    let from = usize::try_from(found).unwrap_or(usize::MAX);
    for (i, migration) in schema.migrations.iter().enumerate().skip(from) {
        let version = u32::try_from(i + 1).unwrap_or(u32::MAX);
        tx.batch_execute(migration)
            .await
            .map_err(|source| Error::Migration {
                store: schema.store,
                version,
                source,
            })?;
    }
    tx.execute(
        "INSERT INTO sofiia_schema (store, version) VALUES ($1, $2)
         ON CONFLICT (store) DO UPDATE SET version = EXCLUDED.version",
        &[&schema.store, &i64::from(known)],
    )
    .await?;
    tx.commit().await?;
    Ok(known)
}

pub(crate) async fn version(
    client: &impl GenericClient,
    store: &str,
) -> Result<Option<u32>, Error> {
    // `to_regclass` is NULL before the first migration made the table.
    let row = client
        .query_one("SELECT to_regclass('sofiia_schema') IS NOT NULL", &[])
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT version FROM sofiia_schema WHERE store = $1",
            &[&store],
        )
        .await?;
    Ok(row.map(|r| u32::try_from(r.get::<_, i64>(0)).unwrap_or(u32::MAX)))
}
