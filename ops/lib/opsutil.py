#!/usr/bin/env python3
"""Helpers of the release-day ops scripts (python3 standard library only).

    python3 ops/lib/opsutil.py json-get FILE KEY[.KEY...]
    python3 ops/lib/opsutil.py nodes FILE
    python3 ops/lib/opsutil.py shell-vars FILE PREFIX
    python3 ops/lib/opsutil.py setting NAME [CONFIG_FILE]
    python3 ops/lib/opsutil.py probe-http URL [TIMEOUT_SECS]
    python3 ops/lib/opsutil.py probe-redis URL [TIMEOUT_SECS]
    python3 ops/lib/opsutil.py probe-redis-cluster NODES [TIMEOUT_SECS]
    python3 ops/lib/opsutil.py probe-postgres URL [TIMEOUT_SECS]
    python3 ops/lib/opsutil.py sqlite-check FILE [integrity_check|quick_check]
    python3 ops/lib/opsutil.py audit-anchor FILE
    python3 ops/lib/opsutil.py redact-url URL
    python3 ops/lib/opsutil.py metric-sum FILE NAME [LABEL=VALUE|LABEL~REGEX ...]
    python3 ops/lib/opsutil.py ready-summary FILE checks|nodes|bad-nodes|backend:STORE
    python3 ops/lib/opsutil.py audit-find FILE REQUEST_ID

Every subcommand prints one result (or one line per item) on stdout and exits
0 on success, 1 on a negative result (with the reason on stdout) and 2 on a
usage error. Nothing here prints a secret: Redis passwords are sent over the
protocol, never placed on a command line or in a message.
"""

import json
import os
import re
import shlex
import shutil
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import urllib.parse
from datetime import datetime, timezone


def fail(message: str, code: int = 1) -> None:
    print(message)
    sys.exit(code)


# --- JSON ---------------------------------------------------------------


def json_get(path: str, dotted: str) -> None:
    """Prints one field: strings raw, null as nothing, lists comma-joined."""
    with open(path, encoding="utf-8") as f:
        value = json.load(f)
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            fail(f"no field {dotted}", 1)
        value = value[part]
    if value is None:
        print("")
    elif isinstance(value, bool):
        print("true" if value else "false")
    elif isinstance(value, list):
        print(",".join(str(v) for v in value))
    elif isinstance(value, dict):
        print(json.dumps(value, sort_keys=True))
    else:
        print(value)


def node_urls(nodes_map: dict) -> list:
    """(name, URL) per node, or per replica as `NAME[i]` (from 0, as the
    `replica` label of `sofiia_node_replica_up`) for a node with several."""
    pairs = []
    for name, urls in nodes_map.items():
        replicas = str(urls).split("|")
        if len(replicas) == 1:
            pairs.append((name, replicas[0]))
        else:
            pairs.extend((f"{name}[{i}]", url) for i, url in enumerate(replicas))
    return pairs


def nodes(path: str) -> None:
    """`NAME URL` per configured node (`NAME[i] URL` per replica), in
    configuration order; nothing for echo."""
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    for name, url in node_urls(report.get("nodes") or {}):
        print(f"{name} {url}")


def load_report(path: str) -> dict:
    """The check-config report: the pretty-printed JSON object, also when a
    one-line JSON log record precedes it on stdout."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        start = text.rfind("\n{\n")
        if start < 0:
            raise
        return json.loads(text[start + 1:])


def shell_vars(path: str, prefix: str) -> None:
    """Bash assignments of every field of a check-config report, for `eval`:
    `PREFIX<path_with_underscores>='value'` (lists comma-joined, null empty),
    and the nodes as the arrays PREFIXnode_names and PREFIXnode_urls (one
    entry per replica, named `NAME[i]`, for a node with several)."""
    if not re.fullmatch(r"[a-z_]+", prefix):
        fail(f"bad prefix {prefix}", 2)
    report = load_report(path)

    def emit(name: str, value) -> None:
        name = re.sub(r"[^a-z0-9_]", "_", name.lower())
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        print(f"{prefix}{name}={shlex.quote(text)}")

    def walk(base: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{base}_{key}" if base else key, inner)
        else:
            emit(base, value)

    nodes_map = report.get("nodes") or {}
    for key, value in report.items():
        if key != "nodes":
            walk(key, value)
    emit("nodes_set", bool(nodes_map))
    pairs = node_urls(nodes_map)
    names = " ".join(shlex.quote(n) for n, _ in pairs)
    urls = " ".join(shlex.quote(u) for _, u in pairs)
    print(f"{prefix}node_names=({names})")
    print(f"{prefix}node_urls=({urls})")


# --- settings -------------------------------------------------------------


def read_env_file(path: str) -> dict:
    """The console's env-file rules: KEY=VALUE, `#` comments, `export `, one
    pair of quotes around a value."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):]
            if "=" not in line:
                continue
            key, value = line.split("=", 1)
            value = value.strip()
            for quote in ('"', "'"):
                if len(value) >= 2 and value.startswith(quote) and value.endswith(quote):
                    value = value[1:-1]
                    break
            values[key.strip()] = value
    return values


