#!/usr/bin/env python3
"""Renders the release evidence document from what
ops/generate_release_evidence.sh collected.

    python3 ops/lib/render_evidence.py WORK_DIR OUTPUT.md [CONFIG_FILE]

Exit 0 when written without a FAILed criterion, 1 when written with one,
2 when it could not be written.
"""

import json
import os
import re
import sys
import urllib.parse
from pathlib import Path

CHECK = re.compile(r"^(PASS|WARN|FAIL|SKIP) ([^:]+?)(?:: (.*))?$")
RESULT = re.compile(r"^RESULT: (PASS|WARN|FAIL)$")
SUMMARY = re.compile(r"^(preflight|smoke): (.*)$")
TEST_RESULT = re.compile(
    r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored"
)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SEND_ROUTE = "/api/chats/{chat_id}/send"


class Work:
    def __init__(self, root: Path):
        self.root = root

    def text(self, name: str, default: str = "") -> str:
        path = self.root / name
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return default

    def has(self, name: str) -> bool:
        return (self.root / name).exists()

    def meta(self, key: str, default: str = "") -> str:
        return self.text(f"meta/{key}", default).strip() or default

    def rc(self, name: str):
        value = self.text(f"{name}.rc").strip()
        return int(value) if value.lstrip("-").isdigit() else None


# --- secrets --------------------------------------------------------------


def read_env_file(path: str) -> dict:
    values = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#") or "=" not in line:
                    continue
                if line.startswith("export "):
                    line = line[len("export "):]
                key, value = line.split("=", 1)
                value = value.strip()
                for q in ('"', "'"):
                    if len(value) >= 2 and value[0] == q and value[-1] == q:
                        value = value[1:-1]
                        break
                values[key.strip()] = value
    except OSError:
        pass
    return values


def secrets(config_file: str) -> list:
    """Every secret value the scripts could have seen."""
    sources = [read_env_file(config_file)] if config_file else []
    sources.append(dict(os.environ))
    found = set()
    for values in sources:
        for pair in values.get("SOFIIA_OPERATOR_TOKENS", "").split(","):
            if ":" in pair:
                found.add(pair.split(":", 1)[1].strip())
        for key in values.get("SOFIIA_AUDIT_KEYS", "").split(","):
            found.add(key.strip())
        for name in ("SOFIIA_SMOKE_TOKEN", "SOFIIA_SMOKE_AUDIT_KEY"):
            found.add(values.get(name, "").strip())
            file = values.get(name + "_FILE", "")
            if file:
                try:
                    with open(file, encoding="utf-8") as f:
                        found.add(f.readline().strip())
                except OSError:
                    pass
        urls = [values.get("SOFIIA_REDIS_URL", "")]
        urls += values.get("SOFIIA_REDIS_CLUSTER_NODES", "").split(",")
        for url in (u.strip() for u in urls):
            if "://" not in url:
                continue
            parts = urllib.parse.urlsplit(url)
            if parts.password:
                found.add(parts.password)
                found.add(urllib.parse.unquote(parts.password))
            for pw in urllib.parse.parse_qs(parts.query).get("pass", []):
                found.add(pw)
    # Very short values would redact ordinary words; the preflight refuses
    # secrets under 32 characters anyway.
    return sorted((s for s in found if len(s) >= 6), key=len, reverse=True)


# --- helpers ----------------------------------------------------------------


def checks(transcript: str) -> list:
    out = []
    for line in transcript.splitlines():
        m = CHECK.match(line)
        if m:
            out.append((m.group(1), m.group(2), m.group(3) or ""))
    return out


def result_of(transcript: str):
    for line in reversed(transcript.splitlines()):
        m = RESULT.match(line)
        if m:
            return m.group(1)
    return None


def summary_of(transcript: str) -> str:
    for line in reversed(transcript.splitlines()):
        m = SUMMARY.match(line)
        if m:
            return m.group(2)
    return ""


def find(lines: list, name: str):
    for status, check, detail in lines:
        if check == name:
            return status, detail
    return None


def fmt_line(status: str, check: str, detail: str) -> str:
    return f"{status} {check}" + (f": {detail}" if detail else "")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def code(text: str) -> str:
    return "````text\n" + text.rstrip("\n") + "\n````\n"


