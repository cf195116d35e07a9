"""`make bench`: run every bench/bench_*.py, print one table, write bench/results.json.

Each benchmark runs in its own process (so one's memory and JIT state do not
colour another's), writes bench/results/<name>.json through bench/common.py,
and this script merges them with the machine's description.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS_DIR, fmt, machine  # noqa: E402

BUDGET_SECONDS = 540  # the whole suite must finish in under 10 minutes


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    started = time.monotonic()
    failures: list[str] = []
    ran: list[str] = []
    for script in scripts:
        left = BUDGET_SECONDS - (time.monotonic() - started)
        if left < 20:
            failures.append(f"{script.name}: not run, time budget exhausted")
            continue
        print(f"== {script.name}", flush=True)
        try:
            proc = subprocess.run([sys.executable, str(script)], timeout=left, cwd=HERE.parent)
        except subprocess.TimeoutExpired:
            failures.append(f"{script.name}: timed out")
            continue
        if proc.returncode != 0:
            failures.append(f"{script.name}: exit status {proc.returncode}")
        ran.append(script.stem.removeprefix("bench_"))
    merged = {"machine": machine(), "seconds": round(time.monotonic() - started, 1), "benchmarks": {}}
    rows = []
    for name in ran:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        merged["benchmarks"][name] = data["figures"]
        for f in data["figures"]:
            rows.append((name, f))
    merged["failures"] = failures
    (HERE / "results.json").write_text(json.dumps(merged, indent=2))
    print(f"\n{'benchmark':<12} {'figure':<52} {'value':>14} {'unit':<10} {'target':>12}  met")
    for name, f in rows:
        target = "" if f["target"] is None else ("≥ " if f["higher_is_better"] else "≤ ") + fmt(f["target"])
        met = {None: "", True: "yes", False: "NO"}[f["met"]]
        print(f"{name:<12} {f['name']:<52} {fmt(f['value']):>14} {f['unit']:<10} {target:>12}  {met}")
    for line in failures:
        print(f"FAILED {line}")
    print(f"\nwritten: {HERE / 'results.json'} ({merged['seconds']} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
