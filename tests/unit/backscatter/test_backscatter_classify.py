"""Classifier: Corsaro rules per packet, victims from quoted headers, link types, digests."""

from __future__ import annotations

import socket

import dpkt
import numpy as np
import pytest

from bridge import traffic as T
from bridge.backscatter.classes import CLASS_NAMES
from bridge.backscatter.classify import classify, select_records
from bridge.pcap import pack_record

TELE = "10.1.2.3"
VICTIM = "198.51.100.10"


def _ip(src: str, dst: str, l4: dpkt.Packet, p: int, ttl: int = 50, ident: int = 7, **kw) -> dpkt.ip.IP:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=p, ttl=ttl, id=ident, data=l4, **kw)
    ip.len = len(ip)
    return ip


def _tcp(flags: int, sport: int = 443, dport: int = 40000, seq: int = 1, win: int = 64240, opts: bytes = b"") -> dpkt.tcp.TCP:
    return dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, win=win, opts=opts,
                        off=(20 + len(opts)) // 4)


def _eth(ip: dpkt.Packet, ethertype: int = dpkt.ethernet.ETH_TYPE_IP) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=ethertype, data=ip))


def _one(frame: bytes, linktype: int = 1):
    cols = classify(pack_record(10**18, frame), linktype)
    assert cols.count == 1
    return cols, CLASS_NAMES[cols.cls[0]]


def _icmp_error(icmp_type: int, code: int, quoted: bytes, src: str = VICTIM, dst: str = TELE) -> bytes:
    body = dpkt.icmp.ICMP.Unreach(data=quoted) if icmp_type == 3 else dpkt.icmp.ICMP.TimeExceed(data=quoted)
    return _eth(_ip(src, dst, dpkt.icmp.ICMP(type=icmp_type, code=code, data=body), 1))


@pytest.mark.parametrize("flags,expected", [
    (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK, "syn_ack"),
    (dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK | 0x40, "syn_ack"),  # SYN+ACK+ECE still matches (syn && ack)
    (dpkt.tcp.TH_RST, "rst"),
    (dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK, "rst"),
    (dpkt.tcp.TH_SYN, "scan"),
    (dpkt.tcp.TH_SYN | 0xC0, "scan"),  # ECN-setup SYN is still a probe
    (dpkt.tcp.TH_ACK, "other"),
    (dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK, "other"),
])
def test_tcp_flags(flags: int, expected: str) -> None:
    cols, name = _one(_eth(_ip(VICTIM, TELE, _tcp(flags, opts=b"\x02\x04\x05\xb4"), 6)))
    assert name == expected
    if expected in ("syn_ack", "rst"):
        assert socket.inet_ntoa(int(cols.victim[0]).to_bytes(4, "big")) == VICTIM
        assert (cols.proto[0], cols.port[0], cols.spoofed_port[0]) == (6, 443, 40000)
        assert cols.digest[0] != 0


def test_mirai_and_masscan_fingerprints() -> None:
    tele_int = int.from_bytes(socket.inet_aton(TELE), "big")
    _, name = _one(_eth(_ip("1.2.3.4", TELE, _tcp(dpkt.tcp.TH_SYN, 5555, 23, seq=tele_int), 6, ttl=64)))
    assert name == "mirai"
    _, name = _one(_eth(_ip("1.2.3.4", TELE, _tcp(dpkt.tcp.TH_SYN, 5555, 80, win=1024), 6, ttl=240)))
    assert name == "masscan"
    _, name = _one(_eth(_ip("1.2.3.4", TELE, _tcp(dpkt.tcp.TH_SYN, 5555, 80, win=1024, opts=b"\x02\x04\x05\xb4"), 6, ttl=240)))
    assert name == "scan", "with options it is not the masscan fingerprint"


@pytest.mark.parametrize("icmp_type,expected", [
    (0, "icmp_echo_reply"), (14, "icmp_timestamp_reply"), (16, "icmp_info_reply"), (18, "icmp_mask_reply"),
    (8, "icmp_request"), (13, "icmp_request"), (15, "icmp_request"), (17, "icmp_request"),
])
def test_icmp_types(icmp_type: int, expected: str) -> None:
    icmp = dpkt.icmp.ICMP(type=icmp_type, code=0, data=dpkt.icmp.ICMP.Echo(id=1, seq=2, data=b"x" * 8))
    cols, name = _one(_eth(_ip(VICTIM, TELE, icmp, 1)))
    assert name == expected
    if expected != "icmp_request":
        assert cols.proto[0] == 1 and socket.inet_ntoa(int(cols.victim[0]).to_bytes(4, "big")) == VICTIM


