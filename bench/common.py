"""Shared benchmark plumbing: machine description, result table, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    """One measured figure with its target; ``higher_is_better`` decides what 'met' means."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


def machine() -> dict:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def report(name: str, figures: list[Figure]) -> dict:
    """Print the figures as a table and write bench/results/<name>.json."""
    print(f"\n{name}")
    print(f"{'figure':<52} {'value':>14} {'unit':<10} {'target':>12}  met")
    for f in figures:
        target = "" if f.target is None else ("≥ " if f.higher_is_better else "≤ ") + fmt(f.target)
        met = {None: "", True: "yes", False: "NO"}[f.met]
        print(f"{f.name:<52} {fmt(f.value):>14} {f.unit:<10} {target:>12}  {met}  {f.note}")
    RESULTS_DIR.mkdir(exist_ok=True)
    data = {"benchmark": name, "machine": machine(),
            "figures": [dict(asdict(f), met=f.met) for f in figures]}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2))
    return data


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory (VmHWM) of a process, or of this one."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin_to_one_core() -> str:
    """Run this process on one core (as the tool we compare against runs), where possible."""
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return "pinned to one core"
    except (AttributeError, OSError):
        return "not pinned"


def run_quiet(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)
