"""TCP sequence / acknowledgment numbers that encode an IPv4 address of their header are
address sites: Mirai-style scanners send seq == destination, and the SYN-ACK / RST answering
carries ack == that + 1. Without mapping them the private telescope address leaks in seq."""

from __future__ import annotations

import dpkt
import pytest
from sanitize_corpus import PNAT, Case, a4, csum, eth, icmp, ipv4, records, tcp

from bridge.backscatter.classes import CLASS_NAMES
from bridge.backscatter.classify import classify
from bridge.pcap import iter_packets
from bridge.sanitize import Sanitizer, policy_from_flags

TELESCOPE = "10.1.245.33"   # private: inside PNAT's 10.0.0.0/8
SCANNER = "203.0.113.7"     # public: no map applies
ROUTER = "198.51.100.1"
ADDR = int.from_bytes(a4(TELESCOPE), "big")


def ip_tcp(src: str, dst: str, seq: int, ack: int, flags: int) -> bytes:
    return ipv4(src, dst, 6, tcp(a4(src), a4(dst), 40000, 23, flags=flags, seq=seq, ack=ack))


def policy(mode: str, tmp_path):
    if mode == "pnat":
        return policy_from_flags(pnat=PNAT)
    key = tmp_path / "key"
    key.write_bytes(bytes(range(32)))
    return policy_from_flags(cryptopan_key=str(key))


def sanitize(pol, frames: list[bytes]) -> list[bytes]:
    res = Sanitizer(pol).sanitize_batch(1, records([Case(f"p{i}", 1, f) for i, f in enumerate(frames)]))
    assert res.dropped == 0 and res.cut == 0
    return [bytes(p[3]) for p in iter_packets(res.packets)]


def assert_checksums_valid(frame: bytes) -> None:
    assert_ip_checksums_valid(dpkt.ethernet.Ethernet(frame).data)


def assert_ip_checksums_valid(ip: dpkt.ip.IP) -> None:
    """dpkt recomputes the IP and TCP checksums from scratch (both stored sums zeroed); they
    must equal the stored ones."""
    stored_ip, stored_l4 = ip.sum, ip.data.sum
    ip.sum = 0
    ip.data.sum = 0
    fresh = dpkt.ip.IP(bytes(ip))
    assert (fresh.sum, fresh.data.sum) == (stored_ip, stored_l4)


@pytest.mark.parametrize("mode", ["pnat", "cryptopan"])
def test_mirai_syn_seq_follows_the_mapped_destination(mode, tmp_path):
    syn = eth(ip_tcp(SCANNER, TELESCOPE, ADDR, 0, 0x02))
    out, = sanitize(policy(mode, tmp_path), [syn])
    ip = dpkt.ethernet.Ethernet(out).data
    assert ip.dst != a4(TELESCOPE)
    assert ip.data.seq == int.from_bytes(ip.dst, "big")
    assert_checksums_valid(out)
    # no 4-byte window anywhere holds the private address
    assert a4(TELESCOPE) not in out


@pytest.mark.parametrize("mode", ["pnat", "cryptopan"])
@pytest.mark.parametrize("flags", [0x12, 0x14])  # SYN-ACK, RST-ACK
def test_reply_ack_follows_the_mapped_source_plus_one(mode, flags, tmp_path):
    reply = eth(ip_tcp(TELESCOPE, SCANNER, 0x1234567, ADDR + 1, flags))
    out, = sanitize(policy(mode, tmp_path), [reply])
    ip = dpkt.ethernet.Ethernet(out).data
    assert ip.src != a4(TELESCOPE)
    assert ip.data.ack == (int.from_bytes(ip.src, "big") + 1) & 0xFFFFFFFF
    assert ip.data.seq == 0x1234567
    assert_checksums_valid(out)
    assert a4(TELESCOPE) not in out and (ADDR + 1).to_bytes(4, "big") not in out


