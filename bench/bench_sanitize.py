"""Sanitizer speed: `d4-bridge sanitize-file --pnat` and `--cryptopan-key` vs `tcprewrite --pnat`
on the same 1M-packet backscatter capture, in the same run, one core; consumer-group throughput
with 1 and 2 workers through the embedded broker.

Every figure uses the default policy, as a site would run it: payloads cut after the headers,
MACs zeroed (pnat) or hashed with the key (Crypto-PAn). tcprewrite keeps both, so the two tools
do not write the same bytes; they do the same job on the bytes tcprewrite rewrites.

Targets (issues 5 and 13), whole command, CPU: `--pnat` >= 1.5x tcprewrite's packets/s with
full coverage (quoted ICMP headers, ARP, IPv6, checksums) -- tcprewrite itself rewrites only the
outer headers; Crypto-PAn >= 1.0x.
"""

from __future__ import annotations

import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import Figure, pin_to_one_core, report  # noqa: E402

from bridge.pcap import PcapHeader, global_header, write_pcap  # noqa: E402

PACKETS = 1_000_000
PNAT = "10.1.0.0/16:192.168.0.0/16,[fd00:1::/32]:[2001:db8::/32]"  # the D4 tutorial's map + IPv6
TELESCOPE4 = (10 << 24) | (1 << 16)
PERIOD = 8192  # distinct template packets, tiled to PACKETS with fresh addresses
TARGET_RATIO = 1.5
CRYPTOPAN_TARGET_RATIO = 1.0


def _ip4(src: int, dst: int, proto: int, payload: bytes) -> bytes:
    h = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
    return h[:10] + struct.pack("!H", dpkt.in_cksum(h)) + h[12:] + payload


def _l4(src: bytes, dst: bytes, proto: int, seg: bytes, at: int) -> bytes:
    pseudo = src + dst + (struct.pack("!BBH", 0, proto, len(seg)) if len(src) == 4 else struct.pack("!IxxxB", len(seg), proto))
    return seg[:at] + struct.pack("!H", dpkt.in_cksum(pseudo + seg)) + seg[at + 2:]


def _tcp(src: bytes, dst: bytes, flags: int) -> bytes:
    return _l4(src, dst, 6, struct.pack("!HHIIBBHHH", 80, 40000, 7, 8, 0x50, flags, 65535, 0, 0), 16)


def _icmp(typ: int, body: bytes) -> bytes:
    h = struct.pack("!BBHI", typ, 3 if typ == 3 else 0, 0, 0) + body
    return h[:2] + struct.pack("!H", dpkt.in_cksum(h)) + h[4:]


def _eth(ethertype: int, payload: bytes) -> bytes:
    return b"\x02\0\0\0\0\1\x02\0\0\0\0\2" + struct.pack("!H", ethertype) + payload


def _v6(host: int, prefix: bytes) -> bytes:
    return prefix + host.to_bytes(16 - len(prefix), "big")


def template_packets(rng: np.random.Generator) -> list[bytes]:
    """PERIOD backscatter-like frames: replies of victims to spoofed telescope sources."""
    kinds = rng.choice(9, PERIOD, p=[.35, .20, .15, .05, .10, .05, .05, .03, .02])
    out = []
    for kind in kinds.tolist():
        victim = int(rng.integers(1 << 24, 223 << 24))
        tele = TELESCOPE4 | int(rng.integers(0, 1 << 16))
        v, t = victim.to_bytes(4, "big"), tele.to_bytes(4, "big")
        if kind in (0, 1):                 # SYN-ACK / RST-ACK
            frame = _eth(0x0800, _ip4(victim, tele, 6, _tcp(v, t, 0x12 if kind == 0 else 0x14)))
        elif kind in (2, 3):               # ICMP unreachable / time exceeded quoting the spoofed packet
            quoted = _ip4(tele, victim, 6 if kind == 2 else 17, _tcp(t, v, 0x02)[:8])
            router = int(rng.integers(1 << 24, 223 << 24))
            frame = _eth(0x0800, _ip4(router, tele, 1, _icmp(3 if kind == 2 else 11, quoted)))
        elif kind == 4:                    # DNS response
            seg = struct.pack("!HHHH", 53, 40000, 8 + 60, 0) + rng.bytes(60)
            frame = _eth(0x0800, _ip4(victim, tele, 17, _l4(v, t, 17, seg, 6)))
        elif kind == 5:                    # echo reply
            frame = _eth(0x0800, _ip4(victim, tele, 1, _icmp(0, rng.bytes(32))))
        elif kind in (6, 7):               # IPv6 SYN-ACK / ICMPv6 unreachable quoting it
            s6 = _v6(int(rng.integers(1, 1 << 62)), b"\x26\x00")
            d6 = _v6(int(rng.integers(1, 1 << 62)), b"\xfd\x00\x00\x01")
            if kind == 6:
                l4, nh = _tcp(s6, d6, 0x12), 6
            else:
                quoted = struct.pack("!IHBB", 0x60000000, 20, 6, 64) + d6 + s6 + _tcp(d6, s6, 0x02)[:8]
                body = struct.pack("!BBHI", 1, 4, 0, 0) + quoted
                l4, nh = _l4(s6, d6, 58, body, 2), 58
            frame = _eth(0x86DD, struct.pack("!IHBB", 0x60000000, len(l4), nh, 64) + s6 + d6 + l4)
        else:                              # ARP request from a telescope host
            frame = _eth(0x0806, struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, b"\x02\0\0\0\0\1", t, bytes(6),
                                             (TELESCOPE4 | 1).to_bytes(4, "big")))
        out.append(frame)
    return out


