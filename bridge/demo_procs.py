"""Process supervision and /metrics scraping for ``d4-bridge demo``.

Every part of the demo is a real program started as a subprocess in its own process group
(so Ctrl+C reaches only the demo, which then stops each part in order, and a part's own
children die with it). Output goes to one log file per part in the demo's work directory;
a part that dies early is reported with the end of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


class DemoError(RuntimeError):
    """The demo cannot go on; the message says which part failed and why."""


@dataclass
class Part:
    """One running program of the demo."""

    name: str
    argv: list[str]
    proc: subprocess.Popen
    log_path: Path
    metrics_port: int = 0
    one_shot: bool = False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Supervisor:
    """Starts the demo's parts and stops every one of them, whatever happens."""

    workdir: Path
    parts: list[Part] = field(default_factory=list)

    def start(self, name: str, argv: list[str], *, metrics_port: int = 0, stdin: int | None = None,
              stdout: Path | None = None, one_shot: bool = False, env: dict[str, str] | None = None) -> Part:
        """Start ``argv`` in a new process group; stderr (and stdout unless a file is given) go to ``<name>.log``."""
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log, open(stdout or os.devnull, "wb") as out:  # the child keeps its own fds
            proc = subprocess.Popen(
                argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=out if stdout is not None else log, stderr=log, start_new_session=True,
                env={**os.environ, **(env or {})}, cwd=self.workdir,
            )
        part = Part(name, argv, proc, log_path, metrics_port, one_shot)
        self.parts.append(part)
        return part

    def start_cli(self, name: str, command: str, *args: str, metrics_port: int = 0, **kwargs: Any) -> Part:
        """Start ``python -m bridge.cli <command> <args>`` (the same program as the d4-bridge script)."""
        argv = [sys.executable, "-m", "bridge.cli", command, *args]
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port)]
        return self.start(name, argv, metrics_port=metrics_port, **kwargs)

    def check(self) -> None:
        """Raise DemoError when a long-running part has exited."""
        for part in self.parts:
            if not part.one_shot and part.proc.poll() is not None:
                raise DemoError(f"{part.name} exited with status {part.proc.returncode}:\n{part.log_tail()}")

    def wait(self, part: Part, timeout: float) -> int:
        """Wait for a one-shot part; DemoError with its log when it times out."""
        try:
            return part.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{part.name} did not finish within {timeout:.0f} s:\n{part.log_tail()}") from None

    def stop(self, part: Part, timeout: float = 10.0) -> None:
        """SIGTERM the part's process group, then SIGKILL it after ``timeout`` seconds."""
        if part.proc.poll() is None:
            _signal_group(part.proc.pid, signal.SIGTERM)
            try:
                part.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(part.proc.pid, signal.SIGKILL)
                part.proc.wait()
        else:
            _signal_group(part.proc.pid, signal.SIGKILL)  # leftovers of an exited leader

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop every part, newest first, all groups signalled before waiting (bounded total time)."""
        running = [p for p in reversed(self.parts) if p.proc.poll() is None]
        for part in running:
            _signal_group(part.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for part in running:
            try:
                part.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(part.proc.pid, signal.SIGKILL)
                part.proc.wait()
        for part in self.parts:
            _signal_group(part.proc.pid, signal.SIGKILL)  # grandchildren left in a group


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- metrics


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int, timeout: float = 2.0) -> Samples:
    """All samples served on ``127.0.0.1:port/metrics``, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def scrape_or_empty(port: int) -> Samples:
    """``scrape``, or nothing when the endpoint does not answer (a part starting or gone)."""
    try:
        return scrape(port)
    except (OSError, urllib.error.URLError, ValueError):
        return {}


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Sum of ``name`` per value of ``label``."""
    out: dict[str, float] = {}
    for lab, v in samples.get(name, []):
        out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
    return out


def wait_for_metrics(endpoints: dict[str, int], supervisor: Supervisor, timeout: float) -> None:
    """Wait until every /metrics endpoint (name -> port) answers (each hop serves it once started)."""
    pending = dict(endpoints)
    deadline = time.monotonic() + timeout
    while pending:
        supervisor.check()
        pending = {name: port for name, port in pending.items() if not scrape_or_empty(port)}
        if pending and time.monotonic() > deadline:
            raise DemoError("no /metrics after %.0f s from: %s" % (timeout, ", ".join(pending)))
        if pending:
            time.sleep(0.2)