def test_numbers_outside_the_ranges_are_left_alone(tmp_path):
    frames = [
        eth(ip_tcp(SCANNER, TELESCOPE, int.from_bytes(a4(SCANNER), "big"), 0, 0x02)),     # unmapped address
        eth(ip_tcp(SCANNER, TELESCOPE, 0x12345678, 0x9ABCDEF0, 0x10)),                     # ordinary numbers
    ]
    for mode in ("pnat", "cryptopan"):
        if mode == "cryptopan":
            frames = frames[1:]  # Crypto-PAn anonymizes every address: only numbers unlike one stay
        outs = sanitize(policy(mode, tmp_path), frames)
        for before, after in zip(frames, outs):
            b, a = dpkt.ethernet.Ethernet(before).data.data, dpkt.ethernet.Ethernet(after).data.data
            assert (a.seq, a.ack) == (b.seq, b.ack)
            assert_checksums_valid(after)


def test_pnat_maps_every_number_inside_its_ranges():
    # not only this header's address: another private host's address, near misses, any flags;
    # an acknowledgment number is taken as "one past" a value, so seq/ack pairs stay consistent
    other = int.from_bytes(a4("10.9.9.9"), "big")
    frames = [
        eth(ip_tcp(SCANNER, TELESCOPE, ADDR + 1, ADDR + 2, 0x02)),
        eth(ip_tcp(SCANNER, TELESCOPE, other, other + 1, 0x10)),
    ]
    outs = sanitize(policy_from_flags(pnat=PNAT), frames)
    mapped = int.from_bytes(a4("44.1.245.33"), "big")
    mapped_other = int.from_bytes(a4("44.9.9.9"), "big")
    got = [(dpkt.ethernet.Ethernet(o).data.data.seq, dpkt.ethernet.Ethernet(o).data.data.ack) for o in outs]
    assert got == [(mapped + 1, mapped + 2), (mapped_other, mapped_other + 1)]
    for out in outs:
        assert_checksums_valid(out)


def test_quoted_tcp_header_in_icmp_error():
    # the telescope host's SYN (seq == its own address) comes back quoted in an ICMP error
    quoted8 = ip_tcp(TELESCOPE, SCANNER, ADDR, 0, 0x02)[:28]       # RFC 792: IP header + 8 bytes
    whole = ip_tcp(TELESCOPE, SCANNER, 99, ADDR + 1, 0x14)          # RFC 1812-style longer quote, ACK set
    frames = [eth(ipv4(ROUTER, TELESCOPE, 1, icmp(3, 1, bytes(4), q))) for q in (quoted8, whole)]
    out8, outw = sanitize(policy_from_flags(pnat=PNAT), frames)
    for out in (out8, outw):
        ip = dpkt.ethernet.Ethernet(out).data
        assert csum(bytes(ip)[:20]) == 0 and csum(bytes(ip.data)) == 0  # outer IP and ICMP checksums
        assert a4(TELESCOPE) not in out and (ADDR + 1).to_bytes(4, "big") not in out
    q = out8[14 + 20 + 8:]
    assert q[24:28] == q[12:16] != a4(TELESCOPE)                    # seq == mapped quoted source
    q = outw[14 + 20 + 8:]
    quoted = dpkt.ip.IP(q)
    assert quoted.data.ack == int.from_bytes(quoted.src, "big") + 1 and quoted.data.seq == 99
    assert_ip_checksums_valid(quoted)  # the whole segment is quoted: its checksums verify too


def test_sanitized_mirai_syn_is_still_tagged_mirai():
    frames = [eth(ip_tcp(SCANNER, TELESCOPE, ADDR, 0, 0x02)), eth(ip_tcp(SCANNER, TELESCOPE, 5, 0, 0x02))]
    before = classify(records([Case(f"p{i}", 1, f) for i, f in enumerate(frames)]), 1)
    res = Sanitizer(policy_from_flags(pnat=PNAT)).sanitize_batch(1, records([Case("p", 1, f) for f in frames]))
    after = classify(res.packets, 1)
    assert [CLASS_NAMES[c] for c in before.cls] == [CLASS_NAMES[c] for c in after.cls] == ["mirai", "scan"]