def setting(name: str, config_file: str = "") -> None:
    """A setting as the console resolves it: the environment, else the env
    file. Exit 1 when neither sets it."""
    if name in os.environ:
        print(os.environ[name])
        return
    if config_file:
        values = read_env_file(config_file)
        if name in values:
            print(values[name])
            return
    sys.exit(1)


# --- probes ---------------------------------------------------------------


def describe_error(e: BaseException, host: str, timeout: float) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {host}"
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if isinstance(e, FileNotFoundError):
        return "no such socket"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


def probe_http(url: str, timeout: float) -> None:
    """GET {url}/v1/health as the console's readiness probe does it: no
    proxy, no redirects, any HTTP answer counts."""
    import http.client

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    path = parts.path.rstrip("/") + "/v1/health"
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout)
    elif parts.scheme == "http":
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    else:
        fail(f"unsupported scheme {parts.scheme!r}")
    try:
        conn.request("GET", path, headers={"User-Agent": "sofiia-preflight"})
        response = conn.getresponse()
        response.read(65536)
        print(f"HTTP {response.status}")
    except http.client.HTTPException as e:
        fail(f"answered something that is not HTTP ({type(e).__name__})")
    except BaseException as e:  # noqa: BLE001 - every failure is a result
        fail(describe_error(e, host, timeout))
    finally:
        conn.close()


def resp_command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
    return b"".join(out)


def resp_line(sock) -> str:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
        if len(data) > 4096:
            raise ConnectionError("reply line too long")
    return data[:-2].decode("utf-8", "replace")


def resp_reply(sock) -> str:
    """One reply: a status or error line as it is (`+OK`, `-ERR ...`), a
    bulk string's text."""
    line = resp_line(sock)
    if not line.startswith("$"):
        return line
    size = int(line[1:])
    if size < 0:
        return ""
    data = b""
    while len(data) < size + 2:
        chunk = sock.recv(size + 2 - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the server")
        data += chunk
    return data[:-2].decode("utf-8", "replace")


class RedisProbeError(Exception):
    """Why a Redis could not be asked: the message says it without a secret."""


def redis_session(url: str, timeout: float):
    """A socket to the Redis at `url` (a URL, or `host:port`), logged in
    when the URL carries credentials, as the console's connection is.
    Raises RedisProbeError when that fails."""
    if "://" not in url:
        url = "redis://" + url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    user = password = None
    host = parts.hostname or "127.0.0.1"
    try:
        if parts.scheme in ("redis", "rediss"):
            if parts.username:
                user = urllib.parse.unquote(parts.username)
            if parts.password:
                password = urllib.parse.unquote(parts.password)
            sock = socket.create_connection((host, parts.port or 6379), timeout=timeout)
            if parts.scheme == "rediss":
                context = ssl.create_default_context()
                if parts.fragment == "insecure":
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=host)
        elif parts.scheme in ("unix", "redis+unix"):
            host = parts.path
            user = (query.get("user") or [None])[0]
            password = (query.get("pass") or [None])[0]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(parts.path)
        else:
            raise RedisProbeError(f"unsupported scheme {parts.scheme!r}")
        sock.settimeout(timeout)
        if password:
            auth = ("AUTH", user, password) if user else ("AUTH", password)
            sock.sendall(resp_command(*auth))
            reply = resp_line(sock)
            if not reply.startswith("+"):
                sock.close()
                raise RedisProbeError(f"refused AUTH: {reply.lstrip('-')}")
        return sock
    except RedisProbeError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is a result
        raise RedisProbeError(describe_error(e, host, timeout)) from e


def redis_ask(url: str, timeout: float, *command: str) -> str:
    """The reply of the Redis at `url` to one command; raises
    RedisProbeError when it cannot be had."""
    sock = redis_session(url, timeout)
    try:
        with sock:
            sock.sendall(resp_command(*command))
            return resp_reply(sock)
    except Exception as e:  # noqa: BLE001 - every failure is a result
        raise RedisProbeError(describe_error(e, redact_url(url), timeout)) from e


