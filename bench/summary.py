"""Print the tables of benchmark results again, from their JSON files in bench/results/.

``python bench/summary.py`` prints the newest result of each benchmark; ``--since STAMP``
(UTC, as in the file names: 20260101T000000Z) only those written since; or name files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, Report, Row

ORDER = ["push_to_healthy", "env_build", "webhook_burst", "reconcile_scale", "drift"]


def load(path: Path) -> Report:
    data = json.loads(path.read_text())
    report = Report(data["name"], data["title"], params=data.get("params", {}), notes=data.get("notes", []))
    report.rows = [Row(**row) for row in data["rows"]]
    return report


def newest(since: str | None) -> list[Path]:
    chosen: dict[str, Path] = {}
    for path in sorted(RESULTS.glob("*.json")):
        name, _, stamp = path.stem.rpartition("-")
        if since and stamp < since:
            continue
        chosen[name] = path  # sorted by name then stamp: the last one wins
    return [chosen[name] for name in sorted(chosen, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--since", help="only results written at or after this UTC stamp")
    args = parser.parse_args()
    paths = args.files or newest(args.since)
    if not paths:
        print("no results in bench/results/", file=sys.stderr)
        return 1
    missed = []
    for path in paths:
        report = load(path)
        print(report.table())
        print(f"({path.name})\n")
        missed += [f"{report.name}: {row.figure.strip()}" for row in report.rows
                   if row.met is False and "WHAT-IF" not in row.figure and "WHAT-IF" not in report.title]
    print("targets missed (WHAT-IF rows left out): " + ("none" if not missed else "\n  " + "\n  ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
