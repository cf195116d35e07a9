"""The whole chain on this 2-core machine: sensors -> ingress -> sanitize -> egress -> hub ingress.

Figures (targets from issue 9):
* full chain packets/s, backscatter-sized packets, sensors sending as fast as the chain takes them
  (clock: first byte received by the site ingress -> last packet counted by the hub ingress): >= 300k packets/s;
* capture-to-hub latency p50 / p99 at 10k packets/s sustained, sensors paced at capture time
  (capture timestamp of each packet -> creation of its batch at the hub ingress), the first 5 s
  (new sessions on a cold chain: up to ~5 s) left out: p99 < 1 s;
* peak RSS of every hop while a backlog of 10x its buffer builds and drains: < 300 MB each.

Every part is the real program (tests/system/chaos.py's Chain: two embedded brokers, redis-server,
site ingress, queue, ``sanitize --workers 2``, egress, hub ingress, analyze) over plain TCP on
loopback; brokers, hops and sensors share the two cores. The pipeline a user would run
instead (d4-core rotation -> analyzer-d4-stdout | zcat | tcprewrite | d4-goclient) forwards a
packet only after its 300 s capture file is rotated, so its latency is minutes by design.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))  # the system-test harness runs the chain
sys.path.insert(0, str(HERE.parent / "tests" / "system"))
from common import Figure, report  # noqa: E402

from bridge import demo_sources as ds  # noqa: E402
from bridge.broker import free_port, wait_for_port  # noqa: E402
from bridge.pcap import global_header, record_offsets  # noqa: E402
from system.harness import metric, read_topic  # noqa: E402

import backlog  # noqa: E402
from chaos import Chain, HubCounter  # noqa: E402

THROUGHPUT_PACKETS = 2_400_000  # about 8 s of flow at the target: a sustained rate, not a burst
LATENCY_RATE = 10_000.0
LATENCY_SECONDS = 25.0
LATENCY_WARMUP_S = 5.0  # new sensor sessions and a cold chain: measured from 5 s on (sustained rate)

def sensor_sources(start_ns: int, seconds: float, rate: float, seed: int) -> dict[str, ds.Source]:
    """The demo's two live sensors carrying ``rate`` packets/s between them (the demo's third
    source, the d4-core queue, is left out: its files wait for rotation by design)."""
    share = 0.75  # the sensors watch 3/4 of the site's telescope (bridge/demo_sources.py)
    sources, _truth = ds.build_live(start_ns, seconds, rate / share, seed=seed)
    return {name: sources[name] for name in ds.LIVE_SENSORS}


def first_byte_time(chain: Chain, deadline: float) -> float:
    """Monotonic time just before the site ingress received its first byte of this run.

    Sensor start-up (a Python process loading its kernels) is not the chain's work: the clock
    starts at the last poll that still saw no bytes, which over- rather than under-states the
    time the chain took.
    """
    base = metric(chain.hops["site-ingress"].metrics(), "d4bridge_ingress_bytes_total")
    before = time.monotonic()
    while time.monotonic() < deadline:
        if metric(chain.hops["site-ingress"].metrics(), "d4bridge_ingress_bytes_total") > base:
            return before
        before = time.monotonic()
        time.sleep(0.01)
    raise RuntimeError("the sensors sent nothing")


def throughput(chain: Chain, work: Path) -> tuple[float, int, float]:
    """Both sensors send their capture file at full speed; returns (packets/s, packets, seconds)."""
    rate = 100_000.0
    captures = sensor_sources(1_700_000_000 * 10**9, THROUGHPUT_PACKETS / rate, rate, seed=11)
    total = sum(c.count for c in captures.values())
    hub = HubCounter(chain)
    base = hub.packets()
    senders = []
    for name, cap in captures.items():
        path = work / f"{name}.pcap"
        path.write_bytes(global_header(1, 65535, False) + cap.packets)
        senders.append(chain.sender(f"bench-{name}", str(path), env=None).start())
    deadline = time.monotonic() + 300
    started = first_byte_time(chain, deadline)
    # scraping /metrics costs the hub ingress CPU: coarse polls until the end is near
    while (done := hub.packets() - base) < total and time.monotonic() < deadline:
        time.sleep(0.25 if done < 0.95 * total else 0.01)
    elapsed = time.monotonic() - started
    for s in senders:
        s.wait(60)
    return (hub.packets() - base) / elapsed, total, elapsed


def latency(chain: Chain) -> tuple[float, float, int]:
    """Sensors paced at capture time, 10k packets/s in total; returns (p50 s, p99 s, packets measured)."""
    start_ns = time.time_ns() + 1_000_000_000
    captures = sensor_sources(start_ns, LATENCY_SECONDS, LATENCY_RATE, seed=12)
    hub = HubCounter(chain)
    base = hub.packets()
    senders = {}
    for name in captures:
        senders[name] = chain.sender(f"lat-{name}", "-", env=None).start()
    stop = threading.Event()
    threads = [threading.Thread(target=ds.pace, args=(cap, ds.HEADER, senders[n].proc.stdin.write, stop), daemon=True)
               for n, cap in captures.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LATENCY_SECONDS + 30)
    for s in senders.values():
        s.proc.stdin.close()
        s.wait(60)
    total = sum(c.count for c in captures.values())
    deadline = time.monotonic() + 120
    while hub.packets() - base < total and time.monotonic() < deadline:
        time.sleep(0.2)
    lat = []
    for r in read_topic(chain.hub.bootstrap, "d4.pcap", idle=2):
        packets = r.value["packets"]
        offs = record_offsets(packets)
        if not len(offs):
            continue
        hdr = np.frombuffer(packets, dtype=np.uint8)[offs[:, None] + np.arange(8)].copy().view("<u4")
        ts = hdr[:, 0].astype(np.int64) * 10**9 + hdr[:, 1].astype(np.int64) * 1000
        mine = ts >= start_ns + int(LATENCY_WARMUP_S * 1e9)  # this run's packets after the warm-up
        lat.append((r.value["created_ns"] - ts[mine]) / 1e9)
    values = np.concatenate(lat) if lat else np.zeros(0)
    if not len(values):
        return float("nan"), float("nan"), 0
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), len(values)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="d4bridge-bench-chain-"))
    figures: list[Figure] = []
    chain = Chain(work)
    try:
        chain.start()
        # the hub counts what the chain delivered; the analyzer reads alongside
        pps, n, secs = throughput(chain, work)
        load = Path("/proc/loadavg").read_text().split()[0]
        figures.append(Figure("full chain packets/s (2 sensors, backscatter-sized)", pps, "pkt/s", 300_000,
                              note=f"{n:,} packets in {secs:.1f} s, plain TCP, 2 brokers on the same 2 cores, "
                                   f"load average {load}"))
        p50, p99, m = latency(chain)
        load = Path("/proc/loadavg").read_text().split()[0]
        figures.append(Figure("capture-to-hub latency p50 at 10k pkt/s", p50, "s", None, False,
                              note=f"{m:,} packets after 5 s warm-up, load average {load}; old pipeline: >= 300 s"))
        figures.append(Figure("capture-to-hub latency p99 at 10k pkt/s", p99, "s", 1.0, False))
    finally:
        chain.stop()
    (work / "backlog").mkdir()
    rig = backlog.Rig(work / "backlog")
    redis_port = free_port()
    redis_proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                   "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", redis_port, 20, redis_proc)
        traces = [backlog.ingress_backlog(rig), backlog.queue_backlog(rig, f"redis://127.0.0.1:{redis_port}/0"),
                  backlog.consumer_backlog(rig, "sanitize"), backlog.egress_backlog(rig),
                  backlog.consumer_backlog(rig, "analyze")]
    finally:
        rig.close()
        redis_proc.terminate()
        redis_proc.wait(10)
    for t in traces:
        figures.append(Figure(f"peak RSS {t.hop} under a {t.backlog_mb:.0f} MB backlog (10x buffer)", t.peak_mb, "MB",
                              300, False, note=f"warm {t.warm_mb:.0f} MB, delivered {t.delivered:,.0f}/{t.expected:,.0f}"))
    report("chain", figures)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
