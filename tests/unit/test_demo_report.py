"""The demo's accounting: attribution at the hub, attack matching, content comparison."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dpkt

from bridge import demo_sources as ds
from bridge.demo_report import _attribute, compare_content, match_attacks, percentiles, pnat_v4, record_digests
from bridge.pcap import LINKTYPE_ETHERNET, PcapHeader, pack_record, write_pcap
from bridge.traffic import SimulatedAttack

HUB_PREFIXES = [(n, pnat_v4(p, "10.1.0.0/16", "192.168.0.0/16")) for n, p in ds.SOURCE_PREFIXES.items()]


def _eth(payload: dpkt.Packet, ethertype: int) -> memoryview:
    return memoryview(bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=ethertype, data=payload)))


def test_pnat_keeps_host_bits() -> None:
    assert pnat_v4("10.1.128.0/18", "10.1.0.0/16", "192.168.0.0/16") == ipaddress.IPv4Network("192.168.128.0/18")
    assert [str(net) for _, net in HUB_PREFIXES] == ["192.168.0.0/17", "192.168.128.0/18", "192.168.192.0/18"]


def test_packets_are_attributed_by_their_sanitized_telescope_address() -> None:
    def ip(dst: str) -> memoryview:
        return _eth(dpkt.ip.IP(src=bytes([198, 51, 100, 1]), dst=ipaddress.IPv4Address(dst).packed,
                               p=6, data=dpkt.tcp.TCP()), 0x0800)

    assert _attribute(ip("192.168.3.4"), HUB_PREFIXES, "sensor-1") == "sensor-1"
    assert _attribute(ip("192.168.130.4"), HUB_PREFIXES, "sensor-1") == "sensor-2"
    assert _attribute(ip("192.168.200.4"), HUB_PREFIXES, "sensor-1") == "d4-core"
    assert _attribute(ip("10.1.200.4"), HUB_PREFIXES, "sensor-1") == ""  # not a sanitized address
    arp = dpkt.arp.ARP(spa=bytes([192, 168, 0, 1]), tpa=bytes([192, 168, 250, 9]))
    assert _attribute(_eth(arp, 0x0806), HUB_PREFIXES, "sensor-1") == "d4-core"
    assert _attribute(_eth(dpkt.ip6.IP6(nxt=59, plen=0), 0x86DD), HUB_PREFIXES, "sensor-1") == "sensor-1"


def _truth(kind: str, victim: str, protocol: str) -> SimulatedAttack:
    return SimulatedAttack(kind, victim, protocol, 80, 1e6, 0, 1, victim, 65536, 15.0, 100)


def test_attacks_are_reported_by_their_newest_event() -> None:
    truth = [_truth("syn_flood", "198.51.100.10", "tcp"), _truth("icmp_flood", "203.0.113.50", "icmp")]
    base = {"victim": "198.51.100.10", "protocol": "tcp", "sites": {"s": 1}, "monitored_addresses": 65536}
    events = [
        dict(base, attack_id="a", seq=0, status="declared", packets=40, estimated_pps=1000.4),
        dict(base, attack_id="a", seq=2, status="final", packets=90, estimated_pps=2000.6),
        dict(base, attack_id="a", seq=1, status="update", packets=95, estimated_pps=3000.0),  # arrived late: older
        dict(base, victim="203.0.113.50", protocol="udp", attack_id="b", seq=0, status="declared", packets=30,
             estimated_pps=10.0),
    ]
    rows, false_positives = match_attacks(truth, events)
    assert [(r["kind"], r["detected"], r["packets_at_hub"], r["estimated_pps"], r["status"]) for r in rows] == [
        ("syn_flood", True, 90, 2001, "final"), ("icmp_flood", False, 0, None, None)]
    assert false_positives == ["203.0.113.50/udp"]


def test_content_comparison_is_a_multiset_difference(tmp_path: Path) -> None:
    a, b, c = (pack_record(10**18 + i, bytes([i]) * 60) for i in range(3))
    header = PcapHeader(LINKTYPE_ETHERNET, 65535, False)
    write_pcap(tmp_path / "expected.pcap", header, a + b + b + c)
    write_pcap(tmp_path / "received.pcap", header, c + b + a + a)
    assert compare_content(tmp_path / "expected.pcap", tmp_path / "received.pcap") == (1, 1)
    assert record_digests(a + b + b)[next(iter(record_digests(b)))] == 2


def test_percentiles() -> None:
    assert percentiles([]) == [None, None]
    p50, p99 = percentiles(float(i) for i in range(101))
    assert p50 == 50.0 and 98.0 < p99 <= 100.0
