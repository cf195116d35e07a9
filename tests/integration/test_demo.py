"""``d4-bridge demo``: the whole chain on this machine, as a user runs it.

A short run must deliver every captured packet (or account for it as a sanitizer drop), leak
nothing, detect the simulated attacks, and leave no process behind; Ctrl+C must stop every
part it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DEMO = [sys.executable, "-m", "bridge.cli", "demo"]


def processes_in(workdir: str) -> list[int]:
    """Pids whose working directory is the demo's work dir (every part runs there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == workdir:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def workdir_of(stderr: str) -> str:
    match = re.search(r"work dir (\S+)\)", stderr)
    assert match, stderr[-2000:]
    return match.group(1)


def test_short_demo_delivers_everything_leaks_nothing_and_finds_the_attacks(tmp_path) -> None:
    result = subprocess.run([*DEMO, "--seconds", "5", "--json"], capture_output=True, text=True, timeout=280)
    assert result.stdout.strip(), result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["problems"] == [], summary["problems"]
    assert result.returncode == 0, result.stderr[-3000:]

    sources = summary["sources"]
    assert set(sources) == {"sensor-1", "sensor-2", "d4-core"}
    assert all(src["captured"] > 0 for src in sources.values())
    dropped = sum(summary["sanitizer"]["dropped"].values())
    assert summary["captured"] == sum(src["captured"] for src in sources.values())
    assert summary["lost"] == 0
    assert summary["delivered_to_hub"] + dropped == summary["captured"]
    assert summary["sanitizer"]["input"] == summary["captured"] and summary["sanitizer"]["workers"] == 2

    assert summary["leaks"]["found"] == 0 and summary["leaks"]["leakcheck_exit"] == 0

    attacks = summary["attacks"]
    assert attacks["simulated"] == 5 and attacks["detected"] == attacks["simulated"]
    assert attacks["false_positives"] == []
    for a in attacks["list"]:  # each attack's newest event: final, one id, its rate within 20%
        assert a["status"] == "final" and a["attack_ids"] == 1, a
        assert abs(a["error"]) <= 0.2, a
    assert len(attacks["misp_events"]) == 5

    lat = summary["latency"]
    assert 0 < lat["sensors_p50_s"] <= lat["sensors_p99_s"] < 30
    assert all(url.startswith("http://127.0.0.1:") for url in summary["metrics"].values())
    assert {"site-ingress", "queue", "sanitize-1", "sanitize-2", "egress", "hub-ingress", "analyze"} <= set(
        summary["metrics"])

    assert processes_in(workdir_of(result.stderr)) == []
    assert not Path(workdir_of(result.stderr)).exists()  # a good run cleans up after itself


def test_ctrl_c_stops_every_part() -> None:
    proc = subprocess.Popen([*DEMO, "--seconds", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = ""
    try:
        deadline = time.monotonic() + 120
        while "feeding the d4-core backlog" not in stderr:  # every part is running
            assert time.monotonic() < deadline and proc.poll() is None, stderr[-3000:]
            stderr += proc.stderr.readline()
        workdir = workdir_of(stderr)
        assert len(processes_in(workdir)) >= 10  # brokers, redis, hops, sensors
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest[-2000:]
    assert processes_in(workdir) == []


def test_missing_redis_server_is_a_clear_error() -> None:
    result = subprocess.run([*DEMO, "--seconds", "1"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PATH": "/nonexistent"})
    assert result.returncode == 1
    assert "redis-server is not on PATH" in result.stderr
    assert processes_in(workdir_of(result.stderr)) == []
