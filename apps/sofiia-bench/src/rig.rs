//! Starting the measured processes with the settings every measurement
//! shares: the router stub node, the baseline proxy and consoles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::Settings;
use crate::procs::{Server, StartFailure, binary};

/// The node every send goes to.
pub(crate) const NODE: &str = "NODA1";

/// Quotas high enough never to refuse a measured send, so throughput is
/// measured rather than the limiter's refusals; the limiter still runs.
const NO_LIMIT: &str = "1000000/s";

/// Where the binaries are and where the run keeps its files.
#[derive(Debug)]
pub(crate) struct Rig {
    pub console_bin: PathBuf,
    pub stub_bin: PathBuf,
    pub self_bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    /// Unique per invocation: part of every key, chat and Redis prefix.
    pub session: String,
}

/// A console's settings beyond the shared ones.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsoleSpec {
    /// Name, also of its data dir and stderr file.
    pub name: String,
    /// Another console binary than the one found next to the harness.
    pub binary: Option<PathBuf>,
    /// `SOFIIA_*` variables to set.
    pub vars: BTreeMap<String, String>,
}

impl ConsoleSpec {
    pub(crate) fn new(name: &str) -> Self {
        ConsoleSpec {
            name: name.to_owned(),
            binary: None,
            vars: BTreeMap::new(),
        }
    }

    pub(crate) fn var(mut self, key: &str, value: impl Into<String>) -> Self {
        self.vars.insert(key.to_owned(), value.into());
        self
    }
}

/// `n` operators with their tokens: `op0000`.. and unguessable-looking
/// tokens of the same length as a typical generated one.
pub(crate) fn operator_tokens(session: &str, n: u32) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("op{i:05}"),
                format!("tok-{session}-{i:05}-bench-operator-token"),
            )
        })
        .collect()
}