def capture(path: Path, n: int = PACKETS, seed: int = 11) -> int:
    """Write an n-packet capture: PERIOD templates tiled, outer IPv4 addresses re-drawn per
    packet (victims from a 50k pool, telescope hosts from 10.1.0.0/16). Checksums of the
    re-drawn packets are not recomputed: neither tool needs them valid to do its work."""
    rng = np.random.default_rng(seed)
    frames = template_packets(rng)
    period = b"".join(struct.pack("<IIII", 1_700_000_000, i, len(f), len(f)) + f for i, f in enumerate(frames))
    reps = -(-n // PERIOD)
    buf = np.frombuffer(period * reps, dtype=np.uint8).copy()
    sizes = np.array([16 + len(f) for f in frames])
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    ipv4 = np.array([f[12:14] == b"\x08\x00" for f in frames])
    base = (np.arange(reps)[:, None] * len(period) + starts[ipv4][None, :]).ravel()
    victims = rng.integers(1 << 24, 223 << 24, 50_000, dtype=np.uint32)
    src = victims[rng.integers(0, len(victims), len(base))].astype(">u4").view(np.uint8).reshape(-1, 4)
    dst = (TELESCOPE4 | rng.integers(0, 1 << 16, len(base), dtype=np.uint32)).astype(">u4").view(np.uint8).reshape(-1, 4)
    cols = np.arange(4)
    buf[(base + 16 + 26)[:, None] + cols] = src
    buf[(base + 16 + 30)[:, None] + cols] = dst
    records = buf[:int(sizes.sum()) * (n // PERIOD) + int(sizes[:n % PERIOD].sum())]
    write_pcap(path, PcapHeader(1, 65535, False), records.tobytes())
    return len(records)


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best_of(n: int, cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(least wall seconds, least CPU seconds) over n runs: on a shared machine the least is
    the run least disturbed by other work."""
    runs = [timed(cmd, env) for _ in range(n)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sanitize-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> None:
    src, out = work / "in.pcap", work / "out.pcap"
    size = capture(src)
    print(f"capture: {PACKETS:,} packets, {size / 1e6:.1f} MB in {src}")
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the build step of the ahead-of-time kernels (a no-op cost at run time); see bridge/aot.py
    subprocess.run([sys.executable, "-m", "bridge.aot"], check=True, capture_output=True, env=env)
    jit_env = dict(env, D4_JIT="1")
    ours_cmd = taskset + [sys.executable, "-m", "bridge.cli", "sanitize-file", str(src), str(out), f"--pnat={PNAT}"]
    tiny = work / "tiny.pcap"
    write_pcap(tiny, PcapHeader(1, 65535, False), b"")
    tiny_cmd = taskset + [sys.executable, "-m", "bridge.cli", "sanitize-file", str(tiny), str(work / "tiny.out"),
                          f"--pnat={PNAT}"]
    for e in (env, jit_env):
        subprocess.run(ours_cmd, check=True, capture_output=True, env=e)  # JIT cache and page cache warm
    figures: list[Figure] = []
    # The machine is shared (2 cores, other test runs): CPU seconds are the robust measure of
    # work; wall seconds (best of 3) are reported next to them.
    tcprewrite = shutil.which("tcprewrite")
    if tcprewrite:
        tr_wall, tr_cpu = best_of(3, taskset + [tcprewrite, f"--pnat={PNAT}", f"--infile={src}",
                                                f"--outfile={work / 'tr.pcap'}"])
        figures.append(Figure("tcprewrite --pnat, packets per CPU second", PACKETS / tr_cpu, "pkt/s",
                              note=f"{tr_cpu:.2f} s CPU, {tr_wall:.2f} s wall; outer headers only"))
    # the target applies to the installed build (make setup, the Docker image: ahead-of-time
    # kernels); the JIT row shows the fallback on a machine without a C compiler
    for label, e, target in (("ahead-of-time kernels", env, TARGET_RATIO), ("JIT kernels", jit_env, None)):
        wall, cpu = best_of(3, ours_cmd, e)
        start_wall, start_cpu = best_of(3, tiny_cmd, e)
        figures.append(Figure(f"sanitize-file --pnat ({label}), per CPU second", PACKETS / cpu, "pkt/s",
                              note=f"{cpu:.2f} s CPU, {wall:.2f} s wall; whole command"))
        figures.append(Figure(f"  start-up alone ({label}, empty capture)", start_cpu, "s CPU",
                              note=f"{start_wall:.2f} s wall"))
        if tcprewrite:
            fallback = "" if target else "; fallback without a C compiler, JIT start-up included"
            figures.append(Figure(f"  ratio to tcprewrite, whole command ({label}, CPU)", tr_cpu / cpu, "x",
                                  target, note=f"wall-clock ratio {tr_wall / wall:.2f}x{fallback}"))

    # the engine in this process, pinned to one core: what the long-running hop sees
    note = pin_to_one_core()
    from bridge.sanitize import policy_from_flags
    from bridge.sanitize.offline import sanitize_file

    runs = []
    for _ in range(3):
        c0 = time.process_time()
        summary = sanitize_file(src, out, policy_from_flags(pnat=PNAT), progress=False)
        runs.append((time.process_time() - c0, summary.seconds))
    assert summary.count == PACKETS and summary.dropped == 0, summary.lines()
    cpu, wall = min(runs)
    figures.append(Figure("sanitize_file() in-process (engine + file I/O), per CPU s", PACKETS / cpu, "pkt/s",
                          note=f"{cpu:.3f} s CPU, {wall:.3f} s wall; {note}"))
    if tcprewrite:
        figures.append(Figure("ratio in-process engine / tcprewrite (CPU)", tr_cpu / cpu, "x", TARGET_RATIO))

    key = work / "cryptopan.key"
    key.write_bytes(bytes(range(32)))
    c0 = time.process_time()
    cold = sanitize_file(src, out, policy_from_flags(cryptopan_key=str(key)), progress=False)
    cold_cpu = time.process_time() - c0
    figures.append(Figure("Crypto-PAn sanitize_file(), cold cache, per CPU s", PACKETS / cold_cpu, "pkt/s",
                          note=f"{cold_cpu:.2f} s CPU; every distinct address costs 32 (v6: 128) AES blocks once"))
    # every run starts with a cold Crypto-PAn cache (a new process), as a sanitize-file run does
    wall, cpu = best_of(3, taskset + [sys.executable, "-m", "bridge.cli", "sanitize-file", str(src), str(out),
                                      f"--cryptopan-key={key}"], env)
    figures.append(Figure("Crypto-PAn sanitize-file, whole command, per CPU s", PACKETS / cpu, "pkt/s",
                          note=f"{cpu:.2f} s CPU, {wall:.2f} s wall"))
    if tcprewrite:
        figures.append(Figure("Crypto-PAn sanitize-file whole command / tcprewrite", tr_cpu / cpu, "x",
                              CRYPTOPAN_TARGET_RATIO, note=f"CPU; wall-clock ratio {tr_wall / wall:.2f}x"))

    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))  # the group runs on every core
    figures += group_throughput(src, work)
    report("sanitize", figures)

def group_throughput(src: Path, work: Path) -> list[Figure]:
    """`d4-bridge sanitize --workers N` through the embedded broker. The workers start on an
    empty 4-partition topic and are warmed up; then the capture is produced as 256 KiB PcapBatch
    records; the figure is packets / (first produce -> last input offset committed)."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from bridge import kafka, records
    from bridge.assembler import PcapChunkBatch
    from bridge.broker import EmbeddedBroker
    from bridge.config import KafkaConfig
    from bridge.sanitize.offline import read_records

    header, body, offs, _ = read_records(src)
    cuts = [0] + [int(offs[i]) for i in np.unique(np.searchsorted(offs, np.arange(256 << 10, len(body), 256 << 10)))
                  if 0 < i < len(offs)] + [len(body)]
    batches = []
    for seq, (a, b) in enumerate(zip(cuts, cuts[1:])):
        count = int(np.searchsorted(offs, b) - np.searchsorted(offs, a))
        rec = records.pcap_batch(PcapChunkBatch(header, bytes(body[a:b]), count, 0, 0), sensor_uuid=f"{seq % 8:032x}",
                                 site="bench", source="d4", session_id="bench", seq=seq)
        batches.append((rec["sensor_uuid"], records.encode("PcapBatch", rec)))
    figures = []
    with EmbeddedBroker(log_file=work / "tansu.log") as broker:
        kcfg = KafkaConfig(bootstrap=broker.bootstrap, session_timeout_ms=6000, heartbeat_interval_ms=500,
                           statistics_interval_ms=0, linger_ms=5)
        admin = AdminClient({"bootstrap.servers": kcfg.bootstrap})
        for workers in (1, 2):
            group, tin, tout = f"bench-{workers}", f"bench.pcap.{workers}", f"bench.sanitized.{workers}"
            kafka.create_topics(kcfg, 4, topics=[tin, tout, kafka.TOPIC_DLQ])
            conf = work / f"sanitize-{workers}.toml"
            conf.write_text(f'site = "bench"\nlog_level = "WARNING"\n[kafka]\nbootstrap = "{kcfg.bootstrap}"\n'
                            f'session_timeout_ms = 6000\nheartbeat_interval_ms = 500\nstatistics_interval_ms = 0\n'
                            f'[sanitize]\nin_topic = "{tin}"\nout_topic = "{tout}"\ngroup = "{group}"\n'
                            f'pnat = "{PNAT}"\nworkers = {workers}\n')
            proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "sanitize", "--config", str(conf)],
                                    env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                                    stderr=open(work / f"sanitize-{workers}.log", "wb"))
            parts = [TopicPartition(tin, p) for p in range(4)]
            producer = kafka.make_producer(kcfg, "bench")
            # warm-up: one record per key, processed, then time for any rebalance to settle
            # (Tansu's DescribeGroups does not list members, so stability cannot be asked for)
            for key, value in batches[:8]:
                producer.produce(tin, value, key=key)
            producer.flush(60)
            _wait_committed(admin, group, parts, 8, 120)
            time.sleep(8)
            t0 = time.perf_counter()
            for key, value in batches:
                producer.produce(tin, value, key=key)
            producer.flush(60)
            produced = time.perf_counter() - t0
            done = _wait_committed(admin, group, parts, 8 + len(batches), 600)
            proc.terminate()
            proc.wait(60)
            if done is None:
                raise RuntimeError(f"{workers} worker(s) did not finish; see {work}/sanitize-{workers}.log")
            done -= t0
            figures.append(Figure(f"consumer group, {workers} worker(s), produce -> all committed", PACKETS / done,
                                  "pkt/s", note=f"{done:.2f} s ({produced:.2f} s of it producing); {len(batches)} "
                                                "records of 256 KiB, 4 partitions; broker, workers and producer "
                                                "share 2 cores"))
    return figures


def _wait_committed(admin, group: str, parts: list, target: int, timeout: float) -> float | None:
    """perf_counter() when the group's committed offsets sum to target, None on timeout."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if sum(max(tp.offset, 0) for tp in _committed(admin, group, parts)) >= target:
            return time.perf_counter()
        time.sleep(0.05)
    return None


def _committed(admin, group: str, parts: list) -> list:
    """Committed offsets of a consumer group."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = [ConsumerGroupTopicPartitions(group, parts)]
    return admin.list_consumer_group_offsets(request)[group].result(10).topic_partitions


if __name__ == "__main__":
    main()