def metrics(text: str) -> list:
    samples = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        samples.append((m.group(1), dict(LABEL.findall(m.group(3) or "")), value))
    return samples


def metric_sum(samples: list, name: str, **labels) -> float:
    total = 0.0
    for n, lab, value in samples:
        if n != name:
            continue
        if all(
            (v(lab.get(k, "")) if callable(v) else lab.get(k) == v)
            for k, v in labels.items()
        ):
            total += value
    return total


def first_few(lines: list, most: int = 3) -> str:
    """The first few lines joined, and how many more there were."""
    shown = "; ".join(lines[:most])
    return shown + (f" (+{len(lines) - most} more)" if len(lines) > most else "")


def num(value: float) -> str:
    return f"{value:g}"


# --- sections ---------------------------------------------------------------


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    work = Work(Path(sys.argv[1]))
    output = sys.argv[2]
    config_file = sys.argv[3] if len(sys.argv) == 4 else ""

    config = None
    if work.rc("config") == 0:
        try:
            config = json.loads(work.text("config.json"))
        except json.JSONDecodeError:
            config = None
    config_error = work.text("config.err").strip().splitlines()
    config_error = next(
        (l.replace("sofiia-console: ", "", 1) for l in config_error if l.startswith("sofiia-console:")),
        config_error[-1] if config_error else "",
    )

    preflight_out = work.text("preflight.out")
    preflight_lines = checks(preflight_out)
    preflight_result = result_of(preflight_out)
    smoke_ran = work.has("smoke.out")
    smoke_out = work.text("smoke.out")
    smoke_lines = checks(smoke_out)
    smoke_result = result_of(smoke_out) if smoke_ran else None

    start = metrics(work.text("metrics_start.txt"))
    end = metrics(work.text("metrics_end.txt"))
    have_metrics = work.has("metrics_start.txt")
    final = end if work.has("metrics_end.txt") else start
    final_at = work.text("metrics_end.txt.at" if work.has("metrics_end.txt") else "metrics_start.txt.at").strip()

    doc = []
    w = doc.append
    version = work.meta("binary_version", "unknown").replace("sofiia-console ", "")
    git_sha = (config or {}).get("git_sha", "unknown")
    head = work.meta("head_sha")

    w("# sofiia-console release evidence\n")
    w(
        f"Generated {work.meta('generated_at')} (UTC) by `ops/generate_release_evidence.sh` "
        "for the go/no-go decision of the release readiness summary. Every state below "
        "was observed by the commands named with it; NOT RUN means no evidence was "
        "collected, not that the check passed.\n"
    )

    # 1) Scope & Version
    w("## 1) Scope & Version\n")
    if head:
        tag = work.meta("head_tag") or "untagged"
        dirty = work.meta("dirty", "unknown")
        head_line = f"`{head}` ({tag}; uncommitted changes: {dirty})"
        if git_sha in ("", "unknown"):
            match = "unknown (the binary does not know its revision)"
        elif head.startswith(git_sha):
            match = "yes"
        else:
            match = f"**no**: the binary is `{git_sha}`, HEAD is `{head[:12]}`"
    else:
        head_line = "not a git checkout"
        match = "unknown (no checkout)"
    nodes = (config or {}).get("nodes")
    if config is None:
        target = "unknown (the configuration does not parse)"
    elif nodes:
        target = ", ".join(f"{k} `{v}`" for k, v in nodes.items()) + f"; default node {config.get('default_node')}"
    else:
        target = "the built-in echo node only (SOFIIA_NODES unset)"
    rows = [
        ("Service", "`sofiia-console`"),
        ("Version", f"`{version}` (`sofiia-console --version`)"),
        ("Binary", f"`{work.meta('binary')}`" if work.meta("binary") else f"not found: {work.meta('binary_missing')}"),
        ("Git SHA of the binary", f"`{git_sha}`"),
        ("Git SHA of this checkout (HEAD)", head_line),
        ("Binary built from HEAD", match),
        ("Router SHA", f"`{work.meta('router_sha')}`" if work.meta("router_sha") else "not recorded (SOFIIA_EVIDENCE_ROUTER_SHA)"),
        ("Gateway SHA", f"`{work.meta('gateway_sha')}`" if work.meta("gateway_sha") else "not recorded (SOFIIA_EVIDENCE_GATEWAY_SHA)"),
        ("Deployment target (nodes)", target),
        ("Smoke target", f"`{work.meta('base_url')}`" if work.meta("base_url") else "none (no --base-url / SOFIIA_EVIDENCE_BASE_URL)"),
        ("Configuration source", f"environment + `{config_file}`" if config_file else "environment"),
        ("Date prepared (UTC)", work.meta("generated_at")),
        ("Prepared by", work.meta("prepared_by")),
    ]
    w("| item | value |\n| --- | --- |")
    for k, v in rows:
        w(f"| {k} | {cell(v)} |")
    w("")

    # 2) Configuration
    w("## 2) Effective configuration and residual risks\n")
    if config is None:
        w(f"`sofiia-console check-config` refused the configuration: {config_error or 'no output'}\n")
    else:
        tokens = config.get("operator_tokens", {})
        keys = config.get("audit_keys", {})
        settings = [
            ("bind", config.get("bind")),
            ("data dir", config.get("data_dir")),
            ("infer timeout", f"{config.get('infer_timeout_ms')} ms"),
            ("operators", f"{', '.join(tokens.get('operators', []))} (from {tokens.get('source')})"),
            ("audit keys", f"{keys.get('count')} configured"),
            ("audit retention", f"{config.get('audit_retention_days')} days"),
            ("audit backend", config.get("audit_backend")),
            ("chat index backend", config.get("chat_index_backend")),
            ("PostgreSQL", config.get("postgres_url") or "not used"),
            ("idempotency backend", f"{config.get('idempotency_backend')} (replayed for {config.get('idempotency_ttl_secs')} s)"),
            ("rate-limit backend", f"{config.get('rate_limit_backend')} (chat {config.get('rate_limit_chat')}, operator {config.get('rate_limit_operator')}, fail mode {config.get('rate_limit_fail_mode')})"),
            ("Redis", f"{config.get('redis_url')} (prefix `{config.get('redis_prefix')}`)" if config.get("redis_url")
             else f"Redis Cluster {config.get('redis_cluster_nodes')} (prefix `{config.get('redis_prefix')}`)" if config.get("redis_cluster_nodes")
             else "not used"),
            ("unknown SOFIIA_ variables", ", ".join(config.get("unknown_variables") or []) or "none"),
        ]
        w("From `sofiia-console check-config` (no secrets: token and key values are never printed).\n")
        w("| setting | value |\n| --- | --- |")
        for k, v in settings:
            w(f"| {k} | {cell(str(v))} |")
        w("")
        risks = []
        chat_backend = config.get("chat_index_backend")
        if chat_backend == "sqlite":
            risks.append("The chat index is a SQLite file on this host: no multi-instance HA for the chat index (`SOFIIA_CHAT_INDEX_BACKEND=postgres` removes this).")
        elif chat_backend == "redis":
            risks.append("The chat index is in Redis: its durability is Redis's (AOF with `appendfsync everysec` or stricter, `maxmemory-policy noeviction`); `SOFIIA_CHAT_INDEX_BACKEND=postgres` commits each exchange durably.")
        elif chat_backend == "postgres":
            risks.append("The chat index is in PostgreSQL, shared by every instance: its availability is that database's (replicate it and back it up).")
        else:
            risks.append("The chat index is in memory: every chat is lost on restart.")
        idem = config.get("idempotency_backend")
        if idem == "sqlite":
            risks.append("Idempotency keys are a SQLite file on this host (durable across restarts and crashes): a retry that reaches another instance is sent again; multi-instance needs `SOFIIA_IDEMPOTENCY_BACKEND=redis`.")
        elif idem != "redis":
            risks.append("Idempotency is in memory (`inmemory`): keys are lost on restart and may be evicted, after which a retry is sent again; use `sqlite` or `redis`.")
        if config.get("rate_limit_backend") != "redis":
            risks.append("Rate limits are per instance (`inmemory`): multi-instance consistency needs `SOFIIA_RATE_LIMIT_BACKEND=redis`.")
        elif config.get("rate_limit_fail_mode") == "open":
            risks.append("Rate-limit fail mode is `open`: while Redis is down, sends are not limited.")
        if config.get("redis_cluster_nodes"):
            risks.append("Keys and quotas are on a Redis Cluster: a primary that is down makes the sends whose keys it holds answer 503 until a replica takes over (give each primary a replica); a send refused by one primary's bucket briefly holds another's charge, so a concurrent send may be refused early, never allowed beyond its quota.")
        if config.get("audit_backend") == "postgres":
            risks.append("The audit trail is in PostgreSQL, one chain shared by every instance: back the database up, and keep the newest hash below off the host (someone who can rewrite the whole table can forge a chain that verifies).")
        else:
            audit_file = (config.get("sqlite_files") or {}).get("audit") or "sofiia.db"
            risks.append(f"The audit trail is SQLite on one host (not clustered; `SOFIIA_AUDIT_BACKEND=postgres` shares one trail across instances): back up `{audit_file}` and keep the anchor hash below off the host.")
        rules = find(preflight_lines, "alert-rules")
        if rules and rules[0] == "PASS":
            risks.append(f"Alert rules validated by the preflight: {rules[1]}.")
        else:
            risks.append(
                "Alert rules were not validated here"
                + (f" ({rules[1]})" if rules else "")
                + ": metric observation stays manual/runbook-driven until they are."
            )
        w("Residual risks for this configuration:\n")
        for r in risks:
            w(f"- {r}")
        w("")

    # 3) Test results
    w("## 3) Test results\n")
    mode = work.meta("tests_mode", "none")
    test_state, test_evidence = "NOT RUN", "not run: pass --run-tests, or --test-log FILE of a run"
    if mode == "none":
        w("NOT RUN. The README's test command `cargo test --workspace --all-features` takes minutes; "
          "pass `--run-tests` to run it here or `--test-log FILE` to record a run's log.\n")
    else:
        log = work.text("tests.log")
        results = [m for m in (TEST_RESULT.match(l.strip()) for l in log.splitlines()) if m]
        result_lines = [l.strip() for l in log.splitlines() if TEST_RESULT.match(l.strip())]
        passed = sum(int(m.group(2)) for m in results)
        failed = sum(int(m.group(3)) for m in results)
        ignored = sum(int(m.group(4)) for m in results)
        failed_tests = [l.strip() for l in log.splitlines() if re.match(r"^test .* \.\.\. FAILED$", l.strip())]
        skipped = sorted({l.strip().strip("!").strip() for l in log.splitlines() if "SKIPPED" in l})
        build_errors = [l for l in log.splitlines() if l.startswith("error")]
        rc = work.rc("tests")
        source = "run here" if mode == "run" else f"log `{work.meta('tests_source')}`"
        w(f"- Command: `{work.meta('tests_cmd')}` ({source})")
        w(f"- Exit code: {rc if rc is not None else 'not recorded (read from a log)'}")
        w(f"- Totals: {passed} passed, {failed} failed, {ignored} ignored (from {len(results)} `test result` lines)")
        if skipped:
            w(f"- Skipped loudly: {len(skipped)} (see below)")
        w("")
        ok = (rc == 0 if rc is not None else True) and failed == 0 and not build_errors and results and all(
            m.group(1) == "ok" for m in results)
        if not ok:
            test_state = "FAIL"
            first = failed_tests[0] if failed_tests else (build_errors[0] if build_errors else (
                "no test results" if not results else f"exit {rc}"))
            test_evidence = f"{failed} failed; {first}"
        elif skipped:
            test_state = "WARN"
            test_evidence = f"{passed} passed, {failed} failed, but {len(skipped)} skipped: {skipped[0]}"
        else:
            test_state = "PASS"
            test_evidence = f"{passed} passed, {failed} failed, {ignored} ignored ({len(results)} test binaries)"
        lines = result_lines + failed_tests + build_errors[:20]
        w("Result lines:\n")
        w(code("\n".join(lines) if lines else "(none)"))
        if skipped:
            w("Skipped tests:\n")
            w(code("\n".join(skipped)))

    # 4) Preflight
    w("## 4) Preflight\n")
    w(f"- Command: `{work.meta('preflight_cmd')}`")
    w(f"- Exit code: {work.rc('preflight')}")
    w(f"- Result: `RESULT: {preflight_result}` ({summary_of(preflight_out)})" if preflight_result else
      "- Result: none (the preflight did not finish)")
    w("")
    w(code(preflight_out or "(no output)"))

    # 5) Smoke
    w("## 5) Smoke\n")
    if smoke_ran:
        w(f"- Command: `{work.meta('smoke_cmd')}`")
        w(f"- Exit code: {work.rc('smoke')}")
        w(f"- Result: `RESULT: {smoke_result}` ({summary_of(smoke_out)})" if smoke_result else
          "- Result: none (the smoke did not finish)")
        w("")
        w(code(smoke_out or "(no output)"))
    else:
        w("NOT RUN: no smoke target. Pass `--base-url URL` (or `SOFIIA_EVIDENCE_BASE_URL`) of the deployed "
          "console, with `SOFIIA_SMOKE_TOKEN` and `SOFIIA_SMOKE_AUDIT_KEY`.\n")

    # 6) Audit trail
    w("## 6) Audit trail\n")
    verify_state, verify_evidence = "NOT RUN", "no audit trail to verify"
    if work.has("verify.out"):
        verify_rc = work.rc("verify")
        verify_text = work.text("verify.out").strip()
        verify_line = next((l for l in verify_text.splitlines() if l.startswith("audit chain")), "")
        w(f"- `sofiia-console audit-verify` on `{work.meta('audit_db')}`: exit {verify_rc}")
        w(f"- {verify_line or verify_text.splitlines()[-1] if verify_text else 'no output'}")
        verify_state = "PASS" if verify_rc == 0 and verify_line else "FAIL"
        verify_evidence = verify_line or f"exit {verify_rc}"
        anchor = work.text("anchor.out").strip()
        if work.rc("anchor") == 0 and anchor.count("\t") == 3:
            event_id, ts, action, digest = anchor.split("\t")
            w(f"- Newest event: #{event_id} at {ts} (`{action}`)")
            w(f"- **External anchor: `{digest}`**")
            w("")
            w(f"Keep this hash off this host (the release ticket, say). A later `audit-verify` that passes "
              f"while event #{event_id} still has this hash shows the trail up to this release was not "
              "rewritten; a trail rewritten wholesale would verify on its own but not match it.")
        else:
            w(f"- Newest event: not read ({anchor or 'no output'})")
    elif work.meta("audit_db"):
        w(f"NOT RUN: no audit trail at `{work.meta('audit_db')}`.")
    else:
        w("NOT RUN: the configuration could not be read, so the audit trail was not found.")
    w("")

    # 7) Metrics snapshot
    w("## 7) Metrics snapshot\n")
    if have_metrics:
        w(f"`GET {work.meta('base_url')}/metrics` at {final_at}, the `sofiia_*` samples "
          "sorted (histogram `_bucket` lines omitted; `_sum` and `_count` kept):\n")
        text = "\n".join(sorted(
            l for l in work.text("metrics_end.txt" if work.has("metrics_end.txt") else "metrics_start.txt").splitlines()
            if not re.match(r"^sofiia_\w+_bucket\{", l)
        ))
        w(code(text or "(no sofiia_* samples)"))
    else:
        reason = work.text("metrics_start.err").strip() or "no --base-url"
        w(f"NOT RUN: {reason}.\n")

    # 8) Go / No-Go
    rows = []
    no_metrics = ("no metrics: " + work.text("metrics_start.err").strip()
                  if work.meta("base_url") else "no metrics (no --base-url)")

    def smoke_row(names):
        if not smoke_ran:
            return "NOT RUN", "no smoke target"
        found = [(n, find(smoke_lines, n)) for n in names]
        missing = [n for n, f in found if f is None]
        failed = [fmt_line(f[0], n, f[1]) for n, f in found if f and f[0] == "FAIL"]
        if failed:
            return "FAIL", first_few(failed)
        if missing:
            return "NOT RUN", "the smoke has no line for " + ", ".join(missing)
        skipped = [fmt_line(f[0], n, f[1]) for n, f in found if f[0] == "SKIP"]
        if skipped:
            return "NOT RUN", "; ".join(skipped)
        return "PASS", "; ".join(fmt_line(f[0], n, f[1]) for n, f in found)

    # G1 preflight
    if preflight_result == "PASS":
        g1 = ("PASS", f"RESULT: PASS ({summary_of(preflight_out)})")
    elif preflight_result == "WARN":
        warns = [fmt_line(*c) for c in preflight_lines if c[0] == "WARN"]
        g1 = ("WARN", "needs the operator's acceptance: " + first_few(warns))
    elif preflight_result == "FAIL":
        fails = [fmt_line(*c) for c in preflight_lines if c[0] == "FAIL"]
        g1 = ("FAIL", first_few(fails) or "RESULT: FAIL")
    else:
        g1 = ("FAIL", f"the preflight did not finish (exit {work.rc('preflight')})")
    rows.append(("G1", "GO if", "Preflight is `PASS` (or only non-critical `WARN` accepted by operator)", *g1))

    # G2 smoke
    if not smoke_ran:
        g2 = ("NOT RUN", "no smoke target: --base-url / SOFIIA_EVIDENCE_BASE_URL")
    elif smoke_result == "PASS":
        g2 = ("PASS", f"RESULT: PASS ({summary_of(smoke_out)})")
    else:
        fails = [fmt_line(*c) for c in smoke_lines if c[0] == "FAIL"]
        g2 = ("FAIL", first_few(fails) or f"the smoke did not finish (exit {work.rc('smoke')})")
    rows.append(("G2", "GO if", "Smoke checks pass", *g2))

    # G3 5xx over the observation window
    def five_xx(samples):
        return metric_sum(samples, "sofiia_http_requests_total", status=lambda s: s.startswith("5"))

    if work.has("metrics_end.txt"):
        delta = five_xx(end) - five_xx(start)
        requests = metric_sum(end, "sofiia_http_requests_total") - metric_sum(start, "sofiia_http_requests_total")
        by_key = {}
        for n, lab, v in end:
            if n == "sofiia_http_requests_total" and lab.get("status", "").startswith("5"):
                key = (lab.get("method"), lab.get("route"), lab.get("status"))
                by_key[key] = by_key.get(key, 0) + v
        for n, lab, v in start:
            if n == "sofiia_http_requests_total" and lab.get("status", "").startswith("5"):
                key = (lab.get("method"), lab.get("route"), lab.get("status"))
                by_key[key] = by_key.get(key, 0) - v
        secs = work.meta("observe_secs")
        if delta > 0:
            detail = ", ".join(f"{m} {r} {s}: {num(v)}" for (m, r, s), v in sorted(by_key.items()) if v > 0)
            g3 = ("FAIL", f"{num(delta)} 5xx responses of {num(requests)} requests in {secs} s: {detail}")
        else:
            g3 = ("PASS", f"0 5xx responses of {num(requests)} requests in {secs} s ({work.text('metrics_start.txt.at').strip()} to {final_at})")
    elif have_metrics:
        g3 = ("NOT RUN", f"one snapshot only: {num(five_xx(start))} 5xx responses of {num(metric_sum(start, 'sofiia_http_requests_total'))} "
                         "requests since the console started; pass --observe 600")
    else:
        g3 = ("NOT RUN", no_metrics)
    rows.append(("G3", "GO if", "No unexpected 5xx spike during first 5–10 minutes", *g3))

    # G4 rate limits and idempotency
    state, evidence = smoke_row(["send replay", "metrics after traffic"])
    if state != "NOT RUN" and final:
        rl = ", ".join(
            f"{scope} {outcome} {num(metric_sum(final, 'sofiia_ratelimit_total', scope=scope, outcome=outcome))}"
            for scope in ("chat", "operator") for outcome in ("allowed", "rejected"))
        idem = ", ".join(
            f"{o} {num(metric_sum(final, 'sofiia_idempotency_total', outcome=o))}"
            for o in ("new", "replay", "conflict", "mismatch", "error"))
        evidence += f"; sofiia_ratelimit_total: {rl}; sofiia_idempotency_total: {idem}"
    rows.append(("G4", "GO if", "Rate-limit counters and idempotency behavior are within expected range", state, evidence))

    # N1 audit auth
    rows.append(("N1", "NO-GO if", "Strict audit auth fails (401/200 behavior broken)",
                 *smoke_row(["audit without key", "audit with a wrong key", "audit with key"])))

    # N2 Redis A/B
    idem_backend = (config or {}).get("idempotency_backend")
    state, evidence = smoke_row(["redis idempotency A/B"])
    if state == "NOT RUN" and idem_backend in ("inmemory", "sqlite") and smoke_ran:
        state, evidence = "N/A", f"the idempotency backend is {idem_backend}; " + evidence
    elif state == "NOT RUN" and idem_backend == "redis":
        evidence = "required: the idempotency backend is redis; " + evidence
    rows.append(("N2", "NO-GO if", "Redis idempotency A/B smoke fails", state, evidence))

    # N3 audit write/read
    rows.append(("N3", "NO-GO if", "Audit write/read fails", *smoke_row(["audit write/read"])))

    # N4 500s on the send path
    if have_metrics:
        errors = metric_sum(final, "sofiia_http_requests_total", route=SEND_ROUTE, status="500")
        sends = metric_sum(final, "sofiia_http_requests_total", route=SEND_ROUTE)
        if errors > 0:
            n4 = ("FAIL", f"{num(errors)} of {num(sends)} sends answered 500 since the console started (snapshot {final_at})")
        else:
            n4 = ("PASS", f"0 of {num(sends)} sends answered 500 since the console started (snapshot {final_at})")
    else:
        n4 = ("NOT RUN", no_metrics)
    rows.append(("N4", "NO-GO if", "Unexpected 500s on send path", *n4))

    rows.append(("S1", "supporting", "Test suite (`cargo test --workspace --all-features`) passes", test_state, test_evidence))
    rows.append(("S2", "supporting", "Audit chain verifies (`sofiia-console audit-verify`)", verify_state, verify_evidence))

    failed = [r[0] for r in rows if r[3] == "FAIL"]
    pending = [r[0] for r in rows if r[3] in ("NOT RUN", "WARN")]
    if failed:
        verdict = f"**NO-GO**: {', '.join(failed)} failed."
    elif pending:
        verdict = (f"**PENDING**: no criterion failed, but {', '.join(pending)} still "
                   f"need{'s' if len(pending) == 1 else ''} evidence or the operator's acceptance.")
    else:
        verdict = "**GO**: every criterion was observed to hold."

    w("## 8) Go / No-Go criteria\n")
    w("The criteria of the release readiness summary. Observed is the state of the check itself: for a "
      "NO-GO condition, PASS means it was checked and does not hold. States: PASS, WARN (needs the "
      "operator's acceptance), FAIL, NOT RUN (no evidence collected), N/A (does not apply to this "
      "configuration).\n")
    w("| id | kind | criterion | observed | evidence |\n| --- | --- | --- | --- | --- |")
    for rid, kind, criterion, state, evidence in rows:
        w(f"| {rid} | {kind} | {cell(criterion)} | {state} | {cell(evidence)} |")
    w("")
    w(f"Automated verdict: {verdict} The release decision stays the operator's.\n")

    # 9) Rollback
    w("## 9) Rollback readiness\n")
    previous = work.meta("previous_tag")
    w("- Rollback method: revert to the previous known-good SHA/tag"
      + (f" (previous tag: `{previous}`)" if previous else " (no earlier tag found in this checkout: record it here)")
      + ", then restart the affected services via docker compose/systemd as per the runbook.")
    w("- Estimated rollback time: to be filled in by the operator.")
    w("- Mandatory post-rollback smoke: `bash ops/smoke.sh BASE_URL` (`/api/health`, the idempotency "
      "replay and the Redis A/B smoke, audit auth and write/read).")
    w("")

    text = "\n".join(doc)
    redacted = 0
    for secret in secrets(config_file):
        if secret in text:
            redacted += text.count(secret)
            text = text.replace(secret, "[REDACTED]")
    if redacted:
        text += f"\n> Note: {redacted} occurrence(s) of a secret were found in the collected output and redacted.\n"
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"cannot write {output}: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001 - a crash must not pass for a NO-GO (exit 1)
        import traceback

        traceback.print_exc()
        sys.exit(2)
