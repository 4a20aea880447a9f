//! Throwaway three-primary Redis Clusters: one shared per test process, or
//! a private one a test may take a node of down and up again.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use deadpool_redis::redis;

/// Three `redis-server --cluster-enabled yes` primaries on free loopback
/// ports, joined with `redis-cli --cluster create`, every slot covered.
///
/// [`RedisCluster::shared`] starts one per test process, on first use,
/// shared by its tests, each under its own key prefix.
/// [`RedisCluster::start`] starts a private one, stopped on drop, whose
/// nodes a test may stop and restart. Each node runs under a watchdog shell
/// that stops it once the test process is gone, however it ended, and
/// another removes the cluster's directory then.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    dir: PathBuf,
    /// Each node's watchdog, `None` while the node is stopped.
    nodes: Mutex<Vec<Option<Child>>>,
}

/// One node under its watchdog: arguments are the directory, the pid to
/// outlive and the client port (the cluster bus is port + 10000, as Redis
/// 6.2 and later all agree). The node keeps its cluster state in
/// `nodes-<port>.conf`, so a restarted node rejoins.
const NODE: &str = r#"
dir=$1; watched=$2; port=$3
redis-server --port "$port" --bind 127.0.0.1 \
  --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
  --cluster-node-timeout 2000 --dir "$dir" --save '' --appendonly no \
  >>"$dir/redis-$port.log" 2>&1 &
node=$!
while kill -0 "$watched" 2>/dev/null && kill -0 "$node" 2>/dev/null; do sleep 0.5; done
kill "$node" 2>/dev/null
wait "$node"
"#;

/// Removes the directory once the pid is gone.
const DIR: &str = r#"
while kill -0 "$2" 2>/dev/null; do sleep 1; done
rm -rf "$1"
"#;

fn watchdog(script: &str, args: &[String]) -> Result<Child, String> {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run sh ({e})"))
}

impl RedisCluster {
    /// The process's cluster, started on first use, or `None` (after a loud
    /// message) when it cannot start and Redis is not required.
    ///
    /// # Panics
    ///
    /// When Redis is required (`SOFIIA_REQUIRE_REDIS=1`) and the cluster
    /// cannot start.
    pub fn shared(test: &str) -> Option<&'static RedisCluster> {
        static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();
        match SHARED.get_or_init(Self::create) {
            Ok(cluster) => Some(cluster),
            Err(e) => crate::skip_or_fail(test, &format!("no Redis Cluster: {e}")),
        }
    }

    /// A private cluster, stopped on drop, or `None` (after a loud message)
    /// when it cannot start and Redis is not required.
    ///
    /// # Panics
    ///
    /// When Redis is required (`SOFIIA_REQUIRE_REDIS=1`) and the cluster
    /// cannot start.
    pub fn start(test: &str) -> Option<RedisCluster> {
        match Self::create() {
            Ok(cluster) => Some(cluster),
            Err(e) => crate::skip_or_fail(test, &format!("no Redis Cluster: {e}")),
        }
    }

    fn create() -> Result<Self, String> {
        // Three ports whose bus ports (+ 10000) are free too, all held at
        // once so that they differ, released just before the servers bind
        // them.
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..200 {
            if ports.len() == 3 {
                break;
            }
            let client =
                TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port ({e})"))?;
            let port = client.local_addr().map_err(|e| e.to_string())?.port();
            let Some(bus_port) = port.checked_add(10_000) else {
                continue;
            };
            if let Ok(bus) = TcpListener::bind(("127.0.0.1", bus_port)) {
                held.push(client);
                held.push(bus);
                ports.push(port);
            }
        }
        if ports.len() < 3 {
            return Err("no three free pairs of ports".into());
        }
        drop(held);
        let dir = std::env::temp_dir().join(format!(
            "sofiia-redis-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cluster = Self {
            nodes: Mutex::new(ports.iter().map(|_| None).collect()),
            ports,
            dir,
        };
        watchdog(
            DIR,
            &[
                cluster.dir.display().to_string(),
                std::process::id().to_string(),
            ],
        )?;
        for i in 0..cluster.ports.len() {
            cluster.spawn_node(i)?;
        }
        cluster
            .wait_until(Duration::from_secs(10), "answer", |c| {
                c.ports.iter().all(|&p| c.node_info(p, "PING").is_some())
            })
            .map_err(|e| format!("{e}; see {}/redis-<port>.log", cluster.dir.display()))?;
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli ({e})"))?;
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stdout)
            ));
        }
        cluster.wait_until_serving()?;
        Ok(cluster)
    }

    fn spawn_node(&self, i: usize) -> Result<(), String> {
        let child = watchdog(
            NODE,
            &[
                self.dir.display().to_string(),
                std::process::id().to_string(),
                self.ports[i].to_string(),
            ],
        )?;
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(child);
        Ok(())
    }

    /// Waits until every node reports every slot served by three
    /// primaries.
    ///
    /// # Errors
    ///
    /// When that does not happen within 30 s.
    pub fn wait_until_serving(&self) -> Result<(), String> {
        self.wait_until(Duration::from_secs(30), "agree on every slot", |c| {
            c.ports.iter().all(|&p| {
                c.node_info(p, "CLUSTER INFO").is_some_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains("cluster_known_nodes:3")
                })
            })
        })
    }

    /// Stops primary `i` (its data is gone; its slots are not served until
    /// it is back).
    pub fn stop_node(&self, i: usize) {
        let child = self.nodes.lock().unwrap_or_else(|e| e.into_inner())[i].take();
        if let Some(mut child) = child {
            let _ = Command::new("redis-cli")
                .args(["-p", &self.ports[i].to_string(), "shutdown", "nosave"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            // The watchdog ends with its node.
            let _ = child.wait();
        }
    }

    /// Starts primary `i` again on its port, with its cluster state, and
    /// waits until the cluster serves every slot again.
    ///
    /// # Panics
    ///
    /// If it does not.
    pub fn restart_node(&self, i: usize) {
        self.stop_node(i);
        self.spawn_node(i)
            .and_then(|()| self.wait_until_serving())
            .unwrap_or_else(|e| panic!("node {i} did not come back: {e}"));
    }

    fn wait_until(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if done(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the cluster's nodes did not {what} within {within:?}"
        ))
    }

    /// A node's reply to `command` (words split on spaces), as text.
    fn node_info(&self, port: u16, command: &str) -> Option<String> {
        let mut words = command.split(' ');
        let mut cmd = redis::cmd(words.next()?);
        for w in words {
            cmd.arg(w);
        }
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        cmd.query::<redis::Value>(&mut conn).ok().map(|v| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::SimpleString(s) => s,
            other => format!("{other:?}"),
        })
    }

    /// The nodes as `SOFIIA_REDIS_CLUSTER_NODES` takes them:
    /// `127.0.0.1:<port>,...`.
    pub fn nodes(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.ports.len() {
            self.stop_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
