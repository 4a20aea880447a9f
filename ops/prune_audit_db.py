#!/usr/bin/env python3
"""Audit retention pruning: a thin wrapper over `sofiia-console prune-audit`.

    python3 ops/prune_audit_db.py --dry-run
    python3 ops/prune_audit_db.py --retention-days 90 --batch-size 5000 --vacuum

The console's settings (SOFIIA_DATA_DIR, SOFIIA_AUDIT_RETENTION_DAYS, ...)
come from the environment as for the server. The binary is found in this
order: $SOFIIA_CONSOLE_BIN, bin/sofiia-console of the release this script
came in, `sofiia-console` on PATH, then this checkout's
target/release and target/debug builds.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path


def find_binary() -> str:
    explicit = os.environ.get("SOFIIA_CONSOLE_BIN")
    if explicit:
        return explicit
    root = Path(__file__).resolve().parent.parent
    # A release tarball ships the binary in bin/ beside ops/.
    shipped = root / "bin" / "sofiia-console"
    if shipped.is_file() and os.access(shipped, os.X_OK):
        return str(shipped)
    on_path = shutil.which("sofiia-console")
    if on_path:
        return on_path
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "sofiia-console"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    sys.exit(
        "prune_audit_db: sofiia-console not found; build it with "
        "`cargo build --release -p sofiia-console` or set SOFIIA_CONSOLE_BIN"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Delete audit events older than the retention period."
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="count what would be deleted; delete nothing")
    parser.add_argument("--retention-days", type=int,
                        help="keep this many days (default: SOFIIA_AUDIT_RETENTION_DAYS or 90)")
    parser.add_argument("--batch-size", type=int, help="events deleted per transaction")
    parser.add_argument("--vacuum", action="store_true",
                        help="rebuild the file afterwards to return freed space")
    args = parser.parse_args()

    command = [find_binary(), "prune-audit"]
    if args.dry_run:
        command.append("--dry-run")
    if args.retention_days is not None:
        command += ["--retention-days", str(args.retention_days)]
    if args.batch_size is not None:
        command += ["--batch-size", str(args.batch_size)]
    if args.vacuum:
        command.append("--vacuum")
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
