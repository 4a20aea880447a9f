//! The harness's own Redis chores: is it there, and deleting every key under
//! a run's prefix afterwards.

use deadpool_redis::redis;

/// Whether Redis at `url` answers `PING`.
pub(crate) async fn ping(url: &str) -> Result<(), String> {
    let mut conn = connect(url).await?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| format!("redis {url}: {e}"))
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis {url}: {e}"))
}

/// The process id of the Redis server at `url`, when it runs on this
/// machine (`INFO server`), so its CPU time can be read too.
pub(crate) async fn server_pid(url: &str) -> Option<u32> {
    let mut conn = connect(url).await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .parse()
        .ok()?;
    // A pid of a remote server would name an unrelated local process.
    let local = url.contains("127.0.0.1") || url.contains("localhost") || url.contains("[::1]");
    // And a server in a container reports its own namespace's pid, which
    // here may name another process: only a process named redis counts.
    let is_redis = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_start().starts_with("redis"));
    (local && is_redis).then_some(pid)
}

/// A glob pattern matching every key that starts with `prefix`, with the
/// glob's special characters escaped.
pub(crate) fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// Walks every key under `prefix` (SCAN, never KEYS), handing each batch to
/// `each`, which returns how many of them it counts.
async fn scan_prefix(
    url: &str,
    prefix: &str,
    mut each: impl AsyncFnMut(
        &mut redis::aio::MultiplexedConnection,
        Vec<String>,
    ) -> Result<u64, String>,
) -> Result<u64, String> {
    let mut conn = connect(url).await?;
    let pattern = prefix_pattern(prefix);
    let mut cursor = 0u64;
    let mut total = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("redis SCAN: {e}"))?;
        if !keys.is_empty() {
            total += each(&mut conn, keys).await?;
        }
        if next == 0 {
            return Ok(total);
        }
        cursor = next;
    }
}

/// Counts the keys under `prefix`.
pub(crate) async fn count_prefix(url: &str, prefix: &str) -> Result<u64, String> {
    scan_prefix(url, prefix, async |_, keys| Ok(keys.len() as u64)).await
}

/// Deletes every key under `prefix`; returns how many.
pub(crate) async fn delete_prefix(url: &str, prefix: &str) -> Result<u64, String> {
    scan_prefix(url, prefix, async |conn, keys| {
        redis::cmd("UNLINK")
            .arg(&keys)
            .query_async(conn)
            .await
            .map_err(|e| format!("redis UNLINK: {e}"))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_escape_globs() {
        assert_eq!(prefix_pattern("sofiia-bench:ab12:"), "sofiia-bench:ab12:*");
        assert_eq!(prefix_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
