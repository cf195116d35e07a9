"""System-test harness: hops as restartable subprocesses, /metrics scraping, whole-topic reads,
packet multisets.

Every hop runs as ``python -m bridge.cli <hop> ...`` exactly as a user starts it, with its own
``--metrics-port`` and its log appended to one file across restarts. ``HopProcess.kill()`` is a
SIGKILL (no cleanup, no flush): what a power cut or the OOM killer does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bridge import records
from bridge.demo_procs import Samples, by_label, scrape  # noqa: F401  (by_label: for the tests)
from bridge.demo_procs import value as metric
from bridge.broker import free_port

REPO = Path(__file__).resolve().parents[2]

# Short group timeouts: a SIGKILLed consumer's partitions move to the survivors in seconds.
KAFKA_ENV = {
    "D4BRIDGE_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "D4BRIDGE_KAFKA_HEARTBEAT_INTERVAL_MS": "500",
    "D4BRIDGE_KAFKA_LINGER_MS": "5",
    "D4BRIDGE_KAFKA_STATISTICS_INTERVAL_MS": "0",
}


class HopProcess:
    """One hop as a subprocess that can be killed and restarted any number of times."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None,
                 metrics: bool = True, stdin: int | None = None) -> None:
        self.name = name
        self.args = args
        self.workdir = workdir
        self.env = {**os.environ, **KAFKA_ENV, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.metrics_port = free_port() if metrics else 0
        self.stdin = stdin
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{name}.log"
        self.starts = 0
        self.kills = 0
        self.unexpected_exits: list[int] = []
        self._lock = threading.Lock()  # a chaos thread and a watchdog may act on the same hop

    @property
    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "bridge.cli", *self.args]
        if self.metrics_port:
            argv += ["--metrics-port", str(self.metrics_port)]
        return argv

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "HopProcess":
        """Start the hop in its own process group (its worker processes die with it on kill)."""
        with self._lock:
            with open(self.log_path, "ab") as log:
                log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                                             stdin=self.stdin if self.stdin is not None else subprocess.DEVNULL,
                                             start_new_session=True)
            self.starts += 1
        return self

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the hop's whole process group and reap it."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                self.kills += 1
            self.proc = None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the hop finishes its batch and flushes); SIGKILL the group after ``timeout``."""
        with self._lock:
            proc = self.proc
            if proc is None:
                return None
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            _killpg(proc.pid, signal.SIGKILL)  # leftovers of the group
            return proc.returncode

    def check_exited(self) -> int | None:
        """The exit status if the hop ended by itself since its last start (recorded; kills are not)."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                self.unexpected_exits.append(code)
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc = None
                return code
        return None

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def metrics(self, timeout: float = 2.0) -> Samples:
        """Scrape /metrics: {(sample name, sorted labels): value}."""
        return scrape(self.metrics_port, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sanitize_workers(pid: int) -> list[int]:
    """Worker processes of a ``sanitize --workers N`` supervisor (multiprocessing spawn children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for child in children:
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd and b"resource_tracker" not in cmd:
            out.append(int(child))
    return sorted(out)


def wait_metrics(hop: HopProcess, timeout: float = 60.0) -> dict:
    """Wait until the hop answers on /metrics."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return hop.metrics(0.5)
        except OSError:
            if not hop.alive() or time.monotonic() > deadline:
                raise AssertionError(f"{hop.name} has no /metrics (alive={hop.alive()}):\n{hop.log_tail()}") from None
            time.sleep(0.2)


def rss_mb(pid: int) -> float:
    """Current resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# --------------------------------------------------------------------------- topics


@dataclass
class TopicRecord:
    partition: int
    offset: int
    value: dict


def read_topic(bootstrap: str, topic: str, expect: str = "PcapBatch", idle: float = 5.0,
               timeout: float = 300.0) -> list[TopicRecord]:
    """Every record of every partition, read until the high watermarks are reached (then
    ``idle`` quiet seconds, since transaction markers also take offsets)."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "reader-" + uuidlib.uuid4().hex,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "fetch.max.bytes": 8_000_000,
        "max.partition.fetch.bytes": 2_000_000,
    }
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=30)
        partitions = sorted(meta.topics[topic].partitions)
        high = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[TopicRecord] = []
        pos = {p: 0 for p in partitions}
        last = time.monotonic()
        deadline = last + timeout
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0.5)
            for m in msgs:
                if m.error() is not None:
                    continue
                out.append(TopicRecord(m.partition(), m.offset(), records.decode(m.value(), expect=expect)))
                pos[m.partition()] = m.offset() + 1
            if msgs:
                last = time.monotonic()
            # a commit marker may end a partition; Tansu's high watermark may also lag the log end
            reached = all(pos[p] >= high[p] - 2 for p in partitions)
            if reached and time.monotonic() - last > min(idle, 2.0) or time.monotonic() - last > idle:
                break
        return out
    finally:
        consumer.close()


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, tuple[int, int]]:
    """Per partition: (the group's committed offset, or the low watermark when it has none; high watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        out = {}
        for tp in consumer.committed(parts, timeout=10):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            out[tp.partition] = (tp.offset if tp.offset >= 0 else low, high)
        return out
    finally:
        consumer.close()


def group_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition: high watermark minus the group's committed offset."""
    return {p: high - committed for p, (committed, high) in group_offsets(bootstrap, group, topic).items()}


# --------------------------------------------------------------------------- packet multisets


def packet_digests(packets: bytes) -> np.ndarray:
    """64-bit digest of every record (header + data) of canonical packed records."""
    from bridge.pcap import record_offsets

    offs = record_offsets(packets)
    ends = np.append(offs[1:], len(packets))
    mv = memoryview(packets)
    return np.fromiter((hash(bytes(mv[a:b])) for a, b in zip(offs.tolist(), ends.tolist())), dtype=np.int64,
                       count=len(offs))


def digests_of(chunks: Iterable[bytes]) -> np.ndarray:
    parts = [packet_digests(c) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class Coverage:
    """How a multiset ``got`` covers a multiset ``want`` of packet digests."""

    want: int
    got: int
    missing: int  # packets of ``want`` absent from ``got`` (counted with multiplicity)
    extra_copies: int  # copies in ``got`` beyond the count in ``want`` (duplicates)
    unexpected: int  # packets in ``got`` that ``want`` never had


def coverage(want: np.ndarray, got: np.ndarray) -> Coverage:
    wv, wc = np.unique(want, return_counts=True)
    gv, gc = np.unique(got, return_counts=True)
    idx = np.searchsorted(gv, wv)
    idx[idx >= len(gv)] = 0
    present = (len(gv) > 0) & (gv[idx] == wv) if len(gv) else np.zeros(len(wv), bool)
    have = np.where(present, gc[idx] if len(gv) else 0, 0)
    missing = int(np.maximum(wc - have, 0).sum())
    extra = int(np.maximum(have - wc, 0).sum())
    gidx = np.searchsorted(wv, gv)
    gidx[gidx >= len(wv)] = 0
    known = (wv[gidx] == gv) if len(wv) else np.zeros(len(gv), bool)
    unexpected = int(gc[~known].sum())
    return Coverage(len(want), len(got), missing, extra, unexpected)
