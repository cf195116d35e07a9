"""Queue throughput: d4-core analyzer queue of rotated captures -> ``d4-bridge queue`` -> embedded broker.

File size: one 300-second rotation of a network telescope seeing 3,000 packets/s
(bridge.traffic's default telescope mix, ~72 bytes/packet): 900,000 packets, ~65 MB of
pcap, gzip level 6 as a d4-core file (~4x smaller). FILES such files, one per sensor,
are LPUSHed at once the way d4-core's file_compressor pushes them; the clock runs from
the push until the hop's processing list and the queue are empty, which it allows only
after the broker acknowledged every batch of a file (acks=all, idempotent producer).
Three rounds, interleaved with the d4-core pipeline's rounds; medians are reported.

Compared in the same run with what a d4-core user runs for the job:
``while :; do d4-stdout.py -t 1 -u Q -f | zcat > /dev/null; done`` (analyzer-d4-stdout exits
after one file; RPOP, whole file to stdout, zcat), with no broker and no delivery guarantee,
the floor cost of "read the queue and decompress the files".

Targets: >= 1 file/s (one process keeps up with 300 such sensors per 5-minute rotation), both
wall-clock and per CPU-second of the hop (the machine is shared: hop, broker, redis and other
work run on two cores, so the wall-clock figure depends on the load, printed in the note);
peak RSS of the hop <= 250 MB whatever the file size.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Figure, peak_rss_mb, report  # noqa: E402

import redis  # noqa: E402

from bridge import kafka, traffic  # noqa: E402
from bridge.broker import EmbeddedBroker, free_port, wait_for_port  # noqa: E402
from bridge.config import KafkaConfig  # noqa: E402
from bridge.pcap import global_header  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RATE = 3000  # packets/s seen by the telescope
ROTATION = 300  # seconds per file (d4-core's tcpdump -G 300)
FILES = int(os.environ.get("BENCH_QUEUE_FILES", "4"))
ROUNDS = 3  # medians of 3 interleaved rounds: the machine is shared
T0 = 1_764_000_000

# analyzer-d4-stdout -f, reduced to what it does for this job (§4 of the d4 reference).
D4_STDOUT = """
import sys, time, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), db=2)
while True:
    item = r.rpop(sys.argv[2])
    if item is None:
        time.sleep(1)
        continue
    try:
        with open(item, "rb") as f:
            sys.stdout.buffer.write(f.read())
    except FileNotFoundError:
        continue
    sys.exit(0)
"""


def make_files(root: Path) -> tuple[list[str], int, int]:
    """FILES rotated captures in d4-core's layout; return paths, packets per file, pcap bytes per file."""
    gen = traffic.generate(traffic.Scenario(seed=3), T0 * 10**9, ROTATION, RATE)
    blob = global_header(1, 65535, False) + gen.packets
    first: Path | None = None
    paths = []
    for i in range(FILES):
        sensor = uuidlib.uuid4().hex
        t = time.gmtime(T0)
        day = root / sensor / "1" / time.strftime("%Y/%m/%d", t)
        day.mkdir(parents=True)
        path = day / f"{sensor}-{time.strftime('%Y-%m-%d-%H%M%S', t)}.cap.gz"
        if first is None:
            with gzip.open(path, "wb", compresslevel=6) as f:
                f.write(blob)
            first = path
        else:
            shutil.copyfile(first, path)
        paths.append(str(path))
    return paths, gen.count, len(blob)


