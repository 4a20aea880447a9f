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

/// Commands Redis received while `run` ran, watched with `MONITOR`: those
/// whose line contains `needle` (the run's key prefix), split into the ones
/// clients sent and the ones scripts ran (`[... lua]`). A pipeline's
/// commands arrive one by one, so the first number bounds the round trips
/// from above.
pub(crate) fn count_commands<T>(
    url: &str,
    needle: &str,
    run: impl FnOnce() -> T,
) -> Result<(CommandCount, T), String> {
    use futures_util::StreamExt as _;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let client = redis::Client::open(url).map_err(|e| format!("redis {url}: {e}"))?;
    let monitor = runtime
        .block_on(client.get_async_monitor())
        .map_err(|e| format!("redis {url}: MONITOR: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let needle = needle.to_owned();
    let counting = runtime.spawn(async move {
        let mut lines = monitor.into_on_message::<String>();
        let mut count = CommandCount::default();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                line = lines.next() => match line {
                    Some(line) => count.add(&line, &needle),
                    None => break,
                },
            }
        }
        count
    });
    let value = run();
    // What the server had sent before the stop is in the stream already;
    // a short pause lets the last lines of the run arrive.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let _ = stop.send(());
    let count = runtime
        .block_on(counting)
        .map_err(|e| format!("MONITOR task: {e}"))?;
    Ok((count, value))
}

/// What [`count_commands`] saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommandCount {
    /// Commands clients sent.
    pub client: u64,
    /// Commands scripts ran on the server.
    pub script: u64,
}

impl CommandCount {
    fn add(&mut self, line: &str, needle: &str) {
        if !line.contains(needle) {
            return;
        }
        // `1700000000.123456 [0 127.0.0.1:5000] "GET" "k"`; `[0 lua]` for
        // a script's own commands.
        let source = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map_or("", |(source, _)| source);
        if source.ends_with(" lua") {
            self.script += 1;
        } else {
            self.client += 1;
        }
    }
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
    fn monitor_lines_are_told_apart_by_source() {
        let mut count = CommandCount::default();
        count.add(
            r#"1700000000.1 [0 127.0.0.1:5000] "EVALSHA" "ab" "1" "p:k""#,
            "p:",
        );
        count.add(r#"1700000000.2 [0 lua] "HSET" "p:k" "f" "v""#, "p:");
        count.add(r#"1700000000.3 [0 127.0.0.1:5000] "PING""#, "p:");
        count.add(r#"1700000000.4 [0 unix:/tmp/r.sock] "GET" "p:x""#, "p:");
        assert_eq!(
            count,
            CommandCount {
                client: 2,
                script: 1
            }
        );
    }

    #[test]
    fn prefix_patterns_escape_globs() {
        assert_eq!(prefix_pattern("sofiia-bench:ab12:"), "sofiia-bench:ab12:*");
        assert_eq!(prefix_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
