//! Console memory after sends to many distinct chats by many operators.
//!
//! The console only knows configured operators, so it starts with
//! `--operators` tokens and every send goes to a chat of its own, the
//! operators taking turns. Resident memory (`VmRSS`, and the peak `VmHWM`)
//! is read from `/proc/<pid>/status` after a short warm-up and again after
//! the sends. Run with every backend in memory and with the SQLite chat
//! index (idempotency and limits still in memory): the difference is what
//! the in-memory chat index itself holds. A full run adds the in-memory
//! chat index beside the default idempotency store (SQLite), whose keys are
//! not held in memory.

use std::sync::Arc;
use std::time::Instant;

use crate::loadgen::{self, LoadConfig, Stop};
use crate::procs::Memory;
use crate::rig::{ConsoleSpec, Rig, operator_tokens, tokens_var};
use crate::workloads::Sends;

/// One console's memory before and after.
#[derive(Debug, Clone)]
pub(crate) struct MemoryRow {
    pub chat_index: &'static str,
    pub idempotency: &'static str,
    pub chats: u64,
    pub operators: u32,
    pub before: Memory,
    pub after: Memory,
    pub sends_per_sec: f64,
    pub errors: u64,
}

impl MemoryRow {
    /// Resident growth per chat, in bytes.
    pub(crate) fn bytes_per_chat(&self) -> f64 {
        (self.after.rss_kib.saturating_sub(self.before.rss_kib) * 1024) as f64
            / self.chats.max(1) as f64
    }
}

/// Runs the memory measurement for each `(chat index, idempotency)` pair of
/// backends in `configs`.
///
/// # Errors
///
/// When a process does not start or memory cannot be read.
pub(crate) fn run(
    rig: &Rig,
    configs: &[(&'static str, &'static str)],
) -> Result<Vec<MemoryRow>, String> {
    let s = &rig.settings;
    let stub = rig.stub()?;
    let tokens = operator_tokens(&rig.session, s.operators);
    let token_values: Vec<String> = tokens.iter().map(|(_, t)| t.clone()).collect();
    let mut rows = Vec::new();
    for &(backend, idempotency) in configs {
        let spec = ConsoleSpec::new(&format!("memory-{backend}-{idempotency}"))
            .var("SOFIIA_OPERATOR_TOKENS", tokens_var(&tokens))
            .var("SOFIIA_CHAT_INDEX_BACKEND", backend)
            .var("SOFIIA_IDEMPOTENCY_BACKEND", idempotency)
            .var("SOFIIA_RATE_LIMIT_BACKEND", "inmemory");
        let console = rig
            .console(&spec, &stub)
            .map_err(|e| format!("console: {e}"))?;
        let send = |label: &str, n: u64| {
            crate::rig::clear_stub_calls(&stub);
            loadgen::run(
                LoadConfig {
                    addr: console.addr(),
                    concurrency: s.concurrency,
                    stop: Stop::Requests(n),
                    threads: s.loadgen_threads,
                },
                Arc::new(
                    Sends::new(
                        console.addr(),
                        &token_values,
                        &format!("{label}-{backend}-{idempotency}"),
                        &format!("{}-{label}-{backend}-{idempotency}", rig.session),
                    )
                    .spread(),
                ),
            )
            .map_err(|e| format!("load generator: {e}"))
        };
        // Warm-up: pools, caches, allocator arenas and the first chats.
        send("warm", 500)?;
        let before = console.memory().map_err(|e| format!("memory: {e}"))?;
        let started = Instant::now();
        let result = send("mem", s.memory_chats)?;
        let took = started.elapsed();
        let after = console.memory().map_err(|e| format!("memory: {e}"))?;
        crate::progress(&format!(
            "memory: {backend} chat index, {idempotency} keys: {} KiB → {} KiB after {} chats ({:.0} sends/s, {} errors)",
            before.rss_kib,
            after.rss_kib,
            s.memory_chats,
            result.ok as f64 / took.as_secs_f64().max(1e-9),
            result.errors
        ));
        if result.errors > 0 {
            crate::progress(&format!("memory: errors: {}", result.error_summary()));
        }
        rows.push(MemoryRow {
            chat_index: backend,
            idempotency,
            chats: s.memory_chats,
            operators: s.operators,
            before,
            after,
            sends_per_sec: result.ok as f64 / took.as_secs_f64().max(1e-9),
            errors: result.errors,
        });
        console.stop();
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_per_chat_in_bytes() {
        let row = MemoryRow {
            chat_index: "inmemory",
            idempotency: "inmemory",
            chats: 1000,
            operators: 10,
            before: Memory {
                rss_kib: 10_000,
                hwm_kib: 10_000,
            },
            after: Memory {
                rss_kib: 11_000,
                hwm_kib: 12_000,
            },
            sends_per_sec: 0.0,
            errors: 0,
        };
        assert_eq!(row.bytes_per_chat(), 1024.0);
    }
}