def test_icmp_error_victim_from_quote_and_mismatch() -> None:
    udp = dpkt.udp.UDP(sport=3333, dport=27015, data=b"q" * 8)
    udp.ulen = len(udp)
    inner = bytes(_ip(TELE, VICTIM, udp, 17))
    cols, name = _one(_icmp_error(3, 3, inner))
    assert name == "icmp_unreachable"
    assert socket.inet_ntoa(int(cols.victim[0]).to_bytes(4, "big")) == VICTIM
    assert (cols.proto[0], cols.port[0], cols.spoofed_port[0], cols.mismatch[0]) == (17, 27015, 3333, False)
    # a router answers (outer source is not the victim); the quote names someone else as source
    inner_other = bytes(_ip("10.9.9.9", VICTIM, _tcp(dpkt.tcp.TH_SYN, 4444, 8080), 6))[:28]
    cols, name = _one(_icmp_error(11, 0, inner_other, src="192.0.2.1"))
    assert name == "icmp_time_exceeded"
    assert socket.inet_ntoa(int(cols.victim[0]).to_bytes(4, "big")) == VICTIM
    assert (cols.proto[0], cols.port[0], cols.mismatch[0]) == (6, 8080, True)


def test_icmp_error_without_quote_falls_back_to_outer_source() -> None:
    cols, name = _one(_icmp_error(3, 1, b"\x00" * 4))
    assert name == "icmp_unreachable"
    assert cols.proto[0] == 1 and socket.inet_ntoa(int(cols.victim[0]).to_bytes(4, "big")) == VICTIM


def test_ip_options_vlan_and_other_link_types() -> None:
    ip = _ip(VICTIM, TELE, _tcp(dpkt.tcp.TH_RST), 6, opts=b"\x01\x01\x01\x00")
    ip.hl = 6
    ip.len = len(ip)
    raw_ip = bytes(ip)
    assert _one(_eth(ip))[0].port[0] == 443
    vlan = b"\x04" * 6 + b"\x02" * 6 + b"\x81\x00\x00\x05" + b"\x81\x00\x00\x06" + b"\x08\x00" + raw_ip
    assert _one(vlan)[1] == "rst"
    assert _one(raw_ip, linktype=101)[1] == "rst"
    assert _one(b"\x02\x00\x00\x00" + raw_ip, linktype=0)[1] == "rst"
    sll = b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\x00\x00" + b"\x08\x00" + raw_ip
    assert _one(sll, linktype=113)[1] == "rst"


def test_not_ipv4_fragments_and_truncation() -> None:
    assert _one(_eth(b"\x00" * 28, dpkt.ethernet.ETH_TYPE_ARP))[1] == "not_ipv4"
    frag = _ip(VICTIM, TELE, _tcp(dpkt.tcp.TH_RST), 6, offset=40)
    assert _one(_eth(frag))[1] == "other"
    whole = _eth(_ip(VICTIM, TELE, _tcp(dpkt.tcp.TH_RST), 6))
    assert _one(whole[:14 + 20 + 10])[1] == "malformed"
    assert _one(whole[:14 + 12])[1] == "malformed"


def test_digest_ignores_ttl_but_not_content() -> None:
    a = _one(_eth(_ip(VICTIM, TELE, _tcp(dpkt.tcp.TH_RST), 6, ttl=50)))[0].digest[0]
    b = _one(_eth(_ip(VICTIM, TELE, _tcp(dpkt.tcp.TH_RST), 6, ttl=47)))[0].digest[0]
    c = _one(_eth(_ip(VICTIM, TELE, _tcp(dpkt.tcp.TH_RST), 6, ident=8)))[0].digest[0]
    assert a == b != c


def test_generated_kinds_classify_as_labelled() -> None:
    scenario = T.Scenario(attacks=T.reference_attacks(0, 120) + (
        T.Attack("host_unreachable", "198.51.100.77", 25, 90_000.0, 0, 120),), seed=11)
    g = T.generate(scenario, 10**18, 120, 500)
    cols = classify(g.packets)
    assert np.array_equal(cols.offsets, g.offsets) and np.array_equal(cols.ts_ns, g.ts_ns)
    expected = {"syn_flood": {"syn_ack"}, "rst_flood": {"rst"}, "udp_flood": {"icmp_unreachable"},
                "ttl_exceeded": {"icmp_time_exceeded"}, "host_unreachable": {"icmp_unreachable"},
                "icmp_flood": {"icmp_echo_reply"}, "syn_scan": {"scan"}, "mirai": {"mirai"}, "masscan": {"masscan"},
                "icmp_echo": {"icmp_request"}, "udp_probe": {"other"}, "tcp_ack": {"other"}, "arp": {"not_ipv4"},
                "ipv6_syn": {"not_ipv4"}, "icmpv6_echo": {"not_ipv4"}, "backscatter_noise": {"syn_ack", "rst"}}
    for k, kind in enumerate(T.KINDS):
        got = {CLASS_NAMES[c] for c in np.unique(cols.cls[g.kind == k])}
        assert got == expected[kind], kind
    for i, truth in enumerate(g.truth):
        rows = g.attack == i
        assert set(cols.victim[rows].tolist()) == {int.from_bytes(socket.inet_aton(truth.victim), "big")}
        assert set(cols.port[rows].tolist()) == {truth.port or 0}
        assert not cols.mismatch[rows].any()


def test_select_records_round_trip() -> None:
    g = T.generate(T.Scenario(seed=2), 10**18, 1, 200)
    cols = classify(g.packets)
    pick = np.nonzero(cols.backscatter())[0]
    out = select_records(g.packets, cols.offsets[pick], cols.lengths[pick]).tobytes()
    again = classify(out)
    assert again.count == pick.size and np.array_equal(again.digest, cols.digest[pick])
