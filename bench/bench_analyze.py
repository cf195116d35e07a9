"""Backscatter analyzer packets/s on one core: classify + aggregate whole PcapBatch-sized batches.

Target (issue 7): >= 1M packets/s. Input: 2M packets of synthetic telescope
traffic (bridge.traffic default mix: scans, Mirai, masscan, probes, noise with
one-packet backscatter from random hosts, plus the five §H attack shapes), cut
into ~256 KiB batches as the hub's d4.pcap carries them. The same work done the
way a Python analyzer usually does it (dpkt per packet, a dict per victim) is
measured on a sample for comparison.

Rates are packets per CPU second of this (single-threaded, pinned) process, so
other load on the machine does not distort them; wall-clock rates are printed too.

Multi-site figure (issue 14): 1M packets of one telescope split over 10 sites (a /18
each), every site announcing its address count, their batches interleaved in capture
order as a hub receives them: the final events' estimated rates against the truth
(all within 20%), and the wall time of classify + aggregate for the whole run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import dpkt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, pin_to_one_core, report  # noqa: E402

from bridge import traffic as T  # noqa: E402
from bridge.backscatter.aggregate import Aggregator  # noqa: E402
from bridge.backscatter.classify import classify  # noqa: E402
from bridge.backscatter.telescope import PrefixSet, Telescopes  # noqa: E402

PACKETS = 2_000_000
DURATION_S = 600.0
BATCH_BYTES = 256 * 1024
DPKT_SAMPLE = 50_000
SITES = 10
SITE_PACKETS = 1_000_000


def batches(g: T.GeneratedTraffic) -> list[bytes]:
    """Cut the run into whole-record batches of about BATCH_BYTES."""
    ends = np.append(g.offsets[1:], len(g.packets))
    cuts = np.searchsorted(ends, np.arange(BATCH_BYTES, len(g.packets) + BATCH_BYTES, BATCH_BYTES), side="right")
    out, start = [], 0
    for cut in np.unique(np.clip(cuts, 1, g.count)).tolist():
        end = int(ends[cut - 1])
        if end > start:
            out.append(g.packets[start:end])
            start = end
    return out


def multi_site() -> tuple[int, int, float, float, int, float]:
    """(attacks within 20% of the truth, attacks simulated, wall seconds, CPU seconds, packets, largest
    error) over SITES sites."""
    prefixes = [f"10.{1 + i}.0.0/18" for i in range(SITES)]
    scenario = T.Scenario(telescope=tuple(prefixes), attacks=T.reference_attacks(0, DURATION_S), seed=2)
    g = T.generate(scenario, 1_700_000_000 * 10**9, DURATION_S, SITE_PACKETS / DURATION_S)
    feed = []
    for i, prefix in enumerate(prefixes):
        view = T.site_view(g, (prefix,), 0.0)
        feed += [(int(classify(b).ts_ns[0]), f"site-{i}", b) for b in batches(view)]
    feed.sort(key=lambda f: f[0])
    agg = Aggregator(Telescopes([]))
    agg.tick(0, announcements=[(f"site-{i}", f"site-{i}", PrefixSet([p]).size) for i, p in enumerate(prefixes)])
    events = []
    start, wall = time.process_time(), time.perf_counter()
    for _, site, b in feed:
        events += agg.process(classify(b), site, site)
    events += agg.finish()
    wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - start
    finals = {e["victim"]: e for e in events if e["status"] == "final"}
    errors = [abs(finals[t.victim]["estimated_pps"] / t.pps - 1) if t.victim in finals else 1.0 for t in g.truth]
    packets = sum(classify(b).count for _, _, b in feed)
    return sum(e <= 0.2 for e in errors), len(g.truth), wall_s, cpu_s, packets, max(errors)


def dpkt_baseline(packets: bytes, n: int) -> float:
    """Packets/s of a per-packet dpkt classifier keeping a dict per (victim, proto)."""
    state: dict[tuple[bytes, int], list[int]] = {}
    start = time.process_time()
    pos = 0
    for _ in range(n):
        caplen = int.from_bytes(packets[pos + 8:pos + 12], "little")
        frame = packets[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP):
            continue
        key = None
        if isinstance(ip.data, dpkt.tcp.TCP):
            f = ip.data.flags
            if f & dpkt.tcp.TH_RST or (f & dpkt.tcp.TH_SYN and f & dpkt.tcp.TH_ACK):
                key = (ip.src, 6)
        elif isinstance(ip.data, dpkt.icmp.ICMP) and ip.data.type in (0, 3, 4, 5, 11, 12, 14, 16, 18):
            inner = getattr(ip.data.data, "data", None)
            key = (inner.dst, inner.p) if isinstance(inner, dpkt.ip.IP) else (ip.src, 1)
        if key is not None:
            entry = state.setdefault(key, [0, 0])
            entry[0] += 1
            entry[1] += ip.len
    return n / (time.process_time() - start)


def main() -> None:
    note = pin_to_one_core()
    scenario = T.Scenario(attacks=T.reference_attacks(0, DURATION_S), seed=1)
    started = time.perf_counter()
    g = T.generate(scenario, 1_700_000_000 * 10**9, DURATION_S, PACKETS / DURATION_S)
    gen_s = time.perf_counter() - started
    work = batches(g)
    telescopes = Telescopes(["10.1.0.0/16"])
    Aggregator(telescopes).process(classify(work[0]), "warm", "warm")  # load the JIT cache outside the timing

    start = time.process_time()
    for b in work:
        classify(b)
    classify_s = time.process_time() - start

    agg = Aggregator(telescopes)
    events = []
    start, wall = time.process_time(), time.perf_counter()
    for b in work:
        events += agg.process(classify(b), "bench", "sensor")
    total_s = time.process_time() - start
    wall_s = time.perf_counter() - wall
    declared = sum(e["status"] == "declared" for e in events)
    baseline = dpkt_baseline(g.packets, DPKT_SAMPLE)
    good, simulated, site_wall, site_cpu, site_packets, worst = multi_site()
    report("analyze", [
        Figure("analyzer classify+aggregate, 256 KiB batches", g.count / total_s, "pkt/cpu-s", 1_000_000,
               note=f"{note}; {len(work)} batches, {declared}/5 attacks declared, {agg.stats.evicted} evicted"),
        Figure("same, wall clock", g.count / wall_s, "pkt/s"),
        Figure("classify only", g.count / classify_s, "pkt/cpu-s"),
        Figure("dpkt per-packet classify + dict (comparison)", baseline, "pkt/cpu-s", note=f"{DPKT_SAMPLE} packets"),
        Figure("speed-up over dpkt per packet", (g.count / total_s) / baseline, "x"),
        Figure(f"{SITES} sites, {SITE_PACKETS // 1000}k packets: final rates within 20%", good, f"of {simulated}",
               simulated, note=f"largest error {worst:.1%}"),
        Figure(f"{SITES} sites, {SITE_PACKETS // 1000}k packets: wall time", site_wall, "s",
               note=f"{site_cpu:.2f} CPU s for {site_packets} packets at the sites; classify + aggregate, "
                    "batches interleaved in capture order"),
        Figure("traffic generator", g.count / gen_s, "pkt/s", note=f"{g.count} packets, {len(g.packets) / 1e6:.0f} MB"),
    ])


if __name__ == "__main__":
    main()
