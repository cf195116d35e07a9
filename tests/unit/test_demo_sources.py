"""The demo's capture sources: a disjoint, complete split of one generated telescope run."""

from __future__ import annotations

import ipaddress
from collections import Counter

import numpy as np

from bridge import demo_sources as ds
from bridge import traffic
from bridge.demo_report import record_digests
from bridge.pcap import iter_packets

START = 1_790_000_000 * 10**9


def _telescope_addresses(src: ds.Source) -> tuple[list[ipaddress.IPv4Address], int]:
    """IPv4 telescope addresses (IPv4 destination or ARP target) and the number of IPv6 packets."""
    v4, v6 = [], 0
    for _, _, _, data in iter_packets(src.packets):
        ethertype = int.from_bytes(data[12:14], "big")
        if ethertype == 0x86DD:
            v6 += 1
        else:
            v4.append(ipaddress.IPv4Address(bytes(data[30:34] if ethertype == 0x0800 else data[38:42])))
    return v4, v6


def test_live_sources_split_the_run_by_telescope_prefix() -> None:
    sources, truth = ds.build_live(START, 4.0, 2000.0)
    whole = traffic.generate(ds._scenario(0.0, 4.0, 5, burst=True), START, 4.0, 2000.0)
    assert sum(s.count for s in sources.values()) == whole.count
    assert sum((record_digests(s.packets) for s in sources.values()), Counter()) == record_digests(whole.packets)
    for name, src in sources.items():
        assert src.count > 0 and np.all(np.diff(src.ts_ns) >= 0)
        v4, v6 = _telescope_addresses(src)
        prefix = ipaddress.IPv4Network(ds.SOURCE_PREFIXES[name])
        assert all(a in prefix for a in v4), name
        assert (v6 > 0) == (name == ds.IPV6_SOURCE)
    assert [a.kind for a in truth] == [a.kind for a in ds.demo_attacks(0.0, 4.0)] and len(truth) == 5


def test_backlog_is_the_queue_source_before_the_end_with_the_attacks_under_way() -> None:
    backlog = ds.build_backlog(START, 90.0, 300.0)
    assert backlog.name == ds.QUEUE_SOURCE
    assert backlog.ts_ns[0] >= START - 90 * 10**9 and backlog.ts_ns[-1] < START
    v4, v6 = _telescope_addresses(backlog)
    assert v6 == 0 and all(a in ipaddress.IPv4Network(ds.SOURCE_PREFIXES[ds.QUEUE_SOURCE]) for a in v4)
    # the attacks' victims answer from the start of the head start: more than the 60 s an attack needs
    victims = {ipaddress.IPv4Address(a.victim) for a in ds.demo_attacks(0, 1)}
    first_seen = {}
    for ts, _, _, data in iter_packets(backlog.packets):
        src = ipaddress.IPv4Address(bytes(data[26:30]))
        if src in victims:
            first_seen.setdefault(src, ts)
    assert len(first_seen) >= 4  # the router-answered attack's replies come from its router
    assert all(START - ts > 65 * 10**9 for ts in first_seen.values())


def test_source_slicing_and_concatenation() -> None:
    sources, _ = ds.build_live(START, 2.0, 1000.0)
    src = sources["sensor-2"]
    half = src.index_at(int(src.ts_ns[src.count // 2]))
    assert src.slice(0, half) + src.slice(half, src.count) == src.packets
    assert src.slice(3, 3) == b""
    both = src.then(sources["d4-core"])
    assert both.count == src.count + sources["d4-core"].count
    assert both.slice(src.count, both.count) == sources["d4-core"].packets