def probe_redis(url: str, timeout: float) -> None:
    """PING (after AUTH when the URL carries credentials), as the console's
    connection does; prints PONG."""
    try:
        reply = redis_ask(url, timeout, "PING")
    except RedisProbeError as e:
        fail(str(e))
    if reply == "+PONG":
        print("PONG")
    else:
        fail(f"answered {reply.lstrip('-+')!r} instead of PONG")


def probe_redis_cluster(nodes: str, timeout: float) -> None:
    """`CLUSTER INFO` on every node of a `SOFIIA_REDIS_CLUSTER_NODES` list:
    each must answer and report `cluster_state:ok` (every slot served).
    Prints the nodes' count and the cluster's size."""
    listed = [n.strip() for n in nodes.split(",") if n.strip()]
    if not listed:
        fail("no node listed")
    size = "?"
    for node in listed:
        shown = redact_url(node)
        try:
            info = redis_ask(node, timeout, "CLUSTER", "INFO")
        except RedisProbeError as e:
            fail(f"{shown}: {e}")
        if info.startswith("-"):
            fail(f"{shown} is not a cluster node: {info.lstrip('-')}")
        fields = dict(
            line.split(":", 1) for line in info.splitlines() if ":" in line
        )
        if fields.get("cluster_state") != "ok":
            fail(f"{shown} reports cluster_state:{fields.get('cluster_state', '?')}")
        size = fields.get("cluster_size", size)
    print(f"{len(listed)} node(s) answer, cluster_state ok, {size} primaries serving slots")


