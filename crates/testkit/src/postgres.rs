//! Throwaway PostgreSQL databases for tests.

use std::time::Duration;

use tokio_postgres::NoTls;

use crate::skip_or_fail_with;

/// The variable naming the test PostgreSQL: a URL of a database the tests
/// may connect to as a role that can create databases.
pub const POSTGRES_URL_VAR: &str = "SOFIIA_TEST_POSTGRES_URL";
/// The variable that turns a missing PostgreSQL into a failure.
pub const REQUIRE_POSTGRES_VAR: &str = "SOFIIA_REQUIRE_POSTGRES";

/// A database of one's own, created empty on the test PostgreSQL and
/// dropped (with any connections still open to it) when this is dropped.
#[derive(Debug)]
pub struct PostgresTestDatabase {
    /// The URL of the new database.
    pub url: String,
    /// Its name.
    pub name: String,
    admin_url: String,
}

impl PostgresTestDatabase {
    /// Creates one, or returns `None` (after saying loudly why) when
    /// PostgreSQL is not configured or does not answer and is not required.
    ///
    /// # Panics
    ///
    /// When PostgreSQL is required (`SOFIIA_REQUIRE_POSTGRES=1`) and
    /// missing, or the database cannot be created.
    pub async fn new(test: &str) -> Option<Self> {
        let skip = |why: &str| {
            skip_or_fail_with(
                test,
                why,
                REQUIRE_POSTGRES_VAR,
                &format!(
                    "Set {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/postgres to run it."
                ),
            )
        };
        let admin_url = match std::env::var(POSTGRES_URL_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ => return skip(&format!("{POSTGRES_URL_VAR} is unset")),
        };
        let config: tokio_postgres::Config = admin_url
            .parse()
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_VAR} is not a PostgreSQL URL: {e}"));
        let client = match connect(&config).await {
            Ok(client) => client,
            Err(e) => return skip(&format!("PostgreSQL at {admin_url} does not answer ({e})")),
        };
        let name = format!("sofiia_test_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot create database {name}: {e}"));
        let mut db = config;
        db.dbname(&name);
        Some(Self {
            url: to_url(&db),
            name,
            admin_url,
        })
    }
}

/// Connects, and keeps the connection driven by a task of its own.
async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let mut config = config.clone();
    config.connect_timeout(Duration::from_secs(2));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        let mut text = e.to_string();
        if let Some(source) = std::error::Error::source(&e) {
            text = format!("{text}: {source}");
        }
        text
    })?;
    tokio::spawn(connection);
    Ok(client)
}

/// A `postgres://` URL for `config`'s first host, port, user, password and
/// database.
fn to_url(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => {
            // A socket directory goes in the `host` parameter.
            return format!(
                "postgres://{}@/{}?host={}",
                config.get_user().unwrap_or("postgres"),
                config.get_dbname().unwrap_or("postgres"),
                path.display()
            );
        }
        None => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{host}:{port}/{db}")
}

impl Drop for PostgresTestDatabase {
    fn drop(&mut self) {
        // Drop may run outside any runtime, or inside one that is shutting
        // down: a thread of its own with a runtime of its own does it.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(config) = admin_url.parse::<tokio_postgres::Config>() else {
                    return;
                };
                if let Ok(client) = connect(&config).await {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = done.join();
    }
}
