"""Synthetic telescope traffic: validity (dpkt + independent checksums), truth, determinism."""

from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import struct
import subprocess
from collections import Counter

import dpkt
import numpy as np
import pytest

from bridge import traffic as T
from bridge.backscatter.telescope import PrefixSet
from bridge.pcap import iter_packets, record_offsets

START = 1_700_000_000 * 10**9


def _ones(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ok(data: bytes, pseudo: bytes = b"") -> bool:
    """A correct Internet checksum makes the ones'-complement sum 0xffff."""
    return _ones(pseudo + data) == 0xFFFF


def _pseudo4(ip: dpkt.ip.IP, l4: bytes) -> bytes:
    return ip.src + ip.dst + struct.pack("!BBH", 0, ip.p, len(l4))


def _check_ipv4(raw: bytes, *, quoted: bool = False) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(raw)
    assert _ok(raw[:20]), "IPv4 header checksum"
    l4 = raw[20:ip.len] if not quoted else b""
    if ip.p in (6, 17) and l4:
        assert _ok(l4, _pseudo4(ip, l4)), f"L4 checksum proto {ip.p}"
    if ip.p == 1 and l4:
        assert _ok(l4), "ICMP checksum"
    return ip


@pytest.fixture(scope="module")
def mixed() -> T.GeneratedTraffic:
    scenario = T.Scenario(attacks=T.reference_attacks(0, 300) + (
        T.Attack("host_unreachable", "198.51.100.77", 25, 90_000.0, 10, 200),
    ), bursts=(T.Burst("rst_flood", "203.0.113.99", 21),), seed=7)
    return T.generate(scenario, START, 300, 40, chunk_packets=2000)


def test_every_packet_is_valid_ethernet_with_right_checksums(mixed: T.GeneratedTraffic) -> None:
    buf = io.BytesIO()
    T.write_pcap(buf, mixed)
    buf.seek(0)
    seen = Counter()
    for (_, frame), kind in zip(dpkt.pcap.Reader(buf), mixed.kind):
        name = T.KINDS[kind]
        seen[name] += 1
        eth = dpkt.ethernet.Ethernet(frame)
        if eth.type == dpkt.ethernet.ETH_TYPE_ARP:
            assert name == "arp" and eth.arp.op == dpkt.arp.ARP_OP_REQUEST
            assert ipaddress.IPv4Address(eth.arp.tpa) in ipaddress.IPv4Network("10.1.0.0/16")
            continue
        if eth.type == dpkt.ethernet.ETH_TYPE_IP6:
            ip6 = eth.data
            l4 = bytes(ip6.data)
            pseudo = ip6.src + ip6.dst + struct.pack("!IxxxB", len(l4), ip6.nxt)
            assert _ok(l4, pseudo), f"{name} IPv6 L4 checksum"
            continue
        raw = bytes(eth.data)
        ip = _check_ipv4(raw)
        if ip.p == 1 and ip.data.type in (3, 11):
            quote = raw[28:ip.len]  # raw bytes: re-serializing through dpkt could mask damage
            assert _ok(quote[:20]), f"{name}: quoted IPv4 header checksum"
            inner = dpkt.ip.IP(quote)
            if len(quote) >= inner.len and inner.p == 17:  # whole datagram quoted: its checksum must hold
                udp = quote[20:inner.len]
                assert _ok(udp, _pseudo4(inner, udp)), "quoted UDP checksum"
    assert set(seen) == set(T.KINDS), f"missing kinds: {set(T.KINDS) - set(seen)}"


def test_truth_matches_packets(mixed: T.GeneratedTraffic) -> None:
    n = T.monitored_addresses(("10.1.0.0/16",))
    assert n == 65536
    for index, truth in enumerate(mixed.truth):
        rows = np.nonzero(mixed.attack == index)[0]
        assert rows.size == truth.observed_packets
        expected = truth.pps * n / 2**32 * (truth.end_ns - truth.start_ns) / 1e9
        assert abs(rows.size - expected) <= 1
        assert truth.start_ns <= mixed.ts_ns[rows].min() and mixed.ts_ns[rows].max() < truth.end_ns
        for off in mixed.offsets[rows[:50]]:
            caplen = struct.unpack_from("<I", mixed.packets, off + 8)[0]
            frame = mixed.packets[off + 16:off + 16 + caplen]
            ip = dpkt.ethernet.Ethernet(frame).data
            tele = ipaddress.IPv4Address(ip.dst)
            assert tele in ipaddress.IPv4Network("10.1.0.0/16")
            assert socket.inet_ntoa(ip.src) == truth.responder
            if truth.kind in ("syn_flood", "rst_flood"):
                assert ip.p == 6 and ip.data.sport == truth.port
                want = dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK if truth.kind == "syn_flood" else dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK
                assert ip.data.flags == want
            elif truth.kind == "icmp_flood":
                assert ip.p == 1 and ip.data.type == 0
            else:
                quote = frame[14 + 28:]
                inner = dpkt.ip.IP(quote[:20])
                assert socket.inet_ntoa(inner.dst) == truth.victim
                assert inner.src == ip.dst, "spoofed source is the telescope address: no mismatch"
                assert {"udp": 17, "tcp": 6}[truth.protocol] == inner.p
                assert struct.unpack_from("!H", quote, 22)[0] == truth.port
    router = next(t for t in mixed.truth if t.kind == "ttl_exceeded")
    assert router.responder == "192.0.2.1" and router.victim == "203.0.113.40"
    unreach = next(t for t in mixed.truth if t.kind == "host_unreachable")
    assert unreach.responder == "198.51.100.1"


def test_scan_fingerprints(mixed: T.GeneratedTraffic) -> None:
    for name in ("mirai", "masscan", "syn_scan"):
        rows = np.nonzero(mixed.kind == T.KINDS.index(name))[0][:100]
        assert rows.size
        for off in mixed.offsets[rows]:
            caplen = struct.unpack_from("<I", mixed.packets, off + 8)[0]
            ip = dpkt.ethernet.Ethernet(mixed.packets[off + 16:off + 16 + caplen]).data
            tcp = ip.data
            assert tcp.flags == dpkt.tcp.TH_SYN
            seq_is_dst = tcp.seq == struct.unpack("!I", ip.dst)[0]
            if name == "mirai":
                assert seq_is_dst and tcp.dport in (23, 2323) and tcp.off == 5
            elif name == "masscan":
                assert tcp.win == 1024 and ip.ttl >= 200 and tcp.off == 5
            else:
                assert tcp.off > 5 and ip.ttl < 200


def test_records_are_time_ordered_and_labelled(mixed: T.GeneratedTraffic) -> None:
    assert np.array_equal(record_offsets(mixed.packets), mixed.offsets)
    assert np.all(np.diff(mixed.ts_ns) >= 0)
    ts = np.array([t for t, *_ in iter_packets(mixed.packets, nsec=False)])
    assert np.array_equal(ts, mixed.ts_ns)
    assert mixed.count == len(mixed.ts_ns) == len(mixed.kind) == len(mixed.attack)
    tele = PrefixSet(("10.1.0.0/16",))
    ipv4 = mixed.telescope_addr != 0
    assert tele.contains(mixed.telescope_addr[ipv4]).all()


def test_rate_sets_the_total_and_background_fills_it() -> None:
    scenario = T.Scenario(attacks=(T.Attack("syn_flood", "198.51.100.10", 443, 200_000.0, 0, 60),))
    g = T.generate(scenario, START, 60, 500)
    assert g.count == 30_000
    assert np.count_nonzero(g.attack == 0) == g.truth[0].observed_packets
    only_attacks = T.generate(scenario, START, 60, 0)
    assert only_attacks.count == g.truth[0].observed_packets
    assert set(only_attacks.kind.tolist()) == {T.KINDS.index("syn_flood")}


def test_deterministic_and_stream_equals_generate() -> None:
    scenario = T.Scenario(attacks=T.reference_attacks(5, 50), seed=3)
    a = T.generate(scenario, START, 60, 300, chunk_packets=1000)
    b = T.generate(scenario, START, 60, 300, chunk_packets=1000)
    assert a.packets == b.packets
    chunks = list(T.stream(scenario, START, 60, 300, chunk_packets=1000))
    assert len(chunks) > 10
    assert b"".join(c.packets for c in chunks) == a.packets
    assert all(c.ts_ns[-1] <= d.ts_ns[0] for c, d in zip(chunks, chunks[1:]))
    assert max(c.count for c in chunks) < 1500
    other = T.generate(T.Scenario(attacks=T.reference_attacks(5, 50), seed=4), START, 60, 300, chunk_packets=1000)
    assert other.packets != a.packets and other.count == a.count


def test_nanosecond_timestamps() -> None:
    g = T.generate(T.Scenario(), START + 123, 2, 1000, nsec=True)
    assert g.header.nsec
    assert np.any(g.ts_ns % 1000)
    assert np.array_equal(np.array([t for t, *_ in iter_packets(g.packets, nsec=True)]), g.ts_ns)


def test_site_views_overlap_and_clock_offsets() -> None:
    prefixes = ("10.1.0.0/16", "10.2.0.0/16", "10.2.128.0/17", "10.3.0.0/17")
    assert T.monitored_addresses(prefixes) == 65536 * 2 + 32768
    scenario = T.Scenario(telescope=prefixes, attacks=T.reference_attacks(0, 120), seed=5)
    g = T.generate(scenario, START, 120, 200)
    a = T.site_view(g, ("10.1.0.0/16",), -2.0)
    b = T.site_view(g, ("10.2.0.0/16",), 0.0)
    c = T.site_view(g, ("10.2.128.0/17", "10.3.0.0/17"), 2.0)
    assert np.array_equal(record_offsets(c.packets), c.offsets)
    ipv4 = np.count_nonzero(g.telescope_addr)
    overlap = PrefixSet(("10.2.128.0/17",)).contains(g.telescope_addr)
    assert a.count + b.count + c.count == ipv4 + np.count_nonzero(overlap)
    ts_c = np.array([t for t, *_ in iter_packets(c.packets)])
    assert np.array_equal(ts_c, c.ts_ns)
    # the same packet in b and c: identical bytes after the timestamp, clocks 2 s apart
    shared = int(np.nonzero(overlap)[0][0])
    addr = g.telescope_addr[shared]
    ib = int(np.nonzero(b.telescope_addr == addr)[0][0])
    ic = int(np.nonzero(c.telescope_addr == addr)[0][0])
    assert c.ts_ns[ic] - b.ts_ns[ib] == 2 * 10**9
    rec = lambda v, i: v.packets[v.offsets[i] + 8:(v.offsets[i + 1] if i + 1 < v.count else len(v.packets))]  # noqa: E731
    assert rec(b, ib) == rec(c, ic)


def test_unknown_kinds_are_refused() -> None:
    with pytest.raises(ValueError):
        T.Attack("smurf", "198.51.100.1")
    with pytest.raises(ValueError):
        T.Scenario(background=(("nope", 1.0),))


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed")
def test_tcpdump_reads_the_file(tmp_path, mixed: T.GeneratedTraffic) -> None:
    path = tmp_path / "t.pcap"
    T.write_pcap(path, mixed)
    out = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, check=True)
    assert len(out.stdout.splitlines()) == mixed.count
    assert "truncated" not in out.stdout and "bad" not in out.stderr.lower()