/// `SOFIIA_OPERATOR_TOKENS` for `tokens`.
pub(crate) fn tokens_var(tokens: &[(String, String)]) -> String {
    tokens
        .iter()
        .map(|(op, tok)| format!("{op}:{tok}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Rig {
    /// Finds the binaries and makes the run's temporary directory.
    ///
    /// # Errors
    ///
    /// When a binary is missing or the directory cannot be made.
    pub(crate) fn new(settings: Settings, bin_dir: Option<&Path>) -> Result<Rig, String> {
        let console_bin = binary(bin_dir, "sofiia-console")?;
        let stub_bin = binary(bin_dir, "sofiia-router-stub")?;
        let self_bin =
            std::env::current_exe().map_err(|e| format!("cannot locate this binary: {e}"))?;
        let dir = tempfile::Builder::new()
            .prefix("sofiia-bench-")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let session = format!(
            "{:x}{:x}",
            std::process::id(),
            uuid::Uuid::new_v4().as_u128() as u32
        );
        Ok(Rig {
            console_bin,
            stub_bin,
            self_bin,
            dir,
            settings,
            session,
        })
    }

    /// The directory for logs and data.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a router stub node.
    ///
    /// # Errors
    ///
    /// When it does not start.
    pub(crate) fn stub(&self) -> Result<Server, String> {
        let mut cmd = Command::new(&self.stub_bin);
        cmd.args(["--bind", "127.0.0.1:0", "--name", NODE, "--workers"])
            .arg(self.settings.stub_workers.to_string());
        clean_env(&mut cmd);
        Server::start("router-stub", cmd, self.path()).map_err(|e| format!("router stub: {e}"))
    }

    /// Starts the baseline proxy in front of `stub`.
    ///
    /// # Errors
    ///
    /// When it does not start.
    pub(crate) fn baseline(&self, stub: &Server) -> Result<Server, String> {
        let mut cmd = Command::new(&self.self_bin);
        cmd.args(["serve-baseline", "--bind", "127.0.0.1:0", "--node", NODE])
            .arg("--node-url")
            .arg(stub.base_url())
            .arg("--http-workers")
            .arg(self.settings.server_workers().to_string());
        clean_env(&mut cmd);
        Server::start("baseline", cmd, self.path()).map_err(|e| format!("baseline: {e}"))
    }

    /// The data dir of the console `name`.
    pub(crate) fn data_dir(&self, name: &str) -> PathBuf {
        self.path().join(format!("data-{name}"))
    }

    /// The command that runs a console as `spec` says, in front of `stub`.
    pub(crate) fn console_command(&self, spec: &ConsoleSpec, stub: &Server) -> Command {
        let mut cmd = Command::new(spec.binary.as_ref().unwrap_or(&self.console_bin));
        clean_env(&mut cmd);
        let mut vars = BTreeMap::from([
            ("SOFIIA_BIND".to_owned(), "127.0.0.1:0".to_owned()),
            (
                "SOFIIA_DATA_DIR".to_owned(),
                self.data_dir(&spec.name).display().to_string(),
            ),
            (
                "SOFIIA_NODES".to_owned(),
                format!("{NODE}={}", stub.base_url()),
            ),
            ("SOFIIA_RATE_LIMIT_CHAT".to_owned(), NO_LIMIT.to_owned()),
            ("SOFIIA_RATE_LIMIT_OPERATOR".to_owned(), NO_LIMIT.to_owned()),
            // Short timeouts (the stub answers at once), so that a stop
            // is quick; the shutdown timeout must cover the slowest send.
            ("SOFIIA_INFER_TIMEOUT_MS".to_owned(), "5000".to_owned()),
            ("SOFIIA_STORE_TIMEOUT_MS".to_owned(), "500".to_owned()),
            ("SOFIIA_SHUTDOWN_TIMEOUT_SECS".to_owned(), "10".to_owned()),
            (
                "SOFIIA_REDIS_URL".to_owned(),
                self.settings.redis_url.clone(),
            ),
        ]);
        if let Some(workers) = self.settings.workers {
            vars.insert("SOFIIA_WORKERS".to_owned(), workers.to_string());
        }
        vars.extend(spec.vars.clone());
        cmd.envs(vars);
        cmd
    }

    /// Starts a console.
    ///
    /// # Errors
    ///
    /// [`StartFailure`] when it does not start; a console exits 2 for a
    /// setting it does not support.
    pub(crate) fn console(
        &self,
        spec: &ConsoleSpec,
        stub: &Server,
    ) -> Result<Server, StartFailure> {
        let cmd = self.console_command(spec, stub);
        Server::start(&format!("console-{}", spec.name), cmd, self.path())
    }

    /// Whether this console build accepts `SOFIIA_CHAT_INDEX_BACKEND=redis`,
    /// asked through `check-config` (exit 2 naming the variable when not).
    ///
    /// # Errors
    ///
    /// When `check-config` fails for another reason.
    pub(crate) fn console_supports_redis_chat_index(&self, stub: &Server) -> Result<bool, String> {
        let spec = ConsoleSpec::new("probe")
            .var("SOFIIA_CHAT_INDEX_BACKEND", "redis")
            .var("SOFIIA_OPERATOR_TOKENS", "probe:probe-token-0123456789")
            .var(
                "SOFIIA_REDIS_PREFIX",
                format!("sofiia-bench:{}:probe:", self.session),
            );
        let mut cmd = self.console_command(&spec, stub);
        cmd.arg("check-config");
        let output = cmd
            .output()
            .map_err(|e| format!("cannot run sofiia-console check-config: {e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(0) => Ok(true),
            Some(2) if stderr.contains("SOFIIA_CHAT_INDEX_BACKEND") => Ok(false),
            code => Err(format!(
                "sofiia-console check-config failed ({code:?}): {}",
                stderr.trim()
            )),
        }
    }
}

/// Makes the stub forget the calls it recorded (`DELETE /_stub/calls`). The
/// stub keeps every call in memory for tests; over millions of measured
/// sends that record would grow without bound, so it is cleared between runs.
pub(crate) fn clear_stub_calls(stub: &Server) {
    use std::io::{Read as _, Write as _};
    let attempt = || -> std::io::Result<()> {
        let mut conn = std::net::TcpStream::connect(stub.addr())?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(
            conn,
            "DELETE /_stub/calls HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            stub.addr()
        )?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)?;
        Ok(())
    };
    if let Err(e) = attempt() {
        crate::progress(&format!("could not clear the stub's call record: {e}"));
    }
}

/// Leaves out any `SOFIIA_*` variable of the caller's environment, so a
/// developer's settings cannot change what is measured.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("SOFIIA_")) {
            cmd.env_remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_valid_pairs() {
        let tokens = operator_tokens("s1", 3);
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[2].0, "op00002");
        let var = tokens_var(&tokens);
        assert_eq!(var.split(',').count(), 3);
        assert!(var.split(',').all(|e| e.split_once(':').is_some()));
        let unique: std::collections::BTreeSet<_> = tokens.iter().map(|t| &t.1).collect();
        assert_eq!(unique.len(), 3);
    }
}
