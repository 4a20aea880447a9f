//! The harness's own PostgreSQL chores: a throwaway database for a run,
//! made and dropped through an admin URL, and the server's process id.

use sofiia_postgres_support::tokio_postgres::{Client, NoTls, config::Host};
use sofiia_postgres_support::{parse_url, server_of};

use crate::error_chain;

/// Connects to `url`; the connection is driven by a task of the current
/// runtime.
async fn connect(url: &str) -> Result<Client, String> {
    let mut config = parse_url(url).map_err(|e| format!("{}: {e}", server_of(url)))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("{}: {}", server_of(url), error_chain(&e)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// `admin_url` with its database replaced by `name`; `admin_url` must be a
/// `postgres://` (or `postgresql://`) URL.
pub(crate) fn database_url(admin_url: &str, name: &str) -> Result<String, String> {
    let (scheme, rest) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|s| Some((*s, admin_url.strip_prefix(s)?)))
        .ok_or_else(|| format!("`{}` is not a postgres:// URL", server_of(admin_url)))?;
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    let authority = rest[..rest.len() - query.len()]
        .split('/')
        .next()
        .unwrap_or_default();
    Ok(format!("{scheme}{authority}/{name}{query}"))
}

/// Creates the empty database `name` (an identifier of lower-case letters,
/// digits and `_`) on the server of `admin_url`.
pub(crate) async fn create_database(admin_url: &str, name: &str) -> Result<(), String> {
    let client = connect(admin_url).await?;
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|e| format!("CREATE DATABASE {name}: {}", error_chain(&e)))
}

/// Drops the database `name`, closing any session still in it; returns its
/// size in bytes just before.
pub(crate) async fn drop_database(admin_url: &str, name: &str) -> Result<i64, String> {
    let client = connect(admin_url).await?;
    let size: i64 = client
        .query_one("SELECT pg_database_size($1::text)", &[&name])
        .await
        .map_err(|e| format!("the size of {name}: {}", error_chain(&e)))?
        .get(0);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| format!("DROP DATABASE {name}: {}", error_chain(&e)))?;
    Ok(size)
}

/// The process id of the postmaster at `url` when the server runs on this
/// machine: the parent of the session's own backend process, so that the
/// CPU time of the server's processes can be read (see
/// [`crate::procs::tree_cpu_time`]).
pub(crate) async fn server_pid(url: &str) -> Option<u32> {
    let local = parse_url(url).ok()?.get_hosts().iter().all(|h| match h {
        Host::Tcp(host) => ["127.0.0.1", "localhost", "::1"].contains(&host.as_str()),
        Host::Unix(_) => true,
    });
    if !local {
        return None;
    }
    let client = connect(url).await.ok()?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?
        .get(0);
    let backend = u32::try_from(backend).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
    let postmaster = crate::procs::parse_parent(&stat)?;
    // A server in a container reports its own namespace's pid, which here
    // may name another process: only processes named postgres count.
    let is_postgres = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_start().starts_with("postgres"))
    };
    (is_postgres(backend) && is_postgres(postmaster)).then_some(postmaster)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_everything_but_the_database() {
        let url = |admin| database_url(admin, "bench_1").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/bench_1"
        );
        assert_eq!(
            url("postgresql://u:pw@db:6432?sslmode=disable"),
            "postgresql://u:pw@db:6432/bench_1?sslmode=disable"
        );
        assert_eq!(url("postgres://db/"), "postgres://db/bench_1");
        assert!(database_url("host=db dbname=x", "bench_1").is_err());
    }
}