def probe_postgres(url: str, timeout: float) -> None:
    """Opens a PostgreSQL session's startup as the console would (user and
    database from the URL, else PGUSER/USER) and reports what the server
    answers: that it asks for credentials or accepts the session, or the
    error it refuses it with (an unknown database, say). No password is
    sent."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5432
    user = urllib.parse.unquote(parts.username or "") or os.environ.get("PGUSER") or os.environ.get("USER") or "postgres"
    database = urllib.parse.unquote(parts.path.lstrip("/")) or user
    body = struct.pack("!i", 196608)
    for key, value in (("user", user), ("database", database)):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("!i", len(body) + 4) + body)
            # Messages until the server asks for credentials, is ready for
            # queries, or refuses.
            while True:
                kind, payload = pg_message(sock)
                if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
                    print("asks for credentials")
                    return
                if kind == b"Z":
                    print("session accepted")
                    return
                if kind == b"E":
                    fields = {f[:1]: f[1:].decode(errors="replace") for f in payload.split(b"\0") if f}
                    fail(f"refused the session: {fields.get(b'M', 'an error')}")
                if kind not in (b"R", b"S", b"K", b"N"):
                    fail(f"answered {kind!r}, not as PostgreSQL does")
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure is a result
        fail(describe_error(e, host, timeout))


def pg_message(sock: socket.socket) -> tuple:
    head = recv_exactly(sock, 5)
    length = struct.unpack("!i", head[1:])[0]
    return head[:1], recv_exactly(sock, length - 4)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


# --- SQLite ---------------------------------------------------------------


def sqlite_uri(path: str) -> str:
    # A read-only open of a WAL database whose -wal file is absent (the
    # console is stopped) would create -wal and -shm files owned by whoever
    # runs the check; `immutable` reads the main file alone, which then holds
    # everything.
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    if not os.path.exists(path + "-wal"):
        uri += "&immutable=1"
    return uri


def sqlite_check(path: str, pragma: str = "integrity_check") -> None:
    if pragma not in ("integrity_check", "quick_check"):
        fail(f"unknown check {pragma}", 2)
    uri = sqlite_uri(path)
    cli = shutil.which("sqlite3")
    if cli:
        tool = "sqlite3 CLI"
        proc = subprocess.run(
            [cli, "-readonly", "-batch", "-cmd", ".timeout 5000", uri, f"PRAGMA {pragma};"],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if proc.returncode != 0:
            fail(f"{pragma} could not run ({tool}): {(proc.stderr or proc.stdout).strip()}")
        rows = [r for r in proc.stdout.splitlines() if r.strip()]
    else:
        tool = "python3 sqlite3"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=5)
            try:
                rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}")]
            finally:
                conn.close()
        except sqlite3.Error as e:
            fail(f"{pragma} could not run ({tool}): {e}")
    if rows == ["ok"]:
        print(f"{pragma} ok ({tool})")
    else:
        more = f" (+{len(rows) - 1} more)" if len(rows) > 1 else ""
        fail(f"{pragma} found problems: {rows[0] if rows else 'no result'}{more}")


def audit_anchor(path: str) -> None:
    """`ID<TAB>TS<TAB>ACTION<TAB>HASH` of the newest audit event."""
    try:
        conn = sqlite3.connect(sqlite_uri(path), uri=True, timeout=5)
        try:
            row = conn.execute(
                "SELECT id, ts, action, hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        fail(f"cannot read {path}: {e}")
    if row is None:
        fail("the trail has no events")
    ts = datetime.fromtimestamp(row[1] / 1000, tz=timezone.utc)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    print(f"{row[0]}\t{stamp}\t{row[2]}\t{row[3]}")


# --- misc -----------------------------------------------------------------


def redact_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = "***@" + parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_sum(path: str, name: str, *filters: str) -> None:
    """Sum of the samples of `name` whose labels match every filter
    (`label=value` exact, `label~regex` full match); prints `SUM COUNT`."""
    wanted = []
    for f in filters:
        if "~" in f:
            k, v = f.split("~", 1)
            wanted.append((k, re.compile(v), True))
        elif "=" in f:
            k, v = f.split("=", 1)
            wanted.append((k, v, False))
        else:
            fail(f"bad filter {f}", 2)
    total = 0.0
    count = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = SAMPLE.match(line)
            if not m or m.group(1) != name:
                continue
            labels = dict(LABEL.findall(m.group(3) or ""))
            ok = True
            for k, v, is_regex in wanted:
                have = labels.get(k)
                if have is None or (v.fullmatch(have) is None if is_regex else have != v):
                    ok = False
                    break
            if ok:
                try:
                    total += float(m.group(4))
                    count += 1
                except ValueError:
                    pass
    print(f"{total:g} {count}")


def ready_summary(path: str, part: str) -> None:
    """One line from an /api/ready body: `name status (error), ...` of its
    checks or nodes, or the names of the nodes that are not ok."""
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    if part == "bad-nodes":
        print(", ".join(k for k, v in sorted(body.get("nodes", {}).items())
                        if v.get("status") != "ok"))
        return
    if part.startswith("backend:"):
        # The backend serving one store (`redis`, `sqlite`, `inmemory`).
        check = body.get("checks", {}).get(part[len("backend:"):], {})
        print(check.get("backend", ""))
        return
    if part not in ("checks", "nodes"):
        fail(f"unknown part {part}", 2)
    items = []
    for name, value in sorted(body.get(part, {}).items()):
        item = f"{name} {value.get('status')}"
        if value.get("backend"):
            item += f" [{value['backend']}]"
        if value.get("error"):
            item += f" ({value['error']})"
        items.append(item)
    print(", ".join(items))


def audit_find(path: str, request_id: str) -> None:
    """`ID HASH OUTCOME TARGET` of the event of an /api/audit page with this
    request id; exit 1 when the page has none."""
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    for event in body.get("items", []):
        if event.get("request_id") == request_id:
            print(f"{event['id']} {event['hash']} {event['outcome']} {event['target']}")
            return
    sys.exit(1)


def main() -> None:
    if len(sys.argv) < 2:
        fail(__doc__, 2)
    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        if cmd == "json-get" and len(args) == 2:
            json_get(*args)
        elif cmd == "nodes" and len(args) == 1:
            nodes(*args)
        elif cmd == "shell-vars" and len(args) == 2:
            shell_vars(*args)
        elif cmd == "setting" and len(args) in (1, 2):
            setting(*args)
        elif cmd == "probe-http" and len(args) in (1, 2):
            probe_http(args[0], float(args[1]) if len(args) > 1 else 2.0)
        elif cmd == "probe-redis" and len(args) in (1, 2):
            probe_redis(args[0], float(args[1]) if len(args) > 1 else 2.0)
        elif cmd == "probe-redis-cluster" and len(args) in (1, 2):
            probe_redis_cluster(args[0], float(args[1]) if len(args) > 1 else 2.0)
        elif cmd == "probe-postgres" and len(args) in (1, 2):
            probe_postgres(args[0], float(args[1]) if len(args) > 1 else 2.0)
        elif cmd == "sqlite-check" and len(args) in (1, 2):
            sqlite_check(*args)
        elif cmd == "audit-anchor" and len(args) == 1:
            audit_anchor(*args)
        elif cmd == "redact-url" and len(args) == 1:
            print(redact_url(args[0]))
        elif cmd == "metric-sum" and len(args) >= 2:
            metric_sum(*args)
        elif cmd == "ready-summary" and len(args) == 2:
            ready_summary(*args)
        elif cmd == "audit-find" and len(args) == 2:
            audit_find(*args)
        else:
            fail(__doc__, 2)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        fail(f"{cmd}: {e}", 1)


if __name__ == "__main__":
    main()