def push(lists: redis.Redis, queue: str, paths: list[str]) -> None:
    for p in paths:
        lists.lpush(f"analyzer:1:{queue}", p)
        lists.ltrim(f"analyzer:1:{queue}", 0, 10000)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class BridgeProcess:
    """``d4-bridge queue`` as a process on its own queue; each ``round`` pushes the files and times the drain."""

    def __init__(self, bootstrap: str, redis_port: int, lists: redis.Redis) -> None:
        self.lists = lists
        self.queue = str(uuidlib.uuid4())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "queue", "--bootstrap", bootstrap, "--redis",
             f"redis://127.0.0.1:{redis_port}/2", "--queue-uuid", self.queue, "--consumer", "bench", "--site",
             "bench", "--metrics-port", "0"], cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.wait_ready()
        self.idle_rss = rss_mb(self.proc.pid)

    def wait_ready(self) -> None:
        while not any(c.get("cmd") == "blmove" for c in self.lists.client_list()):  # waiting in BLMOVE
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read())
            time.sleep(0.01)

    def round(self, paths: list[str]) -> tuple[float, float]:
        """(wall seconds, hop CPU seconds) from the push until every file is acknowledged and removed."""
        self.wait_ready()
        cpu0 = cpu_seconds(self.proc.pid)
        start = time.perf_counter()
        push(self.lists, self.queue, paths)
        while self.lists.llen(f"analyzer:1:{self.queue}") or self.lists.llen(
                f"d4bridge:processing:1:{self.queue}:bench"):
            time.sleep(0.01)
        return time.perf_counter() - start, cpu_seconds(self.proc.pid) - cpu0

    def stop(self) -> dict:
        """Peak RSS and the hop's own summary of what it produced."""
        try:
            rss = peak_rss_mb(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
            log = self.proc.stderr.read()
        finally:
            self.proc.kill()
        m = re.search(r"stopped: (\d+) files \((\d+) packets\), \d+ lines, (\d+) failed", log)
        if not m:
            raise RuntimeError("no summary line from the hop:\n" + log[-2000:])
        return {"rss": rss, "files": int(m.group(1)), "packets": int(m.group(2)), "failed": int(m.group(3))}


def run_d4core(redis_port: int, lists: redis.Redis, paths: list[str], workdir: Path) -> float:
    queue = str(uuidlib.uuid4())
    script = workdir / "d4-stdout.py"
    script.write_text(D4_STDOUT)
    push(lists, queue, paths)
    key = f"analyzer:1:{queue}"
    start = time.perf_counter()
    for _ in paths:  # the user's shell loop: one d4-stdout -f | zcat per file
        subprocess.run(f"{sys.executable} {script} {redis_port} {key} | zcat > /dev/null", shell=True, check=True)
    elapsed = time.perf_counter() - start
    assert lists.llen(key) == 0
    return elapsed


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    port = free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 10, redis_proc)
        lists = redis.Redis(port=port, db=2)
        paths, per_file, pcap_bytes = make_files(work / "data")
        gz_bytes = os.path.getsize(paths[0])
        with EmbeddedBroker(log_file=str(work / "tansu.log")) as broker:
            kafka.create_topics(KafkaConfig(bootstrap=broker.bootstrap), 3)
            hop = BridgeProcess(broker.bootstrap, port, lists)
            bridge_rounds, base_rounds = [], []
            for _ in range(ROUNDS):  # interleaved, so both see the same machine load
                bridge_rounds.append(hop.round(paths))
                base_rounds.append(run_d4core(port, lists, paths, work))
            bridge = hop.stop()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    assert bridge["files"] == ROUNDS * FILES and bridge["packets"] == ROUNDS * FILES * per_file, bridge
    assert bridge["failed"] == 0, bridge
    t = statistics.median(w for w, _ in bridge_rounds)
    cpu = sum(c for _, c in bridge_rounds) / (ROUNDS * FILES)
    base = statistics.median(base_rounds)
    note = (f"{FILES} files x {per_file:,} packets ({pcap_bytes / 1e6:.0f} MB pcap, {gz_bytes / 1e6:.0f} MB gz): "
            f"{RATE} pkt/s x {ROTATION} s; median of {ROUNDS}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    report("queue", [
        Figure("d4-bridge queue: files/s (queue -> acked on d4.pcap)", FILES / t, "files/s", 1.0, note=note),
        Figure("d4-bridge queue: packets/s", FILES * per_file / t, "pkt/s"),
        Figure("d4-bridge queue: pcap MB/s", FILES * pcap_bytes / 1e6 / t, "MB/s"),
        Figure("d4-bridge queue: files per CPU-second of the hop process", 1 / cpu, "files/s", 1.0,
               note="what one free core would do (librdkafka threads included)"),
        Figure("d4-bridge queue: peak RSS", bridge["rss"], "MB", 250, higher_is_better=False,
               note=f"{hop.idle_rss:.0f} MB when idle before the files"),
        Figure("d4-core d4-stdout -f | zcat > /dev/null: files/s", FILES / base, "files/s",
               note="no broker, no acks, file lost if zcat dies"),
        Figure("d4-core d4-stdout -f | zcat > /dev/null: packets/s", FILES * per_file / base, "pkt/s"),
        Figure("d4-bridge time / d4-core pipeline time", t / base, "x"),
        Figure("real-time factor (sensors of this rate one hop keeps up with)", FILES * ROTATION / t, "sensors"),
    ])


if __name__ == "__main__":
    main()
